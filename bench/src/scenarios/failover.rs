//! failover: N sockets subscribed live on node A while a steady producer
//! writes to their topic; node A is SIGKILLed; every socket reconnects to
//! node B and resumes from its own next offsets (`from.offsets`), as
//! client-js does; then production stops and every socket reads to the end.
//!
//! Measured: the time from the kill until all N are `subscribed` on B and
//! until all have caught up, the deliveries per second meanwhile, node B's
//! threads and its RSS per resumed subscription beside node A's RSS per live
//! subscription (measured the same way before the kill), and every socket's
//! records counted per partition against the offsets the producer was given:
//! missing and duplicate records.
//!
//! Both nodes use one Kafka: `--kafka`, or on the embedded default the
//! embedded Kafka of a third gateway process that serves nothing else, so
//! that killing A does not take Kafka with it. That process also creates
//! the topic, so that neither node has looked it up before its "before".

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::gateway;
use crate::report::Row;
use crate::ws::{self, Buffers, Connector, Ws};
use crate::{pacer, progress, util, Ctx, Outcome, TOPIC_PARTITIONS};

const PARTITIONS: usize = TOPIC_PARTITIONS as usize;

/// Next offset per partition.
type Offsets = [i64; PARTITIONS];

/// The goal: this many sockets resumed within [`GOAL_SECONDS`].
const GOAL_SOCKETS: usize = 10_000;
const GOAL_SECONDS: f64 = 10.0;
/// The goal: RSS per resumed subscription at most this many live ones.
const GOAL_RSS_RATIO: f64 = 1.5;
/// Deliveries per second of the live fan-out the default rate keeps to, so
/// that 10,000 sockets get 20 records/s and there is room left to catch up.
const DELIVERIES_PER_SECOND: f64 = 200_000.0;

/// Records/s of the steady producer: 200, fewer above 1,000 sockets.
fn default_rate(sockets: usize) -> f64 {
    (DELIVERIES_PER_SECOND / sockets.max(1) as f64).min(200.0)
}

pub(super) async fn run(ctx: &Ctx) -> Result<Outcome> {
    let sizes = match (&ctx.opts.failover_sockets, ctx.quick()) {
        (sizes, _) if !sizes.is_empty() => sizes.clone(),
        (_, false) => vec![1_000, 10_000],
        (_, true) => vec![200],
    };
    let mut rows = Vec::new();
    let mut rounds = Vec::new();
    for wanted in sizes {
        progress(format_args!("failover: {wanted} sockets"));
        let (r, detail) = round(ctx, wanted).await?;
        rows.extend(r);
        rounds.push(detail);
    }
    Ok(Outcome { rows, detail: serde_json::json!({ "rounds": rounds }) })
}

/// What the sockets have done so far, for the scenario's clock.
#[derive(Debug, Default)]
struct Progress {
    /// Set just before node A is killed: a socket that loses A before
    /// that says so.
    killed: AtomicBool,
    /// Sockets that got a record on node A.
    with_records: AtomicUsize,
    subscribed_on_b: AtomicUsize,
    /// Sockets that gave up resuming (a refusal other than `limit` with
    /// `retry_after_ms`, or no `subscribed`).
    resume_failed: AtomicUsize,
    caught_up: AtomicUsize,
    /// Sockets at the final end offsets.
    done: AtomicUsize,
    /// Latest `subscribed` and catch-up on node B, bench clock (µs).
    last_subscribed_us: AtomicU64,
    last_caught_up_us: AtomicU64,
    /// `message` frames received, over all sockets.
    deliveries: AtomicU64,
    /// Connection attempts to node B that failed (and were retried).
    connect_retries: AtomicU64,
    /// `limit` answers with `retry_after_ms` (and retried).
    limited: AtomicU64,
}

/// Offsets a socket must reach: `catch_up` is what was produced when the
/// last socket was `subscribed` on B; `end` is the final end, after the
/// producer stopped.
#[derive(Debug, Clone, Copy, Default)]
struct Targets {
    catch_up: Option<Offsets>,
    end: Option<Offsets>,
}

/// One socket's records, per partition.
#[derive(Debug, Default, Clone)]
struct Tally {
    /// Where its live subscription on A started (`subscribed.partitions`).
    start: Offsets,
    /// The offset after the last record received, per partition.
    next: Offsets,
    /// Records received in order (each offset past the one before).
    distinct: [u64; PARTITIONS],
    /// Records at or before an offset already received.
    duplicates: u64,
    /// `gap` frames (a resume position Kafka no longer had).
    gaps: u64,
    lost_a_before_kill: bool,
    /// Connections opened (or tried) to node B.
    attempts: u32,
    /// When the last connection to node B got `welcome`, and when node B
    /// answered `subscribed` (bench clock, µs).
    connected_us: Option<u64>,
    resumed_us: Option<u64>,
    caught_up: bool,
    at_end: bool,
    error: Option<String>,
}

