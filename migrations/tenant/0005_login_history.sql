-- Lockout state on users, and the login history read model (projected from User events).

ALTER TABLE users ADD COLUMN locked_until timestamptz;

-- One row per login, failed login, logout, lock and unlock. IP and user agent are the user's
-- personal data: erasing the user must blank them here too.
CREATE TABLE logins (
    global_position bigint      PRIMARY KEY,
    user_id         uuid        NOT NULL,
    event_type      text        NOT NULL,
    -- the failure class for failed logins (never the password that was tried)
    reason          text,
    session_id      uuid,
    ip              text,
    user_agent      text,
    recorded_at     timestamptz NOT NULL
);

CREATE INDEX logins_by_user ON logins (user_id, global_position);
CREATE INDEX logins_by_time ON logins (recorded_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON logins TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('logins');
