//! The fan-out path: the node's Kafka consumer for every topic its sockets
//! subscribe to.
//!
//! Partitions are assigned by hand (no consumer group) at the high watermark
//! read when the first local socket subscribes to a topic, and unassigned
//! when the last one leaves. Because the watermark is read before the
//! client is told `subscribed`, every record produced after that reply has
//! an offset at or past the assigned position: the subscription is live.
//! A new subscription costs one watermark request per partition and no
//! rebalance. Each record is encoded once and handed to the [`Hub`].
//!
//! The [`Hub`] only says who is subscribed. Whether Kafka should deliver a
//! topic is decided here, per topic, under that topic's own lock
//! (`Fanout::reconcile`): it compares what the hub wants with what is
//! assigned and assigns or releases partitions to match. Every join and
//! every last leave reconciles, so a last-unsubscribe and a new
//! first-subscribe of the same topic cannot leave it wrongly assigned,
//! whatever their order; and no librdkafka call runs under the hub's lock,
//! so dispatch never waits for one.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::MessageFrame;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::filter::RecordView;
use crate::hub::{Hub, Subscriber};
use crate::kafka::context::KafkaContext;
use crate::kafka::retry_blocking;
use crate::kafka::source::{self, Flow, Route};
use crate::kafka::topics::Topics;
use crate::metrics;

/// A record's headers as `(name, value)` pairs, borrowed.
pub fn record_headers<'a>(record: &'a BorrowedMessage<'_>) -> Vec<(&'a str, Option<&'a [u8]>)> {
    record.headers().map(|hs| hs.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default()
}

/// Turns a Kafka record into its `message` frame, once; the bytes are then
/// shared by every socket that gets the record.
pub fn encode_record(record: &BorrowedMessage<'_>, headers: &[(&str, Option<&[u8]>)]) -> Utf8Bytes {
    let frame = MessageFrame {
        topic: record.topic(),
        partition: record.partition(),
        offset: record.offset(),
        timestamp: record.timestamp().to_millis(),
        key: record.key(),
        headers,
        value: record.payload(),
    };
    Utf8Bytes::from(frame.encode())
}

/// What the consumer is assigned of one topic: partition → the offset it
/// was assigned at. Empty while the topic is not assigned.
#[derive(Debug, Default)]
struct Assignment {
    starts: BTreeMap<i32, i64>,
}

/// A topic's assignment behind its own lock: held across the Kafka round
/// trip that reads the end offsets, so that one activation runs at a time
/// per topic (others wait for it), and never together with the hub's lock.
type TopicLock = Arc<tokio::sync::Mutex<Assignment>>;

/// The node's consumer and its subscription table.
pub struct Fanout {
    consumer: Arc<StreamConsumer<KafkaContext>>,
    hub: Arc<Hub>,
    /// Topic → its assignment. Short critical sections only (look-up,
    /// insert, remove); the per-topic lock is taken after it is released.
    assignments: Mutex<HashMap<String, TopicLock>>,
    topics: Arc<Topics>,
    timeout: Duration,
    partition_refresh: Duration,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("hub", &self.hub).finish_non_exhaustive()
    }
}

impl Fanout {
    pub fn new(
        consumer: StreamConsumer<KafkaContext>,
        hub: Arc<Hub>,
        topics: Arc<Topics>,
        timeout: Duration,
        partition_refresh: Duration,
    ) -> Self {
        Self {
            consumer: Arc::new(consumer),
            hub,
            assignments: Mutex::default(),
            topics,
            timeout,
            partition_refresh,
        }
    }

    /// Subscribes a socket to `topic` (which has `partitions` partitions).
    /// Returns once the subscription is live, with where each partition's
    /// delivery to it starts: every record at or past these offsets
    /// arrives.
    pub async fn subscribe(
        &self,
        topic: &str,
        partitions: i32,
        subscriber: Subscriber,
    ) -> Result<BTreeMap<i32, i64>, GatewayError> {
        let session = subscriber.session;
        self.hub.join(topic, subscriber);
        let lock = self.topic_lock(topic);
        let mut assignment = lock.lock().await;
        if let Err(e) = self.reconcile(topic, partitions, &mut assignment).await {
            if self.hub.leave(topic, session) {
                let _ = self.reconcile(topic, 0, &mut assignment).await;
            }
            return Err(e);
        }
        Ok(self.live_starts(topic, &assignment))
    }

    /// Removes a socket from `topic`; after the last one, the topic's
    /// partitions are released (in the background: it may have to wait for
    /// an activation of the topic under way).
    pub fn unsubscribe(self: &Arc<Self>, topic: &str, session: u64) {
        if !self.hub.leave(topic, session) {
            return;
        }
        let (fanout, topic) = (self.clone(), topic.to_owned());
        tokio::spawn(async move {
            let lock = fanout.topic_lock(&topic);
            let mut assignment = lock.lock().await;
            // Releasing needs no Kafka round trip: it cannot fail on one.
            let _ = fanout.reconcile(&topic, 0, &mut assignment).await;
            drop(assignment);
            fanout.forget(&topic, &lock);
        });
    }

    /// The lock of `topic`'s assignment, made on first use.
    fn topic_lock(&self, topic: &str) -> TopicLock {
        let mut assignments = self.assignments.lock().expect("assignments lock");
        assignments.entry(topic.to_owned()).or_default().clone()
    }

    /// Drops a released topic's entry, unless someone else is using it.
    fn forget(&self, topic: &str, lock: &TopicLock) {
        let mut assignments = self.assignments.lock().expect("assignments lock");
        let idle = Arc::strong_count(lock) == 2 // the map's and ours
            && lock.try_lock().is_ok_and(|a| a.starts.is_empty());
        if idle && assignments.get(topic).is_some_and(|l| Arc::ptr_eq(l, lock)) {
            assignments.remove(topic);
        }
    }

