//! Integration tests of `api` against a real Postgres (a fresh database per test, see
//! `#[sqlx::test]`): the ingest endpoint `POST /api/submit`, the admin rules API `/api/rules`
//! (kept versions, recompiles) and a stored lead's explanation (`/api/leads`), driven through
//! the real router.

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

mod admin;
mod dlq;
mod leads;
mod partners;
mod rules;
mod submit;
