-- A stage scheduled for a later day holds from the start of that day (UTC), not from when it
-- was recorded: retention counts from `stage_since`. Rows whose stage came from such a change
-- take the day, as the records projection now gives it (`records::in_force_at`); the others
-- keep theirs. The key of a field's value starts with its day (`YYYY-MM-DD#sequence`).
UPDATE records
   SET stage_since = GREATEST(
           stage_since,
           left(coalesce(field_since->>'stage', since_base), 10)::date::timestamp AT TIME ZONE 'UTC')
 WHERE stage_since IS NOT NULL
   AND coalesce(field_since->>'stage', since_base) <> '';
