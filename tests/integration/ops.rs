//! Ops endpoints and Kafka outages as a user sees them.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

#[ferry_test]
async fn health_ready_and_metrics() {
    let gw = spawn_gateway().await;
    assert_eq!(gw.get("/healthz").await.0, 200);
    assert_eq!(gw.get("/readyz").await.0, 200);
    let topic = unique_topic("m");
    let mut client = gw.client().await;
    client.subscribed(&topic).await;
    client.acked(&topic, json!(1)).await;
    client.next_message().await;
    let (status, body) = gw.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "ferry_connections",
        "ferry_frames_received_total",
        "ferry_frames_sent_total",
        "ferry_publishes_acked_total",
        "ferry_publish_latency_seconds_bucket",
        "ferry_fanout_deliveries_total",
        "ferry_subscriptions",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics:\n{body}");
    }
}

/// Embedded Kafka only: the mock cluster can take its broker down and up.
#[ferry_test]
async fn kafka_down_gives_prompt_unavailable_and_readyz_503() {
    let gw = spawn_gateway().await;
    let Some(kafka) = gw.embedded.clone() else {
        eprintln!("note: broker outages against real Kafka are tested by the outage issue");
        return;
    };
    let topic = unique_topic("down");
    let mut client = gw.client().await;
    client.acked(&topic, json!(1)).await;
    kafka.broker_down(1).unwrap();
    assert_eq!(gw.wait_readyz(503, WAIT).await, 503, "/readyz reports Kafka down");
    let started = std::time::Instant::now();
    let reply = client.publish(&topic, json!(2)).await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert!(reply["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(started.elapsed() < Duration::from_secs(5), "prompt, not a hang");
    // A subscribe too, to a topic the node has never looked up.
    let started = std::time::Instant::now();
    let reply = client.subscribe(&unique_topic("down-new")).await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert!(started.elapsed() < Duration::from_secs(5), "prompt, not a hang");
    kafka.broker_up(1).unwrap();
    assert_eq!(gw.wait_readyz(200, WAIT).await, 200);
    client.acked(&topic, json!(3)).await;
}

/// Embedded Kafka only (request fault injection): a record Kafka keeps
/// refusing with a retriable error is answered `timeout` (outcome unknown)
/// within `kafka.message_timeout_ms`, and the socket goes on.
#[ferry_test]
async fn undeliverable_publish_is_answered_timeout_within_the_message_timeout() {
    let gw = spawn_gateway_with(|c| c.kafka.message_timeout_ms = 2_000).await;
    let Some(kafka) = gw.embedded.clone() else {
        eprintln!("note: request fault injection needs the embedded Kafka");
        return;
    };
    let topic = unique_topic("timeout");
    let mut client = gw.client().await;
    client.acked(&topic, json!("warm-up")).await;
    kafka.fail_produce_requests(10_000);
    let started = std::time::Instant::now();
    let reply = client.publish(&topic, json!("stuck")).await;
    assert_eq!(reply["code"], "timeout", "{reply}");
    assert!(started.elapsed() < Duration::from_secs(10), "within the message timeout");
}

/// Shutdown: a publish Kafka has not answered when the shutdown grace runs
/// out is answered `timeout` (outcome unknown), then the socket closes with
/// 1001. On the embedded Kafka in both CI passes (`spawn_gateway_config`
/// ignores `FERRY_TEST_KAFKA`): only it can be told to fail produce requests.
#[ferry_test]
async fn publishes_kafka_has_not_answered_when_the_shutdown_grace_ends_get_timeout() {
    let mut config = test_config();
    // Far beyond the frame wait: only the grace can answer in time.
    config.kafka.message_timeout_ms = 120_000;
    config.shutdown_grace_ms = 500;
    let gw = spawn_gateway_config(config).await;
    let kafka = gw.embedded.clone().expect("an embedded Kafka");
    let topic = unique_topic("grace");
    let mut client = gw.client().await;
    client.acked(&topic, json!("warm-up")).await;
    kafka.fail_produce_requests(100_000);
    const N: usize = 3;
    for i in 0..N {
        client.send(json!({"type":"publish","id":format!("g{i}"),"topic":topic,"value":i})).await;
    }
    // Answered in order: the gateway has read the publishes.
    assert_eq!(client.request(json!({"type":"ping"})).await["type"], "pong");

    gw.begin_shutdown();
    let mut answers = std::collections::BTreeMap::new();
    let close = loop {
        match client.next_frame_or_close().await {
            Ok(frame) => {
                let id = frame["id"].as_str().expect("a publish's answer").to_owned();
                assert!(answers.insert(id, frame).is_none(), "one answer per publish");
            }
            Err(code) => break code,
        }
    };
    assert_eq!(answers.len(), N, "{answers:?}");
    for frame in answers.values() {
        assert_eq!((&frame["type"], &frame["code"]), (&json!("error"), &json!("timeout")));
    }
    assert_eq!(close, Some(1001));
}

#[ferry_test]
async fn a_silent_client_is_closed_after_the_idle_timeout() {
    let gw = spawn_gateway_with(|c| {
        c.websocket.ping_interval_ms = 200;
        c.websocket.idle_timeout_ms = 600;
    })
    .await;
    let mut client = gw.client().await;
    // Not reading means not answering the gateway's pings either.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(client.closed().await, Some(4001));
}

/// A fresh process (the metrics recorder is process-wide): Prometheus sees
/// every documented series from the first scrape, with its HELP text, at
/// zero.
#[ferry_test]
async fn a_fresh_gateway_lists_every_documented_metric_at_zero() {
    let gw = GatewayProcess::start(&[], &[]);
    let (status, body) = http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 200);
    let documented = [
        ("ferry_connections", "ferry_connections"),
        ("ferry_connections_total", "ferry_connections_total"),
        (
            "ferry_connections_closed_total",
            "ferry_connections_closed_total{reason=\"slow_consumer\"}",
        ),
        ("ferry_connections_rejected_total", "ferry_connections_rejected_total{reason=\"origin\"}"),
        ("ferry_frames_received_total", "ferry_frames_received_total"),
        ("ferry_frames_sent_total", "ferry_frames_sent_total"),
        ("ferry_publishes_acked_total", "ferry_publishes_acked_total"),
        ("ferry_publishes_failed_total", "ferry_publishes_failed_total{code=\"unavailable\"}"),
        ("ferry_publish_latency_seconds", "ferry_publish_latency_seconds_count"),
        ("ferry_subscriptions", "ferry_subscriptions"),
        ("ferry_fanout_records_total", "ferry_fanout_records_total"),
        ("ferry_fanout_deliveries_total", "ferry_fanout_deliveries_total"),
        ("ferry_slow_consumer_disconnects_total", "ferry_slow_consumer_disconnects_total"),
        ("ferry_auth_failures_total", "ferry_auth_failures_total{reason=\"invalid\"}"),
        ("ferry_forbidden_total", "ferry_forbidden_total{action=\"publish\"}"),
    ];
    for (name, series) in documented {
        assert!(body.contains(&format!("# HELP {name} ")), "no HELP for {name}:\n{body}");
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} sample:\n{body}"));
        assert_eq!(value, "0", "{series} starts at zero");
    }
    assert!(body.contains("# HELP ferry_kafka_ready "), "{body}");
    assert!(body.lines().any(|l| l.starts_with("ferry_kafka_ready ")), "{body}");
}

/// A client that vanishes (its TCP connection ends without a WebSocket
/// close frame) is counted as `connection_lost`, not as a protocol error
/// of the client's. A process of its own: the metrics are process-wide.
#[ferry_test]
async fn a_vanished_client_counts_as_connection_lost() {
    use futures::StreamExt;
    let gw = GatewayProcess::start(&[], &[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url()).await.expect("upgrade");
    let welcome = tokio::time::timeout(WAIT, ws.next()).await.expect("welcome in time");
    assert!(matches!(welcome, Some(Ok(_))), "{welcome:?}");
    drop(ws); // no close frame: the TCP connection just ends
    let closed = |body: &str, reason: &str| {
        let series = format!("ferry_connections_closed_total{{reason=\"{reason}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(&series).map(str::to_owned))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http_get(gw.addr, "/metrics").await;
        if closed(&body, "connection_lost").as_deref() == Some("1") {
            assert_eq!(closed(&body, "protocol_error").as_deref(), Some("0"), "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no connection_lost counted:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
