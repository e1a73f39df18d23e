-- Where `custos projections rebuild` builds a read model's replacement tables, indexed and
-- analysed, before it swaps them in for the live ones (a rename: readers and projectors wait
-- only for the swap, not for the rows to be copied). The service's role cannot see into it;
-- the tables in it live only while a rebuild runs, and what a rebuild that crashed left here
-- is removed by the next rebuild of that read model and when the service starts.
CREATE SCHEMA custos_rebuild;
REVOKE ALL ON SCHEMA custos_rebuild FROM PUBLIC;
