//! A mock partner HTTP server for the deliver tests and the demo: per-route behaviour
//! switchable at run time (in process or with `PUT /control/{route}`), and a record of
//! every call.
//!
//! Routes:
//! - `POST /partners/{route}/leads` (any body) answers per the route's [`Behaviour`];
//! - `GET /control/{route}` returns `{"calls": n, "behaviour": {...}}`;
//! - `PUT /control/{route}` with a [`Behaviour`] as JSON switches it and returns the same.
//!
//! For example: `curl -X PUT localhost:PORT/control/acme -d '{"mode":"server_error"}'
//! -H 'content-type: application/json'`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How the mock answers `POST /partners/{route}/leads`. JSON: `{"mode": "accept"}`,
/// `{"mode": "too_many_requests", "retry_after_secs": 30}`, and so on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Behaviour {
    /// 200 `{"status":"accepted","id":"mock-<n>"}`.
    #[default]
    Accept,
    /// 200 `{"status":"rejected","reason":"..."}`.
    Reject,
    /// 409 `{"status":"duplicate"}`.
    Duplicate,
    /// 500 `{"status":"error"}`.
    ServerError,
    /// 429 with a `Retry-After` header of `retry_after_secs`.
    TooManyRequests {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// Sleeps `delay_ms`, then accepts (for client timeouts).
    Slow {
        /// How long to wait before answering, in milliseconds.
        delay_ms: u64,
    },
    /// No HTTP answer at all: the server reads the request, then shuts the TCP socket down
    /// without writing a byte, so the client sees a connection-level error ("connection
    /// closed before message completed"), never a status. A true `ECONNREFUSED` is not
    /// possible per route, as all routes share one listening socket.
    Refuse,
    /// One behaviour per call since the last `set`, then the last one repeats; an empty
    /// sequence accepts. A struct variant because serde's internal tagging cannot carry a
    /// bare list: `{"mode":"sequence","steps":[{"mode":"server_error"},{"mode":"accept"}]}`.
    Sequence {
        /// The behaviours, in call order.
        steps: Vec<Behaviour>,
    },
}

impl Behaviour {
    /// The behaviour for the `n`th call (from 0) since it was set; never a `Sequence`.
    fn pick(&self, n: usize) -> &Behaviour {
        match self {
            Behaviour::Sequence { steps } => match steps.get(n).or(steps.last()) {
                // A nested sequence in the last place runs once the outer one is used up.
                Some(step) => step.pick(n.saturating_sub(steps.len() - 1)),
                None => &Behaviour::Accept,
            },
            other => other,
        }
    }
}

/// One call the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request headers by lowercase name; repeated headers joined with `", "`.
    pub headers: HashMap<String, String>,
    /// The body, as text (lossy UTF-8).
    pub body: String,
    /// When the call arrived.
    pub at: Instant,
}

/// A route's behaviour and record.
#[derive(Debug, Default)]
struct RouteState {
    behaviour: Behaviour,
    /// Calls since the behaviour was set: the position in a `Sequence`.
    since_set: usize,
    requests: Vec<Recorded>,
    idempotency_keys: HashMap<String, usize>,
}

/// State shared by the handle and the server task.
#[derive(Debug)]
struct Shared {
    routes: Mutex<HashMap<String, RouteState>>,
    accepted: AtomicU64,
    cancel: CancellationToken,
}

impl Shared {
    fn routes(&self) -> MutexGuard<'_, HashMap<String, RouteState>> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters to a mock, so a poisoned lock is used as is.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a call and returns the behaviour to answer it with.
    fn record(&self, route: &str, headers: &HeaderMap, body: &[u8]) -> Behaviour {
        let mut recorded = HashMap::<String, String>::new();
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            recorded
                .entry(name.as_str().to_owned())
                .and_modify(|v| *v = format!("{v}, {value}"))
                .or_insert_with(|| value.into_owned());
        }
        let mut routes = self.routes();
        let state = routes.entry(route.to_owned()).or_default();
        let behaviour = state.behaviour.pick(state.since_set).clone();
        state.since_set += 1;
        if let Some(key) = recorded.get("idempotency-key") {
            *state.idempotency_keys.entry(key.clone()).or_default() += 1;
        }
        state.requests.push(Recorded {
            headers: recorded,
            body: String::from_utf8_lossy(body).into_owned(),
            at: Instant::now(),
        });
        behaviour
    }

    fn control(&self, route: &str) -> serde_json::Value {
        let routes = self.routes();
        let state = routes.get(route);
        json!({
            "calls": state.map_or(0, |s| s.requests.len()),
            "behaviour": state.map(|s| s.behaviour.clone()).unwrap_or_default(),
        })
    }

    fn set(&self, route: &str, behaviour: Behaviour) {
        let mut routes = self.routes();
        let state = routes.entry(route.to_owned()).or_default();
        state.behaviour = behaviour;
        state.since_set = 0;
    }

    fn accepted(&self) -> Response {
        let id = self.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        Json(json!({"status": "accepted", "id": format!("mock-{id}")})).into_response()
    }
}

