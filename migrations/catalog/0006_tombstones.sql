-- What is left of a purged organisation: its catalog row goes (the slug is free again), its
-- database, role, keys and files are deleted, and this tombstone stays as the proof — who it
-- was, when it lived, who purged it and why, and the last signed tree head of its history.
-- Its `subscription_events` stream stays beside it.
CREATE TABLE tombstones (
    id              uuid        PRIMARY KEY,
    slug            text        NOT NULL,
    name            text        NOT NULL,
    region          text        NOT NULL,
    created_at      timestamptz NOT NULL,
    purged_at       timestamptz NOT NULL,
    -- `operator`, `custos (schedule)`, …
    purged_by       text        NOT NULL,
    -- the early reason, or why the organisation came to be purged
    reason          text        NOT NULL,
    -- number, tree size, Merkle root and SHA-256 of the last signed tree head (null: none)
    final_tree_head jsonb
);
