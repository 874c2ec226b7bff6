//! The gateway as a process: several nodes on one Kafka, and SIGTERM.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// `cargo run` on a fresh machine: the embedded Kafka's address is logged,
/// and an outside Kafka client (here an independent rdkafka producer, as
/// kcat would be) can produce to it and reach subscribed sockets.
#[ferry_test]
async fn embedded_kafka_is_reachable_by_other_kafka_clients() {
    let gw = GatewayProcess::start(&[], &[]);
    let bootstrap = gw.embedded_bootstrap.clone().expect("embedded bootstrap is logged");
    let topic = unique_topic("outside");
    let mut client = Client::connect(&gw.ws_url()).await;
    client.subscribed(&topic).await;
    let producer = producer(&bootstrap);
    let place =
        produce(&producer, &topic, None, Some(b"kcat"), b"{\"from\":\"outside\"}", &[]).await;
    let m = client.next_message().await;
    assert_eq!((m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap()), place);
    assert_eq!(m["value"]["from"], "outside");
}

#[ferry_test]
async fn two_gateway_processes_on_one_kafka() {
    let kafka = TestKafka::start().await;
    let topic = unique_topic("nodes");
    kafka.create_topic(&topic, 3).await;
    let file = node_config(&kafka, "ferry-node", "");
    let file = file.to_str().unwrap();
    let a = GatewayProcess::start(&["--config", file, "--node-id", "a"], &[]);
    let b = GatewayProcess::start(&["--config", file, "--node-id", "b"], &[]);
    let mut on_a = Client::connect(&a.ws_url()).await;
    let mut on_b = Client::connect(&b.ws_url()).await;
    assert_eq!(on_a.welcome["node"], "a");
    assert_eq!(on_b.welcome["node"], "b");
    on_a.subscribed(&topic).await;
    on_b.subscribed(&topic).await;

    let (p, o) = on_a.acked(&topic, json!({"from": "a"})).await;
    for client in [&mut on_a, &mut on_b] {
        let m = client.next_message().await;
        assert_eq!(
            (m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap()),
            (p, o)
        );
        assert_eq!(m["value"]["from"], "a");
    }
    let (p, o) = on_b.acked(&topic, json!({"from": "b"})).await;
    for client in [&mut on_a, &mut on_b] {
        let m = client.next_message().await;
        assert_eq!(
            (m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap()),
            (p, o)
        );
        assert_eq!(m["value"]["from"], "b");
    }
}

#[ferry_test]
async fn sigterm_answers_every_inflight_publish_and_acked_records_are_in_kafka() {
    let steps = Steps::start();
    let kafka = TestKafka::start().await;
    let topic = unique_topic("term");
    kafka.create_topic(&topic, 3).await;
    steps.mark("topic created");
    let file = node_config(&kafka, "ferry-term", "");
    let mut gw = GatewayProcess::start(&["--config", file.to_str().unwrap()], &[]);
    let mut client = Client::connect(&gw.ws_url()).await;
    client.acked(&topic, json!("warm-up")).await;
    steps.mark("gateway started, warm-up acked");

    const N: usize = 500;
    for i in 0..N {
        client
            .send(json!({"type":"publish","id":format!("t{i}"),"topic":topic,"value":{"n":i}}))
            .await;
    }
    gw.signal("TERM");
    steps.mark("publishes sent, SIGTERM sent");

    let mut outcomes: HashMap<String, Value> = HashMap::new();
    let mut close_code = None;
    while outcomes.len() < N {
        match client.next_frame_or_close().await {
            Ok(frame) => {
                let id = frame["id"].as_str().unwrap_or_default().to_owned();
                assert!(id.starts_with('t'), "unexpected frame {frame}");
                assert!(outcomes.insert(id, frame).is_none(), "one answer per publish");
            }
            Err(code) => {
                close_code = code;
                break;
            }
        }
    }
    if close_code.is_none() && outcomes.len() == N {
        close_code = client.closed().await;
    }
    steps.mark("answers read");
    assert_eq!(close_code, Some(1001), "closed with going-away after answering");
    // Publishes the gateway never read (it stopped reading at SIGTERM) get no
    // answer; every one it read got exactly one, and nothing was lost:
    let acked: HashSet<i64> = outcomes
        .values()
        .filter(|f| f["type"] == "ack")
        .map(|f| f["id"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    for frame in outcomes.values().filter(|f| f["type"] != "ack") {
        assert_eq!(frame["type"], "error", "{frame}");
    }
    assert_eq!(gw.wait(Duration::from_secs(30)).await, Some(0), "clean exit");
    steps.mark("gateway exited");

    let records = read_all(&kafka.bootstrap(), &topic, 3, acked.len() + 1).await;
    let stored: HashSet<i64> = records
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(r.value.as_deref()?).ok())
        .filter_map(|v| v["n"].as_i64())
        .collect();
    for n in &acked {
        assert!(stored.contains(n), "acked record {n} is in Kafka");
    }
    eprintln!("{} of {N} publishes answered before close; {} acked", outcomes.len(), acked.len());
}
