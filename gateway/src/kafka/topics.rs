//! Topic existence and partition counts, cached; topic creation on demand.
//!
//! Kafka answers a produce to a missing topic only after a long metadata
//! timeout, so the gateway asks first: a client gets `unknown_topic` at
//! once, or the topic is created when `kafka.auto_create_topics` is on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::GatewayError;
use crate::kafka::context::KafkaContext;
use crate::kafka::embedded::EmbeddedKafka;
use crate::kafka::health::Health;
use crate::kafka::producer::KafkaProducer;

/// How long a known partition count is trusted before asking Kafka again.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// How topics get created when auto-creation is on.
pub enum Creator {
    Embedded(Arc<EmbeddedKafka>),
    Admin(AdminClient<KafkaContext>),
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
    producer: KafkaProducer,
    /// Consulted first: a refusal is answered at once.
    health: Arc<Health>,
    creator: Option<Creator>,
    partitions: i32,
    replication: i32,
    timeout: Duration,
    /// Short critical sections only (look-up, insert); never held across an
    /// await.
    cache: Mutex<HashMap<String, (i32, Instant)>>,
    /// The look-up (and creation) under way for each topic, shared by every
    /// request that needs it meanwhile: a topic is created once, however many
    /// sockets subscribe to it at the same moment, and a failure answers all
    /// of them at once. Short critical sections only.
    lookups: Mutex<HashMap<String, Lookup>>,
}

/// A topic look-up that several requests await together.
type Lookup = Shared<BoxFuture<'static, Result<i32, GatewayError>>>;

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics").field("creator", &self.creator).finish_non_exhaustive()
    }
}

impl Topics {
    /// `creator` is `None` when the gateway must not create topics.
    pub fn new(
        producer: KafkaProducer,
        health: Arc<Health>,
        creator: Option<Creator>,
        partitions: i32,
        replication: i32,
        timeout: Duration,
    ) -> Self {
        Self {
            producer,
            health,
            creator,
            partitions,
            replication,
            timeout,
            cache: Mutex::default(),
            lookups: Mutex::default(),
        }
    }

    /// The partition count of `topic`, creating the topic if allowed.
    pub async fn partitions(self: &Arc<Self>, topic: &str) -> Result<i32, GatewayError> {
        if let Some(n) = self.cached(topic) {
            return Ok(n);
        }
        self.refresh(topic).await
    }

    /// Asks Kafka again, ignoring the cache (e.g. a partition beyond the
    /// cached count was requested). Joins the look-up of `topic` already
    /// under way, if there is one.
    pub async fn refresh(self: &Arc<Self>, topic: &str) -> Result<i32, GatewayError> {
        let lookup = {
            let mut lookups = self.lookups.lock().expect("lookups lock");
            let entry = lookups.entry(topic.to_owned()).or_insert_with(|| {
                let (topics, name) = (self.clone(), topic.to_owned());
                async move {
                    let result = topics.look_up(&name).await;
                    topics.lookups.lock().expect("lookups lock").remove(&name);
                    result
                }
                .boxed()
                .shared()
            });
            entry.clone()
        };
        lookup.await
    }

    /// The partition count as Kafka tells it now, creating the topic if
    /// allowed.
    async fn look_up(&self, topic: &str) -> Result<i32, GatewayError> {
        let count = match self.fetch(topic).await? {
            Some(n) => n,
            None => self.create(topic).await?,
        };
        self.cache.lock().expect("cache lock").insert(topic.to_owned(), (count, Instant::now()));
        Ok(count)
    }

    /// The partition count if it was looked up recently, without asking
    /// Kafka.
    pub fn cached(&self, topic: &str) -> Option<i32> {
        self.cached_at(topic, Instant::now())
    }

    /// [`Topics::cached`], as of `now` (the caller's clock reading).
    pub fn cached_at(&self, topic: &str, now: Instant) -> Option<i32> {
        let cache = self.cache.lock().expect("cache lock");
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < CACHE_TTL;
        cache.get(topic).filter(|(_, at)| fresh(at)).map(|(n, _)| *n)
    }

    /// `Some(partitions)` if the topic exists, `None` if it does not.
    async fn fetch(&self, topic: &str) -> Result<Option<i32>, GatewayError> {
        // A cluster that refuses the gateway would only let the request time
        // out: answer at once.
        if let Some(cause) = self.health.refusal() {
            return Err(GatewayError::Unavailable(format!(
                "Kafka refuses the gateway: {}",
                cause.as_str()
            )));
        }
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
        self.create_with(topic, self.partitions, false).await
    }

    /// The partition count of the compacted `topic` (the control topic),
    /// creating it with `partitions` and `cleanup.policy=compact` if it is
    /// missing and topics may be created.
    pub async fn ensure_compacted(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<i32, GatewayError> {
        match self.fetch(topic).await? {
            Some(n) => Ok(n),
            None => self.create_with(topic, partitions, true).await,
        }
    }

    async fn create_with(
        &self,
        topic: &str,
        partitions: i32,
        compacted: bool,
    ) -> Result<i32, GatewayError> {
        let unknown = || GatewayError::UnknownTopic(topic.to_owned());
        match self.creator.as_ref().ok_or_else(unknown)? {
            Creator::Embedded(kafka) => kafka
                .create_topic(topic, partitions)
                .map_err(|e| GatewayError::Internal(e.to_string()))?,
            Creator::Admin(admin) => {
                let mut new =
                    NewTopic::new(topic, partitions, TopicReplication::Fixed(self.replication));
                if compacted {
                    new = new.set("cleanup.policy", "compact");
                }
                let options = AdminOptions::new()
                    .operation_timeout(Some(self.timeout))
                    .request_timeout(Some(self.timeout));
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
        tracing::info!(topic, partitions, compacted, "created topic");
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

/// The one partition check of every door: `partition` (named by a publish
/// or a resume position) must exist in `topic`, which has `count`.
pub fn check_partition(topic: &str, count: i32, partition: i32) -> Result<(), GatewayError> {
    if partition < count {
        return Ok(());
    }
    Err(GatewayError::BadRequest(format!(
        "topic {topic:?} has {count} partitions; partition {partition} does not exist"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaConfig;
    use crate::kafka::client_config::ClientSettings;

    /// Fifty requests for a topic that does not exist yet, all at once: one
    /// look-up creates it and every request gets its partition count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_look_ups_of_a_new_topic_share_one_creation() {
        let kafka = Arc::new(EmbeddedKafka::start(1).expect("mock cluster starts"));
        let settings =
            ClientSettings::new(&KafkaConfig::default(), kafka.bootstrap_servers().to_owned())
                .expect("settings");
        let health = Arc::new(crate::kafka::health::Health::default());
        let context = crate::kafka::context::KafkaContext::new(health.clone());
        let producer = settings
            .producer()
            .create_with_context(crate::kafka::producer::Reports::new(context))
            .expect("producer");
        let topics = Arc::new(Topics::new(
            producer,
            health,
            Some(Creator::Embedded(kafka)),
            4,
            1,
            Duration::from_secs(5),
        ));
        let lookups = (0..50).map(|_| {
            let topics = topics.clone();
            tokio::spawn(async move { topics.partitions("fresh").await })
        });
        for lookup in futures::future::join_all(lookups).await {
            assert_eq!(lookup.expect("task"), Ok(4));
        }
        assert!(topics.lookups.lock().unwrap().is_empty(), "finished look-ups are forgotten");
    }
}
