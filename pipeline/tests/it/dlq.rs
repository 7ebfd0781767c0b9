//! The dead-letter tools against real queues: letters made by a real consumer are listed and
//! shown, replayed one by one or all at once (back in the source queue as new messages, gone
//! from the DLQ, in one transaction), and letters that cannot be replayed stay with a reason.

use pipeline::config::ConsumerConfig;
use pipeline::consumer::{BatchReport, Consumer, Envelope, Handler, Outcome};
use pipeline::dlq::{self, Selection};
use pipeline::queue::{self, QueueName};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

/// Dead-letters every message at once, naming it in the error.
struct Refuse;

impl Handler for Refuse {
    type Message = Value;
    type Error = std::convert::Infallible;

    async fn handle(
        &self,
        _tx: &mut PgConnection,
        batch: &[Envelope<Value>],
    ) -> Result<Vec<Outcome>, std::convert::Infallible> {
        Ok(batch.iter().map(|e| Outcome::DeadLetter(format!("refused {}", e.body["n"]))).collect())
    }
}

fn name(name: &str) -> QueueName {
    QueueName::new(name).expect("valid queue name")
}

/// A migrated database with `input` and `input_dlq`, and `count` letters in `input_dlq` made
/// by a real consumer from the messages `{"n": 0}`, `{"n": 1}`, ...
async fn setup(pool: &PgPool, count: i64) {
    pipeline::db::migrate(pool).await.expect("migrate");
    let mut conn = pool.acquire().await.expect("connection");
    queue::create_with_dead_letter_queue(&mut conn, &name("input")).await.expect("input queue");
    let messages: Vec<Value> = (0..count).map(|n| json!({ "n": n })).collect();
    queue::send_batch(pool, &name("input"), &messages).await.expect("send");
    let mut config = ConsumerConfig::new("refuser", name("input")).expect("config");
    config.defaults.batch_size = 1000;
    let consumer = Consumer::new(pool.clone(), config, Refuse);
    let report = consumer.run_once().await.expect("batch");
    let expected = usize::try_from(count).expect("small");
    assert_eq!(report, BatchReport { read: expected, dead_lettered: expected, ..BatchReport::default() });
}

/// `(message, read_ct)` of every message in `table`, oldest first.
async fn contents(pool: &PgPool, table: &str) -> Vec<(Value, i32)> {
    sqlx::query_as(&format!("SELECT message, read_ct FROM pgmq.\"{table}\" ORDER BY msg_id"))
        .fetch_all(pool)
        .await
        .expect("queue contents")
}

async fn dlq_ids(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT msg_id FROM pgmq.q_input_dlq ORDER BY msg_id").fetch_all(pool).await.expect("ids")
}

#[sqlx::test(migrations = false)]
async fn letters_are_listed_oldest_first_and_shown_with_their_envelope(pool: PgPool) {
    setup(&pool, 3).await;
    queue::send(&pool, &name("input_dlq"), &json!({ "hand": "made" })).await.expect("send");

    let letters = dlq::list(&pool, &name("input_dlq"), 50).await.expect("list");
    assert_eq!(letters.len(), 4);
    assert!(letters.windows(2).all(|w| w[0].msg_id < w[1].msg_id), "oldest first");
    for (n, letter) in letters.iter().take(3).enumerate() {
        let envelope = letter.envelope.as_ref().expect("an envelope");
        assert_eq!(envelope.message, json!({ "n": n }));
        assert_eq!(envelope.error, format!("refused {n}"));
        assert_eq!((envelope.attempts, envelope.worker.as_str(), envelope.queue.as_str()), (1, "refuser", "input"));
        assert_eq!(letter.raw, serde_json::to_value(envelope).expect("encodes"));
    }
    assert_eq!((letters[3].envelope.as_ref(), &letters[3].raw), (None, &json!({ "hand": "made" })));
    assert_eq!(dlq::list(&pool, &name("input_dlq"), 2).await.expect("list").len(), 2, "limit");

    let shown = dlq::show(&pool, &name("input_dlq"), letters[1].msg_id).await.expect("show");
    assert_eq!(shown.as_ref(), Some(&letters[1]));
    assert_eq!(dlq::show(&pool, &name("input_dlq"), 999).await.expect("show"), None);

    let queues = dlq::dead_letter_queues(&pool).await.expect("queues");
    assert_eq!(queues, [(name("input_dlq"), 4), (name("routing_dlq"), 0), (name("submissions_dlq"), 0)]);
}

#[sqlx::test(migrations = false)]
async fn replaying_one_letter_sends_a_fresh_message_and_removes_the_letter(pool: PgPool) {
    setup(&pool, 3).await;
    let ids = dlq_ids(&pool).await;

    let done = dlq::replay(&pool, &name("input_dlq"), Selection::One(ids[1])).await.expect("replay");
    assert_eq!(done, dlq::Replayed { replayed: 1, ..Default::default() });
    assert_eq!(contents(&pool, "q_input").await, [(json!({ "n": 1 }), 0)], "a new message, no attempts yet");
    assert_eq!(dlq_ids(&pool).await, [ids[0], ids[2]]);

    let again = dlq::replay(&pool, &name("input_dlq"), Selection::One(ids[1])).await.expect("replay");
    assert_eq!(again, dlq::Replayed { missing: vec![ids[1]], ..Default::default() }, "gone already");
    assert_eq!(contents(&pool, "q_input").await.len(), 1, "not sent twice");
}

