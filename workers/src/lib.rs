//! The pipeline workers, each a `pipeline::consumer::Handler`: identify (the Lead Identity
//! graph) now; deliver, compile and queue metrics as their issues land.

pub mod identify;
