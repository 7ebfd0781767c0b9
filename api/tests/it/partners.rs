//! `/api/partners`: the partner configuration over the admin API, in the shape of a partners
//! file: create or update with queues and breaker, list with circuit state, refusals.

use api::Api;
use axum::http::{Method, StatusCode};
use pipeline::config::ApiConfig;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::rules::call_as;

const TOKEN: &str = "partners-admin";

fn example_partner() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/partners.yaml"))
        .expect("examples/partners.yaml");
    let file = pipeline::partners::parse_file(&text).expect("valid");
    serde_json::to_value(&file.partners[0]).expect("json")
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
    assert_eq!((status, &body["partner"], &body["circuit"]), (StatusCode::OK, &partner, &json!("closed")));
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