    /// Makes what is assigned of `topic` match what the hub wants: its
    /// `partitions` partitions at their end offsets when it has
    /// subscribers and is not assigned yet; nothing when it has none. Runs
    /// under the topic's lock (`assignment`).
    async fn reconcile(
        &self,
        topic: &str,
        partitions: i32,
        assignment: &mut Assignment,
    ) -> Result<(), GatewayError> {
        let wanted = self.hub.has_subscribers(topic);
        if !wanted && !assignment.starts.is_empty() {
            let mut list = TopicPartitionList::new();
            for &p in assignment.starts.keys() {
                list.add_partition(topic, p);
            }
            if let Err(e) = self.consumer.incremental_unassign(&list) {
                tracing::warn!(topic, error = %e, "unassigning partitions failed");
            }
            assignment.starts.clear();
            tracing::debug!(topic, "topic released");
        }
        // `partitions` 0: a release, which never assigns.
        if !wanted || !assignment.starts.is_empty() || partitions == 0 {
            return Ok(());
        }
        let starts = self.end_offsets(topic, partitions).await?;
        let mut list = TopicPartitionList::new();
        for (&p, &high) in &starts {
            list.add_partition_offset(topic, p, Offset::Offset(high))
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
        }
        self.consumer
            .incremental_assign(&list)
            .map_err(|e| GatewayError::Internal(format!("assign failed: {e}")))?;
        tracing::debug!(topic, ?starts, "topic live");
        assignment.starts = starts;
        Ok(())
    }

    /// The high watermark of each partition of `topic` (blocking Kafka
    /// calls, off the async threads).
    async fn end_offsets(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<BTreeMap<i32, i64>, GatewayError> {
        let consumer = self.consumer.clone();
        let (name, timeout) = (topic.to_owned(), self.timeout);
        let starts = tokio::task::spawn_blocking(move || {
            retry_blocking(timeout, || {
                (0..partitions)
                    .map(|p| {
                        consumer.fetch_watermarks(&name, p, timeout).map(|(_, high)| (p, high))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("watermark task: {e}")))?
        .map_err(|e| GatewayError::Unavailable(format!("reading end offsets failed: {e}")))?;
        Ok(starts.into_iter().collect())
    }

    /// Consumes until `shutdown`, dispatching every record.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(self.clone().watch_partitions(shutdown.clone()));
        source::pump("fan-out", &self.consumer, &shutdown, Live(&self)).await;
    }

    /// Encodes `record` once and queues the bytes to every subscriber.
    fn dispatch(&self, record: &BorrowedMessage<'_>) {
        let headers = record_headers(record);
        let view = RecordView::new(record.key(), &headers, record.payload());
        let encode = || encode_record(record, &headers);
        let delivered = self.hub.dispatch(record.topic(), record.partition(), &view, encode);
        metrics::fanout_record(delivered);
    }

    /// Where a `latest` subscription of `topic` made now starts, per
    /// partition: the consumer's position (the next record it will hand to
    /// the hub), or the offset the partition was assigned at if nothing was
    /// consumed since. Every record from there on reaches a subscriber that
    /// joined before this call. Local, no Kafka request.
    fn live_starts(&self, topic: &str, assignment: &Assignment) -> BTreeMap<i32, i64> {
        let mut starts = assignment.starts.clone();
        if let Ok(positions) = self.consumer.position() {
            for element in positions.elements_for_topic(topic) {
                if let (Offset::Offset(position), Some(start)) =
                    (element.offset(), starts.get_mut(&element.partition()))
                {
                    *start = (*start).max(position);
                }
            }
        }
        starts
    }

    /// Picks up partitions added to subscribed topics, from their start.
    async fn watch_partitions(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.partition_refresh);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let topics: Vec<(String, TopicLock)> = {
                let assignments = self.assignments.lock().expect("assignments lock");
                assignments.iter().map(|(t, l)| (t.clone(), l.clone())).collect()
            };
            for (topic, lock) in topics {
                let assigned = lock.lock().await.starts.len();
                if assigned == 0 {
                    continue;
                }
                let Ok(count) = self.topics.refresh(&topic).await else {
                    continue;
                };
                if count as usize <= assigned {
                    continue;
                }
                let mut assignment = lock.lock().await;
                match self.grow(&topic, count, &mut assignment) {
                    Ok(()) => tracing::info!(topic, partitions = count, "new partitions assigned"),
                    Err(e) => tracing::warn!(topic, error = %e, "assigning new partitions failed"),
                }
            }
        }
    }

    /// Assigns the partitions of `topic` that appeared after it was
    /// assigned, from their beginning.
    fn grow(
        &self,
        topic: &str,
        partition_count: i32,
        assignment: &mut Assignment,
    ) -> Result<(), GatewayError> {
        if assignment.starts.is_empty() {
            return Ok(()); // released meanwhile
        }
        let new: Vec<i32> =
            (0..partition_count).filter(|p| !assignment.starts.contains_key(p)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for &p in &new {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
        }
        self.consumer
            .incremental_assign(&list)
            .map_err(|e| GatewayError::Internal(format!("assign failed: {e}")))?;
        assignment.starts.extend(new.into_iter().map(|p| (p, 0)));
        Ok(())
    }
}

/// The live route: every record to the hub, never waiting on a socket.
struct Live<'a>(&'a Fanout);

impl Route for Live<'_> {
    fn deliver(&mut self, record: &BorrowedMessage<'_>) -> impl Future<Output = Flow> + Send {
        self.0.dispatch(record);
        std::future::ready(Flow::Next)
    }
}
