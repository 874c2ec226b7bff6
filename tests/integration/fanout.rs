//! The fan-out path: records reach every subscribed socket, once, in order.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use ferry_test_macros::ferry_test;

#[ferry_test]
async fn a_record_from_an_independent_producer_reaches_three_sockets_once_in_order() {
    let gw = spawn_gateway().await;
    let kafka = gw.kafka();
    let topic = unique_topic("fan");
    kafka.create_topic(&topic, 3).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = gw.client().await;
        c.subscribed(&topic).await;
        clients.push(c);
    }
    let producer = producer(&gw.bootstrap);
    const PER_PARTITION: i64 = 20;
    let mut produced = Vec::new();
    for i in 0..PER_PARTITION {
        for p in 0..3 {
            let value = format!(r#"{{"p":{p},"i":{i}}}"#);
            let place =
                produce(&producer, &topic, Some(p), Some(b"k"), value.as_bytes(), &[("h", b"v")])
                    .await;
            produced.push(place);
        }
    }
    for client in &mut clients {
        let mut last: BTreeMap<i64, i64> = BTreeMap::new();
        let mut seen = Vec::new();
        for _ in 0..produced.len() {
            let m = client.next_message().await;
            assert_eq!(m["topic"], topic.as_str());
            assert_eq!(m["key"], "k");
            assert_eq!(m["headers"]["h"], "v");
            let (p, o) = (m["partition"].as_i64().unwrap(), m["offset"].as_i64().unwrap());
            assert_eq!(m["value"]["p"].as_i64().unwrap(), p);
            if let Some(prev) = last.insert(p, o) {
                assert!(o > prev, "partition {p}: offset {o} after {prev}");
            }
            assert!(m["timestamp"].as_i64().unwrap() > 0);
            seen.push((p as i32, o));
        }
        seen.sort();
        let mut expected = produced.clone();
        expected.sort();
        assert_eq!(seen, expected, "every record exactly once");
        assert!(
            client.message_within(Duration::from_millis(300)).await.is_none(),
            "no extra record"
        );
    }
}

/// Any record produced after the client receives `subscribed` is delivered:
/// checked for the first subscriber of a topic (which starts the node's
/// consumption) and for a later one, many times over.
#[ferry_test]
async fn subscribed_means_live() {
    let gw = spawn_gateway().await;
    let kafka = gw.kafka();
    let producer = producer(&gw.bootstrap);
    for round in 0..10 {
        let topic = unique_topic("live");
        kafka.create_topic(&topic, 3).await;
        let mut first = gw.client().await;
        first.subscribed(&topic).await;
        let value = format!("{{\"round\":{round},\"who\":\"first\"}}");
        let place = produce(&producer, &topic, None, None, value.as_bytes(), &[]).await;
        let m = first.next_message().await;
        assert_eq!((m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap()), place);

        let mut second = gw.client().await;
        second.subscribed(&topic).await;
        let value = format!("{{\"round\":{round},\"who\":\"second\"}}");
        let place = produce(&producer, &topic, None, None, value.as_bytes(), &[]).await;
        let m = second.next_message().await;
        assert_eq!((m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap()), place);
        assert_eq!(m["value"]["who"], "second");
    }
}

#[ferry_test]
async fn publishes_from_one_socket_reach_another() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("rt");
    let mut sub = gw.client().await;
    sub.subscribed(&topic).await;
    let mut publisher = gw.client().await;
    let (p, o) = publisher.acked(&topic, json!({"hello": "world"})).await;
    let m = sub.next_message().await;
    assert_eq!((m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap()), (p, o));
    assert_eq!(m["value"], json!({"hello": "world"}));
    assert_eq!(m["key"], Value::Null);
}

