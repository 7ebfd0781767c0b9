//! Chaos tests: the real `offer-router` daemon under load while things break, each scenario in
//! a database of its own, with the example rules and every partner served by the in-process
//! mock partners:
//!
//! - [`killed_workers_lose_nothing_and_deliver_nothing_twice`]: one process per worker kind
//!   (API, compile, identify, router, deliver), each killed with SIGKILL in the middle of a batch
//!   and restarted;
//! - [`postgres_restart_under_load_loses_nothing`]: a throwaway Postgres cluster of the test's
//!   own, restarted (`pg_ctl -m fast`) while leads are posted and delivered;
//! - [`a_partner_down_opens_its_circuit_then_recovers`]: one partner refuses every connection
//!   until its circuit opens and a lead runs out of attempts, then comes back;
//! - [`a_killed_replica_among_a_thousand_partners_loses_nothing`]: with 1,000 partners
//!   configured, one of two delivering processes is killed in the middle of its calls and not
//!   restarted; the other takes over what it had read.
//!
//! After each, [`check`] holds the pipeline to its guarantees, from the database and from what
//! the partners received: every post answered 202 reaches exactly one final state, no partner
//! receives one dedupe key for two leads, and a partner receives a lead twice (with the same
//! `Idempotency-Key`) only when an interruption caught its batch between the call and the commit.
//! The scenarios take turns with each other and with the other tests that run a daemon
//! ([`alone`]), so each has the machine to itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pipeline::outcome::{self, Final, FinalState};
use pipeline::partners::{Breaker, PartnerConfig, PartnersFile};
use pipeline::queue::Pgmq;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinSet;
use uuid::Uuid;
use workers::mock_partner::{Behaviour, MockPartner};

use crate::harness::{
    Cluster, Daemon, EXAMPLES, Scratch, alone, client, free_local_addr, offer_router, site_key, url_of, wait_for,
    wait_for_active_tree,
};

/// The advisory lock `workers::compile` takes around a compile (`b"compile"`). Holding it makes
/// the compile worker wait in the middle of its batch, where the test kills it.
const COMPILE_LOCK: i64 = 0x0063_6f6d_7069_6c65;

/// The partner the partner-down scenario takes down (the example rules send nursing leads
/// from the south-west and Florida there).
const DOWN: &str = "summit_nursing_college";

/// Settings of every daemon: a killed batch reappears after 2 s, retries and polls are quick,
/// workers see a circuit change within 100 ms, and a post waits at most 3 s for its commit. The
/// pool size is per kind ([`Kind::connections`]).
const DAEMON_ENV: &[(&str, &str)] = &[
    ("RUST_LOG", "info,sqlx=warn"),
    ("VISIBILITY_TIMEOUT_SECS", "2"),
    ("RETRY_BACKOFF_BASE_MS", "50"),
    ("RETRY_BACKOFF_CAP_MS", "1000"),
    ("POLL_INTERVAL_MS", "100"),
    ("CONSUMER_BATCH_SIZE", "50"),
    ("ROUTER_BATCH_SIZE", "100"),
    ("TREE_POLL_SECS", "1"),
    ("PARTNERS_REFRESH_SECS", "1"),
    ("BREAKER_CACHE_MS", "100"),
    ("QUEUE_METRICS_SECS", "60"),
    ("SUBMIT_TIMEOUT_SECS", "3"),
    ("SHUTDOWN_GRACE_SECS", "2"),
];

// ---------------------------------------------------------------------------------------------
// The scenarios

