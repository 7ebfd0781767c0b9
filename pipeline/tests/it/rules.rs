//! The rule set's storage keeps every version: each kind of write records the new version's
//! whole document in `rule_versions` in its own transaction (a rolled-back write keeps none),
//! the documents read back as `rules::load` read the rule set then, diffs are stored and
//! summarized, an upgraded database gets its current version backfilled by the migration, and
//! recompile requests name the active tree's version (or say why they cannot).

use pipeline::queue;
use pipeline::rules::{self, CompileRequest, RecompileRequest, RuleDoc, RuleSetDoc};
use serde_json::{Value, json};
use sqlx::PgPool;

fn doc() -> RuleSetDoc {
    serde_json::from_value(json!({
        "timezone": "America/New_York",
        "default_route": "unsold",
        "routes": ["school_a", "school_b", "unsold"],
        "fields": {"state": {"type": "enum", "values": ["CA", "NY"]}, "age": {"type": "int", "min": 0}},
        "rules": [
            {"name": "b", "priority": 20, "when": "age > 30", "route": "school_b"},
            {"name": "a", "priority": 10, "when": "state == \"CA\"", "route": "school_a", "enabled": false}
        ]
    }))
    .expect("a document")
}

/// The stored rule set as `rules::load` reads it.
async fn current(pool: &PgPool) -> (i64, RuleSetDoc) {
    let mut conn = pool.acquire().await.expect("connection");
    rules::load(&mut conn).await.expect("load")
}

async fn kept(pool: &PgPool, version: i64) -> Option<RuleSetDoc> {
    let mut conn = pool.acquire().await.expect("connection");
    rules::load_version(&mut conn, version).await.expect("load a version")
}

/// Checks, after a write committed, that it kept exactly its version: the stored rule set.
async fn check_kept(pool: &PgPool, version: i64, what: &str) {
    let (stored, doc) = current(pool).await;
    assert_eq!(stored, version, "{what}");
    assert_eq!(kept(pool, version).await.as_ref(), Some(&doc), "{what}: the kept document is the stored rule set");
}

#[sqlx::test(migrations = false)]
async fn every_write_keeps_its_version(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    assert_eq!(kept(&pool, 1).await, None, "a fresh database keeps nothing");
    let doc = doc();

    let mut tx = pool.begin().await.expect("tx");
    let v1 = rules::replace(&mut tx, &doc).await.expect("replace");
    tx.commit().await.expect("commit");
    check_kept(&pool, v1, "replace").await;
    // Kept in first-match order (priority, then position), as `load` reads it.
    let names: Vec<String> = kept(&pool, v1).await.expect("v1").rules.into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "b"]);

    let rule = RuleDoc {
        name: "c".to_owned(),
        priority: 5,
        when: "state == \"NY\"".to_owned(),
        route: serde_json::json!("school_b"),
        fallthrough: true,
        enabled: true,
    };
    let mut tx = pool.begin().await.expect("tx");
    let v2 = rules::upsert_rule(&mut tx, &rule).await.expect("upsert");
    tx.commit().await.expect("commit");
    check_kept(&pool, v2, "upsert").await;

    let mut tx = pool.begin().await.expect("tx");
    let v3 = rules::delete_rule(&mut tx, "b").await.expect("delete").expect("a rule");
    tx.commit().await.expect("commit");
    check_kept(&pool, v3, "delete").await;

    let mut schema = doc.schema();
    schema.default_route = None;
    let mut tx = pool.begin().await.expect("tx");
    let v4 = rules::set_schema(&mut tx, &schema).await.expect("schema");
    tx.commit().await.expect("commit");
    check_kept(&pool, v4, "schema").await;
    assert_eq!([v1, v2, v3, v4], [1, 2, 3, 4]);
    assert_eq!(kept(&pool, v4).await.expect("v4").default_route, None);
    assert_eq!(kept(&pool, v2).await.expect("v2").rules.len(), 3, "older versions stay as they were");
    assert!(kept(&pool, v3).await.expect("v3").rules.iter().all(|r| r.name != "b"));

    // Deleting nothing bumps nothing and keeps nothing; a rolled-back write keeps nothing.
    let mut tx = pool.begin().await.expect("tx");
    assert_eq!(rules::delete_rule(&mut tx, "nope").await.expect("delete"), None);
    tx.commit().await.expect("commit");
    let mut tx = pool.begin().await.expect("tx");
    assert_eq!(rules::replace(&mut tx, &doc).await.expect("replace"), 5);
    tx.rollback().await.expect("rollback");
    assert_eq!(kept(&pool, 5).await, None);

    let mut conn = pool.acquire().await.expect("connection");
    let listed = rules::versions(&mut conn, 100).await.expect("versions");
    assert_eq!(listed.iter().map(|v| v.version).collect::<Vec<_>>(), [4, 3, 2, 1], "newest first");
    assert!(listed.iter().all(|v| !v.has_diff && v.diff_summary.is_none()));
    assert_eq!(rules::versions(&mut conn, 2).await.expect("versions").len(), 2);

    // Every write enqueued the compile of its version, as before.
    let requests: Vec<Value> =
        sqlx::query_scalar("SELECT message FROM pgmq.q_compile ORDER BY msg_id").fetch_all(&pool).await.expect("q");
    assert_eq!(requests, (1..=4).map(|v| json!({ "rules_version": v })).collect::<Vec<_>>());
}

