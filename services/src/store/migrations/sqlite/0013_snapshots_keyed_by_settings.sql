-- See PostgreSQL migration 0028: a row is one position under one settings digest.
-- SQLite cannot drop a primary key, so the table is rebuilt.
CREATE TABLE practice_snapshots_keyed (
    position              INTEGER NOT NULL,
    max_recorded_at       TEXT    NOT NULL,
    state                 TEXT    NOT NULL,
    created_at            TEXT    NOT NULL,
    range_after           INTEGER,
    range_min_recorded_at TEXT,
    settings              TEXT
);
INSERT INTO practice_snapshots_keyed
    SELECT position, max_recorded_at, state, created_at, range_after,
           range_min_recorded_at, settings
    FROM practice_snapshots;
DROP TABLE practice_snapshots;
ALTER TABLE practice_snapshots_keyed RENAME TO practice_snapshots;
CREATE UNIQUE INDEX practice_snapshots_position_settings
    ON practice_snapshots (position, coalesce(settings, ''));
