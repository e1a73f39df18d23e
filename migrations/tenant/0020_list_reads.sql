-- Reads of many people at once — a list page, a report's rows — recorded compactly: one row per
-- request with the ids it showed, so a person's trail and a breach's affected list include
-- people seen only in a list. The GIN index finds the requests that showed a person.
CREATE TABLE list_reads (
    read_at    timestamptz NOT NULL DEFAULT now(),
    actor_id   uuid        NOT NULL,
    actor_kind text        NOT NULL,
    request_id uuid        NOT NULL,
    via        text        NOT NULL,
    record_ids uuid[]      NOT NULL
);
CREATE INDEX list_reads_by_record ON list_reads USING gin (record_ids);
CREATE INDEX list_reads_by_actor ON list_reads (actor_id, read_at);
GRANT SELECT, INSERT ON list_reads TO custos_tenant;