/// Per-connection info: a duplicate of the connection's socket, so a handler can shut the
/// connection down (`Refuse`). `None` if the descriptor could not be duplicated.
#[derive(Debug, Clone)]
struct Conn(Option<Arc<std::net::TcpStream>>);

impl Connected<IncomingStream<'_, TcpListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        match stream.io().as_fd().try_clone_to_owned() {
            Ok(fd) => Conn(Some(Arc::new(std::net::TcpStream::from(fd)))),
            Err(error) => {
                tracing::warn!(%error, "mock partner: cannot duplicate a socket; `refuse` will answer 500");
                Conn(None)
            }
        }
    }
}

/// A running mock partner; stops serving when shut down or dropped.
#[derive(Debug)]
pub struct MockPartner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    _stop_on_drop: DropGuard,
}

impl MockPartner {
    /// Binds `addr` (`127.0.0.1:0` for a free port) and serves in a background task.
    pub async fn start(addr: SocketAddr) -> io::Result<MockPartner> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared { routes: Mutex::default(), accepted: AtomicU64::new(0), cancel: cancel.clone() });
        let app = Router::new()
            .route("/partners/{route}/leads", post(partner_call))
            .route("/control/{route}", get(get_control).put(put_control))
            .with_state(Arc::clone(&shared));
        let serve = axum::serve(listener, app.into_make_service_with_connect_info::<Conn>())
            .with_graceful_shutdown(cancel.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            if let Err(error) = serve.await {
                tracing::warn!(%error, "mock partner stopped");
            }
        });
        Ok(MockPartner { addr, shared, task, _stop_on_drop: cancel.drop_guard() })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}/partners/{route}/leads`: where a partner's leads go.
    pub fn url(&self, route: &str) -> String {
        format!("http://{}/partners/{route}/leads", self.addr)
    }

    /// `http://{addr}/control/{route}`: where a demo reads or switches the behaviour.
    pub fn control_url(&self, route: &str) -> String {
        format!("http://{}/control/{route}", self.addr)
    }

    /// Switches `route` to `behaviour`; a `Sequence` starts over from its first step.
    pub fn set(&self, route: &str, behaviour: Behaviour) {
        self.shared.set(route, behaviour);
    }

    /// The behaviour `route` is set to (`Accept` if never set).
    pub fn behaviour(&self, route: &str) -> Behaviour {
        self.shared.routes().get(route).map(|s| s.behaviour.clone()).unwrap_or_default()
    }

    /// How many calls `route` received since the start or the last [`reset`](Self::reset).
    pub fn calls(&self, route: &str) -> usize {
        self.shared.routes().get(route).map_or(0, |s| s.requests.len())
    }

    /// The calls `route` received, oldest first.
    pub fn requests(&self, route: &str) -> Vec<Recorded> {
        self.shared.routes().get(route).map(|s| s.requests.clone()).unwrap_or_default()
    }

    /// How many calls `route` received per `Idempotency-Key` header value.
    pub fn idempotency_keys(&self, route: &str) -> HashMap<String, usize> {
        let routes = self.shared.routes();
        routes.get(route).map(|s| s.idempotency_keys.clone()).unwrap_or_default()
    }

    /// Forgets every recorded call and restarts sequences; behaviours stay as set.
    pub fn reset(&self) {
        for state in self.shared.routes().values_mut() {
            state.requests.clear();
            state.idempotency_keys.clear();
            state.since_set = 0;
        }
    }

    /// Stops accepting, lets in-flight calls finish (`Slow` ones answer 503 at once) and
    /// waits for the server task.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "mock partner task failed");
        }
    }
}

