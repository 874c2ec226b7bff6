//! Property tests of the frame codec: the client-frame decoder never panics,
//! whatever arrives, and answers every refusal with a wire error; client
//! frames written by any JSON encoder decode to what was written; message
//! frames are valid JSON that decode back to the record.

use std::collections::BTreeMap;

use base64::Engine as _;
use ferry_protocol::{
    decode_client_frame, AckMode, ClientFrame, ErrorCode, MessageFrame, Overflow, Payload,
    StartFrom, MAX_ID_CHARS,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, ..ProptestConfig::default() }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names the decoder knows, and a few it does not.
const FIELDS: &[&str] = &[
    "type",
    "id",
    "topic",
    "value",
    "value_b64",
    "key",
    "key_b64",
    "headers",
    "traceparent",
    "partition",
    "token",
    "from",
    "overflow",
    "filter",
    "group",
    "ack",
    "offset",
    "throttle_ms",
    "bogus",
];
const TYPES: &[&str] =
    &["publish", "subscribe", "unsubscribe", "ping", "auth", "commit", "nope", ""];

/// Objects shaped like client frames, with any value in any known field.
fn frame_like() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(TYPES),
        prop::collection::btree_map(prop::sample::select(FIELDS), json_value(), 0..8),
        prop::option::of(".{0,70}"),
    )
        .prop_map(|(kind, fields, id)| {
            let mut map: Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            map.insert("type".into(), json!(kind));
            if let Some(id) = id {
                map.insert("id".into(), json!(id));
            }
            Value::Object(map)
        })
}

/// Legal topic names.
fn topic() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._-]{0,40}"
}

fn id() -> impl Strategy<Value = String> {
    ".{1,20}"
}

