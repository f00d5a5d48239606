-- The Merkle tree over the chain (ARCHITECTURE.md, "Checkpoints and proofs"): the
-- hashes of its perfect subtrees of 16 leaves and up, so a proof reads a few rows
-- instead of rehashing the log. Determined by the events; written by the leader.
CREATE TABLE merkle_nodes (
    level      integer NOT NULL,
    node_index bigint  NOT NULL,
    hash       bytea   NOT NULL,
    PRIMARY KEY (level, node_index)
);

-- Signed checkpoints, one per tree size, never replaced: a second root for a size
-- already signed cannot be stored.
CREATE TABLE audit_checkpoints (
    tree_size  bigint      PRIMARY KEY,
    root       bytea       NOT NULL,
    note       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION circle_refuse_change();
