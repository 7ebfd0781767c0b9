//! The admin UI at `/admin`: a page and its scripts and styles, compiled into the binary from
//! `api/admin/` (no build step, no network at build or run time). The page is a small
//! client of the admin API (`/api/...`), signed in through `/admin/session` (see `auth`);
//! its views are addressed by the URL fragment (`/admin#/rules`), so the server serves one
//! page. `GET /` leads to it.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles only from this
//! origin, no framing), `nosniff` and no referrer.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;

/// One embedded file: its path under `/admin/assets/`, its media type, its bytes.
struct Asset {
    path: &'static str,
    media_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $media_type:expr) => {
        Asset {
            path: $path,
            media_type: $media_type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/admin/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The page's files, besides `index.html`.
static ASSETS: &[Asset] = &[
    asset!("admin.css", CSS),
    asset!("js/app.js", JS),
    asset!("js/ui.js", JS),
    asset!("js/editor.js", JS),
    asset!("js/rules.js", JS),
    asset!("js/partners.js", JS),
    asset!("js/dlq.js", JS),
    asset!("js/leads.js", JS),
    asset!("js/dashboard.js", JS),
    asset!("js/audit.js", JS),
    asset!("vendor/uplot/uPlot.iife.min.js", JS),
    asset!("vendor/uplot/uPlot.min.css", CSS),
];

static INDEX: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/admin/index.html"));

/// The UI's routes (public: the page signs in through the API).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/admin") }))
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/assets/{*path}", get(asset))
}

async fn index() -> Response {
    secured(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response())
}

async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => secured(([(header::CONTENT_TYPE, asset.media_type)], asset.bytes).into_response()),
        None => secured((StatusCode::NOT_FOUND, "no such file").into_response()),
    }
}

/// The UI's security headers; `no-cache`: the browser revalidates, so an upgrade is seen at
/// the next load.
fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed: [(header::HeaderName, &'static str); 5] = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_listed_once_and_typed_by_its_extension() {
        for (i, asset) in ASSETS.iter().enumerate() {
            assert!(!asset.bytes.is_empty(), "{} is empty", asset.path);
            assert!(ASSETS[..i].iter().all(|a| a.path != asset.path), "{} twice", asset.path);
            let expected = if asset.path.ends_with(".js") { JS } else { CSS };
            assert_eq!(asset.media_type, expected, "{}", asset.path);
        }
    }

    #[test]
    fn every_file_of_the_folder_is_served() {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("read api/admin") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    out.push(path.strip_prefix(root).expect("inside").to_string_lossy().into_owned());
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("admin");
        let mut files = Vec::new();
        walk(&root, &root, &mut files);
        for file in files {
            let kept = file == "index.html" || file.ends_with("LICENSE") || file.ends_with(".md");
            assert!(kept || ASSETS.iter().any(|a| a.path == file), "api/admin/{file} is not in ASSETS");
        }
    }
}
