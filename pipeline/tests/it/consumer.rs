//! The consumer loop against real queues: retries and dead letters, undecodable messages,
//! competing consumers, transactional batches, and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pipeline::BoxError;
use pipeline::config::ConsumerConfig;
use pipeline::consumer::{BatchReport, Consumer, DeadLetter, Envelope, Handler, Outcome, Output};
use pipeline::queue::{self, QueueName};
use pipeline::retry::ExponentialBackoff;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    n: i64,
}

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Record the job in `handled` and forward `{n}` to the output queue.
    Forward,
    /// Record the job, then fail the message (transiently).
    FailEveryMessage,
    /// Record the jobs, then fail the whole batch.
    FailBatch,
    /// Like `Forward`, after a pause (to be caught mid-batch).
    SlowForward(Duration),
}

struct TestHandler {
    behaviour: Behaviour,
    output: QueueName,
    calls: AtomicUsize,
    started: Notify,
}

impl TestHandler {
    fn new(behaviour: Behaviour, output: &str) -> Self {
        Self { behaviour, output: queue_name(output), calls: AtomicUsize::new(0), started: Notify::new() }
    }
}

impl Handler for TestHandler {
    type Message = Job;
    type Error = BoxError;

    async fn handle(&self, tx: &mut PgConnection, batch: &[Envelope<Job>]) -> Result<Vec<Outcome>, BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.notify_waiters();
        if let Behaviour::SlowForward(pause) = self.behaviour {
            tokio::time::sleep(pause).await;
        }
        let ns: Vec<i64> = batch.iter().map(|e| e.body.n).collect();
        sqlx::query("INSERT INTO handled (n) SELECT * FROM unnest($1::bigint[])").bind(&ns).execute(&mut *tx).await?;
        match self.behaviour {
            Behaviour::FailBatch => Err("the batch broke".into()),
            Behaviour::FailEveryMessage => Ok(batch.iter().map(|_| Outcome::Retry("boom".to_owned())).collect()),
            Behaviour::Forward | Behaviour::SlowForward(_) => Ok(batch
                .iter()
                .map(|e| Outcome::Done(vec![Output::new(self.output.clone(), &Job { n: e.body.n }).expect("encodes")]))
                .collect()),
        }
    }
}

fn queue_name(name: &str) -> QueueName {
    QueueName::new(name).expect("valid queue name")
}

/// A migrated database with an `input` queue (and `input_dlq`), an `output` queue and a
/// `handled` table the test handler writes to.
async fn setup(pool: &PgPool) {
    pipeline::db::migrate(pool).await.expect("migrate");
    let mut conn = pool.acquire().await.expect("connection");
    queue::create_with_dead_letter_queue(&mut conn, &queue_name("input")).await.expect("input queue");
    sqlx::query("SELECT pgmq.create('output')").execute(pool).await.expect("output queue");
    sqlx::query("CREATE TABLE handled (n bigint NOT NULL)").execute(pool).await.expect("handled table");
}

fn config(max_retries: u32, batch_size: u32) -> ConsumerConfig {
    let mut config = ConsumerConfig::new("test-worker", queue_name("input")).expect("config");
    config.max_retries = max_retries;
    config.defaults.batch_size = batch_size;
    config.defaults.backoff = ExponentialBackoff { base: Duration::ZERO, cap: Duration::ZERO };
    config.defaults.poll_interval = Duration::from_millis(20);
    config
}

