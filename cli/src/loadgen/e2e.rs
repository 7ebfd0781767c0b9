//! End-to-end mode (`--e2e`): after the posts, waits until every accepted lead (every 202)
//! has a final state in the database (`pipeline::outcome::finals`: accepted, rejected,
//! duplicate, failed, unmatched or dead-lettered), then reports the end-to-end throughput, the
//! latency from each post to its final state, and the count per final state. Leads with no final
//! state `--settle-timeout` after the last post are lost.
//!
//! Timing comes from the database, not from when loadgen looked: a final state's time is the
//! one recorded with it (the `leads` row's `updated_at`, ...), and a post's time is when loadgen
//! sent it, on the same clock (server and loadgen share one machine). So polling only after the
//! posts (and not during them, where it would take database time from the pipeline under test)
//! changes no figure. Polls ask about the oldest outstanding leads, at most [`POLL_CHUNK`] at a
//! time: the pipeline is roughly first in, first out, so each poll costs a bounded index lookup
//! however far behind the pipeline is.
//!
//! While the posts run, a sampler reads the queues' lengths (`pgmq.metrics_all()`) every second and keeps each
//! queue's longest length: the queue that backs up is the step that cannot keep up.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use pipeline::outcome::{self, FinalState};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::summary::Latency;

/// Most leads one poll asks about.
pub(crate) const POLL_CHUNK: usize = 10_000;
/// Pause between polls while the oldest outstanding leads are not final yet.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often the queues are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Lost submission ids listed in the summary, at most.
const LOST_EXAMPLES: usize = 10;

/// An accepted post: its submission and when loadgen sent it (µs since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// The `submission_id` of the 202 answer.
    pub(crate) id: Uuid,
    /// When the post was sent (in rate mode: when it was due).
    pub(crate) at_us: i64,
}

/// The accepted posts of a run (every 202, warm-up included).
#[derive(Debug, Clone, Default)]
pub(crate) struct Posts {
    /// Each accepted post.
    pub(crate) sent: Vec<Sent>,
    /// 202 answers without a readable `submission_id` (cannot be waited for).
    pub(crate) untracked: u64,
}

/// The final states one submission reached, and when the last of them was reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reached {
    /// µs since the Unix epoch.
    pub(crate) at_us: i64,
    /// One per partner that reached a state, with the partner (several for a shared lead; two
    /// at one partner would be a bug).
    pub(crate) states: Vec<(Option<String>, FinalState)>,
}

/// What became of the accepted posts (`end_to_end` in the JSON summary).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EndToEnd {
    /// Accepted posts waited for (every 202 of the run, warm-up included).
    pub(crate) leads: u64,
    /// Of those, with a final state.
    pub(crate) finished: u64,
    /// Of those, with no final state within the settle timeout.
    pub(crate) lost: u64,
    /// 202 answers without a readable `submission_id` (not waited for; should be 0).
    pub(crate) untracked: u64,
    /// Final states by name (`accepted`, `rejected`, `duplicate`, `failed`, `unmatched`,
    /// `dead_lettered`), every state listed.
    pub(crate) states: BTreeMap<String, u64>,
    /// Submissions with more than one final state (a lead delivered twice; should be 0).
    pub(crate) several_finals: u64,
    /// Seconds from the first post to the last final state.
    pub(crate) elapsed_secs: f64,
    /// Finished leads per second, first post to last final state.
    pub(crate) leads_per_sec: f64,
    /// Final states per second over the middle 80% of them (the 10th to the 90th percentile of
    /// their times): the pipeline's steady rate, without the start and the tail.
    pub(crate) sustained_per_sec: f64,
    /// Post sent to final state, per finished lead.
    pub(crate) latency_ms: Latency,
    /// Seconds from the end of the posts to the last final state (or to giving up).
    pub(crate) settle_secs: f64,
    /// The settle timeout, in seconds.
    pub(crate) settle_timeout_secs: f64,
    /// The longest length each queue reached while the posts ran and the pipeline drained
    /// (queues that stayed empty are left out).
    pub(crate) queue_peaks: BTreeMap<String, i64>,
    /// A few lost submission ids, to look up.
    pub(crate) lost_examples: Vec<Uuid>,
}

