//! publish: 100 sockets each keep `--publish-window` 200-byte JSON publishes
//! in flight (acks=all); acked publishes per second, against the raw
//! producer keeping the same number of records in flight with the same
//! settings. Rounds alternate raw and gateway; medians are reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use super::Cpu;
use crate::report::Row;
use crate::stats::pct;
use crate::stats::{median, Recorder, Summary};
use crate::ws::{publish_frame, Buffers, Ws};
use crate::{progress, util, Ctx, Outcome};

const SOCKETS: usize = 100;

#[derive(Debug, Clone, Copy, Serialize)]
struct Round {
    per_second: f64,
    errors: u64,
    latency: Summary,
    /// CPU of the gateway process (with the embedded Kafka in it) and of the
    /// bench, in % of one core.
    gateway_cpu_pct: Option<f64>,
    bench_cpu_pct: Option<f64>,
}

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut gateway = ctx.gateway(50_000)?;
    let kafka = ctx.kafka(&gateway);
    let connector = ctx.connector(&gateway);
    let topic = ctx.topic("publish");
    ctx.create_topic(&connector, &topic).await?;
    let window = ctx.opts.publish_window.max(1);
    let rounds = ctx.pick(3, 1);
    let warmup = Duration::from_secs(ctx.pick(2, 1));
    let measure = Duration::from_secs(ctx.pick(5, 2));
    let value_bytes = ctx.opts.value_bytes;

    let mut sockets = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        sockets.push(connector.connect(Buffers::Busy).await?);
    }
    let producer = kafka.producer()?;
    let (mut raw, mut ferry) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let cpu = Cpu::start(Some(gateway.pid()));
        let mut r = raw_round(&producer, &topic, window, warmup, measure, value_bytes).await;
        (r.gateway_cpu_pct, r.bench_cpu_pct) = cpu.stop();
        progress(format_args!(
            "publish round {round}: raw producer {}/s (errors {}), CPU gateway+Kafka {} bench {}",
            util::thousands(r.per_second),
            r.errors,
            pct(r.gateway_cpu_pct),
            pct(r.bench_cpu_pct)
        ));
        raw.push(r);
        let cpu = Cpu::start(Some(gateway.pid()));
        let (mut r, back) =
            gateway_round(sockets, &topic, window, warmup, measure, value_bytes).await?;
        (r.gateway_cpu_pct, r.bench_cpu_pct) = cpu.stop();
        sockets = back;
        progress(format_args!(
            "publish round {round}: gateway {}/s acked (errors {}), CPU gateway+Kafka {} bench {}",
            util::thousands(r.per_second),
            r.errors,
            pct(r.gateway_cpu_pct),
            pct(r.bench_cpu_pct)
        ));
        ferry.push(r);
        gateway.check_alive()?;
    }
    drop(sockets);
    gateway.stop(Duration::from_secs(10));

    let rate = |rs: &[Round]| median(&rs.iter().map(|r| r.per_second).collect::<Vec<_>>());
    let p = |rs: &[Round], f: fn(&Summary) -> f64| {
        median(&rs.iter().map(|r| f(&r.latency)).collect::<Vec<_>>())
    };
    let (f, b) = (rate(&ferry), rate(&raw));
    let rows = vec![
        Row::new(
            "publish",
            &format!("acked publishes/s ({SOCKETS} sockets × {window} in flight, {value_bytes} B)"),
            Some(f),
            util::thousands(f),
        )
        .baseline(Some(b), format!("{} (raw producer)", util::thousands(b)))
        .ratio()
        .goal("≥ 0.70×", b > 0.0 && f / b >= 0.7),
        Row::new(
            "publish",
            "publish→ack p50 / p99 (ms, under full load)",
            Some(p(&ferry, |s| s.p99_ms)),
            format!(
                "{} / {}",
                crate::stats::fmt_ms(p(&ferry, |s| s.p50_ms)),
                crate::stats::fmt_ms(p(&ferry, |s| s.p99_ms))
            ),
        )
        .baseline(
            Some(p(&raw, |s| s.p99_ms)),
            format!(
                "{} / {} (raw producer)",
                crate::stats::fmt_ms(p(&raw, |s| s.p50_ms)),
                crate::stats::fmt_ms(p(&raw, |s| s.p99_ms))
            ),
        ),
    ];
    Ok(Outcome {
        rows,
        detail: serde_json::json!({
            "sockets": SOCKETS,
            "window": window,
            "value_bytes": value_bytes,
            "warmup_s": warmup.as_secs_f64(),
            "measure_s": measure.as_secs_f64(),
            "raw_producer": raw,
            "gateway": ferry,
        }),
    })
}

/// The measurement window of a round, on the bench clock (µs).
#[derive(Debug, Clone, Copy)]
struct Window {
    from: u64,
    to: u64,
}

