//! publish: 100 sockets each keep `--publish-window` 200-byte JSON publishes
//! in flight (acks=all); acked publishes per second and per CPU-second of
//! the server process, against `ferry-publisher` (the like-for-like
//! baseline: its own process, its own 100 sockets, the same Kafka and
//! producer settings). The raw producer in this process, with the same
//! number of records in flight and no sockets, is the ceiling. Rounds
//! alternate raw, publisher and gateway; medians are reported.
//!
//! Then the same sockets publish at fixed total rates (`--publish-rates`),
//! each publish sent at its intended time (open loop: its latency counts
//! from that time, so a server that falls behind is not flattered), the
//! publisher and the gateway alternated: acks per server CPU-second and
//! p99 at a load both can carry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use super::Cpu;
use crate::baseline::{Baseline, Kind};
use crate::gateway::cpu_time;
use crate::report::Row;
use crate::stats::{fmt_ms, median, pct, Recorder, Summary};
use crate::ws::{publish_frame, Buffers, Connector, Ws};
use crate::{progress, util, Ctx, Outcome};

const SOCKETS: usize = 100;

#[derive(Debug, Clone, Copy, Serialize)]
struct Round {
    per_second: f64,
    errors: u64,
    latency: Summary,
    /// CPU-seconds the server process used in the measured window.
    server_cpu_s: Option<f64>,
    /// CPU of the server process and of the bench over the whole round, in
    /// % of one core.
    server_cpu_pct: Option<f64>,
    bench_cpu_pct: Option<f64>,
}

impl Round {
    /// Acks in the window per CPU-second of the server in the window.
    fn per_cpu_second(&self, w: Duration) -> Option<f64> {
        self.server_cpu_s.filter(|s| *s > 0.0).map(|s| self.per_second * w.as_secs_f64() / s)
    }
}

