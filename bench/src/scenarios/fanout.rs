//! fan-out: 1 topic, 1,000 subscribed sockets, records produced at a fixed
//! rate. The rate doubles until a step fails (p99 ≥ 50 ms, a record not
//! delivered to every socket, or a socket closed), then is bisected; the
//! figure is deliveries/s at the highest passing rate.
//!
//! Three servers get the same search with as many sockets, interleaved (a
//! gateway step, a relay step, a raw step), so that the noise of a shared
//! machine hits them alike:
//! - the gateway, its own process;
//! - `ferry-relay`, the like-for-like baseline: its own process, its own
//!   Kafka consumer on a topic of its own in the same Kafka, fed by the same
//!   producer;
//! - the raw broadcast server inside this process, fed the encoded frames
//!   directly (no Kafka, no second process): the socket side's ceiling.
//!
//! Then the gateway and the relay run at fixed rates (`--compare-rates`),
//! and every step's deliveries are divided by the CPU-seconds the server's
//! process used (`/proc/PID/stat`): deliveries per server CPU-second, the
//! figure the ratios are taken on. RSS per connection is measured on both
//! as the sockets subscribe.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{paced_step, Fleet, Sink, Step};
use crate::baseline::{Baseline, Kind};
use crate::broadcast::RawBroadcast;
use crate::report::Row;
use crate::stats::{fmt_ms, pct};
use crate::ws::Connector;
use crate::{progress, util, Ctx, Outcome};

/// The p99 a passing step must stay under (ms).
const P99_LIMIT_MS: f64 = 50.0;

/// One side's rate search.
#[derive(Debug, Serialize)]
struct Search {
    #[serde(skip)]
    label: &'static str,
    /// The highest passing step, if any.
    best: Option<Step>,
    /// Every step: the step, whether it passed, sockets closed during it.
    steps: Vec<(Step, bool, usize)>,
    #[serde(skip)]
    state: Rates,
}

/// Which rate comes next.
#[derive(Debug)]
struct Rates {
    next: Option<f64>,
    fixed: Vec<f64>,
    pass: Option<f64>,
    fail: Option<f64>,
    bisected: usize,
    bisections: usize,
    max_steps: usize,
}

impl Rates {
    /// Records the outcome of a step at `rate`, and picks the next rate
    /// (doubling until a failure, then bisecting; or the next fixed rate).
    fn advance(&mut self, rate: f64, pass: bool, steps: usize) {
        if pass {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
        self.next = if steps >= self.max_steps {
            None
        } else if !self.fixed.is_empty() {
            self.fixed.get(steps).copied()
        } else {
            match (self.pass, self.fail) {
                (Some(p), None) => Some(p * 2.0),
                (None, Some(f)) => (f > 2.0).then_some(f / 2.0),
                (Some(p), Some(f)) => {
                    if self.bisected == self.bisections || f / p < 1.1 {
                        None
                    } else {
                        self.bisected += 1;
                        Some((p * f).sqrt())
                    }
                }
                (None, None) => None,
            }
        };
    }
}

impl Search {
    fn new(label: &'static str, ctx: &Ctx) -> Self {
        let fixed = ctx.opts.fanout_rates.clone();
        Self {
            label,
            best: None,
            steps: Vec::new(),
            state: Rates {
                next: Some(fixed.first().copied().unwrap_or(ctx.pick(25.0, 50.0))),
                fixed,
                pass: None,
                fail: None,
                bisected: 0,
                bisections: ctx.pick(3, 1),
                max_steps: ctx.pick(16, 7),
            },
        }
    }

    fn deliveries(&self) -> f64 {
        self.best.map_or(0.0, |s| s.per_second)
    }

    /// Fails when no step delivered anything: the server does not work.
    fn check_delivered(&self) -> Result<()> {
        if self.steps.iter().any(|(s, _, _)| s.received > 0) {
            Ok(())
        } else {
            anyhow::bail!("{}: no step delivered a single record", self.label)
        }
    }

