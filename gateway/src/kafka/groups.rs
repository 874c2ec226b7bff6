//! Shared-group subscriptions: sockets that subscribe with the same `group`
//! share a topic's records, each record going to exactly one of them, on
//! every node.
//!
//! Each node joins a real Kafka consumer group (`kafka.group_prefix` +
//! group) with one consumer per (group, topic), and spreads the partitions
//! Kafka gives it over its local member sockets, round-robin. Delivery is
//! at least once: offsets are committed only up to the oldest record not yet
//! processed (written to the socket with `ack: "auto"`, or committed by the
//! client with `ack: "client"`). When a member leaves with records it has
//! not processed, the node rewinds those partitions so the remaining
//! members get them again; when the last member leaves, the node leaves the
//! group and Kafka hands the partitions, from the committed offsets, to the
//! other nodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::{AckMode, StartFrom};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::filter::{Filter, RecordView};
use crate::kafka::client_config::ClientSettings;
use crate::kafka::fanout::{encode_record, record_headers};

/// A record that flows at its socket's pace (a replay's, or a shared
/// group's): the sender waits for room rather than dropping it. `done`
/// marks a group record processed (`ack: "auto"`) once the writer has
/// flushed it.
#[derive(Debug)]
pub struct PacedFrame {
    pub frame: Utf8Bytes,
    pub done: Option<Done>,
}

/// Marks one group record processed when called.
#[derive(Debug)]
pub struct Done {
    shared: Weak<Shared>,
    session: u64,
    partition: i32,
    offset: i64,
}

impl Done {
    pub fn complete(self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.processed(self.session, self.partition, self.offset);
        }
    }
}

/// Who gets a record.
enum Pick {
    Member(Member),
    /// Every member's filter excludes it.
    Unwanted,
    /// No member is left.
    Nobody,
}

/// Pending-record owner for records no member wanted (sessions start at 1).
const NO_SESSION: u64 = 0;

/// One socket in a group.
#[derive(Debug, Clone)]
pub struct Member {
    pub session: u64,
    pub ack: AckMode,
    pub queue: mpsc::Sender<PacedFrame>,
    pub filter: Option<Arc<Filter>>,
}

#[derive(Debug, Default)]
struct State {
    members: Vec<Member>,
    next: usize,
    /// Partition → offset → the session it was delivered to, not yet
    /// processed.
    pending: HashMap<i32, BTreeMap<i64, u64>>,
    /// Partition → one past the highest processed offset.
    processed_high: HashMap<i32, i64>,
}

/// Rebalance callbacks: forget pending records of partitions that come or
/// go (their next owner starts from the committed offset), and tell
/// waiters that an assignment arrived.
struct GroupContext {
    state: Arc<Mutex<State>>,
    assigned: watch::Sender<bool>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = match rebalance {
            Rebalance::Assign(list) | Rebalance::Revoke(list) => list.elements(),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "group rebalance error");
                return;
            }
        };
        let mut state = self.state.lock().expect("group lock");
        for p in partitions {
            state.pending.remove(&p.partition());
            state.processed_high.remove(&p.partition());
        }
        if matches!(rebalance, Rebalance::Assign(_)) {
            let _ = self.assigned.send(true);
        }
    }
}

/// This node's membership of one (group, topic).
struct Shared {
    topic: String,
    consumer: StreamConsumer<GroupContext>,
    /// Short critical sections only; never held across an await.
    state: Arc<Mutex<State>>,
    assigned: watch::Receiver<bool>,
    stop: CancellationToken,
}

