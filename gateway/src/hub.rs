//! Topic → local subscribers, grouped by filter: a registry, nothing more.
//! The fan-out hands each record here once; each distinct filter is
//! evaluated once per record (the record's JSON value is parsed at most
//! once, and only if a filter needs it), the record is encoded only if some
//! group wants it, and the same bytes are queued to every matching socket.
//! Dispatch never waits on a socket: a socket whose queue is full is told to
//! close (slow consumer) and the others carry on.
//!
//! [`Hub::join`] and [`Hub::leave`] say whether a subscriber was a topic's
//! first or last on this node; what that means for Kafka (assigning or
//! releasing partitions) is [`crate::kafka::fanout`]'s business, done under
//! its own per-topic lock, never under this one.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::Overflow;

use crate::filter::{Filter, RecordView};
use crate::outlet::Outlet;

/// One socket's end of a subscription.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The session, unique within this node.
    pub session: u64,
    /// The topic, shared with the lossy queue's entries.
    pub topic: Arc<str>,
    /// What happens when the socket does not keep up.
    pub overflow: Overflow,
    /// The socket's queues (shared by all its topics).
    pub outlet: Outlet,
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

#[derive(Debug, Default)]
struct TopicEntry {
    groups: Vec<Group>,
}

/// The node's subscription table.
#[derive(Debug, Default)]
pub struct Hub {
    /// Held only for map operations and for non-blocking `try_send`s;
    /// never across an await.
    topics: RwLock<HashMap<String, TopicEntry>>,
}

impl Hub {
    /// Adds `subscriber` to `topic` (replacing the session's earlier entry
    /// there, if any); true when it is the topic's first on this node.
    pub fn join(&self, topic: &str, subscriber: Subscriber) -> bool {
        let mut topics = self.topics.write().expect("hub lock");
        let entry = topics.entry(topic.to_owned()).or_default();
        entry.remove(subscriber.session);
        let first = entry.groups.is_empty();
        let canonical = subscriber.filter.as_ref().map(|f| f.canonical()).unwrap_or_default();
        match entry.groups.iter_mut().find(|g| g.canonical == canonical) {
            Some(group) => group.members.push(subscriber),
            None => entry.groups.push(Group {
                canonical,
                filter: subscriber.filter.clone(),
                members: vec![subscriber],
            }),
        }
        first
    }

    /// Removes a session from `topic`; true when it was the topic's last
    /// subscriber on this node.
    pub fn leave(&self, topic: &str, session: u64) -> bool {
        let mut topics = self.topics.write().expect("hub lock");
        let Some(entry) = topics.get_mut(topic) else {
            return false;
        };
        entry.remove(session);
        if entry.groups.is_empty() {
            topics.remove(topic);
            return true;
        }
        false
    }

    /// Whether `topic` has subscribers on this node.
    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.topics.read().expect("hub lock").contains_key(topic)
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
                let outlet = &subscriber.outlet;
                if outlet.offer(
                    subscriber.overflow,
                    &subscriber.topic,
                    partition,
                    view.key(),
                    frame,
                ) {
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

#[cfg(test)]
mod tests {
    use super::*;

    use tokio_util::sync::CancellationToken;

    use crate::outlet::{Drain, Item};

    fn subscriber(session: u64, capacity: usize) -> (Subscriber, Drain) {
        let (outlet, drain) = Outlet::new(capacity, 1, CancellationToken::new());
        let subscriber = Subscriber {
            session,
            topic: "t".into(),
            overflow: Overflow::Disconnect,
            outlet,
            filter: None,
        };
        (subscriber, drain)
    }

    #[test]
    fn same_bytes_reach_every_subscriber_and_full_queue_kicks_only_its_owner() {
        let hub = Hub::default();
        let (fast, mut fast_rx) = subscriber(1, 8);
        let (slow, _slow_rx) = subscriber(2, 1);
        let slow_outlet = slow.outlet.clone();
        hub.join("t", fast.clone());
        hub.join("t", slow);
        let frame = Utf8Bytes::from("{\"type\":\"message\"}");
        let view = RecordView::new(None, &[], None);
        assert_eq!(hub.dispatch("t", 0, &view, || frame.clone()), 2);
        assert_eq!(hub.dispatch("t", 0, &view, || frame.clone()), 1);
        assert!(slow_outlet.was_kicked());
        assert!(!fast.outlet.was_kicked());
        let mut taken = Vec::new();
        fast_rx.take(8, &mut taken);
        let [Item::Frame(a), Item::Frame(b)] = &taken[..] else { panic!("{taken:?}") };
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr(), "bytes are shared, not copied");
    }

    #[test]
    fn join_and_leave_say_first_and_last() {
        let hub = Hub::default();
        let (a, _ra) = subscriber(1, 1);
        let (b, _rb) = subscriber(2, 1);
        assert!(hub.join("t", a.clone()), "first");
        assert!(!hub.join("t", b), "second");
        assert!(!hub.join("t", a), "a session joining again is not first");
        assert!(!hub.leave("t", 1));
        assert!(hub.has_subscribers("t"));
        assert!(hub.leave("t", 2), "last");
        assert!(!hub.has_subscribers("t"));
        assert!(!hub.leave("t", 2), "leaving twice is not last twice");
    }
}
