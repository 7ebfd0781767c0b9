//! The lead search (`pipeline::leads::search`) on real rows: newest submission first across
//! `leads` and `unmatched_leads`, pages that continue where the last ended (also between the
//! rows of one submission), and each filter; and a dead letter an operator discarded is still
//! where its lead ended (`pipeline::outcome::finals`).

use chrono::{Duration, Utc};
use pipeline::dlq::{self, Selection};
use pipeline::leads::{self, Search, SearchState};
use pipeline::outcome::{self, FinalState};
use pipeline::queue::{self, QueueName};
use pipeline::state::DeliveryState;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// A UUIDv7 of `minutes_ago`, as the API makes them.
fn submission(minutes_ago: i64) -> Uuid {
    let at = Utc::now() - Duration::minutes(minutes_ago);
    let millis = u64::try_from(at.timestamp_millis()).expect("after 1970");
    uuid::Builder::from_unix_timestamp_millis(millis, &rand_bytes()).into_uuid()
}

fn rand_bytes() -> [u8; 10] {
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&Uuid::new_v4().as_bytes()[..10]);
    bytes
}

#[sqlx::test(migrations = false)]
async fn leads_are_found_newest_first_page_by_page_and_by_each_filter(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let (person, tree) = crate::lead_fixture(&pool).await;
    // Oldest first: a lead to school_a, one sold to both partners, an unmatched one, a failed one.
    let ids: Vec<Uuid> = [40, 30, 20, 10].into_iter().map(submission).collect();
    let rows = [
        (ids[0], "school_a", "accepted", "degreefinder"),
        (ids[1], "school_a", "accepted", "loanmatch"),
        (ids[1], "school_b", "duplicate", "loanmatch"),
        (ids[3], "school_b", "failed", "degreefinder"),
    ];
    for (id, partner, state, site) in rows {
        sqlx::query(
            "INSERT INTO leads (submission_id, partner, person_id, state, dedupe_key, site, submitted_at, tree_version)
             VALUES ($1, $2, $3, $4, 'a@x.com', $5, now(), $6)",
        )
        .bind(id)
        .bind(partner)
        .bind(person)
        .bind(state)
        .bind(site)
        .bind(tree)
        .execute(&pool)
        .await
        .expect("lead");
    }
    sqlx::query(
        "INSERT INTO unmatched_leads (submission_id, person_id, site, tree_version, fields, submitted_at)
         VALUES ($1, $2, 'degreefinder', $3, '{}', now())",
    )
    .bind(ids[2])
    .bind(person)
    .bind(tree)
    .execute(&pool)
    .await
    .expect("unmatched");
    let mut conn = pool.acquire().await.expect("connection");
    let mut find = async |search: Search| -> Vec<(Uuid, Option<String>)> {
        let page = leads::search(&mut conn, &search).await.expect("search");
        page.leads.into_iter().map(|l| (l.submission_id, l.partner)).collect()
    };
    let p = |id: Uuid, partner: &str| (id, Some(partner.to_owned()));
    let everything = vec![
        p(ids[3], "school_b"),
        (ids[2], None),
        p(ids[1], "school_b"),
        p(ids[1], "school_a"),
        p(ids[0], "school_a"),
    ];
    assert_eq!(find(Search { limit: 50, ..Search::default() }).await, everything);

    // Two at a time: the pages join up, also between the two rows of one submission.
    let mut paged = Vec::new();
    let mut after = None;
    let mut conn2 = pool.acquire().await.expect("connection");
    loop {
        let page = leads::search(&mut conn2, &Search { limit: 2, after: after.clone(), ..Search::default() })
            .await
            .expect("page");
        paged.extend(page.leads.iter().map(|l| (l.submission_id, l.partner.clone())));
        match page.next {
            Some(next) => after = Some(leads::Cursor::parse(&next.to_string()).expect("the cursor reads back")),
            None => break,
        }
    }
    assert_eq!(paged, everything);

    assert_eq!(
        find(Search { site: Some("loanmatch".into()), limit: 50, ..Search::default() }).await,
        [p(ids[1], "school_b"), p(ids[1], "school_a")]
    );
    assert_eq!(
        find(Search { partner: Some("school_b".into()), limit: 50, ..Search::default() }).await,
        [p(ids[3], "school_b"), p(ids[1], "school_b")]
    );
    let state = |s| Some(SearchState::Delivery(s));
    assert_eq!(
        find(Search { state: state(DeliveryState::Failed), limit: 50, ..Search::default() }).await,
        [p(ids[3], "school_b")]
    );
    assert_eq!(
        find(Search { state: Some(SearchState::Unmatched), limit: 50, ..Search::default() }).await,
        [(ids[2], None)]
    );
    assert_eq!(
        find(Search { submission_id: Some(ids[1]), limit: 50, ..Search::default() }).await,
        [p(ids[1], "school_b"), p(ids[1], "school_a")]
    );
    let window = Search {
        from: Some(Utc::now() - Duration::minutes(35)),
        to: Some(Utc::now() - Duration::minutes(15)),
        limit: 50,
        ..Search::default()
    };
    assert_eq!(find(window).await, [(ids[2], None), p(ids[1], "school_b"), p(ids[1], "school_a")]);
    assert_eq!(SearchState::parse("unmatched"), Some(SearchState::Unmatched));
    assert_eq!(SearchState::parse("lost"), None);
}

#[sqlx::test(migrations = false)]
async fn a_discarded_letter_is_where_its_lead_ended(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let id = Uuid::now_v7();
    let routing_dlq = QueueName::new("routing_dlq").expect("name");
    let envelope = json!({
        "message": { "submission_id": id }, "error": "no tree", "attempts": 4, "worker": "router",
        "queue": "routing", "msg_id": 7, "enqueued_at": Utc::now(), "failed_at": Utc::now(),
    });
    let msg_id = queue::send(&pool, &routing_dlq, &envelope).await.expect("send");
    let before = outcome::finals(&pool, &[id]).await.expect("finals");
    assert_eq!(before.iter().map(|f| f.state).collect::<Vec<_>>(), [FinalState::DeadLettered]);

    let done = dlq::discard(&pool, &routing_dlq, Selection::One(msg_id), "a test lead", "erin").await.expect("discard");
    assert_eq!((done.discarded, done.missing), (1, vec![]));
    let after = outcome::finals(&pool, &[id]).await.expect("finals");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].state, FinalState::DeadLettered);
    assert_eq!(after[0].error.as_deref(), Some("discarded by erin: a test lead"));
    let kept = dlq::discarded(&pool, Some(&routing_dlq), 10).await.expect("kept");
    assert_eq!((kept[0].msg_id, kept[0].message.as_ref()), (msg_id, Some(&envelope)));
}
