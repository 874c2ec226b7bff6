//! `POST /v1/publish`: records over plain HTTP, one or a batch (mobile
//! telemetry sent in the background), each answered once Kafka stored it.
//!
//! The request, in order of checks:
//!
//! 1. the caller (`Authorization: Bearer`, as for a WebSocket; 401), its
//!    browser origin (403);
//! 2. the body: at most `http_publish.max_body_bytes` after gzip
//!    decompression (`Content-Encoding: gzip`; decompression stops at the
//!    bound, so a gzip bomb gets 413 having cost at most that), JSON
//!    `{"records":[...]}` with 1 to `http_publish.max_records` records (400,
//!    413);
//! 3. then the batch goes to the node's publish core
//!    ([`Node::publish_batch`]): the ACL and the subject's rate
//!    (`http_publish.rate`, bursts of `http_publish.burst`), all or nothing
//!    (403 naming the topic; 429 with `Retry-After`), then each record on
//!    its own.
//!
//! Each record is decoded like a socket `publish` frame (the same decoder:
//! `value` or `value_b64`, `key` or `key_b64`, `headers`, `partition`;
//! `id`, 1 to 64 characters, made up as a UUID when missing; `traceparent`).
//! A `traceparent` request header is the trace context of the records
//! without their own. The answer
//! is 200 with one result per record, in request order:
//! `{"id","topic","partition","offset"}` or
//! `{"id","error":{"code","message"}}` with the protocol's error codes.
//! This file only translates: the body to records, the core's outcomes to
//! statuses and JSON.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_protocol::{
    check_traceparent, decode_client_frame, ClientFrame, ErrorCode, Publish, TRACEPARENT,
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::caller::{self, Refusal, TokenSources};
use crate::error::GatewayError;
use crate::metrics;
use crate::node::publish::{BatchRefused, RecordRefused};
use crate::node::Node;

/// `POST /v1/publish`.
pub(super) async fn publish(
    State(state): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (status, records, mut response) = match handle(&state, &headers, body).await {
        Ok((records, results)) => {
            (StatusCode::OK, records, axum::Json(json!({ "results": results })).into_response())
        }
        Err((records, refusal)) => (refusal.status, records, refusal.into_response()),
    };
    metrics::http_publish(status.as_u16(), records);
    caller::allow_origin(&state, &headers, &mut response);
    response
}

/// The request's refusal, with how many records it carried (for metrics).
type Refused = (usize, Refusal);

async fn handle(
    state: &Arc<Node>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(usize, Vec<Value>), Refused> {
    let config = &state.config.http_publish;
    // Shutting down, draining, or not yet knowing every revocation.
    if let Err((_, why)) = state.accepting() {
        let e = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
        return Err((0, e.retry_after(1)));
    }
    caller::check_origin(state, headers).map_err(|e| (0, e))?;
    let principal = caller::principal(state, headers, &HashMap::new(), TokenSources::default())
        .await
        .map_err(|e| (0, e))?;
    let text = read_body(headers, body, config.max_body_bytes).await.map_err(|e| (0, e))?;
    let records = records(&text).map_err(|why| (0, Refusal::bad_request(why)))?;
    let count = records.len();
    if count == 0 {
        return Err((0, Refusal::bad_request("`records` is empty")));
    }
    if count > config.max_records {
        let m = format!("{count} records; at most {} per request", config.max_records);
        return Err((count, Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m)));
    }
    let traceparent = traceparent(headers).map_err(|e| (count, e))?;
    let frames: Vec<Frame> = records.iter().map(|raw| Frame::of(raw)).collect();
    let mut decoded: Vec<_> = frames.iter().map(Frame::decode).collect();
    if let Some(traceparent) = traceparent {
        // The request's trace context, for the records without their own.
        for publish in decoded.iter_mut().flatten() {
            if !publish.headers.keys().any(|k| k.eq_ignore_ascii_case(TRACEPARENT)) {
                publish.headers.insert(TRACEPARENT.to_owned(), traceparent.clone());
            }
        }
    }
    let outcomes = state.publish_batch(&principal, decoded).await.map_err(|refused| {
        let refusal = match refused {
            BatchRefused::Forbidden(m) => Refusal::new(StatusCode::FORBIDDEN, "forbidden", m),
            BatchRefused::RateLimited { message, retry_after } => {
                let status = StatusCode::TOO_MANY_REQUESTS;
                let seconds = retry_after.as_secs_f64().ceil() as u64;
                Refusal::new(status, "rate_limited", message).retry_after(seconds)
            }
        };
        (count, refusal)
    })?;
    let results = outcomes.into_iter().map(|outcome| match outcome {
        Ok(stored) => json!({
            "id": stored.id,
            "topic": stored.topic,
            "partition": stored.stored.partition,
            "offset": stored.stored.offset,
        }),
        Err(refused) => {
            let message = refused.error.client_message(Some(&refused.id));
            json!({"id": refused.id, "error": {"code": refused.code.as_str(), "message": message}})
        }
    });
    Ok((count, results.collect()))
}

