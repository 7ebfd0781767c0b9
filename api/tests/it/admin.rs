//! The admin UI's server side on a real database: the page and its assets with their security
//! headers, sign-in with the admin token or a configured user (session cookie, CSRF token,
//! roles, sign-out), the audit log of every change, rules sent as a YAML file (findings at
//! their lines) and the rollback to a kept version.

use api::Api;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use pipeline::config::{AdminConfig, AdminRole, AdminUser, ApiConfig};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::rules::{TOKEN, call, example};

const EDITOR_PASSWORD: &str = "correct horse battery";
const VIEWER_PASSWORD: &str = "viewer password 42";

async fn start(pool: &PgPool) -> Router {
    pipeline::db::migrate(pool).await.expect("migrate");
    let users = vec![
        AdminUser {
            name: "erin".to_owned(),
            role: AdminRole::Editor,
            password_hash: api::hash_password(EDITOR_PASSWORD).expect("hash"),
        },
        AdminUser {
            name: "vic".to_owned(),
            role: AdminRole::Viewer,
            password_hash: api::hash_password(VIEWER_PASSWORD).expect("hash"),
        },
    ];
    let config = ApiConfig {
        admin_token: Some(TOKEN.to_owned()),
        admin: AdminConfig { users, ..AdminConfig::default() },
        ..Default::default()
    };
    Api::start(pool.clone(), config, CancellationToken::new()).await.expect("api starts").router
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response.into_body().collect().await.expect("body").to_bytes();
    Answer { status, headers, body }
}

/// A signed-in browser: its cookie and CSRF token.
struct Signed {
    cookie: String,
    csrf: String,
}

async fn sign_in(app: &Router, user: &str, password: &str) -> Answer {
    let request = Request::post("/admin/session")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "user": user, "password": password }).to_string()))
        .expect("request");
    send(app, request).await
}

async fn signed_in(app: &Router, user: &str, password: &str) -> Signed {
    let answer = sign_in(app, user, password).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let set_cookie = answer.headers[header::SET_COOKIE].to_str().expect("ascii").to_owned();
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    Signed { cookie, csrf: answer.json()["csrf_token"].as_str().expect("a CSRF token").to_owned() }
}

/// `method path` as the signed-in browser; `csrf`: whether the CSRF header goes along.
async fn as_session(app: &Router, who: &Signed, method: Method, path: &str, body: Option<Value>, csrf: bool) -> Answer {
    let mut request = Request::builder().method(method).uri(path).header(header::COOKIE, &who.cookie);
    if csrf {
        request = request.header("X-CSRF-Token", &who.csrf);
    }
    let body = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    send(app, request.body(body).expect("request")).await
}

