//! `/api/partners` (admin): the partner configuration over HTTP, in the same shape as a
//! partners file (`pipeline::partners::PartnerConfig`), with what an operator watches beside
//! each partner (circuit, queue, dead letters, outcomes today, last error).
//!
//! - `GET /api/partners`: `[{"partner", "circuit", "stats"}]`, by name.
//! - `GET /api/partners/{name}`: one of those.
//! - `PUT /api/partners/{name}`: create or update (the body: a partner, as in a partners file;
//!   validated as deliver will build it, templates included). The deliver workers pick the
//!   change up within `PARTNERS_REFRESH_SECS`.
//! - `POST /api/partners/{name}/enable`, `.../disable`: whether deliver reads its queue.
//! - `POST /api/partners/{name}/test` with `{"fields": {...}, "email", "full_name", "phone"}`
//!   (all optional): renders a lead with the partner's templates, sends it now through the same
//!   adapter deliver uses (`pipeline::adapter`), and answers the request as sent, the answer and
//!   its classification. No lead is recorded; dedupe and the circuit are untouched.
//!
//! "Today" is the UTC day. Errors are JSON `{code, message}`: 400 `malformed_json` /
//! `bad_request`, 404 `not_found`, 422 `invalid_partner`, 500 `internal`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

use pipeline::adapter::{Adapter, excerpt};
use pipeline::distribution::{Availability, CapCount, Unavailable};
use pipeline::identity;
use pipeline::message::{PartnerLead, RoutingLead};
use pipeline::outcome::{self, PartnerOutcomes};
use pipeline::partners::{self, PartnerConfig};
use pipeline::queue::{QueueMetrics, QueueName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::submit::ApiError;

/// The partner routes (the admin middleware is applied by the caller).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/partners", get(list))
        .route("/api/partners/{name}", get(show).put(put))
        .route("/api/partners/{name}/enable", post(enable))
        .route("/api/partners/{name}/disable", post(disable))
        .route("/api/partners/{name}/test", post(test))
}

type Answer = Result<Response, ApiError>;

fn answer(result: Answer) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "admin partners request failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_partner", message)
}

fn name_of(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    name.map(|Path(name)| name).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "bad path"))
}

fn no_partner(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no partner `{name}`"))
}

/// What an operator watches beside a partner's configuration.
#[derive(Debug, Clone, Serialize)]
struct Stats {
    /// Messages in its queue, and the oldest one's age.
    queue_depth: i64,
    oldest_age_secs: Option<i32>,
    /// Letters in its dead-letter queue.
    dlq_depth: i64,
    /// Its leads created today (UTC), per state.
    today: BTreeMap<String, i64>,
    /// Its last failed call.
    last_error: Option<LastError>,
    /// Its caps and budget now: what each has used in the running period.
    caps: Vec<CapCount>,
    /// Whether it is taking leads now (`None`), else why not (paused, closed by its schedule,
    /// with when it opens).
    closed: Option<Unavailable>,
}

/// A partner's last failed call (`delivery_attempts`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
struct LastError {
    at: DateTime<Utc>,
    status: Option<i32>,
    error: Option<String>,
}

/// One partner as the API shows it.
#[derive(Debug, Clone, Serialize)]
struct Shown {
    partner: PartnerConfig,
    circuit: Option<CircuitShown>,
    stats: Stats,
}

#[derive(Debug, Clone, Serialize)]
struct CircuitShown {
    state: pipeline::state::CircuitState,
    retry_at: Option<DateTime<Utc>>,
}

