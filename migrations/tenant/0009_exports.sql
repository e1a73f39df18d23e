-- One-time download links for exports. The export itself is a RecordsExported event; this
-- is operational state: which records the link serves, in which form, until when. Only a
-- SHA-256 of the link's token is stored.
CREATE TABLE export_downloads (
    token_hash bytea       PRIMARY KEY,
    export_id  uuid        NOT NULL,
    datasheet  text        NOT NULL,
    format     text        NOT NULL,
    bom        boolean     NOT NULL,
    record_ids uuid[]      NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

GRANT SELECT, INSERT, UPDATE, DELETE ON export_downloads TO custos_tenant;
