//! Whether Kafka answers: polled in the background, read by `/readyz` and by
//! the publish path (so a down cluster gives a prompt `unavailable`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Interval between two reachability probes.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Last known reachability of the cluster.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn set(&self, ready: bool) {
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
    pub async fn probe(&self, producer: &FutureProducer, timeout: Duration) -> bool {
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
    pub async fn run(
        self: Arc<Self>,
        producer: FutureProducer,
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
