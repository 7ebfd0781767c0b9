//! The `offer-router` daemon as an operator runs it: a real process against a fresh
//! database, answering its health endpoints over HTTP, taking a submission with a key made by
//! `offer-router sites create` through identify and the router (on the seeded example rules)
//! to a partner queue, and stopping cleanly on SIGTERM.

use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::harness::{
    Daemon, a_lead, alone, client, free_local_addr, offer_router, serve, site_key, submit, url_of, wait_for,
};

async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, serde_json::Value)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

#[sqlx::test(migrations = false)]
async fn serve_migrates_ingests_identifies_routes_and_stops_on_sigterm(pool: PgPool) {
    let _turn = alone().await;
    let database_url = url_of(&pool);
    let addr = free_local_addr();
    let mut daemon = Daemon::spawn("offer-router", addr, serve(&database_url, addr).stderr(Stdio::inherit()), None);

    let client = client(Duration::from_secs(2));
    let ready = daemon.ready().await;
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
    let accepted = submit(&client, addr, &key, &a_lead("ann.lee@example.com")).await;
    // With the seeded example rules compiled and activated, the router forwards it to the
    // partner queue of the route its rule chose, labelled with rule and tree.
    let routed = wait_for("the lead to reach a partner queue", Duration::from_secs(60), || async {
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
        found
    })
    .await;
    assert_eq!(routed["submission_id"], accepted.to_string());
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
    let output = offer_router().arg("migrate").env_remove("DATABASE_URL").output().expect("run offer-router");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
}
