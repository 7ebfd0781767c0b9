-- Lead distribution (RULES.md "Routes", README "Caps, schedules, splits and multi-sell"): rules
-- that split leads or sell them to several partners and fall through when a partner is
-- unavailable; partners with caps, budgets and schedules; the counters and split positions
-- every replica shares; and the record of why each lead went where it went.

-- A rule's route as written: a partner's name (a JSON string), `{"split": {...}}` or
-- `{"shared": [...], "max": n}`.
ALTER TABLE rules ALTER COLUMN route TYPE jsonb USING to_jsonb(route);
ALTER TABLE rules ADD COLUMN fallthrough boolean NOT NULL DEFAULT true;
-- How many matching rules a lead may fall through (null: the compiler's default, 3).
ALTER TABLE rule_set ADD COLUMN candidates integer CHECK (candidates BETWEEN 1 AND 8);

-- A partner's time zone, schedule, caps (also per rule), budget and price, in the partners
-- file's shape (`pipeline::partners::PartnerConfig`).
ALTER TABLE partners ADD COLUMN distribution jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(distribution) = 'object');

-- Leads counted against a partner's caps and budget (rule = '') or its cap for one rule, per
-- period of its local calendar. Routers lock the rows a batch needs (in key order) and add
-- its reservations in the batch's transaction; deliver gives back those of duplicates.
CREATE TABLE cap_usage (
    partner      text    NOT NULL REFERENCES partners (name) ON DELETE CASCADE,
    rule         text    NOT NULL DEFAULT '',
    period       text    NOT NULL CONSTRAINT cap_usage_period_known CHECK (period IN ('day', 'week', 'month', 'total')),
    -- the period's first local day (1970-01-01 for the total)
    period_start date    NOT NULL,
    leads        integer NOT NULL DEFAULT 0 CHECK (leads >= 0),
    spend_cents  bigint  NOT NULL DEFAULT 0 CHECK (spend_cents >= 0),
    PRIMARY KEY (partner, rule, period, period_start)
);

-- Counts given back (a lead deliver found a duplicate and never sent), appended without
-- touching the hot `cap_usage` rows, which routers hold locked for a batch at a time; the next
-- router to lock a counter folds its returns into it.
CREATE TABLE cap_returns (
    id           bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner      text    NOT NULL,
    rule         text    NOT NULL DEFAULT '',
    period       text    NOT NULL,
    period_start date    NOT NULL,
    leads        integer NOT NULL CHECK (leads >= 0),
    spend_cents  bigint  NOT NULL CHECK (spend_cents >= 0)
);
CREATE INDEX cap_returns_key_idx ON cap_returns (partner, rule, period, period_start);

-- Each weighted split's position per partner (smooth weighted round robin), shared by every
-- router replica through row locks.
CREATE TABLE split_state (
    rule       text        NOT NULL,
    partner    text        NOT NULL,
    current    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule, partner)
);

-- Why a lead went where it went: the candidate rules and partners tried in order, why each
-- skipped one was skipped (capped, schedule, circuit, paused), the winner, and whether the
-- lead is held for a partner (`pipeline::message::Routing`).
ALTER TABLE leads ADD COLUMN routing jsonb;
