//! Test helpers: a Kafka to test against, gateways (in-process and as
//! processes), a WebSocket client that speaks protocol v1, and an
//! independent rdkafka producer/consumer to check what is really in Kafka.
//!
//! Kafka: by default every gateway uses its own embedded Kafka. With
//! `FERRY_TEST_KAFKA=host:port` everything runs against that broker, and a
//! broker that does not answer fails the test (never a skip).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ferry_gateway::kafka::embedded::EmbeddedKafka;
use ferry_gateway::{App, Config};
use futures::{SinkExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long a test waits for any one expected frame.
pub const WAIT: Duration = Duration::from_secs(20);

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The real broker to test against, if `FERRY_TEST_KAFKA` names one.
pub fn real_kafka() -> Option<String> {
    std::env::var("FERRY_TEST_KAFKA").ok().filter(|s| !s.trim().is_empty())
}

/// A Kafka a test can create topics in and read back from.
#[derive(Clone)]
pub enum TestKafka {
    Real(String),
    Embedded(Arc<EmbeddedKafka>),
}

impl TestKafka {
    /// The real broker when configured (checked to answer), else a fresh
    /// embedded Kafka owned by the test.
    pub async fn start() -> Self {
        match real_kafka() {
            Some(bootstrap) => {
                assert_kafka_answers(&bootstrap).await;
                Self::Real(bootstrap)
            }
            None => Self::Embedded(Arc::new(EmbeddedKafka::start(1).expect("embedded kafka"))),
        }
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Self::Real(b) => b.clone(),
            Self::Embedded(k) => k.bootstrap_servers().to_owned(),
        }
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self, Self::Embedded(_))
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        match self {
            Self::Embedded(k) => k.create_topic(topic, partitions).expect("create topic"),
            Self::Real(bootstrap) => create_real_topic(bootstrap, topic, partitions).await,
        }
    }

    /// Grows `topic` to `partitions` partitions (real Kafka only: the mock
    /// cluster answers no CreatePartitions request).
    pub async fn add_partitions(&self, topic: &str, partitions: usize) {
        let Self::Real(bootstrap) = self else {
            panic!("the embedded Kafka cannot add partitions")
        };
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
        let grow = NewPartitions::new(topic, partitions);
        let results = admin.create_partitions([&grow], &AdminOptions::new()).await.unwrap();
        for r in results {
            r.unwrap_or_else(|e| panic!("add partitions to {topic}: {e:?}"));
        }
    }
}

impl TestKafka {
    /// Points an in-process gateway at this Kafka (one of several nodes).
    pub async fn spawn_node(&self) -> TestGateway {
        self.spawn_node_with(|_| {}).await
    }

    /// Like [`TestKafka::spawn_node`], with config changes.
    pub async fn spawn_node_with(&self, tweak: impl FnOnce(&mut Config)) -> TestGateway {
        spawn_gateway_with(|c| {
            c.kafka.brokers = Some(self.bootstrap());
            if self.is_embedded() {
                // The mock broker answers fetches only when this wait expires.
                c.kafka.librdkafka.insert("fetch.wait.max.ms".into(), "5".into());
            }
            tweak(c);
        })
        .await
    }
}

async fn assert_kafka_answers(bootstrap: &str) {
    let bootstrap = bootstrap.to_owned();
    let result = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        consumer.fetch_metadata(None, Duration::from_secs(10)).map(|_| ())
    })
    .await
    .unwrap();
    if let Err(e) = result {
        panic!("FERRY_TEST_KAFKA is set but Kafka does not answer: {e}");
    }
}

