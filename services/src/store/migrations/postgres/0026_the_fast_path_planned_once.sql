-- The append's fast-path checks were planned afresh on every call. With the batch's
-- arrays known, PostgreSQL's custom plan for them always looked cheaper than a
-- generic one (which assumes ten elements per array), so its plan cache never
-- settled on the generic plan: pg_stat_statements over the HTTP benchmark at 8
-- connections showed one plan per call, 0.15 ms of planning beside 0.19 ms of
-- executing, under the lock on log_head that every writer waits behind.
--
-- A generic plan cannot see the batch: it assumes ten elements per array and plans
-- from the tables' statistics when it is made, and the committing connection keeps
-- it for as long as it lives. Every lookup here is by index (stream versions by
-- (aggregate_type, aggregate_id, sequence), idempotency keys by their key, clients
-- through their index of erased clients, migration 0023), but the generic plan
-- chose to scan idempotency_keys whole while the table was small, and a connection
-- could keep that plan as the table grew (until an ANALYZE). Sequential scans are
-- off inside the function, so that each lookup goes through its index whatever a
-- table's size (tests/store.rs,
-- postgres_appends_with_generic_plans_that_scan_no_table_whole).
ALTER FUNCTION circle_append_batch(text[], text[], bigint[], int[], text[], bytea[], int[],
    text[], text[], text[], bytea[], uuid[], text[], int[], text[], timestamptz[], text[],
    text[], uuid[], uuid[], text[], text[], bigint[], bytea[], boolean, timestamptz,
    boolean[], text[])
    SET plan_cache_mode = force_generic_plan
    SET enable_seqscan = off;

-- The token check of migration 0024, the same test in PL/pgSQL. A SQL function that
-- cannot be inlined (its body holds a subquery) is parsed and planned again in every
-- statement that calls it, 0.03 ms a commit; PL/pgSQL keeps its plan for the session.
CREATE OR REPLACE FUNCTION circle_token_live(p_hash text, p_at timestamptz)
RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM api_tokens t
                   WHERE t.token_hash = p_hash AND t.revoked_at IS NULL
                     AND (t.expires_at IS NULL OR t.expires_at > p_at));
END $$;
