//! Whether Kafka answers: polled in the background, read by `/readyz` and by
//! the publish path (so a down cluster gives a prompt `unavailable`). A
//! [`Refusal`] (recognised by [`crate::kafka::context`] in what a client
//! reports) makes it not ready at once, with its cause, until a probe
//! succeeds again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::{Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Interval between two reachability probes.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why the cluster refused the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// SASL: wrong user name or password, unknown mechanism for the user,
    /// or no OAuth token could be fetched.
    AuthenticationFailed,
    /// TLS: the broker's certificate is not signed by a trusted CA, or does
    /// not name the host connected to.
    CertificateNotTrusted,
    /// mTLS: the broker did not accept the gateway's client certificate
    /// (or got none).
    ClientCertificateRejected,
    /// TLS failed for another reason.
    TlsHandshakeFailed,
}

impl Refusal {
    /// The cause as the log line and `/readyz` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthenticationFailed => "authentication failed",
            Self::CertificateNotTrusted => "broker certificate not trusted",
            Self::ClientCertificateRejected => "client certificate rejected",
            Self::TlsHandshakeFailed => "TLS handshake failed",
        }
    }

    pub(crate) fn hint(self) -> &'static str {
        match self {
            Self::AuthenticationFailed => {
                "check kafka.security.sasl_mechanism, username and password (or the OAuth client settings)"
            }
            Self::CertificateNotTrusted => {
                "check kafka.security.ca_file, and that the broker's certificate names the host in kafka.brokers"
            }
            Self::ClientCertificateRejected => {
                "check kafka.security.cert_file and key_file: the broker must trust their CA"
            }
            Self::TlsHandshakeFailed => "check kafka.security.protocol and the TLS settings",
        }
    }

    /// Recognises a refusal in an error librdkafka reported (`code` for an
    /// error event, `None` for a log line).
    pub fn classify(code: Option<RDKafkaErrorCode>, text: &str) -> Option<Self> {
        let text = text.to_ascii_lowercase();
        let has = |needle: &str| text.contains(needle);
        if code == Some(RDKafkaErrorCode::Authentication)
            || has("sasl authentication error")
            || has("failed to acquire sasl oauthbearer token")
        {
            Some(Self::AuthenticationFailed)
        } else if has("certificate required")
            || has("alert bad certificate")
            || has("alert unknown ca")
            || has("alert certificate unknown")
            || has("client ssl authentication might be required")
        {
            Some(Self::ClientCertificateRejected)
        } else if has("certificate verify failed") || has("failed to verify broker certificate") {
            Some(Self::CertificateNotTrusted)
        } else if code == Some(RDKafkaErrorCode::SSL) || has("ssl handshake failed") {
            Some(Self::TlsHandshakeFailed)
        } else {
            None
        }
    }
}

/// Last known reachability of the cluster.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Why the cluster refuses the gateway, if it does (a short lock: read
    /// or replaced, nothing else).
    refusal: Mutex<Option<Refusal>>,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The cause, when Kafka is not ready because it refused the gateway.
    pub fn refusal(&self) -> Option<Refusal> {
        *self.refusal.lock().expect("refusal lock")
    }

    /// The cluster refused a client: not ready until a probe succeeds.
    pub fn refused(&self, cause: Refusal) {
        *self.refusal.lock().expect("refusal lock") = Some(cause);
        self.set(false);
    }

    fn set(&self, ready: bool) {
        if ready {
            *self.refusal.lock().expect("refusal lock") = None;
        }
        let was = self.ready.swap(ready, Ordering::Relaxed);
        if was != ready {
            if ready {
                tracing::info!("Kafka is reachable");
            } else {
                tracing::warn!("Kafka is unreachable");
            }
        }
        metrics::kafka_ready(ready);
    }

    /// One probe: a metadata request with `timeout`.
    pub async fn probe<C, P>(&self, producer: &P, timeout: Duration) -> bool
    where
        C: ProducerContext + 'static,
        P: Producer<C> + Clone + Send + 'static,
    {
        let producer = producer.clone();
        let ok = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).is_ok()
        })
        .await
        .unwrap_or(false);
        self.set(ok);
        ok
    }

    /// Probes until `shutdown`.
    pub async fn run<C, P>(
        self: Arc<Self>,
        producer: P,
        timeout: Duration,
        shutdown: CancellationToken,
    ) where
        C: ProducerContext + 'static,
        P: Producer<C> + Clone + Send + 'static,
    {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
            self.probe(&producer, timeout).await;
        }
    }
}
