-- A snapshot is a fold under one settings digest (alert rules, k, catalogue versions,
-- the checkpoint format): an `as_of` fold starts only from one of its own settings,
-- since a state of an older format reads its newer fields as empty. A rebuild under
-- new settings must then be able to keep its own snapshot at a position an older
-- one holds, so a row is one position under one digest (rows from before migration
-- 0027, without a digest, are one more kind, used by nothing).
ALTER TABLE practice_snapshots DROP CONSTRAINT practice_snapshots_pkey;
CREATE UNIQUE INDEX practice_snapshots_position_settings
    ON practice_snapshots (position, (coalesce(settings, '')));
