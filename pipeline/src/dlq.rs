//! Dead-letter tools for operators: list the dead-letter queues (`<queue>_dlq`) and their
//! letters, show one, and replay letters into the queue they came from.
//!
//! Every dead-lettered message is stored in a [`DeadLetter`] envelope (see `consumer`). Anything
//! else found in a DLQ (a message someone sent there by hand) is still listed, with its raw
//! body, but never replayed: without the envelope there is no saying where it belongs.
//!
//! A replay is one transaction: the selected letters are locked (`FOR UPDATE SKIP LOCKED`, so
//! two operators replaying at once never send a letter twice), their original messages are
//! sent to the source queue as new messages (fresh attempts, `read_ct` 0) and the letters are
//! deleted from the DLQ; all of it commits or none of it does.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::Result;
use crate::consumer::DeadLetter;
use crate::queue::{self, QueueName};

/// The suffix that makes a queue a dead-letter queue.
pub const SUFFIX: &str = "_dlq";

/// How many letters a replay locks, sends and deletes per statement (all in one transaction).
const REPLAY_CHUNK: i64 = 1000;

/// One message of a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Letter {
    /// Its id in the dead-letter queue.
    pub msg_id: i64,
    /// When it entered the dead-letter queue.
    pub enqueued_at: DateTime<Utc>,
    /// The dead-letter envelope, or `None` when the body is not one.
    pub envelope: Option<DeadLetter>,
    /// The body exactly as stored (`null` if PGMQ holds none).
    pub raw: Value,
}

impl Letter {
    fn from_row((msg_id, enqueued_at, message): (i64, DateTime<Utc>, Option<Value>)) -> Self {
        let raw = message.unwrap_or(Value::Null);
        let envelope = serde_json::from_value(raw.clone()).ok();
        Self { msg_id, enqueued_at, envelope, raw }
    }
}

/// Which letters [`replay`] or [`discard`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The letter with this id.
    One(i64),
    /// The letters with these ids.
    Some(Vec<i64>),
    /// Every letter in the queue (except those a concurrent replay holds).
    All,
}

impl Selection {
    /// The ids named, if the selection names them.
    fn ids(&self) -> Option<Vec<i64>> {
        match self {
            Self::One(id) => Some(vec![*id]),
            Self::Some(ids) => Some(ids.clone()),
            Self::All => None,
        }
    }
}

/// What a [`replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// Letters sent back to their source queue and deleted from the DLQ.
    pub replayed: usize,
    /// Letters left in the DLQ, with the reason (not an envelope, another queue's letter, the
    /// source queue is gone, a concurrent replay holds it).
    pub skipped: Vec<(i64, String)>,
    /// Selected ids not in the DLQ at all (never there, or replayed already).
    pub missing: Vec<i64>,
}

/// The source queue of a dead-letter queue (`routing` for `routing_dlq`), or `None` if the name
/// is not that of a dead-letter queue.
pub fn source_queue(dlq: &QueueName) -> Option<QueueName> {
    dlq.as_str().strip_suffix(SUFFIX).and_then(|source| QueueName::new(source).ok())
}

/// Whether PGMQ has a queue of that name.
pub async fn exists<'e>(executor: impl PgExecutor<'e>, queue: &QueueName) -> Result<bool> {
    let found = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = $1)")
        .bind(queue.as_str())
        .fetch_one(executor)
        .await?;
    Ok(found)
}

/// Every dead-letter queue (a PGMQ queue whose name ends in `_dlq`) with its length, sorted by
/// name; only those ever written are counted (`queue::lengths_ending_in`), so a thousand
/// partners' empty DLQs cost milliseconds, not a count each.
pub async fn dead_letter_queues<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<(QueueName, i64)>> {
    let queues = queue::lengths_ending_in(executor, SUFFIX)
        .await?
        .into_iter()
        .filter_map(|(name, length)| QueueName::new(name).ok().map(|name| (name, length)))
        .collect();
    Ok(queues)
}

/// Up to `limit` letters of `dlq`, oldest first (by `msg_id`, the order they failed in), so a
/// listing reads like a log and the letters at its top are the ones that waited longest.
///
/// A `dlq` PGMQ does not know is a database error (undefined table); check with [`exists`].
pub async fn list<'e>(executor: impl PgExecutor<'e>, dlq: &QueueName, limit: u32) -> Result<Vec<Letter>> {
    let sql = format!("SELECT msg_id, enqueued_at, message FROM {} ORDER BY msg_id LIMIT $1", dlq.table());
    let rows = sqlx::query_as(&sql).bind(i64::from(limit)).fetch_all(executor).await?;
    Ok(rows.into_iter().map(Letter::from_row).collect())
}

