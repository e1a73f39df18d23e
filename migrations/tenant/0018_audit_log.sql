-- The tenant-wide audit log: one row per event of every stream — data changes, user and role
-- changes, logins and lockouts, exports, erasures, retention runs, consent changes — with who,
-- when, what kind, about which records or users, and the names of the fields it changed. No
-- values: those are read (and decrypted) from the event itself when an entry is shown.
CREATE TABLE audit_log (
    global_position bigint      PRIMARY KEY,
    recorded_at     timestamptz NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    actor_id        uuid        NOT NULL,
    actor_kind      text        NOT NULL,
    request_id      uuid        NOT NULL,
    datasheet       text,
    -- the records, users, roles or tokens the event is about
    subjects        uuid[]      NOT NULL,
    fields          text[]      NOT NULL,
    -- the order entries were added in (the projector is the single writer, one batch after
    -- the other), which the live feed follows: positions can commit out of order
    feed_seq        bigint      GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX audit_log_by_time ON audit_log (recorded_at, global_position);
CREATE INDEX audit_log_by_actor ON audit_log (actor_id, global_position);
CREATE INDEX audit_log_by_type ON audit_log (event_type, global_position);
CREATE INDEX audit_log_by_subject ON audit_log USING gin (subjects);

GRANT SELECT, INSERT, UPDATE, DELETE ON audit_log TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('audit_log');

-- An audit log export's download link serves the entries its filter selects.
ALTER TABLE export_downloads ADD COLUMN filter jsonb;
