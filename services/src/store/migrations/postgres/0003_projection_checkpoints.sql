-- A projection's state and the log position it reflects, written together so a
-- restart resumes exactly where the state left off: nothing lost, nothing twice.
CREATE TABLE projection_checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL,
    state      text        NOT NULL,
    updated_at timestamptz NOT NULL
);
