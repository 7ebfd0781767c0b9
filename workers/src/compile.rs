//! The compile worker (DESIGN.md, "Rule compiler and /api/rules"): reads `compile`, and for a
//! whole batch of requests compiles the newest stored rules version once (coalescing), the
//! way `rulec compile` does: check (Z3 analysis), decision DAG, translation validation, Wasm.
//!
//! The result is stored in `decision_trees` with its report either way. A rule set with
//! error-level findings, or one the compiler refuses, is stored inactive and the previous tree
//! stays active. Otherwise, in the same transaction, the partner queues of its routes are
//! created, the new tree becomes the only active one, and `NOTIFY decision_trees, '<version>'`
//! tells the routers (delivered at commit).
//!
//! A request with `recompile` (an operator's, or [`recompile_if_stale`]'s at start-up) also
//! compiles that rules version's kept document (`rule_versions`) again, once per batch and
//! version, unless a tree of it for this ABI was stored since the request. Its tree replaces
//! the active one only while the active tree is of that same rules version: a recompile never
//! goes back over a newer version. The tree's report says what it did (`compile.recompile`),
//! and so does the log.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use compiler::report::{PartnerFacts, Report};
use pipeline::consumer::{Envelope, Handler, Outcome};
use pipeline::queue::{self, QueueName};
use pipeline::rules::{self, CompileRequest, RecompileRequest, RuleSetDoc};
use runtime::abi::ABI_VERSION;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use crate::{Error, Result};

/// The channel routers listen on; the payload is the new active tree's version.
pub const CHANNEL: &str = "decision_trees";

/// Advisory lock taken by a compile, so replicas compile one version once.
const COMPILE_LOCK: i64 = 0x0063_6f6d_7069_6c65;

/// The compile handler.
#[derive(Debug, Default)]
pub struct Compile;

/// A finished compile of one rules version.
#[derive(Debug)]
pub struct CompileOutcome {
    /// The module and manifest, when the rule set may go live.
    pub module: Option<(Vec<u8>, Value)>,
    /// The `rulec check` report, plus the compile's figures or why it was refused.
    pub report: Value,
}

/// Checks and compiles `doc` (CPU-bound: call it off the async threads), knowing which
/// `partners` can never take a lead.
pub fn compile_document(doc: &RuleSetDoc, rules_version: i64, partners: &PartnerFacts) -> Result<CompileOutcome> {
    let text = doc.to_text();
    let name = format!("rules v{rules_version}");
    let started = Instant::now();
    let (checked, findings, stats) = compiler::report::check_rules_with(&name, text.as_bytes(), partners)?;
    let rules_checked = checked.as_ref().map_or(0, |(rules, _)| rules.rules.len());
    let (rules, source) = match checked {
        Some((rules, source)) => (Some(rules), source),
        None => (None, compiler::source::Source::new(&name, text.clone())),
    };
    let report = Report { source, rules_checked, findings: findings.clone(), stats };
    let check_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut json = report.to_json();
    json["rules_version"] = json!(rules_version);
    if report.errors() > 0 {
        json["compile"] =
            json!({ "refused": format!("{} error-level finding(s)", report.errors()), "check_ms": check_ms });
        return Ok(CompileOutcome { module: None, report: json });
    }
    let Some(rules) = rules else {
        json["compile"] = json!({ "refused": "the rule set does not parse", "check_ms": check_ms });
        return Ok(CompileOutcome { module: None, report: json });
    };
    for route in &doc.routes {
        if let Err(error) = QueueName::partner(route) {
            json["compile"] = json!({ "refused": error.to_string(), "check_ms": check_ms });
            return Ok(CompileOutcome { module: None, report: json });
        }
    }
    match compiler::compile::compile(&rules, &findings, text.as_bytes()) {
        Ok(compiled) => {
            let [dag_t, validate_t, emit_t] = compiled.timings;
            json["compile"] = json!({
                "check_ms": check_ms,
                "dag": compiled.dag,
                "validation": compiled.validation,
                "dag_ms": dag_t.as_secs_f64() * 1e3,
                "validation_ms": validate_t.as_secs_f64() * 1e3,
                "emit_ms": emit_t.as_secs_f64() * 1e3,
                "wasm_bytes": compiled.wasm.len(),
            });
            let manifest = serde_json::to_value(&compiled.manifest)?;
            Ok(CompileOutcome { module: Some((compiled.wasm, manifest)), report: json })
        }
        // A translation-validation failure is a compiler bug; it will not fix itself, so the
        // version is stored as refused (with the reason) rather than retried.
        Err(error) => {
            tracing::error!(rules_version, %error, "the compiler refused a checked rule set");
            json["compile"] = json!({ "refused": format!("compiler error: {error}"), "check_ms": check_ms });
            Ok(CompileOutcome { module: None, report: json })
        }
    }
}

