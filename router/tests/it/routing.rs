//! The router end to end: rules stored and compiled by the compile worker, leads routed by the
//! active module and checked against the reference interpreter of the version that routed
//! them; hot reload under load, two replicas, waiting without a tree, unmatched leads.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use compiler::interp::Lead;
use compiler::model::{RuleSet, Target};
use pipeline::config::ConsumerConfig;
use pipeline::consumer::Consumer;
use pipeline::message::{PartnerLead, RoutingLead};
use pipeline::queue::{self, QueueName};
use pipeline::rules::RuleSetDoc;
use router::{ActiveTree, Router};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use workers::compile::Compile;

fn example() -> RuleSetDoc {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/rules.yaml")).expect("rules");
    let (doc, findings) = compiler::syntax::document::read(&text);
    assert!(findings.is_empty(), "{findings:?}");
    serde_json::from_value(doc.to_json()).expect("a rule set document")
}

/// The checked rule set of a document (the interpreter's input).
fn checked(doc: &RuleSetDoc) -> RuleSet {
    let (checked, findings, _) = compiler::report::check_rules("doc", doc.to_text().as_bytes()).expect("checks");
    assert!(findings.iter().all(|f| f.severity() != compiler::finding::Severity::Error), "{findings:?}");
    checked.expect("parses").0
}

/// Stores `doc` and runs the compile worker once; returns the new active tree's version.
async fn activate(pool: &PgPool, doc: &RuleSetDoc) -> i64 {
    let mut tx = pool.begin().await.expect("tx");
    let rules_version = pipeline::rules::replace(&mut tx, doc).await.expect("stored");
    tx.commit().await.expect("commit");
    let config = ConsumerConfig::new("compile", QueueName::new("compile").expect("name")).expect("config");
    let report = Consumer::new(pool.clone(), config, Compile).run_once().await.expect("compile batch");
    assert!(!report.failed && report.done >= 1, "{report:?}");
    let (tree, active): (i64, bool) =
        sqlx::query_as("SELECT version, active FROM decision_trees WHERE rules_version = $1")
            .bind(rules_version)
            .fetch_one(pool)
            .await
            .expect("tree row");
    assert!(active, "rules version {rules_version} was not activated");
    tree
}

/// `count` random leads over the rule set's atoms (`compiler::generate::leads`).
fn leads(doc: &RuleSetDoc, count: usize, seed: u64) -> Vec<RoutingLead> {
    compiler::generate::leads(&checked(doc), count, seed)
        .into_iter()
        .map(|fields| {
            let Value::Object(fields) = fields else { unreachable!("leads are objects") };
            let site = fields.get("site").and_then(Value::as_str).unwrap_or("degreefinder").to_owned();
            RoutingLead {
                submission_id: Uuid::now_v7(),
                site,
                person_id: 1,
                alias_id: None,
                submitted_at: Utc::now(),
                fields,
            }
        })
        .collect()
}

async fn setup(pool: &PgPool) {
    pipeline::db::migrate(pool).await.expect("migrate");
    sqlx::query("INSERT INTO persons (email, full_name) VALUES ('a@example.com', 'a')")
        .execute(pool)
        .await
        .expect("a person");
}