/// Each worker kind is killed with SIGKILL while it holds a batch, then restarted; meanwhile
/// 800 leads are posted (80 per second).
///
/// - compile: the test holds the compile lock, so the worker blocks right after reading the
///   compile request; killed there, and restarted, it compiles the one rules version once.
/// - identify and router: frozen (SIGSTOP) while their queue shows messages they read and did
///   not settle, then killed: their batch is in hand (see [`kill_mid_batch`]).
/// - deliver: every partner answers slowly for a moment; as soon as a call is in progress the
///   worker is killed, between its calls and its commit. Every call in progress is made again
///   after the restart, with the same `Idempotency-Key`, and a lead is sent twice only if the
///   kill cut its batch.
#[sqlx::test(migrations = false)]
async fn killed_workers_lose_nothing_and_deliver_nothing_twice(pool: PgPool) {
    let _turn = alone().await;
    let started = Instant::now();
    let logs = Scratch::new("kill");
    let mock = Mock::start().await;
    let partners = partners_file(mock.addr());
    let routes: Vec<String> = partners.partners.iter().map(|p| p.name.clone()).collect();
    mock.usual(&routes);
    let stack = Stack::new(&url_of(&pool), &logs);
    let seeds = stack.seeds(&logs.write("partners.json", serde_json::to_vec_pretty(&partners).expect("JSON")));

    // Compile, killed while it waits for the lock the test holds.
    let mut lock = pool.acquire().await.expect("a connection");
    sqlx::query("SELECT pg_advisory_lock($1)").bind(COMPILE_LOCK).execute(&mut *lock).await.expect("lock");
    let mut api = stack.spawn(Kind::Api, &seeds).await;
    let mut compile = stack.spawn(Kind::Compile, &[]).await;
    let db = &pool;
    wait_for(
        "the compile worker to wait for the compile lock, its request read",
        Duration::from_secs(60),
        || async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                        AND (classid::bigint << 32) + objid::bigint = $1)
                    AND EXISTS (SELECT 1 FROM pgmq.q_compile WHERE read_ct > 0)",
            )
            .bind(COMPILE_LOCK)
            .fetch_one(db)
            .await
            .unwrap_or(false)
        },
    )
    .await;
    compile.kill9();
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(COMPILE_LOCK).execute(&mut *lock).await.expect("unlock");
    drop(lock);
    let mut compile = stack.spawn(Kind::Compile, &[]).await;
    wait_for_active_tree(&pool).await;
    let trees: (i64, i64) = sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE active) FROM decision_trees")
        .fetch_one(&pool)
        .await
        .expect("trees");
    assert_eq!(trees, (1, 1), "the one rules version is compiled once and active, despite the kill");

    let (mut identify, mut router, mut deliver) =
        (stack.start(Kind::Identify, &[]), stack.start(Kind::Router, &[]), stack.start(Kind::Deliver, &[]));
    for daemon in [&mut identify, &mut router, &mut deliver] {
        daemon.ready().await;
    }
    let poster = stack.poster(&api);
    let mut leads = Leads::new("kill");
    let load = poster.start(leads.take(800, Some(10), |i| i), 80.0);

    load.wait_posted(100).await;
    let identify_in_hand = kill_mid_batch(&pool, &mut identify, "submissions").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    identify = stack.spawn(Kind::Identify, &[]).await;

    load.wait_posted(300).await;
    let router_in_hand = kill_mid_batch(&pool, &mut router, "routing").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    router = stack.spawn(Kind::Router, &[]).await;

    load.wait_posted(500).await;
    let slow_from = mock.slow(&routes);
    mock.wait_for_calls(&routes, slow_from, 1).await;
    deliver.kill9();
    let killed_at = Instant::now();
    mock.usual(&routes);
    tokio::time::sleep(Duration::from_millis(300)).await;
    deliver = stack.spawn(Kind::Deliver, &[]).await;

    let ids = load.finish().await;
    let finals = settle(&pool, &ids).await;
    let stats =
        check(&pool, &ids, &finals, &partners, mock.server(), &Allowed::partners_up(vec![(killed_at, killed_at)]))
            .await;
    // The calls the killed deliver worker had in progress were all made again, after it died.
    let cut: Vec<(String, String)> = routes
        .iter()
        .flat_map(|r| mock.server().requests(r).into_iter().map(move |call| (r.clone(), call)))
        .filter(|(_, call)| call.at >= slow_from && call.at <= killed_at)
        .map(|(r, call)| (r, call.headers.get("idempotency-key").cloned().unwrap_or_default()))
        .collect();
    assert!(!cut.is_empty(), "the deliver worker was killed with no call in progress");
    for (route, key) in &cut {
        let again = mock
            .server()
            .requests(route)
            .iter()
            .any(|call| call.at > killed_at && call.headers.get("idempotency-key").is_some_and(|k| k == key));
        assert!(again, "{route} was not sent {key} again after the deliver worker's restart");
    }
    for daemon in [&mut api, &mut compile, &mut identify, &mut router, &mut deliver] {
        daemon.assert_alive();
    }
    eprintln!(
        "chaos kill: {} leads, {:?}; killed identify with {identify_in_hand} and router with {router_in_hand} \
         messages in hand, deliver with {} calls in progress; {} calls repeated; {:.1?}",
        ids.len(),
        stats.states,
        cut.len(),
        stats.repeats,
        started.elapsed()
    );
}

/// With 1,000 partners configured (the 21 example partners receive the leads, 979 others
/// none), two processes deliver: the first runs every worker, the second only deliver. While
/// 500 leads are delivered by both (80 per second); then every partner answers slowly, 100 more
/// are posted, and once they are all posted and calls are in progress the second process is
/// killed with SIGKILL and not restarted. The first must take over what the second had read
/// once its visibility timeout runs out, with no notification to say so (nothing is sent any
/// more) and every consumer polling only every 10 minutes (`IDLE_POLL_SECS`): a consumer
/// that finds its queue empty waits for the queue's next `vt` (`queue::read_or_next_sql`; the
/// consumer tests show that path alone), or reads again after a batch of its own.
#[sqlx::test(migrations = false)]
async fn a_killed_replica_among_a_thousand_partners_loses_nothing(pool: PgPool) {
    let _turn = alone().await;
    let started = Instant::now();
    let logs = Scratch::new("replica");
    let mock = Mock::start().await;
    let mut partners = partners_file(mock.addr());
    let routes: Vec<String> = partners.partners.iter().map(|p| p.name.clone()).collect();
    mock.usual(&routes);
    let idle: String = (partners.partners.len()..1_000)
        .map(|i| {
            format!(
                "  - name: idle_{i:04}\n    request:\n      url: http://{}/partners/idle_{i:04}/leads\n      body: {{ lead_id: \"{{{{ lead.submission_id }}}}\" }}\n",
                mock.addr()
            )
        })
        .collect();
    let idle = pipeline::partners::parse_file(&format!("partners:\n{idle}")).expect("the idle partners");
    partners.partners.extend(idle.partners);
    let stack = Stack::new(&url_of(&pool), &logs);
    let quiet = ("IDLE_POLL_SECS", "600".to_owned());
    let mut seeds = stack.seeds(&logs.write("partners.json", serde_json::to_vec_pretty(&partners).expect("JSON")));
    seeds.push(quiet.clone());
    let mut first = stack.spawn(Kind::All, &seeds).await;
    wait_for_active_tree(&pool).await;
    let configured: i64 = sqlx::query_scalar("SELECT count(*) FROM partners").fetch_one(&pool).await.expect("count");
    assert_eq!(configured, 1_000);
    let mut second = stack.spawn(Kind::Deliver, std::slice::from_ref(&quiet)).await;
    let poster = stack.poster(&first);
    let mut leads = Leads::new("replica");
    let mut ids = poster.start(leads.take(500, Some(10), |i| i), 80.0).finish().await;
    settle(&pool, &ids).await;
    let second_batches = deliver_batches(&second).await;
    assert!(second_batches > 0, "the second process delivers its share");

    // The last 100 leads find every partner slow; the kill comes after the last post, so no
    // send wakes anyone for what the second process had read.
    let slow_from = mock.slow(&routes);
    let load = poster.start(leads.take(100, Some(10), |i| i), 200.0);
    ids.extend(load.finish().await);
    mock.wait_for_calls(&routes, slow_from, 2).await;
    second.kill9();
    let killed_at = Instant::now();
    mock.usual(&routes);
    let finals = settle(&pool, &ids).await;
    let stats =
        check(&pool, &ids, &finals, &partners, mock.server(), &Allowed::partners_up(vec![(killed_at, killed_at)]))
            .await;
    first.assert_alive();
    eprintln!(
        "chaos replica: {} leads, {:?}; the killed replica had settled {second_batches} deliver batches; {} calls \
         repeated; {:.1?}",
        ids.len(),
        stats.states,
        stats.repeats,
        started.elapsed()
    );
}

