//! Delivery throughput: leads per second delivered to the mock partner over HTTP (keep-alive,
//! up to 32 calls in flight per batch) by the deliver worker (dedupe lock and lookup, `leads`
//! row, call, classification, row update, breaker update, delete), one consumer per partner.
//!
//! Run with `./dev bench`, or `cargo bench -p workers --bench deliver -- --leads 20000
//! --partners 5 --batch-size 100`. Works in a scratch database `<name>_bench_deliver`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pipeline::BoxError;
use pipeline::config::ConsumerConfig;
use pipeline::consumer::{self, Consumer};
use pipeline::message::{PartnerLead, RoutingLead};
use pipeline::partners::{PartnerConfig, RequestTemplate};
use pipeline::queue;
use serde_json::{Value, json};
use uuid::Uuid;
use workers::deliver::{Breakers, Deliver, DeliverContext};
use workers::mock_partner::MockPartner;

fn partner(name: &str) -> PartnerConfig {
    let request = RequestTemplate {
        method: "POST".to_owned(),
        url: format!("{{{{ env.PARTNER_BASE_URL }}}}/partners/{name}/leads"),
        headers: BTreeMap::new(),
        encoding: "json".to_owned(),
        body: json!({ "email": "{{ person.email }}", "state": "{{ lead.fields.state }}" }),
    };
    PartnerConfig {
        timeout_ms: 5_000,
        backoff_base_ms: 100,
        backoff_cap_ms: 1_000,
        ..PartnerConfig::new(name, request)
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (mut leads, mut partners, mut batch_size) = (20_000usize, 5usize, 100u32);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--leads" => leads = value()?.parse()?,
            "--partners" => partners = value()?.parse()?,
            "--batch-size" => batch_size = value()?.parse()?,
            _ => {}
        }
    }
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set: run `./dev bench`")?;
    let pool = pipeline::db::scratch_database(&url, "bench_deliver").await?;
    let mock = MockPartner::start("127.0.0.1:0".parse()?).await?;
    let configs: Vec<PartnerConfig> = (0..partners).map(|i| partner(&format!("bench_{i}"))).collect();
    let mut conn = pool.acquire().await?;
    for config in &configs {
        pipeline::partners::apply(&mut conn, config).await?;
    }
    sqlx::query(
        "INSERT INTO persons (email, full_name) SELECT 'p' || g || '@example.com', 'p' FROM generate_series(1, $1) g",
    )
    .bind(leads as i64)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO decision_trees (version, rules_version, report) OVERRIDING SYSTEM VALUE VALUES (1, 1, '{}')",
    )
    .execute(&pool)
    .await?;
    let people: Vec<i64> = sqlx::query_scalar("SELECT id FROM persons ORDER BY id").fetch_all(&pool).await?;
    for (i, config) in configs.iter().enumerate() {
        let bodies: Vec<Value> = people
            .iter()
            .skip(i)
            .step_by(partners)
            .map(|&person| {
                serde_json::to_value(PartnerLead {
                    lead: RoutingLead {
                        submission_id: Uuid::now_v7(),
                        site: "site0".to_owned(),
                        person_id: person,
                        alias_id: None,
                        submitted_at: Utc::now(),
                        fields: json!({ "state": "CA" }).as_object().cloned().unwrap_or_default(),
                    },
                    route: config.name.clone(),
                    rule: None,
                    tree_version: 1,
                    routing: None,
                    reserved_at: None,
                })
            })
            .collect::<Result<_, _>>()?;
        for chunk in bodies.chunks(1_000) {
            queue::send_batch(&pool, &config.queue()?, chunk).await?;
        }
    }
    let context = DeliverContext {
        pool: pool.clone(),
        readers: pipeline::queue::Readers::new(&pool),
        client: reqwest::Client::builder().pool_max_idle_per_host(64).build()?,
        env: Arc::new(BTreeMap::from([("PARTNER_BASE_URL".to_owned(), format!("http://{}", mock.addr()))])),
        breakers: Arc::new(Breakers::new(Duration::from_secs(1))),
        owner: "bench".to_owned(),
        clock: pipeline::distribution::system_clock(),
        claims: workers::deliver::Claims::start(&pool),
    };
    let consumers = configs
        .iter()
        .map(|config| {
            let mut consumer_config = ConsumerConfig::new("deliver", config.queue()?)?;
            consumer_config.max_retries = 1_000;
            consumer_config.defaults.batch_size = batch_size;
            Ok(Consumer::new(pool.clone(), consumer_config, Deliver::new(config.clone(), context.clone())?)
                .with_readers(&context.readers))
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    let elapsed = consumer::run_until_settled(consumers, leads as u64).await;
    let accepted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM leads WHERE state = 'accepted'").fetch_one(&pool).await?;
    let calls: usize = configs.iter().map(|c| mock.calls(&c.name)).sum();
    println!(
        "deliver: {leads} leads to {partners} mock partners (batch {batch_size}): {:.2} s, {:.0} leads/s; {accepted} accepted, {calls} calls",
        elapsed.as_secs_f64(),
        leads as f64 / elapsed.as_secs_f64()
    );
    if accepted != leads as i64 || calls != leads {
        return Err(format!("{accepted} accepted and {calls} calls for {leads} leads").into());
    }
    Ok(())
}
