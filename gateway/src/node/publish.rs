//! Publishing, for every door: the checks a record passes before it goes
//! to Kafka, and batches.
//!
//! - [`Node::may_publish`]: the ACL, with the `forbidden` error and its
//!   count. Then the topic's JSON Schema ([`crate::schema::Schemas`]) and
//!   the partition check ([`crate::kafka::topics::check_partition`]), the
//!   same functions for every door.
//! - [`Node::publish_batch`]: records of one request (HTTP) → one outcome
//!   per record, in request order. All or nothing for the ACL and the
//!   rate; then each record on its own: its topic looked up (each distinct
//!   topic once), checked, and produced. A record whose `(subject, id)` is
//!   still awaiting Kafka on this node (from this batch or another) is not
//!   produced again: it shares the original's outcome.
//!
//! - [`Window`]: a connection's publishes in flight (WebSocket): the same
//!   de-duplication of ids still awaiting Kafka, per connection, and the
//!   in-flight bound. The session answers each as Kafka answers it (see
//!   `session/publish.rs`) and makes the same checks as a batch, through
//!   the same functions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_protocol::{ErrorCode, Publish};
use futures::future::{BoxFuture, Shared};
use futures::FutureExt;

use super::limits::TokenBucket;
use super::Node;
use crate::acl::Action;
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::kafka::producer::Stored;
use crate::kafka::topics::check_partition;
use crate::metrics;

/// A delivery several batches may wait on (a retried id).
type Delivery = Shared<BoxFuture<'static, Result<Stored, GatewayError>>>;

/// Subjects tracked before idle (full) rate buckets are forgotten.
const PRUNE_BUCKETS_AT: usize = 10_000;

/// Node-wide state of batch publishing.
#[derive(Debug, Default)]
pub struct Batches {
    /// Subject → its rate bucket. Short critical sections only.
    buckets: Mutex<HashMap<String, TokenBucket>>,
    /// (subject, id) → the delivery of that record while Kafka has not
    /// answered. Short critical sections only.
    inflight: Mutex<HashMap<(String, String), Delivery>>,
}

impl Batches {
    /// Whether `(subject, id)` is still waiting for Kafka on this node.
    fn in_flight(&self, subject: &str, id: &str) -> bool {
        let key = (subject.to_owned(), id.to_owned());
        self.inflight.lock().expect("inflight lock").contains_key(&key)
    }

    /// Takes `n` tokens from `subject`'s bucket, or says how long until
    /// there are enough.
    fn take(&self, subject: &str, n: usize, rate: u32, burst: u32) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("bucket lock");
        if buckets.len() >= PRUNE_BUCKETS_AT {
            buckets.retain(|_, b| !b.is_full(now));
        }
        let bucket =
            buckets.entry(subject.to_owned()).or_insert_with(|| TokenBucket::new(rate, burst));
        bucket.take_n(n)
    }
}

/// The ids of one connection's publishes awaiting Kafka: a retry of one
/// of them is not produced again (the original's answer serves both), and
/// at most `limits.max_inflight_publishes` wait at once.
#[derive(Debug, Default)]
pub struct Window {
    /// foldhash, not SipHash: looked up twice per publish, and a client
    /// that floods its own ids only slows its own connection (at most
    /// `max_inflight_publishes` entries).
    ids: foldhash::HashSet<String>,
}

/// What a [`Window`] says of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Not in flight: check it and produce it.
    New,
    /// A retry of a publish still in flight: not produced again.
    Retry,
}

impl Window {
    /// Whether `id` may go on, with `max` publishes allowed in flight.
    pub fn admit(&self, id: &str, max: usize) -> Result<Admit, GatewayError> {
        if self.ids.contains(id) {
            return Ok(Admit::Retry);
        }
        if self.ids.len() >= max {
            let why = format!("{max} publishes are already awaiting Kafka on this connection");
            return Err(GatewayError::Limit(why));
        }
        Ok(Admit::New)
    }

    /// `id` is in flight from now on.
    pub fn insert(&mut self, id: String) {
        self.ids.insert(id);
    }

    /// `id` was answered; false if it was not in flight.
    pub fn remove(&mut self, id: &str) -> bool {
        self.ids.remove(id)
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Every id in flight, the window left empty.
    pub fn take_all(&mut self) -> Vec<String> {
        self.ids.drain().collect()
    }
}

/// A record of a batch that is not published: its id, why, and the wire
/// code (a decoding error may carry its own, e.g. `invalid_topic`).
#[derive(Debug, Clone)]
pub struct RecordRefused {
    pub id: String,
    pub error: GatewayError,
    pub code: ErrorCode,
}

impl RecordRefused {
    fn of(id: String, error: GatewayError) -> Self {
        let code = error.code();
        Self { id, error, code }
    }
}

/// Where Kafka stored a record of a batch.
#[derive(Debug, Clone)]
pub struct RecordStored {
    pub id: String,
    pub topic: String,
    pub stored: Stored,
}

/// Why a whole batch is refused, nothing of it produced; each with the
/// message for the caller.
#[derive(Debug, Clone)]
pub enum BatchRefused {
    /// A record names a topic the caller may not publish to.
    Forbidden(String),
    /// The subject's record rate is spent; enough tokens in `retry_after`.
    RateLimited { message: String, retry_after: Duration },
}

impl Node {
    /// The publish ACL for `principal` (none: not authenticated, refused).
    pub fn may_publish(
        &self,
        principal: Option<&Principal>,
        topic: &str,
    ) -> Result<(), GatewayError> {
        let action = Action::Publish;
        if principal.is_some_and(|p| self.policy.allows(p, action, topic)) {
            return Ok(());
        }
        metrics::forbidden(action.as_str());
        Err(GatewayError::Forbidden(format!("not allowed to publish to {topic:?}")))
    }