/// Opens `SOCKETS` publishing sockets; returns them with the server's RSS
/// growth per connection (KiB): "before" with one socket open (what a
/// server sets up on its first connection is not per connection), "after"
/// with all, each read 1 s after the change.
async fn connect(
    connector: &Connector,
    rss: impl Fn() -> Result<u64>,
) -> Result<(Vec<Ws>, Option<f64>)> {
    let mut sockets = Vec::with_capacity(SOCKETS);
    sockets.push(connector.connect(Buffers::Busy).await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss()?;
    while sockets.len() < SOCKETS {
        sockets.push(connector.connect(Buffers::Busy).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss()?;
    Ok((sockets, Some((after as f64 - before as f64) / (SOCKETS - 1) as f64)))
}

/// CPU-seconds process `pid` uses within the window `w`.
fn window_cpu(pid: u32, w: Window) -> tokio::task::JoinHandle<Option<f64>> {
    let until =
        |t: u64| tokio::time::sleep(Duration::from_micros(t.saturating_sub(util::now_us())));
    tokio::spawn(async move {
        until(w.from).await;
        let before = cpu_time(pid)?;
        until(w.to).await;
        Some(cpu_time(pid)?.saturating_sub(before).as_secs_f64())
    })
}

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let (mut gateway, kafka_host) = ctx.gateway_apart_from_kafka(50_000)?;
    let kafka = ctx.kafka(&gateway);
    let connector = ctx.connector(&gateway);
    let topic = ctx.topic("publish");
    let creator = ctx.topic_creator(&gateway, kafka_host.as_ref());
    ctx.create_topic(&creator, &topic).await?;
    let window = ctx.opts.publish_window.max(1);
    let rounds = ctx.pick(3, 1);
    let warmup = Duration::from_secs(ctx.pick(2, 1));
    let measure = Duration::from_secs(ctx.pick(5, 2));
    let value_bytes = ctx.opts.value_bytes;

    let (mut sockets, gateway_rss) = connect(&connector, || gateway.rss_kib()).await?;
    let mut publisher = Baseline::start(Kind::Publisher, &kafka, ctx.opts.pin)?;
    let publisher_connector = Connector::new(publisher.addr, None, ctx.opts.sources);
    let (mut base_sockets, publisher_rss) =
        connect(&publisher_connector, || publisher.rss_kib()).await?;
    let producer = kafka.producer()?;
    let load = Load { topic: &topic, window, warmup, measure, value_bytes };
    let (mut raw, mut base, mut ferry) = (Vec::new(), Vec::new(), Vec::new());
    let log = |round: usize, who: &str, r: &Round| {
        progress(format_args!(
            "publish round {round}: {who} {}/s acked (errors {}), p99 {} ms, {} acks per server \
             CPU-second, CPU server {} bench {}",
            util::thousands(r.per_second),
            r.errors,
            fmt_ms(r.latency.p99_ms),
            r.per_cpu_second(measure).map_or("-".into(), util::thousands),
            pct(r.server_cpu_pct),
            pct(r.bench_cpu_pct)
        ))
    };
    for round in 1..=rounds {
        let cpu = Cpu::start(None);
        let w = Window::new(warmup, measure);
        let mut r = raw_round(&producer, &topic, window, w, value_bytes).await;
        (_, r.bench_cpu_pct) = cpu.stop();
        log(round, "raw producer (ceiling)", &r);
        raw.push(r);

        let (r, back) = load.round(publisher.pid(), base_sockets, None).await?;
        base_sockets = back;
        log(round, "publisher", &r);
        base.push(r);
        publisher.check_alive()?;

        let (r, back) = load.round(gateway.pid(), sockets, None).await?;
        sockets = back;
        log(round, "gateway", &r);
        ferry.push(r);
        gateway.check_alive()?;
    }
    // Fixed rates: the publisher and the gateway alternated, each round
    // measured as above.
    let rates: Vec<f64> = if ctx.opts.publish_rates.is_empty() {
        ctx.pick(vec![10_000.0, 40_000.0], vec![10_000.0])
    } else {
        ctx.opts.publish_rates.iter().copied().filter(|r| *r > 0.0).collect()
    };
    let mut paced = Vec::new();
    for &rate in &rates {
        let (mut at_base, mut at_ferry) = (Vec::new(), Vec::new());
        for round in 1..=ctx.pick(2, 1) {
            let (r, back) = load.round(publisher.pid(), base_sockets, Some(rate)).await?;
            base_sockets = back;
            log(round, &format!("at {} pub/s, publisher", util::thousands(rate)), &r);
            at_base.push(r);
            publisher.check_alive()?;

            let (r, back) = load.round(gateway.pid(), sockets, Some(rate)).await?;
            sockets = back;
            log(round, &format!("at {} pub/s, gateway", util::thousands(rate)), &r);
            at_ferry.push(r);
            gateway.check_alive()?;
        }
        paced.push((rate, at_ferry, at_base));
    }
    drop(sockets);
    drop(base_sockets);
    drop(publisher);
    gateway.stop(Duration::from_secs(10));
    if let Some(host) = kafka_host {
        host.stop(Duration::from_secs(10));
    }
    for (who, rs) in [("the gateway", &ferry), ("the publisher", &base)] {
        if rs.iter().any(|r| r.per_second == 0.0) {
            bail!("{who} acked no publish in a round");
        }
    }

    let rate = |rs: &[Round]| median(&rs.iter().map(|r| r.per_second).collect::<Vec<_>>());
    let per_cpu = |rs: &[Round]| {
        let v: Vec<f64> = rs.iter().filter_map(|r| r.per_cpu_second(measure)).collect();
        (!v.is_empty()).then(|| median(&v))
    };
    let p = |rs: &[Round], f: fn(&Summary) -> f64| {
        median(&rs.iter().map(|r| f(&r.latency)).collect::<Vec<_>>())
    };
    let (f, b, c) = (rate(&ferry), rate(&base), rate(&raw));
    let (fc, bc) = (per_cpu(&ferry), per_cpu(&base));
    let (fp99, bp99) = (p(&ferry, |s| s.p99_ms), p(&base, |s| s.p99_ms));
    let kib = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} KiB"));
    let mut rows = vec![
        Row::new(
            "publish",
            &format!("acked publishes/s ({SOCKETS} sockets × {window} in flight, {value_bytes} B)"),
            Some(f),
            util::thousands(f),
        )
        .baseline(Some(b), format!("{} (publisher)", util::thousands(b)))
        .ratio(),
        Row::new(
            "publish",
            "acks per server CPU-second",
            fc,
            fc.map_or("-".into(), util::thousands),
        )
        .baseline(bc, bc.map_or("-".into(), |v| format!("{} (publisher)", util::thousands(v))))
        .ratio()
        .goal("≥ 1.00×", matches!((fc, bc), (Some(f), Some(b)) if f >= b)),
        Row::new(
            "publish",
            "publish→ack p50 / p99 (ms, under full load)",
            Some(fp99),
            format!("{} / {}", fmt_ms(p(&ferry, |s| s.p50_ms)), fmt_ms(fp99)),
        )
        .baseline(
            Some(bp99),
            format!("{} / {} (publisher)", fmt_ms(p(&base, |s| s.p50_ms)), fmt_ms(bp99)),
        )
        .delta_ms()
        .goal("p99 ≤ publisher's + 1 ms", fp99 <= bp99 + 1.0),
        Row::new("publish", "RSS per connection", gateway_rss, kib(gateway_rss))
            .baseline(publisher_rss, format!("{} (publisher)", kib(publisher_rss)))
            .ratio(),
    ];
    for (rate, at_ferry, at_base) in &paced {
        let (fc, bc) = (per_cpu(at_ferry), per_cpu(at_base));
        let (fp99, bp99) = (p(at_ferry, |s| s.p99_ms), p(at_base, |s| s.p99_ms));
        let with_p99 = |v: Option<f64>, p99: f64| {
            v.map_or("-".into(), |v| format!("{} (p99 {} ms)", util::thousands(v), fmt_ms(p99)))
        };
        rows.push(
            Row::new(
                "publish",
                &format!("acks per server CPU-second at {} pub/s", util::thousands(*rate)),
                fc,
                with_p99(fc, fp99),
            )
            .baseline(bc, format!("{} (publisher)", with_p99(bc, bp99)))
            .ratio(),
        );
    }
    rows.extend([Row::new("publish", "ceiling: acked publishes/s", Some(f), util::thousands(f))
        .baseline(Some(c), format!("{} (raw producer in-process, no sockets)", util::thousands(c)))
        .ratio()]);
    let paced_detail: Vec<_> = paced
        .iter()
        .map(|(rate, f, b)| serde_json::json!({"rate": rate, "gateway": f, "publisher": b}))
        .collect();
    Ok(Outcome {
        rows,
        detail: serde_json::json!({
            "sockets": SOCKETS,
            "window": window,
            "value_bytes": value_bytes,
            "warmup_s": warmup.as_secs_f64(),
            "measure_s": measure.as_secs_f64(),
            "kafka_host_process": ctx.opts.kafka.is_none(),
            "rss_per_connection_kib": {"gateway": gateway_rss, "publisher": publisher_rss},
            "raw_producer": raw,
            "publisher": base,
            "gateway": ferry,
            "fixed_rates": paced_detail,
        }),
    })
}

/// What every socket round offers a server.
#[derive(Debug, Clone, Copy)]
struct Load<'a> {
    topic: &'a str,
    window: usize,
    warmup: Duration,
    measure: Duration,
    value_bytes: usize,
}

