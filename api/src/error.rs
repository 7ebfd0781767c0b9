//! The error type of the `api` crate (the operator-facing calls; HTTP answers are built in
//! `submit`).

/// What can go wrong outside a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The shared plumbing failed (queues, messages).
    #[error(transparent)]
    Pipeline(#[from] pipeline::Error),
    /// A blocking task (replaying a stored lead's decision) panicked or was cancelled.
    #[error("a blocking task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A site of that name exists already.
    #[error("site `{0}` exists already")]
    SiteExists(String),
    /// No site of that name.
    #[error("no site named `{0}`")]
    UnknownSite(String),
    /// A site name the schema does not allow.
    #[error(
        "invalid site name `{0}`: use 1 to 63 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit"
    )]
    BadSiteName(String),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
