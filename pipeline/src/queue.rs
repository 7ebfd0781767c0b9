//! Queue names and the few PGMQ operations the services need outside the consumer loop:
//! creating a queue with its dead-letter queue, sending, and reading metrics; and [`Pgmq`],
//! what the database's PGMQ is and offers, detected once at start-up.
//!
//! The project runs on every PGMQ from 1.4.4 (the extension Supabase ships) up to the SQL the
//! `pgmq` crate embeds: the operations here use only what 1.4.4 has, and where a newer PGMQ
//! reports more (the visible length in `metrics_all`), [`Pgmq`] says so and the older version
//! gets it derived. ARCHITECTURE.md lists each PGMQ function and column the code relies on.

use std::fmt;

use serde::Serialize;
use sqlx::PgExecutor;

use crate::{Error, Result};

/// The oldest PGMQ the project runs on: what Supabase-managed Postgres ships.
pub const OLDEST_SUPPORTED_PGMQ: Version = Version(1, 4, 4);

/// The PGMQ functions the services call, by name; all of them exist from [`OLDEST_SUPPORTED_PGMQ`] on.
/// Sends and reads are statements of our own on the queue tables, as PGMQ's functions run them.
pub const REQUIRED_FUNCTIONS: [&str; 3] = ["create", "metrics", "metrics_all"];

/// A queue name PGMQ accepts: 1 to 47 characters of `a-z`, `0-9` and `_`. Validating once
/// here is what makes it safe to use the name as part of a table identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

/// PGMQ's limit on queue names (its table names get a prefix and must fit in 63 bytes).
pub const MAX_QUEUE_NAME_LEN: usize = 47;

impl QueueName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_QUEUE_NAME_LEN
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid { Ok(Self(name)) } else { Err(Error::InvalidQueueName(name)) }
    }

    /// The queue of partner (route) `route`, `partner_<route>`.
    pub fn partner(route: &str) -> Result<Self> {
        Self::new(format!("partner_{route}"))
    }

    /// The queue's dead-letter queue, `<name>_dlq`.
    pub fn dead_letter_queue(&self) -> Result<Self> {
        Self::new(format!("{}_dlq", self.0))
    }

    /// The name as PGMQ knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The quoted, schema-qualified table PGMQ keeps this queue's messages in.
    pub(crate) fn table(&self) -> String {
        format!("pgmq.\"q_{}\"", self.0)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fixed queues of DESIGN.md, created by the migrations.
pub mod fixed {
    /// Accepted submissions, read by identify.
    pub const SUBMISSIONS: &str = "submissions";
    /// Identified leads, read by the router.
    pub const ROUTING: &str = "routing";
    /// Compile requests, read by the compile worker.
    pub const COMPILE: &str = "compile";
    /// Every fixed queue, dead-letter queues included.
    pub const ALL: [&str; 5] = ["submissions", "submissions_dlq", "routing", "routing_dlq", "compile"];
}

/// Creates `queue` and its dead-letter queue if they do not exist yet (on a connection, so a
/// transaction can include it).
pub async fn create_with_dead_letter_queue(conn: &mut sqlx::PgConnection, queue: &QueueName) -> Result<()> {
    for name in [queue.clone(), queue.dead_letter_queue()?] {
        sqlx::query("SELECT pgmq.create($1)").bind(name.as_str()).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Sends one message; returns its id. Like every send here it also notifies
/// [`crate::wake::CHANNEL`] with the queue's name (delivered at the commit).
pub async fn send<'e>(executor: impl PgExecutor<'e>, queue: &QueueName, message: &impl Serialize) -> Result<i64> {
    let body = serde_json::to_value(message)?;
    let id = sqlx::query_scalar(&send_sql(queue))
        .bind([body])
        .bind(crate::wake::CHANNEL)
        .bind(queue.as_str())
        .fetch_one(executor)
        .await?;
    Ok(id)
}

/// Sends many messages in one statement (and notifies, as [`send`]); returns their ids in order.
///
/// The row `pgmq.send_batch` inserts (`vt` now, the message), inserted by a statement of our
/// own: prepared once per connection and queue, it skips the function's per-call
/// `EXECUTE format(...)` parse and plan, which cost Postgres several times the insert itself
/// (README, "Benchmarks").
pub async fn send_batch<'e>(
    executor: impl PgExecutor<'e>,
    queue: &QueueName,
    messages: &[serde_json::Value],
) -> Result<Vec<i64>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let ids = sqlx::query_scalar(&send_sql(queue))
        .bind(messages)
        .bind(crate::wake::CHANNEL)
        .bind(queue.as_str())
        .fetch_all(executor)
        .await?;
    Ok(ids)
}

