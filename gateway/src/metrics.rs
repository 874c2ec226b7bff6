//! Metric names and the tiny functions that record them.
//!
//! Names live here and nowhere else; label values come from small fixed sets
//! (error codes, close reasons), never from user input.

use std::sync::OnceLock;
use std::time::Duration;

use ferry_protocol::{CloseCode, ErrorCode};
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "ferry_connections";
pub const CONNECTIONS_TOTAL: &str = "ferry_connections_total";
pub const CONNECTIONS_REJECTED: &str = "ferry_connections_rejected_total";
pub const FRAMES_IN: &str = "ferry_frames_received_total";
pub const FRAMES_OUT: &str = "ferry_frames_sent_total";
pub const PUBLISH_ACKED: &str = "ferry_publishes_acked_total";
pub const PUBLISH_FAILED: &str = "ferry_publishes_failed_total";
pub const PUBLISH_LATENCY: &str = "ferry_publish_latency_seconds";
pub const SUBSCRIPTIONS: &str = "ferry_subscriptions";
pub const FANOUT_RECORDS: &str = "ferry_fanout_records_total";
pub const FANOUT_DELIVERIES: &str = "ferry_fanout_deliveries_total";
pub const SLOW_CONSUMERS: &str = "ferry_slow_consumer_disconnects_total";
pub const CONNECTIONS_CLOSED: &str = "ferry_connections_closed_total";
pub const KAFKA_READY: &str = "ferry_kafka_ready";
pub const AUTH_FAILURES: &str = "ferry_auth_failures_total";
pub const FORBIDDEN: &str = "ferry_forbidden_total";
pub const TLS_RELOADS: &str = "ferry_tls_reloads_total";
pub const SCHEMA_REJECTIONS: &str = "ferry_schema_rejections_total";
pub const HTTP_PUBLISH_REQUESTS: &str = "ferry_http_publish_requests_total";
pub const HTTP_PUBLISH_RECORDS: &str = "ferry_http_publish_records_total";
pub const SSE_STREAMS: &str = "ferry_sse_streams";
pub const SSE_STREAMS_TOTAL: &str = "ferry_sse_streams_total";
pub const SSE_REJECTED: &str = "ferry_sse_rejected_total";
pub const SSE_CLOSED: &str = "ferry_sse_closed_total";
pub const SSE_EVENTS: &str = "ferry_sse_events_total";
pub const RECENT_BYTES: &str = "ferry_recent_bytes";
pub const RESUMES: &str = "ferry_resumes_total";
pub const CATCHUP_READERS: &str = "ferry_catchup_readers";
pub const CATCHING_UP: &str = "ferry_catching_up";
pub const HANDOVERS: &str = "ferry_handovers_total";
pub const CATCHUP_SECONDS: &str = "ferry_catchup_seconds";
pub const ADMIN_REQUESTS: &str = "ferry_admin_requests_total";
pub const CONTROL_READY: &str = "ferry_control_ready";
pub const FLEET_NODES: &str = "ferry_fleet_nodes";
pub const REVOCATIONS: &str = "ferry_revocations";
pub const TABLE_KEYS: &str = "ferry_table_keys";
pub const TABLE_BYTES: &str = "ferry_table_bytes";
pub const SNAPSHOT_SECONDS: &str = "ferry_snapshot_seconds";
pub const SNAPSHOTS_REFUSED: &str = "ferry_snapshots_refused_total";
pub const THROTTLED: &str = "ferry_throttled_records_total";
pub const DEFLATE_IN: &str = "ferry_deflate_input_bytes_total";
pub const DEFLATE_OUT: &str = "ferry_deflate_output_bytes_total";

/// The process-wide Prometheus recorder; installed once, shared by every
/// gateway built in this process (tests build several).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding
            // program; the handle then renders an empty page.
            if metrics::set_global_recorder(recorder).is_ok() {
                register_at_zero();
                let _ = HOT.set(Hot::resolve());
            }
            handle
        })
        .clone()
}

/// Handles of the series recorded per frame or per record, resolved once
/// from the recorder: a `counter!` call hashes its name and labels and
/// looks the series up on every use.
struct Hot {
    frames_in: Counter,
    frames_out: Counter,
    acked: Counter,
    latency: Histogram,
    fanout_records: Counter,
    fanout_deliveries: Counter,
}

/// Set once the Prometheus recorder is installed; until then (or with
/// another program's recorder) the functions below look series up per call.
static HOT: OnceLock<Hot> = OnceLock::new();

