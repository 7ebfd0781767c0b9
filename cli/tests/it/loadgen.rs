//! `loadgen --e2e` against a real `offer-router serve` (example rules and partners, the mock
//! partners in-process) on a fresh database: every accepted lead reaches a final state and is
//! counted once, with its latency and the queues' peaks; with no time to settle, the leads still
//! on their way are reported lost and loadgen exits 1. Meanwhile `offer-router queues` and
//! `/metrics` show every queue, and the queue metrics never fail (on every PGMQ `./dev test`
//! runs this on: the crate's embedded SQL and Supabase's 1.4.4 extension).

use std::net::SocketAddr;
use std::process::{Command, Output};

use serde_json::Value;
use sqlx::PgPool;

use crate::harness::{
    Daemon, Scratch, alone, free_local_addr, offer_router, serve_examples, site_key, url_of, wait_for_active_tree,
    wait_for_queue_gauges,
};

const SITES: [&str; 5] = ["degreefinder", "nursingdegrees", "onlinemba", "loanmatch", "quickcash"];

fn loadgen(addr: SocketAddr, database_url: &str, keys: &[String], extra: &[&str]) -> (Output, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &format!("http://{addr}"), "--e2e", "--database-url", database_url, "--json"])
        .args(["--concurrency", "8", "--warmup", "0", "--people", "100", "--seed", "7"])
        .args(keys.iter().flat_map(|k| ["--key", k.as_str()]))
        .args(extra)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run loadgen");
    let summary = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("loadgen printed no JSON ({error}); stderr: {}", String::from_utf8_lossy(&output.stderr))
    });
    (output, summary)
}

#[sqlx::test(migrations = false)]
async fn e2e_mode_waits_for_every_final_state_and_reports_the_lost(pool: PgPool) {
    let _turn = alone().await;
    let database_url = url_of(&pool);
    let (addr, mock) = (free_local_addr(), free_local_addr());
    let scratch = Scratch::new("loadgen");
    let log_path = scratch.path().join("offer-router.log");
    let mut daemon = Daemon::spawn(
        "offer-router",
        addr,
        serve_examples(&database_url, addr, mock).env("QUEUE_METRICS_SECS", "1").env("RUST_LOG", "warn"),
        Some(log_path.clone()),
    );
    // Ready, with the seeded rules compiled and active (leads would wait for them otherwise).
    daemon.ready().await;
    wait_for_active_tree(&pool).await;
    let keys: Vec<String> = SITES.iter().map(|site| format!("{site}={}", site_key(&database_url, site))).collect();

    // Every accepted lead reaches a final state, once.
    let (output, summary) = loadgen(addr, &database_url, &keys, &["--requests", "300", "--settle-timeout", "60"]);
    assert!(output.status.success(), "loadgen failed: {}\n{summary:#}", String::from_utf8_lossy(&output.stderr));
    let e2e = &summary["end_to_end"];
    assert_eq!(summary["accepted_total"], 300, "{summary:#}");
    assert_eq!(
        (e2e["leads"].as_u64(), e2e["finished"].as_u64(), e2e["lost"].as_u64()),
        (Some(300), Some(300), Some(0))
    );
    assert_eq!((e2e["several_finals"].as_u64(), e2e["untracked"].as_u64()), (Some(0), Some(0)), "{e2e:#}");
    let states = e2e["states"].as_object().expect("states");
    assert_eq!(states.len(), 6, "every state is listed: {e2e:#}");
    // One final state per lead, and one more per extra partner a shared lead was sold to.
    assert!(states.values().filter_map(Value::as_u64).sum::<u64>() >= 300, "{e2e:#}");
    assert!(states["accepted"].as_u64() > Some(0), "the mock partners accept: {e2e:#}");
    // The database agrees: a final `leads` row per lead delivered or deduplicated.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM leads WHERE state <> 'pending'")
        .fetch_one(&pool)
        .await
        .expect("count");
    let delivered: u64 =
        ["accepted", "rejected", "duplicate", "failed"].iter().filter_map(|s| states[*s].as_u64()).sum();
    assert_eq!(u64::try_from(rows).ok(), Some(delivered), "{e2e:#}");
    let latency = &e2e["latency_ms"];
    let (p50, max) = (latency["p50"].as_f64().expect("p50"), latency["max"].as_f64().expect("max"));
    assert!(p50 > 0.0 && p50 <= max, "{latency}");
    assert!(e2e["leads_per_sec"].as_f64() > Some(0.0) && e2e["sustained_per_sec"].as_f64() > Some(0.0), "{e2e:#}");
    assert!(e2e["queue_peaks"].is_object() && e2e["lost_examples"] == Value::Array(Vec::new()), "{e2e:#}");

    // Given no time to settle, the leads still in the pipeline are lost: exit 1, and named.
    let (output, summary) = loadgen(addr, &database_url, &keys, &["--requests", "200", "--settle-timeout", "0"]);
    assert_eq!(output.status.code(), Some(1), "{summary:#}");
    let e2e = &summary["end_to_end"];
    let lost = e2e["lost"].as_u64().expect("lost");
    assert!(lost > 0 && e2e["finished"].as_u64() == Some(200 - lost), "{e2e:#}");
    assert!(!e2e["lost_examples"].as_array().expect("ids").is_empty(), "{e2e:#}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("reached no final state"), "{output:?}");

    // Every queue PGMQ has, in `offer-router queues` and in `/metrics`.
    let queues: Vec<String> =
        sqlx::query_scalar("SELECT queue_name FROM pgmq.meta ORDER BY 1").fetch_all(&pool).await.expect("queues");
    assert!(queues.len() > 5, "the fixed queues and the partners': {queues:?}");
    let listed = offer_router()
        .args(["queues", "--json"])
        .env("DATABASE_URL", &database_url)
        .output()
        .expect("run offer-router queues");
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).expect("JSON");
    let names: Vec<&str> = listed.iter().filter_map(|q| q["queue_name"].as_str()).collect();
    assert_eq!(names, queues, "offer-router queues lists every queue");
    assert!(listed.iter().all(|q| q["queue_visible_length"].as_i64() <= q["queue_length"].as_i64()), "{listed:?}");
    wait_for_queue_gauges(addr, "length", &queues).await;
    drop(daemon);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!log.contains("cannot read queue metrics"), "every queue-metrics sample worked:\n{log}");
}

#[test]
fn e2e_mode_needs_a_database() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--key", "degreefinder=ors_x", "--e2e"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run loadgen");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--database-url"), "{output:?}");
}
