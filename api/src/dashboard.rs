//! `GET /api/dashboard` (admin): one snapshot of the whole pipeline for the admin UI's live
//! dashboard, read from Postgres, so every replica's work counts and any replica answers:
//!
//! - `stages`: counters per stage, for the page to turn into rates: `ingest` (messages ever
//!   sent to `submissions`), `identify`, `router` (messages taken off `submissions`, `routing`)
//!   and `deliver` (messages taken off the partner queues): PGMQ's totals minus what still
//!   waits, so cheap to read.
//! - `latency_ms`: post → partner answer (`leads.submitted_at` → the answer's `updated_at`),
//!   p50/p90/p99 over the leads answered in the last [`LATENCY_WINDOW_SECS`] seconds.
//! - `queues`: every queue's depth, visible messages, oldest age and total, with its stage.
//! - `circuits` and `outcomes`: each partner's circuit, and its leads of the last hour by state
//!   (`pipeline::outcome::summary`); `unmatched`: leads of the last hour no rule matched.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{Duration, Utc};
use pipeline::dlq;
use pipeline::queue::fixed;
use serde_json::{Value, json};

use crate::AppState;
use crate::submit::ApiError;

/// The window of the latency percentiles.
const LATENCY_WINDOW_SECS: i64 = 60;

/// The route (the admin middleware is applied by the caller).
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/dashboard", get(dashboard))
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "dashboard request failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
}

/// The stage a queue feeds: `intake`, `routing`, `delivery` or `compile`; dead-letter queues
/// are `dead_letters`.
fn stage_of(queue: &str) -> &'static str {
    if queue.ends_with(dlq::SUFFIX) {
        "dead_letters"
    } else if queue == fixed::SUBMISSIONS {
        "intake"
    } else if queue == fixed::ROUTING {
        "routing"
    } else if queue == fixed::COMPILE {
        "compile"
    } else {
        "delivery"
    }
}

/// `GET /api/dashboard`.
async fn dashboard(State(state): State<AppState>) -> Response {
    snapshot(&state).await.map_or_else(IntoResponse::into_response, |body| Json(body).into_response())
}

async fn snapshot(state: &AppState) -> Result<Value, ApiError> {
    let at = Utc::now();
    let pgmq = state.pgmq().await.map_err(internal)?;
    let summary =
        pipeline::outcome::summary(&state.pool, pgmq, Some(at - Duration::hours(1))).await.map_err(internal)?;
    // Taken off a queue = ever sent to it − still in it.
    let taken = |pick: &dyn Fn(&str) -> bool| -> i64 {
        summary.queues.iter().filter(|q| pick(&q.queue_name)).map(|q| q.total_messages - q.queue_length).sum()
    };
    let sent_to = |name: &str| summary.queues.iter().find(|q| q.queue_name == name).map_or(0, |q| q.total_messages);
    let stages = json!({
        "ingest": sent_to(fixed::SUBMISSIONS),
        "identify": taken(&|q| q == fixed::SUBMISSIONS),
        "router": taken(&|q| q == fixed::ROUTING),
        "deliver": taken(&|q| stage_of(q) == "delivery"),
    });
    let (p50, p90, p99, answered): (Option<f64>, Option<f64>, Option<f64>, i64) = sqlx::query_as(
        "SELECT p[1], p[2], p[3], n FROM (
             SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY ms) AS p, count(*) AS n
             FROM (SELECT extract(epoch FROM updated_at - submitted_at) * 1000 AS ms FROM leads
                   WHERE created_at >= now() - make_interval(secs => $1) AND updated_at >= now() - make_interval(secs => $1)
                     AND attempts > 0 AND state <> 'pending' AND submitted_at IS NOT NULL) answered
         ) s",
    )
    .bind(LATENCY_WINDOW_SECS as f64)
    .fetch_one(&state.pool)
    .await
    .map_err(internal)?;
    let queues: Vec<Value> = summary
        .queues
        .iter()
        .map(|q| {
            json!({
                "queue": q.queue_name,
                "stage": stage_of(&q.queue_name),
                "depth": q.queue_length,
                "visible": q.queue_visible_length,
                "oldest_age_secs": q.oldest_msg_age_sec,
                "total_messages": q.total_messages,
            })
        })
        .collect();
    let circuits: Vec<Value> = summary
        .partners
        .iter()
        .map(|p| json!({ "partner": p.partner, "state": p.circuit, "retry_at": p.retry_at, "enabled": p.enabled }))
        .collect();
    let outcomes: Vec<Value> = summary
        .partners
        .iter()
        .filter(|p| !p.leads.is_empty())
        .map(|p| {
            let mut row = json!({ "partner": p.partner });
            for (state, count) in &p.leads {
                row[state.as_str()] = json!(count);
            }
            row
        })
        .collect();
    Ok(json!({
        "at": at,
        "stages": stages,
        "latency_ms": { "p50": p50, "p90": p90, "p99": p99, "answered": answered, "window_secs": LATENCY_WINDOW_SECS },
        "queues": queues,
        "circuits": circuits,
        "outcomes": outcomes,
        "unmatched": summary.unmatched,
    }))
}
