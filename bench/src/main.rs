//! `ferry-bench`: every benchmark scenario of the gateway, back to back,
//! each beside its raw baseline measured in the same command on the same
//! Kafka. See `bench/README.md`.

mod baseline;
mod broadcast;
mod gateway;
mod kafka;
mod pacer;
mod report;
mod scenarios;
mod stats;
mod util;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::gateway::{Gateway, GatewaySpec};
use crate::kafka::KafkaSpec;
use crate::report::Row;
use crate::ws::Connector;

/// Load generator for the Ferry gateway. Starts `target/release/ferry`
/// itself (build it first: `cargo build --release -p ferry-gateway`), runs
/// every scenario with its raw baseline, prints one table and writes JSON.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub(crate) struct Opts {
    /// Short runs (about one minute in all) instead of the full ones (three
    /// to five minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// A real Kafka's bootstrap servers; default: the gateway's embedded Kafka.
    #[arg(long, value_name = "HOST:PORT")]
    kafka: Option<String>,
    /// Where to write the JSON results.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Run only these scenarios (comma separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// The gateway binary; default: target/release/ferry of this workspace.
    #[arg(long, value_name = "PATH")]
    gateway: Option<PathBuf>,
    /// Authentication: `jwt` starts the gateway with `auth.mode = "jwt"` (a
    /// random HS256 secret, an ACL rule allowing every topic) and sends a
    /// token minted with `ferry token` on every connection; `none` runs it
    /// unauthenticated.
    #[arg(long, value_enum, default_value_t = Auth::Jwt)]
    auth: Auth,
    /// Bearer token sent on every WebSocket connection (`Authorization`),
    /// instead of the minted one (with --gateway-env for the matching
    /// gateway settings).
    #[arg(long, env = "FERRY_BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Extra environment for the gateway process, `NAME=VALUE` (repeatable),
    /// e.g. the auth settings that match --token.
    #[arg(long = "gateway-env", value_name = "NAME=VALUE", value_parser = key_value)]
    gateway_env: Vec<(String, String)>,
    /// Raw librdkafka setting `KEY=VALUE` (repeatable), applied to the
    /// gateway (`kafka.librdkafka`) and to the raw baselines alike.
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
    librdkafka: Vec<(String, String)>,
    /// Loopback source addresses for client sockets (127.0.0.2, …).
    #[arg(long, default_value_t = 16)]
    sources: usize,
    /// Publishes in flight per socket in the publish scenario (and per task
    /// for the raw producer).
    #[arg(long, default_value_t = 64)]
    publish_window: usize,
    /// Connections the ramp tries to hold (capped by the file limit).
    #[arg(long, default_value_t = 50_000)]
    ramp_connections: usize,
    /// Connections of the idle scenario.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Sockets of the fan-out capacity scenario.
    #[arg(long, default_value_t = 1_000)]
    fanout_sockets: usize,
    /// Fan-out: run exactly these rates (records/s, comma separated) instead
    /// of searching, e.g. to profile the gateway at a fixed load.
    #[arg(long, value_delimiter = ',', value_name = "REC/S")]
    fanout_rates: Vec<f64>,
    /// Fan-out: seconds per rate step (default 3, quick 1).
    #[arg(long, value_name = "SECONDS")]
    step_seconds: Option<f64>,
    /// Sockets of the failover scenario, one round per size (comma
    /// separated; default 1000,10000, quick 200).
    #[arg(long, value_delimiter = ',', value_name = "N")]
    failover_sockets: Vec<usize>,
    /// Failover: records/s of the steady producer (default 200, and fewer
    /// above 1,000 sockets: 200,000 deliveries/s in all).
    #[arg(long, value_name = "REC/S")]
    failover_rate: Option<f64>,
    /// Record value size in bytes (a JSON object carrying the send time).
    #[arg(long, default_value_t = 200)]
    value_bytes: usize,
    /// Fan-out: the fixed rates (records/s) at which the gateway and the
    /// relay are compared per server CPU-second (default 100,200,400;
    /// quick 100).
    #[arg(long, value_delimiter = ',', value_name = "REC/S")]
    compare_rates: Vec<f64>,
    /// Publish: the fixed total rates (publishes/s, spread over the 100
    /// sockets, sent at their intended times) at which the gateway and the
    /// publisher are also compared per server CPU-second (default
    /// 10000,40000; quick 10000; 0: none).
    #[arg(long, value_delimiter = ',', value_name = "PUB/S")]
    publish_rates: Vec<f64>,
    /// Run the server under test (gateway, relay, publisher) on core 0 and
    /// ferry-bench (the load, the raw baselines, the embedded Kafka's host
    /// process) on the other cores, so that runs repeat.
    #[arg(long)]
    pin: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// How the bench's connections authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Auth {
    /// JWT (HS256) on every connection.
    Jwt,
    /// No authentication.
    None,
}

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Scenario {
    /// 100 sockets pipelining publishes vs the raw producer.
    Publish,
    /// Deliveries/s at the highest rate with p99 < 50 ms vs raw broadcast.
    Fanout,
    /// Kafka→socket latency at 10k records/s to 100 sockets vs raw consumer.
    FanoutLatency,
    /// Socket → Kafka → another socket.
    RoundTrip,
    /// RSS growth per idle, subscribed connection.
    Idle,
    /// Connections accepted per second; most held.
    Ramp,
    /// Node A killed: every socket resumes on node B.
    Failover,
    /// Bytes and gateway CPU per delivery with permessage-deflate and without.
    Deflate,
    /// `from: "snapshot"` of 10,000 and 100,000 keys to 1 and to 100 sockets.
    Snapshot,
}

