//! A stored lead explained: `GET /api/leads/{submission_id}/explain` (admin) and the operation
//! behind `rulec explain --submission` ([`explain_submission`]), one implementation for both.
//! From the lead's rows (`pipeline::leads::load`): where it went, by which rule, decision tree
//! and rules version, and the routing fields the decision saw. Then the decision replayed by
//! the reference interpreter (`compiler::interp::explain`) under that rules version's kept
//! document (`pipeline::rules::load_version`), which must reproduce the recorded rule and
//! route; and what the rules of now would do: the newest kept version, and the active tree's
//! rules version when that is another one. What cannot be replayed (fields stored before they
//! were kept, a version older than `rule_versions`) is said in `notes`.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use compiler::finding::Severity;
use compiler::interp::{Explanation, Lead};
use compiler::source::Source;
use pipeline::leads::{Delivery, Unmatched};
use pipeline::rules::{self, RuleSetDoc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::AppState;
use crate::Result;
use crate::submit::ApiError;

/// The route (the admin middleware is applied by the caller).
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/leads/{submission_id}/explain", get(explain))
}

/// A stored lead's story: what was recorded, and the decision replayed then and now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Story {
    /// The submission.
    pub submission_id: Uuid,
    /// The recorded decision.
    pub routed: Routed,
    /// Its `leads` rows (one per partner it was sent to).
    pub deliveries: Vec<Delivery>,
    /// Its `unmatched_leads` row, when no rule matched and there was no default route.
    pub unmatched: Option<Unmatched>,
    /// The routing fields the decision saw; `None` for a lead stored before they were kept.
    pub fields: Option<Map<String, Value>>,
    /// The decision replayed under the rules version that routed it.
    pub then: Option<Replay>,
    /// What the rules of now would do with the same fields.
    pub now: Now,
    /// What could not be replayed, and why.
    pub notes: Vec<String>,
}

/// The recorded decision, from the lead's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Routed {
    /// The decision tree that decided it.
    pub tree_version: Option<i64>,
    /// That tree's rules version.
    pub rules_version: Option<i64>,
    /// The rule that decided it (`None`: no rule matched).
    pub rule: Option<String>,
    /// Where it went (`None`: unmatched).
    pub route: Option<String>,
}

/// The decision replayed under the rules version that routed the lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replay {
    /// The rules version.
    pub rules_version: i64,
    /// The tree of it that decided the lead.
    pub tree_version: Option<i64>,
    /// Whether the replay decides as recorded (the same rule and route).
    pub reproduced: bool,
    /// Rule by rule, why.
    pub explanation: Explanation,
}

/// The decision under the rules of now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Now {
    /// Under the newest kept rules version.
    pub newest: Option<Current>,
    /// Under the active tree's rules version, when that is not the newest.
    pub active: Option<Current>,
}

/// The decision under one current rules version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Current {
    /// The rules version.
    pub rules_version: i64,
    /// The active tree, when it is of this version.
    pub tree_version: Option<i64>,
    /// Whether the lead would now go elsewhere, or by another rule, than recorded.
    pub changed: bool,
    /// Rule by rule, why.
    pub explanation: Explanation,
}

impl Story {
    /// `Some(false)` when the replay under the routing version does not decide as recorded (a
    /// bug, or a document that is not what the tree was compiled from); `None` when there was
    /// nothing to replay.
    pub fn reproduced(&self) -> Option<bool> {
        self.then.as_ref().map(|then| then.reproduced)
    }
}

