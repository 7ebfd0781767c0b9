//! The pipeline workers, each a `pipeline::consumer::Handler`: identify (the Lead Identity
//! graph) and compile (rules to an active decision tree); deliver and queue metrics as their
//! issues land. The router is its own crate (`router`).

pub mod compile;
pub mod deliver;
pub mod identify;
pub mod mock_partner;
