//! The consumer loop every worker runs: read a batch from a PGMQ queue, hand it to a
//! [`Handler`], and in ONE transaction delete what was handled, send the outputs, write the
//! handler's rows, schedule retries and move dead letters.
//!
//! How a batch moves (see ARCHITECTURE.md, "Moving a message one step"):
//! 1. PGMQ's read (`pgmq.read`'s statement, [`queue::read_sql`]; when it finds nothing, the
//!    same round trip says when the next message is due: [`queue::read_or_next_sql`]),
//!    committed on its own (on [`queue::Readers`], or in a [`queue::BEGIN_BY_INDEX`]
//!    transaction): the messages become invisible for the visibility timeout and their
//!    `read_ct` goes up. That count survives a crash, so it is the attempt counter: a message
//!    that kills its worker still runs out of attempts.
//! 2. A new transaction locks exactly the rows this read returned (`msg_id` *and* `read_ct`
//!    must match, `FOR UPDATE`, in `msg_id` order). A row that another consumer re-read after
//!    our visibility timeout ran out no longer matches and is left alone, so no message is
//!    handled twice to completion. While the lock is held no other read can take it.
//!    The lock waits rather than skips: a concurrent read holds, for the length of its
//!    statement, locks on rows it then rejects, and skipping those would strand messages until
//!    their visibility timeout.
//! 3. Undecodable messages and messages whose attempts are used up go to the DLQ at once;
//!    the rest go to the handler, which writes its rows on the same transaction and returns
//!    one [`Outcome`] per message.
//! 4. Deletes, outputs, retry delays (`vt` pushed out by the retry policy) and dead letters
//!    are applied, and the transaction commits: all of it or none of it.
//! 5. If the handler or step 4 fails, everything rolls back and a fresh transaction records a
//!    failed attempt for every message of the batch (retry later, or DLQ after the last one).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{ConsumerConfig, ConsumerDefaults};
use crate::queue::{self, QueueName};
use crate::retry::RetryPolicy;
use crate::{BoxError, Error, Result};

/// A decoded message handed to a [`Handler`].
#[derive(Debug, Clone)]
pub struct Envelope<T> {
    /// PGMQ message id (unique within the queue).
    pub msg_id: i64,
    /// 1 on the first attempt, 2 on the first retry, ...
    pub attempt: u32,
    /// When the message entered the queue.
    pub enqueued_at: DateTime<Utc>,
    /// The message itself.
    pub body: T,
}

/// A message a handler wants sent to another queue when its batch commits.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Target queue.
    pub queue: QueueName,
    /// The message.
    pub body: Value,
}

impl Output {
    /// Serializes `body` for `queue`.
    pub fn new(queue: QueueName, body: &impl Serialize) -> Result<Self> {
        Ok(Self { queue, body: serde_json::to_value(body)? })
    }
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Handled: delete the input and send these outputs (possibly none).
    Done(Vec<Output>),
    /// A transient failure: try again after the retry policy's delay, or dead-letter the
    /// message if this was its last attempt.
    Retry(String),
    /// Not now: make the message visible again after this delay, whatever its attempt count
    /// (for handlers that count attempts themselves, e.g. deliver on its `leads` row, or that
    /// wait for something else, e.g. an open circuit).
    RetryIn(Duration, String),
    /// A permanent failure: dead-letter the message now, whatever its attempt count.
    DeadLetter(String),
}

/// The work of one worker. It receives a whole batch and the batch's transaction.
///
/// Rows the handler writes on `tx` commit together with the batch. A handler that writes rows
/// for a message and then returns [`Outcome::Retry`] or [`Outcome::DeadLetter`] for it must
/// undo them itself (a savepoint per message); returning `Err` rolls back the whole batch.
pub trait Handler: Send + Sync + 'static {
    /// What the input queue carries.
    type Message: DeserializeOwned + Send + Sync + 'static;

    /// Why a whole batch failed: the crate's own error type (kept as the source of
    /// [`Error::Handler`], so its chain survives to the log and Sentry).
    type Error: Into<BoxError> + Send;

    /// Whether the handler can take messages now. While it cannot (the router before any
    /// decision tree is active), the consumer does not read, so messages wait without using
    /// up attempts.
    fn ready(&self) -> bool {
        true
    }

    /// Handles `batch`, returning exactly one outcome per message, in order.
    fn handle(
        &self,
        tx: &mut PgConnection,
        batch: &[Envelope<Self::Message>],
    ) -> impl Future<Output = Result<Vec<Outcome>, Self::Error>> + Send;
}