#[sqlx::test(migrations = false)]
async fn diffs_are_stored_with_their_version_and_summarized(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let mut tx = pool.begin().await.expect("tx");
    let version = rules::replace(&mut tx, &doc()).await.expect("replace");
    let diff = json!({"moves": 2, "equal": false, "base": "v0", "findings": [{"code": "moved"}], "figures": {"ms": 3}});
    assert!(rules::record_diff(&mut tx, version, &diff).await.expect("record"));
    tx.commit().await.expect("commit");

    let mut conn = pool.acquire().await.expect("connection");
    assert!(!rules::record_diff(&mut conn, 99, &diff).await.expect("record"), "an unknown version stores nothing");
    let stored = rules::stored_version(&mut conn, version).await.expect("read").expect("kept");
    assert_eq!(stored.diff, Some(diff));
    let listed = rules::versions(&mut conn, 10).await.expect("versions");
    assert!(listed[0].has_diff);
    let summary = listed[0].diff_summary.clone().expect("a summary");
    assert_eq!(Value::Object(summary), json!({"moves": 2, "equal": false, "base": "v0"}), "scalars only");

    // A diff that is not an object is kept, with no summary.
    assert!(rules::record_diff(&mut conn, version, &json!([1, 2])).await.expect("record"));
    let listed = rules::versions(&mut conn, 10).await.expect("versions");
    assert!(listed[0].has_diff && listed[0].diff_summary.is_none());

    // A kept document that no longer reads is an error naming its version.
    sqlx::query("UPDATE rule_versions SET document = '{\"rulez\": []}'").execute(&pool).await.expect("tamper");
    let error = rules::load_version(&mut conn, version).await.expect_err("not a rule set");
    assert!(error.to_string().contains(&format!("rules version {version}")), "{error}");
}

/// Puts the database back where the release before `rule_versions` left it.
async fn downgrade(pool: &PgPool) {
    sqlx::raw_sql(
        "DROP TABLE rule_versions; ALTER TABLE leads DROP COLUMN fields;
         DELETE FROM _sqlx_migrations WHERE version = 20261204000006",
    )
    .execute(pool)
    .await
    .expect("downgrade");
}

