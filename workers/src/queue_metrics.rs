//! The queue-metrics worker (DESIGN.md, "Queue metrics"): every few seconds reads
//! `pgmq.metrics_all()` (the form the detected PGMQ supports, see `pipeline::queue::Pgmq`), sends each queue's length, visible length, oldest message age and
//! total messages to Sentry as gauges, and keeps them for the Prometheus endpoint.

use std::sync::Arc;
use std::time::Duration;

use pipeline::metrics::Registry;
use pipeline::queue::Pgmq;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Reads the queue figures once: into `registry` and to Sentry.
pub async fn sample(pool: &PgPool, pgmq: &Pgmq, registry: &Registry) -> pipeline::Result<()> {
    let queues = pgmq.metrics_all(pool).await?;
    for q in &queues {
        let gauge = |name: &'static str, value: f64| {
            sentry::metrics::gauge(name, value).attribute("queue", q.queue_name.clone()).capture();
        };
        gauge("queue.length", q.queue_length as f64);
        gauge("queue.visible_length", q.queue_visible_length as f64);
        gauge("queue.oldest_message_age", f64::from(q.oldest_msg_age_sec.unwrap_or(0)));
        gauge("queue.total_messages", q.total_messages as f64);
    }
    registry.set_queues(queues);
    Ok(())
}

/// Samples every `every` until `shutdown`.
pub async fn run(pool: PgPool, pgmq: Pgmq, registry: Arc<Registry>, every: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(error) = sample(&pool, &pgmq, &registry).await {
            tracing::warn!(%error, "cannot read queue metrics");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
