-- Live record changes (`recordChanged`): each time the records projection's checkpoint moves,
-- the database announces `records` on the cache channel, so that every instance's reader of
-- record changes reads what the read model now shows — one announcement per projector batch
-- (PostgreSQL folds identical ones of a transaction), never one per event or per subscriber.
CREATE TRIGGER records_projection_announce_progress
    AFTER UPDATE ON projection_checkpoints
    FOR EACH ROW
    WHEN (NEW.projection = 'records'
          AND (NEW.transaction_id, NEW.global_position)
              IS DISTINCT FROM (OLD.transaction_id, OLD.global_position))
    EXECUTE FUNCTION custos_announce_change('records');
