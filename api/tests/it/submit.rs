//! `POST /api/submit` end to end (DESIGN.md, "Ingestion"): what a 202 puts on `submissions`,
//! every refusal and its JSON, idempotent retries, 503 when the database cannot take the post,
//! group commit under concurrency over real TCP, and offer fields checked against the active
//! tree's schema.

use std::collections::HashSet;
use std::time::Duration;

use api::Api;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use pipeline::config::SubmitConfig;
use pipeline::message::Submission;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use uuid::Uuid;

// ---- helpers ----------------------------------------------------------------------------

/// A migrated database and a running app on it.
async fn start(pool: &PgPool, config: SubmitConfig) -> Api {
    pipeline::db::migrate(pool).await.expect("migrate");
    Api::start(pool.clone(), config, CancellationToken::new()).await.expect("api starts")
}

/// Creates site `name`; returns its API key.
async fn site(pool: &PgPool, name: &str) -> String {
    api::sites::create_site(pool, name).await.expect("site created").api_key
}

/// A valid lead's body with `changes` applied to its top-level keys (`null` removes a key).
fn lead_with(changes: Value) -> String {
    let mut lead = json!({
        "email": "Ann.Lee@Example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "phone": "(415) 555-2671",
        "fields": { "state": "CA", "age": 29 },
    });
    for (key, value) in changes.as_object().expect("changes are an object") {
        match value {
            Value::Null => lead.as_object_mut().expect("object").remove(key),
            value => lead.as_object_mut().expect("object").insert(key.clone(), value.clone()),
        };
    }
    lead.to_string()
}

fn lead() -> String {
    lead_with(json!({}))
}

/// An answer of the app.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn submission_id(&self) -> Uuid {
        assert_eq!(self.status, StatusCode::ACCEPTED, "{}", self.body);
        let id = self.body["submission_id"].as_str().expect("a submission_id string");
        id.parse().expect("submission_id is a UUID")
    }

    fn replayed(&self) -> bool {
        self.headers.get("idempotent-replayed").is_some_and(|v| v == "true")
    }

    /// The `field` of every entry of `errors`, sorted (empty when there is no `errors`).
    fn error_fields(&self) -> Vec<String> {
        let Some(errors) = self.body.get("errors") else { return Vec::new() };
        let mut fields: Vec<String> = errors
            .as_array()
            .expect("errors is a list")
            .iter()
            .map(|e| e["field"].as_str().expect("each error has a field").to_owned())
            .collect();
        fields.sort();
        fields
    }
}

/// Posts `body` to `/api/submit` with `Authorization: Bearer <key>` (if any),
/// `Content-Type: application/json` (unless `headers` has one) and `headers`.
async fn post(app: &Router, key: Option<&str>, body: impl Into<Body>, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::post("/api/submit");
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body.into()).expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
    Reply { status: parts.status, headers: parts.headers, body }
}

/// The messages on `submissions`, oldest first.
async fn queued(pool: &PgPool) -> Vec<Submission> {
    let bodies: Vec<Value> = sqlx::query_scalar("SELECT message FROM pgmq.q_submissions ORDER BY msg_id")
        .fetch_all(pool)
        .await
        .expect("read");
    bodies.into_iter().map(|b| serde_json::from_value(b).expect("a Submission")).collect()
}

async fn queue_len(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pgmq.q_submissions").fetch_one(pool).await.expect("count")
}

async fn idempotency_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM submit_idempotency").fetch_one(pool).await.expect("count")
}

/// The app served over real TCP on an ephemeral port.
struct Server {
    url: String,
    shutdown: CancellationToken,
    served: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(pool: &PgPool, config: SubmitConfig) -> Self {
        pipeline::db::migrate(pool).await.expect("migrate");
        let shutdown = CancellationToken::new();
        let api = Api::start(pool.clone(), config, shutdown.clone()).await.expect("api starts");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        let url = format!("http://{}/api/submit", listener.local_addr().expect("address"));
        let served = tokio::spawn(api.serve(listener, shutdown.clone()));
        Self { url, shutdown, served }
    }