impl Load<'_> {
    /// One round over a server's sockets (at `rate` publishes/s, or as fast
    /// as `window` allows), with the server's CPU over the measured window
    /// and the bench's over the round.
    async fn round(
        &self,
        pid: u32,
        sockets: Vec<Ws>,
        rate: Option<f64>,
    ) -> Result<(Round, Vec<Ws>)> {
        let cpu = Cpu::start(Some(pid));
        let w = Window::new(self.warmup, self.measure);
        let server_cpu = window_cpu(pid, w);
        let (mut r, back) =
            socket_round(sockets, self.topic, self.window, w, self.value_bytes, rate).await?;
        r.server_cpu_s = server_cpu.await.ok().flatten();
        (r.server_cpu_pct, r.bench_cpu_pct) = cpu.stop();
        Ok((r, back))
    }
}

/// The measurement window of a round, on the bench clock (µs).
#[derive(Debug, Clone, Copy)]
struct Window {
    /// When the round starts (the warm-up begins).
    start: u64,
    from: u64,
    to: u64,
}

impl Window {
    fn new(warmup: Duration, measure: Duration) -> Self {
        let start = util::now_us();
        let from = start + warmup.as_micros() as u64;
        Self { start, from, to: from + measure.as_micros() as u64 }
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
    w: Window,
    value_bytes: usize,
) -> Round {
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
        server_cpu_s: None,
        server_cpu_pct: None,
        bench_cpu_pct: None,
    }
}

