//! Lead distribution through the real router on a real database: two replicas racing a cap
//! (exactly the cap goes through, the rest falls through to the next rule), a schedule
//! boundary crossed under a driven clock, a 70/30 split over 1,000 leads, a lead shared with
//! three partners of which one dedupes it (delivered by the real deliver worker), a circuit
//! opening and closing, a rule holding its leads, and the record of what was skipped and why.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use pipeline::config::ConsumerConfig;
use pipeline::consumer::Consumer;
use pipeline::distribution::{Clock, PartnerStates};
use pipeline::message::{PartnerLead, RoutingLead};
use pipeline::partners::PartnerConfig;
use pipeline::queue::{self, QueueName};
use pipeline::rules::RuleSetDoc;
use router::{ActiveTree, Router};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const RULES: &str = r#"
version: 1
routes: [capped, backup, a, b, sx, sy, sz, early, late, keeper]
fields:
  kind: { type: enum, values: [cap, split, share, hours, circuit, hold] }
rules:
  - { name: to-capped, priority: 10, when: 'kind == "cap"', route: capped }
  - { name: cap-backup, priority: 20, when: 'kind == "cap"', route: backup }
  - { name: split, priority: 30, when: 'kind == "split"', route: { split: { a: 70, b: 30 } } }
  - { name: share, priority: 40, when: 'kind == "share"', route: { shared: [sx, sy, sz] } }
  - { name: hours, priority: 50, when: 'kind == "hours"', route: early }
  - { name: hours-backup, priority: 60, when: 'kind == "hours"', route: late }
  - { name: circuit, priority: 70, when: 'kind == "circuit"', route: a }
  - { name: circuit-backup, priority: 80, when: 'kind == "circuit"', route: b }
  - { name: hold, priority: 90, when: 'kind == "hold"', route: keeper, fallthrough: false }
"#;

/// A partner pointed nowhere (these tests route; deliver has its own test below), with
/// `extra` settings (caps, schedule, ...).
fn partner(name: &str, extra: Value) -> PartnerConfig {
    let url = format!("{{{{ env.PARTNER_BASE_URL }}}}/partners/{name}/leads");
    let mut config = json!({ "name": name, "request": { "url": url, "body": { "email": "{{ person.email }}" } } });
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
    }
    serde_json::from_value(config).expect("a partner")
}

/// A clock tests move by hand.
fn driven(at: DateTime<Utc>) -> (Clock, Arc<AtomicI64>) {
    let millis = Arc::new(AtomicI64::new(at.timestamp_millis()));
    let read = Arc::clone(&millis);
    let clock: Clock =
        Arc::new(move || Utc.timestamp_millis_opt(read.load(Ordering::SeqCst)).single().unwrap_or_default());
    (clock, millis)
}

struct Setup {
    pool: PgPool,
    tree: Arc<ActiveTree>,
    /// Partner states read afresh for every batch, so a change is seen at once.
    states: Arc<PartnerStates>,
}

async fn setup(pool: PgPool, partners: &[PartnerConfig]) -> Setup {
    pipeline::db::migrate(&pool).await.expect("migrate");
    sqlx::query("INSERT INTO persons (email, full_name) VALUES ('a@example.com', 'a')")
        .execute(&pool)
        .await
        .expect("person");
    let mut conn = pool.acquire().await.expect("connection");
    for p in partners {
        pipeline::partners::apply(&mut conn, p).await.expect("partner applied");
    }
    let (document, findings) = compiler::syntax::document::read(RULES);
    assert!(findings.is_empty(), "{findings:?}");
    let doc: RuleSetDoc = serde_json::from_value(document.to_json()).expect("a rule set");
    let mut tx = pool.begin().await.expect("tx");
    pipeline::rules::replace(&mut tx, &doc).await.expect("stored");
    tx.commit().await.expect("commit");
    let compile = ConsumerConfig::new("compile", QueueName::new("compile").expect("name")).expect("config");
    let report = Consumer::new(pool.clone(), compile, workers::compile::Compile).run_once().await.expect("compile");
    assert!(!report.failed, "{report:?}");
    let tree = Arc::new(ActiveTree::new().expect("engine"));
    assert!(tree.refresh(&pool).await.expect("loads").is_some(), "the rules compiled and activated");
    Setup { pool, tree, states: Arc::new(PartnerStates::new(Duration::ZERO)) }
}

