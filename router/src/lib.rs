//! The routing worker (DESIGN.md, "Router"): reads `routing`, encodes each lead for the active
//! decision module, decides the batch in one call, and forwards each lead to
//! `partner_<route>` with the rule and tree version that decided it. A lead no rule matches
//! goes to the rule set's default route, or is recorded in `unmatched_leads`.
//!
//! Each decided lead is allocated (`allocate`): its candidate rules (the module's first matching
//! rules, in order) are tried until one whose partners can take it now, by their schedule,
//! circuit and caps, counted in the batch's transaction so no replica ever takes a lead over a
//! cap; splits share the batch's locked round-robin positions; a shared rule sends the lead to
//! several partners. What was tried, and why each partner was passed over, travels with the
//! lead (`PartnerLead::routing`) into its `leads` row.
//!
//! Hot reload: [`ActiveTree`] holds the current module; [`ActiveTree::watch`] listens for
//! `NOTIFY decision_trees` (sent by the compile worker when it activates a tree) and checks
//! the active version every few seconds as a fallback, loading a new module off the async
//! threads and swapping it in atomically. A batch takes the tree once at its start, so every
//! lead of a batch is decided, and labelled, by one version; the batch's transaction makes
//! each lead's forwarding happen exactly once. Until a tree is active the router reads
//! nothing: leads wait in `routing` without using up attempts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use pipeline::consumer::{Envelope, Handler, Outcome, Output};
use pipeline::message::{PartnerLead, RoutingLead};
use pipeline::queue::QueueName;
use pipeline::telemetry::LeadSpans;
use runtime::host::{Candidates, Engine, Program, Session};
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod allocate;
mod error;

pub use error::{Error, Result};

pub use allocate::preview;
use allocate::{Allocator, RuleTarget};
use pipeline::distribution::{Clock, Ledger, PartnerStates, Splits};

/// The channel the compile worker notifies on when it activates a tree.
pub const CHANNEL: &str = "decision_trees";

/// A loaded decision tree.
pub struct Tree {
    /// `decision_trees.version`.
    pub version: i64,
    /// The rules version it was compiled from.
    pub rules_version: i64,
    program: Arc<Program>,
    /// Per rule (manifest order): its name, partners and fall-through.
    rules: Vec<RuleTarget>,
    /// The default route.
    default: Option<String>,
    /// Every partner's queue, by partner.
    queues: HashMap<String, QueueName>,
}

impl Tree {
    /// Loads a module and its manifest (compiles the Wasm: call it off the async threads).
    pub fn load(engine: &Engine, version: i64, rules_version: i64, wasm: &[u8], manifest: &str) -> Result<Self> {
        let program = Program::load_json(engine, wasm, manifest).map_err(|source| Error::Load { version, source })?;
        let manifest = program.manifest();
        let rules: Vec<RuleTarget> =
            manifest.rules.iter().map(|r| RuleTarget::new(r.name.clone(), r.target.clone(), r.fallthrough)).collect();
        let default = manifest.default_route.clone();
        let mut queues = HashMap::new();
        for partner in rules.iter().flat_map(|r| r.target.partners()).chain(default.as_deref()) {
            if !queues.contains_key(partner) {
                queues.insert(partner.to_owned(), QueueName::partner(partner)?);
            }
        }
        Ok(Self { version, rules_version, program: Arc::new(program), rules, default, queues })
    }

    /// The program.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }
}

/// The tree the router uses now, swapped atomically when another becomes active.
pub struct ActiveTree {
    engine: Engine,
    current: ArcSwapOption<Tree>,
}

impl ActiveTree {
    /// No tree yet; one engine for every module this process loads.
    pub fn new() -> Result<Self> {
        Ok(Self { engine: runtime::host::engine()?, current: ArcSwapOption::empty() })
    }

    /// The tree now, if one was loaded.
    pub fn current(&self) -> Option<Arc<Tree>> {
        self.current.load_full()
    }

    /// Loads the active tree if it is not the current one. Returns the version in use after.
    pub async fn refresh(&self, pool: &PgPool) -> Result<Option<i64>> {
        let active: Option<i64> =
            sqlx::query_scalar("SELECT version FROM decision_trees WHERE active").fetch_optional(pool).await?;
        let current = self.current().map(|t| t.version);
        let Some(version) = active else { return Ok(current) };
        if current == Some(version) {
            return Ok(current);
        }
        let row: Option<(i64, Vec<u8>, String)> = sqlx::query_as(
            "SELECT rules_version, wasm, manifest::text FROM decision_trees WHERE version = $1 AND wasm IS NOT NULL",
        )
        .bind(version)
        .fetch_optional(pool)
        .await?;
        let Some((rules_version, wasm, manifest)) = row else { return Ok(current) };
        let started = Instant::now();
        let engine = self.engine.clone();
        let tree = tokio::task::spawn_blocking(move || Tree::load(&engine, version, rules_version, &wasm, &manifest))
            .await??;
        // Another refresh may have loaded a newer tree meanwhile; never go back.
        if self.current().is_some_and(|t| t.version >= version) {
            return Ok(self.current().map(|t| t.version));
        }
        self.current.store(Some(Arc::new(tree)));
        tracing::info!(
            tree = version,
            rules_version,
            load_ms = started.elapsed().as_secs_f64() * 1e3,
            "router switched decision tree"
        );
        Ok(Some(version))
    }