impl Tally {
    fn record(&mut self, partition: i32, offset: i64) {
        let Some(p) = usize::try_from(partition).ok().filter(|&p| p < PARTITIONS) else {
            self.error = Some(format!("a record of partition {partition}"));
            return;
        };
        if offset >= self.next[p] {
            self.distinct[p] += 1;
            self.next[p] = offset + 1;
        } else {
            self.duplicates += 1;
        }
    }

    fn reached(&self, target: &Offsets) -> bool {
        self.next.iter().zip(target).all(|(n, t)| n >= t)
    }
}

/// The offsets the producer got back from Kafka, per partition.
#[derive(Debug, Default)]
struct Ledger {
    offsets: Mutex<[Vec<i64>; PARTITIONS]>,
    /// Records sent whose delivery report has not come yet.
    pending: AtomicU64,
    failed: AtomicU64,
}

impl Ledger {
    fn add(&self, partition: i32, offset: i64) {
        let mut offsets = self.offsets.lock().expect("ledger lock");
        if let Some(list) = usize::try_from(partition).ok().and_then(|p| offsets.get_mut(p)) {
            list.push(offset);
        }
    }

    /// The end offset of each partition: past the highest offset produced.
    fn ends(&self) -> Offsets {
        let offsets = self.offsets.lock().expect("ledger lock");
        std::array::from_fn(|p| offsets[p].iter().max().map_or(0, |o| o + 1))
    }

    /// Every offset produced, per partition, sorted.
    fn sorted(&self) -> [Vec<i64>; PARTITIONS] {
        let mut offsets = self.offsets.lock().expect("ledger lock").clone();
        for list in &mut offsets {
            list.sort_unstable();
        }
        offsets
    }
}

/// Missing and duplicate records over all sockets: per socket and
/// partition, the offsets produced at or after its start less the distinct
/// ones received; and everything received twice.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct Count {
    expected: u64,
    received: u64,
    missing: u64,
    duplicates: u64,
    /// Records received that the producer did not produce (never expected).
    unexpected: u64,
}

fn count(tallies: &[Tally], produced: &[Vec<i64>; PARTITIONS]) -> Count {
    let mut c = Count::default();
    for t in tallies {
        for ((list, start), distinct) in produced.iter().zip(t.start).zip(t.distinct) {
            let expected = (list.len() - list.partition_point(|&o| o < start)) as u64;
            c.expected += expected;
            c.received += distinct;
            c.missing += expected.saturating_sub(distinct);
            c.unexpected += distinct.saturating_sub(expected);
        }
        c.duplicates += t.duplicates;
    }
    c.received += c.duplicates;
    c
}

/// What a socket needs besides its own connection.
#[derive(Debug, Clone)]
struct Shared {
    topic: Arc<str>,
    node_b: Arc<Connector>,
    progress: Arc<Progress>,
    targets: watch::Receiver<Targets>,
}

