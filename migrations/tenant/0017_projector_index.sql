-- Projectors read the events of their own aggregate types in commit order. With a single
-- index on (transaction_id, global_position), a projector of a rare type (users, roles) had to
-- walk past every event of the others — with a million record events the planner chose a
-- full scan on every poll. One ordered range scan per type instead:
CREATE INDEX events_by_type_commit_order ON events (aggregate_type, transaction_id, global_position);
