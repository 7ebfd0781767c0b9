//! The deliver worker (DESIGN.md, "Deliver"): one consumer per enabled partner reads
//! `partner_<name>`, dedupes each lead against `leads`, calls the partner's HTTP API as its
//! configuration says, and records the outcome; a circuit breaker per partner, shared through
//! `circuit_breakers`, keeps a failing partner from being hammered.
//!
//! Per batch:
//! 1. Advisory locks on the batch's dedupe keys (sorted), so replicas racing on one key
//!    deliver it once. A lead whose key was delivered (or is in flight) within the window is
//!    recorded `duplicate` and not sent.
//! 2. The `leads` row (`pending`, `request_date`) is created, or found again on a redelivery.
//!    Steps 1 and 2 (the claim) commit on a transaction of their own before any call, so a key's
//!    claim survives a batch that never commits; the rest happens in the consumer's transaction.
//!    The claims of the partners' batches that wait at the same moment commit together, in one
//!    transaction ([`Claims`]): with many partners each batch holds few leads, and a claim per
//!    batch would cost more than the leads' calls.
//! 3. The breaker (read through a short cache): open → the message waits until the retry time
//!    (attempts untouched); due for a probe → one replica takes the probe lease (compare-and-swap
//!    on `generation`, committed at once) and sends exactly one lead.
//! 4. HTTP calls, concurrently, each with `Idempotency-Key: <submission_id>:<partner>`;
//!    the answer is classified and recorded on the row (status, excerpt, attempts, error).
//! 5. Retryable failures back off (exponential, jitter, cap; `Retry-After` honoured), counted
//!    on the row, not by queue reads; after the partner's `max_retries` the lead is `failed`,
//!    moved to `partner_<name>_dlq`, and the circuit opens with a retry time chosen by the
//!    answer. A success closes the circuit.
//!
//! A worker killed between a call and its commit leaves the row `pending` (the key stays claimed:
//! another lead with it is a duplicate); the message reappears and the call is repeated once,
//! with the same idempotency key.

use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pipeline::adapter::{Adapter, Answer, excerpt};
use pipeline::consumer::{Envelope, Handler, Outcome};
use pipeline::distribution::{Availability, Clock, Ledger};
use pipeline::message::PartnerLead;
use pipeline::partners::{PartnerConfig, Verdict};
use pipeline::retry::{ExponentialBackoff, RetryPolicy};
use pipeline::state::{CircuitState, DeliveryState};
use pipeline::telemetry::LeadSpans;
use rand::SeedableRng;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::{Error, Result};

/// Longest response excerpt stored on a `leads` row.
const EXCERPT: usize = 500;
/// HTTP calls of one batch in flight at once.
const CONCURRENCY: usize = 32;
/// The shortest wait of a lead held back by the breaker (an open circuit, another replica's
/// probe, or this replica's probe in flight).
const PROBE_WAIT: Duration = Duration::from_millis(500);
/// Claim transactions in flight at once (each a group of batches).
const CLAIMERS: usize = 2;
/// The most batches one claim transaction takes.
const MAX_CLAIM_GROUP: usize = 32;
/// Batches waiting for a claimer, at most.
const CLAIM_QUEUE: usize = 1_024;

/// The breaker row as the worker last read it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BreakerState {
    /// The circuit.
    pub state: CircuitState,
    /// When an open circuit may be probed.
    pub retry_at: Option<DateTime<Utc>>,
    /// Compare-and-swap generation.
    pub generation: i64,
    /// Until when the current probe lease holds.
    pub probe_lease_until: Option<DateTime<Utc>>,
}

/// Every partner's breaker, re-read from the table at most every `ttl`.
pub struct Breakers {
    ttl: Duration,
    cache: Mutex<(Option<Instant>, HashMap<String, BreakerState>)>,
}

impl Breakers {
    /// A cache whose reads live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, cache: Mutex::new((None, HashMap::new())) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, HashMap<String, BreakerState>)> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads the table if the cache is older than `ttl`.
    pub async fn refresh(&self, pool: &PgPool) -> Result<()> {
        if self.lock().0.is_some_and(|at| at.elapsed() < self.ttl) {
            return Ok(());
        }
        self.reload(pool).await
    }

    /// Re-reads the table now.
    pub async fn reload(&self, pool: &PgPool) -> Result<()> {
        #[derive(sqlx::FromRow)]
        struct Row {
            partner: String,
            #[sqlx(flatten)]
            breaker: BreakerState,
        }
        let rows: Vec<Row> =
            sqlx::query_as("SELECT partner, state, retry_at, generation, probe_lease_until FROM circuit_breakers")
                .fetch_all(pool)
                .await?;
        let map = rows.into_iter().map(|r| (r.partner, r.breaker)).collect();
        *self.lock() = (Some(Instant::now()), map);
        Ok(())
    }

    /// The cached state of `partner`.
    pub fn get(&self, partner: &str) -> Option<BreakerState> {
        self.lock().1.get(partner).cloned()
    }

    /// Whether `partner`'s queue should be read now: closed, or open/half-open with a probe due.
    pub fn readable(&self, partner: &str) -> bool {
        match self.get(partner) {
            None => true,
            Some(b) if b.state == CircuitState::Closed => true,
            Some(b) => {
                b.retry_at.is_none_or(|at| at <= Utc::now())
                    && b.probe_lease_until.is_none_or(|until| until <= Utc::now())
            }
        }
    }
}

/// Configuration shared by every deliver consumer of a process.
#[derive(Clone)]
pub struct DeliverContext {
    /// A pool for the claims and the breaker updates that commit on their own (a claim before
    /// any call; a circuit opening or closing, which other replicas must see before this batch
    /// ends).
    pub pool: PgPool,
    /// Where the partners' consumers read their queues.
    pub readers: pipeline::queue::Readers,
    /// The HTTP client (keep-alive pool shared by all partners).
    pub client: reqwest::Client,
    /// Environment variables templates may use (`env.NAME`): those named `PARTNER_*`.
    pub env: Arc<BTreeMap<String, String>>,
    /// The breakers.
    pub breakers: Arc<Breakers>,
    /// This worker's name, the owner of probe leases.
    pub owner: String,
    /// The time: partners' schedules and cap periods are read on it.
    pub clock: Clock,
    /// Where the partners' batches are claimed, several in one transaction.
    pub claims: Claims,
}

/// What a claim needs of a partner: its configuration (name, dedupe fields and window) and
/// its availability (caps).
struct Terms {
    config: PartnerConfig,
    availability: Availability,
}

/// One partner's batch to claim, at its consumer's time.
struct Batch {
    terms: Arc<Terms>,
    leads: Vec<PartnerLead>,
    now: DateTime<Utc>,
}

struct ClaimRequest {
    batch: Batch,
    reply: oneshot::Sender<Result<Claimed>>,
}

/// Deliver's claims, gathered across partners ([`pipeline::group`]): the batches that wait for
/// their claim at the same moment, of any partners, are claimed in one transaction, so a
/// thousand partners with a few leads each cost a few claim transactions, not a thousand. A
/// group that fails is claimed again batch by batch, so one partner's bad batch fails alone.
/// Locks are taken in one sorted order across the group (dedupe keys, then cap counters), as a
/// single batch takes them, so groups in several replicas cannot deadlock.
#[derive(Clone)]
pub struct Claims {
    sender: mpsc::Sender<ClaimRequest>,
}

impl Claims {
    /// Starts the claimer tasks on the current runtime; they end once every clone is dropped.
    pub fn start(pool: &PgPool) -> Self {
        let (sender, gatherer) = pipeline::group::channel(CLAIM_QUEUE, MAX_CLAIM_GROUP);
        for _ in 0..CLAIMERS {
            let (pool, gatherer) = (pool.clone(), gatherer.clone());
            tokio::spawn(async move {
                while let Some(group) = gatherer.next().await {
                    claim_group(&pool, group).await;
                }
            });
        }
        Self { sender }
    }