    /// Runs the next step on `fleet`; false when the search is over.
    async fn step(
        &mut self,
        ctx: &Ctx,
        fleet: &mut Fleet,
        sink: &Sink,
        sockets: usize,
        gateway_pid: Option<u32>,
    ) -> Result<bool> {
        let Some(rate) = self.state.next else {
            return Ok(false);
        };
        let step_time =
            Duration::from_secs_f64(ctx.opts.step_seconds.unwrap_or(ctx.pick(3.0, 1.0)).max(0.1));
        let drain = Duration::from_secs_f64(ctx.pick(3.0, 1.5));
        // A failed step is tried again once (full runs): on a shared
        // machine one burst of someone else's work can spoil a p99.
        let attempts = ctx.pick(2, 1);
        let mut pass = false;
        for attempt in 1..=attempts {
            fleet.fill(sockets).await?;
            let closed_before = fleet.closed.load(Ordering::Relaxed);
            let alive = fleet.alive();
            let step = paced_step(
                gateway_pid,
                sink,
                &fleet.recorder,
                rate,
                step_time,
                alive as u64,
                ctx.opts.value_bytes,
                drain,
            )
            .await;
            let closed = (fleet.closed.load(Ordering::Relaxed) - closed_before) as usize;
            pass = step.complete() && closed == 0 && step.latency.p99_ms < P99_LIMIT_MS;
            progress(format_args!(
                "{}: {} rec/s → {} deliveries/s, {}, {}/{} delivered, {closed} sockets closed, \
                 CPU server {} bench {}: {}",
                self.label,
                util::thousands(rate),
                util::thousands(step.per_second),
                step.latency.text(),
                step.received,
                step.expected,
                pct(step.gateway_cpu_pct),
                pct(step.bench_cpu_pct),
                match (pass, attempt < attempts) {
                    (true, _) => "pass",
                    (false, true) => "FAIL, once more",
                    (false, false) => "FAIL",
                }
            ));
            self.steps.push((step, pass, closed));
            if pass && self.best.is_none_or(|b| step.per_second > b.per_second) {
                self.best = Some(step);
            }
            // Let the sockets' queues and Kafka settle between steps.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if pass {
                break;
            }
        }
        self.state.advance(rate, pass, self.steps.len());
        Ok(self.state.next.is_some())
    }
}

/// Counts the `sendto` calls of process `pid` with `perf stat` (the
/// `syscalls:sys_enter_sendto` tracepoint) while `work` runs. None when
/// `perf` is missing or may not trace (then the row says so).
async fn count_sendto<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (T, Option<u64>) {
    let perf = tokio::process::Command::new("perf")
        .args(["stat", "-x", ",", "-e", "syscalls:sys_enter_sendto", "-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let Ok(perf) = perf else {
        return (work.await, None);
    };
    // Let perf attach before the step starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = work.await;
    let Some(perf_pid) = perf.id() else {
        return (out, None);
    };
    // perf prints its counts when interrupted.
    let _ = std::process::Command::new("kill").args(["-INT", &perf_pid.to_string()]).status();
    let count = match tokio::time::timeout(Duration::from_secs(5), perf.wait_with_output()).await {
        Ok(Ok(output)) => String::from_utf8_lossy(&output.stderr)
            .lines()
            .find(|l| l.contains("sys_enter_sendto"))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.trim().parse().ok()),
        _ => None,
    };
    (out, count)
}

/// Frames per `sendto` on each side at one common rate: the deliveries a
/// step counted over the `sendto` calls of the process that wrote them
/// (the gateway; this bench process for the raw broadcast server, whose
/// readers only receive).
#[allow(clippy::too_many_arguments)]
async fn frames_per_sendto(
    ctx: &Ctx,
    fleet: &mut Fleet,
    sink: &Sink,
    sockets: usize,
    pid: u32,
    gateway_pid: Option<u32>,
    rate: f64,
) -> Result<Option<(f64, u64)>> {
    fleet.fill(sockets).await?;
    let alive = fleet.alive() as u64;
    let step_time = Duration::from_secs_f64(ctx.pick(3.0, 1.5));
    let drain = Duration::from_secs_f64(ctx.pick(2.0, 1.0));
    let step = paced_step(
        gateway_pid,
        sink,
        &fleet.recorder,
        rate,
        step_time,
        alive,
        ctx.opts.value_bytes,
        drain,
    );
    let (step, calls) = count_sendto(pid, step).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(calls.filter(|&c| c > 0).map(|c| (step.received as f64 / c as f64, c)))
}

