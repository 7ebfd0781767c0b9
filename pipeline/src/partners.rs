//! Partner configuration (DESIGN.md, "Deliver"): how each partner wants its leads, as a YAML
//! file (`examples/partners.yaml`) or the same shape over the admin API, stored in `partners`.
//! Applying a partner also creates its queue and dead-letter queue and its circuit-breaker row.
//!
//! Templates (URL, headers, body values) are minijinja expressions over the lead (`lead.*`:
//! `submission_id`, `site`, `fields`, `route`, ...), the person's identity (`person.email`,
//! `person.full_name`, `person.phone`) and secrets (`secrets.NAME`, from the environment of
//! the deliver worker, never stored).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

use crate::distribution::{Cents, Limits, Schedule};
use crate::queue::{self, QueueName};
use crate::state::CircuitState;
use crate::{Error, Result};

/// What a partner's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The partner took the lead.
    Accepted,
    /// The partner does not want it (final).
    Rejected,
    /// The partner already has it (final).
    Duplicate,
    /// Try again later.
    Retryable,
    /// It will never work (final failure, to the DLQ).
    Permanent,
}

impl Verdict {
    /// Every verdict, in the order of `delivery_attempts`' `CHECK`.
    pub const ALL: [Self; 5] = [Self::Accepted, Self::Rejected, Self::Duplicate, Self::Retryable, Self::Permanent];

    /// Its name, as in the partners file (`accepted`, `retryable`, ...). The state it gives the
    /// lead's row is deliver's decision (`workers::deliver`), a `DeliveryState`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Duplicate => "duplicate",
            Self::Retryable => "retryable",
            Self::Permanent => "permanent",
        }
    }
}

/// One classification rule: the first that matches an answer decides it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classify {
    /// Status codes it applies to (`[200, 201]`); empty: any.
    #[serde(default)]
    pub status: Vec<u16>,
    /// A regular expression the body must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_regex: Option<String>,
    /// A JSON pointer (`/status`) into the body and the value it must equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonMatch>,
    /// The verdict when it matches.
    pub verdict: Verdict,
}

/// A JSON-body condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonMatch {
    /// RFC 6901 pointer, e.g. `/result/status`.
    pub pointer: String,
    /// The value found there.
    pub equals: Value,
}

/// The HTTP request, as templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestTemplate {
    /// HTTP method (default POST).
    #[serde(default = "post")]
    pub method: String,
    /// URL template.
    pub url: String,
    /// Header templates.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `json` (default) or `form`.
    #[serde(default = "json_encoding")]
    pub encoding: String,
    /// The body: an object whose string values are templates (nested for JSON).
    #[serde(default)]
    pub body: Value,
}

fn post() -> String {
    "POST".to_owned()
}

fn json_encoding() -> String {
    "json".to_owned()
}

/// Circuit-breaker thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Breaker {
    /// Consecutive failed leads that open the circuit.
    pub consecutive_failures: u32,
    /// Failure share (0..1) over `window_secs` that opens it, once `min_calls` were made.
    pub failure_rate: f64,
    /// Calls in the window before the rate counts.
    pub min_calls: u32,
    /// The rate's window.
    pub window_secs: u64,
    /// How long it stays open when the answer gives no time (no Retry-After).
    pub open_secs: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self { consecutive_failures: 5, failure_rate: 0.5, min_calls: 20, window_secs: 60, open_secs: 30 }
    }
}

/// One partner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    /// The route name (and `partner_<name>` queue).
    pub name: String,
    /// Disabled partners' queues are not read.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Fields of the dedupe key: lead fields or `email`, `phone`, `full_name` (the person's).
    #[serde(default = "email_only")]
    pub dedupe_fields: Vec<String>,
    /// Dedupe window in days.
    #[serde(default = "thirty")]
    pub dedupe_window_days: u32,
    /// The request.
    pub request: RequestTemplate,
    /// Request timeout.
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u32,
    /// Classification rules, tried in order before the defaults (2xx accepted, 409 duplicate,
    /// 408/425/429/5xx retryable, other 4xx permanent).
    #[serde(default)]
    pub classify: Vec<Classify>,
    /// Retries of a lead before the partner DLQ.
    #[serde(default = "three")]
    pub max_retries: u32,
    /// First backoff delay; it doubles (with jitter) up to `backoff_cap_ms`.
    #[serde(default = "one_second")]
    pub backoff_base_ms: u32,
    /// Longest backoff delay.
    #[serde(default = "five_minutes")]
    pub backoff_cap_ms: u32,
    /// Circuit breaker.
    #[serde(default)]
    pub breaker: Breaker,
    /// Time zone of its schedule and cap periods (IANA name, default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
    /// When it takes leads (none: always).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// How many leads it takes per period (`daily`, `weekly`, `monthly`, `total`).
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub caps: Limits<u32>,
    /// Caps per rule: how many leads each named rule may send it per period.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rule_caps: BTreeMap<String, Limits<u32>>,
    /// What it spends per period, at `price` per lead.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub budget: Limits<Cents>,
    /// What a lead costs it (for `budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Cents>,
}

