-- The Merkle log (RFC 6962 / RFC 9162 shape): every event a leaf, in the commit order the
-- projectors read (transaction_id, global_position), its leaf hash SHA-256(0x00 || event hash).
-- Signed tree heads (STHs) commit to its root at a size; each new one extends the last from
-- the frontier stored with it, never re-reading old events. `custos verify` recomputes the
-- whole tree from the events and checks every STH against it, so nothing stored here is
-- trusted: the leaves and nodes only make proofs fast.

-- Leaf i of the tree: which event, and its leaf hash.
CREATE TABLE merkle_leaves (
    leaf_index      bigint PRIMARY KEY CHECK (leaf_index >= 0),
    global_position bigint NOT NULL UNIQUE,
    hash            bytea  NOT NULL
);

-- The hashes of complete subtrees whose height is a multiple of 4 (a subtree of height h over
-- leaves [index * 2^h, (index + 1) * 2^h)); any other subtree is at most 8 rows away.
CREATE TABLE merkle_nodes (
    level smallint NOT NULL CHECK (level > 0 AND level % 4 = 0),
    index bigint   NOT NULL CHECK (index >= 0),
    hash  bytea    NOT NULL,
    PRIMARY KEY (level, index)
);

-- Signed tree heads, one per checkpoint that added events. The signature covers tenant,
-- number, tree size, streams, time, root and key id (api/src/infra/integrity/tree_head.rs);
-- the frontier and the position of the last leaf let the next checkpoint extend the tree.
CREATE TABLE tree_heads (
    number               bigint      PRIMARY KEY CHECK (number >= 1),
    tree_size            bigint      NOT NULL UNIQUE CHECK (tree_size >= 1),
    streams              bigint      NOT NULL,
    created_at           timestamptz NOT NULL,
    root                 bytea       NOT NULL,
    key_id               text        NOT NULL,
    public_key           bytea       NOT NULL,
    signature            bytea       NOT NULL,
    frontier             bytea       NOT NULL,
    last_transaction_id  xid8        NOT NULL,
    last_global_position bigint      NOT NULL
);

CREATE TRIGGER merkle_leaves_no_update_or_delete
    BEFORE UPDATE OR DELETE ON merkle_leaves
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER merkle_nodes_no_update_or_delete
    BEFORE UPDATE OR DELETE ON merkle_nodes
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER tree_heads_no_update_or_delete
    BEFORE UPDATE OR DELETE ON tree_heads
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

GRANT SELECT, INSERT ON merkle_leaves, merkle_nodes, tree_heads TO custos_tenant;