    /// Shuts down and waits until every background task is done.
    async fn stop(self) {
        self.shutdown.cancel();
        let served = tokio::time::timeout(Duration::from_secs(30), self.served).await.expect("stops in time");
        served.expect("serve task").expect("served");
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

/// Posts `body` over TCP; returns the answer as a [`Reply`].
async fn post_tcp(client: &reqwest::Client, url: &str, key: &str, body: String, idempotency: Option<&str>) -> Reply {
    let mut request =
        client.post(url).bearer_auth(key).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
    if let Some(idempotency) = idempotency {
        request = request.header("idempotency-key", idempotency);
    }
    let response = request.send().await.expect("an answer");
    let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
    let mut headers = HeaderMap::new();
    if let Some(replayed) = response.headers().get("idempotent-replayed") {
        headers.insert("idempotent-replayed", replayed.to_str().expect("ASCII").parse().expect("value"));
    }
    let body = response.json().await.expect("JSON body");
    Reply { status, headers, body }
}

// ---- accepted posts ---------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn accepted_post_is_one_message_with_the_keys_site(pool: PgPool) {
    let api = start(&pool, SubmitConfig::default()).await;
    let key = site(&pool, "degreefinder").await;
    let site_id: Uuid =
        sqlx::query_scalar("SELECT id FROM sites WHERE name = 'degreefinder'").fetch_one(&pool).await.expect("site id");

    let reply = post(&api.router, Some(&key), lead(), &[("content-type", "application/json; charset=utf-8")]).await;
    assert_eq!(reply.body.as_object().map(|o| o.len()), Some(1), "only the id: {}", reply.body);
    let id = reply.submission_id();
    assert!(!reply.replayed());

    let messages = queued(&pool).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.submission_id, id);
    assert_eq!((message.site.as_str(), message.site_id), ("degreefinder", site_id));
    assert_eq!(message.email.as_deref(), Some("Ann.Lee@Example.com"), "keys travel as sent");
    assert_eq!(message.full_name.as_deref(), Some("Ann Lee"), "first_name + last_name");
    assert_eq!(message.phone.as_deref(), Some("(415) 555-2671"));
    assert_eq!(Value::Object(message.fields.clone()), json!({ "state": "CA", "age": 29 }));
}

#[sqlx::test(migrations = false)]
async fn any_two_identity_keys_are_enough(pool: PgPool) {
    let api = start(&pool, SubmitConfig::default()).await;
    let key = site(&pool, "degreefinder").await;
    let cases = [
        ("email + name", json!({ "phone": null })),
        ("email + phone", json!({ "first_name": null, "last_name": null })),
        ("name + phone", json!({ "email": null })),
        ("full_name", json!({ "first_name": null, "last_name": null, "full_name": "Ann Lee" })),
        ("last_name alone is a name", json!({ "first_name": null, "phone": null })),
        ("no fields", json!({ "fields": null })),
    ];
    let mut ids = Vec::new();
    for (case, changes) in cases {
        let reply = post(&api.router, Some(&key), lead_with(changes), &[]).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{case}: {}", reply.body);
        ids.push(reply.submission_id());
    }
    let queued: Vec<Uuid> = queued(&pool).await.iter().map(|m| m.submission_id).collect();
    assert_eq!(queued, ids);
}

// ---- refusals ---------------------------------------------------------------------------

/// One refused request and the answer it must get.
struct Case<'a> {
    case: &'a str,
    key: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    body: String,
    status: StatusCode,
    code: &'a str,
    /// The `errors[].field`s, sorted.
    fields: &'a [&'a str],
}

impl<'a> Case<'a> {
    fn new(case: &'a str, key: Option<&'a str>, body: String, status: StatusCode, code: &'a str) -> Self {
        Self { case, key, headers: Vec::new(), body, status, code, fields: &[] }
    }

    fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn fields(mut self, fields: &'a [&'a str]) -> Self {
        self.fields = fields;
        self
    }
}

