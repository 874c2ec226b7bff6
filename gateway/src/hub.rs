//! Topic → local subscribers, grouped by filter. The fan-out hands each
//! record here once; each distinct filter is evaluated once per record (the
//! record's JSON value is parsed at most once, and only if a filter needs
//! it), the record is encoded only if some group wants it, and the same
//! bytes are queued to every matching socket. Dispatch never waits on a socket: a socket whose queue
//! is full is told to close (slow consumer) and the others carry on.
//!
//! The hub also remembers which partitions are assigned for each topic, and
//! runs assignment changes under its lock (see [`Hub::activate`]) so that a
//! last-unsubscribe and a new first-subscribe of the same topic cannot
//! interleave their assign/unassign calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::Overflow;
use tokio::sync::{mpsc, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::filter::{Filter, RecordView};
use crate::session::lossy::LossyQueue;

/// One socket's end of a subscription.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The session, unique within this node.
    pub session: u64,
    /// The topic, shared with the lossy queue's entries.
    pub topic: Arc<str>,
    /// What happens when the socket does not keep up.
    pub overflow: Overflow,
    /// The socket's bounded fan-out queue (shared by all its topics), for
    /// `disconnect` subscriptions.
    pub queue: mpsc::Sender<Utf8Bytes>,
    /// The socket's lossy queue, for `drop_oldest` and `conflate`.
    pub lossy: Arc<LossyQueue>,
    /// Cancelled by the hub when `queue` is full: the session closes.
    pub kick: CancellationToken,
    /// Only records matching this reach the socket.
    pub filter: Option<Arc<Filter>>,
}

/// Subscribers of a topic sharing one filter.
#[derive(Debug)]
struct Group {
    /// [`Filter::canonical`], or empty for "no filter".
    canonical: String,
    filter: Option<Arc<Filter>>,
    members: Vec<Subscriber>,
}

/// Outcome of a topic's activation (first subscriber): shared by everyone
/// who subscribed while it was under way.
pub type Activation = Arc<OnceCell<Result<(), GatewayError>>>;

#[derive(Debug, Default)]
struct TopicEntry {
    groups: Vec<Group>,
    activation: Activation,
    /// Partitions the node's consumer has assigned for this topic, with the
    /// offset each was assigned at.
    starts: BTreeMap<i32, i64>,
}

/// The node's subscription table.
#[derive(Debug, Default)]
pub struct Hub {
    /// Held only for map operations and for non-blocking `try_send`s;
    /// never across an await.
    topics: RwLock<HashMap<String, TopicEntry>>,
}

impl Hub {
    /// Adds `subscriber` to `topic`; returns the topic's activation, which
    /// the caller completes (first subscriber) or waits for.
    pub fn join(&self, topic: &str, subscriber: Subscriber) -> Activation {
        let mut topics = self.topics.write().expect("hub lock");
        let entry = topics.entry(topic.to_owned()).or_default();
        entry.remove(subscriber.session);
        let canonical = subscriber.filter.as_ref().map(|f| f.canonical()).unwrap_or_default();
        match entry.groups.iter_mut().find(|g| g.canonical == canonical) {
            Some(group) => group.members.push(subscriber),
            None => entry.groups.push(Group {
                canonical,
                filter: subscriber.filter.clone(),
                members: vec![subscriber],
            }),
        }
        entry.activation.clone()
    }

    /// Removes a session from `topic`. When it was the last subscriber, the
    /// entry goes and `release` runs (under the lock) with the partitions to
    /// unassign.
    pub fn leave(&self, topic: &str, session: u64, release: impl FnOnce(&[i32])) {
        let mut topics = self.topics.write().expect("hub lock");
        let Some(entry) = topics.get_mut(topic) else {
            return;
        };
        entry.remove(session);
        if entry.groups.is_empty() {
            let entry = topics.remove(topic).expect("entry exists");
            if !entry.starts.is_empty() {
                release(&entry.starts.keys().copied().collect::<Vec<_>>());
            }
        }
    }

