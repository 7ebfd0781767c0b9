//! The admin rules API (DESIGN.md, "Rule compiler and /api/rules"): read and change the stored
//! rule set, check rule sets the way `rulec check` does, read the kept versions
//! (`rule_versions`) and the compile history (`decision_trees`), and ask for a recompile of the
//! active rules version. Every route needs `Authorization: Bearer <admin token>`.
//!
//! A change is applied in memory to the stored document and the result is checked (Z3, off
//! the async threads) before anything is written: a rule set with `syntax` or `type` findings
//! is refused (422 `invalid_rules`, with the report); semantic errors (conflicts, shadowing...)
//! do not block the save, they only keep the compile worker from activating it. With
//! `?dry_run=true` the report is returned and nothing is written. Errors are JSON in the style
//! of `submit`: 400 `malformed_json` / `bad_request`, 401 `unauthorized`, 404 `not_found`,
//! 409 `not_stored` (a recompile of a version that is not kept), 413 `too_large`, 422
//! `invalid_body` / `invalid_rules`, 500 `internal`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use compiler::finding::Code;
use compiler::report::{PartnerFacts, Report};
use pipeline::rules::{self, RuleDoc, RuleSetDoc, Schema};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

use crate::submit::{ApiError, FieldError};
use crate::{AppState, impact};

/// The routes, behind the admin token.
pub(crate) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/rules", get(get_rule_set).put(put_rule_set))
        .route("/api/rules/check", post(check))
        .route("/api/rules/schema", put(put_schema))
        .route("/api/rules/versions", get(versions))
        .route("/api/rules/versions/{version}", get(stored_version))
        .route("/api/rules/versions/{version}/restore", post(restore))
        .route("/api/rules/trees", get(trees))
        .route("/api/rules/trees/active", get(active_tree))
        .route("/api/rules/trees/active/recompile", post(recompile))
        .route("/api/rules/trees/{version}", get(tree))
        .route("/api/rules/{name}", get(get_rule).put(put_rule).delete(delete_rule))
        .route("/api/rules/{name}/enable", post(enable))
        .route("/api/rules/{name}/disable", post(disable))
        // The dead-letter API (`dlq`) sits behind the same admin token.
        .merge(crate::dlq::routes())
        .merge(crate::partners::routes())
        .merge(crate::leads::routes())
        .merge(crate::dashboard::routes())
        .route("/api/audit", get(crate::auth::audit_log))
        .route_layer(middleware::from_fn_with_state(state, crate::auth::require_admin))
}

// ---- errors ------------------------------------------------------------------------------

/// Why a request failed.
#[derive(Debug)]
enum Failure {
    /// An ordinary error answer.
    Api(ApiError),
    /// The rule set has syntax or type findings: the report (RULES.md JSON) says which.
    Invalid(Box<Report>),
}

type Answer = Result<Response, Failure>;

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        internal(format!("database error: {error}"))
    }
}

impl From<pipeline::Error> for Failure {
    fn from(error: pipeline::Error) -> Self {
        internal(error)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Self::Api(error) => error.into_response(),
            Self::Invalid(report) => {
                let errors: Vec<FieldError> = invalid_findings(&report)
                    .map(|f| FieldError {
                        field: f.rules.first().map_or_else(|| "rule_set".to_owned(), |r| format!("rules.{r}")),
                        message: f.message.clone(),
                    })
                    .collect();
                let message = match errors.len() {
                    1 => "the rule set has 1 syntax or type error; nothing was saved".to_owned(),
                    n => format!("the rule set has {n} syntax or type errors; nothing was saved"),
                };
                let body = json!({
                    "code": "invalid_rules",
                    "message": message,
                    "errors": errors,
                    "report": report.to_json_located(),
                });
                (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
            }
        }
    }
}

fn internal(error: impl std::fmt::Display) -> Failure {
    tracing::error!(%error, "admin rules request failed");
    Failure::Api(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string()))
}

