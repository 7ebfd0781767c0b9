//! The authoritative rule set in Postgres (`rule_set` header + `rules`), as a plain document
//! in the shape of a RULES.md rules file, and the writes the admin API and the CLI make. Every
//! write bumps `rule_set.version`, keeps the new version's whole document in `rule_versions`
//! and enqueues a compile of it, in the caller's transaction.
//!
//! The document renders as JSON text ([`RuleSetDoc::to_text`]), which is also YAML, so the
//! compiler checks exactly what is stored with the diagnostics `rulec` gives for a file.
//!
//! Kept versions are read back with [`load_version`] (what the compile worker recompiles and
//! what explains a stored lead) and listed with [`versions`]; [`record_diff`] stores a
//! version's change impact. [`request_recompile`] asks the compile worker to recompile the
//! active tree's rules version, and [`recompiled`] reads what became of it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgExecutor};

use crate::queue::{self, QueueName};
use crate::{Error, Result};

/// One rule, as in a rules file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    /// Unique name, `[a-z0-9_-]+`.
    pub name: String,
    /// Smaller is tried first; equal priorities in document order.
    pub priority: i32,
    /// The condition (RULES.md, "Expressions").
    pub when: String,
    /// Where its leads go, as in a rules file: a route of the rule set (`"school_a"`), a split
    /// (`{"split": {"school_a": 70, "school_b": 30}}`) or a shared sale (`{"shared": [...],
    /// "max": 2}`). Kept as written; the compiler is what checks it.
    pub route: Value,
    /// Whether a lead whose partners are all unavailable goes on to the next matching rule
    /// (the default) or is held for them.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub fallthrough: bool,
    /// Disabled rules are kept but never match.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// A whole rule set, as in a rules file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetDoc {
    /// File-format version (1).
    #[serde(default = "format_version")]
    pub version: u32,
    /// Time zone of the derived time fields.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Where leads no rule matches go, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_route: Option<String>,
    /// Every route a rule may name.
    #[serde(default)]
    pub routes: Vec<String>,
    /// How many matching rules a lead may fall through (RULES.md `candidates`; unset: 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<i32>,
    /// The lead schema: field name → `{type, values | min, max, scale}`.
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// The rules, in first-match order of priority, then position.
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
}

/// `value` as one line of JSON, which YAML reads as a flow scalar or collection. Strings,
/// lists of strings and JSON values always serialize.
fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn format_version() -> u32 {
    1
}

fn utc() -> String {
    "UTC".to_owned()
}

impl Default for RuleSetDoc {
    fn default() -> Self {
        Self {
            version: 1,
            timezone: utc(),
            default_route: None,
            routes: Vec::new(),
            candidates: None,
            fields: Map::new(),
            rules: Vec::new(),
        }
    }
}

