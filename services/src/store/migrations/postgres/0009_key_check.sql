-- A value sealed with the master key (AES-256-GCM over a fixed text): a start with
-- another key cannot open it and refuses to run, instead of serving personal data
-- as null and sealing new data under a key that opens nothing older.
CREATE TABLE key_check (
    id         integer     PRIMARY KEY CHECK (id = 1),
    sealed     bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
