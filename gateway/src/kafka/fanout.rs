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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::MessageFrame;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::filter::RecordView;
use crate::hub::{Activation, Hub, Subscriber};
use crate::kafka::retry_blocking;
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

/// Records dispatched in a burst before the fan-out task yields.
const YIELD_EVERY: u32 = 32;

/// The node's consumer and its subscription table.
pub struct Fanout {
    consumer: Arc<StreamConsumer>,
    hub: Arc<Hub>,
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
        consumer: StreamConsumer,
        hub: Arc<Hub>,
        topics: Arc<Topics>,
        timeout: Duration,
        partition_refresh: Duration,
    ) -> Self {
        Self { consumer: Arc::new(consumer), hub, topics, timeout, partition_refresh }
    }

    /// Subscribes a socket to `topic` (which has `partitions` partitions).
    /// Returns once the subscription is live.
    pub async fn subscribe(
        &self,
        topic: &str,
        partitions: i32,
        subscriber: Subscriber,
    ) -> Result<(), GatewayError> {
        let session = subscriber.session;
        let activation = self.hub.join(topic, subscriber);
        let result =
            activation.get_or_init(|| self.activate(topic, partitions, &activation)).await.clone();
        if result.is_err() {
            self.hub.abandon(topic, &activation);
            self.unsubscribe(topic, session);
        }
        result
    }

    /// Removes a socket from `topic`; the last one out unassigns it.
    pub fn unsubscribe(&self, topic: &str, session: u64) {
        self.hub.leave(topic, session, |partitions| {
            let mut list = TopicPartitionList::new();
            for &p in partitions {
                list.add_partition(topic, p);
            }
            if let Err(e) = self.consumer.incremental_unassign(&list) {
                tracing::warn!(topic, error = %e, "unassigning partitions failed");
            }
        });
    }

    async fn activate(
        &self,
        topic: &str,
        partitions: i32,
        activation: &Activation,
    ) -> Result<(), GatewayError> {
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

        let starts: BTreeMap<i32, i64> = starts.into_iter().collect();
        // Assigning is a quick local call into librdkafka, done under the
        // hub lock so it cannot interleave with the topic's unassignment.
        self.hub.activate(topic, activation, starts.clone(), |starts| {
            let mut list = TopicPartitionList::new();
            for (&p, &high) in starts {
                list.add_partition_offset(topic, p, Offset::Offset(high))
                    .map_err(|e| GatewayError::Internal(e.to_string()))?;
            }
            self.consumer
                .incremental_assign(&list)
                .map_err(|e| GatewayError::Internal(format!("assign failed: {e}")))
        })?;
        tracing::debug!(topic, ?starts, "topic live");
        Ok(())
    }

    /// Consumes until `shutdown`, dispatching every record.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(self.clone().watch_partitions(shutdown.clone()));
        let mut since_yield = 0u32;
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                received = self.consumer.recv() => received,
            };
            match received {
                Ok(record) => {
                    self.dispatch(&record);
                    // `recv` is always ready during a burst; let the socket
                    // writers drain their queues before dispatching more.
                    since_yield += 1;
                    if since_yield == YIELD_EVERY {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fan-out consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
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
    pub fn live_starts(&self, topic: &str) -> BTreeMap<i32, i64> {
        let mut starts = self.hub.assigned_starts(topic);
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
            for (topic, assigned) in self.hub.assigned_topics() {
                let Ok(count) = self.topics.refresh(&topic).await else {
                    continue;
                };
                if count as usize <= assigned {
                    continue;
                }
                let grown = self.hub.grow(&topic, count, |new| {
                    let mut list = TopicPartitionList::new();
                    for &p in new {
                        list.add_partition_offset(&topic, p, Offset::Beginning)
                            .map_err(|e| GatewayError::Internal(e.to_string()))?;
                    }
                    self.consumer
                        .incremental_assign(&list)
                        .map_err(|e| GatewayError::Internal(format!("assign failed: {e}")))
                });
                match grown {
                    Ok(()) => tracing::info!(topic, partitions = count, "new partitions assigned"),
                    Err(e) => tracing::warn!(topic, error = %e, "assigning new partitions failed"),
                }
            }
        }
    }
}
