-- Idempotency of `POST /api/submit` (DESIGN.md, "Ingestion"). The first answer to a site's
-- `Idempotency-Key` is kept here, written in the same transaction that puts the submission on
-- the `submissions` queue, so a retried post finds it and creates nothing new. `request_hash` is
-- the SHA-256 of the first request's body: the same key with a different body is refused.
-- Rows older than the API's retention (`IDEMPOTENCY_TTL_SECS`) are pruned by the API.
CREATE TABLE submit_idempotency (
    site_id       uuid        NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    key           text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  bytea       NOT NULL CHECK (octet_length(request_hash) = 32),
    submission_id uuid        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, key)
);
CREATE INDEX submit_idempotency_created_at_idx ON submit_idempotency (created_at);
