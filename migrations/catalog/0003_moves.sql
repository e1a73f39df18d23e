-- An organisation being moved to another region's server (`custos tenant move`). While `move`
-- is set the organisation is not served. `{"region", "database"}`: the new database being
-- filled there (dropped if the move does not finish); `{"drop", "region"}`: the switch was made
-- and the old database, on that region's server, is still to be dropped. The next start
-- finishes or undoes what a killed move left.
ALTER TABLE tenants ADD COLUMN move jsonb;