impl Hot {
    fn resolve() -> Self {
        Self {
            frames_in: counter!(FRAMES_IN),
            frames_out: counter!(FRAMES_OUT),
            acked: counter!(PUBLISH_ACKED),
            latency: histogram!(PUBLISH_LATENCY),
            fanout_records: counter!(FANOUT_RECORDS),
            fanout_deliveries: counter!(FANOUT_DELIVERIES),
        }
    }
}

/// Close codes the gateway sends, for the `reason` label of
/// `ferry_connections_closed_total`.
const CLOSE_CODES: [CloseCode; 15] = [
    CloseCode::GOING_AWAY,
    CloseCode::PROTOCOL_ERROR,
    CloseCode::UNSUPPORTED_DATA,
    CloseCode::INVALID_PAYLOAD,
    CloseCode::MESSAGE_TOO_BIG,
    CloseCode::SLOW_CONSUMER,
    CloseCode::IDLE_TIMEOUT,
    CloseCode::TOKEN_EXPIRED,
    CloseCode::AUTH_TIMEOUT,
    CloseCode::RATE_LIMITED,
    CloseCode::TOO_MANY_CONNECTIONS,
    CloseCode::SUBJECT_CHANGED,
    CloseCode::SERVICE_RESTART,
    CloseCode::DISCONNECTED,
    CloseCode::REVOKED,
];

/// How a session ends without a close code of the gateway's.
const OTHER_CLOSE_REASONS: [&str; 3] = ["client_closed", "connection_lost", "write_failed"];

/// Why a connection is refused (`ferry_connections_rejected_total`): by the
/// upgrade ([`crate::http`]'s `ws`) or by the listener before it.
const REJECT_REASONS: [&str; 11] = [
    "shutting_down",
    "draining",
    "not_ready",
    "subprotocol",
    "origin",
    "max_connections",
    "unauthorized",
    "max_connections_per_subject",
    "handshakes",
    "handshake_timeout",
    "tls_handshake",
];

/// Why a token is refused (`ferry_auth_failures_total`).
const AUTH_FAILURE_REASONS: [&str; 7] =
    ["too_large", "malformed", "algorithm", "unknown_key", "invalid", "missing_subject", "revoked"];

/// HTTP statuses of `POST /v1/publish` (`ferry_http_publish_requests_total`).
pub const HTTP_PUBLISH_STATUSES: [&str; 9] =
    ["200", "400", "401", "403", "413", "415", "429", "500", "503"];

/// Why a value was refused by its topic's schema (`reason` label of
/// [`SCHEMA_REJECTIONS`]).
pub const SCHEMA_REJECTION_REASONS: [&str; 2] = ["invalid", "not_json"];

/// Why an SSE request is refused (`ferry_sse_rejected_total`).
pub const SSE_REJECT_REASONS: [&str; 11] = [
    "shutting_down",
    "draining",
    "not_ready",
    "origin",
    "max_connections",
    "unauthorized",
    "max_connections_per_subject",
    "forbidden",
    "bad_request",
    "limit",
    "unavailable",
];

/// How an SSE stream ends (`ferry_sse_closed_total`).
pub const SSE_CLOSE_REASONS: [&str; 8] = [
    "client_gone",
    "slow_consumer",
    "token_expired",
    "going_away",
    "write_timeout",
    "disconnected",
    "revoked",
    "service_restart",
];

/// Admin API actions (`action` label of [`ADMIN_REQUESTS`]).
pub const ADMIN_ACTIONS: [&str; 7] =
    ["nodes", "connections", "disconnect", "revoke", "drain", "subscribers", "refused"];

