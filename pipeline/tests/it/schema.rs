//! The migrations create every datastore and queue, are idempotent, and the constraints
//! reject the rows DESIGN.md forbids.

use pipeline::db;
use sqlx::PgPool;

const TABLES: [&str; 15] = [
    "sites",
    "persons",
    "rule_set",
    "rules",
    "rule_versions",
    "decision_trees",
    "partners",
    "leads",
    "circuit_breakers",
    "submit_idempotency",
    "unmatched_leads",
    "admin_sessions",
    "audit_log",
    "delivery_attempts",
    "dlq_discarded",
];

#[sqlx::test(migrations = false)]
async fn every_table_and_fixed_queue_exists_and_migrating_twice_is_harmless(pool: PgPool) {
    let first = db::migrate(&pool).await.expect("first migrate");
    assert_eq!(db::migrate(&pool).await.expect("second migrate"), first);

    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_all(&pool)
            .await
            .expect("tables");
    for table in TABLES {
        assert!(tables.iter().any(|t| t == table), "table {table} missing from {tables:?}");
    }
    let queues: Vec<String> = sqlx::query_scalar("SELECT queue_name FROM pgmq.meta ORDER BY queue_name")
        .fetch_all(&pool)
        .await
        .expect("queues");
    assert_eq!(queues, ["compile", "routing", "routing_dlq", "submissions", "submissions_dlq"]);
}

/// Rows every constraint test builds on: a partner, a main person with an alias, a tree.
const FIXTURE: &str = r#"
    INSERT INTO partners (name, request) VALUES ('school_a', '{"url": "http://127.0.0.1:9/x"}');
    INSERT INTO persons (email, full_name, phone) VALUES ('ann@example.com', 'ann lee', '+15550000001');
    INSERT INTO persons (email, full_name, phone, alias_of)
        SELECT 'ann@example.com', 'ann lee', '+15550000002', id FROM persons WHERE phone = '+15550000001';
    INSERT INTO decision_trees (rules_version, wasm, manifest, report, active)
        VALUES (1, '\x00', '{}', '{}', true);
    INSERT INTO leads (submission_id, partner, person_id, dedupe_key)
        SELECT '00000000-0000-0000-0000-000000000001', 'school_a', id, 'ann@example.com'
        FROM persons WHERE phone = '+15550000001';
"#;

/// Each case: what it checks, a statement that must fail, and the SQLSTATE it must fail with.
const REJECTED: &[(&str, &str, &str)] = &[
    (
        "unknown delivery state",
        "UPDATE leads SET state = 'lost'",
        "23514", // check_violation
    ),
    (
        "second lead row for one submission and partner",
        "INSERT INTO leads (submission_id, partner, person_id, dedupe_key)
         SELECT submission_id, partner, person_id, 'other' FROM leads",
        "23505", // unique_violation
    ),
    (
        "alias of an alias",
        "INSERT INTO persons (email, full_name, phone, alias_of)
         SELECT 'ann@example.com', 'ann b lee', '+15550000002', id FROM persons WHERE phone = '+15550000002'",
        "23503", // foreign_key_violation
    ),
    (
        "main record with aliases turned into an alias",
        "UPDATE persons SET alias_of = (SELECT id FROM persons WHERE phone = '+15550000002')
         WHERE phone = '+15550000001'",
        "23503",
    ),
    (
        "alias of a person that does not exist",
        "INSERT INTO persons (email, phone, alias_of) VALUES ('x@example.com', '+15550000009', 999999)",
        "23503",
    ),
    (
        "the same alias twice",
        "INSERT INTO persons (email, full_name, phone, alias_of)
         SELECT email, full_name, phone, alias_of FROM persons WHERE alias_of IS NOT NULL",
        "23505",
    ),
    ("a person with fewer than two identity keys", "INSERT INTO persons (email) VALUES ('solo@example.com')", "23514"),
    (
        "two active decision trees",
        "INSERT INTO decision_trees (rules_version, wasm, manifest, report, active) VALUES (2, '\\x00', '{}', '{}', true)",
        "23505",
    ),
    ("an active decision tree without a module", "UPDATE decision_trees SET wasm = NULL", "23514"),
    (
        "a lead for an unknown partner",
        "INSERT INTO leads (submission_id, partner, person_id, dedupe_key)
         SELECT gen_random_uuid(), 'nobody', person_id, 'k' FROM leads",
        "23503",
    ),
    (
        "a partner name that is no valid queue name",
        "INSERT INTO partners (name, request) VALUES ('School-A', '{}')",
        "23514",
    ),
    ("an unknown circuit state", "INSERT INTO circuit_breakers (partner, state) VALUES ('school_a', 'ajar')", "23514"),
    (
        "an open circuit without a retry time",
        "INSERT INTO circuit_breakers (partner, state) VALUES ('school_a', 'open')",
        "23514",
    ),
    (
        "a default route that is not a route",
        "UPDATE rule_set SET routes = '{school_a}', default_route = 'unsold'",
        "23514",
    ),
    (
        "a site key hash of the wrong length",
        "INSERT INTO sites (name, api_key_hash, key_prefix) VALUES ('degreefinder', '\\x01', 'or_')",
        "23514",
    ),
];

