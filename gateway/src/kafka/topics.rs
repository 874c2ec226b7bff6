//! Topic existence and partition counts, cached; topic creation on demand.
//!
//! Kafka answers a produce to a missing topic only after a long metadata
//! timeout, so the gateway asks first: a client gets `unknown_topic` at
//! once, or the topic is created when `kafka.auto_create_topics` is on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::error::GatewayError;
use crate::kafka::embedded::EmbeddedKafka;

/// How long a known partition count is trusted before asking Kafka again.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// How topics get created when auto-creation is on.
pub enum Creator {
    Embedded(Arc<EmbeddedKafka>),
    Admin(AdminClient<DefaultClientContext>),
}

impl std::fmt::Debug for Creator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Embedded(_) => "Creator::Embedded",
            Self::Admin(_) => "Creator::Admin",
        })
    }
}

/// The catalog of topics this node has looked at.
pub struct Topics {
    producer: FutureProducer,
    creator: Option<Creator>,
    partitions: i32,
    replication: i32,
    timeout: Duration,
    /// Short critical sections only (look-up, insert); never held across an
    /// await.
    cache: Mutex<HashMap<String, (i32, Instant)>>,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics").field("creator", &self.creator).finish_non_exhaustive()
    }
}

impl Topics {
    /// `creator` is `None` when the gateway must not create topics.
    pub fn new(
        producer: FutureProducer,
        creator: Option<Creator>,
        partitions: i32,
        replication: i32,
        timeout: Duration,
    ) -> Self {
        Self { producer, creator, partitions, replication, timeout, cache: Mutex::default() }
    }

    /// The partition count of `topic`, creating the topic if allowed.
    pub async fn partitions(&self, topic: &str) -> Result<i32, GatewayError> {
        if let Some(n) = self.cached(topic) {
            return Ok(n);
        }
        self.refresh(topic).await
    }

    /// Asks Kafka again, ignoring the cache (e.g. a partition beyond the
    /// cached count was requested).
    pub async fn refresh(&self, topic: &str) -> Result<i32, GatewayError> {
        let count = match self.fetch(topic).await? {
            Some(n) => n,
            None => self.create(topic).await?,
        };
        self.cache.lock().expect("cache lock").insert(topic.to_owned(), (count, Instant::now()));
        Ok(count)
    }

    fn cached(&self, topic: &str) -> Option<i32> {
        let cache = self.cache.lock().expect("cache lock");
        cache.get(topic).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(n, _)| *n)
    }

    /// `Some(partitions)` if the topic exists, `None` if it does not.
    async fn fetch(&self, topic: &str) -> Result<Option<i32>, GatewayError> {
        let producer = self.producer.clone();
        let (name, timeout) = (topic.to_owned(), self.timeout);
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&name), timeout)
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("metadata task: {e}")))?
        .map_err(|e| GatewayError::Unavailable(format!("metadata request failed: {e}")))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        // A topic is usable once every partition has a leader.
        let led = |t: &rdkafka::metadata::MetadataTopic| {
            !t.partitions().is_empty()
                && t.partitions().iter().all(|p| p.error().is_none() && p.leader() >= 0)
        };
        match found.error().map(RDKafkaErrorCode::from) {
            None if led(found) => Ok(Some(found.partitions().len() as i32)),
            None if !found.partitions().is_empty() => Err(GatewayError::Unavailable(format!(
                "topic {topic:?} has partitions without a leader"
            ))),
            None | Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => Err(GatewayError::Internal(
                format!("the gateway's Kafka principal may not describe topic {topic:?}"),
            )),
            Some(other) => Err(GatewayError::Unavailable(format!("topic {topic:?}: {other}"))),
        }
    }

    async fn create(&self, topic: &str) -> Result<i32, GatewayError> {
        let unknown = || GatewayError::UnknownTopic(topic.to_owned());
        match self.creator.as_ref().ok_or_else(unknown)? {
            Creator::Embedded(kafka) => kafka
                .create_topic(topic, self.partitions)
                .map_err(|e| GatewayError::Internal(e.to_string()))?,
            Creator::Admin(admin) => {
                let new = NewTopic::new(
                    topic,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                );
                let options = AdminOptions::new().operation_timeout(Some(self.timeout));
                let results = admin
                    .create_topics([&new], &options)
                    .await
                    .map_err(|e| GatewayError::Unavailable(format!("create topic: {e}")))?;
                for result in results {
                    match result {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => {
                            return Err(GatewayError::Internal(format!(
                                "creating topic {topic:?} failed: {code}"
                            )))
                        }
                    }
                }
            }
        }
        tracing::info!(topic, partitions = self.partitions, "created topic");
        // A new topic takes a moment to appear in metadata with leaders.
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.fetch(topic).await {
                Ok(Some(n)) => return Ok(n),
                Ok(None) | Err(GatewayError::Unavailable(_)) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() > deadline {
                return Err(GatewayError::Unavailable(format!(
                    "topic {topic:?} was created but does not show in metadata yet"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Maps a produce or delivery error to what the client is told.
pub fn classify(err: &KafkaError) -> GatewayError {
    use RDKafkaErrorCode as C;
    match err.rdkafka_error_code() {
        Some(C::QueueFull) => GatewayError::Unavailable("the gateway's Kafka queue is full".into()),
        Some(C::MessageTimedOut) => GatewayError::Timeout,
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            GatewayError::TooLarge
        }
        Some(C::UnknownTopicOrPartition | C::UnknownTopic) => {
            GatewayError::UnknownTopic("the topic".into())
        }
        Some(C::UnknownPartition) => {
            GatewayError::BadRequest("that partition does not exist".into())
        }
        Some(C::PurgeQueue | C::PurgeInflight) => GatewayError::Timeout,
        Some(
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::RequestTimedOut,
        ) => GatewayError::Unavailable(err.to_string()),
        _ => GatewayError::Internal(err.to_string()),
    }
}
