//! Where leads ended. Every submission ends in a known state (DESIGN.md, "Nothing is lost"):
//!
//! | state | where it is recorded |
//! |---|---|
//! | `accepted`, `rejected`, `duplicate` | its `leads` row (the partner's answer, or deliver's dedupe) |
//! | `failed` | its `leads` row, and its letter in `partner_<name>_dlq` with the error |
//! | `unmatched` | `unmatched_leads` (no rule matched, no default route) |
//! | `dead_lettered` | a letter in `submissions_dlq`, `routing_dlq` or a partner DLQ, with no `leads` row |
//!
//! A submission that has none of these yet is still on its way (in a queue, or `pending` in
//! `leads` while deliver retries). [`finals`] answers for a set of submissions (the load
//! generator, the chaos tests and the demo wait on it); [`summary`] is the operator's view of the
//! whole pipeline: queue depths, outcomes per partner and circuit states.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::Result;
use crate::dlq;
use crate::queue::{Pgmq, QueueMetrics, QueueName};
use crate::state::{CircuitState, DeliveryState};

/// A final state of a submission (for one partner, where it reached one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalState {
    /// The partner accepted it.
    Accepted,
    /// The partner rejected it.
    Rejected,
    /// A duplicate: deliver's dedupe (the partner had this key within its window) or the
    /// partner's own answer.
    Duplicate,
    /// Delivery gave up (retries exhausted or a permanent error): in the partner's DLQ.
    Failed,
    /// No rule matched and the rule set has no default route.
    Unmatched,
    /// Dead-lettered before a delivery row existed (bad message, retries exhausted in
    /// identify or the router).
    DeadLettered,
}

impl FinalState {
    /// Every state, in display order.
    pub const ALL: [Self; 6] =
        [Self::Accepted, Self::Rejected, Self::Duplicate, Self::Failed, Self::Unmatched, Self::DeadLettered];

    /// The state's name (a [`DeliveryState`]'s where it is one).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Duplicate => "duplicate",
            Self::Failed => "failed",
            Self::Unmatched => "unmatched",
            Self::DeadLettered => "dead_lettered",
        }
    }

    /// The final state a delivery row in `state` records; `None` while it is pending.
    pub fn of_delivery(state: DeliveryState) -> Option<Self> {
        match state {
            DeliveryState::Pending => None,
            DeliveryState::Accepted => Some(Self::Accepted),
            DeliveryState::Rejected => Some(Self::Rejected),
            DeliveryState::Duplicate => Some(Self::Duplicate),
            DeliveryState::Failed => Some(Self::Failed),
        }
    }
}

impl fmt::Display for FinalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One final state of one submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Final {
    /// The submission.
    pub submission_id: Uuid,
    /// The partner, for states reached at a partner (and partner DLQ letters).
    pub partner: Option<String>,
    /// The state.
    pub state: FinalState,
    /// When it was reached (the partner's answer, the dedupe, the DLQ entry, ...).
    pub at: DateTime<Utc>,
    /// The error, for `failed` and `dead_lettered`.
    pub error: Option<String>,
    /// The dead-letter queue holding it, for `failed` and `dead_lettered`.
    pub queue: Option<String>,
    /// How many partners the lead was sold to (a shared lead: more than one), each reaching a
    /// final state of its own; 1 where it was not routed or not recorded.
    pub shares: u32,
}

/// The submissions among `finals` that are settled: every partner a lead was sold to has its
/// final state (a shared lead waits for all of them), or it ended before routing.
pub fn settled(finals: &[Final]) -> std::collections::HashSet<Uuid> {
    let mut per_lead: HashMap<Uuid, (std::collections::HashSet<Option<&str>>, u32)> = HashMap::new();
    for f in finals {
        let entry = per_lead.entry(f.submission_id).or_default();
        entry.0.insert(f.partner.as_deref());
        entry.1 = entry.1.max(f.shares);
    }
    per_lead
        .into_iter()
        .filter(|(_, (partners, shares))| partners.contains(&None) || partners.len() as u32 >= *shares)
        .map(|(id, _)| id)
        .collect()
}

