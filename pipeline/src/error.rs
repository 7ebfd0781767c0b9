//! The error type of the `pipeline` crate: one variant per stage that can fail.

/// Everything that can go wrong in the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query or connection failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Installing the PGMQ SQL failed.
    #[error("installing pgmq failed: {0}")]
    InstallPgmq(#[from] pgmq::PgmqError),
    /// The database URL names Supabase's transaction pooler.
    #[error(
        "{0} is Supabase's transaction pooler, which breaks LISTEN/NOTIFY (rule hot reload), the \
         migrations' advisory lock and prepared statements: use the session pooler (port 5432 on the same \
         host) or the direct connection (README, \"Deploy on Supabase\")"
    )]
    TransactionPooler(String),
    /// `CREATE EXTENSION pgmq` was refused (typically: the role may not create it).
    #[error(
        "CREATE EXTENSION pgmq failed: connect as a role that may create it (the database's owner; on \
         Supabase the `postgres` role) or create it once as such a role: {0}"
    )]
    CreateExtension(#[source] sqlx::Error),
    /// The database's PGMQ is missing, too old, or lacks a function the services call.
    #[error("pgmq: {0}")]
    Pgmq(String),
    /// A queue name PGMQ would not accept.
    #[error("invalid queue name `{0}`: use 1 to 47 characters of a-z, 0-9 and _")]
    InvalidQueueName(String),
    /// A message could not be encoded as JSON.
    #[error("cannot encode message: {0}")]
    Encode(#[from] serde_json::Error),
    /// A handler broke the consumer contract (for example returned the wrong number of outcomes).
    #[error("handler `{worker}` broke its contract: {reason}")]
    HandlerContract {
        /// The worker whose handler misbehaved.
        worker: String,
        /// What it did wrong.
        reason: String,
    },
    /// A handler failed for a whole batch (its writes were rolled back).
    #[error("handler `{worker}` failed: {source}")]
    Handler {
        /// The worker whose handler failed.
        worker: String,
        /// What the handler reported.
        source: BoxError,
    },
    /// A partner configuration that cannot be applied.
    #[error("invalid partner configuration: {0}")]
    InvalidPartner(String),
    /// A kept rules version's document (`rule_versions`) does not have the shape of a rule set.
    #[error("rules version {version}: the kept document is not a rule set: {source}")]
    StoredDocument {
        /// The rules version.
        version: i64,
        /// Why it does not read.
        source: serde_json::Error,
    },
    /// Telemetry could not be set up.
    #[error("telemetry setup failed: {0}")]
    Telemetry(String),
}

/// Any error a handler may report.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
