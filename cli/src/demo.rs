//! The demo `./dev up` runs inside `offer-router serve`. Once a decision tree is active it
//! creates the sample sites (or gives existing ones a fresh key) and:
//!
//! 1. posts the sample leads of a JSON-lines file through `POST /api/submit` with made-up
//!    people (some coming back with their name or email spelled differently), waits until each
//!    has a final state, and prints where each went;
//! 2. then, with a rate (`DEMO_RATE`), keeps posting leads made from the samples (new people,
//!    and returning people spelled differently) and prints a live summary of the pipeline every
//!    `DEMO_SUMMARY_SECS`: queue depths, outcomes per partner, circuit states and the latest
//!    leads' outcomes, until the service stops. On a terminal the summary is redrawn in place.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use pipeline::distribution::{Availability, CapCount, Unavailable};
use pipeline::outcome::{self, Summary};
use pipeline::queue::Pgmq;
use pipeline::state::{CircuitState, DeliveryState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const FIRST: [&str; 16] = [
    "Ann", "Bob", "Chloé", "Dmitri", "Eve", "Fatima", "Gus", "Hana", "Ivan", "Júlia", "Kofi", "Lena", "Mateo", "Nina",
    "Omar", "Priya",
];
const LAST: [&str; 12] =
    ["Lee", "Stone", "Martin", "Ivanov", "Adams", "Khan", "Brown", "Sato", "García", "Okafor", "Müller", "Rossi"];

/// What the demo does (`DEMO_*` settings).
#[derive(Debug, Clone)]
pub(crate) struct Demo {
    /// The sample leads (JSON lines of offer fields, plus `site`).
    pub(crate) leads: PathBuf,
    /// Leads per second posted after the samples (0: none, and no live summary).
    pub(crate) rate: f64,
    /// Seconds between live summaries.
    pub(crate) summary_every: Duration,
    /// Where the in-process mock partners listen, if they do (for the summary's hint).
    pub(crate) mock_partners: Option<SocketAddr>,
}

/// Where one demo lead went: submission, person, partner, rule, delivery state, whether no rule
/// matched it, HTTP status.
type Outcome = (Uuid, Option<i64>, Option<String>, Option<String>, Option<DeliveryState>, bool, Option<i32>);

/// Posts demo leads through the real API, with a key per site.
struct Poster {
    client: reqwest::Client,
    url: String,
    keys: HashMap<String, String>,
}

impl Poster {
    /// Gives every site of the samples a key (creating the site, or rotating its key).
    async fn new(pool: &PgPool, addr: SocketAddr, samples: &[Value]) -> anyhow::Result<Self> {
        let mut keys = HashMap::new();
        for sample in samples {
            let site = site_of(sample).to_owned();
            if keys.contains_key(&site) {
                continue;
            }
            let issued = match api::sites::create_site(pool, &site).await {
                Ok(issued) => issued,
                Err(api::Error::SiteExists(_)) => api::sites::rotate_key(pool, &site).await?,
                Err(error) => return Err(error.into()),
            };
            keys.insert(site, issued.api_key);
        }
        Ok(Self { client: reqwest::Client::new(), url: format!("http://{addr}/api/submit"), keys })
    }

    /// Posts one lead; `Ok(None)` when the API refused it (logged).
    async fn post(&self, site: &str, body: &Value) -> anyhow::Result<Option<Uuid>> {
        let key = self.keys.get(site).with_context(|| format!("no key for site `{site}`"))?;
        let response =
            self.client.post(&self.url).bearer_auth(key).json(body).send().await.context("posting a demo lead")?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 202 {
            tracing::warn!(%status, %answer, "demo lead refused");
            return Ok(None);
        }
        Ok(Some(answer["submission_id"].as_str().unwrap_or_default().parse().context("a submission id")?))
    }
}

fn site_of(sample: &Value) -> &str {
    sample["site"].as_str().unwrap_or("degreefinder")
}

fn domain_of(sample: &Value) -> &str {
    sample["email_domain"].as_str().unwrap_or("gmail.com")
}

/// The body of a lead with `sample`'s offer fields from person number `person`, whose email
/// is at `domain` (rules route on `email_domain`). A returning person (`returning`) has their
/// email and name spelled differently; identify normalizes both to the same keys.
fn lead_body(sample: &Value, person: usize, domain: &str, returning: bool) -> Value {
    let first = FIRST[person % FIRST.len()];
    let last = LAST[(person / FIRST.len()) % LAST.len()];
    let (email, full_name) = if returning {
        (
            format!("  {}.{person}@{}", first.to_uppercase(), domain.to_uppercase()),
            format!("{first}  {}", last.to_uppercase()),
        )
    } else {
        (format!("{}.{person}@{domain}", first.to_lowercase()), format!("{first} {last}"))
    };
    let mut fields: Map<String, Value> = sample.as_object().cloned().unwrap_or_default();
    fields.remove("site");
    for derived in pipeline::message::derived::ALL {
        fields.remove(derived);
    }
    json!({
        "email": email,
        "full_name": full_name,
        "phone": format!("(415) 555-{:04}", 1000 + person % 9000),
        "fields": fields,
    })
}

fn read_samples(path: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let samples: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("`{}` is not JSON lines", path.display()))?;
    if samples.is_empty() {
        bail!("`{}` has no sample leads", path.display());
    }
    Ok(samples)
}

