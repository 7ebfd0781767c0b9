//! Flags and environment variables of `offer-router`, and the one place where they become
//! the config structs of `pipeline`. Every variable is listed, with its default, in the
//! README's "Configuration" section and in `offer-router <command> --help`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pipeline::config::{
    AdminConfig, AdminUser, ApiConfig, ConsumerDefaults, DbConfig, DeliverConfig, ServiceConfig, SubmitConfig,
    TelemetryConfig,
};
use pipeline::identity::PhoneRegion;
use pipeline::retry::ExponentialBackoff;

/// Where the database is.
#[derive(Debug, Args)]
pub(crate) struct DbArgs {
    /// Postgres URL (the `./dev` script sets it to the private cluster).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Connections in this process's pool (each consumer holds one during a batch; deliver
    /// takes a second for its dedupe claims and circuit-breaker updates).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 64)]
    database_max_connections: u32,
}

impl DbArgs {
    pub(crate) fn config(&self) -> DbConfig {
        DbConfig { max_connections: self.database_max_connections, ..DbConfig::new(&self.database_url) }
    }
}

/// Logging and Sentry.
#[derive(Debug, Args)]
pub(crate) struct TelemetryArgs {
    /// Sentry DSN; unset or empty keeps everything local.
    #[arg(long, env = "SENTRY_DSN")]
    sentry_dsn: Option<String>,
    /// Sentry environment tag.
    #[arg(long, env = "SENTRY_ENVIRONMENT", default_value = "development")]
    sentry_environment: String,
    /// Share of traces (spans) sent to Sentry, 0.0 to 1.0.
    #[arg(long, env = "SENTRY_TRACES_SAMPLE_RATE", default_value_t = 0.0)]
    sentry_traces_sample_rate: f32,
    /// Log filter, `tracing` syntax (e.g. `info,pipeline=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info,sqlx::postgres::notice=warn")]
    log: String,
}

impl TelemetryArgs {
    pub(crate) fn config(&self) -> TelemetryConfig {
        TelemetryConfig {
            sentry_dsn: self.sentry_dsn.clone(),
            environment: Some(self.sentry_environment.clone()),
            traces_sample_rate: self.sentry_traces_sample_rate,
            log_filter: Some(self.log.clone()),
        }
    }
}

