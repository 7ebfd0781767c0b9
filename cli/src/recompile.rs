//! `offer-router recompile`: asks the compile worker to recompile the active tree's rules
//! version from its kept document (`pipeline::rules::request_recompile`), e.g. after an upgrade
//! to another decision-module ABI while the newest rules version is refused, then waits until
//! the new tree is active (or refused, or stored without activation) and prints what happened.
//! A daemon with a compile worker must be running against the same database.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pipeline::rules::{self, RecompileRequest, TreeOutcome};
use serde_json::json;
use sqlx::PgPool;

/// How often the wait looks at `decision_trees`.
const POLL: Duration = Duration::from_millis(200);

/// Queues the recompile and waits up to `timeout` for its tree; fails unless it went live.
pub(crate) async fn run(pool: &PgPool, timeout: Duration, json: bool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await.context("connecting to Postgres")?;
    let queued = match rules::request_recompile(&mut conn).await.context("queueing the recompile")? {
        RecompileRequest::Queued(queued) => queued,
        RecompileRequest::NoActiveTree => bail!("no decision tree is active: there is nothing to recompile"),
        RecompileRequest::NotStored { tree_version, rules_version } => bail!(
            "the active tree {tree_version} is of rules version {rules_version}, which is not kept (it predates \
             rule_versions): it cannot be recompiled; load the rules again (`offer-router rules load FILE`)"
        ),
    };
    drop(conn);
    if !json {
        println!(
            "queued a recompile of rules version {} (active tree {}, ABI {}; this build's ABI {}); waiting up to {} s",
            queued.rules_version,
            queued.tree_version,
            queued.tree_abi_version.map_or_else(|| "unknown".to_owned(), |abi| abi.to_string()),
            runtime::abi::ABI_VERSION,
            timeout.as_secs()
        );
    }
    let deadline = Instant::now() + timeout;
    let tree = loop {
        if let Some(tree) = rules::recompiled(pool, &queued).await.context("reading the decision trees")? {
            break tree;
        }
        if Instant::now() >= deadline {
            bail!(
                "no compile worker took the request within {} s (is a daemon with COMPILE_WORKERS > 0 running on this \
                 database?); it stays queued (message {} on `compile`)",
                timeout.as_secs(),
                queued.msg_id
            );
        }
        tokio::time::sleep(POLL).await;
    };
    if json {
        println!("{:#}", json!({ "queued": queued, "tree": tree }));
    } else {
        println!("{}", describe(&tree));
    }
    if !tree.active {
        bail!("the recompiled tree {} is not active", tree.version);
    }
    Ok(())
}

/// One line on what became of the recompile.
fn describe(tree: &TreeOutcome) -> String {
    let reason = tree.recompile.as_ref().and_then(|r| r["reason"].as_str()).unwrap_or_default();
    let abi = tree.abi_version.map_or_else(|| "-".to_owned(), |abi| abi.to_string());
    match (&tree.refused, tree.active) {
        (Some(refused), _) => {
            format!("tree {} of rules version {} was refused: {refused}", tree.version, tree.rules_version)
        }
        (None, true) => format!(
            "tree {} of rules version {} is active (ABI {abi}){}",
            tree.version,
            tree.rules_version,
            if reason.is_empty() { String::new() } else { format!(": {reason}") }
        ),
        (None, false) => format!(
            "tree {} of rules version {} was stored (ABI {abi}) but not activated: {reason}",
            tree.version, tree.rules_version
        ),
    }
}
