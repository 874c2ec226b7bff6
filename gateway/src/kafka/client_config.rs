//! The librdkafka settings of each Kafka client of the gateway.
//!
//! Ferry's own choices are set first, then `[kafka.security]` (TLS, SASL);
//! `kafka.librdkafka` from the config is applied last, so an operator can
//! override any of them.
//!
//! A `ClientConfig` built here holds secrets in clear: never log one
//! (`ClientSettings`' own `Debug` hides them).

use std::collections::BTreeMap;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;

use crate::config::kafka_security::{self as security, Value};
use crate::config::KafkaConfig;

/// What every client needs to reach the cluster.
#[derive(Clone)]
pub struct ClientSettings {
    bootstrap: String,
    embedded: bool,
    message_timeout_ms: u64,
    /// `[kafka.security]` as librdkafka settings, secrets still wrapped.
    security: Vec<(String, Value)>,
    passthrough: BTreeMap<String, String>,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let passthrough: Vec<(&str, &str)> = self
            .passthrough
            .iter()
            .map(|(k, v)| (k.as_str(), if security::is_sensitive_property(k) { "***" } else { v }))
            .collect();
        f.debug_struct("ClientSettings")
            .field("bootstrap", &self.bootstrap)
            .field("embedded", &self.embedded)
            .field("security", &self.security)
            .field("passthrough", &passthrough)
            .finish_non_exhaustive()
    }
}

/// Checks that librdkafka takes every setting of every client the gateway
/// makes (`kafka.librdkafka` and what `[kafka.security]` turns into), for
/// configuration loading: one error per refused property, naming it but
/// never a secret's value. Only a real client can find the few conflicts
/// librdkafka checks when it starts.
pub fn check(config: &KafkaConfig) -> Vec<String> {
    // Any address will do: nothing connects.
    let Ok(settings) = ClientSettings::new(config, "127.0.0.1:9092".to_owned()) else {
        return Vec::new(); // `[kafka.security]`'s own errors are reported by its check
    };
    let mut errors = Vec::new();
    for client in [settings.producer(), settings.consumer(), settings.admin()] {
        // One property at a time: librdkafka stops at the first it refuses.
        let refused = client.config_map().into_iter().filter_map(|(key, value)| {
            ClientConfig::new().set(key, value).create_native_config().err()
        });
        for e in refused {
            let error = match &e {
                KafkaError::ClientConfig(_, description, key, _) => {
                    let setting = if settings.passthrough.contains_key(key) {
                        format!("kafka.librdkafka.\"{key}\"")
                    } else {
                        format!("kafka.security (librdkafka's {key:?})")
                    };
                    if security::is_sensitive_property(key) {
                        format!("{setting}: refused by the Kafka client")
                    } else {
                        format!("{setting}: {description}")
                    }
                }
                other => format!("kafka: {other}"),
            };
            if !errors.contains(&error) {
                errors.push(error);
            }
        }
    }
    errors
}

impl ClientSettings {
    /// Fails, naming every problem, when `[kafka.security]` is unusable
    /// (the same checks config loading makes; files are read again here).
    pub fn new(config: &KafkaConfig, bootstrap: String) -> Result<Self, Vec<String>> {
        Ok(Self {
            security: security::resolve(&config.security, config.embedded())?,
            bootstrap,
            embedded: config.embedded(),
            message_timeout_ms: config.message_timeout_ms,
            passthrough: config.librdkafka.clone(),
        })
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Whether these clients talk to the embedded mock cluster.
    pub fn embedded(&self) -> bool {
        self.embedded
    }

    fn base(&self, role: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", format!("ferry-{role}"))
            // Topics are created by the gateway on purpose or not at all,
            // never as a side effect of a metadata request.
            .set("allow.auto.create.topics", "false")
            .set_log_level(RDKafkaLogLevel::Warning);
        config
    }

    fn finish(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.security {
            config.set(key, value.expose());
        }
        for (key, value) in &self.passthrough {
            config.set(key, value);
        }
        if self.passthrough.contains_key("debug") {
            // librdkafka drops its debug lines below the client's log level.
            config.set_log_level(RDKafkaLogLevel::Debug);
        }
        config
    }

    /// The publish path: idempotent, `acks=all`, bounded delivery time, and
    /// a short linger so pipelined publishes share requests.
    pub fn producer(&self) -> ClientConfig {
        let mut config = self.base("producer");
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("linger.ms", "2")
            .set("queue.buffering.max.messages", "100000")
            .set("queue.buffering.max.kbytes", "262144");
        self.finish(config)
    }

    /// The fan-out consumer: manual assignment only, nothing committed.
    pub fn consumer(&self) -> ClientConfig {
        let mut config = self.base("fanout");
        config
            .set("group.id", "ferry-fanout-unused")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        if self.embedded {
            // The mock broker answers a fetch only when `fetch.wait.max.ms`
            // expires, whatever arrives meanwhile: keep that wait short.
            config.set("fetch.wait.max.ms", "5");
        }
        self.finish(config)
    }

    /// A replaying subscription's own consumer: like the fan-out one, with a
    /// small prefetch queue since many of them may run.
    pub fn replay_consumer(&self) -> ClientConfig {
        let mut config = self.consumer();
        config
            .set("client.id", "ferry-replay")
            .set("queued.max.messages.kbytes", "2048")
            .set("fetch.max.bytes", "1048576");
        self.finish(config)
    }

    /// A shared-group subscription's consumer: a real consumer group member
    /// that stores offsets only for processed records and auto-commits them.
    pub fn group_consumer(&self, group_id: &str, reset: &str) -> ClientConfig {
        let mut config = self.base("group");
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", reset)
            .set("queued.max.messages.kbytes", "4096")
            .set("heartbeat.interval.ms", "1000")
            // A crashed node's partitions move on after this long. The mock
            // also waits it out (minus 1 s) on every rebalance, so keep it short.
            .set("session.timeout.ms", if self.embedded { "3000" } else { "10000" });
        if self.embedded {
            config.set("fetch.wait.max.ms", "5");
        }
        self.finish(config)
    }

    /// The admin client that creates topics on a real cluster.
    pub fn admin(&self) -> ClientConfig {
        self.finish(self.base("admin"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::kafka_security::{Mechanism, Protocol, Secret, SecurityConfig};

    #[test]
    fn security_reaches_every_client_and_the_passthrough_still_wins() {
        let mut config = KafkaConfig {
            brokers: Some("kafka:9096".into()),
            security: SecurityConfig {
                protocol: Some(Protocol::SaslSsl),
                sasl_mechanism: Some(Mechanism::ScramSha512),
                username: Some("ferry".into()),
                password: Some(Secret::new("s3cret")),
                ..Default::default()
            },
            ..KafkaConfig::default()
        };
        config.librdkafka.insert("ssl.endpoint.identification.algorithm".into(), "none".into());
        let settings = ClientSettings::new(&config, "kafka:9096".into()).unwrap();
        for client in [
            settings.producer(),
            settings.consumer(),
            settings.replay_consumer(),
            settings.group_consumer("ferry.g", "earliest"),
            settings.admin(),
        ] {
            assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(client.get("sasl.password"), Some("s3cret"));
            assert_eq!(client.get("ssl.endpoint.identification.algorithm"), Some("none"));
        }
        let debug = format!("{settings:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn without_security_nothing_changes() {
        let config = KafkaConfig::default();
        let settings = ClientSettings::new(&config, "127.0.0.1:1".into()).unwrap();
        assert_eq!(settings.producer().get("security.protocol"), None);
    }
}
