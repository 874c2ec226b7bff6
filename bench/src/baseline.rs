//! The baseline servers as processes: `ferry-relay` (fan-out) and
//! `ferry-publisher` (publish), built from `src/servers/` into the same
//! directory as `ferry-bench`, each started like the gateway (a child
//! process on a free loopback port, on the gateway's Kafka, pinned like
//! it with `--pin`) and stopped with SIGTERM.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::gateway::{self, Line};
use crate::kafka::KafkaSpec;

/// Which baseline server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Relay,
    Publisher,
}

impl Kind {
    pub(crate) fn binary_name(self) -> &'static str {
        match self {
            Self::Relay => "ferry-relay",
            Self::Publisher => "ferry-publisher",
        }
    }
}

/// A running baseline server.
#[derive(Debug)]
pub(crate) struct Baseline {
    child: Child,
    pub(crate) addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// The baseline binary next to this `ferry-bench` (cargo builds every
/// binary of the package into one directory).
fn binary(kind: Kind) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating ferry-bench")?;
    let path = exe.with_file_name(kind.binary_name());
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "{} not found: build the bench's binaries with `cargo build --release -p ferry-bench` \
             (`cargo run` builds only ferry-bench)",
            path.display()
        )
    }
}

impl Baseline {
    /// Starts `kind` on the Kafka of `kafka`; `pin` puts it on the server
    /// core.
    pub(crate) fn start(kind: Kind, kafka: &KafkaSpec, pin: bool) -> Result<Self> {
        let binary = binary(kind)?;
        let mut command = Command::new(&binary);
        command
            .args(["--listen", "127.0.0.1:0", "--kafka", &kafka.bootstrap])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if kafka.embedded {
            command.arg("--embedded");
        }
        for (k, v) in &kafka.librdkafka {
            command.arg("--librdkafka").arg(format!("{k}={v}"));
        }
        if pin {
            gateway::pin_to_server_core(&mut command);
        }
        let mut child =
            command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("piped stderr")?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let keep = log.clone();
        std::thread::Builder::new()
            .name("baseline-stderr".into())
            .spawn(move || gateway::drain(stderr, &keep, &tx))
            .context("stderr thread")?;
        let mut server = Self { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), log };
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Line::Listening(addr)) => {
                    server.addr = addr;
                    break;
                }
                Ok(Line::Bootstrap(_)) => {}
                Err(_) => bail!(
                    "{} did not start; its last log lines:\n{}",
                    kind.binary_name(),
                    server.last_log()
                ),
            }
        }
        crate::progress(format_args!(
            "{} pid {} on {}",
            kind.binary_name(),
            server.pid(),
            server.addr
        ));
        Ok(server)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS in KiB.
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        gateway::proc_status(self.pid(), "VmRSS:")
    }

    fn last_log(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Fails if the server has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the baseline exited ({status}); its last log lines:\n{}", self.last_log());
        }
        Ok(())
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
