-- Indexes for record lists: equality on any field (built-in or custom) is containment in
-- `fields`, served by one GIN index; the usual orders by name have btree indexes matching
-- `ORDER BY lower(...) NULLS LAST, id`.
CREATE INDEX records_fields ON records USING gin (fields jsonb_path_ops);
CREATE INDEX records_last_name ON records (datasheet, lower(fields->>'last_name') NULLS LAST, id);
CREATE INDEX records_first_name ON records (datasheet, lower(fields->>'first_name') NULLS LAST, id);