fn utc() -> String {
    "UTC".to_owned()
}

fn yes() -> bool {
    true
}
fn email_only() -> Vec<String> {
    vec!["email".to_owned()]
}
fn thirty() -> u32 {
    30
}
fn ten_seconds() -> u32 {
    10_000
}
fn three() -> u32 {
    3
}
fn one_second() -> u32 {
    1_000
}
fn five_minutes() -> u32 {
    300_000
}

/// A partners file: `partners: [...]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnersFile {
    /// The partners.
    pub partners: Vec<PartnerConfig>,
}

impl PartnerConfig {
    /// Partner `name` calling `request`, every other setting at its default (what a partners
    /// file that gives only these two reads as).
    pub fn new(name: impl Into<String>, request: RequestTemplate) -> Self {
        Self {
            name: name.into(),
            enabled: yes(),
            dedupe_fields: email_only(),
            dedupe_window_days: thirty(),
            request,
            timeout_ms: ten_seconds(),
            classify: Vec::new(),
            max_retries: three(),
            backoff_base_ms: one_second(),
            backoff_cap_ms: five_minutes(),
            breaker: Breaker::default(),
            timezone: utc(),
            schedule: None,
            caps: Limits::default(),
            rule_caps: BTreeMap::new(),
            budget: Limits::default(),
            price: None,
        }
    }

    /// The partner's queue.
    pub fn queue(&self) -> Result<QueueName> {
        QueueName::partner(&self.name)
    }

    /// The verdict for an answer: the first matching rule, else the defaults.
    pub fn classify(&self, status: u16, body: &str) -> Verdict {
        let json = || serde_json::from_str::<Value>(body).ok();
        for rule in &self.classify {
            if !rule.status.is_empty() && !rule.status.contains(&status) {
                continue;
            }
            if let Some(pattern) = &rule.body_regex
                && !regex::Regex::new(pattern).is_ok_and(|re| re.is_match(body))
            {
                continue;
            }
            if let Some(m) = &rule.json
                && json().and_then(|j| j.pointer(&m.pointer).cloned()).as_ref() != Some(&m.equals)
            {
                continue;
            }
            return rule.verdict;
        }
        match status {
            200..=299 => Verdict::Accepted,
            409 => Verdict::Duplicate,
            408 | 425 | 429 | 500..=599 => Verdict::Retryable,
            _ => Verdict::Permanent,
        }
    }

    /// Checks what serde cannot: name, method, encoding, regexes, thresholds.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.queue().map_err(|e| e.to_string())?;
        if self.name.len() > 35 {
            return Err(format!("partner name `{}` is longer than 35 characters", self.name));
        }
        if !["GET", "POST", "PUT", "PATCH"].contains(&self.request.method.as_str()) {
            return Err(format!("{}: method `{}` is not GET, POST, PUT or PATCH", self.name, self.request.method));
        }
        if !["json", "form"].contains(&self.request.encoding.as_str()) {
            return Err(format!("{}: encoding must be `json` or `form`", self.name));
        }
        for rule in &self.classify {
            if let Some(pattern) = &rule.body_regex {
                regex::Regex::new(pattern).map_err(|e| format!("{}: body_regex `{pattern}`: {e}", self.name))?;
            }
        }
        if self.dedupe_fields.is_empty() {
            return Err(format!("{}: dedupe_fields must name at least one field", self.name));
        }
        if !(0.0..=1.0).contains(&self.breaker.failure_rate) {
            return Err(format!("{}: breaker.failure_rate must be between 0 and 1", self.name));
        }
        crate::distribution::Availability::of(self).map_err(|e| format!("{}: {e}", self.name))?;
        // The templates compile (and the method parses) as deliver will compile them.
        match crate::adapter::Adapter::new(self) {
            Ok(_) => Ok(()),
            Err(Error::InvalidPartner(problem)) => Err(problem),
            Err(other) => Err(other.to_string()),
        }
    }
}

/// Reads a partners file (YAML; JSON is YAML too), checking every partner.
pub fn parse_file(text: &str) -> Result<PartnersFile> {
    use saphyr::LoadableYamlNode;
    let docs = saphyr::Yaml::load_from_str(text).map_err(|e| Error::InvalidPartner(format!("malformed YAML: {e}")))?;
    let root = docs.first().map(yaml_to_json).unwrap_or(Value::Null);
    let file: PartnersFile = serde_json::from_value(root).map_err(|e| Error::InvalidPartner(e.to_string()))?;
    for partner in &file.partners {
        partner.validate().map_err(Error::InvalidPartner)?;
    }
    Ok(file)
}