/// One round over a server's sockets (the gateway's or the publisher's);
/// the sockets are handed back, with nothing left in flight.
async fn socket_round(
    sockets: Vec<Ws>,
    topic: &str,
    window: usize,
    w: Window,
    value_bytes: usize,
    rate: Option<f64>,
) -> Result<(Round, Vec<Ws>)> {
    // Each socket's share of a fixed rate: one publish every `gap` µs,
    // sockets staggered across the gap.
    let gap = rate.map(|r| (SOCKETS as f64 * 1e6 / r) as u64);
    let recorder = Arc::new(Recorder::new(16));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(task, ws)| {
            let topic = topic.to_owned();
            let (recorder, errors) = (recorder.clone(), errors.clone());
            let pace =
                gap.map(|gap| Pace { first: w.start + gap * task as u64 / SOCKETS as u64, gap });
            tokio::spawn(publisher(ws, task, topic, window, w, pace, value_bytes, recorder, errors))
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
            server_cpu_s: None,
            server_cpu_pct: None,
            bench_cpu_pct: None,
        },
        back,
    ))
}

/// A socket's schedule at a fixed rate: a publish due at `first`, then
/// every `gap` µs (bench clock).
#[derive(Debug, Clone, Copy)]
struct Pace {
    first: u64,
    gap: u64,
}

/// Keeps `window` publishes in flight until the window's end (or, paced,
/// sends each publish at its intended time, at most `window` in flight),
/// then waits for the last acks.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    mut ws: Ws,
    task: usize,
    topic: String,
    window: usize,
    w: Window,
    pace: Option<Pace>,
    value_bytes: usize,
    recorder: Arc<Recorder>,
    errors: Arc<AtomicU64>,
) -> Result<Ws> {
    let mut inflight = 0usize;
    let mut seq = 0u64;
    let mut due = pace.map(|p| p.first);
    loop {
        let now = util::now_us();
        let mut sent_any = false;
        while inflight < window && now < w.to {
            // Paced: the publish's intended time, once it has come (a late
            // one keeps it, so its wait counts in its latency).
            let sent = match (&mut due, pace) {
                (Some(t), Some(p)) if *t <= now => std::mem::replace(t, *t + p.gap),
                (Some(_), _) => break,
                _ => util::now_us(),
            };
            let frame =
                publish_frame(&format!("{seq}.{sent}"), &topic, &util::value(sent, value_bytes));
            ws.feed(Message::Text(frame.into())).await?;
            seq += 1;
            inflight += 1;
            sent_any = true;
        }
        if sent_any {
            ws.flush().await?;
        }
        if inflight == 0 && util::now_us() >= w.to {
            return Ok(ws);
        }
        // One frame (waiting, until the next publish is due), then whatever
        // else is already buffered.
        let wait = match due {
            Some(t) if inflight < window && t < w.to => {
                Duration::from_micros(t.saturating_sub(util::now_us()))
            }
            _ if inflight == 0 => Duration::from_micros(w.to.saturating_sub(util::now_us())),
            _ => Duration::from_secs(30),
        };
        let first = match tokio::time::timeout(wait, ws.next()).await {
            Ok(first) => first,
            Err(_) if wait < Duration::from_secs(30) => continue,
            Err(_) => bail!("no ack for 30 s"),
        };
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
                None => bail!("the server closed a publishing socket"),
            }
            match ws.next().now_or_never() {
                Some(n) => next = n,
                None => break,
            }
        }
    }
}
