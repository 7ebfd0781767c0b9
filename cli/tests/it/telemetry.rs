//! Telemetry verified for real (DESIGN.md, "Telemetry"): the `offer-router` daemon runs as a
//! process with `SENTRY_DSN` pointing at an HTTP endpoint inside this test that poses as the
//! Sentry ingest and parses every envelope it is sent. The scenario provokes what Sentry must
//! see (a partner that fails once, one that fails for good, an undecodable message, a lead in
//! flight when SIGTERM arrives) and the test checks the error events, the spans per batch and
//! per lead of identify, router and deliver, and the metrics (queue gauges, partner response
//! statuses, retries, dead letters) with their attributes; and that what was pending when the
//! daemon stopped was flushed before it exited.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::harness::{
    Daemon, Scratch, alone, client, free_local_addr, poll, serve_examples, site_key, submit, url_of, wait_for,
};

/// One envelope as the ingest received it.
#[derive(Debug, Clone)]
struct Envelope {
    /// When it arrived.
    at: Instant,
    /// The `X-Sentry-Auth` header.
    auth: String,
    /// Its items: the item header (`type`, `length` or `item_count`) and the payload.
    items: Vec<(Value, Value)>,
}

/// The fake Sentry ingest: `POST /api/<project>/envelope/`, every envelope parsed and kept.
#[derive(Default)]
struct Ingest {
    envelopes: Mutex<Vec<Envelope>>,
    /// Requests it could not read (a content encoding, a malformed envelope, a wrong project).
    refused: Mutex<Vec<String>>,
}

impl Ingest {
    fn envelopes(&self) -> MutexGuard<'_, Vec<Envelope>> {
        self.envelopes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The payloads of every item of type `ty`, with their envelope's arrival.
    fn items(&self, ty: &str) -> Vec<(Instant, Value)> {
        let envelopes = self.envelopes();
        let items = envelopes.iter().flat_map(|e| e.items.iter().map(move |(header, payload)| (e.at, header, payload)));
        items.filter(|(_, header, _)| header["type"] == ty).map(|(at, _, payload)| (at, payload.clone())).collect()
    }

    /// Every metric (the items of the `trace_metric` containers), with its envelope's arrival.
    fn metrics(&self) -> Vec<(Instant, Value)> {
        let containers = self.items("trace_metric");
        let metrics = containers.into_iter().flat_map(|(at, container)| {
            container["items"].as_array().cloned().unwrap_or_default().into_iter().map(move |m| (at, m))
        });
        metrics.collect()
    }
}

/// Parses an envelope: a JSON header line, then items, each a JSON header line and a payload
/// (`length` bytes and a newline, or one line when the header gives no length).
fn parse_envelope(body: &[u8]) -> Result<Vec<(Value, Value)>, String> {
    fn line(bytes: &[u8]) -> (&[u8], &[u8]) {
        match bytes.iter().position(|&b| b == b'\n') {
            Some(end) => (&bytes[..end], &bytes[end + 1..]),
            None => (bytes, &[]),
        }
    }
    let (header, mut rest) = line(body);
    serde_json::from_slice::<Value>(header).map_err(|e| format!("envelope header: {e}"))?;
    let mut items = Vec::new();
    while !rest.is_empty() {
        let (header, tail) = line(rest);
        if header.is_empty() {
            rest = tail;
            continue;
        }
        let header: Value = serde_json::from_slice(header).map_err(|e| format!("item header: {e}"))?;
        let (payload, tail) = match header["length"].as_u64() {
            Some(length) => {
                let length = usize::try_from(length).map_err(|e| e.to_string())?;
                let payload = tail.get(..length).ok_or("an item is shorter than its length")?;
                (payload, tail[length..].strip_prefix(b"\n").unwrap_or(&tail[length..]))
            }
            None => line(tail),
        };
        let payload = serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
        items.push((header, payload));
        rest = tail;
    }
    Ok(items)
}

