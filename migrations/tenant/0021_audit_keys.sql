-- Rotating the key that signs tree heads. Generation 0 of an organisation's signing key is
-- derived from the master key and never stored; each later generation is a random Ed25519 key,
-- stored sealed with a key derived from the master key and bound to its organisation and
-- generation. A key takes over at a hand-over tree head: signed by the key before it, naming
-- it (next_public_key); every later head is signed by it. Which key is in force follows from
-- the signed hand-overs alone, from generation 0: this table is only where private keys are
-- looked up (by public key), so a row slipped into it is never used.
CREATE TABLE audit_keys (
    generation     integer     PRIMARY KEY CHECK (generation >= 1),
    public_key     bytea       NOT NULL UNIQUE,
    sealed_secret  bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER audit_keys_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_keys
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

-- A hand-over names the next key; it may sign the tree at the size of the head before it (a
-- rotation with nothing new to log), so only heads that hand over nothing are unique by size.
ALTER TABLE tree_heads ADD COLUMN next_public_key bytea;
ALTER TABLE tree_heads DROP CONSTRAINT tree_heads_tree_size_key;
CREATE UNIQUE INDEX tree_heads_size ON tree_heads (tree_size) WHERE next_public_key IS NULL;
CREATE INDEX tree_heads_size_any ON tree_heads (tree_size);
CREATE INDEX tree_heads_handovers ON tree_heads (number) WHERE next_public_key IS NOT NULL;

GRANT SELECT, INSERT ON audit_keys TO custos_tenant;
