-- The hash chain's functions were declared IMMUTABLE, but their bodies call functions that are
-- only STABLE (`convert_to`, and `extract` of a timestamptz). PostgreSQL does not inline such a
-- function, so every insert into `events` had the trigger run `custos_event_hash` as a function
-- of its own: its body, and the body of each of its eight `custos_hash_part` calls, parsed and
-- planned again for every event (about a sixth of all CPU while seeding employees, in a
-- profile). Declared STABLE, both are inlined into the trigger's expression, which is planned
-- once per connection. The bytes they compute do not change.
ALTER FUNCTION custos_hash_part(text) STABLE;
ALTER FUNCTION custos_event_hash(bytea, text, text, bigint, text, text, json, json, timestamptz)
    STABLE;
