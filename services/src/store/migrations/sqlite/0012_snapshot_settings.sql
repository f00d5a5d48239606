-- See the PostgreSQL migration 0027: the settings digest a snapshot was built under,
-- so that a restart may resume from it.
ALTER TABLE practice_snapshots ADD COLUMN settings TEXT;
