-- API clients' idempotency keys: the request each key made, and the fingerprint of the body it
-- came with. Written in the transaction that stores the request.
CREATE TABLE client_keys (
    client      text NOT NULL,
    key         text NOT NULL,
    fingerprint text NOT NULL,
    request_id  bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (client, key)
);
