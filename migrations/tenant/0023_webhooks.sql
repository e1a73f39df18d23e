-- Webhooks: endpoints the organisation's administrators register to be told, by a signed HTTP
-- POST, when a record, a user or a role changes.
--
-- `webhooks` is the read model of the `webhook` aggregate. What was delivered is not a read
-- model: each webhook has a cursor in the event log (`webhook_cursors`, moved by the delivery
-- worker past each event it delivered or skipped) and a log of delivery attempts
-- (`webhook_attempts`). Rebuilding the read model therefore never sends anything again.
CREATE TABLE webhooks (
    id              uuid        PRIMARY KEY,
    version         bigint      NOT NULL,
    url             text        NOT NULL,
    topics          text[]      NOT NULL,
    description     text,
    enabled         boolean     NOT NULL,
    -- why it was last disabled (by an administrator, or by Custos after repeated failures)
    disabled_reason text,
    created_by      uuid        NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    -- kept after removal (who or what an event names stays known), listed no more
    removed_at      timestamptz
);

GRANT SELECT, INSERT, UPDATE, DELETE ON webhooks TO custos_tenant;
INSERT INTO projection_checkpoints (projection) VALUES ('webhooks');

-- One row per webhook the worker has started on: the last event (in commit order) it has
-- dealt with, the last change of the organisation's subscription (its stream is in the
-- catalog) it has dealt with, the failures of the delivery it is retrying, and a lease so that
-- one instance at a time delivers to a webhook (in order, without a transaction held open
-- while it waits).
CREATE TABLE webhook_cursors (
    webhook_id      uuid        PRIMARY KEY,
    transaction_id  xid8        NOT NULL,
    global_position bigint      NOT NULL,
    -- NULL until the worker starts it at the subscription's sequence then
    lifecycle_sequence bigint,
    failures        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    claim           uuid
);

GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_cursors TO custos_tenant;

-- Every delivery attempt: what was sent (never the payload: it is rebuilt from the log) and
-- what the endpoint answered. Kept 30 days.
CREATE TABLE webhook_attempts (
    id              uuid        PRIMARY KEY,
    webhook_id      uuid        NOT NULL,
    message_id      text        NOT NULL,
    topic           text        NOT NULL,
    global_position bigint      NOT NULL,
    attempt         integer     NOT NULL,
    attempted_at    timestamptz NOT NULL,
    status_code     integer,
    error           text,
    duration_ms     integer     NOT NULL,
    succeeded       boolean     NOT NULL
);

CREATE INDEX webhook_attempts_of_webhook ON webhook_attempts (webhook_id, id DESC);
GRANT SELECT, INSERT, DELETE ON webhook_attempts TO custos_tenant;
