//! The end-to-end tests: the binaries of this crate (`offer-router`, `rulec`, `loadgen`) run as
//! processes, the daemon against a fresh database per test (see `#[sqlx::test]`) or a Postgres
//! cluster of the test's own. One binary, one module per subject, and one harness
//! (`harness.rs`) for what they share. They live here, not in a crate of their own, because
//! Cargo gives `CARGO_BIN_EXE_<name>` only to the integration tests of the package that owns
//! the binaries.

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

mod admin_ui;
mod chaos;
mod daemon;
mod harness;
mod loadgen;
mod pooler;
mod recompile;
mod rulec;
mod rulec_diff;
mod telemetry;
mod tidy;
