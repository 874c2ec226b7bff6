//! Ops endpoints and Kafka outages as a user sees them.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
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
#[tokio::test]
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
    kafka.broker_up(1).unwrap();
    assert_eq!(gw.wait_readyz(200, WAIT).await, 200);
    client.acked(&topic, json!(3)).await;
}

/// Embedded Kafka only (request fault injection): a record Kafka keeps
/// refusing with a retriable error is answered `timeout` (outcome unknown)
/// within `kafka.message_timeout_ms`, and the socket goes on.
#[tokio::test]
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

#[tokio::test]
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
