//! Everything that talks to Kafka.
//!
//! - [`client_config`]: the librdkafka settings of each client, in one place
//!   (with `[kafka.security]`, read by [`crate::config::kafka_security`]).
//! - [`context`]: the client context that names the cause when the cluster
//!   refuses the gateway (bad credentials, untrusted certificate).
//! - [`embedded`]: the in-process mock cluster used when no brokers are set.
//! - [`topics`]: does a topic exist, how many partitions; creates topics
//!   when `kafka.auto_create_topics` is on.
//! - [`producer`]: the publish path, from a decoded frame to a delivery result.
//! - [`fanout`]: the node's consumer, assigning the partitions of subscribed
//!   topics and handing each record, encoded once, to the [`crate::hub`].
//! - [`groups`]: shared-group subscriptions on real Kafka consumer groups,
//!   at least once.
//! - [`catchup`]: subscriptions from `earliest`, offsets or a timestamp,
//!   served from the recent records or one shared reader per topic until
//!   they join the live fan-out.
//! - [`source`]: the one pump loop every consumer above runs, handing each
//!   record to its route (the hub, one socket, or a group's members).
//! - [`record`]: a record's `message` frame, encoded once for every route.
//! - [`health`]: whether Kafka answers, for `/readyz` and for fast
//!   `unavailable` answers.

pub mod catchup;
pub mod client_config;
pub mod context;
pub mod embedded;
pub mod fanout;
pub mod groups;
pub mod health;
pub mod producer;
pub mod record;
pub mod source;
pub mod topics;

/// Runs a blocking Kafka call until it succeeds or `timeout` passes: a topic
/// created a moment ago may not have partition leaders ready yet.
pub(crate) fn retry_blocking<T, E: std::fmt::Display>(
    timeout: std::time::Duration,
    mut call: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match call() {
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "Kafka call failed; retrying");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
