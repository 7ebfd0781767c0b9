//! The error type of the `router` crate: what stops a batch from being routed, or a decision
//! tree from being loaded.

/// Why the router could not route a batch or load a tree.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A batch was handed over before any tree was loaded (the consumer asks `ready` first).
    #[error("no active decision tree")]
    NoActiveTree,
    /// Reading the decision trees or recording unmatched leads failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A route the tree names is not a valid queue, or a forwarded lead cannot be encoded.
    #[error(transparent)]
    Pipeline(#[from] pipeline::Error),
    /// The active tree's module or manifest cannot be loaded.
    #[error("cannot load decision tree v{version}: {source}")]
    Load {
        /// `decision_trees.version`.
        version: i64,
        /// Why.
        source: runtime::Error,
    },
    /// The decision module failed for a whole batch (an engine or instance that cannot be
    /// made; one lead's trap is that lead's dead letter, not this).
    #[error("decision module: {0}")]
    Runtime(#[from] runtime::Error),
    /// The task loading a module off the async threads panicked or was cancelled.
    #[error("loading a decision tree did not finish: {0}")]
    LoadTask(#[from] tokio::task::JoinError),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
