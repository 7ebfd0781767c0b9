//! Router benchmarks on a generated 1,000-rule set, on the private cluster:
//! - throughput: leads per second through the router (read, encode, decide in one module call,
//!   forward to the partner queues, delete) with one and with two replicas;
//! - reload latency: time from committing a rule change to the router deciding with the new
//!   tree (the compile worker picks the request up, checks, compiles, validates and activates;
//!   the router hears `NOTIFY` and loads the module).
//!
//! Run with `./dev bench`, or `cargo bench -p router --bench router -- --leads 50000
//! --rules 1000 --replicas 1,2 --reloads 5 --batch-size 500`. Works in a scratch database
//! `<name>_bench_router`, dropped and recreated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use pipeline::BoxError;
use pipeline::config::ConsumerConfig;
use pipeline::consumer::{self, Consumer};
use pipeline::message::RoutingLead;
use pipeline::queue::{self, QueueName};
use pipeline::rules::RuleSetDoc;
use router::{ActiveTree, Router};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use workers::compile::Compile;

struct Options {
    leads: usize,
    rules: usize,
    replicas: Vec<usize>,
    reloads: usize,
    batch_size: u32,
}

fn options() -> Result<Options, BoxError> {
    let mut options = Options { leads: 50_000, rules: 1_000, replicas: vec![1, 2], reloads: 5, batch_size: 500 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--leads" => options.leads = value()?.parse()?,
            "--rules" => options.rules = value()?.parse()?,
            "--reloads" => options.reloads = value()?.parse()?,
            "--batch-size" => options.batch_size = value()?.parse()?,
            "--replicas" => {
                options.replicas = value()?.split(',').map(|w| w.trim().parse()).collect::<Result<_, _>>()?;
            }
            _ => {} // cargo bench passes --bench
        }
    }
    Ok(options)
}

/// A generated rule set with the rules its deliberate conflicts name disabled, so it compiles.
fn rule_set(rules: usize) -> Result<RuleSetDoc, BoxError> {
    let text = compiler::generate::compilable_rule_set(rules, 1)?;
    let (document, _) = compiler::syntax::document::read(&text);
    Ok(serde_json::from_value(document.to_json())?)
}

fn compile_consumer(pool: &PgPool) -> Result<Consumer<Compile>, BoxError> {
    Ok(Consumer::new(pool.clone(), ConsumerConfig::new("compile", QueueName::new(queue::fixed::COMPILE)?)?, Compile))
}

async fn fill(pool: &PgPool, doc: &RuleSetDoc, count: usize) -> Result<(), BoxError> {
    let (checked, _, _) = compiler::report::check_rules("generated", doc.to_text().as_bytes())?;
    let rules = checked.ok_or("the rule set does not parse")?.0;
    let queue = QueueName::new(queue::fixed::ROUTING)?;
    let leads: Vec<Value> = compiler::generate::leads(&rules, count, 3)
        .into_iter()
        .map(|fields| {
            let Value::Object(fields) = fields else { return Err("a lead is not an object".into()) };
            let lead = RoutingLead {
                submission_id: Uuid::now_v7(),
                site: "site0".to_owned(),
                person_id: 1,
                alias_id: None,
                submitted_at: Utc::now(),
                fields,
            };
            Ok(serde_json::to_value(lead)?)
        })
        .collect::<Result<_, BoxError>>()?;
    for chunk in leads.chunks(1_000) {
        queue::send_batch(pool, &queue, chunk).await?;
    }
    sqlx::query("VACUUM ANALYZE pgmq.q_routing").execute(pool).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = options()?;
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set: run `./dev bench`")?;
    let pool = pipeline::db::scratch_database(&url, "bench_router").await?;
    sqlx::query("INSERT INTO persons (email, full_name) VALUES ('bench@example.com', 'bench')").execute(&pool).await?;

    let mut doc = rule_set(options.rules)?;
    let enabled = doc.rules.iter().filter(|r| r.enabled).count();
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    pipeline::rules::replace(&mut tx, &doc).await?;
    tx.commit().await?;
    compile_consumer(&pool)?.run_once().await?;
    let tree = Arc::new(ActiveTree::new()?);
    let version = tree.refresh(&pool).await?.ok_or("no tree was activated")?;
    println!(
        "router on a generated set: {} rules ({enabled} enabled); first compile + load {:.2} s (tree {version})",
        doc.rules.len(),
        started.elapsed().as_secs_f64()
    );

    println!("batch size {}", options.batch_size);
    println!("{:>9} {:>10} {:>10} {:>12}", "replicas", "leads", "seconds", "leads/s");
    let readers = queue::Readers::new(&pool);
    for &replicas in &options.replicas {
        let partner_queues: Vec<String> =
            sqlx::query_scalar("SELECT queue_name FROM pgmq.meta WHERE queue_name LIKE 'partner\\_%'")
                .fetch_all(&pool)
                .await?;
        for q in partner_queues {
            sqlx::query("SELECT pgmq.purge_queue($1)").bind(q).execute(&pool).await?;
        }
        fill(&pool, &doc, options.leads).await?;
        let routers = (0..replicas)
            .map(|_| {
                let mut config = ConsumerConfig::new("router", QueueName::new(queue::fixed::ROUTING)?)?;
                config.defaults.batch_size = options.batch_size;
                Ok(Consumer::new(pool.clone(), config, Router::new(Arc::clone(&tree))).with_readers(&readers))
            })
            .collect::<Result<Vec<_>, BoxError>>()?;
        let elapsed = consumer::run_until_settled(routers, options.leads as u64).await;
        let rate = options.leads as f64 / elapsed.as_secs_f64();
        println!("{replicas:>9} {:>10} {:>10.2} {rate:>12.0}", options.leads, elapsed.as_secs_f64());
    }

    // Reload latency: the compile worker and the tree watcher run as in the service.
    let shutdown = CancellationToken::new();
    let compiler_task = {
        let (consumer, stop) = (compile_consumer(&pool)?, shutdown.clone());
        tokio::spawn(async move { consumer.run(stop).await })
    };
    let watcher = tokio::spawn(Arc::clone(&tree).watch(pool.clone(), Duration::from_secs(5), shutdown.clone()));
    let mut latencies = Vec::new();
    for round in 0..options.reloads {
        let routes = doc.routes.clone();
        let rule = doc.rules.iter_mut().find(|r| r.enabled).ok_or("no enabled rule")?;
        let at = routes.iter().position(|r| rule.route == r.as_str()).unwrap_or(0);
        rule.route = serde_json::Value::String(routes[(at + 1 + round) % routes.len()].clone());
        let changed = rule.clone();
        let started = Instant::now();
        let mut tx = pool.begin().await?;
        let rules_version = pipeline::rules::upsert_rule(&mut tx, &changed).await?;
        tx.commit().await?;
        while tree.current().is_none_or(|t| t.rules_version < rules_version) {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("rules version {rules_version} not in use after 60 s").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(started.elapsed());
    }
    shutdown.cancel();
    compiler_task.await?;
    watcher.await?;
    latencies.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    if let (Some(first), Some(last)) = (latencies.first(), latencies.last()) {
        println!(
            "reload: rule change committed -> router deciding with it, {} changes: min {:.0} ms, median {:.0} ms, max {:.0} ms",
            latencies.len(),
            ms(first),
            ms(&latencies[latencies.len() / 2]),
            ms(last)
        );
    }
    Ok(())
}
