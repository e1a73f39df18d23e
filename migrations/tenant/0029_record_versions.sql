-- Each record's history on both time axes, for reports "as recorded" at a moment and "as
-- effective" on a day without replaying the event log: one row per creation, update, hire,
-- archival, restoration and erasure, with the values the change set (personal values, as in
-- `records`; emptied for every row of an erased person) and, for a scheduled change that was
-- cancelled, the moment it was. Filled from the start of the log by the projector.
CREATE TABLE record_versions (
    record_id      uuid        NOT NULL,
    version        bigint      NOT NULL,
    datasheet      text        NOT NULL,
    kind           text        NOT NULL
        CHECK (kind IN ('created', 'updated', 'hired', 'archived', 'restored', 'erased')),
    effective_from date        NOT NULL,
    recorded_at    timestamptz NOT NULL,
    changes        jsonb,
    cancelled_at   timestamptz,
    PRIMARY KEY (record_id, version)
);
CREATE INDEX record_versions_by_sheet ON record_versions (datasheet, recorded_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON record_versions TO custos_tenant;

INSERT INTO projection_checkpoints (projection) VALUES ('record_versions');