fn not_found(message: String) -> Failure {
    Failure::Api(ApiError::new(StatusCode::NOT_FOUND, "not_found", message))
}

fn bad_request(message: String) -> Failure {
    Failure::Api(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message))
}

fn answer(result: Answer) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

// ---- request parts -----------------------------------------------------------------------

/// `?dry_run=true`: check the change, write nothing.
#[derive(Debug, Default, Deserialize)]
struct DryRun {
    #[serde(default)]
    dry_run: bool,
}

fn dry_run(query: Result<Query<DryRun>, QueryRejection>) -> Result<bool, Failure> {
    query.map(|Query(q)| q.dry_run).map_err(|e| bad_request(format!("bad query string: {}", e.body_text())))
}

fn path(path: Result<Path<String>, PathRejection>) -> Result<String, Failure> {
    path.map(|Path(p)| p).map_err(|e| bad_request(format!("bad path: {}", e.body_text())))
}

/// The body's bytes, at most as large as a rules file may be.
async fn read_body(body: Body) -> Result<axum::body::Bytes, Failure> {
    let limit = compiler::report::MAX_FILE_BYTES;
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if e.is::<http_body_util::LengthLimitError>() {
                return Failure::Api(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the body is larger than {limit} bytes"),
                ));
            }
            source = e.source();
        }
        bad_request(format!("cannot read the body: {error}"))
    })
}

/// Parses a JSON body: 400 `malformed_json` if it is not JSON, 422 `invalid_body` if it does
/// not have the expected shape.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes).map_err(|error| {
        let (status, code) = if error.is_data() {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
        } else {
            (StatusCode::BAD_REQUEST, "malformed_json")
        };
        Failure::Api(ApiError::new(status, code, format!("bad body: {error}")))
    })
}

/// Parses a rule-set body. JSON in a shape the document type refuses (an unknown key, a
/// missing rule part) is checked as a rules file, so the answer carries the diagnostics
/// `rulec` would give for it.
/// Whether the request's body is a YAML rules file (`application/yaml`, `text/yaml`,
/// `application/x-yaml`), as the admin UI's editor sends it; otherwise it is JSON.
fn is_yaml(headers: &HeaderMap) -> bool {
    let media = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next());
    media.is_some_and(|m| matches!(m.trim(), "application/yaml" | "text/yaml" | "application/x-yaml"))
}

/// A rule set sent as a rules file (YAML, RULES.md): checked as written, so the findings'
/// lines are those of the text sent; the document stored is what it reads as.
async fn parse_rules_file(pool: &PgPool, bytes: &[u8]) -> Result<(RuleSetDoc, Report), Failure> {
    let report = check_text(pool, "rules.yaml", bytes.to_vec()).await?;
    if invalid_findings(&report).next().is_some() {
        return Err(Failure::Invalid(Box::new(report)));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| bad_request("the rules file is not UTF-8".to_owned()))?;
    let (document, _) = compiler::syntax::document::read(text);
    let doc = serde_json::from_value(document.to_json()).map_err(|error| {
        Failure::Api(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the rules file does not fit the stored shape: {error}"),
        ))
    })?;
    Ok((doc, report))
}

async fn parse_rule_set(pool: &PgPool, bytes: &[u8]) -> Result<RuleSetDoc, Failure> {
    match serde_json::from_slice::<RuleSetDoc>(bytes) {
        Ok(doc) => Ok(doc),
        Err(error) if error.is_data() => {
            let report = check_text(pool, "request body", bytes.to_vec()).await?;
            if invalid_findings(&report).next().is_some() {
                Err(Failure::Invalid(Box::new(report)))
            } else {
                Err(Failure::Api(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("the body is not a rule set: {error}"),
                )))
            }
        }
        Err(error) => Err(Failure::Api(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not JSON: {error}"),
        ))),
    }
}

// ---- checking ----------------------------------------------------------------------------

