-- Periodic work (reading Stripe's events, the approver group, pruning old event ids) runs on
-- the replica holding its lease; another takes it over once `until` has passed.
CREATE TABLE leases (
    name   text PRIMARY KEY,
    holder text NOT NULL,
    until  timestamptz NOT NULL
);
