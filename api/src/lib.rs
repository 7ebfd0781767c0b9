//! The HTTP API of Offer Router. Today it answers the health checks an orchestrator needs:
//! `/healthz` (the process is up) and `/readyz` (the database answers, the schema is fully
//! migrated and the fixed queues exist). The ingest (`POST /api/submit`) and admin endpoints
//! join this router as their workers land.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Shared state of every handler.
#[derive(Clone)]
struct AppState {
    pool: PgPool,
}

/// The application's routes.
pub fn router(pool: PgPool) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(AppState { pool })
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Liveness: answers as long as the process can serve HTTP.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers, every migration this build knows is applied, and the
/// fixed queues exist.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match readiness(&state.pool).await {
        Ok(body) => (StatusCode::OK, Json(body)),
        Err(problem) => {
            tracing::warn!(%problem, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "problem": problem })))
        }
    }
}

async fn readiness(pool: &PgPool) -> Result<Value, String> {
    let latest = pipeline::db::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_err(|e| format!("database: {e}"))?;
    if applied.unwrap_or(0) < latest {
        return Err(format!("schema at migration {} of {latest}", applied.unwrap_or(0)));
    }
    let fixed: Vec<String> = pipeline::queue::fixed::ALL.iter().map(|q| (*q).to_owned()).collect();
    let present: Vec<String> = sqlx::query_scalar("SELECT queue_name FROM pgmq.meta WHERE queue_name = ANY($1)")
        .bind(&fixed)
        .fetch_all(pool)
        .await
        .map_err(|e| format!("pgmq: {e}"))?;
    let missing: Vec<&String> = fixed.iter().filter(|q| !present.contains(q)).collect();
    if !missing.is_empty() {
        return Err(format!("missing queues: {missing:?}"));
    }
    Ok(json!({ "status": "ready", "migration": latest, "queues": fixed }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get_json(app: Router, path: &str) -> (StatusCode, Value) {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).expect("JSON body"))
    }

    #[sqlx::test(migrations = false)]
    async fn ready_only_once_migrated(pool: PgPool) {
        let (status, body) = get_json(router(pool.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["status"], "unavailable");

        pipeline::db::migrate(&pool).await.expect("migrate");
        let (status, body) = get_json(router(pool.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["queues"].as_array().map(Vec::len), Some(5));

        let (status, body) = get_json(router(pool), "/healthz").await;
        assert_eq!((status, body), (StatusCode::OK, json!({ "status": "ok" })));
    }
}
