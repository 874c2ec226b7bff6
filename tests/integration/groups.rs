//! Shared-group subscriptions: each record to exactly one member socket
//! across nodes; at-least-once redelivery when a member leaves unprocessed
//! records behind.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn place(m: &Value) -> (i64, i64) {
    (m["partition"].as_i64().unwrap(), m["offset"].as_i64().unwrap())
}

async fn join(client: &mut Client, topic: &str, group: &str, ack: &str) {
    let reply = client
        .request(
            json!({"type":"subscribe","topic":topic,"group":group,"ack":ack,"from":"earliest"}),
        )
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_reaches_exactly_one_member_across_two_nodes() {
    let kafka = TestKafka::start().await;
    let topic = unique_topic("jobs");
    let group = unique_topic("workers");
    kafka.create_topic(&topic, 4).await;
    let node_a = kafka.spawn_node().await;
    let node_b = kafka.spawn_node().await;
    let mut members = vec![node_a.client().await, node_a.client().await, node_b.client().await];
    for member in &mut members {
        join(member, &topic, &group, "auto").await;
    }
    // The second node's join rebalanced the group; let it settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    const N: usize = 80;
    let producer = producer(&kafka.bootstrap());
    for i in 0..N {
        produce(
            &producer,
            &topic,
            Some((i % 4) as i32),
            None,
            format!("{{\"job\":{i}}}").as_bytes(),
            &[],
        )
        .await;
    }
    let mut owner: HashMap<(i64, i64), usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while owner.len() < N && tokio::time::Instant::now() < deadline {
        for (who, member) in members.iter_mut().enumerate() {
            while let Some(m) = member.message_within(Duration::from_millis(50)).await {
                assert!(
                    owner.insert(place(&m), who).is_none(),
                    "record {:?} delivered twice",
                    place(&m)
                );
            }
        }
    }
    assert_eq!(owner.len(), N, "every record delivered");
    let per_member: Vec<usize> =
        (0..3).map(|w| owner.values().filter(|&&o| o == w).count()).collect();
    assert!(per_member[2] > 0, "the other node got its share: {per_member:?}");
    assert!(per_member[0] + per_member[1] > 0, "node a got its share: {per_member:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessed_records_of_a_departed_member_go_to_another() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("tasks");
    let group = unique_topic("crew");
    gw.kafka().create_topic(&topic, 1).await;
    let mut lazy = gw.client().await;
    join(&mut lazy, &topic, &group, "client").await;
    let mut diligent = gw.client().await;
    join(&mut diligent, &topic, &group, "client").await;

    const N: i64 = 20;
    let producer = producer(&gw.bootstrap);
    for i in 0..N {
        produce(&producer, &topic, Some(0), None, format!("{{\"task\":{i}}}").as_bytes(), &[])
            .await;
    }
    // Both get a share; the diligent one commits what it gets, the lazy one
    // never does and then disconnects.
    let mut done = std::collections::BTreeSet::new();
    let mut lazy_got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while done.len() + lazy_got.len() < N as usize && tokio::time::Instant::now() < deadline {
        while let Some(m) = lazy.message_within(Duration::from_millis(50)).await {
            lazy_got.push(place(&m).1);
        }
        while let Some(m) = diligent.message_within(Duration::from_millis(50)).await {
            let (p, o) = place(&m);
            diligent.send(json!({"type":"commit","topic":topic,"partition":p,"offset":o})).await;
            done.insert(o);
        }
    }
    assert!(!lazy_got.is_empty(), "round-robin gave the lazy member some records");
    drop(lazy);

    // Everything the lazy member left unprocessed reaches the diligent one.
    let deadline = tokio::time::Instant::now() + WAIT;
    while done.len() < N as usize && tokio::time::Instant::now() < deadline {
        if let Some(m) = diligent.message_within(Duration::from_millis(200)).await {
            let (p, o) = place(&m);
            diligent.send(json!({"type":"commit","topic":topic,"partition":p,"offset":o})).await;
            done.insert(o);
        }
    }
    assert_eq!(done.len(), N as usize, "all {N} processed; lazy had {lazy_got:?}");

    // Committing something that is not yours, with an id, is refused.
    let reply =
        diligent.request(json!({"type":"commit","topic":topic,"partition":0,"offset":999})).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
}

/// When the last member on a node leaves with records it never committed,
/// the node leaves the Kafka group and a member on another node gets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_nodes_unprocessed_records_go_to_another_node() {
    let kafka = TestKafka::start().await;
    let topic = unique_topic("handover");
    let group = unique_topic("crew");
    kafka.create_topic(&topic, 2).await;
    let node_a = kafka.spawn_node().await;
    let mut lazy = node_a.client().await;
    join(&mut lazy, &topic, &group, "client").await;

    const N: i64 = 10;
    let producer = producer(&kafka.bootstrap());
    for i in 0..N {
        produce(
            &producer,
            &topic,
            Some((i % 2) as i32),
            None,
            format!("{{\"t\":{i}}}").as_bytes(),
            &[],
        )
        .await;
    }
    // Node a's only member gets everything and commits nothing.
    let mut got = 0;
    while got < N {
        lazy.next_message().await;
        got += 1;
    }
    let node_b = kafka.spawn_node().await;
    let mut diligent = node_b.client().await;
    join(&mut diligent, &topic, &group, "client").await;
    drop(lazy);

    let mut done = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while done.len() < N as usize && tokio::time::Instant::now() < deadline {
        if let Some(m) = diligent.message_within(Duration::from_millis(200)).await {
            let (p, o) = place(&m);
            diligent.send(json!({"type":"commit","topic":topic,"partition":p,"offset":o})).await;
            done.insert((p, o));
        }
    }
    assert_eq!(done.len(), N as usize, "node b processed every record node a left behind");
}
