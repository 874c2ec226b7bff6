//! The publish path: acks match what Kafka stored.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::helpers::*;
use ferry_test_macros::ferry_test;

#[ferry_test]
async fn ack_matches_what_an_independent_consumer_reads() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("ack");
    let mut client = gw.client().await;
    let value = r#"{"temp": 21.5, "unit":"C"}"#;
    client
        .send_text(format!(
            r#"{{"type":"publish","id":"p1","topic":"{topic}","value":{value},"key":"dev-42","headers":{{"trace":"abc","h":"v"}}}}"#
        ))
        .await;
    let ack = client.reply("p1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["topic"], topic.as_str());

    let records = read_all(&gw.bootstrap, &topic, 3, 1).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (r.partition as i64, r.offset),
        (ack["partition"].as_i64().unwrap(), ack["offset"].as_i64().unwrap())
    );
    assert_eq!(
        r.value.as_deref(),
        Some(value.as_bytes()),
        "value bytes are exactly the client's JSON"
    );
    assert_eq!(r.key.as_deref(), Some(&b"dev-42"[..]));
    assert_eq!(r.headers.get("trace").map(Vec::as_slice), Some(&b"abc"[..]));
    assert_eq!(r.headers.get("h").map(Vec::as_slice), Some(&b"v"[..]));
}

#[ferry_test]
async fn binary_value_and_explicit_partition() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("bin");
    let mut client = gw.client().await;
    let bytes = [0u8, 159, 146, 150, 255];
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let ack = client
        .request(
            json!({"type":"publish","topic":topic,"value_b64":b64,"key_b64":"wyg=","partition":2}),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["partition"], 2);
    let records = read_all(&gw.bootstrap, &topic, 3, 1).await;
    assert_eq!(records[0].value.as_deref(), Some(&bytes[..]));
    assert_eq!(records[0].key.as_deref(), Some(&[0xc3, 0x28][..]));
}

#[ferry_test]
async fn partition_beyond_the_topic_is_a_bad_request() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("part");
    let mut client = gw.client().await;
    client.acked(&topic, json!(1)).await;
    let reply =
        client.request(json!({"type":"publish","topic":topic,"value":1,"partition":7})).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("3 partitions"), "{reply}");
}

#[ferry_test]
async fn thousand_pipelined_publishes_are_each_acked_exactly_once() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("pipe");
    let mut client = gw.client().await;
    client.acked(&topic, json!("warm-up")).await;
    const N: usize = 1_000;
    for i in 0..N {
        client
            .send(json!({"type":"publish","id":format!("m{i}"),"topic":topic,"value":{"n":i}}))
            .await;
    }
    let mut acks: HashMap<String, (i64, i64)> = HashMap::new();
    for i in 0..N {
        let frame = client.reply(&format!("m{i}")).await;
        assert_eq!(frame["type"], "ack", "{frame}");
        let id = frame["id"].as_str().unwrap().to_owned();
        let place = (frame["partition"].as_i64().unwrap(), frame["offset"].as_i64().unwrap());
        assert!(acks.insert(id, place).is_none(), "ack twice");
    }
    // No second ack for anything: a ping round-trips with nothing in between.
    let pong = client.request(json!({"type":"ping"})).await;
    assert_eq!(pong["type"], "pong");
    let places: HashSet<_> = acks.values().collect();
    assert_eq!(places.len(), N, "every record has its own partition/offset");

    let records = read_all(&gw.bootstrap, &topic, 3, N + 1).await;
    assert_eq!(records.len(), N + 1);
    for r in records.iter().filter(|r| r.value.as_deref() != Some(&b"\"warm-up\""[..])) {
        let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let id = format!("m{}", v["n"]);
        assert_eq!(acks[&id], (r.partition as i64, r.offset), "{id}");
    }
}

#[ferry_test]
async fn inflight_publish_limit_gives_limit_error() {
    let gw = spawn_gateway_with(|c| c.limits.max_inflight_publishes = 5).await;
    let topic = unique_topic("inflight");
    let mut client = gw.client().await;
    client.acked(&topic, json!(0)).await;
    assert_eq!(client.welcome["limits"]["max_inflight_publishes"], 5);
    for i in 0..200 {
        client.send(json!({"type":"publish","id":format!("x{i}"),"topic":topic,"value":i})).await;
    }
    let mut codes = HashMap::<String, usize>::new();
    for i in 0..200 {
        let reply = client.reply(&format!("x{i}")).await;
        let kind = match reply["type"].as_str().unwrap() {
            "ack" => "ack".to_owned(),
            _ => reply["code"].as_str().unwrap().to_owned(),
        };
        *codes.entry(kind).or_default() += 1;
    }
    assert!(codes.get("ack").copied().unwrap_or(0) >= 5, "{codes:?}");
    assert!(codes.get("limit").copied().unwrap_or(0) > 0, "{codes:?}");
    assert_eq!(codes.keys().filter(|k| *k != "ack" && *k != "limit").count(), 0, "{codes:?}");
}

/// W3C trace context: a publish frame's `traceparent` field and `POST
/// /v1/publish`'s `traceparent` header become the Kafka record's
/// `traceparent` header, which a Kafka consumer reads and a subscriber gets
/// in `headers`; a record's own value wins over the request's.
#[ferry_test]
async fn traceparent_travels_through_kafka_to_consumers_and_subscribers() {
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const OWN: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let gw = spawn_gateway().await;
    let topic = unique_topic("trace");
    gw.kafka().create_topic(&topic, 1).await;
    let mut subscriber = gw.client().await;
    subscriber.subscribed(&topic).await;
    let mut client = gw.client().await;
    let ack =
        client.request(json!({"type":"publish","topic":topic,"value":1,"traceparent":TP})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let message = subscriber.next_message().await;
    assert_eq!(message["headers"]["traceparent"], TP, "{message}");

    let bad = client
        .request(json!({"type":"publish","topic":topic,"value":2,"traceparent":"00-abc-01"}))
        .await;
    assert_eq!(bad["code"], "bad_request", "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("traceparent"), "{bad}");

    let body = json!({"records":[
        {"topic": topic, "value": 3},
        {"topic": topic, "value": 4, "traceparent": OWN},
    ]});
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let post = |tp: &'static str| {
        http.post(format!("http://{}/v1/publish", gw.addr))
            .header("traceparent", tp)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let answer: Value =
        serde_json::from_str(&post(TP).await.unwrap().text().await.unwrap()).unwrap();
    assert!(answer["results"][1]["offset"].is_i64(), "{answer}");
    let refused = post("not-a-traceparent").await.unwrap();
    assert_eq!(refused.status(), 400, "a malformed header refuses the request");

    let records = read_all(&gw.bootstrap, &topic, 1, 3).await;
    let traces: Vec<Option<String>> = records
        .iter()
        .map(|r| r.headers.get("traceparent").map(|v| String::from_utf8(v.clone()).unwrap()))
        .collect();
    let expected = [Some(TP), Some(TP), Some(OWN)].map(|t| t.map(str::to_owned));
    assert_eq!(traces, expected, "the socket's, the request's, the record's own");
}