#[sqlx::test(migrations = false)]
async fn every_refusal_answers_its_code_and_queues_nothing(pool: PgPool) {
    const LIMIT: usize = 1024;
    let config = SubmitConfig { max_body_bytes: LIMIT, site_key_ttl: Duration::ZERO, ..SubmitConfig::default() };
    let api = start(&pool, config).await;
    let key = site(&pool, "degreefinder").await;
    // A key that worked a moment ago: with no key cache, revoking it takes effect at once.
    let revoked = site(&pool, "oldsite").await;
    let before = post(&api.router, Some(&revoked), lead(), &[]).await.submission_id();
    api::sites::revoke_key(&pool, "oldsite").await.expect("revoked");
    let unknown = format!("ors_{}", "0".repeat(48));
    let padding = "x".repeat(LIMIT);
    let long_key = "k".repeat(256);

    let valid = Some(key.as_str());
    let unauthorized = |case, key| Case::new(case, key, lead(), StatusCode::UNAUTHORIZED, "unauthorized");
    let too_large = |case, body| Case::new(case, valid, body, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let unsupported =
        |case| Case::new(case, valid, lead(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let invalid = |case, changes: Value, fields| {
        Case::new(case, valid, lead_with(changes), StatusCode::UNPROCESSABLE_ENTITY, "invalid_submission")
            .fields(fields)
    };
    let cases = [
        Case::new("malformed JSON", valid, "{\"email\":".to_owned(), StatusCode::BAD_REQUEST, "malformed_json"),
        unauthorized("no Authorization header", None),
        unauthorized("wrong scheme", None).header("authorization", "Basic ZGVncmVlZmluZGVyOnNlY3JldA=="),
        unauthorized("unknown key", Some(unknown.as_str())),
        unauthorized("key without the ors_ prefix", Some("not-a-key")),
        unauthorized("revoked key", Some(revoked.as_str())),
        too_large("Content-Length over the limit", "{}".to_owned()).header("content-length", "100000"),
        too_large("body over the limit", lead_with(json!({ "fields": { "padding": padding } }))),
        unsupported("text/plain").header("content-type", "text/plain"),
        unsupported("empty Content-Type").header("content-type", ""),
        Case::new(
            "Idempotency-Key too long",
            valid,
            lead(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_idempotency_key",
        )
        .header("idempotency-key", &long_key),
        Case::new("not an object", valid, "[]".to_owned(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_submission")
            .fields(&[""]),
        invalid(
            "only an email",
            json!({ "first_name": null, "last_name": null, "phone": null }),
            &["full_name", "phone"],
        ),
        invalid("bad email", json!({ "email": "ann@" }), &["email"]),
        invalid("email without a domain", json!({ "email": "ann@localhost" }), &["email"]),
        invalid("bad phone", json!({ "phone": "12" }), &["phone"]),
        invalid("email not a string", json!({ "email": 42 }), &["email"]),
        invalid("unknown top-level key", json!({ "state": "CA" }), &["state"]),
        invalid("full_name and first_name", json!({ "full_name": "Ann Lee" }), &["first_name"]),
        invalid("fields not an object", json!({ "fields": ["CA"] }), &["fields"]),
        invalid("nested object in fields", json!({ "fields": { "address": { "zip": "94110" } } }), &["fields.address"]),
        invalid("list in fields", json!({ "fields": { "programs": ["mba"] } }), &["fields.programs"]),
        invalid("derived field site", json!({ "fields": { "site": "other" } }), &["fields.site"]),
        invalid(
            "derived field email_domain",
            json!({ "fields": { "email_domain": "x.com" } }),
            &["fields.email_domain"],
        ),
        invalid(
            "every problem at once",
            json!({ "email": "nope", "phone": "12", "extra": 1, "fields": { "submitted_hour": 3 } }),
            &["email", "extra", "fields.submitted_hour", "phone"],
        ),
    ];

    for c in cases {
        let reply = post(&api.router, c.key, c.body, &c.headers).await;
        assert_eq!((reply.status, reply.body["code"].as_str()), (c.status, Some(c.code)), "{}: {}", c.case, reply.body);
        assert!(reply.body["message"].is_string(), "{}: {}", c.case, reply.body);
        let expected: Vec<String> = c.fields.iter().map(|f| (*f).to_owned()).collect();
        assert_eq!(reply.error_fields(), expected, "{}: {}", c.case, reply.body);
        if c.status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                reply.headers.get(header::WWW_AUTHENTICATE).map(|v| v.as_bytes()),
                Some(&b"Bearer"[..]),
                "{}",
                c.case
            );
        }
        let queued: Vec<Uuid> = queued(&pool).await.iter().map(|m| m.submission_id).collect();
        assert_eq!(queued, [before], "{}: something was queued", c.case);
    }
    assert_eq!(idempotency_rows(&pool).await, 0);

    // The revoked site posts again with a rotated key.
    let rotated = api::sites::rotate_key(&pool, "oldsite").await.expect("rotated").api_key;
    post(&api.router, Some(&rotated), lead(), &[]).await.submission_id();
    assert_eq!(queue_len(&pool).await, 2);
}

// ---- idempotency ------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn a_retry_with_the_same_key_replays_the_first_answer(pool: PgPool) {
    let api = start(&pool, SubmitConfig::default()).await;
    let key = site(&pool, "degreefinder").await;
    let idempotency = [("idempotency-key", "lead-7f3a")];

    let first = post(&api.router, Some(&key), lead(), &idempotency).await;
    let second = post(&api.router, Some(&key), lead(), &idempotency).await;
    assert_eq!(first.submission_id(), second.submission_id());
    assert!(!first.replayed(), "the first answer is not a replay");
    assert!(second.replayed(), "the retry is marked: {:?}", second.headers);
    assert_eq!(queued(&pool).await.iter().map(|m| m.submission_id).collect::<Vec<_>>(), [first.submission_id()]);
    assert_eq!(idempotency_rows(&pool).await, 1);

    let other_body = lead_with(json!({ "fields": { "state": "NY" } }));
    let reused = post(&api.router, Some(&key), other_body, &idempotency).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reused.body);
    assert_eq!(reused.body["code"], "idempotency_key_reused");
    assert_eq!((queue_len(&pool).await, idempotency_rows(&pool).await), (1, 1));

    // A post without a key is a new submission every time.
    let plain = [post(&api.router, Some(&key), lead(), &[]).await, post(&api.router, Some(&key), lead(), &[]).await];
    assert_ne!(plain[0].submission_id(), plain[1].submission_id());
    assert_eq!((queue_len(&pool).await, idempotency_rows(&pool).await), (3, 1));
}

#[sqlx::test(migrations = false)]
async fn idempotency_keys_belong_to_one_site(pool: PgPool) {
    let api = start(&pool, SubmitConfig::default()).await;
    let sites =
        [("degreefinder", site(&pool, "degreefinder").await), ("nursingdegrees", site(&pool, "nursingdegrees").await)];
    let mut ids = Vec::new();
    for (_, key) in &sites {
        let reply = post(&api.router, Some(key), lead(), &[("idempotency-key", "shared-key")]).await;
        assert!(!reply.replayed(), "another site's key is not a retry");
        ids.push(reply.submission_id());
    }
    assert_ne!(ids[0], ids[1]);
    let messages: Vec<(Uuid, String)> = queued(&pool).await.into_iter().map(|m| (m.submission_id, m.site)).collect();
    assert_eq!(messages, [(ids[0], sites[0].0.to_owned()), (ids[1], sites[1].0.to_owned())]);
    assert_eq!(idempotency_rows(&pool).await, 2);
}

#[sqlx::test(migrations = false)]
async fn concurrent_retries_with_one_key_make_one_submission(pool: PgPool) {
    const POSTS: usize = 20;
    let server = Server::start(&pool, SubmitConfig::default()).await;
    let key = site(&pool, "degreefinder").await;
    let client = client();

    let mut posts = JoinSet::new();
    for _ in 0..POSTS {
        let (client, url, key) = (client.clone(), server.url.clone(), key.clone());
        posts.spawn(async move { post_tcp(&client, &url, &key, lead(), Some("retry-storm")).await });
    }
    let replies = posts.join_all().await;
    let ids: HashSet<Uuid> = replies.iter().map(Reply::submission_id).collect();
    assert_eq!(ids.len(), 1, "every post gets the same id: {ids:?}");
    assert_eq!(replies.iter().filter(|r| !r.replayed()).count(), 1, "exactly one answer is the original");
    assert_eq!(queued(&pool).await.iter().map(|m| m.submission_id).collect::<HashSet<_>>(), ids);
    assert_eq!((queue_len(&pool).await, idempotency_rows(&pool).await), (1, 1));

    drop(client);
    server.stop().await;
}

// ---- never 202 without the message ------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn a_failed_commit_answers_503_and_accepts_nothing(pool: PgPool) {
    let api = start(&pool, SubmitConfig::default()).await;
    let key = site(&pool, "degreefinder").await;
    let idempotency = [("idempotency-key", "lead-1")];
    sqlx::query("SELECT pgmq.drop_queue('submissions')").execute(&pool).await.expect("drop the queue");

    let reply = post(&api.router, Some(&key), lead(), &idempotency).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.body);
    assert_eq!(reply.body["code"], "unavailable");
    assert_eq!(reply.headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert_eq!(idempotency_rows(&pool).await, 0, "the key was rolled back with the message");

    // Once the queue is back, the client's retry is a first submission, not a replay.
    sqlx::query("SELECT pgmq.create('submissions')").execute(&pool).await.expect("recreate the queue");
    let retry = post(&api.router, Some(&key), lead(), &idempotency).await;
    assert!(!retry.replayed());
    assert_eq!(queued(&pool).await.iter().map(|m| m.submission_id).collect::<Vec<_>>(), [retry.submission_id()]);
}

#[sqlx::test(migrations = false)]
async fn database_down_answers_503(pool: PgPool) {
    // A non-zero key lifetime: the key is authenticated once, then served from the cache.
    let config = SubmitConfig { site_key_ttl: Duration::from_secs(600), ..SubmitConfig::default() };
    let api = start(&pool, config).await;
    let key = site(&pool, "degreefinder").await;
    let accepted = post(&api.router, Some(&key), lead(), &[]).await.submission_id();
    let inspect = PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("a second pool");

    pool.close().await;
    let unknown = format!("ors_{}", "0".repeat(48));
    for (case, key, idempotency) in [
        ("cached key", key.as_str(), None),
        ("cached key with Idempotency-Key", key.as_str(), Some("lead-9")),
        ("key that cannot be checked", unknown.as_str(), None),
    ] {
        let headers: Vec<(&str, &str)> = idempotency.map(|k| ("idempotency-key", k)).into_iter().collect();
        let reply = post(&api.router, Some(key), lead(), &headers).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{case}: {}", reply.body);
        assert_eq!(reply.body["code"], "unavailable", "{case}");
        assert!(reply.headers.contains_key(header::RETRY_AFTER), "{case}: {:?}", reply.headers);
    }

    assert_eq!(queued(&inspect).await.iter().map(|m| m.submission_id).collect::<Vec<_>>(), [accepted]);
    assert_eq!(idempotency_rows(&inspect).await, 0);
    inspect.close().await;
}

// ---- group commit -----------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn concurrent_posts_share_commits(pool: PgPool) {
    const POSTS: usize = 500;
    let server = Server::start(&pool, SubmitConfig::default()).await;
    let key = site(&pool, "degreefinder").await;
    let client = client();

    let mut posts = JoinSet::new();
    for n in 0..POSTS {
        let (client, url, key) = (client.clone(), server.url.clone(), key.clone());
        let body = lead_with(json!({ "fields": { "n": n } }));
        posts.spawn(async move { (n, post_tcp(&client, &url, &key, body, None).await) });
    }
    let replies = posts.join_all().await;
    let answered: HashSet<(u64, Uuid)> = replies.iter().map(|(n, reply)| (*n as u64, reply.submission_id())).collect();
    assert_eq!(answered.iter().map(|(_, id)| id).collect::<HashSet<_>>().len(), POSTS, "distinct ids");

    let queued: HashSet<(u64, Uuid)> =
        queued(&pool).await.iter().map(|m| (m.fields["n"].as_u64().expect("n"), m.submission_id)).collect();
    assert_eq!(queue_len(&pool).await, POSTS as i64);
    assert_eq!(queued, answered, "each answer's id is on the queue with its own body");

    // Every message a group sends is written by the group's one transaction.
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM pgmq.q_submissions")
        .fetch_one(&pool)
        .await
        .expect("count transactions");
    assert!(transactions < POSTS as i64 / 2, "{POSTS} posts took {transactions} commits");

    drop(client);
    server.stop().await;
}

