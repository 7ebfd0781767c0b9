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

/// The figures of queue `name` in `metrics`, without the ages (they tick with the clock).
fn figures(metrics: &[QueueMetrics], name: &str) -> (i64, i64, i64) {
    let m = metrics.iter().find(|m| m.queue_name == name).expect("the queue's metrics");
    (m.queue_length, m.queue_visible_length, m.total_messages)
}

#[sqlx::test(migrations = false)]
async fn metrics_report_the_visible_length_whether_pgmq_does_or_not(pool: PgPool) {
    let pgmq = db::migrate(&pool).await.expect("migrate");
    let name = QueueName::new("metered").expect("name");
    let mut conn = pool.acquire().await.expect("connection");
    queue::create_with_dead_letter_queue(&mut conn, &name).await.expect("queues");
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