impl Scenario {
    const ALL: [Self; 9] = [
        Self::Publish,
        Self::Fanout,
        Self::FanoutLatency,
        Self::RoundTrip,
        Self::Idle,
        Self::Ramp,
        Self::Failover,
        Self::Deflate,
        Self::Snapshot,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Fanout => "fan-out",
            Self::FanoutLatency => "fan-out latency",
            Self::RoundTrip => "round trip",
            Self::Idle => "idle connections",
            Self::Ramp => "connection ramp",
            Self::Failover => "failover",
            Self::Deflate => "deflate",
            Self::Snapshot => "snapshot",
        }
    }
}

/// What every scenario needs.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) opts: Opts,
    binary: PathBuf,
    run_id: String,
    /// File descriptors this process (and so the gateway) may open.
    pub(crate) nofile: u64,
}

impl Ctx {
    pub(crate) fn quick(&self) -> bool {
        self.opts.quick
    }

    /// `full` normally, `quick` with `--quick`.
    pub(crate) fn pick<T>(&self, full: T, quick: T) -> T {
        if self.opts.quick {
            quick
        } else {
            full
        }
    }

    /// Starts a fresh gateway for one scenario.
    pub(crate) fn gateway(&self, max_connections: usize) -> Result<Gateway> {
        self.start_gateway(&self.gateway_spec(max_connections), "gateway")
    }

    /// How this run starts a gateway; a scenario may adjust it (e.g. several
    /// nodes on one Kafka with one secret).
    pub(crate) fn gateway_spec(&self, max_connections: usize) -> GatewaySpec {
        GatewaySpec {
            binary: self.binary.clone(),
            brokers: self.opts.kafka.clone(),
            librdkafka: self.opts.librdkafka.clone(),
            max_connections,
            auth: self.opts.auth == Auth::Jwt && self.opts.token.is_none(),
            env: self.opts.gateway_env.clone(),
            hs_secret: None,
            pin: self.opts.pin,
            extra_config: String::new(),
        }
    }

    /// Starts the gateway under test for a scenario that compares server
    /// CPU: on the embedded Kafka, that Kafka lives in a second gateway
    /// process (the "Kafka host", serving nothing else and not pinned), so
    /// that the gateway's CPU and memory figures hold no broker work, as the
    /// baselines' do not. Returns (gateway, Kafka host).
    pub(crate) fn gateway_apart_from_kafka(
        &self,
        max_connections: usize,
    ) -> Result<(Gateway, Option<Gateway>)> {
        let mut spec = self.gateway_spec(max_connections);
        if self.opts.kafka.is_some() {
            return Ok((self.start_gateway(&spec, "gateway")?, None));
        }
        let host_spec = GatewaySpec { pin: false, ..spec.clone() };
        let host = self.start_gateway(&host_spec, "Kafka host (embedded Kafka)")?;
        spec.brokers = Some(host.bootstrap.clone());
        // What the gateway sets itself on its own embedded Kafka: the mock
        // broker answers a fetch only when `fetch.wait.max.ms` expires.
        spec.librdkafka.push(("fetch.wait.max.ms".into(), "5".into()));
        let gateway = self.start_gateway(&spec, "gateway")?;
        Ok((gateway, Some(host)))
    }

