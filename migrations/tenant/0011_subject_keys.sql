-- Each data subject (a record, a user) has its own 256-bit data key, which encrypts the
-- personal content of the subject's events. Keys are stored wrapped (XChaCha20-Poly1305) by the
-- tenant's key, which is derived from the master key and never stored. Erasing a subject sets
-- `wrapped_key` to NULL: its events can no longer be read.
CREATE TABLE subject_keys (
    subject_id  uuid        PRIMARY KEY,
    wrapped_key bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    erased_at   timestamptz,
    CHECK ((wrapped_key IS NULL) = (erased_at IS NOT NULL))
);

GRANT SELECT, INSERT, UPDATE ON subject_keys TO custos_tenant;
