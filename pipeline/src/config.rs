//! Configuration structs, one per component, with documented defaults.
//!
//! Nothing here reads the environment: the `offer-router` binary maps its flags and
//! environment variables onto these structs in one place (`cli/src/config.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::PhoneRegion;
use crate::queue::QueueName;
use crate::retry::ExponentialBackoff;

/// How to reach Postgres.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// A `postgres://` URL.
    pub url: String,
    /// Pool size per process (default 16).
    pub max_connections: u32,
    /// How long to wait for a free pooled connection (default 10 s).
    pub acquire_timeout: Duration,
}

impl DbConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), max_connections: 16, acquire_timeout: Duration::from_secs(10) }
    }
}

/// Logging and Sentry.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Sentry DSN; `None` keeps everything local (logs only).
    pub sentry_dsn: Option<String>,
    /// Sentry environment tag (default `development`).
    pub environment: Option<String>,
    /// Share of traces sent to Sentry, 0.0 to 1.0 (default 0.0: errors only).
    pub traces_sample_rate: f32,
    /// A `tracing` filter such as `info,pipeline=debug` (default `info`).
    pub log_filter: Option<String>,
}

/// Knobs shared by every queue consumer; each worker takes a copy and sets its own retries.
#[derive(Debug, Clone)]
pub struct ConsumerDefaults {
    /// Messages read per batch (default 100).
    pub batch_size: u32,
    /// How long a read message stays invisible to other consumers (default 30 s).
    pub visibility_timeout: Duration,
    /// Backoff between attempts of a failing message (default 1 s doubling to 5 min).
    pub backoff: ExponentialBackoff,
    /// Longest sleep between polls of an empty queue (default 250 ms).
    pub poll_interval: Duration,
    /// Wait after a batch that was not full before reading again, so a trickle moves in
    /// batches instead of a message or two at a time (default zero: read again at once; the
    /// service sets 50 ms, `CONSUMER_LINGER_MS`).
    pub linger: Duration,
}

impl Default for ConsumerDefaults {
    fn default() -> Self {
        Self {
            batch_size: 100,
            visibility_timeout: Duration::from_secs(30),
            backoff: ExponentialBackoff::default(),
            poll_interval: Duration::from_millis(250),
            linger: Duration::ZERO,
        }
    }
}

/// One consumer: which queue it reads, where its dead letters go, and how it retries.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Name of the worker, recorded in logs, telemetry and dead-letter envelopes.
    pub worker: String,
    /// The queue read.
    pub queue: QueueName,
    /// Where messages go after their last attempt or when they cannot be decoded.
    pub dead_letter_queue: QueueName,
    /// Retries after the first attempt; a message is tried at most `max_retries + 1` times.
    pub max_retries: u32,
    /// Shared knobs.
    pub defaults: ConsumerDefaults,
}

impl ConsumerConfig {
    /// A consumer of `queue` whose dead letters go to `<queue>_dlq`, with 3 retries.
    pub fn new(worker: impl Into<String>, queue: QueueName) -> crate::Result<Self> {
        let dead_letter_queue = queue.dead_letter_queue()?;
        Ok(Self {
            worker: worker.into(),
            queue,
            dead_letter_queue,
            max_retries: 3,
            defaults: ConsumerDefaults::default(),
        })
    }

    /// Total attempts a message gets.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }
}

/// Everything the service daemon needs, built once at start-up.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Database.
    pub db: DbConfig,
    /// Logs and Sentry.
    pub telemetry: TelemetryConfig,
    /// Address of the HTTP server (health, and later the ingest and admin API).
    pub http_addr: SocketAddr,
    /// Whether the daemon applies migrations at start-up (default yes).
    pub migrate_on_start: bool,
    /// Consumer knobs shared by the workers.
    pub consumer: ConsumerDefaults,
    /// The HTTP API.
    pub api: ApiConfig,
    /// Identify consumers this process runs (`IDENTIFY_WORKERS`, default 1).
    pub identify_workers: usize,
    /// Retries of the identify worker (`IDENTIFY_MAX_RETRIES`, default 3).
    pub identify_max_retries: u32,
    /// Router consumers this process runs (`ROUTER_WORKERS`, default 1).
    pub router_workers: usize,
    /// Leads the router reads per batch (`ROUTER_BATCH_SIZE`, default 500).
    pub router_batch_size: u32,
    /// How often the router checks the active tree besides NOTIFY (`TREE_POLL_SECS`, default 5 s).
    pub tree_poll: Duration,
    /// Compile workers this process runs (`COMPILE_WORKERS`, default 1).
    pub compile_workers: usize,
    /// How often the queues are sampled for Sentry and `/metrics` (`QUEUE_METRICS_SECS`, default 10 s).
    pub queue_metrics: Duration,
    /// Partner delivery.
    pub deliver: DeliverConfig,
    /// Retries of the router worker (`ROUTING_MAX_RETRIES`, default 3).
    pub routing_max_retries: u32,
    /// How long shutdown waits for workers to finish their batch (default 30 s).
    pub shutdown_grace: Duration,
}

/// Partner delivery.
#[derive(Debug, Clone, Default)]
pub struct DeliverConfig {
    /// Consumers per enabled partner (`DELIVER_WORKERS`, default 1; 0: no delivery).
    pub workers: usize,
    /// How often the partner configuration is re-read (`PARTNERS_REFRESH_SECS`, default 5 s).
    pub partners_refresh: Duration,
    /// How long a cached circuit-breaker state is trusted (`BREAKER_CACHE_MS`, default 1 s).
    pub breaker_cache: Duration,
    /// Environment variables partner templates may use (`PARTNER_*`).
    pub env: std::collections::BTreeMap<String, String>,
}

/// The HTTP API: ingest and admin.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// `POST /api/submit`.
    pub submit: SubmitConfig,
    /// The token of the admin endpoints (`Authorization: Bearer <token>`); `None` turns them
    /// off (every admin request gets 401).
    pub admin_token: Option<String>,
}

impl From<SubmitConfig> for ApiConfig {
    fn from(submit: SubmitConfig) -> Self {
        Self { submit, admin_token: None }
    }
}

/// `POST /api/submit`: limits, identity parsing, and the group commit.
#[derive(Debug, Clone)]
pub struct SubmitConfig {
    /// Largest request body accepted; larger gets 413 (default 64 KiB).
    pub max_body_bytes: usize,
    /// Region for phone numbers written without a country code (default US).
    pub phone_region: PhoneRegion,
    /// Transactions committing submissions at once (default 4). Each takes every request
    /// waiting when it starts, so concurrent posts share one commit.
    pub committers: usize,
    /// Most submissions in one commit (default 500).
    pub max_batch: usize,
    /// Submissions waiting for a committer before new posts wait too (default 10,000).
    pub queue_capacity: usize,
    /// How long a post waits for its commit before answering 503 (default 10 s).
    pub commit_timeout: Duration,
    /// How long an authenticated key is remembered (default 10 s); a revoked key works at most
    /// this long.
    pub site_key_ttl: Duration,
    /// How often the active rule set's field schema is re-read (default 2 s).
    pub schema_refresh: Duration,
    /// How long an `Idempotency-Key` is remembered (default 24 h).
    pub idempotency_ttl: Duration,
}

impl Default for SubmitConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            phone_region: PhoneRegion::default(),
            committers: 4,
            max_batch: 500,
            queue_capacity: 10_000,
            commit_timeout: Duration::from_secs(10),
            site_key_ttl: Duration::from_secs(10),
            schema_refresh: Duration::from_secs(2),
            idempotency_ttl: Duration::from_secs(24 * 3600),
        }
    }
}
