//! The identify worker against a real database: the identity rules case by case, the routing
//! message it forwards, dead letters, and two replicas racing over shared identities.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use pipeline::config::ConsumerConfig;
use pipeline::consumer::Consumer;
use pipeline::identity::PhoneRegion;
use pipeline::message::{RoutingLead, Submission};
use pipeline::queue::{self, QueueName};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use workers::identify::Identify;

type Raw<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);

fn submission(keys: Raw<'_>, submitted_at: DateTime<Utc>) -> Submission {
    let (email, full_name, phone) = keys;
    let fields = json!({ "state": "CA", "age": 29 });
    Submission {
        submission_id: Uuid::now_v7(),
        site_id: Uuid::nil(),
        site: "degreefinder".to_owned(),
        submitted_at,
        email: email.map(Into::into),
        full_name: full_name.map(Into::into),
        phone: phone.map(Into::into),
        fields: fields.as_object().cloned().unwrap_or_default(),
    }
}

async fn send(pool: &PgPool, submissions: &[Submission]) {
    let queue = QueueName::new(queue::fixed::SUBMISSIONS).expect("queue");
    let bodies: Vec<Value> = submissions.iter().map(|s| serde_json::to_value(s).expect("encodes")).collect();
    for chunk in bodies.chunks(500) {
        queue::send_batch(pool, &queue, chunk).await.expect("send");
    }
}

fn consumer(pool: &PgPool, batch_size: u32) -> Consumer<Identify> {
    let mut config = ConsumerConfig::new("identify", QueueName::new("submissions").expect("queue")).expect("config");
    config.defaults.batch_size = batch_size;
    config.defaults.visibility_timeout = Duration::from_secs(60);
    Consumer::new(pool.clone(), config, Identify::new(PhoneRegion::default()).expect("handler"))
}

/// Runs `consumer` until the submissions queue is empty.
async fn drain(consumer: &Consumer<Identify>) {
    loop {
        let report = consumer.run_once().await.expect("batch");
        assert!(!report.failed, "a batch rolled back: {report:?}");
        if report.read == 0 {
            return;
        }
    }
}