/// The envelope a dead-lettered message is stored in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original message, exactly as it was in the input queue.
    pub message: Value,
    /// Why it was dead-lettered (the last error).
    pub error: String,
    /// Attempts made, counting the one that failed last.
    pub attempts: u32,
    /// The worker that gave up.
    pub worker: String,
    /// The queue the message came from.
    pub queue: String,
    /// Its id in that queue.
    pub msg_id: i64,
    /// When it entered that queue.
    pub enqueued_at: DateTime<Utc>,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
}

/// What one call of [`Consumer::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Messages read.
    pub read: usize,
    /// Messages handled and deleted.
    pub done: usize,
    /// Messages left for a later attempt.
    pub retried: usize,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: usize,
    /// Messages another consumer had taken over before this one locked them.
    pub skipped: usize,
    /// Whether the handler or the commit failed, so the batch was rolled back and every
    /// message counted a failed attempt.
    pub failed: bool,
    /// Whether the handler was not ready (nothing was read).
    pub not_ready: bool,
    /// When the read found nothing: how long until the queue's first invisible message
    /// becomes visible (`None`: nothing waits).
    pub next_visible: Option<Duration>,
}

/// Upper bounds (ms) of the batch-duration histogram's buckets (the last one is +Inf).
pub const BATCH_MS_BUCKETS: [f64; 11] = [1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0];

/// Running totals of a consumer, for metrics and tests.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Batches per duration bucket ([`BATCH_MS_BUCKETS`], then +Inf), not cumulative.
    batch_ms: [AtomicU64; 12],
    /// Sum of batch durations in microseconds.
    batch_us_sum: AtomicU64,
    batches: AtomicU64,
    done: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    skipped: AtomicU64,
    failed_batches: AtomicU64,
}

/// A copy of [`ConsumerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Batches read (non-empty).
    pub batches: u64,
    /// Messages handled.
    pub done: u64,
    /// Failed attempts left for a retry.
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Messages skipped because another consumer owned them.
    pub skipped: u64,
    /// Batches rolled back.
    pub failed_batches: u64,
}

impl ConsumerStats {
    fn record(&self, report: &BatchReport) {
        let add = |counter: &AtomicU64, n: usize| counter.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.batches, 1);
        add(&self.done, report.done);
        add(&self.retried, report.retried);
        add(&self.dead_lettered, report.dead_lettered);
        add(&self.skipped, report.skipped);
        add(&self.failed_batches, usize::from(report.failed));
    }

    fn record_duration(&self, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1e3;
        let bucket = BATCH_MS_BUCKETS.iter().position(|&bound| ms <= bound).unwrap_or(BATCH_MS_BUCKETS.len());
        self.batch_ms[bucket].fetch_add(1, Ordering::Relaxed);
        self.batch_us_sum.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The batch-duration histogram: cumulative counts per bucket of [`BATCH_MS_BUCKETS`]
    /// (then +Inf), and the sum in milliseconds.
    pub fn batch_histogram(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let counts = self
            .batch_ms
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect();
        (counts, self.batch_us_sum.load(Ordering::Relaxed) as f64 / 1e3)
    }

    /// The totals now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            batches: get(&self.batches),
            done: get(&self.done),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            skipped: get(&self.skipped),
            failed_batches: get(&self.failed_batches),
        }
    }
}

/// A message as PGMQ's read returns it.
#[derive(Debug, Clone)]
struct RawMessage {
    msg_id: i64,
    read_ct: i32,
    enqueued_at: DateTime<Utc>,
    message: Option<Value>,
}

impl RawMessage {
    fn attempt(&self) -> u32 {
        u32::try_from(self.read_ct).unwrap_or(0)
    }
}

/// A row of [`queue::read_or_next_sql`]: a message, or the wait for the next one.
#[derive(sqlx::FromRow)]
struct ReadRow {
    msg_id: Option<i64>,
    read_ct: Option<i32>,
    enqueued_at: Option<DateTime<Utc>>,
    message: Option<Value>,
    next_in: Option<f64>,
}

