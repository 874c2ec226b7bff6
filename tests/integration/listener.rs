//! The listener against slow handshakes (slowloris): connections that never
//! finish their request headers are closed after
//! `server.header_read_timeout_ms`; past
//! `limits.max_pending_handshakes_per_address` an address's new connections
//! are closed at once; at `limits.max_pending_handshakes` the oldest pending
//! connection makes room for the new one. Upgraded WebSockets do not count,
//! and an honest client from another address gets in while the slow ones
//! are still pending.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

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

/// Like [`half_open`], from the loopback address `source` (any 127.x.y.z
/// reaches the gateway on 127.0.0.1); `None` if the server closed it at once
/// (the write may then fail).
async fn half_open_from(source: Ipv4Addr, addr: SocketAddr) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.ok()?;
    Some(tcp)
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
async fn at_the_pending_handshake_bound_the_oldest_makes_room() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let gw = spawn_gateway_with(|c| {
            c.limits.max_pending_handshakes = 4;
            c.limits.max_pending_handshakes_per_address = 2;
            c.server.header_read_timeout_ms = 60_000;
        })
        .await;
        // Upgraded WebSockets do not hold handshake places.
        let mut sockets = Vec::new();
        for _ in 0..8 {
            sockets.push(gw.client().await);
        }
        let evicted = rejected(&gw, "handshakes").await;

        // Four slow connections from two addresses fill the bound.
        let mut slow = Vec::new();
        for source in [[127, 0, 0, 2], [127, 0, 0, 3]] {
            for _ in 0..2 {
                let tcp = half_open_from(Ipv4Addr::from(source), gw.addr).await;
                slow.push(tcp.expect("within both bounds"));
            }
        }
        // An honest client gets in: the oldest slow one makes room.
        let mut ws = gw.client().await;
        assert!(closed_within(&mut slow[0], WAIT).await, "the oldest pending connection was kept");
        for tcp in &mut slow[1..] {
            assert!(
                !closed_within(tcp, Duration::from_millis(200)).await,
                "a newer one was closed"
            );
        }
        assert!(rejected(&gw, "handshakes").await > evicted, "counted");
        // The WebSockets opened first are unaffected, and the new one works.
        let topic = unique_topic("bound");
        sockets[0].subscribed(&topic).await;
        ws.acked(&topic, serde_json::json!("still here")).await;
        assert_eq!(sockets[0].next_message().await["value"], "still here");
    })
    .await
    .expect("test finished in time");
}

#[ferry_test]
async fn many_half_open_handshakes_from_one_address_do_not_lock_out_another() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // The default bounds; the slow connections would stay a minute.
        const PER_ADDRESS: usize = 64;
        let gw = spawn_gateway_with(|c| {
            c.server.header_read_timeout_ms = 60_000;
            c.limits.max_pending_handshakes_per_address = PER_ADDRESS;
        })
        .await;
        let refused = rejected(&gw, "handshakes_per_address").await;
        let attacker = Ipv4Addr::new(127, 0, 0, 2);
        let started = std::time::Instant::now();
        let mut slow = Vec::new();
        for _ in 0..1_500 {
            slow.extend(half_open_from(attacker, gw.addr).await);
        }
        eprintln!("1,500 half-open handshakes sent in {:?}", started.elapsed());

        // A client from 127.0.0.1 connects and publishes while they are
        // all still pending.
        let started = std::time::Instant::now();
        let mut client = gw.client().await;
        let topic = unique_topic("not-locked-out");
        client.acked(&topic, serde_json::json!("in")).await;
        let took = started.elapsed();
        eprintln!("connected and published in {took:?}");
        assert!(took < Duration::from_secs(30), "locked out for {took:?}");

        // Past the per-address bound the attacker's connections were
        // closed at once; the first ones are still pending.
        assert!(
            rejected(&gw, "handshakes_per_address").await >= refused + (1_500 - PER_ADDRESS) as u64,
            "refused and counted"
        );
        let mut open = 0;
        for tcp in &mut slow {
            if !closed_within(tcp, Duration::from_millis(1)).await {
                open += 1;
            }
        }
        assert_eq!(open, PER_ADDRESS, "the attacker keeps exactly its own bound");
    })
    .await
    .expect("test finished in time");
}
