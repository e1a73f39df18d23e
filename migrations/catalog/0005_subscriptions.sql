-- The life of each organisation with the provider (the domain's `Subscription`: trial, plan,
-- suspension, cancellation, the migration window, purge) as events, one stream per
-- organisation, kept by postgres-es in the catalog: it outlives the organisation's own
-- database, as the proof of what happened to it, when, by whom and why.
CREATE TABLE subscription_events (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence >= 1),
    event_type     text        NOT NULL,
    event_version  text        NOT NULL,
    payload        json        NOT NULL,
    -- who (`operator`, `user:<id>`, `custos`) and, for the provider's actions, why
    metadata       json        NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- postgres-es needs a snapshot table beside its event table; Custos takes no snapshots of
-- these short streams.
CREATE TABLE subscription_snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- The catalog's status, plan and dates become the projection of that stream: written from the
-- aggregate after each change, `lifecycle_sequence` saying up to which event (a start repairs
-- a row left behind by a crash between the two). `cancelled` is no longer used: a cancelled
-- organisation is `cancelling` until its notice ends, then in its `migration` window.
ALTER TABLE tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_status_check CHECK (status IN (
    'provisioning', 'trial', 'active', 'expired', 'suspended', 'cancelling', 'migration', 'purged'
));
ALTER TABLE tenants
    ADD COLUMN cancellation_effective_at timestamptz,
    -- until when an expired trial, or an ended subscription's migration window, is kept
    ADD COLUMN kept_until timestamptz,
    ADD COLUMN lifecycle_sequence bigint NOT NULL DEFAULT 0;
