//! The deliver worker against a real database and real HTTP (the mock partner): every answer
//! and its recorded state, dedupe within and after the window, retries then success, retries
//! exhausted into the DLQ with the circuit opened, timeouts, Retry-After, the circuit (no calls
//! while open, exactly one probe across two workers, closing on success), two workers racing on
//! duplicate leads, a crash between the call and the commit (the call repeated once, and the
//! dedupe key still claimed against another lead meanwhile), and a batch whose new lead comes
//! before a redelivered one with the same key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pipeline::config::ConsumerConfig;
use pipeline::consumer::{Consumer, Envelope, Handler};
use pipeline::message::{PartnerLead, RoutingLead};
use pipeline::partners::{PartnerConfig, RequestTemplate};
use pipeline::queue::{self, QueueName};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use workers::deliver::{Breakers, Deliver, DeliverContext};
use workers::mock_partner::{Behaviour, MockPartner};

const ROUTE: &str = "acme";

fn partner(max_retries: u32, timeout_ms: u32) -> PartnerConfig {
    let request = RequestTemplate {
        method: "POST".to_owned(),
        url: format!("{{{{ env.PARTNER_BASE_URL }}}}/partners/{ROUTE}/leads"),
        headers: BTreeMap::from([("Authorization".to_owned(), "Bearer {{ env.PARTNER_TOKEN }}".to_owned())]),
        encoding: "json".to_owned(),
        body: json!({ "email": "{{ person.email }}", "state": "{{ lead.fields.state }}", "id": "{{ lead.submission_id }}" }),
    };
    PartnerConfig {
        timeout_ms,
        // The mock says "rejected" in a 200's body.
        classify: vec![pipeline::partners::Classify {
            status: vec![200],
            body_regex: None,
            json: Some(pipeline::partners::JsonMatch { pointer: "/status".to_owned(), equals: json!("rejected") }),
            verdict: pipeline::partners::Verdict::Rejected,
        }],
        max_retries,
        backoff_base_ms: 0,
        backoff_cap_ms: 0,
        breaker: pipeline::partners::Breaker { consecutive_failures: 3, open_secs: 60, ..Default::default() },
        ..PartnerConfig::new(ROUTE, request)
    }
}

struct Setup {
    pool: PgPool,
    mock: MockPartner,
    context: DeliverContext,
    config: PartnerConfig,
}

async fn setup(pool: PgPool, config: PartnerConfig) -> Setup {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let mut conn = pool.acquire().await.expect("connection");
    pipeline::partners::apply(&mut conn, &config).await.expect("partner");
    let mock = MockPartner::start("127.0.0.1:0".parse().expect("addr")).await.expect("mock");
    let env = BTreeMap::from([
        ("PARTNER_BASE_URL".to_owned(), format!("http://{}", mock.addr())),
        ("PARTNER_TOKEN".to_owned(), "s3cret".to_owned()),
    ]);
    let context = DeliverContext {
        pool: pool.clone(),
        readers: pipeline::queue::Readers::new(&pool),
        client: reqwest::Client::new(),
        env: Arc::new(env),
        breakers: Arc::new(Breakers::new(Duration::ZERO)),
        owner: "test".to_owned(),
        clock: pipeline::distribution::system_clock(),
        claims: workers::deliver::Claims::start(&pool),
    };
    Setup { pool, mock, context, config }
}

impl Setup {
    fn consumer(&self) -> Consumer<Deliver> {
        let mut config = ConsumerConfig::new("deliver", self.config.queue().expect("queue")).expect("config");
        config.max_retries = 1_000;
        config.defaults.batch_size = 10;
        Consumer::new(
            self.pool.clone(),
            config,
            Deliver::new(self.config.clone(), self.context.clone()).expect("deliver"),
        )
        .with_readers(&self.context.readers)
    }

