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

-- The append of migration 0002, now also chaining: `e_tail` carries each event's
-- canonical bytes after the position, computed by the caller before the lock; under
-- the lock only the SHA-256 runs, in position order, from log_head.hash.
DROP FUNCTION circle_append_batch(text[], text[], bigint[], int[], text[], bytea[], int[],
    text[], text[], text[], bytea[], uuid[], text[], int[], text[], timestamptz[], text[],
    text[], uuid[], uuid[], text[], text[], bigint[], boolean, timestamptz);

CREATE FUNCTION circle_append_batch(
    a_type text[], a_id text[], a_expected bigint[], a_count int[],
    a_idem_key text[], a_idem_hash bytea[], a_idem_status int[], a_response_id text[],
    a_key_action text[], a_key_client text[], a_key_wrapped bytea[],
    e_id uuid[], e_type text[], e_version int[], e_payload text[], e_occurred timestamptz[],
    e_actor text[], e_role text[], e_correlation uuid[], e_causation uuid[],
    e_aggregate_type text[], e_aggregate_id text[], e_sequence bigint[], e_tail bytea[],
    p_simple boolean, p_recorded_at timestamptz)
RETURNS TABLE (outcome text, stream_version bigint, last_position bigint,
               answer_hash bytea, answer_status int, answer_body jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    head bigint;
    prev bytea;
    hashes bytea[];
    current_version bigint;
    first_event int := 1;
    n int;
    stored record;
BEGIN
    SELECT h.position, h.hash INTO head, prev FROM log_head h WHERE h.id = 1 FOR UPDATE;

    -- Fast path, the common case: no idempotency keys or key actions, each stream once
    -- (p_simple, checked by the caller), and every expected version current. Then the
    -- whole batch is one set-based insert; e_sequence was computed from a_expected.
    IF p_simple AND NOT EXISTS (
        SELECT 1 FROM unnest(a_type, a_id, a_expected) AS t(typ, id, expected)
        WHERE coalesce((SELECT e.sequence FROM events e
                        WHERE e.aggregate_type = t.typ AND e.aggregate_id = t.id
                        ORDER BY e.sequence DESC LIMIT 1), 0) <> t.expected)
    THEN
        hashes := circle_chain(prev, head + 1, e_tail);
        INSERT INTO events (position, event_id, aggregate_type, aggregate_id, sequence,
            event_type, event_version, payload, payload_text, occurred_at, recorded_at,
            actor_id, actor_role, correlation_id, causation_id, hash)
        SELECT head + ev.ord, ev.eid, ev.atype, ev.aid, ev.seq, ev.etype, ev.ever,
               ev.pl::jsonb, ev.pl, ev.occ, p_recorded_at, ev.act, ev.role, ev.corr, ev.caus,
               ev.h
        FROM unnest(e_id, e_aggregate_type, e_aggregate_id, e_sequence, e_type, e_version,
                    e_payload, e_occurred, e_actor, e_role, e_correlation, e_causation, hashes)
             WITH ORDINALITY
             AS ev(eid, atype, aid, seq, etype, ever, pl, occ, act, role, corr, caus, h, ord);
        RETURN QUERY
            SELECT 'committed'::text, t.expected + t.cnt,
                   head + sum(t.cnt) OVER (ORDER BY t.ord),
                   NULL::bytea, NULL::int, NULL::jsonb
            FROM unnest(a_expected, a_count) WITH ORDINALITY AS t(expected, cnt, ord)
            ORDER BY t.ord;
        UPDATE log_head
        SET position = head + coalesce(array_length(hashes, 1), 0),
            hash = coalesce(hashes[array_length(hashes, 1)], prev)
        WHERE id = 1;
        RETURN;
    END IF;

    FOR i IN 1 .. coalesce(array_length(a_type, 1), 0) LOOP
        n := a_count[i];
        outcome := NULL; stream_version := NULL; last_position := NULL;
        answer_hash := NULL; answer_status := NULL; answer_body := NULL;
        IF a_idem_key[i] IS NOT NULL THEN
            SELECT k.request_hash, k.status, k.response INTO stored
            FROM idempotency_keys k WHERE k.key = a_idem_key[i];
            IF FOUND THEN
                outcome := 'answered';
                answer_hash := stored.request_hash;
                answer_status := stored.status;
                answer_body := stored.response;
                RETURN NEXT;
                first_event := first_event + n;
                CONTINUE;
            END IF;
        END IF;
        -- ORDER BY ... LIMIT 1, not max(): a cached generic plan would scan the whole
        -- stream for max(), but always walks the index backwards for this.
        SELECT e.sequence INTO current_version FROM events e
        WHERE e.aggregate_type = a_type[i] AND e.aggregate_id = a_id[i]
        ORDER BY e.sequence DESC LIMIT 1;
        current_version := coalesce(current_version, 0);
        IF current_version <> a_expected[i] THEN
            outcome := 'conflict';
            stream_version := current_version;
            RETURN NEXT;
            first_event := first_event + n;
            CONTINUE;
        END IF;
        -- The tails were computed with sequence a_expected + k, which is current here.
        hashes := circle_chain(prev, head + 1, e_tail[first_event : first_event + n - 1]);
        INSERT INTO events (position, event_id, aggregate_type, aggregate_id, sequence,
            event_type, event_version, payload, payload_text, occurred_at, recorded_at,
            actor_id, actor_role, correlation_id, causation_id, hash)
        SELECT head + k, e_id[first_event + k - 1], a_type[i], a_id[i], current_version + k,
            e_type[first_event + k - 1], e_version[first_event + k - 1],
            e_payload[first_event + k - 1]::jsonb, e_payload[first_event + k - 1],
            e_occurred[first_event + k - 1], p_recorded_at, e_actor[first_event + k - 1],
            e_role[first_event + k - 1], e_correlation[first_event + k - 1],
            e_causation[first_event + k - 1], hashes[k]
        FROM generate_series(1, n) AS k;
        head := head + n;
        prev := coalesce(hashes[n], prev);
        IF a_idem_key[i] IS NOT NULL THEN
            INSERT INTO idempotency_keys (key, request_hash, status, response, created_at)
            VALUES (a_idem_key[i], a_idem_hash[i], a_idem_status[i],
                    jsonb_build_object('id', a_response_id[i], 'version', current_version + n,
                                       'position', head),
                    p_recorded_at);
        END IF;
        IF a_key_action[i] = 'store' THEN
            INSERT INTO client_keys (client_id, wrapped_key, created_at)
            VALUES (a_key_client[i], a_key_wrapped[i], p_recorded_at);
        ELSIF a_key_action[i] = 'destroy' THEN
            UPDATE client_keys SET wrapped_key = NULL, destroyed_at = p_recorded_at
            WHERE client_id = a_key_client[i];
        END IF;
        outcome := 'committed';
        stream_version := current_version + n;
        last_position := head;
        RETURN NEXT;
        first_event := first_event + n;
    END LOOP;
    UPDATE log_head SET position = head, hash = prev WHERE id = 1;
END $$;