impl EndToEnd {
    /// Tallies the posts against the final states found for them.
    pub(crate) fn new(sent: &[Sent], reached: &HashMap<Uuid, Reached>) -> Self {
        let mut states: BTreeMap<String, u64> = FinalState::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
        let mut latencies_us = Vec::with_capacity(reached.len());
        let mut final_times = Vec::with_capacity(reached.len());
        let (mut several_finals, mut lost_examples) = (0, Vec::new());
        for post in sent {
            match reached.get(&post.id) {
                Some(found) => {
                    for (_, state) in &found.states {
                        *states.entry(state.as_str().to_owned()).or_default() += 1;
                    }
                    let partners: std::collections::HashSet<&Option<String>> =
                        found.states.iter().map(|(p, _)| p).collect();
                    several_finals += u64::from(partners.len() < found.states.len());
                    let micros = (found.at_us - post.at_us).max(0);
                    latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    final_times.push(found.at_us);
                }
                None if lost_examples.len() < LOST_EXAMPLES => lost_examples.push(post.id),
                None => {}
            }
        }
        let finished = final_times.len() as u64;
        let first_post = sent.iter().map(|s| s.at_us).min();
        let last_final = final_times.iter().copied().max();
        let elapsed_secs = match (first_post, last_final) {
            (Some(first), Some(last)) => (last - first).max(0) as f64 / 1e6,
            _ => 0.0,
        };
        let leads_per_sec = if elapsed_secs > 0.0 { finished as f64 / elapsed_secs } else { 0.0 };
        let sustained_per_sec = sustained_rate(&mut final_times).unwrap_or(leads_per_sec);
        Self {
            leads: sent.len() as u64,
            finished,
            lost: sent.len() as u64 - finished,
            untracked: 0,
            states,
            several_finals,
            elapsed_secs,
            leads_per_sec,
            sustained_per_sec,
            latency_ms: Latency::of(&mut latencies_us),
            settle_secs: 0.0,
            settle_timeout_secs: 0.0,
            queue_peaks: BTreeMap::new(),
            lost_examples,
        }
    }

    /// The end-to-end part of the summary, for people.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let lost = if self.lost > 0 {
            format!(", {} LOST (no final state {:.0} s after the last post)", self.lost, self.settle_timeout_secs)
        } else {
            String::new()
        };
        let _ =
            writeln!(out, "end to end    {} accepted leads, {} reached a final state{lost}", self.leads, self.finished);
        let _ = writeln!(
            out,
            "e2e rate      {:>10.1}/s first post to last final state ({:.2} s); sustained {:.1}/s (middle 80% of final states)",
            self.leads_per_sec, self.elapsed_secs, self.sustained_per_sec
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "e2e latency   p50 {:.1}   p90 {:.1}   p99 {:.1}   p99.9 {:.1}   max {:.1}   mean {:.1}   (ms, post to final state)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        let states: Vec<String> = self.states.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        let _ = writeln!(out, "final states  {}", states.join(", "));
        let _ = writeln!(out, "settled       {:.2} s after the last post", self.settle_secs);
        let mut peaks: Vec<(&String, &i64)> = self.queue_peaks.iter().collect();
        peaks.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let peaks: Vec<String> = peaks.iter().take(6).map(|(q, n)| format!("{q} {n}")).collect();
        let peaks = if peaks.is_empty() { "every queue stayed empty".to_owned() } else { peaks.join(", ") };
        let _ = writeln!(out, "queue peaks   {peaks}");
        if self.several_finals > 0 {
            let _ = writeln!(out, "WARNING       {} leads reached more than one final state", self.several_finals);
        }
        if self.untracked > 0 {
            let _ = writeln!(out, "WARNING       {} 202 answers had no readable submission_id", self.untracked);
        }
        if !self.lost_examples.is_empty() {
            let ids: Vec<String> = self.lost_examples.iter().map(Uuid::to_string).collect();
            let _ = writeln!(out, "lost, e.g.    {}", ids.join(" "));
        }
        out
    }
}

