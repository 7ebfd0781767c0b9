//! A stored lead explained (`GET /api/leads/{id}/explain`): a lead posted to the real API and
//! taken through identify, the router and deliver (to the mock partner) is explained with its
//! recorded rule reproduced under the rules version that routed it; after a rule change the
//! "now" answer changes (under the newest version, and the active tree's until it is
//! compiled); a recorded decision the kept rules do not give is flagged, and what cannot be
//! replayed (fields not kept, a version not kept) is said; unknown submissions are 404. The same
//! lead is found by the search's every filter, told whole (person, decision, each call, where it
//! ended) and counted on the dashboard.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::Api;
use axum::Router;
use axum::http::{Method, StatusCode};
use pipeline::config::{ApiConfig, ConsumerConfig};
use pipeline::consumer::Consumer;
use pipeline::identity::PhoneRegion;
use pipeline::queue::QueueName;
use pipeline::rules::RuleSetDoc;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use workers::deliver::{Breakers, Deliver, DeliverContext};
use workers::mock_partner::MockPartner;

use crate::rules::{TOKEN, call, call_as, compile, example, load_example, start};

fn consumer_config(worker: &str, queue: &str) -> ConsumerConfig {
    ConsumerConfig::new(worker, QueueName::new(queue).expect("queue name")).expect("config")
}

/// The routes whose partner queues hold a message.
async fn routed_to(pool: &PgPool) -> Vec<String> {
    let queues: Vec<String> = sqlx::query_scalar(
        "SELECT queue_name FROM pgmq.meta WHERE queue_name LIKE 'partner\\_%' AND queue_name NOT LIKE '%\\_dlq'",
    )
    .fetch_all(pool)
    .await
    .expect("queues");
    let mut routes = Vec::new();
    for queue in queues {
        let waiting: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM pgmq.\"q_{queue}\"")).fetch_one(pool).await.expect("n");
        if waiting > 0 {
            routes.push(queue.trim_start_matches("partner_").to_owned());
        }
    }
    routes
}

