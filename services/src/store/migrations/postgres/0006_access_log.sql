-- The access log: who saw (or was refused) whose data, append-only and hash-chained.
-- `entry` is the JSON text hashed into the chain: hash = SHA-256(prev_hash || entry),
-- so the chain verifies from the stored text alone. `seq` is assigned under the lock
-- on access_log_head, gap-free like the events' positions.
CREATE TABLE access_log (
    seq        bigint      PRIMARY KEY,
    recorded   timestamptz NOT NULL,
    agent_who  text        NOT NULL,
    entry      text        NOT NULL,
    prev_hash  bytea       NOT NULL,
    hash       bytea       NOT NULL
);
CREATE INDEX access_log_agent ON access_log (agent_who, seq);
CREATE INDEX access_log_recorded ON access_log USING brin (recorded);

-- The clients each entry disclosed (at most 100; beyond that an entry keeps a count
-- and a digest only): "who saw this person's data" is one index range.
CREATE TABLE access_log_clients (
    client_id text   NOT NULL,
    seq       bigint NOT NULL,
    PRIMARY KEY (client_id, seq)
);

CREATE TABLE access_log_head (
    id   integer PRIMARY KEY CHECK (id = 1),
    seq  bigint  NOT NULL,
    hash bytea   NOT NULL
);
INSERT INTO access_log_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION circle_access_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the access log is append-only';
END
$$;
CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION circle_access_log_append_only();
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION circle_access_log_append_only();
CREATE TRIGGER access_log_clients_append_only BEFORE UPDATE OR DELETE ON access_log_clients
    FOR EACH ROW EXECUTE FUNCTION circle_access_log_append_only();
CREATE TRIGGER access_log_clients_no_truncate BEFORE TRUNCATE ON access_log_clients
    FOR EACH STATEMENT EXECUTE FUNCTION circle_access_log_append_only();
