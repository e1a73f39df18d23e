-- Each organisation's storage as last measured (its database's size, which holds its stored
-- exports too) against its plan's limit then, and how far it had gone as its subscription
-- stream records it (`storage_level`: 0 below 80 %, 1 from 80 %, 2 from the limit, 2 + n with
-- n overage steps begun beyond it).
ALTER TABLE tenants
    ADD COLUMN storage_used_bytes  bigint CHECK (storage_used_bytes >= 0),
    ADD COLUMN storage_limit_bytes bigint CHECK (storage_limit_bytes >= 0),
    ADD COLUMN storage_measured_at timestamptz,
    ADD COLUMN storage_level       bigint NOT NULL DEFAULT 0 CHECK (storage_level >= 0);