// ---- the active tree's schema -----------------------------------------------------------

/// A manifest for three fields, written by hand in the compiler's format: `state` (enum),
/// `age` (integer 18..=99) and `veteran` (bool).
fn manifest() -> Value {
    let manifest = json!({
        "abi_version": runtime::abi::ABI_VERSION,
        "rule_set_hash": "0".repeat(64),
        "module_hash": "0".repeat(64),
        "compiler_version": "hand-written",
        "record_size": 24,
        "max_batch": 1,
        "output_offset": 24,
        "default_route": null,
        "fields": [
            { "name": "state", "slot": 0, "kind": "enum", "values": ["CA", "NY", "TX"] },
            { "name": "age", "slot": 4, "kind": "number", "value_offset": 16, "scale": 0, "min": 18, "max": 99 },
            { "name": "veteran", "slot": 8, "kind": "bool" },
        ],
        "rules": [{ "index": 0, "name": "california", "route": "acme", "target": "acme", "fallthrough": true, "priority": 0 }],
        "max_candidates": 1,
        "candidate_lists": [[], [0]],
    });
    let parsed: runtime::manifest::Manifest = serde_json::from_value(manifest.clone()).expect("a manifest");
    parsed.check().expect("a consistent manifest");
    manifest
}

#[sqlx::test(migrations = false)]
async fn offer_fields_are_checked_against_the_active_tree(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    sqlx::query(
        "INSERT INTO decision_trees (rules_version, wasm, manifest, report, active) VALUES (1, $1, $2, '{}', true)",
    )
    .bind(&[0u8][..])
    .bind(manifest())
    .execute(&pool)
    .await
    .expect("an active tree");
    // Started after the tree is active: the schema is read at start.
    let api = start(&pool, SubmitConfig::default()).await;
    let key = site(&pool, "degreefinder").await;

    let cases: [(&str, Value, &[&str]); 11] = [
        ("valid", json!({ "state": "CA", "age": 29, "veteran": true }), &[]),
        ("age as a numeric string", json!({ "state": "TX", "age": "45" }), &[]),
        ("null is missing", json!({ "state": null, "age": null }), &[]),
        ("extra fields pass through", json!({ "state": "NY", "utm_source": "google" }), &[]),
        ("state not a value", json!({ "state": "ZZ" }), &["fields.state"]),
        ("state not a string", json!({ "state": 5 }), &["fields.state"]),
        ("age under the domain", json!({ "age": 17 }), &["fields.age"]),
        ("age over the domain", json!({ "age": 100 }), &["fields.age"]),
        ("age not whole", json!({ "age": 29.5 }), &["fields.age"]),
        ("veteran not a bool", json!({ "veteran": "yes" }), &["fields.veteran"]),
        (
            "every problem at once",
            json!({ "state": "ZZ", "age": 200, "veteran": 1 }),
            &["fields.age", "fields.state", "fields.veteran"],
        ),
    ];
    let mut accepted = Vec::new();
    for (case, fields, problems) in cases {
        let reply = post(&api.router, Some(&key), lead_with(json!({ "fields": fields.clone() })), &[]).await;
        if problems.is_empty() {
            accepted.push((reply.submission_id(), fields));
        } else {
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{case}: {}", reply.body);
            assert_eq!(reply.body["code"], "invalid_submission", "{case}");
            let expected: Vec<String> = problems.iter().map(|p| (*p).to_owned()).collect();
            assert_eq!(reply.error_fields(), expected, "{case}: {}", reply.body);
        }
    }
    let queued: Vec<(Uuid, Value)> =
        queued(&pool).await.into_iter().map(|m| (m.submission_id, Value::Object(m.fields))).collect();
    assert_eq!(queued, accepted, "exactly the valid posts, fields as sent");
}