    /// Completes the activation `activation` of `topic` by running `assign`
    /// under the lock, if the entry is still the one that was joined and has
    /// subscribers. Returns false when nothing was assigned because everyone
    /// left meanwhile.
    pub fn activate(
        &self,
        topic: &str,
        activation: &Activation,
        starts: BTreeMap<i32, i64>,
        assign: impl FnOnce(&BTreeMap<i32, i64>) -> Result<(), GatewayError>,
    ) -> Result<bool, GatewayError> {
        let mut topics = self.topics.write().expect("hub lock");
        match topics.get_mut(topic) {
            Some(entry) if Arc::ptr_eq(&entry.activation, activation) => {
                assign(&starts)?;
                entry.starts = starts;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A failed activation: forget the entry, so the next subscribe tries
    /// again instead of seeing the cached failure.
    pub fn abandon(&self, topic: &str, activation: &Activation) {
        let mut topics = self.topics.write().expect("hub lock");
        if topics.get(topic).is_some_and(|e| Arc::ptr_eq(&e.activation, activation)) {
            topics.remove(topic);
        }
    }

    /// Adds partitions that appeared after activation; runs `assign` under
    /// the lock with those not yet assigned.
    pub fn grow(
        &self,
        topic: &str,
        partition_count: i32,
        assign: impl FnOnce(&[i32]) -> Result<(), GatewayError>,
    ) -> Result<(), GatewayError> {
        let mut topics = self.topics.write().expect("hub lock");
        let Some(entry) = topics.get_mut(topic) else {
            return Ok(());
        };
        if entry.starts.is_empty() {
            return Ok(()); // still activating; activation assigns everything
        }
        let new: Vec<i32> =
            (0..partition_count).filter(|p| !entry.starts.contains_key(p)).collect();
        if !new.is_empty() {
            assign(&new)?;
            // New partitions are read from their beginning.
            entry.starts.extend(new.into_iter().map(|p| (p, 0)));
        }
        Ok(())
    }

    /// The offsets `topic`'s partitions were assigned at (empty while the
    /// topic is not live on this node).
    pub fn assigned_starts(&self, topic: &str) -> BTreeMap<i32, i64> {
        let topics = self.topics.read().expect("hub lock");
        topics.get(topic).map(|e| e.starts.clone()).unwrap_or_default()
    }

    /// Topics with their assigned partition count, for the partition check.
    pub fn assigned_topics(&self) -> Vec<(String, usize)> {
        let topics = self.topics.read().expect("hub lock");
        topics
            .iter()
            .filter(|(_, e)| !e.starts.is_empty())
            .map(|(t, e)| (t.clone(), e.starts.len()))
            .collect()
    }

    /// Queues the record (`view`, at `partition`) to every subscriber of
    /// `topic` whose filter it matches; `encode` makes its frame, once, and
    /// only if someone wants it. Returns how many sockets got it.
    pub fn dispatch(
        &self,
        topic: &str,
        partition: i32,
        view: &RecordView<'_>,
        encode: impl FnOnce() -> Utf8Bytes,
    ) -> usize {
        let topics = self.topics.read().expect("hub lock");
        let Some(entry) = topics.get(topic) else { return 0 };
        let mut encode = Some(encode);
        let mut frame: Option<Utf8Bytes> = None;
        let mut delivered = 0;
        for group in &entry.groups {
            if group.filter.as_ref().is_some_and(|f| !f.matches(view)) {
                continue;
            }
            let frame = frame.get_or_insert_with(|| (encode.take().expect("encoded once"))());
            for subscriber in &group.members {
                if subscriber.offer(partition, view.key(), frame) {
                    delivered += 1;
                }
            }
        }
        delivered
    }
}

impl TopicEntry {
    fn remove(&mut self, session: u64) {
        for group in &mut self.groups {
            group.members.retain(|s| s.session != session);
        }
        self.groups.retain(|g| !g.members.is_empty());
    }
}

impl Subscriber {
    /// Queues `frame` by the subscription's overflow policy; false when the
    /// socket did not take it.
    fn offer(&self, partition: i32, key: Option<&[u8]>, frame: &Utf8Bytes) -> bool {
        match self.overflow {
            Overflow::Disconnect => match self.queue.try_send(frame.clone()) {
                Ok(()) => true,
                // Policy when full: the socket is too slow; close it rather
                // than wait for it or grow its queue.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.kick.cancel();
                    false
                }
                // The session is ending and will leave on its own.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            Overflow::DropOldest => {
                self.lossy.push(&self.topic, None, frame.clone());
                true
            }
            Overflow::Conflate => {
                self.lossy.push(&self.topic, key.map(|k| (partition, k)), frame.clone());
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(session: u64, capacity: usize) -> (Subscriber, mpsc::Receiver<Utf8Bytes>) {
        let (queue, rx) = mpsc::channel(capacity);
        let subscriber = Subscriber {
            session,
            topic: "t".into(),
            overflow: Overflow::Disconnect,
            queue,
            lossy: Arc::new(LossyQueue::new(capacity)),
            kick: CancellationToken::new(),
            filter: None,
        };
        (subscriber, rx)
    }

    #[tokio::test]
    async fn same_bytes_reach_every_subscriber_and_full_queue_kicks_only_its_owner() {
        let hub = Hub::default();
        let (fast, mut fast_rx) = subscriber(1, 8);
        let (slow, _slow_rx) = subscriber(2, 1);
        let slow_kick = slow.kick.clone();
        hub.join("t", fast.clone());
        hub.join("t", slow);
        let frame = Utf8Bytes::from("{\"type\":\"message\"}");
        let view = RecordView::new(None, &[], None);
        assert_eq!(hub.dispatch("t", 0, &view, || frame.clone()), 2);
        assert_eq!(hub.dispatch("t", 0, &view, || frame.clone()), 1);
        assert!(slow_kick.is_cancelled());
        assert!(!fast.kick.is_cancelled());
        let a = fast_rx.recv().await.unwrap();
        let b = fast_rx.recv().await.unwrap();
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr(), "bytes are shared, not copied");
    }

    #[test]
    fn last_leave_releases_assigned_partitions() {
        let hub = Hub::default();
        let (a, _ra) = subscriber(1, 1);
        let (b, _rb) = subscriber(2, 1);
        let activation = hub.join("t", a);
        hub.join("t", b);
        let starts = BTreeMap::from([(0, 5), (1, 0), (2, 7)]);
        assert!(hub.activate("t", &activation, starts, |_| Ok(())).unwrap());
        assert_eq!(hub.assigned_starts("t"), BTreeMap::from([(0, 5), (1, 0), (2, 7)]));
        let mut released = Vec::new();
        hub.leave("t", 1, |p| released.extend_from_slice(p));
        assert!(released.is_empty());
        hub.leave("t", 2, |p| released.extend_from_slice(p));
        assert_eq!(released, vec![0, 1, 2]);
        assert!(hub.assigned_topics().is_empty());
    }

    #[test]
    fn activation_after_everyone_left_assigns_nothing() {
        let hub = Hub::default();
        let (a, _ra) = subscriber(1, 1);
        let activation = hub.join("t", a);
        hub.leave("t", 1, |_| panic!("nothing assigned yet"));
        let assigned =
            hub.activate("t", &activation, BTreeMap::from([(0, 0)]), |_| panic!("must not assign"));
        assert!(!assigned.unwrap());
    }
}
