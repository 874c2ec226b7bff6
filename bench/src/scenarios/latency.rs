//! fan-out latency: 10,000 records/s produced (open loop, the raw producer
//! with the gateway's settings) to a topic 100 sockets subscribe to;
//! produce→socket latency against the raw consumer's produce→consume
//! latency at the same rate, on the same Kafka. `ferry-relay` does the same
//! job beside it (its own topic and 100 sockets): what a minimal server
//! reaches at this rate on the same machine. Rounds alternate; medians
//! are reported.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::{paced_step, raw_produce_consume, Fleet, Sink, Step};
use crate::baseline::{Baseline, Kind};
use crate::report::Row;
use crate::stats::{fmt_ms, median};
use crate::ws::Connector;
use crate::{progress, Ctx, Outcome};

const RATE: f64 = 10_000.0;
const SOCKETS: usize = 100;

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let rounds = ctx.pick(3, 1);
    let duration = Duration::from_secs(ctx.pick(4, 2));
    let mut gateway = ctx.gateway(50_000)?;
    let kafka = ctx.kafka(&gateway);
    let connector = ctx.connector(&gateway);
    let (raw_topic, topic) = (ctx.topic("latency-raw"), ctx.topic("latency"));
    ctx.create_topic(&connector, &raw_topic).await?;
    ctx.create_topic(&connector, &topic).await?;
    let mut fleet = Fleet::new(connector.clone(), &topic);
    let sink = Sink::Kafka { producer: kafka.producer()?, topic: topic.clone() };
    let relay_topic = ctx.topic("latency-relay");
    ctx.create_topic(&connector, &relay_topic).await?;
    let mut relay = Baseline::start(Kind::Relay, &kafka, ctx.opts.pin)?;
    let relay_connector = Arc::new(Connector::new(relay.addr, None, ctx.opts.sources));
    let mut relay_fleet = Fleet::new(relay_connector, &relay_topic);
    let relay_sink = Sink::Kafka { producer: kafka.producer()?, topic: relay_topic.clone() };

    let (mut raw, mut ferry, mut base): (Vec<Step>, Vec<Step>, Vec<Step>) =
        (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let r = raw_produce_consume(ctx, &kafka, &raw_topic, RATE, duration).await?;
        progress(format_args!(
            "fan-out latency round {round}: raw consumer {} ({}/{} records)",
            r.latency.text(),
            r.received,
            r.expected
        ));
        raw.push(r);
        ferry.push(
            server_round(ctx, round, duration, "gateway", gateway.pid(), &mut fleet, &sink).await?,
        );
        gateway.check_alive()?;
        base.push(
            server_round(ctx, round, duration, "relay", relay.pid(), &mut relay_fleet, &relay_sink)
                .await?,
        );
        relay.check_alive()?;
    }
    fleet.close();
    relay_fleet.close();
    drop(relay);
    gateway.stop(Duration::from_secs(10));

    let m = |steps: &[Step], f: fn(&Step) -> f64| median(&steps.iter().map(f).collect::<Vec<_>>());
    let (f50, f99) = (m(&ferry, |s| s.latency.p50_ms), m(&ferry, |s| s.latency.p99_ms));
    let (b50, b99) = (m(&raw, |s| s.latency.p50_ms), m(&raw, |s| s.latency.p99_ms));
    let (f999, fmax) = (m(&ferry, |s| s.latency.p999_ms), m(&ferry, |s| s.latency.max_ms));
    let (b999, bmax) = (m(&raw, |s| s.latency.p999_ms), m(&raw, |s| s.latency.max_ms));
    let complete = ferry.iter().all(Step::complete);
    let rows = vec![
        Row::new(
            "fan-out latency",
            "10k rec/s to 100 sockets: produce→socket p50 (ms)",
            Some(f50),
            fmt_ms(f50),
        )
        .baseline(Some(b50), format!("{} (raw consumer)", fmt_ms(b50)))
        .delta_ms(),
        Row::new(
            "fan-out latency",
            "… p99 (ms)",
            Some(f99),
            format!("{}{}", fmt_ms(f99), if complete { "" } else { " (records missing)" }),
        )
        .baseline(Some(b99), format!("{} (raw consumer)", fmt_ms(b99)))
        .delta_ms()
        .goal("≤ +5 ms", complete && f99 <= b99 + 5.0),
        Row::new(
            "fan-out latency",
            "… p99 (ms), the gateway against the relay",
            Some(f99),
            fmt_ms(f99),
        )
        .baseline(
            Some(m(&base, |s| s.latency.p99_ms)),
            format!(
                "{} (relay{})",
                fmt_ms(m(&base, |s| s.latency.p99_ms)),
                if base.iter().all(Step::complete) { "" } else { ", records missing" }
            ),
        )
        .delta_ms(),
        Row::new(
            "fan-out latency",
            "… p99.9 / max (ms)",
            Some(f999),
            format!("{} / {}", fmt_ms(f999), fmt_ms(fmax)),
        )
        .baseline(Some(b999), format!("{} / {} (raw consumer)", fmt_ms(b999), fmt_ms(bmax)))
        .delta_ms(),
        Row::new(
            "fan-out latency",
            "deliveries/s",
            Some(m(&ferry, |s| s.per_second)),
            crate::util::thousands(m(&ferry, |s| s.per_second)),
        )
        .baseline(
            Some(m(&raw, |s| s.per_second)),
            format!(
                "{} (raw consumer, records/s)",
                crate::util::thousands(m(&raw, |s| s.per_second))
            ),
        ),
    ];
    Ok(Outcome {
        rows,
        detail: serde_json::json!({
            "rate": RATE,
            "sockets": SOCKETS,
            "round_seconds": duration.as_secs_f64(),
            "raw_consumer": raw,
            "gateway": ferry,
            "relay": base,
        }),
    })
}

/// One round on a server: its 100 sockets (re)filled, then `RATE` records
/// produced to its topic for `duration`.
async fn server_round(
    ctx: &Ctx,
    round: usize,
    duration: Duration,
    who: &str,
    pid: u32,
    fleet: &mut Fleet,
    sink: &Sink,
) -> Result<Step> {
    fleet.fill(SOCKETS).await?;
    let alive = fleet.alive() as u64;
    let step = paced_step(
        Some(pid),
        sink,
        &fleet.recorder,
        RATE,
        duration,
        alive,
        ctx.opts.value_bytes,
        Duration::from_secs(5),
    )
    .await;
    progress(format_args!(
        "fan-out latency round {round}: {who} {} ({}/{} deliveries)",
        step.latency.text(),
        step.received,
        step.expected
    ));
    Ok(step)
}
