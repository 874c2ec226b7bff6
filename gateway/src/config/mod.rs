//! One typed configuration, from a TOML file, `FERRY_*` environment variables
//! and command-line flags (later sources win), with every error reported at
//! once.
//!
//! Each field's doc comment is its user documentation; `README.md` has the
//! same reference as a table. Every key has an environment variable named
//! after its path: `kafka.message_timeout_ms` is `FERRY_KAFKA_MESSAGE_TIMEOUT_MS`.
//! Tables (`kafka.librdkafka`) can only be set in the file.
//! [`kafka_security`] reads `[kafka.security]` and turns it into librdkafka
//! settings.
//!
//! Strict everywhere: an unknown key in the file, and a `FERRY_*` variable
//! that names no key, are errors ([`load`] says which, with the nearest
//! key). The only `FERRY_*` variables that are not configuration are listed
//! in [`NOT_SETTINGS`] (`FERRY_LOG`, `FERRY_CONFIG`, and those of the
//! scripts and test harnesses that start gateways). Every error names its
//! key. What needs the filesystem or the Kafka client (TLS files, Kafka
//! client settings) is checked here too, so that every mistake is reported
//! at once, before anything starts.

pub mod kafka_security;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::acl::AclConfig;
use crate::auth::{AuthConfig, AuthMode, Secret};
use crate::config::kafka_security::SecurityConfig;
use crate::schema::SchemaConfig;

/// The whole gateway configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP/WebSocket server binds. Defaults to loopback; a
    /// non-loopback address needs `auth.mode = "jwt"` (or `--insecure`).
    pub listen: SocketAddr,
    /// Name of this gateway node, sent in `welcome.node`. Defaults to
    /// `<hostname>-<pid>`.
    pub node_id: Option<String>,
    /// How long shutdown waits for in-flight publishes to be acknowledged by
    /// Kafka before answering them with `timeout` and closing sockets.
    pub shutdown_grace_ms: u64,
    pub kafka: KafkaConfig,
    pub limits: LimitsConfig,
    pub websocket: WebSocketConfig,
    pub auth: AuthConfig,
    pub acl: AclConfig,
    pub server: ServerConfig,
    pub tls: TlsConfig,
    /// JSON Schemas of record values, per topic pattern (`[[schemas]]`,
    /// first match applies): see [`crate::schema`].
    pub schemas: Vec<SchemaConfig>,
    pub console: ConsoleConfig,
    /// Topics whose keyed state the node keeps for snapshots (`[[tables]]`).
    pub tables: Vec<TableConfig>,
    pub http_publish: HttpPublishConfig,
    pub sse: SseConfig,
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
    /// Set by `--insecure` only: allow `auth.mode = "none"` off loopback.
    #[serde(skip)]
    pub insecure: bool,
    /// The file the configuration came from, re-read for ACL reloads.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
}

/// Where Kafka is and how the gateway talks to it. (`Debug` is written by
/// hand: it hides secret `librdkafka` values.)
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated (`host:port,host:port`). When
    /// empty, the gateway starts an embedded Kafka (librdkafka's mock
    /// cluster) in-process and logs its bootstrap address.
    pub brokers: Option<String>,
    /// Create a topic on the first publish or subscribe that names it.
    /// Defaults to on for the embedded Kafka and off for a real cluster.
    pub auto_create_topics: Option<bool>,
    /// Partitions of topics the gateway creates (embedded Kafka included).
    pub topic_partitions: i32,
    /// Replication factor of topics the gateway creates on a real cluster.
    pub topic_replication: i32,
    /// Upper bound on the time Kafka may take to confirm a publish; past it
    /// the client gets `timeout` (delivery outcome unknown).
    pub message_timeout_ms: u64,
    /// Timeout of metadata look-ups (topic exists? how many partitions?).
    pub metadata_timeout_ms: u64,
    /// How often subscribed topics are checked for new partitions.
    pub partition_refresh_ms: u64,
    /// Prefix of the Kafka consumer group a shared-group subscription joins
    /// (`group` "workers" → consumer group `ferry.workers`).
    pub group_prefix: String,
    /// Raw librdkafka settings applied to every Kafka client of the gateway
    /// (e.g. `"security.protocol" = "SASL_SSL"`). They win over Ferry's own,
    /// `[kafka.security]` included.
    #[serde(serialize_with = "serialize_redacted")]
    pub librdkafka: BTreeMap<String, String>,
    /// TLS, mutual TLS and SASL to the cluster: see `[kafka.security]` in
    /// README.md and [`crate::config::kafka_security`].
    pub security: SecurityConfig,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("auto_create_topics", &self.auto_create_topics)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication", &self.topic_replication)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("metadata_timeout_ms", &self.metadata_timeout_ms)
            .field("partition_refresh_ms", &self.partition_refresh_ms)
            .field("group_prefix", &self.group_prefix)
            .field("librdkafka", &redacted(&self.librdkafka))
            .field("security", &self.security)
            .finish()
    }
}

/// `kafka.librdkafka` with the values of secret properties replaced by `***`.
fn redacted(map: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter()
        .map(|(k, v)| {
            let shown =
                if crate::config::kafka_security::is_sensitive_property(k) { "***" } else { v };
            (k.as_str(), shown)
        })
        .collect()
}

fn serialize_redacted<S: serde::Serializer>(
    map: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    redacted(map).serialize(serializer)
}

