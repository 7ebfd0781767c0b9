-- Change impact and explanations (issue 16). Every rules version is kept: one row per version
-- with the whole rule set as it was after that save, in the shape of a rules file as JSON
-- (`pipeline::rules::RuleSetDoc`, what `pipeline::rules::load` returns), written by the writers
-- of `pipeline::rules` in the save's own transaction. So any version can be recompiled (the
-- compile worker's recompile requests read `pipeline::rules::load_version`) and a stored lead
-- can be explained under the rules that routed it. `diff` is the change impact against the
-- previous version, stored in the same transaction by the API's saves
-- (`pipeline::rules::record_diff`); NULL where none was computed.
CREATE TABLE rule_versions (
    version  bigint      PRIMARY KEY CHECK (version > 0),
    document jsonb       NOT NULL CHECK (jsonb_typeof(document) = 'object'),
    diff     jsonb,
    saved_at timestamptz NOT NULL DEFAULT now()
);

-- An upgraded database keeps the version it runs, so what is active can be recompiled: the
-- current version is built from `rule_set` and `rules` as `pipeline::rules::load` reads them
-- (rules by priority, then position; no `default_route` key when there is none). Older
-- versions were never kept and cannot be restored.
INSERT INTO rule_versions (version, document, saved_at)
SELECT s.version,
       jsonb_build_object(
           'version', 1,
           'timezone', s.timezone,
           'routes', to_jsonb(s.routes),
           'fields', s.fields,
           'rules', coalesce(
               (SELECT jsonb_agg(jsonb_build_object('name', r.name, 'priority', r.priority, 'when', r.when_expr,
                                                    'route', r.route, 'enabled', r.enabled)
                                 ORDER BY r.priority, r.position)
                FROM rules r),
               '[]'::jsonb))
       || CASE WHEN s.default_route IS NULL THEN '{}'::jsonb
               ELSE jsonb_build_object('default_route', s.default_route) END,
       s.updated_at
FROM rule_set s
WHERE s.version > 0;

-- The routing fields the decision saw (`pipeline::message::PartnerLead`'s lead fields: offer
-- fields plus the derived ones), stored by deliver with each row, as `unmatched_leads` stores
-- them, so a stored lead can be explained. NULL on rows stored before this migration. No
-- default and no CHECK: adding the column then neither rewrites nor scans the table.
ALTER TABLE leads ADD COLUMN fields jsonb;
