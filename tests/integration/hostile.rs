//! Hostile inputs, as a table: every case asserts its documented answer
//! (an HTTP status, an `error` code, a close code) and then a control
//! client on the same gateway must still publish and receive a record.
//!
//! One test walks the whole table and reports every failing case at once.
//! A case marked `known_failing` names the change it waits for; it prints a
//! loud line instead of failing, unless `FERRY_HOSTILE_STRICT=1`. A known
//! failing case that passes is reported too, so the mark gets removed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use ferry_protocol::UpgradeRefusal;
use ferry_test_macros::ferry_test;

/// What a case's check returns: `Err` says what the gateway did instead.
type Outcome = Result<(), String>;
type CaseFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

struct Case {
    name: &'static str,
    /// What the gateway must do, as documented.
    expect: &'static str,
    /// `Some(why)`: fails against this gateway until `why` lands.
    known_failing: Option<&'static str>,
    run: for<'a> fn(&'a Ctx) -> CaseFuture<'a>,
}

/// What a case gets: the shared gateway and a topic that exists.
struct Ctx {
    gw: TestGateway,
    topic: String,
}

/// The longest one case may take (the slowest waits out a 10 s timeout).
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest the whole table may take.
const TABLE_TIMEOUT: Duration = Duration::from_secs(300);

macro_rules! case {
    ($name:literal, $expect:literal, $(known_failing = $why:literal,)?
        |$c:ident: &Ctx| async move $body:block) => {
        Case {
            name: $name,
            expect: $expect,
            known_failing: case!(@why $($why)?),
            run: |$c| Box::pin(async move $body),
        }
    };
    ($name:literal, $expect:literal, $(known_failing = $why:literal,)? $f:path) => {
        Case { name: $name, expect: $expect, known_failing: case!(@why $($why)?), run: |c| Box::pin($f(c)) }
    };
    (@why) => { None };
    (@why $why:literal) => { Some($why) };
}

/// A case whose frame must be answered with an `error` of `code` carrying
/// `id` (or none), after which the socket still answers a ping.
macro_rules! error_case {
    ($name:literal, $frame:expr, $id:expr, $code:literal) => {
        Case {
            name: $name,
            expect: concat!("error ", $code, ", socket stays open"),
            known_failing: None,
            run: |c| Box::pin(async move { want_error(c, $frame, $id, $code).await }),
        }
    };
}

