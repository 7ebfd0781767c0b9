//! The error type of the `compiler` crate: the tool could not do its job (as opposed to
//! findings, which are data).

/// Why the compiler could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A witness the solver produced did not reproduce its claim in the reference
    /// interpreter: a bug in the encoding, never reported as a finding.
    #[error("internal error: the witness for {code} on {rules:?} does not reproduce in the interpreter: {witness}")]
    WitnessMismatch {
        /// The finding's code.
        code: &'static str,
        /// Its rules.
        rules: Vec<String>,
        /// The witness.
        witness: String,
    },
    /// Translation validation found a lead on which the DAG and first match disagree: a
    /// compiler bug. The module is not written.
    #[error("internal error: translation validation failed: the decision DAG and the rules disagree on {lead}")]
    TranslationValidation {
        /// The lead, as JSON.
        lead: String,
    },
    /// An emitted module broke one of the module rules (valid, no imports, no loops).
    #[error("internal error: the emitted module is invalid: {0}")]
    InvalidModule(String),
    /// The decision DAG is too large for the module's table format.
    #[error("the rule set is too large to compile: {0}")]
    TooLarge(String),
    /// The rule set asks for a number of candidates per lead outside `model::CANDIDATES`.
    #[error("a decision module answers 1 to {max} candidates per lead, not {0}", max = abi::MAX_CANDIDATES)]
    Candidates(usize),
    /// The rule set has error-level findings and cannot be compiled.
    #[error("the rule set has {0} error-level findings; fix them first (`rulec check`)")]
    NotCompilable(usize),
    /// The solver gave up (returned `unknown`).
    #[error("the solver could not decide a query: {0}")]
    SolverUnknown(String),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