/// The request's W3C `traceparent` header, checked.
fn traceparent(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get(TRACEPARENT) else { return Ok(None) };
    let value = value.to_str().map_err(|_| Refusal::bad_request("`traceparent` is not text"))?;
    check_traceparent(value).map_err(|why| Refusal::bad_request(format!("`traceparent` {why}")))?;
    Ok(Some(value.to_owned()))
}

/// The body's records: the body must be `{"records":[...]}` and nothing
/// else. The error says what is wrong in the caller's terms.
fn records(body: &[u8]) -> Result<Vec<&RawValue>, String> {
    const SHAPE: &str = r#"the body must be {"records":[...]}"#;
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => return Err(format!("the body is empty; {SHAPE}")),
        Some(b'[') => {
            return Err(format!("{SHAPE}, not an array: put the records in `records`"));
        }
        Some(b'{') => {}
        Some(_) => return Err(format!("{SHAPE}, a JSON object")),
    }
    let fields: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    if let Some(other) = fields.keys().find(|k| *k != "records") {
        return Err(format!("unknown field `{other}`; {SHAPE}"));
    }
    let Some(records) = fields.get("records") else {
        return Err(format!("missing `records`; {SHAPE}"));
    };
    if !records.get().starts_with('[') {
        return Err("`records` must be an array of record objects".into());
    }
    serde_json::from_str(records.get()).map_err(|e| format!("`records`: {e}"))
}

/// Only reads a record's `id`, to know whether to make one up, and whether
/// it has a `type` (records have none).
#[derive(Deserialize)]
struct IdPeek {
    id: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<serde::de::IgnoredAny>,
}

/// One record as the text of a `publish` frame, decoded by the protocol's
/// own decoder so that both paths accept exactly the same records.
struct Frame {
    /// The record's id, or the one made up for it.
    id: String,
    text: Result<String, String>,
}