/// The deliver batches `daemon` has settled (from its `/metrics`).
async fn deliver_batches(daemon: &Daemon) -> u64 {
    let text = client(Duration::from_secs(10))
        .get(format!("http://{}/metrics", daemon.addr()))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("/metrics")
        .text()
        .await
        .expect("the metrics");
    text.lines()
        .filter(|line| {
            line.starts_with("offer_router_consumer_batch_duration_ms_count{") && line.contains("worker=\"deliver\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A Postgres cluster of the test's own is stopped (`pg_ctl -m fast`, which cuts every
/// connection), kept down for a second and started again while leads are posted (80 per second,
/// 300 before and 200 from the moment it stops) and delivered by one daemon running every worker.
/// A post that is not answered 202 meanwhile is retried with its `Idempotency-Key`, as a client
/// would.
#[tokio::test]
async fn postgres_restart_under_load_loses_nothing() {
    let _turn = alone().await;
    let started = Instant::now();
    let logs = Scratch::new("postgres");
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::create).await.expect("create the cluster"));
    let pool = PgPoolOptions::new().max_connections(4).connect(&cluster.url()).await.expect("connect");
    let mock = Mock::start().await;
    let partners = partners_file(mock.addr());
    let routes: Vec<String> = partners.partners.iter().map(|p| p.name.clone()).collect();
    mock.usual(&routes);
    let stack = Stack::new(&cluster.url(), &logs);
    let seeds = stack.seeds(&logs.write("partners.json", serde_json::to_vec_pretty(&partners).expect("JSON")));
    let mut daemon = stack.spawn(Kind::All, &seeds).await;
    wait_for_active_tree(&pool).await;
    let poster = stack.poster(&daemon);
    let mut leads = Leads::new("postgres");
    let before = poster.start(leads.take(300, Some(10), |i| i), 80.0);

    before.wait_posted(150).await;
    let m = &mock;
    let routes_ref = &routes;
    wait_for("deliveries under way", Duration::from_secs(60), || async move {
        routes_ref.iter().map(|r| m.server().calls(r)).sum::<usize>() >= 50
    })
    .await;
    let started_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()").fetch_one(&pool).await.expect("start time");
    // Leads keep coming through the outage and after it (200 more over 2.5 s, from now on).
    let through = poster.start(leads.take(200, Some(10), |i| i), 80.0);
    let down_from = Instant::now();
    let handle = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || handle.stop()).await.expect("stop Postgres");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let handle = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || handle.start()).await.expect("start Postgres");
    let up_at = Instant::now();

    let mut ids = before.finish().await;
    ids.extend(through.finish().await);
    let finals = settle(&pool, &ids).await;
    let stats = check(
        &pool,
        &ids,
        &finals,
        &partners,
        mock.server(),
        // A batch open when Postgres stopped may still make its calls after it is back: it
        // waits for each of its two connections (batch, claims) at most the pool's acquire
        // timeout, and only then finds its batch connection dead and cannot commit.
        &Allowed::partners_up(vec![(down_from, up_at + 2 * pipeline::config::DbConfig::new("").acquire_timeout)]),
    )
    .await;
    let restarted: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT pg_postmaster_start_time()").fetch_one(&pool).await.expect("start time");
    assert!(restarted > started_at, "Postgres was restarted");
    daemon.assert_alive();
    daemon.ready().await;
    eprintln!(
        "chaos postgres: {} leads, {:?}; {} posts retried; {} calls repeated; {:.1?}",
        ids.len(),
        stats.states,
        poster.retried(),
        stats.repeats,
        started.elapsed()
    );
}

