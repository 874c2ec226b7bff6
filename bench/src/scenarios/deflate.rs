//! deflate: what permessage-deflate (`websocket.compression`, on by
//! default) costs and saves on the fan-out. The same gateway serves, in
//! alternating steps, sockets that offer permessage-deflate (as browsers
//! do) and sockets that offer nothing, each step with the same count of
//! sockets, the same rate and the same dashboard-like records (a device's
//! readings, about 220 bytes of JSON). Per delivery: bytes on the wire
//! (frame headers included) and the gateway's CPU (`/proc/PID/stat`).
//!
//! The readers speak the wire by hand: they count every data frame's
//! bytes and inflate the compressed ones (a fresh window each, as the
//! gateway compresses without context takeover) to read the latency stamp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flate2::{Decompress, FlushDecompress};
use rdkafka::producer::FutureRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::Cpu;
use crate::report::Row;
use crate::stats::{median, Recorder, Summary};
use crate::{pacer, progress, util, Ctx, Outcome};

const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// One step's figures.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Figures {
    deliveries: u64,
    expected: u64,
    bytes_per_delivery: f64,
    server_cpu_us_per_delivery: f64,
    p99_ms: f64,
}

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let sockets = ctx.pick(500, 100);
    let rate = ctx.pick(200.0, 100.0);
    let step = Duration::from_secs_f64(ctx.opts.step_seconds.unwrap_or(ctx.pick(5.0, 2.0)));
    let rounds = ctx.pick(3, 1);
    let (mut gateway, kafka_host) = ctx.gateway_apart_from_kafka(sockets + 100)?;
    let kafka = ctx.kafka(&gateway);
    let connector = ctx.connector(&gateway);
    let topic = ctx.topic("deflate");
    ctx.create_topic(&ctx.topic_creator(&gateway, kafka_host.as_ref()), &topic).await?;
    let producer = kafka.producer()?;
    let (addr, token) = (connector.addr(), connector.token());

    let (mut plain, mut zipped) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for offer in [false, true] {
            let fleet = RawFleet::open(addr, token, &topic, sockets, offer).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let figures = fleet.step(&producer, &topic, rate, step, gateway.pid()).await;
            progress(format_args!(
                "deflate: round {round}, {}: {}/{} delivered, {:.0} B and {:.2} µs of gateway CPU \
                 per delivery, p99 {:.1} ms",
                if offer { "compressed" } else { "plain" },
                figures.deliveries,
                figures.expected,
                figures.bytes_per_delivery,
                figures.server_cpu_us_per_delivery,
                figures.p99_ms,
            ));
            if figures.deliveries < figures.expected {
                bail!("{} of {} deliveries arrived", figures.deliveries, figures.expected);
            }
            if offer { &mut zipped } else { &mut plain }.push(figures);
        }
    }
    let compressed_in = gateway.metric("ferry_deflate_input_bytes_total").unwrap_or(f64::NAN);
    let compressed_out = gateway.metric("ferry_deflate_output_bytes_total").unwrap_or(f64::NAN);
    gateway.check_alive()?;
    gateway.stop(Duration::from_secs(5));

    let med =
        |of: &[Figures], f: fn(&Figures) -> f64| median(&of.iter().map(f).collect::<Vec<_>>());
    let bytes = (med(&zipped, |f| f.bytes_per_delivery), med(&plain, |f| f.bytes_per_delivery));
    let cpu = (
        med(&zipped, |f| f.server_cpu_us_per_delivery),
        med(&plain, |f| f.server_cpu_us_per_delivery),
    );
    let p99 = (med(&zipped, |f| f.p99_ms), med(&plain, |f| f.p99_ms));
    let scenario = "deflate";
    let setting = format!("{sockets} sockets, {rate} rec/s");
    let rows = vec![
        Row::new(
            scenario,
            &format!("bytes on the wire per delivery, compressed vs plain ({setting})"),
            Some(bytes.0),
            format!("{:.0} B", bytes.0),
        )
        .baseline(Some(bytes.1), format!("{:.0} B", bytes.1))
        .ratio(),
        Row::new(
            scenario,
            "gateway CPU per delivery, compressed vs plain",
            Some(cpu.0),
            format!("{:.2} µs", cpu.0),
        )
        .baseline(Some(cpu.1), format!("{:.2} µs", cpu.1))
        .ratio(),
        Row::new(scenario, "p99, compressed vs plain", Some(p99.0), format!("{:.1} ms", p99.0))
            .baseline(Some(p99.1), format!("{:.1} ms", p99.1))
            .delta_ms(),
    ];
    Ok(Outcome {
        rows,
        detail: serde_json::json!({
            "sockets": sockets,
            "rate": rate,
            "step_seconds": step.as_secs_f64(),
            "compressed": zipped,
            "plain": plain,
            "gateway_deflate_input_bytes": compressed_in,
            "gateway_deflate_output_bytes": compressed_out,
        }),
    })
}

