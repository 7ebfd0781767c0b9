//! What a run measured: the tallies the workers keep, merged into one summary with exact
//! latency percentiles, printed as text or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use crate::e2e::{EndToEnd, Sent};

/// Answers and latencies one worker saw (merged into [`Summary`] at the end).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Latency of each measured request, in microseconds.
    pub(crate) latencies_us: Vec<u32>,
    /// Measured answers by HTTP status.
    pub(crate) statuses: BTreeMap<u16, u64>,
    /// Measured posts by an earlier person, spelled differently.
    pub(crate) repeats: u64,
    /// Measured requests that got no answer (connection refused or reset, ...).
    pub(crate) transport_errors: u64,
    /// Requests during the warm-up, and how many were accepted.
    pub(crate) warmup_requests: u64,
    /// Accepted (202) during the warm-up.
    pub(crate) warmup_accepted: u64,
    /// When the last measured request finished.
    pub(crate) last_done: Option<Instant>,
    /// The first unexpected answer (status and body) or transport error, to show the user.
    pub(crate) first_error: Option<String>,
    /// Accepted posts, warm-up included (end-to-end mode only).
    pub(crate) sent: Vec<Sent>,
    /// 202 answers without a readable `submission_id` (end-to-end mode only).
    pub(crate) untracked: u64,
}

impl Tally {
    /// Adds `other` to this tally.
    pub(crate) fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.repeats += other.repeats;
        self.warmup_requests += other.warmup_requests;
        self.warmup_accepted += other.warmup_accepted;
        self.last_done = self.last_done.max(other.last_done);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.sent.extend(other.sent);
        self.untracked += other.untracked;
    }
}

/// Latency percentiles in milliseconds (exact, from every measured request).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50: f64,
    /// 90th percentile.
    pub(crate) p90: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p999: f64,
    /// Slowest.
    pub(crate) max: f64,
    /// Mean.
    pub(crate) mean: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `latencies_us` (sorted here).
    pub(crate) fn of(latencies_us: &mut [u32]) -> Self {
        if latencies_us.is_empty() {
            return Self::default();
        }
        latencies_us.sort_unstable();
        let n = latencies_us.len();
        let ms = |us: u32| f64::from(us) / 1e3;
        // Nearest rank in integers: `ceil(n * permille / 1000)`.
        let at = |permille: usize| ms(latencies_us[(n * permille).div_ceil(1000).clamp(1, n) - 1]);
        let sum: u64 = latencies_us.iter().map(|&us| u64::from(us)).sum();
        Self {
            p50: at(500),
            p90: at(900),
            p99: at(990),
            p999: at(999),
            max: ms(latencies_us[n - 1]),
            mean: sum as f64 / n as f64 / 1e3,
        }
    }
}

/// The result of a run (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// `POST` URL.
    pub(crate) url: String,
    /// Requests in flight at most.
    pub(crate) concurrency: usize,
    /// Target rate in requests per second; `None`: as fast as possible.
    pub(crate) rate: Option<f64>,
    /// Measured requests (after the warm-up).
    pub(crate) requests: u64,
    /// Measured requests answered 202.
    pub(crate) accepted: u64,
    /// Measured requests answered otherwise or not at all.
    pub(crate) failed: u64,
    /// Measured answers by status code; `"error"`: no answer.
    pub(crate) statuses: BTreeMap<String, u64>,
    /// Measured posts by an earlier person with the identity spelled differently.
    pub(crate) repeat_posts: u64,
    /// Seconds from the end of the warm-up to the last measured answer.
    pub(crate) elapsed_secs: f64,
    /// Measured requests per second.
    pub(crate) requests_per_sec: f64,
    /// Measured 202 answers per second.
    pub(crate) accepted_per_sec: f64,
    /// Latency of measured requests, send to full response (in rate mode, from the scheduled
    /// send time, so queueing in the load generator counts).
    pub(crate) latency_ms: Latency,
    /// Requests during the warm-up (not in the figures above).
    pub(crate) warmup_requests: u64,
    /// 202 answers during the warm-up.
    pub(crate) warmup_accepted: u64,
    /// Every 202 of the run, warm-up included: the messages the server committed.
    pub(crate) accepted_total: u64,
    /// The first unexpected answer or error, if any.
    pub(crate) first_error: Option<String>,
    /// End-to-end mode: what became of the accepted leads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) end_to_end: Option<EndToEnd>,
}

