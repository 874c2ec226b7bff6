//! The listener against slow handshakes (slowloris): connections that never
//! finish their request headers are closed after
//! `server.header_read_timeout_ms`, and past `limits.max_pending_handshakes`
//! new connections are closed at once, while upgraded WebSockets do not
//! count and an honest client gets in once the slow ones are gone.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// Overall bound of every test here.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// A connection that starts a WebSocket handshake and never ends its headers.
async fn half_open(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    tcp
}

/// Whether the server closed `tcp` within `wait` (EOF or reset).
async fn closed_within(tcp: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 before the close
        }
    }
}

/// `ferry_connections_rejected_total{reason="..."}` (process-wide).
async fn rejected(gw: &TestGateway, reason: &str) -> u64 {
    let (_, body) = gw.get("/metrics").await;
    let series = format!("ferry_connections_rejected_total{{reason=\"{reason}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

#[ferry_test]
async fn half_open_handshakes_are_closed_after_the_header_timeout() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let gw = spawn_gateway_with(|c| c.server.header_read_timeout_ms = 500).await;
        let timeouts = rejected(&gw, "handshake_timeout").await;
        let started = std::time::Instant::now();
        let mut slow = Vec::new();
        for _ in 0..50 {
            slow.push(half_open(gw.addr).await);
        }
        // A connection that sends nothing at all is closed too.
        slow.push(TcpStream::connect(gw.addr).await.unwrap());
        // An honest client is served meanwhile.
        let mut client = gw.client().await;
        for tcp in &mut slow {
            assert!(closed_within(tcp, WAIT).await, "a half-open handshake stayed open");
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(400), "closed before the timeout: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "closed long after the timeout: {elapsed:?}");
        assert!(rejected(&gw, "handshake_timeout").await >= timeouts + 51, "counted");
        // The upgraded socket is not a handshake: it outlives the timeout.
        let topic = unique_topic("after-slowloris");
        client.subscribed(&topic).await;
        client.acked(&topic, serde_json::json!(1)).await;
        assert_eq!(client.next_message().await["value"], 1);
    })
    .await
    .expect("test finished in time");
}

#[ferry_test]
async fn past_the_pending_handshake_bound_new_connections_are_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let gw = spawn_gateway_with(|c| {
            c.limits.max_pending_handshakes = 4;
            c.server.header_read_timeout_ms = 60_000;
        })
        .await;
        // Upgraded WebSockets do not hold handshake slots.
        let mut sockets = Vec::new();
        for _ in 0..8 {
            sockets.push(gw.client().await);
        }
        let refused = rejected(&gw, "handshakes").await;

        let mut slow = Vec::new();
        for _ in 0..4 {
            slow.push(half_open(gw.addr).await);
        }
        // The fifth is closed at once, before any answer.
        let mut fifth = half_open(gw.addr).await;
        assert!(closed_within(&mut fifth, WAIT).await, "a connection past the bound was kept");
        let honest = tokio_tungstenite::connect_async(gw.ws_url()).await;
        assert!(honest.is_err(), "no handshake slot is free");
        // The pending ones are still open (60 s timeout).
        for tcp in &mut slow {
            assert!(!closed_within(tcp, Duration::from_millis(200)).await);
        }

        // Once they are gone, an honest client connects.
        drop(slow);
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut ws = loop {
            match tokio_tungstenite::connect_async(gw.ws_url()).await {
                Ok((ws, _)) => break ws,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "still refused: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let welcome = tokio::time::timeout(WAIT, ws.next()).await.expect("welcome in time");
        let welcome = welcome.expect("a frame").expect("a frame").into_text().unwrap();
        assert!(welcome.contains("\"welcome\""), "{welcome}");
        assert!(rejected(&gw, "handshakes").await >= refused + 2, "counted");
        // The WebSockets opened first are unaffected.
        let topic = unique_topic("bound");
        sockets[0].subscribed(&topic).await;
        sockets[7].acked(&topic, serde_json::json!("still here")).await;
        assert_eq!(sockets[0].next_message().await["value"], "still here");
    })
    .await
    .expect("test finished in time");
}
