//! The publish path: a decoded `publish` frame becomes a Kafka record, and
//! its delivery report becomes an `ack` or an `error`.
//!
//! The node has one producer ([`KafkaProducer`]). librdkafka's polling
//! thread calls [`Reports::delivery`] with each record's report, and the
//! report goes where the record's [`Answer`] says:
//!
//! - a WebSocket publish ([`Publisher::send_answered`]): its
//!   [`OnDelivery`] writes the reply straight into the socket's outlet, on
//!   that thread. No future, channel or task wake-up per publish;
//! - everything else ([`Publisher::send`], [`write`]): a oneshot that a
//!   [`Delivery`] future awaits (HTTP batches, the control topic).
//!
//! A record is handed over without waiting: a full queue is refused at once
//! with `unavailable` (backpressure goes to the client, never into an
//! unbounded buffer). Every report comes once, when Kafka has stored the
//! record or `message.timeout.ms` has passed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use ferry_protocol::{Publish, TRACEPARENT};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;

use crate::error::GatewayError;
use crate::kafka::context::KafkaContext;
use crate::kafka::health::Health;
use crate::telemetry::PublishSpan;

/// Kafka header carrying the publish's request id.
pub const FERRY_ID_HEADER: &str = "ferry-id";

/// The node's one producer: publishes, the control topic's records, and the
/// metadata requests of the health probe and topic look-ups.
pub type KafkaProducer = ThreadedProducer<Reports>;

/// Where Kafka stored a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
}

/// What a record's delivery report is, for whoever waits on it.
pub type Outcome = Result<Stored, GatewayError>;

/// Answers one record's delivery report. Called once, on librdkafka's
/// polling thread: it must not block (a push into a bounded queue, say).
pub trait OnDelivery: Send + Sync + 'static {
    fn delivered(self: Box<Self>, outcome: Outcome);
}

/// Who learns a record's outcome.
enum Answer {
    /// A [`Delivery`] future.
    Wait(oneshot::Sender<Outcome>),
    /// The caller's callback.
    Call(Box<dyn OnDelivery>),
}

/// What travels with a record through librdkafka (its delivery opaque).
pub struct Report {
    answer: Answer,
    /// A publish's: the ack latency and its span. `None` for the control
    /// topic's records.
    publish: Option<(Instant, PublishSpan)>,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report").finish_non_exhaustive()
    }
}

impl Report {
    /// Settles the record: metrics and span for a publish, then the answer.
    fn settle(self, outcome: Outcome) {
        if let Some((started, mut span)) = self.publish {
            match &outcome {
                Ok(stored) => {
                    crate::metrics::publish_acked(started.elapsed());
                    span.acked(stored.partition, stored.offset);
                }
                Err(e) => span.failed(e.code().as_str()),
            }
        }
        match self.answer {
            // The receiver gone: nobody waits any more (a batch request
            // that ended); the record is in Kafka all the same.
            Answer::Wait(tx) => drop(tx.send(outcome)),
            Answer::Call(on) => on.delivered(outcome),
        }
    }
}

/// The producer's librdkafka context: the node's [`KafkaContext`] for logs
/// and errors, and the delivery reports.
#[derive(Debug, Clone)]
pub struct Reports {
    client: KafkaContext,
}

impl Reports {
    pub fn new(client: KafkaContext) -> Self {
        Self { client }
    }
}

impl ClientContext for Reports {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.client.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client.error(error, reason);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Report>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Box<Report>) {
        let outcome = match result {
            Ok(record) => Ok(Stored { partition: record.partition(), offset: record.offset() }),
            Err((err, _)) => Err(classify(err)),
        };
        report.settle(outcome);
    }
}

/// Produces the records of every session of the node.
#[derive(Clone)]
pub struct Publisher {
    producer: KafkaProducer,
    health: Arc<Health>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(producer: KafkaProducer, health: Arc<Health>) -> Self {
        Self { producer, health }
    }

    /// Enqueues `publish` for Kafka. The returned [`Delivery`] resolves to
    /// where the record was stored, or why it was not.
    pub fn send(&self, publish: &Publish<'_>) -> Result<Delivery, GatewayError> {
        let (tx, rx) = oneshot::channel();
        self.produce(publish, Answer::Wait(tx), Instant::now())?;
        Ok(Delivery { rx })
    }

