//! The `ferry` binary: config → telemetry → build → run until a signal → drain.
//! `ferry token` mints development tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_gateway::app::BuildError;
use ferry_gateway::config::{self, Config, Overrides, Purpose};
use ferry_gateway::App;
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ferry: a WebSocket ⇄ Kafka event hub.
///
/// With no brokers configured it starts an embedded Kafka in-process.
/// Every setting can also come from a TOML file or a FERRY_* variable
/// (see README.md).
#[derive(Debug, Parser)]
#[command(name = "ferry", version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "FERRY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Kafka bootstrap brokers; none means the embedded Kafka.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Node name sent in `welcome`.
    #[arg(long)]
    node_id: Option<String>,
    /// Allow `auth.mode = "none"` on a non-loopback address. Anyone who can
    /// reach the port can then publish and subscribe to every topic.
    #[arg(long)]
    insecure: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mint an HS256 token for development and tests, signed with
    /// `auth.hs_secret` (config file or FERRY_AUTH_HS_SECRET).
    Token {
        /// The subject (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Extra claim `NAME=VALUE` (VALUE is read as JSON when it parses,
        /// else as a string); repeatable.
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Token grant: a pattern the token may publish to (repeatable).
        #[arg(long = "grant-pub", value_name = "PATTERN")]
        grant_pub: Vec<String>,
        /// Token grant: a pattern the token may subscribe to (repeatable).
        #[arg(long = "grant-sub", value_name = "PATTERN")]
        grant_sub: Vec<String>,
    },
    /// Drain the node running with this configuration (a Kubernetes
    /// `preStop` hook): asks its admin API (`admin.listen`, with the admin
    /// token) to close its connections over SECONDS, then waits until the
    /// node has exited (at most SECONDS plus `shutdown_grace_ms` and 5 s).
    Drain {
        /// Over how long the connections close.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

/// Exit code for a configuration error (like EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log nobody reads any more (the supervisor closed the pipe) is
        // no reason to stop: by default the subscriber reports a failed
        // write with `eprintln!`, which panics on that same closed pipe.
        .log_internal_errors(false)
        .init();

    let overrides = Overrides {
        config_file: args.config,
        listen: args.listen,
        kafka_brokers: args.kafka_brokers,
        node_id: args.node_id,
        insecure: args.insecure,
    };
    let purpose = match args.command {
        Some(Command::Token { .. } | Command::Drain { .. }) => Purpose::Token,
        None => Purpose::Serve,
    };
    let checks = |config: &Config| match purpose {
        Purpose::Serve => ferry_gateway::app::serving_checks(config),
        Purpose::Token => Vec::new(),
    };
    let config = match config::load_for(purpose, &overrides, std::env::vars(), checks) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("ferry: {errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match args.command {
        Some(Command::Token { sub, claims, ttl, grant_pub, grant_sub }) => {
            mint_token(&config, sub, &claims, ttl, grant_pub, grant_sub)
        }
        Some(Command::Drain { seconds }) => drain(&config, seconds),
        None => serve(config),
    }
}

fn serve(config: Config) -> ExitCode {
    if config.auth.mode == ferry_gateway::auth::AuthMode::None {
        if config.listen.ip().is_loopback() {
            tracing::info!("authentication is off (auth.mode = \"none\"): loopback only");
        } else {
            tracing::warn!(
                listen = %config.listen,
                "INSECURE: authentication is off on a non-loopback address (--insecure); \
                 anyone who reaches this port can publish and subscribe to every topic"
            );
        }
    }
    if config.auth.mode == ferry_gateway::auth::AuthMode::Jwt && config.acl.rules.is_empty() {
        tracing::warn!(
            "authentication is on and there are no ACL rules: every publish, subscribe and \
             group join is refused (token grants only narrow what rules allow). Add \
             [[acl.rules]] to the configuration file, e.g. `[[acl.rules]]` then \
             `publish = [\"demo.*\"]` and `subscribe = [\"demo.*\"]` for every authenticated \
             client (README.md, \"Authentication and topic ACLs\")"
        );
    }
    // Before the runtime: the exporter's thread and client are its own.
    let telemetry = match ferry_gateway::telemetry::start(&config.telemetry, config.node_id()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        // Listening from the start: a signal while the node still starts
        // (waiting for Kafka) stops it cleanly too.
        let stop = CancellationToken::new();
        match Signals::new() {
            Ok(signals) => {
                tokio::spawn(signals.cancel_on_signal(stop.clone()));
            }
            Err(e) => {
                eprintln!("ferry: cannot handle signals: {e}");
                return ExitCode::FAILURE;
            }
        }
        let built = tokio::select! {
            built = App::build(config) => built,
            _ = stop.cancelled() => {
                tracing::info!("stopped before serving");
                return ExitCode::SUCCESS;
            }
        };
        let app = match built {
            Ok(app) => app,
            Err(e) => {
                eprintln!("ferry: {e}");
                return ExitCode::from(build_exit_code(&e));
            }
        };
        let shutdown = app.shutdown_token();
        tokio::spawn(async move {
            stop.cancelled().await;
            shutdown.cancel();
        });
        app.run().await;
        ExitCode::SUCCESS
    });
    // A Kafka look-up left running by a start cut short ends on its own
    // timeout; the process need not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // The spans of the drain too, sent or given up on within a few seconds.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    code
}

