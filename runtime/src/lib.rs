//! The host of the decision modules, with the contract it shares with `compiler`.
//!
//! - [`abi`], [`manifest`], [`encode`]: re-exported from the `abi` crate (the ABI version,
//!   record layout and exports; the JSON stored beside each module; a lead to its
//!   fixed-layout input record), which `compiler` uses without linking wasmtime;
//! - [`host`]: loading a module with wasmtime (one `Engine`, an `InstancePre`, a `Store`
//!   per worker), calling it single or batched, and [`host::Handle`], which swaps modules
//!   atomically while calls are in flight.
//!
//! This crate knows nothing of Postgres, PGMQ or the rule language.

pub use ::abi;
pub use ::abi::{encode, manifest};

pub mod host;

mod error;

pub use error::{Error, Result};
