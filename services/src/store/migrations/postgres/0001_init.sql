-- The log. `position` is assigned under the lock on log_head (see postgres.rs), so it
-- is gap-free and commit-ordered. `hash` is reserved for the tamper-evident chain.
CREATE TABLE events (
    position        bigint      PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    event_type      text        NOT NULL,
    event_version   integer     NOT NULL,
    payload         jsonb       NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    actor_id        text        NOT NULL,
    actor_role      text        NOT NULL,
    correlation_id  uuid        NOT NULL,
    causation_id    uuid,
    hash            bytea,
    UNIQUE (aggregate_type, aggregate_id, sequence)
);
-- recorded_at grows with position: a BRIN index serves time ranges (audit, as_of)
-- at a fraction of a b-tree's cost per insert.
CREATE INDEX events_recorded_at ON events USING brin (recorded_at);

CREATE TABLE log_head (
    id       integer PRIMARY KEY CHECK (id = 1),
    position bigint  NOT NULL
);
INSERT INTO log_head (id, position) VALUES (1, 0);

CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY,
    request_hash bytea       NOT NULL,
    status       integer     NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL
);

-- Per-client data keys, wrapped by the master key. Erasure sets wrapped_key to NULL.
CREATE TABLE client_keys (
    client_id    text        PRIMARY KEY,
    wrapped_key  bytea,
    created_at   timestamptz NOT NULL,
    destroyed_at timestamptz
);

-- API tokens: only SHA-256 hashes are stored.
CREATE TABLE api_tokens (
    token_hash   text        PRIMARY KEY,
    role         text        NOT NULL,
    clinician_id text,
    created_at   timestamptz NOT NULL
);