/// Per-connection and per-node limits; the per-connection ones are announced
/// to clients in `welcome.limits`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest WebSocket frame a client may send; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Publishes awaiting Kafka's ack per connection; more get `limit`.
    pub max_inflight_publishes: usize,
    /// Topics one connection may subscribe to; more get `limit`.
    pub max_subscriptions: usize,
    /// Fan-out frames queued for one socket. A socket whose queue is full is
    /// closed with 4000 (slow consumer) so it never delays the others.
    pub outbound_queue: usize,
    /// Open WebSocket connections per node; more get HTTP 503.
    pub max_connections: usize,
    /// Open connections per authenticated subject per node; more are
    /// refused (HTTP 429, or close 4005 after an `auth` frame).
    pub max_connections_per_subject: usize,
    /// Sustained publishes per second per connection; more get
    /// `rate_limited` (token bucket).
    pub publish_rate: u32,
    /// Publishes a connection may burst above `publish_rate`.
    pub publish_burst: u32,
    /// A connection whose publishes are refused this many times in a row
    /// for the rate limit is closed (4004).
    pub rate_limit_strikes: u32,
    /// Bytes of recent records the node keeps in memory, over all topics,
    /// so that resumes and other starts a little back are served without a
    /// Kafka read. 0 keeps none.
    pub recent_bytes: usize,
    /// Longest a recent record is kept.
    pub recent_age_ms: u64,
    /// Shared Kafka readers for catch-up running at once on this node (one
    /// per topic serves every subscriber behind its recent records); other
    /// topics wait for one.
    pub catchup_readers: usize,
    /// Subscriptions catching up at once on this node (resumes, `earliest`,
    /// timestamps, until they join the live fan-out); more get `limit` with
    /// `retry_after_ms`.
    pub max_catching_up: usize,
    /// How far back (records per partition) the live consumer may start when
    /// a topic's first subscription on this node is a resume: its position
    /// is then read once and kept for the resumes that follow. Older starts
    /// go through the shared reader.
    pub rewind_records: i64,
    /// Catch-up records queued for one socket; a full queue pauses its
    /// catch-up (it never disconnects the socket).
    pub replay_queue: usize,
    /// Longest a subscribe, or the topic look-up before a publish, may wait
    /// for Kafka; past it the client gets `timeout` (not subscribed, not
    /// published). Bounds every reply even when Kafka never answers.
    pub request_timeout_ms: u64,
    /// Every subscription (groups excepted) is throttled to at least this
    /// many ms per key, whatever it asks (`subscribe.throttle_ms`); 0: no
    /// floor. An ACL rule's `min_throttle_ms` can raise it per principal.
    pub min_throttle_ms: u64,
    /// Connections accepted but not yet upgraded to a WebSocket (TLS
    /// handshake, request headers, plain HTTP requests). At the bound, the
    /// oldest pending handshake is closed to make room for the new
    /// connection, so slow handshakes can neither exhaust the file
    /// descriptors nor lock new clients out.
    pub max_pending_handshakes: usize,
    /// Pending handshakes from one client address; past it, that address's
    /// new TCP connections are closed at once. Half the total bound by
    /// default, so one address never holds more than half and a burst of
    /// reconnects from one NAT of up to 512 passes. Behind a proxy every
    /// connection has the proxy's address: raise it to
    /// `max_pending_handshakes`.
    pub max_pending_handshakes_per_address: usize,
}

/// WebSocket liveness and buffers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Interval of the gateway's WebSocket pings.
    pub ping_interval_ms: u64,
    /// A connection from which nothing (not even a pong) arrives for this
    /// long is closed with 4001.
    pub idle_timeout_ms: u64,
    /// A write to a socket that does not complete in this time closes it.
    pub write_timeout_ms: u64,
    /// How long a socket's writer, woken by a record, waits for more
    /// records to send in the same write (replies never wait). Fewer
    /// writes cost less CPU per delivery; each record may arrive up to this
    /// much later. 0 sends each burst as soon as it is queued. At most 50;
    /// the timer's resolution is 1 ms.
    pub write_coalesce_ms: u64,
    /// permessage-deflate (RFC 7692) with clients that offer it
    /// (browsers, client-js in Node, OkHttp): `"deflate"` or `"off"`.
    pub compression: Compression,
    /// Whether compression keeps its window from one message to the next.
    /// Off (the default), a record's frame compresses once for every
    /// socket and an idle socket holds no compressor; on, frames shrink
    /// further but each socket compresses its own frames and keeps a
    /// compressor of about 250 KiB.
    pub compression_context_takeover: bool,
    /// Frames smaller than this are sent uncompressed (acks, small
    /// records: deflate saves little on them).
    pub compression_min_bytes: usize,
}

/// `websocket.compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Off,
    Deflate,
}

/// The HTTP listener itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Time a new connection has to finish its TLS handshake (with TLS on)
    /// and send its request headers; slower ones are closed. Also the
    /// longest an HTTP keep-alive connection may idle between requests.
    pub header_read_timeout_ms: u64,
}

/// TLS on the gateway's own port (`https://` and `wss://`). With both files
/// set, the listener serves TLS only; the files are re-read on SIGHUP and
/// when they change, and a bad new pair is refused (the old one stays).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (e.g. `fullchain.pem`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// The built-in web console at `GET /console`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console. It is a static page that speaks the WebSocket
    /// protocol with the token typed into it, so it can do nothing the
    /// token could not do from any client; turn it off to keep the page off
    /// a public port.
    pub enabled: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[[tables]]`: topics whose keyed state the node keeps for `from: "snapshot"`
/// (see [`crate::tables`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Topic pattern (`devices`, `prices.*`, `state.**`); no placeholders.
    pub topics: String,
    /// Most keys one topic's table holds.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Most bytes one topic's table holds (its records' frames, keys and
    /// values).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_max_keys() -> usize {
    100_000
}

fn default_max_bytes() -> usize {
    64 * 1024 * 1024
}

/// Checks `[[tables]]`; returns every problem.
fn check_tables(configs: &[TableConfig]) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        if config.topics.contains('{') {
            errors.push(format!(
                "tables[{i}]: placeholders such as {{sub}} are not allowed in table patterns"
            ));
        } else if let Err(e) = crate::acl::Pattern::parse(&config.topics) {
            errors.push(format!("tables[{i}]: {:?}: {e}", config.topics));
        }
        if config.max_keys == 0 || config.max_bytes == 0 {
            errors.push(format!("tables[{i}]: max_keys and max_bytes must be at least 1"));
        }
    }
    errors
}

/// Checks `telemetry.otlp_endpoint`: an `http://` or `https://` URL with a
/// host.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let bad = |why: &str| format!("telemetry.otlp_endpoint {endpoint:?} {why}");
    let uri: axum::http::Uri = endpoint.parse().map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("must be an http:// or https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if uri.query().is_some() {
        return Err(bad("must not have a query: it is the collector's base URL"));
    }
    Ok(())
}

/// The admin API and the cluster's control topic (see README.md,
/// "Operating a fleet"). Turn it on on every node of a fleet: a node
/// without it does not read the control topic, so it neither answers nor
/// obeys what the admin API of another node asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin API on `admin.listen`, and take part in the control
    /// topic (heartbeats, revocations, disconnects, queries).
    pub enabled: bool,
    /// Address of the admin API: its own port, never the public one.
    /// Loopback by default; reach it with `kubectl port-forward` or from
    /// the host.
    pub listen: SocketAddr,
    /// The admin bearer token (`Authorization: Bearer …`), at least 32
    /// bytes; usually given as `FERRY_ADMIN_TOKEN`. Set this or
    /// `admin.token_file`.
    pub token: Option<Secret>,
    /// A file holding the admin bearer token (a Kubernetes secret mount);
    /// surrounding whitespace is ignored.
    pub token_file: Option<PathBuf>,
    /// The compacted Kafka topic every node reads and writes control
    /// records to. Created (1 partition, `cleanup.policy=compact`) when
    /// topics may be auto-created; else create it yourself.
    pub control_topic: String,
    /// How often a node announces itself on the control topic; a node not
    /// heard from for 5 heartbeats is gone from `GET /admin/v1/nodes`.
    pub heartbeat_ms: u64,
    /// How long a revocation holds when the request gives no `until`: the
    /// longest token lifetime you accept.
    pub revoke_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:8081".parse().expect("valid address"),
            token: None,
            token_file: None,
            control_topic: "ferry.control".into(),
            heartbeat_ms: 1_000,
            revoke_secs: 86_400,
        }
    }
}

