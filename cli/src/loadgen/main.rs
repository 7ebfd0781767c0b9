//! `loadgen`: posts realistic leads to `POST /api/submit` and reports the accepted rate, the
//! answers by status and the latency percentiles; with `--e2e` it then waits for every accepted
//! lead's final state and reports the end-to-end rate, latency and outcomes. `main` parses the
//! flags, builds the generator and driver configs once, runs, and maps the outcome to the exit
//! code (0: every answer was 202 and, with `--e2e`, every lead reached a final state; 1: some did
//! not; 2: the run could not be made).

mod data;
mod drive;
mod e2e;
mod lead;
mod summary;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use reqwest::header::HeaderValue;

use crate::drive::{LoadConfig, Stop};
use crate::lead::{Generator, GeneratorConfig, Site};

/// Load generator for `POST /api/submit`.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Post realistic leads to POST /api/submit and measure throughput and latency"
)]
struct Args {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A site and its API key, `SITE=KEY`, once per site. The name picks the vertical:
    /// degreefinder, nursingdegrees, onlinemba (education); loanmatch, quickcash (finance).
    #[arg(long = "key", value_name = "SITE=KEY", required = true, value_parser = parse_key)]
    keys: Vec<(String, String)>,
    /// Requests in flight at most (connections in the keep-alive pool).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Seconds to measure, after the warm-up.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, conflicts_with = "requests")]
    duration: f64,
    /// Measure this many requests instead of a duration.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Requests per second on a fixed schedule (latency counts from each request's due time);
    /// 0: as fast as the answers come back.
    #[arg(long, value_name = "PER_SEC", default_value_t = 0.0)]
    rate: f64,
    /// People in the pool; once each has posted, fresh posts start over with the first.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    people: u64,
    /// Share of posts (0 to 1) by an earlier person with the identity spelled differently
    /// (email case and spaces, name case and spaces, phone format).
    #[arg(long, default_value_t = 0.3, value_parser = parse_share)]
    repeat_share: f64,
    /// Seed of the lead generator: a seed always gives the same sequence of leads.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of load before measuring (answers are not counted, but `accepted_total` has them).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Send a unique `Idempotency-Key` with each post (unique per run).
    #[arg(long)]
    idempotency_keys: bool,
    /// Worker threads of the async runtime; 0: one per CPU.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Exit 0 even if some answers were not 202.
    #[arg(long)]
    allow_errors: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// End to end: after the posts, wait until every accepted lead has a final state in the
    /// database (accepted, rejected, duplicate, failed, unmatched, dead-lettered) and report the
    /// end-to-end rate, the latency from post to final state and the count per state.
    #[arg(long, requires = "database_url")]
    e2e: bool,
    /// The service's database (`--e2e` reads the final states there).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// With `--e2e`: seconds after the last post until leads without a final state count as
    /// lost (exit 1). Raise it when the posts run far ahead of the pipeline.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    settle_timeout: f64,
}

fn parse_key(text: &str) -> Result<(String, String), String> {
    let (site, key) = text.split_once('=').ok_or_else(|| format!("`{text}` is not SITE=KEY"))?;
    let (site, key) = (site.trim(), key.trim());
    if Site::named(site).is_none() {
        return Err(format!("unknown site `{site}`; known sites: {}", Site::KNOWN));
    }
    if key.is_empty() {
        return Err(format!("the key of `{site}` is empty"));
    }
    Ok((site.to_owned(), key.to_owned()))
}

fn parse_share(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|share| (0.0..=1.0).contains(share))
        .ok_or_else(|| format!("`{text}` is not a share between 0 and 1"))
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("--{flag} must be a number of seconds ≥ 0"))
}

/// The configs of a run, built once from the flags.
struct Run {
    generator: GeneratorConfig,
    load: LoadConfig,
    json: bool,
    allow_errors: bool,
    threads: usize,
    /// `--e2e`: the database URL and the settle timeout.
    e2e: Option<(String, Duration)>,
}

impl Args {
    fn build(self) -> anyhow::Result<Run> {
        let mut sites = Vec::new();
        let mut auth = Vec::new();
        for (name, key) in &self.keys {
            let site = Site::named(name).with_context(|| format!("unknown site `{name}`"))?;
            let mut header = HeaderValue::from_str(&format!("Bearer {key}"))
                .with_context(|| format!("the key of `{name}` is not a valid header value"))?;
            header.set_sensitive(true);
            sites.push(site);
            auth.push(header);
        }
        let stop = match self.requests {
            Some(n) => Stop::Requests(n),
            None => Stop::After(seconds(self.duration, "duration")?),
        };
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            anyhow::bail!("--rate must be a number of requests per second ≥ 0");
        }
        let idempotency_prefix = self.idempotency_keys.then(|| {
            // Unique per run, so a second run's posts are new submissions, not replays.
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            format!("loadgen-{nanos:x}")
        });
        let url = format!("{}/api/submit", self.url.trim_end_matches('/'));
        let e2e = match (self.e2e, self.database_url) {
            (true, Some(database_url)) => Some((database_url, seconds(self.settle_timeout, "settle-timeout")?)),
            (true, None) => anyhow::bail!("--e2e needs --database-url (or DATABASE_URL)"),
            (false, _) => None,
        };
        Ok(Run {
            generator: GeneratorConfig {
                sites,
                people: usize::try_from(self.people).context("--people is too large")?,
                repeat_share: self.repeat_share,
                seed: self.seed,
            },
            load: LoadConfig {
                url,
                auth,
                concurrency: self.concurrency as usize,
                rate: (self.rate > 0.0).then_some(self.rate),
                warmup: seconds(self.warmup, "warmup")?,
                stop,
                idempotency_prefix,
                track: e2e.is_some(),
            },
            json: self.json,
            allow_errors: self.allow_errors,
            threads: self.threads,
            e2e,
        })
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let run = args.build()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if run.threads > 0 {
        runtime.worker_threads(run.threads);
    }
    let runtime = runtime.enable_all().build().context("starting the async runtime")?;
    let generator = Generator::new(run.generator);
    let summary = runtime.block_on(async {
        // Connect first: a wrong database URL fails the run before any post.
        let watch = match &run.e2e {
            Some((url, _)) => Some(e2e::Watch::start(url).await?),
            None => None,
        };
        let (mut summary, posts) = drive::run(run.load, generator).await?;
        let posts_ended = std::time::Instant::now();
        if let (Some(watch), Some((_, timeout))) = (watch, &run.e2e) {
            summary.end_to_end = Some(watch.settle(posts, posts_ended, *timeout).await?);
        }
        anyhow::Ok(summary)
    })?;
    if run.json {
        println!("{}", serde_json::to_string_pretty(&summary).context("writing the summary as JSON")?);
    } else {
        print!("{}", summary.text());
    }
    let failed = summary.failed + (summary.warmup_requests - summary.warmup_accepted);
    let mut code = ExitCode::SUCCESS;
    if failed > 0 && !run.allow_errors {
        eprintln!("error: {failed} posts were not answered 202 (--allow-errors to accept that)");
        code = ExitCode::from(1);
    }
    if let Some(e2e) = &summary.end_to_end {
        if e2e.lost > 0 {
            eprintln!(
                "error: {} accepted leads reached no final state within {:.0} s of the last post (--settle-timeout)",
                e2e.lost, e2e.settle_timeout_secs
            );
            code = ExitCode::from(1);
        }
        if e2e.untracked > 0 {
            eprintln!("error: {} answers 202 named no submission_id to follow", e2e.untracked);
            code = ExitCode::from(1);
        }
    }
    Ok(code)
}
