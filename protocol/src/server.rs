//! Frames the gateway sends.
//!
//! [`ServerFrame`] covers every frame and round-trips through serde, so tests
//! and tools can decode what the gateway says. The fan-out hot path does not
//! build a `ServerFrame`: it encodes a borrowed [`MessageFrame`] once per Kafka
//! record and shares the resulting bytes with every subscribed socket.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;

/// Limits of this connection, announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_inflight_publishes: usize,
    pub max_subscriptions: usize,
    /// Sustained publishes per second allowed on this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<u32>,
    /// Publishes allowed in a burst above the sustained rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_burst: Option<u32>,
    /// Connections one subject may hold on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_subject: Option<usize>,
}

/// Every frame the gateway sends, in owned form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame on every connection, once it is authenticated.
    Welcome {
        protocol: u32,
        session: String,
        node: String,
        limits: Limits,
        /// The authenticated subject (absent with `auth.mode = "none"`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// When the token expires, in ms since the epoch; refresh before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
        /// What the gateway can do beyond the first v1 release
        /// ([`crate::CAPABILITIES`]). Absent (empty) from gateways older
        /// than the list, which have every v1 capability.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        capabilities: Vec<String>,
    },
    /// An in-band token refresh was accepted.
    Authed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
    /// Kafka stored the record of publish `id` at this partition and offset.
    Ack { id: String, topic: String, partition: i32, offset: i64 },
    /// The subscription is live: every record from the reported start
    /// offsets on arrives (for `latest`: every record produced from now on).
    Subscribed {
        id: String,
        topic: String,
        /// Partition (as a string, JSON object keys being strings) → the
        /// offset delivery starts at.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        partitions: BTreeMap<String, i64>,
    },
    /// A `from: "snapshot"` subscription's snapshot is complete: every
    /// live record from `positions` (partition → next offset) follows,
    /// none before. These are also the positions to resume from.
    SnapshotEnd { topic: String, positions: BTreeMap<String, i64> },
    /// An `overflow: "drop_oldest"` (or `"conflate"`) subscription dropped
    /// `dropped` records of `topic` while the socket was behind.
    Lagged { topic: String, dropped: u64 },
    /// A requested start offset is no longer (or not yet) in Kafka; the
    /// subscription resumes at `resumed_at` instead. Never a silent skip.
    Gap {
        topic: String,
        partition: i32,
        requested: i64,
        resumed_at: i64,
        /// `retention` (the records were deleted) or `beyond_end`.
        reason: String,
    },
    /// The subscription is gone; no more records of `topic` arrive. Without
    /// `id` it was ended by the gateway, and `reason` says why (e.g.
    /// `forbidden` after a token refresh).
    Unsubscribed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A `commit` (with an `id`) was recorded.
    Committed { id: String, topic: String, partition: i32, offset: i64 },
    /// Reply to `ping`.
    Pong { id: String },
    /// A request failed; the socket stays open.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        code: ErrorCode,
        message: String,
        /// For `unavailable`: a suggested delay before retrying. The gateway
        /// sends it on `unavailable` only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// One Kafka record of a subscribed topic.
    Message(Message),
}

/// A decoded `message` frame (for clients and tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_b64: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    /// `true` on the records of a snapshot (`from: "snapshot"`), which come
    /// before `snapshot_end`; `false` (absent on the wire) on live records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
}

impl Message {
    /// The record's value bytes: re-encoded JSON for `value`, decoded
    /// base64 for `value_b64`, `None` for a tombstone.
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        if let Some(b64) = &self.value_b64 {
            return base64::engine::general_purpose::STANDARD.decode(b64).ok();
        }
        self.value.as_ref().map(|v| serde_json::to_vec(v).expect("a Value always encodes"))
    }

    /// The record key bytes, from `key` or `key_b64`.
    pub fn key_bytes(&self) -> Option<Vec<u8>> {
        if let Some(b64) = &self.key_b64 {
            return base64::engine::general_purpose::STANDARD.decode(b64).ok();
        }
        self.key.as_ref().map(|k| k.as_bytes().to_vec())
    }
}

/// One Kafka record as the fan-out sees it, borrowed from the consumer's
/// buffer. Encode it with [`MessageFrame::encode`].
#[derive(Debug)]
pub struct MessageFrame<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    pub value: Option<&'a [u8]>,
}

