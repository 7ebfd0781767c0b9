//! A stored lead's record: where a submission went and what routed it, read from its `leads`
//! rows (one per partner it was sent to) or its `unmatched_leads` row, with each row's tree and
//! that tree's rules version, and the routing fields the decision saw. The admin API's
//! `GET /api/leads/{submission_id}/explain` and `rulec explain --submission` both start here
//! (`api::leads::explain_submission`); replaying the decision is the compiler's part.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;
use crate::state::DeliveryState;

/// One `leads` row: the lead's delivery to one partner.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Delivery {
    /// The row's id (its attempts point at it).
    pub id: i64,
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
    /// The person (main record) and the alias record the lead came as.
    pub person_id: i64,
    /// The alias record, when the lead came as one.
    pub alias_id: Option<i64>,
    /// The site that posted it (`None` for rows stored before it was kept).
    pub site: Option<String>,
    /// When the API accepted it (`None` for rows stored before it was kept).
    pub submitted_at: Option<DateTime<Utc>>,
    /// The partner's dedupe key over it.
    pub dedupe_key: String,
    /// Delivery attempts made.
    pub attempts: i32,
    /// The partner's last HTTP status.
    pub response_status: Option<i32>,
    /// The start of the partner's last answer.
    pub response_excerpt: Option<String>,
    /// The last error.
    pub error: Option<String>,
    /// When the row claimed its dedupe key.
    pub request_date: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
    /// The candidates tried before this partner took it, and why each passed-over one was
    /// skipped (`pipeline::message::Routing`); `None` for rows stored before it was kept.
    pub routing: Option<Value>,
}

/// One call deliver made for a lead (`delivery_attempts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Attempt {
    /// The `leads` row it was made for.
    pub lead_id: i64,
    /// 1 for the row's first call (a replayed letter starts again at 1).
    pub attempt: i32,
    /// When the answer came.
    pub at: DateTime<Utc>,
    /// The partner's HTTP status; `None` when no answer came.
    pub status: Option<i32>,
    /// How the answer was classified (`accepted`, `retryable`, ...).
    pub verdict: String,
    /// How long the call took.
    pub elapsed_ms: i32,
    /// The start of the answer's body.
    pub response_excerpt: Option<String>,
    /// What went wrong, for a failed call.
    pub error: Option<String>,
}

/// The `unmatched_leads` row of a lead no rule matched (and no default route took).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unmatched {
    /// The decision tree that found no rule.
    pub tree_version: i64,
    /// That tree's rules version.
    pub rules_version: Option<i64>,
    /// The person (main record).
    pub person_id: i64,
    /// The alias record, when the lead came as one.
    pub alias_id: Option<i64>,
    /// The site that posted it.
    pub site: String,
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

/// What is stored about submission `submission_id`; `None` when it has neither a `leads` nor
/// an `unmatched_leads` row (unknown, still on its way, or dead-lettered before delivery).
pub async fn load(conn: &mut PgConnection, submission_id: Uuid) -> Result<Option<StoredLead>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        delivery: Delivery,
        fields: Option<Value>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT l.id, l.partner, l.state, l.rule_name AS rule, l.tree_version, t.rules_version, l.person_id, l.alias_id,
                l.site, l.submitted_at, l.dedupe_key, l.attempts, l.response_status, l.response_excerpt, l.error,
                l.request_date, l.updated_at, l.routing, l.fields
         FROM leads l LEFT JOIN decision_trees t ON t.version = l.tree_version
         WHERE l.submission_id = $1 ORDER BY l.partner",
    )
    .bind(submission_id)
    .fetch_all(&mut *conn)
    .await?;
    let unmatched: Option<(Unmatched, Value)> = sqlx::query_as::<_, (i64, Option<i64>, i64, Option<i64>, String, DateTime<Utc>, DateTime<Utc>, Value)>(
        "SELECT u.tree_version, t.rules_version, u.person_id, u.alias_id, u.site, u.submitted_at, u.created_at, u.fields
         FROM unmatched_leads u LEFT JOIN decision_trees t ON t.version = u.tree_version
         WHERE u.submission_id = $1",
    )
    .bind(submission_id)
    .fetch_optional(&mut *conn)
    .await?
    .map(|(tree_version, rules_version, person_id, alias_id, site, submitted_at, recorded_at, fields)| {
        (Unmatched { tree_version, rules_version, person_id, alias_id, site, submitted_at, recorded_at }, fields)
    });
    if rows.is_empty() && unmatched.is_none() {
        return Ok(None);
    }
    let object = |value: Option<Value>| match value {
        Some(Value::Object(fields)) => Some(fields),
        _ => None,
    };
    let mut fields = None;
    let mut deliveries = Vec::with_capacity(rows.len());
    for Row { delivery, fields: kept } in rows {
        fields = fields.or_else(|| object(kept));
        deliveries.push(delivery);
    }
    let unmatched = unmatched.map(|(unmatched, kept)| {
        fields = fields.take().or_else(|| object(Some(kept)));
        unmatched
    });
    Ok(Some(StoredLead { submission_id, deliveries, unmatched, fields }))
}