fn cases() -> Vec<Case> {
    vec![
        // ---- the handshake ----
        case!(
            "subprotocol: only an unknown one offered",
            "HTTP 4xx with a body naming ferry.v1",
            |c: &Ctx| async move {
                let r = http_upgrade(c.gw.addr, "Sec-WebSocket-Protocol: ferry.v2\r\n").await?;
                want_refusal(&r, 400..=499)?;
                want(r.body.contains("ferry.v1"), format!("body names ferry.v1: {:?}", r.body))
            }
        ),
        case!(
            "subprotocol: unknown then ferry.v1",
            "101, ferry.v1 selected",
            |c: &Ctx| async move {
                let r = http_upgrade(c.gw.addr, "Sec-WebSocket-Protocol: ferry.v2, ferry.v1\r\n")
                    .await?;
                want(r.status == 101, format!("status {}", r.status))?;
                want(
                    r.header("sec-websocket-protocol") == Some("ferry.v1"),
                    format!("{:?}", r.head),
                )
            }
        ),
        case!("subprotocol: none offered", "101 (documented: accepted)", |c: &Ctx| async move {
            let r = http_upgrade(c.gw.addr, "").await?;
            want(r.status == 101, format!("status {}", r.status))?;
            want(r.header("sec-websocket-protocol").is_none(), format!("{:?}", r.head))
        }),
        case!("huge header: one 512 KiB header", "HTTP 431", |c: &Ctx| async move {
            let extra = format!("X-Big: {}\r\n", "a".repeat(512 * 1024));
            let r = http_upgrade(c.gw.addr, &extra).await?;
            want(
                r.status == UpgradeRefusal::HeadersTooLarge.status(),
                format!("status {} {:?}", r.status, r.head),
            )
        }),
        case!("huge headers: 500 small headers", "HTTP 431", |c: &Ctx| async move {
            let extra: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
            let r = http_upgrade(c.gw.addr, &extra).await?;
            want(
                r.status == UpgradeRefusal::HeadersTooLarge.status(),
                format!("status {} {:?}", r.status, r.head),
            )
        }),
        case!("bad Origin: another site", "HTTP 403", |c: &Ctx| async move {
            let r = http_upgrade(c.gw.addr, "Origin: https://evil.example\r\n").await?;
            want_refusal(&r, 403..=403)
        }),
        case!("bad Origin: null", "HTTP 403", |c: &Ctx| async move {
            let r = http_upgrade(c.gw.addr, "Origin: null\r\n").await?;
            want_refusal(&r, 403..=403)
        }),
        case!("bad Origin: not UTF-8", "HTTP 403", |c: &Ctx| async move {
            let r = http_upgrade_bytes(c.gw.addr, b"Origin: https://\xff\xfe.example\r\n").await?;
            want_refusal(&r, 403..=403)
        }),
        case!("bad Origin: loopback look-alike host", "HTTP 403", |c: &Ctx| async move {
            let r = http_upgrade(c.gw.addr, "Origin: http://127.0.0.1.evil.example\r\n").await?;
            want_refusal(&r, 403..=403)
        }),
        case!("not an upgrade: plain GET /ws", "HTTP 4xx, no WebSocket", |c: &Ctx| async move {
            let (status, _) = c.gw.get("/ws").await;
            want((400..=499).contains(&status), format!("status {status}"))
        }),
        case!("unsupported WebSocket version 8", "HTTP 4xx", |c: &Ctx| async move {
            let r = http_raw(
                c.gw.addr,
                format!(
                    "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
                    c.gw.addr
                )
                .as_bytes(),
            )
            .await?;
            want_refusal(&r, 400..=499)
        }),
        case!(
            "half-open handshakes: 50 requests that never end their headers",
            "every one closed by the gateway within the header-read timeout (10 s)",
            |c: &Ctx| async move {
                let mut socks = Vec::new();
                for _ in 0..50 {
                    let mut s = TcpStream::connect(c.gw.addr).await.map_err(|e| e.to_string())?;
                    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
                        .await
                        .map_err(|e| e.to_string())?;
                    socks.push(s);
                }
                all_closed_by_peer(socks, Duration::from_secs(15)).await
            }
        ),
        case!(
            "silent TCP: connect, send nothing",
            "closed by the gateway within the header-read timeout (10 s)",
            |c: &Ctx| async move {
                let s = TcpStream::connect(c.gw.addr).await.map_err(|e| e.to_string())?;
                all_closed_by_peer(vec![s], Duration::from_secs(15)).await
            }
        ),
        case!(
            "half-open WebSocket: upgraded, then silent and never reads",
            "close 4001 after the idle timeout",
            half_open_websocket
        ),
        case!(
            "connection dropped in the middle of a frame",
            "the gateway carries on",
            |c: &Ctx| async move {
                let mut ws = RawWs::upgrade(c.gw.addr).await?;
                ws.welcome().await?;
                // A header announcing 1000 bytes, then 10 of them, then gone.
                let frame = ws_frame(0x1, true, &[b'{'; 1000]);
                ws.write(&frame[..16]).await?;
                drop(ws);
                Ok(())
            }
        ),
        // ---- WebSocket framing ----
        case!("binary frame", "close 1003", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            ws.write(&ws_frame(0x2, true, &[1, 2, 3])).await?;
            ws.want_close(1003).await
        }),
        case!("invalid UTF-8 in a text frame", "close 1007", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            ws.write(&ws_frame(0x1, true, b"{\"type\":\"ping\",\"id\":\"\xff\xfe\"}")).await?;
            ws.want_close(1007).await
        }),
        case!("invalid UTF-8 split across fragments", "close 1007", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            // "é" is C3 A9: the first fragment ends inside it, the second
            // does not complete it.
            ws.write(&ws_frame(0x1, false, b"{\"id\":\"\xc3")).await?;
            ws.write(&ws_frame(0x0, true, b"\x41\"}")).await?;
            ws.want_close(1007).await
        }),
        case!("oversized frame: 70 KiB text", "close 1009", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            let text =
                json!({"type":"publish","id":"big","topic":"t","value":"x".repeat(70 * 1024)});
            ws.write(&ws_frame(0x1, true, text.to_string().as_bytes())).await?;
            ws.want_close(1009).await
        }),
        case!("oversized message: 80 fragments of 1 KiB", "close 1009", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            ws.write(&ws_frame(0x1, false, b"\"")).await?;
            for _ in 0..80 {
                // The gateway may close before all fragments are written.
                if ws.write(&ws_frame(0x0, false, &[b'x'; 1024])).await.is_err() {
                    break;
                }
            }
            ws.want_close(1009).await
        }),
        case!("length header announcing 2^63 bytes", "close 1009", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            let mut header = vec![0x81, 0x80 | 127];
            header.extend_from_slice(&(1u64 << 62).to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            ws.write(&header).await?;
            ws.want_close(1009).await
        }),
        case!("unmasked client frame", "close 1002", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            let body = br#"{"type":"ping","id":"u"}"#;
            let mut frame = vec![0x81, body.len() as u8];
            frame.extend_from_slice(body);
            ws.write(&frame).await?;
            ws.want_close(1002).await
        }),
        case!("reserved opcode 0x3", "close 1002", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            ws.write(&ws_frame(0x3, true, b"??")).await?;
            ws.want_close(1002).await
        }),
        case!("control frame over 125 bytes (ping of 200)", "close 1002", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            ws.write(&ws_frame(0x9, true, &[7; 200])).await?;
            ws.want_close(1002).await
        }),
        case!("continuation frame with nothing to continue", "close 1002", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            ws.write(&ws_frame(0x0, true, b"orphan")).await?;
            ws.want_close(1002).await
        }),
        case!("close frame with the reserved code 1005", "close 1002", |c: &Ctx| async move {
            let mut ws = RawWs::upgrade(c.gw.addr).await?;
            ws.welcome().await?;
            ws.write(&ws_frame(0x8, true, &1005u16.to_be_bytes())).await?;
            ws.want_close(1002).await
        }),
        // ---- frames that are not JSON, or the wrong JSON ----
        error_case!("not JSON", "hello", None, "bad_request"),
        error_case!("empty text frame", "", None, "bad_request"),
        error_case!("truncated JSON", r#"{"type":"ping","id":"t1""#, None, "bad_request"),
        error_case!("a JSON array", r#"[{"type":"ping","id":"a1"}]"#, None, "bad_request"),
        error_case!("a JSON string", r#""ping""#, None, "bad_request"),
        error_case!("JSON null", "null", None, "bad_request"),
        error_case!("type is a number", r#"{"type":5,"id":"w1"}"#, Some("w1"), "bad_request"),
        error_case!("id is a number", r#"{"type":"ping","id":5}"#, None, "bad_request"),
        error_case!(
            "id of 65 characters",
            r#"{"type":"ping","id":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            None,
            "bad_request"
        ),
        error_case!(
            "topic is a number",
            r#"{"type":"subscribe","id":"w2","topic":5}"#,
            Some("w2"),
            "bad_request"
        ),
        error_case!(
            "partition is a string",
            r#"{"type":"publish","id":"w3","topic":"t","value":1,"partition":"0"}"#,
            Some("w3"),
            "bad_request"
        ),
        error_case!(
            "header value is a number",
            r#"{"type":"publish","id":"w4","topic":"t","value":1,"headers":{"h":1}}"#,
            Some("w4"),
            "bad_request"
        ),
        error_case!(
            "unknown frame type",
            r#"{"type":"hello","id":"w5"}"#,
            Some("w5"),
            "bad_request"
        ),
        error_case!(
            "duplicate key: id twice",
            r#"{"type":"ping","id":"d1","id":"d2"}"#,
            None,
            "bad_request"
        ),
        error_case!(
            "duplicate key: type twice",
            r#"{"type":"ping","type":"publish","id":"d3"}"#,
            Some("d3"),
            "bad_request"
        ),
        error_case!(
            "duplicate key: value twice",
            r#"{"type":"publish","id":"d4","topic":"t","value":1,"value":2}"#,
            Some("d4"),
            "bad_request"
        ),
        case!(
            "deep nesting: value 20,000 arrays deep",
            "ack, delivered verbatim (documented: any JSON value, its exact text)",
            |c: &Ctx| async move {
                let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
                verbatim_values(c, &[("deep", deep.as_str())]).await
            }
        ),
        case!(
            "deep nesting: filter 200 levels of all",
            "error bad_request naming the filter",
            |c: &Ctx| async move {
                let mut filter = json!({"key": {"eq": "k"}});
                for _ in 0..200 {
                    filter = json!({"all": [filter]});
                }
                let text = json!({"type":"subscribe","id":"n2","topic":c.topic,"filter":filter})
                    .to_string();
                want_error(c, &text, Some("n2"), "bad_request").await
            }
        ),
        case!("deep nesting: from 1,000 objects deep", "error bad_request", |c: &Ctx| async move {
            let text = format!(
                r#"{{"type":"subscribe","id":"n3","topic":"{}","from":{}1{}}}"#,
                c.topic,
                r#"{"a":"#.repeat(1000),
                "}".repeat(1000)
            );
            want_error(c, &text, Some("n3"), "bad_request").await
        }),
        error_case!(
            "huge number: partition 1e400",
            r#"{"type":"publish","id":"h1","topic":"t","value":1,"partition":1e400}"#,
            Some("h1"),
            "bad_request"
        ),
        error_case!(
            "huge number: partition 2^31",
            r#"{"type":"publish","id":"h2","topic":"t","value":1,"partition":2147483648}"#,
            Some("h2"),
            "bad_request"
        ),
        error_case!(
            "huge number: resume offset 10^30",
            r#"{"type":"subscribe","id":"h3","topic":"t","from":{"offsets":{"0":1000000000000000000000000000000}}}"#,
            Some("h3"),
            "bad_request"
        ),
        error_case!(
            "huge number: partition key 10^30 in from.offsets",
            r#"{"type":"subscribe","id":"h4","topic":"t","from":{"offsets":{"1000000000000000000000000000000":0}}}"#,
            Some("h4"),
            "bad_request"
        ),
        error_case!(
            "huge number: commit offset 1e300",
            r#"{"type":"commit","id":"h5","topic":"t","partition":0,"offset":1e300}"#,
            Some("h5"),
            "bad_request"
        ),
        case!(
            "huge number as a publish value: 1e400 and 5,000 digits",
            "ack, and a subscriber gets the exact text",
            |c: &Ctx| async move {
                let long = format!("1{}", "0".repeat(5_000));
                verbatim_values(c, &[("big1", "1e400"), ("big2", long.as_str())]).await
            }
        ),
        error_case!(
            "bad base64: value_b64 \"@@@@\"",
            r#"{"type":"publish","id":"b1","topic":"t","value_b64":"@@@@"}"#,
            Some("b1"),
            "bad_request"
        ),
        error_case!(
            "bad base64: key_b64 without padding",
            r#"{"type":"publish","id":"b2","topic":"t","value":1,"key_b64":"abc"}"#,
            Some("b2"),
            "bad_request"
        ),
        error_case!(
            "bad base64: URL-safe alphabet",
            r#"{"type":"publish","id":"b3","topic":"t","value_b64":"-_-_"}"#,
            Some("b3"),
            "bad_request"
        ),
        error_case!(
            "bad base64: a line break inside",
            r#"{"type":"publish","id":"b4","topic":"t","value_b64":"AAAA\nAAAA"}"#,
            Some("b4"),
            "bad_request"
        ),
        error_case!(
            "value and value_b64 together",
            r#"{"type":"publish","id":"b5","topic":"t","value":1,"value_b64":"AA=="}"#,
            Some("b5"),
            "bad_request"
        ),
        error_case!(
            "reserved header ferry-id",
            r#"{"type":"publish","id":"b6","topic":"t","value":1,"headers":{"Ferry-Id":"x"}}"#,
            Some("b6"),
            "bad_request"
        ),
        error_case!(
            "internal topic __consumer_offsets",
            r#"{"type":"subscribe","id":"i1","topic":"__consumer_offsets"}"#,
            Some("i1"),
            "invalid_topic"
        ),
        error_case!(
            "topic with a slash",
            r#"{"type":"publish","id":"i2","topic":"a/b","value":1}"#,
            Some("i2"),
            "invalid_topic"
        ),
        error_case!(
            "filter with an unknown operator",
            r#"{"type":"subscribe","id":"f1","topic":"t","filter":{"value":{"path":"a","ne":1}}}"#,
            Some("f1"),
            "bad_request"
        ),
        error_case!(
            "filter with a 1e400 bound",
            r#"{"type":"subscribe","id":"f2","topic":"t","filter":{"value":{"path":"a","gt":1e400}}}"#,
            Some("f2"),
            "bad_request"
        ),
        case!("filter over 4096 bytes", "error bad_request", |c: &Ctx| async move {
            let list: Vec<Value> = (0..64).map(|i| json!(format!("{i:0>100}"))).collect();
            let text = json!({"type":"subscribe","id":"f3","topic":c.topic,
                "filter":{"value":{"path":"a","in":list}}})
            .to_string();
            want_error(c, &text, Some("f3"), "bad_request").await
        }),
        // ---- protocol misuse ----
        error_case!(
            "commit without a group (with id)",
            r#"{"type":"commit","id":"c1","topic":"t","partition":0,"offset":0}"#,
            Some("c1"),
            "bad_request"
        ),
        error_case!(
            "commit without a group (no id)",
            r#"{"type":"commit","topic":"t","partition":0,"offset":0}"#,
            None,
            "bad_request"
        ),
        error_case!(
            "ack without a group",
            r#"{"type":"subscribe","id":"g1","topic":"t","ack":"client"}"#,
            Some("g1"),
            "bad_request"
        ),
        error_case!(
            "a group resuming from offsets",
            r#"{"type":"subscribe","id":"g2","topic":"t","group":"g","from":{"offsets":{"0":1}}}"#,
            Some("g2"),
            "bad_request"
        ),
        case!(
            "subscribe twice to one topic",
            "subscribed, then error bad_request",
            |c: &Ctx| async move {
                let mut client = c.gw.client().await;
                let first = client.request(json!({"type":"subscribe","topic":c.topic})).await;
                want(first["type"] == "subscribed", format!("first: {first}"))?;
                let second = client.request(json!({"type":"subscribe","topic":c.topic})).await;
                want(second["code"] == "bad_request", format!("second: {second}"))
            }
        ),
        case!(
            "unsubscribe from a topic never subscribed",
            "unsubscribed (documented)",
            |c: &Ctx| async move {
                let mut client = c.gw.client().await;
                let reply =
                    client.request(json!({"type":"unsubscribe","topic":"never-subscribed"})).await;
                want(reply["type"] == "unsubscribed", format!("{reply}"))
            }
        ),
        case!(
            "300 subscribes pipelined on one socket",
            "each answered once: 100 subscribed (max_subscriptions), 200 limit",
            many_subscribes
        ),
        case!("20,000 pipelined pings", "20,000 pongs, each id once, in order", many_pings),
    ]
}

#[ferry_test(timeout_secs = 300)]
async fn hostile_inputs_get_their_documented_answer_and_others_are_unaffected() {
    timeout(TABLE_TIMEOUT, run_table()).await.expect("the hostile table finished in time");
}

async fn run_table() {
    let gw = spawn_gateway().await;
    let topic = unique_topic("hostile");
    gw.kafka().create_topic(&topic, 3).await;
    let control_topic = unique_topic("control");
    let mut control = gw.client().await;
    control.subscribed(&control_topic).await;
    let ctx = Ctx { gw, topic };
    let strict = std::env::var("FERRY_HOSTILE_STRICT").is_ok_and(|v| v == "1");

    let table = cases();
    assert!(table.len() >= 40, "at least 40 cases, got {}", table.len());
    let (mut failed, mut known, mut unexpected_pass) = (Vec::new(), Vec::new(), Vec::new());
    for (n, case) in table.iter().enumerate() {
        let started = Instant::now();
        // Meanwhile the control client keeps reading, so that it answers the
        // gateway's pings however long the case takes.
        let done = tokio_util::sync::CancellationToken::new();
        let case_side = async {
            // A panic in a case (e.g. a helper's own timeout) fails that case.
            let run = std::panic::AssertUnwindSafe((case.run)(&ctx)).catch_unwind();
            let outcome = match timeout(CASE_TIMEOUT, run).await {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(panic)) => Ok(Err(format!("panicked: {}", panic_text(&*panic)))),
                Err(elapsed) => Err(elapsed),
            };
            done.cancel();
            outcome
        };
        let control_side = async {
            while !done.is_cancelled() {
                if let Some(m) = control.message_within(Duration::from_millis(100)).await {
                    return Some(m);
                }
            }
            None
        };
        let (outcome, stray) = tokio::join!(case_side, control_side);
        let outcome = match (outcome, stray) {
            (_, Some(m)) => Err(format!("the control client got a record nobody sent it: {m}")),
            (Ok(outcome), None) => outcome,
            (Err(_), None) => Err(format!("no answer within {CASE_TIMEOUT:?}")),
        };
        // The control client, on the same gateway, is unaffected.
        let value = json!({"control": n});
        let control_ok =
            match timeout(WAIT, control_round_trip(&mut control, &control_topic, &value)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("control client got no answer".to_owned()),
            };
        let outcome = match (outcome, control_ok) {
            (o, Ok(())) => o,
            (Ok(()), Err(e)) => Err(format!("CONTROL CLIENT AFFECTED: {e}")),
            (Err(o), Err(e)) => Err(format!("{o}; CONTROL CLIENT AFFECTED: {e}")),
        };
        let took = started.elapsed();
        match (&outcome, case.known_failing) {
            (Ok(()), None) => eprintln!("hostile ok   {:>2} {} ({took:.1?})", n + 1, case.name),
            (Ok(()), Some(why)) => {
                eprintln!("hostile PASSES BUT MARKED known_failing ({why}): {}", case.name);
                unexpected_pass.push(case.name);
            }
            (Err(e), None) => {
                eprintln!(
                    "hostile FAIL {:>2} {}: expected {}; got {e}",
                    n + 1,
                    case.name,
                    case.expect
                );
                failed.push(format!("{}: expected {}; got {e}", case.name, case.expect));
            }
            (Err(e), Some(why)) => {
                eprintln!(
                    "\n!!!!! KNOWN FAILING hostile case, waits for {why}: {}\n!!!!!   expected {}; got {e}\n",
                    case.name, case.expect
                );
                known.push(format!("{}: expected {}; got {e}", case.name, case.expect));
            }
        }
    }
    eprintln!(
        "hostile: {} cases, {} failed, {} known failing, {} marked known_failing but passing",
        table.len(),
        failed.len(),
        known.len(),
        unexpected_pass.len()
    );
    if strict {
        failed.extend(known.iter().map(|k| format!("(known failing) {k}")));
    }
    assert!(failed.is_empty(), "hostile cases failed:\n  {}", failed.join("\n  "));
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".to_owned())
}

async fn control_round_trip(
    control: &mut Client,
    topic: &str,
    value: &Value,
) -> Result<(), String> {
    let reply = control.publish(topic, value.clone()).await;
    want(reply["type"] == "ack", format!("control publish: {reply}"))?;
    let m = control.next_message().await;
    want(&m["value"] == value, format!("control got {m}, not {value}"))
}

fn want(ok: bool, otherwise: impl Into<String>) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(otherwise.into())
    }
}

