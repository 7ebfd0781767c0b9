//! The PGMQ the database has, detected, and the queue metrics on it. `./dev test` runs this
//! suite twice: on the SQL the `pgmq` crate embeds (`OFFER_ROUTER_TEST_PGMQ` unset), and as a
//! non-superuser role on a cluster whose Postgres ships the `pgmq` 1.4.4 extension, as
//! Supabase does (`OFFER_ROUTER_TEST_PGMQ=1.4.4`).

use pipeline::db;
use pipeline::queue::{self, Pgmq, PgmqInstall, QueueMetrics, QueueName, Version};
use sqlx::postgres::PgSslMode;
use sqlx::{Connection, PgConnection, PgPool};

/// What this run's database must offer (`OFFER_ROUTER_TEST_PGMQ`): `embedded`, the version
/// of the extension (`1.4.4`), or nothing to expect (unset, e.g. a `DATABASE_URL` of yours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expected {
    Anything,
    EmbeddedSql,
    Extension(Version),
}

pub(crate) fn expected() -> Expected {
    match std::env::var("OFFER_ROUTER_TEST_PGMQ").unwrap_or_default().as_str() {
        "" => Expected::Anything,
        "embedded" => Expected::EmbeddedSql,
        version => Expected::Extension(Version::parse(version).expect("OFFER_ROUTER_TEST_PGMQ: embedded or a version")),
    }
}

#[sqlx::test(migrations = false)]
async fn the_pgmq_detected_is_the_one_installed(pool: PgPool) {
    let pgmq = db::migrate(&pool).await.expect("migrate");
    assert_eq!(Pgmq::detect(&pool).await.expect("detect"), pgmq, "detect reads what migrate reported");
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
         WHERE t.oid = 'pgmq.metrics_result'::regtype AND NOT a.attisdropped",
    )
    .fetch_all(&pool)
    .await
    .expect("columns");
    assert_eq!(pgmq.reports_visible_length, columns.iter().any(|c| c == "queue_visible_length"), "{columns:?}");
    match expected() {
        // The extension Supabase ships: 1.4.4, without the visible length, and the service's
        // role is no superuser (like Supabase's `postgres`).
        Expected::Extension(version) => {
            assert_eq!((pgmq.install, pgmq.version), (PgmqInstall::Extension, version), "{pgmq}");
            assert!(!pgmq.reports_visible_length || version >= Version(1, 5, 0), "{pgmq}");
            let superuser: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&pool)
                .await
                .expect("role");
            assert!(!superuser, "the extension suite runs as a role without superuser");
        }
        // The crate's embedded SQL: newer than 1.5, so it reports the visible length itself.
        Expected::EmbeddedSql => {
            assert_eq!(pgmq.install, PgmqInstall::EmbeddedSql, "{pgmq}");
            assert!(pgmq.version >= Version(1, 5, 0) && pgmq.reports_visible_length, "{pgmq}");
        }
        Expected::Anything => {}
    }
}

/// Migrates, and creates the queues `names`, each with its dead-letter queue; returns the PGMQ
/// detected and the queues.
async fn with_queues<const N: usize>(pool: &PgPool, names: [&str; N]) -> (Pgmq, [QueueName; N]) {
    let pgmq = db::migrate(pool).await.expect("migrate");
    let queues = names.map(|name| QueueName::new(name).expect("name"));
    let mut conn = pool.acquire().await.expect("connection");
    for queue in &queues {
        queue::create_with_dead_letter_queue(&mut conn, queue).await.expect("queues");
    }
    (pgmq, queues)
}

/// The figures of queue `name` in `metrics`, without the ages (they tick with the clock).
fn figures(metrics: &[QueueMetrics], name: &str) -> (i64, i64, i64) {
    let m = metrics.iter().find(|m| m.queue_name == name).expect("the queue's metrics");
    (m.queue_length, m.queue_visible_length, m.total_messages)
}