/// The calls made for the `leads` rows `lead_ids`, by row and attempt.
pub async fn attempts(conn: &mut PgConnection, lead_ids: &[i64]) -> Result<Vec<Attempt>> {
    Ok(sqlx::query_as(
        "SELECT lead_id, attempt, at, status, verdict, elapsed_ms, response_excerpt, error
         FROM delivery_attempts WHERE lead_id = ANY($1) ORDER BY lead_id, id",
    )
    .bind(lead_ids)
    .fetch_all(conn)
    .await?)
}

/// A record of the Lead Identity graph, as the admin UI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Identity {
    /// Its id.
    pub id: i64,
    /// The main record it is an alias of (`None` for a main record).
    pub alias_of: Option<i64>,
    /// Normalized email.
    pub email: Option<String>,
    /// Normalized name.
    pub full_name: Option<String>,
    /// Normalized phone (E.164).
    pub phone: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// The identity records `ids` (main records and aliases), by id.
pub async fn identities(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<Identity>> {
    Ok(sqlx::query_as(
        "SELECT id, alias_of, email, full_name, phone, created_at FROM persons WHERE id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// What a lead search may ask for; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// One submission.
    pub submission_id: Option<Uuid>,
    /// The site that posted it.
    pub site: Option<String>,
    /// The partner it went to.
    pub partner: Option<String>,
    /// Its state.
    pub state: Option<SearchState>,
    /// Submitted at or after.
    pub from: Option<DateTime<Utc>>,
    /// Submitted before.
    pub to: Option<DateTime<Utc>>,
    /// Continue after this result (the previous page's [`Page::next`]).
    pub after: Option<Cursor>,
    /// At most this many results.
    pub limit: i64,
}

/// The state a search filters on: a delivery row's, or "no rule matched".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchState {
    /// A `leads` row in this state.
    Delivery(DeliveryState),
    /// An `unmatched_leads` row.
    Unmatched,
}

impl SearchState {
    /// `pending`, `accepted`, ..., or `unmatched`.
    pub fn parse(text: &str) -> Option<Self> {
        if text == "unmatched" {
            return Some(Self::Unmatched);
        }
        DeliveryState::ALL.iter().copied().find(|s| s.as_str() == text).map(Self::Delivery)
    }
}

/// Where a page of results ends: results come newest submission first (submission ids are
/// UUIDv7, ordered by time), then by partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last result's submission.
    pub submission_id: Uuid,
    /// Its partner (empty for an unmatched lead).
    pub partner: String,
}

impl Cursor {
    /// `<submission id>` or `<submission id>/<partner>`, as [`fmt::Display`] writes it.
    pub fn parse(text: &str) -> Option<Self> {
        let (id, partner) = text.split_once('/').unwrap_or((text, ""));
        Some(Self { submission_id: id.parse().ok()?, partner: partner.to_owned() })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.partner.is_empty() {
            write!(f, "{}", self.submission_id)
        } else {
            write!(f, "{}/{}", self.submission_id, self.partner)
        }
    }
}

/// One search result: a delivery row, or an unmatched lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Found {
    /// The submission.
    pub submission_id: Uuid,
    /// The site that posted it, where kept.
    pub site: Option<String>,
    /// The partner (`None`: unmatched).
    pub partner: Option<String>,
    /// The row's state, or `unmatched`.
    pub state: String,
    /// The rule that decided it.
    pub rule: Option<String>,
    /// The tree that decided it.
    pub tree_version: Option<i64>,
    /// Calls made.
    pub attempts: i32,
    /// When the API accepted it, where kept.
    pub submitted_at: Option<DateTime<Utc>>,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
}