/// A YAML value as JSON (scalars keep their YAML types; keys become strings).
fn yaml_to_json(node: &saphyr::Yaml<'_>) -> Value {
    use saphyr::{Scalar, Yaml};
    match node {
        Yaml::Value(Scalar::Null) => Value::Null,
        Yaml::Value(Scalar::Boolean(b)) => Value::Bool(*b),
        Yaml::Value(Scalar::Integer(i)) => Value::from(*i),
        Yaml::Value(Scalar::FloatingPoint(f)) => {
            serde_json::Number::from_f64(f.into_inner()).map_or(Value::Null, Value::Number)
        }
        Yaml::Value(Scalar::String(s)) => Value::String(s.to_string()),
        Yaml::Representation(s, ..) => Value::String(s.to_string()),
        Yaml::Sequence(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match yaml_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Tagged(_, inner) => yaml_to_json(inner),
        _ => Value::Null,
    }
}

/// Creates or updates `partner` (its row, queue, dead-letter queue and breaker row).
pub async fn apply(conn: &mut PgConnection, partner: &PartnerConfig) -> Result<()> {
    partner.validate().map_err(Error::InvalidPartner)?;
    let request = serde_json::to_value(&partner.request)?;
    let classification = serde_json::to_value(&partner.classify)?;
    let breaker = serde_json::to_value(&partner.breaker)?;
    let distribution = serde_json::json!({
        "timezone": partner.timezone, "schedule": partner.schedule, "caps": partner.caps,
        "rule_caps": partner.rule_caps, "budget": partner.budget, "price": partner.price,
    });
    sqlx::query(
        "INSERT INTO partners (name, enabled, dedupe_fields, dedupe_window, request, classification, timeout_ms,
                               max_retries, backoff_base_ms, backoff_cap_ms, breaker, distribution)
         VALUES ($1, $2, $3, make_interval(days => $4), $5, jsonb_build_object('rules', $6::jsonb), $7, $8, $9, $10, $11,
                 $12)
         ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled, dedupe_fields = excluded.dedupe_fields,
             dedupe_window = excluded.dedupe_window, request = excluded.request,
             classification = excluded.classification, timeout_ms = excluded.timeout_ms,
             max_retries = excluded.max_retries, backoff_base_ms = excluded.backoff_base_ms,
             backoff_cap_ms = excluded.backoff_cap_ms, breaker = excluded.breaker,
             distribution = excluded.distribution, updated_at = now()",
    )
    .bind(&partner.name)
    .bind(partner.enabled)
    .bind(&partner.dedupe_fields)
    .bind(partner.dedupe_window_days as i32)
    .bind(&request)
    .bind(&classification)
    .bind(partner.timeout_ms as i32)
    .bind(partner.max_retries as i32)
    .bind(partner.backoff_base_ms as i32)
    .bind(partner.backoff_cap_ms.max(partner.backoff_base_ms) as i32)
    .bind(&breaker)
    .bind(&distribution)
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO circuit_breakers (partner) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(&partner.name)
        .execute(&mut *conn)
        .await?;
    let queue = partner.queue()?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = $1)")
        .bind(queue.as_str())
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        queue::create_with_dead_letter_queue(conn, &queue).await?;
    }
    Ok(())
}

