-- Offer Router schema: every datastore of DESIGN.md ("Datastores").
-- PGMQ itself is installed by `pipeline::db::migrate` before these files run.

-- Lead-generation sites. Only a SHA-256 hash of the API key is stored; `key_prefix` is the
-- key's non-secret prefix so operators can tell keys apart.
CREATE TABLE sites (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    api_key_hash bytea       NOT NULL UNIQUE CHECK (octet_length(api_key_hash) = 32),
    key_prefix   text        NOT NULL,
    revoked_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The Lead Identity graph. A main record has `alias_of IS NULL`; an alias points at a main
-- record, never at another alias. That rule is declarative: `is_main` is derived, and the
-- composite foreign key (alias_of, alias_target_is_main) can only reference a row whose
-- (id, is_main) is (alias_of, true). The same key also stops a main record that has aliases
-- from being turned into an alias itself.
CREATE TABLE persons (
    id                   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email                text,
    full_name            text,
    phone                text,
    alias_of             bigint,
    is_main              boolean     GENERATED ALWAYS AS (alias_of IS NULL) STORED,
    alias_target_is_main boolean     GENERATED ALWAYS AS (CASE WHEN alias_of IS NULL THEN NULL ELSE true END) STORED,
    created_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT persons_two_identity_keys CHECK (num_nonnulls(email, full_name, phone) >= 2),
    CONSTRAINT persons_not_own_alias CHECK (alias_of IS DISTINCT FROM id),
    CONSTRAINT persons_id_is_main_key UNIQUE (id, is_main),
    CONSTRAINT persons_alias_of_main FOREIGN KEY (alias_of, alias_target_is_main)
        REFERENCES persons (id, is_main)
);
-- Identity lookups: a submission matches on any two of the three keys, so each key is looked
-- up on its own (bitmap OR), and a person's aliases are gathered through alias_of.
CREATE INDEX persons_email_idx     ON persons (email)     WHERE email IS NOT NULL;
CREATE INDEX persons_phone_idx     ON persons (phone)     WHERE phone IS NOT NULL;
CREATE INDEX persons_full_name_idx ON persons (full_name) WHERE full_name IS NOT NULL;
CREATE INDEX persons_alias_of_idx  ON persons (alias_of)  WHERE alias_of IS NOT NULL;
-- An identical alias is reused, never stored twice.
CREATE UNIQUE INDEX persons_alias_unique ON persons (alias_of, email, full_name, phone)
    NULLS NOT DISTINCT WHERE alias_of IS NOT NULL;

-- The authoritative rule set (RULES.md). One header row carries the schema-level parts and the
-- version; every change to the header or to `rules` bumps `version` (done by the writers, in
-- the same transaction), and the compile worker compiles the newest version.
CREATE TABLE rule_set (
    id            boolean     PRIMARY KEY DEFAULT true CHECK (id),
    version       bigint      NOT NULL DEFAULT 0 CHECK (version >= 0),
    timezone      text        NOT NULL DEFAULT 'UTC',
    default_route text,
    routes        text[]      NOT NULL DEFAULT '{}',
    fields        jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(fields) = 'object'),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rule_set_default_route_known CHECK (default_route IS NULL OR default_route = ANY (routes))
);
INSERT INTO rule_set DEFAULT VALUES;