impl RuleSetDoc {
    /// The document as rules-file text (pretty JSON, which YAML readers accept).
    pub fn to_text(&self) -> String {
        // A struct of strings, numbers and JSON values always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The document as a YAML rules file in which every `when` stands verbatim (single-quoted),
    /// so the compiler's spans point at each test inside a condition; in [`RuleSetDoc::to_text`]'s
    /// JSON the quotes of string literals are escaped and a span can only cover a whole
    /// condition. The same rule set, for explaining decisions; never compiled (a module's
    /// rules hash is that of [`RuleSetDoc::to_text`]). A condition with a quote or a line break
    /// is written as a JSON string instead.
    pub fn to_yaml(&self) -> String {
        let mut out = format!("version: {}\ntimezone: {}\n", self.version, json(&self.timezone));
        if let Some(route) = &self.default_route {
            out.push_str(&format!("default_route: {}\n", json(route)));
        }
        out.push_str(&format!("routes: {}\n", json(&self.routes)));
        if let Some(candidates) = self.candidates {
            out.push_str(&format!("candidates: {candidates}\n"));
        }
        if self.fields.is_empty() {
            out.push_str("fields: {}\n");
        } else {
            out.push_str("fields:\n");
            for (name, definition) in &self.fields {
                out.push_str(&format!("  {}: {}\n", json(name), json(definition)));
            }
        }
        if self.rules.is_empty() {
            out.push_str("rules: []\n");
        } else {
            out.push_str("rules:\n");
            for rule in &self.rules {
                let when =
                    if rule.when.contains(['\'', '\n', '\r']) { json(&rule.when) } else { format!("'{}'", rule.when) };
                out.push_str(&format!(
                    "  - name: {}\n    priority: {}\n    when: {when}\n    route: {}\n",
                    json(&rule.name),
                    rule.priority,
                    json(&rule.route),
                ));
                if !rule.fallthrough {
                    out.push_str("    fallthrough: false\n");
                }
                out.push_str(&format!("    enabled: {}\n", rule.enabled));
            }
        }
        out
    }

    /// The schema part (everything but the rules).
    pub fn schema(&self) -> Schema {
        Schema {
            timezone: self.timezone.clone(),
            default_route: self.default_route.clone(),
            routes: self.routes.clone(),
            candidates: self.candidates,
            fields: self.fields.clone(),
        }
    }
}

/// The rule set's header: time zone, routes, default route and fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Time zone of the derived time fields.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Where unmatched leads go.
    #[serde(default)]
    pub default_route: Option<String>,
    /// Every route a rule may name.
    #[serde(default)]
    pub routes: Vec<String>,
    /// How many matching rules a lead may fall through (unset: 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<i32>,
    /// The lead schema.
    #[serde(default)]
    pub fields: Map<String, Value>,
}

/// A compile request on the `compile` queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompileRequest {
    /// The rules version that asked for it (the worker compiles the newest anyway); with
    /// `recompile`, the version to recompile.
    pub rules_version: i64,
    /// Also recompile `rules_version` itself, from its document in `rule_versions`, even when
    /// it is not the newest or was compiled before (an operator's request, or the start-up's
    /// when the active tree is for another ABI). Absent from older messages: `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recompile: bool,
}

impl CompileRequest {
    /// The request a save makes: compile the newest version (`rules_version` is the saved one).
    pub fn saved(rules_version: i64) -> Self {
        Self { rules_version, recompile: false }
    }

    /// A request to recompile the kept document of `rules_version`.
    pub fn recompile_of(rules_version: i64) -> Self {
        Self { rules_version, recompile: true }
    }
}

