//! Topic → local subscribers, grouped by filter, and the topic's recent
//! records. The fan-out hands each record here once; each distinct filter
//! is evaluated once per record (the record's JSON value is parsed at most
//! once, and only if a filter needs it), and the same bytes are queued to
//! every matching socket. Dispatch never waits on a socket: a socket whose
//! queue is full is told to close (slow consumer) and the others carry on.
//!
//! A subscriber catching up (a resume, `earliest`, a timestamp) is
//! *pending* here until it has caught up: it keeps the topic wanted, and
//! [`Hub::follow`] serves it the [`Recent`] records past its position,
//! then joins it to the live members in the same critical section in which
//! it found nothing more to serve. Because [`Hub::dispatch`] keeps each
//! record and queues it to the members under that same lock, the switch
//! from catching up to live has no gap and no duplicate. A member may carry
//! a *floor* per partition: records below it are not for it (it joined
//! ahead of the live consumer, which is still catching up).
//!
//! [`Hub::join`], [`Hub::pend`] and [`Hub::leave`] say whether a subscriber
//! was a topic's first or last on this node; what that means for Kafka
//! (assigning or releasing partitions) is [`crate::kafka::fanout`]'s
//! business, done under its own per-topic lock, never under this one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use ferry_protocol::Overflow;

use crate::filter::Filter;
use crate::outlet::Outlet;
use crate::recent::{Budget, Coverage, Recent, Record};

/// One socket's end of a subscription.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The session, unique within this node.
    pub session: u64,
    /// The topic, shared with the lossy queue's entries.
    pub topic: Arc<str>,
    /// What happens when the socket does not keep up.
    pub overflow: Overflow,
    /// At most one record per key per this many ms (`throttle_ms`); a
    /// `u32` so that it fits beside `overflow` at no cost per member.
    pub throttle_ms: Option<std::num::NonZeroU32>,
    /// The socket's queues (shared by all its topics).
    pub outlet: Outlet,
    /// Only records matching this reach the socket.
    pub filter: Option<Arc<Filter>>,
}

/// A member: a subscriber, and the first offset it wants per partition
/// (indexed by partition) when it joined ahead of the live consumer.
#[derive(Debug)]
struct Member {
    subscriber: Subscriber,
    floor: Option<Box<[i64]>>,
}

impl Member {
    fn wants(&self, partition: i32, offset: i64) -> bool {
        let Some(floor) = &self.floor else { return true };
        usize::try_from(partition)
            .ok()
            .and_then(|p| floor.get(p))
            .is_none_or(|&first| offset >= first)
    }
}

/// Subscribers of a topic sharing one filter.
#[derive(Debug)]
struct Group {
    /// [`Filter::canonical`], or empty for "no filter".
    canonical: String,
    filter: Option<Arc<Filter>>,
    members: Vec<Member>,
}

#[derive(Debug)]
struct TopicEntry {
    groups: Vec<Group>,
    /// Sessions catching up on the topic (not members yet).
    pending: HashSet<u64>,
    recent: Recent,
}

/// What [`Hub::follow`] did for a subscriber catching up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Records to send (then ask again).
    Records,
    /// Nothing more to send: it is a live member now.
    Joined,
    /// Nothing more to send, but the live consumer is still catching up
    /// itself (the topic was just assigned, back at the first resume's
    /// position): wait for [`Hub::head_signal`], then ask again.
    Wait,
    /// Its position is older than the recent records: Kafka must serve it.
    Behind,
    /// It left (unsubscribed, or its socket closed).
    Gone,
}

/// The node's subscription table.
#[derive(Debug)]
pub struct Hub {
    /// Held only for map operations, for keeping a record and for
    /// non-blocking `try_send`s; never across an await.
    topics: RwLock<HashMap<String, TopicEntry>>,
    budget: Arc<Budget>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(Budget::new(0, std::time::Duration::ZERO))
    }
}

impl Hub {
    /// A hub whose topics keep recent records within `budget`.
    pub fn new(budget: Arc<Budget>) -> Self {
        Self { topics: RwLock::default(), budget }
    }