    /// Keeps the tree current until `shutdown`: on every `NOTIFY decision_trees`, and every
    /// `poll` in case a notification was missed (e.g. while the listener reconnected).
    pub async fn watch(self: Arc<Self>, pool: PgPool, poll: Duration, shutdown: CancellationToken) {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => Some(listener),
                Err(error) => {
                    tracing::warn!(%error, "cannot LISTEN; polling only");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN; polling only");
                None
            }
        };
        loop {
            if let Err(error) = self.refresh(&pool).await {
                tracing::error!(%error, "cannot load the active decision tree");
            }
            let notified = async {
                match listener.as_mut() {
                    Some(listener) => {
                        if let Err(error) = listener.recv().await {
                            tracing::warn!(%error, "LISTEN connection lost; it reconnects");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = notified => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// How long a router trusts its reading of the partners' settings and circuits by default.
pub const PARTNER_STATES_TTL: Duration = Duration::from_secs(1);

/// The router handler: one per consumer (it keeps its own module instance).
pub struct Router {
    tree: Arc<ActiveTree>,
    session: Mutex<Option<Session>>,
    partners: Arc<PartnerStates>,
    clock: Clock,
}

impl Router {
    /// A router deciding with `tree`'s current module, reading the partners' availability at
    /// most [`PARTNER_STATES_TTL`] old, on the system clock.
    pub fn new(tree: Arc<ActiveTree>) -> Self {
        let partners = Arc::new(PartnerStates::new(PARTNER_STATES_TTL));
        Self::with(tree, partners, pipeline::distribution::system_clock())
    }

    /// A router with the partners' states (shared by a process's routers) and a clock of its
    /// own (a driven one in tests).
    pub fn with(tree: Arc<ActiveTree>, partners: Arc<PartnerStates>, clock: Clock) -> Self {
        Self { tree, session: Mutex::new(None), partners, clock }
    }

    /// Encodes and decides each lead of `batch` on `tree` (see `Session::decide_leads`),
    /// re-instantiating the module after a swap.
    fn decide(&self, tree: &Tree, batch: &[Envelope<RoutingLead>]) -> Result<Vec<runtime::Result<Candidates>>> {
        // A poisoned lock means a panic mid-decision; the session is rebuilt below anyway.
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        if !session.as_ref().is_some_and(|s| Arc::ptr_eq(s.program(), &tree.program)) {
            *session = Some(tree.program.session()?);
        }
        let mut answers = Vec::with_capacity(batch.len());
        if let Some(session) = session.as_mut() {
            session.decide_leads(batch.iter().map(|m| &m.body.fields), &mut answers)?;
        }
        Ok(answers)
    }
}

impl Handler for Router {
    type Message = RoutingLead;
    type Error = Error;

    fn ready(&self) -> bool {
        self.tree.current().is_some()
    }

    async fn handle(&self, tx: &mut PgConnection, batch: &[Envelope<RoutingLead>]) -> Result<Vec<Outcome>> {
        let tree = self.tree.current().ok_or(Error::NoActiveTree)?;
        let span = tracing::info_span!("router.batch", leads = batch.len(), tree = tree.version);
        self.route(tx, &tree, batch).instrument(span).await
    }
}

impl Router {
    async fn route(&self, tx: &mut PgConnection, tree: &Tree, batch: &[Envelope<RoutingLead>]) -> Result<Vec<Outcome>> {
        let started = Instant::now();
        let answers = self.decide(tree, batch)?;
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
        let mut decided = Vec::with_capacity(batch.len());
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(answer) => {
                    decided.push((i, answer));
                    outcomes.push(None);
                }
                Err(error) => outcomes.push(Some(Outcome::DeadLetter(format!(
                    "lead does not fit decision tree v{} (rules v{}): {error}",
                    tree.version, tree.rules_version
                )))),
            }
        }

        let mut unmatched: Vec<&RoutingLead> = Vec::new();
        let mut per_route: HashMap<String, (usize, f64)> = HashMap::new();
        let now = (self.clock)();
        let partners = self.partners.current(tx).await?;
        // Lock what the batch's candidates may count against, and the splits they may use.
        let candidates = |answer: &Candidates| -> Vec<&RuleTarget> {
            tree.program.candidates(*answer).iter().filter_map(|&r| tree.rules.get(r as usize)).collect()
        };
        let mut wanted = Vec::new();
        let mut split_pairs = Vec::new();
        for (_, answer) in &decided {
            for rule in candidates(answer) {
                for partner in rule.target.partners() {
                    if let Some(state) = partners.get(partner).filter(|s| s.availability.capped(Some(&rule.name))) {
                        wanted.push((&state.availability, Some(rule.name.as_str())));
                    }
                }
                split_pairs.extend(rule.weights.iter().map(|(p, _)| (rule.name.as_str(), p.as_str())));
            }
        }
        if let Some(state) =
            tree.default.as_deref().and_then(|d| partners.get(d)).filter(|s| s.availability.capped(None))
        {
            wanted.push((&state.availability, None));
        }
        let mut ledger = Ledger::lock(tx, &wanted, now).await?;
        let mut splits = Splits::lock(tx, &split_pairs).await?;
        let mut allocator = Allocator { partners: &partners, ledger: &mut ledger, splits: &mut splits, now };
        // One span per lead (sampled batches only): the decision is one module call for the
        // whole batch, so a lead's span times its forwarding and records what decided it.
        let spans = LeadSpans::current();
        for (i, answer) in decided {
            let lead = &batch[i].body;
            let span = spans.start("router.lead", lead.submission_id);
            span.record("msg_id", batch[i].msg_id);
            span.record("tree", tree.version);
            let allocation = allocator.allocate(&candidates(&answer), tree.default.as_deref());
            if allocation.unmatched() {
                span.record("unmatched", true);
                unmatched.push(lead);
                outcomes[i] = Some(Outcome::Done(Vec::new()));
                continue;
            }
            if allocation.routing.held.is_some() {
                span.record("held", true);
            }
            let mut outputs = Vec::with_capacity(allocation.sends.len());
            for (route, rule, counted) in &allocation.sends {
                span.record("route", route.as_str());
                span.record("rule", rule.as_deref());
                let entry = per_route.entry(route.clone()).or_default();
                entry.0 += 1;
                entry.1 += (now - lead.submitted_at).num_microseconds().unwrap_or(0) as f64 / 1e3;
                let forwarded = PartnerLead {
                    lead: lead.clone(),
                    route: route.clone(),
                    rule: rule.clone(),
                    tree_version: tree.version,
                    routing: Some(allocation.routing.clone()),
                    reserved_at: counted.then_some(now),
                };
                let queue = match tree.queues.get(route) {
                    Some(queue) => queue.clone(),
                    None => QueueName::partner(route)?,
                };
                outputs.push(Output::new(queue, &forwarded)?);
            }
            outcomes[i] = Some(Outcome::Done(outputs));
        }
        ledger.save(tx).await?;
        splits.save(tx).await?;
        record_unmatched(tx, tree.version, &unmatched).await?;

        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        sentry::metrics::distribution("router.batch.duration", elapsed_ms)
            .unit(sentry::protocol::Unit::Millisecond)
            .capture();
        for (route, (count, wait_ms)) in per_route {
            sentry::metrics::counter("router.routed", count as f64).attribute("route", route.to_owned()).capture();
            // Time per route: how long its leads took from submission to being routed.
            sentry::metrics::distribution("router.route.latency", wait_ms / count as f64)
                .unit(sentry::protocol::Unit::Millisecond)
                .attribute("route", route.to_owned())
                .capture();
        }
        if !unmatched.is_empty() {
            sentry::metrics::counter("router.unmatched", unmatched.len() as f64).capture();
        }
        tracing::debug!(leads = batch.len(), unmatched = unmatched.len(), elapsed_ms, "batch routed");
        Ok(outcomes.into_iter().map(|o| o.unwrap_or_else(|| Outcome::Retry("not decided".to_owned()))).collect())
    }
}

/// Records leads no rule matched (and no default route took), in the batch's transaction.
async fn record_unmatched(tx: &mut PgConnection, tree: i64, leads: &[&RoutingLead]) -> Result<()> {
    if leads.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = leads.iter().map(|l| l.submission_id).collect();
    let persons: Vec<i64> = leads.iter().map(|l| l.person_id).collect();
    let aliases: Vec<Option<i64>> = leads.iter().map(|l| l.alias_id).collect();
    let sites: Vec<&str> = leads.iter().map(|l| l.site.as_str()).collect();
    let fields: Vec<Value> = leads.iter().map(|l| Value::Object(l.fields.clone())).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = leads.iter().map(|l| l.submitted_at).collect();
    sqlx::query(
        "INSERT INTO unmatched_leads (submission_id, person_id, alias_id, site, tree_version, fields, submitted_at)
         SELECT id, person, alias, site, $5, fields, at
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $6::jsonb[], $7::timestamptz[])
              AS u(id, person, alias, site, fields, at)
         ON CONFLICT (submission_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&persons)
    .bind(&aliases)
    .bind(&sites)
    .bind(tree)
    .bind(&fields)
    .bind(&times)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
