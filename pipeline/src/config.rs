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
    /// With a wake-up (`pipeline::wake`), how long at most an idle consumer waits for one
    /// before it reads its queue anyway (spread over the second half): for messages sent by
    /// something that does not notify. A retry delay or visibility timeout running out is
    /// waited for exactly (the empty read says when: `queue::read_or_next_sql`). Default 60 s.
    pub idle_poll: Duration,
}

impl Default for ConsumerDefaults {
    fn default() -> Self {
        Self {
            batch_size: 100,
            visibility_timeout: Duration::from_secs(30),
            backoff: ExponentialBackoff::default(),
            poll_interval: Duration::from_millis(250),
            linger: Duration::ZERO,
            idle_poll: Duration::from_secs(60),
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
    /// The admin UI's sign-in.
    pub admin: AdminConfig,
    /// Environment variables partner templates may use (`PARTNER_*`), for the admin API's
    /// test leads: as the deliver workers render them.
    pub partner_env: std::collections::BTreeMap<String, String>,
}

impl From<SubmitConfig> for ApiConfig {
    fn from(submit: SubmitConfig) -> Self {
        Self { submit, ..Self::default() }
    }
}

/// The admin UI's sign-in: who may sign in besides the admin token, and for how long.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The users of `ADMIN_USERS_FILE` (see [`AdminUser::parse_list`]).
    pub users: Vec<AdminUser>,
    /// How long a session lasts after sign-in (`ADMIN_SESSION_HOURS`, default 12 h).
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` even when the request did not come through TLS
    /// (`ADMIN_COOKIE_SECURE`). Without it the cookie is `Secure` when the request came
    /// over TLS or through a proxy saying so (`X-Forwarded-Proto: https`).
    pub secure_cookies: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { users: Vec::new(), session_ttl: Duration::from_secs(12 * 3600), secure_cookies: false }
    }
}

/// What an admin may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRole {
    /// Reads everything, changes nothing.
    Viewer,
    /// Reads and changes everything.
    Editor,
}

impl AdminRole {
    /// `viewer` or `editor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Editor => "editor",
        }
    }

    /// The role named `name` (`viewer`, `editor`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Self::Viewer),
            "editor" => Some(Self::Editor),
            _ => None,
        }
    }
}

/// A user who may sign in to the admin UI with a password.
#[derive(Clone)]
pub struct AdminUser {
    /// The sign-in name.
    pub name: String,
    /// What the user may do.
    pub role: AdminRole,
    /// The password's Argon2id hash in PHC form (`offer-router hash-password` makes one).
    pub password_hash: String,
}

impl std::fmt::Debug for AdminUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminUser").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

impl AdminUser {
    /// Reads a users file: one user per line, `<name> <viewer|editor> <PHC hash>`; blank lines
    /// and lines starting with `#` are skipped. The error names the line.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let mut users: Vec<Self> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = index + 1;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(format!("line {at}: expected `<name> <viewer|editor> <password hash>`"));
            };
            let valid_name = name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
            if !valid_name {
                return Err(format!("line {at}: the name `{name}` may use a-z, 0-9, `_`, `-`, `.`, `@` (at most 64)"));
            }
            let role = AdminRole::parse(role)
                .ok_or_else(|| format!("line {at}: the role must be `viewer` or `editor`, not `{role}`"))?;
            if !hash.starts_with("$argon2") {
                return Err(format!(
                    "line {at}: the password hash must be an Argon2 PHC string (`offer-router hash-password`)"
                ));
            }
            if users.iter().any(|u| u.name == name) {
                return Err(format!("line {at}: `{name}` is listed twice"));
            }
            users.push(Self { name: name.to_owned(), role, password_hash: hash.to_owned() });
        }
        Ok(users)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_file_lists_names_roles_and_hashes() {
        let text = "# admins\n\nerin editor $argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA\n vic  viewer $argon2id$x \n";
        let users = AdminUser::parse_list(text).expect("valid");
        let read: Vec<(&str, AdminRole)> = users.iter().map(|u| (u.name.as_str(), u.role)).collect();
        assert_eq!(read, [("erin", AdminRole::Editor), ("vic", AdminRole::Viewer)]);
        assert!(!format!("{:?}", users[0]).contains("argon2"), "Debug leaves the hash out");
    }

    #[test]
    fn a_bad_users_file_names_the_line() {
        for (text, expected) in [
            ("erin editor", "line 1: expected"),
            ("\nerin admin $argon2id$x", "line 2: the role"),
            ("erin editor plaintext", "line 1: the password hash"),
            ("erin editor $argon2id$x\nerin viewer $argon2id$y", "line 2: `erin` is listed twice"),
            ("er/in editor $argon2id$x", "line 1: the name"),
        ] {
            let error = AdminUser::parse_list(text).expect_err(text);
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }
}
