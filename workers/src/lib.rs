//! The pipeline workers, each a `pipeline::consumer::Handler`: identify (the Lead Identity
//! graph), compile (rules to an active decision tree), deliver (partner calls), and the
//! queue-metrics sampler. The router is its own crate (`router`).

pub mod compile;
pub mod deliver;
mod error;
pub mod identify;
pub mod mock_partner;
pub mod queue_metrics;

pub use error::{Error, Result};