    /// Claims `batch` (with whatever other batches wait now) and waits for its plans.
    async fn claim(&self, batch: Batch) -> Result<Claimed> {
        let (reply, answer) = oneshot::channel();
        self.sender.send(ClaimRequest { batch, reply }).await.map_err(|_| Error::ClaimsStopped)?;
        answer.await.map_err(|_| Error::ClaimsStopped)?
    }
}

/// Claims a group and answers each batch: all in one transaction, or, if that fails, each
/// batch in its own.
async fn claim_group(pool: &PgPool, group: Vec<ClaimRequest>) {
    let started = Instant::now();
    let (batches, replies): (Vec<Batch>, Vec<_>) = group.into_iter().map(|r| (r.batch, r.reply)).unzip();
    sentry::metrics::distribution("deliver.claim.group_size", batches.len() as f64).capture();
    let claimed = claim_batches(pool, &batches).await;
    sentry::metrics::distribution("deliver.claim.duration", started.elapsed().as_secs_f64() * 1e3)
        .unit(sentry::protocol::Unit::Millisecond)
        .capture();
    match claimed {
        Ok(claimed) => {
            for (reply, claimed) in replies.into_iter().zip(claimed) {
                // A consumer that stopped waiting: its claim stands, as after a crash.
                let _ = reply.send(Ok(claimed));
            }
        }
        Err(error) if batches.len() > 1 && !database_unreachable(&error) => {
            tracing::warn!(%error, batches = batches.len(), "a group of claims failed; claiming each batch alone");
            for (reply, batch) in replies.into_iter().zip(&batches) {
                let claimed = claim_batches(pool, std::slice::from_ref(batch)).await;
                let _ = reply.send(claimed.map(|mut claimed| claimed.remove(0)));
            }
        }
        // One batch, or a database that cannot be reached: no batch is to blame, and claiming
        // each alone would only wait for the database once per batch.
        Err(error) => {
            let shared = error.to_string();
            let mut first = Some(error);
            for reply in replies {
                let error = first.take().unwrap_or_else(|| Error::ClaimGroup(shared.clone()));
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// Whether a claim failed because the database cannot be reached now.
fn database_unreachable(error: &Error) -> bool {
    matches!(error, Error::Database(e) if pipeline::db::unreachable(e))
}

/// Dedupe and rows of `batches`, committed before any call, in one transaction. A claim (a
/// `pending` row) must outlive a batch cut between its calls and its commit (a crash, the
/// database going away): rolled back with the batch, it would let another lead with the same
/// key be sent before this message reappears, and the partner would receive the key twice.
/// The message stays in its batch: if the batch does not commit, it reappears, finds its
/// `pending` row and is sent again with the same Idempotency-Key.
async fn claim_batches(pool: &PgPool, batches: &[Batch]) -> Result<Vec<Claimed>> {
    let mut tx = pool.begin().await?;
    let persons = identities(&mut tx, batches.iter().flat_map(|b| &b.leads)).await?;
    let keys: Vec<Vec<String>> = batches
        .iter()
        .map(|b| {
            let fields = &b.terms.config.dedupe_fields;
            b.leads
                .iter()
                .map(|lead| dedupe_key(fields, lead, persons.get(&person_id(lead)).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let locks = batches
        .iter()
        .zip(&keys)
        .flat_map(|(b, keys)| keys.iter().map(|k| pipeline::db::advisory_key(&b.terms.config.name, k)))
        .collect();
    pipeline::db::lock_in_order(&mut tx, locks).await?;
    let plans = prepare(&mut tx, batches, &keys).await?;
    tx.commit().await?;
    Ok(batches
        .iter()
        .zip(plans)
        .map(|(b, plans)| Claimed {
            plans,
            persons: b
                .leads
                .iter()
                .filter_map(|lead| persons.get(&person_id(lead)).map(|p| (person_id(lead), p.clone())))
                .collect(),
        })
        .collect())
}

/// The handler of one partner's queue.
pub struct Deliver {
    adapter: Adapter,
    /// The partner's configuration, and its schedule, caps and budget.
    terms: Arc<Terms>,
    context: DeliverContext,
    rng: Mutex<rand::rngs::StdRng>,
}

impl Deliver {
    /// A handler for `partner`; its method is parsed and its templates compiled now (an invalid
    /// one is an error).
    pub fn new(partner: PartnerConfig, context: DeliverContext) -> Result<Self> {
        let adapter = Adapter::new(&partner)?;
        let availability = Availability::of(&partner).map_err(pipeline::Error::InvalidPartner)?;
        let terms = Arc::new(Terms { config: partner, availability });
        Ok(Self { adapter, terms, context, rng: Mutex::new(rand::rngs::StdRng::from_os_rng()) })
    }

    /// The partner this handler serves.
    pub fn partner(&self) -> &PartnerConfig {
        self.adapter.partner()
    }
}

/// The id of the record `lead` is known by: its alias record if it has one, else its person.
fn person_id(lead: &PartnerLead) -> i64 {
    lead.lead.alias_id.unwrap_or(lead.lead.person_id)
}

/// The dedupe key of a lead: the partner's fields, from the person (`email`, `phone`,
/// `full_name`, normalized) or the lead's fields, joined.
fn dedupe_key(fields: &[String], lead: &PartnerLead, person: &Value) -> String {
    fields
        .iter()
        .map(|f| match f.as_str() {
            "email" | "phone" | "full_name" => person[f.as_str()].as_str().unwrap_or("").to_owned(),
            other => match lead.lead.fields.get(other) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            },
        })
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// What a call changes on its `leads` row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RowUpdate {
    id: i64,
    state: DeliveryState,
    attempts: i32,
    status: Option<i32>,
    excerpt: String,
    error: Option<String>,
    /// How the answer was classified, and how long the call took: the attempt's own record.
    verdict: Verdict,
    elapsed_ms: i32,
}

/// What to do with one message before any call.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    Settled(Outcome),
    Send { row: i64, attempts: i32 },
}

/// A batch's dedupe decided and its rows claimed (committed): each message's plan, and the
/// identities its templates and keys use.
struct Claimed {
    plans: Vec<Plan>,
    persons: HashMap<i64, Value>,
}

impl Claimed {
    /// The identity of `lead`: its alias record if it has one, else its person.
    fn person(&self, lead: &PartnerLead) -> Value {
        self.persons.get(&person_id(lead)).cloned().unwrap_or(Value::Null)
    }
}

/// What the partner's breaker lets through this batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Closed: every lead to send.
    All,
    /// This replica holds the half-open probe lease: one lead.
    Probe,
    /// Open, or another replica probes: nothing now; the leads wait this long.
    Wait(Duration),
}

/// What [`settle`] needs of a partner's configuration: its retries, backoff and how long a
/// circuit opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RetryRules {
    max_retries: u32,
    backoff: ExponentialBackoff,
    open: Duration,
}

impl RetryRules {
    fn of(partner: &PartnerConfig) -> Self {
        Self {
            max_retries: partner.max_retries,
            backoff: ExponentialBackoff {
                base: Duration::from_millis(u64::from(partner.backoff_base_ms)),
                cap: Duration::from_millis(u64::from(partner.backoff_cap_ms)),
            },
            open: Duration::from_secs(partner.breaker.open_secs),
        }
    }

    /// How long the circuit stays open after a lead ran out of retries on `answer`: as long as
    /// the partner asked (`Retry-After`), at least a minute after a 429, else the configured time.
    fn open_time(&self, answer: &Answer) -> Duration {
        match (answer.status, answer.retry_after) {
            (_, Some(after)) => after,
            (Some(429), None) => self.open.max(Duration::from_secs(60)),
            _ => self.open,
        }
    }
}

/// What a batch's answers come to.
#[derive(Debug, PartialEq)]
struct Settlement {
    /// One per message, in order.
    outcomes: Vec<Outcome>,
    /// One per call, in call order.
    updates: Vec<RowUpdate>,
    /// Calls that reached a partner's decision (accepted, rejected, duplicate).
    successes: u32,
    /// Calls that failed and may be retried.
    failures: u32,
    /// Set when a lead ran out of retries: how long the circuit must open.
    open_for: Option<Duration>,
}

/// Settles a batch: each called lead's row update and outcome from its answer (a partner's
/// decision is done; a permanent error goes to the DLQ; a retryable one backs off, or goes to the
/// DLQ and opens the circuit once the retries are spent), the leads not called keep their plan,
/// and those held back behind a probe wait for it. Pure: the jitter comes from `rng`.
fn settle(
    rules: &RetryRules,
    plans: &[Plan],
    sends: &[usize],
    answers: &[Answer],
    rng: &mut dyn rand::RngCore,
) -> Settlement {
    let mut outcomes: Vec<Option<Outcome>> = plans
        .iter()
        .map(|plan| match plan {
            Plan::Settled(outcome) => Some(outcome.clone()),
            Plan::Send { .. } => None,
        })
        .collect();
    let mut settlement =
        Settlement { outcomes: Vec::new(), updates: Vec::new(), successes: 0, failures: 0, open_for: None };
    for (&i, answer) in sends.iter().zip(answers) {
        let Plan::Send { row, attempts } = plans[i] else { continue };
        let attempts = attempts + 1;
        let error = answer.error.clone().unwrap_or_default();
        let decided = |state| (state, Outcome::Done(Vec::new()));
        let (state, outcome) = match answer.verdict {
            Verdict::Accepted => decided(DeliveryState::Accepted),
            Verdict::Rejected => decided(DeliveryState::Rejected),
            Verdict::Duplicate => decided(DeliveryState::Duplicate),
            Verdict::Permanent => (DeliveryState::Failed, Outcome::DeadLetter(error)),
            Verdict::Retryable if attempts > rules.max_retries as i32 => {
                settlement.open_for = Some(settlement.open_for.unwrap_or_default().max(rules.open_time(answer)));
                (DeliveryState::Failed, Outcome::DeadLetter(format!("gave up after {attempts} attempts: {error}")))
            }
            Verdict::Retryable => {
                let backoff = rules.backoff.delay(attempts as u32, rng);
                (DeliveryState::Pending, Outcome::RetryIn(answer.retry_after.unwrap_or(backoff), error))
            }
        };
        match answer.verdict {
            Verdict::Accepted | Verdict::Rejected | Verdict::Duplicate => settlement.successes += 1,
            Verdict::Retryable => settlement.failures += 1,
            Verdict::Permanent => {}
        }
        settlement.updates.push(RowUpdate {
            id: row,
            state,
            attempts,
            status: answer.status.map(i32::from),
            excerpt: excerpt(&answer.body, EXCERPT),
            error: answer.error.clone(),
            verdict: answer.verdict,
            elapsed_ms: i32::try_from(answer.elapsed.as_millis()).unwrap_or(i32::MAX),
        });
        outcomes[i] = Some(outcome);
    }
    // Leads beyond a probe wait for the probe's verdict.
    settlement.outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::RetryIn(PROBE_WAIT, "waiting for the circuit probe".into())))
        .collect();
    settlement
}

/// The messages to call: every planned send, at most `allowed` of them.
fn to_send(plans: &[Plan], allowed: usize) -> Vec<usize> {
    plans
        .iter()
        .enumerate()
        .filter(|(_, plan)| matches!(plan, Plan::Send { .. }))
        .map(|(i, _)| i)
        .take(allowed)
        .collect()
}

/// Dedupe lookup of a claim group, in one round trip: the batches' own rows (a redelivery finds
/// its row again: `partner`, `submission_id`, `id`, `state`, `attempts`), then the keys other
/// leads claimed for the same partner within its window (`partner`, `dedupe_key`). The states
/// that claim a key (`DeliveryState::claims_key`) are written out, not bound, so the planner can
/// prove the partial index `leads_dedupe_idx` (`state <> 'duplicate'`) applies.
const LOOKUP: &str = "WITH own AS (
         SELECT * FROM unnest($1::text[], $2::uuid[]) AS o(partner, submission_id)
     ), wanted AS (
         SELECT DISTINCT * FROM unnest($1::text[], $3::text[], $4::int[]) AS w(partner, dedupe_key, days)
     )
     SELECT l.partner, l.submission_id, l.id, l.state, l.attempts, NULL AS dedupe_key
       FROM own JOIN leads l ON l.partner = own.partner AND l.submission_id = own.submission_id
     UNION ALL
     SELECT DISTINCT l.partner, NULL::uuid, NULL::bigint, NULL::text, NULL::int, l.dedupe_key
       FROM wanted w JOIN leads l ON l.partner = w.partner AND l.dedupe_key = w.dedupe_key
       WHERE l.state IN ('pending', 'accepted', 'rejected') AND l.request_date > now() - make_interval(days => w.days)
       AND NOT EXISTS (SELECT FROM own WHERE own.partner = l.partner AND own.submission_id = l.submission_id)";

impl Handler for Deliver {
    type Message = PartnerLead;
    type Error = Error;

    /// Not while its circuit is open, nor while it is paused or closed by its schedule: its
    /// queue waits (attempts untouched) until it takes leads again.
    fn ready(&self) -> bool {
        self.context.breakers.readable(&self.partner().name)
            && self.terms.availability.closed((self.context.clock)()).is_none()
    }

    async fn handle(&self, tx: &mut PgConnection, batch: &[Envelope<PartnerLead>]) -> Result<Vec<Outcome>> {
        let span = tracing::info_span!("deliver.batch", partner = %self.partner().name, leads = batch.len());
        self.deliver(tx, batch).instrument(span).await
    }
}

impl Deliver {
    /// One batch: claim (dedupe and rows, committed) → gate (the breaker) → send (the calls)
    /// → settle (pure) → record (the rows, in the batch's transaction, and the breaker).
    async fn deliver(&self, tx: &mut PgConnection, batch: &[Envelope<PartnerLead>]) -> Result<Vec<Outcome>> {
        let started = Instant::now();
        let leads = batch.iter().map(|m| m.body.clone()).collect();
        let claimed = self
            .context
            .claims
            .claim(Batch { terms: Arc::clone(&self.terms), leads, now: (self.context.clock)() })
            .await?;
        let allowed = match self.gate().await? {
            Gate::All => usize::MAX,
            Gate::Probe => 1,
            Gate::Wait(wait) => {
                let reason = format!("circuit of {} is open", self.partner().name);
                return Ok(claimed
                    .plans
                    .into_iter()
                    .map(|plan| match plan {
                        Plan::Settled(outcome) => outcome,
                        Plan::Send { .. } => Outcome::RetryIn(wait, reason.clone()),
                    })
                    .collect());
            }
        };
        let sends = to_send(&claimed.plans, allowed);
        let answers = self.send(batch, &claimed, &sends).await;
        let settlement = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            settle(&RetryRules::of(self.partner()), &claimed.plans, &sends, &answers, &mut *rng)
        };
        for ((&i, answer), update) in sends.iter().zip(&answers).zip(&settlement.updates) {
            emit_call(&self.partner().name, &batch[i], answer, update.attempts, update.state == DeliveryState::Failed);
        }
        record(tx, &self.partner().name, &settlement.updates).await?;
        self.update_breaker(tx, settlement.successes, settlement.failures, settlement.open_for).await?;
        sentry::metrics::distribution("deliver.batch.duration", started.elapsed().as_secs_f64() * 1e3)
            .unit(sentry::protocol::Unit::Millisecond)
            .attribute("partner", self.partner().name.clone())
            .capture();
        Ok(settlement.outcomes)
    }

    /// The breaker (read through its cache): closed sends all; a due probe sends one, if this
    /// replica wins the lease.
    async fn gate(&self) -> Result<Gate> {
        self.context.breakers.refresh(&self.context.pool).await?;
        let Some(breaker) = self.context.breakers.get(&self.partner().name).filter(|b| b.state != CircuitState::Closed)
        else {
            return Ok(Gate::All);
        };
        let wait = breaker.retry_at.map(|at| (at - Utc::now()).to_std().unwrap_or_default()).unwrap_or_default();
        if wait > Duration::ZERO || !self.take_probe(&breaker).await? {
            return Ok(Gate::Wait(wait.max(PROBE_WAIT)));
        }
        Ok(Gate::Probe)
    }

    /// The calls of `sends`, at most [`CONCURRENCY`] at once; one answer each, in order.
    async fn send(&self, batch: &[Envelope<PartnerLead>], claimed: &Claimed, sends: &[usize]) -> Vec<Answer> {
        let spans = LeadSpans::current();
        let mut answers = Vec::with_capacity(sends.len());
        for chunk in sends.chunks(CONCURRENCY) {
            let calls = chunk.iter().map(|&i| {
                let lead = &batch[i].body;
                // The lead's span (sampled batches only) times its call.
                let span = spans.start("deliver.lead", lead.lead.submission_id);
                span.record("msg_id", batch[i].msg_id);
                span.record("partner", self.partner().name.as_str());
                if let Plan::Send { attempts, .. } = claimed.plans[i] {
                    span.record("attempt", attempts + 1);
                }
                let person = claimed.person(lead);
                let call =
                    async move { self.adapter.call(&self.context.client, lead, &person, &self.context.env).await };
                async move {
                    let answer = call.await;
                    span.record("status", answer.status);
                    span.record("verdict", answer.verdict.as_str());
                    if answer.error.is_some() {
                        span.failed();
                    }
                    answer
                }
            });
            answers.extend(futures_util::future::join_all(calls).await);
        }
        answers
    }

    /// Takes the half-open probe lease (compare-and-swap on `generation`, committed at once).
    async fn take_probe(&self, seen: &BreakerState) -> Result<bool> {
        let lease = Duration::from_millis(u64::from(self.partner().timeout_ms)) + Duration::from_secs(5);
        let taken = sqlx::query(
            "UPDATE circuit_breakers SET state = $5, probe_owner = $3,
                    probe_lease_until = now() + $4 * interval '1 millisecond', generation = generation + 1, updated_at = now()
             WHERE partner = $1 AND generation = $2 AND state <> $6 AND retry_at <= now()
               AND (probe_lease_until IS NULL OR probe_lease_until <= now())",
        )
        .bind(&self.partner().name)
        .bind(seen.generation)
        .bind(&self.context.owner)
        .bind(lease.as_millis() as i64)
        .bind(CircuitState::HalfOpen)
        .bind(CircuitState::Closed)
        .execute(&self.context.pool)
        .await?
        .rows_affected()
            == 1;
        self.context.breakers.reload(&self.context.pool).await?;
        if taken {
            tracing::info!(partner = %self.partner().name, "circuit half-open: sending one probe");
            transition(&self.partner().name, CircuitState::HalfOpen);
        }
        Ok(taken)
    }

    /// Records a batch's calls on the breaker: a success closes it; failures count towards
    /// opening it; `open_for` (a lead ran out of retries) opens it for that long.
    ///
    /// Calls that all reached a partner's decision, on a circuit this worker last saw closed,
    /// can only be counted: that update rides on the batch's transaction `tx` (one commit fewer
    /// a batch; the row stays locked until the batch commits, a statement later). Anything that
    /// may open the circuit, or close it, commits on its own at once, so other replicas see it
    /// before this batch ends.
    async fn update_breaker(
        &self,
        tx: &mut PgConnection,
        successes: u32,
        failures: u32,
        open_for: Option<Duration>,
    ) -> Result<()> {
        if successes == 0 && failures == 0 {
            return Ok(());
        }
        let b = &self.partner().breaker;
        let count = sqlx::query_as::<_, (CircuitState, i32, i32, i32)>(
            "UPDATE circuit_breakers SET
                 consecutive_failures = CASE WHEN $2 > 0 THEN 0 ELSE consecutive_failures + $3 END,
                 window_successes = CASE WHEN window_started_at < now() - $4 * interval '1 second' THEN 0 ELSE window_successes END + $2,
                 window_failures = CASE WHEN window_started_at < now() - $4 * interval '1 second' THEN 0 ELSE window_failures END + $3,
                 window_started_at = CASE WHEN window_started_at < now() - $4 * interval '1 second' THEN now() ELSE window_started_at END,
                 state = CASE WHEN $2 > 0 AND $3 = 0 AND NOT $5 THEN $6 ELSE state END,
                 opened_at = CASE WHEN $2 > 0 AND $3 = 0 AND NOT $5 THEN NULL ELSE opened_at END,
                 retry_at = CASE WHEN $2 > 0 AND $3 = 0 AND NOT $5 THEN NULL ELSE retry_at END,
                 probe_owner = NULL, probe_lease_until = NULL,
                 generation = generation + 1, updated_at = now()
             WHERE partner = $1
             RETURNING state, consecutive_failures, window_successes, window_failures",
        )
        .bind(&self.partner().name)
        .bind(successes as i32)
        .bind(failures as i32)
        .bind(b.window_secs as f64)
        .bind(open_for.is_some())
        .bind(CircuitState::Closed);
        let seen_closed =
            self.context.breakers.get(&self.partner().name).is_none_or(|seen| seen.state == CircuitState::Closed);
        if failures == 0 && open_for.is_none() && seen_closed {
            count.fetch_one(&mut *tx).await?;
            return Ok(());
        }
        let (state, consecutive, window_ok, window_failed) = count.fetch_one(&self.context.pool).await?;
        let calls = (window_ok + window_failed).max(1);
        let rate_tripped = calls as u32 >= b.min_calls && window_failed as f64 / calls as f64 >= b.failure_rate;
        let open = open_for.or_else(|| {
            (failures > 0
                && (consecutive as u32 >= b.consecutive_failures || rate_tripped || state == CircuitState::HalfOpen))
                .then(|| Duration::from_secs(b.open_secs))
        });
        if let Some(duration) = open {
            sqlx::query(
                "UPDATE circuit_breakers SET state = $3, opened_at = now(),
                        retry_at = now() + $2 * interval '1 millisecond', probe_owner = NULL, probe_lease_until = NULL,
                        generation = generation + 1, updated_at = now()
                 WHERE partner = $1",
            )
            .bind(&self.partner().name)
            .bind(duration.as_millis() as i64)
            .bind(CircuitState::Open)
            .execute(&self.context.pool)
            .await?;
            tracing::warn!(partner = %self.partner().name, retry_in_s = duration.as_secs(), "circuit opened");
            transition(&self.partner().name, CircuitState::Open);
        } else if state == CircuitState::Closed && successes > 0 {
            // closed (again): announce only a real transition
            if self.context.breakers.get(&self.partner().name).is_some_and(|b| b.state != CircuitState::Closed) {
                tracing::info!(partner = %self.partner().name, "circuit closed");
                transition(&self.partner().name, CircuitState::Closed);
            } else {
                // Still closed: nothing other workers need to see sooner than their cache allows.
                return Ok(());
            }
        }
        self.context.breakers.reload(&self.context.pool).await
    }
}

