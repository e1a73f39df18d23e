-- The outbox: every notification Custos owes someone, written idempotently by what causes it
-- (an organisation's lifecycle event, a schedule's notice, a breach notice an administrator
-- issued) and delivered by a worker with retries, exponential backoff and a dead letter.
--
-- It holds no personal data: a recipient is a reference (`administrators` of the organisation,
-- `user:<id>`, `record:<id>`) resolved to an address when the message goes out, so a person
-- erased meanwhile is never written to. Only a purge notice carries its address (`address`),
-- because the organisation's database is gone when it is sent; the address is cleared once the
-- notice has left or died.
CREATE TABLE notifications (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    -- what it says: trial_ending, trial_ended, plan_chosen, storage_near_limit, …, breach
    kind            text        NOT NULL,
    channel         text        NOT NULL CHECK (channel IN ('email')),
    -- why it exists, unique per recipient (the idempotency key): `subscription:<sequence>`,
    -- `trial-ending-7d:<trial end>`, `incident:<id>`, …
    cause           text        NOT NULL,
    recipient       text        NOT NULL,
    -- the facts the message is written from (dates, plan, sizes, an incident id), never a value
    -- about a person
    payload         jsonb       NOT NULL DEFAULT '{}',
    address         text,
    -- pending: to be sent (or sent again); expanded: an audience split into one notification
    -- per person; sent; dead: given up after the last attempt; cancelled: nobody to send it to
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'expanded', 'sent', 'dead', 'cancelled')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- when it is tried next (year 9999: held until what it announces has happened)
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- a worker took it until then (a worker that died lets it go at that time), under this
    -- token: only the worker holding it records the outcome
    claimed_until   timestamptz,
    claim           uuid,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    UNIQUE (tenant_id, cause, recipient)
);

CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
-- ids are UUIDv7: by id is by when a notification was written
CREATE INDEX notifications_of_tenant ON notifications (tenant_id, id DESC);