/// The letter `msg_id` of `dlq`, if it is there.
pub async fn show<'e>(executor: impl PgExecutor<'e>, dlq: &QueueName, msg_id: i64) -> Result<Option<Letter>> {
    let sql = format!("SELECT msg_id, enqueued_at, message FROM {} WHERE msg_id = $1", dlq.table());
    let row = sqlx::query_as(&sql).bind(msg_id).fetch_optional(executor).await?;
    Ok(row.map(Letter::from_row))
}

/// Sends the selected letters' original messages back to their source queue as new messages
/// and deletes the letters, in one transaction.
///
/// A letter is replayed only if it is a [`DeadLetter`] envelope whose `queue` is a valid queue
/// name, `dlq` is that queue's dead-letter queue (`<queue>_dlq`; a letter never moves to a
/// queue other than the one it failed in), and that queue still exists. Every other letter
/// stays where it is and is reported in [`Replayed::skipped`]. Letters are replayed in `msg_id`
/// order, so the source queue gets them in the order they failed.
pub async fn replay(pool: &PgPool, dlq: &QueueName, selection: Selection) -> Result<Replayed> {
    let mut tx = pool.begin().await?;
    let source = source_queue(dlq);
    let source_exists = match &source {
        Some(source) => exists(&mut *tx, source).await?,
        None => false,
    };
    let mut done = Replayed::default();
    let mut replayed_ids = Vec::new();
    let mut after = i64::MIN;
    loop {
        let letters = lock(&mut tx, dlq, &selection, after).await?;
        let Some(last) = letters.last() else { break };
        after = last.msg_id;
        let mut ids = Vec::with_capacity(letters.len());
        let mut bodies = Vec::with_capacity(letters.len());
        for letter in letters {
            match verdict(dlq, source.as_ref(), source_exists, &letter) {
                Ok(body) => {
                    ids.push(letter.msg_id);
                    bodies.push(body);
                }
                Err(reason) => done.skipped.push((letter.msg_id, reason)),
            }
        }
        if !bodies.is_empty()
            && let Some(source) = &source
        {
            queue::send_batch(&mut *tx, source, &bodies).await?;
            let sql = format!("DELETE FROM {} WHERE msg_id = ANY($1)", dlq.table());
            sqlx::query(&sql).bind(&ids).execute(&mut *tx).await?;
            done.replayed += ids.len();
            replayed_ids.extend(ids);
        }
    }
    if let Some(named) = selection.ids() {
        // A named letter not locked: either a concurrent replay holds it or it is not there.
        for msg_id in named {
            if replayed_ids.contains(&msg_id) || done.skipped.iter().any(|(id, _)| *id == msg_id) {
                continue;
            }
            if show(&mut *tx, dlq, msg_id).await?.is_some() {
                done.skipped.push((msg_id, "a concurrent replay holds it".to_owned()));
            } else {
                done.missing.push(msg_id);
            }
        }
    }
    tx.commit().await?;
    tracing::info!(%dlq, replayed = done.replayed, skipped = done.skipped.len(), "dead letters replayed");
    Ok(done)
}

/// What a [`discard`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiscardedCount {
    /// Letters moved out of the DLQ into `dlq_discarded`.
    pub discarded: usize,
    /// Selected ids not in the DLQ (never there, replayed or discarded already, or held by a
    /// concurrent replay).
    pub missing: Vec<i64>,
}

/// A letter an operator discarded, as `dlq_discarded` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct DiscardedLetter {
    /// The dead-letter queue it was in.
    pub queue: String,
    /// Its id there.
    pub msg_id: i64,
    /// When it was dead-lettered.
    pub enqueued_at: DateTime<Utc>,
    /// The letter (a [`DeadLetter`] envelope, or whatever was there).
    pub message: Option<Value>,
    /// Why it was discarded.
    pub reason: String,
    /// Who discarded it.
    pub actor: String,
    /// When.
    pub discarded_at: DateTime<Utc>,
}

/// Discards the selected letters of `dlq`: in one transaction each is copied, with `reason`
/// and `actor`, into `dlq_discarded` and deleted from the queue. Nothing leaves a dead-letter
/// queue without a trace.
pub async fn discard(
    pool: &PgPool,
    dlq: &QueueName,
    selection: Selection,
    reason: &str,
    actor: &str,
) -> Result<DiscardedCount> {
    let mut tx = pool.begin().await?;
    let mut done = DiscardedCount::default();
    let mut taken = Vec::new();
    let mut after = i64::MIN;
    loop {
        let letters = lock(&mut tx, dlq, &selection, after).await?;
        let Some(last) = letters.last() else { break };
        after = last.msg_id;
        let ids: Vec<i64> = letters.iter().map(|l| l.msg_id).collect();
        sqlx::query(
            "INSERT INTO dlq_discarded (queue, msg_id, enqueued_at, message, reason, actor)
             SELECT $1, m, e, b, $5, $6 FROM unnest($2::bigint[], $3::timestamptz[], $4::jsonb[]) AS u(m, e, b)",
        )
        .bind(dlq.as_str())
        .bind(&ids)
        .bind(letters.iter().map(|l| l.enqueued_at).collect::<Vec<_>>())
        .bind(letters.iter().map(|l| &l.raw).collect::<Vec<_>>())
        .bind(reason)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        let sql = format!("DELETE FROM {} WHERE msg_id = ANY($1)", dlq.table());
        sqlx::query(&sql).bind(&ids).execute(&mut *tx).await?;
        done.discarded += ids.len();
        taken.extend(ids);
    }
    if let Some(named) = selection.ids() {
        done.missing = named.into_iter().filter(|id| !taken.contains(id)).collect();
    }
    tx.commit().await?;
    tracing::info!(%dlq, discarded = done.discarded, actor, "dead letters discarded");
    Ok(done)
}

