//! The shared JSON test vectors in `protocol/vectors/`, checked against the
//! Rust decoder and encoder. The TypeScript client reads the same files.

use base64::Engine as _;
use ferry_protocol::server::Message;
use ferry_protocol::{
    decode_client_frame, AckMode, ClientFrame, MessageFrame, Overflow, ServerFrame, StartFrom,
};
use serde_json::{json, Value};

fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The normalized form the vectors state for each valid client frame.
fn normalize(frame: &ClientFrame<'_>) -> Value {
    match frame {
        ClientFrame::Publish(p) => json!({
            "type": "publish", "id": p.id, "topic": p.topic,
            "value_b64": b64(p.value.as_bytes()),
            "key_b64": p.key.as_deref().map(b64),
            "headers": p.headers, "partition": p.partition,
        }),
        ClientFrame::Subscribe(sub) => {
            let from = match &sub.from {
                StartFrom::Latest => json!("latest"),
                StartFrom::Earliest => json!("earliest"),
                StartFrom::Offsets(o) => json!({ "offsets": o }),
                StartFrom::Timestamp(t) => json!({ "timestamp": t }),
            };
            let mut v =
                json!({"type": "subscribe", "id": sub.id, "topic": sub.topic, "from": from});
            if sub.overflow != Overflow::Disconnect {
                v["overflow"] = json!(sub.overflow.as_str());
            }
            if let Some(filter) = &sub.filter {
                v["filter"] = filter.clone();
            }
            if let Some(group) = &sub.group {
                v["group"] = json!(group);
                v["ack"] = json!(if sub.ack == AckMode::Client { "client" } else { "auto" });
            }
            v
        }
        ClientFrame::Commit { id, topic, partition, offset } => json!({
            "type": "commit", "id": id, "topic": topic, "partition": partition, "offset": offset,
        }),
        ClientFrame::Unsubscribe { id, topic } => {
            json!({"type": "unsubscribe", "id": id, "topic": topic})
        }
        ClientFrame::Ping { id } => json!({"type": "ping", "id": id}),
        ClientFrame::Auth { id, token } => json!({"type": "auth", "id": id, "token": token}),
    }
}

#[test]
fn valid_client_frames_decode_to_their_stated_form() {
    let vectors = load("client-valid.json");
    assert!(vectors.len() >= 8);
    for v in vectors {
        let text = v["frame"].as_str().unwrap();
        let frame =
            decode_client_frame(text).unwrap_or_else(|e| panic!("{}: refused: {e:?}", v["name"]));
        assert_eq!(normalize(&frame), v["expect"], "{}", v["name"]);
    }
}

#[test]
fn invalid_client_frames_give_their_error_code() {
    let vectors = load("client-invalid.json");
    assert!(vectors.len() >= 20);
    for v in vectors {
        let text = v["frame"].as_str().unwrap();
        let err = match decode_client_frame(text) {
            Ok(frame) => panic!("{}: accepted as {frame:?}", v["name"]),
            Err(err) => err,
        };
        assert_eq!(err.code.as_str(), v["code"], "{}: {}", v["name"], err.message);
        assert_eq!(err.id.as_deref(), v["id"].as_str(), "{}", v["name"]);
        assert!(!err.message.is_empty());
    }
}

/// Re-encodes a decoded `message` frame the way the fan-out does.
fn reencode_message(m: &Message) -> String {
    let key = m.key_bytes();
    let value = m.value_bytes();
    let header_values: Vec<(String, Option<Vec<u8>>)> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.as_bytes().to_vec())))
        .collect();
    let headers: Vec<(&str, Option<&[u8]>)> =
        header_values.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
    MessageFrame {
        topic: &m.topic,
        partition: m.partition,
        offset: m.offset,
        timestamp: m.timestamp,
        key: key.as_deref(),
        headers: &headers,
        value: value.as_deref(),
    }
    .encode()
}

#[test]
fn server_frames_round_trip() {
    let vectors = load("server.json");
    let mut kinds = std::collections::BTreeSet::new();
    for v in vectors {
        let text = v["frame"].as_str().unwrap();
        let original: Value = serde_json::from_str(text).unwrap();
        let frame: ServerFrame = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{}: does not decode: {e}", v["name"]));
        let again = match &frame {
            ServerFrame::Message(m) => reencode_message(m),
            other => other.encode(),
        };
        let again: Value = serde_json::from_str(&again).unwrap();
        assert_eq!(again, original, "{}", v["name"]);
        kinds.insert(original["type"].as_str().unwrap().to_owned());
    }
    let all = [
        "welcome",
        "authed",
        "ack",
        "subscribed",
        "unsubscribed",
        "pong",
        "error",
        "message",
        "gap",
        "lagged",
        "committed",
    ];
    assert_eq!(kinds, all.iter().map(|s| s.to_string()).collect());
}
