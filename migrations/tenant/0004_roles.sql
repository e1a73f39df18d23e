-- Roles and their per-datasheet permissions (projected from Role events), and the user columns
-- that user management adds (projected from User events).

ALTER TABLE users
    ADD COLUMN roles uuid[] NOT NULL DEFAULT '{}',
    ADD COLUMN must_change_password boolean NOT NULL DEFAULT false;

CREATE TABLE roles (
    id              uuid        PRIMARY KEY,
    version         bigint      NOT NULL,
    name            text        NOT NULL,
    -- lower-cased name; unique among roles that are not deleted
    name_normalized text        NOT NULL,
    deleted         boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE UNIQUE INDEX roles_name ON roles (name_normalized) WHERE NOT deleted;

CREATE TABLE role_grants (
    role_id    uuid NOT NULL,
    datasheet  text NOT NULL,
    permission text NOT NULL,
    PRIMARY KEY (role_id, datasheet, permission)
);

-- "which users hold this role" for deletion and reassignment
CREATE INDEX users_roles ON users USING gin (roles);

GRANT SELECT, INSERT, UPDATE, DELETE ON roles, role_grants TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('roles');
