//! The error type of the `abi` crate.

/// Why a manifest is not usable or a lead not encoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is not valid JSON of the expected shape.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// The manifest was made for another ABI version.
    #[error("the manifest does not match the module: {0}")]
    Mismatch(String),
    /// A lead that cannot be encoded for this module.
    #[error("field `{field}`: {problem}")]
    Encode {
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A lead that is not a JSON object.
    #[error("a lead must be a JSON object")]
    NotAnObject,
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
