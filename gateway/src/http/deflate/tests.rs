use flate2::{Decompress, FlushDecompress};
use futures::StreamExt;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};

use super::*;

fn offered(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for v in values {
        headers.append(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(v).unwrap());
    }
    headers
}

const NO_TAKEOVER: Agreed = Agreed { server_takeover: false, client_takeover: false };

#[test]
fn a_browser_offer_is_taken_without_context_takeover() {
    // What Chromium and Firefox send.
    let agreed = negotiate(&offered(&["permessage-deflate; client_max_window_bits"]), false);
    assert_eq!(agreed, Some(NO_TAKEOVER));
    assert_eq!(
        NO_TAKEOVER.header(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
}

#[test]
fn with_takeover_on_the_client_own_no_takeover_is_kept() {
    let headers = offered(&["permessage-deflate; server_no_context_takeover"]);
    let agreed = negotiate(&headers, true).unwrap();
    assert_eq!(agreed, Agreed { server_takeover: false, client_takeover: true });
    assert_eq!(agreed.header(), "permessage-deflate; server_no_context_takeover");
}

#[test]
fn offers_the_gateway_cannot_honour_are_declined_and_the_next_one_taken() {
    let small_window = "permessage-deflate; server_max_window_bits=10";
    assert_eq!(negotiate(&offered(&[small_window]), false), None);
    assert_eq!(negotiate(&offered(&["permessage-deflate; x_unknown"]), false), None);
    let twice = "permessage-deflate; client_no_context_takeover; client_no_context_takeover";
    assert_eq!(negotiate(&offered(&[twice]), false), None);
    assert_eq!(negotiate(&offered(&["x-webkit-deflate-frame"]), false), None);
    assert_eq!(negotiate(&HeaderMap::new(), false), None);
    // Several offers, in one header or several: the first acceptable wins.
    let list = format!("{small_window}, permessage-deflate; client_max_window_bits=12");
    assert_eq!(negotiate(&offered(&[&list]), false), Some(NO_TAKEOVER));
    assert_eq!(
        negotiate(&offered(&[small_window, "permessage-deflate"]), false),
        Some(NO_TAKEOVER)
    );
}

/// `payload` inflated as a client would, from a fresh window.
fn inflate_fresh(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut state = Decompress::new(false);
    let mut out = Vec::with_capacity(64 * 1024);
    state.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    out
}

#[test]
fn a_frame_shared_by_many_sockets_is_compressed_once() {
    let frame = Bytes::from(
        r#"{"type":"message","topic":"devices","partition":0,"offset":7,"key":"sensor-1","value":{"temp":21.5,"unit":"celsius","status":"ok"}}"#
            .repeat(3),
    );
    let first = compressed(&frame);
    let again = compressed(&frame.clone());
    assert_eq!(first.as_ptr(), again.as_ptr(), "the second socket got the same bytes");
    assert!(first.len() < frame.len() / 2, "{} of {}", first.len(), frame.len());
    assert_eq!(inflate_fresh(&first), frame);
    // Equal bytes elsewhere in memory compress alike, on their own.
    let copy = Bytes::from(frame.to_vec());
    assert_eq!(compressed(&copy), first);
}

#[test]
fn with_takeover_a_repeated_message_costs_almost_nothing() {
    let message = br#"{"type":"message","topic":"devices","value":{"temp":21.5,"status":"ok"}}"#;
    let mut own = Compress::new(LEVEL, false);
    let first = deflate(&mut own, message);
    let second = deflate(&mut own, message);
    assert!(second.len() < first.len() / 3, "{} then {}", first.len(), second.len());
    let mut client = Decompress::new(false);
    let mut out = Vec::with_capacity(1024);
    for part in [&first, &second] {
        let mut input = part.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        client.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    }
    assert_eq!(out, [&message[..], &message[..]].concat());
}

/// A masked client frame.
fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// A server socket reading through [`Inflating`], and the client's end.
async fn server(
    max: usize,
    client_takeover: bool,
) -> (WebSocketStream<Inflating<DuplexStream>>, DuplexStream) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let config = WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max));
    let io = Inflating::new(server, max, client_takeover);
    (WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await, client)
}

fn text(message: Option<Result<Message, WsError>>) -> String {
    match message {
        Some(Ok(Message::Text(text))) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[tokio::test]
async fn compressed_client_messages_arrive_inflated_and_plain_ones_unchanged() {
    let (mut ws, mut client) = server(65_536, false).await;
    let publish =
        r#"{"type":"publish","id":"p1","topic":"telemetry","value":{"temp":21.5,"temp2":21.5}}"#;
    let deflated = deflate(&mut Compress::new(LEVEL, false), publish.as_bytes());
    client.write_all(&client_frame(true, true, 0x1, &deflated)).await.unwrap();
    client.write_all(&client_frame(true, false, 0x1, b"plain")).await.unwrap();
    // A compressed message in two fragments, a ping between them.
    let (a, b) = deflated.split_at(deflated.len() / 2);
    client.write_all(&client_frame(false, true, 0x1, a)).await.unwrap();
    client.write_all(&client_frame(true, false, 0x9, b"ping")).await.unwrap();
    client.write_all(&client_frame(true, false, 0x0, b)).await.unwrap();
    assert_eq!(text(ws.next().await), publish);
    assert_eq!(text(ws.next().await), "plain");
    assert!(matches!(ws.next().await, Some(Ok(Message::Ping(_)))));
    assert_eq!(text(ws.next().await), publish);
}

#[tokio::test]
async fn with_client_takeover_each_message_inflates_from_the_window_before() {
    let (mut ws, mut client) = server(65_536, true).await;
    let publish = br#"{"type":"publish","id":"p1","topic":"telemetry","value":{"temp":21.5}}"#;
    let mut own = Compress::new(LEVEL, false);
    for _ in 0..3 {
        let deflated = deflate(&mut own, publish);
        client.write_all(&client_frame(true, true, 0x1, &deflated)).await.unwrap();
    }
    for _ in 0..3 {
        assert_eq!(text(ws.next().await).as_bytes(), publish);
    }
}

#[tokio::test]
async fn a_message_that_inflates_past_the_limit_is_refused_as_too_big() {
    let (mut ws, mut client) = server(1024, false).await;
    // 100 KiB of one byte compress to a few hundred: a small frame, a big message.
    let bomb = deflate(&mut Compress::new(LEVEL, false), &[b'a'; 100 * 1024]);
    assert!(bomb.len() < 1024);
    client.write_all(&client_frame(true, true, 0x1, &bomb)).await.unwrap();
    match ws.next().await {
        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {}
        other => panic!("expected a too-long error, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_in_a_compressed_frame_fails_the_connection_without_a_panic() {
    let (mut ws, mut client) = server(1024, false).await;
    client.write_all(&client_frame(true, true, 0x1, &[0xff; 40])).await.unwrap();
    assert!(matches!(ws.next().await, Some(Err(_))), "a read error");
}