/// Sends messages to several queues in one statement (an insert per distinct queue, and a
/// notification for each), keeping each queue's order.
pub async fn send_many<'e>(executor: impl PgExecutor<'e>, messages: &[(QueueName, serde_json::Value)]) -> Result<()> {
    let mut queues: std::collections::BTreeMap<&QueueName, Vec<&serde_json::Value>> = Default::default();
    for (queue, message) in messages {
        queues.entry(queue).or_default().push(message);
    }
    if queues.is_empty() {
        return Ok(());
    }
    let inserts: Vec<String> = queues
        .keys()
        .enumerate()
        .map(|(i, queue)| format!("s{i} AS ({})", insert_rows(&queue.table(), i + 1)))
        .collect();
    let n = queues.len();
    let sql =
        format!("WITH {} SELECT pg_notify(${}, q) FROM unnest(${}::text[]) AS q", inserts.join(", "), n + 1, n + 2);
    // Not kept prepared: the text changes with the set of queues.
    let mut query = sqlx::query(&sql).persistent(false);
    for bodies in queues.values() {
        query = query.bind(bodies);
    }
    let names: Vec<&str> = queues.keys().map(|q| q.as_str()).collect();
    query.bind(crate::wake::CHANNEL).bind(names).execute(executor).await?;
    Ok(())
}

/// Begins a transaction whose statements find queue rows by index, never by a sequential scan
/// (`SET LOCAL enable_seqscan = off`, in the same round trip as `BEGIN`): a consumer without
/// [`Readers`] reads in one. A queue table's statistics are taken when autovacuum last got to
/// it, often while the queue was nearly empty and its heap full of dead rows; when a backlog
/// builds, the planner still expects a few rows and reads by a sequential scan and a sort
/// (PGMQ's own `pgmq.read` too), through every dead row of the heap, on every batch. Under
/// overload on this machine that took a read of 500 from about 1 ms to 1.4 s, and the stage
/// fell further behind the longer it lasted. Only the read: a batch's own statements (the
/// handler's) keep the planner's choice.
pub const BEGIN_BY_INDEX: &str = "BEGIN; SET LOCAL enable_seqscan = off";

/// The settings of a [`Readers`] session.
const READER_SESSION: &str = "SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan";

/// The pool the consumers of a process read their queues on: connections whose session never
/// reads by a sequential scan (`SET enable_seqscan = off` when each connects, for the reason
/// [`BEGIN_BY_INDEX`] gives), so a read is one statement that commits on its own, where
/// [`BEGIN_BY_INDEX`]'s transaction takes three round trips. Nothing but reads runs on it.
///
/// Its sessions also plan each queue's read once (`plan_cache_mode = force_generic_plan`).
/// Postgres plans a prepared statement's first five runs on a connection afresh, and the reads
/// of a thousand partners' queues spread over the pool's connections seldom reach a sixth: with
/// `pg_stat_statements` over 20 s with 1,000 partners, 8,422 of 10,996 reads were planned, at
/// about 190 µs each, 1.7 s of the server's CPU. With the sequential scan off, the generic plan
/// is the custom one (the primary key in order, the `vt` index for the next due time).
///
/// The pool does not ping a connection before handing it out (sqlx's `test_before_acquire`,
/// a round trip per read); [`Readers::read`] instead reads again on another connection when
/// the one it got had been lost while it sat idle (the server restarted or dropped it).
#[derive(Debug, Clone)]
pub struct Readers(sqlx::PgPool);