/// Sends `frame` on a fresh socket: the answer must be an `error` with
/// `code`, carrying `id` (`None`: no `id`), and the socket must still answer
/// a ping afterwards.
async fn want_error(c: &Ctx, frame: &str, id: Option<&str>, code: &str) -> Outcome {
    let mut ws = RawWs::upgrade(c.gw.addr).await?;
    ws.welcome().await?;
    ws.write(&ws_frame(0x1, true, frame.as_bytes())).await?;
    let reply = ws.next_json().await?;
    want(reply["type"] == "error", format!("not an error: {reply}"))?;
    want(reply["code"] == code, format!("code {}, frame {reply}", reply["code"]))?;
    want(reply.get("id").and_then(Value::as_str) == id, format!("id should be {id:?}: {reply}"))?;
    want(reply["message"].as_str().is_some_and(|m| !m.is_empty()), format!("no message: {reply}"))?;
    ws.write(&ws_frame(0x1, true, br#"{"type":"ping","id":"after"}"#)).await?;
    let pong = ws.next_json().await?;
    want(pong == json!({"type":"pong","id":"after"}), format!("socket after the error: {pong}"))
}

fn want_refusal(r: &HttpReply, statuses: std::ops::RangeInclusive<u16>) -> Outcome {
    want(statuses.contains(&r.status), format!("status {} ({:?})", r.status, r.head))?;
    want(!r.body.trim().is_empty(), format!("status {} with an empty body", r.status))
}

/// Waits until the gateway has closed every socket (EOF or reset).
async fn all_closed_by_peer(socks: Vec<TcpStream>, within: Duration) -> Outcome {
    let deadline = Instant::now() + within;
    let started = Instant::now();
    let total = socks.len();
    let mut open = 0;
    for mut s in socks {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => {
                    open += 1;
                    break;
                }
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => continue, // e.g. a 408 response before the close
            }
        }
    }
    want(open == 0, format!("{open} of {total} still open after {:.1?}", started.elapsed()))
}