#[sqlx::test(migrations = false)]
async fn metrics_report_the_visible_length_whether_pgmq_does_or_not(pool: PgPool) {
    let (pgmq, [name]) = with_queues(&pool, ["metered"]).await;
    for n in 0..3 {
        queue::send(&pool, &name, &serde_json::json!({ "n": n })).await.expect("send");
    }
    // One message read: invisible for a minute.
    sqlx::query("SELECT * FROM pgmq.read('metered', 60, 1)").execute(&pool).await.expect("read");

    let detected = pgmq.metrics_all(&pool).await.expect("metrics with the detected form");
    assert_eq!(figures(&detected, "metered"), (3, 2, 3));
    assert_eq!(figures(&detected, "metered_dlq"), (0, 0, 0));
    let names: Vec<&str> = detected.iter().map(|m| m.queue_name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "sorted by name");
    assert!(names.len() == 7 && queue::fixed::ALL.iter().all(|q| names.contains(q)), "every queue: {names:?}");
    // The derived form (what PGMQ before 1.5 gets) agrees with what PGMQ reports.
    let derived = Pgmq { reports_visible_length: false, ..pgmq.clone() };
    let derived = derived.metrics_all(&pool).await.expect("metrics with the derived visible length");
    for m in &detected {
        assert_eq!(figures(&derived, &m.queue_name), figures(&detected, &m.queue_name), "{}", m.queue_name);
    }
    // Some queues' metrics are those queues' rows of all; a name that is no queue is left out.
    let names = ["metered".to_owned(), "routing".to_owned(), "no_such_queue".to_owned()];
    for form in [&pgmq, &Pgmq { reports_visible_length: false, ..pgmq.clone() }] {
        let some = form.metrics_of(&pool, &names).await.expect("metrics of some queues");
        let expected: Vec<_> = detected.iter().filter(|m| names.contains(&m.queue_name)).cloned().collect();
        assert_eq!(some.len(), 2, "{some:?}");
        for (one, all) in some.iter().zip(&expected) {
            assert_eq!(
                (&one.queue_name, figures(&some, &one.queue_name)),
                (&all.queue_name, figures(&expected, &all.queue_name))
            );
            assert_eq!(one.total_messages, all.total_messages);
        }
    }
    let lengths = queue::lengths(&pool).await.expect("lengths");
    assert_eq!(lengths, detected.iter().map(|m| (m.queue_name.clone(), m.queue_length)).collect::<Vec<_>>());
}

