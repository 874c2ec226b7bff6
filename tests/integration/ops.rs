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
