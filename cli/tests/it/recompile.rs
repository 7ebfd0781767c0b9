//! The change-impact operations against a running daemon: a delivered lead explained from the
//! database by `rulec explain --submission` (its recorded rule reproduced), and `offer-router
//! recompile` recovering the stale-ABI case (the newest rules version refused, the active tree
//! built for another ABI) so that the next lead is routed by the recompiled tree; and the
//! command's refusal when no tree is active.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{
    Daemon, alone, client, free_local_addr, offer_router, serve_examples, site_key, submit, url_of, wait_for,
    wait_for_active_tree, workspace_root,
};

const ADMIN: &str = "recompile-admin";

fn rulec(args: &[&str], database_url: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rulec"))
        .args(args)
        .current_dir(workspace_root())
        .env("DATABASE_URL", database_url)
        .output()
        .expect("run rulec")
}

fn recompile(database_url: &str, extra: &[&str]) -> Output {
    offer_router()
        .arg("recompile")
        .args(extra)
        .env_clear()
        .env("DATABASE_URL", database_url)
        .output()
        .expect("run offer-router recompile")
}

/// Posts a lead that the example rules send to a school and waits for its `leads` row;
/// returns its submission id and the tree that routed it.
async fn deliver(pool: &PgPool, addr: std::net::SocketAddr, key: &str, email: &str) -> (Uuid, i64) {
    let lead = json!({
        "email": email, "first_name": "Ann", "last_name": "Lee", "phone": "415 555 2671",
        "fields": { "state": "CA", "age": 29, "program": "nursing", "has_diploma": true }
    });
    let id = submit(&client(Duration::from_secs(5)), addr, key, &lead).await;
    let tree = wait_for("the lead's leads row", Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT tree_version FROM leads WHERE submission_id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .expect("leads")
            .flatten()
    })
    .await;
    (id, tree)
}

#[sqlx::test(migrations = false)]
async fn a_stored_lead_is_explained_and_a_stale_active_tree_is_recompiled(pool: PgPool) {
    let _turn = alone().await;
    let database_url = url_of(&pool);
    let (addr, mock) = (free_local_addr(), free_local_addr());
    let mut command = serve_examples(&database_url, addr, mock);
    command.env("ADMIN_TOKEN", ADMIN).stderr(Stdio::inherit());
    let mut daemon = Daemon::spawn("offer-router", addr, &mut command, None);
    daemon.ready().await;
    let first_tree = wait_for_active_tree(&pool).await;
    let key = site_key(&database_url, "degreefinder");
    let (id, tree) = deliver(&pool, addr, &key, "ann.lee@gmail.com").await;
    assert_eq!(tree, first_tree);

    // `rulec explain --submission`: the recorded rule, reproduced under rules v1.
    let explained = rulec(&["explain", "--submission", &id.to_string()], &database_url);
    assert_eq!(explained.status.code(), Some(0), "{}", String::from_utf8_lossy(&explained.stderr));
    let text = String::from_utf8(explained.stdout).expect("utf-8");
    assert!(text.contains("routed to `summit_nursing_college` by rule `df-southwest-nursing`"), "{text}");
    assert!(text.contains("under rules v1 (what routed it): reproduced"), "{text}");
    assert!(text.contains("  no   block-test-traffic (priority 5): `email_domain in "), "{text}");
    assert!(text.contains("decided by `df-southwest-nursing` -> `summit_nursing_college`"), "{text}");
    let json = rulec(&["explain", "--submission", &id.to_string(), "--format", "json"], &database_url);
    assert_eq!(json.status.code(), Some(0));
    let story: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!((&story["then"]["reproduced"], &story["routed"]["tree_version"]), (&json!(true), &json!(tree)));
    let unknown = rulec(&["explain", "--submission", &Uuid::now_v7().to_string()], &database_url);
    assert_eq!(unknown.status.code(), Some(2), "an unknown submission: the tool cannot run");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no stored lead"));

    // The newest version is refused (a conflict), and the active tree was built by a release of
    // another ABI: before, nothing could make the routers' tree loadable again.
    let conflict = json!({
        "priority": 340, "when": "site == \"loanmatch\" and email_domain ends_with \".mil\"", "route": "ironwood_bank"
    });
    let saved = client(Duration::from_secs(30))
        .put(format!("http://{addr}/api/rules/lm-military-2"))
        .bearer_auth(ADMIN)
        .json(&conflict)
        .send()
        .await
        .expect("a save");
    assert_eq!(saved.status().as_u16(), 200);
    wait_for("the refused compile of version 2", Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM decision_trees WHERE rules_version = 2 AND wasm IS NULL")
            .fetch_one(&pool)
            .await
            .expect("trees")
            == 1
    })
    .await;
    sqlx::query("UPDATE decision_trees SET manifest = jsonb_set(manifest, '{abi_version}', '1') WHERE active")
        .execute(&pool)
        .await
        .expect("tamper");

    let started = Instant::now();
    let output = recompile(&database_url, &["--timeout-secs", "60"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("queued a recompile of rules version 1 (active tree"), "{stdout}");
    let abi = runtime::abi::ABI_VERSION;
    assert!(stdout.contains(&format!("ABI 1; this build's ABI {abi}")), "{stdout}");
    assert!(stdout.contains(&format!("of rules version 1 is active (ABI {abi}): replaces tree")), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let (recompiled, rules_version, abi): (i64, i64, i64) = sqlx::query_as(
        "SELECT version, rules_version, (manifest->>'abi_version')::bigint FROM decision_trees WHERE active",
    )
    .fetch_one(&pool)
    .await
    .expect("the active tree");
    assert!(recompiled > first_tree);
    assert_eq!((rules_version, abi), (1, i64::from(runtime::abi::ABI_VERSION)));

    // The routers swapped to it: the next lead is decided by the recompiled tree.
    let (_, tree) = deliver(&pool, addr, &key, "bo.kim@gmail.com").await;
    assert_eq!(tree, recompiled);

    // Again, as JSON: the request and the tree it produced.
    let output = recompile(&database_url, &["--json", "--timeout-secs", "60"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(result["queued"]["tree_version"], recompiled);
    assert_eq!(result["tree"]["active"], true);
    assert_eq!(result["tree"]["recompile"]["replaced_tree"], recompiled);

    let status = daemon.terminate(Instant::now() + Duration::from_secs(20)).await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[sqlx::test(migrations = false)]
async fn recompile_without_an_active_tree_is_refused(pool: PgPool) {
    let database_url = url_of(&pool);
    let migrated = offer_router().arg("migrate").env("DATABASE_URL", &database_url).output().expect("migrate");
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let output = recompile(&database_url, &["--timeout-secs", "1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no decision tree is active"), "{output:?}");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.q_compile").fetch_one(&pool).await.expect("q");
    assert_eq!(queued, 0, "nothing queued");
}
