//! What the end-to-end tests share: the binaries as commands (`offer-router serve` on the
//! examples), the daemon as a child that dies with the test, free local addresses, site keys
//! made by the operator command, posting a lead, waiting (for a condition, an active decision
//! tree, the queue gauges of `/metrics`), scratch folders, throwaway Postgres clusters, and the
//! turns the tests that run daemons take.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sqlx::{ConnectOptions, PgPool};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

/// The example rules, partners and leads.
pub(crate) const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

/// How often the waits look again.
const POLL: Duration = Duration::from_millis(50);

/// The turns of the tests that run daemons. Their timings (a batch caught mid-flight, a
/// pipeline still draining when it is measured) assume the machine to themselves: a chaos
/// scenario alone runs several daemons, a load and Postgres, which is all a small CI machine has
/// to give. The tests that run no daemon run beside them.
static MACHINE: Mutex<()> = Mutex::const_new(());

/// Waits until no other test that runs daemons is running, and keeps them waiting.
pub(crate) async fn alone() -> MutexGuard<'static, ()> {
    MACHINE.lock().await
}

/// The workspace's folder.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("cli/ is inside the workspace").to_path_buf()
}

/// The `offer-router` binary.
pub(crate) fn offer_router() -> Command {
    Command::new(env!("CARGO_BIN_EXE_offer-router"))
}

/// `offer-router serve` on `database_url`, HTTP on `addr`, the example rules seeded, no Sentry,
/// stdout discarded. The caller adds its own environment and where stderr goes, then spawns it.
pub(crate) fn serve(database_url: &str, addr: SocketAddr) -> Command {
    let mut command = offer_router();
    command
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("HTTP_ADDR", addr.to_string())
        .env("SEED_RULES", format!("{EXAMPLES}/rules.yaml"))
        .env_remove("SENTRY_DSN")
        .stdout(Stdio::null());
    command
}

/// [`serve`] as `./dev up` runs it: the example rules and partners, the mock partners
/// in-process on `mock`, no colours in the log.
pub(crate) fn serve_examples(database_url: &str, addr: SocketAddr, mock: SocketAddr) -> Command {
    let mut command = serve(database_url, addr);
    command
        .env("SEED_PARTNERS", format!("{EXAMPLES}/partners.yaml"))
        .env("MOCK_PARTNERS_ADDR", mock.to_string())
        .env("PARTNER_BASE_URL", format!("http://{mock}"))
        .env("PARTNER_TOKEN", "test-token")
        .env("NO_COLOR", "1");
    command
}

/// The URL of `pool`'s database (a test's own, from `#[sqlx::test]`).
pub(crate) fn url_of(pool: &PgPool) -> String {
    pool.connect_options().to_url_lossy().to_string()
}

/// A local address nothing listens on (yet).
pub(crate) fn free_local_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("address")
}

/// An HTTP client whose requests give up after `timeout`.
pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().expect("client")
}

/// A new site's API key, made with `offer-router sites create SITE --json` (in an environment
/// of its own: only the database).
pub(crate) fn site_key(database_url: &str, site: &str) -> String {
    let created = offer_router()
        .args(["sites", "create", site, "--json"])
        .env_clear()
        .env("DATABASE_URL", database_url)
        .output()
        .expect("run offer-router sites create");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let created: Value = serde_json::from_slice(&created.stdout).expect("JSON");
    created["api_key"].as_str().expect("a key").to_owned()
}

/// A degreefinder lead from Ann Lee of California, 29, at `email`.
pub(crate) fn a_lead(email: &str) -> Value {
    serde_json::json!({
        "email": email, "first_name": "Ann", "last_name": "Lee", "phone": "415 555 2671",
        "fields": { "state": "CA", "age": 29 }
    })
}

/// Posts `lead` to the daemon's `/api/submit` as the site of `key`; it must be accepted (202).
/// Returns its submission id.
pub(crate) async fn submit(client: &reqwest::Client, addr: SocketAddr, key: &str, lead: &Value) -> Uuid {
    let response = client.post(format!("http://{addr}/api/submit")).bearer_auth(key).json(lead).send().await;
    let response = response.expect("post a lead");
    assert_eq!(response.status().as_u16(), 202, "{lead}");
    let accepted: Value = response.json().await.expect("JSON");
    accepted["submission_id"].as_str().and_then(|id| id.parse().ok()).expect("a submission id")
}