/// The stored rule set and its version.
pub async fn load(conn: &mut PgConnection) -> Result<(i64, RuleSetDoc)> {
    type Header = (i64, String, Option<String>, Vec<String>, Option<i32>, Value);
    let (version, timezone, default_route, routes, candidates, fields): Header =
        sqlx::query_as("SELECT version, timezone, default_route, routes, candidates, fields FROM rule_set")
            .fetch_one(&mut *conn)
            .await?;
    let rows: Vec<(String, i32, String, Value, bool, bool)> = sqlx::query_as(
        "SELECT name, priority, when_expr, route, fallthrough, enabled FROM rules ORDER BY priority, position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let rules = rows
        .into_iter()
        .map(|(name, priority, when, route, fallthrough, enabled)| RuleDoc {
            name,
            priority,
            when,
            route,
            fallthrough,
            enabled,
        })
        .collect();
    let fields = match fields {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    Ok((version, RuleSetDoc { version: 1, timezone, default_route, routes, candidates, fields, rules }))
}

/// The stored version alone.
pub async fn version<'e>(executor: impl PgExecutor<'e>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT version FROM rule_set").fetch_one(executor).await?)
}

/// Locks the rule set's header until the transaction ends: writers of the rule set take turns
/// (a caller that checks a document before writing it locks first, so what it checked is what
/// it changes). Every write below takes it; taking it twice in one transaction is harmless.
pub async fn lock(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT 1 FROM rule_set FOR UPDATE").execute(&mut *conn).await?;
    Ok(())
}

/// Replaces the whole stored rule set with `doc` (the caller has checked it). Returns the new
/// version, for which a compile is enqueued.
pub async fn replace(conn: &mut PgConnection, doc: &RuleSetDoc) -> Result<i64> {
    lock(conn).await?;
    sqlx::query("DELETE FROM rules").execute(&mut *conn).await?;
    write_schema(conn, &doc.schema()).await?;
    let names: Vec<&str> = doc.rules.iter().map(|r| r.name.as_str()).collect();
    let priorities: Vec<i32> = doc.rules.iter().map(|r| r.priority).collect();
    let whens: Vec<&str> = doc.rules.iter().map(|r| r.when.as_str()).collect();
    let routes: Vec<&Value> = doc.rules.iter().map(|r| &r.route).collect();
    let fallthrough: Vec<bool> = doc.rules.iter().map(|r| r.fallthrough).collect();
    let enabled: Vec<bool> = doc.rules.iter().map(|r| r.enabled).collect();
    sqlx::query(
        "INSERT INTO rules (name, priority, position, when_expr, route, fallthrough, enabled)
         SELECT name, priority, ord::int, when_expr, route, fallthrough, enabled
         FROM unnest($1::text[], $2::int[], $3::text[], $4::jsonb[], $5::bool[], $6::bool[])
              WITH ORDINALITY AS r(name, priority, when_expr, route, fallthrough, enabled, ord)",
    )
    .bind(&names)
    .bind(&priorities)
    .bind(&whens)
    .bind(&routes)
    .bind(&fallthrough)
    .bind(&enabled)
    .execute(&mut *conn)
    .await?;
    bump(conn).await
}

/// Creates or updates one rule (a new rule goes after every other rule of its priority).
/// Returns the new version.
pub async fn upsert_rule(conn: &mut PgConnection, rule: &RuleDoc) -> Result<i64> {
    lock(conn).await?;
    sqlx::query(
        "INSERT INTO rules (name, priority, position, when_expr, route, fallthrough, enabled)
         VALUES ($1, $2, (SELECT coalesce(max(position), 0) + 1 FROM rules), $3, $4, $5, $6)
         ON CONFLICT (name) DO UPDATE SET priority = excluded.priority, when_expr = excluded.when_expr,
             route = excluded.route, fallthrough = excluded.fallthrough, enabled = excluded.enabled,
             updated_at = now()",
    )
    .bind(&rule.name)
    .bind(rule.priority)
    .bind(&rule.when)
    .bind(&rule.route)
    .bind(rule.fallthrough)
    .bind(rule.enabled)
    .execute(&mut *conn)
    .await?;
    bump(conn).await
}

/// Deletes rule `name`; `Ok(None)` if there is no such rule. Returns the new version.
pub async fn delete_rule(conn: &mut PgConnection, name: &str) -> Result<Option<i64>> {
    lock(conn).await?;
    let deleted = sqlx::query("DELETE FROM rules WHERE name = $1").bind(name).execute(&mut *conn).await?;
    if deleted.rows_affected() == 0 {
        return Ok(None);
    }
    bump(conn).await.map(Some)
}

/// Replaces the header (time zone, routes, default route, fields). Returns the new version.
pub async fn set_schema(conn: &mut PgConnection, schema: &Schema) -> Result<i64> {
    lock(conn).await?;
    write_schema(conn, schema).await?;
    bump(conn).await
}

async fn write_schema(conn: &mut PgConnection, schema: &Schema) -> Result<()> {
    // The table's CHECK keeps the default route among the routes; the compiler says so too,
    // with a better message, before anything is written.
    sqlx::query("UPDATE rule_set SET timezone = $1, default_route = $2, routes = $3, fields = $4, candidates = $5")
        .bind(&schema.timezone)
        .bind(&schema.default_route)
        .bind(&schema.routes)
        .bind(Value::Object(schema.fields.clone()))
        .bind(schema.candidates)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Bumps the version, keeps its document and enqueues its compile.
async fn bump(conn: &mut PgConnection) -> Result<i64> {
    let version: i64 =
        sqlx::query_scalar("UPDATE rule_set SET version = version + 1, updated_at = now() RETURNING version")
            .fetch_one(&mut *conn)
            .await?;
    record_version(conn, version).await?;
    queue::send(&mut *conn, &QueueName::new(queue::fixed::COMPILE)?, &CompileRequest::saved(version)).await?;
    Ok(version)
}

/// Keeps `version`'s document in `rule_versions`: the stored rule set as [`load`] reads it, the
/// document the compile worker compiles for the version.
async fn record_version(conn: &mut PgConnection, version: i64) -> Result<()> {
    let (_, doc) = load(conn).await?;
    sqlx::query("INSERT INTO rule_versions (version, document) VALUES ($1, $2)")
        .bind(version)
        .bind(serde_json::to_value(&doc)?)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

// ---- kept versions -----------------------------------------------------------------------

/// A kept rules version (`rule_versions`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredVersion {
    /// The rules version.
    pub version: i64,
    /// When it was saved.
    pub saved_at: DateTime<Utc>,
    /// The whole rule set as it was after that save.
    pub document: RuleSetDoc,
    /// Its change impact against the previous version, if one was stored ([`record_diff`]).
    pub diff: Option<Value>,
}

/// A kept rules version as listed, without its document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionSummary {
    /// The rules version.
    pub version: i64,
    /// When it was saved.
    pub saved_at: DateTime<Utc>,
    /// Whether its change impact is stored.
    pub has_diff: bool,
    /// The stored diff's top-level scalar members (its counts and flags; its lists and objects
    /// are left out), when the diff is a JSON object.
    pub diff_summary: Option<Map<String, Value>>,
}

/// The document of rules version `version`, if it is kept.
pub async fn load_version(conn: &mut PgConnection, version: i64) -> Result<Option<RuleSetDoc>> {
    Ok(stored_version(conn, version).await?.map(|stored| stored.document))
}

/// Rules version `version` with its document and diff, if it is kept.
pub async fn stored_version(conn: &mut PgConnection, version: i64) -> Result<Option<StoredVersion>> {
    let row: Option<(DateTime<Utc>, Value, Option<Value>)> =
        sqlx::query_as("SELECT saved_at, document, diff FROM rule_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((saved_at, document, diff)) = row else { return Ok(None) };
    let document = serde_json::from_value(document).map_err(|source| Error::StoredDocument { version, source })?;
    Ok(Some(StoredVersion { version, saved_at, document, diff }))
}

/// The newest `limit` kept versions, newest first.
pub async fn versions(conn: &mut PgConnection, limit: i64) -> Result<Vec<VersionSummary>> {
    let rows: Vec<(i64, DateTime<Utc>, bool, Option<Value>)> = sqlx::query_as(
        "SELECT version, saved_at, diff IS NOT NULL,
                CASE WHEN jsonb_typeof(diff) = 'object' THEN
                    (SELECT coalesce(jsonb_object_agg(key, value), '{}'::jsonb) FROM jsonb_each(diff)
                     WHERE jsonb_typeof(value) NOT IN ('object', 'array'))
                END
         FROM rule_versions ORDER BY version DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(version, saved_at, has_diff, summary)| VersionSummary {
            version,
            saved_at,
            has_diff,
            diff_summary: match summary {
                Some(Value::Object(summary)) => Some(summary),
                _ => None,
            },
        })
        .collect())
}

/// Stores `diff`, the change impact of rules version `version` against the one before it
/// (replacing any stored before). The API calls it in the transaction of the save that made
/// the version, right after the writer (`replace`, `upsert_rule`, ...) returned the version,
/// so a version and its diff commit together. Returns whether the version is kept (`false`:
/// nothing was stored).
pub async fn record_diff(conn: &mut PgConnection, version: i64, diff: &Value) -> Result<bool> {
    let updated = sqlx::query("UPDATE rule_versions SET diff = $2 WHERE version = $1")
        .bind(version)
        .bind(diff)
        .execute(conn)
        .await?;
    Ok(updated.rows_affected() > 0)
}

// ---- recompiling the active version --------------------------------------------------------

/// A recompile of the active tree's rules version, on the `compile` queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Queued {
    /// The request's message id on `compile`.
    pub msg_id: i64,
    /// The rules version to recompile.
    pub rules_version: i64,
    /// The tree active when it was queued (the one a recompile replaces).
    pub tree_version: i64,
    /// That tree's ABI (its manifest's `abi_version`).
    pub tree_abi_version: Option<i64>,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
}