impl Summary {
    /// Builds the summary of a run whose measured window started at `window_start`.
    pub(crate) fn new(
        url: String,
        concurrency: usize,
        rate: Option<f64>,
        window_start: Instant,
        mut tally: Tally,
    ) -> Self {
        let answered: u64 = tally.statuses.values().sum();
        let requests = answered + tally.transport_errors;
        let accepted = tally.statuses.get(&202).copied().unwrap_or(0);
        let mut statuses: BTreeMap<String, u64> = tally.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect();
        if tally.transport_errors > 0 {
            statuses.insert("error".to_owned(), tally.transport_errors);
        }
        let elapsed_secs =
            tally.last_done.map_or(0.0, |done| done.saturating_duration_since(window_start).as_secs_f64());
        let per_sec = |n: u64| if elapsed_secs > 0.0 { n as f64 / elapsed_secs } else { 0.0 };
        Self {
            url,
            concurrency,
            rate,
            requests,
            accepted,
            failed: requests - accepted,
            statuses,
            repeat_posts: tally.repeats,
            elapsed_secs,
            requests_per_sec: per_sec(requests),
            accepted_per_sec: per_sec(accepted),
            latency_ms: Latency::of(&mut tally.latencies_us),
            warmup_requests: tally.warmup_requests,
            warmup_accepted: tally.warmup_accepted,
            accepted_total: accepted + tally.warmup_accepted,
            first_error: tally.first_error,
            end_to_end: None,
        }
    }

    /// The summary for people.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let pace = self.rate.map_or_else(|| "as fast as possible".to_owned(), |r| format!("at {r} requests/s"));
        let _ = writeln!(out, "POST {}: concurrency {}, {pace}", self.url, self.concurrency);
        let _ = writeln!(out, "measured      {:.2} s", self.elapsed_secs);
        let _ = writeln!(out, "requests      {:>10}   {:>10.1}/s", self.requests, self.requests_per_sec);
        let _ = writeln!(out, "accepted 202  {:>10}   {:>10.1}/s", self.accepted, self.accepted_per_sec);
        let statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        let _ = writeln!(out, "statuses      {}", statuses.join(", "));
        let _ = writeln!(out, "repeat posts  {:>10}   (earlier people, spelled differently)", self.repeat_posts);
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "latency ms    p50 {:.2}   p90 {:.2}   p99 {:.2}   p99.9 {:.2}   max {:.2}   mean {:.2}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        let _ = writeln!(
            out,
            "warm-up       {} requests, {} accepted (not counted above); accepted in all: {}",
            self.warmup_requests, self.warmup_accepted, self.accepted_total
        );
        if let Some(error) = &self.first_error {
            let _ = writeln!(out, "first error   {error}");
        }
        if let Some(e2e) = &self.end_to_end {
            out.push_str(&e2e.text());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut us: Vec<u32> = (1..=1000).rev().map(|i| i * 1000).collect();
        let l = Latency::of(&mut us);
        assert_eq!((l.p50, l.p90, l.p99, l.p999, l.max), (500.0, 900.0, 990.0, 999.0, 1000.0));
        assert!((l.mean - 500.5).abs() < 1e-9);
        assert_eq!(Latency::of(&mut []).max, 0.0);
        assert_eq!(Latency::of(&mut [7000]).p50, 7.0);
    }

    #[test]
    fn tallies_merge_into_a_summary() {
        let start = Instant::now();
        let mut a = Tally { latencies_us: vec![1000, 3000], warmup_accepted: 5, ..Tally::default() };
        a.statuses.insert(202, 2);
        let mut b = Tally { latencies_us: vec![2000], transport_errors: 1, ..Tally::default() };
        b.statuses.insert(422, 1);
        b.last_done = Some(start + std::time::Duration::from_secs(2));
        a.merge(b);
        let s = Summary::new("u".to_owned(), 1, None, start, a);
        assert_eq!((s.requests, s.accepted, s.failed, s.accepted_total), (4, 2, 2, 7));
        assert_eq!(s.statuses.get("error"), Some(&1));
        assert!((s.accepted_per_sec - 1.0).abs() < 1e-9);
        assert_eq!(s.latency_ms.p50, 2.0);
    }
}
