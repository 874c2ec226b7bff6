//! The gateway under test: the real `ferry` binary, started as a child
//! process on a free loopback port, with its stderr drained (and its last
//! lines kept for error messages).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How the gateway is started.
#[derive(Debug, Clone)]
pub(crate) struct GatewaySpec {
    pub(crate) binary: PathBuf,
    /// Real brokers, or `None` for the gateway's embedded Kafka.
    pub(crate) brokers: Option<String>,
    /// Raw librdkafka settings passed to every gateway client (and used by
    /// the bench's raw clients too).
    pub(crate) librdkafka: Vec<(String, String)>,
    /// `limits.max_connections`.
    pub(crate) max_connections: usize,
    /// Turn on JWT authentication (HS256, a random secret, one rule that
    /// allows every topic) and mint a token for the bench's connections.
    pub(crate) auth: bool,
    /// Extra `FERRY_*` environment for the gateway.
    pub(crate) env: Vec<(String, String)>,
    /// The HS256 secret when `auth`; `None` for a random one. Nodes that
    /// share it accept each other's tokens (the failover scenario).
    pub(crate) hs_secret: Option<String>,
    /// Run it on the server core (`--pin`).
    pub(crate) pin: bool,
    /// TOML appended to the configuration (e.g. `[[tables]]`).
    pub(crate) extra_config: String,
}

/// A running gateway.
#[derive(Debug)]
pub(crate) struct Gateway {
    child: Child,
    /// The HTTP/WebSocket address it listens on.
    pub(crate) addr: SocketAddr,
    /// Kafka bootstrap servers it uses (the embedded cluster's, if embedded).
    pub(crate) bootstrap: String,
    /// A token the gateway accepts, when it authenticates.
    pub(crate) token: Option<String>,
    log: Arc<Mutex<VecDeque<String>>>,
    config: PathBuf,
}

const LOG_LINES: usize = 40;

impl Gateway {
    pub(crate) fn start(spec: &GatewaySpec) -> Result<Self> {
        let config = write_config(spec)?;
        let mut command = Command::new(&spec.binary);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--config")
            .arg(&config)
            .env("FERRY_LOG", "warn,ferry_gateway::app=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(brokers) = &spec.brokers {
            command.arg("--kafka-brokers").arg(brokers);
        }
        for (k, v) in &spec.env {
            command.env(k, v);
        }
        if spec.pin {
            pin_to_server_core(&mut command);
        }
        let mut child =
            command.spawn().with_context(|| format!("cannot start {}", spec.binary.display()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let keep = log.clone();
        std::thread::Builder::new()
            .name("gateway-stderr".into())
            .spawn(move || drain(stderr, &keep, &tx))
            .context("stderr thread")?;

        let mut gateway = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            bootstrap: spec.brokers.clone().unwrap_or_default(),
            token: None,
            log,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(Line::Bootstrap(b)) => gateway.bootstrap = b,
                Ok(Line::Listening(addr)) => {
                    gateway.addr = addr;
                    break;
                }
                Err(_) => {
                    let status = gateway.child.try_wait().ok().flatten();
                    bail!(
                        "the gateway did not start ({}); its last log lines:\n{}",
                        status.map_or("still running after 60 s".into(), |s| s.to_string()),
                        gateway.last_log()
                    );
                }
            }
        }
        if gateway.bootstrap.is_empty() {
            bail!("the gateway did not log its Kafka bootstrap address");
        }
        if spec.auth {
            gateway.token = Some(mint_token(spec, &gateway.config)?);
        }
        Ok(gateway)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the gateway process, in KiB (VmRSS).
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        proc_status(self.pid(), "VmRSS:")
    }

    /// Threads of the gateway process (librdkafka starts several per client).
    pub(crate) fn threads(&self) -> Result<u64> {
        proc_status(self.pid(), "Threads:")
    }

    /// The value of a Prometheus gauge or counter without labels from
    /// `GET /metrics` (e.g. `ferry_connections`).
    pub(crate) fn metric(&self, name: &str) -> Result<f64> {
        let text = http_get(self.addr, "/metrics")?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (key == name).then(|| value.parse().ok()).flatten()
            })
            .ok_or_else(|| anyhow!("metric {name} not found"))
    }

    /// Last lines the gateway wrote to stderr.
    pub(crate) fn last_log(&self) -> String {
        let log = self.log.lock().expect("log lock");
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Fails if the gateway has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the gateway exited ({status}); its last log lines:\n{}", self.last_log());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub(crate) fn stop(mut self, grace: Duration) {
        self.terminate(grace);
    }

    /// SIGKILL at once, as a crash or an OOM kill would: no drain, no close
    /// frames; its clients see their connections reset.
    pub(crate) fn kill(mut self) -> Result<()> {
        self.child.kill().context("SIGKILL the gateway")?;
        self.child.wait().context("waiting for the killed gateway")?;
        Ok(())
    }

    fn terminate(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A line of a server's log that the bench waits for.
pub(crate) enum Line {
    Bootstrap(String),
    Listening(SocketAddr),
}

/// Reads a server's stderr to its end: keeps the last lines, and reports
/// its Kafka bootstrap and listening address.
pub(crate) fn drain(stderr: impl Read, keep: &Mutex<VecDeque<String>>, tx: &mpsc::Sender<Line>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.split("embedded kafka bootstrap=").nth(1) {
            let bootstrap = rest.split_whitespace().next().unwrap_or_default();
            let _ = tx.send(Line::Bootstrap(bootstrap.to_owned()));
        }
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            if let Ok(addr) = addr.parse() {
                let _ = tx.send(Line::Listening(addr));
            }
        }
        let mut keep = keep.lock().expect("log lock");
        if keep.len() == LOG_LINES {
            keep.pop_front();
        }
        keep.push_back(line);
    }
}