/// Checks a rules document as `rulec check` does.
async fn check_doc(pool: &PgPool, name: &str, doc: &RuleSetDoc) -> Result<Report, Failure> {
    check_text(pool, name, doc.to_text().into_bytes()).await
}

/// Checks rules-file text (Z3: on a blocking thread), knowing which partners can never take a
/// lead (their caps and schedules).
async fn check_text(pool: &PgPool, name: &str, text: Vec<u8>) -> Result<Report, Failure> {
    let name = name.to_owned();
    let mut conn = pool.acquire().await?;
    let facts = PartnerFacts { never: pipeline::partners::never_take(&mut conn).await? };
    drop(conn);
    match tokio::task::spawn_blocking(move || compiler::report::check_with(&name, &text, &facts)).await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(error)) => Err(internal(format!("the check could not run: {error}"))),
        Err(error) => Err(internal(format!("the check panicked: {error}"))),
    }
}

/// The findings that make a rule set invalid (it cannot even be compiled), not just unwise.
fn invalid_findings(report: &Report) -> impl Iterator<Item = &compiler::finding::Finding> {
    report.findings.iter().filter(|f| matches!(f.code, Code::Syntax | Code::Type))
}

// ---- reading -----------------------------------------------------------------------------

/// `GET /api/rules`: `{"version", "rule_set"}`.
async fn get_rule_set(State(state): State<AppState>) -> Response {
    answer(
        async {
            let mut conn = state.pool.acquire().await?;
            let (version, doc) = rules::load(&mut conn).await?;
            let yaml = doc.to_yaml();
            Ok(Json(json!({ "version": version, "rule_set": doc, "yaml": yaml })).into_response())
        }
        .await,
    )
}

/// `GET /api/rules/{name}`: the rule.
async fn get_rule(State(state): State<AppState>, name: Result<Path<String>, PathRejection>) -> Response {
    answer(
        async {
            let name = path(name)?;
            let mut conn = state.pool.acquire().await?;
            let (_, doc) = rules::load(&mut conn).await?;
            let rule = doc.rules.into_iter().find(|r| r.name == name).ok_or_else(|| no_rule(&name))?;
            Ok(Json(rule).into_response())
        }
        .await,
    )
}

fn no_rule(name: &str) -> Failure {
    not_found(format!("no rule named `{name}`"))
}

/// `POST /api/rules/check`: the report of the given rule set, or of the stored one.
async fn check(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    answer(
        async {
            let bytes = read_body(body).await?;
            let report = if is_yaml(&headers) && !bytes.iter().all(u8::is_ascii_whitespace) {
                check_text(&state.pool, "rules.yaml", bytes.to_vec()).await?
            } else if bytes.iter().all(u8::is_ascii_whitespace) {
                let mut conn = state.pool.acquire().await?;
                let (version, doc) = rules::load(&mut conn).await?;
                check_doc(&state.pool, &format!("rules v{version}"), &doc).await?
            } else {
                match parse_rule_set(&state.pool, &bytes).await {
                    Ok(doc) => check_doc(&state.pool, "request body", &doc).await?,
                    Err(Failure::Invalid(report)) => *report,
                    Err(other) => return Err(other),
                }
            };
            Ok(Json(report.to_json_located()).into_response())
        }
        .await,
    )
}

// ---- changing ----------------------------------------------------------------------------

/// A change to the stored rule set.
#[derive(Debug)]
enum Change {
    /// Replace everything.
    Replace(RuleSetDoc),
    /// Create or update one rule; `enabled` omitted: as stored, or on for a new rule.
    Upsert(RuleDoc, Option<bool>),
    /// Switch a rule on or off.
    Enable(String, bool),
    /// Remove a rule.
    Delete(String),
    /// Replace the header.
    Schema(Schema),
}

/// What to write once the proposed document is accepted.
#[derive(Debug)]
enum Write {
    Replace,
    Upsert(RuleDoc),
    Delete(String),
    Schema(Schema),
}

