//! The scenarios, and what several of them share: a fleet of subscribed
//! sockets that record the latency of every record they receive, and the
//! paced producers (to Kafka, or to the raw broadcast server).

mod deflate;
mod failover;
mod fanout;
mod idle;
mod latency;
mod publish;
mod ramp;
mod roundtrip;
mod snapshot;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ferry_protocol::MessageFrame;
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::broadcast::RawBroadcast;
use crate::gateway::cpu_time;
use crate::stats::{Recorder, Summary};
use crate::ws::{Buffers, Connector};
use crate::{pacer, util, Ctx, Outcome, Scenario};

pub(crate) async fn run(ctx: &Ctx, scenario: Scenario) -> Result<Outcome> {
    match scenario {
        Scenario::Publish => publish::run(ctx).await,
        Scenario::Fanout => fanout::run(ctx).await,
        Scenario::FanoutLatency => latency::run(ctx).await,
        Scenario::RoundTrip => roundtrip::run(ctx).await,
        Scenario::Idle => idle::run(ctx).await,
        Scenario::Ramp => ramp::run(ctx).await,
        Scenario::Failover => failover::run(ctx).await,
        Scenario::Deflate => deflate::run(ctx).await,
        Scenario::Snapshot => snapshot::run(ctx).await,
    }
}

/// Sockets subscribed to one topic, each recording the latency of every
/// record it receives (from the intended send time in the record).
#[derive(Debug)]
pub(crate) struct Fleet {
    connector: Arc<Connector>,
    topic: String,
    readers: Vec<JoinHandle<()>>,
    pub(crate) recorder: Arc<Recorder>,
    /// Sockets the server closed (e.g. 4000, slow consumer).
    pub(crate) closed: Arc<AtomicU64>,
}

impl Fleet {
    pub(crate) fn new(connector: Arc<Connector>, topic: &str) -> Self {
        Self {
            connector,
            topic: topic.to_owned(),
            readers: Vec::new(),
            recorder: Arc::new(Recorder::new(16)),
            closed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sockets still open.
    pub(crate) fn alive(&self) -> usize {
        self.readers.iter().filter(|r| !r.is_finished()).count()
    }

    /// Opens and subscribes sockets until `n` are open (replacing any the
    /// server closed).
    pub(crate) async fn fill(&mut self, n: usize) -> Result<()> {
        self.readers.retain(|r| !r.is_finished());
        let missing = n.saturating_sub(self.readers.len());
        if missing == 0 {
            return Ok(());
        }
        let sockets: Vec<_> = futures::stream::iter(0..missing)
            .map(|_| self.connector.subscriber(&self.topic, Buffers::Busy))
            .buffer_unordered(64)
            .collect()
            .await;
        for (i, ws) in sockets.into_iter().enumerate() {
            let mut ws = ws?;
            let (recorder, closed) = (self.recorder.clone(), self.closed.clone());
            let task = self.readers.len() + i;
            self.readers.push(tokio::spawn(async move {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) => {
                            let now = util::now_us();
                            // Replies carry no stamp and are skipped.
                            if let Some(t) = util::stamp(text.as_bytes()) {
                                recorder.record(task, now.saturating_sub(t));
                            }
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }));
        }
        Ok(())
    }

    /// Closes every socket.
    pub(crate) fn close(&mut self) {
        for r in self.readers.drain(..) {
            r.abort();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.close();
    }
}

/// Where paced records go.
#[derive(Clone)]
pub(crate) enum Sink {
    /// Produced to Kafka with the raw producer (the gateway's settings).
    Kafka { producer: FutureProducer, topic: String },
    /// Encoded once as a gateway `message` frame and broadcast by the raw
    /// server.
    Broadcast { server: Arc<RawBroadcast>, topic: String },
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kafka { topic, .. } => write!(f, "Kafka({topic})"),
            Self::Broadcast { topic, .. } => write!(f, "Broadcast({topic})"),
        }
    }
}

/// One paced run: `rate` records/s for `duration` into `sink`, then wait
/// until `expected_per_record × sent` events reached `recorder` or `drain`
/// passed.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Step {
    pub(crate) rate: f64,
    pub(crate) seconds: f64,
    pub(crate) sent: u64,
    pub(crate) refused: u64,
    pub(crate) received: u64,
    pub(crate) expected: u64,
    pub(crate) per_second: f64,
    pub(crate) pacer_max_lag_ms: f64,
    /// CPU the server under test (gateway or baseline process) used during
    /// the step, in % of one core.
    pub(crate) gateway_cpu_pct: Option<f64>,
    /// The same in CPU-seconds (user + system, from `/proc/PID/stat`), from
    /// the step's start to the last delivery counted (or the drain's end).
    pub(crate) server_cpu_s: Option<f64>,
    /// CPU this bench process used, in % of one core.
    pub(crate) bench_cpu_pct: Option<f64>,
    pub(crate) latency: Summary,
}

impl Step {
    /// Every expected event arrived.
    pub(crate) fn complete(&self) -> bool {
        self.expected > 0 && self.received >= self.expected
    }

