//! Stored leads for the admin UI: a search (`GET /api/leads`), a lead's whole story
//! (`GET /api/leads/{submission_id}`), and a stored lead explained:
//! `GET /api/leads/{submission_id}/explain` (admin) and the operation behind `rulec explain
//! --submission` ([`explain_submission`]), one implementation for both.
//!
//! The search filters by submission id, site, partner, state (a delivery state or
//! `unmatched`) and submission time (`from`, `to`: RFC 3339), newest first, `limit` (1 to 500,
//! default 50) per page and `after` the previous page's `next`; never by personal data, which
//! would then sit in URLs and logs. The story is the submission, its person and alias record,
//! the routing decision with its explanation, every delivery with each attempt, and where the
//! lead ended (`pipeline::outcome::finals`, dead letters included).
//!
//! From the lead's rows (`pipeline::leads::load`): where it went, by which rule, decision tree
//! and rules version, and the routing fields the decision saw. Then the decision replayed by
//! the reference interpreter (`compiler::interp::explain`) under that rules version's kept
//! document (`pipeline::rules::load_version`), which must reproduce the recorded rule and
//! route; and what the rules of now would do: the newest kept version, and the active tree's
//! rules version when that is another one. What cannot be replayed (fields stored before they
//! were kept, a version older than `rule_versions`) is said in `notes`.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use compiler::finding::Severity;
use compiler::interp::{Explanation, Lead};
use compiler::source::Source;
use pipeline::leads::{Attempt, Cursor, Delivery, Search, SearchState, Unmatched};
use pipeline::rules::{self, RuleSetDoc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::AppState;
use crate::Result;
use crate::submit::ApiError;

/// The route (the admin middleware is applied by the caller).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/leads", get(search))
        .route("/api/leads/{submission_id}", get(story))
        .route("/api/leads/{submission_id}/explain", get(explain))
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

/// The query of `GET /api/leads`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    submission_id: Option<String>,
    site: Option<String>,
    partner: Option<String>,
    state: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "admin leads request failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
}

impl SearchQuery {
    /// The search it asks for; a value that does not parse is a 400 naming it.
    fn search(self) -> Result<Search, ApiError> {
        let given = |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let time = |name: &str, v: Option<String>| -> Result<Option<DateTime<Utc>>, ApiError> {
            given(v)
                .map(|v| {
                    DateTime::parse_from_rfc3339(&v)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|_| bad_request(format!("`{name}` must be an RFC 3339 time, not `{v}`")))
                })
                .transpose()
        };
        let submission_id = given(self.submission_id)
            .map(|v| v.parse::<Uuid>().map_err(|_| bad_request(format!("`submission_id` must be a UUID, not `{v}`"))))
            .transpose()?;
        let state = given(self.state)
            .map(|v| {
                SearchState::parse(&v).ok_or_else(|| {
                    bad_request(format!(
                        "`state` must be pending, accepted, rejected, duplicate, failed or unmatched, not `{v}`"
                    ))
                })
            })
            .transpose()?;
        let after = given(self.after)
            .map(|v| Cursor::parse(&v).ok_or_else(|| bad_request(format!("`after` is not a page cursor: `{v}`"))))
            .transpose()?;
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(bad_request(format!("`limit` must be 1 to 500 (got {limit})")));
        }
        Ok(Search {
            submission_id,
            site: given(self.site),
            partner: given(self.partner),
            state,
            from: time("from", self.from)?,
            to: time("to", self.to)?,
            after,
            limit,
        })
    }
}

/// `GET /api/leads`: `{"leads": [...], "next": <cursor or null>}`.
async fn search(State(state): State<AppState>, query: Result<Query<SearchQuery>, QueryRejection>) -> Response {
    let found = async {
        let Query(query) = query.map_err(|e| bad_request(format!("bad query string: {}", e.body_text())))?;
        let search = query.search()?;
        let mut conn = state.pool.acquire().await.map_err(internal)?;
        let page = pipeline::leads::search(&mut conn, &search).await.map_err(internal)?;
        Ok::<_, ApiError>(Json(serde_json::json!({
            "leads": page.leads,
            "next": page.next.map(|c| c.to_string()),
        })))
    };
    found.await.map_or_else(IntoResponse::into_response, IntoResponse::into_response)
}

/// One delivery of a lead's story, with its attempts.
#[derive(Debug, Serialize)]
struct DeliveryStory {
    #[serde(flatten)]
    delivery: Delivery,
    /// Every call made, oldest first.
    calls: Vec<Attempt>,
}

/// `GET /api/leads/{submission_id}`: the lead's whole story.
async fn story(State(state): State<AppState>, id: Result<Path<String>, PathRejection>) -> Response {
    let told = async {
        let Ok(Path(id)) = id else { return Err(bad_request("bad path")) };
        let not_found =
            || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no lead with submission id `{id}`"));
        let submission_id: Uuid = id.parse().map_err(|_| not_found())?;
        let finals = pipeline::outcome::finals(&state.pool, &[submission_id]).await.map_err(internal)?;
        let explained = explain_submission(&state.pool, submission_id).await.map_err(internal)?;
        let Some(explained) = explained else {
            if finals.is_empty() {
                return Err(not_found());
            }
            // Dead-lettered before it was routed: its letters are its story.
            return Ok(Json(serde_json::json!({ "submission_id": submission_id, "finals": finals, "deliveries": [] })));
        };
        let mut conn = state.pool.acquire().await.map_err(internal)?;
        let ids: Vec<i64> = explained.deliveries.iter().map(|d| d.id).collect();
        let mut calls = pipeline::leads::attempts(&mut conn, &ids).await.map_err(internal)?;
        let (person_id, alias_id, site, submitted_at) = match (explained.deliveries.first(), &explained.unmatched) {
            (Some(d), _) => (Some(d.person_id), d.alias_id, d.site.clone(), d.submitted_at),
            (None, Some(u)) => (Some(u.person_id), u.alias_id, Some(u.site.clone()), Some(u.submitted_at)),
            (None, None) => (None, None, None, None),
        };
        let records =
            pipeline::leads::identities(&mut conn, &[person_id, alias_id].into_iter().flatten().collect::<Vec<_>>())
                .await
                .map_err(internal)?;
        let record = |id: Option<i64>| id.and_then(|id| records.iter().find(|r| r.id == id));
        let deliveries: Vec<DeliveryStory> = explained
            .deliveries
            .iter()
            .map(|delivery| {
                let (mine, rest): (Vec<Attempt>, Vec<Attempt>) =
                    std::mem::take(&mut calls).into_iter().partition(|a| a.lead_id == delivery.id);
                calls = rest;
                DeliveryStory { delivery: delivery.clone(), calls: mine }
            })
            .collect();
        let routed = &explained.routed;
        Ok(Json(serde_json::json!({
            "submission_id": submission_id,
            "site": site,
            "submitted_at": submitted_at,
            "fields": explained.fields,
            "person": record(person_id),
            "alias": record(alias_id),
            "decision": (routed.tree_version.is_some()).then_some(routed),
            "unmatched": explained.unmatched.is_some(),
            "explain": { "then": explained.then, "now": explained.now, "notes": explained.notes },
            "deliveries": deliveries,
            "finals": finals,
        })))
    };
    told.await.map_or_else(IntoResponse::into_response, IntoResponse::into_response)
}