/// The node's group memberships.
pub struct Groups {
    settings: ClientSettings,
    prefix: String,
    timeout: Duration,
    /// Short critical sections only.
    registry: Mutex<HashMap<(String, String), Arc<Shared>>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Groups {
    pub fn new(settings: ClientSettings, prefix: String, timeout: Duration) -> Self {
        Self { settings, prefix, timeout, registry: Mutex::default() }
    }

    /// Adds `member` to `group` on `topic`; returns once this node has its
    /// partitions.
    pub async fn join(
        &self,
        group: &str,
        topic: &str,
        from: &StartFrom,
        member: Member,
    ) -> Result<(), GatewayError> {
        let shared = {
            let mut registry = self.registry.lock().expect("registry lock");
            let key = (group.to_owned(), topic.to_owned());
            let shared = match registry.get(&key) {
                Some(shared) => shared.clone(),
                None => {
                    let shared = self.start(group, topic, from)?;
                    registry.insert(key, shared.clone());
                    shared
                }
            };
            shared.state.lock().expect("group lock").members.push(member);
            shared
        };
        let mut assigned = shared.assigned.clone();
        let ready = tokio::time::timeout(self.timeout * 4, assigned.wait_for(|a| *a)).await;
        if !matches!(ready, Ok(Ok(_))) {
            tracing::warn!(
                group,
                topic,
                "no partition assignment yet; members will get records once it arrives"
            );
        }
        Ok(())
    }

    fn start(
        &self,
        group: &str,
        topic: &str,
        from: &StartFrom,
    ) -> Result<Arc<Shared>, GatewayError> {
        let state = Arc::new(Mutex::new(State::default()));
        let (assigned_tx, assigned) = watch::channel(false);
        let context = GroupContext { state: state.clone(), assigned: assigned_tx };
        let reset = if *from == StartFrom::Earliest { "earliest" } else { "latest" };
        let consumer: StreamConsumer<GroupContext> = self
            .settings
            .group_consumer(&format!("{}{group}", self.prefix), reset)
            .create_with_context(context)
            .map_err(|e| GatewayError::Internal(format!("group consumer: {e}")))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| GatewayError::Internal(format!("group subscribe: {e}")))?;
        let shared = Arc::new(Shared {
            topic: topic.to_owned(),
            consumer,
            state,
            assigned,
            stop: CancellationToken::new(),
        });
        tokio::spawn(pump(shared.clone()));
        tracing::info!(group, topic, "joined consumer group");
        Ok(shared)
    }

    /// Removes a member. Records it had not processed go to the others
    /// again; the last member out leaves the Kafka group.
    pub fn leave(&self, group: &str, topic: &str, session: u64) {
        let key = (group.to_owned(), topic.to_owned());
        let mut registry = self.registry.lock().expect("registry lock");
        let Some(shared) = registry.get(&key).cloned() else { return };
        let mut state = shared.state.lock().expect("group lock");
        state.members.retain(|m| m.session != session);
        if state.members.is_empty() {
            // Leaving the group: the next owners start from the committed
            // offsets, which never passed this member's unprocessed records.
            drop(state);
            registry.remove(&key);
            shared.stop.cancel();
            return;
        }
        let mut rewinds = Vec::new();
        for (&partition, offsets) in state.pending.iter_mut() {
            let Some(&from) = offsets.iter().find(|(_, s)| **s == session).map(|(o, _)| o) else {
                continue;
            };
            offsets.retain(|&o, _| o < from);
            rewinds.push((partition, from));
        }
        drop(state);
        for (partition, offset) in rewinds {
            // Non-blocking seek: the consumer fetches from there again.
            if let Err(e) =
                shared.consumer.seek(topic, partition, Offset::Offset(offset), Duration::ZERO)
            {
                tracing::warn!(topic, partition, offset, error = %e, "group rewind failed");
            }
        }
    }

    /// A client commit (`ack: "client"`).
    pub fn commit(
        &self,
        group: &str,
        topic: &str,
        session: u64,
        partition: i32,
        offset: i64,
    ) -> Result<(), GatewayError> {
        let key = (group.to_owned(), topic.to_owned());
        let shared = self.registry.lock().expect("registry lock").get(&key).cloned();
        let Some(shared) = shared else {
            return Err(GatewayError::BadRequest(format!("not in a group on {topic:?}")));
        };
        if !shared.processed(session, partition, offset) {
            return Err(GatewayError::BadRequest(format!(
                "offset {offset} of partition {partition} is not awaiting a commit from this socket"
            )));
        }
        Ok(())
    }
}