/// Every partner (or the one named) with its circuit and figures.
async fn partners_shown(state: &AppState, only: Option<&str>) -> Result<Vec<Shown>, ApiError> {
    let pgmq = state.pgmq().await.map_err(internal)?;
    let today = Utc::now().date_naive().and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    let summary = outcome::summary(&state.pool, pgmq, today).await.map_err(internal)?;
    let mut conn = state.pool.acquire().await.map_err(internal)?;
    let configs = partners::load_all(&mut conn).await.map_err(internal)?;
    let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).filter(|n| only.is_none_or(|o| o == *n)).collect();
    // The newest failed call per partner, through the partial index of failed calls.
    #[derive(sqlx::FromRow)]
    struct PartnerError {
        partner: String,
        #[sqlx(flatten)]
        error: LastError,
    }
    let errors: Vec<PartnerError> = sqlx::query_as(
        "SELECT p.name AS partner, a.at, a.status, a.error FROM unnest($1::text[]) AS p(name)
         CROSS JOIN LATERAL (SELECT at, status, error FROM delivery_attempts
                             WHERE partner = p.name AND verdict IN ('retryable', 'permanent')
                             ORDER BY id DESC LIMIT 1) a",
    )
    .bind(&names)
    .fetch_all(&mut *conn)
    .await
    .map_err(internal)?;
    let queue = |name: &str| -> Option<&QueueMetrics> { summary.queues.iter().find(|q| q.queue_name == name) };
    let now = Utc::now();
    let mut availability = HashMap::new();
    for config in configs.iter().filter(|c| only.is_none_or(|o| o == c.name)) {
        if let Ok(a) = Availability::of(config) {
            let counts = a.counts(&mut conn, now).await.map_err(internal)?;
            availability.insert(config.name.clone(), (counts, a.closed(now)));
        }
    }
    Ok(configs
        .into_iter()
        .filter(|c| only.is_none_or(|o| o == c.name))
        .map(|config| {
            let (caps, closed) = availability.remove(&config.name).unwrap_or_default();
            let partner_queue = QueueName::partner(&config.name).ok();
            let metrics = partner_queue.as_ref().and_then(|q| queue(q.as_str()));
            let dlq = partner_queue.as_ref().and_then(|q| q.dead_letter_queue().ok());
            let outcomes: Option<&PartnerOutcomes> = summary.partners.iter().find(|p| p.partner == config.name);
            let stats = Stats {
                queue_depth: metrics.map_or(0, |m| m.queue_length),
                oldest_age_secs: metrics.and_then(|m| m.oldest_msg_age_sec),
                dlq_depth: dlq.as_ref().and_then(|q| queue(q.as_str())).map_or(0, |m| m.queue_length),
                today: outcomes
                    .map(|o| o.leads.iter().map(|(state, n)| (state.as_str().to_owned(), *n)).collect())
                    .unwrap_or_default(),
                last_error: errors.iter().find(|e| e.partner == config.name).map(|e| e.error.clone()),
                caps,
                closed,
            };
            let circuit = outcomes.map(|o| CircuitShown { state: o.circuit, retry_at: o.retry_at });
            Shown { partner: config, circuit, stats }
        })
        .collect())
}

/// `GET /api/partners`: every partner with its circuit and figures.
async fn list(State(state): State<AppState>) -> Response {
    answer(partners_shown(&state, None).await.map(|all| Json(all).into_response()))
}

/// `GET /api/partners/{name}`.
async fn show(State(state): State<AppState>, name: Result<Path<String>, PathRejection>) -> Response {
    answer(
        async {
            let name = name_of(name)?;
            let found =
                partners_shown(&state, Some(&name)).await?.into_iter().next().ok_or_else(|| no_partner(&name))?;
            Ok(Json(found).into_response())
        }
        .await,
    )
}

/// `PUT /api/partners/{name}`: create or update (body: a partner, as in a partners file).
async fn put(State(state): State<AppState>, name: Result<Path<String>, PathRejection>, body: Bytes) -> Response {
    answer(
        async {
            let name = name_of(name)?;
            let config: PartnerConfig = serde_json::from_slice(&body).map_err(|error| {
                if error.is_syntax() || error.is_eof() {
                    ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", error.to_string())
                } else {
                    invalid(error.to_string())
                }
            })?;
            if config.name != name {
                return Err(invalid(format!("the body configures `{}` but the path names `{name}`", config.name)));
            }
            config.validate().map_err(invalid)?;
            let mut tx = state.pool.begin().await.map_err(internal)?;
            partners::apply(&mut tx, &config).await.map_err(internal)?;
            tx.commit().await.map_err(internal)?;
            tracing::info!(partner = %config.name, "partner configured over the admin API");
            Ok(Json(json!({ "partner": config, "applied": true })).into_response())
        }
        .await,
    )
}

