-- Restriction of processing (GDPR Art. 18): when and why a record was restricted.
ALTER TABLE records
    ADD COLUMN restricted_at timestamptz,
    ADD COLUMN restriction_reason text;
