-- See the PostgreSQL migration 0004: a cache of the reports fold for as_of reports.
-- Times are RFC 3339 UTC with microseconds, so text order is time order.
CREATE TABLE practice_snapshots (
    position        INTEGER PRIMARY KEY,
    max_recorded_at TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    created_at      TEXT    NOT NULL
);
