//! Queue names and the few PGMQ operations the services need outside the consumer loop:
//! creating a queue with its dead-letter queue, sending, and reading metrics.

use std::fmt;

use serde::Serialize;
use sqlx::PgExecutor;

use crate::{Error, Result};

/// A queue name PGMQ accepts: 1 to 47 characters of `a-z`, `0-9` and `_`. Validating once
/// here is what makes it safe to use the name as part of a table identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

/// PGMQ's limit on queue names (its table names get a prefix and must fit in 63 bytes).
pub const MAX_QUEUE_NAME_LEN: usize = 47;

impl QueueName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_QUEUE_NAME_LEN
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid { Ok(Self(name)) } else { Err(Error::InvalidQueueName(name)) }
    }

    /// The queue of partner (route) `route`, `partner_<route>`.
    pub fn partner(route: &str) -> Result<Self> {
        Self::new(format!("partner_{route}"))
    }

    /// The queue's dead-letter queue, `<name>_dlq`.
    pub fn dead_letter_queue(&self) -> Result<Self> {
        Self::new(format!("{}_dlq", self.0))
    }

    /// The name as PGMQ knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The quoted, schema-qualified table PGMQ keeps this queue's messages in.
    pub(crate) fn table(&self) -> String {
        format!("pgmq.\"q_{}\"", self.0)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fixed queues of DESIGN.md, created by the migrations.
pub mod fixed {
    /// Accepted submissions, read by identify.
    pub const SUBMISSIONS: &str = "submissions";
    /// Identified leads, read by the router.
    pub const ROUTING: &str = "routing";
    /// Compile requests, read by the compile worker.
    pub const COMPILE: &str = "compile";
    /// Every fixed queue, dead-letter queues included.
    pub const ALL: [&str; 5] = ["submissions", "submissions_dlq", "routing", "routing_dlq", "compile"];
}

/// Creates `queue` and its dead-letter queue if they do not exist yet (on a connection, so a
/// transaction can include it).
pub async fn create_with_dead_letter_queue(conn: &mut sqlx::PgConnection, queue: &QueueName) -> Result<()> {
    for name in [queue.clone(), queue.dead_letter_queue()?] {
        sqlx::query("SELECT pgmq.create($1)").bind(name.as_str()).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Sends one message; returns its id.
pub async fn send<'e>(executor: impl PgExecutor<'e>, queue: &QueueName, message: &impl Serialize) -> Result<i64> {
    let body = serde_json::to_value(message)?;
    let (id,): (i64,) =
        sqlx::query_as("SELECT pgmq.send($1, $2)").bind(queue.as_str()).bind(body).fetch_one(executor).await?;
    Ok(id)
}

/// Sends many messages in one statement; returns their ids in order.
pub async fn send_batch<'e>(
    executor: impl PgExecutor<'e>,
    queue: &QueueName,
    messages: &[serde_json::Value],
) -> Result<Vec<i64>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let ids = sqlx::query_scalar("SELECT * FROM pgmq.send_batch($1, $2::jsonb[])")
        .bind(queue.as_str())
        .bind(messages)
        .fetch_all(executor)
        .await?;
    Ok(ids)
}

/// Sends messages to several queues in one statement (`send_many`, a migration's function
/// that calls `pgmq.send_batch` once per distinct queue), keeping each queue's order.
pub async fn send_many<'e>(executor: impl PgExecutor<'e>, messages: &[(QueueName, serde_json::Value)]) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let queues: Vec<&str> = messages.iter().map(|(q, _)| q.as_str()).collect();
    let bodies: Vec<&serde_json::Value> = messages.iter().map(|(_, m)| m).collect();
    sqlx::query("SELECT send_many($1, $2::jsonb[])").bind(&queues).bind(&bodies).execute(executor).await?;
    Ok(())
}

/// One row of `pgmq.metrics_all()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct QueueMetrics {
    /// Queue name.
    pub queue_name: String,
    /// Messages in the queue, visible or not.
    pub queue_length: i64,
    /// Messages readable now.
    pub queue_visible_length: i64,
    /// Age of the oldest message in seconds, if any.
    pub oldest_msg_age_sec: Option<i32>,
    /// Age of the newest message in seconds, if any.
    pub newest_msg_age_sec: Option<i32>,
    /// Messages ever sent to the queue.
    pub total_messages: i64,
}

/// Metrics of every queue, sorted by name.
pub async fn metrics_all<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<QueueMetrics>> {
    let rows = sqlx::query_as(
        "SELECT queue_name, queue_length, queue_visible_length, oldest_msg_age_sec, newest_msg_age_sec, total_messages
         FROM pgmq.metrics_all() ORDER BY queue_name",
    )
    .fetch_all(executor)
    .await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_pgmq_rules() {
        assert!(QueueName::new("partner_school_a").is_ok());
        for bad in ["", "Upper", "has-dash", "semi;colon", &"x".repeat(48)] {
            assert!(matches!(QueueName::new(bad), Err(Error::InvalidQueueName(_))), "{bad:?} accepted");
        }
        let longest_partner = QueueName::new(format!("partner_{}", "p".repeat(35))).expect("valid");
        assert_eq!(longest_partner.dead_letter_queue().map(|q| q.as_str().len()).ok(), Some(47));
    }
}
