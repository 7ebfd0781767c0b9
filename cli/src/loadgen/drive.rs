//! The load driver: `concurrency` tasks post leads over a shared keep-alive connection pool,
//! either as fast as answers come back (closed loop) or on a fixed schedule (open loop, where
//! request `k` is due at `start + k / rate` and its latency counts from then, so a server that
//! falls behind shows up as latency instead of silently slowing the senders).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};

use crate::e2e::{Posts, Sent};
use crate::lead::Generator;
use crate::summary::{Summary, Tally};

/// When the measured part of a run ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// After this long.
    After(Duration),
    /// After this many requests.
    Requests(u64),
}

/// How to drive the load.
#[derive(Debug, Clone)]
pub(crate) struct LoadConfig {
    /// `POST` URL (`…/api/submit`).
    pub(crate) url: String,
    /// `Authorization` header per site, in the generator's site order.
    pub(crate) auth: Vec<HeaderValue>,
    /// Requests in flight at most.
    pub(crate) concurrency: usize,
    /// Requests per second; `None`: as fast as possible.
    pub(crate) rate: Option<f64>,
    /// Not-counted time before measuring.
    pub(crate) warmup: Duration,
    /// End of the measured part.
    pub(crate) stop: Stop,
    /// Send a unique `Idempotency-Key` with each post, starting with this prefix.
    pub(crate) idempotency_prefix: Option<String>,
    /// Keep the `submission_id` and send time of every 202 (end-to-end mode).
    pub(crate) track: bool,
}

/// State the sender tasks share.
struct Shared {
    config: LoadConfig,
    client: reqwest::Client,
    generator: Mutex<Generator>,
    start: Instant,
    /// `start` on the wall clock, in µs since the Unix epoch (the database's clock).
    start_wall_us: i64,
    warmup_end: Instant,
    /// Requests handed out (the schedule's ticket in rate mode).
    tickets: AtomicU64,
    /// Measured requests handed out (for [`Stop::Requests`]).
    measured: AtomicU64,
}

/// The answer to an accepted post.
#[derive(serde::Deserialize)]
struct Accepted {
    submission_id: uuid::Uuid,
}

/// Runs the load and summarizes what it measured; with [`LoadConfig::track`], also returns every
/// accepted post (warm-up included).
pub(crate) async fn run(config: LoadConfig, generator: Generator) -> anyhow::Result<(Summary, Posts)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let start = Instant::now();
    let start_wall_us = chrono::Utc::now().timestamp_micros();
    let shared = Arc::new(Shared {
        client,
        generator: Mutex::new(generator),
        start,
        start_wall_us,
        warmup_end: start + config.warmup,
        tickets: AtomicU64::new(0),
        measured: AtomicU64::new(0),
        config,
    });
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..shared.config.concurrency {
        senders.spawn(sender(Arc::clone(&shared)));
    }
    let mut tally = Tally::default();
    while let Some(ended) = senders.join_next().await {
        tally.merge(ended.context("a sender task panicked")??);
    }
    let config = &shared.config;
    let posts = Posts { sent: std::mem::take(&mut tally.sent), untracked: tally.untracked };
    Ok((Summary::new(config.url.clone(), config.concurrency, config.rate, shared.warmup_end, tally), posts))
}

/// One sender: takes the next request, waits for its time (rate mode), posts it, records.
async fn sender(shared: Arc<Shared>) -> anyhow::Result<Tally> {
    let config = &shared.config;
    let mut tally = Tally::default();
    loop {
        let ticket = shared.tickets.fetch_add(1, Ordering::Relaxed);
        let due = match config.rate {
            Some(rate) => shared.start + Duration::from_secs_f64(ticket as f64 / rate),
            None => Instant::now(),
        };
        let measured = due >= shared.warmup_end;
        if measured {
            let done = match config.stop {
                Stop::After(duration) => due >= shared.warmup_end + duration,
                Stop::Requests(n) => shared.measured.fetch_add(1, Ordering::Relaxed) >= n,
            };
            if done {
                return Ok(tally);
            }
        }
        let lead = {
            let mut generator =
                shared.generator.lock().map_err(|_| anyhow::anyhow!("the lead generator is poisoned"))?;
            generator.next_lead()
        };
        let body = serde_json::to_vec(&lead.body).context("serializing a lead")?;
        let mut request = shared
            .client
            .post(&config.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, config.auth[lead.site].clone())
            .body(body);
        if let Some(prefix) = &config.idempotency_prefix {
            request = request.header("idempotency-key", format!("{prefix}-{}", lead.sequence));
        }
        // Latency counts from the due time in rate mode (queueing included), else from the send.
        let sent = if config.rate.is_some() {
            tokio::time::sleep_until(due.into()).await;
            due
        } else {
            Instant::now()
        };
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                response.bytes().await.map(|body| (status, body))
            }
            Err(error) => Err(error),
        };
        let finished = Instant::now();
        match outcome {
            Ok((status, body)) => {
                if status != 202 && tally.first_error.is_none() {
                    let text = String::from_utf8_lossy(&body);
                    tally.first_error = Some(format!("{status} {}", text.chars().take(400).collect::<String>()));
                }
                if status == 202 && config.track {
                    match serde_json::from_slice::<Accepted>(&body) {
                        Ok(accepted) => {
                            let offset = i64::try_from(sent.saturating_duration_since(shared.start).as_micros());
                            let at_us = shared.start_wall_us.saturating_add(offset.unwrap_or(i64::MAX));
                            tally.sent.push(Sent { id: accepted.submission_id, at_us });
                        }
                        Err(_) => tally.untracked += 1,
                    }
                }
                if measured {
                    *tally.statuses.entry(status).or_default() += 1;
                    let micros = finished.saturating_duration_since(sent).as_micros();
                    tally.latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
                } else {
                    tally.warmup_requests += 1;
                    tally.warmup_accepted += u64::from(status == 202);
                }
            }
            Err(error) => {
                if tally.first_error.is_none() {
                    tally.first_error = Some(format!("no answer: {error:#}"));
                }
                if measured {
                    tally.transport_errors += 1;
                } else {
                    tally.warmup_requests += 1;
                }
            }
        }
        if measured {
            tally.last_done = tally.last_done.max(Some(finished));
            tally.repeats += u64::from(lead.variant);
        }
    }
}
