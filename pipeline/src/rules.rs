//! The authoritative rule set in Postgres (`rule_set` header + `rules`), as a plain document
//! in the shape of a RULES.md rules file, and the writes the admin API and the CLI make. Every
//! write bumps `rule_set.version` and enqueues a compile of it, in the caller's transaction.
//!
//! The document renders as JSON text ([`RuleSetDoc::to_text`]), which is also YAML, so the
//! compiler checks exactly what is stored with the diagnostics `rulec` gives for a file.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgExecutor};

use crate::Result;
use crate::queue::{self, QueueName};

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
    /// A route of the rule set.
    pub route: String,
    /// Disabled rules are kept but never match.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
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
    /// The lead schema: field name → `{type, values | min, max, scale}`.
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// The rules, in first-match order of priority, then position.
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
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

    /// The schema part (everything but the rules).
    pub fn schema(&self) -> Schema {
        Schema {
            timezone: self.timezone.clone(),
            default_route: self.default_route.clone(),
            routes: self.routes.clone(),
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
    /// The lead schema.
    #[serde(default)]
    pub fields: Map<String, Value>,
}

/// A compile request on the `compile` queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompileRequest {
    /// The rules version that asked for it (the worker compiles the newest anyway).
    pub rules_version: i64,
}

/// The stored rule set and its version.
pub async fn load(conn: &mut PgConnection) -> Result<(i64, RuleSetDoc)> {
    let (version, timezone, default_route, routes, fields): (i64, String, Option<String>, Vec<String>, Value) =
        sqlx::query_as("SELECT version, timezone, default_route, routes, fields FROM rule_set")
            .fetch_one(&mut *conn)
            .await?;
    let rows: Vec<(String, i32, String, String, bool)> =
        sqlx::query_as("SELECT name, priority, when_expr, route, enabled FROM rules ORDER BY priority, position")
            .fetch_all(&mut *conn)
            .await?;
    let rules = rows
        .into_iter()
        .map(|(name, priority, when, route, enabled)| RuleDoc { name, priority, when, route, enabled })
        .collect();
    let fields = match fields {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    Ok((version, RuleSetDoc { version: 1, timezone, default_route, routes, fields, rules }))
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
    let routes: Vec<&str> = doc.rules.iter().map(|r| r.route.as_str()).collect();
    let enabled: Vec<bool> = doc.rules.iter().map(|r| r.enabled).collect();
    sqlx::query(
        "INSERT INTO rules (name, priority, position, when_expr, route, enabled)
         SELECT name, priority, ord::int, when_expr, route, enabled
         FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bool[])
              WITH ORDINALITY AS r(name, priority, when_expr, route, enabled, ord)",
    )
    .bind(&names)
    .bind(&priorities)
    .bind(&whens)
    .bind(&routes)
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
        "INSERT INTO rules (name, priority, position, when_expr, route, enabled)
         VALUES ($1, $2, (SELECT coalesce(max(position), 0) + 1 FROM rules), $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET priority = excluded.priority, when_expr = excluded.when_expr,
             route = excluded.route, enabled = excluded.enabled, updated_at = now()",
    )
    .bind(&rule.name)
    .bind(rule.priority)
    .bind(&rule.when)
    .bind(&rule.route)
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
    sqlx::query("UPDATE rule_set SET timezone = $1, default_route = $2, routes = $3, fields = $4")
        .bind(&schema.timezone)
        .bind(&schema.default_route)
        .bind(&schema.routes)
        .bind(Value::Object(schema.fields.clone()))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Bumps the version and enqueues its compile.
async fn bump(conn: &mut PgConnection) -> Result<i64> {
    let version: i64 =
        sqlx::query_scalar("UPDATE rule_set SET version = version + 1, updated_at = now() RETURNING version")
            .fetch_one(&mut *conn)
            .await?;
    queue::send(&mut *conn, &QueueName::new(queue::fixed::COMPILE)?, &CompileRequest { rules_version: version })
        .await?;
    Ok(version)
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