/// Events per second over the middle 80% of `times_us` (sorted here): from the 10th to the
/// 90th percentile. `None` when there are too few events or they share one instant.
pub(crate) fn sustained_rate(times_us: &mut [i64]) -> Option<f64> {
    let n = times_us.len();
    if n < 20 {
        return None;
    }
    times_us.sort_unstable();
    let (low, high) = (n / 10, n - 1 - n / 10);
    let span = (times_us[high] - times_us[low]) as f64 / 1e6;
    (span > 0.0).then(|| (high - low) as f64 / span)
}

/// The database side of a run: a small pool, and the queue sampler started with the posts.
pub(crate) struct Watch {
    pool: PgPool,
    peaks: Arc<Mutex<BTreeMap<String, i64>>>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Connects to the service's database and starts sampling its queues.
    pub(crate) async fn start(database_url: &str) -> anyhow::Result<Self> {
        let config = pipeline::config::DbConfig { max_connections: 2, ..pipeline::config::DbConfig::new(database_url) };
        let pool = pipeline::db::connect(&config).await.context("connecting to the database (--database-url)")?;
        outcome::finals(&pool, &[]).await.context("reading final states (is this the service's database?)")?;
        let peaks = Arc::new(Mutex::new(BTreeMap::new()));
        let sampler = tokio::spawn(sample(pool.clone(), Arc::clone(&peaks)));
        Ok(Self { pool, peaks, sampler })
    }

    /// Waits until every post has a final state, or until `timeout` after `posts_ended`; then
    /// tallies. Progress goes to stderr every few seconds.
    pub(crate) async fn settle(
        self,
        posts: Posts,
        posts_ended: Instant,
        timeout: Duration,
    ) -> anyhow::Result<EndToEnd> {
        let mut sent = posts.sent;
        sent.sort_unstable_by_key(|s| s.at_us);
        let mut outstanding: Vec<Uuid> = sent.iter().map(|s| s.id).collect();
        let mut reached: HashMap<Uuid, Reached> = HashMap::with_capacity(sent.len());
        let deadline = posts_ended + timeout;
        let mut told = Instant::now();
        while !outstanding.is_empty() {
            let chunk = &outstanding[..outstanding.len().min(POLL_CHUNK)];
            let finals = outcome::finals(&self.pool, chunk).await.context("reading final states")?;
            // A shared lead is done when every partner it was sold to is.
            let settled = outcome::settled(&finals);
            for f in finals.into_iter().filter(|f| settled.contains(&f.submission_id)) {
                let entry = reached.entry(f.submission_id).or_default();
                entry.at_us = entry.at_us.max(f.at.timestamp_micros());
                entry.states.push((f.partner, f.state));
            }
            let chunk_len = chunk.len();
            let before = outstanding.len();
            outstanding.retain(|id| !reached.contains_key(id));
            let settled_whole_chunk = before - outstanding.len() == chunk_len;
            if outstanding.is_empty() || Instant::now() >= deadline {
                break;
            }
            if told.elapsed() >= Duration::from_secs(2) {
                eprintln!(
                    "loadgen: waiting for final states: {} of {} leads still on their way",
                    outstanding.len(),
                    sent.len()
                );
                told = Instant::now();
            }
            if !settled_whole_chunk {
                tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now()))).await;
            }
        }
        let settle_secs = posts_ended.elapsed().as_secs_f64();
        self.sampler.abort();
        let mut e2e = EndToEnd::new(&sent, &reached);
        e2e.settle_secs = settle_secs;
        e2e.untracked = posts.untracked;
        e2e.settle_timeout_secs = timeout.as_secs_f64();
        e2e.queue_peaks = self.peaks.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(e2e)
    }
}