    /// Where topics are created: the Kafka host when there is one (a
    /// gateway on another process's embedded Kafka cannot create topics
    /// there), else the gateway.
    pub(crate) fn topic_creator(
        &self,
        gateway: &Gateway,
        host: Option<&Gateway>,
    ) -> Arc<Connector> {
        self.connector(host.unwrap_or(gateway))
    }

    /// Starts a gateway from `spec`; `label` names it in the progress line.
    pub(crate) fn start_gateway(&self, spec: &GatewaySpec, label: &str) -> Result<Gateway> {
        let gateway = Gateway::start(spec)?;
        progress(format_args!(
            "{label} pid {} on {} (Kafka {}{})",
            gateway.pid(),
            gateway.addr,
            gateway.bootstrap,
            if gateway.token.is_some() { ", JWT auth" } else { "" }
        ));
        Ok(gateway)
    }

    /// The Kafka the gateway uses, for the raw baselines.
    pub(crate) fn kafka(&self, gateway: &Gateway) -> KafkaSpec {
        KafkaSpec {
            bootstrap: gateway.bootstrap.clone(),
            embedded: self.opts.kafka.is_none(),
            librdkafka: self.opts.librdkafka.clone(),
        }
    }

    pub(crate) fn connector(&self, gateway: &Gateway) -> Arc<Connector> {
        let token = self.opts.token.clone().or_else(|| gateway.token.clone());
        Arc::new(Connector::new(gateway.addr, token, self.opts.sources))
    }

    /// A topic name unique to this run.
    pub(crate) fn topic(&self, name: &str) -> String {
        format!("bench-{name}-{}", self.run_id)
    }

    /// Creates `topic` through the gateway (a subscribe makes the gateway
    /// create it, on the embedded and on a real Kafka alike), and returns
    /// its partition count as the gateway creates topics (3).
    pub(crate) async fn create_topic(&self, connector: &Connector, topic: &str) -> Result<i32> {
        let mut ws = connector.connect(ws::Buffers::Small).await?;
        ws::subscribe(&mut ws, topic).await.with_context(|| format!("creating topic {topic}"))?;
        ws::unsubscribe(&mut ws, topic).await?;
        Ok(TOPIC_PARTITIONS)
    }
}

/// `kafka.topic_partitions` (the gateway's default, which the bench keeps).
pub(crate) const TOPIC_PARTITIONS: i32 = 3;

/// One scenario's result.
#[derive(Debug, Serialize)]
pub(crate) struct Outcome {
    pub(crate) rows: Vec<Row>,
    /// Everything measured, for the JSON.
    pub(crate) detail: serde_json::Value,
}

/// A progress line on stderr.
pub(crate) fn progress(args: std::fmt::Arguments<'_>) {
    eprintln!("[{:7.1}s] {args}", util::now_us() as f64 / 1e6);
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    meta: Meta,
    rows: &'a [Row],
    scenarios: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct Meta {
    command: String,
    date: String,
    kafka: String,
    quick: bool,
    auth: String,
    machine: Machine,
    gateway_binary: String,
    /// `git` state of this work tree (the gateway binary may come from
    /// elsewhere, see `gateway_binary`).
    workspace_git: String,
    seconds: f64,
    /// `--pin`: which cores ran what.
    pinned: Option<String>,
    nofile_limit: u64,
    /// `/proc/loadavg` at the start and the end: other work on the machine.
    load_before: String,
    load_after: String,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    memory: String,
    kernel: String,
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let memory = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    Machine {
        // Every core of the machine, not only those this process may use
        // (with --pin, fewer).
        cpus: read("/proc/cpuinfo").lines().filter(|l| l.starts_with("processor")).count(),
        cpu_model,
        memory,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
    }
}

fn git_state() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = run(&["status", "--porcelain", "--", "gateway", "protocol"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head} + uncommitted gateway/protocol changes")
            } else {
                head
            }
        }
        None => "unknown".to_owned(),
    }
}

