//! The shared JSON test vectors in `protocol/vectors/`, checked against the
//! Rust decoder and encoder. The TypeScript client reads the same files.

use base64::Engine as _;
use ferry_protocol::server::Message;
use ferry_protocol::{
    decode_client_frame, AckMode, ClientFrame, CloseCode, ErrorCode, MessageFrame, Overflow,
    ServerFrame, StartFrom, UpgradeRefusal, CAPABILITIES,
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
                StartFrom::Snapshot => json!("snapshot"),
            };
            let mut v =
                json!({"type": "subscribe", "id": sub.id, "topic": sub.topic, "from": from});
            if sub.overflow != Overflow::Disconnect {
                v["overflow"] = json!(sub.overflow.as_str());
            }
            if let Some(filter) = &sub.filter {
                v["filter"] = filter.clone();
            }
            if let Some(ms) = sub.throttle_ms {
                v["throttle_ms"] = json!(ms);
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
        if let Some(part) = v["message_contains"].as_str() {
            assert!(err.message.contains(part), "{}: {:?} lacks {part:?}", v["name"], err.message);
        }
    }
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

/// Re-encodes a decoded `message` frame the way the fan-out does, with
/// every header: text ones from `headers`, binary ones from `headers_b64`;
/// a snapshot's record the way the table sends it.
fn reencode_message(m: &Message) -> String {
    let key = m.key_bytes();
    let value = m.value_bytes();
    let mut header_values: Vec<(String, Option<Vec<u8>>)> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.as_bytes().to_vec())))
        .collect();
    for (name, b64) in m.headers_b64.iter().flatten() {
        header_values.push((name.clone(), Some(unb64(b64))));
    }
    let headers: Vec<(&str, Option<&[u8]>)> =
        header_values.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
    let encoded = MessageFrame {
        topic: &m.topic,
        partition: m.partition,
        offset: m.offset,
        timestamp: m.timestamp,
        key: key.as_deref(),
        headers: &headers,
        value: value.as_deref(),
    }
    .encode();
    if m.snapshot {
        MessageFrame::snapshot_of(&encoded)
    } else {
        encoded
    }
}

/// Encodes the Kafka record a `message` vector states (`record`) with the
/// fan-out's encoder (and, for a snapshot's record, marks it as the table
/// does).
fn encode_record(frame: &Value, record: &Value) -> String {
    let bytes = |v: &Value| v.as_str().map(unb64);
    let key = bytes(&record["key_b64"]);
    let value = bytes(&record["value_b64"]);
    let header_values: Vec<(String, Option<Vec<u8>>)> = record["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| (pair[0].as_str().unwrap().to_owned(), bytes(&pair[1])))
        .collect();
    let headers: Vec<(&str, Option<&[u8]>)> =
        header_values.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
    let encoded = MessageFrame {
        topic: frame["topic"].as_str().unwrap(),
        partition: frame["partition"].as_i64().unwrap() as i32,
        offset: frame["offset"].as_i64().unwrap(),
        timestamp: record["timestamp"].as_i64(),
        key: key.as_deref(),
        headers: &headers,
        value: value.as_deref(),
    }
    .encode();
    if frame["snapshot"] == true {
        MessageFrame::snapshot_of(&encoded)
    } else {
        encoded
    }
}

#[test]
fn message_vectors_are_what_the_fan_out_encodes_for_their_record() {
    let mut checked = 0;
    for v in load("server.json") {
        let frame: Value = serde_json::from_str(v["frame"].as_str().unwrap()).unwrap();
        if frame["type"] != "message" {
            continue;
        }
        let record = &v["record"];
        assert!(record.is_object(), "{}: a message vector states its record", v["name"]);
        let text = encode_record(&frame, record);
        assert_eq!(text, v["frame"].as_str().unwrap(), "{}: not byte for byte", v["name"]);
        assert_eq!(MessageFrame::is_snapshot(&text), frame["snapshot"] == true, "{}", v["name"]);
        let encoded: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(encoded, frame, "{}", v["name"]);
        checked += 1;
    }
    assert!(checked >= 7, "{checked} message vectors");
}

#[test]
fn error_vectors_cover_every_error_code_and_welcome_states_the_capabilities() {
    let vectors = load("server.json");
    let frames: Vec<Value> = vectors
        .iter()
        .map(|v| serde_json::from_str(v["frame"].as_str().unwrap()).unwrap())
        .collect();
    for code in ErrorCode::ALL {
        assert!(
            frames.iter().any(|f| f["type"] == "error" && f["code"] == code.as_str()),
            "no error vector with code {}",
            code.as_str()
        );
    }
    let announced: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "welcome" && f.get("capabilities").is_some())
        .collect();
    assert!(!announced.is_empty());
    for welcome in announced {
        assert_eq!(welcome["capabilities"], json!(CAPABILITIES), "{welcome}");
        assert!(welcome["limits"]["publish_rate"].is_u64(), "the gateway always sends rate limits");
    }
    let reasons: Vec<&str> =
        frames.iter().filter(|f| f["type"] == "gap").filter_map(|f| f["reason"].as_str()).collect();
    assert!(reasons.contains(&"retention") && reasons.contains(&"beyond_end"), "{reasons:?}");
    assert!(
        frames.iter().any(|f| f["type"] == "subscribed" && f.get("partitions").is_none()),
        "a group `subscribed` has no partitions"
    );
    let messages: Vec<&Value> = frames.iter().filter(|f| f["type"] == "message").collect();
    assert!(
        messages
            .iter()
            .any(|f| f["snapshot"] == true && f["key"].is_string() && f["value"].is_object()),
        "a snapshot's record, with a key and a value"
    );
    assert!(
        messages.iter().any(|f| f.get("snapshot").is_none() && f["value"].is_null()),
        "a live tombstone"
    );
    assert!(
        frames.iter().any(|f| f["type"] == "snapshot_end"
            && f["positions"].as_object().is_some_and(|p| p.len() > 1)),
        "a `snapshot_end` with several partitions"
    );
}

