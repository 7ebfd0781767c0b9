//! Integration tests of `pipeline` against a real Postgres (a fresh database per test, see
//! `#[sqlx::test]`): the schema and its constraints, the consumer loop, the kept rules versions,
//! and what the installed PGMQ offers (`OFFER_ROUTER_TEST_PGMQ` names the PGMQ the run expects,
//! see `pgmq.rs`).

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

mod consumer;
mod dlq;
mod leads;
mod outcome;
mod partners;
mod pgmq;
mod rules;
mod schema;

/// A person (`a@x.com`), the partners `school_a` and `school_b`, and a decision tree: what lead
/// rows need. Returns the person's and the tree's ids.
async fn lead_fixture(pool: &sqlx::PgPool) -> (i64, i64) {
    let person: i64 = sqlx::query_scalar("INSERT INTO persons (email, full_name) VALUES ('a@x.com', 'a') RETURNING id")
        .fetch_one(pool)
        .await
        .expect("person");
    sqlx::query("INSERT INTO partners (name, request) VALUES ('school_a', '{}'), ('school_b', '{}')")
        .execute(pool)
        .await
        .expect("partners");
    let tree: i64 =
        sqlx::query_scalar("INSERT INTO decision_trees (rules_version, report) VALUES (1, '{}') RETURNING version")
            .fetch_one(pool)
            .await
            .expect("tree");
    (person, tree)
}
