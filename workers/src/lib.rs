//! The pipeline workers that are plain PGMQ consumers: identify (the Lead Identity graph),
//! deliver (dedupe, partner adapters, retries, circuit breaker), the compile worker and the
//! queue-metrics worker.
//!
//! Empty until the identify issue lands; every worker will run on `pipeline::consumer`.