impl Readers {
    /// Readers beside `pool`, on its connect options: a quarter of its connections (at least
    /// two), opened when first needed, named `<pool's application name> reads` in
    /// `pg_stat_activity`. A read holds its connection for one short statement.
    pub fn new(pool: &sqlx::PgPool) -> Self {
        let connect = pool.connect_options();
        let name = format!("{} reads", connect.get_application_name().unwrap_or("offer-router"));
        let connect = (*connect).clone().application_name(&name);
        let options = pool.options();
        let readers = sqlx::postgres::PgPoolOptions::new()
            .max_connections((options.get_max_connections() / 4).max(2))
            .acquire_timeout(options.get_acquire_timeout())
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move { sqlx::Executor::execute(conn, READER_SESSION).await.map(drop) })
            })
            .connect_lazy_with(connect);
        Self(readers)
    }

    /// The pool.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.0
    }

    /// Runs `read` on the pool; again, on another connection, while the connection it got
    /// turns out lost, at most once per connection the pool can hold (so a server that is
    /// really down is an error at once). Reading again loses nothing: a read lost with its
    /// connection either never ran or leaves its messages invisible until their visibility
    /// timeout, as any failed read does.
    pub async fn read<T, F>(&self, read: impl Fn(sqlx::PgPool) -> F) -> std::result::Result<T, sqlx::Error>
    where
        F: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        let mut lost = 0;
        loop {
            match read(self.0.clone()).await {
                Err(error) if crate::db::connection_lost(&error) && lost < self.0.options().get_max_connections() => {
                    lost += 1;
                    tracing::info!(%error, "a queue reader's connection was lost; reading on another");
                }
                result => return result,
            }
        }
    }
}

/// `pgmq.read(queue, $2, $1)` as one statement of our own (see [`send_batch`] for why): the
/// first `$1` visible messages in `msg_id` order, skipping rows other readers hold, made
/// invisible for `$2` seconds with their `read_ct` counted up. PGMQ 1.10 and later also set
/// `last_read_at` in their read, a column nothing here uses.
pub fn read_sql(queue: &QueueName) -> String {
    let table = queue.table();
    format!(
        "WITH cte AS (SELECT msg_id FROM {table} WHERE vt <= clock_timestamp() ORDER BY msg_id LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE {table} m SET vt = clock_timestamp() + make_interval(secs => $2), read_ct = m.read_ct + 1
         FROM cte WHERE m.msg_id = cte.msg_id
         RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.message"
    )
}

/// The consumer's read: [`read_sql`], and, when it finds nothing, how long until the queue's
/// first invisible message becomes visible (a retry delay or another reader's visibility
/// timeout running out: no notification announces it), in the same round trip. It returns
/// either the messages read (`msg_id`, `read_ct`, `enqueued_at`, `message`; `next_in` null),
/// or one row whose message columns are null and whose `next_in` is that wait in seconds
/// (null when nothing waits). The wait is one indexed `min(vt)` (PGMQ indexes `vt`), skipped
/// when the read found messages.
pub fn read_or_next_sql(queue: &QueueName) -> String {
    format!(
        "WITH read AS ({read})
         SELECT msg_id, read_ct, enqueued_at, message, NULL::float8 AS next_in FROM read
         UNION ALL
         SELECT NULL, NULL, NULL, NULL, extract(epoch FROM min(vt) - clock_timestamp())::float8
         FROM {table} WHERE vt > clock_timestamp() AND NOT EXISTS (SELECT FROM read)
         HAVING NOT EXISTS (SELECT FROM read)",
        read = read_sql(queue),
        table = queue.table()
    )
}

