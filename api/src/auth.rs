//! Who may use the admin API, and as whom.
//!
//! Two ways in:
//! - `Authorization: Bearer <admin token>` (the CLI, CI, scripts): the editor `admin-token`.
//! - A session of the admin UI: `POST /admin/session` with `{"user", "password"}` (a user of
//!   `ADMIN_USERS_FILE`, or no user and the admin token as the password) sets an HttpOnly,
//!   `SameSite=Strict` cookie (`Secure` behind TLS) and answers the session's CSRF token.
//!   Every request that changes something must echo that token in `X-CSRF-Token`; sessions
//!   live in `admin_sessions` (only the cookie's SHA-256), so every replica knows them.
//!
//! Roles: a viewer reads everything and may check rules (`POST /api/rules/check`, dry runs)
//! but changes nothing (403 `forbidden`); an editor changes everything. Every change that
//! answers 2xx is written to `audit_log` by [`require_admin`] (who, what, when, the body when
//! small), after the change committed. Each admin request carries its [`Actor`] as a request
//! extension.
//!
//! Errors are JSON `{code, message}`: 401 `unauthorized`, 403 `csrf` / `forbidden`, 413
//! `too_large`, 415 `unsupported_media_type` (a sign-in that is not JSON).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, password_hash};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use pipeline::config::{AdminRole, AdminUser};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::AppState;
use crate::submit::ApiError;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "offer_router_session";
/// The header a session's changes carry their CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// The user name of the admin token, in sessions and the audit log.
const TOKEN_USER: &str = "admin-token";
/// Bodies up to this size are kept whole in the audit log; larger ones by size and digest.
const AUDIT_BODY_BYTES: usize = 64 * 1024;

/// Who makes an admin request (a request extension behind [`require_admin`]).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Actor {
    /// The user's name; `admin-token` for the bearer token.
    pub(crate) name: String,
    /// What the user may do.
    pub(crate) role: AdminRole,
}

/// The routes of signing in and out (`/admin/session`), outside the admin middleware.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/admin/session", get(current).post(sign_in).delete(sign_out))
}

// ---- passwords ---------------------------------------------------------------------------

/// The Argon2id hash of `password` in PHC form, with a new random salt: what a line of
/// `ADMIN_USERS_FILE` keeps.
pub fn hash_password(password: &str) -> Result<String, password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// Compares digests, so the time taken says nothing about how much of the secret matched.
pub(crate) fn same_secret(given: &str, secret: &str) -> bool {
    let (given, secret) = (Sha256::digest(given.as_bytes()), Sha256::digest(secret.as_bytes()));
    given.iter().zip(secret.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

// ---- sessions ----------------------------------------------------------------------------

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "admin session request failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
}

/// A signed-in session, as `admin_sessions` keeps it.
struct Session {
    actor: Actor,
    csrf: String,
    expires_at: DateTime<Utc>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The session of the request's cookie, if it is signed in: unexpired, and its user still
/// configured (with the role configured now).
async fn session(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    let Some(token) = cookie_token(headers) else { return Ok(None) };
    let row: Option<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT user_name, csrf_token, expires_at FROM admin_sessions WHERE token_hash = $1 AND expires_at > now()",
    )
    .bind(Sha256::digest(token.as_bytes()).as_slice())
    .fetch_optional(&state.pool)
    .await
    .map_err(internal)?;
    let Some((name, csrf, expires_at)) = row else { return Ok(None) };
    let role = if name == TOKEN_USER {
        state.admin_token.as_ref().map(|_| AdminRole::Editor)
    } else {
        state.admin.users.iter().find(|u| u.name == name).map(|u| u.role)
    };
    Ok(role.map(|role| Session { actor: Actor { name, role }, csrf, expires_at }))
}

/// The body of `POST /admin/session`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    /// Empty or missing: sign in with the admin token as the password.
    #[serde(default)]
    user: String,
    password: String,
}

fn session_answer(session: &Session) -> Value {
    json!({
        "user": session.actor.name,
        "role": session.actor.role,
        "csrf_token": session.csrf,
        "expires_at": session.expires_at,
    })
}

/// `GET /admin/session`: the signed-in session, or 401.
async fn current(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match session(&state, &headers).await {
        Ok(Some(session)) => Json(session_answer(&session)).into_response(),
        Ok(None) => unauthorized("not signed in").into_response(),
        Err(error) => error.into_response(),
    }
}

/// Whose credentials these are, if they are right.
async fn check_credentials(state: &AppState, given: SignIn) -> Option<Actor> {
    if given.user.is_empty() || given.user == TOKEN_USER {
        let token = state.admin_token.as_deref()?;
        return same_secret(&given.password, token)
            .then(|| Actor { name: TOKEN_USER.to_owned(), role: AdminRole::Editor });
    }
    let user: Option<AdminUser> = state.admin.users.iter().find(|u| u.name == given.user).cloned();
    // Verify against some hash even for an unknown user, so the time taken does not say
    // which names exist.
    let hash = user.as_ref().map_or_else(|| dummy_hash().to_owned(), |u| u.password_hash.clone());
    let password = given.password;
    let matches = tokio::task::spawn_blocking(move || password_matches(&hash, &password)).await.unwrap_or(false);
    user.filter(|_| matches).map(|u| Actor { name: u.name, role: u.role })
}

fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

/// `POST /admin/session` with `{"user", "password"}`: signs in, sets the cookie, answers the
/// session (with its CSRF token).
async fn sign_in(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    // A JSON body cannot be sent cross-site without a CORS preflight, which this API never
    // answers: no other site can sign a browser in.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "sign in with a JSON body")
            .into_response();
    }
    let Ok(given) = serde_json::from_slice::<SignIn>(&body) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send {\"user\": \"...\", \"password\": \"...\"}",
        )
        .into_response();
    };
    let Some(actor) = check_credentials(&state, given).await else {
        tracing::warn!("admin sign-in refused");
        return unauthorized("wrong user or password").into_response();
    };
    let (token, csrf) = (random_token(), random_token());
    let ttl = chrono::Duration::from_std(state.admin.session_ttl).unwrap_or_else(|_| chrono::Duration::hours(12));
    let expires_at = Utc::now() + ttl;
    let stored = async {
        let mut tx = state.pool.begin().await?;
        sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= now()").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO admin_sessions (token_hash, user_name, role, csrf_token, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(Sha256::digest(token.as_bytes()).as_slice())
            .bind(&actor.name)
            .bind(actor.role.as_str())
            .bind(&csrf)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        audit(&mut tx, &actor, &Method::POST, "/admin/session", "sessions", StatusCode::OK, None, json!({})).await?;
        tx.commit().await
    };
    if let Err(error) = stored.await {
        return internal(error).into_response();
    }
    tracing::info!(user = %actor.name, role = actor.role.as_str(), "admin signed in");
    let session = Session { actor, csrf, expires_at };
    let secure = state.admin.secure_cookies || behind_tls(&headers);
    let max_age = state.admin.session_ttl.as_secs();
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    with_cookie(Json(session_answer(&session)).into_response(), &cookie)
}

/// `DELETE /admin/session` (with the CSRF token): signs out and clears the cookie.
async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let session = match session(&state, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return unauthorized("not signed in").into_response(),
        Err(error) => return error.into_response(),
    };
    if let Err(error) = csrf_ok(&session, &headers) {
        return error.into_response();
    }
    let token = cookie_token(&headers).unwrap_or_default();
    let ended = async {
        let mut tx = state.pool.begin().await?;
        sqlx::query("DELETE FROM admin_sessions WHERE token_hash = $1")
            .bind(Sha256::digest(token.as_bytes()).as_slice())
            .execute(&mut *tx)
            .await?;
        let actor = &session.actor;
        audit(&mut tx, actor, &Method::DELETE, "/admin/session", "sessions", StatusCode::OK, None, json!({})).await?;
        tx.commit().await
    };
    if let Err(error) = ended.await {
        return internal(error).into_response();
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    with_cookie(StatusCode::NO_CONTENT.into_response(), &cookie)
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("https")))
}

fn csrf_ok(session: &Session, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !given.is_empty() && same_secret(given, &session.csrf) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "csrf", "a change needs the session's CSRF token in `X-CSRF-Token`"))
    }
}

// ---- the admin middleware ----------------------------------------------------------------

fn changes_nothing(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Requests that use a non-GET method but change nothing: checks and dry runs.
fn read_only(request: &Request) -> bool {
    let uri = request.uri();
    uri.path() == "/api/rules/check"
        || uri.query().is_some_and(|q| q.split('&').any(|pair| pair == "dry_run=true" || pair == "dry_run=1"))
}

/// What an audit entry's path is about: `rules`, `partners`, `dlq`...
fn target_of(path: &str) -> &str {
    path.strip_prefix("/api/").and_then(|rest| rest.split('/').next()).filter(|t| !t.is_empty()).unwrap_or("admin")
}

/// Lets a request through with the admin token or a signed-in session (and, for a session's
/// change, its CSRF token), as an editor if it changes something; hands it its [`Actor`]; and
/// writes each successful change to the audit log.
pub(crate) async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match admit(&state, request, next).await {
        Ok(response) | Err(response) => response,
    }
}

