-- The event store of one tenant. postgres-es reads and writes the first seven columns; the
-- others it never names, so the database fills them in on insert.

-- Every tenant's login role is a member of this group role; it carries the table privileges
-- granted inside the tenant template, so that each new tenant database (a copy of the template)
-- is usable by exactly the role that was granted CONNECT on it.
-- Several services or test runs may share one server, so creating the role tolerates a race.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'custos_tenant') THEN
        CREATE ROLE custos_tenant NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

CREATE TABLE events (
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    -- json, not jsonb: the stored bytes are kept exactly, so hashes over them stay stable
    payload         json        NOT NULL,
    -- ids only (actor, request, command): metadata is never encrypted, so never personal
    metadata        json        NOT NULL,
    -- position in the tenant-wide stream, in insertion order
    global_position bigint      GENERATED ALWAYS AS IDENTITY,
    -- the writing transaction: projectors read in (transaction_id, global_position) order and
    -- only below the oldest running transaction, so a late commit can never be skipped
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_global_position ON events (global_position);
CREATE INDEX events_commit_order ON events (transaction_id, global_position);

-- postgres-es keeps aggregate snapshots here; Custos does not enable snapshots yet.
CREATE TABLE snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- The history is immutable: any attempt to change or remove an event fails loudly, whoever
-- tries (the tenant role is not granted these privileges either).
CREATE FUNCTION events_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

REVOKE ALL ON events FROM PUBLIC;
GRANT SELECT, INSERT ON events TO custos_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE ON snapshots TO custos_tenant;

-- One row per projection: the last event it applied, as the (transaction_id, global_position)
-- pair. A projector locks its row for the length of a batch, which makes it the single writer
-- on any number of service instances.
CREATE TABLE projection_checkpoints (
    projection      text   PRIMARY KEY,
    transaction_id  xid8   NOT NULL DEFAULT '0',
    global_position bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT, UPDATE ON projection_checkpoints TO custos_tenant;
