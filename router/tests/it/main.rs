//! Integration tests of the router against a real Postgres, with the real compile worker:
//! routing checked against the interpreter, and lead distribution (caps, schedules, splits,
//! shared leads, fall-through).

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

mod distribution;
mod routing;