async fn partner_call(
    State(shared): State<Arc<Shared>>,
    Path(route): Path<String>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let error = |status: StatusCode, body| (status, Json(body)).into_response();
    match shared.record(&route, &headers, &body) {
        // `record` never yields a `Sequence`.
        Behaviour::Accept | Behaviour::Sequence { .. } => shared.accepted(),
        Behaviour::Reject => Json(json!({
            "status": "rejected",
            "reason": "the mock partner rejects this lead",
        }))
        .into_response(),
        Behaviour::Duplicate => error(StatusCode::CONFLICT, json!({"status": "duplicate"})),
        Behaviour::ServerError => error(StatusCode::INTERNAL_SERVER_ERROR, json!({"status": "error"})),
        Behaviour::TooManyRequests { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after_secs.to_string())],
            Json(json!({"status": "too_many_requests"})),
        )
            .into_response(),
        Behaviour::Slow { delay_ms } => tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(delay_ms)) => shared.accepted(),
            () = shared.cancel.cancelled() => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        },
        Behaviour::Refuse => match conn.0 {
            Some(socket) => {
                if let Err(error) = socket.shutdown(std::net::Shutdown::Both) {
                    tracing::warn!(%error, "mock partner: cannot shut a connection down");
                }
                // Never reaches the client: writing to the shut socket fails and hyper drops
                // the connection.
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
            None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
    }
}

async fn get_control(State(shared): State<Arc<Shared>>, Path(route): Path<String>) -> Response {
    Json(shared.control(&route)).into_response()
}

