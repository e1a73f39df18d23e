-- Read model of the tenant's users (projected from User events) and its sessions.

CREATE TABLE users (
    id               uuid        PRIMARY KEY,
    version          bigint      NOT NULL,
    email            text        NOT NULL,
    -- lower-cased email, for login lookups and uniqueness within the tenant
    email_normalized text        NOT NULL UNIQUE,
    name             text        NOT NULL,
    is_admin         boolean     NOT NULL,
    active           boolean     NOT NULL DEFAULT true,
    -- argon2id PHC string; never logged, never returned by the API
    password_hash    text        NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

-- Sessions are operational state, not history: the history of logins and logouts is the User
-- stream. Only a SHA-256 of the bearer token is stored.
CREATE TABLE sessions (
    token_hash   bytea       PRIMARY KEY,
    id           uuid        NOT NULL UNIQUE,
    user_id      uuid        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);

CREATE INDEX sessions_user ON sessions (user_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON users, sessions TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('users');