    /// Deliveries per CPU-second of the server under test.
    pub(crate) fn per_server_cpu_second(&self) -> Option<f64> {
        self.server_cpu_s.filter(|s| *s > 0.0).map(|s| self.received as f64 / s)
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn paced_step(
    gateway_pid: Option<u32>,
    sink: &Sink,
    recorder: &Recorder,
    rate: f64,
    duration: Duration,
    expected_per_record: u64,
    value_bytes: usize,
    drain: Duration,
) -> Step {
    let _ = recorder.take();
    let before = recorder.events();
    let cpu = Cpu::start(gateway_pid);
    let count = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let start = util::now_us() + 20_000;
    let refused = Arc::new(AtomicU64::new(0));
    let pacer = {
        let sink = sink.clone();
        let refused = refused.clone();
        pacer::spawn(rate, count, start, move |seq, intended| {
            let value = util::value(intended, value_bytes);
            match &sink {
                Sink::Kafka { producer, topic } => {
                    let record = FutureRecord::<(), str>::to(topic).payload(&value);
                    if producer.send_result(record).is_err() {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Sink::Broadcast { server, topic } => {
                    let headers = [];
                    let frame = MessageFrame {
                        topic,
                        partition: (seq % 3) as i32,
                        offset: seq as i64,
                        timestamp: Some((intended / 1000) as i64),
                        key: None,
                        headers: &headers,
                        value: Some(value.as_bytes()),
                    };
                    let frame = Utf8Bytes::from(frame.encode());
                    server.broadcast(&frame);
                }
            }
            true
        })
    };
    let paced = tokio::task::spawn_blocking(move || pacer.join().unwrap_or_default())
        .await
        .unwrap_or_default();
    let sent = paced.sent - refused.load(Ordering::Relaxed);
    let expected = sent * expected_per_record;
    let deadline = tokio::time::Instant::now() + drain;
    while recorder.events() - before < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = recorder.events() - before;
    let h = recorder.take();
    let (gateway_cpu_pct, bench_cpu_pct) = cpu.stop();
    let server_cpu_s = cpu.server_seconds();
    Step {
        rate,
        seconds: duration.as_secs_f64(),
        sent,
        refused: refused.load(Ordering::Relaxed),
        received,
        expected,
        per_second: received as f64 / duration.as_secs_f64(),
        pacer_max_lag_ms: paced.max_lag_us as f64 / 1000.0,
        gateway_cpu_pct,
        server_cpu_s,
        bench_cpu_pct,
        latency: Summary::of(&h),
    }
}

/// Produce→consume latency without the gateway: the raw producer and the
/// raw consumer (both with the gateway's settings) at `rate` for `duration`.
pub(crate) async fn raw_produce_consume(
    ctx: &Ctx,
    kafka: &crate::kafka::KafkaSpec,
    topic: &str,
    rate: f64,
    duration: Duration,
) -> Result<Step> {
    let consumer = crate::kafka::consumer_at_end(kafka, topic, crate::TOPIC_PARTITIONS).await?;
    let recorder = Arc::new(Recorder::new(1));
    let producer = kafka.producer()?;
    let drain = Duration::from_secs(5);
    let consume = tokio::spawn({
        let recorder = recorder.clone();
        let deadline = tokio::time::Instant::now() + duration + drain + Duration::from_secs(1);
        async move { crate::kafka::consume_latencies(consumer, &recorder, u64::MAX, deadline).await }
    });
    let sink = Sink::Kafka { producer, topic: topic.to_owned() };
    // The consumer needs its first fetch in place before records flow.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let step =
        paced_step(None, &sink, &recorder, rate, duration, 1, ctx.opts.value_bytes, drain).await;
    consume.abort();
    Ok(step)
}

/// CPU use of the server under test (the gateway or a baseline process)
/// and of the bench over an interval.
#[derive(Debug)]
pub(crate) struct Cpu {
    gateway: Option<(u32, Duration)>,
    bench: Option<Duration>,
    wall: std::time::Instant,
}

impl Cpu {
    pub(crate) fn start(gateway_pid: Option<u32>) -> Self {
        Self {
            gateway: gateway_pid.and_then(|pid| Some((pid, cpu_time(pid)?))),
            bench: cpu_time(std::process::id()),
            wall: std::time::Instant::now(),
        }
    }

    /// (gateway, bench) CPU in % of one core since `start`.
    pub(crate) fn stop(&self) -> (Option<f64>, Option<f64>) {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-6);
        let pct = |before: Duration, after: Option<Duration>| {
            after.map(|a| (a.saturating_sub(before)).as_secs_f64() / wall * 100.0)
        };
        (
            self.gateway.and_then(|(pid, b)| pct(b, cpu_time(pid))),
            self.bench.and_then(|b| pct(b, cpu_time(std::process::id()))),
        )
    }

    /// CPU-seconds the server used since `start`.
    pub(crate) fn server_seconds(&self) -> Option<f64> {
        let (pid, before) = self.gateway?;
        Some(cpu_time(pid)?.saturating_sub(before).as_secs_f64())
    }
}
