//! Bad input: every invalid vector gets its error code and the socket goes
//! on working; fatal conditions close with their documented code.

use ferry_gateway::config::TableConfig;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

fn vectors(name: &str) -> Vec<Value> {
    let path = format!("{}/../protocol/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[ferry_test]
async fn every_invalid_vector_gets_its_error_code_and_the_socket_still_works() {
    let gw = spawn_gateway().await;
    let mut client = gw.client().await;
    let topic = unique_topic("after-errors");
    for v in vectors("client-invalid.json") {
        client.send_text(v["frame"].as_str().unwrap()).await;
        let error = match v["id"].as_str() {
            Some(id) => client.reply(id).await,
            // Without a usable id the error comes without one: it is the
            // next frame.
            None => client.reply_without_id().await,
        };
        assert_eq!(error["type"], "error", "{}: {error}", v["name"]);
        assert_eq!(error["code"], v["code"], "{}: {error}", v["name"]);
        assert!(!error["message"].as_str().unwrap().is_empty());
        let pong = client.request(json!({"type":"ping"})).await;
        assert_eq!(pong["type"], "pong", "socket works after {}", v["name"]);
    }
    client.subscribed(&topic).await;
    client.acked(&topic, json!("still fine")).await;
    assert_eq!(client.next_message().await["value"], "still fine");
}

#[ferry_test]
async fn valid_vectors_are_accepted() {
    // Every topic has a table, for the snapshot vector.
    let every_topic = TableConfig { topics: "**".into(), max_keys: 1_000, max_bytes: 1 << 20 };
    let gw = spawn_gateway_with(|c| c.tables = vec![every_topic]).await;
    // Auth and commit frames are covered by the auth and group tests (this
    // gateway has auth off; a commit needs records of a group).
    let answered = |v: &Value| !matches!(v["expect"]["type"].as_str(), Some("auth" | "commit"));
    for v in vectors("client-valid.json").into_iter().filter(answered) {
        // A socket per vector: several vectors subscribe to the same topic.
        let mut client = gw.client().await;
        client.send_text(v["frame"].as_str().unwrap()).await;
        let id = v["expect"]["id"].as_str().unwrap();
        let reply = client.reply(id).await;
        let want = match v["expect"]["type"].as_str().unwrap() {
            "publish" => "ack",
            "subscribe" => "subscribed",
            "unsubscribe" => "unsubscribed",
            _ => "pong",
        };
        assert_eq!(reply["type"], want, "{}: {reply}", v["name"]);
    }
}

#[ferry_test]
async fn oversized_frame_closes_1009() {
    let gw = spawn_gateway_with(|c| c.limits.max_frame_bytes = 4096).await;
    let mut client = gw.client().await;
    assert_eq!(client.welcome["limits"]["max_frame_bytes"], 4096);
    let big = json!({"type":"publish","id":"big","topic":"t","value":"x".repeat(5000)});
    client.send(big).await;
    assert_eq!(client.closed().await, Some(1009));
}

#[ferry_test]
async fn oversized_frame_does_not_disturb_another_client() {
    let gw = spawn_gateway_with(|c| c.limits.max_frame_bytes = 4096).await;
    let topic = unique_topic("calm");
    let mut calm = gw.client().await;
    calm.subscribed(&topic).await;
    let mut rude = gw.client().await;
    rude.send(json!({"type":"ping","id":"x".repeat(6000)})).await;
    assert_eq!(rude.closed().await, Some(1009));
    calm.acked(&topic, json!(1)).await;
    assert_eq!(calm.next_message().await["value"], 1);
}

#[ferry_test]
async fn binary_frame_closes_1003() {
    let gw = spawn_gateway().await;
    let mut client = gw.client().await;
    client.raw().send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(client.closed().await, Some(1003));
}

#[ferry_test]
async fn unknown_topic_without_auto_create() {
    let gw = spawn_gateway_with(|c| c.kafka.auto_create_topics = Some(false)).await;
    let mut client = gw.client().await;
    let topic = unique_topic("missing");
    let reply = client.publish(&topic, json!(1)).await;
    assert_eq!(reply["code"], "unknown_topic", "{reply}");
    let reply = client.subscribe(&topic).await;
    assert_eq!(reply["code"], "unknown_topic", "{reply}");
    // Nothing was created as a side effect.
    gw.kafka().create_topic(&topic, 2).await;
    client.subscribed(&topic).await;
    let (partition, _) = client.acked(&topic, json!(2)).await;
    assert!(partition < 2);
}

#[ferry_test]
async fn auto_create_uses_the_configured_partition_count() {
    let gw = spawn_gateway_with(|c| c.kafka.topic_partitions = 5).await;
    let mut client = gw.client().await;
    let topic = unique_topic("auto");
    client.acked(&topic, json!(1)).await;
    let reply =
        client.request(json!({"type":"publish","topic":topic,"value":1,"partition":4})).await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let reply =
        client.request(json!({"type":"publish","topic":topic,"value":1,"partition":5})).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
}

#[ferry_test]
async fn subscription_limit() {
    let gw = spawn_gateway_with(|c| c.limits.max_subscriptions = 2).await;
    let mut client = gw.client().await;
    client.subscribed(&unique_topic("l1")).await;
    client.subscribed(&unique_topic("l2")).await;
    let reply = client.subscribe(&unique_topic("l3")).await;
    assert_eq!(reply["code"], "limit", "{reply}");
}

#[ferry_test]
async fn welcome_announces_protocol_node_and_limits() {
    let gw = spawn_gateway_with(|c| c.node_id = Some("node-x".into())).await;
    let client = gw.client().await;
    let w = &client.welcome;
    assert_eq!(w["protocol"], 1);
    assert_eq!(w["node"], "node-x");
    assert!(uuid::Uuid::parse_str(w["session"].as_str().unwrap()).is_ok());
    assert_eq!(w["limits"]["max_inflight_publishes"], 1000);
    assert_eq!(w["limits"]["max_subscriptions"], 100);
}

#[ferry_test]
async fn a_client_close_is_echoed() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as Code;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let gw = spawn_gateway().await;
    let mut client = gw.client().await;
    let bye = CloseFrame { code: Code::Normal, reason: "bye".into() };
    client.raw().send(Message::Close(Some(bye))).await.unwrap();
    assert_eq!(client.closed().await, Some(1000), "a clean close handshake, not 1006");
}
