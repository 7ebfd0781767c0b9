//! The demo `./dev up` runs inside `offer-router serve`: once a decision tree is active it
//! creates the sample sites (or gives existing ones a fresh key), posts the sample leads of a
//! JSON-lines file through `POST /api/submit` with made-up people (some coming back with
//! their name or email spelled differently), waits until each has a final state, and prints
//! where each went.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const NAMES: [&str; 8] =
    ["Ann Lee", "Bob Stone", "Chloé Martin", "Dmitri Ivanov", "Eve Adams", "Fatima Khan", "Gus Brown", "Hana Sato"];

/// Where one demo lead went: submission, person, partner, rule, state, HTTP status.
type Outcome = (Uuid, Option<i64>, Option<String>, Option<String>, Option<String>, Option<i32>);

/// Runs the demo once.
pub(crate) async fn run(
    pool: &PgPool,
    addr: SocketAddr,
    leads: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(leads).with_context(|| format!("cannot read `{}`", leads.display()))?;
    let samples: Vec<Value> =
        text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM decision_trees WHERE active").fetch_one(pool).await? == 0 {
        if Instant::now() > deadline || shutdown.is_cancelled() {
            bail!("no decision tree became active");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let client = reqwest::Client::new();
    let mut keys = std::collections::HashMap::new();
    let mut posted = Vec::new();
    for (i, sample) in samples.iter().enumerate() {
        let site = sample["site"].as_str().unwrap_or("degreefinder").to_owned();
        if !keys.contains_key(&site) {
            let issued = match api::sites::create_site(pool, &site).await {
                Ok(issued) => issued,
                Err(api::Error::SiteExists(_)) => api::sites::rotate_key(pool, &site).await?,
                Err(error) => return Err(error.into()),
            };
            keys.insert(site.clone(), issued.api_key);
        }
        // Every third lead is an earlier person again, spelled differently.
        let person = if i % 3 == 2 { i - 2 } else { i };
        let name = NAMES[person % NAMES.len()];
        // The sample's `email_domain` becomes the person's domain (rules route on it).
        let domain = samples[person]["email_domain"].as_str().unwrap_or("gmail.com");
        let first = name.split(' ').next().unwrap_or("p");
        let (email, full_name) = if person == i {
            (format!("{}.{person}@{domain}", first.to_lowercase()), name.to_owned())
        } else {
            (format!("  {}.{person}@{}", first.to_uppercase(), domain.to_uppercase()), name.to_uppercase())
        };
        let mut fields = sample.as_object().cloned().unwrap_or_default();
        for derived in pipeline::message::derived::ALL {
            fields.remove(derived);
        }
        let body = json!({ "email": email, "full_name": full_name, "phone": format!("(415) 555-{:04}", 1000 + person), "fields": fields });
        let response = client
            .post(format!("http://{addr}/api/submit"))
            .bearer_auth(&keys[&site])
            .json(&body)
            .send()
            .await
            .context("posting a sample lead")?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 202 {
            tracing::warn!(%status, %answer, "demo lead refused");
            continue;
        }
        let id: Uuid = answer["submission_id"].as_str().unwrap_or_default().parse().context("a submission id")?;
        posted.push((id, site));
    }
    tracing::info!(leads = posted.len(), "demo: posted the sample leads; waiting for their final states");

    let ids: Vec<Uuid> = posted.iter().map(|(id, _)| *id).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows: Vec<Outcome> = sqlx::query_as(
            "SELECT s.id, coalesce(l.person_id, u.person_id), l.partner, l.rule_name,
                    coalesce(l.state, CASE WHEN u.submission_id IS NOT NULL THEN 'unmatched' END), l.response_status
             FROM unnest($1::uuid[]) AS s(id)
             LEFT JOIN leads l ON l.submission_id = s.id
             LEFT JOIN unmatched_leads u ON u.submission_id = s.id",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await?;
        let settled = rows.iter().all(|r| r.4.as_deref().is_some_and(|s| s != "pending"));
        if settled || Instant::now() > deadline || shutdown.is_cancelled() {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut table = format!(
        "\n{:<10} {:<15} {:>7} {:<27} {:<28} {:<10} {:>6}\n",
        "lead", "site", "person", "partner", "rule", "state", "http"
    );
    for (id, person, partner, rule, state, status) in &rows {
        let site = posted.iter().find(|(p, _)| p == id).map_or("", |(_, s)| s.as_str());
        let text = id.to_string();
        let short = text[text.len() - 8..].to_owned();
        table.push_str(&format!(
            "{short:<10} {site:<15} {:>7} {:<27} {:<28} {:<10} {:>6}\n",
            person.map_or("-".to_owned(), |p| p.to_string()),
            partner.as_deref().unwrap_or("-"),
            rule.as_deref().unwrap_or("(default route)"),
            state.as_deref().unwrap_or("in flight"),
            status.map_or("-".to_owned(), |s| s.to_string()),
        ));
    }
    println!("{table}");
    println!(
        "(the service keeps running: post more leads, change rules at /api/rules, switch mock partners with PUT /control/<route>; Ctrl-C stops)"
    );
    Ok(())
}