impl Change {
    /// The stored document with the change made, in the order the table will give it
    /// (priority, then position), and the write that makes it so.
    fn apply(self, stored: RuleSetDoc, positions: &HashMap<String, i32>) -> Result<(RuleSetDoc, Write), Failure> {
        match self {
            Self::Replace(doc) => Ok((doc, Write::Replace)),
            Self::Schema(schema) => {
                let Schema { timezone, default_route, routes, candidates, fields } = schema.clone();
                let doc = RuleSetDoc { timezone, default_route, routes, candidates, fields, ..stored };
                Ok((doc, Write::Schema(schema)))
            }
            Self::Delete(name) => {
                let mut doc = stored;
                let before = doc.rules.len();
                doc.rules.retain(|r| r.name != name);
                if doc.rules.len() == before {
                    return Err(no_rule(&name));
                }
                Ok((doc, Write::Delete(name)))
            }
            Self::Enable(name, enabled) => {
                let mut doc = stored;
                let rule = doc.rules.iter_mut().find(|r| r.name == name).ok_or_else(|| no_rule(&name))?;
                rule.enabled = enabled;
                let rule = rule.clone();
                Ok((doc, Write::Upsert(rule)))
            }
            Self::Upsert(mut rule, enabled) => {
                let stored_rule = stored.rules.iter().find(|r| r.name == rule.name);
                rule.enabled = enabled.unwrap_or_else(|| stored_rule.is_none_or(|r| r.enabled));
                // An updated rule keeps its position, a new one goes after every other rule.
                let last = positions.values().copied().max().unwrap_or(0);
                let mut ordered: Vec<(i32, RuleDoc)> = stored
                    .rules
                    .iter()
                    .filter(|r| r.name != rule.name)
                    .map(|r| (positions.get(&r.name).copied().unwrap_or(last), r.clone()))
                    .collect();
                ordered.push((positions.get(&rule.name).copied().unwrap_or(last + 1), rule.clone()));
                ordered.sort_by_key(|(position, r)| (r.priority, *position));
                let doc = RuleSetDoc { rules: ordered.into_iter().map(|(_, r)| r).collect(), ..stored };
                Ok((doc, Write::Upsert(rule)))
            }
        }
    }
}

/// Where each stored rule sits among those of equal priority.
async fn positions(conn: &mut PgConnection) -> Result<HashMap<String, i32>, Failure> {
    let rows: Vec<(String, i32)> = sqlx::query_as("SELECT name, position FROM rules").fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().collect())
}

/// Checks the stored document with `change` made; on a real save writes it (bumping the
/// version and enqueueing a compile) unless it is invalid.
async fn change(state: &AppState, dry_run: bool, change: Change) -> Answer {
    change_checked(state, dry_run, change, None).await
}

/// [`change`], with the report of the proposed rule set when the caller checked it already
/// (a rules file checked as written).
async fn change_checked(state: &AppState, dry_run: bool, change: Change, checked: Option<Report>) -> Answer {
    let mut tx = state.pool.begin().await?;
    if !dry_run {
        // Writers take turns from the read on: the document checked is the one changed.
        rules::lock(&mut tx).await?;
    }
    let (version, stored) = rules::load(&mut tx).await?;
    let positions = positions(&mut tx).await?;
    let (proposed, write) = change.apply(stored.clone(), &positions)?;
    let proposed_name = format!("rules v{} (proposed)", version + 1);
    let report = match checked {
        Some(report) => report,
        None => check_doc(&state.pool, &proposed_name, &proposed).await?,
    };
    if dry_run {
        let impact = impact_on_active(&mut tx, (&proposed_name, &proposed)).await?;
        tx.rollback().await?;
        return Ok(
            Json(json!({ "dry_run": true, "report": report.to_json_located(), "impact": impact })).into_response()
        );
    }
    if invalid_findings(&report).next().is_some() {
        tx.rollback().await?;
        return Err(Failure::Invalid(Box::new(report)));
    }
    let saved = match write {
        Write::Replace => rules::replace(&mut tx, &proposed).await?,
        Write::Upsert(rule) => rules::upsert_rule(&mut tx, &rule).await?,
        Write::Delete(name) => rules::delete_rule(&mut tx, &name).await?.ok_or_else(|| no_rule(&name))?,
        Write::Schema(schema) => rules::set_schema(&mut tx, &schema).await?,
    };
    // The writer kept version `saved`'s document; its impact against the version before
    // commits with it, so the history answers "what did version N change".
    let impact =
        impact::between((&format!("rules v{version}"), &stored), (&format!("rules v{saved}"), &proposed)).await;
    rules::record_diff(&mut tx, saved, &impact).await?;
    tx.commit().await?;
    let activation = match report.errors() {
        0 => "expected".to_owned(),
        n => format!("refused: {n} error-level findings"),
    };
    tracing::info!(rules_version = saved, errors = report.errors(), "rule set saved");
    Ok(Json(
        json!({ "version": saved, "report": report.to_json_located(), "activation": activation, "impact": impact }),
    )
    .into_response())
}

