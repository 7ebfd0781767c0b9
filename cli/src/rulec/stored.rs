//! `rulec explain --submission ID`: a lead stored in the service's database, explained the
//! way `GET /api/leads/{id}/explain` answers (`api::leads::explain_submission`, the one
//! implementation): what routed it, the decision replayed under that rules version, and what
//! the current rules would do. `--format json` prints the API's JSON.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use api::leads::Story;
use compiler::interp::Explanation;
use pipeline::config::DbConfig;
use uuid::Uuid;

use crate::{Exit, ExplainFormat};

/// Explains the stored lead of `submission` from the database at `database_url`:
/// [`Exit::Findings`] when the replay does not reproduce the recorded decision.
pub(crate) fn explain(database_url: &str, submission: Uuid, format: ExplainFormat) -> anyhow::Result<Exit> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let story = runtime.block_on(async {
        let config = DbConfig { max_connections: 2, ..DbConfig::new(database_url) };
        let pool = pipeline::db::connect(&config).await.context("connecting to Postgres")?;
        api::leads::explain_submission(&pool, submission).await.context("reading the stored lead")
    })?;
    let Some(story) = story else {
        bail!(
            "no stored lead for submission `{submission}` (unknown, still on its way, or dead-lettered before it was routed)"
        );
    };
    match format {
        ExplainFormat::Human => print!("{}", human(&story)),
        ExplainFormat::Json => println!("{:#}", serde_json::to_value(&story)?),
    }
    Ok(if story.reproduced() == Some(false) { Exit::Findings } else { Exit::Clean })
}

/// The story as text: the recorded decision and rows, then each replay as `rulec explain`
/// prints it, then the notes.
fn human(story: &Story) -> String {
    let mut out = String::new();
    let routed = &story.routed;
    let by = routed.rule.as_deref().map_or_else(|| "no rule".to_owned(), |rule| format!("rule `{rule}`"));
    let tree = match (routed.tree_version, routed.rules_version) {
        (Some(tree), Some(rules)) => format!("tree {tree} (rules v{rules})"),
        (Some(tree), None) => format!("tree {tree}"),
        _ => "no recorded tree".to_owned(),
    };
    let _ = match &routed.route {
        Some(route) => writeln!(out, "submission {}: routed to `{route}` by {by}, {tree}", story.submission_id),
        None => writeln!(out, "submission {}: unmatched ({by} matched), {tree}", story.submission_id),
    };
    for d in &story.deliveries {
        let status = d.response_status.map_or_else(String::new, |s| format!(", HTTP {s}"));
        let _ = writeln!(out, "  {}: {} after {} attempt(s){status}", d.partner, d.state, d.attempts);
        // The candidates the router tried before this partner took it, and why each was skipped.
        let routing = d.routing.clone().and_then(|r| serde_json::from_value::<pipeline::message::Routing>(r).ok());
        for tried in routing.iter().flat_map(|r| &r.candidates) {
            let rule = tried.rule.as_deref().unwrap_or("default route");
            let _ = match &tried.skipped {
                Some(why) => writeln!(out, "    tried {} ({rule}): skipped, {why}", tried.partner),
                None => writeln!(out, "    tried {} ({rule}): took it", tried.partner),
            };
        }
        if let Some(why) = routing.as_ref().and_then(|r| r.held.as_deref()) {
            let _ = writeln!(out, "    held for {}: {why}", d.partner);
        }
    }
    if let Some(fields) = &story.fields {
        let _ = writeln!(out, "fields: {}", serde_json::Value::Object(fields.clone()));
    }
    let section = |out: &mut String, title: String, explanation: &Explanation, version: i64| {
        let _ = writeln!(out, "\n{title}");
        out.push_str(&explanation.to_human(&format!("rules v{version}")));
    };
    if let Some(then) = &story.then {
        let verdict = if then.reproduced { "reproduced" } else { "NOT reproduced" };
        let title = format!("under rules v{} (what routed it): {verdict}", then.rules_version);
        section(&mut out, title, &then.explanation, then.rules_version);
    }
    for (which, current) in [("the newest", &story.now.newest), ("the active tree's", &story.now.active)] {
        let Some(current) = current else { continue };
        let verdict = if current.changed { "decided differently now" } else { "the same decision" };
        let title = format!("now, under rules v{} ({which}): {verdict}", current.rules_version);
        section(&mut out, title, &current.explanation, current.rules_version);
    }
    for note in &story.notes {
        let _ = writeln!(out, "\nnote: {note}");
    }
    out
}