/// Its own gateway with a short idle timeout: a socket that completed the
/// upgrade and then neither reads nor writes is closed with 4001.
async fn half_open_websocket(_: &Ctx) -> Outcome {
    let gw = spawn_gateway_with(|c| {
        c.websocket.idle_timeout_ms = 2_000;
        c.websocket.ping_interval_ms = 500;
    })
    .await;
    // A control client of this gateway that keeps reading (so it answers
    // the gateway's pings) stays; its topic exists, so subscribing is quick.
    let topic = unique_topic("half-open-control");
    gw.kafka().create_topic(&topic, 1).await;
    let mut control = gw.client().await;
    control.subscribed(&topic).await;
    let started = Instant::now();
    let mut silent = RawWs::upgrade(gw.addr).await?;
    let done = tokio_util::sync::CancellationToken::new();
    // Reads what the gateway sends, but never writes (no pong): the
    // gateway must give up on it.
    let silent_side = async {
        let mut last = Err("no frame".to_owned());
        for _ in 0..40 {
            match silent.next_frame().await {
                Ok((0x8, payload)) => {
                    last = Ok(close_code(&payload));
                    break;
                }
                Ok(_) => continue,
                Err(e) => {
                    last = Err(e);
                    break;
                }
            }
        }
        done.cancel();
        last
    };
    let control_side = async {
        while !done.is_cancelled() {
            if let Some(m) = control.message_within(Duration::from_millis(100)).await {
                return Err(format!("control got an unexpected record {m}"));
            }
        }
        Ok(())
    };
    let (code, control_ok) = tokio::join!(silent_side, control_side);
    let code = code?;
    control_ok?;
    want(code == Some(4001), format!("closed with {code:?} after {:.1?}", started.elapsed()))?;
    want(started.elapsed() < Duration::from_secs(10), format!("took {:.1?}", started.elapsed()))?;
    // The control client answered the gateway's pings (it read) and is fine.
    control_round_trip(&mut control, &topic, &json!("still here")).await
}

