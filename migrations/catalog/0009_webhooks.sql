-- Organisations that have registered a webhook: the delivery worker looks at them (and keeps
-- their context open) even while no request does, so a retry falls due on time. Set when a
-- webhook is registered; not cleared when the last one is removed (that only costs a look).
ALTER TABLE tenants ADD COLUMN webhooks boolean NOT NULL DEFAULT false;
