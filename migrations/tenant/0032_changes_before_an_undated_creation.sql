-- A record created before changes were effective-dated has no day of its own in its creation
-- event, so a later change could be dated before the day it was recorded. The records
-- projection compared such a change with the creation's key even for a field the creation did
-- not give, and left the field without the value (the record's own fold, `recordAsOf` and the
-- reports from the history had it). The projection now gives such a field the change's value;
-- `records` is rebuilt where a row may lack one: when `record_versions` holds a change dated
-- before its record's creation, or when `record_versions` has not been filled yet (0029 in the
-- same run) and there are records to check.
DO $$
BEGIN
    IF EXISTS (SELECT 1
                 FROM record_versions v
                 JOIN record_versions c ON c.record_id = v.record_id AND c.kind = 'created'
                WHERE v.effective_from < c.effective_from)
       OR (EXISTS (SELECT 1 FROM records)
           AND (SELECT global_position FROM projection_checkpoints
                 WHERE projection = 'record_versions') = 0)
    THEN
        DELETE FROM pending_changes;
        DELETE FROM records;
        UPDATE projection_checkpoints
           SET transaction_id = '0', global_position = 0, updated_at = now()
         WHERE projection = 'records';
    END IF;
END
$$;