/// The final states reached by the given submissions, in no particular order: one per partner
/// a lead reached (a shared lead has one per partner it was sold to, see [`settled`]). A
/// submission with none is still on its way; two at one partner would be a bug, which is what
/// the chaos tests look for.
pub async fn finals(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Final>> {
    let mut out = Vec::new();
    let rows = sqlx::query(
        "SELECT l.submission_id, l.partner, l.state, l.updated_at, l.error,
                greatest(1, (SELECT count(*) FROM jsonb_array_elements(coalesce(l.routing->'candidates', '[]')) c
                             WHERE c->>'skipped' IS NULL))::int
         FROM leads l WHERE l.submission_id = ANY($1) AND l.state <> $2
         UNION ALL
         SELECT u.submission_id, NULL, NULL, u.created_at, NULL, 1
         FROM unmatched_leads u WHERE u.submission_id = ANY($1)",
    )
    .bind(ids)
    .bind(DeliveryState::Pending)
    .fetch_all(pool)
    .await?;
    // (submission, partner) → its delivery row's place in `out`.
    let mut with_row = HashMap::new();
    for row in rows {
        let state: Option<DeliveryState> = row.try_get(2)?;
        let submission_id: Uuid = row.try_get(0)?;
        let partner: Option<String> = row.try_get(1)?;
        // No delivery state: the `unmatched_leads` side of the union.
        let state = state.and_then(FinalState::of_delivery).unwrap_or(FinalState::Unmatched);
        if let Some(partner) = &partner {
            with_row.insert((submission_id, partner.clone()), out.len());
        }
        let shares = u32::try_from(row.try_get::<i32, _>(5)?).unwrap_or(1);
        out.push(Final {
            submission_id,
            partner,
            state,
            at: row.try_get(3)?,
            error: row.try_get(4)?,
            queue: None,
            shares,
        });
    }
    for letter in letters(pool, ids).await? {
        let row = letter.partner.as_ref().and_then(|p| with_row.get(&(letter.submission_id, p.clone())));
        match row.and_then(|&i| out.get_mut(i)) {
            // The delivery row says `failed`: give it the letter's queue and error.
            Some(found) => {
                found.queue = Some(letter.queue);
                found.error = found.error.take().or(letter.error);
            }
            None => out.push(Final {
                submission_id: letter.submission_id,
                partner: letter.partner,
                state: FinalState::DeadLettered,
                at: letter.at,
                error: letter.error,
                queue: Some(letter.queue),
                shares: 1,
            }),
        }
    }
    Ok(out)
}

struct DeadLetterOf {
    submission_id: Uuid,
    partner: Option<String>,
    queue: String,
    at: DateTime<Utc>,
    error: Option<String>,
}

/// The dead letters of the given submissions, across every DLQ.
async fn letters(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<DeadLetterOf>> {
    let mut out = Vec::new();
    for (dlq, length) in dlq::dead_letter_queues(pool).await? {
        if length == 0 {
            continue;
        }
        // The partner of a partner DLQ's letters: `partner_<name>_dlq` holds `<name>`'s.
        let partner =
            dlq::source_queue(&dlq).and_then(|source| source.as_str().strip_prefix("partner_").map(str::to_owned));
        // Queue names are validated identifiers (`QueueName`), so quoting them is safe.
        // Compared as text, not cast to `uuid`: one letter whose message has no valid id (what
        // the DLQ is for) would make the cast, and so the whole query, fail.
        // A hash join with the wanted ids: time grows with letters + ids, not letters × ids.
        let sql = format!(
            "SELECT lower(q.message->'message'->>'submission_id'), q.enqueued_at, q.message->>'error'
             FROM pgmq.\"q_{}\" q JOIN unnest($1::text[]) AS w(id) ON w.id = lower(q.message->'message'->>'submission_id')",
            dlq.as_str()
        );
        let wanted: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows: Vec<(String, DateTime<Utc>, Option<String>)> =
            sqlx::query_as(&sql).bind(&wanted).fetch_all(pool).await?;
        for (id, at, error) in rows {
            let Ok(submission_id) = id.parse() else { continue };
            out.push(DeadLetterOf {
                submission_id,
                partner: partner.clone(),
                queue: dlq.as_str().to_owned(),
                at,
                error,
            });
        }
    }
    // Letters an operator discarded stay dead-lettered, with who did it and why.
    let rows: Vec<(String, String, DateTime<Utc>, String, String)> = sqlx::query_as(
        "SELECT lower(d.message->'message'->>'submission_id'), d.queue, d.discarded_at, d.actor, d.reason
         FROM dlq_discarded d WHERE lower(d.message->'message'->>'submission_id') = ANY($1::text[])",
    )
    .bind(ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    for (id, queue, at, actor, reason) in rows {
        let Ok(submission_id) = id.parse() else { continue };
        let partner = QueueName::new(queue.as_str())
            .ok()
            .and_then(|q| dlq::source_queue(&q))
            .and_then(|source| source.as_str().strip_prefix("partner_").map(str::to_owned));
        out.push(DeadLetterOf {
            submission_id,
            partner,
            queue,
            at,
            error: Some(format!("discarded by {actor}: {reason}")),
        });
    }
    Ok(out)
}

/// One partner's outcomes and circuit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartnerOutcomes {
    /// The partner (its route name).
    pub partner: String,
    /// Whether deliver reads its queue.
    pub enabled: bool,
    /// Its circuit.
    pub circuit: CircuitState,
    /// When an open circuit lets a probe through.
    pub retry_at: Option<DateTime<Utc>>,
    /// Delivery rows per state.
    pub leads: BTreeMap<DeliveryState, i64>,
}

/// The operator's view of the pipeline at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Every queue's metrics, by name.
    pub queues: Vec<QueueMetrics>,
    /// Every partner, by name.
    pub partners: Vec<PartnerOutcomes>,
    /// Leads no rule matched.
    pub unmatched: i64,
}

impl Summary {
    /// Messages waiting in the pipeline's queues (dead-letter queues excluded).
    pub fn in_flight(&self) -> i64 {
        self.queues.iter().filter(|q| !q.queue_name.ends_with(dlq::SUFFIX)).map(|q| q.queue_length).sum()
    }

    /// Messages in dead-letter queues.
    pub fn dead_lettered(&self) -> i64 {
        self.queues.iter().filter(|q| q.queue_name.ends_with(dlq::SUFFIX)).map(|q| q.queue_length).sum()
    }
}

/// The pipeline's [`Summary`]: outcomes of the leads created since `since` (all of them when
/// `None`; counting a long history on every refresh is slow), queues and circuits now.
pub async fn summary(pool: &PgPool, pgmq: &Pgmq, since: Option<DateTime<Utc>>) -> Result<Summary> {
    let queues = pgmq.metrics_all(pool).await?;
    let mut partners: Vec<PartnerOutcomes> = sqlx::query(
        "SELECT p.name, p.enabled, c.state, c.retry_at
         FROM partners p LEFT JOIN circuit_breakers c ON c.partner = p.name ORDER BY p.name",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| -> Result<PartnerOutcomes> {
        Ok(PartnerOutcomes {
            partner: row.try_get(0)?,
            enabled: row.try_get(1)?,
            // A partner without a breaker row yet has never failed: closed.
            circuit: row.try_get::<Option<CircuitState>, _>(2)?.unwrap_or(CircuitState::Closed),
            retry_at: row.try_get(3)?,
            leads: BTreeMap::new(),
        })
    })
    .collect::<Result<_>>()?;
    let counts: Vec<(String, DeliveryState, i64)> = sqlx::query_as(
        "SELECT partner, state, count(*) FROM leads WHERE $1::timestamptz IS NULL OR created_at >= $1
         GROUP BY partner, state",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    for (partner, state, count) in counts {
        if let Some(p) = partners.iter_mut().find(|p| p.partner == partner) {
            p.leads.insert(state, count);
        }
    }
    let unmatched =
        sqlx::query_scalar("SELECT count(*) FROM unmatched_leads WHERE $1::timestamptz IS NULL OR created_at >= $1")
            .bind(since)
            .fetch_one(pool)
            .await?;
    Ok(Summary { queues, partners, unmatched })
}