/// Posts a lead as site `degreefinder` and takes it through identify, the router and deliver
/// (the example partners, pointed at a mock partner that accepts). Returns its submission id
/// and route.
async fn deliver_a_lead(app: &Router, pool: &PgPool) -> (Uuid, String) {
    let key = api::sites::create_site(pool, "degreefinder").await.expect("site").api_key;
    let lead = json!({
        "email": "ann.lee@gmail.com", "full_name": "Ann Lee", "phone": "415 555 2671",
        "fields": {"state": "CA", "age": 29, "program": "nursing", "has_diploma": false}
    });
    let (status, accepted) = call_as(app, Some(&key), Method::POST, "/api/submit", Some(lead)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id: Uuid = accepted["submission_id"].as_str().and_then(|s| s.parse().ok()).expect("an id");

    let identify = workers::identify::Identify::new(PhoneRegion::default()).expect("identify");
    let report = Consumer::new(pool.clone(), consumer_config("identify", "submissions"), identify).run_once().await;
    assert_eq!(report.expect("identify batch").done, 1);
    let tree = Arc::new(router::ActiveTree::new().expect("engine"));
    assert!(tree.refresh(pool).await.expect("a tree loads").is_some());
    let routing = router::Router::new(Arc::clone(&tree));
    let report = Consumer::new(pool.clone(), consumer_config("router", "routing"), routing).run_once().await;
    assert_eq!(report.expect("router batch").done, 1);
    let routes = routed_to(pool).await;
    let [route] = &routes[..] else { panic!("one partner queue holds the lead: {routes:?}") };

    let partners = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/partners.yaml"));
    let partners = pipeline::partners::parse_file(&partners.expect("partners file")).expect("partners");
    let mock = MockPartner::start("127.0.0.1:0".parse().expect("addr")).await.expect("mock partner");
    let context = DeliverContext {
        pool: pool.clone(),
        readers: pipeline::queue::Readers::new(pool),
        client: reqwest::Client::new(),
        env: Arc::new(BTreeMap::from([
            ("PARTNER_BASE_URL".to_owned(), format!("http://{}", mock.addr())),
            ("PARTNER_TOKEN".to_owned(), "t".to_owned()),
        ])),
        breakers: Arc::new(Breakers::new(Duration::ZERO)),
        owner: "test".to_owned(),
        clock: pipeline::distribution::system_clock(),
        claims: workers::deliver::Claims::start(pool),
    };
    let mut conn = pool.acquire().await.expect("connection");
    for partner in &partners.partners {
        pipeline::partners::apply(&mut conn, partner).await.expect("partner applied");
    }
    let partner = partners.partners.iter().find(|p| p.name == *route).expect("the route's partner").clone();
    let queue = partner.queue().expect("queue");
    let deliver = Deliver::new(partner, context).expect("deliver");
    let report = Consumer::new(pool.clone(), ConsumerConfig::new("deliver", queue).expect("config"), deliver)
        .run_once()
        .await
        .expect("deliver batch");
    assert_eq!(report.done, 1, "{report:?}");
    assert_eq!(mock.calls(route), 1);
    (id, route.clone())
}

/// The example rules active, and a lead delivered with them: the app, its submission id and route.
async fn with_a_delivered_lead(pool: &PgPool) -> (Router, Uuid, String) {
    let app = start(pool).await;
    load_example(&app, pool).await;
    compile(pool).await;
    // Started again, kept running (its committers), and checking offer fields against the
    // active tree from the start.
    let config = ApiConfig { admin_token: Some(TOKEN.to_owned()), ..Default::default() };
    let running = Api::start(pool.clone(), config, CancellationToken::new()).await.expect("api starts");
    let app = running.router.clone();
    let (id, route) = deliver_a_lead(&app, pool).await;
    (app, id, route)
}

async fn explain(app: &Router, id: Uuid) -> Value {
    let (status, body) = call(app, Method::GET, &format!("/api/leads/{id}/explain"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The names of the rules an explanation tried, and the texts of their failing tests.
fn failing_tests(explanation: &Value) -> Vec<(String, String)> {
    explanation["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["matched"] == false)
        .map(|s| (s["rule"].as_str().expect("rule").to_owned(), s["failed"]["text"].as_str().expect("text").to_owned()))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn a_delivered_lead_is_explained_then_and_now(pool: PgPool) {
    let (app, id, route) = with_a_delivered_lead(&pool).await;
    let (tree, rule): (i64, String) =
        sqlx::query_as("SELECT tree_version, rule_name FROM leads WHERE submission_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("the leads row");

    let story = explain(&app, id).await;
    assert_eq!(story["submission_id"], id.to_string());
    assert_eq!(story["routed"], json!({"tree_version": tree, "rules_version": 1, "rule": rule, "route": route}));
    assert_eq!(story["deliveries"][0]["partner"], route);
    assert_eq!(story["deliveries"][0]["state"], "accepted");
    assert_eq!(story["deliveries"][0]["attempts"], 1);
    assert_eq!(story["unmatched"], Value::Null);
    // The routing fields the router saw: the offer fields and the derived ones.
    let fields = &story["fields"];
    assert_eq!((&fields["state"], &fields["age"], &fields["site"]), (&json!("CA"), &json!(29), &json!("degreefinder")));
    assert_eq!(fields["email_domain"], "gmail.com");
    assert!(fields["submitted_hour"].is_i64(), "{fields}");
    let then = &story["then"];
    assert_eq!(
        (&then["rules_version"], &then["tree_version"], &then["reproduced"]),
        (&json!(1), &json!(tree), &json!(true))
    );
    assert_eq!(then["explanation"]["decision"], json!({"kind": "rule", "rule": rule, "route": route}));
    // Each earlier rule is explained by the one test that failed, not its whole condition.
    let doc: RuleSetDoc = serde_json::from_value(example()).expect("a document");
    let failing = failing_tests(&then["explanation"]);
    assert!(!failing.is_empty(), "{then}");
    for (name, text) in &failing {
        let when = &doc.rules.iter().find(|r| r.name == *name).expect("a rule").when;
        assert!(when.contains(text.as_str()), "`{text}` is not in `{when}`");
    }
    assert!(failing.iter().any(|(name, text)| doc.rules.iter().any(|r| r.name == *name && r.when != *text)));
    assert_eq!(story["now"]["newest"]["rules_version"], 1);
    assert_eq!(story["now"]["newest"]["tree_version"], tree);
    assert_eq!(story["now"]["newest"]["changed"], false);
    assert_eq!(story["now"]["active"], Value::Null, "the active tree is of the newest version");
    assert_eq!(story["notes"], json!([]));

    // A new first rule takes the lead elsewhere: the newest version says so at once; the active
    // tree (still of version 1) decides as before until the new version is compiled.
    let elsewhere =
        doc.routes.iter().find(|r| **r != route && Some(*r) != doc.default_route.as_ref()).expect("a route");
    let moved = json!({"priority": 1, "when": "state == \"CA\" and age < 30", "route": elsewhere});
    let (status, body) = call(&app, Method::PUT, "/api/rules/ca-under-30", Some(moved)).await;
    assert_eq!((status, body["version"].as_i64()), (StatusCode::OK, Some(2)), "{body}");
    let story = explain(&app, id).await;
    assert_eq!(story["then"]["reproduced"], true, "the past does not change");
    let newest = &story["now"]["newest"];
    assert_eq!((&newest["rules_version"], &newest["changed"]), (&json!(2), &json!(true)), "{newest}");
    assert_eq!(newest["explanation"]["decision"], json!({"kind": "rule", "rule": "ca-under-30", "route": elsewhere}));
    assert_eq!(newest["tree_version"], Value::Null, "no tree of version 2 is active");
    let active = &story["now"]["active"];
    assert_eq!(
        (&active["rules_version"], &active["tree_version"], &active["changed"]),
        (&json!(1), &json!(tree), &json!(false))
    );

    compile(&pool).await;
    let story = explain(&app, id).await;
    assert_eq!(story["now"]["newest"]["rules_version"], 2);
    assert!(story["now"]["newest"]["tree_version"].as_i64() > Some(tree), "{story}");
    assert_eq!(story["now"]["active"], Value::Null);

    // The same story through the function `rulec explain --submission` calls.
    let direct = api::leads::explain_submission(&pool, id).await.expect("reads").expect("a story");
    assert_eq!(serde_json::to_value(&direct).expect("json"), story);
    assert_eq!(direct.reproduced(), Some(true));

    // A lead stored before fields were kept cannot be replayed, and says so.
    let kept = fields.clone();
    sqlx::query("UPDATE leads SET fields = NULL WHERE submission_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .expect("forget the fields");
    let story = explain(&app, id).await;
    assert_eq!((&story["fields"], &story["then"], &story["now"]["newest"]), (&Value::Null, &Value::Null, &Value::Null));
    assert!(story["notes"][0].as_str().is_some_and(|n| n.contains("fields were not kept")), "{story}");
    // Nor can a decision under a version that is not kept.
    sqlx::query("UPDATE leads SET fields = $2 WHERE submission_id = $1")
        .bind(id)
        .bind(kept)
        .execute(&pool)
        .await
        .expect("restore the fields");
    sqlx::query("DELETE FROM rule_versions WHERE version = 1").execute(&pool).await.expect("forget version 1");
    let story = explain(&app, id).await;
    assert_eq!(story["then"], Value::Null);
    assert_eq!(story["now"]["newest"]["rules_version"], 2, "now is still answered");
    assert!(story["notes"][0].as_str().is_some_and(|n| n.contains("rules version 1 is not kept")), "{story}");
}

#[sqlx::test(migrations = false)]
async fn a_decision_the_kept_rules_do_not_give_is_flagged(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app, &pool).await;
    compile(&pool).await;
    // Recorded as unmatched, though version 1 has a default route: not what its tree would do.
    let (tree,): (i64,) =
        sqlx::query_as("SELECT version FROM decision_trees WHERE active").fetch_one(&pool).await.expect("tree");
    let person: i64 = sqlx::query_scalar("INSERT INTO persons (email, full_name) VALUES ('a@x.com', 'a') RETURNING id")
        .fetch_one(&pool)
        .await
        .expect("person");
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO unmatched_leads (submission_id, person_id, site, tree_version, fields, submitted_at)
         VALUES ($1, $2, 'degreefinder', $3, '{\"site\": \"degreefinder\", \"state\": \"TX\"}', now())",
    )
    .bind(id)
    .bind(person)
    .bind(tree)
    .execute(&pool)
    .await
    .expect("an unmatched lead");
    let story = explain(&app, id).await;
    assert_eq!(story["routed"], json!({"tree_version": tree, "rules_version": 1, "rule": null, "route": null}));
    assert_eq!(story["unmatched"]["tree_version"], tree);
    assert_eq!(story["deliveries"], json!([]));
    assert_eq!(story["then"]["reproduced"], false);
    assert_eq!(story["then"]["explanation"]["decision"]["kind"], "default_route");
    assert!(story["notes"][0].as_str().is_some_and(|n| n.contains("was recorded")), "{story}");
    let direct = api::leads::explain_submission(&pool, id).await.expect("reads").expect("a story");
    assert_eq!(direct.reproduced(), Some(false));

    // Unknown submissions and ids that are not ids.
    for path in [format!("/api/leads/{}/explain", Uuid::now_v7()), "/api/leads/not-an-id/explain".to_owned()] {
        let (status, body) = call(&app, Method::GET, &path, None).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{path}: {body}");
    }
    let (status, _) = call_as(&app, None, Method::GET, &format!("/api/leads/{id}/explain"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// `GET path` with the admin token; the answer must be 200.
async fn get_ok(app: &Router, path: &str) -> Value {
    let (status, body) = call(app, Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// The submission ids of a search's answer.
fn found(answer: &Value) -> Vec<String> {
    answer["leads"]
        .as_array()
        .expect("leads")
        .iter()
        .map(|l| l["submission_id"].as_str().expect("id").to_owned())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn leads_are_searched_told_whole_and_counted_on_the_dashboard(pool: PgPool) {
    let (app, id, route) = with_a_delivered_lead(&pool).await;
    let id_text = id.to_string();

    // ---- search: each filter, alone and together; nothing by personal data ----
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for query in [
        String::new(),
        format!("submission_id={id}"),
        "site=degreefinder".to_owned(),
        format!("partner={route}"),
        "state=accepted".to_owned(),
        format!("from={}&to={}", urlencode(&hour_ago), urlencode(&in_an_hour)),
        format!("site=degreefinder&partner={route}&state=accepted"),
    ] {
        let answer = get_ok(&app, &format!("/api/leads?{query}")).await;
        assert_eq!(found(&answer), std::slice::from_ref(&id_text), "{query}");
    }
    let row = &get_ok(&app, "/api/leads").await["leads"][0];
    assert_eq!(
        (&row["partner"], &row["state"], &row["site"]),
        (&json!(route), &json!("accepted"), &json!("degreefinder"))
    );
    assert!(row["rule"].is_string() && row["tree_version"].is_i64() && row["submitted_at"].is_string(), "{row}");
    for query in [
        "site=loanmatch".to_owned(),
        "partner=nobody".to_owned(),
        "state=failed".to_owned(),
        "state=unmatched".to_owned(),
        format!("from={}", urlencode(&in_an_hour)),
        format!("to={}", urlencode(&hour_ago)),
        format!("after={id}/{route}"),
    ] {
        assert_eq!(found(&get_ok(&app, &format!("/api/leads?{query}")).await), Vec::<String>::new(), "{query}");
    }
    for query in ["state=lost", "from=yesterday", "submission_id=42", "limit=0", "limit=501", "after=x", "email=a@b.c"]
    {
        let (status, body) = call(&app, Method::GET, &format!("/api/leads?{query}"), None).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")), "{query}: {body}");
    }

    // ---- the whole story ----
    let story = get_ok(&app, &format!("/api/leads/{id}")).await;
    assert_eq!((&story["site"], &story["unmatched"]), (&json!("degreefinder"), &json!(false)));
    assert_eq!(story["person"]["email"], json!("ann.lee@gmail.com"), "{story}");
    assert_eq!(story["alias"], Value::Null);
    assert_eq!(story["decision"]["route"], json!(route));
    assert_eq!(story["explain"]["then"]["reproduced"], json!(true));
    let delivery = &story["deliveries"][0];
    assert_eq!(
        (&delivery["partner"], &delivery["state"], &delivery["attempts"]),
        (&json!(route), &json!("accepted"), &json!(1))
    );
    let calls = delivery["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1, "{delivery}");
    assert_eq!(
        (&calls[0]["attempt"], &calls[0]["status"], &calls[0]["verdict"]),
        (&json!(1), &json!(200), &json!("accepted"))
    );
    assert!(calls[0]["response_excerpt"].as_str().is_some_and(|b| b.contains("accepted")), "{delivery}");
    assert_eq!(story["finals"][0]["state"], json!("accepted"));
    for path in [format!("/api/leads/{}", Uuid::now_v7()), "/api/leads/not-an-id".to_owned()] {
        let (status, body) = call(&app, Method::GET, &path, None).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{path}: {body}");
    }

    // ---- the dashboard counts it at every stage ----
    let snapshot = get_ok(&app, "/api/dashboard").await;
    assert_eq!(snapshot["stages"], json!({ "ingest": 1, "identify": 1, "router": 1, "deliver": 1 }), "{snapshot}");
    assert_eq!(snapshot["latency_ms"]["answered"], json!(1), "{snapshot}");
    assert!(snapshot["latency_ms"]["p99"].as_f64().is_some_and(|ms| ms > 0.0), "{snapshot}");
    let outcome = snapshot["outcomes"].as_array().and_then(|o| o.iter().find(|o| o["partner"] == json!(route)));
    assert_eq!(outcome.map(|o| &o["accepted"]), Some(&json!(1)), "{snapshot}");
    let queue = snapshot["queues"].as_array().and_then(|q| q.iter().find(|q| q["queue"] == "submissions"));
    assert_eq!(queue.map(|q| (&q["stage"], &q["depth"])), Some((&json!("intake"), &json!(0))), "{snapshot}");
    assert!(snapshot["circuits"].as_array().is_some_and(|c| c.iter().all(|c| c["state"] == "closed")), "{snapshot}");
}

/// Percent-encodes a query value (RFC 3339 times have `+` and `:`).
fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn the_yaml_rendering_is_the_same_rule_set_with_conditions_verbatim() {
    let mut doc: RuleSetDoc = serde_json::from_value(example()).expect("a document");
    // A quote in a condition cannot stand in a single-quoted scalar: it is written as JSON.
    doc.rules[0].when = "program == \"it's\" or age > 3".to_owned();
    let (from_yaml, findings) = compiler::syntax::document::read(&doc.to_yaml());
    assert!(findings.is_empty(), "{findings:?}\n{}", doc.to_yaml());
    let (from_json, findings) = compiler::syntax::document::read(&doc.to_text());
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(from_yaml.to_json(), from_json.to_json());
    let verbatim = from_yaml.rules.iter().filter(|r| r.when_base.is_some()).count();
    assert_eq!(verbatim, doc.rules.len() - 1, "every condition but the quoted one stands verbatim");
}