/// A dashboard-like record: a device's readings, with the latency stamp
/// first (`util::stamp` finds it).
fn reading(seq: u64, intended_us: u64) -> String {
    let device = seq % 10_000;
    let x = seq.wrapping_mul(2_654_435_761) % 1000;
    let status = ["ok", "ok", "ok", "warn", "fault"][(x % 5) as usize];
    format!(
        r#"{{"t":{intended_us},"device":"sensor-{device:05}","site":"plant-north","line":"assembly-{}","status":"{status}","temp":{}.{},"humidity":{}.{},"battery":{},"firmware":"2.4.{}","seen_by":"gw-{}"}}"#,
        device % 12,
        18 + x % 9,
        x % 10,
        40 + x % 20,
        (x / 10) % 10,
        50 + x % 50,
        x % 7,
        x % 3,
    )
}

/// Sockets subscribed to one topic, read by hand.
struct RawFleet {
    readers: Vec<JoinHandle<()>>,
    recorder: Arc<Recorder>,
    wire_bytes: Arc<AtomicU64>,
}

impl Drop for RawFleet {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

impl RawFleet {
    async fn open(
        addr: std::net::SocketAddr,
        token: Option<&str>,
        topic: &str,
        n: usize,
        offer: bool,
    ) -> Result<Self> {
        let recorder = Arc::new(Recorder::new(16));
        let wire_bytes = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::with_capacity(n);
        for task in 0..n {
            let mut socket = RawSocket::connect(addr, token, offer).await?;
            if socket.compressed != offer {
                bail!("offered compression: {offer}; the gateway took it: {}", socket.compressed);
            }
            socket.send(&format!(r#"{{"type":"subscribe","id":"s","topic":"{topic}"}}"#)).await?;
            loop {
                let text =
                    socket.next_text(&mut Decompress::new(false)).await?.context("closed")?;
                if util::frame_type(&text) == "subscribed" {
                    break;
                }
            }
            let (recorder, wire_bytes) = (recorder.clone(), wire_bytes.clone());
            readers.push(tokio::spawn(async move {
                let mut window = Decompress::new(false);
                socket.bytes = 0;
                while let Ok(Some(text)) = socket.next_text(&mut window).await {
                    if let Some(t) = util::stamp(text.as_bytes()) {
                        recorder.record(task, util::now_us().saturating_sub(t));
                    }
                    wire_bytes.fetch_add(std::mem::take(&mut socket.bytes), Ordering::Relaxed);
                }
            }));
        }
        Ok(Self { readers, recorder, wire_bytes })
    }

    /// `rate` records/s for `duration`, then until every socket has them
    /// all or 5 s passed.
    async fn step(
        &self,
        producer: &rdkafka::producer::FutureProducer,
        topic: &str,
        rate: f64,
        duration: Duration,
        pid: u32,
    ) -> Figures {
        let _ = self.recorder.take();
        let (events, bytes) = (self.recorder.events(), self.wire_bytes.load(Ordering::Relaxed));
        let cpu = Cpu::start(Some(pid));
        let count = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        let (producer, name) = (producer.clone(), topic.to_owned());
        let pacer = pacer::spawn(rate, count, util::now_us() + 20_000, move |seq, intended| {
            let value = reading(seq, intended);
            producer.send_result(FutureRecord::<(), str>::to(&name).payload(&value)).is_ok()
        });
        let sent = tokio::task::spawn_blocking(move || pacer.join().unwrap_or_default().sent)
            .await
            .unwrap_or_default();
        let expected = sent * self.readers.len() as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.recorder.events() - events < expected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let server_s = cpu.server_seconds().unwrap_or(f64::NAN);
        let deliveries = self.recorder.events() - events;
        let wire = self.wire_bytes.load(Ordering::Relaxed) - bytes;
        let per = deliveries.max(1) as f64;
        Figures {
            deliveries,
            expected,
            bytes_per_delivery: wire as f64 / per,
            server_cpu_us_per_delivery: server_s * 1e6 / per,
            p99_ms: Summary::of(&self.recorder.take()).p99_ms,
        }
    }
}

/// A WebSocket client on the wire.
struct RawSocket {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// The gateway took the compression offer.
    compressed: bool,
    /// Data-frame bytes read since last taken.
    bytes: u64,
}

impl RawSocket {
    async fn connect(addr: std::net::SocketAddr, token: Option<&str>, offer: bool) -> Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut extra = String::new();
        if offer {
            extra.push_str(&format!("Sec-WebSocket-Extensions: {OFFER}\r\n"));
        }
        if let Some(token) = token {
            extra.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: {}\r\n{extra}\r\n",
            ferry_protocol::SUBPROTOCOL
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buffer = Vec::new();
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
                .await
                .context("handshake timed out")??;
            if n == 0 {
                bail!("closed during the handshake");
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") {
            bail!("handshake refused: {head}");
        }
        let compressed = head.contains("sec-websocket-extensions: permessage-deflate");
        buffer.drain(..end);
        Ok(Self { stream, buffer, compressed, bytes: 0 })
    }

    async fn send(&mut self, text: &str) -> Result<()> {
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        // A zero mask key: the payload goes as is.
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(payload);
        Ok(self.stream.write_all(&frame).await?)
    }

    /// The next text frame, inflated when compressed; `None` at the end.
    async fn next_text(&mut self, window: &mut Decompress) -> Result<Option<String>> {
        loop {
            if let Some((rsv1, opcode, header, len)) = header(&self.buffer) {
                if self.buffer.len() >= header + len {
                    let frame: Vec<u8> = self.buffer.drain(..header + len).collect();
                    match opcode {
                        0x1 => {
                            self.bytes += frame.len() as u64;
                            let payload = &frame[header..];
                            let text =
                                if rsv1 { inflate(window, payload)? } else { payload.to_vec() };
                            return Ok(Some(String::from_utf8(text)?));
                        }
                        0x8 => return Ok(None),
                        _ => continue,
                    }
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// (RSV1, opcode, header length, payload length) of the server frame at the
/// front of `buffer`.
fn header(buffer: &[u8]) -> Option<(bool, u8, usize, usize)> {
    let [first, second, ..] = *buffer else { return None };
    let (len, size) = match second & 0x7f {
        126 => (u16::from_be_bytes(buffer.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buffer.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    Some((first & 0x40 != 0, first & 0x0f, size, len))
}

fn inflate(window: &mut Decompress, payload: &[u8]) -> Result<Vec<u8>> {
    window.reset(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(payload.len() * 8 + 64);
    window.decompress_vec(&input, &mut out, FlushDecompress::Sync)?;
    Ok(out)
}