impl Handler for Compile {
    type Message = CompileRequest;
    type Error = Error;

    async fn handle(&self, tx: &mut PgConnection, batch: &[Envelope<CompileRequest>]) -> Result<Vec<Outcome>> {
        let span = tracing::info_span!("compile.batch", requests = batch.len());
        async {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(COMPILE_LOCK).execute(&mut *tx).await?;
            compile_newest(tx).await?;
            // Each version asked for once, judged by its earliest request.
            let mut recompiles: BTreeMap<i64, DateTime<Utc>> = BTreeMap::new();
            for message in batch.iter().filter(|m| m.body.recompile) {
                let at = recompiles.entry(message.body.rules_version).or_insert(message.enqueued_at);
                *at = (*at).min(message.enqueued_at);
            }
            for (version, requested_at) in recompiles {
                recompile(tx, version, requested_at).await?;
            }
            Ok::<_, Error>(())
        }
        .instrument(span)
        .await?;
        Ok(batch.iter().map(|_| Outcome::Done(Vec::new())).collect())
    }
}

/// After an upgrade to a decision-module ABI the active tree was not compiled for, routers
/// cannot load it: requests a recompile of the active tree's rules version (even when newer
/// versions were saved and refused since). When that version's document is not kept (it
/// predates `rule_versions`), requests a compile of the newest version instead. Returns whether
/// it requested anything. The service calls it at start.
pub async fn recompile_if_stale(pool: &PgPool) -> Result<bool> {
    let stale: Option<i64> = sqlx::query_scalar(
        "SELECT rules_version FROM decision_trees
         WHERE active AND (manifest->>'abi_version')::bigint IS DISTINCT FROM $1",
    )
    .bind(i64::from(ABI_VERSION))
    .fetch_optional(pool)
    .await?;
    if stale.is_none() {
        return Ok(false);
    }
    let mut conn = pool.acquire().await?;
    match rules::request_recompile(&mut conn).await? {
        RecompileRequest::Queued(queued) => {
            tracing::warn!(
                rules_version = queued.rules_version,
                tree = queued.tree_version,
                tree_abi = queued.tree_abi_version,
                abi = ABI_VERSION,
                "the active decision tree is for another ABI; recompiling its rules version"
            );
        }
        RecompileRequest::NotStored { tree_version, rules_version } => {
            let newest = rules::version(&mut *conn).await?;
            queue::send(&mut *conn, &QueueName::new(queue::fixed::COMPILE)?, &CompileRequest::saved(newest)).await?;
            tracing::warn!(
                rules_version,
                tree = tree_version,
                newest,
                abi = ABI_VERSION,
                "the active decision tree is for another ABI and its rules version is not kept; compiling the newest version"
            );
        }
        // It stopped being active meanwhile: nothing stale is left.
        RecompileRequest::NoActiveTree => return Ok(false),
    }
    Ok(true)
}

/// Compiles and stores the newest rules version unless it was compiled already (the caller
/// holds the compile lock).
async fn compile_newest(tx: &mut PgConnection) -> Result<()> {
    let (version, doc) = rules::load(tx).await?;
    // A refused version is done; a module is done only if this host's routers can load it.
    let done: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM decision_trees WHERE rules_version = $1
                        AND (wasm IS NULL OR (manifest->>'abi_version')::bigint = $2))",
    )
    .bind(version)
    .bind(i64::from(ABI_VERSION))
    .fetch_one(&mut *tx)
    .await?;
    if done || version == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let outcome = {
        let doc = doc.clone();
        let partners = PartnerFacts { never: pipeline::partners::never_take(&mut *tx).await? };
        tokio::task::spawn_blocking(move || compile_document(&doc, version, &partners)).await??
    };
    store(tx, version, &doc, outcome, true).await?;
    sentry::metrics::distribution("compile.duration", started.elapsed().as_secs_f64() * 1e3)
        .unit(sentry::protocol::Unit::Millisecond)
        .capture();
    Ok(())
}

