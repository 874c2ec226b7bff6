//! `from: "snapshot"`: the latest value of every key from the node's table,
//! `snapshot_end` with the positions, then every live record from exactly
//! there; checked against an independent Kafka client's read of the topic.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ferry_gateway::config::TableConfig;
use ferry_gateway::Config;
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};

use crate::helpers::*;
use ferry_test_macros::ferry_test;

const KEYS: usize = 10_000;
const VERSIONS: usize = 5;
const TOMBSTONES: usize = 500;

fn with_table(topic: &str) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        c.tables =
            vec![TableConfig { topics: topic.to_owned(), max_keys: 50_000, max_bytes: 64 << 20 }];
    }
}

/// Produces `(key, value)` records (`None`: a tombstone) and waits for every ack.
async fn produce_all(bootstrap: &str, topic: &str, records: Vec<(String, Option<String>)>) {
    let producer = producer(bootstrap);
    let mut acks = Vec::new();
    for (key, value) in &records {
        let mut record = FutureRecord::<str, str>::to(topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        loop {
            match producer.send_result(record) {
                Ok(ack) => {
                    acks.push(ack);
                    break;
                }
                Err((_, back)) => {
                    record = back; // the local queue is full: let it drain
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for ack in acks {
        ack.await.expect("delivered").expect("stored");
    }
}

/// The `message` frames up to `snapshot_end`, and its positions.
async fn read_snapshot(client: &mut Client) -> (Vec<Value>, BTreeMap<i32, i64>) {
    let mut messages = Vec::new();
    loop {
        let frame = client.next_frame_or_close().await.expect("open during the snapshot");
        match frame["type"].as_str() {
            Some("message") => {
                assert_eq!(frame["snapshot"], true, "only snapshot records before snapshot_end");
                messages.push(frame);
            }
            Some("snapshot_end") => {
                let positions = frame["positions"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
                    .collect();
                return (messages, positions);
            }
            _ => panic!("unexpected frame during the snapshot: {frame}"),
        }
    }
}

#[ferry_test(timeout_secs = 240)]
async fn a_snapshot_holds_the_latest_value_of_every_live_key_then_live_records_follow_without_gap_or_duplicate(
) {
    let kafka = TestKafka::start().await;
    let topic = unique_topic("devices");
    kafka.create_topic(&topic, 3).await;
    let bootstrap = kafka.bootstrap();
    let mut history = Vec::new();
    for version in 0..VERSIONS {
        for key in 0..KEYS {
            history.push((format!("k{key}"), Some(json!({"key": key, "v": version}).to_string())));
        }
    }
    for key in 0..TOMBSTONES {
        history.push((format!("k{key}"), None));
    }
    produce_all(&bootstrap, &topic, history).await;

    let a = kafka.spawn_node_with(with_table(&topic)).await;
    // A producer keeps writing while the table loads and the snapshot goes out.
    let writer = {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        tokio::spawn(async move {
            for round in 0..20 {
                let batch = (0..50)
                    .map(|i| {
                        let key = format!("k{}", (round * 50 + i) * 7 % KEYS);
                        (key, Some(json!({"live": round * 50 + i}).to_string()))
                    })
                    .collect();
                produce_all(&bootstrap, &topic, batch).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut client = a.client().await;
    let subscribed =
        client.request(json!({"type": "subscribe", "topic": topic, "from": "snapshot"})).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let (snapshot, positions) = read_snapshot(&mut client).await;
    writer.await.unwrap();

    // What an independent reader finds in Kafka.
    let total = KEYS * VERSIONS + TOMBSTONES + 20 * 50;
    let records = read_all(&bootstrap, &topic, 3, total).await;
    assert_eq!(records.len(), total, "the independent reader read the whole topic");
    let mut latest: HashMap<String, (i32, i64, Option<Vec<u8>>)> = HashMap::new();
    for r in &records {
        if r.offset < positions[&r.partition] {
            let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
            let newer = latest.get(&key).is_none_or(|(_, o, _)| r.offset > *o);
            if newer {
                latest.insert(key, (r.partition, r.offset, r.value.clone()));
            }
        }
    }
    let expected: BTreeMap<String, (i32, i64)> = latest
        .iter()
        .filter(|(_, (_, _, value))| value.is_some())
        .map(|(k, (p, o, _))| (k.clone(), (*p, *o)))
        .collect();
    let got: BTreeMap<String, (i32, i64)> = snapshot
        .iter()
        .map(|m| {
            let at = (m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap());
            (m["key"].as_str().unwrap().to_owned(), at)
        })
        .collect();
    assert_eq!(got.len(), snapshot.len(), "each key once");
    assert_eq!(got.len(), expected.len(), "every live key, no tombstoned one");
    assert!(got == expected, "the snapshot is exactly the latest record of each live key");
    assert!(got.len() >= KEYS - TOMBSTONES);

    // Live: every record from the positions on, once, in order.
    let mut live: Vec<(i32, i64)> = Vec::new();
    let wanted = records.iter().filter(|r| r.offset >= positions[&r.partition]).count();
    while live.len() < wanted {
        let m = client.next_message().await;
        assert!(m.get("snapshot").is_none(), "live records carry no snapshot flag: {m}");
        live.push((m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap()));
    }
    for (&p, &start) in &positions {
        let offsets: Vec<i64> = live.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).collect();
        let end = records.iter().filter(|r| r.partition == p).map(|r| r.offset + 1).max();
        let expected: Vec<i64> = (start..end.unwrap_or(start)).collect();
        assert_eq!(offsets, expected, "partition {p}: no gap, no duplicate at the switch");
    }

    // Resuming on another node from where the client is: no snapshot again.
    let b = kafka.spawn_node().await;
    let mut resumed_at = positions.clone();
    for (p, o) in &live {
        resumed_at.insert(*p, o + 1);
    }
    let offsets: serde_json::Map<String, Value> =
        resumed_at.iter().map(|(p, o)| (p.to_string(), json!(o))).collect();
    let mut on_b = b.client().await;
    let subscribed = on_b
        .request(json!({"type": "subscribe", "topic": topic, "from": {"offsets": offsets}}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    produce_all(&bootstrap, &topic, vec![("k1".into(), Some("{\"after\":1}".into()))]).await;
    let m = on_b.next_message().await;
    assert_eq!(m["value"]["after"], 1, "the next record, not the snapshot again: {m}");
}

#[ferry_test]
async fn a_snapshot_of_a_topic_without_a_table_is_refused_saying_how_to_configure_one() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("no-table");
    let mut client = gw.client().await;
    let reply =
        client.request(json!({"type": "subscribe", "topic": topic, "from": "snapshot"})).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("[[tables]]"), "{reply}");
}

#[ferry_test]
async fn a_table_past_max_keys_refuses_snapshots_with_limit_never_a_partial_one() {
    let kafka = TestKafka::start().await;
    let topic = unique_topic("too-many");
    kafka.create_topic(&topic, 1).await;
    let records = (0..50).map(|k| (format!("k{k}"), Some("1".to_owned()))).collect();
    produce_all(&kafka.bootstrap(), &topic, records).await;
    let gw = kafka
        .spawn_node_with(|c| {
            c.tables = vec![TableConfig { topics: topic.clone(), max_keys: 10, max_bytes: 1 << 20 }]
        })
        .await;
    let mut client = gw.client().await;
    let reply =
        client.request(json!({"type": "subscribe", "topic": topic, "from": "snapshot"})).await;
    assert_eq!(reply["code"], "limit", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("max_keys"), "{reply}");
    let (_, metrics) = gw.get("/metrics").await;
    assert!(metrics.contains("ferry_snapshots_refused_total 1"), "counted");
}
