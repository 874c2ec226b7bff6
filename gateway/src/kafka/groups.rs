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
//!
//! A group that has never committed starts where its first member asked
//! (`latest` or `earliest`), and that position is committed before the node
//! joins: otherwise, should the first members leave before committing, the
//! next member would start at the end of the topic and skip their records.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::{AckMode, StartFrom};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::filter::{Filter, RecordView};
use crate::kafka::client_config::ClientSettings;
use crate::kafka::context::KafkaContext;
use crate::kafka::record::{encode_record, record_headers};
use crate::kafka::source::{self, Flow, Route};
use crate::outlet::{Completion, Done, Outlet, PacedFrame};

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
    pub outlet: Outlet,
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
    /// The gateway's shared context: logs and errors go through it.
    kafka: KafkaContext,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.kafka.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.kafka.error(error, reason);
    }
}

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
    consumer: Arc<StreamConsumer<GroupContext>>,
    /// Short critical sections only; never held across an await.
    state: Arc<Mutex<State>>,
    assigned: watch::Receiver<bool>,
    stop: CancellationToken,
    /// Where writers report `ack: "auto"` records processed; the pump
    /// applies them.
    completions: mpsc::UnboundedSender<Completion>,
}

/// A membership being set up, or set up: everyone who joins meanwhile
/// waits for the same one.
type Slot = Arc<OnceCell<Arc<Shared>>>;