#[sqlx::test(migrations = false)]
async fn replaying_all_keeps_the_order_and_skips_what_does_not_belong(pool: PgPool) {
    setup(&pool, 3).await;
    let letter = |queue: &str| {
        json!({
            "message": { "from": queue }, "error": "e", "attempts": 1, "worker": "w", "queue": queue,
            "msg_id": 1, "enqueued_at": "2025-01-01T00:00:00Z", "failed_at": "2025-01-01T00:00:01Z",
        })
    };
    let strays = [json!({ "not": "an envelope" }), letter("routing"), letter("Bad-Name")];
    let stray_ids = queue::send_batch(&pool, &name("input_dlq"), &strays).await.expect("send");

    let done = dlq::replay(&pool, &name("input_dlq"), Selection::All).await.expect("replay");
    assert_eq!(done.replayed, 3);
    let skipped: Vec<i64> = done.skipped.iter().map(|(id, _)| *id).collect();
    assert_eq!(skipped, stray_ids);
    assert_eq!(done.skipped[0].1, "not a dead-letter envelope");
    assert!(done.skipped[1].1.contains("`routing`"), "{:?}", done.skipped[1]);
    assert!(done.skipped[2].1.contains("invalid queue"), "{:?}", done.skipped[2]);

    let replayed = contents(&pool, "q_input").await;
    assert_eq!(replayed, [(json!({ "n": 0 }), 0), (json!({ "n": 1 }), 0), (json!({ "n": 2 }), 0)]);
    assert_eq!(dlq_ids(&pool).await, stray_ids, "only the strays stay");
    assert!(contents(&pool, "q_routing").await.is_empty(), "never sent to another queue");
}

#[sqlx::test(migrations = false)]
async fn letters_of_a_queue_that_is_gone_stay(pool: PgPool) {
    setup(&pool, 0).await;
    sqlx::query("SELECT pgmq.create('orphan_dlq')").execute(&pool).await.expect("queue");
    let envelope = json!({
        "message": {}, "error": "e", "attempts": 1, "worker": "w", "queue": "orphan",
        "msg_id": 1, "enqueued_at": "2025-01-01T00:00:00Z", "failed_at": "2025-01-01T00:00:01Z",
    });
    let id = queue::send(&pool, &name("orphan_dlq"), &envelope).await.expect("send");
    let done = dlq::replay(&pool, &name("orphan_dlq"), Selection::All).await.expect("replay");
    assert_eq!(done.skipped, [(id, "queue `orphan` does not exist".to_owned())]);
    assert_eq!(done.replayed, 0);
    assert!(dlq::show(&pool, &name("orphan_dlq"), id).await.expect("show").is_some());
}

#[sqlx::test(migrations = false)]
async fn a_replay_is_one_transaction(pool: PgPool) {
    setup(&pool, 5).await;
    // The deletes run after the sends: failing them must take the sends back too.
    sqlx::query(
        "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'no deletes today'; END $$",
    )
    .execute(&pool)
    .await
    .expect("function");
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE DELETE ON pgmq.q_input_dlq FOR EACH ROW EXECUTE FUNCTION refuse_delete()",
    )
    .execute(&pool)
    .await
    .expect("trigger");

    let error = dlq::replay(&pool, &name("input_dlq"), Selection::All).await.expect_err("the delete fails");
    assert!(error.to_string().contains("no deletes today"), "{error}");
    assert!(contents(&pool, "q_input").await.is_empty(), "nothing sent");
    assert_eq!(dlq_ids(&pool).await.len(), 5, "nothing deleted");
}

#[sqlx::test(migrations = false)]
async fn letters_held_by_another_replay_are_skipped_and_never_sent_twice(pool: PgPool) {
    setup(&pool, 300).await;
    let ids = dlq_ids(&pool).await;

    // A letter locked by another transaction is left to it.
    let mut holder = pool.begin().await.expect("transaction");
    sqlx::query("SELECT 1 FROM pgmq.q_input_dlq WHERE msg_id = $1 FOR UPDATE")
        .bind(ids[0])
        .execute(&mut *holder)
        .await
        .expect("lock");
    let done = dlq::replay(&pool, &name("input_dlq"), Selection::One(ids[0])).await.expect("replay");
    assert_eq!(done.skipped, [(ids[0], "a concurrent replay holds it".to_owned())]);
    holder.rollback().await.expect("rollback");

    // Two replays of everything at once: each letter goes back exactly once.
    let dlq = name("input_dlq");
    let (a, b) = tokio::join!(dlq::replay(&pool, &dlq, Selection::All), dlq::replay(&pool, &dlq, Selection::All));
    let (a, b) = (a.expect("replay a"), b.expect("replay b"));
    assert_eq!(a.replayed + b.replayed, 300, "{a:?} {b:?}");
    assert!(a.skipped.is_empty() && b.skipped.is_empty());
    let mut sent: Vec<i64> = contents(&pool, "q_input")
        .await
        .into_iter()
        .map(|(message, read_ct)| {
            assert_eq!(read_ct, 0);
            message["n"].as_i64().expect("n")
        })
        .collect();
    sent.sort_unstable();
    assert_eq!(sent, (0..300).collect::<Vec<_>>());
    assert!(dlq_ids(&pool).await.is_empty(), "the DLQ is empty");
}
