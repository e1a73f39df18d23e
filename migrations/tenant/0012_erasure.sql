-- Erased records keep their row (id, datasheet, dates, who changed them) with no field value.
ALTER TABLE records ADD COLUMN erased_at timestamptz;
-- Erasing a subject destroys its key; the row records when.
GRANT DELETE ON subject_keys TO custos_tenant;
