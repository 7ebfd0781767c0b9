//! Integration tests of `pipeline` against a real Postgres (a fresh database per test, see
//! `#[sqlx::test]`): the schema and its constraints, and the consumer loop.

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

mod consumer;
mod dlq;
mod outcome;
mod partners;
mod schema;