impl AdminConfig {
    /// The admin bearer token, from `admin.token` or `admin.token_file`.
    pub fn bearer(&self) -> Result<Option<Secret>, String> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some(path) = &self.token_file else { return Ok(None) };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(Secret(text.trim().to_owned()))),
            Err(e) => Err(format!("admin.token_file {}: {e}", path.display())),
        }
    }

    pub fn heartbeat(&self) -> Duration {
        ms(self.heartbeat_ms)
    }
}

/// The gateway's own spans, exported over OTLP (see README.md, "Tracing").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector (`http://127.0.0.1:4318`): spans
    /// are sent, JSON encoded and batched, to `<otlp_endpoint>/v1/traces`.
    /// Unset: no spans at all. A collector that is slow or down never
    /// holds up a publish or a delivery: spans beyond a bounded queue
    /// (2048) are dropped.
    pub otlp_endpoint: Option<String>,
}

/// `POST /v1/publish`, the batch publish path over plain HTTP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpPublishConfig {
    /// Records one request may carry; more get HTTP 413.
    pub max_records: usize,
    /// Largest request body, after gzip decompression; larger gets HTTP 413
    /// (decompression stops there, so a gzip bomb costs at most this much).
    pub max_body_bytes: usize,
    /// Sustained records per second per subject (token bucket); a request
    /// that needs more tokens than are left gets HTTP 429, nothing produced.
    pub rate: u32,
    /// Records a subject may burst above `rate`; at least `max_records`
    /// for a full batch to pass.
    pub burst: u32,
}

/// `GET /sse`, the Server-Sent Events stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// Interval of the heartbeat comment lines on an idle stream.
    pub heartbeat_ms: u64,
    /// Accept the token as `?access_token=` (`EventSource` cannot set an
    /// `Authorization` header). Tokens in URLs end up in logs and browser
    /// history: prefer a short-lived token, or the cookie.
    pub allow_query_token: bool,
    /// Name of a cookie that carries the token, when set.
    pub token_cookie: Option<String>,
    /// Reconnection delay the stream suggests to `EventSource` (`retry:`).
    pub retry_ms: u64,
}

impl Default for HttpPublishConfig {
    fn default() -> Self {
        Self { max_records: 1_000, max_body_bytes: 1024 * 1024, rate: 2_000, burst: 4_000 }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        Self { heartbeat_ms: 15_000, allow_query_token: false, token_cookie: None, retry_ms: 1_000 }
    }
}

impl SseConfig {
    pub fn heartbeat(&self) -> Duration {
        ms(self.heartbeat_ms)
    }

    pub fn retry(&self) -> Duration {
        ms(self.retry_ms)
    }
}

impl TlsConfig {
    /// The certificate and key files when TLS is on.
    pub fn files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { header_read_timeout_ms: 10_000 }
    }
}

impl ServerConfig {
    pub fn header_read_timeout(&self) -> Duration {
        ms(self.header_read_timeout_ms)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: None,
            shutdown_grace_ms: 10_000,
            kafka: KafkaConfig::default(),
            limits: LimitsConfig::default(),
            websocket: WebSocketConfig::default(),
            auth: AuthConfig::default(),
            acl: AclConfig::default(),
            server: ServerConfig::default(),
            tls: TlsConfig::default(),
            schemas: Vec::new(),
            console: ConsoleConfig::default(),
            tables: Vec::new(),
            admin: AdminConfig::default(),
            http_publish: HttpPublishConfig::default(),
            sse: SseConfig::default(),
            telemetry: TelemetryConfig::default(),
            insecure: false,
            source_file: None,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            auto_create_topics: None,
            topic_partitions: 3,
            topic_replication: 1,
            message_timeout_ms: 30_000,
            metadata_timeout_ms: 5_000,
            partition_refresh_ms: 5_000,
            group_prefix: "ferry.".into(),
            librdkafka: BTreeMap::new(),
            security: SecurityConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_inflight_publishes: 1_000,
            max_subscriptions: 100,
            outbound_queue: 1_024,
            max_connections: 50_000,
            max_connections_per_subject: 100,
            publish_rate: 2_000,
            publish_burst: 4_000,
            rate_limit_strikes: 100,
            recent_bytes: 64 * 1024 * 1024,
            recent_age_ms: 60_000,
            catchup_readers: 4,
            max_catching_up: 20_000,
            rewind_records: 100_000,
            replay_queue: 256,
            request_timeout_ms: 30_000,
            min_throttle_ms: 0,
            max_pending_handshakes: 1_024,
            max_pending_handshakes_per_address: 512,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 10_000,
            write_coalesce_ms: 0,
            compression: Compression::Deflate,
            compression_context_takeover: false,
            compression_min_bytes: 128,
        }
    }
}

impl KafkaConfig {
    /// True when no brokers are configured and the embedded Kafka is used.
    pub fn embedded(&self) -> bool {
        self.brokers.as_deref().is_none_or(|b| b.trim().is_empty())
    }

