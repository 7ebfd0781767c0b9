//! The admin UI's rules editor: the check round trip on a large rule set. The editor sends the
//! text it holds as a dry run (`PUT /api/rules?dry_run=true`, YAML) after each pause in typing
//! and shows the findings at their lines and the change impact against the active rules; this
//! measures that request over real HTTP against the real API on a scratch database whose
//! active tree is the same generated set (so the impact is computed against it):
//!
//! - the set as the editor opens it (no change: findings, and "nothing moves");
//! - one rule sent to another partner (a change with an impact and witness leads);
//! - one condition narrowed (`and age < 40`);
//! - a type error typed into one rule (findings only: no impact is computed).
//!
//! Run: `cargo bench -p api --bench editor` (or `./dev bench`); options `--rules 1000 --runs 20`.
//! Works in a scratch database `<name>_bench_editor`, dropped and recreated.

use std::time::{Duration, Instant};

use api::Api;
use pipeline::BoxError;
use pipeline::config::{ApiConfig, ConsumerConfig};
use pipeline::consumer::Consumer;
use pipeline::queue::{QueueName, fixed};
use pipeline::rules::RuleSetDoc;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-editor";
/// The goal of the issue: the round trip of a 1,000-rule set stays under this.
const GOAL: Duration = Duration::from_millis(300);

fn options() -> Result<(usize, usize), BoxError> {
    let (mut rules, mut runs) = (1_000, 20);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rules" => rules = value()?.parse()?,
            "--runs" => runs = value()?.parse::<usize>()?.max(1),
            _ => {} // cargo bench passes --bench
        }
    }
    Ok((rules, runs))
}

/// `text` with the `n`-th line that starts with `prefix` (trimmed) rewritten by `edit`.
fn edit_line(text: &str, prefix: &str, n: usize, edit: impl Fn(&str) -> String) -> Result<String, BoxError> {
    let mut seen = 0;
    let mut done = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if !done && line.trim_start().starts_with(prefix) {
                seen += 1;
                if seen == n {
                    done = true;
                    return edit(line);
                }
            }
            line.to_owned()
        })
        .collect();
    if !done {
        return Err(format!("no {n}th line starting with `{prefix}`").into());
    }
    Ok(lines.join("\n") + "\n")
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (rules, runs) = options()?;
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set: run `./dev bench`")?;
    let pool = pipeline::db::scratch_database(&url, "bench_editor").await?;

    // The generated set, stored and compiled: the active tree the impact is computed against.
    let text = compiler::generate::compilable_rule_set(rules, 1)?;
    let (document, _) = compiler::syntax::document::read(&text);
    let doc: RuleSetDoc = serde_json::from_value(document.to_json())?;
    let mut tx = pool.begin().await?;
    pipeline::rules::replace(&mut tx, &doc).await?;
    tx.commit().await?;
    let compile = ConsumerConfig::new("compile", QueueName::new(fixed::COMPILE)?)?;
    Consumer::new(pool.clone(), compile, workers::compile::Compile).run_once().await?;
    let active: Option<i64> =
        sqlx::query_scalar("SELECT version FROM decision_trees WHERE active").fetch_optional(&pool).await?;
    let tree = active.ok_or("the generated set did not compile")?;

    let config = ApiConfig { admin_token: Some(TOKEN.to_owned()), ..ApiConfig::default() };
    let shutdown = CancellationToken::new();
    let app = Api::start(pool.clone(), config, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(app.serve(listener, shutdown.clone()));
    let client = reqwest::Client::new();

    // What the editor loads.
    let loaded: Value = client.get(format!("{base}/api/rules")).bearer_auth(TOKEN).send().await?.json().await?;
    let stored = loaded["yaml"].as_str().ok_or("GET /api/rules has no `yaml`")?.to_owned();
    let middle = rules / 2;
    let routes: Vec<String> = doc.routes.clone();
    let cases = [
        ("as opened (no change)", stored.clone()),
        (
            "one rule to another partner",
            edit_line(&stored, "route:", middle, |line| {
                let now = line.trim_start().trim_start_matches("route:").trim().trim_matches('"');
                let other = routes.iter().find(|r| r.as_str() != now).cloned().unwrap_or_default();
                format!("{}route: \"{other}\"", &line[..line.len() - line.trim_start().len()])
            })?,
        ),
        (
            "one condition narrowed",
            edit_line(&stored, "when:", middle, |line| {
                let (head, when) = line.split_once("when:").unwrap_or((line, ""));
                let when = when.trim().trim_matches('\'');
                format!("{head}when: '{when} and age < 40'")
            })?,
        ),
        (
            "a type error typed",
            edit_line(&stored, "when:", middle, |line| {
                let (head, when) = line.split_once("when:").unwrap_or((line, ""));
                let when = when.trim().trim_matches('\'');
                format!("{head}when: '{when} and age == \"x\"'")
            })?,
        ),
    ];

    println!(
        "rules editor check round trip: PUT /api/rules?dry_run=true over HTTP, {} rules ({} enabled), active tree {tree}, {runs} runs each",
        doc.rules.len(),
        doc.rules.iter().filter(|r| r.enabled).count()
    );
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>8} {:>9} {:>16}",
        "edit", "min ms", "p50 ms", "p95 ms", "max ms", "findings", "impact changes"
    );
    let mut worst_median = Duration::ZERO;
    for (name, body) in cases {
        let mut times = Vec::with_capacity(runs);
        let mut last = Value::Null;
        for run in 0..runs + 2 {
            let started = Instant::now();
            let response = client
                .put(format!("{base}/api/rules?dry_run=true"))
                .bearer_auth(TOKEN)
                .header("content-type", "application/yaml")
                .body(body.clone())
                .send()
                .await?;
            let status = response.status();
            last = response.json().await?;
            if !status.is_success() {
                return Err(format!("{name}: {status}: {last}").into());
            }
            // The first two are the warm-up (connections, caches).
            if run >= 2 {
                times.push(started.elapsed());
            }
        }
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let findings = last["report"]["findings"].as_array().map_or(0, Vec::len);
        // Pairs of (old, new) decisions that differ, and the share of the lead space they cover.
        let moved = match (last["impact"]["changes"].as_array(), last["impact"]["moved_share"].as_f64()) {
            (Some(changes), Some(share)) => format!("{} ({:.3}%)", changes.len(), share.max(0.0) * 100.0),
            (Some(changes), None) => changes.len().to_string(),
            _ => "-".to_owned(),
        };
        println!(
            "{name:<30} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {findings:>9} {moved:>16}",
            ms(times[0]),
            ms(at(0.5)),
            ms(at(0.95)),
            ms(times[times.len() - 1])
        );
        worst_median = worst_median.max(at(0.5));
    }
    if rules == 1_000 {
        let met = if worst_median < GOAL { "met" } else { "MISSED" };
        println!("goal (every median < {} ms at 1,000 rules): {met}", GOAL.as_millis());
    }
    shutdown.cancel();
    server.await??;
    Ok(())
}