    /// The breaker's counts: (state, consecutive failures, window successes, window failures).
    async fn breaker(&self) -> (String, i32, i32, i32) {
        sqlx::query_as(
            "SELECT state, consecutive_failures, window_successes, window_failures FROM circuit_breakers
             WHERE partner = 'acme'",
        )
        .fetch_one(&self.pool)
        .await
        .expect("breaker")
    }

    /// A lead of a new person with `email`; returns its submission id.
    async fn lead(&self, email: &str) -> Uuid {
        let person: i64 = sqlx::query_scalar("INSERT INTO persons (email, full_name) VALUES ($1, 'x') RETURNING id")
            .bind(email)
            .fetch_one(&self.pool)
            .await
            .expect("person");
        let lead = PartnerLead {
            lead: RoutingLead {
                submission_id: Uuid::now_v7(),
                site: "degreefinder".to_owned(),
                person_id: person,
                alias_id: None,
                submitted_at: Utc::now(),
                fields: json!({ "state": "CA" }).as_object().cloned().unwrap_or_default(),
            },
            route: ROUTE.to_owned(),
            rule: Some("r1".to_owned()),
            tree_version: 1,
            routing: None,
            reserved_at: None,
        };
        // tree_version references decision_trees: a stored (inactive) tree row.
        sqlx::query("INSERT INTO decision_trees (version, rules_version, report) OVERRIDING SYSTEM VALUE VALUES (1, 1, '{}') ON CONFLICT DO NOTHING")
            .execute(&self.pool)
            .await
            .expect("tree");
        queue::send(&self.pool, &self.config.queue().expect("queue"), &lead).await.expect("send");
        lead.lead.submission_id
    }

