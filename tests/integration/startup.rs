//! Starting and stopping the `ferry` binary as an operator sees it: every
//! configuration mistake found before anything starts (TLS files and
//! unknown `FERRY_*` variables included), a clean exit on SIGTERM while the
//! node still waits for Kafka, `--version`, `ferry token` without a serving
//! configuration, and what the first log lines and `/metrics` tell.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// A secret long enough for `auth.hs_secret`.
const SECRET: &str = "a-startup-test-secret-that-is-long-enough-0123456789";

/// What a `ferry` run that ended left behind.
#[derive(Debug)]
struct Exit {
    /// The exit code; `None` when a signal ended it.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Waits at most `wait` for `child` to exit; past it the child is killed
/// and the answer is `None`.
async fn exit_within(
    child: &mut std::process::Child,
    wait: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `ferry` with `args` and `env` (and none of this process's own
/// `FERRY_*` variables) until it exits; a run still going after `wait` is
/// killed and fails the test.
async fn run_ferry(args: &[&str], env: &[(&str, &str)], wait: Duration) -> Exit {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FERRY_")) {
        command.env_remove(name);
    }
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry binary starts");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let Some(status) = exit_within(&mut child, wait).await else {
        panic!("ferry {args:?} still ran after {wait:?}; stderr: {}", stderr.join().unwrap());
    };
    Exit { code: status.code(), stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// A file in a fresh temporary directory.
fn temp_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("ferry-startup-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Signs of a start that got under way: the embedded Kafka or the listener.
fn assert_nothing_started(stderr: &str) {
    for started in ["embedded kafka", "listening on", "TLS certificate loaded"] {
        assert!(!stderr.contains(started), "{started:?} before the errors:\n{stderr}");
    }
}

#[ferry_test(timeout_secs = 90)]
async fn tls_file_errors_are_reported_with_the_others_before_anything_starts() {
    let key = temp_file("key.pem", "not a PEM key\n");
    let missing = std::env::temp_dir()
        .join(format!("ferry-startup-missing-{}", uuid::Uuid::new_v4().simple()))
        .join("cert.pem");
    let missing = missing.to_string_lossy().into_owned();

    // The TLS files alone: a configuration error, not a failed start.
    let tls = format!("[tls]\ncert_file = \"{missing}\"\nkey_file = \"{key}\"\n");
    let config = temp_file("ferry.toml", &tls);
    let exit = run_ferry(&["--config", &config, "--listen", "127.0.0.1:0"], &[], WAIT).await;
    assert_eq!(exit.code, Some(64), "{exit:?}");
    assert!(exit.stderr.contains("tls.cert_file"), "{}", exit.stderr);
    assert!(exit.stderr.contains(&missing), "{}", exit.stderr);
    assert!(exit.stderr.contains("tls.key_file"), "{}", exit.stderr);
    assert_nothing_started(&exit.stderr);

    // With another mistake: every error in one list.
    let more = "[limits]\nmax_frame_bytes = 10\n[telemetry]\notlp_endpoint = \"collector:4318\"\n";
    let config = temp_file("ferry.toml", &format!("{tls}{more}"));
    let exit = run_ferry(&["--config", &config, "--listen", "127.0.0.1:0"], &[], WAIT).await;
    assert_eq!(exit.code, Some(64), "{exit:?}");
    let stderr = &exit.stderr;
    let parts = ["invalid configuration", "tls.cert_file", &missing, "limits.max_frame_bytes"];
    for part in parts.into_iter().chain(["telemetry.otlp_endpoint \"collector:4318\""]) {
        assert!(stderr.contains(part), "{part:?} missing from\n{stderr}");
    }
    assert_nothing_started(stderr);
}

#[ferry_test(timeout_secs = 90)]
async fn an_unknown_ferry_variable_stops_the_node_naming_the_nearest_key() {
    let exit = run_ferry(
        &["--listen", "127.0.0.1:0"],
        &[("FERRY_LISTN", "127.0.0.1:0"), ("FERRY_SHUTDOWN_GRACE", "5000")],
        WAIT,
    )
    .await;
    assert_eq!(exit.code, Some(64), "{exit:?}");
    let stderr = &exit.stderr;
    assert!(
        stderr.contains("FERRY_LISTN: no such setting (did you mean FERRY_LISTEN?)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "FERRY_SHUTDOWN_GRACE: no such setting (did you mean FERRY_SHUTDOWN_GRACE_MS?)"
        ),
        "{stderr}"
    );
    assert_nothing_started(stderr);
}

/// The variables of the scripts and test harnesses that start gateways
/// (`scripts/test`, `scripts/kafka`, the client suites) are inherited by
/// those gateways, and are not configuration.
#[ferry_test(timeout_secs = 90)]
async fn harness_variables_do_not_stop_the_node() {
    let gw = GatewayProcess::start(
        &[],
        &[
            ("FERRY_KAFKA_PORT", "9092"),
            ("FERRY_KAFKA_SECURE", "1"),
            ("FERRY_KAFKA_SECURE_PORT", "9192"),
            ("FERRY_TEST_KAFKA_SECURE", "/tmp/nowhere"),
            ("FERRY_TEST_SKIP_REAL_KAFKA", "1"),
            ("FERRY_BIN", "/tmp/ferry"),
            ("FERRY_SECURE_CA", "/tmp/ca.pem"),
            ("FERRY_PORT", "8080"),
        ],
    );
    assert_eq!(http_get(gw.addr, "/healthz").await.0, 200);
}

#[ferry_test(timeout_secs = 90)]
async fn sigterm_while_waiting_for_kafka_at_start_exits_cleanly() {
    let brokers = format!("127.0.0.1:{}", closed_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--listen", "127.0.0.1:0", "--kafka-brokers", &brokers])
        .env("FERRY_KAFKA_METADATA_TIMEOUT_MS", "60000")
        .env("FERRY_SHUTDOWN_GRACE_MS", "1000")
        .env("FERRY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry binary starts");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let waiting = || log.lock().unwrap().iter().any(|l| l.contains("waiting for Kafka"));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !waiting() {
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("no \"waiting for Kafka\" line: {:?}", log.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let status = exit_within(&mut child, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM: {:?}", log.lock().unwrap()));
    assert_eq!(status.code(), Some(0), "{status:?}; log: {:?}", log.lock().unwrap());
}

#[ferry_test(timeout_secs = 60)]
async fn version_names_the_binary() {
    let exit = run_ferry(&["--version"], &[], WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert_eq!(exit.stdout.trim(), format!("ferry {}", env!("CARGO_PKG_VERSION")));
}

/// The container's environment: a public listen address and no auth mode,
/// which the gateway refuses to serve, but a token needs neither.
#[ferry_test(timeout_secs = 60)]
async fn a_token_is_minted_without_a_serving_configuration() {
    let exit = run_ferry(
        &["token", "--sub", "x"],
        &[
            ("FERRY_LISTEN", "0.0.0.0:8080"),
            ("FERRY_AUTH_HS_SECRET", SECRET),
            ("FERRY_LOG", "info"),
        ],
        WAIT,
    )
    .await;
    assert_eq!(exit.code, Some(0), "{exit:?}");
    let token = exit.stdout.trim();
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("{token:?} does not verify: {e}"))
        .claims;
    assert_eq!(claims["sub"], "x");

    // A mistake in the file is still one.
    let exit = run_ferry(
        &["token", "--sub", "x"],
        &[("FERRY_AUTH_HS_SECRET", SECRET), ("FERRY_AUTH_MODDE", "jwt")],
        WAIT,
    )
    .await;
    assert_eq!(exit.code, Some(64), "{exit:?}");
    assert!(exit.stderr.contains("did you mean FERRY_AUTH_MODE?"), "{}", exit.stderr);
}

#[ferry_test(timeout_secs = 60)]
async fn the_console_is_served_with_a_trailing_slash_too() {
    let gw = spawn_gateway().await;
    let (status, body) = gw.get("/console/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<script src=\"/console/app.js\""), "{body}");
}

/// In a process of its own: the recorder is process-wide, and other tests
/// reload certificates.
#[ferry_test(timeout_secs = 90)]
async fn tls_reloads_are_in_metrics_from_the_start() {
    let gw = GatewayProcess::start(&[], &[]);
    let (status, body) = http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 200);
    for result in ["ok", "rejected"] {
        let series = format!("ferry_tls_reloads_total{{result=\"{result}\"}} 0");
        assert!(body.contains(&series), "{series} missing from /metrics:\n{body}");
    }
}

#[ferry_test(timeout_secs = 90)]
async fn the_embedded_kafka_line_gives_a_kcat_command() {
    let gw = GatewayProcess::start(&[], &[]);
    let bootstrap = gw.embedded_bootstrap.clone().expect("an embedded Kafka");
    assert!(!bootstrap.contains(' '), "{bootstrap:?}");
    let line = gw.log_lines("embedded kafka bootstrap=").join("\n");
    assert!(line.contains(&format!("kcat -b {bootstrap} -L")), "{line}");
}

#[ferry_test(timeout_secs = 90)]
async fn jwt_without_acl_rules_warns_that_everything_is_refused() {
    let gw =
        GatewayProcess::start(&[], &[("FERRY_AUTH_MODE", "jwt"), ("FERRY_AUTH_HS_SECRET", SECRET)]);
    let line = gw.wait_log("no ACL rules", WAIT).await;
    let line = line.unwrap_or_else(|| panic!("no warning; log: {:?}", gw.log.lock().unwrap()));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("[[acl.rules]]"), "{line}");
}

#[ferry_test(timeout_secs = 60)]
async fn configuration_errors_exit_64_naming_the_problem() {
    let exit =
        run_ferry(&["--listen", "127.0.0.1:0"], &[("FERRY_LIMITS_MAX_SUBSCRIPTION", "5")], WAIT)
            .await;
    assert_eq!(exit.code, Some(64), "{exit:?}");
    assert!(exit.stderr.contains("did you mean FERRY_LIMITS_MAX_SUBSCRIPTIONS?"), "{exit:?}");

    // A setting the Kafka client refuses is a configuration error too.
    let file = temp_file("bad-kafka.toml", "[kafka.librdkafka]\n\"no.such.option\" = \"1\"\n");
    let exit = run_ferry(&["--config", &file, "--listen", "127.0.0.1:0"], &[], WAIT).await;
    assert_eq!(exit.code, Some(64), "{exit:?}");
    assert!(exit.stderr.contains("no.such.option"), "{exit:?}");
}

#[ferry_test(timeout_secs = 60)]
async fn token_grants_without_the_grants_claim_are_refused() {
    let secret = ("FERRY_AUTH_HS_SECRET", SECRET);
    let exit = run_ferry(&["token", "--sub", "dev", "--grant-sub", "t.*"], &[secret], WAIT).await;
    assert_eq!(exit.code, Some(64), "{exit:?}");
    assert!(exit.stderr.contains("acl.token_grants_claim"), "{exit:?}");
    let exit = run_ferry(
        &["token", "--sub", "dev", "--grant-sub", "t.*"],
        &[secret, ("FERRY_ACL_TOKEN_GRANTS_CLAIM", "ferry")],
        WAIT,
    )
    .await;
    assert_eq!(exit.code, Some(0), "{exit:?}");
}

/// A supervisor that stops reading the gateway's log (Java's
/// `Process.destroy()` closes the pipes right after its SIGTERM; a crashed
/// log shipper does the same): the gateway still drains, closes its
/// sockets with 1001 and exits 0. A log line written into the closed pipe
/// once made it panic (exit 101) before its sockets were closed.
#[ferry_test(timeout_secs = 60)]
async fn sigterm_with_the_log_pipe_closed_still_closes_sockets_with_1001_and_exits_0() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--listen", "127.0.0.1:0"])
        .env("FERRY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry binary starts");
    let stderr = child.stderr.take().unwrap();
    let addr = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let lines = std::io::BufReader::new(stderr).lines().map_while(Result::ok);
        let addr = lines
            .filter_map(|l| l.split("listening on http://").nth(1).map(str::to_owned))
            .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
            .next();
        // The reader, and with it the pipe's only read end, is dropped here.
        addr
    })
    .await
    .unwrap()
    .expect("a \"listening on\" line");
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let closed = loop {
        match client.next_frame_or_close().await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(closed, Some(1001), "the socket is closed with going_away");
    let status = exit_within(&mut child, Duration::from_secs(15)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{status:?}");
}