/// `ferry --config FILE token`: an HS256 token signed with the config's
/// secret, valid for a day.
fn mint_token(spec: &GatewaySpec, config: &Path) -> Result<String> {
    let output = Command::new(&spec.binary)
        .arg("--config")
        .arg(config)
        .args(["token", "--sub", "ferry-bench", "--ttl", "86400"])
        .stdin(Stdio::null())
        .output()
        .context("ferry token")?;
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || token.is_empty() {
        bail!("`ferry token` failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(token)
}

/// A random secret for this run's tokens (std's hasher keys are random).
pub(crate) fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..4)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// The gateway's TOML configuration for a bench run.
fn write_config(spec: &GatewaySpec) -> Result<PathBuf> {
    let mut librdkafka = toml::Table::new();
    for (k, v) in &spec.librdkafka {
        librdkafka.insert(k.clone(), toml::Value::String(v.clone()));
    }
    let mut kafka = toml::Table::new();
    // The bench creates its topics through the gateway, on any Kafka.
    kafka.insert("auto_create_topics".into(), true.into());
    kafka.insert("librdkafka".into(), librdkafka.into());
    let mut limits = toml::Table::new();
    let int = |v: usize| toml::Value::Integer(v as i64);
    limits.insert("max_connections".into(), int(spec.max_connections));
    // Per-client policies that would cap a benchmark that uses few clients
    // (or one token) at a time: lifted, so the figures are capacity.
    limits.insert("max_connections_per_subject".into(), int(spec.max_connections));
    limits.insert("publish_rate".into(), int(1_000_000));
    limits.insert("publish_burst".into(), int(2_000_000));
    let mut root = toml::Table::new();
    root.insert("kafka".into(), kafka.into());
    root.insert("limits".into(), limits.into());
    if spec.auth {
        let mut auth = toml::Table::new();
        auth.insert("mode".into(), "jwt".into());
        let secret = spec.hs_secret.clone().unwrap_or_else(random_secret);
        auth.insert("hs_secret".into(), secret.into());
        let mut rule = toml::Table::new();
        rule.insert("publish".into(), vec!["**"].into());
        rule.insert("subscribe".into(), vec!["**"].into());
        let mut acl = toml::Table::new();
        acl.insert("rules".into(), vec![toml::Value::Table(rule)].into());
        root.insert("auth".into(), auth.into());
        root.insert("acl".into(), acl.into());
    }
    let text = toml::to_string(&root).context("gateway config")? + "\n" + &spec.extra_config;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ferry-bench-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The core the server under test runs on with `--pin`; the bench and
/// everything else it starts run on the others.
pub(crate) const SERVER_CORE: usize = 0;

/// Makes the process `command` starts run on [`SERVER_CORE`] only (every
/// thread it starts inherits the mask).
pub(crate) fn pin_to_server_core(command: &mut Command) {
    use nix::sched::{sched_setaffinity, CpuSet};
    use std::os::unix::process::CommandExt;
    let mut set = CpuSet::new();
    let _ = set.set(SERVER_CORE);
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes one system call
    // on a set built before the fork, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(std::io::Error::from)
        });
    }
}

/// Pins this process (called before it starts any thread, so every thread
/// inherits it) to every core but [`SERVER_CORE`]. Fails on one core.
pub(crate) fn pin_self_to_load_cores() -> Result<String> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        bail!("--pin needs at least 2 cores, this machine has {cpus}");
    }
    let mut set = CpuSet::new();
    for core in (0..cpus).filter(|c| *c != SERVER_CORE) {
        set.set(core).context("core number")?;
    }
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).context("sched_setaffinity")?;
    Ok(format!(
        "server under test on core {SERVER_CORE}, load (ferry-bench, Kafka host) on cores 1-{}",
        cpus - 1
    ))
}

/// A numeric `/proc/PID/status` field (`VmRSS:` in KiB, `Threads:`).
pub(crate) fn proc_status(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// CPU time (user + system) a process has used so far.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    Some(Duration::from_millis((utime + stime) * 1000 / hz.max(1)))
}

/// A minimal HTTP/1.0 GET on loopback (for `/metrics`).
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) =
        response.split_once("\r\n\r\n").ok_or_else(|| anyhow!("malformed HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// Where the gateway binary is: `--gateway`, else `target/release/ferry` of
/// this workspace (or of `CARGO_TARGET_DIR`).
pub(crate) fn find_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        bail!("--gateway {}: no such file", path.display());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the workspace")
        .to_owned();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let candidate = target.join("release").join("ferry");
    if candidate.is_file() {
        if let Some(warning) = staleness(&candidate, &workspace) {
            eprintln!("ferry-bench: warning: {warning}");
        }
        return Ok(candidate);
    }
    bail!(
        "{} not found: build the gateway first with `cargo build --release -p ferry-gateway` \
         (or pass --gateway PATH)",
        candidate.display()
    )
}

/// A warning when gateway or protocol sources are newer than the binary.
fn staleness(binary: &Path, workspace: &Path) -> Option<String> {
    let built = binary.metadata().ok()?.modified().ok()?;
    let mut newest = None;
    let mut stack = vec![workspace.join("gateway/src"), workspace.join("protocol/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                if modified > built && newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                    newest = Some((modified, path));
                }
            }
        }
    }
    newest.map(|(_, path)| {
        format!(
            "{} is newer than {}: rebuild with `cargo build --release -p ferry-gateway`",
            path.display(),
            binary.display()
        )
    })
}
