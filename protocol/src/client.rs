//! Frames a client sends, decoded and validated in one step.
//!
//! [`decode_client_frame`] turns one WebSocket text message into a
//! [`ClientFrame`] or a [`RequestError`] that already carries the wire error
//! code and a message for a human. A publish's JSON `value` is borrowed from
//! the incoming text as raw bytes: it is produced to Kafka exactly as the
//! client wrote it, never parsed into a tree and re-encoded.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::topic::validate_topic;
use crate::MAX_ID_CHARS;

/// A decoded, validated client frame.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// Produce one record.
    Publish(Publish<'a>),
    /// Receive the records of a topic, from `from` on.
    Subscribe(Subscribe),
    /// Stop receiving records of a topic.
    Unsubscribe { id: String, topic: String },
    /// Application-level liveness check; answered with `pong`.
    Ping { id: String },
    /// Authenticate (first time) or refresh the credentials of the socket.
    Auth { id: Option<String>, token: String },
    /// A shared-group record with `ack: "client"` is processed: its offset
    /// may be committed.
    Commit { id: Option<String>, topic: String, partition: i32, offset: i64 },
}

impl ClientFrame<'_> {
    /// The request id, echoed on the reply.
    pub fn id(&self) -> &str {
        match self {
            Self::Publish(p) => &p.id,
            Self::Subscribe(s) => &s.id,
            Self::Unsubscribe { id, .. } | Self::Ping { id } => id,
            Self::Auth { id, .. } | Self::Commit { id, .. } => id.as_deref().unwrap_or_default(),
        }
    }
}

/// A subscription request.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub id: String,
    pub topic: String,
    pub from: StartFrom,
    /// What to do when the socket cannot keep up (live subscriptions).
    pub overflow: Overflow,
    /// Server-side filter, in its wire form; the gateway compiles it.
    pub filter: Option<serde_json::Value>,
    /// Join this shared group: each record goes to one member socket.
    pub group: Option<String>,
    /// When a group record counts as processed.
    pub ack: AckMode,
    /// At most one live record per key (per partition for keyless
    /// records) per this many ms, always the newest; never a group.
    pub throttle_ms: Option<u32>,
}

/// When a shared-group record's offset is committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    /// Once the frame is written to the socket.
    #[default]
    Auto,
    /// Once the client sends `commit` for it.
    Client,
}

/// The policy of a live subscription whose socket does not keep up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Close the socket with 4000 (slow consumer); the client resumes.
    #[default]
    Disconnect,
    /// Drop the oldest queued records and tell the client how many with a
    /// `lagged` notice once it catches up.
    DropOldest,
    /// Keep only the latest queued record per Kafka key (dashboards showing
    /// current values); records without a key are dropped oldest-first.
    Conflate,
}

impl Overflow {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "disconnect" => Ok(Self::Disconnect),
            "drop_oldest" => Ok(Self::DropOldest),
            "conflate" => Ok(Self::Conflate),
            other => Err(format!(
                "unknown overflow {other:?}: use \"disconnect\", \"drop_oldest\" or \"conflate\""
            )),
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disconnect => "disconnect",
            Self::DropOldest => "drop_oldest",
            Self::Conflate => "conflate",
        }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// Records produced from now on (the default).
    #[default]
    Latest,
    /// Every record still in Kafka.
    Earliest,
    /// Next offset to deliver per partition; partitions not listed start
    /// at latest.
    Offsets(BTreeMap<i32, i64>),
    /// The first record at or after this time (ms since the epoch) per
    /// partition.
    Timestamp(i64),
    /// The latest record of every key (from the node's table of the
    /// topic), then `snapshot_end` with the positions, then live records
    /// from exactly there.
    Snapshot,
}