/// Runs the demo: the samples once, then the stream with its live summary until `shutdown`.
pub(crate) async fn run(
    pool: &PgPool,
    pgmq: &Pgmq,
    addr: SocketAddr,
    demo: &Demo,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let samples = read_samples(&demo.leads)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM decision_trees WHERE active").fetch_one(pool).await? == 0 {
        if Instant::now() > deadline || shutdown.is_cancelled() {
            bail!("no decision tree became active");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let poster = Poster::new(pool, addr, &samples).await?;
    samples_once(pool, &poster, &samples, &shutdown).await?;
    if demo.rate > 0.0 && !shutdown.is_cancelled() {
        stream(pool, pgmq, &poster, &samples, demo, shutdown).await?;
    }
    Ok(())
}

/// Posts every sample once (every third one an earlier person again, spelled differently) and
/// prints where each went.
async fn samples_once(
    pool: &PgPool,
    poster: &Poster,
    samples: &[Value],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut posted = Vec::new();
    for (i, sample) in samples.iter().enumerate() {
        let person = if i % 3 == 2 { i - 2 } else { i };
        let body = lead_body(sample, person, domain_of(&samples[person]), person != i);
        let site = site_of(sample);
        if let Some(id) = poster.post(site, &body).await? {
            posted.push((id, site.to_owned()));
        }
    }
    tracing::info!(leads = posted.len(), "demo: posted the sample leads; waiting for their final states");

    let ids: Vec<Uuid> = posted.iter().map(|(id, _)| *id).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows: Vec<Outcome> = sqlx::query_as(
            "SELECT s.id, coalesce(l.person_id, u.person_id), l.partner, l.rule_name,
                    l.state, u.submission_id IS NOT NULL, l.response_status
             FROM unnest($1::uuid[]) AS s(id)
             LEFT JOIN leads l ON l.submission_id = s.id
             LEFT JOIN unmatched_leads u ON u.submission_id = s.id",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await?;
        let settled = rows.iter().all(|r| r.5 || r.4.is_some_and(|s| s != DeliveryState::Pending));
        if settled || Instant::now() > deadline || shutdown.is_cancelled() {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut table = format!(
        "\n{:<10} {:<15} {:>7} {:<27} {:<28} {:<10} {:>6}\n",
        "lead", "site", "person", "partner", "rule", "state", "http"
    );
    for (id, person, partner, rule, state, unmatched, status) in &rows {
        let site = posted.iter().find(|(p, _)| p == id).map_or("", |(_, s)| s.as_str());
        let text = id.to_string();
        let short = text[text.len() - 8..].to_owned();
        table.push_str(&format!(
            "{short:<10} {site:<15} {:>7} {:<27} {:<28} {:<10} {:>6}\n",
            person.map_or("-".to_owned(), |p| p.to_string()),
            partner.as_deref().unwrap_or("-"),
            rule.as_deref().unwrap_or("(default route)"),
            state.map_or(if *unmatched { "unmatched" } else { "in flight" }, DeliveryState::as_str),
            status.map_or("-".to_owned(), |s| s.to_string()),
        ));
    }
    println!("{table}");
    Ok(())
}

/// Posts leads made from the samples at `demo.rate` per second (a third of them from people
/// seen before, spelled differently) and prints the live summary until `shutdown`.
async fn stream(
    pool: &PgPool,
    pgmq: &Pgmq,
    poster: &Poster,
    samples: &[Value],
    demo: &Demo,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Utc::now();
    let redraw = std::io::stdout().is_terminal();
    let mut rng = StdRng::from_os_rng();
    // Person number → the sample of their first lead (their email domain).
    let mut people: Vec<usize> = Vec::new();
    let (mut posted, mut refused) = (0_u64, 0_u64);
    let mut post = tokio::time::interval(Duration::from_secs_f64(1.0 / demo.rate));
    post.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut show = tokio::time::interval(demo.summary_every);
    show.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = post.tick() => {
                let sample = rng.random_range(0..samples.len());
                let returning = !people.is_empty() && rng.random_bool(0.3);
                let person = if returning { rng.random_range(0..people.len()) } else { people.len() };
                if !returning {
                    people.push(sample);
                }
                let body = lead_body(&samples[sample], person, domain_of(&samples[people[person]]), returning);
                match poster.post(site_of(&samples[sample]), &body).await {
                    Ok(Some(_)) => posted += 1,
                    Ok(None) => refused += 1,
                    Err(error) => {
                        refused += 1;
                        tracing::warn!(error = format!("{error:#}"), "demo: posting failed");
                    }
                }
            }
            _ = show.tick() => {
                let view = match live(pool, pgmq, started).await {
                    Ok((summary, distribution, latest)) => {
                        render(&summary, &distribution, &latest, demo, started, (posted, refused))
                    }
                    Err(error) => format!("(summary unavailable: {error:#})\n"),
                };
                // On a terminal: clear the screen and draw at the top; otherwise one block per
                // summary (logs).
                if redraw {
                    print!("\x1b[H\x1b[2J{view}");
                } else {
                    println!("{view}");
                }
            }
        }
    }
}

/// One of the latest final outcomes: when, person, partner, rule, state, HTTP status.
type Latest = (DateTime<Utc>, i64, String, Option<String>, DeliveryState, Option<i32>);

/// A partner with caps or a schedule: what each cap has used now, and why it takes no leads
/// now, if it does not.
type Distribution = (String, Vec<CapCount>, Option<Unavailable>);

async fn live(
    pool: &PgPool,
    pgmq: &Pgmq,
    since: DateTime<Utc>,
) -> anyhow::Result<(Summary, Vec<Distribution>, Vec<Latest>)> {
    let summary = outcome::summary(pool, pgmq, Some(since)).await?;
    let mut conn = pool.acquire().await?;
    let mut distribution = Vec::new();
    let now = Utc::now();
    for partner in pipeline::partners::load_all(&mut conn).await? {
        let Ok(availability) = Availability::of(&partner) else { continue };
        let counts = availability.counts(&mut conn, now).await?;
        let closed = availability.closed(now);
        if !counts.is_empty() || partner.schedule.is_some() {
            distribution.push((partner.name, counts, closed));
        }
    }
    drop(conn);
    let latest = sqlx::query_as(
        "SELECT updated_at, person_id, partner, rule_name, state, response_status FROM leads
         WHERE state <> $2 AND updated_at >= $1 ORDER BY updated_at DESC LIMIT 8",
    )
    .bind(since)
    .bind(DeliveryState::Pending)
    .fetch_all(pool)
    .await?;
    Ok((summary, distribution, latest))
}

/// The live summary as text: totals, the pipeline's queues (partner queues only when not
/// empty), every partner with leads or a circuit that is not closed, and the latest outcomes.
fn render(
    summary: &Summary,
    distribution: &[Distribution],
    latest: &[Latest],
    demo: &Demo,
    started: DateTime<Utc>,
    (posted, refused): (u64, u64),
) -> String {
    let mut out = String::new();
    let rate = demo.rate;
    let now = Utc::now();
    let _ = writeln!(
        out,
        "offer-router live: {}, streaming for {}s at {rate}/s: {posted} posted, {refused} refused; \
         in the queues {}, dead letters {}, unmatched {}",
        now.format("%H:%M:%S"),
        (now - started).num_seconds(),
        summary.in_flight(),
        summary.dead_lettered(),
        summary.unmatched,
    );
    let _ = writeln!(out, "\n{:<32} {:>8} {:>8} {:>10}", "queue", "depth", "visible", "oldest");
    for queue in &summary.queues {
        let pipeline_queue = !queue.queue_name.starts_with("partner_") || queue.queue_length > 0;
        if pipeline_queue && !(queue.queue_name.ends_with(pipeline::dlq::SUFFIX) && queue.queue_length == 0) {
            let _ = writeln!(
                out,
                "{:<32} {:>8} {:>8} {:>10}",
                queue.queue_name,
                queue.queue_length,
                queue.queue_visible_length,
                queue.oldest_msg_age_sec.map_or("-".to_owned(), |s| format!("{s}s")),
            );
        }
    }
    let _ = write!(out, "\n{:<28} {:<9}", "partner", "circuit");
    for state in DeliveryState::ALL {
        let _ = write!(out, " {state:>9}");
    }
    out.push('\n');
    for partner in &summary.partners {
        if partner.leads.is_empty() && partner.circuit == CircuitState::Closed {
            continue;
        }
        let circuit = if partner.enabled { partner.circuit.as_str() } else { "disabled" };
        let _ = write!(out, "{:<28} {circuit:<9}", partner.partner);
        for state in DeliveryState::ALL {
            let _ = write!(out, " {:>9}", partner.leads.get(state).copied().unwrap_or(0));
        }
        out.push('\n');
    }
    if !distribution.is_empty() {
        let _ = writeln!(out, "\n{:<28} {:<22} caps now (used/limit)", "partner", "taking leads");
        for (partner, counts, closed) in distribution {
            let taking = match closed {
                None if counts.iter().any(|c| c.cap.is_some_and(|cap| c.leads >= i64::from(cap))) => {
                    "capped".to_owned()
                }
                None => "yes".to_owned(),
                Some(Unavailable::Schedule { opens_at: Some(at) }) => {
                    format!("closed, opens {}", at.format("%a %H:%M"))
                }
                Some(why) => why.to_string(),
            };
            let caps: Vec<String> = counts
                .iter()
                .map(|c| {
                    let rule = c.rule.as_deref().map_or_else(String::new, |r| format!("{r} "));
                    match (c.cap, c.budget) {
                        (Some(cap), _) => format!("{rule}{} {}/{cap}", c.period.as_str(), c.leads),
                        (None, Some(budget)) => format!("{rule}{} spend {}/{budget}", c.period.as_str(), c.spend),
                        (None, None) => String::new(),
                    }
                })
                .collect();
            let _ = writeln!(out, "{partner:<28} {taking:<22} {}", caps.join("  "));
        }
    }
    let _ = writeln!(
        out,
        "\n{:<9} {:>7} {:<28} {:<28} {:<10} {:>5}",
        "latest", "person", "partner", "rule", "state", "http"
    );
    for (at, person, partner, rule, state, status) in latest {
        let _ = writeln!(
            out,
            "{:<9} {person:>7} {partner:<28} {:<28} {state:<10} {:>5}",
            at.format("%H:%M:%S"),
            rule.as_deref().unwrap_or("(default route)"),
            status.map_or("-".to_owned(), |s| s.to_string()),
        );
    }
    if let Some(mock) = demo.mock_partners {
        let _ = writeln!(
            out,
            "\nTake a partner down: curl -X PUT http://{mock}/control/<partner> -H 'content-type: application/json' \
             -d '{{\"mode\":\"server_error\"}}' (and back: '{{\"mode\":\"accept\"}}')"
        );
    }
    let _ = writeln!(out, "Prometheus metrics: /metrics on the service's address. Ctrl-C stops.");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use pipeline::identity::{normalize_email, normalize_name};
    use pipeline::outcome::PartnerOutcomes;
    use pipeline::queue::QueueMetrics;

    use super::*;

    #[test]
    fn a_returning_person_is_spelled_differently_but_normalizes_to_the_same_keys() {
        let sample = json!({ "site": "loanmatch", "state": "CA", "email_domain": "uw.edu", "submitted_hour": 3 });
        let first = lead_body(&sample, 17, "uw.edu", false);
        let again = lead_body(&sample, 17, "uw.edu", true);
        assert_ne!(first["email"], again["email"]);
        assert_ne!(first["full_name"], again["full_name"]);
        let email = |lead: &Value| normalize_email(lead["email"].as_str().unwrap_or_default()).ok();
        let name = |lead: &Value| normalize_name(lead["full_name"].as_str().unwrap_or_default()).ok();
        assert_eq!((email(&first), name(&first)), (email(&again), name(&again)));
        assert_eq!(email(&first).as_deref(), Some("bob.17@uw.edu"));
        // Only offer fields are sent: the site comes from the key, derived fields are refused.
        assert_eq!(first["fields"], json!({ "state": "CA" }));
    }

    fn queue(name: &str, length: i64) -> QueueMetrics {
        QueueMetrics {
            queue_name: name.to_owned(),
            queue_length: length,
            queue_visible_length: length,
            oldest_msg_age_sec: (length > 0).then_some(4),
            newest_msg_age_sec: None,
            total_messages: length,
        }
    }

    fn partner(name: &str, circuit: CircuitState, leads: &[(DeliveryState, i64)]) -> PartnerOutcomes {
        PartnerOutcomes {
            partner: name.to_owned(),
            enabled: true,
            circuit,
            retry_at: None,
            leads: leads.iter().copied().collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn the_live_summary_shows_busy_queues_partners_with_leads_or_open_circuits_and_the_latest() {
        let summary = Summary {
            queues: vec![
                queue("partner_idle", 0),
                queue("partner_busy", 7),
                queue("partner_busy_dlq", 2),
                queue("routing", 0),
                queue("routing_dlq", 0),
            ],
            partners: vec![
                partner("busy", CircuitState::Open, &[(DeliveryState::Accepted, 5), (DeliveryState::Failed, 2)]),
                partner("idle", CircuitState::Closed, &[]),
                partner("quiet_but_open", CircuitState::HalfOpen, &[]),
            ],
            unmatched: 3,
        };
        let latest = [(Utc::now(), 42, "busy".to_owned(), Some("r1".to_owned()), DeliveryState::Accepted, Some(200))];
        let demo = Demo {
            leads: PathBuf::new(),
            rate: 20.0,
            summary_every: Duration::from_secs(2),
            mock_partners: Some(SocketAddr::from(([127, 0, 0, 1], 18181))),
        };
        let distribution = vec![
            (
                "capped_one".to_owned(),
                vec![CapCount {
                    rule: None,
                    period: pipeline::distribution::Period::Day,
                    leads: 40,
                    cap: Some(40),
                    spend: pipeline::distribution::Cents(0),
                    budget: None,
                }],
                None,
            ),
            ("night_owl".to_owned(), Vec::new(), Some(Unavailable::Paused)),
        ];
        let text = render(&summary, &distribution, &latest, &demo, Utc::now(), (100, 1));
        assert!(text.contains("100 posted, 1 refused; in the queues 7, dead letters 2, unmatched 3"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let line = |start: &str| lines.iter().find(|l| l.starts_with(start)).map(|l| l.split_whitespace().collect());
        assert_eq!(line("partner_busy "), Some(vec!["partner_busy", "7", "7", "4s"]));
        assert_eq!(line("partner_busy_dlq"), Some(vec!["partner_busy_dlq", "2", "2", "4s"]));
        assert_eq!(line("routing "), Some(vec!["routing", "0", "0", "-"]));
        assert_eq!(line("partner_idle"), None, "empty partner queues are left out");
        assert_eq!(line("routing_dlq"), None, "empty DLQs are left out");
        assert_eq!(line("busy "), Some(vec!["busy", "open", "0", "5", "0", "0", "2"]));
        assert_eq!(line("idle"), None, "a closed partner without leads is left out");
        assert_eq!(line("quiet_but_open"), Some(vec!["quiet_but_open", "half_open", "0", "0", "0", "0", "0"]));
        assert!(text.contains("r1"), "{text}");
        assert_eq!(line("capped_one"), Some(vec!["capped_one", "capped", "day", "40/40"]));
        assert_eq!(line("night_owl"), Some(vec!["night_owl", "paused"]));
        assert!(text.contains("http://127.0.0.1:18181/control/<partner>"), "{text}");
    }
}
