//! Wake-ups instead of polling. Every send to a queue (`queue::send`, `send_batch`,
//! `send_many`) also does `NOTIFY pgmq_sent, '<queue>'` in the sender's transaction, so the
//! notification arrives when the messages become visible (at its commit). A process's
//! [`Wakeups`] listens on that channel once and wakes the consumers of the queues named;
//! a consumer with a wake-up waits for one instead of polling its queue. What no notification
//! announces it waits for otherwise: a message whose retry delay or visibility timeout runs
//! out (the consumer's empty read says when: `queue::read_or_next_sql`), a notification lost
//! while the listener reconnected (after a reconnect every consumer is woken once), and a
//! message sent by something that does not notify (a rare poll, `ConsumerDefaults::idle_poll`).
//!
//! So an idle queue costs nothing, however many partners are configured, and a message is
//! taken as soon as it is committed instead of after the poll interval.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The channel senders notify, with the queue's name as the payload.
pub const CHANNEL: &str = "pgmq_sent";

/// The wake-ups of one process's consumers, by queue; and the queues sent to, for the queue
/// metrics.
#[derive(Default)]
pub struct Wakeups {
    by_queue: Mutex<HashMap<String, Arc<Notify>>>,
    /// Every queue a notification named since [`Wakeups::take_sent`]; `None` until the listener
    /// is connected and after it reconnected (notifications may have been missed).
    sent: Mutex<Option<HashSet<String>>>,
}

impl Wakeups {
    /// No consumer registered yet.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // A map of handles, never left half-written: a poisoned lock is still usable.
        self.by_queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The wake-up of `queue`'s consumers (one for all of them: each notification wakes one
    /// waiting consumer, or the next to wait).
    pub fn register(&self, queue: &str) -> Arc<Notify> {
        Arc::clone(self.queues().entry(queue.to_owned()).or_default())
    }

    fn sent(&self) -> std::sync::MutexGuard<'_, Option<HashSet<String>>> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes a consumer of `queue`, if the process has one, and notes that it was sent to.
    pub fn wake(&self, queue: &str) {
        if let Some(notify) = self.queues().get(queue) {
            notify.notify_one();
        }
        if let Some(sent) = self.sent().as_mut()
            && !sent.contains(queue)
        {
            sent.insert(queue.to_owned());
        }
    }

    /// After notifications may have been missed (the listener connected or reconnected): wakes
    /// a consumer of every queue, and forgets the queues sent to (nothing is known until
    /// [`Wakeups::take_sent`] is called again).
    pub fn missed(&self) {
        *self.sent() = None;
        for notify in self.queues().values() {
            notify.notify_one();
        }
    }

    /// The queues sent to since the last call (so only they can have grown); `None` when that
    /// is not known: before the listener connected, or notifications may have been missed
    /// since. Either way the record starts again from now.
    pub fn take_sent(&self) -> Option<HashSet<String>> {
        self.sent().replace(HashSet::new())
    }

    /// Listens on [`CHANNEL`] until `shutdown`, waking the consumers of each queue named.
    /// A lost connection is retried (every consumer is woken once it is back, for what it
    /// missed); without a listener at all, consumers fall back to their idle poll.
    pub async fn listen(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = match listener.await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "cannot LISTEN for queue wake-ups; consumers poll meanwhile");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            self.missed();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => self.wake(notification.payload()),
                        // The connection dropped; `try_recv` reconnects on the next call, and
                        // what was sent meanwhile was not heard.
                        Ok(None) => self.missed(),
                        Err(error) => {
                            tracing::warn!(%error, "queue wake-up listener failed; reconnecting");
                            break;
                        }
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_is_kept_for_the_next_wait_and_reaches_only_its_queue() {
        let wakeups = Wakeups::new();
        let a = wakeups.register("a");
        let b = wakeups.register("b");
        assert!(Arc::ptr_eq(&a, &wakeups.register("a")), "one wake-up per queue");
        wakeups.wake("a");
        wakeups.wake("nobody");
        // Woken before it waited: the wait ends at once.
        tokio::time::timeout(Duration::from_millis(100), a.notified()).await.expect("a was woken");
        assert!(tokio::time::timeout(Duration::from_millis(50), b.notified()).await.is_err(), "b was not");
        wakeups.missed();
        tokio::time::timeout(Duration::from_millis(100), b.notified()).await.expect("b was woken");
    }

    #[test]
    fn the_queues_sent_to_are_known_only_while_nothing_was_missed() {
        let wakeups = Wakeups::new();
        wakeups.wake("a");
        assert_eq!(wakeups.take_sent(), None, "before the first take, nothing is known");
        wakeups.wake("a");
        wakeups.wake("a");
        wakeups.wake("b");
        assert_eq!(wakeups.take_sent(), Some(HashSet::from(["a".to_owned(), "b".to_owned()])));
        assert_eq!(wakeups.take_sent(), Some(HashSet::new()), "each take starts a new record");
        wakeups.wake("c");
        wakeups.missed();
        assert_eq!(wakeups.take_sent(), None, "a reconnect may have missed notifications");
    }
}
