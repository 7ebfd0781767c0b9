//! `/api/partners` (admin): the partner configuration over HTTP, in the same shape as a
//! partners file (`pipeline::partners::PartnerConfig`). `PUT` creates or updates a partner with
//! its queues and circuit breaker; the deliver workers pick the change up within
//! `PARTNERS_REFRESH_SECS`.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pipeline::partners::{self, PartnerConfig};
use pipeline::state::CircuitState;
use serde_json::json;

use crate::AppState;
use crate::submit::ApiError;

/// The partner routes (the admin middleware is applied by the caller).
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/partners", get(list)).route("/api/partners/{name}", get(show).put(put))
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "admin partners request failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
}

async fn all(state: &AppState) -> Result<(Vec<PartnerConfig>, Vec<(String, CircuitState)>), ApiError> {
    let mut conn = state.pool.acquire().await.map_err(internal)?;
    let configs = partners::load_all(&mut conn).await.map_err(internal)?;
    let circuits = partners::circuits(&mut *conn).await.map_err(internal)?;
    Ok((configs, circuits))
}

fn with_circuit(config: &PartnerConfig, circuits: &[(String, CircuitState)]) -> serde_json::Value {
    let circuit = circuits.iter().find(|(p, _)| *p == config.name).map(|(_, s)| s);
    json!({ "partner": config, "circuit": circuit })
}

/// `GET /api/partners`: every partner with its circuit state.
async fn list(State(state): State<AppState>) -> Response {
    match all(&state).await {
        Ok((configs, circuits)) => {
            Json(configs.iter().map(|c| with_circuit(c, &circuits)).collect::<Vec<_>>()).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// `GET /api/partners/{name}`.
async fn show(State(state): State<AppState>, name: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(name)) = name else {
        return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "bad path").into_response();
    };
    match all(&state).await {
        Ok((configs, circuits)) => match configs.iter().find(|c| c.name == name) {
            Some(config) => Json(with_circuit(config, &circuits)).into_response(),
            None => ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no partner `{name}`")).into_response(),
        },
        Err(error) => error.into_response(),
    }
}

/// `PUT /api/partners/{name}`: create or update (body: a partner, as in a partners file).
async fn put(State(state): State<AppState>, name: Result<Path<String>, PathRejection>, body: Bytes) -> Response {
    let Ok(Path(name)) = name else {
        return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "bad path").into_response();
    };
    let config: PartnerConfig = match serde_json::from_slice(&body) {
        Ok(config) => config,
        Err(error) => {
            let code = if error.is_syntax() || error.is_eof() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let name = if code == StatusCode::BAD_REQUEST { "malformed_json" } else { "invalid_partner" };
            return ApiError::new(code, name, error.to_string()).into_response();
        }
    };
    if config.name != name {
        let message = format!("the body configures `{}` but the path names `{name}`", config.name);
        return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_partner", message).into_response();
    }
    if let Err(problem) = config.validate() {
        return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_partner", problem).into_response();
    }
    let applied = async {
        let mut tx = state.pool.begin().await?;
        partners::apply(&mut tx, &config).await?;
        tx.commit().await?;
        Ok::<_, pipeline::Error>(())
    }
    .await;
    match applied {
        Ok(()) => {
            tracing::info!(partner = %config.name, "partner configured over the admin API");
            Json(json!({ "partner": config, "applied": true })).into_response()
        }
        Err(error) => internal(error).into_response(),
    }
}