/// [`send_batch`]'s statement: the messages (`$1`) inserted, `$3` notified on channel `$2`
/// once (`woken` is materialized, as it calls a volatile function); the ids in array order
/// (one statement's identities ascend in insert order).
fn send_sql(queue: &QueueName) -> String {
    format!(
        "WITH sent AS ({}), woken AS MATERIALIZED (SELECT pg_notify($2, $3)) SELECT msg_id FROM woken, sent ORDER BY msg_id",
        insert_rows(&queue.table(), 1)
    )
}

/// The insert of the messages in parameter `$param` (a `jsonb[]`) into queue table `table`,
/// as `pgmq.send_batch` inserts them (visible at once), in array order; returns their ids.
fn insert_rows(table: &str, param: usize) -> String {
    format!(
        "INSERT INTO {table} (vt, message) SELECT clock_timestamp(), m FROM unnest(${param}::jsonb[]) WITH ORDINALITY AS u(m, i) ORDER BY i RETURNING msg_id"
    )
}

/// One row of `pgmq.metrics_all()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct QueueMetrics {
    /// Queue name.
    pub queue_name: String,
    /// Messages in the queue, visible or not.
    pub queue_length: i64,
    /// Messages readable now (reported by PGMQ from 1.5 on, derived before: see [`Pgmq`]).
    pub queue_visible_length: i64,
    /// Age of the oldest message in seconds, if any.
    pub oldest_msg_age_sec: Option<i32>,
    /// Age of the newest message in seconds, if any.
    pub newest_msg_age_sec: Option<i32>,
    /// Messages ever sent to the queue.
    pub total_messages: i64,
}

/// A PGMQ version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `1.4.4` (a missing patch or minor counts as 0); `None` if it is not a version.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.').map(str::parse::<u32>);
        let major = parts.next()?.ok()?;
        let minor = parts.next().transpose().ok()?.unwrap_or(0);
        let patch = parts.next().transpose().ok()?.unwrap_or(0);
        parts.next().is_none().then_some(Self(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How PGMQ got into the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PgmqInstall {
    /// `CREATE EXTENSION pgmq` (the server ships the extension, e.g. Supabase).
    Extension,
    /// The SQL embedded in the `pgmq` crate (plain Debian Postgres).
    EmbeddedSql,
}

/// What the database's PGMQ is and offers. [`Pgmq::detect`] reads it once at start-up; the
/// queries whose form depends on the version are chosen from it, so an older PGMQ is never
/// asked for what it lacks (and no sample fails on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pgmq {
    /// Extension or embedded SQL.
    pub install: PgmqInstall,
    /// The installed version.
    pub version: Version,
    /// Whether `pgmq.metrics_all()` reports `queue_visible_length` (PGMQ 1.5 and later). Where
    /// it does not, [`Pgmq::metrics_all`] derives it with `pgmq_queue_lengths(queue)`, a
    /// migration's function with PGMQ 1.5's definition.
    pub reports_visible_length: bool,
}

impl fmt::Display for Pgmq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let install = match self.install {
            PgmqInstall::Extension => "extension",
            PgmqInstall::EmbeddedSql => "embedded SQL",
        };
        let visible = if self.reports_visible_length { "reported" } else { "derived" };
        write!(f, "{} ({install}; visible length {visible})", self.version)
    }
}