fn codes() -> Value {
    let path = format!("{}/vectors/codes.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn error_code_table_is_the_error_code_enum() {
    let table: Vec<String> = codes()["error_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap().to_owned())
        .collect();
    let ours: Vec<String> = ErrorCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(table, ours);
}

#[test]
fn close_code_table_matches_the_close_codes() {
    let table = codes()["close_codes"].as_array().unwrap().clone();
    for row in &table {
        let code = CloseCode(row["code"].as_u64().unwrap() as u16);
        let reconnect = match row["class"].as_str().unwrap() {
            "reconnect" => true,
            "terminal" => false,
            other => panic!("class {other}"),
        };
        assert_eq!(code.may_reconnect(), reconnect, "{row}");
        if row["sent_by"] == "gateway" {
            assert!(CloseCode::SENT.contains(&code), "{row}");
        }
        if row["sent_by"] == "gateway" || row["sent_by"] == "client" {
            assert_eq!(code.reason(), row["reason"], "{row}");
        }
    }
    for code in CloseCode::SENT {
        assert!(
            table.iter().any(|r| r["code"] == code.0 && r["sent_by"] == "gateway"),
            "close code {} is not in codes.json",
            code.0
        );
    }
}

#[test]
fn upgrade_status_table_matches_the_refusals() {
    let table = codes()["upgrade_statuses"].as_array().unwrap().clone();
    assert_eq!(table.len(), UpgradeRefusal::ALL.len());
    for (row, refusal) in table.iter().zip(UpgradeRefusal::ALL) {
        assert_eq!(row["status"], refusal.status(), "{refusal:?}");
        assert_eq!(row["may_retry"], refusal.may_retry(), "{refusal:?}");
    }
}

/// The tables in `protocol/README.md` say what `codes.json` says.
#[test]
fn readme_tables_match_codes_json() {
    let path = format!("{}/README.md", env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(path).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| ")).collect();
    let codes = codes();
    for e in codes["error_codes"].as_array().unwrap() {
        let cell = format!("| `{}` |", e["code"].as_str().unwrap());
        assert!(rows.iter().any(|r| r.starts_with(&cell)), "README lacks error code row {cell}");
    }
    for c in codes["close_codes"].as_array().unwrap() {
        if c["sent_by"] != "gateway" && c["sent_by"] != "network" {
            continue;
        }
        let cell = format!("| {} |", c["code"]);
        let row = rows.iter().find(|r| r.starts_with(&cell));
        let row = row.unwrap_or_else(|| panic!("README lacks close code row {cell}"));
        let class = c["class"].as_str().unwrap();
        assert!(row.contains(&format!("| {class}")), "{row}: class should be {class}");
        let reason = c["reason"].as_str().unwrap();
        if !reason.is_empty() {
            assert!(row.contains(&format!("`{reason}`")), "{row}: reason should be {reason}");
        }
    }
    for s in codes["upgrade_statuses"].as_array().unwrap() {
        let cell = format!("| {} |", s["status"]);
        assert!(rows.iter().any(|r| r.starts_with(&cell)), "README lacks HTTP status row {cell}");
    }
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
        assert_eq!(again, text, "{}: not byte for byte", v["name"]);
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
        "snapshot_end",
    ];
    assert_eq!(kinds, all.iter().map(|s| s.to_string()).collect());
}