async fn send_jobs(pool: &PgPool, range: std::ops::Range<i64>) {
    let messages: Vec<Value> = range.map(|n| json!({ "n": n })).collect();
    for chunk in messages.chunks(500) {
        queue::send_batch(pool, &queue_name("input"), chunk).await.expect("send");
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

async fn queue_bodies(pool: &PgPool, table: &str) -> Vec<Value> {
    sqlx::query_scalar(&format!("SELECT message FROM pgmq.{table} ORDER BY msg_id"))
        .fetch_all(pool)
        .await
        .expect("queue contents")
}

#[sqlx::test(migrations = false)]
async fn a_message_failing_every_attempt_lands_in_the_dlq_with_its_error(pool: PgPool) {
    setup(&pool).await;
    send_jobs(&pool, 7..8).await;
    let consumer = Consumer::new(pool.clone(), config(2, 10), TestHandler::new(Behaviour::FailEveryMessage, "output"));

    let mut reports = Vec::new();
    for _ in 0..10 {
        let report = consumer.run_once().await.expect("batch");
        if report.read == 0 {
            break;
        }
        reports.push(report);
    }
    // (The test's backoff is zero: the retried message is due again at once.)
    let retry = BatchReport { read: 1, retried: 1, ..BatchReport::default() };
    let last = BatchReport { read: 1, dead_lettered: 1, ..BatchReport::default() };
    assert_eq!(reports, [retry, retry, last], "two retries, then the DLQ");

    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_input").await, 0, "gone from the input queue");
    let letters = queue_bodies(&pool, "q_input_dlq").await;
    assert_eq!(letters.len(), 1);
    let letter: DeadLetter = serde_json::from_value(letters[0].clone()).expect("a dead-letter envelope");
    assert_eq!(letter.message, json!({ "n": 7 }));
    assert_eq!(letter.error, "boom");
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.worker, "test-worker");
    assert_eq!(letter.queue, "input");
    assert!(letter.failed_at >= letter.enqueued_at);
    // Each attempt's rows were committed with the attempt's outcome (the handler wrote them),
    // but nothing was forwarded.
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_output").await, 0);
    let stats = consumer.stats().snapshot();
    assert_eq!((stats.retried, stats.dead_lettered, stats.done), (2, 1, 0));
}

#[sqlx::test(migrations = false)]
async fn an_undecodable_message_goes_to_the_dlq_at_once(pool: PgPool) {
    setup(&pool).await;
    queue::send_batch(&pool, &queue_name("input"), &[json!({ "n": "not a number" }), json!({ "n": 1 })])
        .await
        .expect("send");
    let consumer = Consumer::new(pool.clone(), config(5, 10), TestHandler::new(Behaviour::Forward, "output"));

    let report = consumer.run_once().await.expect("batch");
    assert_eq!(report, BatchReport { read: 2, done: 1, dead_lettered: 1, ..BatchReport::default() });
    let letters = queue_bodies(&pool, "q_input_dlq").await;
    let letter: DeadLetter = serde_json::from_value(letters[0].clone()).expect("envelope");
    assert_eq!(letter.message, json!({ "n": "not a number" }));
    assert_eq!(letter.attempts, 1, "no retries for a message that cannot be decoded");
    assert!(letter.error.starts_with("cannot decode message"), "{}", letter.error);
    assert_eq!(queue_bodies(&pool, "q_output").await, [json!({ "n": 1 })]);
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_input").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_message_whose_worker_kept_dying_is_dead_lettered_without_another_try(pool: PgPool) {
    setup(&pool).await;
    send_jobs(&pool, 1..2).await;
    // Three reads that never settle: what a worker killed mid-batch leaves behind.
    for _ in 0..3 {
        sqlx::query("SELECT * FROM pgmq.read('input', 0, 1)").execute(&pool).await.expect("read");
    }
    let handler = TestHandler::new(Behaviour::Forward, "output");
    let consumer = Consumer::new(pool.clone(), config(2, 10), handler);

    let report = consumer.run_once().await.expect("batch");
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(consumer.handler().calls.load(Ordering::SeqCst), 0, "the handler never saw it");
    let letter: DeadLetter =
        serde_json::from_value(queue_bodies(&pool, "q_input_dlq").await[0].clone()).expect("envelope");
    assert_eq!(letter.attempts, 4);
    assert!(letter.error.starts_with("gave up after 3 attempts"), "{}", letter.error);
}

#[sqlx::test(migrations = false)]
async fn a_failed_batch_rolls_back_its_rows_outputs_and_deletes_together(pool: PgPool) {
    setup(&pool).await;
    send_jobs(&pool, 0..20).await;

    // The handler writes rows, then fails the batch: nothing of the batch may remain.
    let failing = Consumer::new(pool.clone(), config(3, 100), TestHandler::new(Behaviour::FailBatch, "output"));
    let report = failing.run_once().await.expect("failure is recorded");
    assert_eq!(report, BatchReport { read: 20, retried: 20, failed: true, ..BatchReport::default() });
    assert_eq!(count(&pool, "SELECT count(*) FROM handled").await, 0, "handler rows rolled back");
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_output").await, 0, "no outputs");
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_input WHERE read_ct = 1").await, 20, "inputs kept");

    // Sending an output fails (its queue does not exist) after rows were written and inputs
    // deleted in the same transaction: again all of it rolls back.
    let no_queue = Consumer::new(pool.clone(), config(3, 100), TestHandler::new(Behaviour::Forward, "nowhere"));
    let report = no_queue.run_once().await.expect("failure is recorded");
    assert!(report.failed);
    assert_eq!(count(&pool, "SELECT count(*) FROM handled").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_input WHERE read_ct = 2").await, 20);

    // A working handler then commits everything at once.
    let working = Consumer::new(pool.clone(), config(3, 100), TestHandler::new(Behaviour::Forward, "output"));
    let report = working.run_once().await.expect("batch");
    assert_eq!(report.done, 20);
    assert_eq!(count(&pool, "SELECT count(*) FROM handled").await, 20);
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_output").await, 20);
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_input").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_retry_waits_for_the_backoff(pool: PgPool) {
    setup(&pool).await;
    send_jobs(&pool, 0..1).await;
    let mut slow_retry = config(3, 10);
    slow_retry.defaults.backoff = ExponentialBackoff { base: Duration::from_secs(60), cap: Duration::from_secs(60) };
    let consumer =
        Consumer::new(pool.clone(), slow_retry, TestHandler::new(Behaviour::FailEveryMessage, "output")).with_seed(42);

    assert_eq!(consumer.run_once().await.expect("batch").retried, 1);
    assert_eq!(consumer.run_once().await.expect("batch").read, 0, "invisible while backing off");
    let wait: f64 = sqlx::query_scalar("SELECT extract(epoch FROM vt - clock_timestamp())::float8 FROM pgmq.q_input")
        .fetch_one(&pool)
        .await
        .expect("vt");
    assert!((28.0..=60.0).contains(&wait), "equal jitter keeps the delay in [30 s, 60 s], got {wait}");
}

#[sqlx::test(migrations = false)]
async fn two_consumers_on_one_queue_forward_each_message_exactly_once(pool: PgPool) {
    setup(&pool).await;
    const N: i64 = 2_000;
    send_jobs(&pool, 0..N).await;

    let shutdown = CancellationToken::new();
    let mut workers = Vec::new();
    // One reads in its own transaction, the other on the readers' pool, as the service's do.
    let readers = pipeline::queue::Readers::new(&pool);
    for (batch_size, on_readers) in [(7, false), (50, true)] {
        let consumer =
            Consumer::new(pool.clone(), config(3, batch_size), TestHandler::new(Behaviour::Forward, "output"));
        let consumer = Arc::new(if on_readers { consumer.with_readers(&readers) } else { consumer });
        let token = shutdown.clone();
        let running = Arc::clone(&consumer);
        workers.push((consumer, tokio::spawn(async move { running.run(token).await })));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count(&pool, "SELECT count(*) FROM pgmq.q_input").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "consumers did not drain the queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    let mut handled_by = Vec::new();
    for (consumer, task) in workers {
        task.await.expect("consumer task");
        let stats = consumer.stats().snapshot();
        assert_eq!((stats.skipped, stats.retried, stats.dead_lettered), (0, 0, 0), "nothing stranded or retried");
        handled_by.push(stats.done);
    }

    assert_eq!(handled_by.iter().sum::<u64>(), N as u64);
    assert!(handled_by.iter().all(|&n| n > 0), "both consumers took part: {handled_by:?}");
    let outputs: Vec<i64> = sqlx::query_scalar("SELECT (message->>'n')::bigint FROM pgmq.q_output ORDER BY 1")
        .fetch_all(&pool)
        .await
        .expect("outputs");
    assert_eq!(outputs, (0..N).collect::<Vec<_>>(), "every message forwarded exactly once");
    assert_eq!(count(&pool, "SELECT count(*) FROM (SELECT n FROM handled GROUP BY n HAVING count(*) > 1) d").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM handled").await, N);
}

/// The readers' pool hands out connections without pinging them first: one the server dropped
/// while it sat idle (a restart, an idle timeout) costs no failed batch, the read runs again on
/// another connection.
#[sqlx::test(migrations = false)]
async fn a_read_on_a_lost_reader_connection_is_read_on_another(pool: PgPool) {
    setup(&pool).await;
    let readers = pipeline::queue::Readers::new(&pool);
    let consumer = Consumer::new(pool.clone(), config(3, 10), TestHandler::new(Behaviour::Forward, "output"))
        .with_readers(&readers);
    assert_eq!(consumer.run_once().await.expect("an empty read").read, 0);
    // Every reader's connection, named in `pg_stat_activity`, dropped by the server.
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name LIKE '% reads'",
    )
    .fetch_all(&pool)
    .await
    .expect("terminate");
    assert!(!terminated.is_empty() && terminated.iter().all(|&t| t), "the readers' connections are gone");
    assert!(readers.pool().size() > 0, "the pool still holds them");

    send_jobs(&pool, 0..3).await;
    let report = consumer.run_once().await.expect("read on another connection");
    assert_eq!((report.read, report.done, report.failed), (3, 3, false));
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_output").await, 3);
}

#[sqlx::test(migrations = false)]
async fn shutdown_finishes_the_batch_in_hand(pool: PgPool) {
    setup(&pool).await;
    send_jobs(&pool, 0..30).await;
    let consumer = Arc::new(Consumer::new(
        pool.clone(),
        config(3, 100),
        TestHandler::new(Behaviour::SlowForward(Duration::from_millis(500)), "output"),
    ));
    let shutdown = CancellationToken::new();
    let started = consumer.handler().started.notified();
    let running = Arc::clone(&consumer);
    let token = shutdown.clone();
    let task = tokio::spawn(async move { running.run(token).await });

    started.await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops promptly").expect("no panic");

    assert_eq!(consumer.handler().calls.load(Ordering::SeqCst), 1, "no new batch after the signal");
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_output").await, 30, "the batch in hand was finished");
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_input").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_woken_consumer_takes_a_message_at_once_though_it_polls_only_every_minute(pool: PgPool) {
    setup(&pool).await;
    // Idle, it would poll only every minute: what it takes comes from the wake-up.
    let mut quiet = config(3, 100);
    quiet.defaults.idle_poll = Duration::from_secs(60);
    quiet.defaults.poll_interval = Duration::from_secs(60);
    let woken = Woken::start(&pool, quiet, TestHandler::new(Behaviour::Forward, "output"));
    // Let it read the empty queue and start waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 1..=3 {
        queue::send(&pool, &queue_name("input"), &json!({ "n": round })).await.expect("send");
        let forwarded = async {
            while count(&pool, "SELECT count(*) FROM pgmq.q_output").await < round {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), forwarded).await.expect("taken within seconds, not a minute");
    }
    woken.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_woken_consumer_takes_a_retry_when_it_is_due_though_no_notification_says_so(pool: PgPool) {
    setup(&pool).await;
    // Every attempt fails; the retry is a second later, and idle the consumer polls only
    // every minute: the second attempt comes from asking the queue when its message is due.
    let mut quiet = config(1, 100);
    quiet.defaults.idle_poll = Duration::from_secs(60);
    quiet.defaults.backoff = ExponentialBackoff { base: Duration::from_secs(1), cap: Duration::from_secs(1) };
    let woken = Woken::start(&pool, quiet, TestHandler::new(Behaviour::FailEveryMessage, "output"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_jobs(&pool, 0..1).await;
    let started = std::time::Instant::now();
    let dead_lettered = async {
        while count(&pool, "SELECT count(*) FROM pgmq.q_input_dlq").await < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), dead_lettered).await.expect("retried when due, not a minute later");
    assert_eq!(woken.consumer.handler().calls.load(Ordering::SeqCst), 2, "two attempts, then the DLQ");
    assert!(started.elapsed() >= Duration::from_millis(400), "the retry waited for its delay: {:?}", started.elapsed());
    assert_eq!(count(&pool, "SELECT count(*) FROM pgmq.q_input").await, 0, "nothing waits in the queue");
    woken.stop().await;
}

/// A read answers the wake-ups received before it starts (their messages were committed
/// before they were announced, so the read takes them): none is left standing to bring an
/// empty read once the batch is done. One received after the read still stands.
#[sqlx::test(migrations = false)]
async fn a_read_answers_the_wake_ups_received_before_it(pool: PgPool) {
    setup(&pool).await;
    let wakeups = pipeline::wake::Wakeups::new();
    let consumer = Consumer::new(pool.clone(), config(3, 100), TestHandler::new(Behaviour::Forward, "output"))
        .with_wakeups(&wakeups);
    let standing = || futures_util::FutureExt::now_or_never(wakeups.register("input").notified()).is_some();
    for n in 0..3 {
        queue::send(&pool, &queue_name("input"), &json!({ "n": n })).await.expect("send");
        // What the listener does on each notification.
        wakeups.wake("input");
    }
    let report = consumer.run_once().await.expect("batch");
    assert_eq!((report.read, report.done), (3, 3), "{report:?}");
    assert!(!standing(), "a wake-up the read already answered is left standing");

    queue::send(&pool, &queue_name("input"), &json!({ "n": 3 })).await.expect("send");
    wakeups.wake("input");
    assert!(standing(), "a wake-up after the read stands until the next one");
}

/// A consumer of `input` woken by a process's listener of its own, running until [`Woken::stop`].
struct Woken {
    consumer: Arc<Consumer<TestHandler>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    listener: tokio::task::JoinHandle<()>,
}

impl Woken {
    fn start(pool: &PgPool, config: ConsumerConfig, handler: TestHandler) -> Self {
        let wakeups = pipeline::wake::Wakeups::new();
        let shutdown = CancellationToken::new();
        let listener = tokio::spawn(Arc::clone(&wakeups).listen(pool.clone(), shutdown.clone()));
        let consumer = Arc::new(Consumer::new(pool.clone(), config, handler).with_wakeups(&wakeups));
        let running = Arc::clone(&consumer);
        let token = shutdown.clone();
        let task = tokio::spawn(async move { running.run(token).await });
        Self { consumer, shutdown, task, listener }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("stops").expect("no panic");
        self.listener.await.expect("the listener stops");
    }
}