/// Raises the soft file limit to the hard one (and the hard one as far as
/// allowed); children (the gateway) inherit it. Returns the soft limit.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = 1 << 20;
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> ExitCode {
    util::start_clock();
    let opts = Opts::parse();
    match run(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the scenarios; `Ok(false)` when one could not complete.
fn run(opts: Opts) -> Result<bool> {
    let started = Instant::now();
    let load_before = loadavg();
    if cfg!(debug_assertions) {
        eprintln!(
            "ferry-bench: warning: a debug build; run with `cargo run --release -p ferry-bench`"
        );
    }
    let pinned = if opts.pin { Some(gateway::pin_self_to_load_cores()?) } else { None };
    let binary = gateway::find_binary(opts.gateway.as_deref())?;
    let nofile = raise_nofile();
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() % 100_000)
    );
    let selected: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| opts.only.is_empty() || opts.only.contains(s))
        .collect();
    let json_path = opts.json.clone().unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/ferry-bench.json"))
    });
    let ctx = Ctx { opts, binary, run_id, nofile };
    progress(format_args!(
        "ferry-bench: {} on {}, scenarios: {}{}",
        if ctx.quick() { "quick" } else { "full" },
        ctx.opts.kafka.as_deref().unwrap_or("the embedded Kafka"),
        selected.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        pinned.as_deref().map(|p| format!("; pinned: {p}")).unwrap_or_default()
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    let mut all_ran = true;
    for scenario in selected {
        let began = Instant::now();
        progress(format_args!("== {} ==", scenario.name()));
        let outcome = runtime.block_on(scenarios::run(&ctx, scenario));
        let secs = began.elapsed().as_secs_f64();
        match outcome {
            Ok(outcome) => {
                rows.extend(outcome.rows);
                let mut detail = outcome.detail;
                if let Some(map) = detail.as_object_mut() {
                    map.insert("seconds".into(), secs.into());
                }
                details.insert(scenario.name().into(), detail);
            }
            Err(e) => {
                all_ran = false;
                progress(format_args!("{} failed: {e:#}", scenario.name()));
                rows.push(Row::failed(scenario.name(), &format!("{e:#}")));
                details.insert(
                    scenario.name().into(),
                    serde_json::json!({"error": format!("{e:#}"), "seconds": secs}),
                );
            }
        }
        progress(format_args!("{} took {secs:.1} s", scenario.name()));
    }
    // Dropping the runtime may wait on blocking tasks; do not let it hang.
    runtime.shutdown_timeout(Duration::from_secs(5));

    let table = report::table(&rows);
    let seconds = started.elapsed().as_secs_f64();
    let meta = Meta {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date: util::utc_now(),
        kafka: ctx
            .opts
            .kafka
            .clone()
            .map_or("embedded (librdkafka mock cluster in the gateway)".into(), |k| {
                format!("real broker at {k}")
            }),
        quick: ctx.quick(),
        auth: match (&ctx.opts.token, ctx.opts.auth) {
            (Some(_), _) => "bearer token from --token".into(),
            (None, Auth::Jwt) => "JWT (HS256 bearer token) on every connection".into(),
            (None, Auth::None) => "none".into(),
        },
        machine: machine(),
        gateway_binary: ctx.binary.display().to_string(),
        workspace_git: git_state(),
        seconds,
        pinned: pinned.clone(),
        nofile_limit: ctx.nofile,
        load_before,
        load_after: loadavg(),
    };
    println!();
    println!(
        "Ferry benchmarks — {} — {}{} — Kafka: {} — auth: {} — {} CPUs, {} — {:.0} s — \
         load average {} before, {} after",
        meta.date,
        if meta.quick { "quick" } else { "full" },
        if meta.pinned.is_some() { ", pinned" } else { "" },
        meta.kafka,
        meta.auth,
        meta.machine.cpus,
        meta.machine.memory,
        seconds,
        meta.load_before,
        meta.load_after
    );
    println!();
    print!("{table}");
    let results = Results { meta, rows: &rows, scenarios: details };
    if let Some(dir) = json_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!();
    println!("JSON: {}", json_path.display());
    Ok(all_ran)
}
