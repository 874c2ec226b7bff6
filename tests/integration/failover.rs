//! Failover at scale: every socket of a node that goes away resumes on
//! another node from its offsets, and gets every record exactly once.
//! Also: many sockets catching up on one topic share their Kafka reads,
//! and a resume older than the recent records goes through the shared
//! catch-up reader.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// Partition → offsets received, in arrival order.
type Received = BTreeMap<i32, Vec<i64>>;

/// A raw socket to a node, with the frames a resuming client needs.
struct Socket {
    ws: Ws,
}

impl Socket {
    async fn open(url: &str) -> Result<Self, String> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| e.to_string())?;
        let mut socket = Self { ws };
        match socket.frame(WAIT).await {
            Some(f) if f["type"] == "welcome" => Ok(socket),
            other => Err(format!("no welcome: {other:?}")),
        }
    }

    /// The next frame; `None` when the socket ended or nothing came in `wait`.
    async fn frame(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await.ok()? {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).ok(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn send(&mut self, frame: Value) -> Result<(), String> {
        self.ws.send(Message::text(frame.to_string())).await.map_err(|e| e.to_string())
    }
}

/// What one client saw: where its subscription started on the first
/// node, and every record after.
struct Seen {
    starts: BTreeMap<i32, i64>,
    received: Received,
}

impl Seen {
    /// The next offset per partition: the resume position.
    fn next(&self) -> BTreeMap<String, i64> {
        self.starts
            .iter()
            .map(|(p, start)| {
                let next = self.received.get(p).and_then(|o| o.last()).map_or(*start, |o| o + 1);
                (p.to_string(), next)
            })
            .collect()
    }

    fn has_all(&self, ends: &BTreeMap<i32, i64>) -> bool {
        ends.iter().all(|(p, end)| {
            let start = self.starts.get(p).copied().unwrap_or(0);
            *end <= start
                || self.received.get(p).and_then(|o| o.last()).is_some_and(|o| o + 1 >= *end)
        })
    }

    /// Every record from the start to `ends`, once, in order.
    fn check(&self, ends: &BTreeMap<i32, i64>) -> Result<(), String> {
        for (p, &end) in ends {
            let start = self.starts[p];
            let got = self.received.get(p).cloned().unwrap_or_default();
            let want: Vec<i64> = (start..end).collect();
            if got != want {
                let missing = want.iter().filter(|o| !got.contains(o)).count();
                let extra = got.len() as i64 - (want.len() - missing) as i64;
                return Err(format!(
                    "partition {p}: {} received for [{start}, {end}): {missing} missing, {extra} duplicate or out of order",
                    got.len()
                ));
            }
        }
        Ok(())
    }
}

fn place(m: &Value) -> (i32, i64) {
    (m["partition"].as_i64().unwrap() as i32, m["offset"].as_i64().unwrap())
}

/// Subscribes live on `url`; the starts from `subscribed`.
async fn subscribe_live(url: &str, topic: &str) -> Result<(Socket, Seen), String> {
    let mut socket = Socket::open(url).await?;
    socket.send(json!({"type":"subscribe","id":"s","topic":topic})).await?;
    let reply = socket.frame(WAIT).await.ok_or("no answer to subscribe")?;
    if reply["type"] != "subscribed" {
        return Err(format!("subscribe refused: {reply}"));
    }
    let starts = reply["partitions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
        .collect();
    Ok((socket, Seen { starts, received: Received::new() }))
}

/// Resumes on `url` from what `seen` has, retrying `limit` after its
/// `retry_after_ms`; returns the socket once `subscribed`.
async fn resume(url: &str, topic: &str, seen: &mut Seen) -> Result<Socket, String> {
    let mut attempts = 0;
    loop {
        // A storm of reconnects may find the node at its bound of pending
        // handshakes: a client tries again after a short, jittered pause.
        let mut socket = match Socket::open(url).await {
            Ok(socket) => socket,
            Err(e) if attempts < 50 => {
                attempts += 1;
                let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]);
                tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
                let _ = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        let from = json!({"offsets": seen.next()});
        socket.send(json!({"type":"subscribe","id":"r","topic":topic,"from":from})).await?;
        loop {
            let frame = socket.frame(WAIT).await.ok_or("no answer to the resume")?;
            match frame["type"].as_str() {
                Some("subscribed") => return Ok(socket),
                Some("message") => {
                    let (p, o) = place(&frame);
                    seen.received.entry(p).or_default().push(o);
                }
                Some("error") if frame["code"] == "limit" => {
                    let wait =
                        frame["retry_after_ms"].as_u64().ok_or("limit without retry_after_ms")?;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    break;
                }
                _ => return Err(format!("resume answered {frame}")),
            }
        }
    }
}

/// Reads records until `ends` (once known) are reached; `Ok(false)` when
/// the socket ended first.
async fn read_until(
    socket: &mut Socket,
    seen: &mut Seen,
    ends: &mut watch::Receiver<Option<BTreeMap<i32, i64>>>,
    live: &AtomicUsize,
) -> Result<bool, String> {
    let mut counted = false;
    loop {
        if let Some(ends) = &*ends.borrow() {
            if seen.has_all(ends) {
                return Ok(true);
            }
        }
        let frame = tokio::select! {
            frame = socket.frame(Duration::from_secs(60)) => frame,
            _ = ends.changed() => continue,
        };
        let Some(frame) = frame else { return Ok(false) };
        match frame["type"].as_str() {
            Some("message") => {
                let (p, o) = place(&frame);
                seen.received.entry(p).or_default().push(o);
                if !counted {
                    counted = true;
                    live.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => return Err(format!("unexpected {frame}")),
        }
    }
}

/// Threads of a process, from `/proc`.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// `sockets` clients live on node A with records flowing; A gets
/// `signal`; every client resumes on node B.
async fn failover(signal: &str, sockets: usize) {
    let kafka = TestKafka::start().await;
    let topic = unique_topic("failover");
    kafka.create_topic(&topic, 3).await;
    let file = node_config(&kafka, "ferry-failover", "");
    let file = file.to_str().unwrap();
    let mut a = GatewayProcess::start(&["--config", file, "--node-id", "a"], &[]);
    let b = GatewayProcess::start(&["--config", file, "--node-id", "b"], &[]);
    let (a_url, b_url) = (a.ws_url(), b.ws_url());

    let opened: Vec<(Socket, Seen)> = futures::stream::iter(0..sockets)
        .map(|_| subscribe_live(&a_url, &topic))
        .buffer_unordered(64)
        .map(|r| r.unwrap())
        .collect()
        .await;

    let (ends_tx, ends_rx) = watch::channel(None);
    let before = Arc::new(AtomicUsize::new(0));
    let after = Arc::new(AtomicUsize::new(0));
    let resumed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for (mut socket, mut seen) in opened {
        let (mut ends, b_url, topic) = (ends_rx.clone(), b_url.clone(), topic.clone());
        let (before, after, resumed) = (before.clone(), after.clone(), resumed.clone());
        let errors = errors.clone();
        clients.push(tokio::spawn(async move {
            let result = async {
                if !read_until(&mut socket, &mut seen, &mut ends, &before).await? {
                    drop(socket);
                    let mut socket = resume(&b_url, &topic, &mut seen).await?;
                    resumed.fetch_add(1, Ordering::Relaxed);
                    if !read_until(&mut socket, &mut seen, &mut ends, &after).await? {
                        return Err("the resumed socket ended".to_owned());
                    }
                }
                Ok::<Seen, String>(seen)
            }
            .await;
            if let Err(e) = &result {
                errors.lock().unwrap().push(e.clone());
            }
            result
        }));
    }

    // Records flow to every socket before the node goes.
    let stop = tokio_util::sync::CancellationToken::new();
    let produced = {
        let (bootstrap, topic, stop) = (kafka.bootstrap(), topic.clone(), stop.clone());
        tokio::spawn(async move {
            let producer = producer(&bootstrap);
            let mut ends = BTreeMap::new();
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let value = json!({"i": i}).to_string();
                let (p, o) =
                    produce(&producer, &topic, Some((i % 3) as i32), None, value.as_bytes(), &[])
                        .await;
                ends.insert(p, o + 1);
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ends
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while before.load(Ordering::Relaxed) < sockets {
        assert!(
            Instant::now() < deadline,
            "{} of {sockets} sockets got records",
            before.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let killed = Instant::now();
    a.signal(signal);
    let mut most_threads = 0;
    while resumed.load(Ordering::Relaxed) < sockets {
        most_threads = most_threads.max(threads(b.child.id()));
        let failed = errors.lock().unwrap().clone();
        assert!(failed.is_empty(), "{} clients failed, first: {:?}", failed.len(), failed.first());
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "{} of {sockets} resumed on node b",
            resumed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    // More records after the resumes, then production stops.
    let deadline = Instant::now() + Duration::from_secs(60);
    while after.load(Ordering::Relaxed) < sockets {
        most_threads = most_threads.max(threads(b.child.id()));
        assert!(
            Instant::now() < deadline,
            "{} of {sockets} live on b",
            after.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let ends = produced.await.unwrap();
    ends_tx.send(Some(ends.clone())).unwrap();
    for client in clients {
        let seen = client.await.unwrap().unwrap_or_else(|e| panic!("a client failed: {e}"));
        seen.check(&ends).unwrap_or_else(|e| panic!("a client's records: {e}"));
    }
    most_threads = most_threads.max(threads(b.child.id()));
    eprintln!(
        "{sockets} sockets resumed on node b in {took:?}; node b threads at most {most_threads}; records {ends:?}"
    );
    assert!(most_threads < 100, "node b ran {most_threads} threads");
    let _ = a.wait(Duration::from_secs(30)).await;
}

/// Node A is killed (SIGKILL): its 2,000 sockets resume on node B, each
/// gets every record exactly once and in order, and node B does it with
/// the threads of a node that has no per-socket consumer.
#[ferry_test(timeout_secs = 300)]
async fn two_thousand_sockets_resume_on_another_node_after_a_kill() {
    failover("KILL", 2_000).await;
}

/// The same with a graceful restart (SIGTERM) of node A.
#[ferry_test(timeout_secs = 300)]
async fn two_thousand_sockets_resume_on_another_node_after_a_restart() {
    failover("TERM", 2_000).await;
}

/// `/metrics` of the gateway at `addr`. A node busy with hundreds of
/// catching-up sockets may drop a scrape: ask again.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(addr, "/metrics").await;
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "/metrics answered {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the metric line starting with `name` (labels included).
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// The `offset` of a `message` frame, read without parsing the JSON (the
/// test reads tens of millions of frames).
fn offset_of(frame: &str) -> Option<(i32, i64)> {
    let number = |key: &str| -> Option<i64> {
        let at = frame.find(key)? + key.len();
        let digits = frame[at..].split(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse().ok()
    };
    Some((number("\"partition\":")? as i32, number("\"offset\":")?))
}

/// 500 sockets subscribe `from: "earliest"` to a topic of 50,000 records:
/// each gets every record once and in order, the node reads Kafka with at
/// most `limits.catchup_readers` (4) catch-up consumers whatever the number
/// of sockets, and once caught up the sockets are live, with no consumer
/// of their own left.
#[ferry_test(timeout_secs = 600)]
async fn many_sockets_from_earliest_share_their_kafka_reads() {
    const SOCKETS: usize = 500;
    const RECORDS: usize = 50_000;
    let kafka = TestKafka::start().await;
    let topic = unique_topic("earliest");
    kafka.create_topic(&topic, 2).await;
    {
        let producer = producer(&kafka.bootstrap());
        let sends = (0..RECORDS).map(|i| {
            let producer = &producer;
            let topic = &topic;
            async move {
                produce(producer, topic, Some((i % 2) as i32), None, b"1", &[]).await;
            }
        });
        futures::stream::iter(sends).buffer_unordered(256).collect::<Vec<()>>().await;
    }
    // The readers share the gateway's 2 cores with the rest of the suite: one
    // may wait its turn longer than the default write timeout, and they
    // send nothing (not even pongs while busy) for longer than the idle
    // timeout; neither is what is tested here. A subscribe the loaded node
    // cannot open in time is answered `timeout` within 15 s (before a
    // socket's wait of 20 s for its next frame) and asked again, as
    // client-js does.
    let file = node_config(
        &kafka,
        "ferry-earliest",
        "[websocket]\nwrite_timeout_ms = 120000\nidle_timeout_ms = 600000\n\
         [limits]\nrequest_timeout_ms = 15000",
    );
    let gw = GatewayProcess::start(&["--config", file.to_str().unwrap()], &[]);
    let url = gw.ws_url();
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (addr, pid, stop) = (gw.addr, gw.child.id(), sampling.clone());
        tokio::spawn(async move {
            let (mut readers, mut most_threads, mut dropped) = (0f64, 0, 0);
            while !stop.is_cancelled() {
                // A node busy with hundreds of catching-up sockets may drop
                // a scrape; the next one counts.
                let (status, body) = http_get(addr, "/metrics").await;
                if status == 200 {
                    readers = readers.max(metric(&body, "ferry_catchup_readers "));
                } else {
                    dropped += 1;
                }
                most_threads = most_threads.max(threads(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (readers, most_threads, dropped)
        })
    };
    let started = Instant::now();
    let resubscribed = Arc::new(AtomicUsize::new(0));
    let clients = (0..SOCKETS).map(|_| {
        let (url, topic, resubscribed) = (url.clone(), topic.clone(), resubscribed.clone());
        tokio::spawn(async move {
            let mut socket = Socket::open(&url).await?;
            let subscribe = json!({"type":"subscribe","id":"e","topic":topic,"from":"earliest"});
            socket.send(subscribe.clone()).await?;
            let mut next = [0i64; 2];
            let mut got = 0;
            let mut subscribed = false;
            let mut timeouts = 0;
            while got < RECORDS {
                let frame = match tokio::time::timeout(WAIT, socket.ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Ok(_))) => continue,
                    other => return Err(format!("socket ended after {got} records: {other:?}")),
                };
                if !frame.contains("\"type\":\"message\"") {
                    if !subscribed && frame.contains("\"code\":\"timeout\"") && timeouts < 3 {
                        // What client-js does: a subscribe answered `timeout`
                        // was not carried out, and is asked again.
                        timeouts += 1;
                        resubscribed.fetch_add(1, Ordering::Relaxed);
                        socket.send(subscribe.clone()).await?;
                        continue;
                    }
                    subscribed |= frame.contains("\"type\":\"subscribed\"");
                    if !subscribed {
                        return Err(format!("subscribe answered {frame}"));
                    }
                    continue;
                }
                let (p, o) = offset_of(&frame).ok_or("a message without its place")?;
                if o != next[p as usize] {
                    return Err(format!(
                        "partition {p}: offset {o} where {} was next",
                        next[p as usize]
                    ));
                }
                next[p as usize] += 1;
                got += 1;
            }
            Ok::<Socket, String>(socket)
        })
    });
    let mut sockets = Vec::new();
    for client in clients.collect::<Vec<_>>() {
        let socket = client.await.unwrap().unwrap_or_else(|e| {
            let log = gw.log.lock().unwrap();
            let tail = &log[log.len().saturating_sub(20)..];
            panic!("a socket: {e}; gateway log: {tail:#?}")
        });
        sockets.push(socket);
    }
    let caught_up = started.elapsed();

    // Live now: a new record reaches every socket through the live path.
    let deadline = Instant::now() + WAIT;
    let mut body = scrape(gw.addr).await;
    while metric(&body, "ferry_catching_up ") > 0.0 {
        assert!(Instant::now() < deadline, "subscriptions still catching up");
        tokio::time::sleep(Duration::from_millis(50)).await;
        body = scrape(gw.addr).await;
    }
    let producer = producer(&kafka.bootstrap());
    let (p, o) = produce(&producer, &topic, Some(0), None, b"2", &[]).await;
    for socket in &mut sockets {
        let frame = socket.frame(WAIT).await.expect("the live record");
        assert_eq!(place(&frame), (p, o), "{frame}");
    }
    sampling.cancel();
    let (readers, most_threads, dropped) = sampler.await.unwrap();

    eprintln!(
        "{SOCKETS} sockets × {RECORDS} records from earliest in {caught_up:?}; \
         catch-up readers at most {readers}; threads at most {most_threads}; \
         {dropped} scrapes of /metrics dropped; {} subscribes asked again after `timeout`",
        resubscribed.load(Ordering::Relaxed)
    );
    assert!(readers <= 4.0, "{readers} catch-up readers");
    assert!(most_threads < 100, "{most_threads} threads");
    assert_eq!(metric(&body, "ferry_handovers_total "), SOCKETS as f64);
}

/// A resume older than what the node keeps in memory is served by the
/// topic's shared Kafka reader, then joins the live path: every record
/// once, in order, then live records.
#[ferry_test(timeout_secs = 180)]
async fn a_resume_older_than_the_recent_records_goes_through_the_shared_reader() {
    let kafka = TestKafka::start().await;
    let topic = unique_topic("older");
    kafka.create_topic(&topic, 3).await;
    // Room for a few hundred records only.
    let file = node_config(&kafka, "ferry-older", "[limits]\nrecent_bytes = 65536\n");
    let gw = GatewayProcess::start(&["--config", file.to_str().unwrap()], &[]);
    let mut live = Client::connect(&gw.ws_url()).await;
    live.subscribed(&topic).await;
    let producer = producer(&kafka.bootstrap());
    let mut places = Vec::new();
    for i in 0..1_500 {
        let value = json!({"i": i, "pad": "x".repeat(100)}).to_string();
        places.push(produce(&producer, &topic, Some(i % 3), None, value.as_bytes(), &[]).await);
    }
    for _ in 0..places.len() {
        live.next_message().await; // the node has seen (and evicted) them
    }

    let mut resumed = Client::connect(&gw.ws_url()).await;
    let from = json!({"offsets": {"0": 0, "1": 0, "2": 0}});
    let reply = resumed.request(json!({"type":"subscribe","topic":topic,"from":from})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut next = BTreeMap::from([(0, 0), (1, 0), (2, 0)]);
    for _ in 0..places.len() {
        let (p, o) = place(&resumed.next_message().await);
        assert_eq!(o, next[&p], "partition {p} in order, once");
        *next.get_mut(&p).unwrap() += 1;
    }
    let body = scrape(gw.addr).await;
    assert_eq!(metric(&body, "ferry_resumes_total{source=\"kafka\"} "), 1.0, "{body}");
    // Then live, from the next offset.
    let place_live = produce(&producer, &topic, Some(1), None, b"{\"live\":true}", &[]).await;
    assert_eq!(place(&resumed.next_message().await), place_live);
    assert!(resumed.message_within(Duration::from_millis(300)).await.is_none());
}
