//! The queue metrics read only the queues that can have changed, and every queue now and then.

use std::sync::Arc;
use std::time::Duration;

use pipeline::metrics::Registry;
use pipeline::queue::{self, QueueName};
use pipeline::wake::Wakeups;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use workers::queue_metrics::{FULL_EVERY, Sampler};

fn length(registry: &Registry, queue: &str) -> Option<i64> {
    registry.queues().into_iter().find(|q| q.queue_name == queue).map(|q| q.queue_length)
}

#[sqlx::test(migrations = false)]
async fn a_sample_reads_the_queues_sent_to_and_those_holding_messages(pool: PgPool) {
    let pgmq = pipeline::db::migrate(&pool).await.expect("migrate");
    let mut conn = pool.acquire().await.expect("connection");
    for name in ["a", "b", "c"] {
        queue::create_with_dead_letter_queue(&mut conn, &QueueName::new(name).expect("name")).await.expect("create");
    }
    let all: usize =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pgmq.meta").fetch_one(&pool).await.expect("count") as usize;
    let wakeups = Wakeups::new();
    let shutdown = CancellationToken::new();
    let listener = tokio::spawn(Arc::clone(&wakeups).listen(pool.clone(), shutdown.clone()));
    // Heard once: the listener is connected.
    let heard = wakeups.register("a");
    let a = QueueName::new("a").expect("name");
    let b = QueueName::new("b").expect("name");
    let send = |queue: QueueName| {
        let pool = pool.clone();
        async move { queue::send(&pool, &queue, &serde_json::json!({ "n": 1 })).await.expect("send") }
    };
    send(a.clone()).await;
    tokio::time::timeout(Duration::from_secs(5), heard.notified()).await.expect("the listener hears sends");
    send(a.clone()).await;

    let registry = Registry::default();
    let mut sampler = Sampler::new(pgmq, Arc::clone(&wakeups));
    assert_eq!(sampler.sample(&pool, &registry).await.expect("sample"), all, "the first sample reads every queue");
    assert_eq!(length(&registry, "a"), Some(2));
    assert_eq!(length(&registry, "b"), Some(0));

    // `a` emptied without a send, `b` sent to: both read, nothing else.
    sqlx::query("DELETE FROM pgmq.q_a").execute(&pool).await.expect("delete");
    send(b.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sampler.sample(&pool, &registry).await.expect("sample"), 2, "a (held messages) and b (sent to)");
    assert_eq!((length(&registry, "a"), length(&registry, "b")), (Some(0), Some(1)));
    assert_eq!(registry.queues().len(), all, "every queue still reported");

    // Nothing sent: only `b`, which holds a message, is read; once empty, nothing is.
    assert_eq!(sampler.sample(&pool, &registry).await.expect("sample"), 1);
    sqlx::query("DELETE FROM pgmq.q_b").execute(&pool).await.expect("delete");
    assert_eq!(sampler.sample(&pool, &registry).await.expect("sample"), 1);
    assert_eq!(length(&registry, "b"), Some(0));

    // A message sent by something that does not notify is found by the next full sample.
    sqlx::query("SELECT pgmq.send('c', '{}'::jsonb)").execute(&pool).await.expect("send without notifying");
    let mut samples = 4;
    while samples % FULL_EVERY != 0 {
        assert_eq!(sampler.sample(&pool, &registry).await.expect("sample"), 0, "sample {samples}: nothing changed");
        assert_eq!(length(&registry, "c"), Some(0));
        samples += 1;
    }
    assert_eq!(sampler.sample(&pool, &registry).await.expect("sample"), all, "the full sample");
    assert_eq!(length(&registry, "c"), Some(1));

    shutdown.cancel();
    listener.await.expect("the listener stops");
}