    /// Whether topics are created on demand (see `auto_create_topics`).
    pub fn auto_create(&self) -> bool {
        self.auto_create_topics.unwrap_or(self.embedded())
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

impl Config {
    /// The node name, `<hostname>-<pid>` unless configured.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "ferry".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    pub fn shutdown_grace(&self) -> Duration {
        ms(self.shutdown_grace_ms)
    }

    /// Checks value ranges, and for [`Purpose::Serve`] what serving needs
    /// on top; returns every problem found.
    fn validate(&self, purpose: Purpose) -> Vec<String> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, msg: &str| {
            if !ok {
                errors.push(msg.to_owned());
            }
        };
        let k = &self.kafka;
        check(k.topic_partitions >= 1, "kafka.topic_partitions must be at least 1");
        check(k.topic_replication >= 1, "kafka.topic_replication must be at least 1");
        check(k.message_timeout_ms >= 1_000, "kafka.message_timeout_ms must be at least 1000");
        check(k.metadata_timeout_ms >= 100, "kafka.metadata_timeout_ms must be at least 100");
        check(k.partition_refresh_ms >= 100, "kafka.partition_refresh_ms must be at least 100");
        let l = &self.limits;
        check(l.max_frame_bytes >= 1024, "limits.max_frame_bytes must be at least 1024");
        check(l.max_inflight_publishes >= 1, "limits.max_inflight_publishes must be at least 1");
        check(l.max_subscriptions >= 1, "limits.max_subscriptions must be at least 1");
        check(l.outbound_queue >= 1, "limits.outbound_queue must be at least 1");
        check(l.max_connections >= 1, "limits.max_connections must be at least 1");
        let w = &self.websocket;
        check(w.ping_interval_ms >= 100, "websocket.ping_interval_ms must be at least 100");
        check(
            w.idle_timeout_ms > w.ping_interval_ms,
            "websocket.idle_timeout_ms must be longer than websocket.ping_interval_ms",
        );
        check(w.write_timeout_ms >= 100, "websocket.write_timeout_ms must be at least 100");
        check(w.write_coalesce_ms <= 50, "websocket.write_coalesce_ms must be at most 50");
        check(
            l.max_connections_per_subject >= 1,
            "limits.max_connections_per_subject must be at least 1",
        );
        check(l.publish_rate >= 1, "limits.publish_rate must be at least 1");
        check(l.publish_burst >= 1, "limits.publish_burst must be at least 1");
        check(l.rate_limit_strikes >= 1, "limits.rate_limit_strikes must be at least 1");
        check(l.catchup_readers >= 1, "limits.catchup_readers must be at least 1");
        check(l.max_catching_up >= 1, "limits.max_catching_up must be at least 1");
        check(l.rewind_records >= 0, "limits.rewind_records must not be negative");
        check(l.replay_queue >= 1, "limits.replay_queue must be at least 1");
        check(l.request_timeout_ms >= 1_000, "limits.request_timeout_ms must be at least 1000");
        check(
            l.min_throttle_ms <= ferry_protocol::MAX_THROTTLE_MS,
            "limits.min_throttle_ms must be at most 60000",
        );
        check(l.max_pending_handshakes >= 1, "limits.max_pending_handshakes must be at least 1");
        check(
            l.max_pending_handshakes_per_address >= 1,
            "limits.max_pending_handshakes_per_address must be at least 1",
        );
        let h = &self.http_publish;
        check(h.max_records >= 1, "http_publish.max_records must be at least 1");
        check(h.max_body_bytes >= 1024, "http_publish.max_body_bytes must be at least 1024");
        check(h.rate >= 1, "http_publish.rate must be at least 1");
        check(h.burst >= 1, "http_publish.burst must be at least 1");
        check(self.sse.heartbeat_ms >= 100, "sse.heartbeat_ms must be at least 100");
        check(
            self.server.header_read_timeout_ms >= 100,
            "server.header_read_timeout_ms must be at least 100",
        );
        check(
            self.tls.cert_file.is_some() == self.tls.key_file.is_some(),
            "tls.cert_file and tls.key_file must be set together",
        );
        if purpose == Purpose::Serve {
            check(
                self.auth.mode == AuthMode::Jwt || self.listen.ip().is_loopback() || self.insecure,
                "auth.mode = \"none\" on a non-loopback address lets anyone in: set auth.mode = \"jwt\", listen on loopback, or pass --insecure",
            );
            // The TLS files and the Kafka client settings are checked by
            // the modules that use them: see `load_for`'s `checks`.
            if let Err(problems) = crate::config::kafka_security::resolve(&k.security, k.embedded())
            {
                errors.extend(problems);
            }
        }
        errors.extend(self.admin_errors(purpose));
        errors.extend(check_tables(&self.tables));
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            errors.extend(check_endpoint(endpoint).err());
        }
        if let Err(problems) = crate::acl::Policy::compile(&self.acl) {
            errors.extend(problems);
        }
        if let Err(problems) = crate::auth::Authenticator::from_config(&self.auth) {
            errors.extend(problems);
        }
        if let Err(problems) = crate::schema::Schemas::compile(&self.schemas) {
            errors.extend(problems);
        }
        errors
    }
}

impl Config {
    fn admin_errors(&self, purpose: Purpose) -> Vec<String> {
        let a = &self.admin;
        let mut errors = Vec::new();
        if a.token.is_some() && a.token_file.is_some() {
            errors.push("admin.token and admin.token_file: set one, not both".to_owned());
        }
        if !a.enabled {
            return errors;
        }
        if a.control_topic.trim().is_empty() {
            errors.push("admin.control_topic must not be empty".to_owned());
        }
        if a.heartbeat_ms < 100 {
            errors.push("admin.heartbeat_ms must be at least 100".to_owned());
        }
        if a.revoke_secs < 1 {
            errors.push("admin.revoke_secs must be at least 1".to_owned());
        }
        if purpose != Purpose::Serve {
            return errors;
        }
        if a.listen == self.listen && a.listen.port() != 0 {
            errors.push(format!(
                "admin.listen ({}) must not be the public listen address: the admin API has its own port",
                a.listen
            ));
        }
        match a.bearer() {
            Ok(None) => errors.push(
                "admin.enabled needs a token: set FERRY_ADMIN_TOKEN (admin.token) or admin.token_file"
                    .to_owned(),
            ),
            Ok(Some(token)) if token.0.len() < 32 => {
                errors.push("the admin token must be at least 32 bytes".to_owned())
            }
            Ok(Some(_)) => {}
            Err(e) => errors.push(e),
        }
        errors
    }
}

impl KafkaConfig {
    pub fn message_timeout(&self) -> Duration {
        ms(self.message_timeout_ms)
    }
    pub fn metadata_timeout(&self) -> Duration {
        ms(self.metadata_timeout_ms)
    }
    pub fn partition_refresh(&self) -> Duration {
        ms(self.partition_refresh_ms)
    }
}

impl LimitsConfig {
    pub fn request_timeout(&self) -> Duration {
        ms(self.request_timeout_ms)
    }
}