/// An `offer-router serve` process, killed when dropped, however the test ends.
pub(crate) struct Daemon {
    /// What the test calls it in its failures.
    name: &'static str,
    child: Child,
    /// Where it serves HTTP.
    addr: SocketAddr,
    /// The file its output goes to, if not the caller's choice.
    log: Option<PathBuf>,
}

impl Daemon {
    /// Spawns `command`, a daemon serving HTTP on `addr`; with `log`, its stdout and stderr go
    /// to that new file.
    pub(crate) fn spawn(name: &'static str, addr: SocketAddr, command: &mut Command, log: Option<PathBuf>) -> Self {
        if let Some(log) = &log {
            let file = std::fs::File::create(log).expect("a log file");
            command.stdout(file.try_clone().expect("the log file")).stderr(file);
        }
        let child = command.spawn().expect("start offer-router");
        Self { name, child, addr, log }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until `GET /readyz` answers 200 and returns its body; fails if the daemon exits
    /// first or is not ready within 60 s.
    pub(crate) async fn ready(&mut self) -> Value {
        let client = client(Duration::from_secs(5));
        let url = format!("http://{}/readyz", self.addr);
        let ready = poll(Duration::from_secs(60), || {
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                panic!("{} exited with {status}", describe(self.name, self.log.as_deref()));
            }
            let request = client.get(&url).send();
            async move {
                let response = request.await.ok().filter(|r| r.status().as_u16() == 200)?;
                Some(response.json::<Value>().await.expect("readiness JSON"))
            }
        })
        .await;
        ready.unwrap_or_else(|| panic!("{} was not ready within 60 s", self.describe()))
    }

    /// Sends SIGTERM and waits for the daemon to exit, at most until `deadline`.
    pub(crate) async fn terminate(&mut self, deadline: Instant) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let within = deadline.saturating_duration_since(Instant::now());
        let exited = poll(within, || {
            let status = self.child.try_wait().expect("poll the daemon");
            async move { status }
        })
        .await;
        exited.unwrap_or_else(|| panic!("{} did not stop after SIGTERM", self.describe()))
    }

    pub(crate) fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits an i32"));
        kill(pid, signal).expect("signal the daemon");
    }

    /// Kills the daemon with SIGKILL, as a crash would, and reaps it.
    pub(crate) fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        self.child.wait().expect("reap the daemon");
    }

    pub(crate) fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll the daemon") {
            panic!("{} exited with {status}", self.describe());
        }
    }

    fn describe(&self) -> String {
        describe(self.name, self.log.as_deref())
    }
}