/// The queues holding messages, named by the server's statistics (a second or so behind) and
/// counted exactly; the empty ones are not counted at all.
#[sqlx::test(migrations = false)]
async fn busy_lengths_count_the_queues_holding_messages(pool: PgPool) {
    let (_, [busy, _idle]) = with_queues(&pool, ["busy", "idle"]).await;
    let bodies: Vec<serde_json::Value> = (0..4).map(|n| serde_json::json!({ "n": n })).collect();
    queue::send_batch(&pool, &busy, &bodies).await.expect("send");
    queue::send(&pool, &queue::QueueName::new(queue::fixed::ROUTING).expect("name"), &serde_json::json!({}))
        .await
        .expect("send");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let busy_lengths = loop {
        let lengths = queue::busy_lengths(&pool).await.expect("busy lengths");
        if lengths.len() == 2 || std::time::Instant::now() > deadline {
            break lengths;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(busy_lengths, [("busy".to_owned(), 4), ("routing".to_owned(), 1)], "sorted by name, exact");
    let all = queue::lengths(&pool).await.expect("lengths");
    assert_eq!(all.len(), 4 + queue::fixed::ALL.len(), "the idle queues are there, and left out: {all:?}");
}

/// The queues of a suffix with their exact lengths, as `pgmq.metrics_all()` gives them: a queue
/// never written is empty without a count, and a queue written and emptied again still counts.
#[sqlx::test(migrations = false)]
async fn lengths_ending_in_a_suffix_are_exact_without_counting_queues_never_written(pool: PgPool) {
    let (_, [full, emptied, never]) = with_queues(&pool, ["full_dlq", "emptied_dlq", "never_dlq"]).await;
    let body = serde_json::json!({ "n": 1 });
    queue::send_batch(&pool, &full, &[body.clone(), body.clone(), body.clone()]).await.expect("send");
    queue::send(&pool, &emptied, &body).await.expect("send");
    sqlx::query("DELETE FROM pgmq.q_emptied_dlq").execute(&pool).await.expect("emptied");
    let size = |queue: &queue::QueueName| {
        sqlx::query_scalar::<_, i64>("SELECT pg_relation_size(format('pgmq.%I', 'q_' || $1::text))")
            .bind(queue.as_str().to_owned())
            .fetch_one(&pool)
    };
    assert!(size(&emptied).await.expect("size") > 0, "the emptied queue keeps its page");
    assert_eq!(size(&never).await.expect("size"), 0, "the premise: a queue never written has no page");

    let lengths = queue::lengths_ending_in(&pool, "_dlq").await.expect("lengths");
    let expected: Vec<(String, i64)> = queue::lengths(&pool)
        .await
        .expect("all lengths")
        .into_iter()
        .filter(|(name, _)| name.ends_with("_dlq"))
        .collect();
    assert_eq!(lengths, expected);
    let of = |name: &str| lengths.iter().find(|(q, _)| q == name).map(|(_, length)| *length);
    assert_eq!((of("full_dlq"), of("emptied_dlq"), of("never_dlq")), (Some(3), Some(0), Some(0)));
}

#[sqlx::test(migrations = false)]
async fn a_database_without_pgmq_is_a_clear_error(pool: PgPool) {
    let error = Pgmq::detect(&pool).await.expect_err("no pgmq yet");
    assert!(error.to_string().contains("run `offer-router migrate`"), "{error}");
}

/// Supabase is reached over the internet, so `sslmode=require` must encrypt: the extension
/// cluster of `./dev test` has TLS on, as Supabase does. Where the server has no TLS (the
/// other cluster), `require` must fail rather than fall back to plain text.
#[sqlx::test(migrations = false)]
async fn sslmode_require_encrypts_or_refuses(pool: PgPool) {
    let server_tls: bool =
        sqlx::query_scalar("SELECT current_setting('ssl') = 'on'").fetch_one(&pool).await.expect("setting");
    if matches!(expected(), Expected::Extension(_)) {
        assert!(server_tls, "the extension cluster (Supabase's stand-in) has TLS on");
    }
    let options = (*pool.connect_options()).clone().ssl_mode(PgSslMode::Require);
    match PgConnection::connect_with(&options).await {
        Ok(mut conn) => {
            let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&mut conn)
                .await
                .expect("pg_stat_ssl");
            assert!(server_tls && encrypted, "sslmode=require gave an encrypted session");
        }
        Err(error) => assert!(!server_tls, "the server has TLS, yet sslmode=require failed: {error}"),
    }
}

/// Sends and reads are PGMQ's statements run as our own (`queue::send_batch`, `send_many`,
/// `read_sql`): what they send, the extension's `pgmq.read` reads, in order; what the
/// extension's `pgmq.send` sends, our read takes as `pgmq.read` would; every queue sent to is
/// notified at the commit.
#[sqlx::test(migrations = false)]
async fn our_sends_and_reads_are_pgmqs(pool: PgPool) {
    let (_, [a, b]) = with_queues(&pool, ["first", "second"]).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.expect("listener");
    listener.listen(pipeline::wake::CHANNEL).await.expect("listen");
    let bodies = |ns: &[i64]| ns.iter().map(|n| serde_json::json!({ "n": n })).collect::<Vec<_>>();
    let pgmq_read = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i32, serde_json::Value)>(
                "SELECT msg_id, read_ct, message FROM pgmq.read($1, 60, 10)",
            )
            .bind(name)
            .fetch_all(&pool)
            .await
            .expect("pgmq.read")
        }
    };

    let ids = queue::send_batch(&pool, &a, &bodies(&[0, 1, 2])).await.expect("send_batch");
    assert_eq!(listener.recv().await.expect("notified").payload(), "first");
    let read = pgmq_read("first").await;
    assert_eq!(read, ids.iter().zip(bodies(&[0, 1, 2])).map(|(&id, body)| (id, 1, body)).collect::<Vec<_>>());

    let mut tx = pool.begin().await.expect("begin");
    let fan_out: Vec<_> = [(&a, 3), (&b, 10), (&a, 4), (&b, 11)]
        .into_iter()
        .map(|(q, n)| (q.clone(), serde_json::json!({ "n": n })))
        .collect();
    queue::send_many(&mut *tx, &fan_out).await.expect("send_many");
    tx.commit().await.expect("commit");
    let mut notified = vec![
        listener.recv().await.expect("notified").payload().to_owned(),
        listener.recv().await.expect("notified").payload().to_owned(),
    ];
    notified.sort_unstable();
    assert_eq!(notified, ["first", "second"]);
    let messages = |read: Vec<(i64, i32, serde_json::Value)>| read.into_iter().map(|(_, _, m)| m).collect::<Vec<_>>();
    assert_eq!(messages(pgmq_read("first").await), bodies(&[3, 4]), "in send order, after the ones read before");

    // The extension's send, our read: the first visible messages in order, read once, then
    // invisible for the visibility timeout.
    sqlx::query("SELECT pgmq.send('second', '{\"n\": 12}')").execute(&pool).await.expect("pgmq.send");
    let ours: Vec<(i64, i32, chrono::DateTime<chrono::Utc>, serde_json::Value)> =
        sqlx::query_as(&queue::read_sql(&b)).bind(2).bind(30).fetch_all(&pool).await.expect("our read");
    let mut taken: Vec<_> = ours.iter().map(|(id, read_ct, _, m)| (*id, *read_ct, m.clone())).collect();
    taken.sort_by_key(|(id, _, _)| *id);
    assert_eq!(taken.iter().map(|(_, ct, _)| *ct).collect::<Vec<_>>(), [1, 1]);
    assert_eq!(messages(taken), bodies(&[10, 11]), "the first two, in msg_id order");
    assert_eq!(messages(pgmq_read("second").await), bodies(&[12]), "the ones read are invisible");
    let due: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM min(vt) - clock_timestamp())::float8 FROM pgmq.q_second WHERE read_ct = 1 AND message->>'n' <> '12'",
    )
    .fetch_one(&pool)
    .await
    .expect("vt");
    assert!((25.0..=30.0).contains(&due), "invisible for the 30 s asked: {due}");
}