impl WebSocketConfig {
    pub fn ping_interval(&self) -> Duration {
        ms(self.ping_interval_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        ms(self.idle_timeout_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        ms(self.write_timeout_ms)
    }

    pub fn write_coalesce(&self) -> Duration {
        ms(self.write_coalesce_ms)
    }
}

/// Settings given as command-line flags; they win over file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub kafka_brokers: Option<String>,
    pub node_id: Option<String>,
    /// `--insecure`: allow `auth.mode = "none"` on a non-loopback address.
    pub insecure: bool,
}

/// Every problem found while loading the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

/// Every `FERRY_*` variable that is not a setting, and may be in a
/// gateway's environment: any other `FERRY_*` variable that names no key
/// stops the node. Scripts and harnesses that start gateways export these
/// (`scripts/test` runs the suites with `FERRY_KAFKA_PORT` set, a shell may
/// have sourced `scripts/kafka`'s `secure.env`), so the gateway accepts
/// them rather than asking every caller to strip them. A new one must be
/// added here and to docs/deployment.md.
pub const NOT_SETTINGS: &[&str] = &[
    // Read by the gateway itself.
    "FERRY_CONFIG",
    "FERRY_LOG",
    // scripts/kafka (the local broker) and scripts/test.
    "FERRY_KAFKA_PORT",
    "FERRY_KAFKA_STATE",
    "FERRY_KAFKA_HOME",
    "FERRY_KAFKA_HEAP",
    "FERRY_KAFKA_VERSION",
    "FERRY_KAFKA_TIMEOUT",
    "FERRY_KAFKA_SECURE",
    "FERRY_KAFKA_SECURE_PORT",
    // scripts/kafka's secure.env (the secured broker's addresses and files).
    "FERRY_SECURE_PLAINTEXT",
    "FERRY_SECURE_SASL_SSL",
    "FERRY_SECURE_MTLS",
    "FERRY_SECURE_CA",
    "FERRY_SECURE_CLIENT_CERT",
    "FERRY_SECURE_CLIENT_KEY",
    "FERRY_SECURE_UNTRUSTED_CA",
    "FERRY_SECURE_USER",
    "FERRY_SECURE_PASSWORD",
    // The Rust integration suite and scripts/test.
    "FERRY_TEST_KAFKA",
    "FERRY_TEST_KAFKA_SECURE",
    "FERRY_TEST_SKIP_REAL_KAFKA",
    "FERRY_TEST_LOG",
    "FERRY_HOSTILE_STRICT",
    // The client suites (client-js, clients/kotlin).
    "FERRY_BIN",
    "FERRY_TEST_PIDS",
    "FERRY_TEST_VERBOSE",
    // bench/ and scripts/soak.
    "FERRY_BENCH_TOKEN",
    "FERRY_SOAK_OUT",
    "FERRY_SOAK_VENV",
    // docker/compose.yaml's host side, scripts/docker-test, scripts/docker-base.
    "FERRY_PORT",
    "FERRY_DASHBOARD_PORT",
    "FERRY_KAFKA_HOST_PORT",
    "FERRY_BUILD_JOBS",
    "FERRY_DOCKER_TEST_DIR",
    "FERRY_DOCKER_TEST_KEEP",
    "FERRY_DOCKER_PULL",
    "FERRY_DOCKER_BASE_DIR",
    "FERRY_DOCKER_BASE_FORCE",
];

/// What the configuration is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Running the gateway: every check.
    Serve,
    /// `ferry token`: the file and the variables must still be right, but
    /// what only serving needs (an authenticated public listener, readable
    /// TLS files, a usable Kafka client) is not checked, so that a token
    /// can be minted in the gateway's container or next to a configuration
    /// made for another host.
    Token,
}

/// Loads file, then environment (`env` yields `(name, value)` pairs), then
/// flags, and validates the result for serving, except what only the
/// modules that use them can check (TLS files, Kafka client settings: the
/// binary adds [`crate::app::serving_checks`]).
pub fn load(
    overrides: &Overrides,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    load_for(Purpose::Serve, overrides, env, |_| Vec::new())
}