#[derive(Serialize)]
struct EncodedMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_b64: Option<String>,
    headers: BTreeMap<&'a str, Option<&'a str>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers_b64: BTreeMap<&'a str, String>,
    /// A tombstone (no value bytes) is `"value": null` with no `value_b64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
}

impl MessageFrame<'_> {
    /// The topic, partition and offset of a frame [`MessageFrame::encode`]
    /// wrote, read from its front (where `encode` puts them) without
    /// parsing the rest: a server that needs a record's position per
    /// reader (an SSE stream's resume token) reads it in a few bytes.
    /// `None` for text that does not start that way.
    pub fn position(frame: &str) -> Option<(&str, i32, i64)> {
        let rest = frame.strip_prefix(r#"{"type":"message","topic":""#)?;
        let (topic, rest) = rest.split_once('"')?;
        if topic.contains('\\') {
            return None; // escaped: not a name `encode` wrote as is
        }
        let rest = rest.strip_prefix(r#","partition":"#)?;
        let (partition, rest) = rest.split_once(',')?;
        let rest = rest.strip_prefix(r#""offset":"#)?;
        let end = rest.find([',', '}'])?;
        Some((topic, partition.parse().ok()?, rest[..end].parse().ok()?))
    }

    /// A frame [`MessageFrame::encode`] wrote, as a snapshot's record: the
    /// same text with `"snapshot":true` added at its end (the table encodes
    /// a record once, when it comes, and marks it when a snapshot sends it).
    pub fn snapshot_of(frame: &str) -> String {
        let body = frame.strip_suffix('}').unwrap_or(frame);
        format!("{body},\"snapshot\":true}}")
    }

    /// Whether a frame is a snapshot's record, as [`MessageFrame::snapshot_of`]
    /// writes it (read from its end, without parsing).
    pub fn is_snapshot(frame: &str) -> bool {
        frame.ends_with(",\"snapshot\":true}")
    }

    /// Encodes the frame as JSON text. A value that is valid JSON is embedded
    /// as is (not re-encoded); anything else goes out as `value_b64`. A key or
    /// header value that is not UTF-8 goes out base64-encoded likewise.
    pub fn encode(&self) -> String {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let (key, key_b64) = match self.key {
            None => (None, None),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(_) => (None, Some(b64(bytes))),
            },
        };
        let mut headers = BTreeMap::new();
        let mut headers_b64 = BTreeMap::new();
        for &(name, value) in self.headers {
            match value.map(std::str::from_utf8) {
                None => {
                    headers.insert(name, None);
                }
                Some(Ok(text)) => {
                    headers.insert(name, Some(text));
                }
                Some(Err(_)) => {
                    headers_b64.insert(name, b64(value.unwrap_or_default()));
                }
            }
        }
        let null = RawValue::NULL;
        let (value, value_b64) = match self.value {
            None => (Some(null), None),
            Some(bytes) => match std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
            {
                Some(raw) => (Some(raw), None),
                None => (None, Some(b64(bytes))),
            },
        };
        let frame = EncodedMessage {
            kind: "message",
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            key,
            key_b64,
            headers,
            headers_b64,
            value,
            value_b64,
        };
        serde_json::to_string(&frame).expect("a message frame always encodes")
    }
}

/// An `ack` frame written in two steps without serde's frame machinery:
/// the part known when the publish goes to Kafka, then the position once
/// Kafka stored the record. One allocation; the same JSON as
/// [`ServerFrame::Ack`] (the publish path's hottest reply).
#[derive(Debug, Default)]
pub struct AckFrame(Vec<u8>);

impl AckFrame {
    pub fn new(id: &str, topic: &str) -> Self {
        // Room for the two numbers and the rest of the frame.
        let mut text = Vec::with_capacity(id.len() + topic.len() + 96);
        text.extend_from_slice(br#"{"type":"ack","id":"#);
        serde_json::to_writer(&mut text, id).expect("a string always encodes");
        text.extend_from_slice(br#","topic":"#);
        serde_json::to_writer(&mut text, topic).expect("a string always encodes");
        text.extend_from_slice(br#","partition":"#);
        Self(text)
    }

    /// The whole frame, with where Kafka stored the record.
    pub fn finish(mut self, partition: i32, offset: i64) -> String {
        use std::io::Write as _;
        write!(self.0, r#"{partition},"offset":{offset}}}"#).expect("writing to a Vec");
        String::from_utf8(self.0).expect("JSON text is UTF-8")
    }
}

impl ServerFrame {
    /// Encodes the frame as JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a server frame always encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame<'a>(value: Option<&'a [u8]>, key: Option<&'a [u8]>) -> MessageFrame<'a> {
        MessageFrame {
            topic: "t",
            partition: 1,
            offset: 7,
            timestamp: Some(1000),
            key,
            headers: &[],
            value,
        }
    }

    #[test]
    fn a_frames_position_is_read_from_its_front() {
        let headers = [("h", Some(&b"v"[..]))];
        let encoded = MessageFrame {
            topic: "orders.eu-1_x",
            partition: 12,
            offset: 9_007_199_254_740_993,
            timestamp: Some(1),
            key: Some(b"k"),
            headers: &headers,
            value: Some(br#"{"partition":3,"offset":4}"#),
        }
        .encode();
        assert_eq!(
            MessageFrame::position(&encoded),
            Some(("orders.eu-1_x", 12, 9_007_199_254_740_993))
        );
        let without_timestamp = MessageFrame { timestamp: None, ..frame(None, None) }.encode();
        let full: serde_json::Value = serde_json::from_str(&without_timestamp).unwrap();
        let (topic, partition, offset) = MessageFrame::position(&without_timestamp).unwrap();
        assert_eq!(full["topic"], topic);
        assert_eq!(full["partition"], partition);
        assert_eq!(full["offset"], offset);
        for other in [r#"{"type":"ack","id":"a","topic":"t","partition":0,"offset":1}"#, "", "{"] {
            assert_eq!(MessageFrame::position(other), None, "{other}");
        }
    }

    #[test]
    fn a_snapshots_record_is_the_frame_marked_at_its_end() {
        let live = frame(Some(br#"{"temp":19.5}"#), Some(b"dev-7")).encode();
        let marked = MessageFrame::snapshot_of(&live);
        assert!(marked.ends_with(r#""value":{"temp":19.5},"snapshot":true}"#), "{marked}");
        assert!(MessageFrame::is_snapshot(&marked));
        assert!(!MessageFrame::is_snapshot(&live));
        assert_eq!(MessageFrame::position(&marked), MessageFrame::position(&live));
        let ServerFrame::Message(m) = serde_json::from_str(&marked).unwrap() else { panic!() };
        assert!(m.snapshot);
        let ServerFrame::Message(m) = serde_json::from_str(&live).unwrap() else { panic!() };
        assert!(!m.snapshot);
        assert!(!ServerFrame::Message(m).encode().contains("snapshot"));
    }

    #[test]
    fn ack_frame_is_the_ack_server_frame() {
        for id in ["p1", "with \"quotes\" and \\", "unicode ✓ \u{1}"] {
            let (topic, partition, offset) = ("orders.eu-1", 3, 1_234_567_890_123);
            let frame = ServerFrame::Ack { id: id.into(), topic: topic.into(), partition, offset };
            let written = AckFrame::new(id, topic).finish(partition, offset);
            assert_eq!(written, frame.encode(), "{id:?}");
        }
    }

    #[test]
    fn json_value_is_embedded_verbatim() {
        let text = frame(Some(br#"{"b": 1.50, "a":[ ]}"#), Some(b"k")).encode();
        assert!(text.contains(r#""value":{"b": 1.50, "a":[ ]}"#), "{text}");
        let ServerFrame::Message(m) = serde_json::from_str(&text).unwrap() else { panic!() };
        assert_eq!(m.key.as_deref(), Some("k"));
    }

    #[test]
    fn binary_value_and_key_go_base64() {
        let text = frame(Some(&[0xff, 0x00, 0x01]), Some(&[0xc3, 0x28])).encode();
        let ServerFrame::Message(m) = serde_json::from_str(&text).unwrap() else { panic!() };
        assert_eq!(m.value_bytes().unwrap(), vec![0xff, 0x00, 0x01]);
        assert_eq!(m.key_bytes().unwrap(), vec![0xc3, 0x28]);
        assert_eq!(m.key, None);
    }

    #[test]
    fn text_that_is_not_json_goes_base64() {
        let text = frame(Some(b"hello world"), None).encode();
        let ServerFrame::Message(m) = serde_json::from_str(&text).unwrap() else { panic!() };
        assert_eq!(m.value, None);
        assert_eq!(m.value_bytes().unwrap(), b"hello world");
    }
}
