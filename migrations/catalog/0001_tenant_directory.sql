-- The catalog: the directory of tenants (organisations). One row per tenant says where its own
-- database lives. The catalog never holds a tenant's records, users or events.

CREATE TABLE tenants (
    id            uuid        PRIMARY KEY,
    -- the short name users type at login; lower-case letters, digits and dashes
    slug          text        NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$'),
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- the data region the client chose; maps to a PostgreSQL server in the configuration
    region        text        NOT NULL CHECK (region IN ('eu', 'us')),
    plan          text        NOT NULL DEFAULT 'trial',
    status        text        NOT NULL DEFAULT 'trial'
                              CHECK (status IN ('provisioning', 'trial', 'active', 'suspended', 'cancelled')),
    -- the tenant's own database and login role on its region's server
    database_name text        NOT NULL UNIQUE,
    role_name     text        NOT NULL UNIQUE,
    trial_ends_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE tenants IS 'Directory of tenants: where each organisation''s separate database lives.';