CREATE TABLE rules (
    name       text        PRIMARY KEY CHECK (name ~ '^[a-z0-9_-]+$'),
    priority   integer     NOT NULL,
    -- equal priorities are tried in file order
    position   integer     NOT NULL,
    when_expr  text        NOT NULL,
    route      text        NOT NULL,
    enabled    boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rules_order_idx ON rules (priority, position);

-- Compiled decision modules. A refused compile is stored too (no wasm, its report says why).
-- At most one row is active (partial unique index); the compile worker flips it atomically.
CREATE TABLE decision_trees (
    version        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rules_version  bigint      NOT NULL,
    wasm           bytea,
    manifest       jsonb,
    report         jsonb       NOT NULL,
    active         boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    activated_at   timestamptz,
    CONSTRAINT decision_trees_active_has_module CHECK (NOT active OR (wasm IS NOT NULL AND manifest IS NOT NULL))
);
CREATE UNIQUE INDEX decision_trees_one_active ON decision_trees ((true)) WHERE active;
CREATE INDEX decision_trees_rules_version_idx ON decision_trees (rules_version);

-- Partner configuration. A partner's name is a route name and part of its queue names
-- (`partner_<name>`, `partner_<name>_dlq`), so it is limited to what PGMQ accepts (47 chars).
CREATE TABLE partners (
    name                text        PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,34}$'),
    enabled             boolean     NOT NULL DEFAULT true,
    dedupe_fields       text[]      NOT NULL DEFAULT '{email}' CHECK (cardinality(dedupe_fields) > 0),
    dedupe_window       interval    NOT NULL DEFAULT '30 days' CHECK (dedupe_window >= interval '0'),
    request             jsonb       NOT NULL CHECK (jsonb_typeof(request) = 'object'),
    classification      jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(classification) = 'object'),
    timeout_ms          integer     NOT NULL DEFAULT 10000 CHECK (timeout_ms > 0),
    max_retries         integer     NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    backoff_base_ms     integer     NOT NULL DEFAULT 1000 CHECK (backoff_base_ms >= 0),
    backoff_cap_ms      integer     NOT NULL DEFAULT 300000 CHECK (backoff_cap_ms >= backoff_base_ms),
    breaker             jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(breaker) = 'object'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- One row per (submission, partner) delivery. `state` mirrors the Rust `DeliveryState` enum.
CREATE TABLE leads (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    submission_id    uuid        NOT NULL,
    partner          text        NOT NULL REFERENCES partners (name),
    person_id        bigint      NOT NULL REFERENCES persons (id),
    alias_id         bigint      REFERENCES persons (id),
    rule_name        text,
    tree_version     bigint      REFERENCES decision_trees (version),
    state            text        NOT NULL DEFAULT 'pending'
        CONSTRAINT leads_state_known CHECK (state IN ('pending', 'accepted', 'rejected', 'duplicate', 'failed')),
    -- the partner's dedupe key over this lead (e.g. the normalized email), computed by deliver
    dedupe_key       text        NOT NULL,
    request_date     timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    response_status  integer,
    response_excerpt text,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT leads_one_per_submission_partner UNIQUE (submission_id, partner)
);
-- Dedupe: "has this partner had this key within its window?" (newest first).
CREATE INDEX leads_dedupe_idx ON leads (partner, dedupe_key, request_date DESC) WHERE state <> 'duplicate';
CREATE INDEX leads_person_idx ON leads (person_id);
CREATE INDEX leads_pending_idx ON leads (partner, updated_at) WHERE state = 'pending';

-- One circuit breaker per partner, shared by every deliver replica. Writers compare-and-swap
-- on `generation`; the half-open probe is a lease (owner + expiry) so exactly one replica probes.
CREATE TABLE circuit_breakers (
    partner              text        PRIMARY KEY REFERENCES partners (name) ON DELETE CASCADE,
    state                text        NOT NULL DEFAULT 'closed'
        CONSTRAINT circuit_breakers_state_known CHECK (state IN ('closed', 'open', 'half_open')),
    consecutive_failures integer     NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    window_successes     integer     NOT NULL DEFAULT 0 CHECK (window_successes >= 0),
    window_failures      integer     NOT NULL DEFAULT 0 CHECK (window_failures >= 0),
    window_started_at    timestamptz NOT NULL DEFAULT now(),
    opened_at            timestamptz,
    retry_at             timestamptz,
    generation           bigint      NOT NULL DEFAULT 0,
    probe_owner          text,
    probe_lease_until    timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT circuit_breakers_open_has_retry_at CHECK (state <> 'open' OR (opened_at IS NOT NULL AND retry_at IS NOT NULL)),
    CONSTRAINT circuit_breakers_lease_complete CHECK ((probe_owner IS NULL) = (probe_lease_until IS NULL))
);
