//! Process-wide figures for the Prometheus endpoint (`GET /metrics`): the queues as the
//! queue-metrics worker last read them (`pgmq.metrics_all()`), and every consumer's counters
//! and batch-duration histogram.

use std::fmt::Write;
use std::sync::{Arc, Mutex, PoisonError};

use crate::consumer::{BATCH_MS_BUCKETS, ConsumerStats};
use crate::queue::QueueMetrics;

/// What `/metrics` shows.
#[derive(Default)]
pub struct Registry {
    consumers: Mutex<Vec<(String, String, Arc<ConsumerStats>)>>,
    queues: Mutex<Vec<QueueMetrics>>,
}

impl Registry {
    /// Adds a consumer's counters (`worker` reading `queue`).
    pub fn register(&self, worker: &str, queue: &str, stats: Arc<ConsumerStats>) {
        let mut consumers = self.consumers.lock().unwrap_or_else(PoisonError::into_inner);
        consumers.push((worker.to_owned(), queue.to_owned(), stats));
    }

    /// Replaces the queue figures.
    pub fn set_queues(&self, queues: Vec<QueueMetrics>) {
        *self.queues.lock().unwrap_or_else(PoisonError::into_inner) = queues;
    }

    /// The queue figures last read.
    pub fn queues(&self) -> Vec<QueueMetrics> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Everything in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (queue, value) in rows {
                let _ = writeln!(out, "{name}{{queue=\"{queue}\"}} {value}");
            }
        };
        let queues = self.queues();
        let by = |f: fn(&QueueMetrics) -> f64| queues.iter().map(|q| (q.queue_name.clone(), f(q))).collect();
        gauge(
            &mut out,
            "offer_router_queue_length",
            "Messages in the queue, visible or not.",
            by(|q| q.queue_length as f64),
        );
        gauge(
            &mut out,
            "offer_router_queue_visible_length",
            "Messages readable now.",
            by(|q| q.queue_visible_length as f64),
        );
        gauge(
            &mut out,
            "offer_router_queue_oldest_message_age_seconds",
            "Age of the oldest message (0 when empty).",
            by(|q| f64::from(q.oldest_msg_age_sec.unwrap_or(0))),
        );
        gauge(
            &mut out,
            "offer_router_queue_messages_total",
            "Messages ever sent to the queue.",
            by(|q| q.total_messages as f64),
        );

        let consumers = self.consumers.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let _ = writeln!(
            out,
            "# HELP offer_router_consumer_messages_total Messages settled by a consumer, by outcome.\n# TYPE offer_router_consumer_messages_total counter"
        );
        for (worker, queue, stats) in &consumers {
            let s = stats.snapshot();
            for (outcome, value) in
                [("done", s.done), ("retried", s.retried), ("dead_lettered", s.dead_lettered), ("skipped", s.skipped)]
            {
                let _ = writeln!(
                    out,
                    "offer_router_consumer_messages_total{{worker=\"{worker}\",queue=\"{queue}\",outcome=\"{outcome}\"}} {value}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP offer_router_consumer_batch_duration_ms Time to settle a batch.\n# TYPE offer_router_consumer_batch_duration_ms histogram"
        );
        for (worker, queue, stats) in &consumers {
            let (counts, sum) = stats.batch_histogram();
            let labels = format!("worker=\"{worker}\",queue=\"{queue}\"");
            for (bound, count) in
                BATCH_MS_BUCKETS.iter().map(ToString::to_string).chain(["+Inf".to_owned()]).zip(&counts)
            {
                let _ =
                    writeln!(out, "offer_router_consumer_batch_duration_ms_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "offer_router_consumer_batch_duration_ms_sum{{{labels}}} {sum}");
            let _ = writeln!(
                out,
                "offer_router_consumer_batch_duration_ms_count{{{labels}}} {}",
                counts.last().copied().unwrap_or(0)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_queues_counters_and_histograms() {
        let registry = Registry::default();
        registry.set_queues(vec![QueueMetrics {
            queue_name: "routing".to_owned(),
            queue_length: 7,
            queue_visible_length: 5,
            oldest_msg_age_sec: Some(3),
            newest_msg_age_sec: Some(1),
            total_messages: 70,
        }]);
        registry.register("router", "routing", Arc::new(ConsumerStats::default()));
        let text = registry.render();
        for line in [
            "offer_router_queue_length{queue=\"routing\"} 7",
            "offer_router_queue_visible_length{queue=\"routing\"} 5",
            "offer_router_queue_oldest_message_age_seconds{queue=\"routing\"} 3",
            "offer_router_queue_messages_total{queue=\"routing\"} 70",
            "offer_router_consumer_messages_total{worker=\"router\",queue=\"routing\",outcome=\"done\"} 0",
            "offer_router_consumer_batch_duration_ms_bucket{worker=\"router\",queue=\"routing\",le=\"+Inf\"} 0",
            "# TYPE offer_router_consumer_batch_duration_ms histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }
}
