//! The fan-out path: the node's Kafka consumer for every topic its sockets
//! subscribe to.
//!
//! Partitions are assigned by hand (no consumer group) at the high watermark
//! read when the first local socket subscribes to a topic, and unassigned
//! when the last one leaves. Because the watermark is read before the
//! client is told `subscribed`, every record produced after that reply has
//! an offset at or past the assigned position: the subscription is live.
//! A new subscription costs one watermark request per partition and no
//! rebalance. Each record is encoded once and handed to the [`Hub`], which
//! keeps it among the topic's recent records ([`crate::recent`]).
//!
//! Every subscription that is not a shared group comes here. `latest`
//! joins the hub at once. Any other start (a resume from offsets,
//! `earliest`, a timestamp) is planned, then caught up by
//! [`crate::kafka::catchup`]: from the recent records when they reach back
//! far enough, else from the topic's one shared Kafka reader, and joined to
//! the live path at its exact next offset. When such a subscription is the
//! first of a topic on this node (a node taking over another's clients),
//! the live consumer itself starts at its position, up to
//! `limits.rewind_records` back: it reads what the first resumes need once
//! and keeps it for the ones that follow.
//!
//! The [`Hub`] only says who is subscribed. Whether Kafka should deliver a
//! topic is decided here, per topic, under that topic's own lock
//! (`Fanout::reconcile`): it compares what the hub wants with what is
//! assigned and assigns or releases partitions to match. Every join and
//! every last leave reconciles, so a last-unsubscribe and a new
//! first-subscribe of the same topic cannot leave it wrongly assigned,
//! whatever their order; and no librdkafka call runs under the hub's lock,
//! so dispatch never waits for one.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use ferry_protocol::{ServerFrame, StartFrom};
use tokio_util::sync::DropGuard;

use crate::error::GatewayError;
use crate::hub::{Hub, Subscriber};
use crate::kafka::catchup::{self, CatchUp};
use crate::kafka::client_config::ClientSettings;
use crate::kafka::context::KafkaContext;
use crate::kafka::record::recent_record;
use crate::kafka::retry_blocking;
use crate::kafka::source::{self, Flow, Route};
use crate::kafka::topics::Topics;
use crate::metrics;
use crate::telemetry;

/// What the consumer is assigned of one topic. Empty while the topic is
/// not assigned.
#[derive(Debug, Default)]
struct Assignment {
    /// Partition → the offset it was assigned at.
    starts: BTreeMap<i32, i64>,
    /// Partition → its end when it was assigned: a `latest` subscription
    /// starts no earlier, even while the consumer, started further back
    /// for the first resumes, is still catching up.
    ends: BTreeMap<i32, i64>,
}

/// A subscription on the fan-out: where each partition starts, the `gap`
/// notices to send, and the guard that stops its catch-up when dropped.
#[derive(Debug)]
pub struct Subscribed {
    pub starts: BTreeMap<i32, i64>,
    pub gaps: Vec<ServerFrame>,
    pub catching_up: Option<DropGuard>,
}

/// A topic's assignment behind its own lock: held across the Kafka round
/// trip that reads the end offsets, so that one activation runs at a time
/// per topic (others wait for it), and never together with the hub's lock.
type TopicLock = Arc<tokio::sync::Mutex<Assignment>>;

/// The node's consumer and its subscription table.
pub struct Fanout {
    consumer: Arc<StreamConsumer<KafkaContext>>,
    hub: Arc<Hub>,
    catchup: Arc<CatchUp>,
    /// How far back the live consumer may start for a topic's first
    /// subscription, per partition.
    rewind: i64,
    /// Topic → its assignment. Short critical sections only (look-up,
    /// insert, remove); the per-topic lock is taken after it is released.
    assignments: Mutex<HashMap<String, TopicLock>>,
    topics: Arc<Topics>,
    timeout: Duration,
    partition_refresh: Duration,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("hub", &self.hub).finish_non_exhaustive()
    }
}

