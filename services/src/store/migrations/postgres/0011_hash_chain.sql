-- The tamper-evident chain (ARCHITECTURE.md, "The audit chain"): every event's hash is
-- SHA-256(previous hash ‖ canonical_bytes(event)), computed in the transaction that
-- assigns its position. `payload_text` keeps the exact payload bytes that were hashed
-- (jsonb reorders keys, so its text is never hashed); `log_head.hash` is the hash at
-- `log_head.position`, so an append chains without reading the last event.
ALTER TABLE events ADD COLUMN payload_text text;
ALTER TABLE log_head ADD COLUMN hash bytea;

-- canonical_bytes, format 1 (services/src/audit/chain.rs is the reference). Appends
-- get their bytes from Rust; this back-fills events written before the chain existed
-- and lets an operator recompute a hash in SQL.
CREATE FUNCTION circle_str(s text) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT int4send(octet_length(convert_to(s, 'UTF8'))) || convert_to(s, 'UTF8')
$$;

CREATE FUNCTION circle_event_bytes(e events) RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT '\x01'::bytea || int8send(e.position) || uuid_send(e.event_id)
        || circle_str(e.aggregate_type) || circle_str(e.aggregate_id) || int8send(e.sequence)
        || circle_str(e.event_type) || int4send(e.event_version) || circle_str(e.payload_text)
        || int8send((extract(epoch FROM e.occurred_at) * 1000000)::bigint)
        || int8send((extract(epoch FROM e.recorded_at) * 1000000)::bigint)
        || circle_str(e.actor_id) || circle_str(e.actor_role) || uuid_send(e.correlation_id)
        || CASE WHEN e.causation_id IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || uuid_send(e.causation_id) END
$$;

-- Chains `tails` (canonical_bytes after format and position) from `prev`, the first
-- at `first_position`; returns each event's hash in order.
CREATE FUNCTION circle_chain(prev bytea, first_position bigint, tails bytea[])
RETURNS bytea[] LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    hashes bytea[] := '{}';
    t bytea;
    i bigint := 0;
BEGIN
    FOREACH t IN ARRAY coalesce(tails, '{}') LOOP
        prev := sha256(prev || '\x01'::bytea || int8send(first_position + i) || t);
        hashes := array_append(hashes, prev);
        i := i + 1;
    END LOOP;
    RETURN hashes;
END $$;

-- Back-fill: the payload text as jsonb renders it (from now on these are the bytes),
-- then the chain in position order, written in one pass over the table.
DO $$
DECLARE
    h bytea := decode(repeat('00', 32), 'hex');
    r events;
BEGIN
    CREATE TEMP TABLE circle_backfill (position bigint PRIMARY KEY, payload_text text,
                                       hash bytea) ON COMMIT DROP;
    FOR r IN SELECT * FROM events ORDER BY position LOOP
        r.payload_text := r.payload::text;
        h := sha256(h || circle_event_bytes(r));
        INSERT INTO circle_backfill VALUES (r.position, r.payload_text, h);
    END LOOP;
    UPDATE events e SET payload_text = b.payload_text, hash = b.hash
    FROM circle_backfill b WHERE b.position = e.position;
    UPDATE log_head SET hash = h WHERE id = 1;
END $$;

ALTER TABLE events ALTER COLUMN payload_text SET NOT NULL, ALTER COLUMN hash SET NOT NULL;
ALTER TABLE log_head ALTER COLUMN hash SET NOT NULL;

-- The append of migration 0002 cannot stay: it writes no hash. Its chained successor,
-- which takes each event's canonical bytes after the position (`e_tail`, computed by
-- the caller before the lock) and runs only SHA-256 under the lock, in position order
-- from log_head.hash, is created by migration 0014 (all migrations apply in one
-- transaction at start, so no append runs in between).
DROP FUNCTION circle_append_batch(text[], text[], bigint[], int[], text[], bytea[], int[],
    text[], text[], text[], bytea[], uuid[], text[], int[], text[], timestamptz[], text[],
    text[], uuid[], uuid[], text[], text[], bigint[], boolean, timestamptz);