/// Every routing message, by submission id.
async fn routed(pool: &PgPool) -> HashMap<Uuid, RoutingLead> {
    let bodies: Vec<Value> = sqlx::query_scalar("SELECT message FROM pgmq.q_routing ORDER BY msg_id")
        .fetch_all(pool)
        .await
        .expect("routing queue");
    let mut leads = HashMap::new();
    for body in bodies {
        let lead: RoutingLead = serde_json::from_value(body).expect("a routing message");
        assert!(leads.insert(lead.submission_id, lead).is_none(), "a submission was routed twice");
    }
    leads
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// One submission of a case and what identify must make of it. People and aliases are named by
/// labels (`P1`, `A1`): the first time a label appears it names whatever id identify gave; later
/// appearances must be that same id.
struct Step {
    keys: Raw<'static>,
    person: &'static str,
    alias: Option<&'static str>,
}

const fn step(keys: Raw<'static>, person: &'static str, alias: Option<&'static str>) -> Step {
    Step { keys, person, alias }
}

const ANN: Raw<'static> = (Some("ann.lee@example.com"), Some("Ann Lee"), Some("415 555 2671"));

#[sqlx::test(migrations = false)]
async fn identity_rules_case_by_case(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let cases: Vec<(&str, Vec<Step>, (i64, i64))> = vec![
        ("a new person", vec![step(ANN, "P1", None)], (1, 0)),
        ("all keys equal: the same record", vec![step(ANN, "P1", None), step(ANN, "P1", None)], (1, 0)),
        (
            "two keys equal, the third different: an alias",
            vec![step(ANN, "P1", None), step((ANN.0, ANN.1, Some("415 555 2672")), "P1", Some("A1"))],
            (1, 1),
        ),
        (
            "the same variant again: the alias is reused",
            vec![
                step(ANN, "P1", None),
                step((ANN.0, Some("Annie Lee"), ANN.2), "P1", Some("A1")),
                step((ANN.0, Some("Annie Lee"), ANN.2), "P1", Some("A1")),
            ],
            (1, 1),
        ),
        (
            "only one key equal: a new person",
            vec![step(ANN, "P1", None), step((ANN.0, Some("Bob Stone"), Some("212 555 0199")), "P2", None)],
            (2, 0),
        ),
        (
            "two persons match, the one with more keys wins",
            vec![
                step(ANN, "P1", None),
                step((Some("bob@example.com"), Some("Bob Stone"), Some("212 555 0199")), "P2", None),
                step((ANN.0, ANN.1, Some("212 555 0199")), "P1", Some("A1")),
            ],
            (2, 1),
        ),
        (
            "two persons match on as many keys: the oldest wins",
            vec![
                step(ANN, "P1", None),
                step((Some("ann@work.example.com"), ANN.1, Some("646 555 0123")), "P2", None),
                step((ANN.0, ANN.1, Some("646 555 0123")), "P1", Some("A1")),
            ],
            (2, 1),
        ),
        (
            "a missing third key neither matches nor differs",
            vec![
                step(ANN, "P1", None),
                step((ANN.0, ANN.1, None), "P1", None),
                step((None, ANN.1, ANN.2), "P1", None),
                step((ANN.0, None, Some("415 555 9999")), "P2", None),
            ],
            (2, 0),
        ),
        (
            "a person first seen with two keys gains the third as an alias",
            vec![step((ANN.0, ANN.1, None), "P1", None), step(ANN, "P1", Some("A1")), step(ANN, "P1", Some("A1"))],
            (1, 1),
        ),
        (
            "keys known from different records of one person still match",
            vec![
                step(ANN, "P1", None),
                step((ANN.0, ANN.1, Some("415 555 2672")), "P1", Some("A1")),
                step((Some("ann@other.example.com"), ANN.1, Some("415 555 2672")), "P1", Some("A2")),
            ],
            (1, 2),
        ),
        (
            "normalization: case, spaces and phone formats",
            vec![
                step((Some("  Ann.Lee@Example.COM "), Some("ANN   lee"), Some("(415) 555-2671")), "P1", None),
                step((Some("ann.lee@example.com"), Some(" ann lee"), Some("+1 415.555.2671")), "P1", None),
                step((Some("ANN.LEE@EXAMPLE.COM"), Some("Ann Lee"), Some("1-415-555-2671")), "P1", None),
            ],
            (1, 0),
        ),
        (
            "normalization: Unicode names (composed, decomposed, full-width, case)",
            vec![
                step((Some("jose@example.com"), Some("José García"), None), "P1", None),
                step((Some("jose@example.com"), Some("JOSE\u{301} GARCI\u{301}A"), None), "P1", None),
                step(
                    (Some("JOSE@example.com"), Some("ＪＯＳＥ\u{301}  garcía"), Some("415 555 2671")),
                    "P1",
                    Some("A1"),
                ),
            ],
            (1, 1),
        ),
    ];

    let submitted_at = Utc.with_ymd_and_hms(2026, 11, 24, 15, 30, 0).single().expect("a time");
    for (name, steps, (mains, aliases)) in cases {
        sqlx::query("TRUNCATE persons RESTART IDENTITY CASCADE").execute(&pool).await.expect("reset");
        sqlx::query("DELETE FROM pgmq.q_routing").execute(&pool).await.expect("reset");
        let worker = consumer(&pool, 10);
        let mut labels: HashMap<&str, i64> = HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            // One submission at a time, so each step sees the ones before it committed.
            let s = submission(step.keys, submitted_at);
            send(&pool, std::slice::from_ref(&s)).await;
            drain(&worker).await;
            let lead = routed(&pool).await.remove(&s.submission_id).expect("routed");
            let mut check = |label: &'static str, id: i64| {
                let known = *labels.entry(label).or_insert(id);
                assert_eq!(known, id, "{name}, step {}: {label} is {known}, got {id}", i + 1);
            };
            check(step.person, lead.person_id);
            match (step.alias, lead.alias_id) {
                (Some(label), Some(id)) => check(label, id),
                (None, None) => {}
                (want, got) => panic!("{name}, step {}: alias {want:?} expected, got {got:?}", i + 1),
            }
        }
        let got = (
            count(&pool, "SELECT count(*) FROM persons WHERE alias_of IS NULL").await,
            count(&pool, "SELECT count(*) FROM persons WHERE alias_of IS NOT NULL").await,
        );
        assert_eq!(got, (mains, aliases), "{name}: (main records, aliases)");
    }
}

#[sqlx::test(migrations = false)]
async fn the_routing_message_has_ids_and_derived_fields_and_no_personal_data(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    sqlx::query("UPDATE rule_set SET timezone = 'America/New_York'").execute(&pool).await.expect("timezone");
    // 2026-11-24 15:30 UTC is 10:30 on a Tuesday in New York.
    let at = Utc.with_ymd_and_hms(2026, 11, 24, 15, 30, 0).single().expect("a time");
    let s = submission((Some("Ann.Lee@Example.COM"), Some("Ann Lee"), Some("415 555 2671")), at);
    send(&pool, std::slice::from_ref(&s)).await;
    drain(&consumer(&pool, 10)).await;

    let lead = routed(&pool).await.remove(&s.submission_id).expect("routed");
    let person: (i64, String, String, String) =
        sqlx::query_as("SELECT id, email, full_name, phone FROM persons").fetch_one(&pool).await.expect("person");
    assert_eq!(person, (lead.person_id, "ann.lee@example.com".into(), "ann lee".into(), "+14155552671".into()));
    assert_eq!(lead.alias_id, None);
    assert_eq!(lead.site, "degreefinder");
    assert_eq!(
        Value::Object(lead.fields.clone()),
        json!({
            "state": "CA", "age": 29, "site": "degreefinder", "email_domain": "example.com",
            "submitted_hour": 10, "submitted_weekday": "tue"
        })
    );
    let text: String =
        sqlx::query_scalar("SELECT message::text FROM pgmq.q_routing").fetch_one(&pool).await.expect("raw");
    for personal in ["ann.lee", "Ann Lee", "ann lee", "2671"] {
        assert!(!text.to_lowercase().contains(&personal.to_lowercase()), "`{personal}` leaked into {text}");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_submissions").await, 0, "submission not deleted");
}

#[sqlx::test(migrations = false)]
async fn a_submission_that_cannot_be_identified_is_dead_lettered(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let at = Utc::now();
    let good = submission(ANN, at);
    let one_key = submission((Some("solo@example.com"), None, None), at);
    let bad_phone = submission((Some("ann@example.com"), Some("Ann"), Some("12")), at);
    send(&pool, &[good.clone(), one_key.clone(), bad_phone.clone()]).await;
    drain(&consumer(&pool, 10)).await;

    assert_eq!(routed(&pool).await.keys().copied().collect::<Vec<_>>(), [good.submission_id]);
    let letters: Vec<Value> = sqlx::query_scalar("SELECT message FROM pgmq.q_submissions_dlq ORDER BY msg_id")
        .fetch_all(&pool)
        .await
        .expect("dlq");
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["message"]["submission_id"], json!(one_key.submission_id));
    assert!(letters[0]["error"].as_str().is_some_and(|e| e.contains("fewer than two identity keys")), "{}", letters[0]);
    assert_eq!(letters[1]["message"]["submission_id"], json!(bad_phone.submission_id));
    assert!(letters[1]["error"].as_str().is_some_and(|e| e.contains("phone")), "{}", letters[1]);
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_submissions").await, 0);
}

