//! Where leads ended (`pipeline::outcome`) read from the real tables and queues: delivery rows
//! in every state, an unmatched lead, a partner DLQ letter merged into its `failed` row, a
//! routing DLQ letter with no row, a lead still on its way (no final state), and the operator
//! summary's counts, circuits and queue depths.

use chrono::{Duration, Utc};
use pipeline::consumer::DeadLetter;
use pipeline::outcome::{self, FinalState};
use pipeline::queue::{self, QueueName};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn letter(message: serde_json::Value, queue: &str, error: &str) -> DeadLetter {
    DeadLetter {
        message,
        error: error.to_owned(),
        attempts: 3,
        worker: "test".to_owned(),
        queue: queue.to_owned(),
        msg_id: 1,
        enqueued_at: Utc::now(),
        failed_at: Utc::now(),
    }
}

#[sqlx::test(migrations = false)]
async fn every_final_state_is_found_once_and_summarized(pool: PgPool) {
    let pgmq = pipeline::db::migrate(&pool).await.expect("migrate");
    let (person, tree) = crate::lead_fixture(&pool).await;
    let ids: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    for (id, state) in ids.iter().zip(["accepted", "rejected", "duplicate", "failed", "pending"]) {
        sqlx::query(
            "INSERT INTO leads (submission_id, partner, person_id, state, dedupe_key, error)
             VALUES ($1, 'school_a', $2, $3, 'a@x.com', CASE WHEN $3 = 'failed' THEN 'HTTP 500' END)",
        )
        .bind(id)
        .bind(person)
        .bind(state)
        .execute(&pool)
        .await
        .expect("lead");
    }
    sqlx::query(
        "INSERT INTO unmatched_leads (submission_id, person_id, site, tree_version, fields, submitted_at)
         VALUES ($1, $2, 'degreefinder', $3, '{}', now())",
    )
    .bind(ids[5])
    .bind(person)
    .bind(tree)
    .execute(&pool)
    .await
    .expect("unmatched");
    let mut conn = pool.acquire().await.expect("connection");
    let school_a = QueueName::partner("school_a").expect("name");
    queue::create_with_dead_letter_queue(&mut conn, &school_a).await.expect("partner queues");
    let partner_dlq = school_a.dead_letter_queue().expect("dlq");
    let routing_dlq = QueueName::new("routing_dlq").expect("name");
    // The failed delivery's letter, a routing letter, and a partner letter with no delivery row
    // (a message deliver could not decode).
    let failed = letter(json!({ "submission_id": ids[3], "route": "school_a" }), "partner_school_a", "gave up");
    let routing = letter(json!({ "submission_id": ids[6] }), "routing", "no module");
    let undecodable = letter(json!({ "submission_id": ids[7], "bad": true }), "partner_school_a", "cannot decode");
    queue::send(&pool, &partner_dlq, &failed).await.expect("send");
    queue::send(&pool, &partner_dlq, &undecodable).await.expect("send");
    queue::send(&pool, &routing_dlq, &routing).await.expect("send");
    // A letter whose message has no valid submission id does not stop the others being found.
    let garbage = letter(json!({ "submission_id": "not-a-uuid" }), "routing", "cannot decode");
    queue::send(&pool, &routing_dlq, &garbage).await.expect("send");
    // A lead on its way, in a partner queue.
    queue::send(&pool, &school_a, &json!({ "submission_id": Uuid::new_v4() })).await.expect("send");

    let mut finals = outcome::finals(&pool, &ids).await.expect("finals");
    finals.sort_by_key(|f| ids.iter().position(|id| *id == f.submission_id));
    let found: Vec<_> = finals
        .iter()
        .map(|f| (f.submission_id, f.partner.as_deref(), f.state, f.queue.as_deref(), f.error.as_deref()))
        .collect();
    assert_eq!(
        found,
        [
            (ids[0], Some("school_a"), FinalState::Accepted, None, None),
            (ids[1], Some("school_a"), FinalState::Rejected, None, None),
            (ids[2], Some("school_a"), FinalState::Duplicate, None, None),
            (ids[3], Some("school_a"), FinalState::Failed, Some("partner_school_a_dlq"), Some("HTTP 500")),
            // ids[4] is pending: no final state yet.
            (ids[5], None, FinalState::Unmatched, None, None),
            (ids[6], None, FinalState::DeadLettered, Some("routing_dlq"), Some("no module")),
            (ids[7], Some("school_a"), FinalState::DeadLettered, Some("partner_school_a_dlq"), Some("cannot decode")),
        ]
    );
    assert!(outcome::finals(&pool, &[Uuid::new_v4()]).await.expect("finals").is_empty());

    sqlx::query(
        "INSERT INTO circuit_breakers (partner, state, opened_at, retry_at) VALUES ('school_b', 'open', now(), now())",
    )
    .execute(&pool)
    .await
    .expect("breaker");
    let summary = outcome::summary(&pool, &pgmq, None).await.expect("summary");
    let partners: Vec<_> = summary.partners.iter().map(|p| (p.partner.as_str(), p.circuit.as_str())).collect();
    assert_eq!(partners, [("school_a", "closed"), ("school_b", "open")]);
    let counts: Vec<_> = summary.partners[0].leads.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(counts, [("accepted", 1), ("duplicate", 1), ("failed", 1), ("pending", 1), ("rejected", 1)]);
    assert!(summary.partners[1].leads.is_empty());
    assert_eq!(summary.unmatched, 1);
    assert_eq!((summary.in_flight(), summary.dead_lettered()), (1, 4));
    // Only what was created since a moment counts.
    let later = outcome::summary(&pool, &pgmq, Some(Utc::now() + Duration::seconds(5))).await.expect("summary");
    assert!(later.partners[0].leads.is_empty());
    assert_eq!(later.unmatched, 0);
}
