//! Every request gets exactly one reply, in bounded time, and requests on
//! one socket do not wait for each other's Kafka round trips.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// 100 sockets subscribe at once to 20 topics that do not exist yet: each
/// topic is created once and every socket is told `subscribed`.
#[ferry_test]
async fn concurrent_first_subscribes_to_new_topics_all_succeed() {
    let gw = spawn_gateway().await;
    let topics: Vec<String> = (0..20).map(|_| unique_topic("burst")).collect();
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(gw.client().await);
    }
    let replies = join_all(
        clients.iter_mut().enumerate().map(|(i, c)| c.subscribe(&topics[i % topics.len()])),
    )
    .await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply["type"], "subscribed", "socket {i}: {reply}");
    }
    // And they are live: a publish to one topic reaches its five sockets.
    let (p, o) = clients[0].acked(&topics[0], json!({"after": "burst"})).await;
    for i in (0..100).step_by(topics.len()) {
        let m = clients[i].next_message().await;
        assert_eq!((m["partition"].as_i64(), m["offset"].as_i64()), (Some(p as i64), Some(o)));
    }
}

/// A subscribe Kafka is slow to answer (a second gateway on the embedded
/// Kafka of the first: the mock answers no CreateTopics from it, while the
/// node's probes still succeed). Meanwhile the same socket's pings are
/// answered at once, the socket is not closed as idle although the
/// subscribe takes longer than the idle timeout, and the subscribe itself
/// is answered within the request timeout.
#[ferry_test]
async fn a_slow_subscribe_does_not_stall_the_socket_and_is_answered_in_bounded_time() {
    let first = spawn_gateway().await;
    if first.embedded.is_none() {
        eprintln!(
            "note: needs the embedded Kafka (its mock ignores another client's CreateTopics)"
        );
        return;
    }
    let gw = spawn_gateway_with(|c| {
        c.kafka.brokers = Some(first.bootstrap.clone());
        c.kafka.auto_create_topics = Some(true);
        c.websocket.ping_interval_ms = 500;
        c.websocket.idle_timeout_ms = 1_500;
        c.kafka.metadata_timeout_ms = 1_000;
        c.limits.request_timeout_ms = 4_000;
    })
    .await;
    // Connected now: a client that stays silent longer than the idle
    // timeout would rightly be closed.
    let mut client = gw.client().await;
    let topic = unique_topic("slow");
    client.send(json!({"type":"subscribe","id":"s1","topic":topic})).await;
    let started = tokio::time::Instant::now();
    let mut pongs = 0;
    let reply = loop {
        client.send(json!({"type":"ping","id":format!("p{pongs}")})).await;
        let pong = client.reply(&format!("p{pongs}")).await;
        assert_eq!(pong["type"], "pong", "{pong}");
        pongs += 1;
        if let Some(reply) = client.reply_within("s1", Duration::from_millis(300)).await {
            break reply;
        }
        assert!(started.elapsed() < WAIT, "the subscribe was never answered");
    };
    assert!(pongs >= 3, "pings were answered while the subscribe waited ({pongs})");
    assert_eq!(reply["type"], "error", "{reply}");
    let code = reply["code"].as_str().unwrap();
    assert!(code == "timeout" || code == "unavailable", "{reply}");

    // The socket goes on.
    let pong = client.request(json!({"type":"ping"})).await;
    assert_eq!(pong["type"], "pong");
}

/// Kafka unreachable: every client reports the same failure many times a
/// second. The log gets each kind of report once per interval, not a flood
/// (before: about 50 lines a second).
#[ferry_test]
async fn an_unreachable_kafka_does_not_flood_the_log() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let brokers = closed_port.to_string(); // nothing listens there once dropped
    let gw = GatewayProcess::start(&["--kafka-brokers", &brokers], &[]);
    let mut client = Client::connect(&gw.ws_url()).await;
    client.send(json!({"type":"subscribe","id":"s","topic":unique_topic("down")})).await;
    // Measured over a window of time: this wait is the measurement.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let lines = gw.log_lines("");
    assert!(lines.len() < 40, "{} log lines in 8 s:\n{}", lines.len(), lines.join("\n"));
    assert!(!gw.log_lines("ERROR").is_empty(), "the failure is still reported");
}
