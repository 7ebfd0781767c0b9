//! The decision-module contract between `compiler` and the router, and its host.
//!
//! - [`abi`]: the ABI version, the input record layout and the module's exports;
//! - [`manifest`]: the JSON stored beside each module (layout, value→class tables, rules);
//! - [`encode`]: a lead (JSON) to its fixed-layout input record;
//! - [`host`]: loading a module with wasmtime (one `Engine`, an `InstancePre`, a `Store`
//!   per worker), calling it single or batched, and [`host::Handle`], which swaps modules
//!   atomically while calls are in flight.
//!
//! This crate knows nothing of Postgres, PGMQ or the rule language.

pub mod abi;
pub mod encode;
pub mod host;
pub mod manifest;

mod error;

pub use error::{Error, Result};