    async fn state(&self, id: Uuid) -> (String, i32, Option<i32>) {
        sqlx::query_as("SELECT state, attempts, response_status FROM leads WHERE submission_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("leads row")
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.expect(sql)
    }

    /// The queued message of lead `id`, as a batch hands it to the handler.
    async fn envelope(&self, id: Uuid) -> Envelope<PartnerLead> {
        let (msg_id, message): (i64, Value) = sqlx::query_as(
            "SELECT msg_id, message FROM pgmq.q_partner_acme WHERE (message->>'submission_id')::uuid = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .expect("message");
        Envelope { msg_id, attempt: 1, enqueued_at: Utc::now(), body: serde_json::from_value(message).expect("lead") }
    }

    /// Runs `consumer` until a read finds nothing visible.
    async fn drain(&self, consumer: &Consumer<Deliver>) {
        for _ in 0..50 {
            if consumer.run_once().await.expect("batch").read == 0 {
                return;
            }
        }
        panic!("the queue did not drain");
    }
}

#[sqlx::test(migrations = false)]
async fn each_answer_ends_in_its_state(pool: PgPool) {
    let s = setup(pool, partner(0, 2_000)).await;
    let consumer = s.consumer();
    let cases = [
        (Behaviour::Accept, "accepted", Some(200)),
        (Behaviour::Reject, "rejected", Some(200)),
        (Behaviour::Duplicate, "duplicate", Some(409)),
    ];
    for (i, (behaviour, state, status)) in cases.into_iter().enumerate() {
        s.mock.set(ROUTE, behaviour);
        let id = s.lead(&format!("p{i}@example.com")).await;
        s.drain(&consumer).await;
        assert_eq!(s.state(id).await, (state.to_owned(), 1, status), "{state}");
    }
    // The request as configured: template, secret from the environment, idempotency key.
    let request = s.mock.requests(ROUTE).pop().expect("a request");
    assert_eq!(request.headers.get("authorization").map(String::as_str), Some("Bearer s3cret"));
    let body: Value = serde_json::from_str(&request.body).expect("JSON body");
    assert_eq!((body["email"].as_str(), body["state"].as_str()), (Some("p2@example.com"), Some("CA")));
    assert!(request.headers.get("idempotency-key").is_some_and(|k| k.ends_with(":acme")));
    let stored: String =
        sqlx::query_scalar("SELECT request::text FROM partners").fetch_one(&s.pool).await.expect("row");
    assert!(!stored.contains("s3cret"), "a secret was stored");
    assert_eq!(s.count("SELECT count(*) FROM pgmq.q_partner_acme").await, 0);
    // Each decision counted on the breaker, with its batch.
    assert_eq!(s.breaker().await, ("closed".to_owned(), 0, 3, 0));
}

#[sqlx::test(migrations = false)]
async fn dedupe_within_the_window_and_not_after(pool: PgPool) {
    let s = setup(pool, partner(0, 2_000)).await;
    let consumer = s.consumer();
    let first = s.lead("ann@example.com").await;
    let again = s.lead("ann@example.com").await;
    s.drain(&consumer).await;
    assert_eq!(s.state(first).await.0, "accepted");
    assert_eq!(s.state(again).await, ("duplicate".to_owned(), 0, None));
    assert_eq!(s.mock.calls(ROUTE), 1);

    sqlx::query("UPDATE leads SET request_date = now() - interval '31 days'").execute(&s.pool).await.expect("age");
    let later = s.lead("ann@example.com").await;
    s.drain(&consumer).await;
    assert_eq!(s.state(later).await.0, "accepted");
    assert_eq!(s.mock.calls(ROUTE), 2);
}

#[sqlx::test(migrations = false)]
async fn retryable_errors_then_success_and_a_permanent_failure(pool: PgPool) {
    let s = setup(pool, partner(3, 2_000)).await;
    let consumer = s.consumer();
    s.mock.set(
        ROUTE,
        Behaviour::Sequence { steps: vec![Behaviour::ServerError, Behaviour::ServerError, Behaviour::Accept] },
    );
    let id = s.lead("bob@example.com").await;
    s.drain(&consumer).await;
    assert_eq!(s.state(id).await, ("accepted".to_owned(), 3, Some(200)));
    assert_eq!(s.mock.idempotency_keys(ROUTE).values().copied().collect::<Vec<_>>(), [3], "one key for every attempt");
    assert_eq!(s.breaker().await, ("closed".to_owned(), 0, 1, 2), "two failures, then a success resets the run");
}

#[sqlx::test(migrations = false)]
async fn exhausted_retries_go_to_the_dlq_and_open_the_circuit_which_blocks_calls(pool: PgPool) {
    let s = setup(pool, partner(1, 2_000)).await;
    let consumer = s.consumer();
    s.mock.set(ROUTE, Behaviour::ServerError);
    let id = s.lead("cy@example.com").await;
    s.drain(&consumer).await;
    assert_eq!(s.state(id).await, ("failed".to_owned(), 2, Some(500)));
    let letter: Value =
        sqlx::query_scalar("SELECT message FROM pgmq.q_partner_acme_dlq").fetch_one(&s.pool).await.expect("dlq");
    assert!(letter["error"].as_str().is_some_and(|e| e.contains("gave up after 2 attempts")), "{letter}");
    let (state, retry_in): (String, f64) = sqlx::query_as(
        "SELECT state, extract(epoch FROM retry_at - now())::float8 FROM circuit_breakers WHERE partner = 'acme'",
    )
    .fetch_one(&s.pool)
    .await
    .expect("breaker");
    assert_eq!(state, "open");
    assert!(retry_in > 50.0, "retry in {retry_in} s");

    // While open, nothing is read and the partner gets no call.
    s.mock.set(ROUTE, Behaviour::Accept);
    let calls = s.mock.calls(ROUTE);
    let waiting = [s.lead("d1@example.com").await, s.lead("d2@example.com").await, s.lead("d3@example.com").await];
    s.context.breakers.reload(&s.pool).await.expect("reload");
    for _ in 0..3 {
        assert_eq!(consumer.run_once().await.expect("batch").read, 0);
    }
    assert_eq!(s.mock.calls(ROUTE), calls, "calls while the circuit was open");

    // Retry time reached: two workers, exactly one probe; it succeeds and closes the circuit.
    // The second worker tries, with a lead of its own, while the first one's probe is in
    // flight (it takes 1.5 s): had it tried after the probe closed the circuit, sending would
    // be right.
    sqlx::query("UPDATE circuit_breakers SET retry_at = now()").execute(&s.pool).await.expect("due");
    s.context.breakers.reload(&s.pool).await.expect("reload");
    s.mock.set(ROUTE, Behaviour::Slow { delay_ms: 1_500 });
    let other = s.consumer();
    let second = async {
        for _ in 0..500 {
            let state: String =
                sqlx::query_scalar("SELECT state FROM circuit_breakers").fetch_one(&s.pool).await.expect("breaker");
            if state == "half_open" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let late = s.lead("d4@example.com").await;
        s.context.breakers.reload(&s.pool).await.expect("reload");
        (other.run_once().await, late)
    };
    let (a, (b, late)) = tokio::join!(consumer.run_once(), second);
    a.expect("batch");
    b.expect("batch");
    assert_eq!(s.mock.calls(ROUTE), calls + 1, "exactly one probe");
    s.mock.set(ROUTE, Behaviour::Accept);
    let state: String =
        sqlx::query_scalar("SELECT state FROM circuit_breakers").fetch_one(&s.pool).await.expect("breaker");
    assert_eq!(state, "closed");
    tokio::time::sleep(Duration::from_millis(600)).await; // the deferred leads become visible again
    s.drain(&consumer).await;
    for id in waiting.into_iter().chain([late]) {
        assert_eq!(s.state(id).await.0, "accepted");
    }
}

#[sqlx::test(migrations = false)]
async fn timeouts_and_retry_after(pool: PgPool) {
    let s = setup(pool, partner(2, 100)).await;
    let consumer = s.consumer();
    s.mock.set(ROUTE, Behaviour::Slow { delay_ms: 1_000 });
    let slow = s.lead("slow@example.com").await;
    consumer.run_once().await.expect("batch");
    let error: String = sqlx::query_scalar("SELECT error FROM leads WHERE submission_id = $1")
        .bind(slow)
        .fetch_one(&s.pool)
        .await
        .expect("row");
    assert!(error.contains("timed out"), "{error}");
    sqlx::query("DELETE FROM pgmq.q_partner_acme").execute(&s.pool).await.expect("clear");

    s.mock.set(ROUTE, Behaviour::TooManyRequests { retry_after_secs: 5 });
    let limited = s.lead("busy@example.com").await;
    consumer.run_once().await.expect("batch");
    assert_eq!(s.state(limited).await, ("pending".to_owned(), 1, Some(429)));
    let wait: f64 = sqlx::query_scalar("SELECT extract(epoch FROM vt - now())::float8 FROM pgmq.q_partner_acme")
        .fetch_one(&s.pool)
        .await
        .expect("vt");
    assert!(wait > 4.0, "Retry-After not honoured: visible again in {wait} s");
}

#[sqlx::test(migrations = false)]
async fn two_workers_racing_on_duplicates_deliver_each_key_once(pool: PgPool) {
    let s = setup(pool, partner(0, 2_000)).await;
    for i in 0..60 {
        s.lead(&format!("k{}@example.com", i % 12)).await;
    }
    let (a, b) = (s.consumer(), s.consumer());
    let ((), ()) = tokio::join!(s.drain(&a), s.drain(&b));
    assert_eq!(s.mock.calls(ROUTE), 12, "one call per dedupe key");
    assert_eq!(s.count("SELECT count(*) FROM leads WHERE state = 'accepted'").await, 12);
    assert_eq!(s.count("SELECT count(*) FROM leads WHERE state = 'duplicate'").await, 48);
}

#[sqlx::test(migrations = false)]
async fn a_crash_between_call_and_commit_repeats_the_call_once_with_the_same_key(pool: PgPool) {
    let s = setup(pool, partner(0, 2_000)).await;
    let id = s.lead("crash@example.com").await;
    // The worker's batch: read, handle (the call is made), then it dies before committing.
    let handler = Deliver::new(s.config.clone(), s.context.clone()).expect("deliver");
    let message: Value =
        sqlx::query_scalar("SELECT message FROM pgmq.q_partner_acme").fetch_one(&s.pool).await.expect("message");
    let envelope = Envelope {
        msg_id: 1,
        attempt: 1,
        enqueued_at: Utc::now(),
        body: serde_json::from_value(message).expect("lead"),
    };
    let mut tx = s.pool.begin().await.expect("tx");
    handler.handle(&mut tx, &[envelope]).await.expect("handled");
    drop(tx); // rolled back: the row stays `pending` (claimed before the call), the message queued

    s.drain(&s.consumer()).await;
    assert_eq!(s.state(id).await, ("accepted".to_owned(), 1, Some(200)));
    assert_eq!(s.mock.idempotency_keys(ROUTE).values().copied().collect::<Vec<_>>(), [2], "one repeat, same key");
}

#[sqlx::test(migrations = false)]
async fn a_permanent_error_is_not_retried(pool: PgPool) {
    let mut config = partner(3, 2_000);
    // This partner answers 500 to leads it will never take: classified permanent.
    config.classify.insert(
        0,
        pipeline::partners::Classify {
            status: vec![500],
            body_regex: None,
            json: None,
            verdict: pipeline::partners::Verdict::Permanent,
        },
    );
    let s = setup(pool, config).await;
    s.mock.set(ROUTE, Behaviour::ServerError);
    let id = s.lead("never@example.com").await;
    s.drain(&s.consumer()).await;
    assert_eq!(s.state(id).await, ("failed".to_owned(), 1, Some(500)));
    assert_eq!(s.mock.calls(ROUTE), 1, "a permanent error is not retried");
    assert_eq!(s.count("SELECT count(*) FROM pgmq.q_partner_acme_dlq").await, 1);
    let state: String =
        sqlx::query_scalar("SELECT state FROM circuit_breakers").fetch_one(&s.pool).await.expect("breaker");
    assert_eq!(state, "closed", "a bad lead is not a failing partner");
}

#[sqlx::test(migrations = false)]
async fn a_crash_between_call_and_commit_keeps_the_dedupe_key_claimed(pool: PgPool) {
    let s = setup(pool, partner(0, 2_000)).await;
    let first = s.lead("same@example.com").await;
    // The first lead is called, and its worker dies before committing.
    let handler = Deliver::new(s.config.clone(), s.context.clone()).expect("deliver");
    let envelope = s.envelope(first).await;
    let mut tx = s.pool.begin().await.expect("tx");
    handler.handle(&mut tx, std::slice::from_ref(&envelope)).await.expect("handled");
    drop(tx);
    // Before its message reappears (its visibility timeout), another lead with the same key
    // comes: the partner already has the key (the first call reached it), so this one is a
    // duplicate, not a second delivery.
    let hide = "UPDATE pgmq.q_partner_acme SET vt = now() + make_interval(secs => $2) WHERE msg_id = $1";
    sqlx::query(hide).bind(envelope.msg_id).bind(60.0).execute(&s.pool).await.expect("invisible");
    let second = s.lead("same@example.com").await;
    s.drain(&s.consumer()).await;
    sqlx::query(hide).bind(envelope.msg_id).bind(0.0).execute(&s.pool).await.expect("visible");
    s.drain(&s.consumer()).await;
    assert_eq!(s.state(first).await, ("accepted".to_owned(), 1, Some(200)));
    assert_eq!(s.state(second).await.0, "duplicate");
    let keys: Vec<String> = s.mock.idempotency_keys(ROUTE).into_keys().collect();
    assert_eq!(keys, [format!("{first}:{ROUTE}")], "the partner received the key with one lead only");
}

#[sqlx::test(migrations = false)]
async fn a_redelivered_lead_claims_its_key_wherever_it_stands_in_the_batch(pool: PgPool) {
    let s = setup(pool, partner(3, 2_000)).await;
    let handler = Deliver::new(s.config.clone(), s.context.clone()).expect("deliver");
    // The first lead is tried once and left `pending` for a retry (its message stays queued).
    s.mock.set(ROUTE, Behaviour::ServerError);
    let first = s.lead("same@example.com").await;
    let mut tx = s.pool.begin().await.expect("tx");
    handler.handle(&mut tx, &[s.envelope(first).await]).await.expect("handled");
    tx.commit().await.expect("commit");
    assert_eq!(s.state(first).await.0, "pending");
    // A new lead with the same key, and a batch that holds it before the retried one
    // (`pgmq.read` does not return a batch in queue order).
    s.mock.set(ROUTE, Behaviour::Accept);
    let second = s.lead("same@example.com").await;
    let mut tx = s.pool.begin().await.expect("tx");
    handler.handle(&mut tx, &[s.envelope(second).await, s.envelope(first).await]).await.expect("handled");
    tx.commit().await.expect("commit");
    assert_eq!(s.state(first).await, ("accepted".to_owned(), 2, Some(200)));
    assert_eq!(s.state(second).await.0, "duplicate");
    let keys: Vec<String> = s.mock.idempotency_keys(ROUTE).into_keys().collect();
    assert_eq!(keys, [format!("{first}:{ROUTE}")], "the partner received the key with one lead only");
}

#[sqlx::test(migrations = false)]
async fn a_replayed_letter_is_delivered_again_unless_its_key_went_elsewhere(pool: PgPool) {
    let s = setup(pool, partner(0, 2_000)).await;
    let consumer = s.consumer();
    s.mock.set(ROUTE, Behaviour::ServerError);
    let first = s.lead("first@example.com").await;
    let second = s.lead("second@example.com").await;
    s.drain(&consumer).await;
    assert_eq!(s.state(first).await.0, "failed");
    assert_eq!(s.state(second).await.0, "failed");
    // Meanwhile another lead of the second person is delivered.
    s.mock.set(ROUTE, Behaviour::Accept);
    let later = s.lead("second@example.com").await;
    // The circuit opened on the failures: let the partner be tried again at once.
    sqlx::query(
        "UPDATE circuit_breakers SET state = 'closed', opened_at = NULL, retry_at = NULL, consecutive_failures = 0",
    )
    .execute(&s.pool)
    .await
    .expect("close");
    s.context.breakers.reload(&s.pool).await.expect("breakers");
    s.drain(&consumer).await;
    assert_eq!(s.state(later).await.0, "accepted");
    let calls = s.mock.calls(ROUTE);

    let dlq = QueueName::new("partner_acme_dlq").expect("name");
    let replayed = pipeline::dlq::replay(&s.pool, &dlq, pipeline::dlq::Selection::All).await.expect("replay");
    assert_eq!(replayed.replayed, 2);
    s.drain(&consumer).await;
    assert_eq!(s.state(first).await, ("accepted".to_owned(), 1, Some(200)), "delivered with fresh attempts");
    assert_eq!(s.state(second).await.0, "duplicate", "its key went to a later lead");
    assert_eq!(s.mock.calls(ROUTE), calls + 1, "one call: the first lead's");
    assert_eq!(s.count("SELECT count(*) FROM pgmq.q_partner_acme_dlq").await, 0);
}

#[sqlx::test(migrations = false)]
async fn leads_the_router_did_not_count_are_counted_before_the_call_and_wait_while_capped(pool: PgPool) {
    let mut config = partner(3, 2_000);
    config.caps = pipeline::distribution::Limits { total: Some(2), ..Default::default() };
    let s = setup(pool, config).await;
    // Three held leads (uncounted): two fit the cap, the third waits, with no row and no call.
    let ids = [s.lead("a@x.com").await, s.lead("b@x.com").await, s.lead("c@x.com").await];
    let consumer = s.consumer();
    let report = consumer.run_once().await.expect("batch");
    assert_eq!((report.done, report.retried), (2, 1), "{report:?}");
    assert_eq!(s.mock.calls(ROUTE), 2);
    assert_eq!(s.count("SELECT count(*) FROM leads").await, 2, "the waiting lead has no row");
    assert_eq!(s.count("SELECT sum(leads)::bigint FROM cap_usage WHERE period = 'total'").await, 2);
    let waiting: Vec<Uuid> = sqlx::query_scalar("SELECT (message->>'submission_id')::uuid FROM pgmq.q_partner_acme")
        .fetch_all(&s.pool)
        .await
        .expect("queue");
    assert_eq!(waiting.len(), 1);
    assert!(ids.contains(&waiting[0]));
}

#[sqlx::test(migrations = false)]
async fn a_counted_duplicate_gives_its_count_back_and_a_closed_partner_is_not_read(pool: PgPool) {
    let mut config = partner(3, 2_000);
    config.caps = pipeline::distribution::Limits { daily: Some(10), ..Default::default() };
    let s = setup(pool, config.clone()).await;
    let first = s.lead("same@x.com").await;
    s.drain(&s.consumer()).await;
    assert_eq!(s.state(first).await.0, "accepted");
    // The router counted the second lead (same person): deliver finds it a duplicate and gives
    // the count back.
    let second = s.lead("same@x.com").await;
    let person: i64 = sqlx::query_scalar("SELECT person_id FROM leads WHERE submission_id = $1")
        .bind(first)
        .fetch_one(&s.pool)
        .await
        .expect("person");
    sqlx::query(
        "UPDATE pgmq.q_partner_acme SET message = message || jsonb_build_object('reserved_at', now(), 'person_id', $2::bigint)
         WHERE (message->>'submission_id')::uuid = $1",
    )
    .bind(second)
    .bind(person)
    .execute(&s.pool)
    .await
    .expect("counted by the router");
    sqlx::query("UPDATE cap_usage SET leads = leads + 1 WHERE period = 'day'").execute(&s.pool).await.expect("count");
    assert_eq!(s.count("SELECT leads::bigint FROM cap_usage WHERE period = 'day'").await, 2);
    s.drain(&s.consumer()).await;
    assert_eq!(s.state(second).await.0, "duplicate");
    // Given back where routers fold it in at their next lock, and the API reads it.
    let returned = "SELECT sum(leads)::bigint FROM cap_returns WHERE period = 'day'";
    assert_eq!(s.count(returned).await, 1, "given back");
    let availability = pipeline::distribution::Availability::of(&s.config).expect("settings");
    let mut conn = s.pool.acquire().await.expect("connection");
    let counts = availability.counts(&mut conn, Utc::now()).await.expect("counts");
    assert_eq!(counts[0].leads, 1, "{counts:?}");
    let ledger =
        pipeline::distribution::Ledger::lock(&mut conn, &[(&availability, None)], Utc::now()).await.expect("lock");
    assert!(ledger.room(&availability, None, Utc::now()).is_ok());
    drop(ledger);
    drop(conn);
    assert_eq!(s.count("SELECT leads::bigint FROM cap_usage WHERE period = 'day'").await, 1, "folded in by the lock");
    assert_eq!(s.count("SELECT count(*) FROM cap_returns").await, 0);

    // Closed all week: its queue is not read at all.
    config.schedule = Some(serde_json::from_value(json!({ "hours": { "daily": "closed" } })).expect("schedule"));
    let closed = Setup { config, ..s };
    let third = closed.lead("other@x.com").await;
    let report = closed.consumer().run_once().await.expect("batch");
    assert_eq!(report.read, 0, "a partner closed by its schedule is not read: {report:?}");
    let waiting: i64 = closed.count("SELECT count(*) FROM pgmq.q_partner_acme").await;
    assert_eq!(waiting, 1);
    let _ = third;
}
