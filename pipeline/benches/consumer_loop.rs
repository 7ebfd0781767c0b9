//! Consumer-loop throughput: messages per second through `Consumer` with a no-op handler
//! (read, lock, delete, commit), for batch sizes 1, 10 and 100, with one and two consumers.
//!
//! Run with `./dev bench` (it starts the private cluster and sets `DATABASE_URL`). The bench
//! works in a scratch database `<name>_bench` next to the one `DATABASE_URL` names, which it
//! drops and recreates. Options: `--messages N` (per batch size of 100; smaller batch sizes
//! get proportionally fewer, at least 2,000), `--batch-sizes 1,10,100`, `--consumers 1,2`.

use std::time::Duration;

use pipeline::BoxError;
use pipeline::config::ConsumerConfig;
use pipeline::consumer::{self, Consumer, Envelope, Handler, Outcome};
use pipeline::queue::{self, QueueName};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

/// Acknowledges every message and does nothing else.
struct NoOp;

impl Handler for NoOp {
    type Message = Value;
    type Error = std::convert::Infallible;

    async fn handle(
        &self,
        _tx: &mut PgConnection,
        batch: &[Envelope<Value>],
    ) -> Result<Vec<Outcome>, std::convert::Infallible> {
        Ok(batch.iter().map(|_| Outcome::Done(Vec::new())).collect())
    }
}

struct Options {
    messages: usize,
    batch_sizes: Vec<u32>,
    consumers: Vec<usize>,
}

fn parse_list<T: std::str::FromStr>(value: &str) -> Result<Vec<T>, BoxError> {
    value.split(',').map(|v| v.trim().parse::<T>().map_err(|_| format!("bad list item `{v}`").into())).collect()
}

fn options() -> Result<Options, BoxError> {
    let mut options = Options { messages: 60_000, batch_sizes: vec![1, 10, 100], consumers: vec![1, 2] };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--messages" => options.messages = args.next().ok_or("--messages needs a value")?.parse()?,
            "--batch-sizes" => options.batch_sizes = parse_list(&args.next().ok_or("--batch-sizes needs a value")?)?,
            "--consumers" => options.consumers = parse_list(&args.next().ok_or("--consumers needs a value")?)?,
            _ => {} // cargo bench passes --bench; other harness flags do not apply
        }
    }
    Ok(options)
}

async fn fill(pool: &PgPool, queue: &QueueName, messages: usize) -> Result<(), BoxError> {
    let lead = json!({ "person_id": 1, "fields": { "state": "CA", "age": 29, "program": "nursing" } });
    let chunk = vec![lead; 1_000];
    let mut left = messages;
    while left > 0 {
        let n = left.min(chunk.len());
        queue::send_batch(pool, queue, &chunk[..n]).await?;
        left -= n;
    }
    sqlx::query(&format!("VACUUM ANALYZE pgmq.\"q_{queue}\"")).execute(pool).await?;
    Ok(())
}

/// Drains `messages` from a fresh queue with `consumers` consumers; returns the elapsed time.
async fn run(pool: &PgPool, batch_size: u32, consumers_count: usize, messages: usize) -> Result<Duration, BoxError> {
    let queue = QueueName::new(format!("bench_b{batch_size}_c{consumers_count}"))?;
    queue::create_with_dead_letter_queue(&mut *pool.acquire().await?, &queue).await?;
    fill(pool, &queue, messages).await?;

    let mut consumers = Vec::new();
    let readers = queue::Readers::new(pool);
    for i in 0..consumers_count {
        let mut config = ConsumerConfig::new(format!("bench-{i}"), queue.clone())?;
        config.defaults.batch_size = batch_size;
        consumers.push(Consumer::new(pool.clone(), config, NoOp).with_readers(&readers));
    }
    let elapsed = consumer::run_until_settled(consumers, messages as u64).await;
    let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM pgmq.\"q_{queue}\"")).fetch_one(pool).await?;
    if left != 0 {
        return Err(format!("{left} messages left in {queue}").into());
    }
    Ok(elapsed)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = options()?;
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set: run `./dev bench`")?;
    let pool = pipeline::db::scratch_database(&url, "bench").await?;
    println!("consumer loop, no-op handler (read + lock + delete + commit per batch)");
    println!("{:>10} {:>10} {:>10} {:>10} {:>12}", "batch", "consumers", "messages", "seconds", "msgs/s");
    for &batch_size in &options.batch_sizes {
        let messages = (options.messages * batch_size as usize / 100).max(2_000);
        for &consumers in &options.consumers {
            let elapsed = run(&pool, batch_size, consumers, messages).await?;
            let rate = messages as f64 / elapsed.as_secs_f64();
            println!("{batch_size:>10} {consumers:>10} {messages:>10} {:>10.2} {rate:>12.0}", elapsed.as_secs_f64());
        }
    }
    Ok(())
}