impl Frame {
    fn of(raw: &RawValue) -> Self {
        let record = raw.get().trim();
        let Some(rest) = record.strip_prefix('{') else {
            let id = uuid::Uuid::new_v4().to_string();
            return Self { id, text: Err("a record must be a JSON object".into()) };
        };
        let peeked = serde_json::from_str::<IdPeek>(record).ok();
        let typed = peeked.as_ref().is_some_and(|p| p.kind.is_some());
        let (id, made_up) = match peeked.and_then(|p| p.id) {
            Some(Value::String(id)) => (id, false),
            Some(_) => (String::new(), false),
            None => (uuid::Uuid::new_v4().to_string(), true),
        };
        if typed {
            let why = "a record has no `type` field (every record is a publish): remove it";
            return Self { id, text: Err(why.into()) };
        }
        let mut text = String::with_capacity(record.len() + 64);
        text.push_str(r#"{"type":"publish""#);
        if made_up {
            text.push_str(&format!(r#","id":"{id}""#));
        }
        if !rest.trim_start().starts_with('}') {
            text.push(',');
        }
        text.push_str(rest);
        Self { id, text: Ok(text) }
    }

    fn decode(&self) -> Result<Publish<'_>, RecordRefused> {
        let refused = |id: Option<String>, why: String, code| RecordRefused {
            id: id.unwrap_or_else(|| self.id.clone()),
            error: GatewayError::BadRequest(why),
            code,
        };
        let text = match &self.text {
            Ok(text) => text,
            Err(why) => return Err(refused(None, why.clone(), ErrorCode::BadRequest)),
        };
        match decode_client_frame(text) {
            Ok(ClientFrame::Publish(publish)) => Ok(publish),
            Ok(_) => Err(refused(None, "not a publish".into(), ErrorCode::BadRequest)),
            Err(e) => Err(refused(e.id, e.message.replace(" frame", " record"), e.code)),
        }
    }
}

/// The body, gunzipped when `Content-Encoding: gzip`, at most `max` bytes
/// either way.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Vec<u8>, Refusal> {
    let too_large = || {
        let m = format!("the body is larger than {max} bytes");
        Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m)
    };
    let gzip = match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str()) {
        None => false,
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case("gzip") => true,
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case("identity") => false,
        Some(_) => {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_request",
                "Content-Encoding must be gzip or identity",
            ))
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut raw = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Refusal::bad_request(format!("reading the body: {e}")))?;
        if raw.len() + chunk.len() > max {
            return Err(too_large());
        }
        raw.extend_from_slice(&chunk);
    }
    if !gzip {
        return Ok(raw);
    }
    let mut text = Vec::with_capacity(raw.len().saturating_mul(4).min(max));
    let decoder = flate2::read::MultiGzDecoder::new(raw.as_slice());
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| Refusal::bad_request(format!("the body is not valid gzip: {e}")))?;
    if text.len() > max {
        return Err(too_large());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn frame(record: &str) -> Frame {
        let raw: Box<RawValue> = serde_json::from_str(record).unwrap();
        Frame::of(&raw)
    }

    #[test]
    fn records_decode_like_publish_frames() {
        let f = frame(r#"{"topic":"t","id":"a","value":{"x": 1},"key":"k"}"#);
        let p = f.decode().unwrap();
        assert_eq!((&*p.id, &*p.topic), ("a", "t"));
        assert_eq!(p.value.as_bytes(), br#"{"x": 1}"#, "value bytes kept as sent");
        assert_eq!(p.key.as_deref(), Some(&b"k"[..]));

        let f = frame(r#"{"topic":"t","value_b64":"AAE="}"#);
        let p = f.decode().unwrap();
        assert_eq!(p.id, f.id, "a made-up id is used");
        assert_eq!(p.value.as_bytes(), &[0, 1]);

        let refused = frame(r#"{"topic":"t","value":1,"from":"latest"}"#).decode().unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadRequest);
        assert!(refused.error.to_string().contains("`from`"), "{:?}", refused.error);
        let refused = frame(r#"{"topic":"a b","value":1}"#).decode().unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidTopic);
        assert!(frame("{}").decode().is_err());
        assert!(frame("[1]").decode().is_err());
    }

    #[test]
    fn only_the_documented_body_is_accepted_and_errors_say_what_is_wrong() {
        let ok = records(br#" {"records":[{"topic":"t","value":1},{"topic":"u","value":2}]}"#);
        assert_eq!(ok.unwrap().len(), 2);
        let refused = |body: &str| records(body.as_bytes()).unwrap_err();
        // A bare array (of records, or of arrays) is not the envelope.
        assert!(refused(r#"[[{"topic":"t","value":1}]]"#).contains("not an array"));
        assert!(refused(r#"[{"topic":"t","value":1}]"#).contains("not an array"));
        assert!(refused(r#"{"records":{"topic":"t"}}"#).contains("`records` must be an array"));
        assert!(refused(r#"{"record":[]}"#).contains("unknown field `record`"));
        assert!(refused("{}").contains("missing `records`"));
        assert!(refused("").contains("empty"));
        assert!(refused("7").contains("a JSON object"));
        assert!(refused(r#"{"records":[1,"#).contains("not valid JSON"));
    }

    #[test]
    fn a_record_with_a_type_is_refused_in_the_callers_terms() {
        let refused = frame(r#"{"type":"publish","topic":"t","value":1}"#).decode().unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadRequest);
        assert!(refused.error.to_string().contains("no `type` field"), "{:?}", refused.error);
    }

    #[tokio::test]
    async fn gzip_bodies_are_bounded_after_decompression() {
        use flate2::write::GzEncoder;
        use std::io::Write as _;
        let gz = |bytes: &[u8]| {
            let mut e = GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let small = gz(b"{\"records\":[]}");
        let read = read_body(&headers, Body::from(small), 1024).await.unwrap();
        assert_eq!(read, b"{\"records\":[]}");
        let bomb = gz(&vec![b' '; 10 * 1024 * 1024]);
        assert!(bomb.len() < 20 * 1024, "{}", bomb.len());
        let refused = read_body(&headers, Body::from(bomb), 1024 * 1024).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        let refused = read_body(&headers, Body::from("not gzip"), 1024).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    }
}