/// Valid JSON values that strict parsers refuse (huge numbers, deep
/// nesting): published, they are acked, and a subscriber gets the same text.
async fn verbatim_values(c: &Ctx, values: &[(&str, &str)]) -> Outcome {
    let mut sub = RawWs::upgrade(c.gw.addr).await?;
    sub.welcome().await?;
    let topic = unique_topic("hostile-verbatim");
    let text = json!({"type":"subscribe","id":"s","topic":topic}).to_string();
    sub.write(&ws_frame(0x1, true, text.as_bytes())).await?;
    let reply = sub.next_json().await?;
    want(reply["type"] == "subscribed", format!("{reply}"))?;
    let mut publisher = RawWs::upgrade(c.gw.addr).await?;
    publisher.welcome().await?;
    for &(id, number) in values {
        let frame =
            format!(r#"{{"type":"publish","id":"{id}","topic":"{topic}","value":{number}}}"#);
        publisher.write(&ws_frame(0x1, true, frame.as_bytes())).await?;
        let (_, payload) = publisher.next_frame().await?;
        let reply = String::from_utf8_lossy(&payload).into_owned();
        want(reply.contains(r#""type":"ack""#), format!("publish {id}: {reply}"))?;
        let (_, payload) = sub.next_frame().await?;
        let message = String::from_utf8_lossy(&payload).into_owned();
        want(
            message.contains(r#""type":"message""#)
                && message.contains(&format!(r#""value":{number}}}"#)),
            format!("message for {id}: {}", &message[..message.len().min(300)]),
        )?;
    }
    Ok(())
}

/// Subscriptions a socket may hold in the 300-subscribes case. Its own
/// gateway has a lower limit than the default 100: on a real broker a
/// node's first subscribe to a topic costs about a second.
const MANY_LIMIT: usize = 25;

/// 300 subscribes sent at once: `max_subscriptions` of them are
/// `subscribed`, the rest `limit`; each id answered exactly once, and the
/// gateway's other clients are unaffected.
async fn many_subscribes(_: &Ctx) -> Outcome {
    let gw = spawn_gateway_with(|c| c.limits.max_subscriptions = MANY_LIMIT).await;
    let control_topic = unique_topic("many-control");
    gw.kafka().create_topic(&control_topic, 1).await;
    let mut control = gw.client().await;
    control.subscribed(&control_topic).await;
    let mut client = gw.client().await;
    let prefix = unique_topic("many");
    // The topics exist (one admin request on a real broker).
    let existing: Vec<String> = (0..MANY_LIMIT).map(|i| format!("{prefix}-{i}")).collect();
    create_topics(&gw.kafka(), &existing).await;
    let frames: Vec<Value> = (0..300)
        .map(|i| json!({"type":"subscribe","id":format!("m{i}"),"topic":format!("{prefix}-{}", i % 150)}))
        .collect();
    client.send_batch(&frames).await;
    let (mut subscribed, mut limited, mut other) = (0, 0, Vec::new());
    for i in 0..300 {
        let reply = client.reply(&format!("m{i}")).await;
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("subscribed"), _) => subscribed += 1,
            (Some("error"), Some("limit")) => limited += 1,
            // The second subscribe to a topic the socket already has.
            (Some("error"), Some("bad_request")) if i >= 150 && i % 150 < MANY_LIMIT => {
                limited += 1
            }
            _ => other.push(reply.to_string()),
        }
    }
    want(
        (subscribed, limited) == (MANY_LIMIT, 300 - MANY_LIMIT) && other.is_empty(),
        format!(
            "{subscribed} subscribed, {limited} limit (or already subscribed), others: {other:?}"
        ),
    )?;
    // Nothing more: the ping is the next frame that is not a `message`.
    let pong = client.request(json!({"type":"ping"})).await;
    want(pong["type"] == "pong", format!("{pong}"))?;
    if let Some(extra) = client.next_frame_or_close_within(Duration::from_millis(200)).await {
        return Err(format!("an extra frame: {extra}"));
    }
    control_round_trip(&mut control, &control_topic, &json!("many")).await
}

/// Creates several topics of one partition at once.
async fn create_topics(kafka: &TestKafka, names: &[String]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    match kafka {
        TestKafka::Embedded(_) => {
            for name in names {
                kafka.create_topic(name, 1).await;
            }
        }
        TestKafka::Real(bootstrap) => {
            let admin: AdminClient<DefaultClientContext> =
                ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
            let new: Vec<NewTopic<'_>> =
                names.iter().map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1))).collect();
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            for r in admin.create_topics(&new, &options).await.unwrap() {
                r.unwrap_or_else(|e| panic!("create topic: {e:?}"));
            }
        }
    }
}

/// 20,000 pings written without waiting, read concurrently.
async fn many_pings(c: &Ctx) -> Outcome {
    const N: usize = 20_000;
    let (ws, _) =
        tokio_tungstenite::connect_async(c.gw.ws_url()).await.map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let text = format!(r#"{{"type":"ping","id":"q{i}"}}"#);
            sink.feed(Message::text(text)).await?;
            if i % 500 == 499 {
                sink.flush().await?;
            }
        }
        sink.flush().await?;
        Ok::<_, tokio_tungstenite::tungstenite::Error>(sink)
    });
    let welcome = stream.next().await;
    want(
        matches!(&welcome, Some(Ok(Message::Text(t))) if t.contains("welcome")),
        format!("{welcome:?}"),
    )?;
    let mut next = 0;
    while next < N {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Err(_) => return Err(format!("only {next} of {N} pongs")),
            Ok(Some(Ok(Message::Text(text)))) => {
                let want_text = format!(r#"{{"type":"pong","id":"q{next}"}}"#);
                if text.as_str() != want_text {
                    return Err(format!("pong {next}: got {text}"));
                }
                next += 1;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(other) => return Err(format!("after {next} pongs: {other:?}")),
        }
    }
    let _sink = writer.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    Ok(())
}