/// Keeps each queue's longest length in `peaks`, sampling every [`SAMPLE_EVERY`] until aborted.
async fn sample(pool: PgPool, peaks: Arc<Mutex<BTreeMap<String, i64>>>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    loop {
        every.tick().await;
        // A failed sample only leaves a gap in the peaks. Only the queues holding messages are
        // counted: counting all of a thousand partners' queues every second cost the server
        // about a third of a core, taken from the pipeline being measured.
        let Ok(queues) = pipeline::queue::busy_lengths(&pool).await else { continue };
        let mut peaks = peaks.lock().unwrap_or_else(PoisonError::into_inner);
        for (queue, length) in queues.into_iter().filter(|(_, length)| *length > 0) {
            let peak = peaks.entry(queue).or_default();
            *peak = (*peak).max(length);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn sustained_rate_is_the_middle_80_percent() {
        // 101 events, one every 10 ms: the 10th to the 90th (80 intervals) span 0.8 s.
        let mut times: Vec<i64> = (0..101).rev().map(|i| i * 10_000).collect();
        let rate = sustained_rate(&mut times).expect("enough events");
        assert!((rate - 100.0).abs() < 1e-9, "{rate}");
        // A slow start and a long tail do not count.
        let mut skewed: Vec<i64> = (0..100).map(|i| 5_000_000 + i * 10_000).collect();
        skewed.extend((0..10).map(|i| i * 100_000));
        skewed.extend([60_000_000; 10]);
        let rate = sustained_rate(&mut skewed).expect("enough events");
        assert!((99.0..=101.0).contains(&rate), "{rate}");
        assert_eq!(sustained_rate(&mut [1, 2, 3]), None);
        assert_eq!(sustained_rate(&mut [7; 40]), None);
    }

    #[test]
    fn posts_are_tallied_against_their_final_states() {
        let sent: Vec<Sent> = (0..5).map(|i| Sent { id: id(i), at_us: 1_000_000 + i as i64 * 100_000 }).collect();
        let mut reached = HashMap::new();
        // 0: accepted 40 ms after its post; 1: duplicate after 20 ms; 2: routed twice (a bug),
        // the later state 90 ms after; 3: failed before its post's clock (clamped to 0);
        // 4: lost.
        let at = |state| (Some("a".to_owned()), state);
        reached.insert(id(0), Reached { at_us: 1_040_000, states: vec![at(FinalState::Accepted)] });
        reached.insert(id(1), Reached { at_us: 1_120_000, states: vec![at(FinalState::Duplicate)] });
        reached.insert(
            id(2),
            Reached { at_us: 1_290_000, states: vec![at(FinalState::Accepted), at(FinalState::Failed)] },
        );
        reached.insert(id(3), Reached { at_us: 1_250_000, states: vec![at(FinalState::Failed)] });
        let e2e = EndToEnd::new(&sent, &reached);
        assert_eq!((e2e.leads, e2e.finished, e2e.lost, e2e.several_finals), (5, 4, 1, 1));
        assert_eq!(e2e.lost_examples, vec![id(4)]);
        assert_eq!(e2e.states["accepted"], 2);
        assert_eq!(e2e.states["failed"], 2);
        assert_eq!(e2e.states["duplicate"], 1);
        assert_eq!((e2e.states["rejected"], e2e.states["unmatched"], e2e.states["dead_lettered"]), (0, 0, 0));
        // First post at 1.0 s, last final state at 1.29 s: 4 leads in 0.29 s.
        assert!((e2e.elapsed_secs - 0.29).abs() < 1e-9);
        assert!((e2e.leads_per_sec - 4.0 / 0.29).abs() < 1e-9);
        assert_eq!(e2e.sustained_per_sec, e2e.leads_per_sec, "too few leads for a steady rate");
        // Latencies 40, 20, 90, 0 ms.
        assert_eq!((e2e.latency_ms.p50, e2e.latency_ms.max), (20.0, 90.0));
        assert!((e2e.latency_ms.mean - 37.5).abs() < 1e-9);
        assert!(e2e.text().contains("1 LOST"), "{}", e2e.text());
    }

    #[test]
    fn nothing_posted_is_nothing_lost() {
        let e2e = EndToEnd::new(&[], &HashMap::new());
        assert_eq!((e2e.leads, e2e.finished, e2e.lost), (0, 0, 0));
        assert_eq!((e2e.elapsed_secs, e2e.leads_per_sec, e2e.latency_ms.max), (0.0, 0.0, 0.0));
    }
}
