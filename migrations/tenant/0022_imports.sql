-- Organisations brought in from a tenant archive (`custos tenant import`, `custos tenant move`).
--
-- An imported organisation keeps its id and its signing keys: its first key (generation 0) was
-- derived from the master key of the server it came from, so this server cannot derive it.
-- Its public half is the catalog's `tenants.audit_anchor` (out of reach of the tenant's own
-- role); its private half, if it is still the key in force, is stored here sealed like any
-- later generation. Which key is in force still follows only from the signed hand-overs, from
-- the anchor: a row of this table is only looked up by public key.
ALTER TABLE audit_keys DROP CONSTRAINT audit_keys_generation_check;
ALTER TABLE audit_keys ADD CONSTRAINT audit_keys_generation_check CHECK (generation >= 0);

-- One row per import into this database (there is at most one: an import creates the
-- database). Events keep every stored byte and hash; their tenant-wide positions are renumbered
-- in the commit order of the server they came from (the order the Merkle log signed), and they
-- all carry the importing transaction's id.
CREATE TABLE imports (
    imported_at        timestamptz NOT NULL DEFAULT now(),
    -- SHA-256 of the archive file, and when it was written
    archive_sha256     bytea       NOT NULL,
    archive_created_at timestamptz NOT NULL,
    events             bigint      NOT NULL,
    -- The checkpoints from before the Merkle log name the transactions of the server they were
    -- signed on: the events the newest of them covered are kept here as the position of each
    -- stream's last covered event, which `custos verify` uses instead of its snapshot.
    legacy_heads       bigint[]    NOT NULL DEFAULT '{}'
);

GRANT SELECT ON imports TO custos_tenant;
