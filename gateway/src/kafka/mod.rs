//! Everything that talks to Kafka.
//!
//! - [`client_config`]: the librdkafka settings of each client, in one place.
//! - [`embedded`]: the in-process mock cluster used when no brokers are set.
//! - [`topics`]: does a topic exist, how many partitions; creates topics
//!   when `kafka.auto_create_topics` is on.
//! - [`producer`]: the publish path, from a decoded frame to a delivery result.
//! - [`fanout`]: the node's consumer, assigning the partitions of subscribed
//!   topics and handing each record, encoded once, to the [`crate::hub`].
//! - [`health`]: whether Kafka answers, for `/readyz` and for fast
//!   `unavailable` answers.

pub mod client_config;
pub mod embedded;
pub mod fanout;
pub mod health;
pub mod producer;
pub mod topics;