/// A page of results, and where the next one starts (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The results, newest submission first.
    pub leads: Vec<Found>,
    /// The cursor of the next page.
    pub next: Option<Cursor>,
}

/// The smallest UUIDv7 of the millisecond `at`: submission ids are UUIDv7, so a time range is
/// an id range, which the `(submission_id, partner)` index reads in order.
fn uuid_at(at: DateTime<Utc>) -> Uuid {
    let millis = u128::try_from(at.timestamp_millis()).unwrap_or(0);
    Uuid::from_u128((millis & ((1 << 48) - 1)) << 80)
}

/// Leads matching `search`, newest submission first: `leads` rows and `unmatched_leads`
/// rows, walked along their submission-id indexes (so a page costs the rows it reads, not the
/// table), filtered, merged.
pub async fn search(conn: &mut PgConnection, search: &Search) -> Result<Page> {
    let (delivery_state, unmatched_only) = match search.state {
        Some(SearchState::Delivery(state)) => (Some(state), false),
        Some(SearchState::Unmatched) => (None, true),
        None => (None, false),
    };
    // An unmatched lead has no partner: a partner filter leaves them out.
    let with_unmatched = delivery_state.is_none() && search.partner.is_none();
    let limit = search.limit.clamp(1, 500);
    let mut leads: Vec<Found> = sqlx::query_as(
        "(SELECT submission_id, site, partner, state, rule_name AS rule, tree_version, attempts, submitted_at, created_at
          FROM leads
          WHERE NOT $9 AND ($1::uuid IS NULL OR submission_id = $1) AND ($2::text IS NULL OR site = $2)
            AND ($3::text IS NULL OR partner = $3) AND ($4::text IS NULL OR state = $4)
            AND ($5::uuid IS NULL OR submission_id >= $5) AND ($6::uuid IS NULL OR submission_id < $6)
            AND ($7::uuid IS NULL OR (submission_id, partner) < ($7, $8))
          ORDER BY submission_id DESC, partner DESC LIMIT $11)
         UNION ALL
         (SELECT submission_id, site, NULL, 'unmatched', NULL, tree_version, 0, submitted_at, created_at
          FROM unmatched_leads
          WHERE $10 AND ($1::uuid IS NULL OR submission_id = $1) AND ($2::text IS NULL OR site = $2)
            AND ($5::uuid IS NULL OR submission_id >= $5) AND ($6::uuid IS NULL OR submission_id < $6)
            AND ($7::uuid IS NULL OR (submission_id, '') < ($7, $8))
          ORDER BY submission_id DESC LIMIT $11)
         ORDER BY submission_id DESC, partner DESC NULLS LAST LIMIT $11",
    )
    .bind(search.submission_id)
    .bind(search.site.as_deref())
    .bind(search.partner.as_deref())
    .bind(delivery_state)
    .bind(search.from.map(uuid_at))
    .bind(search.to.map(uuid_at))
    .bind(search.after.as_ref().map(|c| c.submission_id))
    .bind(search.after.as_ref().map_or("", |c| c.partner.as_str()))
    .bind(unmatched_only)
    .bind(with_unmatched || unmatched_only)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    leads.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = (leads.len() as i64 == limit)
        .then(|| leads.last())
        .flatten()
        .map(|last| Cursor { submission_id: last.submission_id, partner: last.partner.clone().unwrap_or_default() });
    Ok(Page { leads, next })
}
