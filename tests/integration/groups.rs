//! Shared-group subscriptions: each record to exactly one member socket
//! across nodes; at-least-once redelivery when a member leaves unprocessed
//! records behind.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use ferry_test_macros::ferry_test;

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

#[ferry_test]
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

#[ferry_test]
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
#[ferry_test]
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

/// A new group (nothing committed yet) joined from `latest`: the first
/// member takes 20 records and leaves without committing. Its node leaves
/// the Kafka group; a member joining on another node afterwards must get
/// those 20 (at least once), not start again from the end of the topic.
#[ferry_test]
async fn a_new_groups_uncommitted_records_reach_a_member_who_joins_after_the_first_left() {
    let kafka = TestKafka::start().await;
    let topic = unique_topic("firstleaves");
    let group = unique_topic("crew");
    kafka.create_topic(&topic, 2).await;
    let node_a = kafka.spawn_node().await;
    let mut first = node_a.client().await;
    let reply =
        first.request(json!({"type":"subscribe","topic":topic,"group":group,"ack":"client"})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    const N: usize = 20;
    let producer = producer(&kafka.bootstrap());
    let mut produced = std::collections::BTreeSet::new();
    for i in 0..N {
        let value = format!("{{\"n\":{i}}}");
        produced.insert(
            produce(&producer, &topic, Some((i % 2) as i32), None, value.as_bytes(), &[]).await,
        );
    }
    for _ in 0..N {
        first.next_message().await;
    }
    drop(first);
    drop(node_a);

    let node_b = kafka.spawn_node().await;
    let mut next = node_b.client().await;
    let reply =
        next.request(json!({"type":"subscribe","topic":topic,"group":group,"ack":"client"})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut got = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < N && tokio::time::Instant::now() < deadline {
        if let Some(m) = next.message_within(Duration::from_millis(200)).await {
            let (p, o) = place(&m);
            next.send(json!({"type":"commit","topic":topic,"partition":p,"offset":o})).await;
            got.insert((p as i32, o));
        }
    }
    assert_eq!(got, produced, "the records the first member never committed");
}

/// The group's committed offset is the first record no member processed:
/// a member who joins after the others left starts exactly there, neither
/// skipping it nor repeating the processed ones.
#[ferry_test]
async fn a_member_who_joins_later_starts_at_the_first_record_not_processed() {
    let kafka = TestKafka::start().await;
    let topic = unique_topic("nextrecord");
    let group = unique_topic("crew");
    kafka.create_topic(&topic, 1).await;
    let producer = producer(&kafka.bootstrap());
    let node_a = kafka.spawn_node().await;
    let mut first = node_a.client().await;
    join(&mut first, &topic, &group, "client").await;
    for i in 0..5 {
        produce(&producer, &topic, Some(0), None, format!("{{\"n\":{i}}}").as_bytes(), &[]).await;
    }
    for expected in 0..5 {
        let m = first.next_message().await;
        assert_eq!(place(&m), (0, expected), "{m}");
        first.send(json!({"type":"commit","topic":topic,"partition":0,"offset":expected})).await;
    }

    // What the group committed, read from outside it.
    let committed = || {
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap())
            .set("group.id", format!("ferry.{group}"))
            .create()
            .expect("offset reader");
        let mut partitions = rdkafka::TopicPartitionList::new();
        partitions.add_partition(&topic, 0);
        let offsets = rdkafka::consumer::Consumer::committed_offsets(
            &consumer,
            partitions,
            Duration::from_secs(5),
        )
        .expect("committed offsets");
        match offsets.elements()[0].offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        last = tokio::task::block_in_place(committed);
        if last.is_some_and(|o| o >= 5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, Some(5), "committed offset after records 0..=4 were processed");

    drop(first);
    drop(node_a);
    for i in 5..7 {
        produce(&producer, &topic, Some(0), None, format!("{{\"n\":{i}}}").as_bytes(), &[]).await;
    }
    let node_b = kafka.spawn_node().await;
    let mut next = node_b.client().await;
    join(&mut next, &topic, &group, "client").await;
    let m = next.next_message().await;
    assert_eq!(place(&m), (0, 5), "the first record nobody processed: {m}");
}

#[ferry_test]
async fn a_group_subscribe_with_an_overflow_policy_is_refused_naming_it() {
    let gw = spawn_gateway().await;
    let mut client = gw.client().await;
    let topic = unique_topic("group-overflow");
    client
        .send(json!({"type":"subscribe","id":"s1","topic":topic,"group":"g","overflow":"conflate"}))
        .await;
    let reply = client.reply("s1").await;
    assert_eq!(reply["type"], "error", "not subscribed: {reply}");
    assert_eq!(reply["id"], "s1");
    assert_eq!(reply["code"], "bad_request");
    assert!(reply["message"].as_str().unwrap().contains("`overflow`"), "{reply}");
}
