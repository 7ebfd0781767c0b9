//! The rule language of Offer Router (see `shared/RULES.md`): reading a rules file
//! ([`syntax`]), type checking it into a [`model::RuleSet`], the reference interpreter
//! ([`interp`]), and the analysis behind `rulec check` ([`analysis`]), which encodes rules
//! over finite atoms ([`atoms`]) and asks Z3 ([`solver`]) only what cheap bounds cannot settle.
//!
//! This crate links Z3 (the only one that does) and does no network or database I/O.

pub mod analysis;
pub mod atoms;
pub mod compile;
pub mod dag;
pub mod diff;
pub mod finding;
pub mod generate;
pub mod interp;
pub mod model;
pub mod report;
pub mod solver;
pub mod source;
pub mod syntax;
pub mod wasm;

mod error;

pub use error::{Error, Result};