    /// Enqueues `publish` for Kafka; `on` gets its outcome, on librdkafka's
    /// polling thread. Refused at once (and `on` dropped unused) when the
    /// record cannot be queued. `read`: when the publish was read (its ack
    /// latency counts from then).
    pub fn send_answered(
        &self,
        publish: &Publish<'_>,
        on: Box<dyn OnDelivery>,
        read: Instant,
    ) -> Result<(), GatewayError> {
        self.produce(publish, Answer::Call(on), read)
    }

    fn produce(
        &self,
        publish: &Publish<'_>,
        answer: Answer,
        started: Instant,
    ) -> Result<(), GatewayError> {
        if !self.health.is_ready() {
            return Err(GatewayError::Unavailable("Kafka is unreachable".into()));
        }
        // With telemetry on, the record's trace context names the gateway's
        // `ferry.publish` span as parent.
        let span = PublishSpan::start(publish);
        let traceparent = span.traceparent();
        // The client's request id travels with the record so that downstream
        // consumers can de-duplicate a publish the client retried.
        let headers = publish
            .headers
            .iter()
            .fold(OwnedHeaders::new_with_capacity(publish.headers.len() + 1), |h, (k, v)| {
                let value = match &traceparent {
                    Some(ours) if k.eq_ignore_ascii_case(TRACEPARENT) => &ours[..],
                    _ => v.as_bytes(),
                };
                h.insert(Header { key: k, value: Some(value) })
            })
            .insert(Header { key: FERRY_ID_HEADER, value: Some(publish.id.as_bytes()) });
        let report = Box::new(Report { answer, publish: Some((started, span)) });
        let mut record =
            BaseRecord::<[u8], [u8], Box<Report>>::with_opaque_to(&publish.topic, report)
                .payload(publish.value.as_bytes())
                .headers(headers);
        if let Some(key) = &publish.key {
            record = record.key(key.as_slice());
        }
        if let Some(partition) = publish.partition {
            record = record.partition(partition);
        }
        match self.producer.send(record) {
            Ok(()) => Ok(()),
            Err((err, record)) => {
                let e = classify(&err);
                if let Some((_, mut span)) = record.delivery_opaque.publish {
                    span.failed(e.code().as_str());
                }
                Err(e)
            }
        }
    }
}

/// Writes one record (`payload` `None`: a tombstone) and resolves once
/// Kafka has stored it, or with why it did not.
pub fn write(
    producer: &KafkaProducer,
    topic: &str,
    key: &str,
    payload: Option<&[u8]>,
) -> Result<Delivery, GatewayError> {
    let (tx, rx) = oneshot::channel();
    let report = Box::new(Report { answer: Answer::Wait(tx), publish: None });
    let mut record = BaseRecord::<str, [u8], Box<Report>>::with_opaque_to(topic, report).key(key);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    producer.send(record).map_err(|(err, _)| classify(&err))?;
    Ok(Delivery { rx })
}

/// Maps a produce or delivery error to what the client is told.
pub fn classify(err: &KafkaError) -> GatewayError {
    use RDKafkaErrorCode as C;
    match err.rdkafka_error_code() {
        Some(C::QueueFull) => GatewayError::Unavailable("the gateway's Kafka queue is full".into()),
        Some(C::MessageTimedOut) => GatewayError::Timeout,
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            GatewayError::TooLarge
        }
        Some(C::UnknownTopicOrPartition | C::UnknownTopic) => {
            GatewayError::UnknownTopic("the topic".into())
        }
        Some(C::UnknownPartition) => {
            GatewayError::BadRequest("that partition does not exist".into())
        }
        Some(C::PurgeQueue | C::PurgeInflight) => GatewayError::Timeout,
        Some(
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::RequestTimedOut,
        ) => GatewayError::Unavailable(err.to_string()),
        _ => GatewayError::Internal(err.to_string()),
    }
}

/// One record's way into Kafka, for a caller that waits on it: resolves to
/// where it was stored, or why it was not.
#[derive(Debug)]
pub struct Delivery {
    rx: oneshot::Receiver<Outcome>,
}

impl Future for Delivery {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        Poll::Ready(match std::task::ready!(Pin::new(&mut this.rx).poll(cx)) {
            Ok(outcome) => outcome,
            // Every report is settled, unless the producer is destroyed
            // with the record still in it.
            Err(_) => Err(GatewayError::Internal("producer went away".into())),
        })
    }
}
