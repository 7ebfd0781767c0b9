//! Integration tests of the workers against a real Postgres (one fresh database per test).

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

mod deliver;
mod identify;
mod queue_metrics;
