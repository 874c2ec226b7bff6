//! The gateway's own spans, exported over OTLP/HTTP (JSON) when
//! `telemetry.otlp_endpoint` is set; nothing at all when it is not.
//!
//! Two spans, each tied to the W3C trace context that Ferry already
//! carries through Kafka (`traceparent`):
//!
//! - `ferry.publish` ([`PublishSpan`], kind producer): one per record a
//!   door hands to the producer ([`crate::kafka::producer`]), for the
//!   WebSocket and HTTP publish alike, until Kafka's ack: topic, then
//!   partition and offset, and the outcome (`ok` or the error code). A
//!   record with a `traceparent` continues that trace (the span's parent
//!   is the client's), and the record's `traceparent` header then names
//!   the gateway's span as parent, so that consumers continue from it.
//! - `ferry.deliver` ([`DeliverSpan`], kind consumer): one per record of
//!   the live fan-out ([`crate::kafka::fanout`]) that carries a
//!   `traceparent` header, its parent: topic, partition, offset and the
//!   number of sockets the record was queued to.
//!
//! Spans end into the SDK's batch processor: a bounded queue
//! ([`MAX_QUEUED_SPANS`]) that a thread of its own sends to the collector.
//! A full queue drops spans; a slow or dead collector never holds up a
//! publish or a delivery. Sampling follows the caller's flag (`-01`
//! sampled, `-00` not); a record without trace context is sampled.
//!
//! Off, the hot paths pay one relaxed atomic load ([`enabled`]) and carry
//! an empty `Option`: no span object, no allocation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use ferry_protocol::{Publish, TRACEPARENT};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use opentelemetry_sdk::Resource;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};

use crate::config::{check_endpoint, TelemetryConfig};
use crate::throttle::{Throttle, LOG_EVERY};

/// Spans waiting for export; past this they are dropped.
pub const MAX_QUEUED_SPANS: usize = 2048;

/// Bound on one export request, and on the flush at shutdown.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether spans are made: set once, at start, when an exporter runs.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The tracer every span comes from, once telemetry is on.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether the gateway makes spans. One relaxed load: the whole cost of
/// telemetry on a hot path while it is off.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn tracer() -> Option<&'static SdkTracer> {
    if enabled() {
        TRACER.get()
    } else {
        None
    }
}

/// The running exporter: flush it with [`Telemetry::shutdown`] before the
/// process exits.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Starts exporting spans when `config.otlp_endpoint` is set (`None`
/// when it is not: telemetry stays off). `node_id` is the resource's
/// `service.instance.id`. Once per process.
pub fn start(config: &TelemetryConfig, node_id: String) -> Result<Option<Telemetry>, String> {
    let Some(endpoint) = &config.otlp_endpoint else { return Ok(None) };
    check_endpoint(endpoint)?;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint {endpoint:?}: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUED_SPANS)
        .with_max_export_batch_size(512)
        .with_scheduled_delay(Duration::from_secs(1))
        .build();
    let processor = BatchSpanProcessor::builder(Logged { inner: exporter, url: url.clone() })
        .with_batch_config(batch)
        .build();
    let resource = Resource::builder_empty()
        .with_service_name("ferry")
        .with_attributes([
            KeyValue::new("service.instance.id", node_id),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
        .build();
    if TRACER.set(provider.tracer("ferry")).is_err() {
        return Err("telemetry was started twice".into());
    }
    ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(%url, "exporting spans over OTLP/HTTP");
    Ok(Some(Telemetry { provider }))
}

impl Telemetry {
    /// Stops making spans and sends what is queued, waiting at most a few
    /// seconds for the collector.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
            tracing::warn!(error = %e, "flushing spans at shutdown failed");
        }
    }
}

/// The OTLP exporter, with its failures logged (at most one line per
/// [`LOG_EVERY`]): the SDK itself says nothing.
#[derive(Debug)]
struct Logged {
    inner: opentelemetry_otlp::SpanExporter,
    url: String,
}

static EXPORT_FAILED: Throttle = Throttle::new(LOG_EVERY);