impl StartFrom {
    fn parse(value: &serde_json::Value) -> Result<Self, String> {
        use serde_json::Value as V;
        let bad = || {
            "`from` must be \"latest\", \"earliest\", \"snapshot\", {\"offsets\":{\"0\":120}} or {\"timestamp\":ms}"
                .to_owned()
        };
        match value {
            V::String(s) if s == "latest" => Ok(Self::Latest),
            V::String(s) if s == "earliest" => Ok(Self::Earliest),
            V::String(s) if s == "snapshot" => Ok(Self::Snapshot),
            V::Object(map) if map.len() == 1 => {
                if let Some(ts) = map.get("timestamp") {
                    return ts.as_i64().filter(|t| *t >= 0).map(Self::Timestamp).ok_or_else(bad);
                }
                let offsets = map.get("offsets").and_then(V::as_object).ok_or_else(bad)?;
                let mut parsed = BTreeMap::new();
                for (partition, offset) in offsets {
                    let p = partition.parse::<i32>().ok().filter(|p| *p >= 0);
                    let o = offset.as_i64().filter(|o| *o >= 0);
                    match (p, o) {
                        (Some(p), Some(o)) => parsed.insert(p, o),
                        _ => return Err(format!("bad offset entry {partition:?}: {offset}")),
                    };
                }
                Ok(Self::Offsets(parsed))
            }
            _ => Err(bad()),
        }
    }
}

/// One record to produce.
#[derive(Debug)]
pub struct Publish<'a> {
    /// Borrowed from the frame's text when it has no escapes.
    pub id: Cow<'a, str>,
    pub topic: Cow<'a, str>,
    pub value: Payload<'a>,
    pub key: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    pub partition: Option<i32>,
}

/// The bytes of a record's value.
#[derive(Debug)]
pub enum Payload<'a> {
    /// `value`: JSON text, produced byte for byte as the client sent it.
    Json(&'a RawValue),
    /// `value_b64`: arbitrary bytes.
    Bytes(Vec<u8>),
}

impl Payload<'_> {
    /// The record value bytes as they go to Kafka.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Json(raw) => raw.get().as_bytes(),
            Self::Bytes(bytes) => bytes,
        }
    }
}

/// A request that cannot be carried out, as the `error` frame will say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The request id, when the frame had a usable one.
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    /// An error with the given code about request `id`.
    pub fn new(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { id, code, message: message.into() }
    }

    fn bad_request(id: Option<&str>, message: impl Into<String>) -> Self {
        Self::new(id.map(str::to_owned), ErrorCode::BadRequest, message)
    }
}

/// Every field any client frame may carry; which ones a given `type` allows
/// is checked after parsing, so that errors can name the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    // Borrowed from the frame's text unless escaped: a publish copies
    // neither (see `Publish`).
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present_raw")]
    value: Option<&'a RawValue>,
    value_b64: Option<String>,
    key: Option<String>,
    key_b64: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    traceparent: Option<String>,
    partition: Option<i32>,
    token: Option<String>,
    from: Option<serde_json::Value>,
    overflow: Option<String>,
    filter: Option<serde_json::Value>,
    group: Option<String>,
    ack: Option<String>,
    offset: Option<i64>,
    throttle_ms: Option<u64>,
}

/// `"value": null` is the JSON value `null`, not a missing value.
fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Only reads `id`, to echo it on the error for a frame that failed to decode.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<serde_json::Value>,
}

/// Decodes and validates one text frame.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame<'_>, RequestError> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| {
        let id = serde_json::from_str::<IdOnly>(text)
            .ok()
            .and_then(|f| f.id)
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|id| valid_id(id));
        RequestError::new(id, ErrorCode::BadRequest, decode_error_message(&e))
    })?;
    raw.validate()
}

/// An unknown field is refused, never ignored: a field an older gateway
/// skipped silently (a `filter`, a `group`) would change what the client
/// gets without telling it. The message names the field; a client learns
/// which optional fields a gateway knows from `welcome.capabilities`.
fn decode_error_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if let Some(rest) = text.strip_prefix("unknown field `") {
        if let Some((field, _)) = rest.split_once('`') {
            return format!(
                "unknown field `{field}`: protocol v1 has no such field (see welcome.capabilities)"
            );
        }
    }
    format!("invalid frame: {text}")
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_ID_CHARS
}