/// A backlog in a queue whose statistics were taken while it was nearly empty and full of dead
/// rows (autovacuum's usual view of a busy queue): the planner expects a few rows and reads by
/// a sequential scan through the whole heap, as PGMQ's own `pgmq.read` does; the consumer's
/// reads, on `queue::Readers` or in a `queue::BEGIN_BY_INDEX` transaction, take the first
/// messages by the primary key.
#[sqlx::test(migrations = false)]
async fn a_backlog_behind_stale_statistics_is_read_by_index(pool: PgPool) {
    let (_, [name]) = with_queues(&pool, ["backlog"]).await;
    let mut conn = pool.acquire().await.expect("connection");
    let fill = "INSERT INTO pgmq.q_backlog (vt, message)
                SELECT clock_timestamp(), jsonb_build_object('pad', repeat('x', 900), 'n', n) FROM generate_series(1, 20000) n";
    for statement in [
        "ALTER TABLE pgmq.q_backlog SET (autovacuum_enabled = false)",
        fill,
        "DELETE FROM pgmq.q_backlog WHERE msg_id > 100",
        "ANALYZE pgmq.q_backlog",
        fill,
    ] {
        sqlx::query(statement).execute(&mut *conn).await.expect(statement);
    }
    let plan = |lines: Vec<String>| lines.join("\n");
    let explain = format!("EXPLAIN {}", queue::read_sql(&name));
    let unguarded = plan(sqlx::query_scalar(&explain).bind(500).bind(30).fetch_all(&mut *conn).await.expect("plan"));
    assert!(unguarded.contains("Seq Scan on q_backlog"), "the trap this guards against:\n{unguarded}");
    // The consumer's statement: the read, and the next message's due time when it finds none.
    let read_or_next = queue::read_or_next_sql(&name);
    let explain = format!("EXPLAIN {read_or_next}");
    let by_index = |guarded: String| {
        assert!(
            guarded.contains("Index Scan using q_backlog_pkey") && !guarded.contains("Seq Scan"),
            "read by index:\n{guarded}"
        );
    };
    let ids = |read: Vec<ReadRow>| {
        let mut ids: Vec<i64> = read.iter().map(|(id, ..)| id.expect("messages only")).collect();
        ids.sort_unstable();
        ids
    };

    let mut tx = pool.begin_with(queue::BEGIN_BY_INDEX).await.expect("begin");
    by_index(plan(sqlx::query_scalar(&explain).bind(500).bind(30).fetch_all(&mut *tx).await.expect("plan")));
    let read = sqlx::query_as(&read_or_next).bind(500).bind(30).fetch_all(&mut *tx).await.expect("read");
    tx.commit().await.expect("commit");
    assert_eq!(ids(read), (1..=100).chain(20_001..=20_400).collect::<Vec<i64>>(), "the first 500 in msg_id order");

    // The readers' sessions read by index with no transaction around the read, and plan it
    // once for every run (a generic plan: the one checked here).
    let readers = queue::Readers::new(&pool);
    by_index(plan(sqlx::query_scalar(&explain).bind(500).bind(30).fetch_all(readers.pool()).await.expect("plan")));
    let read = sqlx::query_as(&read_or_next).bind(500).bind(30).fetch_all(readers.pool()).await.expect("read");
    assert_eq!(ids(read), (20_401..=20_900).collect::<Vec<i64>>(), "the next 500, read on the readers' pool");
    let settings: (String, String) =
        sqlx::query_as("SELECT current_setting('enable_seqscan'), current_setting('plan_cache_mode')")
            .fetch_one(readers.pool())
            .await
            .expect("the readers' settings");
    assert_eq!(settings, ("off".to_owned(), "force_generic_plan".to_owned()));
    let settings: (String, String) =
        sqlx::query_as("SELECT current_setting('enable_seqscan'), current_setting('plan_cache_mode')")
            .fetch_one(&mut *conn)
            .await
            .expect("the main pool's settings");
    assert_eq!(settings, ("on".to_owned(), "auto".to_owned()), "the main pool's sessions keep the planner's choice");
}