impl Setup {
    fn router(&self, clock: &Clock, batch_size: u32) -> Consumer<Router> {
        let mut config = ConsumerConfig::new("router", QueueName::new("routing").expect("name")).expect("config");
        config.defaults.batch_size = batch_size;
        let router = Router::with(Arc::clone(&self.tree), Arc::clone(&self.states), Arc::clone(clock));
        Consumer::new(self.pool.clone(), config, router)
    }

    /// Posts `count` leads of `kind` to `routing`.
    async fn post(&self, kind: &str, count: usize) -> Vec<Uuid> {
        let leads: Vec<Value> = (0..count)
            .map(|_| {
                let fields: Map<String, Value> = [("kind".to_owned(), json!(kind))].into_iter().collect();
                let lead = RoutingLead {
                    submission_id: Uuid::now_v7(),
                    site: "degreefinder".to_owned(),
                    person_id: 1,
                    alias_id: None,
                    submitted_at: Utc::now(),
                    fields,
                };
                serde_json::to_value(lead).expect("json")
            })
            .collect();
        let routing = QueueName::new(queue::fixed::ROUTING).expect("name");
        for chunk in leads.chunks(500) {
            queue::send_batch(&self.pool, &routing, chunk).await.expect("send");
        }
        leads.iter().map(|l| l["submission_id"].as_str().and_then(|s| s.parse().ok()).expect("id")).collect()
    }

    /// Routes everything waiting, with `routers` consumers side by side.
    async fn route(&self, routers: Vec<Consumer<Router>>, expected: u64) {
        tokio::time::timeout(Duration::from_secs(120), pipeline::consumer::run_until_settled(routers, expected))
            .await
            .expect("routed within 2 minutes");
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pgmq.q_routing").fetch_one(&self.pool).await.expect("n");
        assert_eq!(left, 0, "everything was routed");
    }

    /// The leads waiting in `partner`'s queue.
    async fn queued(&self, partner: &str) -> Vec<PartnerLead> {
        let bodies: Vec<Value> =
            sqlx::query_scalar(&format!("SELECT message FROM pgmq.\"q_partner_{partner}\" ORDER BY msg_id"))
                .fetch_all(&self.pool)
                .await
                .expect("messages");
        bodies.into_iter().map(|b| serde_json::from_value(b).expect("a partner lead")).collect()
    }

    async fn set_circuit(&self, partner: &str, open: bool) {
        let state = if open { "open" } else { "closed" };
        sqlx::query(
            "UPDATE circuit_breakers SET state = $2, opened_at = CASE WHEN $2 = 'open' THEN now() END,
                    retry_at = CASE WHEN $2 = 'open' THEN now() + interval '1 hour' END WHERE partner = $1",
        )
        .bind(partner)
        .bind(state)
        .execute(&self.pool)
        .await
        .expect("circuit");
    }
}

/// The reasons recorded for the candidates passed over.
fn skipped(lead: &PartnerLead) -> Vec<(String, String)> {
    lead.routing
        .iter()
        .flat_map(|r| &r.candidates)
        .filter_map(|t| t.skipped.as_ref().map(|why| (t.partner.clone(), why.clone())))
        .collect()
}

fn plain(names: &[&str]) -> Vec<PartnerConfig> {
    names.iter().map(|n| partner(n, json!({}))).collect()
}

#[sqlx::test(migrations = false)]
async fn two_replicas_racing_a_cap_send_exactly_the_cap_and_the_rest_falls_through(pool: PgPool) {
    let mut partners = plain(&["backup", "a", "b", "sx", "sy", "sz", "early", "late", "keeper"]);
    partners.push(partner("capped", json!({ "caps": { "daily": 100 }, "timezone": "America/Chicago" })));
    let s = setup(pool, &partners).await;
    let (clock, _) = driven(Utc::now());
    s.post("cap", 1_000).await;
    s.route(vec![s.router(&clock, 25), s.router(&clock, 25)], 1_000).await;

    let capped = s.queued("capped").await;
    let backup = s.queued("backup").await;
    assert_eq!((capped.len(), backup.len()), (100, 900), "exactly the cap went to `capped`");
    assert!(capped.iter().all(|l| l.reserved_at.is_some() && l.rule.as_deref() == Some("to-capped")));
    assert!(backup.iter().all(|l| l.rule.as_deref() == Some("cap-backup")));
    assert_eq!(skipped(&backup[0]), [("capped".to_owned(), "daily cap reached".to_owned())]);
    let counted: i64 =
        sqlx::query_scalar("SELECT sum(leads)::bigint FROM cap_usage WHERE partner = 'capped' AND period = 'day'")
            .fetch_one(&s.pool)
            .await
            .expect("counter");
    assert_eq!(counted, 100);
}

