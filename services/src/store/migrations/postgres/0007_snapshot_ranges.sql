-- What a snapshot's row says of the log since the snapshot its writer kept before
-- it: every event in (range_after, position] was recorded at or after
-- range_min_recorded_at. An as_of fold skips such a stretch when that is after the
-- as_of time, instead of reading it. Rows without a range are read through.
ALTER TABLE practice_snapshots
    ADD COLUMN range_after bigint,
    ADD COLUMN range_min_recorded_at timestamptz;
