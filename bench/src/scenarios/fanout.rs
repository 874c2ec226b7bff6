//! fan-out: 1 topic, 1,000 subscribed sockets, records produced at a fixed
//! rate. The rate doubles until a step fails (p99 ≥ 50 ms, a record not
//! delivered to every socket, or a socket closed), then is bisected; the
//! figure is deliveries/s at the highest passing rate.
//!
//! The raw broadcast server gets the same search with as many sockets and
//! the same frames. The two searches run interleaved (a gateway step, then a
//! raw step), so that the noise of a shared machine hits both alike.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{paced_step, Fleet, Sink, Step};
use crate::broadcast::RawBroadcast;
use crate::report::Row;
use crate::stats::pct;
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
                 CPU gateway {} bench {}: {}",
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

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let sockets = ctx.opts.fanout_sockets;

    let mut gateway = ctx.gateway(sockets + 1_000)?;
    let kafka = ctx.kafka(&gateway);
    let connector = ctx.connector(&gateway);
    let topic = ctx.topic("fanout");
    ctx.create_topic(&connector, &topic).await?;
    let gateway_sink = Sink::Kafka { producer: kafka.producer()?, topic: topic.clone() };
    let mut gateway_fleet = Fleet::new(connector.clone(), &topic);
    gateway_fleet.fill(sockets).await?;

    let server = Arc::new(RawBroadcast::start().await?);
    let raw_connector = Arc::new(Connector::new(server.addr, None, ctx.opts.sources));
    let raw_sink = Sink::Broadcast { server: server.clone(), topic: topic.clone() };
    let mut raw_fleet = Fleet::new(raw_connector, &topic);
    raw_fleet.fill(sockets).await?;
    progress(format_args!(
        "{sockets} sockets subscribed to the gateway and {sockets} to the raw broadcast server"
    ));

    let mut ferry = Search::new("gateway", ctx);
    let mut raw = Search::new("raw broadcast", ctx);
    let (mut ferry_on, mut raw_on) = (true, true);
    while ferry_on || raw_on {
        if ferry_on {
            ferry_on = ferry
                .step(ctx, &mut gateway_fleet, &gateway_sink, sockets, Some(gateway.pid()))
                .await?;
            gateway.check_alive()?;
        }
        if raw_on {
            raw_on = raw.step(ctx, &mut raw_fleet, &raw_sink, sockets, None).await?;
        }
    }
    // Frames per sendto, both sides at the rate the gateway passed at (a
    // rate the raw server passes too), or the first step's rate.
    let common = ferry.best.map_or(ferry.steps.first().map_or(25.0, |s| s.0.rate), |s| s.rate);
    let (gw_pid, bench_pid) = (gateway.pid(), std::process::id());
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
    let raw_writes =
        frames_per_sendto(ctx, &mut raw_fleet, &raw_sink, sockets, bench_pid, None, common).await?;
    progress(format_args!(
        "frames per sendto at {} rec/s: gateway {:?}, raw broadcast {:?}",
        util::thousands(common),
        gw_writes,
        raw_writes
    ));
    gateway_fleet.close();
    raw_fleet.close();
    gateway.stop(Duration::from_secs(10));
    if server.kicked() > 0 {
        progress(format_args!("raw broadcast dropped {} frames on full queues", server.kicked()));
    }

    let (f, b) = (ferry.deliveries(), raw.deliveries());
    let p99 = |s: &Search| s.best.map(|b| b.latency.p99_ms);
    let rows = vec![
        Row::new(
            "fan-out",
            &format!("deliveries/s at the highest rate with p99 < 50 ms ({sockets} sockets)"),
            Some(f),
            format!(
                "{} ({} rec/s)",
                util::thousands(f),
                util::thousands(ferry.best.map_or(0.0, |s| s.rate))
            ),
        )
        .baseline(
            Some(b),
            format!(
                "{} ({} rec/s, raw broadcast)",
                util::thousands(b),
                util::thousands(raw.best.map_or(0.0, |s| s.rate))
            ),
        )
        .ratio()
        .goal("≥ 1.00×", b > 0.0 && f / b >= 1.0),
        Row::new(
            "fan-out",
            "latency at that rate",
            p99(&ferry),
            ferry.best.map_or("no passing step".into(), |s| s.latency.text()),
        )
        .baseline(p99(&raw), raw.best.map_or("no passing step".into(), |s| s.latency.text())),
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
            raw_writes.map(|w| w.0),
            raw_writes
                .map_or("perf unavailable".into(), |(f, _)| format!("{f:.2} (raw broadcast)")),
        )
        .ratio()
        .goal("≥ 1.00×", matches!((gw_writes, raw_writes), (Some(g), Some(r)) if g.0 >= r.0)),
    ];
    Ok(Outcome {
        rows,
        detail: serde_json::json!({
            "sockets": sockets,
            "p99_limit_ms": P99_LIMIT_MS,
            "gateway": ferry,
            "raw_broadcast": raw,
            "frames_per_sendto": {"rate": common, "gateway": gw_writes, "raw_broadcast": raw_writes},
        }),
    })
}