async fn round(ctx: &Ctx, wanted: usize) -> Result<(Vec<Row>, serde_json::Value)> {
    // This process and node B each hold one descriptor per socket.
    let n = wanted.min(ctx.nofile.saturating_sub(400) as usize);
    if n < wanted {
        progress(format_args!(
            "failover: {wanted} sockets wanted, {n} possible with the file limit {}",
            ctx.nofile
        ));
    }
    let rate = ctx.opts.failover_rate.unwrap_or_else(|| default_rate(n));
    let settle = Duration::from_secs_f64(ctx.pick(1.0, 0.5));

    // One secret, so that a token works on every node, as in a deployment.
    let mut spec = ctx.gateway_spec(n + 1_000);
    spec.hs_secret = Some(gateway::random_secret());
    // A third process creates the topic (so that neither node has looked
    // it up before its "before" RSS) and, on the embedded default, hosts
    // the Kafka both nodes use, so that killing A does not take Kafka along.
    let creator = ctx.start_gateway(&spec, "topic creator and Kafka host")?;
    let topic = ctx.topic(&format!("failover-{n}"));
    ctx.create_topic(&ctx.connector(&creator), &topic).await?;
    let kafka = ctx.kafka(&creator);
    let host = if ctx.opts.kafka.is_none() {
        spec.brokers = Some(creator.bootstrap.clone());
        // The mock broker answers a fetch only when `fetch.wait.max.ms`
        // expires (the gateway sets 5 ms itself on its own embedded one).
        spec.librdkafka.push(("fetch.wait.max.ms".into(), "5".into()));
        Some(creator)
    } else {
        creator.stop(Duration::from_secs(10));
        None
    };
    let mut node_a = ctx.start_gateway(&spec, "node A")?;
    let mut node_b = ctx.start_gateway(&spec, "node B")?;
    let (to_a, to_b) = (ctx.connector(&node_a), ctx.connector(&node_b));
    tokio::time::sleep(settle).await;

    // Live on node A.
    let rss_a_before = node_a.rss_kib()?;
    let began = util::now_us();
    let opened: Vec<_> = futures::stream::iter(0..n)
        .map(|_| live_subscriber(&to_a, &topic))
        .buffer_unordered(128)
        .collect()
        .await;
    let mut sockets = Vec::with_capacity(n);
    let mut open_errors = Vec::new();
    for socket in opened {
        match socket {
            Ok(s) => sockets.push(s),
            Err(e) => open_errors.push(format!("{e:#}")),
        }
    }
    let live = sockets.len();
    progress(format_args!(
        "failover: {live} sockets subscribed live on node A in {:.1} s ({} errors{})",
        (util::now_us() - began) as f64 / 1e6,
        open_errors.len(),
        open_errors.first().map_or(String::new(), |e| format!(", first: {e}"))
    ));
    if live == 0 {
        bail!("no socket subscribed on node A: {open_errors:?}");
    }
    let sockets_state = Arc::new(Progress::default());
    let (targets_tx, targets) = watch::channel(Targets::default());
    let shared = Shared {
        topic: topic.as_str().into(),
        node_b: to_b.clone(),
        progress: sockets_state.clone(),
        targets,
    };
    let mut tallies = Vec::with_capacity(live);
    let mut tasks = Vec::with_capacity(live);
    for (i, (ws, start)) in sockets.into_iter().enumerate() {
        let tally = Arc::new(Mutex::new(Tally { start, next: start, ..Tally::default() }));
        tallies.push(tally.clone());
        tasks.push(tokio::spawn(follow(ws, tally, shared.clone(), i as u64)));
    }

    // The steady producer, until told to stop.
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producer = kafka.producer()?;
    let pacer = produce(&producer, &topic, rate, ctx.opts.value_bytes, &ledger, &stop);
    let p = sockets_state.clone();
    if !wait_for(Duration::from_secs(30), || p.with_records.load(Ordering::Relaxed) >= live).await {
        bail!(
            "only {} of {live} sockets got a record on node A in 30 s",
            p.with_records.load(Ordering::Relaxed)
        );
    }
    tokio::time::sleep(settle).await;
    let rss_a_after = node_a.rss_kib()?;
    let threads_a = node_a.threads()?;
    node_a.check_alive()?;
    let kib_per_live = rss_a_after.saturating_sub(rss_a_before) as f64 / live as f64;
    progress(format_args!(
        "failover: node A RSS {rss_a_before} → {rss_a_after} KiB: {kib_per_live:.1} KiB per live \
         subscription; {threads_a} threads; producing {} rec/s",
        util::thousands(rate)
    ));

    // Kill A; every socket goes to B.
    let rss_b_before = node_b.rss_kib()?;
    let threads_b_before = node_b.threads()?;
    let sampler = Sampler::start(node_b.pid());
    let cpu = super::Cpu::start(Some(node_b.pid()));
    let overflows_before = listen_overflows();
    sockets_state.killed.store(true, Ordering::SeqCst);
    let killed_us = util::now_us();
    let deliveries_at_kill = sockets_state.deliveries.load(Ordering::Relaxed);
    node_a.kill()?;
    progress(format_args!("failover: node A SIGKILLed; {live} sockets resume on node B"));
    let resume_budget = Duration::from_secs(ctx.pick(120, 60));
    let all_resolved = wait_for(resume_budget, || {
        p.subscribed_on_b.load(Ordering::Relaxed) + p.resume_failed.load(Ordering::Relaxed) >= live
    })
    .await;
    let (cpu_b, cpu_bench) = cpu.stop();
    // Connections the kernel dropped because a listener's accept queue was
    // full (the client's SYN is retried after 1 s, 3 s, …); machine-wide.
    let overflows = listen_overflows().zip(overflows_before).map(|(a, b)| a.saturating_sub(b));
    let subscribed_on_b = sockets_state.subscribed_on_b.load(Ordering::Relaxed);
    let all_subscribed = all_resolved && subscribed_on_b == live;
    let resubscribed_s =
        (sockets_state.last_subscribed_us.load(Ordering::Relaxed).saturating_sub(killed_us)) as f64
            / 1e6;
    progress(format_args!(
        "failover: {subscribed_on_b}/{live} subscribed on node B, the last {resubscribed_s:.2} s \
         after the kill ({} connects retried, {} `limit` answers, {} gave up; CPU node B {} \
         bench {}; accept-queue overflows {})",
        sockets_state.connect_retries.load(Ordering::Relaxed),
        sockets_state.limited.load(Ordering::Relaxed),
        sockets_state.resume_failed.load(Ordering::Relaxed),
        crate::stats::pct(cpu_b),
        crate::stats::pct(cpu_bench),
        overflows.map_or("unknown".into(), |o| o.to_string()),
    ));

    // Caught up: at the offsets produced when the last one subscribed.
    let catch_up = ledger.ends();
    targets_tx.send_modify(|t| t.catch_up = Some(catch_up));
    let all_caught_up = wait_for(Duration::from_secs(ctx.pick(120, 60)), || {
        p.caught_up.load(Ordering::Relaxed) >= subscribed_on_b
    })
    .await;
    let deliveries_caught_up =
        sockets_state.deliveries.load(Ordering::Relaxed) - deliveries_at_kill;
    let caught_up = sockets_state.caught_up.load(Ordering::Relaxed);
    let caught_up_s =
        (sockets_state.last_caught_up_us.load(Ordering::Relaxed).saturating_sub(killed_us)) as f64
            / 1e6;
    let catch_up_rate = deliveries_caught_up as f64 / caught_up_s.max(1e-3);
    progress(format_args!(
        "failover: {caught_up}/{subscribed_on_b} caught up, the last {caught_up_s:.2} s after \
         the kill: {} deliveries, {} per second",
        util::thousands(deliveries_caught_up as f64),
        util::thousands(catch_up_rate)
    ));
    tokio::time::sleep(settle).await;
    let rss_b_after = node_b.rss_kib()?;
    let threads_b_after = node_b.threads()?;
    node_b.check_alive()?;
    let kib_per_resumed =
        rss_b_after.saturating_sub(rss_b_before) as f64 / subscribed_on_b.max(1) as f64;

    // Stop producing; every socket reads to the end.
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    let l = ledger.clone();
    wait_for(Duration::from_secs(30), || l.pending.load(Ordering::Relaxed) == 0).await;
    let end = ledger.ends();
    targets_tx.send_modify(|t| t.end = Some(end));
    let all_at_end =
        wait_for(Duration::from_secs(ctx.pick(60, 30)), || p.done.load(Ordering::Relaxed) >= live)
            .await;
    tokio::time::sleep(settle).await;
    let rss_b_end = node_b.rss_kib()?;
    let (threads_b_max, rss_b_max) = sampler.stop().await;
    for task in &tasks {
        task.abort();
    }
    let tallies: Vec<Tally> =
        tallies.iter().map(|t| t.lock().expect("tally lock").clone()).collect();
    let produced = ledger.sorted();
    let counts = count(&tallies, &produced);
    let errors: Vec<&str> = tallies.iter().filter_map(|t| t.error.as_deref()).collect();
    let gaps: u64 = tallies.iter().map(|t| t.gaps).sum();
    let lost_early = tallies.iter().filter(|t| t.lost_a_before_kill).count();
    // How long each socket took: the reconnect back-off after refused
    // connections is most of the spread.
    let (mut connect_times, mut resume_times) =
        (crate::stats::histogram(), crate::stats::histogram());
    for t in &tallies {
        if let Some(at) = t.connected_us {
            connect_times.saturating_record(at.saturating_sub(killed_us).max(1));
        }
        if let Some(at) = t.resumed_us {
            resume_times.saturating_record(at.saturating_sub(killed_us).max(1));
        }
    }
    let connect_times = crate::stats::Summary::of(&connect_times);
    let resume_times = crate::stats::Summary::of(&resume_times);
    let attempts_max = tallies.iter().map(|t| t.attempts).max().unwrap_or(0);
    let attempts_mean =
        tallies.iter().map(|t| f64::from(t.attempts)).sum::<f64>() / tallies.len().max(1) as f64;
    progress(format_args!(
        "failover: kill → per socket, `welcome` from node B: {}; `subscribed`: {}; \
         connections per socket: mean {attempts_mean:.2}, max {attempts_max}",
        connect_times.text(),
        resume_times.text()
    ));
    progress(format_args!(
        "failover: {} records produced; over all sockets {} expected, {} missing, {} duplicate, \
         {gaps} gap frames; {} of {live} at the end ({} errors{})",
        util::thousands(produced.iter().map(Vec::len).sum::<usize>() as f64),
        util::thousands(counts.expected as f64),
        counts.missing,
        counts.duplicates,
        tallies.iter().filter(|t| t.at_end).count(),
        errors.len(),
        errors.first().map_or(String::new(), |e| format!(", first: {e}"))
    ));
    drop(tasks);
    node_b.stop(Duration::from_secs(10));
    if let Some(host) = host {
        host.stop(Duration::from_secs(10));
    }

    let goal_size = live >= GOAL_SOCKETS;
    let scenario = "failover";
    let mut resubscribed = Row::new(
        scenario,
        &format!(
            "{} sockets: SIGKILL of node A → all `subscribed` on node B",
            util::thousands(live as f64)
        ),
        all_subscribed.then_some(resubscribed_s),
        if all_subscribed {
            format!("{resubscribed_s:.2} s")
        } else {
            format!("{subscribed_on_b} of {live} subscribed")
        },
    );
    resubscribed = if goal_size {
        resubscribed.goal("≤ 10 s", all_subscribed && resubscribed_s <= GOAL_SECONDS)
    } else {
        resubscribed.goal = "≤ 10 s at 10,000".to_owned();
        resubscribed
    };
    let rss_ratio = kib_per_resumed / kib_per_live.max(1e-3);
    let rows = vec![
        resubscribed,
        Row::new(
            scenario,
            "… → all caught up (at the offsets produced when the last resumed)",
            all_caught_up.then_some(caught_up_s),
            if all_caught_up {
                format!("{caught_up_s:.2} s")
            } else {
                format!("{caught_up} of {subscribed_on_b} caught up")
            },
        ),
        Row::new(
            scenario,
            &format!(
                "records delivered per second, kill → all caught up ({rate:.0} rec/s produced)"
            ),
            Some(catch_up_rate),
            util::thousands(catch_up_rate),
        ),
        Row::new(
            scenario,
            "node B threads, max from the kill to the end",
            Some(threads_b_max as f64),
            format!("{threads_b_max} ({threads_b_before} before the kill)"),
        )
        .baseline(Some(threads_a as f64), format!("{threads_a} (node A, all live)")),
        Row::new(
            scenario,
            "RSS per resumed subscription (node B) vs per live subscription (node A)",
            Some(kib_per_resumed),
            format!("{kib_per_resumed:.1} KiB"),
        )
        .baseline(Some(kib_per_live), format!("{kib_per_live:.1} KiB (live, node A)"))
        .ratio()
        .goal("≤ 1.50×", rss_ratio <= GOAL_RSS_RATIO && all_subscribed),
        Row::new(
            scenario,
            "missing / duplicate records, every socket and partition vs the produced offsets",
            Some((counts.missing + counts.duplicates + counts.unexpected) as f64),
            format!("{} / {}", counts.missing, counts.duplicates),
        )
        .goal("0 / 0", all_at_end && counts.missing + counts.duplicates + counts.unexpected == 0),
    ];
    let detail = serde_json::json!({
        "sockets_wanted": wanted,
        "sockets": live,
        "open_errors": open_errors.len(),
        "first_open_errors": open_errors.iter().take(5).collect::<Vec<_>>(),
        "rate": rate,
        "value_bytes": ctx.opts.value_bytes,
        "kafka_host_process": ctx.opts.kafka.is_none(),
        "lost_node_a_before_kill": lost_early,
        "subscribed_on_b": subscribed_on_b,
        "resume_failed": sockets_state.resume_failed.load(Ordering::Relaxed),
        "connect_retries": sockets_state.connect_retries.load(Ordering::Relaxed),
        "limit_answers": sockets_state.limited.load(Ordering::Relaxed),
        "resubscribed_seconds": resubscribed_s,
        "welcome_per_socket": connect_times,
        "resubscribed_per_socket": resume_times,
        "cpu_pct_kill_to_all_subscribed": {"node_b": cpu_b, "bench": cpu_bench},
        "listen_overflows_kill_to_all_subscribed": overflows,
        "connections_per_socket": {"mean": attempts_mean, "max": attempts_max},
        "caught_up": caught_up,
        "caught_up_seconds": caught_up_s,
        "catch_up_target": catch_up,
        "deliveries_kill_to_caught_up": deliveries_caught_up,
        "deliveries_per_second_catch_up": catch_up_rate,
        "end_offsets": end,
        "at_end": tallies.iter().filter(|t| t.at_end).count(),
        "records": counts,
        "produce_failed": ledger.failed.load(Ordering::Relaxed),
        "gap_frames": gaps,
        "errors": errors.len(),
        "first_errors": errors.iter().take(5).collect::<Vec<_>>(),
        "node_a": {
            "rss_before_kib": rss_a_before,
            "rss_after_kib": rss_a_after,
            "kib_per_live_subscription": kib_per_live,
            "threads": threads_a,
        },
        "node_b": {
            "rss_before_kib": rss_b_before,
            "rss_after_kib": rss_b_after,
            "rss_max_kib": rss_b_max,
            "rss_at_end_kib": rss_b_end,
            "kib_per_resumed_subscription": kib_per_resumed,
            "threads_before": threads_b_before,
            "threads_after": threads_b_after,
            "threads_max": threads_b_max,
        },
        "goals": {
            "resubscribed_seconds": GOAL_SECONDS,
            "at_sockets": GOAL_SOCKETS,
            "rss_ratio": GOAL_RSS_RATIO,
        },
    });
    Ok((rows, detail))
}

