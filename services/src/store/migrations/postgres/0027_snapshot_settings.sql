-- The digest of the settings a snapshot's state was built under (the projector's
-- checkpoint format, alert rules, k and reference data: `ProjectionSettings::digest`).
-- A snapshot with the current digest is also a point a restart may resume the live
-- reports from, like the checkpoint: the projector then need not save the whole
-- state twice. Rows kept before this column are never resumed from.
ALTER TABLE practice_snapshots ADD COLUMN settings text;
