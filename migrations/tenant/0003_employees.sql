-- Read model of the employees datasheet, projected from Record events whose datasheet is
-- 'employees'. Keyset pagination walks (id): record ids are UUIDv7, so id order is creation
-- order and a cursor stays valid while rows change.

CREATE TABLE employees (
    id          uuid        PRIMARY KEY,
    version     bigint      NOT NULL,
    first_name  text        NOT NULL,
    last_name   text        NOT NULL,
    email       text,
    phone       text,
    job_title   text,
    department  text,
    start_date  date,
    archived    boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    created_by  uuid        NOT NULL,
    updated_by  uuid        NOT NULL
);

-- the default listing hides archived rows
CREATE INDEX employees_active ON employees (id) WHERE NOT archived;

GRANT SELECT, INSERT, UPDATE, DELETE ON employees TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('employees');
