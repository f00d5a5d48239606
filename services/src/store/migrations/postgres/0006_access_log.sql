-- The access log: who saw (or was refused) whose data, append-only and hash-chained.
-- hash = SHA-256(prev_hash || seq as 8 bytes big-endian || entry), over the stored
-- JSON text, so the chain verifies from the stored rows alone. `seq` is assigned
-- under the lock on access_log_head, gap-free like the events' positions.
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

-- A batch in one round trip (and, called outside a transaction, one commit): lock
-- the head, chain and insert each entry, index its clients, move the head.
-- a_client_entry[k] is the 1-based index in a_entry of the entry a_client_id[k]
-- belongs to. SQLite's store computes the same chain in Rust (store/access.rs).
CREATE FUNCTION circle_access_append(
    a_recorded     timestamptz[],
    a_agent        text[],
    a_entry        text[],
    a_client_id    text[],
    a_client_entry integer[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    head_seq  bigint;
    head_hash bytea;
    first_seq bigint;
    prev      bytea;
BEGIN
    SELECT seq, hash INTO head_seq, head_hash FROM access_log_head WHERE id = 1 FOR UPDATE;
    first_seq := head_seq + 1;
    FOR i IN 1 .. coalesce(array_length(a_entry, 1), 0) LOOP
        prev := head_hash;
        head_seq := head_seq + 1;
        head_hash := sha256(prev || int8send(head_seq) || convert_to(a_entry[i], 'UTF8'));
        INSERT INTO access_log (seq, recorded, agent_who, entry, prev_hash, hash)
        VALUES (head_seq, a_recorded[i], a_agent[i], a_entry[i], prev, head_hash);
    END LOOP;
    INSERT INTO access_log_clients (client_id, seq)
    SELECT c.client_id, first_seq + c.entry - 1
    FROM unnest(a_client_id, a_client_entry) AS c(client_id, entry);
    UPDATE access_log_head SET seq = head_seq, hash = head_hash WHERE id = 1;
END
$$;

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
