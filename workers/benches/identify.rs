//! Identify throughput: leads per second through the identify worker (normalize, lock, match,
//! record persons and aliases, forward to `routing`, delete from `submissions`), with one and
//! with two workers, on the private cluster.
//!
//! Run with `./dev bench` (it sets `DATABASE_URL`), or alone with
//! `cargo bench -p workers --bench identify -- --submissions 30000 --workers 1,2`. It works in
//! a scratch database `<name>_bench_identify`, dropped and recreated. The submissions come from
//! a pool of people of whom 30% come back with spelling variants (case, spaces, phone format)
//! or a new phone (an alias).

use std::time::Duration;

use chrono::Utc;
use pipeline::BoxError;
use pipeline::config::ConsumerConfig;
use pipeline::consumer::{self, Consumer};
use pipeline::identity::PhoneRegion;
use pipeline::message::Submission;
use pipeline::queue::{self, QueueName};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use workers::identify::Identify;

struct Options {
    submissions: usize,
    workers: Vec<usize>,
    batch_size: u32,
}

fn options() -> Result<Options, BoxError> {
    let mut options = Options { submissions: 30_000, workers: vec![1, 2], batch_size: 100 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--submissions" => options.submissions = value()?.parse()?,
            "--batch-size" => options.batch_size = value()?.parse()?,
            "--workers" => {
                options.workers = value()?.split(',').map(|w| w.trim().parse()).collect::<Result<_, _>>()?;
            }
            _ => {} // cargo bench passes --bench
        }
    }
    Ok(options)
}

/// `count` submissions: a new person 70% of the time, otherwise an earlier one in another
/// spelling (and sometimes another phone, which makes an alias).
fn submissions(count: usize) -> Vec<Submission> {
    let mut state = 0x1D_u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let names = ["Ann Lee", "Bob Stone", "Chloé Martin", "Dmitri Ivanov", "Eve Adams", "Fatima Khan", "Gus Brown"];
    let mut people = 0usize;
    let now = Utc::now();
    (0..count)
        .map(|_| {
            let (person, variant) = if people == 0 || next(10) < 7 {
                people += 1;
                (people - 1, false)
            } else {
                (next(people), true)
            };
            let email = format!("person{person}@example.com");
            let name = format!("{} {person}", names[person % names.len()]);
            let line = person % 10_000;
            let area = [212, 415, 646, 305, 312][person / 10_000 % 5];
            let (email, name, phone) = match (variant, next(3)) {
                (false, _) => (email, name, format!("{area} 420 {line:04}")),
                (true, 0) => (email.to_uppercase(), name.to_lowercase(), format!("({area}) 420-{line:04}")),
                (true, 1) => (format!(" {email}"), format!("  {name} "), format!("+1 {area}.420.{line:04}")),
                (true, _) => (email, name, format!("{area} 421 {:04}", next(10_000))),
            };
            Submission {
                submission_id: Uuid::now_v7(),
                site_id: Uuid::nil(),
                site: "degreefinder".to_owned(),
                submitted_at: now,
                email: Some(email),
                full_name: Some(name),
                phone: Some(phone),
                fields: json!({ "state": "CA", "age": 29, "program": "nursing" })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect()
}

async fn reset(pool: &PgPool, submissions: &[Submission]) -> Result<(), BoxError> {
    sqlx::query("TRUNCATE persons RESTART IDENTITY CASCADE").execute(pool).await?;
    for q in ["submissions", "submissions_dlq", "routing"] {
        sqlx::query("SELECT pgmq.purge_queue($1)").bind(q).execute(pool).await?;
    }
    let queue = QueueName::new(queue::fixed::SUBMISSIONS)?;
    let bodies: Vec<Value> = submissions.iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
    for chunk in bodies.chunks(1_000) {
        queue::send_batch(pool, &queue, chunk).await?;
    }
    sqlx::query("VACUUM ANALYZE pgmq.q_submissions").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE persons").execute(pool).await?;
    Ok(())
}

/// Drains `submissions` with `workers` identify consumers; returns the elapsed time.
async fn run(pool: &PgPool, workers: usize, batch_size: u32, total: usize) -> Result<Duration, BoxError> {
    let mut consumers = Vec::new();
    let readers = queue::Readers::new(pool);
    for _ in 0..workers {
        let mut config = ConsumerConfig::new("identify", QueueName::new(queue::fixed::SUBMISSIONS)?)?;
        config.defaults.batch_size = batch_size;
        consumers
            .push(Consumer::new(pool.clone(), config, Identify::new(PhoneRegion::default())?).with_readers(&readers));
    }
    Ok(consumer::run_until_settled(consumers, total as u64).await)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = options()?;
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set: run `./dev bench`")?;
    let pool = pipeline::db::scratch_database(&url, "bench_identify").await?;
    let leads = submissions(options.submissions);
    println!("identify: normalize + lock + match + record + forward, batch size {}", options.batch_size);
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>10} {:>12}",
        "workers", "submissions", "persons", "aliases", "seconds", "leads/s"
    );
    for &workers in &options.workers {
        reset(&pool, &leads).await?;
        let elapsed = run(&pool, workers, options.batch_size, leads.len()).await?;
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool);
        let persons = count("SELECT count(*) FROM persons WHERE alias_of IS NULL").await?;
        let aliases = count("SELECT count(*) FROM persons WHERE alias_of IS NOT NULL").await?;
        let routed = count("SELECT count(*) FROM pgmq.q_routing").await?;
        if routed != leads.len() as i64 {
            return Err(format!("{routed} of {} submissions reached routing", leads.len()).into());
        }
        let rate = leads.len() as f64 / elapsed.as_secs_f64();
        println!(
            "{workers:>8} {:>12} {persons:>10} {aliases:>10} {:>10.2} {rate:>12.0}",
            leads.len(),
            elapsed.as_secs_f64()
        );
    }
    Ok(())
}