/// Describes every series and creates it at zero, so that a fresh gateway's
/// `/metrics` already lists each documented series with its HELP text
/// (Prometheus users alert on absent series otherwise).
fn register_at_zero() {
    describe_gauge!(CONNECTIONS, "Open WebSocket connections.");
    describe_counter!(CONNECTIONS_TOTAL, "WebSocket connections accepted since start.");
    describe_counter!(CONNECTIONS_CLOSED, "WebSocket connections closed, by reason.");
    describe_counter!(CONNECTIONS_REJECTED, "WebSocket upgrades refused, by reason.");
    describe_counter!(FRAMES_IN, "Frames received from clients.");
    describe_counter!(FRAMES_OUT, "Frames written to clients.");
    describe_counter!(PUBLISH_ACKED, "Publishes stored by Kafka and acked.");
    describe_counter!(PUBLISH_FAILED, "Publishes answered with an error, by error code.");
    describe_histogram!(
        PUBLISH_LATENCY,
        Unit::Seconds,
        "Time from a publish to Kafka's acknowledgement."
    );
    describe_gauge!(SUBSCRIPTIONS, "Active subscriptions on this node.");
    describe_counter!(FANOUT_RECORDS, "Kafka records consumed for live fan-out.");
    describe_counter!(FANOUT_DELIVERIES, "Records queued to sockets by the live fan-out.");
    describe_counter!(SLOW_CONSUMERS, "Sockets closed with 4000 for not keeping up.");
    describe_gauge!(KAFKA_READY, "1 when Kafka answers the gateway, else 0.");
    describe_counter!(AUTH_FAILURES, "Tokens refused, by reason.");
    describe_counter!(FORBIDDEN, "Requests the ACL refused, by action.");
    describe_counter!(
        SCHEMA_REJECTIONS,
        "Record values refused by their topic's JSON Schema, by reason (invalid, not_json)."
    );

    gauge!(CONNECTIONS).set(0.0);
    gauge!(SUBSCRIPTIONS).set(0.0);
    gauge!(KAFKA_READY).set(0.0);
    for name in [
        CONNECTIONS_TOTAL,
        FRAMES_IN,
        FRAMES_OUT,
        PUBLISH_ACKED,
        FANOUT_RECORDS,
        FANOUT_DELIVERIES,
        SLOW_CONSUMERS,
    ] {
        counter!(name).absolute(0);
    }
    for code in ErrorCode::ALL {
        counter!(PUBLISH_FAILED, "code" => code.as_str()).absolute(0);
    }
    let closes = CLOSE_CODES.iter().map(|c| c.reason()).chain(OTHER_CLOSE_REASONS);
    for reason in closes {
        counter!(CONNECTIONS_CLOSED, "reason" => reason).absolute(0);
    }
    for reason in REJECT_REASONS {
        counter!(CONNECTIONS_REJECTED, "reason" => reason).absolute(0);
    }
    for reason in AUTH_FAILURE_REASONS {
        counter!(AUTH_FAILURES, "reason" => reason).absolute(0);
    }
    for action in ["publish", "subscribe", "group"] {
        counter!(FORBIDDEN, "action" => action).absolute(0);
    }
    for reason in SCHEMA_REJECTION_REASONS {
        counter!(SCHEMA_REJECTIONS, "reason" => reason).absolute(0);
    }
    describe_counter!(TLS_RELOADS, "TLS certificate reloads, by result (ok, rejected).");
    for result in ["ok", "rejected"] {
        counter!(TLS_RELOADS, "result" => result).absolute(0);
    }
    describe_counter!(HTTP_PUBLISH_REQUESTS, "POST /v1/publish requests, by HTTP status.");
    describe_counter!(HTTP_PUBLISH_RECORDS, "Records received by POST /v1/publish.");
    describe_gauge!(SSE_STREAMS, "Open Server-Sent Events streams.");
    describe_counter!(SSE_STREAMS_TOTAL, "Server-Sent Events streams opened since start.");
    describe_counter!(SSE_REJECTED, "Server-Sent Events requests refused, by reason.");
    describe_counter!(SSE_CLOSED, "Server-Sent Events streams ended, by reason.");
    describe_counter!(SSE_EVENTS, "message events written to Server-Sent Events streams.");
    gauge!(SSE_STREAMS).set(0.0);
    for name in [HTTP_PUBLISH_RECORDS, SSE_STREAMS_TOTAL, SSE_EVENTS] {
        counter!(name).absolute(0);
    }
    for status in HTTP_PUBLISH_STATUSES {
        counter!(HTTP_PUBLISH_REQUESTS, "status" => status).absolute(0);
    }
    for reason in SSE_REJECT_REASONS {
        counter!(SSE_REJECTED, "reason" => reason).absolute(0);
    }
    for reason in SSE_CLOSE_REASONS {
        counter!(SSE_CLOSED, "reason" => reason).absolute(0);
    }
    describe_gauge!(RECENT_BYTES, Unit::Bytes, "Bytes of recent records kept for resumes.");
    describe_counter!(
        RESUMES,
        "Subscriptions catching up (resume, earliest, timestamp), by where they started: \
         recent (kept records, no Kafka read) or kafka (the topic's shared reader)."
    );
    describe_gauge!(CATCHUP_READERS, "Shared Kafka readers serving catch-up now.");
    describe_gauge!(CATCHING_UP, "Subscriptions catching up now.");
    describe_counter!(HANDOVERS, "Catching-up subscriptions that joined the live fan-out.");
    describe_histogram!(
        CATCHUP_SECONDS,
        Unit::Seconds,
        "Time from a catching-up subscribe to joining the live fan-out."
    );
    gauge!(RECENT_BYTES).set(0.0);
    gauge!(CATCHUP_READERS).set(0.0);
    gauge!(CATCHING_UP).set(0.0);
    counter!(HANDOVERS).absolute(0);
    for source in ["recent", "kafka"] {
        counter!(RESUMES, "source" => source).absolute(0);
    }
    // Registering the histograms makes them render (count 0) before the
    // first publish or catch-up.
    let _ = histogram!(PUBLISH_LATENCY);
    let _ = histogram!(CATCHUP_SECONDS);
    describe_counter!(
        ADMIN_REQUESTS,
        "Admin API requests, by action (refused: no or a wrong admin token) and HTTP status."
    );
    describe_gauge!(CONTROL_READY, "1 when this node has read the control topic to its end.");
    describe_gauge!(FLEET_NODES, "Nodes heard on the control topic in the last 5 heartbeats.");
    describe_gauge!(REVOCATIONS, "Token revocations in force (by subject and by token id).");
    gauge!(CONTROL_READY).set(0.0);
    gauge!(FLEET_NODES).set(0.0);
    gauge!(REVOCATIONS).set(0.0);
    describe_gauge!(TABLE_KEYS, "Keys in a topic's table (snapshots), by topic.");
    describe_gauge!(TABLE_BYTES, Unit::Bytes, "Memory of a topic's table, by topic.");
    describe_histogram!(
        SNAPSHOT_SECONDS,
        Unit::Seconds,
        "Time from a snapshot subscribe to its snapshot taken (includes waiting for the table)."
    );
    describe_counter!(SNAPSHOTS_REFUSED, "Snapshots refused because a table passed a bound.");
    describe_counter!(
        THROTTLED,
        "Records of throttled subscriptions replaced by a newer one of their key, never sent."
    );
    counter!(SNAPSHOTS_REFUSED).absolute(0);
    counter!(THROTTLED).absolute(0);
    let _ = histogram!(SNAPSHOT_SECONDS);
    describe_counter!(
        DEFLATE_IN,
        Unit::Bytes,
        "Bytes of WebSocket frames compressed (permessage-deflate), each frame counted once."
    );
    describe_counter!(DEFLATE_OUT, Unit::Bytes, "What those frames compressed to.");
    counter!(DEFLATE_IN).absolute(0);
    counter!(DEFLATE_OUT).absolute(0);
}

