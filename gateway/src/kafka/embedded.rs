//! The embedded Kafka: librdkafka's mock cluster, started in-process when no
//! brokers are configured, so `cargo run` works on a fresh machine and every
//! code path still goes through real rdkafka clients.
//!
//! rdkafka's own `MockCluster` wrapper is neither `Send` nor able to set the
//! group initial-rebalance delay, so this creates the cluster through
//! `rdkafka_sys` on a client handle of its own.

use std::ffi::{CStr, CString};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka_sys as rdsys;

/// Kafka's API key of the Produce request.
const PRODUCE_API_KEY: i16 = 0;

/// A running mock cluster; stopped when dropped.
pub struct EmbeddedKafka {
    cluster: *mut rdsys::rd_kafka_mock_cluster_t,
    bootstrap: String,
    /// The client whose handle hosts the cluster; it must outlive `cluster`.
    _host: BaseProducer,
}

// SAFETY: the mock cluster API is thread-safe: every call below either reads
// the immutable bootstrap string or is sent to the cluster's own thread as a
// command and waited for (`rd_kafka_mock_cluster_cmd`).
unsafe impl Send for EmbeddedKafka {}
// SAFETY: see `Send`; no method takes `&mut self`.
unsafe impl Sync for EmbeddedKafka {}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka").field("bootstrap", &self.bootstrap).finish()
    }
}

/// Failure to start or drive the embedded Kafka.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot create the client that hosts the embedded Kafka: {0}")]
    Host(#[from] rdkafka::error::KafkaError),
    #[error("librdkafka could not start its mock cluster")]
    Start,
    #[error("mock cluster refused the request: {0}")]
    Refused(String),
}

impl EmbeddedKafka {
    /// Starts a mock cluster with `brokers` brokers and no group
    /// initial-rebalance delay.
    pub fn start(brokers: i32) -> Result<Self, EmbeddedError> {
        let host: BaseProducer = ClientConfig::new().set("client.id", "ferry-embedded").create()?;
        // SAFETY: the handle is valid for as long as `host` lives, and `host`
        // is kept in the returned value and dropped after the cluster.
        let cluster =
            unsafe { rdsys::rd_kafka_mock_cluster_new(host.client().native_ptr(), brokers) };
        if cluster.is_null() {
            return Err(EmbeddedError::Start);
        }
        // SAFETY: `cluster` is a live mock cluster; the returned string lives
        // as long as the cluster and is copied right away.
        let bootstrap = unsafe {
            rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
            CStr::from_ptr(rdsys::rd_kafka_mock_cluster_bootstraps(cluster))
                .to_string_lossy()
                .into_owned()
        };
        Ok(Self { cluster, bootstrap, _host: host })
    }

    /// `host:port` list other Kafka clients (kcat, Java) can bootstrap from.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (the mock answers no CreateTopics admin request).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), EmbeddedError> {
        let name = CString::new(topic).map_err(|e| EmbeddedError::Refused(e.to_string()))?;
        // SAFETY: live cluster, NUL-terminated name that outlives the call.
        let err = unsafe {
            rdsys::rd_kafka_mock_topic_create(self.cluster, name.as_ptr(), partitions, 1)
        };
        // Created meanwhile by another node or request: that is success.
        if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS {
            return Ok(());
        }
        check(err)
    }

    /// Makes the next `count` produce requests fail with the retriable
    /// `NOT_ENOUGH_REPLICAS` (fault injection: deliveries then time out).
    pub fn fail_produce_requests(&self, count: usize) {
        let errors = vec![rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; count];
        // SAFETY: live cluster; `errors` outlives the call, which copies it.
        unsafe {
            rdsys::rd_kafka_mock_push_request_errors_array(
                self.cluster,
                PRODUCE_API_KEY,
                errors.len(),
                errors.as_ptr(),
            )
        };
    }

    /// Takes a broker down (for fault-injection tests).
    pub fn broker_down(&self, broker_id: i32) -> Result<(), EmbeddedError> {
        // SAFETY: live cluster.
        check(unsafe { rdsys::rd_kafka_mock_broker_set_down(self.cluster, broker_id) })
    }

    /// Brings a broker back up.
    pub fn broker_up(&self, broker_id: i32) -> Result<(), EmbeddedError> {
        // SAFETY: live cluster.
        check(unsafe { rdsys::rd_kafka_mock_broker_set_up(self.cluster, broker_id) })
    }
}

fn check(err: rdsys::rd_kafka_resp_err_t) -> Result<(), EmbeddedError> {
    if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(EmbeddedError::Refused(format!("{:?}", rdsys::RDKafkaErrorCode::from(err))))
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        // SAFETY: the cluster was created in `start` and is destroyed once,
        // here, before `_host` (a later field) is dropped.
        unsafe { rdsys::rd_kafka_mock_cluster_destroy(self.cluster) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two requests that both found the topic missing both create it: the
    /// second creation is a success, not an error a client would see.
    #[test]
    fn creating_a_topic_that_exists_is_success() {
        let kafka = EmbeddedKafka::start(1).expect("mock cluster starts");
        kafka.create_topic("twice", 3).expect("first creation");
        kafka.create_topic("twice", 3).expect("second creation of the same topic");
    }
}
