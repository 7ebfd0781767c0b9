//! The `offer-router` daemon as an operator runs it: a real process against a fresh
//! database, answering its health endpoints over HTTP, taking a submission with a key made by
//! `offer-router sites create` through identify and the router (on the seeded example rules)
//! to a partner queue, and stopping cleanly on SIGTERM.

#![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::PgPool;

mod common;

use common::{Daemon, free_local_addr, site_key};

async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, serde_json::Value)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

#[sqlx::test(migrations = false)]
async fn serve_migrates_ingests_identifies_routes_and_stops_on_sigterm(pool: PgPool) {
    let database_url = pool.connect_options().to_url_lossy().to_string();
    let addr = free_local_addr();
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_offer-router"))
            .arg("serve")
            .env("DATABASE_URL", &database_url)
            .env("HTTP_ADDR", &addr)
            .env("SEED_RULES", concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/rules.yaml"))
            .env_remove("SENTRY_DSN")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start offer-router"),
    );

    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let ready = daemon.ready(&addr).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(get(&client, &format!("http://{addr}/healthz")).await, Some((200, serde_json::json!({"status": "ok"}))));

    // It migrated the database it was given.
    let queues: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.meta WHERE queue_name NOT LIKE 'partner\\_%'")
        .fetch_one(&pool)
        .await
        .expect("meta");
    assert_eq!(queues, 5);

    // A site's key, made by the operator command, is accepted by the daemon's ingest endpoint,
    // and the daemon's identify worker forwards the lead to `routing`.
    let key = site_key(&database_url, "degreefinder");
    let response = client
        .post(format!("http://{addr}/api/submit"))
        .bearer_auth(key)
        .json(&serde_json::json!({
            "email": "ann.lee@example.com", "first_name": "Ann", "last_name": "Lee", "phone": "415 555 2671",
            "fields": { "state": "CA", "age": 29 }
        }))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 202);
    let accepted: serde_json::Value = response.json().await.expect("JSON");
    // With the seeded example rules compiled and activated, the router forwards it to the
    // partner queue of the route its rule chose, labelled with rule and tree.
    let deadline = Instant::now() + Duration::from_secs(60);
    let routed = loop {
        let queues: Vec<String> =
            sqlx::query_scalar("SELECT queue_name FROM pgmq.meta WHERE queue_name LIKE 'partner\\_%'")
                .fetch_all(&pool)
                .await
                .expect("queues");
        let mut found = None;
        for queue in queues {
            let sql = format!("SELECT message FROM pgmq.\"q_{queue}\"");
            if let Some(message) =
                sqlx::query_scalar::<_, serde_json::Value>(&sql).fetch_optional(&pool).await.expect("partner queue")
            {
                found = Some(message);
            }
        }
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "the lead did not reach a partner queue within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(routed["submission_id"], accepted["submission_id"]);
    assert_eq!(routed["fields"]["site"], "degreefinder");
    assert!(routed["tree_version"].as_i64().is_some() && routed["route"].is_string(), "{routed}");
    // The Prometheus endpoint: queue gauges and the workers' counters.
    let metrics =
        client.get(format!("http://{addr}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("offer_router_queue_length{queue=\"routing\"}"), "{metrics}");
    assert!(
        metrics.contains(
            "offer_router_consumer_messages_total{worker=\"identify\",queue=\"submissions\",outcome=\"done\"} 1"
        ),
        "{metrics}"
    );
    let rules_version: i64 = sqlx::query_scalar("SELECT version FROM rule_set").fetch_one(&pool).await.expect("v");
    assert_eq!(rules_version, 1, "the example rules were seeded once");

    let status = daemon.terminate(Instant::now() + Duration::from_secs(20)).await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[test]
fn a_missing_database_url_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_offer-router"))
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run offer-router");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
}