/// 2,000 submissions of 400 people. Each person's submissions agree on email and name (in
/// varying spellings) and use one of three phones; people overlap in ways that must not join
/// them: pairs share a phone (a household), and person `i` shares a name with `i + 200`. So the
/// right grouping does not depend on the order submissions are handled in.
fn crowd() -> Vec<Submission> {
    let at = Utc::now();
    let mut rng = 0x5EED_u64;
    let mut next = move || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) as usize
    };
    let first = ["Ann", "Bob", "Chloé", "Dmitri", "Eve", "Fatima", "Gus", "Hana", "Ivan", "Jo"];
    (0..2_000)
        .map(|n| {
            let person = next() % 400;
            let name = format!("{} Person{}", first[person % 10], person % 200);
            let name = match next() % 3 {
                0 => name.to_uppercase(),
                1 => format!("  {}", name.replace(' ', "   ")),
                _ => name,
            };
            let email = format!("user{person}@example.com");
            let email = if next() % 2 == 0 { email.to_uppercase() } else { format!(" {email} ") };
            // a household phone shared by persons 2k and 2k+1, or one of the person's own two
            let phone = match next() % 4 {
                0 => Some(format!("(415) 555-{:04}", person / 2)),
                1 => Some(format!("212 555 {:04}", person)),
                2 => Some(format!("+1 646-555-{:04}", person)),
                _ => None,
            };
            let mut s = submission((None, None, None), at);
            s.email = Some(email);
            s.full_name = Some(name);
            s.phone = phone;
            s.fields.insert("n".to_owned(), json!(n));
            s
        })
        .collect()
}

/// Submission ids grouped by the person identify gave them.
fn grouping(leads: &HashMap<Uuid, RoutingLead>) -> BTreeSet<BTreeSet<Uuid>> {
    let mut groups: HashMap<i64, BTreeSet<Uuid>> = HashMap::new();
    for lead in leads.values() {
        groups.entry(lead.person_id).or_default().insert(lead.submission_id);
    }
    groups.into_values().collect()
}

#[sqlx::test(migrations = false)]
async fn two_replicas_group_like_one_and_never_duplicate_a_person(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let submissions = crowd();
    let people: BTreeSet<&str> = submissions.iter().filter_map(|s| s.email.as_deref()).map(str::trim).collect();
    assert!(people.len() > 390, "the crowd should cover nearly all 400 people");

    send(&pool, &submissions).await;
    drain(&consumer(&pool, 50)).await;
    let single = routed(&pool).await;
    assert_eq!(single.len(), submissions.len());
    let expected = grouping(&single);

    sqlx::query("TRUNCATE persons RESTART IDENTITY CASCADE").execute(&pool).await.expect("reset");
    sqlx::query("DELETE FROM pgmq.q_routing").execute(&pool).await.expect("reset");
    send(&pool, &submissions).await;
    let (a, b) = (Arc::new(consumer(&pool, 50)), Arc::new(consumer(&pool, 50)));
    let runs = [a, b].map(|c| tokio::spawn(async move { drain(&c).await }));
    for run in runs {
        run.await.expect("replica");
    }

    let double = routed(&pool).await;
    assert_eq!(double.len(), submissions.len(), "exactly one routing message per submission");
    assert_eq!(grouping(&double), expected, "two replicas grouped differently from one");
    assert_eq!(expected.len() as i64, count(&pool, "SELECT count(*) FROM persons WHERE alias_of IS NULL").await);
    let duplicated_mains = count(
        &pool,
        "SELECT count(*) FROM (SELECT email, full_name FROM persons WHERE alias_of IS NULL
         GROUP BY email, full_name HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(duplicated_mains, 0, "two main records for one person");
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_submissions_dlq").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_submissions").await, 0);
}