async fn load_example(app: &Router) {
    let (status, body) = call(app, Method::PUT, "/api/rules", Some(example())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn audit(pool: &PgPool) -> Vec<(String, String, String, String, Option<i64>, Value)> {
    sqlx::query_as("SELECT actor, method, path, target, rules_version, detail FROM audit_log ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("audit log")
}

#[sqlx::test(migrations = false)]
async fn the_page_and_its_assets_are_served_with_a_strict_policy(pool: PgPool) {
    let app = start(&pool).await;
    let page = send(&app, Request::get("/admin").body(Body::empty()).expect("request")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers[header::CONTENT_TYPE].to_str().expect("ascii").starts_with("text/html"));
    let policy = page.headers[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let html = String::from_utf8(page.body.to_vec()).expect("UTF-8");
    assert!(html.contains("/admin/assets/js/app.js"), "{html}");

    let script = send(&app, Request::get("/admin/assets/js/app.js").body(Body::empty()).expect("request")).await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.headers[header::CONTENT_TYPE].to_str().expect("ascii").starts_with("text/javascript"));
    let chart =
        send(&app, Request::get("/admin/assets/vendor/uplot/uPlot.iife.min.js").body(Body::empty()).expect("r")).await;
    assert_eq!(chart.status, StatusCode::OK);
    let missing = send(&app, Request::get("/admin/assets/js/nope.js").body(Body::empty()).expect("request")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let root = send(&app, Request::get("/").body(Body::empty()).expect("request")).await;
    assert!(root.status.is_redirection());
    assert_eq!(root.headers[header::LOCATION], "/admin");
}

#[sqlx::test(migrations = false)]
async fn users_sign_in_with_a_session_cookie_and_changes_need_its_csrf_token(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app).await;

    // Wrong credentials, an unknown user, a form post: refused.
    assert_eq!(sign_in(&app, "erin", "wrong").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sign_in(&app, "nobody", EDITOR_PASSWORD).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sign_in(&app, "", "not the token").await.status, StatusCode::UNAUTHORIZED);
    let form = Request::post("/admin/session")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("user=erin&password={EDITOR_PASSWORD}")))
        .expect("request");
    assert_eq!(send(&app, form).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let answer = sign_in(&app, "erin", EDITOR_PASSWORD).await;
    assert_eq!(answer.status, StatusCode::OK);
    let cookie = answer.headers[header::SET_COOKIE].to_str().expect("ascii");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP without a TLS proxy: {cookie}");
    assert_eq!(answer.json()["role"], "editor");
    let erin = signed_in(&app, "erin", EDITOR_PASSWORD).await;

    // Reading needs only the cookie; a change without the CSRF token is refused.
    let session = as_session(&app, &erin, Method::GET, "/admin/session", None, false).await;
    assert_eq!(session.json()["user"], "erin");
    assert_eq!(as_session(&app, &erin, Method::GET, "/api/rules", None, false).await.status, StatusCode::OK);
    let no_csrf = as_session(&app, &erin, Method::POST, "/api/rules/df-texas-tech/disable", None, false).await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN);
    assert_eq!(no_csrf.json()["code"], "csrf");
    let wrong = Signed { cookie: erin.cookie.clone(), csrf: "0".repeat(64) };
    let wrong_csrf = as_session(&app, &wrong, Method::POST, "/api/rules/df-texas-tech/disable", None, true).await;
    assert_eq!(wrong_csrf.status, StatusCode::FORBIDDEN);
    let done = as_session(&app, &erin, Method::POST, "/api/rules/df-texas-tech/disable", None, true).await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);

    // Neither cookie nor token: 401.
    let anonymous = send(&app, Request::post("/api/rules/df-texas-tech/enable").body(Body::empty()).expect("r")).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Signing out ends the session for every later request.
    let out = as_session(&app, &erin, Method::DELETE, "/admin/session", None, true).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.headers[header::SET_COOKIE].to_str().expect("ascii").contains("Max-Age=0"));
    assert_eq!(as_session(&app, &erin, Method::GET, "/api/rules", None, false).await.status, StatusCode::UNAUTHORIZED);

    // Behind a TLS proxy the cookie is Secure; the admin token signs in as `admin-token`.
    let request = Request::post("/admin/session")
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Forwarded-Proto", "https")
        .body(Body::from(json!({ "password": TOKEN }).to_string()))
        .expect("request");
    let token = send(&app, request).await;
    assert_eq!(token.status, StatusCode::OK);
    assert!(token.headers[header::SET_COOKIE].to_str().expect("ascii").contains("; Secure"));
    assert_eq!(token.json()["user"], "admin-token");
}

#[sqlx::test(migrations = false)]
async fn a_viewer_reads_and_checks_but_changes_nothing(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app).await;
    let vic = signed_in(&app, "vic", VIEWER_PASSWORD).await;
    assert_eq!(as_session(&app, &vic, Method::GET, "/api/partners", None, false).await.status, StatusCode::OK);
    let check = as_session(&app, &vic, Method::POST, "/api/rules/check", Some(example()), true).await;
    assert_eq!(check.status, StatusCode::OK, "{:?}", check.body);
    let dry = as_session(&app, &vic, Method::PUT, "/api/rules?dry_run=true", Some(example()), true).await;
    assert_eq!(dry.status, StatusCode::OK, "{:?}", dry.body);
    for (method, path) in [
        (Method::POST, "/api/rules/df-texas-tech/disable"),
        (Method::PUT, "/api/rules"),
        (Method::POST, "/api/dlq/routing_dlq/replay"),
        (Method::POST, "/api/rules/versions/1/restore"),
    ] {
        let refused = as_session(&app, &vic, method.clone(), path, Some(example()), true).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(refused.json()["code"], "forbidden");
    }
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM rules WHERE name = 'df-texas-tech'")
        .fetch_one(&pool)
        .await
        .expect("rule");
    assert!(enabled, "the viewer's change did not happen");
}

