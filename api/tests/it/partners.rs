//! `/api/partners`: the partner configuration over the admin API, in the shape of a partners
//! file: create or update with queues and breaker, list with circuit state and figures,
//! refusals (templates included), enable/disable, and a test lead sent to a mock partner
//! through deliver's adapter.

use std::collections::BTreeMap;

use api::Api;
use axum::http::{Method, StatusCode};
use pipeline::config::ApiConfig;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use workers::mock_partner::{Behaviour, MockPartner};

use crate::rules::call_as;

const TOKEN: &str = "partners-admin";

/// An example partner without caps or a schedule.
fn example_partner() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/partners.yaml"))
        .expect("examples/partners.yaml");
    let file = pipeline::partners::parse_file(&text).expect("valid");
    let plain = file.partners.iter().find(|p| p.name == "pacific_state_u").expect("an example partner");
    serde_json::to_value(plain).expect("json")
}

#[sqlx::test(migrations = false)]
async fn partners_are_configured_over_the_admin_api(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let config = ApiConfig { admin_token: Some(TOKEN.into()), ..Default::default() };
    let app = Api::start(pool.clone(), config, CancellationToken::new()).await.expect("api").router;
    let partner = example_partner();
    let name = partner["name"].as_str().expect("a name").to_owned();
    let path = format!("/api/partners/{name}");

    assert_eq!(call_as(&app, None, Method::GET, "/api/partners", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call_as(&app, Some("wrong"), Method::PUT, &path, Some(partner.clone())).await.0,
        StatusCode::UNAUTHORIZED
    );

    let (status, body) = call_as(&app, Some(TOKEN), Method::PUT, &path, Some(partner.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call_as(&app, Some(TOKEN), Method::GET, &path, None).await;
    assert_eq!((status, &body["partner"], &body["circuit"]["state"]), (StatusCode::OK, &partner, &json!("closed")));
    assert_eq!(
        body["stats"],
        json!({
            "queue_depth": 0, "oldest_age_secs": null, "dlq_depth": 0, "today": {}, "last_error": null,
            "caps": [], "closed": null,
        })
    );
    let (_, list) = call_as(&app, Some(TOKEN), Method::GET, "/api/partners", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let queue: Option<String> = sqlx::query_scalar("SELECT queue_name FROM pgmq.meta WHERE queue_name = $1")
        .bind(format!("partner_{name}_dlq"))
        .fetch_optional(&pool)
        .await
        .expect("meta");
    assert!(queue.is_some(), "the partner's DLQ was not created");

    let mut other = partner.clone();
    other["name"] = json!("someone_else");
    let mut bad_method = partner.clone();
    bad_method["request"]["method"] = json!("DELETE");
    let mut unknown = partner.clone();
    unknown["colour"] = json!("red");
    for (body, code) in [(other, "invalid_partner"), (bad_method, "invalid_partner"), (unknown, "invalid_partner")] {
        let (status, answer) = call_as(&app, Some(TOKEN), Method::PUT, &path, Some(body)).await;
        assert_eq!((status, answer["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(code)), "{answer}");
    }
    assert_eq!(call_as(&app, Some(TOKEN), Method::GET, "/api/partners/nobody", None).await.0, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrations = false)]
async fn partners_are_switched_and_sent_a_test_lead_through_the_deliver_adapter(pool: PgPool) {
    pipeline::db::migrate(&pool).await.expect("migrate");
    let mock = MockPartner::start("127.0.0.1:0".parse().expect("addr")).await.expect("mock partner");
    let config = ApiConfig {
        admin_token: Some(TOKEN.into()),
        partner_env: BTreeMap::from([
            ("PARTNER_BASE_URL".to_owned(), format!("http://{}", mock.addr())),
            ("PARTNER_TOKEN".to_owned(), "s3cret".to_owned()),
        ]),
        ..Default::default()
    };
    let app = Api::start(pool.clone(), config, CancellationToken::new()).await.expect("api").router;
    let partner = example_partner();
    let name = partner["name"].as_str().expect("a name").to_owned();
    let path = format!("/api/partners/{name}");
    assert_eq!(call_as(&app, Some(TOKEN), Method::PUT, &path, Some(partner.clone())).await.0, StatusCode::OK);

    // Off and on again.
    let enabled = || async {
        sqlx::query_scalar::<_, bool>("SELECT enabled FROM partners WHERE name = $1").bind(&name).fetch_one(&pool).await
    };
    let (status, body) = call_as(&app, Some(TOKEN), Method::POST, &format!("{path}/disable"), None).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({ "partner": name, "enabled": false })));
    assert!(!enabled().await.expect("row"));
    let (_, shown) = call_as(&app, Some(TOKEN), Method::GET, &path, None).await;
    assert_eq!(shown["partner"]["enabled"], json!(false));
    assert_eq!(call_as(&app, Some(TOKEN), Method::POST, &format!("{path}/enable"), None).await.0, StatusCode::OK);
    assert!(enabled().await.expect("row"));
    let (status, _) = call_as(&app, Some(TOKEN), Method::POST, "/api/partners/nobody/disable", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A test lead: rendered by the partner's templates with the environment's secrets, sent to
    // the partner, classified; nothing recorded.
    let lead = json!({
        "email": " Test.Lead@Example.com", "full_name": "Test Lead", "phone": "415 555 2671",
        "fields": { "program": "nursing", "state": "CA", "zip": "94110" }
    });
    let (status, answer) = call_as(&app, Some(TOKEN), Method::POST, &format!("{path}/test"), Some(lead)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["outcome"], json!("accepted"), "{answer}");
    assert_eq!(answer["request"]["url"], json!(format!("http://{}/partners/{name}/leads", mock.addr())));
    assert_eq!(answer["request"]["headers"]["Authorization"], json!("Bearer s3cret"));
    let sent: Value = serde_json::from_str(answer["request"]["body"].as_str().expect("body text")).expect("JSON body");
    assert_eq!(
        (&sent["email"], &sent["program"], &sent["phone"]),
        (&json!("test.lead@example.com"), &json!("nursing"), &json!("+14155552671"))
    );
    assert_eq!(answer["response"]["status"], json!(200));
    assert!(answer["response"]["body_excerpt"].as_str().is_some_and(|b| b.contains("accepted")), "{answer}");
    let requests = mock.requests(&name);
    assert_eq!(requests.len(), 1, "the partner got exactly the test lead");
    assert!(answer["request"]["headers"]["Idempotency-Key"].as_str().is_some_and(|k| k.starts_with("test:")));
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM leads").fetch_one(&pool).await.expect("count");
    assert_eq!(recorded, 0, "a test lead is not a lead");

    // The partner failing: the answer and its classification are shown as they are.
    mock.set(&name, Behaviour::ServerError);
    let (_, answer) = call_as(&app, Some(TOKEN), Method::POST, &format!("{path}/test"), Some(json!({}))).await;
    assert_eq!((&answer["outcome"], &answer["response"]["status"]), (&json!("retryable"), &json!(500)), "{answer}");

    // Caps and a schedule: what each cap has used in the running period, and whether it takes
    // leads now.
    let mut capped = partner.clone();
    capped["timezone"] = json!("America/Chicago");
    capped["caps"] = json!({ "daily": 5, "total": 1000 });
    capped["schedule"] = json!({ "hours": { "daily": "closed" } });
    assert_eq!(call_as(&app, Some(TOKEN), Method::PUT, &path, Some(capped.clone())).await.0, StatusCode::OK);
    sqlx::query(
        "INSERT INTO cap_usage (partner, period, period_start, leads)
         VALUES ($1, 'day', (now() AT TIME ZONE 'America/Chicago')::date, 2)",
    )
    .bind(&name)
    .execute(&pool)
    .await
    .expect("a count");
    let (_, shown) = call_as(&app, Some(TOKEN), Method::GET, &path, None).await;
    assert_eq!(shown["partner"]["caps"], json!({ "daily": 5, "total": 1000 }));
    let caps = &shown["stats"]["caps"];
    assert_eq!(
        (&caps[0]["period"], &caps[0]["leads"], &caps[0]["cap"]),
        (&json!("day"), &json!(2), &json!(5)),
        "{shown}"
    );
    assert_eq!((&caps[1]["period"], &caps[1]["leads"]), (&json!("total"), &json!(0)));
    assert_eq!(shown["stats"]["closed"]["why"], json!("schedule"), "{shown}");
    for (key, value, says) in [
        ("timezone", json!("Mars/Olympus"), "not a time zone"),
        ("schedule", json!({ "hours": { "mon": "18:00-08:00" } }), "ends before it starts"),
        ("budget", json!({ "daily": "100.00" }), "needs a `price`"),
    ] {
        let mut bad = partner.clone();
        bad[key] = value;
        let (status, answer) = call_as(&app, Some(TOKEN), Method::PUT, &path, Some(bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{key}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| m.contains(says)), "{key}: {answer}");
    }

    // A template that does not compile is refused before it is stored.
    let mut broken = partner.clone();
    broken["request"]["url"] = json!("{{ env.PARTNER_BASE_URL }/leads");
    let (status, answer) = call_as(&app, Some(TOKEN), Method::PUT, &path, Some(broken)).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_partner")),
        "{answer}"
    );
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("template `url`")), "{answer}");
}