/// One partner refuses every connection (the mock cuts it before answering) while leads keep
/// coming: its circuit opens, probes fail, a lead runs out of attempts and goes to the partner's
/// DLQ, and the other partners keep receiving theirs. Then it answers again: the next probe
/// closes the circuit, the leads held back are delivered, and so are leads posted afterwards.
#[sqlx::test(migrations = false)]
async fn a_partner_down_opens_its_circuit_then_recovers(pool: PgPool) {
    let _turn = alone().await;
    let started = Instant::now();
    let logs = Scratch::new("partner");
    let mock = Mock::start().await;
    let partners = partners_file(mock.addr());
    let routes: Vec<String> = partners.partners.iter().map(|p| p.name.clone()).collect();
    assert!(routes.iter().any(|r| r == DOWN), "{DOWN} is an example partner");
    mock.usual(&routes);
    let stack = Stack::new(&url_of(&pool), &logs);
    let seeds = stack.seeds(&logs.write("partners.json", serde_json::to_vec_pretty(&partners).expect("JSON")));
    let mut daemon = stack.spawn(Kind::All, &seeds).await;
    wait_for_active_tree(&pool).await;
    let poster = stack.poster(&daemon);
    let mut leads = Leads::new("partner");

    // Up: every sample twice, to learn which samples the rules send to DOWN.
    let first = leads.take(80, Some(10), |i| i);
    let first_samples: Vec<usize> = first.iter().map(|l| l.sample).collect();
    let first_ids = poster.start(first, 80.0).finish().await;
    settle(&pool, &first_ids).await;
    let partner_of = partner_of(&pool, &first_ids).await;
    let to_down: Vec<usize> = first_ids
        .iter()
        .zip(&first_samples)
        .filter(|(id, _)| partner_of.get(id).is_some_and(|p| p == DOWN))
        .map(|(_, sample)| *sample)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(!to_down.is_empty(), "no sample lead went to {DOWN}");

    // Down, while leads keep coming: half of them for DOWN.
    let down = Switch::now(|| mock.server().set(DOWN, Behaviour::Refuse));
    let to = &to_down;
    let during = leads.take(150, Some(10), |i| if i % 2 == 0 { to[(i / 2) % to.len()] } else { i });
    let load = poster.start(during, 60.0);
    let db = &pool;
    wait_for("the circuit of the partner that is down to open", Duration::from_secs(60), || async move {
        circuit(db, DOWN).await.is_some_and(|state| state == "open")
    })
    .await;
    wait_for("a lead to run out of attempts at the partner that is down", Duration::from_secs(60), || async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM leads WHERE partner = $1 AND state = 'failed'")
            .bind(DOWN)
            .fetch_one(db)
            .await
            .is_ok_and(|n| n > 0)
    })
    .await;
    let during_ids = load.finish().await;
    // Meanwhile the other partners got their leads: every lead of this phase is final, or waits
    // for DOWN (in its queue, or `pending` there).
    let ids_ref = &during_ids;
    wait_for("every lead not for the partner that is down to be final", Duration::from_secs(60), || async move {
        let reached: HashSet<Uuid> =
            outcome::finals(db, ids_ref).await.unwrap_or_default().iter().map(|f| f.submission_id).collect();
        let held: HashSet<Uuid> = sqlx::query_scalar(&format!(
            "SELECT (message->>'submission_id')::uuid FROM pgmq.q_partner_{DOWN}
             UNION SELECT submission_id FROM leads WHERE partner = '{DOWN}' AND state = 'pending'"
        ))
        .fetch_all(db)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
        ids_ref.iter().all(|id| reached.contains(id) || held.contains(id))
    })
    .await;
    let finals = outcome::finals(&pool, &during_ids).await.expect("finals");
    let held_back = during_ids.len() - finals.len();
    assert!(held_back > 0, "no lead was held back for the partner that is down");
    for f in finals.iter().filter(|f| f.partner.as_deref() != Some(DOWN)) {
        assert!(
            matches!(f.state, FinalState::Accepted | FinalState::Rejected | FinalState::Duplicate),
            "another partner's lead suffered from {DOWN} being down: {f:?}"
        );
    }

    // Back up, at a moment no call to DOWN can be under way (its circuit is open and the next
    // probe is at least 300 ms away), so every call is plainly before or after the switch.
    wait_for("a quiet moment of the open circuit", Duration::from_secs(30), || async move {
        sqlx::query_scalar::<_, bool>(
            "SELECT state = 'open' AND retry_at > now() + interval '300 milliseconds' AND probe_owner IS NULL
             FROM circuit_breakers WHERE partner = $1",
        )
        .bind(DOWN)
        .fetch_one(db)
        .await
        .unwrap_or(false)
    })
    .await;
    let up = Switch::now(|| mock.server().set(DOWN, Behaviour::Accept));
    wait_for("the circuit to close again", Duration::from_secs(60), || async move {
        circuit(db, DOWN).await.is_some_and(|state| state == "closed")
    })
    .await;

    // After the recovery: leads for DOWN are delivered at once.
    let after = leads.take(40, None, |i| to[i % to.len()]);
    let after_ids = poster.start(after, 80.0).finish().await;

    let ids: Vec<Uuid> = first_ids.iter().chain(&during_ids).chain(&after_ids).copied().collect();
    let finals = settle(&pool, &ids).await;
    let refused = |route: &str, at: Instant| {
        if route != DOWN || at < down.before || at > up.after {
            Some(false)
        } else if at > down.after && at < up.before {
            Some(true)
        } else {
            None
        }
    };
    let stats = check(
        &pool,
        &ids,
        &finals,
        &partners,
        mock.server(),
        &Allowed {
            states: &[FinalState::Accepted, FinalState::Rejected, FinalState::Duplicate, FinalState::Failed],
            interruptions: Vec::new(),
            refused: &refused,
            duplicates_have_a_delivery: false,
        },
    )
    .await;
    let dlq = format!("partner_{DOWN}_dlq");
    let failed: Vec<&Final> = finals.iter().filter(|f| f.state == FinalState::Failed).collect();
    assert!(!failed.is_empty(), "no lead ran out of attempts");
    for f in &failed {
        assert!(during_ids.contains(&f.submission_id), "a lead failed outside the outage: {f:?}");
        assert_eq!(f.partner.as_deref(), Some(DOWN), "{f:?}");
        assert_eq!(f.queue.as_deref(), Some(dlq.as_str()), "a failed lead is in its partner's DLQ: {f:?}");
        assert!(f.error.as_deref().is_some_and(|e| e.contains("request failed")), "with the error: {f:?}");
    }
    // Leads held back while the circuit was open were delivered once it closed.
    let after_up: HashSet<Uuid> = mock
        .server()
        .requests(DOWN)
        .iter()
        .filter(|call| call.at > up.after)
        .filter_map(|call| call.headers.get("idempotency-key")?.split_once(':')?.0.parse().ok())
        .collect();
    let held_delivered = finals
        .iter()
        .filter(|f| during_ids.contains(&f.submission_id) && f.state == FinalState::Accepted)
        .filter(|f| after_up.contains(&f.submission_id))
        .count();
    assert!(held_delivered > 0, "no lead held back while {DOWN} was down was delivered after it came back");
    // Leads posted after the recovery: every one for DOWN accepted.
    let after_set: HashSet<Uuid> = after_ids.iter().copied().collect();
    let after_down: Vec<&Final> =
        finals.iter().filter(|f| after_set.contains(&f.submission_id) && f.partner.as_deref() == Some(DOWN)).collect();
    assert!(!after_down.is_empty(), "no lead for {DOWN} after the recovery");
    for f in &after_down {
        assert_eq!(f.state, FinalState::Accepted, "a lead after the recovery: {f:?}");
    }
    let circuits: Vec<(String, String)> =
        sqlx::query_as("SELECT partner, state FROM circuit_breakers ORDER BY partner")
            .fetch_all(&pool)
            .await
            .expect("circuits");
    for (partner, state) in &circuits {
        assert_eq!(state, "closed", "the circuit of {partner} is {state}");
    }
    daemon.assert_alive();
    eprintln!(
        "chaos partner down: {} leads, {:?}; {held_back} held back, {held_delivered} of them delivered after the \
         recovery, {} failed into {dlq}; {:.1?}",
        ids.len(),
        stats.states,
        failed.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// The checks

/// What a scenario allows.
struct Allowed<'a> {
    /// The final states a lead may reach.
    states: &'a [FinalState],
    /// Spans of time (start, end) in which a deliver batch may have been cut between its partner
    /// calls and its commit (a worker killed, Postgres down): its calls come before the end, and
    /// their repeats after the start.
    interruptions: Vec<(Instant, Instant)>,
    /// Whether the partner refused a call to `route` made at a moment (cut the connection without
    /// an answer): `None` when the moment is too close to a switch of its behaviour to tell.
    refused: &'a dyn Fn(&str, Instant) -> Option<bool>,
    /// Whether every `duplicate` has a delivered lead with its dedupe key. Not so when a partner
    /// was down: a lead deduplicated against one still pending there stays `duplicate` when
    /// that one fails.
    duplicates_have_a_delivery: bool,
}