/// The newest discarded letters (of `dlq` only, when given), newest first.
pub async fn discarded<'e>(
    executor: impl PgExecutor<'e>,
    dlq: Option<&QueueName>,
    limit: u32,
) -> Result<Vec<DiscardedLetter>> {
    Ok(sqlx::query_as(
        "SELECT queue, msg_id, enqueued_at, message, reason, actor, discarded_at FROM dlq_discarded
         WHERE $1::text IS NULL OR queue = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(dlq.map(QueueName::as_str))
    .bind(i64::from(limit))
    .fetch_all(executor)
    .await?)
}

/// Locks the next chunk of selected letters after `after`, skipping letters another transaction
/// holds.
async fn lock(conn: &mut PgConnection, dlq: &QueueName, selection: &Selection, after: i64) -> Result<Vec<Letter>> {
    let sql = format!(
        "SELECT msg_id, enqueued_at, message FROM {}
         WHERE msg_id > $1 AND ($2::bigint[] IS NULL OR msg_id = ANY($2))
         ORDER BY msg_id LIMIT $3
         FOR UPDATE SKIP LOCKED",
        dlq.table()
    );
    let rows = sqlx::query_as(&sql).bind(after).bind(selection.ids()).bind(REPLAY_CHUNK).fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().map(Letter::from_row).collect())
}

/// The message to send back for `letter`, or why it stays in the DLQ.
fn verdict(
    dlq: &QueueName,
    source: Option<&QueueName>,
    source_exists: bool,
    letter: &Letter,
) -> std::result::Result<Value, String> {
    let Some(envelope) = &letter.envelope else {
        return Err("not a dead-letter envelope".to_owned());
    };
    let queue = QueueName::new(envelope.queue.as_str())
        .map_err(|_| format!("the envelope names an invalid queue `{}`", envelope.queue))?;
    if source != Some(&queue) {
        return Err(format!("the envelope names queue `{queue}`, whose dead-letter queue is not `{dlq}`"));
    }
    if !source_exists {
        return Err(format!("queue `{queue}` does not exist"));
    }
    Ok(envelope.message.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, reason = "a test fails loudly, with the expectation as its message")]

    use serde_json::json;

    use super::*;

    fn name(name: &str) -> QueueName {
        QueueName::new(name).expect("valid")
    }

    fn letter(raw: Value) -> Letter {
        Letter::from_row((1, Utc::now(), Some(raw)))
    }

    fn envelope(queue: &str) -> Value {
        json!({
            "message": { "n": 1 },
            "error": "boom",
            "attempts": 3,
            "worker": "w",
            "queue": queue,
            "msg_id": 9,
            "enqueued_at": "2025-01-01T00:00:00Z",
            "failed_at": "2025-01-01T00:01:00Z",
        })
    }

    #[test]
    fn source_queues_strip_the_suffix() {
        assert_eq!(source_queue(&name("partner_a_dlq")), Some(name("partner_a")));
        assert_eq!(source_queue(&name("routing")), None);
        assert_eq!(source_queue(&name("_dlq")), None, "no source name left");
    }

    #[test]
    fn only_own_envelopes_of_an_existing_queue_replay() {
        let dlq = name("routing_dlq");
        let source = source_queue(&dlq);
        let verdict = |raw: Value, exists: bool| verdict(&dlq, source.as_ref(), exists, &letter(raw));
        assert_eq!(verdict(envelope("routing"), true), Ok(json!({ "n": 1 })));
        assert_eq!(verdict(envelope("routing"), false), Err("queue `routing` does not exist".to_owned()));
        assert!(verdict(envelope("submissions"), true).is_err_and(|e| e.contains("`submissions`")));
        assert!(verdict(envelope("Bad-Name"), true).is_err_and(|e| e.contains("invalid queue")));
        assert_eq!(verdict(json!({ "n": 1 }), true), Err("not a dead-letter envelope".to_owned()));
    }
}
