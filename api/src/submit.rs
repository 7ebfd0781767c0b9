//! `POST /api/submit` (DESIGN.md, "Ingestion"): authenticate the site, check the body, and
//! answer 202 with the submission id once the message is committed to `submissions`.
//!
//! Every error is JSON, `{"code", "message", "errors": [{"field", "message"}]}`:
//! 400 `malformed_json`, 401 `unauthorized`, 413 `too_large`, 415 `unsupported_media_type`,
//! 422 `invalid_submission` / `invalid_idempotency_key` / `idempotency_key_reused`,
//! 503 `unavailable` (with `Retry-After`; nothing was accepted).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use pipeline::identity::{Key, Keys, join_name};
use pipeline::message::{Submission, derived};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::commit::{Accepted, IdempotencyKey, Refused};
use crate::sites::Site;

/// One problem with one part of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FieldError {
    /// Where: `email`, `fields.state`, ...
    pub(crate) field: String,
    /// What is wrong.
    pub(crate) message: String,
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    errors: Vec<FieldError>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), errors: Vec::new() }
    }

    fn invalid(errors: Vec<FieldError>) -> Self {
        let message = match errors.len() {
            1 => "the submission has 1 problem".to_owned(),
            n => format!("the submission has {n} problems"),
        };
        Self { status: StatusCode::UNPROCESSABLE_ENTITY, code: "invalid_submission", message, errors }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code, "message": self.message });
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// The handler.
pub(crate) async fn submit(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = std::time::Instant::now();
    let response = match accept(&state, &headers, body).await {
        Ok((accepted, site)) => {
            let (id, replayed) = match accepted {
                Accepted::New(id) => (id, false),
                Accepted::Replayed(id) => (id, true),
            };
            tracing::debug!(submission_id = %id, site = %site.name, replayed, "submission accepted");
            let mut response = (StatusCode::ACCEPTED, Json(json!({ "submission_id": id }))).into_response();
            if replayed {
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Err(error) => {
            if error.status.is_server_error() {
                tracing::error!(code = error.code, message = %error.message, "submission not accepted");
            } else {
                tracing::debug!(code = error.code, message = %error.message, "submission refused");
            }
            error.into_response()
        }
    };
    sentry::metrics::distribution("api.submit.duration", started.elapsed().as_secs_f64() * 1e3)
        .unit(sentry::protocol::Unit::Millisecond)
        .attribute("status", response.status().as_u16().to_string())
        .capture();
    response
}

async fn accept(state: &AppState, headers: &HeaderMap, body: Body) -> Result<(Accepted, Site), ApiError> {
    let site = authenticate(state, headers).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send `Content-Type: application/json` (got `{content_type}`)"),
        ));
    }
    let limit = state.config.max_body_bytes;
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the body is larger than {limit} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|error| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if e.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = e.source();
        }
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("cannot read the body: {error}"))
    })?;
    let idempotency = idempotency_key(headers, &bytes)?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not JSON: {e}")))?;
    let submission = validate(state, &site, value)?;

    // A key used before is found by the group commit's insert (it conflicts), so a retry
    // costs no extra query on the common path.
    let message = serde_json::to_value(&submission)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match state.commit.commit(site.id, submission.submission_id, message, idempotency).await {
        Ok(accepted) => Ok((accepted, site)),
        Err(Refused::KeyReused) => Err(key_reused()),
        Err(Refused::Unavailable(why)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("not accepted, try again: {why}"),
        )),
    }
}

async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Site, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("send the site's key as `Authorization: Bearer <key>`"))?;
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <key>`"))?;
    match state.keys.authenticate(&state.pool, key).await {
        Ok(Some(site)) => Ok(site),
        Ok(None) => Err(unauthorized("unknown or revoked key")),
        Err(error) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("cannot check the key, try again: {error}"),
        )),
    }
}

fn idempotency_key(headers: &HeaderMap, body: &[u8]) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().ok().map(str::trim).filter(|k| (1..=255).contains(&k.len())).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
    })?;
    Ok(Some(IdempotencyKey { key: key.to_owned(), request_hash: Sha256::digest(body).into() }))
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different body; use a new key for a new submission",
    )
}

/// The body's top-level keys.
const KNOWN_KEYS: [&str; 6] = ["email", "full_name", "first_name", "last_name", "phone", "fields"];

/// Checks the body and builds the queue message, reporting every problem at once.
fn validate(state: &AppState, site: &Site, value: Value) -> Result<Submission, ApiError> {
    let Value::Object(mut body) = value else {
        return Err(ApiError::invalid(vec![field_error("", "the body must be a JSON object")]));
    };
    let mut errors = Vec::new();
    for key in body.keys().filter(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        errors.push(field_error(key.as_str(), "unknown key; offer fields go inside `fields`"));
    }
    let mut text = |name: &str| match body.remove(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(field_error(name, format!("expected a string, got {other}")));
            None
        }
    };
    let email = text("email");
    let phone = text("phone");
    let full_name = text("full_name");
    let (first, last) = (text("first_name"), text("last_name"));
    let full_name = match (full_name, join_name(first.as_deref(), last.as_deref())) {
        (Some(full), Some(_)) => {
            errors.push(field_error("first_name", "send either `full_name` or `first_name`/`last_name`, not both"));
            Some(full)
        }
        (full, joined) => full.or(joined),
    };

    match Keys::normalize(email.as_deref(), full_name.as_deref(), phone.as_deref(), state.config.phone_region) {
        Ok(keys) if keys.count() < 2 => {
            let missing = Key::ALL.iter().filter(|k| keys.get(**k).is_none());
            errors.extend(missing.map(|k| {
                field_error(
                    k.name(),
                    "at least two of `email`, `full_name` (or first/last name) and `phone` are required",
                )
            }));
        }
        Ok(_) => {}
        Err(problems) => errors.extend(problems.into_iter().map(|p| field_error(p.key.name(), p.problem))),
    }

    let fields = match body.remove("fields") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(fields)) => fields,
        Some(other) => {
            errors.push(field_error("fields", format!("expected an object of offer fields, got {other}")));
            Map::new()
        }
    };
    for (name, value) in &fields {
        if derived::ALL.contains(&name.as_str()) {
            errors.push(field_error(format!("fields.{name}"), "is derived by the service and cannot be sent"));
        } else if matches!(value, Value::Array(_) | Value::Object(_)) {
            errors.push(field_error(format!("fields.{name}"), "must be a string, number, boolean or null"));
        }
    }
    if let Some(schema) = state.schema.get() {
        for (field, problem) in schema.encoder.problems(&fields) {
            errors.push(field_error(format!("fields.{field}"), problem));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    Ok(Submission {
        submission_id: Uuid::now_v7(),
        site_id: site.id,
        site: site.name.clone(),
        submitted_at: Utc::now(),
        email,
        full_name,
        phone,
        fields,
    })
}