impl Allowed<'static> {
    /// A run in which every partner answers (none refuses a call), cut by `interruptions`.
    fn partners_up(interruptions: Vec<(Instant, Instant)>) -> Self {
        fn never_refused(_: &str, _: Instant) -> Option<bool> {
            Some(false)
        }
        Self {
            states: &[FinalState::Accepted, FinalState::Rejected, FinalState::Duplicate],
            interruptions,
            refused: &never_refused,
            duplicates_have_a_delivery: true,
        }
    }
}

/// One call a partner received, as [`check`] sees it.
struct Received {
    at: Instant,
    refused: Option<bool>,
}

/// What a scenario came to.
struct Stats {
    states: BTreeMap<FinalState, usize>,
    repeats: usize,
}

/// Checks the guarantees after a scenario:
///
/// 1. Every lead answered 202 has exactly one final state per partner it reached (a shared
///    lead reaches several), one the scenario allows, at a partner (the example rules have a
///    default route, so none is unmatched).
/// 2. `leads` holds one row per such lead and partner and none for anything else: no post
///    made two submissions (a retried post carries its `Idempotency-Key`).
/// 3. Per partner and dedupe key, at most one lead was delivered (accepted or rejected).
/// 4. What each partner received (the mock's record):
///    - each dedupe key (the fields named by the partner's `dedupe_fields`, read from the
///      request body) came with one lead only, counting every call that was not refused;
///    - each lead (its `Idempotency-Key`, `<submission>:<partner>`) was answered once, except
///      for the documented repeat. Why that one is allowed: an HTTP call and a database commit
///      cannot be one atomic step, so a batch cut after its calls and before its commit (its
///      worker killed, Postgres gone) leaves its messages to reappear, and they are sent again,
///      with the same key, which the partner deduplicates (the key claim stays committed, so no
///      other lead takes the dedupe key meanwhile). Anything else sent twice would be a double
///      delivery. So an answered call may follow an earlier answered call of the same key only
///      if an interruption lies between them (the first at most at its end, the second at least
///      at its start), and each interruption excuses one repeat per key;
///    - the leads the partner answered are exactly the leads recorded as delivered to it.
async fn check(
    pool: &PgPool,
    ids: &[Uuid],
    finals: &[Final],
    partners: &PartnersFile,
    mock: &MockPartner,
    allowed: &Allowed<'_>,
) -> Stats {
    let tracked: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(tracked.len(), ids.len(), "the API answered two posts with one submission id");

    // 1.
    let mut per_lead: HashMap<Uuid, Vec<&Final>> = HashMap::new();
    for f in finals {
        per_lead.entry(f.submission_id).or_default().push(f);
    }
    let mut states = BTreeMap::new();
    let mut expected_rows = 0;
    for id in ids {
        let found = per_lead.get(id).map(Vec::as_slice).unwrap_or_default();
        assert!(!found.is_empty(), "lead {id} has no final state");
        let partners: HashSet<Option<&str>> = found.iter().map(|f| f.partner.as_deref()).collect();
        assert_eq!(partners.len(), found.len(), "lead {id} has two final states at one partner: {found:?}");
        for f in found {
            assert!(allowed.states.contains(&f.state), "lead {id} ended `{}`: {f:?}", f.state);
            assert!(f.partner.is_some(), "lead {id} ended at no partner: {f:?}");
            *states.entry(f.state).or_insert(0) += 1;
        }
        expected_rows += found.len();
    }

    // 2.
    let rows: Vec<(Uuid, String, String, String)> =
        sqlx::query_as("SELECT submission_id, partner, state, dedupe_key FROM leads")
            .fetch_all(pool)
            .await
            .expect("rows");
    for (id, partner, state, _) in &rows {
        assert!(tracked.contains(id), "a `{state}` row at {partner} for {id}, a submission no post was answered with");
    }
    assert_eq!(rows.len(), expected_rows, "one delivery row per lead and partner");

    // 3.
    let mut groups: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for (_, partner, state, key) in &rows {
        groups.entry((partner, key)).or_default().push(state);
    }
    for ((partner, key), states) in &groups {
        let delivered = states.iter().filter(|s| matches!(**s, "accepted" | "rejected")).count();
        assert!(delivered <= 1, "{partner} was delivered dedupe key {key:?} {delivered} times: {states:?}");
        if allowed.duplicates_have_a_delivery && states.contains(&"duplicate") {
            assert_eq!(delivered, 1, "duplicates of dedupe key {key:?} at {partner} without a delivery: {states:?}");
        }
    }
    let delivered: HashSet<(Uuid, &str)> = rows
        .iter()
        .filter(|(_, _, state, _)| matches!(state.as_str(), "accepted" | "rejected"))
        .map(|(id, partner, _, _)| (*id, partner.as_str()))
        .collect();

    // 4.
    // (lead, partner) → when each call came and whether it was refused.
    let mut calls: HashMap<(Uuid, &str), Vec<Received>> = HashMap::new();
    let mut received: HashMap<(&str, String), HashSet<Uuid>> = HashMap::new();
    for partner in &partners.partners {
        let route = partner.name.as_str();
        for call in mock.requests(route) {
            let key = call.headers.get("idempotency-key").expect("every call has an Idempotency-Key");
            let (submission, key_route) = key.split_once(':').expect("`<submission>:<partner>`");
            assert_eq!(key_route, route, "the Idempotency-Key {key} names its partner");
            let submission: Uuid = submission.parse().expect("a submission id");
            let refused = (allowed.refused)(route, call.at);
            if refused != Some(true) {
                received.entry((route, dedupe_key(partner, &call.body))).or_default().insert(submission);
            }
            calls.entry((submission, route)).or_default().push(Received { at: call.at, refused });
        }
    }
    for ((route, key), leads) in &received {
        assert_eq!(leads.len(), 1, "{route} received dedupe key {key:?} with {} leads: {leads:?}", leads.len());
    }
    let mut repeats = 0;
    for ((submission, route), made) in &mut calls {
        made.sort_by_key(|r| r.at);
        let answered: Vec<Instant> = made.iter().filter(|r| r.refused == Some(false)).map(|r| r.at).collect();
        let mut excused = vec![false; allowed.interruptions.len()];
        for pair in answered.windows(2) {
            let across = (0..excused.len()).find(|&i| {
                let (start, end) = allowed.interruptions[i];
                !excused[i] && pair[0] <= end && pair[1] >= start
            });
            let Some(i) = across else {
                let first = answered[0];
                let offsets: Vec<Duration> = answered.iter().map(|at| at.duration_since(first)).collect();
                panic!("{route} received lead {submission} again, not across an interruption (calls at +{offsets:?})");
            };
            excused[i] = true;
            repeats += 1;
        }
        if !answered.is_empty() {
            assert!(delivered.contains(&(*submission, *route)), "{route} answered lead {submission}, not delivered");
        }
    }
    for (submission, route) in &delivered {
        let reached = calls.get(&(*submission, *route)).is_some_and(|c| c.iter().any(|r| r.refused != Some(true)));
        assert!(reached, "lead {submission} is recorded as delivered to {route}, which never received it");
    }
    Stats { states, repeats }
}