async fn envelope(
    State(ingest): State<Arc<Ingest>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let refuse = |why: String| {
        ingest.refused.lock().unwrap_or_else(PoisonError::into_inner).push(why);
        StatusCode::BAD_REQUEST
    };
    // The sentry crate's transports send envelopes uncompressed; should one start compressing,
    // this says so rather than reading garbage.
    if let Some(encoding) = headers.get("content-encoding").filter(|e| e.as_bytes() != b"identity") {
        return refuse(format!("content-encoding {encoding:?}: decode it here"));
    }
    if project != "1" {
        return refuse(format!("envelope for project {project}"));
    }
    match parse_envelope(&body) {
        Ok(items) => {
            let auth = headers.get("x-sentry-auth").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            ingest.envelopes().push(Envelope { at: Instant::now(), auth, items });
            StatusCode::OK
        }
        Err(error) => refuse(error),
    }
}

/// Serves the ingest on an ephemeral local port; returns its address.
async fn start_ingest(ingest: Arc<Ingest>) -> std::net::SocketAddr {
    let app = axum::Router::new().route("/api/{project}/envelope/", axum::routing::post(envelope)).with_state(ingest);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the ingest");
    let addr = listener.local_addr().expect("ingest address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("the ingest serves") });
    addr
}

/// A metric's attribute value (attributes are `{"value": ..., "type": ...}`).
fn attribute<'m>(metric: &'m Value, key: &str) -> &'m Value {
    let attribute = &metric["attributes"][key];
    attribute.get("value").unwrap_or(attribute)
}

/// The metrics called `name` whose attributes include `attributes`.
fn metrics_named<'m>(metrics: &'m [(Instant, Value)], name: &str, attributes: &[(&str, &str)]) -> Vec<&'m Value> {
    metrics
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m["name"] == name && attributes.iter().all(|(k, v)| attribute(m, k) == *v))
        .collect()
}

/// The sum of the values of those metrics.
fn total(metrics: &[(Instant, Value)], name: &str, attributes: &[(&str, &str)]) -> f64 {
    metrics_named(metrics, name, attributes).iter().filter_map(|m| m["value"].as_f64()).sum()
}

/// An error event's own fields (sentry-tracing puts them in the "Rust Tracing Fields" context).
fn fields(event: &Value) -> &Value {
    &event["contexts"]["Rust Tracing Fields"]
}

/// An event's level (the protocol leaves out `error`, its default).
fn level(event: &Value) -> &str {
    event["level"].as_str().unwrap_or("error")
}

/// The error events whose message contains `text`.
fn events_saying(ingest: &Ingest, text: &str) -> Vec<Value> {
    let events = ingest.items("event").into_iter().map(|(_, e)| e);
    events.filter(|e| e["message"].as_str().is_some_and(|m| m.contains(text))).collect()
}

/// Every span of every transaction, each with its transaction.
fn spans(ingest: &Ingest) -> Vec<(Value, Value)> {
    let transactions = ingest.items("transaction").into_iter().map(|(_, t)| t);
    transactions
        .flat_map(|t| t["spans"].as_array().cloned().unwrap_or_default().into_iter().map(move |s| (t.clone(), s)))
        .collect()
}

/// The spans of one operation for one lead (described by its submission id).
fn lead_spans(ingest: &Ingest, op: &str, submission: &str) -> Vec<(Value, Value)> {
    spans(ingest).into_iter().filter(|(_, s)| s["op"] == op && s["description"] == submission).collect()
}

/// The span of `transaction` whose id is `id`.
fn span_by_id<'t>(transaction: &'t Value, id: &Value) -> &'t Value {
    let spans = transaction["spans"].as_array().expect("spans");
    spans.iter().find(|s| s["span_id"] == *id).unwrap_or_else(|| panic!("no span {id} in {transaction}"))
}

/// Waits (at most until `deadline`) for `ready` to hold of what the ingest received.
async fn wait_for_ingest(ingest: &Ingest, deadline: Instant, what: &str, ready: impl Fn(&Ingest) -> bool) {
    let within = deadline.saturating_duration_since(Instant::now());
    if poll(within, || async { ready(ingest) }).await.is_none() {
        let envelopes = ingest.envelopes();
        let items: Vec<Vec<&Value>> =
            envelopes.iter().map(|e| e.items.iter().map(|(h, _)| &h["type"]).collect()).collect();
        panic!("not within 60 s: {what}; received {} envelopes: {items:?}", envelopes.len());
    }
}

