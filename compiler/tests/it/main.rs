//! Integration tests of the rule compiler: `rulec check` on files ([`check`]), the reference
//! interpreter's explanations ([`explain`]) and the decision module, compiled and run through
//! the runtime ([`module`]).

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

mod check;
mod diff;
mod explain;
mod module;
