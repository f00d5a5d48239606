-- The reports fold of every event up to `position`, kept so an as_of report can
-- start from it instead of from position 0. `max_recorded_at` is the latest
-- recorded_at among those events: a snapshot serves any as_of at or after it.
-- A cache only: deleting rows changes no answer, only how long one takes.
CREATE TABLE practice_snapshots (
    position        bigint      PRIMARY KEY,
    max_recorded_at timestamptz NOT NULL,
    state           text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
