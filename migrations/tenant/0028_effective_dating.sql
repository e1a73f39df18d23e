-- Effective-dated records: a change takes effect on a day of its own (`effective_from`), later
-- (scheduled) or earlier (a correction) than the day it is recorded.
--
-- `records.fields` holds the values in force today. Each value has the key of the change that
-- gave it (`YYYY-MM-DD#sequence`: the day it takes effect, then the record's version it was
-- recorded at), so that a change applies to a field only when it takes effect later than the
-- one there: `field_since` per field changed since the creation, `since_base` (the creation's)
-- for the others, and `since_max`, the greatest of them, lets a change later than all of them
-- (all but corrections) apply whole. The records projection is rebuilt to fill them.
ALTER TABLE records
    ADD COLUMN field_since jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN since_base  text  NOT NULL DEFAULT '',
    ADD COLUMN since_max   text  NOT NULL DEFAULT '';

-- Changes entered to take effect after today: personal values, deleted on erasure and when
-- they take effect (the projector moves them into `records` on their day).
CREATE TABLE pending_changes (
    record_id      uuid        NOT NULL,
    sequence       bigint      NOT NULL,
    effective_from date        NOT NULL,
    changes        jsonb       NOT NULL,
    recorded_at    timestamptz NOT NULL,
    recorded_by    uuid        NOT NULL,
    PRIMARY KEY (record_id, sequence)
);
CREATE INDEX pending_changes_due ON pending_changes (effective_from);
GRANT SELECT, INSERT, UPDATE, DELETE ON pending_changes TO custos_tenant;

DELETE FROM records;
UPDATE projection_checkpoints SET transaction_id = '0', global_position = 0, updated_at = now()
 WHERE projection = 'records';
