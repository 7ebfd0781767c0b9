//! The daemon through a session pooler, as README's "Deploy on Supabase" recommends when the
//! direct connection is out of reach: PgBouncer in session mode (what Supabase's Supavisor
//! session mode is) between `offer-router serve` and a fresh database. The migrations run
//! through it, the pipeline delivers through it, and a rule change reaches the running router
//! by `LISTEN/NOTIFY` through it (the tree poll is set to an hour, so nothing else could bring
//! it), with no warning logged. And the transaction pooler, which breaks that, is refused.

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgSslMode;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

mod common;

use common::{Daemon, free_local_addr, serve_examples, site_key, wait_for_queue_gauges};

/// PgBouncer in session mode in front of the test's Postgres, on a port of its own; stopped
/// (and its folder removed) when dropped, before `#[sqlx::test]` drops the database.
struct Pooler {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Pooler {
    /// Starts PgBouncer for the database of `pool` and waits until a client gets through it.
    async fn start(pool: &PgPool) -> Self {
        let direct = pool.connect_options();
        let port = free_local_addr().rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).expect("a port");
        let dir = std::env::temp_dir().join(format!("offer-router-pooler-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the pooler's folder");
        let user = direct.get_username().to_owned();
        // Supavisor's session mode, as far as the service can tell: one server connection per
        // client for the client's whole session, and a pool size the client must stay under.
        let config = format!(
            "[databases]\n* = host={host} port={db_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {auth}\npool_mode = session\n\
             default_pool_size = 40\nmax_client_conn = 200\nignore_startup_parameters = extra_float_digits\n",
            host = direct.get_host(),
            db_port = direct.get_port(),
            auth = dir.join("users.txt").display(),
        );
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).expect("auth file");
        std::fs::write(dir.join("pgbouncer.ini"), config).expect("config");
        let mut command = Command::new(pgbouncer());
        // PgBouncer refuses to run as root; as root it takes the identity of `postgres`.
        if nix::unistd::geteuid().is_root() {
            command.args(["-u", "postgres"]);
        }
        let log = std::fs::File::create(dir.join("pgbouncer.log")).expect("log file");
        let child =
            command.arg(dir.join("pgbouncer.ini")).stdout(Stdio::null()).stderr(log).spawn().expect("start pgbouncer");
        let database = direct.get_database().expect("the test database's name");
        // PgBouncer here speaks TLS to the server only (if that has it), not to its clients.
        let url =
            (*direct).clone().port(port).database(database).ssl_mode(PgSslMode::Prefer).to_url_lossy().to_string();
        let pooler = Self { child, dir, url };
        let deadline = Instant::now() + Duration::from_secs(20);
        while PgConnection::connect(&pooler.url).await.is_err() {
            assert!(Instant::now() < deadline, "pgbouncer does not answer: {}", pooler.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pooler
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's PgBouncer (`./dev test` installs it).
fn pgbouncer() -> &'static Path {
    let installed = Path::new("/usr/sbin/pgbouncer");
    if installed.exists() { installed } else { Path::new("pgbouncer") }
}

async fn active_tree(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT version FROM decision_trees WHERE active").fetch_optional(pool).await.expect("tree")
}

/// Posts a lead for degreefinder and returns its submission id.
async fn post(client: &reqwest::Client, addr: &str, key: &str, email: &str) -> uuid::Uuid {
    let response = client
        .post(format!("http://{addr}/api/submit"))
        .bearer_auth(key)
        .json(&serde_json::json!({
            "email": email, "first_name": "Ann", "last_name": "Lee", "phone": "415 555 2671",
            "fields": { "state": "CA", "age": 29 }
        }))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.expect("JSON");
    body["submission_id"].as_str().and_then(|id| id.parse().ok()).expect("a submission id")
}

/// Waits for the lead's delivery row to reach a final state; returns the tree that routed it.
async fn delivered_by(pool: &PgPool, submission: uuid::Uuid) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT state, tree_version FROM leads WHERE submission_id = $1 AND state <> 'pending'")
                .bind(submission)
                .fetch_optional(pool)
                .await
                .expect("lead");
        if let Some((_, Some(tree))) = row {
            return tree;
        }
        assert!(Instant::now() < deadline, "lead {submission} not delivered within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn through_a_session_pooler_the_daemon_migrates_delivers_and_hot_reloads(pool: PgPool) {
    let pooler = Pooler::start(&pool).await;
    let (addr, mock) = (free_local_addr(), free_local_addr());
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let log_path = pooler.dir.join("offer-router.log");
    let log = std::fs::File::create(&log_path).expect("daemon log");
    let mut daemon = Daemon(
        serve_examples(&pooler.url, &addr, &mock)
            // Under the pooler's pool size of 40, with room for the rules command below.
            .env("DATABASE_MAX_CONNECTIONS", "30")
            // Only a notification can bring a new tree within the test.
            .env("TREE_POLL_SECS", "3600")
            .env("QUEUE_METRICS_SECS", "1")
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .expect("start offer-router"),
    );
    let daemon_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    daemon.ready(&addr).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(tree) = active_tree(&pool).await {
            break tree;
        }
        assert!(Instant::now() < deadline, "no active tree within 60 s: {}", daemon_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let key = site_key(&pooler.url, "degreefinder");
    let lead = post(&client, &addr, &key, "ann.lee@example.com").await;
    assert_eq!(delivered_by(&pool, lead).await, first);

    // A rule change, stored through the pooler: compiled, activated, announced.
    let loaded = Command::new(env!("CARGO_BIN_EXE_offer-router"))
        .args(["rules", "load", &format!("{examples}/rules.yaml")])
        .env("DATABASE_URL", &pooler.url)
        .env("DATABASE_MAX_CONNECTIONS", "2")
        .output()
        .expect("run offer-router rules load");
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let switched = active_tree(&pool).await.filter(|tree| *tree > first).filter(|tree| {
            daemon_log()
                .lines()
                .any(|l| l.contains("router switched decision tree") && l.contains(&format!("tree={tree}")))
        });
        if let Some(tree) = switched {
            break tree;
        }
        assert!(Instant::now() < deadline, "the router did not switch to the new tree within 60 s: {}", daemon_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lead = post(&client, &addr, &key, "bo.kim@example.com").await;
    assert_eq!(delivered_by(&pool, lead).await, second, "routed by the new tree");

    // Every queue in `/metrics`, sampled through the pooler.
    let queues: Vec<String> =
        sqlx::query_scalar("SELECT queue_name FROM pgmq.meta").fetch_all(&pool).await.expect("queues");
    wait_for_queue_gauges(&addr, "visible_length", &queues).await;

    let status = daemon.terminate(Instant::now() + Duration::from_secs(20)).await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let log = daemon_log();
    // (A slow statement on a loaded test machine is no fault of the pooler's.)
    let complaints: Vec<&str> =
        log.lines().filter(|l| (l.contains("WARN") || l.contains("ERROR")) && !l.contains("slow statement")).collect();
    assert!(complaints.is_empty(), "warnings through the session pooler:\n{}", complaints.join("\n"));
    drop(pooler);
}

#[test]
fn supabase_transaction_pooler_is_refused_with_the_fix() {
    let output = Command::new(env!("CARGO_BIN_EXE_offer-router"))
        .args(["migrate", "--database-url"])
        .arg("postgres://postgres.abcdefghijklmnop:secret@aws-0-eu-central-1.pooler.supabase.com:6543/postgres")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run offer-router");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("transaction pooler") && stderr.contains("session pooler (port 5432"), "{stderr}");
    assert!(!stderr.contains("secret"), "the password is not echoed: {stderr}");
}