    /// The recent records' budget (bytes held now).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    fn entry<'a>(
        &self,
        topics: &'a mut HashMap<String, TopicEntry>,
        topic: &str,
    ) -> &'a mut TopicEntry {
        topics.entry(topic.to_owned()).or_insert_with(|| TopicEntry {
            groups: Vec::new(),
            pending: HashSet::new(),
            recent: Recent::new(self.budget.clone()),
        })
    }

    /// Adds `subscriber` to `topic` as a live member (replacing the
    /// session's earlier entry there, if any); true when it is the topic's
    /// first on this node.
    pub fn join(&self, topic: &str, subscriber: Subscriber) -> bool {
        let mut topics = self.topics.write().expect("hub lock");
        let entry = self.entry(&mut topics, topic);
        entry.remove(subscriber.session);
        let first = entry.is_empty();
        entry.add(Member { subscriber, floor: None });
        first
    }

    /// Marks `session` as catching up on `topic` (it keeps the topic
    /// wanted); true when it is the topic's first on this node.
    pub fn pend(&self, topic: &str, session: u64) -> bool {
        let mut topics = self.topics.write().expect("hub lock");
        let entry = self.entry(&mut topics, topic);
        entry.remove(session);
        let first = entry.is_empty();
        entry.pending.insert(session);
        first
    }

    /// Removes a session from `topic`, live or catching up; true when it
    /// was the topic's last subscriber on this node.
    pub fn leave(&self, topic: &str, session: u64) -> bool {
        let mut topics = self.topics.write().expect("hub lock");
        let Some(entry) = topics.get_mut(topic) else {
            return false;
        };
        entry.remove(session);
        if entry.is_empty() {
            topics.remove(topic);
            return true;
        }
        false
    }

    /// Whether `topic` has subscribers on this node.
    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.topics.read().expect("hub lock").contains_key(topic)
    }

    /// The live consumer was assigned `topic`'s partitions at `starts`,
    /// when they ended at `ends`: their recent records start there. With
    /// `only_missing`, partitions already kept are left as they are.
    pub fn assign(
        &self,
        topic: &str,
        starts: &BTreeMap<i32, i64>,
        ends: &BTreeMap<i32, i64>,
        only_missing: bool,
    ) {
        let mut topics = self.topics.write().expect("hub lock");
        let Some(entry) = topics.get_mut(topic) else { return };
        let kept = entry.recent.ends();
        for (&p, &offset) in starts {
            if !(only_missing && kept.contains_key(&p)) {
                let end = ends.get(&p).copied().unwrap_or(offset);
                entry.recent.assign(p, offset, end);
            }
        }
    }

    /// The live consumer's position in `topic` reached `positions`.
    pub fn reached(&self, topic: &str, positions: &BTreeMap<i32, i64>) {
        let mut topics = self.topics.write().expect("hub lock");
        if let Some(entry) = topics.get_mut(topic) {
            entry.recent.reached(positions);
        }
    }

    /// Topics whose live consumer is still catching up.
    pub fn behind_head(&self) -> Vec<String> {
        let topics = self.topics.read().expect("hub lock");
        topics.iter().filter(|(_, e)| !e.recent.at_head()).map(|(t, _)| t.clone()).collect()
    }

    /// Turns true once `topic`'s live consumer has caught up; `None` when
    /// the topic has no entry.
    pub fn head_signal(&self, topic: &str) -> Option<tokio::sync::watch::Receiver<bool>> {
        let topics = self.topics.read().expect("hub lock");
        topics.get(topic).map(|entry| entry.recent.head_signal())
    }

    /// Joins `subscriber` (pending or not) to `topic`'s live members, from
    /// the live path's next offsets but not before `not_before` (where the
    /// subscription must start when the live consumer is still catching
    /// up). Returns where each partition's delivery to it starts, or `None`
    /// when the topic is gone (the subscriber left meanwhile).
    pub fn join_live(
        &self,
        subscriber: Subscriber,
        not_before: &BTreeMap<i32, i64>,
    ) -> Option<BTreeMap<i32, i64>> {
        let mut topics = self.topics.write().expect("hub lock");
        let entry = topics.get_mut(&*subscriber.topic)?;
        let mut starts = entry.recent.ends();
        for (p, start) in &mut starts {
            if let Some(&wanted) = not_before.get(p) {
                *start = (*start).max(wanted);
            }
        }
        entry.remove(subscriber.session);
        entry.add(Member { floor: Some(floor(&starts)), subscriber });
        Some(starts)
    }

    /// Whether `topic`'s recent records serve a subscriber at `cursor`;
    /// `None` when the topic has no entry.
    pub fn coverage(&self, topic: &str, cursor: &BTreeMap<i32, i64>) -> Option<Coverage> {
        let topics = self.topics.read().expect("hub lock");
        topics.get(topic).map(|entry| entry.recent.coverage(cursor))
    }

    /// Where a resume of `topic` at `offsets` starts, when its recent
    /// records alone can tell: every partition is kept and every requested
    /// offset lies within what is kept (partitions not named start at the
    /// live end). `None` when Kafka must be asked.
    pub fn plan_within_recent(
        &self,
        topic: &str,
        partitions: i32,
        offsets: &BTreeMap<i32, i64>,
    ) -> Option<BTreeMap<i32, i64>> {
        let topics = self.topics.read().expect("hub lock");
        let recent = &topics.get(topic)?.recent;
        (0..partitions)
            .map(|p| {
                let (start, end) = recent.bounds(p)?;
                match offsets.get(&p) {
                    None => Some((p, end)),
                    Some(&at) if (start..=end).contains(&at) => Some((p, at)),
                    Some(_) => None,
                }
            })
            .collect()
    }

    /// Serves a pending subscriber at `cursor`: adds up to `max` recent
    /// records past it to `out`, or, when there are none, joins it to the
    /// live members from `cursor` on, atomically with dispatch.
    pub fn follow(
        &self,
        subscriber: &Subscriber,
        cursor: &BTreeMap<i32, i64>,
        max: usize,
        out: &mut Vec<Arc<Record>>,
    ) -> Step {
        let mut topics = self.topics.write().expect("hub lock");
        let Some(entry) = topics.get_mut(&*subscriber.topic) else { return Step::Gone };
        if !entry.pending.contains(&subscriber.session) {
            return Step::Gone;
        }
        if entry.recent.coverage(cursor) == Coverage::Behind {
            return Step::Behind;
        }
        entry.recent.read(cursor, max, out);
        if !out.is_empty() {
            return Step::Records;
        }
        if !entry.recent.at_head() {
            return Step::Wait;
        }
        entry.pending.remove(&subscriber.session);
        entry.add(Member { subscriber: subscriber.clone(), floor: Some(floor(cursor)) });
        Step::Joined
    }

    /// Keeps `record` among `topic`'s recent records and queues it to every
    /// member whose filter it matches. Returns how many sockets got it.
    pub fn dispatch(&self, topic: &str, record: Arc<Record>) -> usize {
        let mut topics = self.topics.write().expect("hub lock");
        let Some(entry) = topics.get_mut(topic) else { return 0 };
        let delivered = record.with_view(|view| {
            let mut delivered = 0;
            for group in &entry.groups {
                if group.filter.as_ref().is_some_and(|f| !f.matches(view)) {
                    continue;
                }
                for member in &group.members {
                    if !member.wants(record.partition, record.offset) {
                        continue;
                    }
                    let subscriber = &member.subscriber;
                    if subscriber.outlet.offer(
                        subscriber.overflow,
                        subscriber.throttle_ms,
                        &subscriber.topic,
                        record.partition,
                        view.key(),
                        &record.frame,
                    ) {
                        delivered += 1;
                    }
                }
            }
            delivered
        });
        let catching_up = !entry.pending.is_empty();
        entry.recent.push(record, catching_up);
        delivered
    }

    /// Lets every topic's records older than the age bound go, except on
    /// topics with subscribers catching up (see [`crate::recent`]).
    pub fn expire(&self) {
        let now = Instant::now();
        let mut topics = self.topics.write().expect("hub lock");
        for entry in topics.values_mut().filter(|e| e.pending.is_empty()) {
            entry.recent.expire(now);
        }
    }
}

