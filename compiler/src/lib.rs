//! The rule language of Offer Router (see `shared/RULES.md`): parsing, type checking, the
//! Z3 analysis behind `rulec check`, the decision DAG and the Wasm emitter, and the reference
//! interpreter every other engine is checked against.
//!
//! Empty until the `rulec check` issue lands. It will link Z3 (the only crate that does) and
//! will do no network or database I/O.