#[sqlx::test(migrations = false)]
async fn an_upgraded_database_keeps_its_current_version(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    for _ in 0..3 {
        let mut tx = pool.begin().await.expect("tx");
        rules::replace(&mut tx, &doc()).await.expect("replace");
        tx.commit().await.expect("commit");
    }
    let (version, doc) = current(&pool).await;
    assert_eq!(version, 3);
    // The database as the release before this migration left it, then the upgrade.
    downgrade(&pool).await;
    pipeline::db::migrate(&pool).await.expect("upgrade");
    assert_eq!(kept(&pool, 3).await, Some(doc.clone()), "the backfill is what `load` reads");
    assert_eq!(kept(&pool, 2).await, None, "older versions were never kept");

    // Without a default route the backfilled document has none either.
    let mut schema = doc.schema();
    schema.default_route = None;
    let mut tx = pool.begin().await.expect("tx");
    rules::set_schema(&mut tx, &schema).await.expect("schema");
    tx.commit().await.expect("commit");
    let (_, doc) = current(&pool).await;
    downgrade(&pool).await;
    pipeline::db::migrate(&pool).await.expect("upgrade");
    assert_eq!(kept(&pool, 4).await, Some(doc));
}

#[sqlx::test(migrations = false)]
async fn a_fresh_database_backfills_nothing(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM rule_versions").fetch_one(&pool).await.expect("count");
    assert_eq!(count, 0);
}

#[test]
fn compile_requests_of_older_releases_still_parse() {
    let old: CompileRequest = serde_json::from_value(json!({"rules_version": 7})).expect("an old request");
    assert_eq!(old, CompileRequest::saved(7));
    let new = serde_json::to_value(CompileRequest::recompile_of(7)).expect("json");
    assert_eq!(new, json!({"rules_version": 7, "recompile": true}));
    assert_eq!(serde_json::to_value(CompileRequest::saved(7)).expect("json"), json!({"rules_version": 7}));
}

#[sqlx::test(migrations = false)]
async fn a_recompile_is_queued_for_the_active_version_only_when_it_is_kept(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let mut conn = pool.acquire().await.expect("connection");
    assert_eq!(rules::request_recompile(&mut conn).await.expect("request"), RecompileRequest::NoActiveTree);

    let mut tx = pool.begin().await.expect("tx");
    rules::replace(&mut tx, &doc()).await.expect("replace");
    tx.commit().await.expect("commit");
    sqlx::query("DELETE FROM pgmq.q_compile").execute(&pool).await.expect("empty the queue");
    let tree: i64 = sqlx::query_scalar(
        "INSERT INTO decision_trees (rules_version, wasm, manifest, report, active)
         VALUES (1, '\\x00', '{\"abi_version\": 1}', '{}', true) RETURNING version",
    )
    .fetch_one(&pool)
    .await
    .expect("an active tree");
    assert_eq!(rules::active_tree(&pool).await.expect("active"), Some((tree, 1)));

    let RecompileRequest::Queued(queued) = rules::request_recompile(&mut conn).await.expect("request") else {
        panic!("not queued");
    };
    assert_eq!((queued.rules_version, queued.tree_version, queued.tree_abi_version), (1, tree, Some(1)));
    let message: Value = sqlx::query_scalar("SELECT message FROM pgmq.q_compile WHERE msg_id = $1")
        .bind(queued.msg_id)
        .fetch_one(&pool)
        .await
        .expect("the request");
    assert_eq!(message, json!({"rules_version": 1, "recompile": true}));
    assert_eq!(rules::recompiled(&pool, &queued).await.expect("read"), None, "nothing compiled yet");

    // A tree of the version stored after the request is its outcome.
    let after: i64 = sqlx::query_scalar(
        "INSERT INTO decision_trees (rules_version, report) VALUES (1, '{\"compile\": {\"refused\": \"no\"}}')
         RETURNING version",
    )
    .fetch_one(&pool)
    .await
    .expect("a refused tree");
    let outcome = rules::recompiled(&pool, &queued).await.expect("read").expect("an outcome");
    assert_eq!((outcome.version, outcome.active, outcome.refused.as_deref()), (after, false, Some("no")));

    sqlx::query("DELETE FROM rule_versions").execute(&pool).await.expect("forget");
    let before = queue::lengths(&pool).await.expect("lengths");
    assert_eq!(
        rules::request_recompile(&mut conn).await.expect("request"),
        RecompileRequest::NotStored { tree_version: tree, rules_version: 1 }
    );
    assert_eq!(queue::lengths(&pool).await.expect("lengths"), before, "nothing queued");
}