/// What asking to recompile the active rules version did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecompileRequest {
    /// The request is on `compile`.
    Queued(Queued),
    /// No decision tree is active: there is nothing to recompile.
    NoActiveTree,
    /// The active tree's rules version is not kept in `rule_versions` (it predates them), so it
    /// cannot be compiled again; nothing was queued.
    NotStored {
        /// The active tree.
        tree_version: i64,
        /// Its rules version.
        rules_version: i64,
    },
}

/// Asks the compile worker to recompile the active tree's rules version from its kept
/// document; the worker activates the result only while that version is still the active one.
pub async fn request_recompile(conn: &mut PgConnection) -> Result<RecompileRequest> {
    let active: Option<(i64, i64, Option<i64>, bool)> = sqlx::query_as(
        "SELECT t.version, t.rules_version, (t.manifest->>'abi_version')::bigint,
                EXISTS (SELECT 1 FROM rule_versions v WHERE v.version = t.rules_version)
         FROM decision_trees t WHERE t.active",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some((tree_version, rules_version, tree_abi_version, kept)) = active else {
        return Ok(RecompileRequest::NoActiveTree);
    };
    if !kept {
        return Ok(RecompileRequest::NotStored { tree_version, rules_version });
    }
    let queue = QueueName::new(queue::fixed::COMPILE)?;
    let msg_id = queue::send(&mut *conn, &queue, &CompileRequest::recompile_of(rules_version)).await?;
    let queued_at: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *conn).await?;
    Ok(RecompileRequest::Queued(Queued { msg_id, rules_version, tree_version, tree_abi_version, queued_at }))
}