    /// Publishes a batch: one outcome per record, in order (see the module
    /// docs). `records` holds each record, or why it could not be decoded.
    pub async fn publish_batch(
        self: &Arc<Self>,
        principal: &Principal,
        records: Vec<Result<Publish<'_>, RecordRefused>>,
    ) -> Result<Vec<Result<RecordStored, RecordRefused>>, BatchRefused> {
        let config = &self.config.http_publish;
        for publish in records.iter().flatten() {
            if let Err(e) = self.may_publish(Some(principal), &publish.topic) {
                return Err(BatchRefused::Forbidden(format!("{e}; nothing was published")));
            }
        }
        let subject = &principal.subject;
        if let Err(wait) = self.batches.take(subject, records.len(), config.rate, config.burst) {
            let message = format!(
                "publishing faster than {} records per second; nothing was published",
                config.rate
            );
            return Err(BatchRefused::RateLimited { message, retry_after: wait });
        }
        let partitions = self.look_up_topics(&records).await;
        let mut outcomes: Vec<BoxFuture<'static, Result<RecordStored, RecordRefused>>> =
            Vec::with_capacity(records.len());
        for record in records {
            let publish = match record {
                Ok(publish) => publish,
                Err(refused) => {
                    metrics::publish_failed(refused.code.as_str());
                    outcomes.push(async move { Err(refused) }.boxed());
                    continue;
                }
            };
            let (id, topic) = (publish.id.to_string(), publish.topic.to_string());
            let delivery = match self.checked_delivery(subject, &publish, partitions.get(&topic)) {
                Ok(delivery) => delivery,
                Err(e) => {
                    metrics::publish_failed(e.code().as_str());
                    outcomes.push(async move { Err(RecordRefused::of(id, e)) }.boxed());
                    continue;
                }
            };
            outcomes.push(
                async move {
                    match delivery.await {
                        Ok(stored) => Ok(RecordStored { id, topic, stored }),
                        Err(e) => {
                            metrics::publish_failed(e.code().as_str());
                            Err(RecordRefused::of(id, e))
                        }
                    }
                }
                .boxed(),
            );
        }
        Ok(futures::future::join_all(outcomes).await)
    }

    /// One record of a batch, its topic looked up: checked, then handed to
    /// the producer (or joined to the delivery of the same id in flight).
    fn checked_delivery(
        &self,
        subject: &str,
        publish: &Publish<'_>,
        partitions: Option<&Result<i32, GatewayError>>,
    ) -> Result<Delivery, GatewayError> {
        match partitions {
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(n)) => {
                if let Some(p) = publish.partition {
                    check_partition(&publish.topic, *n, p)?;
                }
            }
            None => return Err(GatewayError::Internal("topic not looked up".into())),
        }
        // A retry of an id still in flight joins the original's delivery;
        // its value was validated then.
        if !self.batches.in_flight(subject, &publish.id) {
            self.schemas.validate(&publish.topic, &publish.value)?;
        }
        self.deliver(subject, publish)
    }

    /// Hands a checked record to the producer, or joins the delivery of the
    /// same `(subject, id)` still in flight.
    fn deliver(&self, subject: &str, publish: &Publish<'_>) -> Result<Delivery, GatewayError> {
        let key = (subject.to_owned(), publish.id.to_string());
        let mut inflight = self.batches.inflight.lock().expect("inflight lock");
        if let Some(delivery) = inflight.get(&key) {
            return Ok(delivery.clone());
        }
        let delivery = self.publisher.send(publish)?.boxed().shared();
        inflight.insert(key.clone(), delivery.clone());
        drop(inflight);
        // Forget the id once Kafka answered (whoever waits on it or not).
        let watch = delivery.clone();
        let batches = self.batches.clone();
        tokio::spawn(async move {
            let _ = watch.await;
            batches.inflight.lock().expect("inflight lock").remove(&key);
        });
        Ok(delivery)
    }

    /// Each distinct topic's partition count (creating it where allowed),
    /// looked up together, each bounded by `limits.request_timeout_ms`.
    async fn look_up_topics<E>(
        &self,
        records: &[Result<Publish<'_>, E>],
    ) -> BTreeMap<String, Result<i32, GatewayError>> {
        let mut topics: Vec<String> =
            records.iter().flatten().map(|p| p.topic.to_string()).collect();
        topics.sort();
        topics.dedup();
        let lookups = topics.into_iter().map(|topic| {
            let found = self.look_up_topic(topic.clone(), false);
            async move { (topic, found.await) }
        });
        futures::future::join_all(lookups).await.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_retries_and_bounds_what_is_in_flight() {
        let mut w = Window::default();
        assert_eq!(w.admit("a", 2).unwrap(), Admit::New);
        w.insert("a".into());
        assert_eq!(w.admit("a", 2).unwrap(), Admit::Retry, "a retry is not produced again");
        w.insert("b".into());
        assert!(matches!(w.admit("c", 2), Err(GatewayError::Limit(_))), "at most 2 in flight");
        assert_eq!(w.admit("a", 2).unwrap(), Admit::Retry, "a retry is never refused");
        assert!(w.remove("a"));
        assert!(!w.remove("a"), "answered once");
        assert_eq!(w.admit("c", 2).unwrap(), Admit::New);
        assert_eq!(w.take_all(), vec!["b".to_string()]);
        assert!(w.is_empty());
    }

    #[test]
    fn bucket_takes_batches_and_says_how_long_to_wait() {
        let b = Batches::default();
        assert!(b.take("s", 10, 10, 10).is_ok());
        let wait = b.take("s", 5, 10, 10).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(b.take("other", 10, 10, 10).is_ok(), "buckets are per subject");
    }
}
