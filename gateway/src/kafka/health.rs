//! Whether Kafka answers: polled in the background, read by `/readyz` and by
//! the publish path (so a down cluster gives a prompt `unavailable`). A
//! refusal reported by a client ([`crate::kafka::context`]) makes it not
//! ready at once, with its cause, until a probe succeeds again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::producer::{FutureProducer, Producer};
use tokio_util::sync::CancellationToken;

use crate::kafka::context::Refusal;
use crate::metrics;

/// Interval between two reachability probes.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

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
    pub async fn probe<C: ClientContext + 'static>(
        &self,
        producer: &FutureProducer<C>,
        timeout: Duration,
    ) -> bool {
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
    pub async fn run<C: ClientContext + 'static>(
        self: Arc<Self>,
        producer: FutureProducer<C>,
        timeout: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
            self.probe(&producer, timeout).await;
        }
    }
}
