-- Tamper evidence: every event stores the hash of the previous event of its stream and its
-- own hash over that and its stored bytes (ciphertext included), computed here, on insert,
-- so no writer can skip it. Crypto-shredding never changes a stored event, so chains still
-- verify after an erasure. Signed checkpoints over every stream's head go in `checkpoints`.

-- One field of the hashed message: its length (4 bytes, big-endian) then its UTF-8 bytes.
CREATE FUNCTION custos_hash_part(value text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT int4send(octet_length(value)) || convert_to(value, 'UTF8')
$$;

-- An event's hash: SHA-256 over the previous event's hash (nothing for a stream's first
-- event) and the event's stored fields, in this order. `custos verify` recomputes it
-- independently (api/src/integrity.rs).
CREATE FUNCTION custos_event_hash(
    previous bytea, aggregate_type text, aggregate_id text, sequence bigint, event_type text,
    event_version text, payload json, metadata json, recorded_at timestamptz
) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(
        coalesce(previous, ''::bytea)
        || custos_hash_part(aggregate_type)
        || custos_hash_part(aggregate_id)
        || custos_hash_part(sequence::text)
        || custos_hash_part(event_type)
        || custos_hash_part(event_version)
        || custos_hash_part(payload::text)
        || custos_hash_part(metadata::text)
        || custos_hash_part((extract(epoch FROM recorded_at) * 1000000)::bigint::text)
    )
$$;

ALTER TABLE events
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash bytea;

-- Existing events (development databases) are chained in stream order.
ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete;
DO $$
DECLARE
    e record;
    previous bytea;
    stream text := NULL;
BEGIN
    FOR e IN SELECT * FROM events ORDER BY aggregate_type, aggregate_id, sequence LOOP
        IF stream IS DISTINCT FROM e.aggregate_type || '/' || e.aggregate_id THEN
            previous := NULL;
            stream := e.aggregate_type || '/' || e.aggregate_id;
        END IF;
        UPDATE events
           SET prev_hash = previous,
               hash = custos_event_hash(previous, e.aggregate_type, e.aggregate_id, e.sequence,
                                        e.event_type, e.event_version, e.payload, e.metadata,
                                        e.recorded_at)
         WHERE aggregate_type = e.aggregate_type AND aggregate_id = e.aggregate_id
           AND sequence = e.sequence
        RETURNING hash INTO previous;
    END LOOP;
END
$$;
ALTER TABLE events ENABLE TRIGGER events_no_update_or_delete;
ALTER TABLE events ALTER COLUMN hash SET NOT NULL;

CREATE FUNCTION events_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous bytea;
BEGIN
    IF NEW.sequence > 1 THEN
        SELECT hash INTO previous FROM events
         WHERE aggregate_type = NEW.aggregate_type AND aggregate_id = NEW.aggregate_id
           AND sequence = NEW.sequence - 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'event % of stream %/% has no predecessor',
                NEW.sequence, NEW.aggregate_type, NEW.aggregate_id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END IF;
    NEW.prev_hash := previous;
    NEW.hash := custos_event_hash(previous, NEW.aggregate_type, NEW.aggregate_id, NEW.sequence,
                                  NEW.event_type, NEW.event_version, NEW.payload, NEW.metadata,
                                  NEW.recorded_at);
    RETURN NEW;
END
$$;

CREATE TRIGGER events_hash_chain
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_chain();

-- Signed checkpoints: an accumulator over every stream's head as of a snapshot, signed with
-- the service's Ed25519 key (derived from the master key, never stored here). Each also goes
-- to an append-only file in the data directory.
CREATE TABLE checkpoints (
    number      bigint      PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- which events it covers: those whose transaction is visible in this snapshot
    snapshot    text        NOT NULL,
    streams     bigint      NOT NULL,
    events      bigint      NOT NULL,
    root        bytea       NOT NULL,
    -- the previous checkpoint's signature: checkpoints form a chain too
    previous    bytea,
    public_key  bytea       NOT NULL,
    signature   bytea       NOT NULL
);

CREATE TRIGGER checkpoints_no_update_or_delete
    BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

GRANT SELECT, INSERT ON checkpoints TO custos_tenant;