/// A partner of the example rules, at the daemon's mock partners, retrying after 50 to 200 ms.
fn partner(name: &str, max_retries: u32) -> String {
    format!(
        r#"  - name: {name}
    timeout_ms: 10000
    max_retries: {max_retries}
    backoff_base_ms: 50
    backoff_cap_ms: 200
    request:
      url: "{{{{ env.PARTNER_BASE_URL }}}}/partners/{name}/leads"
      headers:
        Authorization: "Bearer {{{{ env.PARTNER_TOKEN }}}}"
      body:
        lead_id: "{{{{ lead.submission_id }}}}"
        email: "{{{{ person.email }}}}"
    breaker: {{ consecutive_failures: 5, failure_rate: 0.5, min_calls: 20, window_secs: 60, open_secs: 60 }}
"#
    )
}

/// Posts `lead` (it must be accepted) and returns its submission id.
async fn post_lead(client: &reqwest::Client, addr: SocketAddr, key: &str, lead: Value) -> String {
    submit(client, addr, key, &lead).await.to_string()
}

async fn control(client: &reqwest::Client, mock: SocketAddr, route: &str, behaviour: Value) {
    let url = format!("http://{mock}/control/{route}");
    let response = client.put(url).json(&behaviour).send().await.expect("switch a mock partner");
    assert_eq!(response.status().as_u16(), 200, "{behaviour}");
}