async fn send(pool: &PgPool, leads: &[RoutingLead]) {
    let queue = QueueName::new(queue::fixed::ROUTING).expect("name");
    let bodies: Vec<Value> = leads.iter().map(|l| serde_json::to_value(l).expect("json")).collect();
    for chunk in bodies.chunks(1_000) {
        queue::send_batch(pool, &queue, chunk).await.expect("send");
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// Every forwarded lead, from every partner queue.
async fn forwarded(pool: &PgPool) -> Vec<PartnerLead> {
    let queues: Vec<String> = sqlx::query_scalar(
        "SELECT queue_name FROM pgmq.meta WHERE queue_name LIKE 'partner\\_%' AND queue_name NOT LIKE '%\\_dlq'",
    )
    .fetch_all(pool)
    .await
    .expect("queues");
    let mut leads = Vec::new();
    for queue in queues {
        let bodies: Vec<Value> = sqlx::query_scalar(&format!("SELECT message FROM pgmq.\"q_{queue}\""))
            .fetch_all(pool)
            .await
            .expect("messages");
        for body in bodies {
            let lead: PartnerLead = serde_json::from_value(body).expect("a partner lead");
            assert_eq!(format!("partner_{}", lead.route), queue, "a lead in the wrong queue");
            leads.push(lead);
        }
    }
    leads
}

/// Routers running until `routing` is empty and `expected` leads were settled.
async fn drain(pool: &PgPool, routers: Vec<Consumer<Router>>, expected: u64) {
    let elapsed =
        tokio::time::timeout(Duration::from_secs(120), pipeline::consumer::run_until_settled(routers, expected))
            .await
            .expect("routing finished within 2 minutes");
    assert!(elapsed < Duration::from_secs(120));
    assert_eq!(count(pool, "SELECT count(*) FROM pgmq.q_routing").await, 0);
}

fn router(pool: &PgPool, tree: &Arc<ActiveTree>, batch_size: u32) -> Consumer<Router> {
    let mut config = ConsumerConfig::new("router", QueueName::new("routing").expect("name")).expect("config");
    config.defaults.batch_size = batch_size;
    Consumer::new(pool.clone(), config, Router::new(Arc::clone(tree)))
}

/// Checks that every lead was forwarded once to each partner it went to, by the version
/// recorded on it, as the interpreter decides under that version's rules (no partner here has
/// caps, a schedule or an open circuit, so the first match decides): its rule's partner, one
/// partner of its split, every partner of its shared sale (up to `max`), or the default route.
fn check_against_interpreter(sent: &[RoutingLead], routed: &[PartnerLead], versions: &HashMap<i64, RuleSet>) {
    let by_id: HashMap<Uuid, &RoutingLead> = sent.iter().map(|l| (l.submission_id, l)).collect();
    let mut per_lead: HashMap<Uuid, Vec<&PartnerLead>> = HashMap::new();
    for lead in routed {
        per_lead.entry(lead.lead.submission_id).or_default().push(lead);
    }
    for (id, forwards) in &per_lead {
        let first = forwards[0];
        let rules = versions.get(&first.tree_version).expect("a known tree version");
        let original = by_id.get(id).expect("a lead we sent");
        let typed = Lead::from_json(rules, &Value::Object(original.fields.clone())).expect("a valid lead");
        let decision = rules.decide(&typed);
        let mut partners: Vec<&str> = forwards.iter().map(|f| f.route.as_str()).collect();
        partners.sort_unstable();
        let expected: Vec<&str> = match decision.rule.map(|r| &r.target) {
            Some(Target::Partner(p)) => vec![p.as_str()],
            Some(Target::Split { split }) => {
                assert!(split.contains_key(partners[0]), "{:?} is not of the split of {id}", partners);
                vec![partners[0]]
            }
            Some(Target::Shared { shared, max }) => {
                let mut sold: Vec<&str> = shared.iter().take(*max).map(String::as_str).collect();
                sold.sort_unstable();
                sold
            }
            None => decision.route.into_iter().collect(),
        };
        assert_eq!(partners, expected, "partners of {:?} under tree {}", original.fields, first.tree_version);
        for forward in forwards {
            assert_eq!(forward.lead, **original, "the lead is forwarded unchanged");
            assert_eq!(forward.tree_version, first.tree_version, "one version decides a lead");
            assert_eq!(decision.rule.map(|r| r.name.as_str()), forward.rule.as_deref());
        }
    }
    assert_eq!(per_lead.len(), sent.len(), "every lead forwarded");
}

#[sqlx::test(migrations = false)]
async fn five_rule_versions_go_live_while_leads_flow(pool: PgPool) {
    setup(&pool).await;
    let mut doc = example();
    let mut versions = HashMap::new();
    versions.insert(activate(&pool, &doc).await, checked(&doc));

    let tree = Arc::new(ActiveTree::new().expect("engine"));
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(Arc::clone(&tree).watch(pool.clone(), Duration::from_millis(50), shutdown.clone()));
    let consumer = Arc::new(router(&pool, &tree, 50));
    let running = {
        let (consumer, shutdown) = (Arc::clone(&consumer), shutdown.clone());
        tokio::spawn(async move { consumer.run(shutdown).await })
    };

    let mut sent = Vec::new();
    for round in 0..6u64 {
        let chunk = leads(&doc, 2_000, round + 11);
        send(&pool, &chunk).await;
        sent.extend(chunk);
        if round == 5 {
            break;
        }
        // Mid-flow: once the router is into this chunk, a new version goes live. Every rule's
        // route moves one place along `routes`, so every version routes differently.
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&pool, "SELECT count(*) FROM pgmq.q_routing").await > 1_500 {
            assert!(Instant::now() < deadline, "the router is not consuming");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let routes = doc.routes.clone();
        // (Rules with a split or shared route keep it.)
        for rule in &mut doc.rules {
            if let Some(at) = routes.iter().position(|r| rule.route == r.as_str()) {
                rule.route = serde_json::Value::String(routes[(at + 1) % routes.len()].clone());
            }
        }
        versions.insert(activate(&pool, &doc).await, checked(&doc));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumer.stats().snapshot().done < sent.len() as u64 {
        assert!(Instant::now() < deadline, "routing did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.expect("router");
    watcher.await.expect("watcher");

    let routed = forwarded(&pool).await;
    check_against_interpreter(&sent, &routed, &versions);
    let used: BTreeSet<i64> = routed.iter().map(|l| l.tree_version).collect();
    assert_eq!(versions.len(), 6);
    assert!(used.len() >= 4, "leads were routed by only {used:?} of six versions");
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_routing_dlq").await, 0);
}

#[sqlx::test(migrations = false)]
async fn two_replicas_never_forward_a_lead_twice(pool: PgPool) {
    setup(&pool).await;
    let doc = example();
    let mut versions = HashMap::new();
    let tree_version = activate(&pool, &doc).await;
    versions.insert(tree_version, checked(&doc));
    let sent = leads(&doc, 10_000, 5);
    send(&pool, &sent).await;

    let tree = Arc::new(ActiveTree::new().expect("engine"));
    assert_eq!(tree.refresh(&pool).await.expect("loads"), Some(tree_version));
    drain(&pool, vec![router(&pool, &tree, 100), router(&pool, &tree, 100)], sent.len() as u64).await;
    check_against_interpreter(&sent, &forwarded(&pool).await, &versions);
}

#[sqlx::test(migrations = false)]
async fn without_an_active_tree_leads_wait(pool: PgPool) {
    setup(&pool).await;
    let doc = example();
    let sent = leads(&doc, 10, 3);
    send(&pool, &sent).await;
    let tree = Arc::new(ActiveTree::new().expect("engine"));
    let consumer = router(&pool, &tree, 100);
    for _ in 0..3 {
        assert_eq!(consumer.run_once().await.expect("no error").read, 0);
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_routing WHERE read_ct = 0").await, 10);

    let version = activate(&pool, &doc).await;
    assert_eq!(tree.refresh(&pool).await.expect("loads"), Some(version));
    assert_eq!(consumer.run_once().await.expect("batch").done, 10);
}

#[sqlx::test(migrations = false)]
async fn unmatched_leads_are_recorded_and_bad_leads_dead_lettered(pool: PgPool) {
    setup(&pool).await;
    let mut doc = example();
    doc.default_route = None;
    // Without a default route the example set has gaps; a gap is a warning, not an error.
    let version = activate(&pool, &doc).await;
    let tree = Arc::new(ActiveTree::new().expect("engine"));
    tree.refresh(&pool).await.expect("loads");

    let mut nothing = leads(&doc, 1, 9).remove(0);
    nothing.fields = Map::new();
    let mut bad = leads(&doc, 1, 10).remove(0);
    bad.fields.insert("state".to_owned(), json!("ZZ"));
    send(&pool, &[nothing.clone(), bad.clone()]).await;
    let report = router(&pool, &tree, 100).run_once().await.expect("batch");
    assert_eq!((report.done, report.dead_lettered), (1, 1), "{report:?}");

    let (id, tree_version): (Uuid, i64) =
        sqlx::query_as("SELECT submission_id, tree_version FROM unmatched_leads").fetch_one(&pool).await.expect("row");
    assert_eq!((id, tree_version), (nothing.submission_id, version));
    let letter: Value =
        sqlx::query_scalar("SELECT message FROM pgmq.q_routing_dlq").fetch_one(&pool).await.expect("dead letter");
    assert_eq!(letter["message"]["submission_id"], json!(bad.submission_id));
    assert!(letter["error"].as_str().is_some_and(|e| e.contains("state")), "{letter}");
    assert!(forwarded(&pool).await.is_empty());
}