/// Reads one queue and drives a [`Handler`]. Any number of consumers, in any number of
/// processes, may read the same queue.
pub struct Consumer<H> {
    pool: PgPool,
    config: ConsumerConfig,
    handler: H,
    policy: Box<dyn RetryPolicy>,
    rng: Mutex<StdRng>,
    stats: Arc<ConsumerStats>,
    /// Woken when messages are sent to the queue (`pipeline::wake`); without it the consumer
    /// polls.
    wakeup: Option<Arc<tokio::sync::Notify>>,
    /// Where reads run (one round trip each); without it, in a [`queue::BEGIN_BY_INDEX`]
    /// transaction on `pool`.
    readers: Option<queue::Readers>,
}

/// First sleep after an empty read; it doubles up to the configured poll interval.
const MIN_IDLE: Duration = Duration::from_millis(5);

/// A batch of this many messages spreads its fixed cost (some ten round trips, two commits)
/// thin enough: after one, the consumer reads again at once.
const LINGER_FILL: usize = 32;

/// The pause after a batch of `read` messages. A batch short of [`LINGER_FILL`] (and of the
/// batch size) means a trickle: waiting lets the next batch grow, rather than paying a batch's
/// round trips and commits for every message or two. The wait is the linger scaled by how
/// short the batch fell, so a lone message waits the whole linger and a stage that already
/// moves dozens per batch adds no latency.
fn pause_after(read: usize, defaults: &ConsumerDefaults) -> Option<Duration> {
    let fill = LINGER_FILL.min(defaults.batch_size as usize);
    (read < fill && !defaults.linger.is_zero()).then(|| defaults.linger.mul_f64((fill - read) as f64 / fill as f64))
}

impl<H: Handler> Consumer<H> {
    /// A consumer using the config's exponential backoff and an OS-seeded random source.
    pub fn new(pool: PgPool, config: ConsumerConfig, handler: H) -> Self {
        let policy = Box::new(config.defaults.backoff);
        Self {
            pool,
            config,
            handler,
            policy,
            rng: Mutex::new(StdRng::from_os_rng()),
            stats: Arc::default(),
            wakeup: None,
            readers: None,
        }
    }

    /// Reads on `readers` (shared by the process's consumers): one statement per read, where a
    /// consumer alone reads in a transaction of three round trips.
    pub fn with_readers(mut self, readers: &queue::Readers) -> Self {
        self.readers = Some(readers.clone());
        self
    }

    /// Waits for its queue's wake-up from `wakeups` (see `pipeline::wake`) when the queue is
    /// empty, instead of polling: it reads again when messages are sent, when the queue's next
    /// invisible message is due, and about every `idle_poll` for the rest.
    pub fn with_wakeups(mut self, wakeups: &crate::wake::Wakeups) -> Self {
        self.wakeup = Some(wakeups.register(self.config.queue.as_str()));
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry_policy(mut self, policy: impl RetryPolicy + 'static) -> Self {
        self.policy = Box::new(policy);
        self
    }

    /// Seeds the random source (jitter), for reproducible tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Mutex::new(StdRng::seed_from_u64(seed));
        self
    }