impl Window {
    fn new(warmup: Duration, measure: Duration) -> Self {
        let from = util::now_us() + warmup.as_micros() as u64;
        Self { from, to: from + measure.as_micros() as u64 }
    }

    fn contains(&self, t: u64) -> bool {
        (self.from..self.to).contains(&t)
    }

    fn per_second(&self, n: u64) -> f64 {
        n as f64 * 1e6 / (self.to - self.from) as f64
    }
}

async fn raw_round(
    producer: &FutureProducer,
    topic: &str,
    window: usize,
    warmup: Duration,
    measure: Duration,
    value_bytes: usize,
) -> Round {
    let w = Window::new(warmup, measure);
    let recorder = Arc::new(Recorder::new(16));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..SOCKETS)
        .map(|task| {
            let (producer, topic) = (producer.clone(), topic.to_owned());
            let (recorder, errors) = (recorder.clone(), errors.clone());
            tokio::spawn(async move {
                let mut inflight = FuturesUnordered::new();
                loop {
                    while inflight.len() < window && util::now_us() < w.to {
                        let sent = util::now_us();
                        let value = util::value(sent, value_bytes);
                        let record = FutureRecord::<(), str>::to(&topic).payload(&value);
                        match producer.send_result(record) {
                            Ok(delivery) => inflight.push(delivery.map(move |d| (sent, d))),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                    let Some((sent, delivery)) = inflight.next().await else {
                        if util::now_us() >= w.to {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    let now = util::now_us();
                    match delivery {
                        Ok(Ok(_)) if w.contains(now) => recorder.record(task, now - sent),
                        Ok(Ok(_)) => {}
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let h = recorder.take();
    Round {
        per_second: w.per_second(h.len()),
        errors: errors.load(Ordering::Relaxed),
        latency: Summary::of(&h),
        gateway_cpu_pct: None,
        bench_cpu_pct: None,
    }
}

/// One round over the gateway; the sockets are handed back, with nothing
/// left in flight.
async fn gateway_round(
    sockets: Vec<Ws>,
    topic: &str,
    window: usize,
    warmup: Duration,
    measure: Duration,
    value_bytes: usize,
) -> Result<(Round, Vec<Ws>)> {
    let w = Window::new(warmup, measure);
    let recorder = Arc::new(Recorder::new(16));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(task, ws)| {
            let topic = topic.to_owned();
            let (recorder, errors) = (recorder.clone(), errors.clone());
            tokio::spawn(publisher(ws, task, topic, window, w, value_bytes, recorder, errors))
        })
        .collect();
    let mut back = Vec::with_capacity(SOCKETS);
    for t in tasks {
        back.push(t.await??);
    }
    let h = recorder.take();
    Ok((
        Round {
            per_second: w.per_second(h.len()),
            errors: errors.load(Ordering::Relaxed),
            latency: Summary::of(&h),
            gateway_cpu_pct: None,
            bench_cpu_pct: None,
        },
        back,
    ))
}

/// Keeps `window` publishes in flight until the window's end, then waits
/// for the last acks.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    mut ws: Ws,
    task: usize,
    topic: String,
    window: usize,
    w: Window,
    value_bytes: usize,
    recorder: Arc<Recorder>,
    errors: Arc<AtomicU64>,
) -> Result<Ws> {
    let mut inflight = 0usize;
    let mut seq = 0u64;
    loop {
        let sending = util::now_us() < w.to;
        if sending && inflight < window {
            while inflight < window {
                let sent = util::now_us();
                let frame = publish_frame(
                    &format!("{seq}.{sent}"),
                    &topic,
                    &util::value(sent, value_bytes),
                );
                ws.feed(Message::Text(frame.into())).await?;
                seq += 1;
                inflight += 1;
            }
            ws.flush().await?;
        }
        if inflight == 0 {
            return Ok(ws);
        }
        // One frame (waiting), then whatever else is already buffered.
        let first = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("no ack for 30 s"))?;
        let mut next = first;
        for _ in 0..256 {
            match next {
                Some(Ok(Message::Text(text))) => {
                    let now = util::now_us();
                    match util::frame_type(&text) {
                        "ack" => {
                            inflight -= 1;
                            let sent = util::frame_id(&text)
                                .and_then(|id| id.split_once('.'))
                                .and_then(|(_, t)| t.parse::<u64>().ok());
                            if let Some(sent) = sent.filter(|_| w.contains(now)) {
                                recorder.record(task, now - sent);
                            }
                        }
                        "error" => {
                            inflight -= 1;
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the gateway closed a publishing socket"),
            }
            match ws.next().now_or_never() {
                Some(n) => next = n,
                None => break,
            }
        }
    }
}
