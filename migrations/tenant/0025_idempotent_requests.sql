-- Retry-safe mutations: what a caller's `Idempotency-Key` stood for, and the answer it got.
--
-- A row is taken before the mutation runs (its primary key makes two requests with one key
-- take turns) and answered after it: a retry gets the stored answer and appends nothing. The
-- answer is sealed with a key derived from the master key (it may hold personal data), kept
-- 24 hours, and dropped for the whole organisation on any erasure (the key stays, so a retry
-- is still not applied twice). Not a read model and not exported: it is about requests, not
-- about the records.
CREATE TABLE idempotent_requests (
    -- the user or API token that sent it: keys are the caller's own
    actor_id        uuid        NOT NULL,
    key             text        NOT NULL,
    -- SHA-256 of the request (query, operation name, variables): a key reused for another
    -- request is refused
    fingerprint     bytea       NOT NULL,
    -- the HTTP request that ran it, and the event stream's head when it started: if it never
    -- answered (the service stopped), its events are found by these
    request_id      uuid        NOT NULL,
    after_position  bigint      NOT NULL,
    -- while it runs: until when another request with the key waits for it
    running_until   timestamptz,
    -- once answered: the HTTP status and the sealed response body (NULL once an erasure
    -- dropped it, or when the answer was lost)
    status          smallint,
    answer          bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor_id, key)
);

CREATE INDEX idempotent_requests_created ON idempotent_requests (created_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON idempotent_requests TO custos_tenant;

-- Any erasure (a subject's key destroyed, by whatever path: a request, retention, the erasure
-- ledger after a restore) drops every stored answer: one may show the erased person.
CREATE FUNCTION custos_drop_idempotent_answers() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE idempotent_requests SET answer = NULL WHERE answer IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER subject_keys_drop_idempotent_answers
    AFTER UPDATE OF wrapped_key OR DELETE OR TRUNCATE ON subject_keys
    FOR EACH STATEMENT EXECUTE FUNCTION custos_drop_idempotent_answers();