async fn put_control(
    State(shared): State<Arc<Shared>>,
    Path(route): Path<String>,
    Json(behaviour): Json<Behaviour>,
) -> Response {
    shared.set(&route, behaviour);
    Json(shared.control(&route)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    async fn start() -> MockPartner {
        MockPartner::start(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap()
    }

    async fn post(client: &reqwest::Client, url: &str) -> (u16, HeaderMap, Value) {
        let response = client.post(url).json(&json!({"email": "a@b.c"})).send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        (status, headers, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn unknown_route_accepts_with_an_id() {
        let mock = start().await;
        let client = reqwest::Client::new();
        let (status, _, body) = post(&client, &mock.url("nobody")).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "accepted");
        assert_eq!(body["id"], "mock-1");
        let (_, _, body) = post(&client, &mock.url("nobody")).await;
        assert_eq!(body["id"], "mock-2");
        assert_eq!(mock.calls("nobody"), 2);
    }

    #[tokio::test]
    async fn each_status_behaviour_answers_as_documented() {
        let mock = start().await;
        let client = reqwest::Client::new();
        let url = mock.url("acme");

        mock.set("acme", Behaviour::Reject);
        let (status, _, body) = post(&client, &url).await;
        assert_eq!((status, &body["status"]), (200, &json!("rejected")));
        assert!(body["reason"].is_string());

        mock.set("acme", Behaviour::Duplicate);
        let (status, _, body) = post(&client, &url).await;
        assert_eq!((status, body), (409, json!({"status": "duplicate"})));

        mock.set("acme", Behaviour::ServerError);
        assert_eq!(post(&client, &url).await.0, 500);

        mock.set("acme", Behaviour::TooManyRequests { retry_after_secs: 7 });
        let (status, headers, _) = post(&client, &url).await;
        assert_eq!(status, 429);
        assert_eq!(headers[header::RETRY_AFTER], "7");

        mock.set("acme", Behaviour::Accept);
        assert_eq!(post(&client, &url).await.2["status"], "accepted");
        assert_eq!(mock.calls("acme"), 5);
        assert_eq!(mock.calls("other"), 0);
    }

    #[tokio::test]
    async fn slow_exceeds_a_short_client_timeout_then_accepts() {
        let mock = start().await;
        mock.set("slow", Behaviour::Slow { delay_ms: 300 });
        let short = reqwest::Client::builder().timeout(Duration::from_millis(50)).build().unwrap();
        let error = short.post(mock.url("slow")).body("x").send().await.unwrap_err();
        assert!(error.is_timeout(), "{error:?}");

        let started = Instant::now();
        let (status, _, body) = post(&reqwest::Client::new(), &mock.url("slow")).await;
        assert_eq!((status, &body["status"]), (200, &json!("accepted")));
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn refuse_gives_a_connection_error_not_a_status() {
        let mock = start().await;
        let client = reqwest::Client::new();
        // Warm the pool first, so a kept-alive connection is also cut.
        assert_eq!(post(&client, &mock.url("down")).await.0, 200);
        mock.set("down", Behaviour::Refuse);
        for _ in 0..2 {
            let error = client.post(mock.url("down")).body("x").send().await.unwrap_err();
            assert!(error.status().is_none() && !error.is_timeout(), "{error:?}");
        }
        assert_eq!(mock.calls("down"), 3);
        mock.set("down", Behaviour::Accept);
        assert_eq!(post(&client, &mock.url("down")).await.0, 200);
    }

    #[tokio::test]
    async fn sequence_answers_one_step_per_call_then_repeats_the_last() {
        let mock = start().await;
        let client = reqwest::Client::new();
        let steps = vec![Behaviour::ServerError, Behaviour::TooManyRequests { retry_after_secs: 1 }, Behaviour::Accept];
        mock.set("flaky", Behaviour::Sequence { steps: steps.clone() });
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(post(&client, &mock.url("flaky")).await.0);
        }
        assert_eq!(statuses, [500, 429, 200, 200, 200]);

        // Setting again, or a reset, starts the sequence over.
        mock.set("flaky", Behaviour::Sequence { steps });
        assert_eq!(post(&client, &mock.url("flaky")).await.0, 500);
        mock.reset();
        assert_eq!(post(&client, &mock.url("flaky")).await.0, 500);
        assert_eq!(mock.calls("flaky"), 1);
    }

    #[tokio::test]
    async fn control_endpoint_switches_and_reports_the_behaviour() {
        let mock = start().await;
        let client = reqwest::Client::new();
        let control = client.get(mock.control_url("acme")).send().await.unwrap();
        let report: Value = control.json().await.unwrap();
        assert_eq!(report, json!({"calls": 0, "behaviour": {"mode": "accept"}}));

        let put = client
            .put(mock.control_url("acme"))
            .json(&json!({"mode": "sequence", "steps": [{"mode": "duplicate"}, {"mode": "slow", "delay_ms": 1}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
        assert_eq!(post(&client, &mock.url("acme")).await.0, 409);
        assert_eq!(post(&client, &mock.url("acme")).await.0, 200);
        let report: Value = client.get(mock.control_url("acme")).send().await.unwrap().json().await.unwrap();
        assert_eq!(report["calls"], 2);
        assert_eq!(report["behaviour"]["steps"][1], json!({"mode": "slow", "delay_ms": 1}));
        assert!(matches!(mock.behaviour("acme"), Behaviour::Sequence { .. }));

        let bad = client.put(mock.control_url("acme")).json(&json!({"mode": "nope"})).send();
        assert!(bad.await.unwrap().status().is_client_error());
    }

    #[tokio::test]
    async fn records_headers_bodies_and_idempotency_keys() {
        let mock = start().await;
        let client = reqwest::Client::new();
        for key in ["k1", "k1", "k2"] {
            let form = client
                .post(mock.url("acme"))
                .header("Idempotency-Key", key)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("email=a%40b.c&name=Ann");
            assert_eq!(form.send().await.unwrap().status(), 200);
        }
        assert_eq!(post(&client, &mock.url("acme")).await.0, 200);

        let requests = mock.requests("acme");
        assert_eq!(requests.len(), 4);
        assert_eq!(requests[0].body, "email=a%40b.c&name=Ann");
        assert_eq!(requests[0].headers["idempotency-key"], "k1");
        assert_eq!(requests[3].headers["content-type"], "application/json");
        assert_eq!(requests[3].body, r#"{"email":"a@b.c"}"#);
        assert!(requests[0].at <= requests[3].at);
        let keys = mock.idempotency_keys("acme");
        assert_eq!(keys, HashMap::from([("k1".to_owned(), 2), ("k2".to_owned(), 1)]));

        mock.reset();
        assert_eq!(mock.calls("acme"), 0);
        assert!(mock.requests("acme").is_empty() && mock.idempotency_keys("acme").is_empty());
    }

    #[tokio::test]
    async fn shutdown_and_drop_stop_serving() {
        let client = reqwest::Client::new();
        let mock = start().await;
        let url = mock.url("acme");
        assert_eq!(post(&client, &url).await.0, 200);
        mock.shutdown().await;
        assert!(client.post(&url).body("x").send().await.is_err());

        let mock = start().await;
        let url = mock.url("acme");
        drop(mock);
        // The task stops shortly after the drop; poll until it has.
        let mut refused = false;
        for _ in 0..50 {
            if reqwest::Client::new().post(&url).body("x").send().await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused);
    }

    #[test]
    fn behaviour_json_shape() {
        let b =
            Behaviour::Sequence { steps: vec![Behaviour::TooManyRequests { retry_after_secs: 3 }, Behaviour::Refuse] };
        let text = serde_json::to_value(&b).unwrap();
        let expected = json!({"mode": "sequence", "steps": [
            {"mode": "too_many_requests", "retry_after_secs": 3}, {"mode": "refuse"}]});
        assert_eq!(text, expected);
        assert_eq!(serde_json::from_value::<Behaviour>(expected).unwrap(), b);
        assert_eq!(Behaviour::default().pick(9), &Behaviour::Accept);
        assert_eq!(Behaviour::Sequence { steps: vec![] }.pick(0), &Behaviour::Accept);
    }
}