/// [`load`], with the checks of `purpose`, plus `checks` (the binary's
/// serving checks of the layers above this one), whose errors are
/// reported with the rest.
pub fn load_for(
    purpose: Purpose,
    overrides: &Overrides,
    env: impl IntoIterator<Item = (String, String)>,
    checks: impl FnOnce(&Config) -> Vec<String>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut table = toml::Table::new();
    if let Some(path) = &overrides.config_file {
        match std::fs::read_to_string(path) {
            Ok(text) => match text.parse::<toml::Table>() {
                Ok(t) => table = t,
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            },
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }

    for (key, instead) in REMOVED {
        let path = split(key);
        let (section, name) = (&path[0], &path[1]);
        if let Some(toml::Value::Table(t)) = table.get_mut(section.as_str()) {
            if t.remove(name.as_str()).is_some() {
                errors.push(format!("{key} was removed: use {instead}"));
            }
        }
    }
    let known = env_keys();
    let mut env: Vec<(String, String)> =
        env.into_iter().filter(|(name, _)| name.starts_with("FERRY_")).collect();
    env.sort();
    for (name, raw) in env {
        match known.get(&name) {
            Some(path) => match env_setting(path, &raw) {
                Ok(value) => set_path(&mut table, path, value),
                Err(why) => errors.push(format!("{name}: {why}")),
            },
            None if NOT_SETTINGS.contains(&name.as_str()) => {}
            None if REMOVED.iter().any(|(key, _)| env_name(&split(key)) == name) => {
                let removed = REMOVED.iter().find(|(key, _)| env_name(&split(key)) == name);
                let (key, instead) = removed.expect("found above");
                errors.push(format!("{name} ({key}) was removed: use {instead}"));
            }
            None => errors.push(unknown_variable(&name, &known)),
        }
    }
    let flags = [
        (&overrides.listen, "listen"),
        (&overrides.kafka_brokers, "kafka.brokers"),
        (&overrides.node_id, "node_id"),
    ];
    for (value, path) in flags {
        if let Some(value) = value {
            set_path(&mut table, &split(path), toml::Value::String(value.clone()));
        }
    }

    let mut config = deserialize_sections(table, &mut errors);
    config.insecure = overrides.insecure;
    config.source_file = overrides.config_file.clone();
    errors.extend(config.validate(purpose));
    errors.extend(checks(&config));
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The value of variable `raw` for the key at `path`: read as a TOML value
/// when it is one the key accepts (`42`, `true`, `["a"]`), else as the
/// string it is (so `FERRY_NODE_ID=42` names node "42"). When neither fits,
/// the error says what the key expects.
fn env_setting(path: &[String], raw: &str) -> Result<toml::Value, String> {
    let fits = |value: &toml::Value| {
        let mut probe = toml::Table::new();
        set_path(&mut probe, path, value.clone());
        toml::Value::Table(probe).try_into::<Config>().map(drop).map_err(|e| e.message().to_owned())
    };
    let parsed = env_value(raw);
    let first = fits(&parsed);
    if first.is_ok() {
        return Ok(parsed);
    }
    let text = toml::Value::String(raw.to_owned());
    if !parsed.is_str() && fits(&text).is_ok() {
        return Ok(text);
    }
    Err(format!("{} (for `{}`)", first.unwrap_err(), path.join(".")))
}

/// Keys a release removed, and what took their place; a configuration that
/// still sets one is refused with this hint.
const REMOVED: &[(&str, &str)] = &[(
    "limits.max_replays",
    "limits.catchup_readers (Kafka readers for catch-up) and limits.max_catching_up \
     (subscriptions catching up at once)",
)];

/// The error for a `FERRY_*` variable that names no key, with the nearest
/// key's variable (or the nearest of [`NOT_SETTINGS`]) when one is close.
fn unknown_variable(name: &str, known: &BTreeMap<String, Vec<String>>) -> String {
    let nearest = known
        .keys()
        .map(String::as_str)
        .chain(NOT_SETTINGS.iter().copied())
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d);
    match nearest {
        Some((_, key)) => format!("{name}: no such setting (did you mean {key}?)"),
        None => format!(
            "{name}: no such setting (every key's variable is listed in README.md; tables such as kafka.librdkafka can only be set in the file)"
        ),
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j] + 1).min(row[j + 1] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Deserializes each section on its own so that a mistake in one section
/// does not hide mistakes in the others.
fn deserialize_sections(mut table: toml::Table, errors: &mut Vec<String>) -> Config {
    fn section<T: serde::de::DeserializeOwned + Default>(
        table: &mut toml::Table,
        name: &str,
        errors: &mut Vec<String>,
    ) -> T {
        match table.remove(name) {
            None => T::default(),
            Some(toml::Value::Table(fields)) => each_key(fields, &format!("[{name}] "), errors),
            Some(_) => {
                errors.push(format!("[{name}]: expected a table"));
                T::default()
            }
        }
    }
    let kafka = section(&mut table, "kafka", errors);
    let limits = section(&mut table, "limits", errors);
    let websocket = section(&mut table, "websocket", errors);
    let auth = section(&mut table, "auth", errors);
    let acl = section(&mut table, "acl", errors);
    let server = section(&mut table, "server", errors);
    let tls = section(&mut table, "tls", errors);
    let console = section(&mut table, "console", errors);
    let http_publish = section(&mut table, "http_publish", errors);
    let sse = section(&mut table, "sse", errors);
    let admin = section(&mut table, "admin", errors);
    let telemetry = section(&mut table, "telemetry", errors);
    let mut config: Config = each_key(table, "", errors);
    config.kafka = kafka;
    config.limits = limits;
    config.websocket = websocket;
    config.auth = auth;
    config.acl = acl;
    config.server = server;
    config.tls = tls;
    config.console = console;
    config.http_publish = http_publish;
    config.sse = sse;
    config.admin = admin;
    config.telemetry = telemetry;
    config
}

/// Checks every key of a table on its own (an unknown key does not hide a
/// bad value next to it), reports each bad one by name, and builds `T` from
/// the good ones.
fn each_key<T: serde::de::DeserializeOwned + Default>(
    fields: toml::Table,
    label: &str,
    errors: &mut Vec<String>,
) -> T {
    let mut good = toml::Table::new();
    for (key, value) in fields {
        let one = toml::Table::from_iter([(key.clone(), value.clone())]);
        match toml::Value::Table(one).try_into::<T>() {
            Ok(_) => {
                good.insert(key, value);
            }
            Err(e) => errors.push(format!("{label}{key}: {}", e.message())),
        }
    }
    toml::Value::Table(good).try_into().unwrap_or_else(|e: toml::de::Error| {
        errors.push(format!("{label}{}", e.message()));
        T::default()
    })
}

fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

/// `FERRY_<PATH>` for every scalar key of the configuration.
pub fn env_keys() -> BTreeMap<String, Vec<String>> {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let mut keys = BTreeMap::new();
    // `node_id` and `kafka.brokers` have no default, so they are not in the
    // serialized defaults; name them explicitly.
    for path in [
        "node_id",
        "kafka.brokers",
        "kafka.auto_create_topics",
        "auth.hs_secret",
        "auth.jwks_url",
        "auth.issuer",
        "auth.audience",
        "acl.token_grants_claim",
        "tls.cert_file",
        "tls.key_file",
        "sse.token_cookie",
        "admin.token",
        "admin.token_file",
        "telemetry.otlp_endpoint",
    ] {
        keys.insert(env_name(&split(path)), split(path));
    }
    for key in crate::config::kafka_security::KEYS {
        let path = split(&format!("kafka.security.{key}"));
        keys.insert(env_name(&path), path);
    }
    collect_keys(&defaults, &mut Vec::new(), &mut keys);
    keys
}

fn collect_keys(
    value: &toml::Value,
    path: &mut Vec<String>,
    keys: &mut BTreeMap<String, Vec<String>>,
) {
    match value {
        toml::Value::Table(t) if path.is_empty() || path.len() == 1 => {
            for (k, v) in t {
                path.push(k.clone());
                collect_keys(v, path, keys);
                path.pop();
            }
        }
        toml::Value::Table(_) => {}
        _ => {
            keys.insert(env_name(path), path.clone());
        }
    }
}

fn env_name(path: &[String]) -> String {
    format!("FERRY_{}", path.join("_").to_uppercase())
}

/// An environment value is read as a TOML value when it is one (`42`,
/// `true`), else as a string (`127.0.0.1:9092`).
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = path.split_last().expect("paths are never empty");
    let mut current = table;
    for part in parents {
        let entry =
            current.entry(part.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
        if !entry.is_table() {
            *entry = toml::Value::Table(Default::default());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
    current.insert(last.clone(), value);
}

/// Re-reads only the `[acl]` section of the configuration file, for a
/// policy reload.
pub fn reload_acl(path: &std::path::Path) -> Result<AclConfig, Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let mut table: toml::Table =
        text.parse().map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let mut errors = Vec::new();
    let acl = match table.remove("acl") {
        None => AclConfig::default(),
        Some(toml::Value::Table(fields)) => each_key(fields, "[acl] ", &mut errors),
        Some(_) => return Err(vec!["[acl]: expected a table".to_owned()]),
    };
    if errors.is_empty() {
        Ok(acl)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid_and_embedded() {
        let config = load(&Overrides::default(), env(&[])).unwrap();
        assert!(config.kafka.embedded());
        assert!(config.kafka.auto_create());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn env_and_flags_layer_over_the_file() {
        let dir = std::env::temp_dir().join(format!("ferry-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:1\"\n[kafka]\nbrokers = \"file:9092\"\ntopic_partitions = 6\n",
        )
        .unwrap();
        let overrides = Overrides {
            config_file: Some(file),
            listen: Some("127.0.0.1:9999".into()),
            ..Default::default()
        };
        let config = load(
            &overrides,
            env(&[("FERRY_KAFKA_BROKERS", "env:9092"), ("FERRY_LIMITS_MAX_SUBSCRIPTIONS", "7")]),
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(config.kafka.brokers.as_deref(), Some("env:9092"));
        assert_eq!(config.kafka.topic_partitions, 6);
        assert_eq!(config.limits.max_subscriptions, 7);
        assert!(!config.kafka.auto_create());
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let dir = std::env::temp_dir().join(format!("ferry-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.toml");
        std::fs::write(
            &file,
            "bogus = 1\n[kafka]\ntopic_partitions = \"three\"\n[limits]\nmax_frame_bytes = 10\nnope = 2\n",
        )
        .unwrap();
        let overrides = Overrides { config_file: Some(file), ..Default::default() };
        let errors =
            load(&overrides, env(&[("FERRY_WEBSOCKET_IDLE_TIMEOUT_MS", "5")])).unwrap_err().0;
        let all = errors.join("\n");
        assert!(all.contains("bogus"), "{all}");
        assert!(all.contains("[kafka]"), "{all}");
        assert!(all.contains("nope"), "{all}");
        assert!(all.contains("websocket.idle_timeout_ms"), "{all}");
        assert!(errors.len() >= 4, "{all}");
    }

    #[test]
    fn a_removed_key_is_refused_with_what_replaced_it() {
        let dir = std::env::temp_dir().join(format!("ferry-removed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.toml");
        std::fs::write(&file, "[limits]\nmax_replays = 10\n").unwrap();
        let overrides = Overrides { config_file: Some(file), ..Default::default() };
        let all =
            load(&overrides, env(&[("FERRY_LIMITS_MAX_REPLAYS", "3")])).unwrap_err().0.join("\n");
        assert!(
            all.contains("limits.max_replays was removed: use limits.catchup_readers"),
            "{all}"
        );
        assert!(all.contains("FERRY_LIMITS_MAX_REPLAYS (limits.max_replays) was removed"), "{all}");
        assert!(!all.contains("unknown field"), "one error per key: {all}");
    }

    #[test]
    fn a_misspelled_variable_is_an_error_naming_the_nearest_key() {
        let errors = load(
            &Overrides::default(),
            env(&[("FERRY_LIMITS_MAX_SUBSCRIPTION", "7"), ("FERRY_WEBSOCKET_PING", "1")]),
        )
        .unwrap_err()
        .0;
        let all = errors.join("\n");
        assert!(all.contains("FERRY_LIMITS_MAX_SUBSCRIPTION: no such setting (did you mean FERRY_LIMITS_MAX_SUBSCRIPTIONS?)"), "{all}");
        assert!(all.contains("FERRY_WEBSOCKET_PING: no such setting"), "{all}");
        assert_eq!(errors.len(), 2, "{all}");
        let errors =
            load(&Overrides::default(), env(&[("FERRY_KAFKA_LIBRDKAFKA", "x")])).unwrap_err().0;
        assert!(errors[0].contains("only be set in the file"), "{errors:?}");
    }

    #[test]
    fn only_the_listed_variables_are_not_configuration() {
        let mut listed = env(&[("NOT_FERRY_LIMITS_X", "1"), ("FERRY_LOG", "debug")]);
        listed.extend(NOT_SETTINGS.iter().map(|name| (name.to_string(), "1".to_owned())));
        let config = load(&Overrides::default(), listed).unwrap();
        assert!(config.kafka.embedded());
        for name in NOT_SETTINGS {
            assert!(!env_keys().contains_key(*name), "{name} is a setting");
        }
    }

    #[test]
    fn every_other_ferry_variable_is_an_error_naming_the_nearest_name() {
        let errors = load(
            &Overrides::default(),
            env(&[
                ("FERRY_LISTN", "127.0.0.1:1"),
                ("FERRY_SHUTDOWN_GRACE", "5"),
                ("FERRY_CONFIG_EXTRA", "x"),
                ("FERRY_LGO", "debug"),
                ("FERRY_TEST_SOMETHING_ELSE", "1"),
            ]),
        )
        .unwrap_err()
        .0;
        let all = errors.join("\n");
        for part in [
            "FERRY_LISTN: no such setting (did you mean FERRY_LISTEN?)",
            "FERRY_SHUTDOWN_GRACE: no such setting (did you mean FERRY_SHUTDOWN_GRACE_MS?)",
            "FERRY_CONFIG_EXTRA: no such setting",
            "FERRY_LGO: no such setting (did you mean FERRY_LOG?)",
            "FERRY_TEST_SOMETHING_ELSE: no such setting",
        ] {
            assert!(all.contains(part), "{part:?} missing from\n{all}");
        }
        assert_eq!(errors.len(), 5, "{all}");
    }

    #[test]
    fn a_token_needs_no_serving_configuration() {
        let vars = env(&[
            ("FERRY_LISTEN", "0.0.0.0:8080"),
            ("FERRY_AUTH_HS_SECRET", "a-secret-that-is-long-enough-0123456789"),
            ("FERRY_TLS_CERT_FILE", "/nonexistent/cert.pem"),
            ("FERRY_TLS_KEY_FILE", "/nonexistent/key.pem"),
        ]);
        let serving = crate::app::serving_checks;
        let errors = load_for(Purpose::Serve, &Overrides::default(), vars.clone(), serving)
            .unwrap_err()
            .0
            .join("\n");
        assert!(errors.contains("auth.mode = \"none\" on a non-loopback address"), "{errors}");
        assert!(errors.contains("tls.cert_file: /nonexistent/cert.pem"), "{errors}");
        assert!(errors.contains("tls.key_file: /nonexistent/key.pem"), "{errors}");
        let config = load_for(Purpose::Token, &Overrides::default(), vars, |_| Vec::new()).unwrap();
        assert!(config.auth.hs_secret.is_some());
        let errors = load_for(
            Purpose::Token,
            &Overrides::default(),
            env(&[("FERRY_AUTH_HS_SECRET", "short"), ("FERRY_AUTH_MODDE", "jwt")]),
            |_| Vec::new(),
        )
        .unwrap_err()
        .0
        .join("\n");
        assert!(errors.contains("auth.hs_secret must be at least 32 bytes"), "{errors}");
        assert!(errors.contains("did you mean FERRY_AUTH_MODE?"), "{errors}");
    }

    #[test]
    fn kafka_client_settings_are_checked_with_the_rest() {
        let dir = std::env::temp_dir().join(format!("ferry-config-rdk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.toml");
        std::fs::write(
            &file,
            "[kafka.librdkafka]\n\"no.such.option\" = \"1\"\n\"sasl.password\" = \"\"\n\"linger.ms\" = \"soon\"\n",
        )
        .unwrap();
        let overrides = Overrides { config_file: Some(file), ..Default::default() };
        let vars = env(&[("FERRY_LIMITS_MAX_SUBSCRIPTIONS", "0")]);
        let errors = load_for(Purpose::Serve, &overrides, vars, crate::app::serving_checks)
            .unwrap_err()
            .0
            .join("\n");
        assert!(errors.contains("kafka.librdkafka.\"no.such.option\""), "{errors}");
        assert!(errors.contains("kafka.librdkafka.\"linger.ms\""), "{errors}");
        assert!(errors.contains("limits.max_subscriptions"), "{errors}");
    }

    #[test]
    fn a_variable_is_read_as_the_type_its_key_takes() {
        let config = load(
            &Overrides::default(),
            env(&[("FERRY_NODE_ID", "42"), ("FERRY_KAFKA_AUTO_CREATE_TOPICS", "false")]),
        )
        .unwrap();
        assert_eq!(config.node_id.as_deref(), Some("42"));
        assert_eq!(config.kafka.auto_create_topics, Some(false));
        let errors = load(
            &Overrides::default(),
            env(&[("FERRY_LIMITS_MAX_SUBSCRIPTIONS", "many"), ("FERRY_SHUTDOWN_GRACE_MS", "-1")]),
        )
        .unwrap_err()
        .0;
        let all = errors.join("\n");
        assert!(all.contains("FERRY_LIMITS_MAX_SUBSCRIPTIONS: "), "{all}");
        assert!(all.contains("`limits.max_subscriptions`"), "{all}");
        assert!(all.contains("FERRY_SHUTDOWN_GRACE_MS: "), "{all}");
        assert_eq!(errors.len(), 2, "{all}");
    }

    #[test]
    fn an_unknown_key_does_not_hide_the_other_errors_of_its_section() {
        let dir = std::env::temp_dir().join(format!("ferry-config-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.toml");
        std::fs::write(
            &file,
            "nope = 1\nnode_id = 5\n[limits]\nnope = 2\nmax_frame_bytes = \"big\"\npublish_rate = 0\n[auth]\nmode = \"sometimes\"\nnada = 1\n",
        )
        .unwrap();
        let overrides = Overrides { config_file: Some(file), ..Default::default() };
        let errors = load(&overrides, env(&[])).unwrap_err().0;
        let all = errors.join("\n");
        for part in [
            "nope: unknown field `nope`",
            "node_id: ",
            "[limits] nope: unknown field",
            "[limits] max_frame_bytes: ",
            "limits.publish_rate must be at least 1",
            "[auth] mode: ",
            "[auth] nada: unknown field",
        ] {
            assert!(all.contains(part), "{part:?} missing from\n{all}");
        }
        assert_eq!(errors.len(), 7, "{all}");
    }

    #[test]
    fn kafka_security_from_env_with_secrets_kept_as_strings_and_hidden() {
        let config = load(
            &Overrides::default(),
            env(&[
                ("FERRY_KAFKA_BROKERS", "kafka:9096"),
                ("FERRY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("FERRY_KAFKA_SECURITY_SASL_MECHANISM", "SCRAM-SHA-256"),
                ("FERRY_KAFKA_SECURITY_USERNAME", "ferry"),
                ("FERRY_KAFKA_SECURITY_PASSWORD", "123456"),
                ("FERRY_KAFKA_SECURITY_VERIFY_HOSTNAME", "false"),
            ]),
        )
        .unwrap();
        let security = &config.kafka.security;
        assert_eq!(security.password.as_ref().map(|p| p.expose()), Some("123456"));
        assert!(!security.verify_hostname);
        let mut config = config;
        config.kafka.librdkafka.insert("sasl.password".into(), "raw-secret".into());
        let debug = format!("{config:?}");
        assert!(!debug.contains("123456") && !debug.contains("raw-secret"), "{debug}");
        let serialized = toml::to_string(&config).unwrap();
        assert!(!serialized.contains("123456") && !serialized.contains("raw-secret"));
    }

    #[test]
    fn kafka_security_mistakes_are_reported_with_the_others() {
        let errors = load(
            &Overrides::default(),
            env(&[
                ("FERRY_KAFKA_BROKERS", "kafka:9093"),
                ("FERRY_KAFKA_SECURITY_PROTOCOL", "ssl"),
                ("FERRY_KAFKA_SECURITY_CERT_FILE", "/nonexistent/client.pem"),
                ("FERRY_LIMITS_MAX_SUBSCRIPTIONS", "0"),
            ]),
        )
        .unwrap_err()
        .0
        .join("\n");
        assert!(
            errors.contains("kafka.security.cert_file needs kafka.security.key_file"),
            "{errors}"
        );
        assert!(errors.contains("limits.max_subscriptions"), "{errors}");
    }

    #[test]
    fn env_names_cover_every_scalar_key() {
        let keys = env_keys();
        for name in [
            "FERRY_LISTEN",
            "FERRY_KAFKA_BROKERS",
            "FERRY_KAFKA_MESSAGE_TIMEOUT_MS",
            "FERRY_LIMITS_OUTBOUND_QUEUE",
            "FERRY_WEBSOCKET_PING_INTERVAL_MS",
            "FERRY_SHUTDOWN_GRACE_MS",
            "FERRY_TLS_CERT_FILE",
            "FERRY_TLS_KEY_FILE",
            "FERRY_SERVER_HEADER_READ_TIMEOUT_MS",
            "FERRY_LIMITS_MAX_PENDING_HANDSHAKES",
        ] {
            assert!(keys.contains_key(name), "{name} in {keys:?}");
        }
        assert!(!keys.contains_key("FERRY_KAFKA_LIBRDKAFKA"));
        assert!(keys.contains_key("FERRY_KAFKA_SECURITY_PASSWORD_FILE"));
        assert!(keys.contains_key("FERRY_KAFKA_SECURITY_OAUTH_CLIENT_SECRET"));
    }

    #[test]
    fn schemas_and_console_come_from_the_file_and_bad_schemas_are_reported_with_the_rest() {
        let dir = std::env::temp_dir().join(format!("ferry-config-schemas-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.toml");
        std::fs::write(
            &file,
            "[console]\nenabled = false\n[[schemas]]\ntopics = \"telemetry.**\"\nschema = '{\"type\":\"object\"}'\n",
        )
        .unwrap();
        let overrides = Overrides { config_file: Some(file.clone()), ..Default::default() };
        let config = load(&overrides, env(&[])).unwrap();
        assert!(!config.console.enabled);
        assert_eq!(config.schemas.len(), 1);
        assert_eq!(config.schemas[0].topics, "telemetry.**");
        assert!(Config::default().console.enabled, "the console is on by default");

        std::fs::write(
            &file,
            "[[schemas]]\ntopics = \"t\"\nschema = 'nope'\nextra = 1\n[[schemas]]\ntopics = \"u\"\nschema = '{\"type\": 5}'\n",
        )
        .unwrap();
        let errors = load(&overrides, env(&[("FERRY_LIMITS_MAX_SUBSCRIPTIONS", "0")]))
            .unwrap_err()
            .0
            .join("\n");
        assert!(errors.contains("schemas") && errors.contains("extra"), "{errors}");
        assert!(errors.contains("limits.max_subscriptions"), "{errors}");
        let errors = load(&overrides, env(&[("FERRY_CONSOLE_ENABLED", "maybe")])).unwrap_err().0;
        assert!(errors.iter().any(|e| e.contains("FERRY_CONSOLE_ENABLED")), "{errors:?}");
        assert!(env_keys().contains_key("FERRY_CONSOLE_ENABLED"));
    }

    #[test]
    fn tls_files_come_together() {
        let errors =
            load(&Overrides::default(), env(&[("FERRY_TLS_CERT_FILE", "/etc/ferry/cert.pem")]))
                .unwrap_err()
                .0;
        assert!(errors.iter().any(|e| e.contains("tls.cert_file and tls.key_file")), "{errors:?}");
        let config = load_for(
            Purpose::Token,
            &Overrides::default(),
            env(&[("FERRY_TLS_CERT_FILE", "/c.pem"), ("FERRY_TLS_KEY_FILE", "/k.pem")]),
            |_| Vec::new(),
        )
        .unwrap();
        let (cert, key) = config.tls.files().unwrap();
        assert_eq!((cert.to_str(), key.to_str()), (Some("/c.pem"), Some("/k.pem")));
        assert!(Config::default().tls.files().is_none());
    }
}
