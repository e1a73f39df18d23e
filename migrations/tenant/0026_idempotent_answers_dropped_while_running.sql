-- An erasure while a keyed request runs: its answer, stored after the erasure, may still show
-- the erased person (it was computed before). The erasure marks running requests too, and an
-- answer stored for a marked request is dropped (its status kept: the retry is told it was
-- applied, as for any dropped answer).
ALTER TABLE idempotent_requests
    ADD COLUMN answer_dropped boolean NOT NULL DEFAULT false;

CREATE OR REPLACE FUNCTION custos_drop_idempotent_answers() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE idempotent_requests SET answer = NULL, answer_dropped = true
     WHERE answer IS NOT NULL OR running_until IS NOT NULL;
    RETURN NULL;
END
$$;