/// The dedupe key of a call as the partner sees it: the values of the partner's `dedupe_fields`
/// in the request body (JSON or form), joined.
fn dedupe_key(partner: &PartnerConfig, body: &str) -> String {
    let values: HashMap<String, String> = if partner.request.encoding == "form" {
        let url = reqwest::Url::parse(&format!("http://form.invalid/?{body}")).expect("a form body");
        url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
    } else {
        let json: Value = serde_json::from_str(body).expect("a JSON body");
        let object = json.as_object().cloned().unwrap_or_default();
        object.into_iter().map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect()
    };
    let fields = partner.dedupe_fields.iter().map(|field| {
        values.get(field).cloned().unwrap_or_else(|| panic!("{} is not sent its dedupe field `{field}`", partner.name))
    });
    fields.collect::<Vec<_>>().join("\u{1f}")
}

/// Waits until every lead has a final state and the pipeline is idle (no message in a queue
/// but the DLQs, no delivery `pending`), then returns the final states.
async fn settle(pool: &PgPool, ids: &[Uuid]) -> Vec<Final> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let pgmq = Pgmq::detect(pool).await.expect("the database's pgmq");
    loop {
        if let Ok(finals) = outcome::finals(pool, ids).await {
            let reached: HashSet<Uuid> = finals.iter().map(|f| f.submission_id).collect();
            let pending: Option<i64> =
                sqlx::query_scalar("SELECT count(*) FROM leads WHERE state = 'pending'").fetch_one(pool).await.ok();
            let idle = outcome::summary(pool, &pgmq, None).await.is_ok_and(|s| s.in_flight() == 0);
            if reached.len() == ids.len() && pending == Some(0) && idle {
                return finals;
            }
            if Instant::now() > deadline {
                let summary = outcome::summary(pool, &pgmq, None).await.expect("summary");
                let queues: Vec<_> = summary
                    .queues
                    .iter()
                    .filter(|q| q.queue_length > 0)
                    .map(|q| (&q.queue_name, q.queue_length))
                    .collect();
                panic!(
                    "{} of {} leads are final after 120 s; {pending:?} pending; queues {queues:?}; circuits {:?}",
                    reached.len(),
                    ids.len(),
                    summary.partners.iter().map(|p| (&p.partner, &p.circuit)).collect::<Vec<_>>()
                );
            }
        }
        assert!(Instant::now() < deadline + Duration::from_secs(30), "the database did not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where each lead was delivered (its `leads` row's partner).
async fn partner_of(pool: &PgPool, ids: &[Uuid]) -> HashMap<Uuid, String> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT submission_id, partner FROM leads WHERE submission_id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await
            .expect("leads");
    rows.into_iter().collect()
}

/// The state of a partner's circuit.
async fn circuit(pool: &PgPool, partner: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM circuit_breakers WHERE partner = $1")
        .bind(partner)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
}

/// Kills `daemon`, the only consumer of `queue`, with SIGKILL while it holds a batch. It is
/// frozen (SIGSTOP) for a moment so that a backlog builds up and its next batch is a large one,
/// then resumed; as soon as the queue shows messages it read and has not settled, it is frozen
/// again, and once the statements it had sent are done (a commit in flight would settle the
/// batch), if it still holds them, it dies there, its batch in hand. Returns how many messages it
/// held.
async fn kill_mid_batch(pool: &PgPool, daemon: &mut Daemon, queue: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM pgmq.q_{queue} WHERE read_ct > 0 AND vt > clock_timestamp()");
    let sql = sql.as_str();
    let in_hand =
        move || async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.expect("messages in hand") };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "{} never held a batch of {queue}", daemon.name());
        daemon.signal(Signal::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(300)).await;
        daemon.signal(Signal::SIGCONT);
        let watch_until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < watch_until {
            if in_hand().await == 0 {
                continue;
            }
            daemon.signal(Signal::SIGSTOP);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let held = in_hand().await;
            if held > 0 {
                daemon.kill9();
                return held;
            }
            daemon.signal(Signal::SIGCONT);
        }
    }
}

/// When a partner's behaviour was switched: calls recorded before `before` got the old one,
/// calls after `after` the new one.
#[derive(Debug, Clone, Copy)]
struct Switch {
    before: Instant,
    after: Instant,
}

