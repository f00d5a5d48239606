-- See the PostgreSQL migration 0006: the log stretch a snapshot row vouches for.
ALTER TABLE practice_snapshots ADD COLUMN range_after INTEGER;
ALTER TABLE practice_snapshots ADD COLUMN range_min_recorded_at TEXT;