/// A row of `queue::read_or_next_sql`: `msg_id`, `read_ct`, `enqueued_at`, `message`, `next_in`.
type ReadRow =
    (Option<i64>, Option<i32>, Option<chrono::DateTime<chrono::Utc>>, Option<serde_json::Value>, Option<f64>);

/// The consumer's read returns the messages it read, or, when it finds none, one row saying
/// how long until the first invisible message becomes visible (none when nothing waits).
#[sqlx::test(migrations = false)]
async fn an_empty_read_says_when_the_next_message_is_due(pool: PgPool) {
    let (_, [name]) = with_queues(&pool, ["later"]).await;
    let read_or_next = queue::read_or_next_sql(&name);
    let read = |vt: i32| sqlx::query_as::<_, ReadRow>(&read_or_next).bind(10).bind(vt).fetch_all(&pool);

    let empty = read(30).await.expect("read");
    assert!(matches!(empty[..], [(None, None, None, None, None)]), "nothing waits: {empty:?}");

    let bodies: Vec<serde_json::Value> = (0..2).map(|n| serde_json::json!({ "n": n })).collect();
    queue::send_batch(&pool, &name, &bodies).await.expect("send");
    let first = read(30).await.expect("read");
    assert_eq!(first.len(), 2, "the messages alone: {first:?}");
    assert!(first.iter().all(|(id, read_ct, at, message, next)| {
        id.is_some() && *read_ct == Some(1) && at.is_some() && message.is_some() && next.is_none()
    }));

    let again = read(30).await.expect("read");
    let [(None, None, None, None, Some(next_in))] = again[..] else { panic!("one row, the wait: {again:?}") };
    assert!((25.0..=30.0).contains(&next_in), "due when their visibility timeout runs out: {next_in}");
}
