//! The HTTP API of Offer Router: the ingest endpoint `POST /api/submit` (see `submit`), the
//! health checks an orchestrator needs (`/healthz`: the process is up; `/readyz`: the database
//! answers, the schema is fully migrated and the fixed queues exist), the site-key operations
//! the CLI exposes (`sites`), the admin rules API `/api/rules` (see `rules`), and a stored
//! lead's explanation (`leads`, which `rulec explain --submission` shares). Further admin
//! endpoints join this router as their workers land.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use pipeline::config::{ApiConfig, SubmitConfig};
use pipeline::queue::Pgmq;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod auth;
mod commit;
mod dashboard;
mod dlq;
mod error;
mod impact;
pub mod leads;
mod partners;
mod rules;
mod schema;
pub mod sites;
mod submit;
mod ui;

pub use auth::hash_password;

pub use error::{Error, Result};

/// Shared state of every handler.
#[derive(Clone)]
struct AppState {
    pool: PgPool,
    config: Arc<SubmitConfig>,
    keys: Arc<sites::SiteKeys>,
    commit: commit::GroupCommit,
    schema: Arc<schema::ActiveSchema>,
    /// The admin API's token; `None`: admin endpoints refuse everything.
    admin_token: Option<Arc<str>>,
    /// The admin UI's users and sessions.
    admin: Arc<pipeline::config::AdminConfig>,
    /// What the database's PGMQ offers, read at the first request that needs it.
    pgmq: Arc<tokio::sync::OnceCell<Pgmq>>,
    /// The HTTP client of test leads (`partners`).
    http: reqwest::Client,
    /// The environment partner templates may use (`PARTNER_*`).
    partner_env: Arc<BTreeMap<String, String>>,
}

impl AppState {
    /// What the database's PGMQ offers (read once; a failed read is tried again next time).
    async fn pgmq(&self) -> pipeline::Result<&Pgmq> {
        self.pgmq.get_or_try_init(|| Pgmq::detect(&self.pool)).await
    }
}

/// The HTTP application and the background tasks it needs (group committers, the schema
/// refresher, idempotency-key pruning).
pub struct Api {
    /// The routes.
    pub router: Router,
    /// The background tasks. The committers end once `router` (and every clone) is dropped and
    /// the posts in hand are committed; the others end on the shutdown token.
    pub tasks: JoinSet<()>,
}

impl Api {
    /// Builds the application on `pool` and starts its background tasks.
    pub async fn start(pool: PgPool, config: impl Into<ApiConfig>, shutdown: CancellationToken) -> Result<Self> {
        let ApiConfig { submit: config, admin_token, admin, partner_env } = config.into();
        let mut tasks = JoinSet::new();
        let commit = commit::GroupCommit::start(&pool, &config, &mut tasks)?;
        let schema = Arc::new(schema::ActiveSchema::default());
        // Read the schema once before serving, so the first posts are checked too.
        if let Err(error) = schema.refresh(&pool).await {
            tracing::warn!(%error, "cannot read the active rule set's schema yet");
        }
        tasks.spawn(Arc::clone(&schema).keep_fresh(pool.clone(), config.schema_refresh, shutdown.clone()));
        tasks.spawn(commit::prune_idempotency_keys(pool.clone(), config.idempotency_ttl, shutdown));
        let state = AppState {
            pgmq: Arc::default(),
            http: reqwest::Client::new(),
            partner_env: Arc::new(partner_env),
            admin_token: admin_token.map(Arc::from),
            admin: Arc::new(admin),
            keys: Arc::new(sites::SiteKeys::new(config.site_key_ttl)),
            config: Arc::new(config),
            pool,
            commit,
            schema,
        };
        let router = Router::new()
            .merge(rules::router(state.clone()))
            .merge(auth::routes())
            .merge(ui::routes())
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            // The handler enforces the configured limit itself (with a JSON 413); this only
            // lifts axum's default so it does not answer first.
            .route("/api/submit", post(submit::submit).layer(DefaultBodyLimit::disable()))
            .with_state(state);
        Ok(Self { router, tasks })
    }

    /// Serves on `listener` until `shutdown`, lets in-flight requests finish, then waits for
    /// the background tasks (so every accepted post is committed before this returns).
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        let Self { router, mut tasks } = self;
        let served = serve(listener, router, shutdown).await;
        while tasks.join_next().await.is_some() {}
        served
    }
}

/// `GET /metrics`: the Prometheus text of `registry` (queue gauges, consumer counters and
/// batch-duration histograms). Unauthenticated, like `/healthz`: serve it on a private network.
pub fn metrics_router(registry: Arc<pipeline::metrics::Registry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], registry.render()) }
        }),
    )
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

    async fn router(pool: PgPool) -> Router {
        Api::start(pool, SubmitConfig::default(), CancellationToken::new()).await.expect("api").router
    }

    async fn get_json(app: Router, path: &str) -> (StatusCode, Value) {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).expect("JSON body"))
    }

    #[sqlx::test(migrations = false)]
    async fn ready_only_once_migrated(pool: PgPool) {
        let (status, body) = get_json(router(pool.clone()).await, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["status"], "unavailable");

        pipeline::db::migrate(&pool).await.expect("migrate");
        let (status, body) = get_json(router(pool.clone()).await, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["queues"].as_array().map(Vec::len), Some(5));

        let (status, body) = get_json(router(pool).await, "/healthz").await;
        assert_eq!((status, body), (StatusCode::OK, json!({ "status": "ok" })));
    }
}
