//! Shared service plumbing for every Offer Router worker: configuration types, the database
//! pool and migrations (PGMQ included), queue helpers, telemetry, and the consumer loop that
//! moves a batch of messages one step through the pipeline in one transaction, plus the
//! contracts the parts share: the queue messages, the identity keys' normal forms and the
//! partner HTTP adapter (deliver's calls and the admin API's test leads).
//!
//! This crate never reads environment variables and never exits: binaries build the config
//! structs here (see `cli`) and hand them in.

pub mod adapter;
pub mod config;
pub mod consumer;
pub mod db;
pub mod distribution;
pub mod dlq;
mod error;
pub mod group;
pub mod identity;
pub mod leads;
pub mod message;
pub mod metrics;
pub mod outcome;
pub mod partners;
pub mod queue;
pub mod retry;
pub mod rules;
pub mod state;
pub mod telemetry;
pub mod wake;

pub use error::{BoxError, Error, Result};