/// A floor indexed by partition (partitions not named start at 0).
fn floor(starts: &BTreeMap<i32, i64>) -> Box<[i64]> {
    let len = starts.keys().next_back().map_or(0, |&p| p as usize + 1);
    let mut floor = vec![0; len];
    for (&p, &offset) in starts {
        floor[p as usize] = offset;
    }
    floor.into_boxed_slice()
}

impl TopicEntry {
    fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.pending.is_empty()
    }

    fn add(&mut self, member: Member) {
        let filter = &member.subscriber.filter;
        let canonical = filter.as_ref().map(|f| f.canonical()).unwrap_or_default();
        match self.groups.iter_mut().find(|g| g.canonical == canonical) {
            Some(group) => group.members.push(member),
            None => {
                self.groups.push(Group { canonical, filter: filter.clone(), members: vec![member] })
            }
        }
    }

    fn remove(&mut self, session: u64) {
        self.pending.remove(&session);
        for group in &mut self.groups {
            group.members.retain(|m| m.subscriber.session != session);
        }
        self.groups.retain(|g| !g.members.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use axum::extract::ws::Utf8Bytes;
    use tokio_util::sync::CancellationToken;

    use crate::outlet::{Drain, Item};

    fn subscriber(session: u64, capacity: usize) -> (Subscriber, Drain) {
        let (outlet, drain) = Outlet::new(capacity, 1, CancellationToken::new());
        let subscriber = Subscriber {
            session,
            topic: "t".into(),
            overflow: Overflow::Disconnect,
            throttle_ms: None,
            outlet,
            filter: None,
        };
        (subscriber, drain)
    }

    fn record(partition: i32, offset: i64) -> Arc<Record> {
        let frame = Utf8Bytes::from(format!("{partition}/{offset}"));
        Arc::new(Record::new(partition, offset, None, frame, None, &[], None))
    }

    fn taken(drain: &mut Drain) -> Vec<String> {
        let mut out = Vec::new();
        drain.take(1024, &mut out);
        out.iter()
            .map(|item| match item {
                Item::Frame(f) => f.as_str().to_owned(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn same_bytes_reach_every_subscriber_and_full_queue_kicks_only_its_owner() {
        let hub = Hub::default();
        let (fast, mut fast_rx) = subscriber(1, 8);
        let (slow, _slow_rx) = subscriber(2, 1);
        let slow_outlet = slow.outlet.clone();
        hub.join("t", fast.clone());
        hub.join("t", slow);
        assert_eq!(hub.dispatch("t", record(0, 0)), 2);
        assert_eq!(hub.dispatch("t", record(0, 1)), 1);
        assert!(slow_outlet.was_kicked());
        assert!(!fast.outlet.was_kicked());
        let mut taken = Vec::new();
        fast_rx.take(8, &mut taken);
        assert_eq!(taken.len(), 2);
        let shared = record(0, 2);
        let (other, mut other_rx) = subscriber(3, 8);
        hub.join("t", other);
        hub.dispatch("t", shared.clone());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        fast_rx.take(8, &mut a);
        other_rx.take(8, &mut b);
        let [Item::Frame(a)] = &a[..] else { panic!("{a:?}") };
        let [Item::Frame(b)] = &b[..] else { panic!("{b:?}") };
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
        assert!(hub.pend("t", 3), "a subscriber catching up keeps the topic wanted");
        assert!(hub.has_subscribers("t"));
        assert!(hub.leave("t", 3));
    }

    /// A subscriber catching up gets the recent records past its position,
    /// then joins the live members: the records dispatched after that reach
    /// it once, and nothing is missed or repeated at the switch.
    #[test]
    fn catching_up_from_recent_records_joins_live_at_the_next_offset() {
        let hub = Hub::new(Budget::new(1 << 20, Duration::from_secs(60)));
        let (live, _live_rx) = subscriber(1, 64);
        hub.join("t", live);
        let starts = BTreeMap::from([(0, 0), (1, 0)]);
        hub.assign("t", &starts, &starts, false);
        for o in 0..5 {
            hub.dispatch("t", record(0, o));
        }
        hub.dispatch("t", record(1, 0));
        let (late, mut late_rx) = subscriber(2, 64);
        assert!(!hub.pend("t", 2));
        let cursor = BTreeMap::from([(0, 3), (1, 0)]);
        let mut out = Vec::new();
        assert_eq!(hub.follow(&late, &cursor, 2, &mut out), Step::Records);
        let got: Vec<_> = out.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(got, [(0, 3), (1, 0)], "at most the batch, a share of each partition");
        // The caller sends them and moves its cursor; meanwhile more arrive.
        let cursor = BTreeMap::from([(0, 4), (1, 1)]);
        hub.dispatch("t", record(0, 5));
        out.clear();
        assert_eq!(hub.follow(&late, &cursor, 64, &mut out), Step::Records);
        let got: Vec<_> = out.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(got, [(0, 4), (0, 5)], "in offset order");
        out.clear();
        let cursor = BTreeMap::from([(0, 6), (1, 1)]);
        assert_eq!(hub.follow(&late, &cursor, 64, &mut out), Step::Joined);
        assert!(taken(&mut late_rx).is_empty(), "follow itself queues nothing");
        hub.dispatch("t", record(0, 6));
        assert_eq!(taken(&mut late_rx), ["0/6"], "live from the next offset");
        assert_eq!(hub.follow(&late, &cursor, 64, &mut out), Step::Gone, "not pending any more");
        assert_eq!(hub.coverage("t", &BTreeMap::from([(0, 0)])), Some(Coverage::Covered));
    }

    #[test]
    fn a_member_ahead_of_the_live_consumer_skips_what_is_below_its_floor() {
        let hub = Hub::new(Budget::new(1 << 20, Duration::from_secs(60)));
        let (ahead, mut ahead_rx) = subscriber(1, 64);
        hub.pend("t", 1);
        hub.assign("t", &BTreeMap::from([(0, 0)]), &BTreeMap::from([(0, 2)]), false);
        let starts = hub.join_live(ahead, &BTreeMap::from([(0, 2)])).unwrap();
        assert_eq!(starts, BTreeMap::from([(0, 2)]));
        for o in 0..4 {
            hub.dispatch("t", record(0, o));
        }
        assert_eq!(taken(&mut ahead_rx), ["0/2", "0/3"]);
    }

    /// A subscriber that caught up while the live consumer is itself still
    /// catching up (a takeover) waits, rather than join and take the rest
    /// of that catch-up as a burst of live records.
    #[test]
    fn caught_up_behind_a_catching_up_consumer_waits_for_it() {
        let hub = Hub::new(Budget::new(1 << 20, Duration::from_secs(60)));
        let (s, _rx) = subscriber(1, 64);
        hub.pend("t", 1);
        hub.assign("t", &BTreeMap::from([(0, 0)]), &BTreeMap::from([(0, 2)]), false);
        let signal = hub.head_signal("t").unwrap();
        let mut out = Vec::new();
        assert_eq!(hub.follow(&s, &BTreeMap::from([(0, 0)]), 64, &mut out), Step::Wait);
        hub.dispatch("t", record(0, 0));
        hub.dispatch("t", record(0, 1));
        assert!(*signal.borrow(), "the consumer reached where the partition ended");
        assert_eq!(hub.follow(&s, &BTreeMap::from([(0, 0)]), 64, &mut out), Step::Records);
        out.clear();
        assert_eq!(hub.follow(&s, &BTreeMap::from([(0, 2)]), 64, &mut out), Step::Joined);
    }

    /// Records past their age stay while a subscriber is catching up on
    /// the topic (it is reading them), and go once none is.
    #[test]
    fn records_age_out_only_when_nobody_is_catching_up() {
        let hub = Hub::new(Budget::new(1 << 20, Duration::ZERO));
        let (live, _live_rx) = subscriber(1, 64);
        hub.join("t", live);
        hub.pend("t", 2);
        hub.assign("t", &BTreeMap::from([(0, 0)]), &BTreeMap::from([(0, 0)]), false);
        for o in 0..3 {
            hub.dispatch("t", record(0, o));
        }
        std::thread::sleep(Duration::from_millis(2));
        hub.expire();
        let from_start = BTreeMap::from([(0, 0)]);
        assert_eq!(hub.coverage("t", &from_start), Some(Coverage::Covered));
        hub.leave("t", 2);
        hub.expire();
        assert_eq!(hub.coverage("t", &from_start), Some(Coverage::Behind));
        assert_eq!(hub.budget().used(), 0);
    }

    #[test]
    fn a_position_older_than_the_recent_records_is_behind() {
        let hub = Hub::new(Budget::new(1 << 20, Duration::from_secs(60)));
        let (s, _rx) = subscriber(1, 64);
        hub.pend("t", 1);
        hub.assign("t", &BTreeMap::from([(0, 10)]), &BTreeMap::from([(0, 10)]), false);
        let mut out = Vec::new();
        assert_eq!(hub.follow(&s, &BTreeMap::from([(0, 9)]), 64, &mut out), Step::Behind);
        hub.leave("t", 1);
        assert_eq!(hub.follow(&s, &BTreeMap::from([(0, 10)]), 64, &mut out), Step::Gone);
    }
}
