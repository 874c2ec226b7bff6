//! The publish path: a decoded `publish` frame becomes a Kafka record, and
//! its delivery report becomes an `ack` or an `error`.
//!
//! `send_result` hands the record to librdkafka without waiting: a full
//! queue is answered at once with `unavailable` (backpressure goes to the
//! client, never into an unbounded buffer), and the returned future resolves
//! when Kafka has stored the record or `message.timeout.ms` has passed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use ferry_protocol::{Publish, TRACEPARENT};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::error::GatewayError;
use crate::kafka::context::KafkaContext;
use crate::kafka::health::Health;
use crate::kafka::topics::classify;
use crate::telemetry::PublishSpan;

/// Kafka header carrying the publish's request id.
pub const FERRY_ID_HEADER: &str = "ferry-id";

/// Where Kafka stored a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
}

/// Produces records for every session of the node.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer<KafkaContext>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(producer: FutureProducer<KafkaContext>, health: Arc<Health>) -> Self {
        Self { producer, health }
    }

    /// Enqueues `publish` for Kafka. The returned [`Delivery`] resolves to
    /// where the record was stored, or why it was not.
    pub fn send(&self, publish: &Publish<'_>) -> Result<Delivery, GatewayError> {
        if !self.health.is_ready() {
            return Err(GatewayError::Unavailable("Kafka is unreachable".into()));
        }
        let mut record =
            FutureRecord::<[u8], [u8]>::to(&publish.topic).payload(publish.value.as_bytes());
        if let Some(key) = &publish.key {
            record = record.key(key.as_slice());
        }
        if let Some(partition) = publish.partition {
            record = record.partition(partition);
        }
        // With telemetry on, the record's trace context names the gateway's
        // `ferry.publish` span as parent.
        let mut span = PublishSpan::start(publish);
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
        record = record.headers(headers);
        let started = Instant::now();
        let report = match self.producer.send_result(record) {
            Ok(report) => report,
            Err((err, _)) => {
                let e = classify(&err);
                span.failed(e.code().as_str());
                return Err(e);
            }
        };
        Ok(Delivery { report, started, span })
    }
}

/// One record's way into Kafka: resolves to where it was stored, or why it
/// was not. A named type, so that a session keeps its publishes in flight
/// without boxing each one.
pub struct Delivery {
    report: DeliveryFuture,
    started: Instant,
    span: PublishSpan,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("started", &self.started).finish_non_exhaustive()
    }
}

impl Future for Delivery {
    type Output = Result<Stored, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outcome = match std::task::ready!(Pin::new(&mut this.report).poll(cx)) {
            Ok(Ok(d)) => {
                crate::metrics::publish_acked(this.started.elapsed());
                this.span.acked(d.partition, d.offset);
                return Poll::Ready(Ok(Stored { partition: d.partition, offset: d.offset }));
            }
            Ok(Err((err, _))) => classify(&err),
            Err(_canceled) => GatewayError::Internal("producer went away".into()),
        };
        this.span.failed(outcome.code().as_str());
        Poll::Ready(Err(outcome))
    }
}