/// The node's group memberships.
pub struct Groups {
    settings: ClientSettings,
    /// Shared with every Kafka client of the gateway (refusals, log limits).
    context: KafkaContext,
    prefix: String,
    timeout: Duration,
    /// Short critical sections only: Kafka work happens outside it.
    registry: Mutex<HashMap<(String, String), Slot>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Groups {
    pub fn new(
        settings: ClientSettings,
        context: KafkaContext,
        prefix: String,
        timeout: Duration,
    ) -> Self {
        Self { settings, context, prefix, timeout, registry: Mutex::default() }
    }

    /// Adds `member` to `group` on `topic` (which has `partitions`
    /// partitions); returns once this node has its partitions.
    pub async fn join(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
        from: &StartFrom,
        member: Member,
    ) -> Result<(), GatewayError> {
        let key = (group.to_owned(), topic.to_owned());
        let shared = loop {
            let slot = self
                .registry
                .lock()
                .expect("registry lock")
                .entry(key.clone())
                .or_default()
                .clone();
            let started = slot.get_or_try_init(|| self.start(group, topic, partitions, from)).await;
            let mut registry = self.registry.lock().expect("registry lock");
            let current = registry.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot));
            match started {
                Err(e) => {
                    if current {
                        registry.remove(&key);
                    }
                    return Err(e);
                }
                Ok(shared) if current => {
                    shared.state.lock().expect("group lock").members.push(member);
                    break shared.clone();
                }
                // The last member left while this one waited: start anew.
                Ok(_) => continue,
            }
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

    /// Creates this node's consumer of the group, pins the group's start
    /// position if it has none, and joins.
    async fn start(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
        from: &StartFrom,
    ) -> Result<Arc<Shared>, GatewayError> {
        let state = Arc::new(Mutex::new(State::default()));
        let (assigned_tx, assigned) = watch::channel(false);
        let context = GroupContext {
            state: state.clone(),
            assigned: assigned_tx,
            kafka: self.context.clone(),
        };
        let earliest = *from == StartFrom::Earliest;
        let consumer: StreamConsumer<GroupContext> = self
            .settings
            .group_consumer(
                &format!("{}{group}", self.prefix),
                if earliest { "earliest" } else { "latest" },
            )
            .create_with_context(context)
            .map_err(|e| GatewayError::Internal(format!("group consumer: {e}")))?;
        let consumer = Arc::new(consumer);
        let (pinning, name, timeout) = (consumer.clone(), topic.to_owned(), self.timeout);
        let pinned = tokio::task::spawn_blocking(move || {
            pin_start(&pinning, &name, partitions, earliest, timeout)
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("group start task: {e}")))?;
        if let Err(e) = pinned {
            // Another node's members hold the group (a commit from outside
            // it is refused); they pinned the start when they created it.
            tracing::debug!(group, topic, error = %e, "group start position not pinned");
        }
        consumer
            .subscribe(&[topic])
            .map_err(|e| GatewayError::Internal(format!("group subscribe: {e}")))?;
        let (completions, completed) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            topic: topic.to_owned(),
            consumer,
            state,
            assigned,
            stop: CancellationToken::new(),
            completions,
        });
        tokio::spawn(run(shared.clone(), completed));
        tracing::info!(group, topic, "joined consumer group");
        Ok(shared)
    }

    /// Removes a member. Records it had not processed go to the others
    /// again; the last member out leaves the Kafka group.
    pub fn leave(&self, group: &str, topic: &str, session: u64) {
        let key = (group.to_owned(), topic.to_owned());
        let mut registry = self.registry.lock().expect("registry lock");
        // Not there, or still starting (then this member was never added).
        let Some(shared) = registry.get(&key).and_then(|slot| slot.get()).cloned() else {
            return;
        };
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
        let registry = self.registry.lock().expect("registry lock");
        let shared = registry.get(&key).and_then(|slot| slot.get()).cloned();
        drop(registry);
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

/// Commits the start position of every partition of `topic` that the group
/// has no committed offset for: the end of the partition, or its start with
/// `earliest`. Blocking (Kafka round trips). Kafka accepts such a commit
/// only while the group has no active members.
fn pin_start(
    consumer: &StreamConsumer<GroupContext>,
    topic: &str,
    partitions: i32,
    earliest: bool,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(all, timeout)?;
    let mut unset = TopicPartitionList::new();
    for element in committed.elements() {
        if let Offset::Offset(_) = element.offset() {
            continue;
        }
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), timeout)?;
        let start = if earliest { low } else { high };
        unset.add_partition_offset(topic, element.partition(), Offset::Offset(start))?;
    }
    if unset.count() > 0 {
        consumer.commit(&unset, CommitMode::Sync)?;
        tracing::debug!(topic, ?unset, "group start position pinned");
    }
    Ok(())
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
        // Stored as given: the next record to process. (`store_offset`
        // would store `position + 1`, librdkafka's convention for "the
        // record at this offset is done", and skip a record on the next
        // assignment.)
        let mut next = TopicPartitionList::new();
        let stored = next
            .add_partition_offset(&self.topic, partition, Offset::Offset(position))
            .and_then(|()| self.consumer.store_offsets(&next));
        if let Err(e) = stored {
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
            wanting.iter().find(|&&i| state.members[i].outlet.has_paced_room()).or(wanting.first());
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

/// Consumes the group's partitions (the one [`source::pump`]) until the
/// last member leaves.
async fn run(shared: Arc<Shared>, completed: mpsc::UnboundedReceiver<Completion>) {
    let route = Members { shared: shared.clone(), completed };
    source::pump("group", &shared.consumer, &shared.stop, route).await;
    tracing::info!(topic = shared.topic, "left consumer group");
}

/// A group's route: each record to one member, paced; the completions the
/// members' writers send back are applied meanwhile.
struct Members {
    shared: Arc<Shared>,
    completed: mpsc::UnboundedReceiver<Completion>,
}

impl Members {
    fn apply(&self, c: Completion) {
        self.shared.processed(c.session, c.partition, c.offset);
    }
}

impl Route for Members {
    async fn deliver(&mut self, record: &BorrowedMessage<'_>) -> Flow {
        let shared = &self.shared;
        let headers = record_headers(record);
        let view = RecordView::new(record.key(), &headers, record.payload());
        let (partition, offset) = (record.partition(), record.offset());
        let member = match shared.pick(&view, partition, offset) {
            Pick::Member(member) => member,
            Pick::Unwanted => {
                shared.processed(NO_SESSION, partition, offset);
                return Flow::Next;
            }
            // The last member left: stop without marking anything
            // processed, so the next owner gets this record.
            Pick::Nobody => return Flow::Stop,
        };
        let done = (member.ack == AckMode::Auto).then(|| {
            let completion = Completion { session: member.session, partition, offset };
            Done::new(shared.completions.clone(), completion)
        });
        let delivery = PacedFrame { frame: encode_record(record, &headers), done };
        let send = member.outlet.send_paced(delivery);
        tokio::pin!(send);
        // A full member queue pauses this group's consumption; it never
        // drops a record. Completions still apply meanwhile.
        let sent = loop {
            tokio::select! {
                Some(c) = self.completed.recv() => self.apply(c),
                sent = &mut send => break sent,
            }
        };
        if sent.is_err() {
            shared.rewind(member.session, partition, offset);
        }
        Flow::Next
    }

    async fn between(&mut self) {
        match self.completed.recv().await {
            Some(c) => self.apply(c),
            // Never: `Shared` holds a sender while the pump runs.
            None => std::future::pending().await,
        }
    }

    fn finish(&mut self) {
        // Records flushed just before the stop still count as processed.
        while let Ok(c) = self.completed.try_recv() {
            self.apply(c);
        }
    }
}