#[sqlx::test(migrations = false)]
async fn sentry_receives_the_events_spans_and_metrics_of_the_pipeline(pool: PgPool) {
    let _turn = alone().await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let ingest = Arc::new(Ingest::default());
    let sentry = start_ingest(Arc::clone(&ingest)).await;

    // Three partners of the example rules: one that fails once, one that always fails (one retry,
    // then its DLQ), one slow enough to be in flight when the daemon is told to stop.
    let (flaky, broken, slow) = ("summit_nursing_college", "eastern_tech_institute", "harbor_business_school");
    let partners = format!("partners:\n{}{}{}", partner(flaky, 3), partner(broken, 1), partner(slow, 3));
    let scratch = Scratch::new("telemetry");
    let partners_file = scratch.write("partners.yaml", partners);

    let database_url = url_of(&pool);
    let (addr, mock) = (free_local_addr(), free_local_addr());
    let mut daemon = Daemon::spawn(
        "offer-router",
        addr,
        serve_examples(&database_url, addr, mock)
            .env("SEED_PARTNERS", &partners_file)
            .env("PARTNER_TOKEN", "telemetry-test-token")
            .env("SENTRY_DSN", format!("http://public@{sentry}/1"))
            .env("SENTRY_ENVIRONMENT", "telemetry-test")
            .env("SENTRY_TRACES_SAMPLE_RATE", "1")
            // Quiet logs; Sentry must not depend on the log filter.
            .env("RUST_LOG", "error")
            .env("QUEUE_METRICS_SECS", "1")
            .env("POLL_INTERVAL_MS", "20")
            .env("RETRY_BACKOFF_BASE_MS", "50")
            .env("RETRY_BACKOFF_CAP_MS", "200")
            .env("TREE_POLL_SECS", "1")
            .env("PARTNERS_REFRESH_SECS", "1")
            .env("SHUTDOWN_GRACE_SECS", "20")
            .stderr(Stdio::inherit()),
        None,
    );

    let client = client(Duration::from_secs(5));
    daemon.ready().await;
    control(&client, mock, flaky, json!({"mode": "sequence", "steps": [{"mode": "server_error"}, {"mode": "accept"}]}))
        .await;
    control(&client, mock, broken, json!({"mode": "server_error"})).await;
    control(&client, mock, slow, json!({"mode": "slow", "delay_ms": 2500})).await;

    let key = site_key(&database_url, "degreefinder");

    // A message no worker can read: the router dead-letters it at once.
    let garbage: i64 = sqlx::query_scalar("SELECT * FROM pgmq.send('routing', '\"not a lead\"'::jsonb)")
        .fetch_one(&pool)
        .await
        .expect("send an undecodable message to routing");
    // Leads the example rules route to the flaky partner (df-southwest-nursing) and to the
    // broken one (df-texas-tech).
    let a = post_lead(
        &client,
        addr,
        &key,
        json!({
            "email": "ana.flores@gmail.com", "first_name": "Ana", "last_name": "Flores",
            "fields": {"state": "CA", "age": 29, "program": "nursing", "zip": "94110", "has_diploma": true,
                       "education_level": "high_school"}
        }),
    )
    .await;
    let b = post_lead(
        &client,
        addr,
        &key,
        json!({
            "email": "ben.ortiz@gmail.com", "first_name": "Ben", "last_name": "Ortiz",
            "fields": {"state": "TX", "age": 19, "program": "cybersecurity", "zip": "73301", "has_diploma": true,
                       "education_level": "high_school"}
        }),
    )
    .await;

    // Until the pipeline has settled both leads and the garbage, and the queue metrics worker
    // has sampled the dead-letter queues since.
    let broken_dlq = format!("partner_{broken}_dlq");
    wait_for_ingest(&ingest, deadline, "the dead letters reported and sampled", |ingest| {
        let metrics = ingest.metrics();
        let dlq_total = |queue: &str| {
            metrics_named(&metrics, "queue.total_messages", &[("queue", queue)]).iter().any(|m| m["value"] == 1.0)
        };
        !events_saying(ingest, &format!("dead-lettered to {broken_dlq}")).is_empty()
            && !events_saying(ingest, "dead-lettered to routing_dlq").is_empty()
            && total(&metrics, "deliver.responses", &[("partner", flaky), ("status", "200")]) >= 1.0
            && dlq_total("routing_dlq")
            && dlq_total(&broken_dlq)
    })
    .await;

    // A lead for the slow partner; the daemon is told to stop while its call is in flight. The
    // call ends during shutdown, so its figures only reach Sentry if the daemon flushes on exit.
    let c = post_lead(
        &client,
        addr,
        &key,
        json!({
            "email": "cleo.park@gmail.com", "first_name": "Cleo", "last_name": "Park",
            "fields": {"state": "NY", "age": 33, "program": "accounting", "zip": "10001", "has_diploma": true,
                       "education_level": "bachelor"}
        }),
    )
    .await;
    wait_for("the slow partner to be called", deadline.saturating_duration_since(Instant::now()), || async {
        let state: Value = client
            .get(format!("http://{mock}/control/{slow}"))
            .send()
            .await
            .expect("mock control")
            .json()
            .await
            .expect("JSON");
        state["calls"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let sigterm = Instant::now();
    let status = daemon.terminate(deadline).await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    // -- What reached the ingest, all of it by now. --
    let refused = ingest.refused.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert!(refused.is_empty(), "unreadable envelopes: {refused:?}");
    let envelopes = ingest.envelopes().clone();
    assert!(!envelopes.is_empty());
    for e in &envelopes {
        assert!(e.auth.contains("sentry_key=public"), "the DSN's key authenticates every envelope: {}", e.auth);
    }
    let metrics = ingest.metrics();

    // Errors as events, with their context.
    let undecodable = events_saying(&ingest, "dead-lettered to routing_dlq");
    assert_eq!(undecodable.len(), 1, "{undecodable:#?}");
    let event = &undecodable[0];
    assert_eq!(level(event), "error");
    assert_eq!(event["environment"], "telemetry-test");
    assert_eq!(event["server_name"], "offer-router");
    assert!(event["release"].as_str().is_some_and(|r| r.starts_with("offer-router@")), "{event:#}");
    assert_eq!(fields(event)["worker"], "router");
    assert_eq!(fields(event)["queue"], "routing");
    assert_eq!(fields(event)["msg_id"], garbage);
    assert!(fields(event)["error"].as_str().is_some_and(|e| e.contains("cannot decode message")), "{event:#}");

    let failed = events_saying(&ingest, "partner's dead-letter queue");
    assert_eq!(failed.len(), 1, "one failed delivery: {failed:#?}");
    let event = &failed[0];
    assert_eq!(level(event), "error");
    assert_eq!(fields(event)["partner"], broken);
    assert_eq!(fields(event)["submission_id"], b.as_str());
    assert_eq!(fields(event)["status"], 500);
    assert_eq!(fields(event)["attempts"], 2);
    assert!(fields(event)["error"].as_str().is_some_and(|e| e.starts_with("HTTP 500")), "{event:#}");
    // The event belongs to the trace of the batch that failed the lead: the one whose lead
    // span recorded the second call.
    let second_call = lead_spans(&ingest, "deliver.lead", &b)
        .into_iter()
        .find(|(_, span)| span["data"]["attempt"] == 2)
        .expect("the span of the broken partner's second call");
    assert_eq!(event["contexts"]["trace"]["trace_id"], second_call.1["trace_id"], "{event:#}");

    let dead_lettered = events_saying(&ingest, &format!("dead-lettered to {broken_dlq}"));
    assert_eq!(dead_lettered.len(), 1, "{dead_lettered:#?}");
    let event = &dead_lettered[0];
    assert_eq!(level(event), "error");
    assert_eq!(fields(event)["worker"], "deliver");
    assert_eq!(fields(event)["queue"], format!("partner_{broken}"));
    assert_eq!(fields(event)["submission_id"], b.as_str());
    assert!(fields(event)["msg_id"].is_i64(), "{event:#}");

    // Spans per batch: a transaction per consumer batch (worker and queue as data), the worker's
    // batch span inside; and per lead, children of the batch span.
    for (worker, queue, batch_span) in [
        ("identify", "submissions", "identify.batch"),
        ("router", "routing", "router.batch"),
        ("deliver", format!("partner_{flaky}").as_str(), "deliver.batch"),
    ] {
        let transactions = ingest.items("transaction");
        let found = transactions.iter().map(|(_, t)| t).find(|t| {
            let data = &t["contexts"]["trace"]["data"];
            t["transaction"] == "consumer.batch" && data["worker"] == worker && data["queue"] == queue
        });
        let transaction = found.unwrap_or_else(|| panic!("no {worker} batch transaction in {transactions:#?}"));
        let spans = transaction["spans"].as_array().expect("spans");
        assert!(spans.iter().any(|s| s["description"] == batch_span), "{transaction:#}");
    }
    for (lead, route, rule) in
        [(&a, flaky, "df-southwest-nursing"), (&b, broken, "df-texas-tech"), (&c, slow, "df-northeast-business")]
    {
        let identified = lead_spans(&ingest, "identify.lead", lead);
        assert_eq!(identified.len(), 1, "{identified:#?}");
        let (transaction, span) = &identified[0];
        assert_eq!(span["data"]["identity"], "new_person");
        assert_eq!(span["data"]["site"], "degreefinder");
        assert!(span["data"]["msg_id"].is_number(), "{span:#}");
        assert_eq!(span_by_id(transaction, &span["parent_span_id"])["description"], "identify.batch");

        let routed = lead_spans(&ingest, "router.lead", lead);
        assert_eq!(routed.len(), 1, "{routed:#?}");
        let (transaction, span) = &routed[0];
        assert_eq!(span["data"]["route"], route);
        assert_eq!(span["data"]["rule"], rule);
        assert!(span["data"]["tree"].as_i64().is_some_and(|v| v >= 1), "{span:#}");
        assert_eq!(span_by_id(transaction, &span["parent_span_id"])["description"], "router.batch");
    }
    let deliveries = |lead: &str| {
        let mut calls: Vec<(Value, Value)> = lead_spans(&ingest, "deliver.lead", lead);
        calls.sort_by_key(|(_, s)| s["data"]["attempt"].as_i64());
        for (transaction, span) in &calls {
            let parent = span_by_id(transaction, &span["parent_span_id"]);
            assert_eq!(parent["description"], "deliver.batch", "{transaction:#}");
            assert_eq!(parent["data"]["partner"], span["data"]["partner"]);
        }
        calls
            .iter()
            .map(|(_, s)| {
                let d = &s["data"];
                (
                    d["partner"].clone(),
                    d["attempt"].clone(),
                    d["status"].clone(),
                    d["verdict"].clone(),
                    s["status"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        deliveries(&a),
        [
            (json!(flaky), json!(1), json!(500), json!("retryable"), json!("internal_error")),
            (json!(flaky), json!(2), json!(200), json!("accepted"), Value::Null),
        ]
    );
    assert_eq!(
        deliveries(&b),
        [
            (json!(broken), json!(1), json!(500), json!("retryable"), json!("internal_error")),
            (json!(broken), json!(2), json!(500), json!("retryable"), json!("internal_error")),
        ]
    );

    // Metrics. The queue-metrics worker's gauges, per queue.
    for name in ["queue.length", "queue.visible_length", "queue.oldest_message_age", "queue.total_messages"] {
        for queue in ["submissions", "routing", "routing_dlq", broken_dlq.as_str()] {
            let samples = metrics_named(&metrics, name, &[("queue", queue)]);
            assert!(!samples.is_empty(), "no {name} for {queue}");
            assert!(samples.iter().all(|m| m["type"] == "gauge"), "{samples:#?}");
        }
    }
    let dlq_totals = metrics_named(&metrics, "queue.total_messages", &[("queue", broken_dlq.as_str())]);
    assert!(dlq_totals.iter().all(|m| m["value"] == 0.0 || m["value"] == 1.0), "{dlq_totals:#?}");
    // Partner responses by status and verdict; retries and dead letters counted per partner.
    let responses = |partner: &str, status: &str, verdict: &str| {
        total(&metrics, "deliver.responses", &[("partner", partner), ("status", status), ("verdict", verdict)])
    };
    assert_eq!(responses(flaky, "500", "retryable"), 1.0);
    assert_eq!(responses(flaky, "200", "accepted"), 1.0);
    assert_eq!(responses(broken, "500", "retryable"), 2.0);
    assert_eq!(total(&metrics, "deliver.retries", &[("partner", flaky)]), 1.0);
    assert_eq!(total(&metrics, "deliver.retries", &[("partner", broken)]), 1.0);
    assert_eq!(total(&metrics, "deliver.retries", &[("partner", slow)]), 0.0);
    let durations = metrics_named(&metrics, "deliver.call.duration", &[("partner", flaky), ("status", "500")]);
    assert_eq!(durations.len(), 1, "{durations:#?}");
    assert_eq!(durations[0]["type"], "distribution");
    assert_eq!(durations[0]["unit"], "millisecond");
    assert!(total(&metrics, "deliver.circuit.transitions", &[("partner", broken), ("to", "open")]) >= 1.0);
    let dead = |worker: &str, queue: &str| {
        total(&metrics, "consumer.messages.dead_lettered", &[("worker", worker), ("queue", queue)])
    };
    assert_eq!(dead("router", "routing"), 1.0);
    assert_eq!(dead("deliver", &format!("partner_{broken}")), 1.0);
    assert_eq!(dead("deliver", &format!("partner_{flaky}")), 0.0);
    assert_eq!(total(&metrics, "consumer.messages.done", &[("worker", "identify"), ("queue", "submissions")]), 3.0);
    for route in [flaky, broken, slow] {
        assert_eq!(total(&metrics, "router.routed", &[("route", route)]), 1.0, "{route}");
    }
    assert_eq!(total(&metrics, "identify.persons.created", &[]), 3.0);

    // Flushed on SIGTERM: the slow partner's call ended after the signal, and its figures and
    // spans arrived before the daemon exited.
    let after_signal = ingest.metrics().into_iter().filter(|(at, _)| *at > sigterm).map(|(_, m)| m).collect::<Vec<_>>();
    let flushed = after_signal.iter().filter(|m| m["name"] == "deliver.responses" && attribute(m, "partner") == slow);
    assert_eq!(flushed.count(), 1, "the metrics pending at SIGTERM were not flushed: {after_signal:#?}");
    let slow_call = lead_spans(&ingest, "deliver.lead", &c);
    assert_eq!(slow_call.len(), 1, "{slow_call:#?}");
    assert_eq!(slow_call[0].1["data"]["status"], 200);
    // A metric captured in a batch belongs to the batch's trace.
    let response = metrics_named(&metrics, "deliver.responses", &[("partner", slow)]);
    assert_eq!(response.len(), 1, "{response:#?}");
    assert_eq!(response[0]["trace_id"], slow_call[0].1["trace_id"]);
}
