//! Who may use the admin API, and as whom: `Authorization: Bearer <admin token>` (the CLI, CI)
//! acts as the editor `admin-token`. Every admin request carries its [`Actor`] as a request
//! extension, so handlers can record who did what.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::submit::ApiError;

/// What an admin may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// Reads everything, changes nothing.
    #[allow(dead_code, reason = "signed-in viewers arrive with the admin UI")]
    Viewer,
    /// Reads and changes everything.
    Editor,
}

/// Who makes an admin request (a request extension behind [`require_admin`]).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Actor {
    /// The user's name; `admin-token` for the bearer token.
    pub(crate) name: String,
    /// What the user may do.
    pub(crate) role: Role,
}

/// Lets a request through only with the configured admin token, and hands it its [`Actor`].
pub(crate) async fn require_admin(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    match authorize(state.admin_token.as_deref(), request.headers()) {
        Ok(actor) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<Actor, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
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
        Ok(Actor { name: "admin-token".to_owned(), role: Role::Editor })
    } else {
        Err(unauthorized("wrong admin token"))
    }
}

/// Compares digests, so the time taken says nothing about how much of the secret matched.
pub(crate) fn same_secret(given: &str, secret: &str) -> bool {
    let (given, secret) = (Sha256::digest(given.as_bytes()), Sha256::digest(secret.as_bytes()));
    given.iter().zip(secret.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
