//! What the tests that run `offer-router` as a process share: the daemon as a child that dies
//! with the test (and the command that runs it on the examples), a free local address,
//! waiting for `/readyz` and for the queue gauges of `/metrics`, and a site key made by the
//! operator command. Each test crate uses part of it.

#![allow(dead_code, reason = "each test crate that includes this module uses part of it")]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the daemon when the test ends, however it ends.
pub(crate) struct Daemon(pub(crate) Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    /// Waits until `GET http://{addr}/readyz` answers 200 and returns its body; fails if the
    /// daemon exits first or is not ready within 60 s.
    pub(crate) async fn ready(&mut self, addr: &str) -> serde_json::Value {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(format!("http://{addr}/readyz")).send().await
                && response.status().as_u16() == 200
            {
                return response.json().await.expect("readiness JSON");
            }
            if let Some(status) = self.0.try_wait().expect("poll child") {
                panic!("daemon exited early with {status}");
            }
            assert!(Instant::now() < deadline, "daemon not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Daemon {
    /// Sends SIGTERM and waits for the daemon to exit, at most until `deadline`.
    pub(crate) async fn terminate(&mut self, deadline: Instant) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).expect("pid fits"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
        loop {
            if let Some(status) = self.0.try_wait().expect("poll child") {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not stop after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A local address nothing listens on (yet).
pub(crate) fn free_local_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("address").to_string()
}

/// A new site's API key, made with `offer-router sites create SITE --json`.
pub(crate) fn site_key(database_url: &str, site: &str) -> String {
    let created = Command::new(env!("CARGO_BIN_EXE_offer-router"))
        .args(["sites", "create", site, "--json"])
        .env("DATABASE_URL", database_url)
        .output()
        .expect("run offer-router sites create");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).expect("JSON");
    created["api_key"].as_str().expect("a key").to_owned()
}

/// `offer-router serve` as `./dev up` runs it: the example rules and partners, the mock
/// partners in-process on `mock`, on `database_url`, HTTP on `addr`, no Sentry, no colours in
/// the log. The caller adds its own environment and where stderr goes, then spawns it.
pub(crate) fn serve_examples(database_url: &str, addr: &str, mock: &str) -> Command {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut command = Command::new(env!("CARGO_BIN_EXE_offer-router"));
    command
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("HTTP_ADDR", addr)
        .env("SEED_RULES", format!("{examples}/rules.yaml"))
        .env("SEED_PARTNERS", format!("{examples}/partners.yaml"))
        .env("MOCK_PARTNERS_ADDR", mock)
        .env("PARTNER_BASE_URL", format!("http://{mock}"))
        .env("PARTNER_TOKEN", "test-token")
        .env("NO_COLOR", "1")
        .env_remove("SENTRY_DSN")
        .stdout(Stdio::null());
    command
}

/// Waits until `GET http://{addr}/metrics` has the gauge `offer_router_queue_{gauge}` for every
/// queue of `queues` (the daemon samples them every `QUEUE_METRICS_SECS`); fails after 20 s
/// naming the missing ones.
pub(crate) async fn wait_for_queue_gauges(addr: &str, gauge: &str, queues: &[String]) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics =
            client.get(format!("http://{addr}/metrics")).send().await.expect("metrics").text().await.expect("text");
        let missing: Vec<&String> = queues
            .iter()
            .filter(|q| !metrics.contains(&format!("offer_router_queue_{gauge}{{queue=\"{q}\"}}")))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "queues missing from /metrics: {missing:?}\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