/// The impact of `proposed` against the rules of the active decision tree (what routes leads
/// now), or why there is none to compare with.
async fn impact_on_active(conn: &mut PgConnection, proposed: (&str, &RuleSetDoc)) -> Result<Value, Failure> {
    let Some((tree, rules_version)) = rules::active_tree(&mut *conn).await? else {
        return Ok(json!({ "unavailable": "no decision tree is active: no lead is routed yet" }));
    };
    let Some(active) = rules::load_version(conn, rules_version).await? else {
        return Ok(json!({ "unavailable": format!("the document of rules v{rules_version} (active) is not kept") }));
    };
    Ok(impact::between((&format!("rules v{rules_version} (active, tree v{tree})"), &active), proposed).await)
}

/// `PUT /api/rules`: replace the whole rule set.
async fn put_rule_set(
    State(state): State<AppState>,
    query: Result<Query<DryRun>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            let dry_run = dry_run(query)?;
            let bytes = read_body(body).await?;
            if is_yaml(&headers) {
                return match parse_rules_file(&state.pool, &bytes).await {
                    Ok((doc, report)) => change_checked(&state, dry_run, Change::Replace(doc), Some(report)).await,
                    Err(Failure::Invalid(report)) if dry_run => {
                        Ok(Json(json!({ "dry_run": true, "report": report.to_json_located() })).into_response())
                    }
                    Err(other) => Err(other),
                };
            }
            match parse_rule_set(&state.pool, &bytes).await {
                Ok(doc) => change(&state, dry_run, Change::Replace(doc)).await,
                Err(Failure::Invalid(report)) if dry_run => {
                    Ok(Json(json!({ "dry_run": true, "report": report.to_json_located() })).into_response())
                }
                Err(other) => Err(other),
            }
        }
        .await,
    )
}

/// Names the fixed endpoints under `/api/rules/` take, so no rule created here may have them.
const RESERVED: [&str; 4] = ["check", "schema", "trees", "versions"];

/// The body of `PUT /api/rules/{name}` (the path names the rule).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    /// Optional; must be the path's name if given.
    #[serde(default)]
    name: Option<String>,
    priority: i32,
    when: String,
    /// A partner, `{"split": {...}}` or `{"shared": [...], "max": n}` (checked by the compiler).
    route: Value,
    /// Omitted: on (leads fall through when its partners are unavailable).
    #[serde(default = "yes")]
    fallthrough: bool,
    /// Omitted: unchanged for an existing rule, on for a new one.
    #[serde(default)]
    enabled: Option<bool>,
}

fn yes() -> bool {
    true
}