#[ferry_test]
async fn two_topics_on_one_socket_and_unsubscribe_stops_delivery() {
    let gw = spawn_gateway().await;
    let (a, b) = (unique_topic("a"), unique_topic("b"));
    let mut client = gw.client().await;
    client.subscribed(&a).await;
    client.subscribed(&b).await;
    let mut publisher = gw.client().await;
    publisher.acked(&a, json!("to-a")).await;
    publisher.acked(&b, json!("to-b")).await;
    let mut got: Vec<(String, Value)> = Vec::new();
    for _ in 0..2 {
        let m = client.next_message().await;
        got.push((m["topic"].as_str().unwrap().to_owned(), m["value"].clone()));
    }
    got.sort_by(|x, y| x.0.cmp(&y.0));
    let mut want = vec![(a.clone(), json!("to-a")), (b.clone(), json!("to-b"))];
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got, want);

    let reply = client.request(json!({"type":"unsubscribe","topic":a})).await;
    assert_eq!(reply["type"], "unsubscribed", "{reply}");
    publisher.acked(&a, json!("after-unsubscribe")).await;
    publisher.acked(&b, json!("marker")).await;
    let m = client.next_message().await;
    assert_eq!(m["value"], "marker", "only b's record arrives: {m}");
    assert!(client.message_within(Duration::from_millis(500)).await.is_none());
}

#[ferry_test]
async fn values_that_are_not_json_and_keys_that_are_not_utf8_come_base64() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("raw");
    gw.kafka().create_topic(&topic, 1).await;
    let mut client = gw.client().await;
    client.subscribed(&topic).await;
    let producer = producer(&gw.bootstrap);
    produce(&producer, &topic, None, Some(&[0xff, 0xfe]), b"plain text", &[]).await;
    let m = client.next_message().await;
    assert_eq!(m["value_b64"], "cGxhaW4gdGV4dA==");
    assert!(m.get("value").is_none(), "{m}");
    assert_eq!(m["key_b64"], "//4=");
    assert_eq!(m["key"], Value::Null);
}

#[ferry_test]
async fn slow_socket_is_closed_and_fast_socket_gets_everything() {
    // The queue (one size for every socket) leaves the fast socket room for
    // a whole fetch batch of real Kafka, which can hold a few hundred records.
    let gw = spawn_gateway_with(|c| {
        c.limits.outbound_queue = 512;
        c.websocket.write_timeout_ms = 1_000;
    })
    .await;
    let topic = unique_topic("slow");
    gw.kafka().create_topic(&topic, 1).await;
    let mut fast = gw.client().await;
    fast.subscribed(&topic).await;
    let mut slow = gw.client().await;
    slow.subscribed(&topic).await;
    // `slow` now stops reading; `fast` reads everything.

    const N: usize = 2_000;
    burst_read_by_fast(&gw.bootstrap, &topic, &mut fast, N, 0, 16 * 1024).await;

    // The slow socket was closed: with 4000 if the close frame got through,
    // or cut if its writes stalled.
    let code = slow.closed().await;
    assert!(matches!(code, None | Some(4000)), "{code:?}");
    let pong = fast.request(json!({"type":"ping"})).await;
    assert_eq!(pong["type"], "pong", "the fast socket stays open");
    let (_, metrics) = gw.get("/metrics").await;
    assert!(metrics.contains("ferry_slow_consumer_disconnects_total"), "{metrics}");
}

/// Runs against real Kafka only (the `FERRY_TEST_KAFKA` pass of CI): the
/// embedded mock cluster cannot add partitions to a topic.
#[ferry_test]
async fn new_partitions_of_a_subscribed_topic_are_picked_up() {
    let gw = spawn_gateway().await;
    let kafka = gw.kafka();
    if kafka.is_embedded() {
        eprintln!("note: needs real Kafka (FERRY_TEST_KAFKA); the mock cannot add partitions");
        return;
    }
    let topic = unique_topic("grow");
    kafka.create_topic(&topic, 1).await;
    let mut client = gw.client().await;
    client.subscribed(&topic).await;
    kafka.add_partitions(&topic, 3).await;
    let producer = producer(&gw.bootstrap);
    let place = produce(&producer, &topic, Some(2), None, b"{\"new\":true}", &[]).await;
    let m = client.next_message().await;
    assert_eq!((m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap()), place);
}

