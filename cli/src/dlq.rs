//! `offer-router dlq`: the dead-letter queues for operators (see `pipeline::dlq`): their depth,
//! their letters, one letter in full, and replaying letters into their source queue.

use anyhow::{Context, bail};
use clap::Subcommand;
use pipeline::dlq::{self, Letter, Selection};
use pipeline::queue::QueueName;
use sqlx::PgPool;

use crate::config::DbArgs;

/// How the `list` table shows times (UTC, to the second).
const TIME: &str = "%Y-%m-%dT%H:%M:%SZ";
/// The characters of an error the `list` table shows.
const ERROR_WIDTH: usize = 60;

/// What `offer-router dlq` does.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqAction {
    /// Print every dead-letter queue (`<queue>_dlq`) and its depth.
    Queues {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the letters of a dead-letter queue, oldest first.
    List {
        /// The dead-letter queue, e.g. `routing_dlq`.
        dlq: String,
        /// At most this many letters.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one letter in full (pretty JSON).
    Show {
        /// The dead-letter queue.
        dlq: String,
        /// The letter's id in it.
        msg_id: i64,
    },
    /// Send letters back to their source queue as new messages (fresh attempts) and delete
    /// them from the dead-letter queue, in one transaction.
    Replay {
        /// The dead-letter queue.
        dlq: String,
        /// The letter to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        msg_id: Option<i64>,
        /// Replay every letter.
        #[arg(long)]
        all: bool,
    },
}

/// Runs `action` against the database `db` names.
pub(crate) async fn run(db: &DbArgs, action: DlqAction) -> anyhow::Result<()> {
    let pool = pipeline::db::connect(&db.config()).await.context("connecting to Postgres")?;
    match action {
        DlqAction::Queues { json } => queues(&pool, json).await,
        DlqAction::List { dlq, limit, json } => list(&pool, &dead_letter_queue(&pool, &dlq).await?, limit, json).await,
        DlqAction::Show { dlq, msg_id } => {
            let queue = dead_letter_queue(&pool, &dlq).await?;
            let letter = dlq::show(&pool, &queue, msg_id).await.context("reading the letter")?;
            let Some(letter) = letter else { bail!("no message {msg_id} in `{queue}`") };
            println!("{}", serde_json::to_string_pretty(&letter)?);
            Ok(())
        }
        DlqAction::Replay { dlq, msg_id, all } => {
            let queue = dead_letter_queue(&pool, &dlq).await?;
            let selection = match (msg_id, all) {
                (Some(msg_id), false) => Selection::One(msg_id),
                (None, true) => Selection::All,
                _ => bail!("name one message id or pass --all"),
            };
            replay(&pool, &queue, selection).await
        }
    }
}

/// `name` as a queue if it is an existing dead-letter queue.
async fn dead_letter_queue(pool: &PgPool, name: &str) -> anyhow::Result<QueueName> {
    let queue = QueueName::new(name)?;
    if dlq::source_queue(&queue).is_none() {
        bail!("`{queue}` is not a dead-letter queue (`<queue>{}`)", dlq::SUFFIX);
    }
    if !dlq::exists(pool, &queue).await.context("looking up the queue")? {
        bail!("no queue `{queue}`; `offer-router dlq queues` lists them");
    }
    Ok(queue)
}

async fn queues(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let queues = dlq::dead_letter_queues(pool).await.context("reading queue metrics")?;
    if json {
        let rows: Vec<serde_json::Value> = queues
            .iter()
            .map(|(queue, length)| serde_json::json!({ "queue": queue.as_str(), "length": length }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<48} {:>10}", "dead-letter queue", "length");
        for (queue, length) in queues {
            println!("{:<48} {:>10}", queue.as_str(), length);
        }
    }
    Ok(())
}

async fn list(pool: &PgPool, queue: &QueueName, limit: u32, json: bool) -> anyhow::Result<()> {
    let letters = dlq::list(pool, queue, limit).await.context("reading the letters")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(());
    }
    println!("{:>10}  {:<25}  {:>8}  {:<16}  error", "msg_id", "failed_at", "attempts", "worker");
    for letter in &letters {
        println!("{}", row(letter));
    }
    Ok(())
}

/// One line of the `list` table.
fn row(letter: &Letter) -> String {
    match &letter.envelope {
        Some(envelope) => format!(
            "{:>10}  {:<25}  {:>8}  {:<16}  {}",
            letter.msg_id,
            envelope.failed_at.format(TIME),
            envelope.attempts,
            envelope.worker,
            truncate(&envelope.error.replace('\n', " "), ERROR_WIDTH)
        ),
        None => format!(
            "{:>10}  {:<25}  {:>8}  {:<16}  (not a dead-letter envelope)",
            letter.msg_id,
            letter.enqueued_at.format(TIME),
            "-",
            "-"
        ),
    }
}

/// `text` cut to at most `width` characters, with an ellipsis if it was cut.
fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

async fn replay(pool: &PgPool, queue: &QueueName, selection: Selection) -> anyhow::Result<()> {
    let one = matches!(selection, Selection::One(_));
    let done = dlq::replay(pool, queue, selection).await.context("replaying")?;
    let source = dlq::source_queue(queue).map_or_else(String::new, |q| q.to_string());
    if let Some(missing) = done.missing.first() {
        bail!("no message {missing} in `{queue}`");
    }
    let letters = if done.replayed == 1 { "letter" } else { "letters" };
    println!("replayed {} {letters} from `{queue}` into `{source}`", done.replayed);
    for (msg_id, reason) in &done.skipped {
        println!("skipped {msg_id}: {reason}");
    }
    if one && !done.skipped.is_empty() {
        bail!("the letter was not replayed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_character_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééééé", 4), "ééé…");
        assert_eq!(truncate("abcdef", 6), "abcdef");
    }
}
