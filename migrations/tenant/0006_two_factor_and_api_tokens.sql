-- Two-factor authentication, the organisation's settings and API tokens.

-- Whether the user logs in with a second factor (projected from User events).
ALTER TABLE users ADD COLUMN two_factor boolean NOT NULL DEFAULT false;

-- The organisation's settings (projected from Organization events): one row.
CREATE TABLE organization_settings (
    singleton           boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version             bigint      NOT NULL DEFAULT 0,
    two_factor_required boolean     NOT NULL DEFAULT false,
    updated_at          timestamptz
);
INSERT INTO organization_settings DEFAULT VALUES;

-- TOTP secrets are operational secrets, not history: they live here, outside the immutable
-- event log, so resetting a user's second factor really removes it. `secret` is the
-- XChaCha20-Poly1305 nonce and ciphertext of the secret under a key derived from the master
-- key (never in the database), bound to the user's id. While the user has not confirmed a
-- first code (users.two_factor is false) the row is a pending enrolment.
CREATE TABLE two_factor_secrets (
    user_id    uuid        PRIMARY KEY,
    secret     bytea       NOT NULL,
    -- the highest TOTP time step accepted, so that no code is accepted twice
    last_step  bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One-time recovery codes: SHA-256 of each (80 random bits), never the code.
CREATE TABLE recovery_codes (
    user_id   uuid        NOT NULL,
    code_hash bytea       NOT NULL,
    used_at   timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- A login whose password was right and which waits for its second factor. Only a SHA-256 of
-- the challenge token is stored; it expires after minutes and after a few wrong codes.
CREATE TABLE login_challenges (
    token_hash    bytea       PRIMARY KEY,
    user_id       uuid        NOT NULL,
    -- the password hash the first step verified: a reset meanwhile voids the challenge
    password_hash text        NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX login_challenges_user ON login_challenges (user_id);

-- API tokens (projected from ApiToken events). Only a SHA-256 of the token is stored.
CREATE TABLE api_tokens (
    id           uuid        PRIMARY KEY,
    version      bigint      NOT NULL,
    name         text        NOT NULL,
    role_id      uuid        NOT NULL,
    token_hash   bytea       NOT NULL UNIQUE,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    created_by   uuid        NOT NULL,
    created_at   timestamptz NOT NULL,
    -- when a use or a refusal was last recorded (each at most once a minute per token)
    last_used_at    timestamptz,
    last_refused_at timestamptz
);
CREATE INDEX api_tokens_role ON api_tokens (role_id);

-- The login history also holds API token uses and refusals.
ALTER TABLE logins
    ALTER COLUMN user_id DROP NOT NULL,
    ADD COLUMN api_token_id uuid,
    -- `totp` or `recovery_code` for logins completed with a second factor
    ADD COLUMN second_factor text;
CREATE INDEX logins_by_token ON logins (api_token_id, global_position) WHERE api_token_id IS NOT NULL;

GRANT SELECT, INSERT, UPDATE, DELETE
    ON organization_settings, two_factor_secrets, recovery_codes, login_challenges, api_tokens
    TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('organization'), ('api_tokens');