    /// The running totals.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        Arc::clone(&self.stats)
    }

    /// The worker's name and the queue it reads.
    pub fn names(&self) -> (&str, &str) {
        (&self.config.worker, self.config.queue.as_str())
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Consumes until `shutdown` is cancelled. A batch in hand is finished first (the
    /// handler is never interrupted); an idle wait ends at once.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut idle = MIN_IDLE;
        let mut consecutive_errors: u32 = 0;
        tracing::info!(worker = %self.config.worker, queue = %self.config.queue, "consumer started");
        while !shutdown.is_cancelled() {
            // Woken: wait for a notification, at most `pause`.
            let mut woken = false;
            let pause = match self.run_once().await {
                Ok(report) if report.read > 0 => {
                    idle = MIN_IDLE;
                    consecutive_errors = 0;
                    match pause_after(report.read, &self.config.defaults) {
                        Some(linger) => linger,
                        None => continue,
                    }
                }
                // Not ready (an open circuit, a closed schedule): looking again costs no read.
                Ok(report) if report.not_ready => self.config.defaults.poll_interval.max(MIN_IDLE),
                Ok(report) if self.wakeup.is_some() => {
                    woken = true;
                    self.idle_wait(report.next_visible)
                }
                Ok(_) => {
                    let pause = idle;
                    idle = (idle * 2).min(self.config.defaults.poll_interval.max(MIN_IDLE));
                    pause
                }
                Err(error) => {
                    consecutive_errors = consecutive_errors.saturating_add(1);
                    tracing::error!(worker = %self.config.worker, queue = %self.config.queue, %error, "consumer batch failed");
                    Duration::from_millis(100 << consecutive_errors.min(6))
                }
            };
            let notified = async {
                match (&self.wakeup, woken) {
                    (Some(wakeup), true) => wakeup.notified().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(pause) => {}
                () = notified => {}
            }
        }
        tracing::info!(worker = %self.config.worker, queue = %self.config.queue, "consumer stopped");
    }

    /// How long a woken consumer whose queue had nothing to read waits for a notification:
    /// until the queue's first invisible message is `due` (a retry delay or another reader's
    /// visibility timeout running out, which nothing announces; the empty read said when),
    /// else `idle_poll`, spread over its second half so a thousand idle consumers do not read
    /// at the same moment.
    fn idle_wait(&self, due: Option<Duration>) -> Duration {
        let poll = {
            let mut rng = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.config.defaults.idle_poll.mul_f64(rand::Rng::random_range(&mut *rng, 0.5..=1.0))
        };
        due.map_or(poll, |due| due.min(poll)).max(MIN_IDLE)
    }

    /// Reads and settles one batch. Returns what happened; an `Err` means the database could
    /// not be reached even to record the failure (the messages then reappear after their
    /// visibility timeout, attempt counted).
    pub async fn run_once(&self) -> Result<BatchReport> {
        if !self.handler.ready() {
            return Ok(BatchReport { not_ready: true, ..BatchReport::default() });
        }
        // This read answers every wake-up received before it starts: their messages were
        // committed before they were announced, so it sees them. Left stored, such a wake-up
        // would only bring a read of an empty queue once this batch is done.
        if let Some(wakeup) = &self.wakeup {
            let _ = wakeup.notified().now_or_never();
        }
        let (raw, next_visible) = self.read().await?;
        if raw.is_empty() {
            return Ok(BatchReport { next_visible, ..BatchReport::default() });
        }
        let span = tracing::info_span!(
            "consumer.batch",
            worker = %self.config.worker,
            queue = %self.config.queue,
            messages = raw.len(),
        );
        let started = Instant::now();
        let report = async {
            match self.settle(&raw).await {
                Ok(report) => Ok(report),
                Err(error) => {
                    // An error event (Sentry), in the batch's trace. It names worker and queue
                    // itself: an event does not carry the fields of the spans around it.
                    let msg_ids: Vec<i64> = raw.iter().map(|m| m.msg_id).collect();
                    tracing::error!(
                        worker = %self.config.worker,
                        queue = %self.config.queue,
                        %error,
                        ?msg_ids,
                        "batch rolled back; counting a failed attempt for each message"
                    );
                    self.settle_failed(&raw, &error.to_string()).await
                }
            }
        }
        .instrument(span)
        .await?;
        self.stats.record(&report);
        self.stats.record_duration(started.elapsed());
        emit_metrics(&self.config, &report, started.elapsed());
        tracing::debug!(
            worker = %self.config.worker,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            ?report,
            "batch settled"
        );
        Ok(report)
    }

    /// The messages read, or, when there were none, how long until the next one is due.
    async fn read(&self) -> Result<(Vec<RawMessage>, Option<Duration>)> {
        let visibility_secs =
            i32::try_from(self.config.defaults.visibility_timeout.as_secs().max(1)).unwrap_or(i32::MAX);
        let batch_size = i32::try_from(self.config.defaults.batch_size.max(1)).unwrap_or(i32::MAX);
        let sql = queue::read_or_next_sql(&self.config.queue);
        let read = || sqlx::query_as::<_, ReadRow>(&sql).bind(batch_size).bind(visibility_secs);
        let rows = match &self.readers {
            Some(readers) => readers.read(|pool| async move { read().fetch_all(&pool).await }).await?,
            None => {
                let mut tx = self.pool.begin_with(queue::BEGIN_BY_INDEX).await?;
                let rows = read().fetch_all(&mut *tx).await?;
                tx.commit().await?;
                rows
            }
        };
        let mut messages = Vec::with_capacity(rows.len());
        let mut next_visible = None;
        for row in rows {
            match (row.msg_id, row.read_ct, row.enqueued_at) {
                (Some(msg_id), Some(read_ct), Some(enqueued_at)) => {
                    messages.push(RawMessage { msg_id, read_ct, enqueued_at, message: row.message });
                }
                _ => next_visible = row.next_in.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
            }
        }
        Ok((messages, next_visible))
    }

    /// The normal path: claim, triage, handle, apply, commit.
    async fn settle(&self, raw: &[RawMessage]) -> Result<BatchReport> {
        let mut tx = self.pool.begin().await?;
        let owned = self.claim(&mut tx, raw).await?;
        let mut plan = Plan::new(raw.len(), raw.len() - owned.len());
        let (sources, envelopes) = self.triage(&owned, &mut plan);
        if !envelopes.is_empty() {
            let outcomes = self
                .handler
                .handle(&mut tx, &envelopes)
                .await
                .map_err(|source| Error::Handler { worker: self.config.worker.clone(), source: source.into() })?;
            if outcomes.len() != envelopes.len() {
                return Err(Error::HandlerContract {
                    worker: self.config.worker.clone(),
                    reason: format!("{} outcomes for {} messages", outcomes.len(), envelopes.len()),
                });
            }
            for (message, outcome) in sources.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Done(outputs) => plan.done(message, outputs),
                    Outcome::Retry(error) => self.retry_or_dead_letter(&mut plan, message, error),
                    Outcome::RetryIn(delay, reason) => {
                        tracing::debug!(msg_id = message.msg_id, retry_in_ms = delay.as_millis() as u64, %reason, "message deferred");
                        plan.retry(message, delay);
                    }
                    Outcome::DeadLetter(error) => plan.dead_letter(&self.config, message, error),
                }
            }
        }
        self.apply(&mut tx, &plan).await?;
        tx.commit().await?;
        Ok(plan.report)
    }

    /// The failure path: the batch's transaction rolled back; count a failed attempt for each
    /// message it still owns.
    async fn settle_failed(&self, raw: &[RawMessage], error: &str) -> Result<BatchReport> {
        let mut tx = self.pool.begin().await?;
        let owned = self.claim(&mut tx, raw).await?;
        let mut plan = Plan::new(raw.len(), raw.len() - owned.len());
        plan.report.failed = true;
        let (sources, _) = self.triage(&owned, &mut plan);
        for message in sources {
            self.retry_or_dead_letter(&mut plan, message, error.to_owned());
        }
        self.apply(&mut tx, &plan).await?;
        tx.commit().await?;
        Ok(plan.report)
    }

    /// Locks the rows of `raw` that are still exactly as this consumer read them.
    async fn claim<'r>(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        raw: &'r [RawMessage],
    ) -> Result<Vec<&'r RawMessage>> {
        let ids: Vec<i64> = raw.iter().map(|m| m.msg_id).collect();
        let read_counts: Vec<i32> = raw.iter().map(|m| m.read_ct).collect();
        let sql = format!(
            "SELECT q.msg_id FROM {table} q
             JOIN unnest($1::bigint[], $2::int[]) AS c(id, read_ct) ON q.msg_id = c.id AND q.read_ct = c.read_ct
             ORDER BY q.msg_id
             FOR UPDATE OF q",
            table = self.config.queue.table()
        );
        let locked: Vec<i64> = sqlx::query_scalar(&sql).bind(&ids).bind(&read_counts).fetch_all(&mut **tx).await?;
        if locked.len() < raw.len() {
            tracing::debug!(skipped = raw.len() - locked.len(), "messages taken over by another consumer");
        }
        Ok(raw.iter().filter(|m| locked.contains(&m.msg_id)).collect())
    }

    /// Dead-letters what cannot be handled (attempts used up, undecodable) and decodes the rest.
    fn triage<'r>(
        &self,
        owned: &[&'r RawMessage],
        plan: &mut Plan,
    ) -> (Vec<&'r RawMessage>, Vec<Envelope<H::Message>>) {
        let max_attempts = self.config.max_attempts();
        let mut sources = Vec::with_capacity(owned.len());
        let mut envelopes = Vec::with_capacity(owned.len());
        for &message in owned {
            if message.attempt() > max_attempts {
                let error =
                    format!("gave up after {max_attempts} attempts: the worker stopped or timed out while handling it");
                plan.dead_letter(&self.config, message, error);
                continue;
            }
            // Deserialized from the borrowed value: no copy of the message first.
            match H::Message::deserialize(message.message.as_ref().unwrap_or(&Value::Null)) {
                Ok(body) => {
                    envelopes.push(Envelope {
                        msg_id: message.msg_id,
                        attempt: message.attempt(),
                        enqueued_at: message.enqueued_at,
                        body,
                    });
                    sources.push(message);
                }
                Err(error) => plan.dead_letter(&self.config, message, format!("cannot decode message: {error}")),
            }
        }
        (sources, envelopes)
    }

    fn retry_or_dead_letter(&self, plan: &mut Plan, message: &RawMessage, error: String) {
        if message.attempt() >= self.config.max_attempts() {
            plan.dead_letter(&self.config, message, error);
        } else {
            let delay = {
                // A poisoned lock only means another thread panicked mid-draw; the generator
                // state is still a valid generator state.
                let mut rng = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                self.policy.delay(message.attempt(), &mut *rng)
            };
            tracing::warn!(msg_id = message.msg_id, attempt = message.attempt(), %error, retry_in_ms = delay.as_millis() as u64, "message failed; will retry");
            plan.retry(message, delay);
        }
    }

    async fn apply(&self, tx: &mut Transaction<'static, Postgres>, plan: &Plan) -> Result<()> {
        if !plan.delete.is_empty() {
            let sql = format!("DELETE FROM {} WHERE msg_id = ANY($1)", self.config.queue.table());
            let deleted = sqlx::query(&sql).bind(&plan.delete).execute(&mut **tx).await?.rows_affected();
            if deleted != plan.delete.len() as u64 {
                return Err(Error::HandlerContract {
                    worker: self.config.worker.clone(),
                    reason: format!("deleted {deleted} of {} locked messages", plan.delete.len()),
                });
            }
        }
        // One statement for all outputs: `send_batch` when they go to one queue (the common
        // case), `send_many` when they fan out (the router).
        match plan.outputs.first() {
            Some((first, _)) if plan.outputs.iter().all(|(q, _)| q == first) => {
                let bodies: Vec<Value> = plan.outputs.iter().map(|(_, body)| body.clone()).collect();
                queue::send_batch(&mut **tx, first, &bodies).await?;
            }
            Some(_) => queue::send_many(&mut **tx, &plan.outputs).await?,
            None => {}
        }
        queue::send_batch(&mut **tx, &self.config.dead_letter_queue, &plan.dead_letters).await?;
        if !plan.retry_ids.is_empty() {
            let sql = format!(
                "UPDATE {} q SET vt = clock_timestamp() + r.delay_ms * interval '1 millisecond'
                 FROM unnest($1::bigint[], $2::bigint[]) AS r(id, delay_ms) WHERE q.msg_id = r.id",
                self.config.queue.table()
            );
            sqlx::query(&sql).bind(&plan.retry_ids).bind(&plan.retry_delays_ms).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// Runs `consumers` side by side until together they have settled `messages` messages (handled
/// or dead-lettered), then stops them; returns how long that took. For benchmarks and load
/// tools that drain a queue filled in advance.
pub async fn run_until_settled<H: Handler>(consumers: Vec<Consumer<H>>, messages: u64) -> Duration {
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut stats = Vec::with_capacity(consumers.len());
    let mut tasks = tokio::task::JoinSet::new();
    for consumer in consumers {
        stats.push(consumer.stats());
        let token = shutdown.clone();
        tasks.spawn(async move { consumer.run(token).await });
    }
    while stats.iter().map(|s| s.snapshot()).map(|s| s.done + s.dead_lettered).sum::<u64>() < messages {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    elapsed
}

/// Sends the batch's figures to Sentry (a no-op without a client).
fn emit_metrics(config: &ConsumerConfig, report: &BatchReport, elapsed: Duration) {
    use sentry::metrics;
    use sentry::protocol::Unit;
    let tagged = |name: &'static str, value: usize| {
        metrics::counter(name, value as f64)
            .attribute("worker", config.worker.clone())
            .attribute("queue", config.queue.to_string())
            .capture();
    };
    metrics::distribution("consumer.batch.duration", elapsed.as_secs_f64() * 1e3)
        .unit(Unit::Millisecond)
        .attribute("worker", config.worker.clone())
        .attribute("queue", config.queue.to_string())
        .capture();
    tagged("consumer.messages.done", report.done);
    if report.retried > 0 {
        tagged("consumer.messages.retried", report.retried);
    }
    if report.dead_lettered > 0 {
        tagged("consumer.messages.dead_lettered", report.dead_lettered);
    }
}

/// Everything a batch's transaction will do, gathered before any of it is written.
struct Plan {
    delete: Vec<i64>,
    outputs: Vec<(QueueName, Value)>,
    dead_letters: Vec<Value>,
    retry_ids: Vec<i64>,
    retry_delays_ms: Vec<i64>,
    report: BatchReport,
}

impl Plan {
    fn new(read: usize, skipped: usize) -> Self {
        Self {
            delete: Vec::with_capacity(read),
            outputs: Vec::with_capacity(read),
            dead_letters: Vec::new(),
            retry_ids: Vec::new(),
            retry_delays_ms: Vec::new(),
            report: BatchReport { read, skipped, ..BatchReport::default() },
        }
    }

    fn done(&mut self, message: &RawMessage, outputs: Vec<Output>) {
        self.delete.push(message.msg_id);
        self.outputs.extend(outputs.into_iter().map(|o| (o.queue, o.body)));
        self.report.done += 1;
    }

    fn retry(&mut self, message: &RawMessage, delay: Duration) {
        self.retry_ids.push(message.msg_id);
        self.retry_delays_ms.push(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        self.report.retried += 1;
    }

    fn dead_letter(&mut self, config: &ConsumerConfig, message: &RawMessage, error: String) {
        // Every queue of the pipeline carries one lead per message: name it, where it can be read.
        let submission_id = message.message.as_ref().and_then(|m| m.get("submission_id")).and_then(Value::as_str);
        tracing::error!(
            worker = %config.worker,
            queue = %config.queue,
            msg_id = message.msg_id,
            submission_id,
            attempts = message.attempt(),
            %error,
            "message dead-lettered to {}",
            config.dead_letter_queue
        );
        let letter = DeadLetter {
            message: message.message.clone().unwrap_or(Value::Null),
            error,
            attempts: message.attempt(),
            worker: config.worker.clone(),
            queue: config.queue.to_string(),
            msg_id: message.msg_id,
            enqueued_at: message.enqueued_at,
            failed_at: Utc::now(),
        };
        // A struct of strings, numbers and JSON values always serializes.
        self.dead_letters.push(serde_json::to_value(letter).unwrap_or(Value::Null));
        self.delete.push(message.msg_id);
        self.report.dead_lettered += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_lingers_in_proportion_to_how_short_its_batch_fell() {
        let defaults = ConsumerDefaults { batch_size: 100, linger: Duration::from_millis(64), ..Default::default() };
        assert_eq!(pause_after(0, &defaults), Some(Duration::from_millis(64)));
        assert_eq!(pause_after(1, &defaults), Some(Duration::from_millis(62)));
        assert_eq!(pause_after(16, &defaults), Some(Duration::from_millis(32)));
        assert_eq!(pause_after(31, &defaults), Some(Duration::from_millis(2)));
        assert_eq!(pause_after(32, &defaults), None, "dozens per batch: no wait");
        assert_eq!(pause_after(99, &defaults), None);
        assert_eq!(pause_after(100, &defaults), None);
        let small = ConsumerDefaults { batch_size: 4, ..defaults };
        assert_eq!(pause_after(2, &small), Some(Duration::from_millis(32)), "short of a small batch size");
        assert_eq!(pause_after(4, &small), None, "a full batch");
        let eager = ConsumerDefaults { linger: Duration::ZERO, ..defaults };
        assert_eq!(pause_after(1, &eager), None);
    }
}