/// Creates `topic` on a real broker and waits, at most [`WAIT`] in all,
/// until its metadata shows every partition (a new topic's partitions have
/// no leader for a moment). Fails naming the step that did not finish.
async fn create_real_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(WAIT));
    let results = tokio::time::timeout(WAIT, admin.create_topics([&new], &options))
        .await
        .unwrap_or_else(|_| panic!("Kafka did not create topic {topic} within {WAIT:?}"))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|e| panic!("create topic {topic}: {e:?}"));
    }
    let (bootstrap, name) = (bootstrap.to_owned(), topic.to_owned());
    let seen = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        let mut last = String::from("no metadata answer");
        while std::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match consumer.fetch_metadata(Some(&name), left.min(Duration::from_secs(2))) {
                Ok(md) => {
                    let Some(t) = md.topics().iter().find(|t| t.name() == name) else {
                        last = "topic not in metadata".into();
                        continue;
                    };
                    let led = t.partitions().iter().filter(|p| p.leader() >= 0).count();
                    if t.error().is_none() && led == partitions as usize {
                        return Ok(());
                    }
                    last = format!("error {:?}, {led} of {partitions} partitions led", t.error());
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(last)
    })
    .await
    .unwrap();
    if let Err(last) = seen {
        panic!("topic {topic} did not appear in metadata within {WAIT:?}: {last}");
    }
}

/// Marks a long test's steps on stderr with the time since it began: the
/// harness shows them when the test fails, so a test that ran out of time
/// says which step it was in.
#[derive(Debug)]
pub struct Steps(std::time::Instant);

impl Steps {
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }

    pub fn mark(&self, step: &str) {
        eprintln!("[{:>7.2?}] {step}", self.0.elapsed());
    }
}

/// Defaults for tests: loopback, port 0, short timers.
pub fn test_config() -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace_ms: 5_000,
        ..Config::default()
    };
    config.kafka.partition_refresh_ms = 500;
    config
}

/// A gateway running in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The admin API's address, when it is on.
    pub admin: Option<SocketAddr>,
    pub bootstrap: String,
    pub embedded: Option<Arc<EmbeddedKafka>>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A gateway on the test's Kafka: embedded by default, or the real broker.
pub async fn spawn_gateway() -> TestGateway {
    spawn_gateway_with(|_| {}).await
}

/// Like [`spawn_gateway`], with config changes.
pub async fn spawn_gateway_with(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    let mut config = test_config();
    if let Some(bootstrap) = real_kafka() {
        assert_kafka_answers(&bootstrap).await;
        config.kafka.brokers = Some(bootstrap);
        config.kafka.auto_create_topics = Some(true);
    }
    tweak(&mut config);
    spawn_gateway_config(config).await
}

/// A gateway with exactly this config.
pub async fn spawn_gateway_config(config: Config) -> TestGateway {
    let app = App::build(config).await.expect("gateway builds");
    let (addr, bootstrap) = (app.local_addr(), app.kafka_bootstrap().to_owned());
    let admin = app.admin_addr();
    let (embedded, shutdown) = (app.embedded_kafka(), app.shutdown_token());
    let task = Some(tokio::spawn(app.run()));
    TestGateway { addr, admin, bootstrap, embedded, shutdown, task }
}