/// Checks the invariants of a refusal: a wire code a decoder may give, a
/// message for a human, and an `id` only when usable.
fn check_refusal(err: &ferry_protocol::RequestError) {
    assert!(
        matches!(err.code, ErrorCode::BadRequest | ErrorCode::InvalidTopic),
        "unexpected code {:?}",
        err.code
    );
    assert!(!err.message.is_empty());
    if let Some(id) = &err.id {
        assert!(!id.is_empty() && id.chars().count() <= MAX_ID_CHARS, "unusable id echoed: {id:?}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Err(err) = decode_client_frame(&text) {
            check_refusal(&err);
        }
    }

    #[test]
    fn arbitrary_bytes_as_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(err) = decode_client_frame(&text) {
            check_refusal(&err);
        }
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        if let Err(err) = decode_client_frame(&value.to_string()) {
            check_refusal(&err);
        }
    }

    #[test]
    fn frame_shaped_json_never_panics_and_ids_echo(frame in frame_like()) {
        let text = frame.to_string();
        match decode_client_frame(&text) {
            Ok(decoded) => {
                // What decodes carries the id it was sent with.
                if let Some(id) = frame["id"].as_str() {
                    prop_assert_eq!(decoded.id(), id);
                }
            }
            Err(err) => check_refusal(&err),
        }
    }

    /// A truncated valid frame is refused, never accepted or panicking.
    #[test]
    fn truncated_frames_are_refused(value in json_value(), cut in 1usize..40) {
        let text = json!({"type":"publish","id":"p","topic":"t","value":value}).to_string();
        let end = text.len().saturating_sub(cut);
        if let Some(prefix) = text.get(..end) {
            let err = decode_client_frame(prefix).unwrap_err();
            check_refusal(&err);
        }
    }

    #[test]
    fn publish_round_trips(
        id in id(),
        topic in topic(),
        value in json_value(),
        key in prop::option::of(".{0,16}"),
        headers in prop::collection::btree_map("[a-z]{1,8}", ".{0,8}", 0..4),
        partition in prop::option::of(0i32..1000),
    ) {
        let mut frame = json!({"type":"publish","id":id,"topic":topic,"value":value,"headers":headers});
        if let Some(k) = &key { frame["key"] = json!(k); }
        if let Some(p) = partition { frame["partition"] = json!(p); }
        let text = frame.to_string();
        let ClientFrame::Publish(p) = decode_client_frame(&text).unwrap() else {
            panic!("not a publish: {text}")
        };
        prop_assert_eq!(&p.id, &id);
        prop_assert_eq!(&p.topic, &topic);
        // The value is the exact text the encoder wrote.
        let written = value.to_string();
        prop_assert_eq!(p.value.as_bytes(), written.as_bytes());
        prop_assert_eq!(p.key.as_deref(), key.as_deref().map(str::as_bytes));
        prop_assert_eq!(&p.headers, &headers);
        prop_assert_eq!(p.partition, partition);
    }

    #[test]
    fn binary_publish_round_trips(
        value in prop::collection::vec(any::<u8>(), 0..64),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
    ) {
        let mut frame = json!({"type":"publish","id":"b","topic":"bin","value_b64":b64(&value)});
        if let Some(k) = &key { frame["key_b64"] = json!(b64(k)); }
        let text = frame.to_string();
        let ClientFrame::Publish(p) = decode_client_frame(&text).unwrap() else {
            panic!("not a publish")
        };
        prop_assert!(matches!(p.value, Payload::Bytes(_)));
        prop_assert_eq!(p.value.as_bytes(), &value[..]);
        prop_assert_eq!(p.key, key);
    }

    #[test]
    fn subscribe_round_trips(
        id in id(),
        topic in topic(),
        from in prop_oneof![
            Just(StartFrom::Latest),
            Just(StartFrom::Earliest),
            prop::collection::btree_map(0i32..64, 0i64..i64::MAX, 0..5).prop_map(StartFrom::Offsets),
            (0i64..i64::MAX).prop_map(StartFrom::Timestamp),
            Just(StartFrom::Snapshot),
        ],
        overflow in prop::sample::select(&[Overflow::Disconnect, Overflow::DropOldest, Overflow::Conflate][..]),
        group in prop::option::of(("[a-zA-Z0-9._-]{1,30}", any::<bool>())),
    ) {
        let wire_from = match &from {
            StartFrom::Latest => json!("latest"),
            StartFrom::Earliest => json!("earliest"),
            StartFrom::Offsets(o) => {
                let o: BTreeMap<String, i64> = o.iter().map(|(p, o)| (p.to_string(), *o)).collect();
                json!({"offsets": o})
            }
            StartFrom::Timestamp(t) => json!({"timestamp": t}),
            StartFrom::Snapshot => json!("snapshot"),
        };
        let mut frame = json!({"type":"subscribe","id":id,"topic":topic,"from":wire_from});
        if let Some((name, client_ack)) = &group {
            frame["group"] = json!(name);
            frame["ack"] = json!(if *client_ack { "client" } else { "auto" });
        } else {
            // Documented: a group takes no `overflow` (refused, see the vectors).
            frame["overflow"] = json!(overflow.as_str());
        }
        let text = frame.to_string();
        let decoded = decode_client_frame(&text);
        let group_from_ok = matches!(from, StartFrom::Latest | StartFrom::Earliest);
        if group.is_some() && !group_from_ok {
            // Documented: a group starts from its committed offsets.
            let err = decoded.unwrap_err();
            prop_assert_eq!(err.code, ErrorCode::BadRequest);
            prop_assert_eq!(err.id.as_deref(), Some(id.as_str()));
            return Ok(());
        }
        let ClientFrame::Subscribe(s) = decoded.unwrap() else { panic!("not a subscribe") };
        prop_assert_eq!(&s.id, &id);
        prop_assert_eq!(&s.topic, &topic);
        prop_assert_eq!(&s.from, &from);
        let overflow = if group.is_some() { Overflow::Disconnect } else { overflow };
        prop_assert_eq!(s.overflow, overflow);
        prop_assert_eq!(s.group.as_deref(), group.as_ref().map(|(g, _)| g.as_str()));
        let ack = match group { Some((_, true)) => AckMode::Client, _ => AckMode::Auto };
        prop_assert_eq!(s.ack, ack);
    }

    #[test]
    fn commit_unsubscribe_and_ping_round_trip(
        id in id(),
        topic in topic(),
        partition in 0i32..i32::MAX,
        offset in 0i64..i64::MAX,
    ) {
        let text = json!({"type":"commit","id":id,"topic":topic,"partition":partition,"offset":offset}).to_string();
        let ClientFrame::Commit { id: got_id, topic: got_topic, partition: p, offset: o } =
            decode_client_frame(&text).unwrap() else { panic!("not a commit") };
        prop_assert_eq!((got_id.as_deref(), got_topic.as_str(), p, o), (Some(id.as_str()), topic.as_str(), partition, offset));
        let text = json!({"type":"unsubscribe","id":id,"topic":topic}).to_string();
        let ClientFrame::Unsubscribe { id: got_id, topic: got_topic } = decode_client_frame(&text).unwrap() else {
            panic!("not an unsubscribe")
        };
        prop_assert_eq!((got_id, got_topic), (id.clone(), topic));
        let ClientFrame::Ping { id: got_id } = decode_client_frame(&json!({"type":"ping","id":id}).to_string()).unwrap() else {
            panic!("not a ping")
        };
        prop_assert_eq!(got_id, id);
    }

    /// Whatever the record's bytes, its message frame is valid JSON that
    /// gives back the record: text where it is UTF-8 (JSON values embedded),
    /// base64 otherwise.
    #[test]
    fn message_frames_decode_back_to_the_record(
        topic in topic(),
        partition in 0i32..1000,
        offset in 0i64..i64::MAX,
        timestamp in prop::option::of(0i64..i64::MAX),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        headers in prop::collection::btree_map("[a-z]{1,8}", prop::option::of(prop::collection::vec(any::<u8>(), 0..8)), 0..4),
        value in prop_oneof![
            Just(None),
            prop::collection::vec(any::<u8>(), 0..32).prop_map(Some),
            json_value().prop_map(|v| Some(v.to_string().into_bytes())),
        ],
    ) {
        let header_list: Vec<(&str, Option<&[u8]>)> =
            headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        let frame = MessageFrame {
            topic: &topic,
            partition,
            offset,
            timestamp,
            key: key.as_deref(),
            headers: &header_list,
            value: value.as_deref(),
        };
        let text = frame.encode();
        let m: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&m["type"], "message");
        prop_assert_eq!(&m["topic"], topic.as_str());
        prop_assert_eq!(m["partition"].as_i64(), Some(i64::from(partition)));
        prop_assert_eq!(m["offset"].as_i64(), Some(offset));
        prop_assert_eq!(m.get("timestamp").and_then(Value::as_i64), timestamp);
        let got_key = match (&m["key"], m.get("key_b64")) {
            (Value::String(k), None) => Some(k.clone().into_bytes()),
            (Value::Null, Some(Value::String(b))) => Some(
                base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
            ),
            (Value::Null, None) => None,
            other => panic!("bad key fields {other:?}"),
        };
        prop_assert_eq!(got_key, key);
        for (name, bytes) in &headers {
            let got = match (m["headers"].get(name), m.get("headers_b64").and_then(|h| h.get(name))) {
                (Some(Value::Null), None) => None,
                (Some(Value::String(t)), None) => Some(t.clone().into_bytes()),
                (None, Some(Value::String(b))) => Some(base64::engine::general_purpose::STANDARD.decode(b).unwrap()),
                other => panic!("bad header {name}: {other:?}"),
            };
            prop_assert_eq!(&got, bytes);
        }
        match (&value, m.get("value"), m.get("value_b64")) {
            (None, Some(Value::Null), None) => {}
            (Some(bytes), Some(v), None) => {
                let original: Value = serde_json::from_slice(bytes).unwrap();
                prop_assert_eq!(v, &original);
            }
            (Some(bytes), None, Some(Value::String(b))) => {
                prop_assert!(serde_json::from_slice::<Value>(bytes).is_err(), "JSON sent as base64");
                prop_assert_eq!(&base64::engine::general_purpose::STANDARD.decode(b).unwrap(), bytes);
            }
            other => panic!("bad value fields {other:?}"),
        }
    }
}