/// Subscribes the fleet's sockets and returns the server's RSS growth per
/// connection (KiB): "before" with one socket subscribed (so the topic's
/// consumer is already open), "after" with all `sockets`, each read 1 s
/// after the subscribes.
async fn rss_per_connection(
    rss: impl Fn() -> Result<u64>,
    fleet: &mut Fleet,
    sockets: usize,
) -> Result<Option<f64>> {
    fleet.fill(1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss()?;
    fleet.fill(sockets).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss()?;
    Ok((sockets > 1).then(|| (after as f64 - before as f64) / (sockets - 1) as f64))
}

/// One step at a fixed rate (not part of a search), with the sockets the
/// server closed during it.
async fn fixed_step(
    ctx: &Ctx,
    fleet: &mut Fleet,
    sink: &Sink,
    sockets: usize,
    pid: u32,
    rate: f64,
) -> Result<(Step, usize)> {
    fleet.fill(sockets).await?;
    let closed_before = fleet.closed.load(Ordering::Relaxed);
    let alive = fleet.alive() as u64;
    let step_time =
        Duration::from_secs_f64(ctx.opts.step_seconds.unwrap_or(ctx.pick(5.0, 1.5)).max(0.1));
    let drain = Duration::from_secs_f64(ctx.pick(3.0, 1.5));
    let step = paced_step(
        Some(pid),
        sink,
        &fleet.recorder,
        rate,
        step_time,
        alive,
        ctx.opts.value_bytes,
        drain,
    )
    .await;
    let closed = (fleet.closed.load(Ordering::Relaxed) - closed_before) as usize;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((step, closed))
}

/// A fixed-rate comparison: one step each on the gateway and the relay.
#[derive(Debug, Serialize)]
struct Compare {
    rate: f64,
    gateway: Step,
    gateway_closed: usize,
    relay: Step,
    relay_closed: usize,
}

/// `460,123 (p99 48.2 ms, 100.0% delivered, 0 closed)`.
fn per_cpu_text(step: &Step, closed: usize) -> String {
    format!(
        "{} (p99 {} ms, {:.1}% delivered, {closed} closed)",
        step.per_server_cpu_second().map_or("-".into(), util::thousands),
        fmt_ms(step.latency.p99_ms),
        100.0 * step.received as f64 / step.expected.max(1) as f64
    )
}

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let sockets = ctx.opts.fanout_sockets;

    let (mut gateway, kafka_host) = ctx.gateway_apart_from_kafka(2 * sockets + 1_000)?;
    let kafka = ctx.kafka(&gateway);
    let connector = ctx.connector(&gateway);
    let topic = ctx.topic("fanout");
    let relay_topic = ctx.topic("fanout-relay");
    let creator = ctx.topic_creator(&gateway, kafka_host.as_ref());
    ctx.create_topic(&creator, &topic).await?;
    ctx.create_topic(&creator, &relay_topic).await?;
    let producer = kafka.producer()?;
    let gateway_sink = Sink::Kafka { producer: producer.clone(), topic: topic.clone() };
    let relay_sink = Sink::Kafka { producer, topic: relay_topic.clone() };

    let mut gateway_fleet = Fleet::new(connector.clone(), &topic);
    let gateway_rss = rss_per_connection(|| gateway.rss_kib(), &mut gateway_fleet, sockets).await?;

    let mut relay = Baseline::start(Kind::Relay, &kafka, ctx.opts.pin)?;
    let relay_connector = Arc::new(Connector::new(relay.addr, None, ctx.opts.sources));
    let mut relay_fleet = Fleet::new(relay_connector, &relay_topic);
    let relay_rss = rss_per_connection(|| relay.rss_kib(), &mut relay_fleet, sockets).await?;

    let server = Arc::new(RawBroadcast::start().await?);
    let raw_connector = Arc::new(Connector::new(server.addr, None, ctx.opts.sources));
    let raw_sink = Sink::Broadcast { server: server.clone(), topic: topic.clone() };
    let mut raw_fleet = Fleet::new(raw_connector, &topic);
    raw_fleet.fill(sockets).await?;
    progress(format_args!(
        "{sockets} sockets subscribed to each of the gateway, the relay and the raw broadcast \
         server; RSS per connection: gateway {:?} KiB, relay {:?} KiB",
        gateway_rss.map(|k| (k * 10.0).round() / 10.0),
        relay_rss.map(|k| (k * 10.0).round() / 10.0),
    ));

    let (gw_pid, relay_pid, bench_pid) = (gateway.pid(), relay.pid(), std::process::id());
    let mut ferry = Search::new("gateway", ctx);
    let mut base = Search::new("relay", ctx);
    let mut raw = Search::new("raw broadcast", ctx);
    let (mut ferry_on, mut base_on, mut raw_on) = (true, true, true);
    while ferry_on || base_on || raw_on {
        if ferry_on {
            ferry_on =
                ferry.step(ctx, &mut gateway_fleet, &gateway_sink, sockets, Some(gw_pid)).await?;
            gateway.check_alive()?;
        }
        if base_on {
            base_on =
                base.step(ctx, &mut relay_fleet, &relay_sink, sockets, Some(relay_pid)).await?;
            relay.check_alive()?;
        }
        if raw_on {
            raw_on = raw.step(ctx, &mut raw_fleet, &raw_sink, sockets, None).await?;
        }
    }
    ferry.check_delivered()?;
    base.check_delivered()?;
    raw.check_delivered()?;

    // Fixed rates: deliveries per server CPU-second, interleaved.
    let rates = if ctx.opts.compare_rates.is_empty() {
        ctx.pick(vec![100.0, 200.0, 400.0], vec![100.0])
    } else {
        ctx.opts.compare_rates.clone()
    };
    let mut compares = Vec::new();
    for &rate in &rates {
        let (g, gc) =
            fixed_step(ctx, &mut gateway_fleet, &gateway_sink, sockets, gw_pid, rate).await?;
        gateway.check_alive()?;
        let (r, rc) =
            fixed_step(ctx, &mut relay_fleet, &relay_sink, sockets, relay_pid, rate).await?;
        relay.check_alive()?;
        progress(format_args!(
            "at {} rec/s, deliveries per server CPU-second: gateway {}, relay {}",
            util::thousands(rate),
            per_cpu_text(&g, gc),
            per_cpu_text(&r, rc)
        ));
        compares.push(Compare { rate, gateway: g, gateway_closed: gc, relay: r, relay_closed: rc });
    }

    // Frames per sendto, every side at the rate the gateway passed at (or
    // the first step's rate).
    let common = ferry.best.map_or(ferry.steps.first().map_or(25.0, |s| s.0.rate), |s| s.rate);
    let gw_writes = frames_per_sendto(
        ctx,
        &mut gateway_fleet,
        &gateway_sink,
        sockets,
        gw_pid,
        Some(gw_pid),
        common,
    )
    .await?;
    let relay_writes = frames_per_sendto(
        ctx,
        &mut relay_fleet,
        &relay_sink,
        sockets,
        relay_pid,
        Some(relay_pid),
        common,
    )
    .await?;
    let raw_writes =
        frames_per_sendto(ctx, &mut raw_fleet, &raw_sink, sockets, bench_pid, None, common).await?;
    progress(format_args!(
        "frames per sendto at {} rec/s: gateway {:?}, relay {:?}, raw broadcast {:?}",
        util::thousands(common),
        gw_writes,
        relay_writes,
        raw_writes
    ));
    gateway_fleet.close();
    relay_fleet.close();
    raw_fleet.close();
    drop(relay);
    gateway.stop(Duration::from_secs(10));
    if let Some(host) = kafka_host {
        host.stop(Duration::from_secs(10));
    }
    if server.kicked() > 0 {
        progress(format_args!("raw broadcast dropped {} frames on full queues", server.kicked()));
    }

    let (f, b, c) = (ferry.deliveries(), base.deliveries(), raw.deliveries());
    let best_text = |s: &Search, what: &str| {
        format!(
            "{} ({} rec/s{what})",
            util::thousands(s.deliveries()),
            util::thousands(s.best.map_or(0.0, |s| s.rate))
        )
    };
    let best_cpu = |s: &Search| s.best.and_then(|b| b.per_server_cpu_second());
    let p99 = |s: &Search| s.best.map(|b| b.latency.p99_ms);
    let mut rows = vec![
        Row::new(
            "fan-out",
            &format!("deliveries/s at the highest rate with p99 < 50 ms ({sockets} sockets)"),
            Some(f),
            best_text(&ferry, ""),
        )
        .baseline(Some(b), best_text(&base, ", relay"))
        .ratio(),
        Row::new(
            "fan-out",
            "deliveries per server CPU-second at that step",
            best_cpu(&ferry),
            best_cpu(&ferry).map_or("-".into(), util::thousands),
        )
        .baseline(
            best_cpu(&base),
            best_cpu(&base).map_or("-".into(), |v| format!("{} (relay)", util::thousands(v))),
        )
        .ratio(),
        Row::new(
            "fan-out",
            "latency at that step",
            p99(&ferry),
            ferry.best.map_or("no passing step".into(), |s| s.latency.text()),
        )
        .baseline(p99(&base), base.best.map_or("no passing step".into(), |s| s.latency.text())),
    ];
    for c in &compares {
        let (g, r) = (c.gateway.per_server_cpu_second(), c.relay.per_server_cpu_second());
        let mut row = Row::new(
            "fan-out",
            &format!(
                "deliveries per server CPU-second at {} rec/s × {sockets}",
                util::thousands(c.rate)
            ),
            g,
            per_cpu_text(&c.gateway, c.gateway_closed),
        )
        .baseline(r, format!("{} relay", per_cpu_text(&c.relay, c.relay_closed)))
        .ratio();
        if c.rate == 400.0 && sockets == 1_000 {
            let met = matches!((g, r), (Some(g), Some(r)) if g >= 2.0 * r)
                && c.gateway.latency.p99_ms <= c.relay.latency.p99_ms;
            row = row.goal("≥ 2.00× and p99 ≤ relay's", met);
        }
        rows.push(row);
    }
    let kib = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} KiB"));
    rows.push(
        Row::new("fan-out", "RSS per subscribed connection", gateway_rss, kib(gateway_rss))
            .baseline(relay_rss, format!("{} (relay)", kib(relay_rss)))
            .ratio(),
    );
    rows.push(
        Row::new(
            "fan-out",
            &format!(
                "frames per sendto at {} rec/s (deliveries / sendto calls, perf)",
                util::thousands(common)
            ),
            gw_writes.map(|w| w.0),
            gw_writes.map_or("perf unavailable".into(), |(f, _)| format!("{f:.2}")),
        )
        .baseline(
            relay_writes.map(|w| w.0),
            relay_writes.map_or("perf unavailable".into(), |(f, _)| format!("{f:.2} (relay)")),
        )
        .ratio(),
    );
    rows.push(
        Row::new(
            "fan-out",
            "ceiling: deliveries/s at the best step",
            Some(f),
            best_text(&ferry, ""),
        )
        .baseline(Some(c), best_text(&raw, ", raw broadcast in-process"))
        .ratio(),
    );
    Ok(Outcome {
        rows,
        detail: serde_json::json!({
            "sockets": sockets,
            "p99_limit_ms": P99_LIMIT_MS,
            "kafka_host_process": ctx.opts.kafka.is_none(),
            "rss_per_connection_kib": {"gateway": gateway_rss, "relay": relay_rss},
            "gateway": ferry,
            "relay": base,
            "raw_broadcast": raw,
            "compare": compares,
            "frames_per_sendto": {
                "rate": common,
                "gateway": gw_writes,
                "relay": relay_writes,
                "raw_broadcast": raw_writes,
            },
        }),
    })
}
