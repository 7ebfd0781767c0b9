//! Work gathered into groups: producers send items one at a time, and a few workers each take
//! every item waiting when they start, up to a maximum, and handle them together (one
//! transaction for the group). Under load groups grow by themselves; at low load an item is
//! handled at once, without a linger delay. The API's group commit and deliver's claims use it.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};

/// The workers' side of a group channel; its clones share the channel.
pub struct Gatherer<T> {
    receiver: Arc<Mutex<mpsc::Receiver<T>>>,
    max: usize,
}

impl<T> Clone for Gatherer<T> {
    fn clone(&self) -> Self {
        Self { receiver: Arc::clone(&self.receiver), max: self.max }
    }
}

/// A channel holding up to `capacity` items, whose workers take groups of at most `max`.
pub fn channel<T>(capacity: usize, max: usize) -> (mpsc::Sender<T>, Gatherer<T>) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    (sender, Gatherer { receiver: Arc::new(Mutex::new(receiver)), max: max.max(1) })
}

impl<T> Gatherer<T> {
    /// The next group: waits for an item, then takes those already waiting behind it. `None`
    /// once every sender is dropped and the channel is drained.
    pub async fn next(&self) -> Option<Vec<T>> {
        let mut group = Vec::new();
        // One worker at a time waits; the others wait for the lock, then for their own group.
        let taken = self.receiver.lock().await.recv_many(&mut group, self.max).await;
        (taken > 0).then_some(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_group_takes_what_waits_up_to_its_maximum_and_ends_with_the_senders() {
        let (sender, gatherer) = channel(10, 3);
        for i in 0..5 {
            sender.send(i).await.expect("send");
        }
        let other = gatherer.clone();
        assert_eq!(gatherer.next().await, Some(vec![0, 1, 2]));
        assert_eq!(other.next().await, Some(vec![3, 4]));
        drop(sender);
        assert_eq!(gatherer.next().await, None);
    }
}
