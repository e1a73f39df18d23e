-- Scheduled changes taking effect, for live subscribers (`recordChanged` sends
-- `SCHEDULED_CHANGE_TOOK_EFFECT`): a change that takes effect on its day has no event of its
-- own (the records projection takes it from `pending_changes`), so the projector writes here
-- which record's change (its version) took effect, in the transaction that takes it, and the
-- insert announces `records` like the projection's progress does (migration 0027: only while
-- a reader of record changes holds a lease). Readers read past the last position they saw;
-- the projector serialises these transactions (an advisory lock), so positions commit in
-- order. Rows hold no value of the record, and go after a day.
CREATE TABLE scheduled_effects (
    position       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id      uuid        NOT NULL,
    sequence       bigint      NOT NULL,
    effective_from date        NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scheduled_effects_taken ON scheduled_effects (taken_at);
GRANT SELECT, INSERT, DELETE ON scheduled_effects TO custos_tenant;

CREATE TRIGGER scheduled_effects_announce
    AFTER INSERT ON scheduled_effects
    FOR EACH STATEMENT
    EXECUTE FUNCTION custos_announce_records_progress();
