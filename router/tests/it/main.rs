//! Integration tests of the router against a real Postgres, with the real compile worker.

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

mod routing;
