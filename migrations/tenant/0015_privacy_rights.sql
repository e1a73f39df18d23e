-- Data-subject rights: the consent register, retention policies, the breach register, and the
-- record of every export and recorded read of a person's data. None of these tables holds a
-- personal value: ids, purposes, legal bases, dates, the organisation's own descriptions.

-- When a record's retention clocks started: archived since, and (applicants) at the current
-- stage since. The records projection is rebuilt to fill them.
ALTER TABLE records
    ADD COLUMN archived_at timestamptz,
    ADD COLUMN stage_since timestamptz;
DELETE FROM records;
UPDATE projection_checkpoints SET transaction_id = '0', global_position = 0, updated_at = now()
 WHERE projection = 'records';

-- The consent register as it stands: per subject and purpose, the legal basis, its expiry and
-- its withdrawal. Fed by the `consent` streams and by applicants' `talent_pool_until`.
CREATE TABLE consents (
    subject_id   uuid        NOT NULL,
    purpose      text        NOT NULL,
    datasheet    text        NOT NULL,
    legal_basis  text        NOT NULL,
    given_at     timestamptz NOT NULL,
    -- the last day the basis holds
    expires_on   date,
    withdrawn_at timestamptz,
    PRIMARY KEY (subject_id, purpose)
);
CREATE INDEX consents_by_purpose ON consents (purpose, datasheet);
GRANT SELECT, INSERT, UPDATE, DELETE ON consents TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('consents');

-- Every export that contained a record (from the `data_export` streams): one row per record.
CREATE TABLE record_exports (
    record_id   uuid        NOT NULL,
    export_id   uuid        NOT NULL,
    kind        text        NOT NULL,
    exported_at timestamptz NOT NULL,
    actor_id    uuid        NOT NULL,
    actor_kind  text        NOT NULL,
    PRIMARY KEY (record_id, export_id)
);
CREATE INDEX record_exports_by_time ON record_exports (exported_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON record_exports TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('record_exports');

-- Reads of one person's data that the service records as they happen (a record opened by id,
-- a person found by email or phone). Append-only for the service.
CREATE TABLE record_reads (
    record_id  uuid        NOT NULL,
    read_at    timestamptz NOT NULL DEFAULT now(),
    actor_id   uuid        NOT NULL,
    actor_kind text        NOT NULL,
    request_id uuid        NOT NULL,
    via        text        NOT NULL
);
CREATE INDEX record_reads_by_record ON record_reads (record_id, read_at);
CREATE INDEX record_reads_by_time ON record_reads (read_at);
GRANT SELECT, INSERT ON record_reads TO custos_tenant;

-- Retention policies (from the `retention_policy` streams).
CREATE TABLE retention_policies (
    id             uuid        PRIMARY KEY,
    version        bigint      NOT NULL,
    datasheet      text        NOT NULL,
    name           text        NOT NULL,
    trigger        jsonb       NOT NULL,
    period_days    integer     NOT NULL,
    unless_consent text,
    created_at     timestamptz NOT NULL,
    created_by     uuid        NOT NULL,
    removed_at     timestamptz,
    last_run_at    timestamptz,
    erased_total   bigint      NOT NULL DEFAULT 0
);
GRANT SELECT, INSERT, UPDATE, DELETE ON retention_policies TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('retention_policies');

-- The breach register (from the `incident` streams).
CREATE TABLE incidents (
    id                    uuid        PRIMARY KEY,
    detected_at           timestamptz NOT NULL,
    description           text        NOT NULL,
    datasheets            text[]      NOT NULL,
    window_from           timestamptz NOT NULL,
    window_to             timestamptz NOT NULL,
    actors                uuid[]      NOT NULL,
    recorded_at           timestamptz NOT NULL,
    recorded_by           uuid        NOT NULL,
    authority_notified_at timestamptz,
    authority_reference   text,
    subjects_notified_at  timestamptz
);
GRANT SELECT, INSERT, UPDATE, DELETE ON incidents TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('incidents');

-- Download links now serve a datasheet's records, a subject's trail, or a breach's
-- notification list; a trail is recorded when it is built, on behalf of who asked for it.
ALTER TABLE export_downloads
    ADD COLUMN kind        text NOT NULL DEFAULT 'records',
    ADD COLUMN incident_id uuid,
    ADD COLUMN actor_id    uuid,
    ADD COLUMN actor_kind  text,
    ADD COLUMN request_id  uuid;
ALTER TABLE export_downloads ALTER COLUMN datasheet DROP NOT NULL;

-- The breach register asks what happened in a time window.
CREATE INDEX events_by_time ON events (recorded_at);