impl<'a> RawFrame<'a> {
    fn validate(mut self) -> Result<ClientFrame<'a>, RequestError> {
        if self.kind == "auth" {
            return self.into_auth();
        }
        if self.kind == "commit" {
            return self.into_commit();
        }
        let id = match self.id.as_deref() {
            None => return Err(RequestError::bad_request(None, "missing field `id`")),
            Some(id) if !valid_id(id) => {
                return Err(RequestError::bad_request(
                    None,
                    format!("`id` must be 1 to {MAX_ID_CHARS} characters"),
                ))
            }
            Some(id) => id,
        };
        let kind = self.kind.as_ref();
        let allowed: &[&str] = match kind {
            "publish" => &[
                "topic",
                "value",
                "value_b64",
                "key",
                "key_b64",
                "headers",
                "traceparent",
                "partition",
            ],
            "subscribe" => &["topic", "from", "overflow", "filter", "group", "ack", "throttle_ms"],
            "commit" => &["topic", "partition", "offset"],
            "unsubscribe" => &["topic"],
            "ping" => &[],
            other => {
                return Err(RequestError::bad_request(
                    Some(id),
                    format!("unknown frame type {other:?}"),
                ))
            }
        };
        if let Some(field) = self.present_fields().find(|f| !allowed.contains(f)) {
            return Err(RequestError::bad_request(
                Some(id),
                format!("field `{field}` is not allowed in a {kind} frame"),
            ));
        }
        if kind == "ping" {
            return Ok(ClientFrame::Ping { id: id.to_owned() });
        }