/// Recompiles kept rules version `version` (the caller holds the compile lock), unless a tree
/// of it for this ABI was stored since `requested_at`; stores the tree, and activates it only
/// while the active tree is of the same rules version.
async fn recompile(tx: &mut PgConnection, version: i64, requested_at: DateTime<Utc>) -> Result<()> {
    let covered: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM decision_trees WHERE rules_version = $1 AND wasm IS NOT NULL
                        AND (manifest->>'abi_version')::bigint = $2 AND created_at >= $3)",
    )
    .bind(version)
    .bind(i64::from(ABI_VERSION))
    .bind(requested_at)
    .fetch_one(&mut *tx)
    .await?;
    if covered {
        tracing::info!(
            rules_version = version,
            "recompile: a tree of this version for this ABI was stored since the request"
        );
        return Ok(());
    }
    let doc = match rules::load_version(tx, version).await {
        Ok(Some(doc)) => doc,
        // Not errors of the batch: retrying cannot make the document appear or read.
        Ok(None) => {
            tracing::error!(rules_version = version, "recompile: the rules version is not kept; nothing compiled");
            return Ok(());
        }
        Err(error @ pipeline::Error::StoredDocument { .. }) => {
            tracing::error!(rules_version = version, %error, "recompile: nothing compiled");
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    let started = Instant::now();
    let mut outcome = {
        let doc = doc.clone();
        let partners = PartnerFacts { never: pipeline::partners::never_take(&mut *tx).await? };
        tokio::task::spawn_blocking(move || compile_document(&doc, version, &partners)).await??
    };
    let active = rules::active_tree(&mut *tx).await?;
    let go_live = active.is_some_and(|(_, rules_version)| rules_version == version);
    let (activated, reason) = match (active, &outcome.module) {
        (Some((tree, _)), None) => (false, format!("refused; tree {tree} stays active")),
        (None, None) => (false, "refused".to_owned()),
        (Some((tree, _)), Some(_)) if go_live => (true, format!("replaces tree {tree} of the same rules version")),
        (Some((tree, rules_version)), Some(_)) => (
            false,
            format!(
                "tree {tree} of rules version {rules_version} is active: a recompile replaces only a tree of its own version"
            ),
        ),
        (None, Some(_)) => (false, "no tree is active: a recompile replaces only a tree of its own version".to_owned()),
    };
    outcome.report["compile"]["recompile"] = json!({
        "requested_at": requested_at,
        "activated": activated,
        "replaced_tree": if activated { active.map(|(tree, _)| tree) } else { None },
        "reason": reason,
    });
    let tree = store(tx, version, &doc, outcome, go_live).await?;
    tracing::info!(rules_version = version, tree, activated, %reason, "recompiled a kept rules version");
    sentry::metrics::distribution("compile.duration", started.elapsed().as_secs_f64() * 1e3)
        .unit(sentry::protocol::Unit::Millisecond)
        .capture();
    Ok(())
}

/// Stores a compile and returns its tree's version; activates it (partner queues, flip,
/// NOTIFY) when it has a module and `go_live`.
async fn store(
    tx: &mut PgConnection,
    rules_version: i64,
    doc: &RuleSetDoc,
    outcome: CompileOutcome,
    go_live: bool,
) -> Result<i64> {
    let CompileOutcome { module, report } = outcome;
    let Some((wasm, manifest)) = module else {
        let tree: i64 =
            sqlx::query_scalar("INSERT INTO decision_trees (rules_version, report) VALUES ($1, $2) RETURNING version")
                .bind(rules_version)
                .bind(&report)
                .fetch_one(&mut *tx)
                .await?;
        tracing::error!(
            rules_version,
            tree,
            refused = %report["compile"]["refused"],
            "rule set refused; the previous decision tree stays active"
        );
        return Ok(tree);
    };
    if !go_live {
        let tree: i64 = sqlx::query_scalar(
            "INSERT INTO decision_trees (rules_version, wasm, manifest, report) VALUES ($1, $2, $3, $4) RETURNING version",
        )
        .bind(rules_version)
        .bind(&wasm)
        .bind(&manifest)
        .bind(&report)
        .fetch_one(&mut *tx)
        .await?;
        tracing::info!(rules_version, tree, "decision tree stored, not activated");
        return Ok(tree);
    }
    // Only queues that do not exist yet: `pgmq.create` on a queue in use takes locks that
    // conflict with the routers' inserts into it (and can deadlock with their batches).
    let wanted: Vec<String> =
        doc.routes.iter().map(|r| Ok(QueueName::partner(r)?.to_string())).collect::<pipeline::Result<_>>()?;
    let existing: Vec<String> = sqlx::query_scalar("SELECT queue_name FROM pgmq.meta WHERE queue_name = ANY($1)")
        .bind(&wanted)
        .fetch_all(&mut *tx)
        .await?;
    for route in doc.routes.iter().filter(|r| QueueName::partner(r).is_ok_and(|q| !existing.contains(&q.to_string()))) {
        queue::create_with_dead_letter_queue(&mut *tx, &QueueName::partner(route)?).await?;
    }
    sqlx::query("UPDATE decision_trees SET active = false WHERE active").execute(&mut *tx).await?;
    let tree: i64 = sqlx::query_scalar(
        "INSERT INTO decision_trees (rules_version, wasm, manifest, report, active, activated_at)
         VALUES ($1, $2, $3, $4, true, now()) RETURNING version",
    )
    .bind(rules_version)
    .bind(&wasm)
    .bind(&manifest)
    .bind(&report)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(tree.to_string()).execute(&mut *tx).await?;
    tracing::info!(rules_version, tree, wasm_bytes = wasm.len(), "decision tree activated");
    Ok(tree)
}
