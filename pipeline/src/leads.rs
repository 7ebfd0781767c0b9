//! A stored lead's record: where a submission went and what routed it, read from its `leads`
//! rows (one per partner it was sent to) or its `unmatched_leads` row, with each row's tree and
//! that tree's rules version, and the routing fields the decision saw. The admin API's
//! `GET /api/leads/{submission_id}/explain` and `rulec explain --submission` both start here
//! (`api::leads::explain_submission`); replaying the decision is the compiler's part.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;
use crate::state::DeliveryState;

/// One `leads` row: the lead's delivery to one partner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// The partner (the route the decision chose).
    pub partner: String,
    /// Where its delivery stands.
    pub state: DeliveryState,
    /// The rule that decided it; `None` when the default route took it.
    pub rule: Option<String>,
    /// The decision tree that decided it.
    pub tree_version: Option<i64>,
    /// That tree's rules version.
    pub rules_version: Option<i64>,
    /// Delivery attempts made.
    pub attempts: i32,
    /// The partner's last HTTP status.
    pub response_status: Option<i32>,
    /// The last error.
    pub error: Option<String>,
    /// When the row claimed its dedupe key.
    pub request_date: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

/// The `unmatched_leads` row of a lead no rule matched (and no default route took).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unmatched {
    /// The decision tree that found no rule.
    pub tree_version: i64,
    /// That tree's rules version.
    pub rules_version: Option<i64>,
    /// When the API accepted the submission.
    pub submitted_at: DateTime<Utc>,
    /// When the router recorded it.
    pub recorded_at: DateTime<Utc>,
}

/// Everything stored about where one submission went.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLead {
    /// The submission.
    pub submission_id: Uuid,
    /// Its `leads` rows, by partner.
    pub deliveries: Vec<Delivery>,
    /// Its `unmatched_leads` row.
    pub unmatched: Option<Unmatched>,
    /// The routing fields the decision saw (offer fields and derived ones), from the first row
    /// that kept them; `None` when every row predates their storage.
    pub fields: Option<Map<String, Value>>,
}

impl StoredLead {
    /// The recorded decision: (tree, its rules version, rule, route), from the first delivery
    /// row, else the unmatched row (no rule, no route).
    pub fn decision(&self) -> (Option<i64>, Option<i64>, Option<&str>, Option<&str>) {
        match (self.deliveries.first(), &self.unmatched) {
            (Some(d), _) => (d.tree_version, d.rules_version, d.rule.as_deref(), Some(d.partner.as_str())),
            (None, Some(u)) => (Some(u.tree_version), u.rules_version, None, None),
            (None, None) => (None, None, None, None),
        }
    }
}

type DeliveryRow = (
    String,
    DeliveryState,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i32,
    Option<i32>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<Value>,
);

/// What is stored about submission `submission_id`; `None` when it has neither a `leads` nor
/// an `unmatched_leads` row (unknown, still on its way, or dead-lettered before delivery).
pub async fn load(conn: &mut PgConnection, submission_id: Uuid) -> Result<Option<StoredLead>> {
    let rows: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT l.partner, l.state, l.rule_name, l.tree_version, t.rules_version, l.attempts, l.response_status,
                l.error, l.request_date, l.updated_at, l.fields
         FROM leads l LEFT JOIN decision_trees t ON t.version = l.tree_version
         WHERE l.submission_id = $1 ORDER BY l.partner",
    )
    .bind(submission_id)
    .fetch_all(&mut *conn)
    .await?;
    type UnmatchedRow = (i64, Option<i64>, DateTime<Utc>, DateTime<Utc>, Value);
    let unmatched: Option<UnmatchedRow> = sqlx::query_as(
        "SELECT u.tree_version, t.rules_version, u.submitted_at, u.created_at, u.fields
         FROM unmatched_leads u LEFT JOIN decision_trees t ON t.version = u.tree_version
         WHERE u.submission_id = $1",
    )
    .bind(submission_id)
    .fetch_optional(&mut *conn)
    .await?;
    if rows.is_empty() && unmatched.is_none() {
        return Ok(None);
    }
    let object = |value: Option<Value>| match value {
        Some(Value::Object(fields)) => Some(fields),
        _ => None,
    };
    let mut fields = None;
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in rows {
        let (
            partner,
            state,
            rule,
            tree_version,
            rules_version,
            attempts,
            response_status,
            error,
            request_date,
            updated_at,
            kept,
        ) = row;
        fields = fields.or_else(|| object(kept));
        deliveries.push(Delivery {
            partner,
            state,
            rule,
            tree_version,
            rules_version,
            attempts,
            response_status,
            error,
            request_date,
            updated_at,
        });
    }
    let unmatched = unmatched.map(|(tree_version, rules_version, submitted_at, recorded_at, kept)| {
        fields = fields.take().or_else(|| object(Some(kept)));
        Unmatched { tree_version, rules_version, submitted_at, recorded_at }
    });
    Ok(Some(StoredLead { submission_id, deliveries, unmatched, fields }))
}
