//! The error type of the `workers` crate: one variant per stage that can fail a whole batch
//! (or keep a worker from starting). A single lead's problem is its outcome (a dead letter or
//! a retry), not an `Err`.

/// Why a worker could not handle a batch, or start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The shared plumbing failed (a queue, the rules table, a partner's configuration).
    #[error(transparent)]
    Pipeline(#[from] pipeline::Error),
    /// Identify: taking the advisory locks of the batch's identity keys failed.
    #[error("locking identity keys: {0}")]
    LockIdentityKeys(#[source] pipeline::Error),
    /// Identify: reading the persons the batch's keys name failed.
    #[error("reading persons: {0}")]
    ReadPersons(#[source] sqlx::Error),
    /// Identify: allocating ids for new person records failed.
    #[error("allocating person ids: {0}")]
    AllocatePersonIds(#[source] sqlx::Error),
    /// Identify: writing new person records failed.
    #[error("recording persons: {0}")]
    RecordPersons(#[source] sqlx::Error),
    /// Identify: deriving `submitted_hour` and `submitted_weekday` failed.
    #[error("deriving time fields: {0}")]
    DeriveTimes(#[source] sqlx::Error),
    /// Deliver: a lead's claimed `leads` row was not returned by its insert.
    #[error("the new leads row of submission `{0}` is missing")]
    MissingLeadRow(uuid::Uuid),
    /// Deliver: the claim of a group of batches failed for a reason no batch is to blame for
    /// (the database cannot be reached); the first batch gets the error itself.
    #[error("claiming a group of batches failed: {0}")]
    ClaimGroup(String),
    /// Deliver: the claimer tasks are gone (the service is stopping).
    #[error("deliver's claims have stopped")]
    ClaimsStopped,
    /// Compile: the rules could not be checked or compiled at all (not findings: those refuse
    /// the version and are stored with it).
    #[error("compiler error: {0}")]
    Compiler(#[from] compiler::Error),
    /// Compile: the manifest could not be encoded.
    #[error("cannot encode the manifest: {0}")]
    Manifest(#[from] serde_json::Error),
    /// A blocking task (the compile) panicked or was cancelled.
    #[error("a blocking task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