/// 64 for what the operator must fix in the configuration: a setting the
/// Kafka client refuses (a bad `kafka.librdkafka` entry, a broker list it
/// cannot parse) like any other configuration error; 1 for the rest (the
/// port is taken, the embedded Kafka failed).
fn build_exit_code(e: &BuildError) -> u8 {
    match e {
        BuildError::Config(_)
        | BuildError::Kafka(KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_)) => {
            EXIT_CONFIG
        }
        _ => 1,
    }
}

fn mint_token(
    config: &Config,
    sub: String,
    claims: &[String],
    ttl: i64,
    grant_pub: Vec<String>,
    grant_sub: Vec<String>,
) -> ExitCode {
    let Some(secret) = &config.auth.hs_secret else {
        eprintln!("ferry token: set auth.hs_secret in the config file or FERRY_AUTH_HS_SECRET");
        return ExitCode::from(EXIT_CONFIG);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let mut body = serde_json::Map::new();
    for claim in claims {
        let Some((name, value)) = claim.split_once('=') else {
            eprintln!("ferry token: --claim takes NAME=VALUE, got {claim:?}");
            return ExitCode::from(EXIT_CONFIG);
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
        body.insert(name.to_owned(), value);
    }
    body.insert("sub".into(), sub.into());
    body.insert("iat".into(), now.into());
    body.insert("exp".into(), (now + ttl).into());
    if let Some(iss) = &config.auth.issuer {
        body.insert("iss".into(), iss.clone().into());
    }
    if let Some(aud) = &config.auth.audience {
        body.insert("aud".into(), aud.clone().into());
    }
    if !grant_pub.is_empty() || !grant_sub.is_empty() {
        // Without the claim configured the gateway would ignore the grants,
        // and the token would silently allow more than the caller asked for.
        let Some(claim) = config.acl.token_grants_claim.clone() else {
            eprintln!(
                "ferry token: --grant-pub/--grant-sub need acl.token_grants_claim \
                 (config file or FERRY_ACL_TOKEN_GRANTS_CLAIM); without it the gateway ignores grants"
            );
            return ExitCode::from(EXIT_CONFIG);
        };
        body.insert(claim, serde_json::json!({"pub": grant_pub, "sub": grant_sub}));
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret.0.as_bytes());
    match jsonwebtoken::encode(&jsonwebtoken::Header::default(), &body, &key) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ferry drain`: POSTs `/admin/v1/drain` to the local admin API, then
/// waits until nothing listens there any more.
fn drain(config: &Config, seconds: u64) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    let admin = &config.admin;
    if !admin.enabled {
        eprintln!("ferry drain: the admin API is off (admin.enabled)");
        return ExitCode::from(EXIT_CONFIG);
    }
    let token = match admin.bearer() {
        Ok(Some(token)) => token,
        Ok(None) => {
            eprintln!("ferry drain: set FERRY_ADMIN_TOKEN (admin.token) or admin.token_file");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("ferry drain: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // A node listening on every address is reached on loopback.
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        let ip =
            if addr.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() };
        addr = SocketAddr::new(ip, addr.port());
    }
    let body = format!("{{\"seconds\":{seconds}}}");
    let request = format!(
        "POST /admin/v1/drain HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.0,
        body.len()
    );
    let answer = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    });
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("ferry drain: the admin API at {addr} does not answer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = answer.split(' ').nth(1).unwrap_or_default();
    let said = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body).trim();
    if status != "202" {
        eprintln!("ferry drain: the node answered {status}: {said}");
        return ExitCode::FAILURE;
    }
    eprintln!("ferry drain: {said}");
    let deadline = Instant::now()
        + Duration::from_secs(seconds + 5)
        + Duration::from_millis(config.shutdown_grace_ms);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            eprintln!("ferry drain: the node has exited");
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("ferry drain: the node still runs after the drain; it ends on SIGTERM");
    ExitCode::SUCCESS
}

/// SIGINT and SIGTERM, handled from the moment this is made.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Cancels `stop` on the first signal.
    async fn cancel_on_signal(mut self, stop: CancellationToken) {
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
        }
        stop.cancel();
    }
}