        let Some(topic) = self.topic.as_deref() else {
            return Err(RequestError::bad_request(Some(id), "missing field `topic`"));
        };
        validate_topic(topic)
            .map_err(|why| RequestError::new(Some(id.to_owned()), ErrorCode::InvalidTopic, why))?;
        if kind == "publish" {
            let (id, topic) = (self.id.take(), self.topic.take());
            return self.into_publish(id.unwrap_or_default(), topic.unwrap_or_default());
        }
        let (id, topic) = (id.to_owned(), topic.to_owned());
        match kind {
            "subscribe" => {
                let from = match &self.from {
                    None => StartFrom::Latest,
                    Some(value) => StartFrom::parse(value)
                        .map_err(|why| RequestError::bad_request(Some(&id), why))?,
                };
                let overflow = match self.overflow.as_deref() {
                    None => Overflow::Disconnect,
                    Some(text) => Overflow::parse(text)
                        .map_err(|why| RequestError::bad_request(Some(&id), why))?,
                };
                let filter = self.filter.clone();
                let bad = |why: String| RequestError::bad_request(Some(&id), why);
                let ack = match (self.ack.as_deref(), &self.group) {
                    (None, _) => AckMode::Auto,
                    (Some(_), None) => return Err(bad("`ack` needs `group`".into())),
                    (Some("auto"), Some(_)) => AckMode::Auto,
                    (Some("client"), Some(_)) => AckMode::Client,
                    (Some(other), Some(_)) => {
                        return Err(bad(format!(
                            "unknown ack {other:?}: use \"auto\" or \"client\""
                        )))
                    }
                };
                if let Some(group) = &self.group {
                    let valid = !group.is_empty()
                        && group.len() <= 200
                        && group.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                    if !valid {
                        return Err(bad("`group` must be 1 to 200 of [A-Za-z0-9._-]".into()));
                    }
                    if self.overflow.is_some() {
                        return Err(bad("`overflow` does not apply to a group subscription: a member's records wait for it to read them and are never dropped; remove `overflow`".into()));
                    }
                    if !matches!(from, StartFrom::Latest | StartFrom::Earliest) {
                        return Err(bad("a group starts from its committed offsets; `from` may only be \"latest\" or \"earliest\" (for a new group)".into()));
                    }
                }
                let throttle_ms = match self.throttle_ms {
                    None => None,
                    Some(_) if self.group.is_some() => {
                        return Err(bad("`throttle_ms` does not apply to a group subscription: each record goes to one member, which must see it; remove `throttle_ms`".into()));
                    }
                    Some(ms @ 1..=MAX_THROTTLE_MS) => Some(ms as u32),
                    Some(_) => {
                        return Err(bad(format!("`throttle_ms` must be 1 to {MAX_THROTTLE_MS}")))
                    }
                };
                let group = self.group.clone();
                Ok(ClientFrame::Subscribe(Subscribe {
                    id,
                    topic,
                    from,
                    overflow,
                    filter,
                    group,
                    ack,
                    throttle_ms,
                }))
            }
            _ => Ok(ClientFrame::Unsubscribe { id, topic }),
        }
    }

    fn present_fields(&self) -> impl Iterator<Item = &'static str> {
        [
            ("topic", self.topic.is_some()),
            ("value", self.value.is_some()),
            ("value_b64", self.value_b64.is_some()),
            ("key", self.key.is_some()),
            ("key_b64", self.key_b64.is_some()),
            ("headers", self.headers.is_some()),
            ("traceparent", self.traceparent.is_some()),
            ("partition", self.partition.is_some()),
            ("token", self.token.is_some()),
            ("from", self.from.is_some()),
            ("overflow", self.overflow.is_some()),
            ("filter", self.filter.is_some()),
            ("group", self.group.is_some()),
            ("ack", self.ack.is_some()),
            ("offset", self.offset.is_some()),
            ("throttle_ms", self.throttle_ms.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
    }

    /// `auth` is the one frame whose `id` is optional: a browser sends it
    /// first thing, before it has anything to correlate.
    fn into_auth(self) -> Result<ClientFrame<'a>, RequestError> {
        let extra = self.present_fields().find(|f| *f != "token");
        let id = match self.id.map(Cow::into_owned) {
            Some(id) if !valid_id(&id) => {
                return Err(RequestError::bad_request(
                    None,
                    format!("`id` must be 1 to {MAX_ID_CHARS} characters"),
                ))
            }
            id => id,
        };
        if let Some(field) = extra {
            return Err(RequestError::bad_request(
                id.as_deref(),
                format!("field `{field}` is not allowed in an auth frame"),
            ));
        }
        match self.token {
            Some(token) if !token.is_empty() => Ok(ClientFrame::Auth { id, token }),
            _ => Err(RequestError::bad_request(id.as_deref(), "missing field `token`")),
        }
    }

    /// `commit` is sent often; like `auth` its `id` is optional (no reply
    /// without one, unless it fails).
    fn into_commit(self) -> Result<ClientFrame<'a>, RequestError> {
        let id = self.id.as_deref().filter(|id| valid_id(id)).map(str::to_owned);
        let bad = |why: &str| Err(RequestError::bad_request(id.as_deref(), why));
        if self.id.as_deref().is_some_and(|i| !valid_id(i)) {
            return bad("`id` must be 1 to 64 characters");
        }
        if let Some(field) =
            self.present_fields().find(|f| !["topic", "partition", "offset"].contains(f))
        {
            return Err(RequestError::bad_request(
                id.as_deref(),
                format!("field `{field}` is not allowed in a commit frame"),
            ));
        }
        let (Some(topic), Some(partition), Some(offset)) =
            (self.topic.map(Cow::into_owned), self.partition, self.offset)
        else {
            return bad("a commit needs `topic`, `partition` and `offset`");
        };
        if partition < 0 || offset < 0 {
            return bad("`partition` and `offset` must not be negative");
        }
        validate_topic(&topic)
            .map_err(|why| RequestError::new(id.clone(), ErrorCode::InvalidTopic, why))?;
        Ok(ClientFrame::Commit { id, topic, partition, offset })
    }

    fn into_publish(
        self,
        id: Cow<'a, str>,
        topic: Cow<'a, str>,
    ) -> Result<ClientFrame<'a>, RequestError> {
        let bad = |msg: &str| Err(RequestError::bad_request(Some(&id), msg));
        let value = match (self.value, self.value_b64) {
            (Some(raw), None) => Payload::Json(raw),
            (None, Some(b64)) => match decode_b64(&b64) {
                Some(bytes) => Payload::Bytes(bytes),
                None => return bad("`value_b64` is not valid base64"),
            },
            (None, None) => return bad("a publish needs `value` or `value_b64`"),
            (Some(_), Some(_)) => return bad("give either `value` or `value_b64`, not both"),
        };
        let key = match (self.key, self.key_b64) {
            (Some(key), None) => Some(key.into_bytes()),
            (None, Some(b64)) => match decode_b64(&b64) {
                Some(bytes) => Some(bytes),
                None => return bad("`key_b64` is not valid base64"),
            },
            (None, None) => None,
            (Some(_), Some(_)) => return bad("give either `key` or `key_b64`, not both"),
        };
        if let Some(name) = self
            .headers
            .as_ref()
            .and_then(|h| h.keys().find(|k| k.to_ascii_lowercase().starts_with("ferry-")))
        {
            return Err(RequestError::bad_request(
                Some(&id),
                format!("header {name:?} is reserved: `ferry-` headers are set by the gateway"),
            ));
        }
        if self.partition.is_some_and(|p| p < 0) {
            return bad("`partition` must not be negative");
        }
        let mut headers = self.headers.unwrap_or_default();
        if let Some(traceparent) = self.traceparent {
            if let Err(why) = check_traceparent(&traceparent) {
                return Err(RequestError::bad_request(Some(&id), format!("`traceparent` {why}")));
            }
            if headers.keys().any(|k| k.eq_ignore_ascii_case(TRACEPARENT)) {
                return bad("give `traceparent` once: as the field or in `headers`, not both");
            }
            headers.insert(TRACEPARENT.to_owned(), traceparent);
        }
        Ok(ClientFrame::Publish(Publish {
            id,
            topic,
            value,
            key,
            headers,
            partition: self.partition,
        }))
    }
}

