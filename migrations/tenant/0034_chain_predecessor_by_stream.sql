-- The hash chain's trigger found an event's predecessor with
--     WHERE aggregate_type = NEW.aggregate_type AND aggregate_id = NEW.aggregate_id
--       AND sequence = NEW.sequence - 1
-- A connection keeps the trigger's plan (a generic one after five calls). Made while the
-- organisation's `events` was young (a page or two, no statistics yet), that plan scanned
-- `events_by_type_commit_order` for the type and filtered on the stream, costing the same as
-- the primary key there; kept, it read every event of the type for each one appended, until
-- autovacuum's first ANALYZE of the table made the connection plan again. In a profile of
-- `updateEmployee` on a new organisation, this lookup was the largest single cost of the
-- database (heap_hot_search_buffer below the trigger: 12 % of all CPU).
--
-- Asking for the stream's newest event before this one, in the primary key's order, gives no
-- other index a plan as cheap (each would sort), with or without statistics; it must be the
-- event right before, as before. The bytes hashed do not change.
CREATE OR REPLACE FUNCTION events_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous bytea;
    previous_sequence bigint;
BEGIN
    IF NEW.sequence > 1 THEN
        SELECT hash, sequence INTO previous, previous_sequence FROM events
         WHERE aggregate_type = NEW.aggregate_type AND aggregate_id = NEW.aggregate_id
           AND sequence < NEW.sequence
         ORDER BY aggregate_type DESC, aggregate_id DESC, sequence DESC
         LIMIT 1;
        IF previous_sequence IS DISTINCT FROM NEW.sequence - 1 THEN
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
