//! Group commit of accepted submissions: concurrent posts are gathered into one transaction
//! that records their idempotency keys and sends them to `submissions`, so a post is answered
//! 202 only once its message is durable, and durability costs one commit per group, not per post.
//!
//! A few committer tasks share one channel ([`pipeline::group`]). Each takes every post waiting
//! when it starts (up to `max_batch`), so under load groups grow by themselves and at low load a
//! post is committed at once, without a linger delay.

use std::collections::HashMap;
use std::time::Instant;

use pipeline::config::SubmitConfig;
use pipeline::group::{self, Gatherer};
use pipeline::queue::{self, QueueName};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A site's `Idempotency-Key` and the hash of the body it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey {
    pub(crate) key: String,
    pub(crate) request_hash: [u8; 32],
}

/// What became of a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Committed now, with this id.
    New(Uuid),
    /// The key was used before with the same body: the first answer.
    Replayed(Uuid),
}

/// Why a post was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The key was used before with a different body.
    KeyReused,
    /// The commit failed or timed out; nothing was accepted.
    Unavailable(String),
}

struct Pending {
    site_id: Uuid,
    submission_id: Uuid,
    message: Value,
    idempotency: Option<IdempotencyKey>,
    reply: oneshot::Sender<Result<Accepted, Refused>>,
}

/// The producer side, shared by request handlers.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    sender: mpsc::Sender<Pending>,
    timeout: std::time::Duration,
}

impl GroupCommit {
    /// Starts `config.committers` committer tasks on `tasks`. They stop once every
    /// [`GroupCommit`] clone is dropped and the channel is drained.
    pub(crate) fn start(pool: &PgPool, config: &SubmitConfig, tasks: &mut JoinSet<()>) -> crate::Result<Self> {
        let (sender, gatherer) = group::channel(config.queue_capacity, config.max_batch);
        let queue = QueueName::new(queue::fixed::SUBMISSIONS)?;
        for _ in 0..config.committers.max(1) {
            tasks.spawn(committer(pool.clone(), gatherer.clone(), queue.clone()));
        }
        Ok(Self { sender, timeout: config.commit_timeout })
    }

    /// Commits one submission (its `message` for `submissions`) and waits for the outcome.
    pub(crate) async fn commit(
        &self,
        site_id: Uuid,
        submission_id: Uuid,
        message: Value,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Accepted, Refused> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { site_id, submission_id, message, idempotency, reply };
        let waited = tokio::time::timeout(self.timeout, async {
            self.sender.send(pending).await.map_err(|_| Refused::Unavailable("the service is stopping".to_owned()))?;
            answer.await.map_err(|_| Refused::Unavailable("the commit was abandoned".to_owned()))?
        })
        .await;
        // On a timeout the commit may still happen later; the client's retry with the same
        // Idempotency-Key then finds it.
        waited.unwrap_or_else(|_| Err(Refused::Unavailable("timed out waiting for the database".to_owned())))
    }
}

async fn committer(pool: PgPool, gatherer: Gatherer<Pending>, queue: QueueName) {
    while let Some(batch) = gatherer.next().await {
        commit_group(&pool, &queue, batch).await;
    }
}

/// Commits one group and answers every post in it.
async fn commit_group(pool: &PgPool, queue: &QueueName, batch: Vec<Pending>) {
    let started = Instant::now();
    let size = batch.len();
    // Posts with the same (site, key) in one group: the first leads, the rest follow it.
    let mut leader_of: HashMap<(Uuid, &str), usize> = HashMap::new();
    let mut follows: Vec<Option<usize>> = Vec::with_capacity(size);
    for (i, pending) in batch.iter().enumerate() {
        let leader = pending.idempotency.as_ref().and_then(|k| {
            let entry = leader_of.entry((pending.site_id, k.key.as_str()));
            match entry {
                std::collections::hash_map::Entry::Occupied(o) => Some(*o.get()),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i);
                    None
                }
            }
        });
        follows.push(leader);
    }

    let outcomes: Vec<Result<Accepted, Refused>> = match write_group(pool, queue, &batch, &follows).await {
        Ok(earlier) => {
            // The request a key stands for: the earlier one if the key conflicted, else the leader.
            let first = |leader: usize| match earlier.get(&leader) {
                Some(earlier) => *earlier,
                None => batch[leader].idempotency.as_ref().map(|k| (k.request_hash, batch[leader].submission_id)),
            };
            (0..size)
                .map(|i| match follows[i] {
                    None if !earlier.contains_key(&i) => Ok(Accepted::New(batch[i].submission_id)),
                    leader => replay(batch[i].idempotency.as_ref(), first(leader.unwrap_or(i))),
                })
                .collect()
        }
        Err(error) => {
            tracing::error!(%error, submissions = size, "group commit failed; answering 503");
            vec![Err(Refused::Unavailable(error.to_string())); size]
        }
    };
    for (pending, outcome) in batch.into_iter().zip(outcomes) {
        // A client that gave up no longer listens; its submission is committed all the same.
        let _ = pending.reply.send(outcome);
    }
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    sentry::metrics::distribution("api.submit.group_size", size as f64).capture();
    sentry::metrics::distribution("api.submit.group_commit", elapsed_ms)
        .unit(sentry::protocol::Unit::Millisecond)
        .capture();
    tracing::debug!(submissions = size, elapsed_ms, "group committed");
}

