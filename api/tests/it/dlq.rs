//! The admin dead-letter API end to end: the admin token, listing the DLQs and their letters
//! (made by a real consumer), showing one, replaying one and all, and the 404 / 422 answers.

use api::Api;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use pipeline::config::{ApiConfig, ConsumerConfig};
use pipeline::consumer::{Consumer, Envelope, Handler, Outcome};
use pipeline::queue::{self, QueueName};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const TOKEN: &str = "t";

/// Dead-letters every message at once.
struct Refuse;

impl Handler for Refuse {
    type Message = Value;
    type Error = std::convert::Infallible;

    async fn handle(
        &self,
        _tx: &mut PgConnection,
        batch: &[Envelope<Value>],
    ) -> Result<Vec<Outcome>, std::convert::Infallible> {
        Ok(batch.iter().map(|_| Outcome::DeadLetter("cannot identify".to_owned())).collect())
    }
}

/// A migrated database with three letters in `submissions_dlq` (from `{"n": 0}`, `{"n": 1}`,
/// `{"n": 2}`), and the app on it; returns the app and the letters' ids.
async fn start(pool: &PgPool) -> (Router, Vec<i64>) {
    pipeline::db::migrate(pool).await.expect("migrate");
    let submissions = QueueName::new("submissions").expect("queue name");
    let messages: Vec<Value> = (0..3).map(|n| json!({ "n": n })).collect();
    queue::send_batch(pool, &submissions, &messages).await.expect("send");
    let config = ConsumerConfig::new("identify", submissions).expect("config");
    let report = Consumer::new(pool.clone(), config, Refuse).run_once().await.expect("batch");
    assert_eq!(report.dead_lettered, 3, "{report:?}");
    let ids = sqlx::query_scalar("SELECT msg_id FROM pgmq.q_submissions_dlq ORDER BY msg_id")
        .fetch_all(pool)
        .await
        .expect("ids");
    let config = ApiConfig { admin_token: Some(TOKEN.into()), ..Default::default() };
    let app = Api::start(pool.clone(), config, CancellationToken::new()).await.expect("api starts").router;
    (app, ids)
}

/// Sends `method path` with `token` as bearer (if any) and `body` as the raw body (if any).
async fn send(
    app: &Router,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
    let response = app.clone().oneshot(request.body(body).expect("request")).await.expect("infallible");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
    (status, body)
}

async fn get(app: &Router, path: &str) -> (StatusCode, Value) {
    send(app, Some(TOKEN), Method::GET, path, None).await
}

async fn replay(app: &Router, dlq: &str, body: Value) -> (StatusCode, Value) {
    send(app, Some(TOKEN), Method::POST, &format!("/api/dlq/{dlq}/replay"), Some(&body.to_string())).await
}

/// `(message, read_ct)` of every message in `submissions`, oldest first.
async fn submissions(pool: &PgPool) -> Vec<(Value, i32)> {
    sqlx::query_as("SELECT message, read_ct FROM pgmq.q_submissions ORDER BY msg_id")
        .fetch_all(pool)
        .await
        .expect("queue contents")
}

#[sqlx::test(migrations = false)]
async fn the_admin_token_is_required(pool: PgPool) {
    let (app, ids) = start(&pool).await;
    let show = format!("/api/dlq/submissions_dlq/{}", ids[0]);
    for (method, path) in [
        (Method::GET, "/api/dlq"),
        (Method::GET, "/api/dlq/submissions_dlq"),
        (Method::GET, show.as_str()),
        (Method::POST, "/api/dlq/submissions_dlq/replay"),
    ] {
        for token in [None, Some("wrong")] {
            let (status, body) = send(&app, token, method.clone(), path, Some(r#"{"all": true}"#)).await;
            assert_eq!((status, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{path}");
        }
    }
    assert!(submissions(&pool).await.is_empty(), "nothing replayed");
}

#[sqlx::test(migrations = false)]
async fn queues_letters_and_one_letter_are_listed(pool: PgPool) {
    let (app, ids) = start(&pool).await;

    let (status, body) = get(&app, "/api/dlq").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!([
            { "queue": "routing_dlq", "source": "routing", "length": 0 },
            { "queue": "submissions_dlq", "source": "submissions", "length": 3 },
        ])
    );

    let (status, body) = get(&app, "/api/dlq/submissions_dlq").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["queue"], "submissions_dlq");
    let letters = body["letters"].as_array().expect("letters");
    let listed: Vec<i64> = letters.iter().map(|l| l["msg_id"].as_i64().expect("msg_id")).collect();
    assert_eq!(listed, ids, "oldest first");
    let envelope = &letters[0]["envelope"];
    assert_eq!(envelope["message"], json!({ "n": 0 }));
    assert_eq!(envelope["error"], "cannot identify");
    assert_eq!(
        (&envelope["worker"], &envelope["queue"], &envelope["attempts"]),
        (&json!("identify"), &json!("submissions"), &json!(1))
    );

    let (_, body) = get(&app, "/api/dlq/submissions_dlq?limit=2").await;
    assert_eq!(body["letters"].as_array().map(Vec::len), Some(2));
    let (status, body) = get(&app, "/api/dlq/submissions_dlq?limit=0").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));

    let (status, body) = get(&app, &format!("/api/dlq/submissions_dlq/{}", ids[1])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["msg_id"], ids[1]);
    assert_eq!(body["envelope"]["message"], json!({ "n": 1 }));
    assert_eq!(body["raw"], body["envelope"]);
}