/// Everything `offer-router serve` takes.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    #[command(flatten)]
    pub(crate) telemetry: TelemetryArgs,
    /// Address of the HTTP server.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Do not apply migrations at start-up.
    #[arg(long, env = "NO_MIGRATE")]
    no_migrate: bool,
    /// Messages each consumer reads per batch (the router: `ROUTER_BATCH_SIZE`). Bigger batches
    /// share a batch's round trips and commits among more leads.
    #[arg(long, env = "CONSUMER_BATCH_SIZE", default_value_t = 250)]
    batch_size: u32,
    /// Seconds a read message stays invisible to other consumers.
    #[arg(long, env = "VISIBILITY_TIMEOUT_SECS", default_value_t = 30)]
    visibility_timeout_secs: u64,
    /// Delay after a message's first failed attempt, in milliseconds (doubles per attempt).
    #[arg(long, env = "RETRY_BACKOFF_BASE_MS", default_value_t = 1_000)]
    retry_backoff_base_ms: u64,
    /// Longest delay between attempts, in milliseconds.
    #[arg(long, env = "RETRY_BACKOFF_CAP_MS", default_value_t = 300_000)]
    retry_backoff_cap_ms: u64,
    /// Longest sleep between polls of an empty queue, in milliseconds (consumers woken by
    /// notifications poll only every `IDLE_POLL_SECS`; this paces a partner waiting for its
    /// circuit or schedule).
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 250)]
    poll_interval_ms: u64,
    /// Seconds an idle consumer waits at most for a wake-up (a notification of new messages)
    /// before it reads its queue anyway (spread over the second half), for messages sent by
    /// something that does not notify; a retry delay or visibility timeout running out it
    /// waits for exactly.
    #[arg(long, env = "IDLE_POLL_SECS", default_value_t = 60)]
    idle_poll_secs: u64,
    /// Milliseconds a consumer waits after a batch that was not full before reading again, so a
    /// trickle moves in batches (0: read again at once).
    #[arg(long, env = "CONSUMER_LINGER_MS", default_value_t = 50)]
    consumer_linger_ms: u64,
    /// Token of the admin API (`/api/rules`): `Authorization: Bearer <token>`. Unset: the admin
    /// API answers 401 to everything.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Users who may sign in to the admin UI (`/admin`) with a password: one per line,
    /// `<name> <viewer|editor> <hash>` (`offer-router hash-password` makes the hash).
    #[arg(long, env = "ADMIN_USERS_FILE")]
    admin_users_file: Option<std::path::PathBuf>,
    /// Hours an admin UI session lasts after sign-in.
    #[arg(long, env = "ADMIN_SESSION_HOURS", default_value_t = 12)]
    admin_session_hours: u64,
    /// Always mark the admin session cookie `Secure` (it is anyway when the request came
    /// through TLS or a proxy sending `X-Forwarded-Proto: https`).
    #[arg(long, env = "ADMIN_COOKIE_SECURE")]
    admin_cookie_secure: bool,
    /// Largest `POST /api/submit` body in bytes; larger gets 413.
    #[arg(long, env = "SUBMIT_MAX_BODY_BYTES", default_value_t = 65_536)]
    submit_max_body_bytes: usize,
    /// Region for phone numbers sent without a country code (ISO 3166 code, e.g. US, GB).
    #[arg(long, env = "PHONE_DEFAULT_REGION", default_value = "US")]
    phone_default_region: PhoneRegion,
    /// Transactions committing submissions concurrently (group commit).
    #[arg(long, env = "SUBMIT_COMMITTERS", default_value_t = 4)]
    submit_committers: usize,
    /// Most submissions in one group commit.
    #[arg(long, env = "SUBMIT_MAX_BATCH", default_value_t = 500)]
    submit_max_batch: usize,
    /// Seconds a post waits for its commit before answering 503.
    #[arg(long, env = "SUBMIT_TIMEOUT_SECS", default_value_t = 10)]
    submit_timeout_secs: u64,
    /// Seconds an authenticated site key is remembered (a revoked key works at most this long).
    #[arg(long, env = "SITE_KEY_CACHE_SECS", default_value_t = 10)]
    site_key_cache_secs: u64,
    /// Seconds an Idempotency-Key is remembered.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 86_400)]
    idempotency_ttl_secs: u64,
    /// Identify consumers in this process.
    #[arg(long, env = "IDENTIFY_WORKERS", default_value_t = 1)]
    identify_workers: usize,
    /// Retries of the identify worker before `submissions_dlq`.
    #[arg(long, env = "IDENTIFY_MAX_RETRIES", default_value_t = 3)]
    identify_max_retries: u32,
    /// Router consumers in this process (0: none).
    #[arg(long, env = "ROUTER_WORKERS", default_value_t = 1)]
    router_workers: usize,
    /// Leads the router reads per batch (one module call and one commit per batch).
    #[arg(long, env = "ROUTER_BATCH_SIZE", default_value_t = 500)]
    router_batch_size: u32,
    /// Seconds between the router's checks of the active tree (besides NOTIFY).
    #[arg(long, env = "TREE_POLL_SECS", default_value_t = 5)]
    tree_poll_secs: u64,
    /// Compile workers in this process (0: none).
    #[arg(long, env = "COMPILE_WORKERS", default_value_t = 1)]
    compile_workers: usize,
    /// A rules file loaded at start-up when the stored rule set is still empty.
    #[arg(long, env = "SEED_RULES")]
    seed_rules: Option<std::path::PathBuf>,
    /// A partners file applied at start-up when no partner is configured yet.
    #[arg(long, env = "SEED_PARTNERS")]
    seed_partners: Option<std::path::PathBuf>,
    /// Also serve the mock partner API on this address (the demo; `./dev up` sets it).
    #[arg(long, env = "MOCK_PARTNERS_ADDR")]
    mock_partners_addr: Option<SocketAddr>,
    /// The demo: create sites, post the sample leads of this file (JSON lines of offer
    /// fields) and print where each went.
    #[arg(long, env = "DEMO_LEADS")]
    demo_leads: Option<std::path::PathBuf>,
    /// After the sample leads, the demo keeps posting this many leads per second and prints a
    /// live summary (0: neither).
    #[arg(long, env = "DEMO_RATE", default_value_t = 0.0)]
    demo_rate: f64,
    /// Seconds between the demo's live summaries.
    #[arg(long, env = "DEMO_SUMMARY_SECS", default_value_t = 2)]
    demo_summary_secs: u64,
    /// Seconds between samples of the queues (`pgmq.metrics_all()`) for Sentry and `/metrics`.
    #[arg(long, env = "QUEUE_METRICS_SECS", default_value_t = 10)]
    queue_metrics_secs: u64,
    /// Deliver consumers per enabled partner in this process (0: no delivery).
    #[arg(long, env = "DELIVER_WORKERS", default_value_t = 1)]
    deliver_workers: usize,
    /// Seconds between re-reads of the partner configuration by the deliver supervisor.
    #[arg(long, env = "PARTNERS_REFRESH_SECS", default_value_t = 5)]
    partners_refresh_secs: u64,
    /// Milliseconds a worker trusts its cached copy of the circuit breakers.
    #[arg(long, env = "BREAKER_CACHE_MS", default_value_t = 1_000)]
    breaker_cache_ms: u64,
    /// Retries of the router before `routing_dlq`.
    #[arg(long, env = "ROUTING_MAX_RETRIES", default_value_t = 3)]
    routing_max_retries: u32,
    /// Seconds shutdown waits for workers to finish the batch in hand.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    shutdown_grace_secs: u64,
}