impl Shared {
    /// Marks a record processed and stores the commit position: the oldest
    /// record still pending, or one past the newest processed one.
    fn processed(&self, session: u64, partition: i32, offset: i64) -> bool {
        let mut state = self.state.lock().expect("group lock");
        let Some(offsets) = state.pending.get_mut(&partition) else { return false };
        if offsets.get(&offset) != Some(&session) {
            return false;
        }
        offsets.remove(&offset);
        let oldest_pending = offsets.keys().next().copied();
        let high = state.processed_high.entry(partition).or_insert(0);
        *high = (*high).max(offset + 1);
        let position = oldest_pending.unwrap_or(*high);
        drop(state);
        if let Err(e) = self.consumer.store_offset(&self.topic, partition, position) {
            tracing::debug!(partition, position, error = %e, "storing group offset failed");
        }
        true
    }

    /// The member that gets the next record (round-robin among those whose
    /// filter it matches, preferring ones with room), registered as pending
    /// under the same lock so that `leave` always sees it.
    fn pick(&self, view: &RecordView<'_>, partition: i32, offset: i64) -> Pick {
        let mut state = self.state.lock().expect("group lock");
        let count = state.members.len();
        if count == 0 {
            return Pick::Nobody;
        }
        let wanting: Vec<usize> = (0..count)
            .map(|i| (state.next + i) % count)
            .filter(|&i| state.members[i].filter.as_ref().is_none_or(|f| f.matches(view)))
            .collect();
        let chosen =
            wanting.iter().find(|&&i| state.members[i].queue.capacity() > 0).or(wanting.first());
        let Some(&index) = chosen else {
            // Filtered out for every member: processed, but the commit
            // position still waits for older pending records.
            state.pending.entry(partition).or_default().insert(offset, NO_SESSION);
            return Pick::Unwanted;
        };
        state.next = index + 1;
        let member = state.members[index].clone();
        state.pending.entry(partition).or_default().insert(offset, member.session);
        Pick::Member(member)
    }

    /// A record that could not be handed to its member goes out again.
    fn rewind(&self, session: u64, partition: i32, offset: i64) {
        let mut state = self.state.lock().expect("group lock");
        if let Some(offsets) = state.pending.get_mut(&partition) {
            if offsets.get(&offset) == Some(&session) {
                offsets.retain(|&o, _| o < offset);
            }
        }
        drop(state);
        let _ = self.consumer.seek(&self.topic, partition, Offset::Offset(offset), Duration::ZERO);
    }
}

/// Consumes the group's partitions and hands each record to one member.
async fn pump(shared: Arc<Shared>) {
    loop {
        let received = tokio::select! {
            _ = shared.stop.cancelled() => break,
            received = shared.consumer.recv() => received,
        };
        let record = match received {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(error = %e, "group consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let headers = record_headers(&record);
        let view = RecordView::new(record.key(), &headers, record.payload());
        let (partition, offset) = (record.partition(), record.offset());
        let member = match shared.pick(&view, partition, offset) {
            Pick::Member(member) => member,
            Pick::Unwanted => {
                shared.processed(NO_SESSION, partition, offset);
                continue;
            }
            // The last member left: stop without marking anything
            // processed, so the next owner gets this record.
            Pick::Nobody => break,
        };
        let done = (member.ack == AckMode::Auto).then(|| Done {
            shared: Arc::downgrade(&shared),
            session: member.session,
            partition,
            offset,
        });
        let delivery = PacedFrame { frame: encode_record(&record, &headers), done };
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            // A full member queue pauses this group's consumption; it never
            // drops a record.
            sent = member.queue.send(delivery) => if sent.is_err() {
                shared.rewind(member.session, partition, offset);
            },
        }
    }
    tracing::info!(topic = shared.topic, "left consumer group");
}