/// `PUT /api/rules/{name}`: create or update a rule.
async fn put_rule(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<DryRun>, QueryRejection>,
    body: Body,
) -> Response {
    answer(
        async {
            let name = path(name)?;
            let dry_run = dry_run(query)?;
            let body: RuleBody = parse(&read_body(body).await?)?;
            if body.name.as_ref().is_some_and(|n| *n != name) {
                return Err(Failure::Api(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("the body names rule `{}` but the path names `{name}`", body.name.unwrap_or_default()),
                )));
            }
            if RESERVED.contains(&name.as_str()) {
                return Err(Failure::Api(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("`{name}` names an endpoint under /api/rules; choose another rule name"),
                )));
            }
            let rule = RuleDoc {
                name,
                priority: body.priority,
                when: body.when,
                route: body.route,
                fallthrough: body.fallthrough,
                enabled: true,
            };
            change(&state, dry_run, Change::Upsert(rule, body.enabled)).await
        }
        .await,
    )
}

/// `DELETE /api/rules/{name}`.
async fn delete_rule(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<DryRun>, QueryRejection>,
) -> Response {
    answer(async { change(&state, dry_run(query)?, Change::Delete(path(name)?)).await }.await)
}

/// `POST /api/rules/{name}/enable`.
async fn enable(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<DryRun>, QueryRejection>,
) -> Response {
    answer(async { change(&state, dry_run(query)?, Change::Enable(path(name)?, true)).await }.await)
}

/// `POST /api/rules/{name}/disable`.
async fn disable(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<DryRun>, QueryRejection>,
) -> Response {
    answer(async { change(&state, dry_run(query)?, Change::Enable(path(name)?, false)).await }.await)
}

/// `PUT /api/rules/schema`: time zone, routes, default route and fields.
async fn put_schema(
    State(state): State<AppState>,
    query: Result<Query<DryRun>, QueryRejection>,
    body: Body,
) -> Response {
    answer(
        async {
            let dry_run = dry_run(query)?;
            let schema: Schema = parse(&read_body(body).await?)?;
            change(&state, dry_run, Change::Schema(schema)).await
        }
        .await,
    )
}

// ---- kept versions -----------------------------------------------------------------------

/// `GET /api/rules/versions`: the newest 100 kept versions (no documents), with whether each
/// has a stored diff and the diff's top-level summary.
async fn versions(State(state): State<AppState>) -> Response {
    answer(
        async {
            let mut conn = state.pool.acquire().await?;
            Ok(Json(rules::versions(&mut conn, 100).await?).into_response())
        }
        .await,
    )
}

/// `GET /api/rules/versions/{version}`: the version's whole document and its diff.
async fn stored_version(State(state): State<AppState>, version: Result<Path<String>, PathRejection>) -> Response {
    answer(
        async {
            let version = path(version)?;
            let unknown = || not_found(format!("no kept rules version `{version}`"));
            let number = version.parse::<i64>().map_err(|_| unknown())?;
            let mut conn = state.pool.acquire().await?;
            let stored = rules::stored_version(&mut conn, number).await?.ok_or_else(unknown)?;
            Ok(Json(stored).into_response())
        }
        .await,
    )
}

/// `POST /api/rules/versions/{version}/restore` (`?dry_run=true` to see it first): rolls back
/// to a kept version by saving its document as a new version, checked and answered like
/// `PUT /api/rules` (so the history only grows, and the impact says what the rollback moves).
async fn restore(
    State(state): State<AppState>,
    version: Result<Path<String>, PathRejection>,
    query: Result<Query<DryRun>, QueryRejection>,
) -> Response {
    answer(
        async {
            let dry_run = dry_run(query)?;
            let version = path(version)?;
            let unknown = || not_found(format!("no kept rules version `{version}`"));
            let number = version.parse::<i64>().map_err(|_| unknown())?;
            let doc = {
                let mut conn = state.pool.acquire().await?;
                rules::load_version(&mut conn, number).await?.ok_or_else(unknown)?
            };
            change(&state, dry_run, Change::Replace(doc)).await
        }
        .await,
    )
}

// ---- compile history ---------------------------------------------------------------------