async fn set_enabled(state: &AppState, name: Result<Path<String>, PathRejection>, enabled: bool) -> Response {
    answer(
        async {
            let name = name_of(name)?;
            if !partners::set_enabled(&state.pool, &name, enabled).await.map_err(internal)? {
                return Err(no_partner(&name));
            }
            tracing::info!(partner = %name, enabled, "partner switched over the admin API");
            Ok(Json(json!({ "partner": name, "enabled": enabled })).into_response())
        }
        .await,
    )
}

/// `POST /api/partners/{name}/enable`.
async fn enable(State(state): State<AppState>, name: Result<Path<String>, PathRejection>) -> Response {
    set_enabled(&state, name, true).await
}

/// `POST /api/partners/{name}/disable`.
async fn disable(State(state): State<AppState>, name: Result<Path<String>, PathRejection>) -> Response {
    set_enabled(&state, name, false).await
}

/// The body of `POST /api/partners/{name}/test`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestLead {
    #[serde(default)]
    fields: Map<String, Value>,
    email: Option<String>,
    full_name: Option<String>,
    phone: Option<String>,
    site: Option<String>,
}

/// The longest answer body a test shows.
const TEST_EXCERPT: usize = 2000;

/// `POST /api/partners/{name}/test`: one lead rendered and sent now.
async fn test(State(state): State<AppState>, name: Result<Path<String>, PathRejection>, body: Bytes) -> Response {
    answer(
        async {
            let name = name_of(name)?;
            let lead: TestLead = if body.is_empty() {
                TestLead::default()
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?
            };
            let mut conn = state.pool.acquire().await.map_err(internal)?;
            let config = partners::load_all(&mut conn)
                .await
                .map_err(internal)?
                .into_iter()
                .find(|c| c.name == name)
                .ok_or_else(|| no_partner(&name))?;
            drop(conn);
            let adapter = Adapter::new(&config).map_err(|e| invalid(e.to_string()))?;
            let message = PartnerLead {
                lead: RoutingLead {
                    submission_id: uuid::Uuid::now_v7(),
                    site: lead.site.unwrap_or_else(|| "admin-test".to_owned()),
                    person_id: 0,
                    alias_id: None,
                    submitted_at: Utc::now(),
                    fields: lead.fields,
                },
                route: config.name.clone(),
                rule: None,
                tree_version: 0, routing: None, reserved_at: None,
            };
            // The identity as identify would have normalized it (as typed where it does not
            // normalize: the test shows what the template makes of it).
            let normal = |raw: Option<String>, f: &dyn Fn(&str) -> Option<String>| raw.map(|r| f(&r).unwrap_or(r));
            let region = state.config.phone_region;
            let person = json!({
                "email": normal(lead.email, &|e| identity::normalize_email(e).ok()),
                "full_name": normal(lead.full_name, &|n| identity::normalize_name(n).ok()),
                "phone": normal(lead.phone, &|p| identity::normalize_phone(p, region).ok()),
            });
            let rendered = match adapter.render(&message, &person, &state.partner_env) {
                Ok(rendered) => rendered,
                Err(error) => {
                    return Ok(Json(json!({
                        "request": null,
                        "error": format!("cannot build the request: {error}"),
                        "outcome": "permanent",
                    }))
                    .into_response());
                }
            };
            // Marked as a test in its idempotency key, so the partner's logs can tell.
            let key = format!("test:{}", adapter.idempotency_key(&message));
            let answer = adapter.send(&state.http, &rendered, &key).await;
            tracing::info!(partner = %name, status = answer.status, verdict = answer.verdict.as_str(), "test lead sent");
            let mut headers = rendered.headers.clone();
            headers.insert("Idempotency-Key".to_owned(), key);
            let response = answer.status.map(|status| {
                json!({
                    "status": status,
                    "elapsed_ms": answer.elapsed.as_millis(),
                    "body_excerpt": excerpt(&answer.body, TEST_EXCERPT),
                })
            });
            Ok(Json(json!({
                "request": {
                    "method": rendered.method,
                    "url": rendered.url,
                    "headers": headers,
                    "body": rendered.body_text(),
                },
                "response": response,
                "outcome": answer.verdict.as_str(),
                "error": answer.error,
            }))
            .into_response())
        }
        .await,
    )
}
