CREATE TABLE projection_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