/// Polls `done` every 10 ms until it holds or `budget` passed; whether it
/// held.
async fn wait_for(budget: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + budget;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A socket subscribed live on node A, and where its partitions start.
async fn live_subscriber(connector: &Connector, topic: &str) -> Result<(Ws, Offsets)> {
    let mut ws = connector.connect(Buffers::Busy).await?;
    let frame = format!(r#"{{"type":"subscribe","id":"a","topic":"{topic}"}}"#);
    ws.send(Message::Text(frame.into())).await?;
    let reply = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = ws::next_text(&mut ws).await?;
            match util::frame_type(&text) {
                "subscribed" => return Ok(text),
                "error" => bail!("subscribe {topic}: {text}"),
                _ => {}
            }
        }
    })
    .await
    .context("no `subscribed` from node A")??;
    let start = start_offsets(&reply)?;
    Ok((ws, start))
}

/// `subscribed.partitions` as offsets.
fn start_offsets(subscribed: &str) -> Result<Offsets> {
    let v: serde_json::Value = serde_json::from_str(subscribed)?;
    let partitions = v.get("partitions").context("`subscribed` without partitions")?;
    let mut start = [0; PARTITIONS];
    for (p, offset) in start.iter_mut().enumerate() {
        *offset = partitions
            .get(p.to_string())
            .and_then(serde_json::Value::as_i64)
            .with_context(|| format!("`subscribed` without partition {p}: {subscribed}"))?;
    }
    Ok(start)
}