#[sqlx::test(migrations = false)]
async fn every_change_is_in_the_audit_log_with_who_made_it(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app).await;
    let erin = signed_in(&app, "erin", EDITOR_PASSWORD).await;
    let disabled = as_session(&app, &erin, Method::POST, "/api/rules/df-texas-tech/disable", None, true).await;
    assert_eq!(disabled.status, StatusCode::OK);
    // Dry runs and checks change nothing and are not audited; a refused change is not either.
    let dry = as_session(&app, &erin, Method::PUT, "/api/rules?dry_run=true", Some(example()), true).await;
    assert_eq!(dry.status, StatusCode::OK);
    let invalid = as_session(&app, &erin, Method::PUT, "/api/rules", Some(json!({"rules": 5})), true).await;
    assert!(invalid.status.is_client_error());

    let entries = audit(&pool).await;
    let changes: Vec<(&str, &str, &str, &str, Option<i64>)> = entries
        .iter()
        .map(|(actor, method, path, target, version, _)| {
            (actor.as_str(), method.as_str(), path.as_str(), target.as_str(), *version)
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("admin-token", "PUT", "/api/rules", "rules", Some(1)),
            ("erin", "POST", "/admin/session", "sessions", None),
            ("erin", "POST", "/api/rules/df-texas-tech/disable", "rules", Some(2)),
        ]
    );
    // The JSON body of a small change is kept whole.
    assert_eq!(entries[0].5["body"]["default_route"], "unsold");

    let (status, listed) = call(&app, Method::GET, "/api/audit?target=rules&limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["entries"][0]["actor"], "erin");
    let next = listed["next"].as_i64().expect("a next page");
    let (_, older) = call(&app, Method::GET, &format!("/api/audit?target=rules&before={next}"), None).await;
    assert_eq!(older["entries"][0]["actor"], "admin-token");
    assert_eq!(older["next"], Value::Null);
}

#[sqlx::test(migrations = false)]
async fn a_yaml_rules_file_is_checked_as_written_and_findings_carry_their_lines(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app).await;
    let yaml = include_str!("../../../examples/rules.yaml");
    let broken = format!(
        "{yaml}\n  - name: ui-typo\n    priority: 1\n    when: site == \"degreefinder\" and age == \"old\"\n    route: unsold\n"
    );
    let when_line = broken.lines().position(|l| l.contains("age == \"old\"")).expect("the line") + 1;
    let send_yaml = |path: &'static str, method: Method, text: String| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/yaml")
            .body(Body::from(text))
            .expect("request");
        send(&app, request)
    };
    let dry = send_yaml("/api/rules?dry_run=true", Method::PUT, broken.clone()).await;
    assert_eq!(dry.status, StatusCode::OK, "{:?}", dry.body);
    let report = &dry.json()["report"];
    let finding =
        report["findings"].as_array().and_then(|f| f.iter().find(|f| f["code"] == "type")).expect("a type error");
    assert_eq!(finding["location"]["line"], when_line, "{finding}");
    assert!(finding["location"]["column"].as_u64().is_some_and(|c| c > 1), "{finding}");

    let check = send_yaml("/api/rules/check", Method::POST, broken.clone()).await;
    assert_eq!(check.json()["findings"][0]["location"]["line"], when_line);
    let refused = send_yaml("/api/rules", Method::PUT, broken).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.json()["code"], "invalid_rules");

    // Fixed, it saves as the document it reads as, with the impact against version 1.
    let fixed = format!(
        "{yaml}\n  - name: ui-typo\n    priority: 1\n    when: site == \"degreefinder\" and program == \"ui_test\"\n    route: westbrook_university\n"
    );
    let saved = send_yaml("/api/rules", Method::PUT, fixed).await;
    assert_eq!(saved.status, StatusCode::OK, "{:?}", saved.body);
    let saved = saved.json();
    assert_eq!(saved["version"], 2);
    // Every lead of the new rule's region moves to it, from each rule that had it: six pairs
    // (also from the degreefinder fallback's split, which is another route than Westbrook alone).
    let changes = saved["impact"]["changes"].as_array().expect("changes");
    assert_eq!(saved["impact"]["moves"], 6, "{}", saved["impact"]);
    assert!(changes.iter().all(|c| c["to"]["rule"] == "ui-typo" && c["witness"]["program"] == "ui_test"));
    let (_, stored) = call(&app, Method::GET, "/api/rules", None).await;
    assert_eq!(stored["rule_set"]["rules"][0]["name"], "ui-typo", "priority 1 sorts first");
    assert!(stored["yaml"].as_str().is_some_and(|y| y.contains("name: \"ui-typo\"")), "{}", stored["yaml"]);
}

#[sqlx::test(migrations = false)]
async fn rolling_back_saves_a_kept_version_again(pool: PgPool) {
    let app = start(&pool).await;
    load_example(&app).await;
    let (status, _) = call(&app, Method::POST, "/api/rules/df-texas-tech/disable", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, dry) = call(&app, Method::POST, "/api/rules/versions/1/restore?dry_run=true", None).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(pipeline::rules::version(&pool).await.expect("version"), 2, "a dry run saves nothing");

    let (status, restored) = call(&app, Method::POST, "/api/rules/versions/1/restore", None).await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(restored["version"], 3);
    assert_eq!(restored["impact"]["equivalent"], false, "re-enabling a rule moves leads back");
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM rules WHERE name = 'df-texas-tech'")
        .fetch_one(&pool)
        .await
        .expect("rule");
    assert!(enabled);
    let (status, missing) = call(&app, Method::POST, "/api/rules/versions/99/restore", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
}