/// The answer to a post whose key was used before: the first answer if the bodies match.
fn replay(key: Option<&IdempotencyKey>, earlier: Option<([u8; 32], Uuid)>) -> Result<Accepted, Refused> {
    match (key, earlier) {
        (Some(key), Some((hash, id))) if key.request_hash == hash => Ok(Accepted::Replayed(id)),
        (Some(_), Some(_)) => Err(Refused::KeyReused),
        _ => Err(Refused::Unavailable("the earlier request with this key is gone".to_owned())),
    }
}

/// One transaction: record the leaders' keys (a key another transaction recorded first
/// conflicts), send the messages of every new post, commit. Returns the conflicted leaders
/// with the earlier request's (hash, submission id), read after the commit.
async fn write_group(
    pool: &PgPool,
    queue: &QueueName,
    batch: &[Pending],
    follows: &[Option<usize>],
) -> crate::Result<HashMap<usize, Option<([u8; 32], Uuid)>>> {
    let leaders: Vec<usize> =
        (0..batch.len()).filter(|&i| follows[i].is_none() && batch[i].idempotency.is_some()).collect();
    let mut tx = pool.begin().await?;
    let mut conflicted: Vec<usize> = Vec::new();
    if !leaders.is_empty() {
        let sites: Vec<Uuid> = leaders.iter().map(|&i| batch[i].site_id).collect();
        let keys: Vec<&str> =
            leaders.iter().filter_map(|&i| batch[i].idempotency.as_ref().map(|k| k.key.as_str())).collect();
        let hashes: Vec<&[u8]> =
            leaders.iter().filter_map(|&i| batch[i].idempotency.as_ref().map(|k| &k.request_hash[..])).collect();
        let ids: Vec<Uuid> = leaders.iter().map(|&i| batch[i].submission_id).collect();
        let inserted: Vec<(Uuid, String)> = sqlx::query_as(
            "INSERT INTO submit_idempotency (site_id, key, request_hash, submission_id)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[])
             ON CONFLICT DO NOTHING RETURNING site_id, key",
        )
        .bind(&sites)
        .bind(&keys)
        .bind(&hashes)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        conflicted = leaders
            .iter()
            .copied()
            .filter(|&i| {
                let key = batch[i].idempotency.as_ref().map(|k| k.key.as_str());
                !inserted.iter().any(|(site, k)| *site == batch[i].site_id && Some(k.as_str()) == key)
            })
            .collect();
    }
    let messages: Vec<Value> = (0..batch.len())
        .filter(|&i| follows[i].is_none() && !conflicted.contains(&i))
        .map(|i| batch[i].message.clone())
        .collect();
    queue::send_batch(&mut *tx, queue, &messages).await?;
    tx.commit().await?;

    let mut earlier = HashMap::new();
    for i in conflicted {
        let key = batch[i].idempotency.as_ref().map(|k| k.key.as_str()).unwrap_or_default();
        let row: Option<(Vec<u8>, Uuid)> = sqlx::query_as(
            "SELECT request_hash, submission_id FROM submit_idempotency WHERE site_id = $1 AND key = $2",
        )
        .bind(batch[i].site_id)
        .bind(key)
        .fetch_optional(pool)
        .await?;
        earlier.insert(i, row.and_then(|(hash, id)| Some((<[u8; 32]>::try_from(hash).ok()?, id))));
    }
    Ok(earlier)
}

/// Deletes idempotency keys older than `ttl`, every few minutes, until `shutdown`.
pub(crate) async fn prune_idempotency_keys(pool: PgPool, ttl: std::time::Duration, shutdown: CancellationToken) {
    let every = (ttl / 10).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(600));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let result = sqlx::query("DELETE FROM submit_idempotency WHERE created_at < now() - $1 * interval '1 second'")
            .bind(ttl.as_secs_f64())
            .execute(&pool)
            .await;
        match result {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::debug!(pruned = done.rows_affected(), "idempotency keys pruned")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot prune idempotency keys"),
        }
    }
}