impl Pgmq {
    /// Reads what the database's PGMQ is: the extension's version, or the newest version the
    /// embedded SQL's bookkeeping (`pgmq.__pgmq_migrations`) recorded; whether every function
    /// of [`REQUIRED_FUNCTIONS`] exists; and the optional columns. Fails with a clear error if
    /// PGMQ is not installed (run the migrations), is older than [`OLDEST_SUPPORTED_PGMQ`], or
    /// lacks a function the services call.
    pub async fn detect(pool: &sqlx::PgPool) -> Result<Self> {
        let (extension, embedded, present, reports_visible_length): (Option<String>, bool, Vec<String>, bool) =
            sqlx::query_as(
                "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pgmq'),
                        to_regclass('pgmq.__pgmq_migrations') IS NOT NULL,
                        ARRAY(SELECT DISTINCT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                              WHERE n.nspname = 'pgmq' AND p.proname = ANY($1)),
                        EXISTS (SELECT 1 FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
                                WHERE t.oid = to_regtype('pgmq.metrics_result')
                                  AND a.attname = 'queue_visible_length' AND NOT a.attisdropped)",
            )
            .bind(REQUIRED_FUNCTIONS)
            .fetch_one(pool)
            .await?;
        let (install, version) = match extension {
            Some(text) => {
                let version = Version::parse(&text)
                    .ok_or_else(|| Error::Pgmq(format!("cannot read the extension's version `{text}`")))?;
                (PgmqInstall::Extension, version)
            }
            None if embedded => {
                let recorded: Vec<String> =
                    sqlx::query_scalar("SELECT version FROM pgmq.__pgmq_migrations").fetch_all(pool).await?;
                let newest = recorded.iter().filter_map(|v| Version::parse(v)).max();
                let version = newest.ok_or_else(|| Error::Pgmq("the embedded PGMQ SQL recorded no version".into()))?;
                (PgmqInstall::EmbeddedSql, version)
            }
            None => {
                return Err(Error::Pgmq("PGMQ is not installed in this database: run `offer-router migrate`".into()));
            }
        };
        if version < OLDEST_SUPPORTED_PGMQ {
            return Err(Error::Pgmq(format!(
                "PGMQ {version} is older than {OLDEST_SUPPORTED_PGMQ}, the oldest supported: upgrade it \
                 (ALTER EXTENSION pgmq UPDATE)"
            )));
        }
        let missing: Vec<&str> = REQUIRED_FUNCTIONS.into_iter().filter(|f| !present.iter().any(|p| p == f)).collect();
        if !missing.is_empty() {
            return Err(Error::Pgmq(format!("PGMQ {version} lacks the functions {}", missing.join(", "))));
        }
        Ok(Self { install, version, reports_visible_length })
    }

    /// Metrics of every queue, sorted by name; the visible length as PGMQ reports it, or
    /// derived where this PGMQ does not report it.
    pub async fn metrics_all<'e>(&self, executor: impl PgExecutor<'e>) -> Result<Vec<QueueMetrics>> {
        let sql = if self.reports_visible_length {
            "SELECT queue_name, queue_length, queue_visible_length, oldest_msg_age_sec, newest_msg_age_sec,
                    total_messages
             FROM pgmq.metrics_all() ORDER BY queue_name"
        } else {
            // Both lengths from one count, so the visible one never exceeds the other.
            "SELECT m.queue_name, l.queue_length, l.queue_visible_length, m.oldest_msg_age_sec,
                    m.newest_msg_age_sec, m.total_messages
             FROM pgmq.metrics_all() m CROSS JOIN LATERAL pgmq_queue_lengths(m.queue_name) l
             ORDER BY m.queue_name"
        };
        Ok(sqlx::query_as(sql).fetch_all(executor).await?)
    }

    /// Metrics of the queues named in `queues` that exist, sorted by name: as
    /// [`Pgmq::metrics_all`], at the cost of those queues alone.
    pub async fn metrics_of<'e>(&self, executor: impl PgExecutor<'e>, queues: &[String]) -> Result<Vec<QueueMetrics>> {
        let sql = if self.reports_visible_length {
            "SELECT m.queue_name, m.queue_length, m.queue_visible_length, m.oldest_msg_age_sec, m.newest_msg_age_sec,
                    m.total_messages
             FROM pgmq.meta q CROSS JOIN LATERAL pgmq.metrics(q.queue_name) m
             WHERE q.queue_name = ANY($1) ORDER BY m.queue_name"
        } else {
            "SELECT m.queue_name, l.queue_length, l.queue_visible_length, m.oldest_msg_age_sec,
                    m.newest_msg_age_sec, m.total_messages
             FROM pgmq.meta q CROSS JOIN LATERAL pgmq.metrics(q.queue_name) m
                  CROSS JOIN LATERAL pgmq_queue_lengths(m.queue_name) l
             WHERE q.queue_name = ANY($1) ORDER BY m.queue_name"
        };
        Ok(sqlx::query_as(sql).bind(queues).fetch_all(executor).await?)
    }
}