impl Switch {
    fn now(switch: impl FnOnce()) -> Self {
        let before = Instant::now();
        switch();
        Self { before, after: Instant::now() }
    }
}

// ---------------------------------------------------------------------------------------------
// Leads

const FIRST: [&str; 8] = ["Ann", "Bob", "Chloé", "Dmitri", "Eve", "Fatima", "Gus", "Hana"];
const LAST: [&str; 6] = ["Lee", "Stone", "Martin", "Khan", "Sato", "Rossi"];

/// One post: its `Idempotency-Key`, site and body.
#[derive(Debug, Clone)]
struct Lead {
    key: String,
    site: String,
    sample: usize,
    body: Value,
}

/// Leads made from `examples/leads.jsonl` (whose offer fields the example rules route on), each
/// from a new person unless it is a returning one: the same person with the same offer, which
/// deliver must record as a duplicate.
struct Leads {
    tag: &'static str,
    samples: Vec<Value>,
    made: Vec<(usize, usize)>,
    people: usize,
}

impl Leads {
    fn new(tag: &'static str) -> Self {
        let text = std::fs::read_to_string(format!("{EXAMPLES}/leads.jsonl")).expect("the sample leads");
        let samples: Vec<Value> =
            text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("JSON")).collect();
        Self { tag, samples, made: Vec::new(), people: 0 }
    }

    /// `count` leads, the `i`th of sample `pick(i)` (modulo the samples); every
    /// `returning_every`th lead made repeats the one made seven before it.
    fn take(&mut self, count: usize, returning_every: Option<usize>, pick: impl Fn(usize) -> usize) -> Vec<Lead> {
        (0..count)
            .map(|i| {
                let n = self.made.len();
                let returning = returning_every.is_some_and(|every| n % every == every - 1) && n >= 7;
                let (sample, person) = if returning {
                    self.made[n - 7]
                } else {
                    self.people += 1;
                    (pick(i) % self.samples.len(), self.people)
                };
                self.made.push((sample, person));
                Lead {
                    key: format!("chaos-{}-{n}", self.tag),
                    site: site_of(&self.samples[sample]).to_owned(),
                    sample,
                    body: lead_body(&self.samples, sample, person),
                }
            })
            .collect()
    }

    fn sites(&self) -> HashSet<&str> {
        self.samples.iter().map(site_of).collect()
    }
}

fn site_of(sample: &Value) -> &str {
    sample["site"].as_str().unwrap_or("degreefinder")
}

/// The body of a lead with `sample`'s offer fields from person number `person`.
fn lead_body(samples: &[Value], sample: usize, person: usize) -> Value {
    let sample = &samples[sample];
    let domain = sample["email_domain"].as_str().unwrap_or("gmail.com");
    let mut fields = sample.as_object().cloned().unwrap_or_default();
    for derived in pipeline::message::derived::ALL {
        fields.remove(derived);
    }
    serde_json::json!({
        "email": format!("lead{person}@{domain}"),
        "full_name": format!("{} {}", FIRST[person % FIRST.len()], LAST[(person / FIRST.len()) % LAST.len()]),
        "phone": format!("(415) 555-{:04}", 1000 + person % 9000),
        "fields": fields,
    })
}

/// Posts leads to `/api/submit` as a careful client does: a post that is not answered 202
/// (503 while the database is away, a cut connection) is retried with its `Idempotency-Key`.
#[derive(Clone)]
struct Poster {
    client: reqwest::Client,
    url: String,
    keys: Arc<HashMap<String, String>>,
    retried: Arc<AtomicUsize>,
}

impl Poster {
    async fn post(&self, lead: &Lead) -> Uuid {
        let key = self.keys.get(&lead.site).expect("a key for every site");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let sent = self
                .client
                .post(&self.url)
                .bearer_auth(key)
                .header("Idempotency-Key", &lead.key)
                .json(&lead.body)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().as_u16() == 202 => {
                    let answer: Option<Value> = response.json().await.ok();
                    if let Some(id) = answer.and_then(|a| a["submission_id"].as_str()?.parse().ok()) {
                        return id;
                    }
                }
                Ok(response)
                    if response.status().is_client_error() && ![408, 429].contains(&response.status().as_u16()) =>
                {
                    let status = response.status();
                    panic!("lead {} refused: {status} {}", lead.key, response.text().await.unwrap_or_default());
                }
                _ => {}
            }
            self.retried.fetch_add(1, Ordering::Relaxed);
            assert!(Instant::now() < deadline, "lead {} was not accepted within 90 s", lead.key);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn retried(&self) -> usize {
        self.retried.load(Ordering::Relaxed)
    }

    /// Posts `leads` in the background, `per_second` of them each second (each post on its own,
    /// so a slow one does not hold the others back).
    fn start(&self, leads: Vec<Lead>, per_second: f64) -> Load {
        let posted = Arc::new(AtomicUsize::new(0));
        let (poster, counter) = (self.clone(), Arc::clone(&posted));
        let task = tokio::spawn(async move {
            let count = leads.len();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
            let mut posts = JoinSet::new();
            for (i, lead) in leads.into_iter().enumerate() {
                tick.tick().await;
                let (poster, counter) = (poster.clone(), Arc::clone(&counter));
                posts.spawn(async move {
                    let id = poster.post(&lead).await;
                    counter.fetch_add(1, Ordering::Relaxed);
                    (i, id)
                });
            }
            let mut ids = vec![None; count];
            while let Some(joined) = posts.join_next().await {
                let (i, id) = joined.expect("a post failed");
                ids[i] = Some(id);
            }
            ids.into_iter().map(|id| id.expect("every lead answered")).collect()
        });
        Load { task, posted }
    }
}

/// Leads being posted.
struct Load {
    task: tokio::task::JoinHandle<Vec<Uuid>>,
    posted: Arc<AtomicUsize>,
}

impl Load {
    async fn wait_posted(&self, count: usize) {
        let posted = &self.posted;
        wait_for(&format!("{count} leads accepted"), Duration::from_secs(90), || async move {
            posted.load(Ordering::Relaxed) >= count
        })
        .await;
    }