pub fn connection_opened() {
    gauge!(CONNECTIONS).increment(1.0);
    counter!(CONNECTIONS_TOTAL).increment(1);
}

pub fn connection_closed(reason: &'static str) {
    gauge!(CONNECTIONS).decrement(1.0);
    counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

pub fn connection_rejected(reason: &'static str) {
    counter!(CONNECTIONS_REJECTED, "reason" => reason).increment(1);
}

pub fn frame_received() {
    match HOT.get() {
        Some(hot) => hot.frames_in.increment(1),
        None => counter!(FRAMES_IN).increment(1),
    }
}

pub fn frames_sent(n: u64) {
    match HOT.get() {
        Some(hot) => hot.frames_out.increment(n),
        None => counter!(FRAMES_OUT).increment(n),
    }
}

pub fn publish_acked(latency: Duration) {
    match HOT.get() {
        Some(hot) => {
            hot.acked.increment(1);
            hot.latency.record(latency.as_secs_f64());
        }
        None => {
            counter!(PUBLISH_ACKED).increment(1);
            histogram!(PUBLISH_LATENCY).record(latency.as_secs_f64());
        }
    }
}

pub fn publish_failed(code: &'static str) {
    counter!(PUBLISH_FAILED, "code" => code).increment(1);
}

pub fn subscriptions_changed(delta: f64) {
    gauge!(SUBSCRIPTIONS).increment(delta);
}

pub fn fanout_record(deliveries: usize) {
    match HOT.get() {
        Some(hot) => {
            hot.fanout_records.increment(1);
            hot.fanout_deliveries.increment(deliveries as u64);
        }
        None => {
            counter!(FANOUT_RECORDS).increment(1);
            counter!(FANOUT_DELIVERIES).increment(deliveries as u64);
        }
    }
}

pub fn recent_bytes(bytes: usize) {
    gauge!(RECENT_BYTES).set(bytes as f64);
}

/// A catching-up subscription found its start in the recent records
/// (`recent`) or needed the topic's Kafka reader (`kafka`).
pub fn resume_source(source: &'static str) {
    counter!(RESUMES, "source" => source).increment(1);
}

pub fn catchup_readers(delta: f64) {
    gauge!(CATCHUP_READERS).increment(delta);
}

pub fn catching_up(delta: f64) {
    gauge!(CATCHING_UP).increment(delta);
}

/// A catching-up subscription joined the live fan-out after `took`.
pub fn handed_over(took: Duration) {
    counter!(HANDOVERS).increment(1);
    histogram!(CATCHUP_SECONDS).record(took.as_secs_f64());
}

pub fn slow_consumer() {
    counter!(SLOW_CONSUMERS).increment(1);
}

pub fn kafka_ready(ready: bool) {
    gauge!(KAFKA_READY).set(if ready { 1.0 } else { 0.0 });
}

pub fn auth_failed(reason: &'static str) {
    counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

pub fn forbidden(action: &'static str) {
    counter!(FORBIDDEN, "action" => action).increment(1);
}

/// A TLS certificate reload: `ok`, or `rejected` (the old one stays).
pub fn tls_reloaded(ok: bool) {
    counter!(TLS_RELOADS, "result" => if ok { "ok" } else { "rejected" }).increment(1);
}

/// A record value refused by its topic's schema: `invalid` or `not_json`.
pub fn schema_rejected(reason: &'static str) {
    counter!(SCHEMA_REJECTIONS, "reason" => reason).increment(1);
}

/// A `POST /v1/publish` answered with `status` (one of
/// [`HTTP_PUBLISH_STATUSES`]) after reading `records` records.
pub fn http_publish(status: u16, records: usize) {
    let status = HTTP_PUBLISH_STATUSES
        .iter()
        .find(|s| s.parse::<u16>().ok() == Some(status))
        .copied()
        .unwrap_or("500");
    counter!(HTTP_PUBLISH_REQUESTS, "status" => status).increment(1);
    counter!(HTTP_PUBLISH_RECORDS).increment(records as u64);
}

/// `action` is one of [`ADMIN_ACTIONS`].
pub fn admin_request(action: &'static str, status: u16) {
    counter!(ADMIN_REQUESTS, "action" => action, "status" => status.to_string()).increment(1);
}

pub fn control_ready(ready: bool) {
    gauge!(CONTROL_READY).set(if ready { 1.0 } else { 0.0 });
}

pub fn fleet(nodes: usize, revocations: usize) {
    gauge!(FLEET_NODES).set(nodes as f64);
    gauge!(REVOCATIONS).set(revocations as f64);
}

pub fn table_size(topic: &str, keys: usize, bytes: usize) {
    gauge!(TABLE_KEYS, "topic" => topic.to_owned()).set(keys as f64);
    gauge!(TABLE_BYTES, "topic" => topic.to_owned()).set(bytes as f64);
}

pub fn snapshot_taken(took: Duration) {
    histogram!(SNAPSHOT_SECONDS).record(took.as_secs_f64());
}

pub fn snapshot_refused() {
    counter!(SNAPSHOTS_REFUSED).increment(1);
}

pub fn throttled(records: u64) {
    counter!(THROTTLED).increment(records);
}

/// A frame compressed for permessage-deflate: its size before and after.
pub fn deflated_frame(before: usize, after: usize) {
    counter!(DEFLATE_IN).increment(before as u64);
    counter!(DEFLATE_OUT).increment(after as u64);
}

pub fn sse_opened() {
    gauge!(SSE_STREAMS).increment(1.0);
    counter!(SSE_STREAMS_TOTAL).increment(1);
}

/// `reason` is one of [`SSE_CLOSE_REASONS`].
pub fn sse_closed(reason: &'static str) {
    gauge!(SSE_STREAMS).decrement(1.0);
    counter!(SSE_CLOSED, "reason" => reason).increment(1);
}

/// `reason` is one of [`SSE_REJECT_REASONS`].
pub fn sse_rejected(reason: &'static str) {
    counter!(SSE_REJECTED, "reason" => reason).increment(1);
}

pub fn sse_events(n: u64) {
    counter!(SSE_EVENTS).increment(n);
}
