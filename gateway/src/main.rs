//! The `ferry` binary: config → telemetry → build → run until a signal → drain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_gateway::config::{self, Overrides};
use ferry_gateway::App;
use tracing_subscriber::EnvFilter;

/// Ferry: a WebSocket ⇄ Kafka event hub.
///
/// With no brokers configured it starts an embedded Kafka in-process.
/// Every setting can also come from a TOML file or a FERRY_* variable
/// (see README.md).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "FERRY_CONFIG")]
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
}

/// Exit code for a configuration error (EX_CONFIG-like usage error).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let overrides = Overrides {
        config_file: args.config,
        listen: args.listen,
        kafka_brokers: args.kafka_brokers,
        node_id: args.node_id,
    };
    let config = match config::load(&overrides, std::env::vars()) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("ferry: {errors}");
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
    runtime.block_on(async {
        let app = match App::build(config).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("ferry: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = app.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            shutdown.cancel();
        });
        app.run().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