/// What `serve` sets up besides the service itself (first start, demo).
#[derive(Debug, Clone, Default)]
pub(crate) struct Seeds {
    pub(crate) rules: Option<std::path::PathBuf>,
    pub(crate) partners: Option<std::path::PathBuf>,
    pub(crate) mock_partners: Option<SocketAddr>,
    pub(crate) demo: Option<crate::demo::Demo>,
}

impl ServeArgs {
    pub(crate) fn seeds(&self) -> Seeds {
        Seeds {
            rules: self.seed_rules.clone(),
            partners: self.seed_partners.clone(),
            mock_partners: self.mock_partners_addr,
            demo: self.demo_leads.clone().map(|leads| crate::demo::Demo {
                leads,
                rate: if self.demo_rate.is_finite() { self.demo_rate.max(0.0) } else { 0.0 },
                summary_every: Duration::from_secs(self.demo_summary_secs.max(1)),
                mock_partners: self.mock_partners_addr,
            }),
        }
    }

    /// The service's configuration; fails on an unreadable or invalid `ADMIN_USERS_FILE`.
    pub(crate) fn config(&self) -> anyhow::Result<ServiceConfig> {
        let partner_env = partner_env();
        let admin_users = match &self.admin_users_file {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read ADMIN_USERS_FILE `{}`", file.display()))?;
                AdminUser::parse_list(&text)
                    .map_err(|e| anyhow::anyhow!("ADMIN_USERS_FILE `{}`: {e}", file.display()))?
            }
            None => Vec::new(),
        };
        Ok(ServiceConfig {
            db: self.db.config(),
            telemetry: self.telemetry.config(),
            http_addr: self.http_addr,
            migrate_on_start: !self.no_migrate,
            consumer: ConsumerDefaults {
                batch_size: self.batch_size.max(1),
                visibility_timeout: Duration::from_secs(self.visibility_timeout_secs.max(1)),
                backoff: ExponentialBackoff {
                    base: Duration::from_millis(self.retry_backoff_base_ms),
                    cap: Duration::from_millis(self.retry_backoff_cap_ms.max(self.retry_backoff_base_ms)),
                },
                poll_interval: Duration::from_millis(self.poll_interval_ms.max(1)),
                linger: Duration::from_millis(self.consumer_linger_ms),
                idle_poll: Duration::from_secs(self.idle_poll_secs.max(1)),
            },
            api: ApiConfig {
                admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
                admin: AdminConfig {
                    users: admin_users,
                    session_ttl: Duration::from_secs(self.admin_session_hours.max(1) * 3600),
                    secure_cookies: self.admin_cookie_secure,
                },
                submit: SubmitConfig {
                    max_body_bytes: self.submit_max_body_bytes.max(1),
                    phone_region: self.phone_default_region,
                    committers: self.submit_committers.max(1),
                    max_batch: self.submit_max_batch.max(1),
                    commit_timeout: Duration::from_secs(self.submit_timeout_secs.max(1)),
                    site_key_ttl: Duration::from_secs(self.site_key_cache_secs),
                    idempotency_ttl: Duration::from_secs(self.idempotency_ttl_secs.max(60)),
                    ..SubmitConfig::default()
                },
                partner_env: partner_env.clone(),
            },
            identify_workers: self.identify_workers,
            identify_max_retries: self.identify_max_retries,
            router_workers: self.router_workers,
            router_batch_size: self.router_batch_size.max(1),
            tree_poll: Duration::from_secs(self.tree_poll_secs.max(1)),
            compile_workers: self.compile_workers,
            queue_metrics: Duration::from_secs(self.queue_metrics_secs.max(1)),
            deliver: DeliverConfig {
                workers: self.deliver_workers,
                partners_refresh: Duration::from_secs(self.partners_refresh_secs.max(1)),
                breaker_cache: Duration::from_millis(self.breaker_cache_ms),
                env: partner_env,
            },
            routing_max_retries: self.routing_max_retries,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        })
    }
}

/// The environment variables partner templates may use (`env.NAME`): those named `PARTNER_*`,
/// so a template cannot read `DATABASE_URL` or other secrets of the service itself.
fn partner_env() -> std::collections::BTreeMap<String, String> {
    std::env::vars().filter(|(name, _)| name.starts_with("PARTNER_")).collect()
}
