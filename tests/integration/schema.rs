//! Payload validation: a topic with a JSON Schema takes only values that
//! validate; a refused value is answered `invalid_value` naming the first
//! violation and never reaches Kafka; topics without a schema are not
//! affected.

use base64::Engine as _;
use ferry_gateway::schema::SchemaConfig;
use serde_json::json;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

const TELEMETRY_SCHEMA: &str = r#"{
    "type": "object",
    "required": ["temp"],
    "properties": {
        "temp": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}}
    }
}"#;

/// A gateway whose topics `BASE.*` have the telemetry schema.
async fn gateway_with_schema(base: &str) -> TestGateway {
    let entry = SchemaConfig {
        topics: format!("{base}.*"),
        schema_file: None,
        schema: Some(TELEMETRY_SCHEMA.to_owned()),
    };
    spawn_gateway_with(|c| c.schemas = vec![entry]).await
}

/// The value of a metric series on `/metrics` (0 when absent).
async fn metric(gw: &TestGateway, series: &str) -> f64 {
    let (status, body) = gw.get("/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[ferry_test]
async fn invalid_values_are_refused_naming_the_violation_and_never_reach_kafka() {
    let base = unique_topic("schema");
    let gw = gateway_with_schema(&base).await;
    let topic = format!("{base}.dev-42");
    let mut client = gw.client().await;
    let rejections_before = metric(&gw, r#"ferry_schema_rejections_total{reason="invalid"}"#).await;

    // Two refusals first, on partition 0: had either been produced, it
    // would hold offset 0 there.
    let wrong_type = client
        .request(json!({"type":"publish","topic":topic,"value":{"temp":"hot"},"partition":0}))
        .await;
    assert_eq!(wrong_type["type"], "error", "{wrong_type}");
    assert_eq!(wrong_type["code"], "invalid_value", "{wrong_type}");
    let message = wrong_type["message"].as_str().unwrap();
    assert!(message.contains("at /temp:") && message.contains("number"), "{message}");
    assert!(!message.contains("hot"), "the value is not echoed: {message}");

    let nested = client
        .request(
            json!({"type":"publish","topic":topic,"value":{"temp":1,"tags":["a",2]},"partition":0}),
        )
        .await;
    assert_eq!(nested["code"], "invalid_value", "{nested}");
    assert!(nested["message"].as_str().unwrap().contains("at /tags/1:"), "{nested}");

    let missing =
        client.request(json!({"type":"publish","topic":topic,"value":{"t":1},"partition":0})).await;
    assert_eq!(missing["code"], "invalid_value", "{missing}");
    assert!(missing["message"].as_str().unwrap().contains("\"temp\" is a required"), "{missing}");

    // A valid value on the same topic and partition is stored, first.
    let valid = r#"{"temp": 21.5, "tags": ["roof"]}"#;
    client
        .send_text(format!(
            r#"{{"type":"publish","id":"ok1","topic":"{topic}","value":{valid},"partition":0}}"#
        ))
        .await;
    let ack = client.reply("ok1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!((ack["partition"].as_i64(), ack["offset"].as_i64()), (Some(0), Some(0)), "{ack}");

    let records = read_all(&gw.bootstrap, &topic, 3, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value.as_deref(), Some(valid.as_bytes()), "stored byte for byte");

    let rejections_after = metric(&gw, r#"ferry_schema_rejections_total{reason="invalid"}"#).await;
    assert!(
        rejections_after >= rejections_before + 3.0,
        "{rejections_before} -> {rejections_after}"
    );
}

#[ferry_test]
async fn bytes_on_a_schema_topic_are_refused_and_other_topics_are_not_checked() {
    let base = unique_topic("schemab");
    let gw = gateway_with_schema(&base).await;
    let topic = format!("{base}.dev-7");
    let free = format!("{base}-free");
    let mut client = gw.client().await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(br#"{"temp":1}"#);

    let bytes =
        client.request(json!({"type":"publish","topic":topic,"value_b64":b64,"partition":0})).await;
    assert_eq!(bytes["code"], "invalid_value", "{bytes}");
    assert!(bytes["message"].as_str().unwrap().contains("value_b64"), "{bytes}");
    let (partition, offset) = client.acked(&topic, json!({"temp": 3})).await;
    let records = read_all(&gw.bootstrap, &topic, 3, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!((records[0].partition, records[0].offset), (partition, offset));
    assert_eq!(records[0].value.as_deref(), Some(&br#"{"temp":3}"#[..]));

    // The same values on a topic no pattern matches: produced as they are.
    let free_bytes = client.request(json!({"type":"publish","topic":free,"value_b64":b64})).await;
    assert_eq!(free_bytes["type"], "ack", "{free_bytes}");
    client.acked(&free, json!({"temp": "hot"})).await;
    client.acked(&free, json!("any JSON at all")).await;
    let stored = read_all(&gw.bootstrap, &free, 3, 3).await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    // `BASE.*` is one segment deep: `BASE.a.b` has no schema either.
    client.acked(&format!("{base}.a.b"), json!([1, 2, 3])).await;
}

#[ferry_test]
async fn publishes_waiting_for_their_topic_look_up_are_validated_before_and_answered_once() {
    // A first publish to a topic the node has never seen waits for its
    // look-up: the check happened before, on the frame as sent, and both the
    // refusal and the ack come once per id.
    let base = unique_topic("schemaq");
    let gw = gateway_with_schema(&base).await;
    let topic = format!("{base}.fresh");
    let mut client = gw.client().await;
    client
        .send_batch(&[
            json!({"type":"publish","id":"good","topic":topic,"value":{"temp":1},"partition":0}),
            json!({"type":"publish","id":"bad","topic":topic,"value":{"temp":[]},"partition":0}),
            json!({"type":"publish","id":"good2","topic":topic,"value":{"temp":2},"partition":0}),
        ])
        .await;
    let bad = client.reply("bad").await;
    assert_eq!(bad["code"], "invalid_value", "{bad}");
    // In order on partition 0, nothing between them.
    for (id, offset) in [("good", 0), ("good2", 1)] {
        let ack = client.reply(id).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!((ack["partition"].as_i64(), ack["offset"].as_i64()), (Some(0), Some(offset)));
    }
    let records = read_all(&gw.bootstrap, &topic, 3, 2).await;
    let values: Vec<_> =
        records.iter().map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap()).collect();
    assert_eq!(values, [r#"{"temp":1}"#, r#"{"temp":2}"#]);
}
