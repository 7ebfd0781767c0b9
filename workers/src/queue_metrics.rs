//! The queue-metrics worker (DESIGN.md, "Queue metrics"): every few seconds reads each queue's
//! length, visible length, oldest message age and total messages (`pgmq.metrics`, in the form
//! the detected PGMQ supports, see `pipeline::queue::Pgmq`), sends them to Sentry as gauges,
//! and keeps them for the Prometheus endpoint.
//!
//! A thousand partners make two thousand queues, and reading each costs a query of its own
//! inside PGMQ. So a sample reads only the queues that can have changed: those a notification
//! said were sent to since the last sample (`pipeline::wake`) and those that held messages;
//! an empty queue nobody sent to is still empty. Every [`FULL_EVERY`]th sample, and whenever
//! notifications may have been missed, reads every queue (`pgmq.metrics_all`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pipeline::metrics::Registry;
use pipeline::queue::{Pgmq, QueueMetrics};
use pipeline::wake::Wakeups;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// One sample in this many reads every queue, whatever the notifications said (for messages
/// sent by something that does not notify, and queues created since).
pub const FULL_EVERY: u32 = 6;

/// The figures last read, by queue, and what the next sample must read.
pub struct Sampler {
    pgmq: Pgmq,
    wakeups: Arc<Wakeups>,
    last: BTreeMap<String, QueueMetrics>,
    samples: u32,
}

impl Sampler {
    /// A sampler whose first sample reads every queue.
    pub fn new(pgmq: Pgmq, wakeups: Arc<Wakeups>) -> Self {
        Self { pgmq, wakeups, last: BTreeMap::new(), samples: 0 }
    }

    /// Reads the queues that can have changed (or all of them, see the module): into
    /// `registry` and, for each queue read, to Sentry. Returns how many queues were read.
    pub async fn sample(&mut self, pool: &PgPool, registry: &Registry) -> pipeline::Result<usize> {
        // Taken before the reads: a send notified meanwhile is read now or next time.
        let sent = self.wakeups.take_sent();
        let full = self.samples.is_multiple_of(FULL_EVERY);
        let read = match sent {
            Some(sent) if !full => {
                let mut names: Vec<String> = sent.into_iter().collect();
                names.extend(self.last.values().filter(|q| q.queue_length > 0).map(|q| q.queue_name.clone()));
                names.sort_unstable();
                names.dedup();
                if names.is_empty() { Vec::new() } else { self.pgmq.metrics_of(pool, &names).await? }
            }
            _ => {
                let all = self.pgmq.metrics_all(pool).await?;
                self.last.clear();
                all
            }
        };
        self.samples = self.samples.wrapping_add(1);
        for q in &read {
            let gauge = |name: &'static str, value: f64| {
                sentry::metrics::gauge(name, value).attribute("queue", q.queue_name.clone()).capture();
            };
            gauge("queue.length", q.queue_length as f64);
            gauge("queue.visible_length", q.queue_visible_length as f64);
            gauge("queue.oldest_message_age", f64::from(q.oldest_msg_age_sec.unwrap_or(0)));
            gauge("queue.total_messages", q.total_messages as f64);
        }
        let count = read.len();
        self.last.extend(read.into_iter().map(|q| (q.queue_name.clone(), q)));
        registry.set_queues(self.last.values().cloned().collect());
        Ok(count)
    }
}

/// Samples every `every` until `shutdown`.
pub async fn run(
    pool: PgPool,
    pgmq: Pgmq,
    wakeups: Arc<Wakeups>,
    registry: Arc<Registry>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut sampler = Sampler::new(pgmq, wakeups);
    loop {
        if let Err(error) = sampler.sample(&pool, &registry).await {
            tracing::warn!(%error, "cannot read queue metrics");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
