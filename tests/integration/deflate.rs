//! permessage-deflate (RFC 7692): a client that offers it gets it, its
//! compressed frames are read, records reach it compressed (and inflate
//! to exactly what a client without compression gets), and a compressed
//! message that inflates past the frame limit closes with 1009.
//!
//! The clients here speak the WebSocket wire by hand (tokio-tungstenite
//! has no permessage-deflate), so the test sees every frame's RSV1 bit
//! and its bytes on the wire.

use std::time::Duration;

use ferry_gateway::config::Compression as Mode;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// One frame from the gateway.
#[derive(Debug)]
struct Frame {
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A WebSocket client written against the wire.
struct RawClient {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` the gateway answered, if any.
    extensions: Option<String>,
    /// Bytes of data frames received (headers included).
    data_bytes: usize,
    /// With server context takeover: the window kept between messages.
    window: Option<Decompress>,
}

impl RawClient {
    async fn connect(gw: &TestGateway, offer: Option<&str>) -> Self {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        let offer = offer.map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: ferry.v1\r\n{offer}\r\n",
            gw.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = Vec::new();
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = timeout(WAIT, stream.read(&mut chunk)).await.expect("handshake answered");
            let n = n.unwrap();
            assert!(n > 0, "the gateway closed during the handshake");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buffer[..end].to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        assert_eq!(header("sec-websocket-accept").as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(header("sec-websocket-protocol").as_deref(), Some("ferry.v1"));
        let extensions = header("sec-websocket-extensions");
        buffer.drain(..end);
        let takeover =
            extensions.as_deref().is_some_and(|e| !e.contains("server_no_context_takeover"));
        let window = takeover.then(|| Decompress::new(false));
        Self { stream, buffer, extensions, data_bytes: 0, window }
    }

    /// Sends a masked text frame, compressed (RSV1 set) when asked.
    async fn send(&mut self, frame: &Value, compress: bool) {
        let text = frame.to_string();
        let payload = if compress { deflate(text.as_bytes()) } else { text.into_bytes() };
        self.send_raw(compress, &payload).await;
    }

    async fn send_raw(&mut self, rsv1: bool, payload: &[u8]) {
        let key = [0x12, 0x34, 0x56, 0x78];
        let mut bytes = vec![0x80 | (u8::from(rsv1) << 6) | 0x1];
        match payload.len() {
            n @ 0..=125 => bytes.push(0x80 | n as u8),
            n => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&key);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// The next frame that is not a ping; `None` once the connection ends.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, size)) = parse(&self.buffer) {
                self.buffer.drain(..size);
                if frame.opcode == 0x9 {
                    continue;
                }
                if frame.opcode < 0x8 {
                    self.data_bytes += size;
                }
                return Some(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = timeout(WAIT, self.stream.read(&mut chunk)).await.expect("a frame in time");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next text frame as JSON, inflated when it is compressed.
    async fn json(&mut self) -> (Value, bool) {
        let frame = self.frame().await.expect("a frame");
        assert_eq!(frame.opcode, 0x1, "{frame:?}");
        let text = match (&mut self.window, frame.rsv1) {
            (_, false) => frame.payload,
            (None, true) => inflate(&mut Decompress::new(false), &frame.payload),
            (Some(window), true) => inflate(window, &frame.payload),
        };
        (serde_json::from_slice(&text).unwrap(), frame.rsv1)
    }

    /// The next frame whose `type` is `kind`.
    async fn expect(&mut self, kind: &str) -> (Value, bool) {
        loop {
            let (frame, compressed) = self.json().await;
            if frame["type"] == kind {
                return (frame, compressed);
            }
            assert_ne!(frame["type"], "error", "{frame}");
        }
    }
}

/// A whole frame at the front of `buffer`, and its size.
fn parse(buffer: &[u8]) -> Option<(Frame, usize)> {
    let [first, second, ..] = *buffer else { return None };
    assert_eq!(second & 0x80, 0, "the gateway masks nothing");
    let (len, header) = match second & 0x7f {
        126 => (u16::from_be_bytes(buffer.get(2..4)?.try_into().unwrap()) as usize, 4),
        127 => (u64::from_be_bytes(buffer.get(2..10)?.try_into().unwrap()) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = buffer.get(header..header + len)?.to_vec();
    Some((Frame { rsv1: first & 0x40 != 0, opcode: first & 0x0f, payload }, header + len))
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut state = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    state.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - 4);
    out
}

fn inflate(state: &mut Decompress, data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(256 * 1024);
    state.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    out
}

/// A dashboard-like record: repetitive JSON.
fn reading(n: usize) -> Value {
    json!({
        "device": format!("sensor-{n}"),
        "site": "plant-north",
        "readings": (0..8).map(|i| json!({"name": format!("probe-{i}"), "unit": "celsius", "value": 20 + i, "status": "ok"})).collect::<Vec<_>>(),
    })
}

#[ferry_test]
async fn a_client_that_offers_deflate_gets_compressed_frames_both_ways_and_the_same_records() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("deflate");
    gw.kafka().create_topic(&topic, 1).await;

    let mut zipped = RawClient::connect(&gw, Some(OFFER)).await;
    assert_eq!(
        zipped.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let mut plain = RawClient::connect(&gw, None).await;
    assert_eq!(plain.extensions, None, "no offer, no compression");
    let (welcome, compressed) = zipped.expect("welcome").await;
    assert!(compressed, "{welcome}");
    plain.expect("welcome").await;

    // Requests compressed by the client are read.
    let subscribe = json!({"type":"subscribe","id":"s","topic":topic});
    zipped.send(&subscribe, true).await;
    let (subscribed, compressed) = zipped.expect("subscribed").await;
    let size = subscribed.to_string().len();
    assert!(size < 128 && !compressed, "a frame under compression_min_bytes goes as is: {size}");
    plain.send(&subscribe, false).await;
    plain.expect("subscribed").await;
    let (on_wire, uncompressed) = exchange(&mut zipped, &mut plain, &topic).await;
    eprintln!("20 records: {on_wire} bytes compressed, {uncompressed} plain");
    assert!(on_wire * 3 < uncompressed * 2, "{on_wire} bytes compressed, {uncompressed} plain");
}

/// 20 records published by `zipped` and received by both: the bytes each
/// got on the wire (compressed, plain).
async fn exchange(zipped: &mut RawClient, plain: &mut RawClient, topic: &str) -> (usize, usize) {
    let (before_zipped, before_plain) = (zipped.data_bytes, plain.data_bytes);
    for n in 0..20 {
        let publish = json!({"type":"publish","id":format!("p{n}"),"topic":topic,"key":format!("k{n}"),"value":reading(n)});
        zipped.send(&publish, true).await;
    }
    for n in 0..20 {
        let (got, compressed) = zipped.expect("message").await;
        assert!(compressed, "a record's frame is compressed");
        let (same, compressed) = plain.expect("message").await;
        assert!(!compressed);
        assert_eq!(got, same, "both clients get the same record");
        assert_eq!(got["value"], reading(n));
    }
    (zipped.data_bytes - before_zipped, plain.data_bytes - before_plain)
}

#[ferry_test]
async fn with_context_takeover_each_socket_keeps_its_window_and_frames_shrink_further() {
    let gw = spawn_gateway_with(|c| c.websocket.compression_context_takeover = true).await;
    let topic = unique_topic("deflate-takeover");
    gw.kafka().create_topic(&topic, 1).await;
    let mut zipped = RawClient::connect(&gw, Some(OFFER)).await;
    assert_eq!(zipped.extensions.as_deref(), Some("permessage-deflate"));
    let mut plain = RawClient::connect(&gw, None).await;
    zipped.expect("welcome").await;
    plain.expect("welcome").await;
    for client in [&mut zipped, &mut plain] {
        client.send(&json!({"type":"subscribe","id":"s","topic":topic}), false).await;
        client.expect("subscribed").await;
    }
    let (on_wire, uncompressed) = exchange(&mut zipped, &mut plain, &topic).await;
    eprintln!("20 records with context takeover: {on_wire} bytes compressed, {uncompressed} plain");
    assert!(on_wire * 4 < uncompressed, "{on_wire} bytes compressed, {uncompressed} plain");
}

#[ferry_test]
async fn with_compression_off_an_offer_is_not_taken() {
    let gw = spawn_gateway_with(|c| c.websocket.compression = Mode::Off).await;
    let mut client = RawClient::connect(&gw, Some(OFFER)).await;
    assert_eq!(client.extensions, None);
    let (welcome, compressed) = client.expect("welcome").await;
    assert!(!compressed, "{welcome}");
    // An RSV1 frame without compression agreed is a protocol error.
    client.send(&json!({"type":"ping","id":"x"}), true).await;
    let close = loop {
        let frame = client.frame().await.expect("a close frame");
        if frame.opcode == 0x8 {
            break frame;
        }
    };
    assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), 1002);
}

#[ferry_test]
async fn a_compressed_message_that_inflates_past_the_frame_limit_closes_with_1009() {
    let gw = spawn_gateway_with(|c| c.limits.max_frame_bytes = 4096).await;
    let mut client = RawClient::connect(&gw, Some(OFFER)).await;
    client.expect("welcome").await;
    // 1 MiB of one byte: under a kilobyte on the wire.
    let bomb = deflate(&vec![b'a'; 1 << 20]);
    assert!(bomb.len() < 4096, "{}", bomb.len());
    client.send_raw(true, &bomb).await;
    let close = loop {
        let frame = client.frame().await.expect("a close frame");
        if frame.opcode == 0x8 {
            break frame;
        }
    };
    assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), 1009);
    // The gateway is fine: a new client is served.
    let mut next = RawClient::connect(&gw, Some(OFFER)).await;
    next.send(&json!({"type":"ping","id":"x"}), true).await;
    timeout(Duration::from_secs(20), next.expect("pong")).await.expect("pong in time");
}