/// `partition` and `offset` of a `message` frame, without a JSON parse
/// (the gateway writes `type`, `topic`, `partition`, `offset` first).
fn position(text: &str) -> Option<(i32, i64)> {
    if util::frame_type(text) != "message" {
        return None;
    }
    let number = |key: &str| -> Option<i64> {
        let at = text.find(key)? + key.len();
        let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
        text[at..at + digits].parse().ok()
    };
    Some((i32::try_from(number("\"partition\":")?).ok()?, number("\"offset\":")?))
}

/// `retry_after_ms` of a `limit` error, which says to try again later.
fn retry_after_ms(error: &str) -> Option<u64> {
    if !error.contains("\"code\":\"limit\"") {
        return None;
    }
    let key = "\"retry_after_ms\":";
    let at = error.find(key)? + key.len();
    let digits = error[at..].bytes().take_while(u8::is_ascii_digit).count();
    error[at..at + digits].parse().ok()
}

/// `TcpExt: ListenOverflows` of `/proc/net/netstat`: connections dropped on
/// a full accept queue, over the whole machine.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// A small per-socket random source for jitter (splitmix64).
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        Self(seed ^ util::now_us().rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// Uniform in `[0, bound)`.
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound.max(1)
    }

    /// client-js's reconnect delay: full jitter, `[0, 250 ms × 2^attempt)`,
    /// at most 30 s.
    fn reconnect(&mut self, attempt: u32) -> Duration {
        let cap = (250u64 << attempt.min(7)).min(30_000);
        Duration::from_millis(self.below(cap))
    }

    /// client-js's wait after `limit`: `retry_after_ms` plus up to half as
    /// much again (at least 100 ms).
    fn retry(&mut self, retry_after_ms: u64) -> Duration {
        Duration::from_millis(retry_after_ms + self.below((retry_after_ms / 2).max(100)))
    }
}

