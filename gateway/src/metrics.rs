//! Metric names and the tiny functions that record them.
//!
//! Names live here and nowhere else; label values come from small fixed sets
//! (error codes, close reasons), never from user input.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
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
pub const CLOSES: &str = "ferry_connections_closed_total";
pub const KAFKA_READY: &str = "ferry_kafka_ready";
pub const AUTH_FAILURES: &str = "ferry_auth_failures_total";
pub const FORBIDDEN: &str = "ferry_forbidden_total";

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
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn connection_opened() {
    gauge!(CONNECTIONS).increment(1.0);
    counter!(CONNECTIONS_TOTAL).increment(1);
}

pub fn connection_closed(reason: &'static str) {
    gauge!(CONNECTIONS).decrement(1.0);
    counter!(CLOSES, "reason" => reason).increment(1);
}

pub fn connection_rejected(reason: &'static str) {
    counter!(CONNECTIONS_REJECTED, "reason" => reason).increment(1);
}

pub fn frame_received() {
    counter!(FRAMES_IN).increment(1);
}

pub fn frames_sent(n: u64) {
    counter!(FRAMES_OUT).increment(n);
}

pub fn publish_acked(latency: Duration) {
    counter!(PUBLISH_ACKED).increment(1);
    histogram!(PUBLISH_LATENCY).record(latency.as_secs_f64());
}

pub fn publish_failed(code: &'static str) {
    counter!(PUBLISH_FAILED, "code" => code).increment(1);
}

pub fn subscriptions_changed(delta: f64) {
    gauge!(SUBSCRIPTIONS).increment(delta);
}

pub fn fanout_record(deliveries: usize) {
    counter!(FANOUT_RECORDS).increment(1);
    counter!(FANOUT_DELIVERIES).increment(deliveries as u64);
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
