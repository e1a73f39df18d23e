-- One read model for the records of every datasheet (employees, contacts, job applicants),
-- replacing the employees-only table: built-in field values are a JSON object by field name
-- (canonical forms: dates as YYYY-MM-DD, lists as arrays), so every datasheet — and custom
-- fields later — shares one table and one query builder. The projection rebuilds it from the
-- event log (its checkpoint starts at 0).

DROP TABLE employees;
DELETE FROM projection_checkpoints WHERE projection = 'employees';

CREATE TABLE records (
    id          uuid        PRIMARY KEY,
    datasheet   text        NOT NULL,
    version     bigint      NOT NULL,
    archived    boolean     NOT NULL DEFAULT false,
    -- the record's personal data: blanked when the subject is erased
    fields      jsonb       NOT NULL,
    -- an employee hired from an applicant, and the applicant's employee record
    hired_from  uuid,
    hired_as    uuid,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    created_by  uuid        NOT NULL,
    updated_by  uuid        NOT NULL
);

-- Keyset pages walk (datasheet, id): record ids are UUIDv7, so id order is creation order and
-- a cursor stays valid while rows change. The default listing hides archived rows.
CREATE INDEX records_by_sheet ON records (datasheet, id) WHERE NOT archived;
CREATE INDEX records_by_sheet_all ON records (datasheet, id);
-- who reports to whom, for the manager cycle check
CREATE INDEX records_manager ON records ((fields->>'manager_id')) WHERE datasheet = 'employees';

GRANT SELECT, INSERT, UPDATE, DELETE ON records TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('records');

-- Full-text search over names, emails, company and notes: every run of letters and digits is
-- a word (so `lin@acme.example` is found by `acme`), matched by prefix. Generated, so it
-- follows every change — and a blanked (erased) record leaves nothing to find.
ALTER TABLE records ADD COLUMN search tsvector GENERATED ALWAYS AS (
    to_tsvector('simple', regexp_replace(
        coalesce(fields->>'first_name', '') || ' ' || coalesce(fields->>'last_name', '') || ' ' ||
        coalesce(fields->>'email', '') || ' ' || coalesce(fields->>'emails', '') || ' ' ||
        coalesce(fields->>'company', '') || ' ' || coalesce(fields->>'notes', ''),
        '[^[:alnum:]]+', ' ', 'g'))
) STORED;
CREATE INDEX records_search ON records USING gin (search);
