//! The admin dead-letter API (see `pipeline::dlq`): list the dead-letter queues and their
//! letters, show one letter, and replay letters into their source queue. The routes join the
//! admin router in `rules`, so every one needs `Authorization: Bearer <admin token>`.
//!
//! - `GET /api/dlq`: `[{"queue", "source", "length"}]`, every `<queue>_dlq`.
//! - `GET /api/dlq/{dlq}?limit=50`: `{"queue", "letters": [...]}`, oldest first (limit 1 to 1000).
//! - `GET /api/dlq/{dlq}/{msg_id}`: one letter, `{"msg_id", "enqueued_at", "envelope", "raw"}`.
//! - `POST /api/dlq/{dlq}/replay` with `{"msg_id": N}`, `{"msg_ids": [N, ...]}` or
//!   `{"all": true}`: `{"replayed": n, "skipped": [{"msg_id", "reason"}]}`.
//! - `POST /api/dlq/{dlq}/discard` with the same selection and `"reason"` (required):
//!   `{"discarded": n}`. Each letter is kept in `dlq_discarded` with the reason and who discarded
//!   it (`pipeline::dlq::discard`), and the change is in the audit log.
//! - `GET /api/dlq/discarded?queue=&limit=50`: `{"letters": [...]}`, the newest first.
//!
//! Errors are JSON `{code, message}`: 400 `bad_request` / `malformed_json`, 401 `unauthorized`,
//! 404 `not_found` (no such queue or letter), 422 `not_a_dlq` (the name is not that of a
//! dead-letter queue) / `invalid_body`, 500 `internal`.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pipeline::dlq::{self, Selection};
use pipeline::queue::QueueName;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Actor;
use crate::submit::ApiError;

/// Letters listed when the query names no limit.
const DEFAULT_LIMIT: u32 = 50;
/// The most letters one listing returns.
const MAX_LIMIT: u32 = 1000;
/// The largest replay body accepted (it is one small JSON object).
const MAX_BODY_BYTES: usize = 4096;

/// The routes; the caller puts them behind the admin token.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/dlq", get(queues))
        .route("/api/dlq/{dlq}", get(list))
        .route("/api/dlq/discarded", get(discarded))
        .route("/api/dlq/{dlq}/replay", post(replay))
        .route("/api/dlq/{dlq}/discard", post(discard))
        .route("/api/dlq/{dlq}/{msg_id}", get(show))
}

type Answer = Result<Response, ApiError>;

fn answer(result: Answer) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "admin dead-letter request failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
}

fn bad_request(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn not_found(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

fn path<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(p)| p).map_err(|e| bad_request(format!("bad path: {}", e.body_text())))
}

fn invalid_body(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
}

/// The path's queue if it names an existing dead-letter queue: 422 if the name is not that of
/// a DLQ, 404 if there is no such queue.
async fn dead_letter_queue(state: &AppState, name: &str) -> Result<QueueName, ApiError> {
    let not_a_dlq = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_dlq",
            format!("`{name}` is not a dead-letter queue (`<queue>{}`)", dlq::SUFFIX),
        )
    };
    let queue = QueueName::new(name).map_err(|_| not_a_dlq())?;
    if dlq::source_queue(&queue).is_none() {
        return Err(not_a_dlq());
    }
    if !dlq::exists(&state.pool, &queue).await.map_err(internal)? {
        return Err(not_found(format!("no queue `{queue}`")));
    }
    Ok(queue)
}

/// `GET /api/dlq`.
async fn queues(State(state): State<AppState>) -> Response {
    answer(
        async {
            let queues = dlq::dead_letter_queues(&state.pool).await.map_err(internal)?;
            let body: Vec<Value> = queues
                .into_iter()
                .map(|(queue, length)| {
                    let source = dlq::source_queue(&queue).map(|q| q.to_string());
                    json!({ "queue": queue.as_str(), "source": source, "length": length })
                })
                .collect();
            Ok(Json(body).into_response())
        }
        .await,
    )
}

/// `?limit=N`.
#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<u32>,
}

/// `GET /api/dlq/{dlq}`.
async fn list(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<Limit>, QueryRejection>,
) -> Response {
    answer(
        async {
            let Query(Limit { limit }) =
                query.map_err(|e| bad_request(format!("bad query string: {}", e.body_text())))?;
            let limit = limit.unwrap_or(DEFAULT_LIMIT);
            if !(1..=MAX_LIMIT).contains(&limit) {
                return Err(bad_request(format!("`limit` must be 1 to {MAX_LIMIT} (got {limit})")));
            }
            let queue = dead_letter_queue(&state, &path(name)?).await?;
            let letters = dlq::list(&state.pool, &queue, limit).await.map_err(internal)?;
            Ok(Json(json!({ "queue": queue.as_str(), "letters": letters })).into_response())
        }
        .await,
    )
}