/// "the NAME daemon", and where its log is.
fn describe(name: &str, log: Option<&Path>) -> String {
    match log {
        Some(log) => format!("the {name} daemon (log: {})", log.display()),
        None => format!("the {name} daemon"),
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a probe of [`poll`] answers: `true`, or `Some` value, once what it waits for holds.
pub(crate) trait Probe {
    type Value;

    fn ready(self) -> Option<Self::Value>;
}

impl Probe for bool {
    type Value = ();

    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Probe for Option<T> {
    type Value = T;

    fn ready(self) -> Option<T> {
        self
    }
}

/// Probes until the probe holds and returns its value; `None` if it did not hold within
/// `within` (the caller says why that fails the test).
pub(crate) async fn poll<F, Fut>(within: Duration, mut probe: F) -> Option<<Fut::Output as Probe>::Value>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Probe,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await.ready() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`poll`], failing the test after `within`, saying what it waited for.
pub(crate) async fn wait_for<F, Fut>(what: &str, within: Duration, probe: F) -> <Fut::Output as Probe>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Probe,
{
    poll(within, probe).await.unwrap_or_else(|| panic!("waited {within:?} for {what}"))
}

/// The version of the active decision tree, if there is one (and the database answers).
pub(crate) async fn active_tree(pool: &PgPool) -> Option<i64> {
    let version = sqlx::query_scalar("SELECT version FROM decision_trees WHERE active").fetch_optional(pool).await;
    version.ok().flatten()
}

/// Waits (90 s at most) until a decision tree is active and returns its version.
pub(crate) async fn wait_for_active_tree(pool: &PgPool) -> i64 {
    wait_for("a decision tree to be active", Duration::from_secs(90), || active_tree(pool)).await
}

/// Waits until `GET http://{addr}/metrics` has the gauge `offer_router_queue_{gauge}` for every
/// queue of `queues` (the daemon samples them every `QUEUE_METRICS_SECS`); fails after 20 s
/// naming the missing ones.
pub(crate) async fn wait_for_queue_gauges(addr: SocketAddr, gauge: &str, queues: &[String]) {
    let client = client(Duration::from_secs(5));
    let metrics = || async {
        client.get(format!("http://{addr}/metrics")).send().await.expect("metrics").text().await.expect("text")
    };
    let missing = |metrics: &str| -> Vec<String> {
        let present = |q: &String| metrics.contains(&format!("offer_router_queue_{gauge}{{queue=\"{q}\"}}"));
        queues.iter().filter(|q| !present(q)).cloned().collect()
    };
    if poll(Duration::from_secs(20), || async { missing(&metrics().await).is_empty() }).await.is_none() {
        let metrics = metrics().await;
        panic!("queues missing from /metrics: {:?}\n{metrics}", missing(&metrics));
    }
}

/// A folder for a test's files (daemon logs, configuration); removed afterwards, kept (and
/// named on stderr) when the test fails or `OFFER_ROUTER_KEEP_TEST_FILES` is set.
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub(crate) fn new(name: &str) -> Self {
        let path = unique_dir(name);
        std::fs::create_dir_all(&path).expect("create a scratch folder");
        Self { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` in the folder and returns its path.
    pub(crate) fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("OFFER_ROUTER_KEEP_TEST_FILES").is_some() {
            eprintln!("the test's files (daemon logs) are in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A new folder name under /var/tmp (root: reachable by the `postgres` user, as `./dev` does)
/// or the temporary folder.
fn unique_dir(name: &str) -> PathBuf {
    let base = if as_root() { PathBuf::from("/var/tmp") } else { std::env::temp_dir() };
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
    base.join(format!("offer-router-test-{name}-{}-{nanos}", std::process::id()))
}

/// Whether the tests run as root (Postgres and PgBouncer then run as the `postgres` user).
pub(crate) fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A throwaway Postgres cluster: `initdb` into a fresh folder, TCP only on a free port. As root
/// it runs as the `postgres` system user (Postgres refuses root). Stopped and removed when
/// dropped, also when the test fails.
pub(crate) struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    /// Creates and starts the cluster (blocking).
    pub(crate) fn create() -> Self {
        let bin = postgres_bin();
        let dir = unique_dir("pg");
        std::fs::create_dir_all(&dir).expect("the cluster's folder");
        if as_root() {
            let chown = Command::new("chown").arg("postgres:").arg(&dir).status().expect("run chown");
            assert!(chown.success(), "chown postgres: {}", dir.display());
        }
        let cluster = Self { dir, bin, port: free_local_addr().port() };
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = ''\nmax_connections = 200\n",
            cluster.port
        );
        let mut settings = std::fs::read_to_string(format!("{data}/postgresql.conf")).expect("postgresql.conf");
        settings.push_str(&conf);
        std::fs::write(format!("{data}/postgresql.conf"), settings).expect("write postgresql.conf");
        cluster.start();
        // The service's role as on Supabase: no superuser, owns its database.
        let port = cluster.port.to_string();
        for statement in
            ["CREATE ROLE offer_router LOGIN NOSUPERUSER CREATEDB", "CREATE DATABASE offer_router OWNER offer_router"]
        {
            cluster
                .run("psql", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-qc", statement]);
        }
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// The service's database, as its role (no superuser).
    pub(crate) fn url(&self) -> String {
        format!("postgres://offer_router@127.0.0.1:{}/offer_router", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = if as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.current_dir("/");
        command
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self.command(program).args(args).output().expect("run a Postgres program");
        assert!(output.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Starts the server and waits until it accepts connections (blocking).
    pub(crate) fn start(&self) {
        let log = self.dir.join("postgres.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-w", "-t", "60", "start"]);
    }

    /// Stops the server the way an operator restarting it does: `fast` rolls back every open
    /// transaction and closes every connection (blocking).
    pub(crate) fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "-t", "60", "stop"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `OFFER_ROUTER_PG_BIN` if set (`./dev test` points it at the Postgres that ships the pgmq
/// extension, for the run on it), else the newest `/usr/lib/postgresql/<version>/bin` (Debian),
/// else `pg_config --bindir`.
fn postgres_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("OFFER_ROUTER_PG_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return bin;
    }
    let output = Command::new("pg_config").arg("--bindir").output().expect("Postgres server binaries (pg_config)");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}
