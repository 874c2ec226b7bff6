//! The gateway's librdkafka client context: when the cluster refuses the
//! gateway (bad credentials, a broker certificate the gateway does not
//! trust, a client certificate the broker does not accept) it logs one
//! clear line naming the cause, and marks Kafka not ready at once so that
//! `/readyz` answers 503 and publishes get `unavailable` without waiting
//! for the next health probe.
//!
//! librdkafka reports such a failure twice per client and broker (a log
//! line and an error event), at most every 30 s each. Every client built
//! with a clone of one [`KafkaContext`] shares one rate limit: a cause is
//! logged when it first happens and then at most once per
//! [`REPEAT_EVERY`] while it lasts, with the number of repeats.
//! The raw librdkafka text of a recognised refusal goes to `debug`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::health::{Health, Refusal};
use crate::throttle::Throttle;

/// How often a refusal that lasts is logged again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// When a cause was last logged, and how often it happened since.
#[derive(Debug)]
struct Seen {
    logged: Instant,
    repeats: u64,
}

#[derive(Debug)]
struct Inner {
    health: Arc<Health>,
    /// Short critical sections only (one look-up and update, no I/O).
    seen: Mutex<HashMap<Refusal, Seen>>,
    /// Other errors and warnings, by kind: while Kafka is down every client
    /// reports the same thing many times a second. Short critical sections.
    repeated: Mutex<HashMap<String, Throttle>>,
}

/// The context of the gateway's Kafka clients. Clone it for each client so
/// that they share one health state and one rate limit.
#[derive(Debug, Clone)]
pub struct KafkaContext {
    inner: Arc<Inner>,
}

impl KafkaContext {
    pub fn new(health: Arc<Health>) -> Self {
        let inner = Inner { health, seen: Mutex::default(), repeated: Mutex::default() };
        Self { inner: Arc::new(inner) }
    }

    /// `Some(held_back)` when a report of this `kind` should be logged now
    /// (once per [`crate::throttle::LOG_EVERY`]), with how many were held
    /// back since the last one.
    fn allow(&self, kind: String) -> Option<u64> {
        let mut repeated = self.inner.repeated.lock().expect("repeat log lock");
        repeated.entry(kind).or_default().allow()
    }

    /// Why the cluster refuses the gateway, while it does (cleared by the
    /// next successful health probe).
    pub fn refusal(&self) -> Option<Refusal> {
        self.inner.health.refusal()
    }

    /// Records a refusal: Kafka is not ready; the cause is logged unless it
    /// was logged less than [`REPEAT_EVERY`] ago.
    pub fn refused(&self, cause: Refusal, detail: &str) {
        self.inner.health.refused(cause);
        let repeats = {
            let mut seen = self.inner.seen.lock().expect("refusal log lock");
            let now = Instant::now();
            match seen.get_mut(&cause) {
                Some(s) if now.duration_since(s.logged) < REPEAT_EVERY => {
                    s.repeats += 1;
                    None
                }
                Some(s) => {
                    let repeats = s.repeats;
                    *s = Seen { logged: now, repeats: 0 };
                    Some(repeats)
                }
                None => {
                    seen.insert(cause, Seen { logged: now, repeats: 0 });
                    Some(0)
                }
            }
        };
        match repeats {
            Some(0) => tracing::error!(
                cause = cause.as_str(),
                "Kafka refused the gateway: {}; {} (librdkafka: {detail})",
                cause.as_str(),
                cause.hint(),
            ),
            Some(n) => tracing::error!(
                cause = cause.as_str(),
                repeats = n,
                "Kafka still refuses the gateway: {}; {} (librdkafka: {detail})",
                cause.as_str(),
                cause.hint(),
            ),
            None => tracing::debug!(cause = cause.as_str(), "librdkafka: {detail}"),
        }
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // The error event that follows carries the same text: it is the
        // one reported.
        if Refusal::classify(None, message).is_some() {
            tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                if let Some(held_back) = self.allow(format!("log {fac}")) {
                    tracing::error!(target: "librdkafka", held_back, "librdkafka: {fac} {message}")
                }
            }
            RDKafkaLogLevel::Warning => {
                if let Some(held_back) = self.allow(format!("log {fac}")) {
                    tracing::warn!(target: "librdkafka", held_back, "librdkafka: {fac} {message}")
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if let Some(cause) = Refusal::classify(code, reason) {
            self.refused(cause, reason);
        } else if code == Some(RDKafkaErrorCode::AllBrokersDown)
            && self.inner.health.refusal().is_some()
        {
            // A consequence of the refusal already reported.
            tracing::debug!(target: "librdkafka", "librdkafka: {error}: {reason}");
        } else if let Some(held_back) = self.allow(format!("error {code:?}")) {
            tracing::error!(target: "librdkafka", held_back, "librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for KafkaContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafkas_refusals_are_named() {
        let cases = [
            (
                Some(RDKafkaErrorCode::Authentication),
                "sasl_ssl://127.0.0.1:19094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 310ms in state AUTH_REQ)",
                Some(Refusal::AuthenticationFailed),
            ),
            (
                Some(RDKafkaErrorCode::SSL),
                "ssl://127.0.0.1:19095/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 4ms in state SSL_HANDSHAKE)",
                Some(Refusal::CertificateNotTrusted),
            ),
            (
                None,
                "[thrd:ssl://127.0.0.1:19095/bootstrap]: ssl://127.0.0.1:19095/bootstrap: SSL transport error: error:0A00045C:SSL routines::tlsv13 alert certificate required",
                Some(Refusal::ClientCertificateRejected),
            ),
            (
                Some(RDKafkaErrorCode::Authentication),
                "Failed to acquire SASL OAUTHBEARER token: Failed to retrieve OIDC token from \"http://127.0.0.1:1/token\": Couldn't connect to server (-1)",
                Some(Refusal::AuthenticationFailed),
            ),
            (
                Some(RDKafkaErrorCode::BrokerTransportFailure),
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused",
                None,
            ),
            (Some(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down", None),
        ];
        for (code, text, expected) in cases {
            assert_eq!(Refusal::classify(code, text), expected, "{text}");
        }
    }

    #[test]
    fn a_refusal_marks_kafka_not_ready_and_is_logged_once_per_interval() {
        let health = Arc::new(Health::default());
        let context = KafkaContext::new(health.clone());
        let other_client = context.clone();
        context.refused(Refusal::AuthenticationFailed, "first");
        other_client.refused(Refusal::AuthenticationFailed, "second");
        assert!(!health.is_ready());
        assert_eq!(health.refusal(), Some(Refusal::AuthenticationFailed));
        let seen = context.inner.seen.lock().unwrap();
        assert_eq!(seen[&Refusal::AuthenticationFailed].repeats, 1);
    }
}
