//! One typed configuration, from a TOML file, `FERRY_*` environment variables
//! and command-line flags (later sources win), with every error reported at
//! once.
//!
//! Each field's doc comment is its user documentation; `README.md` has the
//! same reference as a table. Every key has an environment variable named
//! after its path: `kafka.message_timeout_ms` is `FERRY_KAFKA_MESSAGE_TIMEOUT_MS`.
//! Tables (`kafka.librdkafka`) can only be set in the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::acl::AclConfig;
use crate::auth::{AuthConfig, AuthMode};

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
    /// Set by `--insecure` only: allow `auth.mode = "none"` off loopback.
    #[serde(skip)]
    pub insecure: bool,
    /// The file the configuration came from, re-read for ACL reloads.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
}

/// Where Kafka is and how the gateway talks to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// (e.g. `"security.protocol" = "SASL_SSL"`). They win over Ferry's own.
    pub librdkafka: BTreeMap<String, String>,
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
    /// Subscriptions from `earliest`, offsets or a timestamp running at once
    /// on this node (each has its own Kafka consumer); more get `limit`.
    pub max_replays: usize,
    /// Replayed records queued for one socket; a full queue pauses the
    /// replay (it never disconnects the socket).
    pub replay_queue: usize,
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
            max_replays: 256,
            replay_queue: 256,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self { ping_interval_ms: 20_000, idle_timeout_ms: 60_000, write_timeout_ms: 10_000 }
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

    /// Checks value ranges; returns every problem found.
    fn validate(&self) -> Vec<String> {
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
        check(
            l.max_connections_per_subject >= 1,
            "limits.max_connections_per_subject must be at least 1",
        );
        check(l.publish_rate >= 1, "limits.publish_rate must be at least 1");
        check(l.publish_burst >= 1, "limits.publish_burst must be at least 1");
        check(l.rate_limit_strikes >= 1, "limits.rate_limit_strikes must be at least 1");
        check(l.max_replays >= 1, "limits.max_replays must be at least 1");
        check(l.replay_queue >= 1, "limits.replay_queue must be at least 1");
        check(
            self.auth.mode == AuthMode::Jwt || self.listen.ip().is_loopback() || self.insecure,
            "auth.mode = \"none\" on a non-loopback address lets anyone in: set auth.mode = \"jwt\", listen on loopback, or pass --insecure",
        );
        if let Err(problems) = crate::acl::Policy::compile(&self.acl) {
            errors.extend(problems);
        }
        if let Err(problems) = crate::auth::Authenticator::from_config(&self.auth) {
            errors.extend(problems);
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

/// Loads file, then environment (`env` yields `(name, value)` pairs), then
/// flags, and validates the result.
pub fn load(
    overrides: &Overrides,
    env: impl IntoIterator<Item = (String, String)>,
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

    let known = env_keys();
    for (name, raw) in env {
        if let Some(path) = known.get(&name) {
            set_path(&mut table, path, env_value(&raw));
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
    errors.extend(config.validate());
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
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
            Some(value) => value.try_into().unwrap_or_else(|e: toml::de::Error| {
                errors.push(format!("[{name}]: {}", e.message()));
                T::default()
            }),
        }
    }
    let kafka = section(&mut table, "kafka", errors);
    let limits = section(&mut table, "limits", errors);
    let websocket = section(&mut table, "websocket", errors);
    let auth = section(&mut table, "auth", errors);
    let acl = section(&mut table, "acl", errors);
    let mut config: Config = toml::Value::Table(table).try_into().unwrap_or_else(|e| {
        errors.push(e.message().to_owned());
        Config::default()
    });
    config.kafka = kafka;
    config.limits = limits;
    config.websocket = websocket;
    config.auth = auth;
    config.acl = acl;
    config
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
    ] {
        keys.insert(env_name(&split(path)), split(path));
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
    match table.remove("acl") {
        None => Ok(AclConfig::default()),
        Some(value) => {
            value.try_into().map_err(|e: toml::de::Error| vec![format!("[acl]: {}", e.message())])
        }
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
    fn env_names_cover_every_scalar_key() {
        let keys = env_keys();
        for name in [
            "FERRY_LISTEN",
            "FERRY_KAFKA_BROKERS",
            "FERRY_KAFKA_MESSAGE_TIMEOUT_MS",
            "FERRY_LIMITS_OUTBOUND_QUEUE",
            "FERRY_WEBSOCKET_PING_INTERVAL_MS",
            "FERRY_SHUTDOWN_GRACE_MS",
        ] {
            assert!(keys.contains_key(name), "{name} in {keys:?}");
        }
        assert!(!keys.contains_key("FERRY_KAFKA_LIBRDKAFKA"));
    }
}
