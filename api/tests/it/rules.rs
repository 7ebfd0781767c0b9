//! The admin rules API end to end (DESIGN.md, "Rule compiler and /api/rules"): the admin token,
//! reading and changing the stored rule set, refusals of invalid rule sets, dry runs, one
//! compile request per save, and the compile history after the real compile worker ran.

use api::Api;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use pipeline::config::{ApiConfig, ConsumerConfig};
use pipeline::consumer::Consumer;
use pipeline::queue::QueueName;
use pipeline::rules::RuleSetDoc;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

// ---- helpers ----------------------------------------------------------------------------

pub(crate) const TOKEN: &str = "test-admin";

/// A migrated database and the app on it, with `admin_token`.
async fn start_with(pool: &PgPool, admin_token: Option<&str>) -> Router {
    pipeline::db::migrate(pool).await.expect("migrate");
    let config = ApiConfig { admin_token: admin_token.map(str::to_owned), ..Default::default() };
    Api::start(pool.clone(), config, CancellationToken::new()).await.expect("api starts").router
}

pub(crate) async fn start(pool: &PgPool) -> Router {
    start_with(pool, Some(TOKEN)).await
}

/// Sends `method path` with `token` as bearer (if any) and `body` as JSON (if any).
pub(crate) async fn call_as(
    app: &Router,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = app.clone().oneshot(request.body(body).expect("request")).await.expect("infallible");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
    (status, body)
}

/// [`call_as`] with the admin token.
pub(crate) async fn call(app: &Router, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    call_as(app, Some(TOKEN), method, path, body).await
}

/// `examples/rules.yaml` as the JSON document the API takes.
pub(crate) fn example() -> Value {
    let text = include_str!("../../../examples/rules.yaml");
    let (document, findings) = compiler::syntax::document::read(text);
    assert!(findings.is_empty(), "{findings:?}");
    document.to_json()
}

/// The stored rules version.
async fn version(pool: &PgPool) -> i64 {
    pipeline::rules::version(pool).await.expect("version")
}

/// Compile requests waiting on `compile`.
async fn compile_requests(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pgmq.q_compile").fetch_one(pool).await.expect("count")
}

/// Runs the compile worker over what is queued.
pub(crate) async fn compile(pool: &PgPool) {
    let config = ConsumerConfig::new("compile", QueueName::new("compile").expect("queue name")).expect("config");
    let report = Consumer::new(pool.clone(), config, workers::compile::Compile).run_once().await.expect("batch");
    assert!(!report.failed && report.done >= 1, "{report:?}");
}

/// The codes of a report's findings.
fn codes(report: &Value) -> Vec<&str> {
    report["findings"].as_array().expect("findings").iter().map(|f| f["code"].as_str().expect("code")).collect()
}