#[sqlx::test(migrations = false)]
async fn a_split_of_70_30_over_1000_leads_lands_within_one(pool: PgPool) {
    let s = setup(pool, &plain(&["capped", "backup", "a", "b", "sx", "sy", "sz", "early", "late", "keeper"])).await;
    let (clock, _) = driven(Utc::now());
    s.post("split", 1_000).await;
    s.route(vec![s.router(&clock, 64), s.router(&clock, 64)], 1_000).await;
    let (a, b) = (s.queued("a").await.len() as i64, s.queued("b").await.len() as i64);
    assert_eq!(a + b, 1_000);
    assert!((a - 700).abs() <= 1 && (b - 300).abs() <= 1, "a {a}, b {b}");

    // With `a` paused, the split sends everything to `b`, and says why.
    sqlx::query("UPDATE partners SET enabled = false WHERE name = 'a'").execute(&s.pool).await.expect("pause");
    s.post("split", 20).await;
    s.route(vec![s.router(&clock, 64)], 20).await;
    let after = s.queued("b").await;
    assert_eq!((s.queued("a").await.len() as i64, after.len() as i64), (a, b + 20));
    let last = after.last().expect("a lead");
    assert_eq!(skipped(last), [("a".to_owned(), "paused".to_owned())]);
}

#[sqlx::test(migrations = false)]
async fn a_shared_lead_is_sold_to_each_partner_and_one_dedupes_it(pool: PgPool) {
    let mock = workers::mock_partner::MockPartner::start("127.0.0.1:0".parse().expect("addr")).await.expect("mock");
    let s = setup(pool, &plain(&["capped", "backup", "a", "b", "sx", "sy", "sz", "early", "late", "keeper"])).await;
    let (clock, _) = driven(Utc::now());
    // `sy` already has this person from another lead within its window.
    sqlx::query(
        "INSERT INTO leads (submission_id, partner, person_id, state, dedupe_key) VALUES ($1, 'sy', 1, 'accepted', 'a@example.com')",
    )
    .bind(Uuid::now_v7())
    .execute(&s.pool)
    .await
    .expect("an earlier lead");
    let ids = s.post("share", 1).await;
    s.route(vec![s.router(&clock, 10)], 1).await;
    for p in ["sx", "sy", "sz"] {
        let queued = s.queued(p).await;
        assert_eq!(queued.len(), 1, "{p} got the shared lead");
        assert_eq!(queued[0].rule.as_deref(), Some("share"));
    }
    // Each partner's deliver takes its copy on its own: dedupe, call, record.
    let context = workers::deliver::DeliverContext {
        pool: s.pool.clone(),
        readers: pipeline::queue::Readers::new(&s.pool),
        client: reqwest::Client::new(),
        env: Arc::new(BTreeMap::from([("PARTNER_BASE_URL".to_owned(), format!("http://{}", mock.addr()))])),
        breakers: Arc::new(workers::deliver::Breakers::new(Duration::ZERO)),
        owner: "test".to_owned(),
        clock: Arc::clone(&clock),
        claims: workers::deliver::Claims::start(&s.pool),
    };
    let mut conn = s.pool.acquire().await.expect("connection");
    let configs = pipeline::partners::load_all(&mut conn).await.expect("partners");
    for name in ["sx", "sy", "sz"] {
        let config = configs.iter().find(|c| c.name == name).expect("configured").clone();
        let queue = config.queue().expect("queue");
        let deliver = workers::deliver::Deliver::new(config, context.clone()).expect("deliver");
        let report = Consumer::new(s.pool.clone(), ConsumerConfig::new("deliver", queue).expect("config"), deliver)
            .run_once()
            .await
            .expect("deliver batch");
        assert_eq!(report.done, 1, "{name}: {report:?}");
    }
    let states: HashMap<String, String> = sqlx::query_as("SELECT partner, state FROM leads WHERE submission_id = $1")
        .bind(ids[0])
        .fetch_all(&s.pool)
        .await
        .expect("rows")
        .into_iter()
        .collect();
    assert_eq!(states["sx"], "accepted");
    assert_eq!(states["sy"], "duplicate");
    assert_eq!(states["sz"], "accepted");
    assert_eq!((mock.calls("sx"), mock.calls("sy"), mock.calls("sz")), (1, 0, 1));
    let finals = pipeline::outcome::finals(&s.pool, &ids).await.expect("finals");
    assert_eq!(finals.len(), 3, "one final state per partner it was sold to: {finals:?}");
}