/// A lead of a claim group: its batch, and its place there.
type At = (usize, usize);

/// Dedupe and the `leads` rows of a claim group: the rows found again (redeliveries) with the
/// keys already claimed within the windows, in one statement, then the decisions, made in
/// memory batch by batch and lead by lead (a key claimed by an earlier lead of the group, for
/// the same partner, makes a later one a duplicate), then the new rows in one statement. The
/// group is decided at the time of its first batch. One plan per lead, per batch.
async fn prepare(tx: &mut PgConnection, batches: &[Batch], keys: &[Vec<String>]) -> Result<Vec<Vec<Plan>>> {
    let now = batches.first().map_or_else(Utc::now, |b| b.now);
    let name = |b: usize| batches[b].terms.config.name.as_str();
    let every = || batches.iter().enumerate().flat_map(|(b, batch)| (0..batch.leads.len()).map(move |i| (b, i)));
    let lead = |(b, i): At| &batches[b].leads[i];
    let key = |(b, i): At| keys[b][i].as_str();

    type Found = (String, Option<uuid::Uuid>, Option<i64>, Option<DeliveryState>, Option<i32>, Option<String>);
    let found: Vec<Found> = sqlx::query_as(LOOKUP)
        .bind(every().map(|(b, _)| name(b)).collect::<Vec<_>>())
        .bind(every().map(|at| lead(at).lead.submission_id).collect::<Vec<_>>())
        .bind(every().map(key).collect::<Vec<_>>())
        .bind(every().map(|(b, _)| batches[b].terms.config.dedupe_window_days as i32).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
    // Keyed by partner: a group may hold the same lead for several partners (multi-sell).
    let mut existing: HashMap<(&str, uuid::Uuid), (i64, DeliveryState, i32)> = HashMap::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for found in &found {
        match found {
            (partner, .., Some(key)) => {
                seen.insert((partner, key));
            }
            // The row's columns are NOT NULL.
            (partner, Some(id), Some(row), Some(state), Some(attempts), None) => {
                existing.insert((partner, *id), (*row, *state, *attempts));
            }
            _ => {}
        }
    }
    let existing_of = |at: At| existing.get(&(name(at.0), lead(at).lead.submission_id)).copied();

    // A lead of the group whose own row claims its key (a redelivery) holds the key against the
    // group's new leads wherever it stands: the lookup above leaves the group's rows out, and
    // `pgmq.read` does not return a batch in queue order.
    for at in every() {
        if existing_of(at).is_some_and(|(_, state, _)| state.claims_key()) {
            seen.insert((name(at.0), key(at)));
        }
    }

    // A new lead the router did not count against the partner's caps (one held for it, or
    // routed before it had caps) is counted here, before it is sent; the counters are locked
    // in this transaction, as the routers lock them.
    let uncounted = |at: At| {
        lead(at).reserved_at.is_none()
            && existing_of(at).is_none()
            && batches[at.0].terms.availability.capped(lead(at).rule.as_deref())
    };
    let wanted: Vec<_> = every()
        .filter(|&at| uncounted(at))
        .map(|at| (&batches[at.0].terms.availability, lead(at).rule.as_deref()))
        .collect();
    let mut ledger = Ledger::lock(tx, &wanted, now).await?;
    // Leads counted by the router that turn out to be duplicates give their count back.
    let mut released: Vec<At> = Vec::new();

    // Decide in order: a key sent by an earlier lead of the group is a duplicate too.
    let mut plans: Vec<Vec<Option<Plan>>> = batches.iter().map(|b| Vec::with_capacity(b.leads.len())).collect();
    let mut new_rows: Vec<(At, DeliveryState)> = Vec::new();
    // Failed rows whose letter was replayed from the DLQ: (row, new state).
    let mut replayed: Vec<(i64, DeliveryState)> = Vec::new();
    let done = || Some(Plan::Settled(Outcome::Done(Vec::new())));
    for at in every() {
        let plan = match existing_of(at) {
            Some((row, DeliveryState::Pending, attempts)) => Some(Plan::Send { row, attempts }),
            // A `failed` lead's message comes back only when an operator replays its letter: it
            // starts again with fresh attempts, unless its key went to another lead meanwhile.
            Some((row, DeliveryState::Failed, _)) => {
                if seen.contains(&(name(at.0), key(at))) {
                    replayed.push((row, DeliveryState::Duplicate));
                    done()
                } else {
                    seen.insert((name(at.0), key(at)));
                    replayed.push((row, DeliveryState::Pending));
                    Some(Plan::Send { row, attempts: 0 })
                }
            }
            Some(_) => done(),
            None if seen.contains(&(name(at.0), key(at))) => {
                if lead(at).reserved_at.is_some() {
                    released.push(at);
                }
                new_rows.push((at, DeliveryState::Duplicate));
                done()
            }
            None => {
                let availability = &batches[at.0].terms.availability;
                let rule = lead(at).rule.as_deref();
                match uncounted(at).then(|| ledger.room(availability, rule, now)) {
                    // It waits (no row, no claim on its key) until the cap has room.
                    Some(Err(why)) => {
                        Some(Plan::Settled(Outcome::RetryIn(why.wait(now), format!("{}: {why}", name(at.0)))))
                    }
                    counted => {
                        if counted.is_some() {
                            ledger.take(availability, rule, now);
                        }
                        seen.insert((name(at.0), key(at)));
                        new_rows.push((at, DeliveryState::Pending));
                        None
                    }
                }
            }
        };
        plans[at.0].push(plan);
    }
    ledger.save(tx).await?;
    for (b, batch) in batches.iter().enumerate() {
        let released: Vec<_> = released
            .iter()
            .filter(|at| at.0 == b)
            .map(|&at| (lead(at).rule.as_deref(), lead(at).reserved_at.unwrap_or(now)))
            .collect();
        Ledger::release(tx, &batch.terms.availability, &released).await?;
    }
    if !replayed.is_empty() {
        sqlx::query(
            "UPDATE leads SET state = u.state, attempts = 0, error = NULL, request_date = now(), updated_at = now()
             FROM unnest($1::bigint[], $2::text[]) AS u(id, state) WHERE leads.id = u.id",
        )
        .bind(replayed.iter().map(|&(row, _)| row).collect::<Vec<_>>())
        .bind(replayed.iter().map(|&(_, state)| state).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !new_rows.is_empty() {
        let rows: Vec<(String, uuid::Uuid, i64)> = sqlx::query_as(
            "INSERT INTO leads (submission_id, partner, person_id, alias_id, rule_name, tree_version, state, dedupe_key,
                                fields, site, submitted_at, routing)
             SELECT s, pa, p, a, r, t, st, k, f, si, sa, ro
             FROM unnest($1::text[], $2::uuid[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::text[],
                         $8::text[], $9::jsonb[], $10::text[], $11::timestamptz[], $12::jsonb[])
                  AS u(pa, s, p, a, r, t, st, k, f, si, sa, ro)
             RETURNING partner, submission_id, id",
        )
        .bind(new_rows.iter().map(|&((b, _), _)| name(b)).collect::<Vec<_>>())
        .bind(new_rows.iter().map(|&(at, _)| lead(at).lead.submission_id).collect::<Vec<_>>())
        .bind(new_rows.iter().map(|&(at, _)| lead(at).lead.person_id).collect::<Vec<_>>())
        .bind(new_rows.iter().map(|&(at, _)| lead(at).lead.alias_id).collect::<Vec<_>>())
        .bind(new_rows.iter().map(|&(at, _)| lead(at).rule.as_deref()).collect::<Vec<_>>())
        .bind(new_rows.iter().map(|&(at, _)| lead(at).tree_version).collect::<Vec<_>>())
        .bind(new_rows.iter().map(|&(_, state)| state).collect::<Vec<_>>())
        .bind(new_rows.iter().map(|&(at, _)| key(at)).collect::<Vec<_>>())
        // The routing fields the decision saw, so the stored lead can be explained.
        .bind(new_rows.iter().map(|&(at, _)| Value::Object(lead(at).lead.fields.clone())).collect::<Vec<_>>())
        .bind(new_rows.iter().map(|&(at, _)| lead(at).lead.site.as_str()).collect::<Vec<_>>())
        .bind(new_rows.iter().map(|&(at, _)| lead(at).lead.submitted_at).collect::<Vec<_>>())
        // Why it came here: the candidates tried before this partner, and why each was skipped.
        .bind(
            new_rows
                .iter()
                .map(|&(at, _)| lead(at).routing.as_ref().and_then(|r| serde_json::to_value(r).ok()))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        let row_of: HashMap<(String, uuid::Uuid), i64> =
            rows.into_iter().map(|(partner, id, row)| ((partner, id), row)).collect();
        for (b, batch) in batches.iter().enumerate() {
            let duplicates =
                new_rows.iter().filter(|((nb, _), state)| *nb == b && *state == DeliveryState::Duplicate).count();
            if duplicates > 0 {
                sentry::metrics::counter("deliver.duplicates", duplicates as f64)
                    .attribute("partner", batch.terms.config.name.clone())
                    .capture();
            }
            for (i, plan) in plans[b].iter_mut().enumerate() {
                if plan.is_none() {
                    let id = batch.leads[i].lead.submission_id;
                    let row = row_of.get(&(name(b).to_owned(), id)).copied().ok_or(Error::MissingLeadRow(id))?;
                    *plan = Some(Plan::Send { row, attempts: 0 });
                }
            }
        }
    }
    Ok(plans
        .into_iter()
        .map(|plans| {
            plans.into_iter().map(|p| p.unwrap_or(Plan::Settled(Outcome::Retry("not prepared".into())))).collect()
        })
        .collect())
}

fn transition(partner: &str, to: CircuitState) {
    sentry::metrics::counter("deliver.circuit.transitions", 1.0)
        .attribute("partner", partner.to_owned())
        .attribute("to", to.as_str())
        .capture();
}

/// Reports one call: its metrics, and a warning for a failed call (an error event when the lead
/// has failed for good and goes to the partner's DLQ).
fn emit_call(partner: &str, message: &Envelope<PartnerLead>, answer: &Answer, attempts: i32, failed: bool) {
    let status = answer.status.map_or_else(|| "none".to_owned(), |s| s.to_string());
    sentry::metrics::distribution("deliver.call.duration", answer.elapsed.as_secs_f64() * 1e3)
        .unit(sentry::protocol::Unit::Millisecond)
        .attribute("partner", partner.to_owned())
        .attribute("status", status.clone())
        .capture();
    sentry::metrics::counter("deliver.responses", 1.0)
        .attribute("partner", partner.to_owned())
        .attribute("status", status)
        .attribute("verdict", answer.verdict.as_str())
        .capture();
    if attempts > 1 {
        sentry::metrics::counter("deliver.retries", 1.0).attribute("partner", partner.to_owned()).capture();
    }
    let submission_id = message.body.lead.submission_id;
    match &answer.error {
        Some(error) if failed => tracing::error!(
            partner,
            %submission_id,
            msg_id = message.msg_id,
            status = answer.status,
            attempts,
            %error,
            "partner call failed; the lead goes to the partner's dead-letter queue"
        ),
        Some(error) => tracing::warn!(
            partner,
            %submission_id,
            msg_id = message.msg_id,
            status = answer.status,
            attempts,
            %error,
            "partner call failed; will retry"
        ),
        None => {}
    }
}

/// Records the calls' answers on their `leads` rows and each call in `delivery_attempts`, in
/// one statement of the batch's transaction.
async fn record(tx: &mut PgConnection, partner: &str, updates: &[RowUpdate]) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    // `clock_timestamp()`, not `now()` (the batch's start, before the calls): the row records
    // when the answers came, which the end-to-end latency is measured to.
    sqlx::query(
        "WITH u AS (
             SELECT * FROM unnest($2::bigint[], $3::text[], $4::int[], $5::int[], $6::text[], $7::text[], $8::text[],
                                  $9::int[])
                 AS u(id, state, attempts, status, excerpt, error, verdict, elapsed_ms)
         ), updated AS (
             UPDATE leads SET state = u.state, attempts = u.attempts, response_status = u.status,
                    response_excerpt = u.excerpt, error = u.error, updated_at = clock_timestamp()
             FROM u WHERE leads.id = u.id
         )
         INSERT INTO delivery_attempts (lead_id, partner, attempt, status, verdict, elapsed_ms, response_excerpt, error)
         SELECT id, $1, attempts, status, verdict, elapsed_ms, excerpt, error FROM u",
    )
    .bind(partner)
    .bind(updates.iter().map(|u| u.id).collect::<Vec<_>>())
    .bind(updates.iter().map(|u| u.state).collect::<Vec<_>>())
    .bind(updates.iter().map(|u| u.attempts).collect::<Vec<_>>())
    .bind(updates.iter().map(|u| u.status).collect::<Vec<_>>())
    .bind(updates.iter().map(|u| u.excerpt.as_str()).collect::<Vec<_>>())
    .bind(updates.iter().map(|u| u.error.as_deref()).collect::<Vec<_>>())
    .bind(updates.iter().map(|u| u.verdict.as_str()).collect::<Vec<_>>())
    .bind(updates.iter().map(|u| u.elapsed_ms).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The identity of each lead (its alias record if it has one, else the main record).
async fn identities(tx: &mut PgConnection, leads: impl Iterator<Item = &PartnerLead>) -> Result<HashMap<i64, Value>> {
    let ids: Vec<i64> = leads.map(person_id).collect();
    #[derive(sqlx::FromRow)]
    struct Person {
        id: i64,
        email: Option<String>,
        full_name: Option<String>,
        phone: Option<String>,
    }
    let rows: Vec<Person> = sqlx::query_as("SELECT id, email, full_name, phone FROM persons WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|p| (p.id, json!({ "email": p.email, "full_name": p.full_name, "phone": p.phone })))
        .collect())
}

/// Runs a deliver consumer for every enabled partner until `shutdown`, re-reading `partners`
/// every `refresh` (a new or re-enabled partner gets a consumer, a disabled or changed one is
/// restarted or stopped after its batch in hand). `replicas` consumers per partner.
pub async fn run(
    context: DeliverContext,
    wakeups: Arc<pipeline::wake::Wakeups>,
    registry: Arc<pipeline::metrics::Registry>,
    defaults: pipeline::config::ConsumerDefaults,
    replicas: usize,
    refresh: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut running: HashMap<String, (PartnerConfig, tokio_util::sync::CancellationToken)> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let partners = match context.pool.acquire().await {
            Ok(mut conn) => pipeline::partners::load_all(&mut conn).await.map_err(Error::from),
            Err(error) => Err(Error::from(error)),
        };
        let _ = context.breakers.reload(&context.pool).await;
        match partners {
            Ok(partners) => {
                let wanted: HashMap<String, PartnerConfig> =
                    partners.into_iter().filter(|p| p.enabled).map(|p| (p.name.clone(), p)).collect();
                running.retain(|name, (config, token)| {
                    let keep = wanted.get(name) == Some(config);
                    if !keep {
                        tracing::info!(partner = %name, "stopping deliver consumer (partner changed or disabled)");
                        token.cancel();
                    }
                    keep
                });
                for (name, config) in wanted {
                    if running.contains_key(&name) {
                        continue;
                    }
                    match start(&context, &wakeups, &registry, &defaults, &config, replicas, &shutdown, &mut tasks) {
                        Ok(token) => {
                            running.insert(name, (config, token));
                        }
                        Err(error) => tracing::error!(partner = %name, %error, "cannot start deliver consumer"),
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot read partners"),
        }
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(refresh) => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

#[allow(clippy::too_many_arguments, reason = "what each partner's consumers share, passed down once")]
fn start(
    context: &DeliverContext,
    wakeups: &pipeline::wake::Wakeups,
    registry: &pipeline::metrics::Registry,
    defaults: &pipeline::config::ConsumerDefaults,
    partner: &PartnerConfig,
    replicas: usize,
    shutdown: &tokio_util::sync::CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<tokio_util::sync::CancellationToken> {
    let token = shutdown.child_token();
    for _ in 0..replicas.max(1) {
        let mut config = pipeline::config::ConsumerConfig::new("deliver", partner.queue()?)?;
        // Attempts are counted on the `leads` row; the queue's read count only guards against
        // a message that crashes its worker again and again.
        config.max_retries = 1_000;
        config.defaults = defaults.clone();
        // Woken when the router sends it leads: an idle partner costs no polling.
        let consumer = pipeline::consumer::Consumer::new(
            context.pool.clone(),
            config,
            Deliver::new(partner.clone(), context.clone())?,
        )
        .with_readers(&context.readers)
        .with_wakeups(wakeups);
        registry.register("deliver", partner.queue()?.as_str(), consumer.stats());
        let stop = token.clone();
        tasks.spawn(async move { consumer.run(stop).await });
    }
    tracing::info!(partner = %partner.name, replicas, "deliver consumer started");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn rules() -> RetryRules {
        RetryRules {
            max_retries: 2,
            backoff: ExponentialBackoff { base: Duration::from_millis(100), cap: Duration::from_secs(10) },
            open: Duration::from_secs(30),
        }
    }

    fn answer(verdict: Verdict, status: Option<u16>, retry_after: Option<Duration>) -> Answer {
        let error = matches!(verdict, Verdict::Retryable | Verdict::Permanent).then(|| format!("HTTP {status:?}"));
        Answer { status, body: "{}".to_owned(), retry_after, verdict, error, elapsed: Duration::ZERO }
    }

    fn send(row: i64, attempts: i32) -> Plan {
        Plan::Send { row, attempts }
    }

    fn settle_all(plans: &[Plan], answers: &[Answer]) -> Settlement {
        let sends = to_send(plans, answers.len());
        settle(&rules(), plans, &sends, answers, &mut rand::rngs::StdRng::seed_from_u64(7))
    }

    #[test]
    fn a_partners_decision_is_final_and_counts_as_a_success() {
        let plans = [send(1, 0), send(2, 0), send(3, 0)];
        let answers = [
            answer(Verdict::Accepted, Some(200), None),
            answer(Verdict::Rejected, Some(200), None),
            answer(Verdict::Duplicate, Some(409), None),
        ];
        let settled = settle_all(&plans, &answers);
        let states: Vec<_> = settled.updates.iter().map(|u| (u.id, u.state, u.attempts, u.status)).collect();
        assert_eq!(
            states,
            [
                (1, DeliveryState::Accepted, 1, Some(200)),
                (2, DeliveryState::Rejected, 1, Some(200)),
                (3, DeliveryState::Duplicate, 1, Some(409)),
            ]
        );
        assert_eq!(settled.outcomes, vec![Outcome::Done(Vec::new()); 3]);
        assert_eq!((settled.successes, settled.failures, settled.open_for), (3, 0, None));
    }

    #[test]
    fn a_retryable_failure_backs_off_until_the_retries_are_spent_then_fails_and_opens_the_circuit() {
        // Attempt 1 of 3 (max_retries 2): back off with jitter, between half and all of the base.
        let settled = settle_all(&[send(1, 0)], &[answer(Verdict::Retryable, Some(503), None)]);
        assert_eq!(settled.updates[0].state, DeliveryState::Pending);
        let Outcome::RetryIn(delay, error) = &settled.outcomes[0] else { panic!("{:?}", settled.outcomes) };
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(delay), "{delay:?}");
        assert_eq!(error, "HTTP Some(503)");
        assert_eq!((settled.successes, settled.failures, settled.open_for), (0, 1, None));

        // The partner's Retry-After wins over the backoff.
        let after = Some(Duration::from_secs(7));
        let settled = settle_all(&[send(1, 1)], &[answer(Verdict::Retryable, Some(503), after)]);
        assert!(matches!(settled.outcomes[0], Outcome::RetryIn(d, _) if d == Duration::from_secs(7)));

        // Attempt 3 of 3: failed for good, to the DLQ, and the circuit opens for the partner's time.
        let settled = settle_all(&[send(1, 2)], &[answer(Verdict::Retryable, Some(503), None)]);
        assert_eq!((settled.updates[0].state, settled.updates[0].attempts), (DeliveryState::Failed, 3));
        assert_eq!(settled.outcomes, [Outcome::DeadLetter("gave up after 3 attempts: HTTP Some(503)".to_owned())]);
        assert_eq!((settled.failures, settled.open_for), (1, Some(Duration::from_secs(30))));
    }

    #[test]
    fn the_circuit_opens_for_as_long_as_the_answers_ask_and_a_429_for_a_minute_at_least() {
        let plans = [send(1, 2), send(2, 2)];
        let answers = [answer(Verdict::Retryable, Some(429), None), answer(Verdict::Retryable, Some(503), None)];
        assert_eq!(settle_all(&plans, &answers).open_for, Some(Duration::from_secs(60)));
        let answers = [
            answer(Verdict::Retryable, Some(503), Some(Duration::from_secs(90))),
            answer(Verdict::Retryable, None, None),
        ];
        assert_eq!(settle_all(&plans, &answers).open_for, Some(Duration::from_secs(90)));
    }

    #[test]
    fn a_permanent_error_goes_to_the_dlq_at_once_and_does_not_count_against_the_circuit() {
        let settled = settle_all(&[send(4, 0)], &[answer(Verdict::Permanent, Some(400), None)]);
        assert_eq!((settled.updates[0].state, settled.updates[0].attempts), (DeliveryState::Failed, 1));
        assert_eq!(settled.outcomes, [Outcome::DeadLetter("HTTP Some(400)".to_owned())]);
        assert_eq!((settled.successes, settled.failures, settled.open_for), (0, 0, None));
    }

    #[test]
    fn settled_plans_keep_their_outcome_and_leads_behind_a_probe_wait_for_it() {
        let plans = [Plan::Settled(Outcome::Done(Vec::new())), send(1, 0), send(2, 0), send(3, 0)];
        let sends = to_send(&plans, 1);
        assert_eq!(sends, [1]);
        let answers = [answer(Verdict::Accepted, Some(200), None)];
        let settled = settle(&rules(), &plans, &sends, &answers, &mut rand::rngs::StdRng::seed_from_u64(7));
        let waiting = Outcome::RetryIn(PROBE_WAIT, "waiting for the circuit probe".to_owned());
        assert_eq!(settled.outcomes, [Outcome::Done(Vec::new()), Outcome::Done(Vec::new()), waiting.clone(), waiting]);
        assert_eq!(settled.updates.len(), 1);
        assert_eq!(to_send(&plans, usize::MAX), [1, 2, 3]);
    }

    /// A partner `name` (dedupe on the email) with `caps`, stored; its terms.
    async fn stored_partner(pool: &PgPool, name: &str, caps: pipeline::distribution::Limits<u32>) -> Arc<Terms> {
        let request = pipeline::partners::RequestTemplate {
            method: "POST".to_owned(),
            url: "http://127.0.0.1:9/leads".to_owned(),
            headers: BTreeMap::new(),
            encoding: "json".to_owned(),
            body: json!({}),
        };
        let config = PartnerConfig { caps, ..PartnerConfig::new(name, request) };
        let mut conn = pool.acquire().await.expect("connection");
        pipeline::partners::apply(&mut conn, &config).await.expect("partner");
        let availability = Availability::of(&config).expect("availability");
        Arc::new(Terms { config, availability })
    }

    /// A new person with `email`.
    async fn person(pool: &PgPool, email: &str) -> i64 {
        sqlx::query_scalar("INSERT INTO persons (email, full_name) VALUES ($1, 'x') RETURNING id")
            .bind(email)
            .fetch_one(pool)
            .await
            .expect("person")
    }

    /// A lead of `person`, not counted against caps by a router.
    async fn lead_of(pool: &PgPool, person: i64) -> PartnerLead {
        sqlx::query(
            "INSERT INTO decision_trees (version, rules_version, report) OVERRIDING SYSTEM VALUE VALUES (1, 1, '{}')
             ON CONFLICT DO NOTHING",
        )
        .execute(pool)
        .await
        .expect("tree");
        PartnerLead {
            lead: pipeline::message::RoutingLead {
                submission_id: uuid::Uuid::now_v7(),
                site: "degreefinder".to_owned(),
                person_id: person,
                alias_id: None,
                submitted_at: Utc::now(),
                fields: serde_json::Map::new(),
            },
            route: String::new(),
            rule: None,
            tree_version: 1,
            routing: None,
            reserved_at: None,
        }
    }

    fn batch(terms: &Arc<Terms>, leads: &[&PartnerLead]) -> Batch {
        Batch { terms: Arc::clone(terms), leads: leads.iter().map(|&l| l.clone()).collect(), now: Utc::now() }
    }

    /// What each of `batches`, sent to the claimers together as one group, is answered.
    async fn claimed_as_a_group(pool: &PgPool, batches: Vec<Batch>) -> Vec<Result<Claimed>> {
        let (group, replies): (Vec<_>, Vec<_>) = batches
            .into_iter()
            .map(|batch| {
                let (reply, answer) = oneshot::channel();
                (ClaimRequest { batch, reply }, answer)
            })
            .unzip();
        claim_group(pool, group).await;
        let mut answers = Vec::new();
        for reply in replies {
            answers.push(reply.await.expect("answered"));
        }
        answers
    }

    /// Each plan's kind: a send (new or found again) or a settled outcome.
    fn kinds(claimed: &Claimed) -> Vec<String> {
        claimed
            .plans
            .iter()
            .map(|plan| match plan {
                Plan::Send { attempts, .. } => format!("send {attempts}"),
                Plan::Settled(Outcome::Done(_)) => "done".to_owned(),
                Plan::Settled(other) => format!("{other:?}"),
            })
            .collect()
    }

    #[sqlx::test(migrations = false)]
    async fn a_group_dedupes_per_partner_across_its_batches_and_shares_their_caps(pool: PgPool) {
        pipeline::db::migrate(&pool).await.expect("migrate");
        let a = stored_partner(&pool, "a", Default::default()).await;
        let b = stored_partner(&pool, "b", Default::default()).await;
        let capped =
            stored_partner(&pool, "c", pipeline::distribution::Limits { total: Some(1), ..Default::default() }).await;
        let same = person(&pool, "same@x.com").await;
        let first = lead_of(&pool, same).await;
        // The same person again (the same key), and a lead of someone else.
        let again = lead_of(&pool, same).await;
        let other = lead_of(&pool, person(&pool, "other@x.com").await).await;
        let batches = [
            batch(&a, &[&first]),
            // Sold to b too (multi-sell): b's key is b's own.
            batch(&b, &[&first]),
            // Another batch of a in the same group: its key was claimed by the first batch.
            batch(&a, &[&again]),
            // Two batches of a partner capped at one lead: the second waits for room.
            batch(&capped, &[&first]),
            batch(&capped, &[&other]),
        ];
        let claimed = claim_batches(&pool, &batches).await.expect("claimed");
        let plans: Vec<Vec<String>> = claimed.iter().map(kinds).collect();
        assert_eq!(plans[..4], [["send 0"], ["send 0"], ["done"], ["send 0"]]);
        assert!(plans[4][0].starts_with("RetryIn") && plans[4][0].contains("c: "), "{plans:?}");
        let rows: Vec<(String, uuid::Uuid, String)> =
            sqlx::query_as("SELECT partner, submission_id, state FROM leads ORDER BY id")
                .fetch_all(&pool)
                .await
                .expect("rows");
        let id = |lead: &PartnerLead| lead.lead.submission_id;
        assert_eq!(
            rows,
            [
                ("a".to_owned(), id(&first), "pending".to_owned()),
                ("b".to_owned(), id(&first), "pending".to_owned()),
                ("a".to_owned(), id(&again), "duplicate".to_owned()),
                ("c".to_owned(), id(&first), "pending".to_owned()),
            ]
        );
        let used: i64 = sqlx::query_scalar("SELECT sum(leads)::bigint FROM cap_usage WHERE partner = 'c'")
            .fetch_one(&pool)
            .await
            .expect("usage");
        assert_eq!(used, 1);
        // Each batch carries the identities its templates use.
        assert_eq!(claimed[0].person(&first)["email"], "same@x.com");

        // Claimed again (a redelivery), in a group with a new lead of the same key: each finds
        // its row; the new one is a duplicate of the pending claim.
        let late = lead_of(&pool, same).await;
        let claimed = claim_batches(&pool, &[batch(&b, &[&late]), batch(&a, &[&again, &first])]).await.expect("again");
        assert_eq!(claimed.iter().map(kinds).collect::<Vec<_>>(), [vec!["done"], vec!["done", "send 0"]]);
    }

    #[sqlx::test(migrations = false)]
    async fn a_group_that_fails_is_claimed_batch_by_batch_and_only_the_bad_batch_fails(pool: PgPool) {
        pipeline::db::migrate(&pool).await.expect("migrate");
        let a = stored_partner(&pool, "a", Default::default()).await;
        let b = stored_partner(&pool, "b", Default::default()).await;
        let good = lead_of(&pool, person(&pool, "good@x.com").await).await;
        // A lead whose person does not exist: its row cannot be inserted.
        let mut bad = lead_of(&pool, person(&pool, "bad@x.com").await).await;
        bad.lead.person_id = -1;
        let answers = claimed_as_a_group(&pool, vec![batch(&a, &[&good]), batch(&b, &[&bad])]).await;
        assert_eq!(kinds(answers[0].as_ref().expect("the good batch is claimed")), ["send 0"]);
        let error = answers[1].as_ref().err().expect("the bad batch fails").to_string();
        assert!(error.contains("foreign key"), "{error}");
        let rows: Vec<String> = sqlx::query_scalar("SELECT partner FROM leads").fetch_all(&pool).await.expect("rows");
        assert_eq!(rows, ["a"]);
    }

    #[sqlx::test(migrations = false)]
    async fn a_group_meeting_an_unreachable_database_fails_at_once_without_claiming_each_batch(pool: PgPool) {
        pipeline::db::migrate(&pool).await.expect("migrate");
        let a = stored_partner(&pool, "a", Default::default()).await;
        let lead = lead_of(&pool, person(&pool, "a@x.com").await).await;
        pool.close().await;
        let answers = claimed_as_a_group(&pool, vec![batch(&a, &[&lead]), batch(&a, &[&lead])]).await;
        let errors: Vec<Error> = answers.into_iter().map(|answer| answer.err().expect("failed")).collect();
        // The first batch gets the error itself; the others are told the group failed, rather
        // than each meeting the closed pool again.
        assert!(matches!(&errors[0], Error::Database(sqlx::Error::PoolClosed)), "{:?}", errors[0]);
        assert!(
            matches!(&errors[1], Error::ClaimGroup(message) if *message == errors[0].to_string()),
            "{:?}",
            errors[1]
        );
    }

    #[test]
    fn the_dedupe_lookup_names_exactly_the_states_that_claim_a_key() {
        for &state in DeliveryState::ALL {
            let named = LOOKUP.contains(&format!("'{state}'"));
            assert_eq!(named, state.claims_key(), "{state}");
        }
    }
}
