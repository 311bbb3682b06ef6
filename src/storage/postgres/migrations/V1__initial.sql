-- refund-desk's store on PostgreSQL. Requests and audit entries keep the domain's JSON (the
-- same as the embedded engine's), with the columns the queries and locks need beside it.

CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- R-1001 reads better than R-1.
CREATE SEQUENCE request_numbers START 1001;

CREATE TABLE requests (
    id         bigint PRIMARY KEY,
    requester  text NOT NULL,
    status     text NOT NULL,
    -- The charge Stripe confirmed: the open requests on one charge lock it together.
    charge_id  text,
    created_at timestamptz NOT NULL,
    body       jsonb NOT NULL
);
CREATE INDEX requests_by_status ON requests (status, id);
CREATE INDEX requests_by_requester ON requests (requester, id);
CREATE INDEX requests_by_charge ON requests (charge_id) WHERE charge_id IS NOT NULL;

-- The payments a request is on (what it named, its charge, its payment intent).
CREATE TABLE request_payments (
    payment    text NOT NULL,
    request_id bigint NOT NULL REFERENCES requests (id),
    PRIMARY KEY (payment, request_id)
);

-- The audit trail: a hash chain; appends serialise on the head row.
CREATE TABLE audit (
    seq        bigint PRIMARY KEY,
    request_id bigint NOT NULL,
    entry      jsonb NOT NULL
);
CREATE INDEX audit_by_request ON audit (request_id, seq);
CREATE TABLE audit_head (
    id   int PRIMARY KEY CHECK (id = 1),
    seq  bigint NOT NULL,
    hash text NOT NULL
);

-- Outstanding jobs. A request's lane runs in id order; a runner holds a job until
-- claimed_until, after which another replica may take it over.
CREATE TABLE jobs (
    id            bigserial PRIMARY KEY,
    request_id    bigint NOT NULL,
    lane          smallint NOT NULL,
    effect        jsonb NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    not_before    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    last_error    text,
    parked        boolean NOT NULL DEFAULT false,
    posted_ts     text,
    claimed_until timestamptz
);
CREATE INDEX jobs_by_lane_order ON jobs (request_id, lane, id);
CREATE INDEX jobs_due ON jobs (lane, not_before) WHERE NOT parked;

CREATE TABLE refund_ids (
    refund     text PRIMARY KEY,
    request_id bigint NOT NULL
);

CREATE TABLE stripe_events (
    id      text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);

CREATE TABLE slack_events (
    id      text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);

CREATE TABLE home_users (
    user_id   text PRIMARY KEY,
    opened_at timestamptz NOT NULL
);

CREATE TABLE emails (
    request_id bigint NOT NULL,
    kind       text NOT NULL,
    record     jsonb NOT NULL,
    PRIMARY KEY (request_id, kind)
);

CREATE TABLE outside_refunds (
    refund text PRIMARY KEY,
    record jsonb NOT NULL
);

CREATE TABLE alert_claims (
    what   text PRIMARY KEY,
    job_id bigint NOT NULL,
    at     timestamptz NOT NULL
);

-- The day's totals: `requested`, and `refunded/<currency>` in minor units.
CREATE TABLE day_totals (
    day  date NOT NULL,
    what text NOT NULL,
    n    bigint NOT NULL,
    PRIMARY KEY (day, what)
);