impl Client {
    /// The next frame if one arrives within `wait` (kept ones first).
    async fn next_frame_or_close_within(&mut self, wait: Duration) -> Option<Value> {
        timeout(wait, self.next_frame_or_close()).await.ok()?.ok()
    }
}

// ---- raw HTTP and WebSocket, to say what a well-behaved client cannot ----

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

struct HttpReply {
    status: u16,
    head: String,
    body: String,
}

impl HttpReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// An upgrade request with `extra` header lines; the reply's head and body
/// (the socket is dropped).
async fn http_upgrade(addr: SocketAddr, extra: &str) -> Result<HttpReply, String> {
    http_upgrade_bytes(addr, extra.as_bytes()).await
}

async fn http_upgrade_bytes(addr: SocketAddr, extra: &[u8]) -> Result<HttpReply, String> {
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    )
    .into_bytes();
    request.extend_from_slice(extra);
    request.extend_from_slice(b"\r\n");
    http_raw(addr, &request).await
}

/// Writes `request`, reads the response head and (for a refusal) its body.
async fn http_raw(addr: SocketAddr, request: &[u8]) -> Result<HttpReply, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // A gateway may answer (and close) before reading a huge request.
    let write_result = s.write_all(request).await;
    let (head, rest) = read_head(&mut s)
        .await
        .map_err(|e| format!("no HTTP response ({e}); write: {write_result:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let mut body = rest;
    if status != 101 {
        let length: Option<usize> = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok()).flatten()
        });
        let mut buf = [0u8; 4096];
        while length.is_none_or(|n| body.len() < n) {
            match timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => body.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    }
    Ok(HttpReply { status, head, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Reads up to the end of an HTTP head; returns it and the bytes after it.
async fn read_head(s: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            return Ok((head, data[end + 4..].to_vec()));
        }
        match timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => return Err("timed out".into()),
            Ok(Ok(0)) => return Err(format!("closed after {} bytes", data.len())),
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// One client frame (masked, as RFC 6455 requires of clients).
fn ws_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// A WebSocket spoken by hand over TCP.
struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn upgrade(addr: SocketAddr) -> Result<Self, String> {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: ferry.v1\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let (head, rest) = read_head(&mut s).await?;
        if !head.starts_with("HTTP/1.1 101") {
            return Err(format!("upgrade refused: {head}"));
        }
        Ok(Self { s, buf: rest })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.s.write_all(bytes).await.map_err(|e| format!("write: {e}"))
    }

    /// The next server frame: (opcode, payload). Fragmented messages are
    /// not reassembled (the gateway does not fragment).
    async fn next_frame(&mut self) -> Result<(u8, Vec<u8>), String> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            match timeout(WAIT, self.s.read(&mut chunk)).await {
                Err(_) => return Err("no frame in time".into()),
                Ok(Ok(0)) => return Err("connection closed without a close frame".into()),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(format!("connection failed without a close frame: {e}")),
            }
        }
    }

    /// The next text frame as JSON, skipping pings.
    async fn next_json(&mut self) -> Result<Value, String> {
        loop {
            match self.next_frame().await? {
                (0x1, payload) => {
                    return serde_json::from_slice(&payload)
                        .map_err(|e| format!("not JSON ({e}): {payload:?}"))
                }
                (0x8, payload) => return Err(format!("closed with {:?}", close_code(&payload))),
                _ => continue,
            }
        }
    }

    async fn welcome(&mut self) -> Result<(), String> {
        let welcome = self.next_json().await?;
        want(welcome["type"] == "welcome", format!("first frame: {welcome}"))
    }

    /// Reads until a close frame; it must carry `code`.
    async fn want_close(&mut self, code: u16) -> Outcome {
        loop {
            match self.next_frame().await? {
                (0x8, payload) => {
                    let got = close_code(&payload);
                    return want(got == Some(code), format!("closed with {got:?}"));
                }
                (op, payload) => {
                    if op == 0x1 {
                        let text = String::from_utf8_lossy(&payload);
                        if text.contains(r#""type":"error""#) {
                            return Err(format!("an error frame instead of a close: {text}"));
                        }
                    }
                }
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        at += 4; // servers do not mask, but tolerate it
    }
    let payload = buf.get(at..at + len)?.to_vec();
    Some(((opcode, payload), at + len))
}
