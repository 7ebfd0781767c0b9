//! The error type of the `runtime` crate.

/// Why a module could not be loaded or called, or a lead not encoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is unusable, or a lead cannot be encoded (the `abi` crate's checks).
    #[error(transparent)]
    Abi(#[from] abi::Error),
    /// The manifest and the module do not belong together.
    #[error("the manifest does not match the module: {0}")]
    Mismatch(String),
    /// The module breaks the ABI (imports, missing or mistyped exports, bad bytes).
    #[error("invalid decision module: {0}")]
    Module(String),
    /// The module trapped or the batch does not fit its memory.
    #[error("decision call failed: {0}")]
    Call(String),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