/// One socket: reads its records on node A until A dies, reconnects to B
/// and resumes from its next offsets, then reads until it reaches the end.
/// Its counts live in `tally` so that they survive an abort.
async fn follow(mut ws: Ws, tally: Arc<Mutex<Tally>>, shared: Shared, seed: u64) {
    let progress = shared.progress.clone();
    let mut first = true;
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(text) => {
                if let Some((p, o)) = position(&text) {
                    tally.lock().expect("tally lock").record(p, o);
                    progress.deliveries.fetch_add(1, Ordering::Relaxed);
                    if first {
                        first = false;
                        progress.with_records.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    drop(ws);
    if !progress.killed.load(Ordering::SeqCst) {
        tally.lock().expect("tally lock").lost_a_before_kill = true;
    }
    let mut jitter = Jitter::new(seed);
    let ws = match resume(&tally, &shared, &mut jitter).await {
        Ok(ws) => ws,
        Err(e) => {
            tally.lock().expect("tally lock").error = Some(format!("resume: {e:#}"));
            progress.resume_failed.fetch_add(1, Ordering::Relaxed);
            progress.done.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let now = util::now_us();
    tally.lock().expect("tally lock").resumed_us = Some(now);
    progress.subscribed_on_b.fetch_add(1, Ordering::Relaxed);
    progress.last_subscribed_us.fetch_max(now, Ordering::Relaxed);
    read_on_b(ws, &tally, shared).await;
    progress.done.fetch_add(1, Ordering::Relaxed);
}

/// Connects to node B (retrying as client-js does) and subscribes from the
/// socket's next offsets, retrying `limit` after its `retry_after_ms`.
async fn resume(tally: &Mutex<Tally>, shared: &Shared, jitter: &mut Jitter) -> Result<Ws> {
    let progress = &shared.progress;
    for attempt in 0..40 {
        tokio::time::sleep(jitter.reconnect(attempt)).await;
        tally.lock().expect("tally lock").attempts += 1;
        let Ok(mut ws) = shared.node_b.connect(Buffers::Busy).await else {
            progress.connect_retries.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tally.lock().expect("tally lock").connected_us = Some(util::now_us());
        loop {
            let next = tally.lock().expect("tally lock").next;
            let offsets: Vec<String> =
                next.iter().enumerate().map(|(p, o)| format!(r#""{p}":{o}"#)).collect();
            let frame = format!(
                r#"{{"type":"subscribe","id":"b","topic":"{}","from":{{"offsets":{{{}}}}}}}"#,
                shared.topic,
                offsets.join(",")
            );
            if ws.send(Message::Text(frame.into())).await.is_err() {
                break;
            }
            match reply(&mut ws, tally, progress).await {
                Reply::Subscribed => return Ok(ws),
                Reply::Retry(ms) => {
                    progress.limited.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(jitter.retry(ms)).await;
                }
                Reply::Refused(text) => bail!("refused: {text}"),
                Reply::Lost => break,
            }
        }
        progress.connect_retries.fetch_add(1, Ordering::Relaxed);
    }
    bail!("no `subscribed` on node B after 40 attempts")
}

enum Reply {
    Subscribed,
    /// `limit` with `retry_after_ms`.
    Retry(u64),
    Refused(String),
    Lost,
}

/// The answer to a resume (records or a `gap` that race it are counted).
async fn reply(ws: &mut Ws, tally: &Mutex<Tally>, progress: &Progress) -> Reply {
    let wait = async {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                if matches!(message, Message::Close(_)) {
                    break;
                }
                continue;
            };
            match util::frame_type(&text) {
                "subscribed" => return Reply::Subscribed,
                "error" => {
                    return retry_after_ms(&text)
                        .map_or_else(|| Reply::Refused(text.as_str().to_owned()), Reply::Retry)
                }
                "gap" => tally.lock().expect("tally lock").gaps += 1,
                _ => {
                    if let Some((p, o)) = position(&text) {
                        tally.lock().expect("tally lock").record(p, o);
                        progress.deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Reply::Lost
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.unwrap_or(Reply::Lost)
}

/// Reads on node B until the socket has reached the end offsets (or B
/// closes it), marking when it caught up.
async fn read_on_b(mut ws: Ws, tally: &Mutex<Tally>, shared: Shared) {
    let Shared { progress, targets: mut watch, .. } = shared;
    let mut targets = *watch.borrow_and_update();
    loop {
        {
            let mut t = tally.lock().expect("tally lock");
            if !t.caught_up && targets.catch_up.is_some_and(|c| t.reached(&c)) {
                t.caught_up = true;
                progress.caught_up.fetch_add(1, Ordering::Relaxed);
                progress.last_caught_up_us.fetch_max(util::now_us(), Ordering::Relaxed);
            }
            if targets.end.is_some_and(|e| t.reached(&e)) {
                t.at_end = true;
                return;
            }
        }
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Some((p, o)) = position(&text) {
                        tally.lock().expect("tally lock").record(p, o);
                        progress.deliveries.fetch_add(1, Ordering::Relaxed);
                    } else if util::frame_type(&text) == "gap" {
                        tally.lock().expect("tally lock").gaps += 1;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    tally.lock().expect("tally lock").error =
                        Some("node B closed the connection".to_owned());
                    return;
                }
                Some(Ok(_)) => {}
            },
            changed = watch.changed() => {
                if changed.is_err() {
                    return;
                }
                targets = *watch.borrow_and_update();
            }
        }
    }
}

/// Produces `rate` records/s to `topic` until `stop`, noting in `ledger`
/// the offset Kafka gave each.
fn produce(
    producer: &FutureProducer,
    topic: &str,
    rate: f64,
    value_bytes: usize,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<pacer::Paced> {
    let runtime = tokio::runtime::Handle::current();
    let (producer, topic, ledger, stop) =
        (producer.clone(), topic.to_owned(), ledger.clone(), stop.clone());
    pacer::spawn(rate, u64::MAX, util::now_us() + 20_000, move |_, intended| {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let value = util::value(intended, value_bytes);
        let record = FutureRecord::<(), str>::to(&topic).payload(&value);
        match producer.send_result(record) {
            Ok(delivery) => {
                ledger.pending.fetch_add(1, Ordering::Relaxed);
                let ledger = ledger.clone();
                runtime.spawn(async move {
                    match delivery.await {
                        Ok(Ok(d)) => ledger.add(d.partition, d.offset),
                        _ => {
                            ledger.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ledger.pending.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(_) => {
                ledger.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    })
}

/// Samples a process's threads and RSS every 100 ms; the maxima.
#[derive(Debug)]
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut threads, mut rss) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    threads = threads.max(gateway::proc_status(pid, "Threads:").unwrap_or(0));
                    rss = rss.max(gateway::proc_status(pid, "VmRSS:").unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (threads, rss)
            }
        });
        Self { stop, task }
    }

    /// (threads, RSS KiB) at most.
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_from_gateway_frames() {
        let frame = ferry_protocol::MessageFrame {
            topic: "bench-failover-1",
            partition: 2,
            offset: 12_345,
            timestamp: Some(1_764_087_000_000),
            key: None,
            headers: &[],
            value: Some(br#"{"t":17,"pad":"x"}"#),
        }
        .encode();
        assert_eq!(position(&frame), Some((2, 12_345)));
        assert_eq!(position(r#"{"type":"subscribed","id":"b","topic":"t"}"#), None);
        let subscribed =
            r#"{"type":"subscribed","id":"a","topic":"t","partitions":{"0":4,"1":0,"2":17}}"#;
        assert_eq!(start_offsets(subscribed).unwrap(), [4, 0, 17]);
    }

    #[test]
    fn limit_is_retried_after_its_delay() {
        let limit =
            r#"{"type":"error","id":"b","code":"limit","message":"busy","retry_after_ms":250}"#;
        assert_eq!(retry_after_ms(limit), Some(250));
        let cap = r#"{"type":"error","id":"b","code":"limit","message":"too many subscriptions"}"#;
        assert_eq!(retry_after_ms(cap), None);
        let mut jitter = Jitter::new(7);
        for attempt in 0..10 {
            assert!(jitter.reconnect(attempt) < Duration::from_millis(30_000));
            let wait = jitter.retry(250);
            assert!(wait >= Duration::from_millis(250) && wait < Duration::from_millis(375));
        }
    }

    #[test]
    fn missing_and_duplicates_per_socket_and_partition() {
        let produced: [Vec<i64>; PARTITIONS] = [(0..10).collect(), (0..5).collect(), vec![]];
        let mut whole = Tally::default();
        for o in 0..10 {
            whole.record(0, o);
        }
        for o in 0..5 {
            whole.record(1, o);
        }
        // Started at offset 2 of partition 0; lost 7; got 4 twice.
        let mut holed = Tally { start: [2, 0, 0], next: [2, 0, 0], ..Tally::default() };
        for o in [2, 3, 4, 4, 5, 6, 8, 9] {
            holed.record(0, o);
        }
        for o in 0..5 {
            holed.record(1, o);
        }
        let c = count(&[whole, holed.clone()], &produced);
        assert_eq!((c.expected, c.missing, c.duplicates, c.unexpected), (28, 1, 1, 0));
        assert!(holed.reached(&[10, 5, 0]) && !holed.reached(&[11, 5, 0]));
    }
}
