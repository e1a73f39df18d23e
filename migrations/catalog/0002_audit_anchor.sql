-- An organisation imported from a tenant archive keeps the signing key its first tree heads
-- were signed with (generation 0, derived from the master key of the server it came from).
-- Its public key is kept here, where the tenant's own role cannot change it; NULL for an
-- organisation created on this server, whose generation 0 is derived from this master key.
ALTER TABLE tenants
    ADD COLUMN audit_anchor bytea CHECK (audit_anchor IS NULL OR octet_length(audit_anchor) = 32);