/// `GET /api/dlq/{dlq}/{msg_id}`.
async fn show(State(state): State<AppState>, name_and_id: Result<Path<(String, String)>, PathRejection>) -> Response {
    answer(
        async {
            let (name, msg_id) = path(name_and_id)?;
            let queue = dead_letter_queue(&state, &name).await?;
            let no_letter = || not_found(format!("no message `{msg_id}` in `{queue}`"));
            let id: i64 = msg_id.parse().map_err(|_| no_letter())?;
            let letter = dlq::show(&state.pool, &queue, id).await.map_err(internal)?.ok_or_else(no_letter)?;
            Ok(Json(letter).into_response())
        }
        .await,
    )
}

/// The body of `POST /api/dlq/{dlq}/replay` and `.../discard`: exactly one selection (and a
/// reason to discard).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectionBody {
    msg_id: Option<i64>,
    msg_ids: Option<Vec<i64>>,
    #[serde(default)]
    all: bool,
    reason: Option<String>,
}

impl SelectionBody {
    /// Reads a body of at most [`MAX_BODY_BYTES`].
    async fn read(body: Body) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|e| bad_request(format!("cannot read the body (at most {MAX_BODY_BYTES} bytes): {e}")))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not JSON: {e}"))
        })?;
        serde_json::from_value(value).map_err(|e| invalid_body(e.to_string()))
    }

    fn selection(&self) -> Result<Selection, ApiError> {
        match (self.msg_id, &self.msg_ids, self.all) {
            (Some(msg_id), None, false) => Ok(Selection::One(msg_id)),
            (None, Some(ids), false) if !ids.is_empty() => Ok(Selection::Some(ids.clone())),
            (None, None, true) => Ok(Selection::All),
            _ => Err(invalid_body(
                "send one of `{\"msg_id\": N}`, `{\"msg_ids\": [N, ...]}` (not empty) or `{\"all\": true}`",
            )),
        }
    }
}

/// `POST /api/dlq/{dlq}/replay`.
async fn replay(State(state): State<AppState>, name: Result<Path<String>, PathRejection>, body: Body) -> Response {
    answer(
        async {
            let body = SelectionBody::read(body).await?;
            if body.reason.is_some() {
                return Err(invalid_body("a replay takes no `reason`"));
            }
            let selection = body.selection()?;
            let queue = dead_letter_queue(&state, &path(name)?).await?;
            let done = dlq::replay(&state.pool, &queue, selection).await.map_err(internal)?;
            if let Some(missing) = done.missing.first() {
                return Err(not_found(format!("no message `{missing}` in `{queue}`")));
            }
            let skipped: Vec<Value> =
                done.skipped.iter().map(|(msg_id, reason)| json!({ "msg_id": msg_id, "reason": reason })).collect();
            Ok(Json(json!({ "replayed": done.replayed, "skipped": skipped })).into_response())
        }
        .await,
    )
}

/// `POST /api/dlq/{dlq}/discard`.
async fn discard(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    answer(
        async {
            let body = SelectionBody::read(body).await?;
            let selection = body.selection()?;
            let reason = body.reason.as_deref().map(str::trim).unwrap_or_default();
            if reason.is_empty() {
                return Err(invalid_body("say why in `reason`: a discarded letter is kept with it"));
            }
            let queue = dead_letter_queue(&state, &path(name)?).await?;
            let done = dlq::discard(&state.pool, &queue, selection, reason, &actor.name).await.map_err(internal)?;
            Ok(Json(json!({ "discarded": done.discarded, "missing": done.missing })).into_response())
        }
        .await,
    )
}

/// `?queue=&limit=N` of `GET /api/dlq/discarded`.
#[derive(Debug, Deserialize)]
struct DiscardedQuery {
    queue: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/dlq/discarded`.
async fn discarded(State(state): State<AppState>, query: Result<Query<DiscardedQuery>, QueryRejection>) -> Response {
    answer(
        async {
            let Query(query) = query.map_err(|e| bad_request(format!("bad query string: {}", e.body_text())))?;
            let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
            let queue = match query.queue.as_deref().filter(|q| !q.is_empty()) {
                Some(name) => Some(QueueName::new(name).map_err(|e| bad_request(e.to_string()))?),
                None => None,
            };
            let letters = dlq::discarded(&state.pool, queue.as_ref(), limit).await.map_err(internal)?;
            Ok(Json(json!({ "letters": letters })).into_response())
        }
        .await,
    )
}