#[sqlx::test(migrations = false)]
async fn unknown_queues_and_letters_are_404_and_other_queues_422(pool: PgPool) {
    let (app, _) = start(&pool).await;
    for path in
        ["/api/dlq/nope_dlq", "/api/dlq/nope_dlq/1", "/api/dlq/submissions_dlq/999", "/api/dlq/submissions_dlq/x"]
    {
        let (status, body) = get(&app, path).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{path}: {body}");
    }
    let (status, body) = replay(&app, "nope_dlq", json!({ "all": true })).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = replay(&app, "submissions_dlq", json!({ "msg_id": 999 })).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{body}");

    for path in ["/api/dlq/submissions", "/api/dlq/Not-A-Queue", "/api/dlq/compile/1"] {
        let (status, body) = get(&app, path).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("not_a_dlq")), "{path}");
    }
    let (status, body) = replay(&app, "submissions", json!({ "all": true })).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("not_a_dlq")));

    for bad in [json!({}), json!({ "msg_id": 1, "all": true }), json!({ "all": false }), json!({ "every": true })] {
        let (status, body) = replay(&app, "submissions_dlq", bad.clone()).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body")), "{bad}");
    }
    let path = "/api/dlq/submissions_dlq/replay";
    let (status, body) = send(&app, Some(TOKEN), Method::POST, path, Some("{not json")).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_json")));
    assert!(submissions(&pool).await.is_empty(), "nothing replayed");
}

#[sqlx::test(migrations = false)]
async fn letters_replay_one_and_all(pool: PgPool) {
    let (app, ids) = start(&pool).await;
    let stray = queue::send(&pool, &QueueName::new("submissions_dlq").expect("name"), &json!({ "by": "hand" }))
        .await
        .expect("send");

    let (status, body) = replay(&app, "submissions_dlq", json!({ "msg_id": ids[2] })).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({ "replayed": 1, "skipped": [] })));
    assert_eq!(submissions(&pool).await, [(json!({ "n": 2 }), 0)], "a fresh message");
    let (status, _) = get(&app, &format!("/api/dlq/submissions_dlq/{}", ids[2])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "gone from the DLQ");

    let (status, body) = replay(&app, "submissions_dlq", json!({ "all": true })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({ "replayed": 2, "skipped": [{ "msg_id": stray, "reason": "not a dead-letter envelope" }] })
    );
    assert_eq!(submissions(&pool).await, [(json!({ "n": 2 }), 0), (json!({ "n": 0 }), 0), (json!({ "n": 1 }), 0)]);

    let (_, body) = get(&app, "/api/dlq/submissions_dlq").await;
    let left: Vec<i64> =
        body["letters"].as_array().expect("letters").iter().map(|l| l["msg_id"].as_i64().expect("id")).collect();
    assert_eq!(left, [stray], "only the stray is left");
    let (_, body) = get(&app, "/api/dlq").await;
    assert_eq!(body[1], json!({ "queue": "submissions_dlq", "source": "submissions", "length": 1 }));
}

async fn discard(app: &Router, dlq: &str, body: Value) -> (StatusCode, Value) {
    send(app, Some(TOKEN), Method::POST, &format!("/api/dlq/{dlq}/discard"), Some(&body.to_string())).await
}

#[sqlx::test(migrations = false)]
async fn a_selection_is_replayed_and_letters_are_discarded_with_a_reason_and_kept(pool: PgPool) {
    let (app, ids) = start(&pool).await;

    // A selection: two of the three letters, and one that is not there.
    let (status, body) = replay(&app, "submissions_dlq", json!({ "msg_ids": [ids[0], ids[2]] })).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({ "replayed": 2, "skipped": [] })));
    assert_eq!(submissions(&pool).await, [(json!({ "n": 0 }), 0), (json!({ "n": 2 }), 0)]);
    let (status, body) = replay(&app, "submissions_dlq", json!({ "msg_ids": [ids[0]] })).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{body}");

    // Discarding needs a reason; an empty selection or two selections are refused.
    for body in [
        json!({ "all": true }),
        json!({ "all": true, "reason": "  " }),
        json!({ "msg_ids": [], "reason": "x" }),
        json!({ "all": true, "msg_id": ids[1], "reason": "x" }),
    ] {
        let (status, answer) = discard(&app, "submissions_dlq", body.clone()).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body")),
            "{body}"
        );
    }
    let (status, answer) = replay(&app, "submissions_dlq", json!({ "all": true, "reason": "no" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");

    let (status, body) = discard(&app, "submissions_dlq", json!({ "msg_id": ids[1], "reason": "test traffic" })).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({ "discarded": 1, "missing": [] })));
    let (_, left) = get(&app, "/api/dlq/submissions_dlq").await;
    assert_eq!(left["letters"], json!([]), "the DLQ is empty");
    let (status, kept) = get(&app, "/api/dlq/discarded?queue=submissions_dlq").await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    let letter = &kept["letters"][0];
    assert_eq!(
        (&letter["msg_id"], &letter["reason"], &letter["actor"]),
        (&json!(ids[1]), &json!("test traffic"), &json!("admin-token"))
    );
    assert_eq!(letter["message"]["message"], json!({ "n": 1 }), "the letter is kept whole: {letter}");
    assert_eq!(letter["message"]["error"], json!("cannot identify"));
    let (_, again) = discard(&app, "submissions_dlq", json!({ "msg_ids": [ids[1]], "reason": "twice" })).await;
    assert_eq!(again, json!({ "discarded": 0, "missing": [ids[1]] }), "a letter is discarded once");

    // The audit log names the discard with its reason.
    let (_, audit) = get(&app, "/api/audit?target=dlq").await;
    let entry =
        audit["entries"].as_array().and_then(|e| e.iter().find(|e| e["detail"]["body"]["reason"] == "test traffic"));
    let entry = entry.unwrap_or_else(|| panic!("no audit entry of the discard: {audit}"));
    assert_eq!((&entry["path"], &entry["actor"]), (&json!("/api/dlq/submissions_dlq/discard"), &json!("admin-token")));
}