/// Produces `n` records of ~`size` bytes to partition 0, keyed `k{i % keys}`
/// when `keys > 0`, with `{"seq": i, "key": ...}` values, while `fast`
/// reads every one of them in order.
///
/// The producer stays at most `WINDOW` records (2 MiB or less) ahead of
/// `fast`: the embedded Kafka keeps only the last 5 MiB of a partition, and
/// a producer running further ahead of the gateway's consumer (on a loaded
/// machine) would see records dropped before the gateway read them. Other
/// sockets fall behind without bound.
async fn burst_read_by_fast(
    bootstrap: &str,
    topic: &str,
    fast: &mut Client,
    n: usize,
    keys: usize,
    size: usize,
) {
    const WINDOW: usize = 128;
    assert!(WINDOW * size <= 2 << 20);
    let (read, mut read_so_far) = tokio::sync::watch::channel(0);
    let produce_all = async {
        let producer = producer(bootstrap);
        let pad = "x".repeat(size);
        for i in 0..n {
            read_so_far.wait_for(|&read| i < read + WINDOW).await.expect("the reader is alive");
            let key = (keys > 0).then(|| format!("k{}", i % keys));
            let value = format!(r#"{{"seq":{i},"key":{},"pad":"{pad}"}}"#, json!(key));
            let key = key.as_deref().map(str::as_bytes);
            produce(&producer, topic, Some(0), key, value.as_bytes(), &[]).await;
        }
    };
    let read_all = async {
        for i in 0..n {
            let m = fast.next_message().await;
            assert_eq!(m["value"]["seq"].as_u64(), Some(i as u64), "everything, in order");
            read.send_replace(i + 1);
        }
    };
    tokio::join!(produce_all, read_all);
}

#[ferry_test]
async fn drop_oldest_drops_and_reports_while_the_fast_socket_gets_everything() {
    drop_oldest_burst("latest").await;
}

/// A replay's `overflow` applies once it has caught up: the same burst to a
/// socket that subscribed `from: "earliest"` is dropped and reported, not
/// a reason to close it.
#[ferry_test]
async fn a_replay_drops_and_reports_by_its_overflow_once_live() {
    drop_oldest_burst("earliest").await;
}

async fn drop_oldest_burst(from: &str) {
    // The slow socket reads nothing during the burst: on a loaded machine
    // that can last longer than the default write timeout, which would
    // (rightly) close it. This test is about the lossy queue. The queue
    // (one size for every socket) leaves the fast socket room for a whole
    // fetch batch of real Kafka, which can hold a few hundred records.
    let gw = spawn_gateway_with(|c| {
        c.limits.outbound_queue = 512;
        c.websocket.write_timeout_ms = 120_000;
    })
    .await;
    let topic = unique_topic("drop");
    gw.kafka().create_topic(&topic, 1).await;
    let mut fast = gw.client().await;
    fast.subscribed(&topic).await;
    let mut slow = gw.client().await;
    let subscribe = json!({"type":"subscribe","topic":topic,"from":from,"overflow":"drop_oldest"});
    let reply = slow.request(subscribe).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    // `slow` does not read while the burst goes by.
    const N: usize = 1_500;
    burst_read_by_fast(&gw.bootstrap, &topic, &mut fast, N, 0, 16 * 1024).await;

    // Every record reached `slow` or was counted as dropped; it stays open.
    let (mut received, mut dropped, mut last_seq) = (0u64, 0u64, -1i64);
    while received + dropped < N as u64 {
        let frame = slow.next_frame_or_close().await.expect("the slow socket stays open");
        match frame["type"].as_str() {
            Some("message") => {
                let seq = frame["value"]["seq"].as_i64().unwrap();
                assert!(seq > last_seq, "still in order, with holes");
                last_seq = seq;
                received += 1;
            }
            Some("lagged") => {
                assert_eq!(frame["topic"], topic.as_str());
                dropped += frame["dropped"].as_u64().unwrap();
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(received + dropped, N as u64);
    assert!(dropped > 0, "the burst overflowed the queue");
    assert_eq!(last_seq, N as i64 - 1, "the newest record arrives");
    assert_eq!(slow.request(json!({"type":"ping"})).await["type"], "pong");
}

#[ferry_test]
async fn conflate_keeps_the_latest_value_per_key_for_a_slow_socket() {
    // As above: the write timeout must outlast the burst on a loaded
    // machine, and the fast socket needs room for a real Kafka fetch batch.
    let gw = spawn_gateway_with(|c| {
        c.limits.outbound_queue = 512;
        c.websocket.write_timeout_ms = 120_000;
    })
    .await;
    let topic = unique_topic("conflate");
    gw.kafka().create_topic(&topic, 1).await;
    let mut fast = gw.client().await;
    fast.subscribed(&topic).await;
    let mut slow = gw.client().await;
    let reply = slow.request(json!({"type":"subscribe","topic":topic,"overflow":"conflate"})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    const N: usize = 1_500;
    const KEYS: usize = 10;
    burst_read_by_fast(&gw.bootstrap, &topic, &mut fast, N, KEYS, 8 * 1024).await;

    // The slow socket ends up with the latest value of every key.
    let mut latest = std::collections::BTreeMap::new();
    let mut received = 0;
    while latest.len() < KEYS || latest.values().any(|&seq: &i64| seq < (N - KEYS) as i64) {
        let m = slow.next_message().await;
        let (key, seq) =
            (m["key"].as_str().unwrap().to_owned(), m["value"]["seq"].as_i64().unwrap());
        if let Some(prev) = latest.insert(key, seq) {
            assert!(seq > prev, "per key, values only move forward");
        }
        received += 1;
    }
    for (key, seq) in &latest {
        let i: i64 = key[1..].parse().unwrap();
        assert_eq!((seq - i) % KEYS as i64, 0);
        assert!(*seq >= (N - KEYS) as i64, "{key} ends at its latest value");
    }
    assert!(received < N, "superseded values were conflated away ({received} of {N})");
    assert_eq!(slow.request(json!({"type":"ping"})).await["type"], "pong");
}

/// First subscribes and last unsubscribes of one topic, racing on several
/// sockets: whatever their order, a socket that is subscribed at the end
/// gets the next record (the topic is assigned), and one that subscribes
/// after everyone left gets it too.
#[ferry_test]
async fn subscribe_and_unsubscribe_churn_leaves_the_topic_live() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("churn");
    gw.kafka().create_topic(&topic, 2).await;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(gw.client().await);
    }
    for round in 0..15 {
        let frames =
            |kind: &str| json!({"type": kind, "id": format!("{kind}{round}"), "topic": topic});
        for (i, socket) in sockets.iter_mut().enumerate() {
            let kind = if (i + round) % 2 == 0 { "subscribe" } else { "unsubscribe" };
            socket.send(frames(kind)).await;
        }
        for (i, socket) in sockets.iter_mut().enumerate() {
            let kind = if (i + round) % 2 == 0 { "subscribe" } else { "unsubscribe" };
            let reply = socket.reply(&format!("{kind}{round}")).await;
            assert_ne!(reply["type"], "error", "round {round}: {reply}");
            // A subscribe now cancels nothing: unsubscribe the next round.
        }
        // Those that subscribed this round leave before the next round.
        for (i, socket) in sockets.iter_mut().enumerate() {
            if (i + round) % 2 == 0 {
                let reply = socket.request(json!({"type":"unsubscribe","topic":topic})).await;
                assert_eq!(reply["type"], "unsubscribed", "{reply}");
            }
        }
    }
    let mut last = gw.client().await;
    last.subscribed(&topic).await;
    let producer = producer(&gw.bootstrap);
    let place = produce(&producer, &topic, Some(1), None, b"{\"after\":\"churn\"}", &[]).await;
    let m = last.next_message().await;
    assert_eq!((m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap()), place);
    drop(last);

    // Everyone left; the topic is released and taken up again.
    let mut again = gw.client().await;
    again.subscribed(&topic).await;
    let place = produce(&producer, &topic, Some(0), None, b"{\"again\":true}", &[]).await;
    let m = again.next_message().await;
    assert_eq!((m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap()), place);
}