/// The story of submission `submission_id`'s stored lead; `None` when it has no `leads` or
/// `unmatched_leads` row (unknown, still on its way, or dead-lettered before it was routed).
pub async fn explain_submission(pool: &PgPool, submission_id: Uuid) -> Result<Option<Story>> {
    let mut conn = pool.acquire().await?;
    let Some(stored) = pipeline::leads::load(&mut conn, submission_id).await? else { return Ok(None) };
    let (tree_version, rules_version, rule, route) = stored.decision();
    let routed = Routed { tree_version, rules_version, rule: rule.map(str::to_owned), route: route.map(str::to_owned) };
    let newest = rules::versions(&mut conn, 1).await?.first().map(|v| v.version);
    let active = rules::active_tree(&mut *conn).await?;
    let mut documents: BTreeMap<i64, Option<RuleSetDoc>> = BTreeMap::new();
    for version in [rules_version, newest, active.map(|(_, v)| v)].into_iter().flatten() {
        if let Entry::Vacant(entry) = documents.entry(version) {
            entry.insert(rules::load_version(&mut conn, version).await?);
        }
    }
    drop(conn);
    let story = tokio::task::spawn_blocking(move || {
        let pipeline::leads::StoredLead { submission_id, deliveries, unmatched, fields } = stored;
        let mut notes = Vec::new();
        let mut story = Story {
            submission_id,
            routed,
            deliveries,
            unmatched,
            fields,
            then: None,
            now: Now { newest: None, active: None },
            notes: Vec::new(),
        };
        let Some(fields) = &story.fields else {
            notes.push(
                "the lead's routing fields were not kept (it was stored before they were): its decision cannot be replayed"
                    .to_owned(),
            );
            story.notes = notes;
            return story;
        };
        let recorded = (story.routed.rule.as_deref(), story.routed.route.as_deref());
        let replay_kept = |version: i64, notes: &mut Vec<String>| -> Option<Explanation> {
            let Some(Some(doc)) = documents.get(&version) else {
                notes.push(format!(
                    "rules version {version} is not kept in rule_versions (it predates them): nothing to replay it on"
                ));
                return None;
            };
            replay(version, doc, fields).map_err(|problem| notes.push(problem)).ok()
        };
        match story.routed.rules_version {
            Some(version) => {
                story.then = replay_kept(version, &mut notes).map(|explanation| {
                    let reproduced = (explanation.rule(), explanation.route()) == recorded;
                    if !reproduced {
                        notes.push(format!(
                            "under rules version {version} the interpreter decides rule {:?} -> route {:?}, but rule {:?} -> \
                             route {:?} was recorded: the kept document or fields are not what the tree saw",
                            explanation.rule(),
                            explanation.route(),
                            recorded.0,
                            recorded.1
                        ));
                    }
                    Replay { rules_version: version, tree_version: story.routed.tree_version, reproduced, explanation }
                });
            }
            None => notes.push("the lead's rows name no decision tree: nothing to replay".to_owned()),
        }
        let current = |version: i64, notes: &mut Vec<String>| {
            replay_kept(version, notes).map(|explanation| Current {
                rules_version: version,
                tree_version: active.filter(|(_, v)| *v == version).map(|(tree, _)| tree),
                changed: (explanation.rule(), explanation.route()) != recorded,
                explanation,
            })
        };
        story.now.newest = newest.and_then(|version| current(version, &mut notes));
        story.now.active = active.filter(|(_, v)| Some(*v) != newest).and_then(|(_, version)| current(version, &mut notes));
        story.notes = notes;
        story
    })
    .await?;
    Ok(Some(story))
}

/// First match for `fields` under the kept document of rules version `version`. The document
/// is read from [`RuleSetDoc::to_yaml`] (so a failing test's text is the test itself), or from
/// its JSON text should that not check.
fn replay(version: i64, doc: &RuleSetDoc, fields: &Map<String, Value>) -> Result<Explanation, String> {
    let name = format!("rules v{version}");
    let mut problem = String::new();
    for text in [doc.to_yaml(), doc.to_text()] {
        let (document, mut findings) = compiler::syntax::document::read(&text);
        let (rules, type_findings) = compiler::model::check(&document);
        findings.extend(type_findings);
        if let Some(finding) = findings.iter().find(|f| f.severity() == Severity::Error) {
            problem = format!("rules version {version} does not check ({}): nothing to replay it on", finding.message);
            continue;
        }
        let lead = Lead::from_json(&rules, &Value::Object(fields.clone()))
            .map_err(|error| format!("the lead's fields do not fit rules version {version}: {error}"))?;
        return Ok(compiler::interp::explain(&rules, &Source::new(&name, text), &lead));
    }
    Err(problem)
}

/// `GET /api/leads/{submission_id}/explain`.
async fn explain(State(state): State<AppState>, id: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(id)) = id else {
        return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "bad path").into_response();
    };
    let Ok(submission_id) = id.parse::<Uuid>() else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("`{id}` is not a submission id"))
            .into_response();
    };
    match explain_submission(&state.pool, submission_id).await {
        Ok(Some(story)) => Json(story).into_response(),
        Ok(None) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no stored lead for submission `{submission_id}` (unknown, still on its way, or dead-lettered before it \
                 was routed)"
            ),
        )
        .into_response(),
        Err(error) => {
            tracing::error!(%error, %submission_id, "explaining a stored lead failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string()).into_response()
        }
    }
}