/// The longest `subscribe.throttle_ms` (a minute).
pub const MAX_THROTTLE_MS: u64 = 60_000;

/// The W3C trace context header a publish's `traceparent` becomes.
pub const TRACEPARENT: &str = "traceparent";

/// Checks a W3C `traceparent` value (version `00`):
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase, ids
/// not all zeros. The error says what is wrong.
pub fn check_traceparent(value: &str) -> Result<(), String> {
    let shape = "must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>";
    let parts: Vec<&str> = value.split('-').collect();
    let [version, trace, parent, flags] = parts[..] else {
        return Err(shape.into());
    };
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version != "00" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return Err(shape.into());
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return Err("has an all-zero trace or parent id".into());
    }
    Ok(())
}

fn decode_b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_value_is_borrowed_verbatim() {
        let text = r#"{"type":"publish","id":"p1","topic":"t","value": {"a" : [1, 2.50]} }"#;
        let ClientFrame::Publish(p) = decode_client_frame(text).unwrap() else { panic!() };
        assert_eq!(p.value.as_bytes(), br#"{"a" : [1, 2.50]}"#);
    }

    #[test]
    fn json_null_is_a_value() {
        let text = r#"{"type":"publish","id":"p1","topic":"t","value":null}"#;
        let ClientFrame::Publish(p) = decode_client_frame(text).unwrap() else { panic!() };
        assert_eq!(p.value.as_bytes(), b"null");
    }

    #[test]
    fn traceparent_becomes_the_header_and_is_checked() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let text =
            format!(r#"{{"type":"publish","id":"p1","topic":"t","value":1,"traceparent":"{tp}"}}"#);
        let ClientFrame::Publish(p) = decode_client_frame(&text).unwrap() else { panic!() };
        assert_eq!(p.headers.get(TRACEPARENT).map(String::as_str), Some(tp));
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert!(check_traceparent(bad).is_err(), "{bad:?} accepted");
        }
        let both = format!(
            r#"{{"type":"publish","id":"p2","topic":"t","value":1,"traceparent":"{tp}","headers":{{"Traceparent":"x"}}}}"#
        );
        let err = decode_client_frame(&both).unwrap_err();
        assert!(err.message.contains("once"), "{}", err.message);
    }

    #[test]
    fn error_echoes_a_usable_id() {
        let err = decode_client_frame(r#"{"type":"nope","id":"x1"}"#).unwrap_err();
        assert_eq!((err.id.as_deref(), err.code), (Some("x1"), ErrorCode::BadRequest));
        let err = decode_client_frame(r#"{"type":"ping","id":"x2","bogus":1}"#).unwrap_err();
        assert_eq!((err.id.as_deref(), err.code), (Some("x2"), ErrorCode::BadRequest));
        assert!(err.message.starts_with("unknown field `bogus`"), "{}", err.message);
    }
}