impl TestGateway {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// The Kafka this gateway uses, for independent reads and writes.
    pub fn kafka(&self) -> TestKafka {
        match &self.embedded {
            Some(k) => TestKafka::Embedded(k.clone()),
            None => TestKafka::Real(self.bootstrap.clone()),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// Polls `/readyz` until it answers `status`, for at most `wait`;
    /// returns the last status seen.
    pub async fn wait_readyz(&self, status: u16, wait: Duration) -> u16 {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = self.get("/readyz").await.0;
            if now == status || tokio::time::Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl TestGateway {
    /// Starts the gateway's shutdown, as SIGTERM does.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A minimal HTTP GET (status, body) so tests need no HTTP client crate.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    (status, body)
}

/// A chunked HTTP/1.1 body, joined.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// Writes a config file pointing a gateway process at `kafka`, with
/// `extra` TOML appended; returns its path.
pub fn node_config(kafka: &TestKafka, name: &str, extra: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{name}-{}.toml", uuid::Uuid::new_v4().simple()));
    let mut text = format!("{extra}\n[kafka]\nbrokers = \"{}\"\n", kafka.bootstrap());
    if kafka.is_embedded() {
        text.push_str("[kafka.librdkafka]\n\"fetch.wait.max.ms\" = \"5\"\n");
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// The gateway binary, run as a separate process.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub embedded_bootstrap: Option<String>,
    /// Every stderr line so far (the log).
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `ferry` with `args` and `env`, waiting until it listens.
    #[allow(clippy::zombie_processes)] // `Drop` kills and waits for it
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let listen: &[&str] =
            if args.contains(&"--listen") { &[] } else { &["--listen", "127.0.0.1:0"] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(listen)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("FERRY_TEST_KAFKA")
            .env("FERRY_LOG", std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferry binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                sink.lock().unwrap().push(line);
            }
        });
        let mut embedded_bootstrap = None;
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .unwrap_or_else(|_| {
                    panic!("gateway did not start; log: {:?}", log.lock().unwrap())
                });
            if let Some(rest) = line.split("embedded kafka bootstrap=").nth(1) {
                embedded_bootstrap = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                return Self { child, addr, embedded_bootstrap, log };
            }
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The log lines containing `needle` so far.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Waits up to `wait` for a log line containing `needle`.
    pub async fn wait_log(&self, needle: &str, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(line) = self.log_lines(needle).into_iter().next() {
                return Some(line);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code, or `None`
    /// if it still runs after `timeout`. Polls without blocking the test's
    /// runtime, so the test's own deadline can still fire.
    pub async fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol v1 client for tests. Frames that arrive while the test waits
/// for something else are kept, so nothing is lost between calls.
pub struct Client {
    ws: Ws,
    pub welcome: Value,
    messages: VecDeque<Value>,
    others: VecDeque<Value>,
    next_id: u64,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        Self::connect_request(url.into_client_request().unwrap()).await
    }

    /// Connects with a prepared request (headers) and waits for `welcome`.
    pub async fn connect_request(request: Request) -> Self {
        let mut client = Self::connect_unauthenticated(request).await.expect("connect");
        let welcome = client.next_raw().await.expect("welcome frame");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client.welcome = welcome;
        client
    }

    /// Connects without waiting for `welcome` (the socket must send `auth`),
    /// or returns the HTTP status that refused the upgrade.
    pub async fn connect_unauthenticated(request: Request) -> Result<Self, u16> {
        let ws = match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                return Err(response.status().as_u16())
            }
            Err(e) => panic!("connect failed: {e}"),
        };
        Ok(Self {
            ws,
            welcome: Value::Null,
            messages: VecDeque::new(),
            others: VecDeque::new(),
            next_id: 0,
        })
    }

    /// Sends `auth` and returns the first frame that answers it (`welcome`
    /// on a fresh socket, `authed` or `error` otherwise).
    pub async fn auth(&mut self, token: &str) -> Value {
        self.send(json!({"type": "auth", "token": token})).await;
        loop {
            let frame = self.next_raw().await.expect("reply to auth");
            if matches!(frame["type"].as_str(), Some("welcome" | "authed" | "error")) {
                if frame["type"] == "welcome" {
                    self.welcome = frame.clone();
                }
                return frame;
            }
            self.stash(frame);
        }
    }

    pub fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.expect("send");
    }

    /// Sends several frames with one flush (one TCP write, in practice).
    pub async fn send_batch(&mut self, frames: &[Value]) {
        for frame in frames {
            self.ws.feed(Message::text(frame.to_string())).await.expect("feed");
        }
        self.ws.flush().await.expect("flush");
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    /// Next frame off the wire, `None` on close. Panics after [`WAIT`].
    async fn next_raw(&mut self) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next()).await.expect("frame in time");
            match next {
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The reply whose `id` is `id`, keeping other frames for later.
    pub async fn reply(&mut self, id: &str) -> Value {
        if let Some(pos) = self.others.iter().position(|f| f["id"] == id) {
            return self.others.remove(pos).unwrap();
        }
        loop {
            let frame = self.next_raw().await.unwrap_or_else(|| panic!("closed before reply {id}"));
            if frame["id"] == id {
                return frame;
            }
            self.stash(frame);
        }
    }

    /// The reply whose `id` is `id` if it arrives within `wait`, keeping
    /// other frames for later.
    pub async fn reply_within(&mut self, id: &str, wait: Duration) -> Option<Value> {
        if let Some(pos) = self.others.iter().position(|f| f["id"] == id) {
            return self.others.remove(pos);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            let Some(Ok(Message::Text(text))) = next else {
                assert!(matches!(next, Some(Ok(_))), "closed while waiting for {id}");
                continue;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["id"] == id {
                return Some(frame);
            }
            self.stash(frame);
        }
    }

    /// The next frame that is not a `message` and has no `id`.
    pub async fn reply_without_id(&mut self) -> Value {
        if let Some(pos) = self.others.iter().position(|f| f.get("id").is_none()) {
            return self.others.remove(pos).unwrap();
        }
        loop {
            let frame = self.next_raw().await.expect("closed before reply");
            if frame["type"] != "message" && frame.get("id").is_none() {
                return frame;
            }
            self.stash(frame);
        }
    }

    fn stash(&mut self, frame: Value) {
        if frame["type"] == "message" {
            self.messages.push_back(frame);
        } else {
            self.others.push_back(frame);
        }
    }

    /// The next frame (kept ones first), or `Err(close code)` once the
    /// server closes.
    pub async fn next_frame_or_close(&mut self) -> Result<Value, Option<u16>> {
        if let Some(f) = self.others.pop_front().or_else(|| self.messages.pop_front()) {
            return Ok(f);
        }
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next()).await.expect("frame in time");
            match next {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return Err(None),
            }
        }
    }

    /// Next `message` frame.
    pub async fn next_message(&mut self) -> Value {
        if let Some(m) = self.messages.pop_front() {
            return m;
        }
        loop {
            let frame = self.next_raw().await.expect("closed while waiting for a message");
            if frame["type"] == "message" {
                return frame;
            }
            self.stash(frame);
        }
    }

    /// A `message` frame if one arrives within `wait`.
    pub async fn message_within(&mut self, wait: Duration) -> Option<Value> {
        if let Some(m) = self.messages.pop_front() {
            return Some(m);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??;
            if let Ok(Message::Text(text)) = next {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "message" {
                    return Some(frame);
                }
                self.stash(frame);
            }
        }
    }

    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.new_id(frame["type"].as_str().unwrap_or("r"));
        frame["id"] = json!(id);
        self.send(frame).await;
        self.reply(&id).await
    }

    pub async fn subscribe(&mut self, topic: &str) -> Value {
        self.request(json!({"type": "subscribe", "topic": topic})).await
    }

    /// Subscribes and asserts the gateway said `subscribed`.
    pub async fn subscribed(&mut self, topic: &str) {
        let reply = self.subscribe(topic).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["topic"], topic);
    }

    pub async fn publish(&mut self, topic: &str, value: Value) -> Value {
        self.request(json!({"type": "publish", "topic": topic, "value": value})).await
    }

    /// Publishes and asserts an `ack`.
    pub async fn acked(&mut self, topic: &str, value: Value) -> (i32, i64) {
        let reply = self.publish(topic, value).await;
        assert_eq!(reply["type"], "ack", "{reply}");
        (reply["partition"].as_i64().unwrap() as i32, reply["offset"].as_i64().unwrap())
    }

    /// Reads until the server closes; returns the close code, or `None`
    /// when the connection ended without a close frame.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next()).await.expect("close in time");
            match next {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        }
    }

    /// The raw stream, for tests that need to misbehave.
    pub fn raw(&mut self) -> &mut Ws {
        &mut self.ws
    }
}

/// An independent producer (not the gateway's code path).
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap()
}

/// Produces one record with the independent producer; returns (partition, offset).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> (i32, i64) {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    if !headers.is_empty() {
        let h = headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(*v) }));
        record = record.headers(h);
    }
    let delivery = producer.send(record, Duration::from_secs(10)).await.expect("produced");
    (delivery.partition, delivery.offset)
}

/// One record as an independent consumer reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

/// Reads every record of `topic` (all `partitions`) from the beginning until
/// `expected` are read or [`WAIT`] passes.
pub async fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<Record> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "ferry-tests-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&list).unwrap();
        let mut records = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        while records.len() < expected && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
        records
    })
    .await
    .unwrap()
}