#[sqlx::test(migrations = false)]
async fn constraints_reject_bad_rows(pool: PgPool) {
    db::migrate(&pool).await.expect("migrate");
    sqlx::raw_sql(FIXTURE).execute(&pool).await.expect("fixture rows are valid");
    for (what, statement, sqlstate) in REJECTED {
        let error = sqlx::raw_sql(statement).execute(&pool).await.err();
        let code = error.as_ref().and_then(|e| e.as_database_error()).and_then(|e| e.code()).map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some(*sqlstate), "{what}: expected SQLSTATE {sqlstate}, got {error:?}");
    }
    // and the valid transitions still work
    sqlx::raw_sql(
        "UPDATE leads SET state = 'accepted';
         INSERT INTO circuit_breakers (partner, state, opened_at, retry_at) VALUES ('school_a', 'open', now(), now());
         UPDATE rule_set SET routes = '{school_a, unsold}', default_route = 'unsold';",
    )
    .execute(&pool)
    .await
    .expect("valid rows are accepted");
}

/// The quoted names of a `CHECK (column IN ('a', 'b', ...))` constraint, in order.
async fn check_list(pool: &PgPool, constraint: &str) -> Vec<String> {
    let definition: String =
        sqlx::query_scalar("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1")
            .bind(constraint)
            .fetch_one(pool)
            .await
            .expect("the constraint exists");
    definition.split('\'').skip(1).step_by(2).map(str::to_owned).collect()
}

#[sqlx::test(migrations = false)]
async fn the_state_types_name_exactly_what_the_check_constraints_allow(pool: PgPool) {
    use pipeline::state::{CircuitState, DeliveryState};

    db::migrate(&pool).await.expect("migrate");
    let delivery: Vec<_> = DeliveryState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(check_list(&pool, "leads_state_known").await, delivery);
    let circuit: Vec<_> = CircuitState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(check_list(&pool, "circuit_breakers_state_known").await, circuit);
    let verdicts: Vec<_> = pipeline::partners::Verdict::ALL.iter().map(|v| v.as_str()).collect();
    assert_eq!(check_list(&pool, "delivery_attempts_verdict_known").await, verdicts);

    // And each state reads back as itself, one by one and as an array.
    for &state in DeliveryState::ALL {
        let read: DeliveryState =
            sqlx::query_scalar("SELECT $1::text").bind(state).fetch_one(&pool).await.expect("reads");
        assert_eq!(read, state);
    }
    let read: Vec<CircuitState> =
        sqlx::query_scalar("SELECT $1::text[]").bind(CircuitState::ALL).fetch_one(&pool).await.expect("reads");
    assert_eq!(read, CircuitState::ALL);
    let unknown =
        sqlx::query_scalar::<_, DeliveryState>("SELECT 'lost'").fetch_one(&pool).await.map_err(|e| e.to_string());
    assert!(unknown.is_err_and(|e| e.contains("unknown DeliveryState `lost`")));
}
