//! Integration tests of `pipeline` against a real Postgres (a fresh database per test, see
//! `#[sqlx::test]`): the schema and its constraints, the consumer loop, the kept rules versions,
//! and what the installed PGMQ offers (`OFFER_ROUTER_TEST_PGMQ` names the PGMQ the run expects,
//! see `pgmq.rs`).

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

mod consumer;
mod dlq;
mod outcome;
mod partners;
mod pgmq;
mod rules;
mod schema;
