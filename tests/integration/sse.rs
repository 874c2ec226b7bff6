//! `GET /sse` as an `EventSource` sees it: events on the wire, resume with
//! `Last-Event-ID` on another node (no gap, no duplicate, counted by
//! offset), gaps, heartbeats, filters, the slow-reader policy and every
//! refusal with its status.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::http_publish::{jwt, token};
use ferry_test_macros::ferry_test;

/// One event as a browser's `EventSource` parses it.
#[derive(Debug, Clone, Default)]
struct SseEvent {
    event: String,
    data: String,
    id: Option<String>,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|_| panic!("not JSON: {:?}", self.data))
    }
}

/// An open stream, read as `EventSource` would (comments are counted apart).
struct SseStream {
    response: reqwest::Response,
    buffer: String,
    comments: usize,
}

impl SseStream {
    async fn open(url: String, headers: &[(&str, &str)]) -> Result<Self, (u16, String)> {
        let mut request = http_streaming().get(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("SSE request answered");
        let status = response.status().as_u16();
        if status != 200 {
            return Err((status, response.text().await.unwrap_or_default()));
        }
        let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Ok(Self { response, buffer: String::new(), comments: 0 })
    }

    /// The next event, or `None` when the stream ended or `wait` passed.
    async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent { event: "message".into(), ..Default::default() };
                let mut data = Vec::new();
                let mut fields = 0;
                for line in block.lines().filter(|l| !l.is_empty()) {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    fields += 1;
                    match name {
                        "event" => event.event = value.to_owned(),
                        "data" => data.push(value.to_owned()),
                        "id" => event.id = Some(value.to_owned()),
                        _ => {}
                    }
                }
                if fields == 0 {
                    continue;
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let chunk =
                tokio::time::timeout_at(deadline, self.response.chunk()).await.ok()?.ok()??;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn next(&mut self) -> SseEvent {
        self.next_within(WAIT).await.expect("an SSE event in time")
    }
}

/// No overall timeout: streams stay open as long as the test reads.
fn http_streaming() -> reqwest::Client {
    reqwest::Client::builder().connect_timeout(WAIT).build().unwrap()
}

fn sse_url(gw: &TestGateway, query: &str) -> String {
    format!("http://{}/sse?{query}", gw.addr)
}

fn place(m: &Value) -> (String, i32, i64) {
    (
        m["topic"].as_str().unwrap().to_owned(),
        m["partition"].as_i64().unwrap() as i32,
        m["offset"].as_i64().unwrap(),
    )
}

#[ferry_test(timeout_secs = 180)]
async fn resume_with_last_event_id_on_another_node_has_no_gap_and_no_duplicate() {
    let kafka = TestKafka::start().await;
    let (a, b) = (unique_topic("sse-a"), unique_topic("sse-b"));
    kafka.create_topic(&a, 3).await;
    kafka.create_topic(&b, 2).await;
    let node1 = kafka.spawn_node().await;
    let node2 = kafka.spawn_node().await;
    let query = format!("topic={a}&topic={b}");
    let mut first = SseStream::open(sse_url(&node1, &query), &[]).await.unwrap();
    let subscribed = first.next().await;
    assert_eq!(subscribed.event, "subscribed");
    let starts = subscribed.json();
    assert_eq!(starts["topics"][&a].as_object().unwrap().len(), 3, "{starts}");
    assert_eq!(starts["topics"][&b].as_object().unwrap().len(), 2, "{starts}");
    assert!(subscribed.id.is_some(), "the opening event carries a token");

    let producer = producer(&kafka.bootstrap());
    let mut produced = BTreeSet::new();
    for i in 0..60 {
        let topic = if i % 3 == 0 { &b } else { &a };
        let (p, o) =
            produce(&producer, topic, None, None, format!("{{\"i\":{i}}}").as_bytes(), &[]).await;
        produced.insert((topic.clone(), p, o));
    }
    let mut seen = BTreeMap::new();
    let mut last_id = None;
    for _ in 0..25 {
        let e = first.next().await;
        assert_eq!(e.event, "message", "{e:?}");
        let m = e.json();
        assert_eq!(m["type"], "message");
        assert!(seen.insert(place(&m), "node1").is_none(), "duplicate on node1: {m}");
        last_id = e.id;
    }
    drop(first);
    for i in 60..100 {
        let topic = if i % 3 == 0 { &b } else { &a };
        let (p, o) =
            produce(&producer, topic, None, None, format!("{{\"i\":{i}}}").as_bytes(), &[]).await;
        produced.insert((topic.clone(), p, o));
    }
    let last_id = last_id.unwrap();
    let mut second =
        SseStream::open(sse_url(&node2, &query), &[("last-event-id", last_id.as_str())])
            .await
            .unwrap();
    let resumed = second.next().await;
    assert_eq!(resumed.event, "subscribed");
    while seen.len() < produced.len() {
        let e = second.next().await;
        assert_eq!(e.event, "message", "no gap event expected: {e:?}");
        let m = e.json();
        let at = place(&m);
        assert!(seen.insert(at.clone(), "node2").is_none(), "duplicate after resume: {at:?}");
    }
    let seen_places: BTreeSet<_> = seen.keys().cloned().collect();
    assert_eq!(seen_places, produced, "every record exactly once across the two nodes");
    assert!(second.next_within(Duration::from_millis(500)).await.is_none(), "nothing extra");
    assert!(seen.values().any(|n| *n == "node2"));
}

#[ferry_test]
async fn lost_positions_get_a_gap_event_and_the_stream_goes_on() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("sse-gap");
    gw.kafka().create_topic(&topic, 1).await;
    let producer = producer(&gw.bootstrap);
    produce(&producer, &topic, Some(0), None, b"1", &[]).await;
    let token = json!({"v": 1, "p": {&topic: {"0": 50}}}).to_string();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    let mut stream =
        SseStream::open(sse_url(&gw, &format!("topic={topic}&resume={token}")), &[]).await.unwrap();
    assert_eq!(stream.next().await.event, "subscribed");
    let gap = stream.next().await;
    assert_eq!(gap.event, "gap");
    let gap = gap.json();
    assert_eq!((gap["requested"].as_i64(), gap["resumed_at"].as_i64()), (Some(50), Some(1)));
    assert_eq!(gap["reason"], "beyond_end");
    let (_, o) = produce(&producer, &topic, Some(0), None, b"{\"after\":true}", &[]).await;
    let m = stream.next().await;
    assert_eq!((m.event.as_str(), m.json()["offset"].as_i64()), ("message", Some(o)));
    assert_eq!(m.json()["value"], json!({"after": true}));
}

#[ferry_test]
async fn earliest_filter_and_heartbeats() {
    let gw = spawn_gateway_with(|c| c.sse.heartbeat_ms = 200).await;
    let topic = unique_topic("sse-filter");
    gw.kafka().create_topic(&topic, 1).await;
    let producer = producer(&gw.bootstrap);
    for key in ["keep", "drop", "keep"] {
        produce(&producer, &topic, Some(0), Some(key.as_bytes()), b"{\"multi\":\n1}", &[]).await;
    }
    let filter = urlencode(r#"{"key":{"eq":"keep"}}"#);
    let url = sse_url(&gw, &format!("topic={topic}&from=earliest&filter={filter}"));
    let mut stream = SseStream::open(url, &[]).await.unwrap();
    assert_eq!(stream.next().await.event, "subscribed");
    let offsets: Vec<i64> = [stream.next().await, stream.next().await]
        .iter()
        .map(|e| {
            let m = e.json();
            assert_eq!(m["key"], "keep");
            assert_eq!(m["value"], json!({"multi": 1}), "a value with a line break survives");
            m["offset"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(offsets, [0, 2]);
    let extra = stream.next_within(Duration::from_millis(700)).await;
    assert!(extra.is_none(), "{extra:?}");
    assert!(stream.comments >= 2, "heartbeat comments: {}", stream.comments);
}

fn urlencode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[ferry_test]
async fn refusals_have_their_status() {
    let gw = spawn_gateway_with(|c| {
        jwt(c);
        c.limits.max_subscriptions = 2;
    })
    .await;
    let topic = format!("open.{}", unique_topic("sse-auth"));
    let status = |r: Result<SseStream, (u16, String)>| match r {
        Ok(_) => (200, String::new()),
        Err(e) => e,
    };
    let url = sse_url(&gw, &format!("topic={topic}"));
    let (code, body) = status(SseStream::open(url.clone(), &[]).await);
    assert_eq!(code, 401, "{body}");
    let alice = format!("Bearer {}", token("alice"));
    let auth = [("authorization", alice.as_str())];
    let forbidden = sse_url(&gw, &format!("topic={topic}&topic=private.x"));
    let (code, body) = status(SseStream::open(forbidden, &auth).await);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("private.x"), "{body}");
    let three = sse_url(&gw, "topic=open.a&topic=open.b&topic=open.c");
    assert_eq!(status(SseStream::open(three, &auth).await).0, 429);
    let (code, body) =
        status(SseStream::open(url.clone(), &[auth[0], ("last-event-id", "garbage!")]).await);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("resume token"), "{body}");
    let (code, body) = status(SseStream::open(format!("{url}&nope=1"), &auth).await);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nope"), "{body}");
    let query_token = format!("{url}&access_token={}", token("alice"));
    assert_eq!(
        status(SseStream::open(query_token.clone(), &[]).await).0,
        401,
        "query tokens are off unless configured"
    );
    let mut ok = SseStream::open(url, &auth).await.unwrap();
    assert_eq!(ok.next().await.event, "subscribed");

    let gw = spawn_gateway_with(|c| {
        jwt(c);
        c.sse.allow_query_token = true;
        c.sse.token_cookie = Some("ferry_token".into());
    })
    .await;
    let url = sse_url(&gw, &format!("topic={topic}&access_token={}", token("bob")));
    let mut ok = SseStream::open(url, &[]).await.unwrap();
    assert_eq!(ok.next().await.event, "subscribed");
    let cookie = format!("theme=dark; ferry_token={}", token("carol"));
    let url = sse_url(&gw, &format!("topic={topic}"));
    let mut ok = SseStream::open(url.clone(), &[("cookie", cookie.as_str())]).await.unwrap();
    assert_eq!(ok.next().await.event, "subscribed");
    let (code, _) = status(SseStream::open(url, &[("cookie", "ferry_token=bad")]).await);
    assert_eq!(code, 401);
}

#[ferry_test(timeout_secs = 180)]
async fn a_reader_that_stops_reading_is_disconnected() {
    let gw = spawn_gateway_with(|c| {
        c.limits.outbound_queue = 4;
        c.websocket.write_timeout_ms = 60_000;
    })
    .await;
    let topic = unique_topic("sse-slow");
    gw.kafka().create_topic(&topic, 1).await;
    let mut stream = SseStream::open(sse_url(&gw, &format!("topic={topic}")), &[]).await.unwrap();
    assert_eq!(stream.next().await.event, "subscribed");
    // Stop reading; produce far more than the socket buffers hold.
    let producer = producer(&gw.bootstrap);
    let value = format!("\"{}\"", "x".repeat(256 * 1024));
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        produce(&producer, &topic, Some(0), None, value.as_bytes(), &[]).await;
        let (_, metrics) = gw.get("/metrics").await;
        let kicked = metrics.lines().any(|l| {
            l.starts_with("ferry_sse_closed_total{reason=\"slow_consumer\"}") && !l.ends_with(" 0")
        });
        if kicked {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slow reader was never disconnected");
    }
    // Reading again: whatever was buffered, then the end of the stream
    // (not a wait that runs out).
    let mut events = 0;
    loop {
        let asked = tokio::time::Instant::now();
        match stream.next_within(WAIT).await {
            Some(_) => events += 1,
            None => {
                assert!(asked.elapsed() < WAIT / 2, "the stream did not end");
                break;
            }
        }
    }
    assert!(events > 0);
}

#[ferry_test]
async fn the_acl_imposed_filter_applies_and_an_expired_token_ends_the_stream() {
    let gw = spawn_gateway_with(|c| {
        jwt(c);
        c.auth.leeway_secs = 0;
        c.acl = toml::from_str(
            r#"
            [[rules]]
            subscribe = [{ topic = "tenants.**", filter = { key = { prefix = "{sub}." } } }]
        "#,
        )
        .unwrap();
    })
    .await;
    let topic = format!("tenants.{}", unique_topic("sse-acl"));
    gw.kafka().create_topic(&topic, 1).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let claims = json!({"sub": "acme", "exp": now.as_secs() + 6});
    let short = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(crate::http_publish::SECRET.as_bytes()),
    )
    .unwrap();
    let bearer = format!("Bearer {short}");
    let mut stream = SseStream::open(
        sse_url(&gw, &format!("topic={topic}&from=earliest")),
        &[("authorization", bearer.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(stream.next().await.event, "subscribed");
    let producer = producer(&gw.bootstrap);
    for key in ["other.1", "acme.1", "other.2", "acme.2"] {
        produce(&producer, &topic, Some(0), Some(key.as_bytes()), b"{}", &[]).await;
    }
    let keys: Vec<Value> = [stream.next().await, stream.next().await]
        .iter()
        .map(|e| e.json()["key"].clone())
        .collect();
    assert_eq!(keys, [json!("acme.1"), json!("acme.2")], "only the tenant's records");
    let close = stream.next_within(Duration::from_secs(15)).await.expect("a close event");
    assert_eq!(
        (close.event.as_str(), close.json()["reason"].as_str()),
        ("close", Some("token_expired"))
    );
    assert!(stream.next_within(Duration::from_secs(5)).await.is_none(), "the stream ended");
}

#[ferry_test]
async fn streams_do_not_hold_handshake_slots() {
    let gw = spawn_gateway_with(|c| {
        c.limits.max_pending_handshakes = 2;
        c.server.header_read_timeout_ms = 60_000;
    })
    .await;
    let topic = unique_topic("sse-slots");
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut s = SseStream::open(sse_url(&gw, &format!("topic={topic}")), &[]).await.unwrap();
        assert_eq!(s.next().await.event, "subscribed");
        streams.push(s);
    }
    // Slow handshakes fill the bound and make room for each other: a
    // stream that still counted as pending would be closed to make room.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET /sse HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    assert_eq!(gw.get("/healthz").await.0, 200, "new connections still get in");
    let mut client = gw.client().await;
    client.acked(&topic, serde_json::json!("to every stream")).await;
    for s in &mut streams {
        let event = s.next().await;
        assert_eq!(event.event, "message", "the stream is still open");
        assert!(event.data.contains("to every stream"), "{}", event.data);
    }
}

#[ferry_test]
async fn a_resume_position_lost_to_retention_is_a_gap_event() {
    let gw = spawn_gateway().await;
    if gw.kafka().is_embedded() {
        // The other gap reason, `beyond_end`, is tested on both Kafkas above.
        eprintln!("note: needs real Kafka (FERRY_TEST_KAFKA); the mock ignores DeleteRecords");
        return;
    }
    let topic = unique_topic("sse-retention");
    gw.kafka().create_topic(&topic, 1).await;
    let producer = producer(&gw.bootstrap);
    for i in 0..5 {
        produce(&producer, &topic, Some(0), None, format!("{i}").as_bytes(), &[]).await;
    }
    let url = sse_url(&gw, &format!("topic={topic}&from=earliest"));
    let mut first = SseStream::open(url.clone(), &[]).await.unwrap();
    assert_eq!(first.next().await.event, "subscribed");
    let mut last = None;
    for _ in 0..2 {
        last = first.next().await.id;
    }
    drop(first);
    // Retention removes offsets 0..4 (delete-records moves the log start).
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &gw.bootstrap).create().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(4)).unwrap();
    admin
        .delete_records(&list, &rdkafka::admin::AdminOptions::new())
        .await
        .expect("delete records");
    let last = last.unwrap();
    let mut resumed = SseStream::open(url, &[("last-event-id", last.as_str())]).await.unwrap();
    assert_eq!(resumed.next().await.event, "subscribed");
    let gap = resumed.next().await;
    assert_eq!(gap.event, "gap", "{gap:?}");
    let gap = gap.json();
    assert_eq!(gap["reason"], "retention");
    assert_eq!((gap["requested"].as_i64(), gap["resumed_at"].as_i64()), (Some(2), Some(4)));
    let m = resumed.next().await;
    assert_eq!((m.event.as_str(), m.json()["offset"].as_i64()), ("message", Some(4)));
}
