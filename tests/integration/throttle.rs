//! `subscribe.throttle_ms`: at most one record per key per window, always
//! the newest, and the last value of a key is never lost; the floor a
//! gateway imposes; refused with a group.

use std::time::Duration;

use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// Produces `count` values `0..count` of `key` to `topic`, one per `every`,
/// with an independent producer, without waiting for each ack.
async fn updates(bootstrap: &str, topic: &str, key: &str, count: u32, every: Duration) {
    let producer = producer(bootstrap);
    let mut tick = tokio::time::interval(every);
    let mut acks = Vec::new();
    for n in 0..count {
        tick.tick().await;
        let value = json!({ "n": n }).to_string();
        let record = FutureRecord::to(topic).key(key).payload(&value);
        acks.push(producer.send_result(record).expect("queued"));
    }
    for ack in acks {
        ack.await.expect("delivered").expect("stored");
    }
}

/// Every `message` of `key` until its value is `last`, with when it came.
async fn until_last(client: &mut Client, key: &str, last: u64) -> Vec<(Instant, u64)> {
    let mut seen = Vec::new();
    loop {
        let m = client.next_message().await;
        if m["key"] != key {
            continue;
        }
        let n = m["value"]["n"].as_u64().unwrap();
        seen.push((Instant::now(), n));
        if n == last {
            return seen;
        }
    }
}

/// The most frames that came within any `span`.
fn most_within(seen: &[(Instant, u64)], span: Duration) -> usize {
    seen.iter()
        .map(|(start, _)| {
            seen.iter().filter(|(at, _)| *at >= *start && *at < *start + span).count()
        })
        .max()
        .unwrap_or(0)
}

#[ferry_test]
async fn a_key_updated_1000_times_a_second_arrives_at_most_11_times_a_second_and_ends_on_its_last_value(
) {
    let gw = spawn_gateway().await;
    let topic = unique_topic("throttle");
    let mut client = gw.client().await;
    let subscribed =
        client.request(json!({"type": "subscribe", "topic": topic, "throttle_ms": 100})).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    updates(&gw.bootstrap, &topic, "busy", 1_000, Duration::from_millis(1)).await;
    let seen = until_last(&mut client, "busy", 999).await;
    let values: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]), "always a newer value: {values:?}");
    let most = most_within(&seen, Duration::from_secs(1));
    assert!(most <= 11, "{most} frames of one key within a second: {values:?}");
    assert!(seen.len() < 100, "throttled, not every update: {} frames", seen.len());
}

#[ferry_test]
async fn the_floor_of_the_node_throttles_a_subscription_that_asks_for_none() {
    let gw = spawn_gateway_with(|c| c.limits.min_throttle_ms = 200).await;
    let topic = unique_topic("floor");
    let mut client = gw.client().await;
    client.subscribed(&topic).await;
    updates(&gw.bootstrap, &topic, "k", 200, Duration::from_millis(2)).await;
    let seen = until_last(&mut client, "k", 199).await;
    let values: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]), "always a newer value: {values:?}");
    assert!(seen.len() < 20, "throttled by the floor: {values:?}");
}

#[ferry_test]
async fn throttle_ms_is_refused_with_a_group_and_out_of_range() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("throttle-bad");
    let mut client = gw.client().await;
    for frame in [
        json!({"type": "subscribe", "topic": topic, "group": "g", "throttle_ms": 100}),
        json!({"type": "subscribe", "topic": topic, "throttle_ms": 0}),
        json!({"type": "subscribe", "topic": topic, "throttle_ms": 60_001}),
    ] {
        let reply: Value = client.request(frame.clone()).await;
        assert_eq!(reply["code"], "bad_request", "{frame}: {reply}");
        assert!(reply["message"].as_str().unwrap().contains("`throttle_ms`"), "{reply}");
    }
    let welcome = &client.welcome["capabilities"];
    assert!(welcome.as_array().unwrap().contains(&json!("throttle")), "{welcome}");
}

#[ferry_test]
async fn an_sse_stream_takes_throttle_ms_and_gets_the_last_value() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("throttle-sse");
    let url = format!("http://{}/sse?topic={topic}&throttle_ms=100", gw.addr);
    let mut response = reqwest::Client::new().get(url).send().await.expect("SSE answers");
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    // The stream is open once `subscribed` came.
    while !text.contains("event: subscribed") {
        let chunk = tokio::time::timeout(WAIT, response.chunk()).await.expect("subscribed in time");
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    updates(&gw.bootstrap, &topic, "k", 300, Duration::from_millis(1)).await;
    while !text.contains(r#""n":299"#) {
        let chunk =
            tokio::time::timeout(WAIT, response.chunk()).await.expect("the last value in time");
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    let events = text.matches("event: message").count();
    assert!(events < 30, "throttled: {events} events for 300 updates");
}