/// Every queue's length, sorted by name: the columns of `pgmq.metrics_all()` that every
/// supported PGMQ has, for callers that need no more (so need no [`Pgmq`]).
pub async fn lengths<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query_as("SELECT queue_name, queue_length FROM pgmq.metrics_all() ORDER BY queue_name")
        .fetch_all(executor)
        .await?;
    Ok(rows)
}

/// The length of every queue that holds messages, sorted by name, at the cost of those queues
/// alone: [`lengths`] counts every queue through PGMQ (about 300 ms of the server's CPU with a
/// thousand partners' two thousand queues), this asks the server's statistics which queue
/// tables have live rows (`pg_stat_get_live_tuples`, a few milliseconds) and counts those. The
/// statistics run up to about a second behind: a queue filled within that second may be left
/// out, and one emptied within it is counted (0). For samplers that run again soon.
pub async fn busy_lengths<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<(String, i64)>> {
    let sql = format!(
        "SELECT q.queue_name, m.queue_length FROM {QUEUE_TABLES}
         CROSS JOIN LATERAL pgmq.metrics(q.queue_name) m
         WHERE pg_stat_get_live_tuples(c.oid) > 0
         ORDER BY q.queue_name"
    );
    Ok(sqlx::query_as(&sql).fetch_all(executor).await?)
}

/// The length of every queue whose name ends in `suffix`, sorted by name, exact, at the cost
/// of the queues that can hold messages: a queue whose table has no page on disk
/// (`pg_relation_size`, a file's size) is empty without a count. For the dead-letter queues,
/// which a thousand partners make a thousand of, nearly all never written.
pub async fn lengths_ending_in<'e>(executor: impl PgExecutor<'e>, suffix: &str) -> Result<Vec<(String, i64)>> {
    let sql = format!(
        "SELECT q.queue_name, CASE WHEN pg_relation_size(c.oid) = 0 THEN 0
                                   ELSE (SELECT m.queue_length FROM pgmq.metrics(q.queue_name) m) END
         FROM {QUEUE_TABLES}
         WHERE right(q.queue_name, length($1)) = $1
         ORDER BY q.queue_name"
    );
    Ok(sqlx::query_as(&sql).bind(suffix).fetch_all(executor).await?)
}

/// Each queue (`q`, in `pgmq.meta`) with its table (`c`, in `pg_class`).
const QUEUE_TABLES: &str = "pgmq.meta q
    JOIN pg_class c ON c.relnamespace = 'pgmq'::regnamespace AND c.relkind = 'r' AND c.relname = 'q_' || q.queue_name";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_pgmq_rules() {
        assert!(QueueName::new("partner_school_a").is_ok());
        for bad in ["", "Upper", "has-dash", "semi;colon", &"x".repeat(48)] {
            assert!(matches!(QueueName::new(bad), Err(Error::InvalidQueueName(_))), "{bad:?} accepted");
        }
        let longest_partner = QueueName::new(format!("partner_{}", "p".repeat(35))).expect("valid");
        assert_eq!(longest_partner.dead_letter_queue().map(|q| q.as_str().len()).ok(), Some(47));
    }

    #[test]
    fn versions_parse_and_order_as_numbers() {
        assert_eq!(Version::parse("1.4.4"), Some(Version(1, 4, 4)));
        assert_eq!(Version::parse(" 1.10 "), Some(Version(1, 10, 0)));
        for bad in ["", "x", "1.4.4.1", "1..4", "1.4.x"] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
        assert!(Version(1, 10, 0) > Version(1, 9, 9) && Version(1, 4, 4) >= OLDEST_SUPPORTED_PGMQ);
        assert_eq!(Version(1, 11, 1).to_string(), "1.11.1");
    }
}