#[sqlx::test(migrations = false)]
async fn a_schedule_boundary_is_crossed_under_a_driven_clock(pool: PgPool) {
    let mut partners = plain(&["capped", "backup", "a", "b", "sx", "sy", "sz", "late", "keeper"]);
    partners.push(partner(
        "early",
        json!({ "timezone": "America/Chicago", "schedule": { "hours": { "mon-fri": "08:00-18:00" } } }),
    ));
    let s = setup(pool, &partners).await;
    // Monday 2026-12-07, 17:59 in Chicago (23:59 UTC): open for one more minute.
    let (clock, millis) = driven(Utc.with_ymd_and_hms(2026, 12, 7, 23, 59, 0).single().expect("time"));
    s.post("hours", 5).await;
    s.route(vec![s.router(&clock, 10)], 5).await;
    assert_eq!((s.queued("early").await.len(), s.queued("late").await.len()), (5, 0));

    // 18:00: closed, the leads fall through to `late`.
    millis
        .store(Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).single().expect("time").timestamp_millis(), Ordering::SeqCst);
    s.post("hours", 5).await;
    s.route(vec![s.router(&clock, 10)], 5).await;
    let late = s.queued("late").await;
    assert_eq!((s.queued("early").await.len(), late.len()), (5, 5));
    assert_eq!(skipped(&late[0]), [("early".to_owned(), "closed by its schedule".to_owned())]);

    // Tuesday 08:00 in Chicago: open again.
    millis.store(
        Utc.with_ymd_and_hms(2026, 12, 8, 14, 0, 0).single().expect("time").timestamp_millis(),
        Ordering::SeqCst,
    );
    s.post("hours", 5).await;
    s.route(vec![s.router(&clock, 10)], 5).await;
    assert_eq!((s.queued("early").await.len(), s.queued("late").await.len()), (10, 5));
}

#[sqlx::test(migrations = false)]
async fn an_open_circuit_falls_through_and_back(pool: PgPool) {
    let s = setup(pool, &plain(&["capped", "backup", "a", "b", "sx", "sy", "sz", "early", "late", "keeper"])).await;
    let (clock, _) = driven(Utc::now());
    s.set_circuit("a", true).await;
    s.post("circuit", 4).await;
    s.route(vec![s.router(&clock, 10)], 4).await;
    let b = s.queued("b").await;
    assert_eq!((s.queued("a").await.len(), b.len()), (0, 4));
    assert_eq!(skipped(&b[0]), [("a".to_owned(), "circuit open".to_owned())]);
    s.set_circuit("a", false).await;
    s.post("circuit", 4).await;
    s.route(vec![s.router(&clock, 10)], 4).await;
    assert_eq!((s.queued("a").await.len(), s.queued("b").await.len()), (4, 4));
}

#[sqlx::test(migrations = false)]
async fn a_rule_that_holds_its_leads_sends_them_uncounted_to_wait_for_its_partner(pool: PgPool) {
    let mut partners = plain(&["capped", "backup", "a", "b", "sx", "sy", "sz", "early", "late"]);
    partners.push(partner("keeper", json!({ "caps": { "total": 2 } })));
    let s = setup(pool, &partners).await;
    let (clock, _) = driven(Utc::now());
    s.post("hold", 5).await;
    s.route(vec![s.router(&clock, 10)], 5).await;
    let kept = s.queued("keeper").await;
    assert_eq!((kept.len(), s.queued("backup").await.len()), (5, 0), "held, not fallen through");
    let counted = kept.iter().filter(|l| l.reserved_at.is_some()).count();
    assert_eq!(counted, 2, "the two the cap allows are counted");
    let held: Vec<&PartnerLead> = kept.iter().filter(|l| l.reserved_at.is_none()).collect();
    assert!(
        held.iter().all(|l| l
            .routing
            .as_ref()
            .and_then(|r| r.held.as_deref())
            .is_some_and(|h| h.contains("fallthrough: false")))
    );
}