impl Fanout {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        consumer: StreamConsumer<KafkaContext>,
        hub: Arc<Hub>,
        topics: Arc<Topics>,
        timeout: Duration,
        partition_refresh: Duration,
        client: ClientSettings,
        context: KafkaContext,
        catchup: catchup::Settings,
        rewind: i64,
    ) -> Self {
        let consumer = Arc::new(consumer);
        let catchup =
            Arc::new(CatchUp::new(hub.clone(), client, context, consumer.clone(), catchup));
        Self {
            consumer,
            hub,
            catchup,
            rewind,
            assignments: Mutex::default(),
            topics,
            timeout,
            partition_refresh,
        }
    }

    /// Subscribes a socket to `topic` (which has `partitions` partitions)
    /// from `from`. Returns once the subscription is on its way: live, or
    /// catching up (its records then follow at the socket's pace, from
    /// the returned starts on).
    pub async fn subscribe(
        &self,
        topic: &str,
        partitions: i32,
        subscriber: Subscriber,
        from: &StartFrom,
    ) -> Result<Subscribed, GatewayError> {
        let session = subscriber.session;
        let plan = match from {
            StartFrom::Latest => None,
            from => Some(self.catchup.plan(topic, partitions, from).await?),
        };
        let stop = CancellationToken::new();
        let follower = match &plan {
            Some(plan) => Some(self.catchup.follower(subscriber.clone(), plan, stop.clone())?),
            None => None,
        };
        // Pending from here: the topic is wanted while it is assigned.
        self.hub.pend(topic, session);
        let lock = self.topic_lock(topic);
        let mut assignment = lock.lock().await;
        let rewind_to = plan.as_ref().map(|p| &p.cursor);
        if let Err(e) = self.reconcile(topic, partitions, &mut assignment, rewind_to).await {
            if self.hub.leave(topic, session) {
                let _ = self.reconcile(topic, 0, &mut assignment, None).await;
            }
            return Err(e);
        }
        // A topic entry made anew while the topic stayed assigned (its last
        // subscriber had just left) keeps records from where the consumer is.
        let positions = self.positions(topic, &assignment);
        self.hub.assign(topic, &positions, &positions, true);
        match (plan, follower) {
            (Some(plan), Some(follower)) => {
                drop(assignment);
                self.catchup.follow(follower);
                let catching_up = Some(stop.drop_guard());
                Ok(Subscribed { starts: plan.cursor, gaps: plan.gaps, catching_up })
            }
            _ => {
                let starts = self.hub.join_live(subscriber, &assignment.ends).ok_or_else(|| {
                    GatewayError::Internal("subscriber left while subscribing".into())
                })?;
                Ok(Subscribed { starts, gaps: Vec::new(), catching_up: None })
            }
        }
    }

    /// Removes a socket from `topic`; after the last one, the topic's
    /// partitions are released (in the background: it may have to wait for
    /// an activation of the topic under way).
    pub fn unsubscribe(self: &Arc<Self>, topic: &str, session: u64) {
        if !self.hub.leave(topic, session) {
            return;
        }
        let (fanout, topic) = (self.clone(), topic.to_owned());
        tokio::spawn(async move {
            let lock = fanout.topic_lock(&topic);
            let mut assignment = lock.lock().await;
            // Releasing needs no Kafka round trip: it cannot fail on one.
            let _ = fanout.reconcile(&topic, 0, &mut assignment, None).await;
            drop(assignment);
            fanout.forget(&topic, &lock);
        });
    }

    /// The lock of `topic`'s assignment, made on first use.
    fn topic_lock(&self, topic: &str) -> TopicLock {
        let mut assignments = self.assignments.lock().expect("assignments lock");
        assignments.entry(topic.to_owned()).or_default().clone()
    }

    /// Drops a released topic's entry, unless someone else is using it.
    fn forget(&self, topic: &str, lock: &TopicLock) {
        let mut assignments = self.assignments.lock().expect("assignments lock");
        let idle = Arc::strong_count(lock) == 2 // the map's and ours
            && lock.try_lock().is_ok_and(|a| a.starts.is_empty());
        if idle && assignments.get(topic).is_some_and(|l| Arc::ptr_eq(l, lock)) {
            assignments.remove(topic);
        }
    }

    /// Makes what is assigned of `topic` match what the hub wants: its
    /// `partitions` partitions at their end offsets (or back at
    /// `rewind_to`, within `limits.rewind_records`) when it has
    /// subscribers and is not assigned yet; nothing when it has none. Runs
    /// under the topic's lock (`assignment`).
    async fn reconcile(
        &self,
        topic: &str,
        partitions: i32,
        assignment: &mut Assignment,
        rewind_to: Option<&BTreeMap<i32, i64>>,
    ) -> Result<(), GatewayError> {
        let wanted = self.hub.has_subscribers(topic);
        if !wanted && !assignment.starts.is_empty() {
            let mut list = TopicPartitionList::new();
            for &p in assignment.starts.keys() {
                list.add_partition(topic, p);
            }
            if let Err(e) = self.consumer.incremental_unassign(&list) {
                tracing::warn!(topic, error = %e, "unassigning partitions failed");
            }
            assignment.starts.clear();
            assignment.ends.clear();
            tracing::debug!(topic, "topic released");
        }
        // `partitions` 0: a release, which never assigns.
        if !wanted || !assignment.starts.is_empty() || partitions == 0 {
            return Ok(());
        }
        let ends = self.end_offsets(topic, partitions).await?;
        let mut starts = ends.clone();
        if let Some(rewind_to) = rewind_to {
            for (p, start) in &mut starts {
                if let Some(&wanted) = rewind_to.get(p) {
                    *start = wanted.clamp(*start - self.rewind, *start);
                }
            }
        }
        let mut list = TopicPartitionList::new();
        for (&p, &start) in &starts {
            list.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
        }
        // Before the first record can arrive: the recent records start
        // exactly where the consumer does.
        self.hub.assign(topic, &starts, &ends, false);
        self.consumer
            .incremental_assign(&list)
            .map_err(|e| GatewayError::Internal(format!("assign failed: {e}")))?;
        tracing::debug!(topic, ?starts, "topic live");
        assignment.starts = starts;
        assignment.ends = ends;
        Ok(())
    }

    /// The high watermark of each partition of `topic` (blocking Kafka
    /// calls, off the async threads).
    async fn end_offsets(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<BTreeMap<i32, i64>, GatewayError> {
        let consumer = self.consumer.clone();
        let (name, timeout) = (topic.to_owned(), self.timeout);
        let starts = tokio::task::spawn_blocking(move || {
            retry_blocking(timeout, || {
                (0..partitions)
                    .map(|p| {
                        consumer.fetch_watermarks(&name, p, timeout).map(|(_, high)| (p, high))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("watermark task: {e}")))?
        .map_err(|e| GatewayError::Unavailable(format!("reading end offsets failed: {e}")))?;
        Ok(starts.into_iter().collect())
    }

    /// Consumes until `shutdown`, dispatching every record.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(self.clone().watch_partitions(shutdown.clone()));
        tokio::spawn(self.clone().expire_recent(shutdown.clone()));
        source::pump("fan-out", &self.consumer, &shutdown, Live(&self)).await;
    }

    /// Encodes `record` once, keeps it among the topic's recent records and
    /// queues the bytes to every subscriber.
    fn dispatch(&self, record: &BorrowedMessage<'_>) {
        let span = telemetry::DeliverSpan::start(record);
        let delivered = self.hub.dispatch(record.topic(), recent_record(record));
        span.end(delivered);
        metrics::fanout_record(delivered);
    }

    /// Lets recent records past their age go, also on idle topics, and
    /// reports what they hold.
    async fn expire_recent(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.hub.expire();
            metrics::recent_bytes(self.hub.budget().used());
            // A partition whose last records are transaction markers hands
            // nothing on for them: its position says it is past them.
            let behind = self.hub.behind_head();
            if behind.is_empty() {
                continue;
            }
            let Ok(positions) = self.consumer.position() else { continue };
            for topic in behind {
                let at: BTreeMap<i32, i64> = positions
                    .elements_for_topic(&topic)
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((e.partition(), o)),
                        _ => None,
                    })
                    .collect();
                self.hub.reached(&topic, &at);
            }
        }
    }

    /// Where the consumer stands in each assigned partition of `topic`: its
    /// position (the next record it hands to the hub), or the offset the
    /// partition was assigned at if nothing was consumed since. Local, no
    /// Kafka request.
    fn positions(&self, topic: &str, assignment: &Assignment) -> BTreeMap<i32, i64> {
        let mut starts = assignment.starts.clone();
        if let Ok(positions) = self.consumer.position() {
            for element in positions.elements_for_topic(topic) {
                if let (Offset::Offset(position), Some(start)) =
                    (element.offset(), starts.get_mut(&element.partition()))
                {
                    *start = (*start).max(position);
                }
            }
        }
        starts
    }

    /// Picks up partitions added to subscribed topics, from their start.
    async fn watch_partitions(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.partition_refresh);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let topics: Vec<(String, TopicLock)> = {
                let assignments = self.assignments.lock().expect("assignments lock");
                assignments.iter().map(|(t, l)| (t.clone(), l.clone())).collect()
            };
            for (topic, lock) in topics {
                let assigned = lock.lock().await.starts.len();
                if assigned == 0 {
                    continue;
                }
                let Ok(count) = self.topics.refresh(&topic).await else {
                    continue;
                };
                if count as usize <= assigned {
                    continue;
                }
                let mut assignment = lock.lock().await;
                match self.grow(&topic, count, &mut assignment) {
                    Ok(()) => tracing::info!(topic, partitions = count, "new partitions assigned"),
                    Err(e) => tracing::warn!(topic, error = %e, "assigning new partitions failed"),
                }
            }
        }
    }

    /// Assigns the partitions of `topic` that appeared after it was
    /// assigned, from their beginning.
    fn grow(
        &self,
        topic: &str,
        partition_count: i32,
        assignment: &mut Assignment,
    ) -> Result<(), GatewayError> {
        if assignment.starts.is_empty() {
            return Ok(()); // released meanwhile
        }
        let new: Vec<i32> =
            (0..partition_count).filter(|p| !assignment.starts.contains_key(p)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for &p in &new {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
        }
        let added: BTreeMap<i32, i64> = new.into_iter().map(|p| (p, 0)).collect();
        self.hub.assign(topic, &added, &added, true);
        self.consumer
            .incremental_assign(&list)
            .map_err(|e| GatewayError::Internal(format!("assign failed: {e}")))?;
        assignment.starts.extend(added);
        Ok(())
    }
}

/// The live route: every record to the hub, never waiting on a socket.
struct Live<'a>(&'a Fanout);

impl Route for Live<'_> {
    fn deliver(&mut self, record: &BorrowedMessage<'_>) -> impl Future<Output = Flow> + Send {
        self.0.dispatch(record);
        std::future::ready(Flow::Next)
    }
}