impl SpanExporter for Logged {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            if let Some(held_back) = EXPORT_FAILED.allow() {
                tracing::warn!(
                    url = %self.url, spans, error = %e, failures_not_logged = held_back,
                    "exporting spans failed; they are dropped"
                );
            }
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The `ferry.publish` span of one record, from the producer to Kafka's
/// answer. Empty (no allocation) while telemetry is off. Dropped
/// unanswered (the connection went away), it ends without an outcome.
#[derive(Debug, Default)]
pub struct PublishSpan(Option<Box<opentelemetry_sdk::trace::Span>>);

impl PublishSpan {
    /// Starts the span of `publish`, a child of its `traceparent` header
    /// when it has one.
    #[inline]
    pub fn start(publish: &Publish<'_>) -> Self {
        let Some(tracer) = tracer() else { return Self(None) };
        let parent = publish
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(TRACEPARENT))
            .and_then(|(_, v)| parse_traceparent(v.as_bytes()));
        let topic = KeyValue::new(DESTINATION, publish.topic.to_string());
        let span = tracer
            .span_builder("ferry.publish")
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new(SYSTEM, "kafka"),
                KeyValue::new(OPERATION, "send"),
                topic,
            ])
            .start_with_context(tracer, &parent_context(parent));
        Self(Some(Box::new(span)))
    }

    /// The `traceparent` the record carries to Kafka in place of the
    /// client's: the same trace, with this span as parent. `None` when the
    /// span is not recorded (telemetry off, or the client's trace is not
    /// sampled): the client's value goes on unchanged.
    pub fn traceparent(&self) -> Option<[u8; TRACEPARENT_LEN]> {
        let span = self.0.as_ref().filter(|s| s.is_recording())?;
        Some(format_traceparent(span.span_context()))
    }

    /// Kafka stored the record.
    pub fn acked(&mut self, partition: i32, offset: i64) {
        let Some(span) = self.0.as_mut() else { return };
        span.set_attributes([
            KeyValue::new(PARTITION, partition.to_string()),
            KeyValue::new(OFFSET, offset),
            KeyValue::new(OUTCOME, "ok"),
        ]);
        span.end();
    }

    /// Kafka did not store the record: `code` is the error code the
    /// client is answered with.
    pub fn failed(&mut self, code: &'static str) {
        let Some(span) = self.0.as_mut() else { return };
        span.set_attribute(KeyValue::new(OUTCOME, code));
        span.set_status(Status::error(code));
        span.end();
    }
}

/// The `ferry.deliver` span of one record of the live fan-out that
/// carries trace context. Empty while telemetry is off or the record has
/// no `traceparent` header.
#[derive(Debug)]
pub struct DeliverSpan(Option<Box<opentelemetry_sdk::trace::Span>>);

impl DeliverSpan {
    /// Starts the span of `record` when it has a `traceparent` header.
    #[inline]
    pub fn start(record: &BorrowedMessage<'_>) -> Self {
        let Some(tracer) = tracer() else { return Self(None) };
        let parent = record.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(TRACEPARENT))
                .and_then(|h| parse_traceparent(h.value?))
        });
        let Some(parent) = parent else { return Self(None) };
        let span = tracer
            .span_builder("ferry.deliver")
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new(SYSTEM, "kafka"),
                KeyValue::new(OPERATION, "process"),
                KeyValue::new(DESTINATION, record.topic().to_owned()),
                KeyValue::new(PARTITION, record.partition().to_string()),
                KeyValue::new(OFFSET, record.offset()),
            ])
            .start_with_context(tracer, &parent_context(Some(parent)));
        Self(Some(Box::new(span)))
    }

    /// The record was queued to `sockets` local sockets.
    #[inline]
    pub fn end(self, sockets: usize) {
        let Some(mut span) = self.0 else { return };
        span.set_attribute(KeyValue::new(SOCKETS, sockets as i64));
        span.end();
    }
}

const SYSTEM: &str = "messaging.system";
const OPERATION: &str = "messaging.operation.type";
const DESTINATION: &str = "messaging.destination.name";
const PARTITION: &str = "messaging.destination.partition.id";
const OFFSET: &str = "messaging.kafka.offset";
const OUTCOME: &str = "ferry.outcome";
const SOCKETS: &str = "ferry.sockets";

/// Length of a version `00` `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

fn parent_context(parent: Option<SpanContext>) -> Context {
    match parent {
        Some(parent) => Context::new().with_remote_span_context(parent),
        None => Context::new(),
    }
}

/// A W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`; a later
/// version is read by its first four fields), or `None` when it is not one.
fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.splitn(5, '-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::NONE,
    );
    context.is_valid().then_some(context)
}

/// `00-<trace id>-<span id>-<flags>` of `context`, without allocating.
fn format_traceparent(context: &SpanContext) -> [u8; TRACEPARENT_LEN] {
    let mut out = [0u8; TRACEPARENT_LEN];
    let mut w = &mut out[..];
    // 55 bytes always fit: 2 + 1 + 32 + 1 + 16 + 1 + 2.
    let _ = std::io::Write::write_fmt(
        &mut w,
        format_args!(
            "00-{:032x}-{:016x}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_reads_and_writes_back_the_same() {
        let context = parse_traceparent(TP.as_bytes()).expect("valid");
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(format!("{:032x}", context.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(&format_traceparent(&context)[..], TP.as_bytes());
    }

    #[test]
    fn what_is_not_a_traceparent_gives_no_parent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad:?} read as a parent");
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes";
        let context = parse_traceparent(later.as_bytes()).expect("a later version is read");
        assert!(!context.is_sampled());
    }

    #[test]
    fn the_endpoint_must_be_an_http_url() {
        assert!(check_endpoint("http://127.0.0.1:4318").is_ok());
        assert!(check_endpoint("https://collector.example/otlp/").is_ok());
        for bad in
            ["", "127.0.0.1:4318", "grpc://collector:4317", "http://", "http://c/?q=1", "not a url"]
        {
            assert!(check_endpoint(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn spans_are_empty_while_telemetry_is_off() {
        assert!(!enabled());
        let publish = Publish {
            id: "p".into(),
            topic: "t".into(),
            value: ferry_protocol::Payload::Bytes(Vec::new()),
            key: None,
            headers: [(TRACEPARENT.to_owned(), TP.to_owned())].into(),
            partition: None,
        };
        let span = PublishSpan::start(&publish);
        assert!(span.0.is_none() && span.traceparent().is_none());
    }
}
