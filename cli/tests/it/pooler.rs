//! The daemon through a session pooler, as README's "Deploy on Supabase" recommends when the
//! direct connection is out of reach: PgBouncer in session mode (what Supabase's Supavisor
//! session mode is) between `offer-router serve` and a fresh database. The migrations run
//! through it, the pipeline delivers through it, and a rule change reaches the running router
//! by `LISTEN/NOTIFY` through it (the tree poll is set to an hour, so nothing else could bring
//! it), with no warning logged. And the transaction pooler, which breaks that, is refused.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgSslMode;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::harness::{
    Daemon, EXAMPLES, Scratch, a_lead, active_tree, alone, as_root, client, free_local_addr, offer_router, poll,
    serve_examples, site_key, submit, wait_for, wait_for_queue_gauges,
};

/// PgBouncer in session mode in front of the test's Postgres, on a port of its own; stopped
/// (and its folder removed) when dropped, before `#[sqlx::test]` drops the database.
struct Pooler {
    child: Child,
    dir: Scratch,
    url: String,
}

impl Pooler {
    /// Starts PgBouncer for the database of `pool` and waits until a client gets through it.
    async fn start(pool: &PgPool) -> Self {
        let direct = pool.connect_options();
        let port = free_local_addr().port();
        let dir = Scratch::new("pooler");
        let user = direct.get_username().to_owned();
        // Supavisor's session mode, as far as the service can tell: one server connection per
        // client for the client's whole session, and a pool size the client must stay under.
        let config = format!(
            "[databases]\n* = host={host} port={db_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {auth}\npool_mode = session\n\
             default_pool_size = 40\nmax_client_conn = 200\nignore_startup_parameters = extra_float_digits\n",
            host = direct.get_host(),
            db_port = direct.get_port(),
            auth = dir.path().join("users.txt").display(),
        );
        dir.write("users.txt", format!("\"{user}\" \"\"\n"));
        let ini = dir.write("pgbouncer.ini", config);
        let mut command = Command::new(pgbouncer());
        // PgBouncer refuses to run as root; as root it takes the identity of `postgres`.
        if as_root() {
            command.args(["-u", "postgres"]);
        }
        let log = std::fs::File::create(dir.path().join("pgbouncer.log")).expect("log file");
        let child = command.arg(ini).stdout(Stdio::null()).stderr(log).spawn().expect("start pgbouncer");
        let database = direct.get_database().expect("the test database's name");
        // PgBouncer here speaks TLS to the server only (if that has it), not to its clients.
        let url =
            (*direct).clone().port(port).database(database).ssl_mode(PgSslMode::Prefer).to_url_lossy().to_string();
        let pooler = Self { child, dir, url };
        let answers = poll(Duration::from_secs(20), || async { PgConnection::connect(&pooler.url).await.is_ok() });
        assert!(answers.await.is_some(), "pgbouncer does not answer: {}", pooler.log());
        pooler
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's PgBouncer (`./dev test` installs it).
fn pgbouncer() -> &'static Path {
    let installed = Path::new("/usr/sbin/pgbouncer");
    if installed.exists() { installed } else { Path::new("pgbouncer") }
}

/// Waits for the lead's delivery row to reach a final state; returns the tree that routed it.
async fn delivered_by(pool: &PgPool, submission: uuid::Uuid) -> i64 {
    wait_for(&format!("lead {submission} to be delivered"), Duration::from_secs(60), || async {
        let row: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT state, tree_version FROM leads WHERE submission_id = $1 AND state <> 'pending'")
                .bind(submission)
                .fetch_optional(pool)
                .await
                .expect("lead");
        row.and_then(|(_, tree)| tree)
    })
    .await
}

#[sqlx::test(migrations = false)]
async fn through_a_session_pooler_the_daemon_migrates_delivers_and_hot_reloads(pool: PgPool) {
    let _turn = alone().await;
    let pooler = Pooler::start(&pool).await;
    let (addr, mock) = (free_local_addr(), free_local_addr());
    let log_path = pooler.dir.path().join("offer-router.log");
    let mut daemon = Daemon::spawn(
        "offer-router",
        addr,
        serve_examples(&pooler.url, addr, mock)
            // Under the pooler's pool size of 40, with room for the rules command below.
            .env("DATABASE_MAX_CONNECTIONS", "30")
            // Only a notification can bring a new tree within the test.
            .env("TREE_POLL_SECS", "3600")
            .env("QUEUE_METRICS_SECS", "1")
            .env("RUST_LOG", "info"),
        Some(log_path.clone()),
    );
    let daemon_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    daemon.ready().await;
    let first = poll(Duration::from_secs(60), || active_tree(&pool)).await;
    let first = first.unwrap_or_else(|| panic!("no active tree within 60 s: {}", daemon_log()));
    let client = client(Duration::from_secs(5));
    let key = site_key(&pooler.url, "degreefinder");
    let lead = submit(&client, addr, &key, &a_lead("ann.lee@example.com")).await;
    assert_eq!(delivered_by(&pool, lead).await, first);

    // A rule change, stored through the pooler: compiled, activated, announced.
    let loaded = offer_router()
        .args(["rules", "load", &format!("{EXAMPLES}/rules.yaml")])
        .env("DATABASE_URL", &pooler.url)
        .env("DATABASE_MAX_CONNECTIONS", "2")
        .output()
        .expect("run offer-router rules load");
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let second = poll(Duration::from_secs(60), || async {
        active_tree(&pool).await.filter(|tree| *tree > first).filter(|tree| {
            daemon_log()
                .lines()
                .any(|l| l.contains("router switched decision tree") && l.contains(&format!("tree={tree}")))
        })
    })
    .await;
    let second =
        second.unwrap_or_else(|| panic!("the router did not switch to the new tree within 60 s: {}", daemon_log()));
    let lead = submit(&client, addr, &key, &a_lead("bo.kim@example.com")).await;
    assert_eq!(delivered_by(&pool, lead).await, second, "routed by the new tree");

    // Every queue in `/metrics`, sampled through the pooler.
    let queues: Vec<String> =
        sqlx::query_scalar("SELECT queue_name FROM pgmq.meta").fetch_all(&pool).await.expect("queues");
    wait_for_queue_gauges(addr, "visible_length", &queues).await;

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
    let output = offer_router()
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