/// The active decision tree's version and its rules version, if a tree is active.
pub async fn active_tree<'e>(executor: impl PgExecutor<'e>) -> Result<Option<(i64, i64)>> {
    Ok(sqlx::query_as("SELECT version, rules_version FROM decision_trees WHERE active")
        .fetch_optional(executor)
        .await?)
}

/// A stored decision tree, as a recompile's requester sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TreeOutcome {
    /// The tree's version.
    pub version: i64,
    /// Its rules version.
    pub rules_version: i64,
    /// Whether it is the active tree.
    pub active: bool,
    /// Its module's ABI; `None` for a refused compile.
    pub abi_version: Option<i64>,
    /// Why it was refused, if it was.
    pub refused: Option<String>,
    /// What the compile worker did with a recompile (its report's `compile.recompile`).
    pub recompile: Option<Value>,
}

/// The newest tree of `queued`'s rules version stored after the tree that was active when it
/// was queued: `None` until the compile worker has taken the request.
pub async fn recompiled<'e>(executor: impl PgExecutor<'e>, queued: &Queued) -> Result<Option<TreeOutcome>> {
    type Row = (i64, bool, Option<i64>, Option<String>, Option<Value>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT version, active, (manifest->>'abi_version')::bigint, report->'compile'->>'refused',
                report->'compile'->'recompile'
         FROM decision_trees WHERE rules_version = $1 AND version > $2 ORDER BY version DESC LIMIT 1",
    )
    .bind(queued.rules_version)
    .bind(queued.tree_version)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|(version, active, abi_version, refused, recompile)| TreeOutcome {
        version,
        rules_version: queued.rules_version,
        active,
        abi_version,
        refused,
        recompile,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip_through_text() {
        let text = r#"{"timezone": "America/New_York", "default_route": "unsold", "routes": ["a", "unsold"],
            "fields": {"state": {"type": "enum", "values": ["CA"]}},
            "rules": [{"name": "r1", "priority": 10, "when": "state == \"CA\"", "route": "a"}]}"#;
        let doc: RuleSetDoc = serde_json::from_str(text).expect("a document");
        assert_eq!(doc.version, 1);
        assert!(doc.rules[0].enabled);
        let again: RuleSetDoc = serde_json::from_str(&doc.to_text()).expect("round trip");
        assert_eq!(again, doc);
        assert!(serde_json::from_str::<RuleSetDoc>(r#"{"rulez": []}"#).is_err(), "unknown keys are refused");
    }
}
