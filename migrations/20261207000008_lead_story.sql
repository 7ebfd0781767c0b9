-- A lead's whole story for the admin UI (leads search, the lead page, partner pages, the
-- dashboard) and the dead letters an operator discards.

-- The site and submission time of each delivery row, from the routed message, so leads can be
-- searched by site and the end-to-end latency (post → partner answer) read off the rows. Null
-- for rows stored before they were kept.
ALTER TABLE leads ADD COLUMN site text;
ALTER TABLE leads ADD COLUMN submitted_at timestamptz;

-- Time-range reads (searches, outcomes today, the dashboard's last minutes): rows are appended
-- in time order, so a block-range index is enough, and it costs next to nothing to keep.
CREATE INDEX leads_created_brin ON leads USING brin (created_at);
CREATE INDEX unmatched_leads_created_brin ON unmatched_leads USING brin (created_at);

-- One row per call deliver made for a lead, in the transaction that records its answer:
-- `leads` keeps only the last answer.
CREATE TABLE delivery_attempts (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lead_id          bigint      NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    partner          text        NOT NULL,
    -- 1 for the first call of the row (a replayed letter starts again at 1)
    attempt          integer     NOT NULL CHECK (attempt >= 1),
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- the partner's HTTP status; null when no answer came (timeout, refused connection)
    status           integer,
    -- how the answer was classified (`pipeline::partners::Verdict`)
    verdict          text        NOT NULL
        CONSTRAINT delivery_attempts_verdict_known CHECK (verdict IN ('accepted', 'rejected', 'duplicate', 'retryable', 'permanent')),
    elapsed_ms       integer     NOT NULL CHECK (elapsed_ms >= 0),
    response_excerpt text,
    error            text
);
CREATE INDEX delivery_attempts_lead_idx ON delivery_attempts (lead_id, attempt);
-- A partner's last error: only failed calls are indexed.
CREATE INDEX delivery_attempts_failed_idx ON delivery_attempts (partner, id DESC) WHERE verdict IN ('retryable', 'permanent');

-- Dead letters an operator discarded (`/api/dlq/{dlq}/discard`): the letter as it was, why, and
-- who did it. Nothing leaves a dead-letter queue without a trace.
CREATE TABLE dlq_discarded (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text        NOT NULL,
    msg_id       bigint      NOT NULL,
    enqueued_at  timestamptz NOT NULL,
    message      jsonb,
    reason       text        NOT NULL CHECK (btrim(reason) <> ''),
    actor        text        NOT NULL,
    discarded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dlq_discarded_once UNIQUE (queue, msg_id)
);
CREATE INDEX dlq_discarded_submission_idx ON dlq_discarded ((lower(message->'message'->>'submission_id')));