/// Turns delivery to partner `name` on or off (deliver reads only enabled partners' queues);
/// `false` when there is no such partner.
pub async fn set_enabled<'e>(executor: impl PgExecutor<'e>, name: &str, enabled: bool) -> Result<bool> {
    let done = sqlx::query("UPDATE partners SET enabled = $2, updated_at = now() WHERE name = $1")
        .bind(name)
        .bind(enabled)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The partners that can never take a lead (a cap or budget of 0, a schedule that never
/// opens), each with why: what the rules' analysis reports as `unreachable`.
pub async fn never_take(conn: &mut PgConnection) -> Result<BTreeMap<String, String>> {
    Ok(never_taking(&load_all(conn).await?))
}

/// Of `partners`, those that can never take a lead, each with why.
pub fn never_taking(partners: &[PartnerConfig]) -> BTreeMap<String, String> {
    partners
        .iter()
        .filter_map(|p| crate::distribution::Availability::of(p).ok()?.never().map(|why| (p.name.clone(), why)))
        .collect()
}

/// How many partners are stored (enabled or not): the daemon seeds the partners file only
/// into an empty table.
pub async fn count<'e>(executor: impl PgExecutor<'e>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM partners").fetch_one(executor).await?)
}

/// Every partner's circuit, by partner (a partner without a breaker row has never failed).
pub async fn circuits<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<(String, CircuitState)>> {
    Ok(sqlx::query_as("SELECT partner, state FROM circuit_breakers ORDER BY partner").fetch_all(executor).await?)
}

/// Every stored partner (enabled or not), by name.
pub async fn load_all(conn: &mut PgConnection) -> Result<Vec<PartnerConfig>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        name: String,
        enabled: bool,
        dedupe_fields: Vec<String>,
        days: i32,
        request: Value,
        classification: Value,
        timeout_ms: i32,
        max_retries: i32,
        backoff_base_ms: i32,
        backoff_cap_ms: i32,
        breaker: Value,
        distribution: Value,
    }
    /// The distribution settings as stored (`partners.distribution`).
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Distribution {
        timezone: Option<String>,
        schedule: Option<Schedule>,
        caps: Limits<u32>,
        rule_caps: BTreeMap<String, Limits<u32>>,
        budget: Limits<Cents>,
        price: Option<Cents>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT name, enabled, dedupe_fields, extract(day FROM dedupe_window)::int AS days, request, classification,
                timeout_ms, max_retries, backoff_base_ms, backoff_cap_ms, breaker, distribution
         FROM partners ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let u = |v: i32| u32::try_from(v).unwrap_or(0);
            let d: Distribution = serde_json::from_value(r.distribution)?;
            Ok(PartnerConfig {
                timezone: d.timezone.unwrap_or_else(utc),
                schedule: d.schedule,
                caps: d.caps,
                rule_caps: d.rule_caps,
                budget: d.budget,
                price: d.price,
                name: r.name,
                enabled: r.enabled,
                dedupe_fields: r.dedupe_fields,
                dedupe_window_days: u(r.days),
                request: serde_json::from_value(r.request)?,
                timeout_ms: u(r.timeout_ms),
                classify: serde_json::from_value(
                    r.classification.get("rules").cloned().unwrap_or(Value::Array(vec![])),
                )?,
                max_retries: u(r.max_retries),
                backoff_base_ms: u(r.backoff_base_ms),
                backoff_cap_ms: u(r.backoff_cap_ms),
                breaker: serde_json::from_value(r.breaker).unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> PartnersFile {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/partners.yaml"))
            .expect("examples/partners.yaml");
        parse_file(&text).expect("the example partners are valid")
    }

    #[test]
    fn the_example_configures_every_route_of_the_example_rules() {
        let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/rules.yaml"))
            .expect("examples/rules.yaml");
        let routes_block = rules.split("\nroutes:\n").nth(1).and_then(|r| r.split("\nfields:").next()).expect("routes");
        let routes: Vec<&str> =
            routes_block.lines().filter_map(|l| l.trim().strip_prefix("- ")).map(str::trim).collect();
        let partners: Vec<String> = example().partners.into_iter().map(|p| p.name).collect();
        assert!(!routes.is_empty());
        for route in routes {
            assert!(partners.iter().any(|p| p == route), "no partner for route `{route}`");
        }
    }

    #[test]
    fn answers_are_classified_by_rules_then_defaults() {
        let partner = example().partners.remove(0);
        let cases = [
            (200, r#"{"status":"accepted"}"#, Verdict::Accepted),
            (200, r#"{"status":"rejected"}"#, Verdict::Rejected),
            (200, r#"{"status":"duplicate"}"#, Verdict::Duplicate),
            (201, "", Verdict::Accepted),
            (409, "", Verdict::Duplicate),
            (429, "", Verdict::Retryable),
            (503, "", Verdict::Retryable),
            (400, "", Verdict::Permanent),
            (404, "not json", Verdict::Permanent),
        ];
        for (status, body, verdict) in cases {
            assert_eq!(partner.classify(status, body), verdict, "{status} {body}");
        }
        let mut regex = partner.clone();
        regex.classify = vec![Classify {
            status: vec![],
            body_regex: Some("(?i)already".into()),
            json: None,
            verdict: Verdict::Duplicate,
        }];
        assert_eq!(regex.classify(200, "Already have it"), Verdict::Duplicate);
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let bad = [
            ("partners: [{name: Bad-Name, request: {url: x}}]", "invalid queue name"),
            ("partners: [{name: ok, request: {url: x, method: DELETE}}]", "method"),
            ("partners: [{name: ok, request: {url: x, encoding: xml}}]", "encoding"),
            (
                "partners: [{name: ok, request: {url: x}, classify: [{body_regex: '(', verdict: rejected}]}]",
                "body_regex",
            ),
            ("partners: [{name: ok, request: {url: x}, colour: red}]", "unknown field"),
            ("partners: [{name: ok}]", "missing field `request`"),
        ];
        for (text, expected) in bad {
            let error = parse_file(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