/// `POST /api/rules/trees/active/recompile`: queues a recompile of the active tree's rules
/// version from its kept document (202 with what was queued); the compile worker activates the
/// new tree while that version is still the active one. 404 when no tree is active, 409 when
/// its version is not kept.
async fn recompile(State(state): State<AppState>) -> Response {
    answer(
        async {
            let mut conn = state.pool.acquire().await?;
            match rules::request_recompile(&mut conn).await? {
                rules::RecompileRequest::Queued(queued) => {
                    tracing::info!(
                        rules_version = queued.rules_version,
                        tree = queued.tree_version,
                        "recompile of the active rules version requested"
                    );
                    let mut body = serde_json::to_value(&queued).map_err(internal)?;
                    body["abi_version"] = json!(abi::ABI_VERSION);
                    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
                }
                rules::RecompileRequest::NoActiveTree => {
                    Err(not_found("no decision tree is active: there is nothing to recompile".to_owned()))
                }
                rules::RecompileRequest::NotStored { tree_version, rules_version } => {
                    Err(Failure::Api(ApiError::new(
                        StatusCode::CONFLICT,
                        "not_stored",
                        format!(
                            "the active tree {tree_version} is of rules version {rules_version}, which is not kept                              (it predates rule_versions): it cannot be recompiled; save the rules again to compile them"
                        ),
                    )))
                }
            }
        }
        .await,
    )
}

/// `GET /api/rules/trees`: the newest 100 compiles, with their finding counts.
async fn trees(State(state): State<AppState>) -> Response {
    type Row = (i64, i64, bool, DateTime<Utc>, Option<DateTime<Utc>>, Option<i64>, Option<i64>, Option<String>);
    answer(
        async {
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT version, rules_version, active, created_at, activated_at,
                        (report->>'errors')::bigint, (report->>'warnings')::bigint,
                        report->'compile'->>'refused'
                 FROM decision_trees ORDER BY version DESC LIMIT 100",
            )
            .fetch_all(&state.pool)
            .await?;
            let trees: Vec<Value> = rows
                .into_iter()
                .map(|(version, rules_version, active, created_at, activated_at, errors, warnings, refused)| {
                    json!({
                        "version": version,
                        "rules_version": rules_version,
                        "active": active,
                        "created_at": created_at,
                        "activated_at": activated_at,
                        "errors": errors,
                        "warnings": warnings,
                        "refused": refused,
                    })
                })
                .collect();
            Ok(Json(trees).into_response())
        }
        .await,
    )
}

/// `GET /api/rules/trees/active`.
async fn active_tree(State(state): State<AppState>) -> Response {
    answer(tree_where(&state, "active", None).await)
}

/// `GET /api/rules/trees/{version}`.
async fn tree(State(state): State<AppState>, version: Result<Path<String>, PathRejection>) -> Response {
    answer(
        async {
            let version = path(version)?;
            let Ok(number) = version.parse::<i64>() else {
                return Err(not_found(format!("no decision tree `{version}`")));
            };
            tree_where(&state, "version = $1", Some(number)).await
        }
        .await,
    )
}

/// One tree, selected by `condition` (with `$1` bound to `version` if given).
async fn tree_where(state: &AppState, condition: &str, version: Option<i64>) -> Answer {
    type Row = (i64, i64, bool, DateTime<Utc>, Option<DateTime<Utc>>, Value);
    let sql = format!(
        "SELECT version, rules_version, active, created_at, activated_at, report FROM decision_trees WHERE {condition}"
    );
    let mut query = sqlx::query_as::<_, Row>(&sql);
    if let Some(version) = version {
        query = query.bind(version);
    }
    let Some((version, rules_version, active, created_at, activated_at, report)) =
        query.fetch_optional(&state.pool).await?
    else {
        return Err(not_found(match version {
            Some(v) => format!("no decision tree `{v}`"),
            None => "no decision tree is active".to_owned(),
        }));
    };
    Ok(Json(json!({
        "version": version,
        "rules_version": rules_version,
        "active": active,
        "created_at": created_at,
        "activated_at": activated_at,
        "report": report,
    }))
    .into_response())
}