/// Saves the example rule set (version 1).
pub(crate) async fn load_example(app: &Router, pool: &PgPool) {
    let (status, body) = call(app, Method::PUT, "/api/rules", Some(example())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(version(pool).await, 1);
}

/// A rule with the same condition and priority as `lm-military` but another route.
fn conflicting_rule() -> Value {
    json!({
        "priority": 340,
        "when": "site == \"loanmatch\" and email_domain ends_with \".mil\"",
        "route": "ironwood_bank",
    })
}

// ---- tests ------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn the_admin_token_is_required(pool: PgPool) {
    let app = start(&pool).await;
    for path in ["/api/rules", "/api/rules/some-rule", "/api/rules/trees", "/api/rules/trees/active"] {
        let (status, body) = call_as(&app, None, Method::GET, path, None).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{path}");
        let (status, body) = call_as(&app, Some("not-the-token"), Method::GET, path, None).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{path}");
    }
    let (status, body) = call_as(&app, Some("wrong"), Method::PUT, "/api/rules", Some(example())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(version(&pool).await, 0, "nothing saved");
    let (status, _) = call(&app, Method::GET, "/api/rules", None).await;
    assert_eq!(status, StatusCode::OK);

    // No token configured: the admin API is off, whatever is sent.
    let off = start_with(&pool, None).await;
    for token in [None, Some(TOKEN), Some("")] {
        let (status, body) = call_as(&off, token, Method::GET, "/api/rules", None).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{token:?}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_rule_set_round_trips(pool: PgPool) {
    let app = start(&pool).await;
    let (status, body) = call(&app, Method::GET, "/api/rules", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 0);
    assert_eq!(body["rule_set"]["rules"], json!([]));

    let (status, body) = call(&app, Method::PUT, "/api/rules", Some(example())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["activation"], "expected");
    assert_eq!((body["report"]["errors"].as_u64(), body["report"]["warnings"].as_u64()), (Some(0), Some(0)), "{body}");
    assert_eq!(body["report"]["rules_checked"], 38);
    assert_eq!(compile_requests(&pool).await, 1);

    let (status, body) = call(&app, Method::GET, "/api/rules", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1);
    let stored: RuleSetDoc = serde_json::from_value(body["rule_set"].clone()).expect("a rule set");
    let given: RuleSetDoc = serde_json::from_value(example()).expect("a rule set");
    assert_eq!(stored, given);

    let (status, body) = call(&app, Method::GET, "/api/rules/lm-military", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["route"], "liberty_lending");
    assert_eq!(body["priority"], 340);
    assert_eq!(body["enabled"], true);

    // The stored set checks clean; a posted one is checked instead.
    let (status, body) = call(&app, Method::POST, "/api/rules/check", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["rules_checked"].as_u64(), body["errors"].as_u64()), (Some(38), Some(0)), "{body}");
    let mut bad = example();
    bad["rules"][0]["when"] = json!("nope >");
    let (status, body) = call(&app, Method::POST, "/api/rules/check", Some(bad)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(codes(&body).contains(&"syntax"), "{body}");
    assert_eq!(compile_requests(&pool).await, 1, "checks enqueue nothing");
}

#[sqlx::test(migrations = false)]
async fn single_rules_are_created_changed_and_deleted(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app, &pool).await;
    let rule =
        json!({ "priority": 345, "when": "site == \"loanmatch\" and zip starts_with \"1\"", "route": "cashbridge" });

    // Every save: the version goes up by one and one compile is requested.
    let steps = [
        (Method::PUT, "/api/rules/lm-east-zip", Some(rule)),
        (Method::POST, "/api/rules/lm-east-zip/disable", None),
        (Method::POST, "/api/rules/lm-east-zip/enable", None),
        (Method::DELETE, "/api/rules/lm-east-zip", None),
    ];
    for (i, (method, path, body)) in steps.into_iter().enumerate() {
        let expected = 2 + i as i64;
        let (status, answer) = call(&app, method.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {answer}");
        assert_eq!(answer["version"], expected, "{answer}");
        assert_eq!(answer["activation"], "expected", "{answer}");
        assert_eq!(version(&pool).await, expected);
        assert_eq!(compile_requests(&pool).await, expected, "one compile request per save");
        let (status, stored) = call(&app, Method::GET, "/api/rules/lm-east-zip", None).await;
        match i {
            0 | 2 => assert_eq!((status, stored["enabled"].as_bool()), (StatusCode::OK, Some(true)), "{stored}"),
            1 => assert_eq!((status, stored["enabled"].as_bool()), (StatusCode::OK, Some(false)), "{stored}"),
            _ => assert_eq!((status, stored["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found"))),
        }
    }

    // An update keeps the rule's place and, without `enabled`, its state.
    let (status, body) = call(&app, Method::POST, "/api/rules/lm-military/disable", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let changed = json!({ "priority": 341, "when": "site == \"loanmatch\" and email_domain ends_with \".mil\"", "route": "liberty_lending" });
    let (status, body) = call(&app, Method::PUT, "/api/rules/lm-military", Some(changed)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, stored) = call(&app, Method::GET, "/api/rules/lm-military", None).await;
    assert_eq!((stored["priority"].as_i64(), stored["enabled"].as_bool()), (Some(341), Some(false)), "{stored}");

    // Missing rules, and a body that is not a rule.
    let saved = version(&pool).await;
    for (method, path) in [
        (Method::GET, "/api/rules/nope"),
        (Method::DELETE, "/api/rules/nope"),
        (Method::POST, "/api/rules/nope/enable"),
        (Method::POST, "/api/rules/nope/disable"),
        (Method::DELETE, "/api/rules/nope?dry_run=true"),
        (Method::GET, "/api/rules/trees/999"),
        (Method::GET, "/api/rules/trees/active"),
    ] {
        let (status, body) = call(&app, method.clone(), path, None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{method} {path}: {body}"
        );
    }
    let (status, body) = call(&app, Method::PUT, "/api/rules/x", Some(json!({ "priority": 1 }))).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body")), "{body}");
    assert_eq!(version(&pool).await, saved, "nothing saved");
}

#[sqlx::test(migrations = false)]
async fn invalid_rules_are_refused(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app, &pool).await;
    let cases = [
        ("bad-syntax", json!({ "priority": 1, "when": "nope >", "route": "unsold" }), "syntax"),
        ("bad-field", json!({ "priority": 1, "when": "planet == \"mars\"", "route": "unsold" }), "type"),
        ("bad-route", json!({ "priority": 1, "when": "age > 30", "route": "nowhere" }), "type"),
        ("Bad Name", json!({ "priority": 1, "when": "age > 30", "route": "unsold" }), "type"),
    ];
    for (name, rule, code) in cases {
        let path = format!("/api/rules/{}", name.replace(' ', "%20"));
        let (status, body) = call(&app, Method::PUT, &path, Some(rule)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {body}");
        assert_eq!(body["code"], "invalid_rules", "{body}");
        assert!(codes(&body["report"]).contains(&code), "{name}: {body}");
        assert!(!body["errors"].as_array().expect("errors").is_empty(), "{body}");
        assert_eq!(version(&pool).await, 1, "{name}: nothing saved");
        assert_eq!(compile_requests(&pool).await, 1, "{name}: no compile requested");
        let (status, _) = call(&app, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}");
    }

    // A whole rule set, a schema that breaks the rules, and a body the document type refuses.
    let mut bad = example();
    bad["rules"][3]["when"] = json!("age >= \"old\"");
    let (status, body) = call(&app, Method::PUT, "/api/rules", Some(bad)).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_rules")), "{body}");
    let mut schema = example();
    let schema = json!({ "routes": schema["routes"].take(), "fields": {} });
    let (status, body) = call(&app, Method::PUT, "/api/rules/schema", Some(schema)).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_rules")), "{body}");
    assert!(codes(&body["report"]).contains(&"type"), "{body}");
    let mut unknown_key = example();
    unknown_key["rulez"] = json!([]);
    let (status, body) = call(&app, Method::PUT, "/api/rules", Some(unknown_key)).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_rules")), "{body}");
    assert!(codes(&body["report"]).contains(&"syntax"), "{body}");
    assert_eq!(version(&pool).await, 1, "nothing saved");
    assert_eq!(compile_requests(&pool).await, 1);

    // A dry run of an invalid change answers its report, not an error.
    let rule = json!({ "priority": 1, "when": "nope >", "route": "unsold" });
    let (status, body) = call(&app, Method::PUT, "/api/rules/bad?dry_run=true", Some(rule)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dry_run"], true);
    assert!(codes(&body["report"]).contains(&"syntax"), "{body}");
}

#[sqlx::test(migrations = false)]
async fn a_conflict_is_saved_but_not_activated(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app, &pool).await;
    compile(&pool).await;
    let (status, first) = call(&app, Method::GET, "/api/rules/trees/active", None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["rules_version"], 1);
    let first_tree = first["version"].as_i64().expect("tree version");

    // Dry run: the report names the conflict; nothing is saved or requested.
    let (status, body) =
        call(&app, Method::PUT, "/api/rules/lm-military-2?dry_run=true", Some(conflicting_rule())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dry_run"], true);
    let conflict = body["report"]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["code"] == "conflict")
        .unwrap_or_else(|| panic!("a conflict finding: {body}"));
    let mut named: Vec<&str> = conflict["rules"].as_array().expect("rules").iter().filter_map(Value::as_str).collect();
    named.sort_unstable();
    assert_eq!(named, ["lm-military", "lm-military-2"], "{conflict}");
    assert!(conflict["witness"].is_object(), "{conflict}");
    assert_eq!(version(&pool).await, 1);
    assert_eq!(compile_requests(&pool).await, 0);
    let (status, _) = call(&app, Method::GET, "/api/rules/lm-military-2", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Saved anyway: stored and compiled, but the compile is refused and the old tree stays.
    let (status, body) = call(&app, Method::PUT, "/api/rules/lm-military-2", Some(conflicting_rule())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    let errors = body["report"]["errors"].as_u64().expect("errors");
    assert!(errors >= 1, "{body}");
    assert_eq!(body["activation"], format!("refused: {errors} error-level findings"));
    assert_eq!(compile_requests(&pool).await, 1);
    compile(&pool).await;

    let (status, active) = call(&app, Method::GET, "/api/rules/trees/active", None).await;
    assert_eq!(status, StatusCode::OK, "{active}");
    assert_eq!(active["version"], first_tree, "the previous tree stays active");
    let (status, trees) = call(&app, Method::GET, "/api/rules/trees", None).await;
    assert_eq!(status, StatusCode::OK, "{trees}");
    let trees = trees.as_array().expect("a list");
    assert_eq!(trees.len(), 2, "{trees:?}");
    let refused = &trees[0];
    assert_eq!(refused["rules_version"], 2, "newest first: {trees:?}");
    assert_eq!(refused["active"], false);
    assert_eq!(refused["errors"], errors);
    assert!(refused["refused"].is_string(), "{refused}");
    assert!(refused["activated_at"].is_null(), "{refused}");
    assert_eq!((trees[1]["version"].as_i64(), trees[1]["active"].as_bool()), (Some(first_tree), Some(true)));
    assert!(trees[1]["refused"].is_null(), "{:?}", trees[1]);
    let path = format!("/api/rules/trees/{}", refused["version"]);
    let (status, tree) = call(&app, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    assert_eq!(tree["active"], false);
    assert!(codes(&tree["report"]).contains(&"conflict"), "{tree}");
    assert_eq!(tree["report"]["errors"], errors);

    // Fixing it (a valid change) compiles into the new active tree.
    let (status, body) = call(&app, Method::DELETE, "/api/rules/lm-military-2", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["version"].as_i64(), body["activation"].as_str()), (Some(3), Some("expected")), "{body}");
    compile(&pool).await;
    let (status, active) = call(&app, Method::GET, "/api/rules/trees/active", None).await;
    assert_eq!(status, StatusCode::OK, "{active}");
    assert_eq!(active["rules_version"], 3);
    assert!(active["version"].as_i64() > refused["version"].as_i64(), "{active}");
    assert!(active["activated_at"].is_string(), "{active}");
    assert_eq!(active["report"]["errors"], 0);
}

#[sqlx::test(migrations = false)]
async fn schema_changes_are_checked_against_the_rules(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app, &pool).await;
    let mut schema = example();
    let mut schema = json!({
        "timezone": "UTC",
        "default_route": schema["default_route"].take(),
        "routes": schema["routes"].take(),
        "fields": schema["fields"].take(),
    });
    schema["routes"].as_array_mut().expect("routes").push(json!("new_buyer"));

    let (status, body) = call(&app, Method::PUT, "/api/rules/schema?dry_run=true", Some(schema.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["dry_run"].as_bool(), body["report"]["errors"].as_u64()), (Some(true), Some(0)), "{body}");
    assert_eq!(version(&pool).await, 1);

    let (status, body) = call(&app, Method::PUT, "/api/rules/schema", Some(schema)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    let (_, stored) = call(&app, Method::GET, "/api/rules", None).await;
    assert_eq!(stored["rule_set"]["timezone"], "UTC");
    assert!(stored["rule_set"]["routes"].as_array().expect("routes").contains(&json!("new_buyer")));
    assert_eq!(stored["rule_set"]["rules"].as_array().map(Vec::len), Some(38), "rules untouched");
    assert_eq!(compile_requests(&pool).await, 2);
}

#[sqlx::test(migrations = false)]
async fn a_tree_for_another_abi_is_recompiled_at_start(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app, &pool).await;
    compile(&pool).await;
    assert!(!workers::compile::recompile_if_stale(&pool).await.expect("checks"), "a fresh tree is current");
    assert_eq!(compile_requests(&pool).await, 0);
    // As if the active tree had been compiled by an older release.
    let old: i64 = sqlx::query_scalar(
        "UPDATE decision_trees SET manifest = jsonb_set(manifest, '{abi_version}', '1') WHERE active RETURNING version",
    )
    .fetch_one(&pool)
    .await
    .expect("an active tree");

    assert!(workers::compile::recompile_if_stale(&pool).await.expect("checks"));
    assert_eq!(compile_requests(&pool).await, 1);
    compile(&pool).await;
    let (status, active) = call(&app, Method::GET, "/api/rules/trees/active", None).await;
    assert_eq!(status, StatusCode::OK, "{active}");
    assert!(active["version"].as_i64() > Some(old), "a new tree: {active}");
    assert_eq!(active["rules_version"], 1, "of the same rules");
    let abi: i64 = sqlx::query_scalar("SELECT (manifest->>'abi_version')::bigint FROM decision_trees WHERE active")
        .fetch_one(&pool)
        .await
        .expect("abi");
    assert_eq!(abi, i64::from(runtime::abi::ABI_VERSION));
    assert!(!workers::compile::recompile_if_stale(&pool).await.expect("checks"));
}

#[sqlx::test(migrations = false)]
async fn every_save_keeps_its_version_readable_through_the_api(pool: PgPool) {
    let app = start(&pool).await;
    let (status, listed) = call(&app, Method::GET, "/api/rules/versions", None).await;
    assert_eq!((status, listed), (StatusCode::OK, json!([])));

    // Each kind of save, and the rule set as `GET /api/rules` shows it right after.
    let new_rule = json!({"priority": 7, "when": "state == \"CA\"", "route": "pacific_state_u"});
    let mut schema = example();
    let keys = ["timezone", "default_route", "routes", "fields"];
    schema.as_object_mut().expect("an object").retain(|k, _| keys.contains(&k.as_str()));
    schema["timezone"] = json!("America/Chicago");
    let mut snapshots = Vec::new();
    load_example(&app, &pool).await;
    snapshots.push(call(&app, Method::GET, "/api/rules", None).await.1);
    for (method, path, body) in [
        (Method::PUT, "/api/rules/ca-early", Some(new_rule)),
        (Method::POST, "/api/rules/ca-early/disable", None),
        (Method::POST, "/api/rules/ca-early/enable", None),
        (Method::DELETE, "/api/rules/ca-early", None),
        (Method::PUT, "/api/rules/schema", Some(schema)),
        (Method::PUT, "/api/rules", Some(example())),
    ] {
        let (status, saved) = call(&app, method.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {saved}");
        let (_, stored) = call(&app, Method::GET, "/api/rules", None).await;
        assert_eq!(saved["version"], stored["version"], "{method} {path}");
        snapshots.push(stored);
    }
    // A dry run and a refused change keep nothing.
    let (status, _) = call(&app, Method::DELETE, "/api/rules/block-test-traffic?dry_run=true", None).await;
    assert_eq!(status, StatusCode::OK);
    let bad = json!({"priority": 1, "when": "no_such_field == 1", "route": "pacific_state_u"});
    let (status, _) = call(&app, Method::PUT, "/api/rules/bad", Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, listed) = call(&app, Method::GET, "/api/rules/versions", None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let listed = listed.as_array().expect("a list");
    let numbers: Vec<i64> = listed.iter().filter_map(|v| v["version"].as_i64()).collect();
    assert_eq!(numbers, [7, 6, 5, 4, 3, 2, 1], "newest first, one per save");
    for entry in listed {
        // Each save keeps its impact against the version before; the list shows its counts.
        assert_eq!(entry["has_diff"], true, "{entry}");
        let summary = &entry["diff_summary"];
        assert!(summary["moves"].is_u64() || summary["unavailable"].is_string(), "{entry}");
        assert!(entry["saved_at"].is_string(), "{entry}");
        assert!(entry.get("document").is_none(), "the list has no documents: {entry}");
    }
    for stored in &snapshots {
        let path = format!("/api/rules/versions/{}", stored["version"]);
        let (status, kept) = call(&app, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{kept}");
        assert_eq!(kept["version"], stored["version"]);
        assert_eq!(kept["document"], stored["rule_set"], "version {}", stored["version"]);
        assert!(kept["diff"]["changes"].is_array() || kept["diff"]["unavailable"].is_string(), "{kept}");
    }
    assert_eq!(snapshots[2]["rule_set"]["rules"].as_array().map(Vec::len), Some(39), "the added rule");
    let disabled =
        snapshots[2]["rule_set"]["rules"].as_array().expect("rules").iter().find(|r| r["name"] == "ca-early");
    assert_eq!(disabled.map(|r| &r["enabled"]), Some(&json!(false)));
    for path in ["/api/rules/versions/99", "/api/rules/versions/abc", "/api/rules/versions/-1"] {
        let (status, body) = call(&app, Method::GET, path, None).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{path}: {body}");
    }
    let (status, _) = call_as(&app, None, Method::GET, "/api/rules/versions", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // What the change-impact step stores with a version shows in both answers.
    let diff = json!({"changes": 3, "equal": false, "findings": [{"code": "moved"}]});
    let mut tx = pool.begin().await.expect("tx");
    assert!(pipeline::rules::record_diff(&mut tx, 7, &diff).await.expect("record"));
    tx.commit().await.expect("commit");
    let (_, listed) = call(&app, Method::GET, "/api/rules/versions", None).await;
    assert_eq!(listed[0]["has_diff"], true);
    assert_eq!(listed[0]["diff_summary"], json!({"changes": 3, "equal": false}));
    let (_, kept) = call(&app, Method::GET, "/api/rules/versions/7", None).await;
    assert_eq!(kept["diff"], diff);
}

/// Makes the newest rules version one the compile worker refuses (a conflict), compiles it,
/// and tampers with the active tree's manifest as if an older release had built it. Returns
/// the active (stale) tree's version.
async fn newest_refused_and_active_tree_stale(app: &Router, pool: &PgPool) -> i64 {
    let (status, body) = call(app, Method::PUT, "/api/rules/lm-military-2", Some(conflicting_rule())).await;
    assert_eq!((status, body["version"].as_i64()), (StatusCode::OK, Some(2)), "{body}");
    compile(pool).await;
    let refused: Option<String> =
        sqlx::query_scalar("SELECT report->'compile'->>'refused' FROM decision_trees WHERE rules_version = 2")
            .fetch_one(pool)
            .await
            .expect("the refused tree");
    assert!(refused.is_some(), "version 2 is refused");
    sqlx::query_scalar(
        "UPDATE decision_trees SET manifest = jsonb_set(manifest, '{abi_version}', '1') WHERE active RETURNING version",
    )
    .fetch_one(pool)
    .await
    .expect("an active tree")
}

/// The active tree: (version, rules version, ABI, report).
async fn active(pool: &PgPool) -> (i64, i64, i64, Value) {
    sqlx::query_as(
        "SELECT version, rules_version, (manifest->>'abi_version')::bigint, report FROM decision_trees WHERE active",
    )
    .fetch_one(pool)
    .await
    .expect("an active tree")
}

#[sqlx::test(migrations = false)]
async fn a_stale_active_version_is_recompiled_at_start_though_the_newest_was_refused(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app, &pool).await;
    compile(&pool).await;
    let stale = newest_refused_and_active_tree_stale(&app, &pool).await;

    // Before `rule_versions`, this asked for the newest version, which was refused and done:
    // nothing happened and the routers had no loadable tree.
    assert!(workers::compile::recompile_if_stale(&pool).await.expect("checks"));
    let request: Value = sqlx::query_scalar("SELECT message FROM pgmq.q_compile").fetch_one(&pool).await.expect("q");
    assert_eq!(request, json!({"rules_version": 1, "recompile": true}));
    compile(&pool).await;
    let (tree, rules_version, abi, report) = active(&pool).await;
    assert!(tree > stale, "a new tree is active");
    assert_eq!((rules_version, abi), (1, i64::from(runtime::abi::ABI_VERSION)), "of the active rules, for this ABI");
    assert_eq!(report["compile"]["recompile"]["activated"], true, "{report}");
    assert_eq!(report["compile"]["recompile"]["replaced_tree"], stale, "{report}");
    assert_eq!(report["errors"], 0);
    assert!(!workers::compile::recompile_if_stale(&pool).await.expect("checks"), "nothing stale is left");
    // The refused newest version was not compiled again.
    let trees_of_2: i64 = sqlx::query_scalar("SELECT count(*) FROM decision_trees WHERE rules_version = 2")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(trees_of_2, 1);

    // Two replicas starting at once ask twice: one recompile serves both, even when the
    // requests come in separate batches.
    sqlx::query("UPDATE decision_trees SET manifest = jsonb_set(manifest, '{abi_version}', '1') WHERE active")
        .execute(&pool)
        .await
        .expect("stale again");
    assert!(workers::compile::recompile_if_stale(&pool).await.expect("checks"));
    assert!(workers::compile::recompile_if_stale(&pool).await.expect("checks"));
    assert_eq!(compile_requests(&pool).await, 2);
    let trees = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM decision_trees").fetch_one(&pool).await.expect("count")
    };
    let before = trees().await;
    let mut config = ConsumerConfig::new("compile", QueueName::new("compile").expect("queue name")).expect("config");
    config.defaults.batch_size = 1;
    let one_at_a_time = Consumer::new(pool.clone(), config, workers::compile::Compile);
    for _ in 0..2 {
        let report = one_at_a_time.run_once().await.expect("batch");
        assert_eq!((report.done, report.failed), (1, false), "{report:?}");
    }
    assert_eq!(trees().await, before + 1, "one recompile for both requests");
    assert_eq!(compile_requests(&pool).await, 0);
    assert!(!workers::compile::recompile_if_stale(&pool).await.expect("checks"));
}

#[sqlx::test(migrations = false)]
async fn the_api_recompiles_the_active_version_and_says_why_it_cannot(pool: PgPool) {
    let app = start(&pool).await;
    let recompile = "/api/rules/trees/active/recompile";
    let (status, body) = call(&app, Method::POST, recompile, None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{body}");
    let (status, _) = call_as(&app, None, Method::POST, recompile, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    load_example(&app, &pool).await;
    compile(&pool).await;
    let stale = newest_refused_and_active_tree_stale(&app, &pool).await;
    let (status, queued) = call(&app, Method::POST, recompile, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["rules_version"], 1);
    assert_eq!(queued["tree_version"], stale);
    assert_eq!(queued["tree_abi_version"], 1);
    assert_eq!(queued["abi_version"], runtime::abi::ABI_VERSION);
    assert!(queued["msg_id"].is_i64() && queued["queued_at"].is_string(), "{queued}");
    assert_eq!(compile_requests(&pool).await, 1);
    compile(&pool).await;
    let (status, now) = call(&app, Method::GET, "/api/rules/trees/active", None).await;
    assert_eq!(status, StatusCode::OK, "{now}");
    assert!(now["version"].as_i64() > Some(stale));
    assert_eq!(now["rules_version"], 1);
    assert_eq!(now["report"]["compile"]["recompile"]["activated"], true, "{now}");

    // A recompile never goes back over a newer active version: it is stored, not activated.
    let (status, body) = call(&app, Method::DELETE, "/api/rules/lm-military-2", None).await;
    assert_eq!((status, body["version"].as_i64()), (StatusCode::OK, Some(3)), "{body}");
    compile(&pool).await;
    let (newest_tree, rules_version, _, _) = active(&pool).await;
    assert_eq!(rules_version, 3);
    let mut conn = pool.acquire().await.expect("connection");
    pipeline::queue::send(
        &mut *conn,
        &QueueName::new("compile").expect("queue name"),
        &pipeline::rules::CompileRequest::recompile_of(1),
    )
    .await
    .expect("an old request");
    compile(&pool).await;
    let (tree, rules_version, _, _) = active(&pool).await;
    assert_eq!((tree, rules_version), (newest_tree, 3), "the newer tree stays active");
    let (wasm, report): (bool, Value) = sqlx::query_as(
        "SELECT wasm IS NOT NULL, report FROM decision_trees WHERE rules_version = 1 ORDER BY version DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("the recompiled tree");
    assert!(wasm, "compiled and stored");
    assert_eq!(report["compile"]["recompile"]["activated"], false, "{report}");
    let reason = report["compile"]["recompile"]["reason"].as_str().expect("a reason");
    assert!(reason.contains(&format!("tree {newest_tree} of rules version 3 is active")), "{reason}");

    // The active version's document is not kept (as after an upgrade from a release before
    // `rule_versions` whose newest version was not the active one): 409, nothing queued.
    sqlx::query("DELETE FROM rule_versions WHERE version = 3").execute(&pool).await.expect("forget");
    let (status, body) = call(&app, Method::POST, recompile, None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::CONFLICT, Some("not_stored")), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("rules version 3")), "{body}");
    assert_eq!(compile_requests(&pool).await, 0);
}

#[sqlx::test(migrations = false)]
async fn dry_runs_show_the_impact_on_the_active_rules_and_saves_keep_it(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app, &pool).await;
    compile(&pool).await;

    // Disabling a rule: its leads move; the example lead is one it took.
    let (status, body) = call(&app, Method::POST, "/api/rules/lm-military/disable?dry_run=true", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let impact = &body["impact"];
    assert_eq!(impact["equivalent"], false, "{impact}");
    assert_eq!(impact["proof"], "case_analysis", "{impact}");
    assert!(impact["moves"].as_u64() >= Some(1), "{impact}");
    let changes = impact["changes"].as_array().expect("changes");
    assert!(changes.iter().all(|c| c["from"]["rule"] == "lm-military"), "{impact}");
    let witness = changes[0]["witness"]["email_domain"].as_str().expect("a witness email domain");
    assert!(witness.ends_with(".mil"), "{witness}");
    assert!(impact["old"].as_str().is_some_and(|o| o.contains("active")), "{impact}");

    // Saved: the version keeps its impact against the version before.
    let (status, saved) = call(&app, Method::POST, "/api/rules/lm-military/disable", None).await;
    assert_eq!((status, saved["version"].as_i64()), (StatusCode::OK, Some(2)), "{saved}");
    assert_eq!(saved["impact"]["moves"], impact["moves"], "{saved}");
    let (status, kept) = call(&app, Method::GET, "/api/rules/versions/2", None).await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    assert_eq!(kept["diff"]["changes"], impact["changes"], "{kept}");
    let (status, list) = call(&app, Method::GET, "/api/rules/versions", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list[0]["version"], 2);
    assert_eq!(list[0]["has_diff"], true, "{list}");

    // Not compiled yet, so the active rules are still version 1: enabling it again is, against
    // them, no change at all (against the stored version 2 it would move leads back).
    let (status, body) = call(&app, Method::POST, "/api/rules/lm-military/enable?dry_run=true", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["impact"]["equivalent"], true, "{body}");
    assert_eq!(body["impact"]["changes"], json!([]), "{body}");
}