    /// The submission ids, in the order the leads were given.
    async fn finish(self) -> Vec<Uuid> {
        self.task.await.expect("the load failed")
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// What an `offer-router serve` process runs besides its HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Api,
    Compile,
    Identify,
    Router,
    Deliver,
    All,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Api => "api",
            Kind::Compile => "compile",
            Kind::Identify => "identify",
            Kind::Router => "router",
            Kind::Deliver => "deliver",
            Kind::All => "all",
        }
    }

    /// `DATABASE_MAX_CONNECTIONS`: deliver runs a consumer per partner (21), each holding two
    /// connections in a batch (the batch's and the claims'); the others need a few.
    fn connections(self) -> &'static str {
        if matches!(self, Kind::Deliver | Kind::All) { "64" } else { "16" }
    }

    /// `IDENTIFY_WORKERS`, `ROUTER_WORKERS`, `COMPILE_WORKERS`, `DELIVER_WORKERS`.
    fn workers(self) -> [(&'static str, &'static str); 4] {
        let on = |kind: Kind| if self == kind || self == Kind::All { "1" } else { "0" };
        [
            ("IDENTIFY_WORKERS", on(Kind::Identify)),
            ("ROUTER_WORKERS", on(Kind::Router)),
            ("COMPILE_WORKERS", on(Kind::Compile)),
            ("DELIVER_WORKERS", on(Kind::Deliver)),
        ]
    }
}

/// Starts daemons on one database, each logging to a file of its own.
struct Stack {
    database_url: String,
    logs: PathBuf,
    started: AtomicUsize,
}

impl Stack {
    fn new(database_url: &str, logs: &Scratch) -> Self {
        Self { database_url: database_url.to_owned(), logs: logs.path().to_path_buf(), started: AtomicUsize::new(0) }
    }

    /// The seeds of the first daemon: the example rules and `partners`.
    fn seeds(&self, partners: &Path) -> Vec<(&'static str, String)> {
        vec![("SEED_RULES", format!("{EXAMPLES}/rules.yaml")), ("SEED_PARTNERS", partners.display().to_string())]
    }

    fn start(&self, kind: Kind, extra: &[(&'static str, String)]) -> Daemon {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        let addr = free_local_addr();
        let log = self.logs.join(format!("{n:02}-{}.log", kind.name()));
        let mut command = offer_router();
        command
            .arg("serve")
            .env_clear()
            .envs(DAEMON_ENV.iter().copied())
            .envs(kind.workers())
            .env("DATABASE_MAX_CONNECTIONS", kind.connections())
            .env("DATABASE_URL", &self.database_url)
            .env("HTTP_ADDR", addr.to_string())
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null());
        Daemon::spawn(kind.name(), addr, &mut command, Some(log))
    }

    async fn spawn(&self, kind: Kind, extra: &[(&'static str, String)]) -> Daemon {
        let mut daemon = self.start(kind, extra);
        daemon.ready().await;
        daemon
    }

    /// A poster to `daemon`'s API, with a key for every sample site made by
    /// `offer-router sites create`.
    fn poster(&self, daemon: &Daemon) -> Poster {
        let samples = Leads::new("sites");
        let keys = samples.sites().into_iter().map(|site| (site.to_owned(), site_key(&self.database_url, site)));
        Poster {
            client: client(Duration::from_secs(20)),
            url: format!("http://{}/api/submit", daemon.addr()),
            keys: Arc::new(keys.collect()),
            retried: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// The partners of `examples/partners.yaml`, all served by the mock at `mock`, with short
/// backoffs, a breaker that opens after 3 failures for 1 s, and a timeout long enough that a
/// busy machine never makes a call time out (a timed-out call that the partner did answer would
/// be repeated, which is not what these tests look at).
fn partners_file(mock: SocketAddr) -> PartnersFile {
    let text = std::fs::read_to_string(format!("{EXAMPLES}/partners.yaml")).expect("the example partners");
    let mut file = pipeline::partners::parse_file(&text).expect("valid partners");
    for partner in &mut file.partners {
        partner.request.url = format!("http://{mock}/partners/{}/leads", partner.name);
        partner.request.headers.clear();
        partner.timeout_ms = 10_000;
        partner.max_retries = 3;
        partner.backoff_base_ms = 100;
        partner.backoff_cap_ms = 1_000;
        partner.breaker =
            Breaker { consecutive_failures: 3, failure_rate: 0.5, min_calls: 10, window_secs: 30, open_secs: 1 };
    }
    file
}

/// The mock partners, on a runtime of their own: the test's runtime has one thread, which
/// blocking steps (a command, a `pg_ctl`) would take from them.
struct Mock {
    server: Option<MockPartner>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Mock {
    async fn start() -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
        let server = runtime
            .spawn(MockPartner::start(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await
            .expect("the mock's task")
            .expect("bind the mock partners");
        Self { server: Some(server), runtime: Some(runtime) }
    }

    fn server(&self) -> &MockPartner {
        self.server.as_ref().expect("the mock is running")
    }

    fn addr(&self) -> SocketAddr {
        self.server().addr()
    }

    /// Every partner in `routes` answers after 5 seconds from now on (the returned moment).
    fn slow(&self, routes: &[String]) -> Instant {
        for route in routes {
            self.server().set(route, Behaviour::Slow { delay_ms: 5_000 });
        }
        Instant::now()
    }

    /// Waits until the partners in `routes` have received at least `n` calls since `since`.
    async fn wait_for_calls(&self, routes: &[String], since: Instant, n: usize) {
        wait_for("partner calls in progress", Duration::from_secs(30), || async move {
            routes
                .iter()
                .map(|r| self.server().requests(r).iter().filter(|call| call.at >= since).count())
                .sum::<usize>()
                >= n
        })
        .await;
    }

    /// Every partner accepts, except `unsold`, which rejects (so `rejected` is a final state
    /// the scenarios see too).
    fn usual(&self, routes: &[String]) {
        for route in routes {
            self.server().set(route, if route == "unsold" { Behaviour::Reject } else { Behaviour::Accept });
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