async fn admit(state: &AppState, mut request: Request, next: Next) -> Result<Response, Response> {
    let headers = request.headers();
    let actor = if headers.contains_key(header::AUTHORIZATION) {
        bearer(state.admin_token.as_deref(), headers).map_err(IntoResponse::into_response)?
    } else {
        let session = session(state, headers).await.map_err(IntoResponse::into_response)?.ok_or_else(|| {
            unauthorized("sign in at /admin, or send the admin token as `Authorization: Bearer <token>`")
                .into_response()
        })?;
        if !changes_nothing(request.method()) {
            csrf_ok(&session, headers).map_err(IntoResponse::into_response)?;
        }
        session.actor
    };
    let audited = !changes_nothing(request.method()) && !read_only(&request);
    if audited && actor.role != AdminRole::Editor {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("`{}` is a viewer: it cannot change anything", actor.name),
        )
        .into_response());
    }
    request.extensions_mut().insert(actor.clone());
    if !audited {
        return Ok(next.run(request).await);
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let (parts, body) = request.into_parts();
    let detail = {
        let limit = compiler::report::MAX_FILE_BYTES;
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the body is larger than {limit} bytes"))
                .into_response()
        })?;
        let detail = audit_detail(&parts.headers, parts.uri.query(), &bytes);
        request = Request::from_parts(parts, Body::from(bytes));
        detail
    };
    let response = next.run(request).await;
    let status = response.status();
    if status.is_success() {
        let target = target_of(&path);
        let recorded = async {
            let mut conn = state.pool.acquire().await?;
            let version = if target == "rules" { Some(pipeline::rules::version(&mut *conn).await?) } else { None };
            audit(&mut conn, &actor, &method, &path, target, status, version, detail).await?;
            Ok::<_, pipeline::Error>(())
        };
        if let Err(error) = recorded.await {
            tracing::error!(%error, %method, %path, actor = %actor.name, "cannot write the audit log after a change");
        }
    }
    Ok(response)
}

/// The body of a change as the audit log keeps it: JSON bodies up to 64 KiB whole, others by
/// size and SHA-256.
fn audit_detail(headers: &HeaderMap, query: Option<&str>, body: &Bytes) -> Value {
    let mut detail = json!({});
    if let Some(query) = query {
        detail["query"] = json!(query);
    }
    if body.is_empty() {
        return detail;
    }
    let small_json = (body.len() <= AUDIT_BODY_BYTES).then(|| serde_json::from_slice::<Value>(body).ok()).flatten();
    match small_json {
        Some(value) => detail["body"] = value,
        None => {
            let digest: String = Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect();
            let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            detail["body_bytes"] = json!(body.len());
            detail["body_sha256"] = json!(digest);
            detail["content_type"] = json!(kind);
        }
    }
    detail
}

/// Writes one audit entry.
#[allow(clippy::too_many_arguments, reason = "one column each")]
async fn audit(
    conn: &mut sqlx::PgConnection,
    actor: &Actor,
    method: &Method,
    path: &str,
    target: &str,
    status: StatusCode,
    rules_version: Option<i64>,
    detail: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, role, method, path, target, status, rules_version, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&actor.name)
    .bind(actor.role.as_str())
    .bind(method.as_str())
    .bind(path)
    .bind(target)
    .bind(i32::from(status.as_u16()))
    .bind(rules_version)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

fn bearer(token: Option<&str>, headers: &HeaderMap) -> Result<Actor, ApiError> {
    let Some(token) = token else {
        return Err(unauthorized("the admin API is off: no admin token is configured"));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| unauthorized("send the admin token as `Authorization: Bearer <token>`"))?;
    if same_secret(given, token) {
        Ok(Actor { name: TOKEN_USER.to_owned(), role: AdminRole::Editor })
    } else {
        Err(unauthorized("wrong admin token"))
    }
}

// ---- the audit log -----------------------------------------------------------------------

/// `GET /api/audit?target=&actor=&before=<id>&limit=50`: the newest entries first.
pub(crate) async fn audit_log(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(axum::extract::Query(query)) = query else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad query string: use target, actor, before, limit",
        )
        .into_response();
    };
    match read_audit(&state.pool, &query).await {
        Ok(entries) => {
            let limit = query.limit();
            let next = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e.id)).flatten();
            Json(json!({ "entries": entries, "next": next })).into_response()
        }
        Err(error) => internal(error).into_response(),
    }
}

/// The filters of `GET /api/audit`.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    target: Option<String>,
    actor: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

impl AuditQuery {
    fn limit(&self) -> i64 {
        self.limit.unwrap_or(50).clamp(1, 500)
    }
}

/// One audit entry.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct AuditEntry {
    id: i64,
    at: DateTime<Utc>,
    actor: String,
    role: String,
    method: String,
    path: String,
    target: String,
    status: i32,
    rules_version: Option<i64>,
    detail: Value,
}

async fn read_audit(pool: &PgPool, query: &AuditQuery) -> Result<Vec<AuditEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor, role, method, path, target, status, rules_version, detail FROM audit_log
         WHERE ($1::text IS NULL OR target = $1) AND ($2::text IS NULL OR actor = $2) AND ($3::bigint IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(query.target.as_deref().filter(|t| !t.is_empty()))
    .bind(query.actor.as_deref().filter(|a| !a.is_empty()))
    .bind(query.before)
    .bind(query.limit())
    .fetch_all(pool)
    .await
}
