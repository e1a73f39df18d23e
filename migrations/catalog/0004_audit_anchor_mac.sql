-- The imported organisation's first signing key is trusted only with its HMAC under a key
-- derived from the master key: a catalog row changed outside Custos (by anyone who can write
-- the catalog but does not hold the master key) is refused when the organisation opens.
ALTER TABLE tenants
    ADD COLUMN audit_anchor_mac bytea,
    ADD CONSTRAINT tenants_audit_anchor_mac CHECK ((audit_anchor IS NULL) = (audit_anchor_mac IS NULL));
