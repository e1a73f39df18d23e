-- The blind index: keyed HMAC-SHA256 digests of records' normalised emails and phones, so a
-- person can be found across datasheets without their contact details being stored for lookup
-- in clear. The key is derived from the master key and never stored.
CREATE TABLE subject_index (
    digest    bytea NOT NULL,
    record_id uuid  NOT NULL,
    -- the record field the value came from
    field     text  NOT NULL,
    PRIMARY KEY (digest, record_id, field)
);
CREATE INDEX subject_index_record ON subject_index (record_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON subject_index TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('subject_index');
