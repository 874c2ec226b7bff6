//! Catching up: subscriptions that start before "now" (a resume from
//! offsets, `earliest`, a timestamp) until they join the live fan-out.
//!
//! A subscriber catching up is a [`Follower`]: its socket's outlet and the
//! next offset it needs per partition. It is served, at its socket's pace
//! (paced records, never dropped), from one of two places:
//!
//! - the topic's recent records ([`crate::recent`], kept by the live
//!   fan-out), the common case: a resume a few seconds back costs no Kafka
//!   read. When nothing more is kept past its position, [`Hub::follow`]
//!   joins it to the live members at that exact position;
//! - a position older than the recent records: the topic's shared Kafka
//!   reader. One reader per topic serves every follower behind on it, from
//!   the oldest position among them, and hands each one over to the recent
//!   records once its position reaches them. Readers are capped per node
//!   (`limits.catchup_readers`); a topic waits for a free one. A follower
//!   whose socket does not take a record within [`STALL`] is set aside, so
//!   that it does not hold back the others, and served again by the next
//!   pass of the reader, from where it stopped.
//!
//! Planning a start (where each partition starts, and the `gap` notices for
//! positions Kafka no longer or does not yet have) asks Kafka for
//! watermarks only when the recent records cannot answer, and then once per
//! topic for every subscriber asking at the same moment.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::{ServerFrame, StartFrom};
use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::hub::{Hub, Step, Subscriber};
use crate::kafka::client_config::ClientSettings;
use crate::kafka::context::KafkaContext;
use crate::kafka::record::recent_record;
use crate::kafka::retry_blocking;
use crate::kafka::source::{self, Flow, Route};
use crate::kafka::topics;
use crate::metrics;
use crate::outlet::PacedFrame;
use crate::recent::{Coverage, Record};

/// How long a reader waits for one socket to take a record before it sets
/// that follower aside for its next pass.
pub const STALL: Duration = Duration::from_millis(500);

/// Records a follower takes from the recent records per step.
const FOLLOW_BATCH: usize = 64;

/// How often a reader checks which followers reached the recent records.
const HANDOVER_TICK: Duration = Duration::from_millis(50);

/// What the catch-up needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka readers running at once on this node.
    pub readers: usize,
    /// Subscribers catching up at once on this node; more get `limit`.
    pub max_followers: usize,
    /// Longest a Kafka request of planning may take.
    pub timeout: Duration,
}

type Marks = Arc<BTreeMap<i32, (i64, i64)>>;
type MarksLookup = Shared<BoxFuture<'static, Result<Marks, GatewayError>>>;

/// Catch-up for one node.
pub struct CatchUp {
    hub: Arc<Hub>,
    client: ClientSettings,
    context: KafkaContext,
    /// The fan-out's consumer, for watermark and time look-ups only.
    planner: Arc<StreamConsumer<KafkaContext>>,
    settings: Settings,
    /// The embedded mock has no time index (ListOffsets by time answers
    /// nothing): timestamp starts scan from the log start instead.
    scan_for_time: bool,
    slots: Arc<Semaphore>,
    /// Topic → followers waiting for its reader. A topic is here exactly
    /// while its reader task runs. Short critical sections only.
    waiting: Mutex<HashMap<String, Vec<Follower>>>,
    followers: Arc<AtomicUsize>,
    /// Watermark look-ups under way, per topic.
    marks: Mutex<HashMap<String, MarksLookup>>,
}

impl std::fmt::Debug for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatchUp")
            .field("settings", &self.settings)
            .field("followers", &self.followers)
            .finish_non_exhaustive()
    }
}

/// Where a catching-up subscription starts.
#[derive(Debug)]
pub struct Plan {
    /// The next offset to deliver, per partition.
    pub cursor: BTreeMap<i32, i64>,
    /// `gap` notices for positions Kafka no longer (or not yet) has.
    pub gaps: Vec<ServerFrame>,
    /// With a timestamp start on a Kafka without a time index: records
    /// older than this are skipped until each partition reaches it.
    pub skip_before: Option<i64>,
}

/// A subscriber catching up.
#[derive(Debug)]
pub struct Follower {
    subscriber: Subscriber,
    cursor: BTreeMap<i32, i64>,
    skip_before: Option<i64>,
    /// Partitions that reached `skip_before`: everything is delivered.
    reached: HashSet<i32>,
    /// Cancelled when the subscription ends.
    stop: CancellationToken,
    since: Instant,
    /// Whether the first look found its position in the recent records.
    counted: bool,
    _slot: FollowerSlot,
}

/// One of the node's follower places; given back on drop.
#[derive(Debug)]
struct FollowerSlot(Arc<AtomicUsize>);

impl Drop for FollowerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::catching_up(-1.0);
    }
}

/// What [`Follower::offer`] did with a record.
#[derive(Debug)]
enum Offered {
    /// Queued, or not for this follower.
    Done,
    /// Its socket has no room now: the frame, to send with a wait.
    Full(Utf8Bytes),
    /// The socket is gone.
    Gone,
}

/// What became of records for one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// Queued to the socket, or not for it (filtered, before its start).
    Done,
    /// The socket or the subscription is gone.
    Gone,
}

impl Follower {
    /// The frame of `record` if it is for this follower: past its position,
    /// not before its start time, through its filter.
    fn wants(&self, record: &Record) -> Option<Utf8Bytes> {
        let partition = record.partition;
        if record.offset < *self.cursor.get(&partition)? {
            return None; // already had
        }
        let before_start = self.skip_before.is_some_and(|ts| {
            !self.reached.contains(&partition) && record.timestamp.is_some_and(|t| t < ts)
        });
        if before_start || !record.passes(self.subscriber.filter.as_deref()) {
            return None;
        }
        Some(record.frame.clone())
    }

    /// Moves the position past `record` (sent, or not for this follower).
    fn advance(&mut self, record: &Record) {
        let Some(next) = self.cursor.get_mut(&record.partition) else { return };
        if record.offset < *next {
            return;
        }
        *next = record.offset + 1;
        if let Some(ts) = self.skip_before {
            if record.timestamp.is_none_or(|t| t >= ts) {
                self.reached.insert(record.partition);
            }
        }
    }

    /// Queues `record` if it is for this follower and its socket has room
    /// now; says what happened.
    fn offer(&mut self, record: &Record) -> Offered {
        let Some(frame) = self.wants(record) else {
            self.advance(record);
            return Offered::Done;
        };
        match self.subscriber.outlet.try_send_paced(PacedFrame { frame, done: None }) {
            Ok(None) => {
                self.advance(record);
                Offered::Done
            }
            Ok(Some(full)) => Offered::Full(full.frame),
            Err(_gone) => Offered::Gone,
        }
    }

    /// Sends every record of `batch` that is for this follower, in chunks.
    async fn deliver_all(&mut self, batch: &[Arc<Record>]) -> Delivered {
        let mut frames = Vec::with_capacity(batch.len());
        for record in batch {
            frames.extend(self.wants(record));
            self.advance(record);
        }
        if frames.is_empty() {
            return Delivered::Done;
        }
        let sent = tokio::select! {
            sent = self.subscriber.outlet.send_paced_all(frames) => sent,
            _ = self.stop.cancelled() => false,
        };
        if sent {
            Delivered::Done
        } else {
            Delivered::Gone
        }
    }

    fn topic(&self) -> &str {
        &self.subscriber.topic
    }
}

impl CatchUp {
    pub fn new(
        hub: Arc<Hub>,
        client: ClientSettings,
        context: KafkaContext,
        planner: Arc<StreamConsumer<KafkaContext>>,
        settings: Settings,
    ) -> Self {
        let scan_for_time = client.embedded();
        Self {
            hub,
            client,
            context,
            planner,
            slots: Arc::new(Semaphore::new(settings.readers)),
            settings,
            scan_for_time,
            waiting: Mutex::default(),
            followers: Arc::default(),
            marks: Mutex::default(),
        }
    }

    /// Takes one of the node's follower places, or says when to retry.
    fn slot(&self) -> Result<FollowerSlot, GatewayError> {
        let max = self.settings.max_followers;
        let taken = self
            .followers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1));
        if taken.is_err() {
            return Err(GatewayError::Overloaded(format!(
                "this node already has {max} subscriptions catching up; retry shortly"
            )));
        }
        metrics::catching_up(1.0);
        Ok(FollowerSlot(self.followers.clone()))
    }

    /// Where a subscription of `topic` (with `partitions` partitions)
    /// starting at `from` starts, per partition, and its gaps.
    pub async fn plan(
        &self,
        topic: &str,
        partitions: i32,
        from: &StartFrom,
    ) -> Result<Plan, GatewayError> {
        if let StartFrom::Offsets(offsets) = from {
            for p in offsets.keys() {
                topics::check_partition(topic, partitions, *p)?;
            }
            if let Some(cursor) = self.hub.plan_within_recent(topic, partitions, offsets) {
                return Ok(Plan { cursor, gaps: Vec::new(), skip_before: None });
            }
        }
        let (from, skip_before) = match from {
            StartFrom::Timestamp(ts) if self.scan_for_time => (StartFrom::Earliest, Some(*ts)),
            other => (other.clone(), None),
        };
        let by_time = self.by_time(topic, partitions, &from).await?;
        let marks = self.watermarks(topic, partitions).await?;
        let planned = plan(topic, &marks, &from, &by_time);
        Ok(Plan { skip_before, ..planned })
    }

    /// Offsets by time, for a timestamp start on a Kafka with a time index.
    async fn by_time(
        &self,
        topic: &str,
        partitions: i32,
        from: &StartFrom,
    ) -> Result<BTreeMap<i32, i64>, GatewayError> {
        let StartFrom::Timestamp(ts) = from else { return Ok(BTreeMap::new()) };
        let (consumer, name, ts, timeout) =
            (self.planner.clone(), topic.to_owned(), *ts, self.settings.timeout);
        tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            for p in 0..partitions {
                list.add_partition_offset(&name, p, Offset::Offset(ts))
                    .map_err(|e| GatewayError::Internal(e.to_string()))?;
            }
            let found = consumer.offsets_for_times(list, timeout).map_err(|e| {
                GatewayError::Unavailable(format!("reading offsets of {name:?} failed: {e}"))
            })?;
            Ok(found
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect())
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("offsets-by-time task: {e}")))?
    }

    /// `topic`'s low and high watermarks, read now; a look-up already under
    /// way for the topic (a reconnect storm) serves every caller meanwhile.
    /// A finished one is never reused: a low watermark a moment old could
    /// hide a position lost to retention.
    async fn watermarks(&self, topic: &str, partitions: i32) -> Result<Marks, GatewayError> {
        let lookup = {
            let mut marks = self.marks.lock().expect("marks lock");
            marks.retain(|_, lookup| lookup.peek().is_none());
            match marks.get(topic) {
                Some(lookup) => lookup.clone(),
                None => {
                    let lookup = self.read_watermarks(topic, partitions);
                    marks.insert(topic.to_owned(), lookup.clone());
                    lookup
                }
            }
        };
        let marks = lookup.await?;
        if marks.len() < partitions as usize {
            // Partitions were added since: read them all again.
            return self.read_watermarks(topic, partitions).await;
        }
        Ok(marks)
    }

    fn read_watermarks(&self, topic: &str, partitions: i32) -> MarksLookup {
        let (consumer, name, timeout) =
            (self.planner.clone(), topic.to_owned(), self.settings.timeout);
        async move {
            let task = tokio::task::spawn_blocking(move || {
                retry_blocking(timeout, || {
                    (0..partitions)
                        .map(|p| consumer.fetch_watermarks(&name, p, timeout).map(|m| (p, m)))
                        .collect::<Result<BTreeMap<_, _>, _>>()
                })
                .map_err(|e| {
                    GatewayError::Unavailable(format!("reading offsets of {name:?} failed: {e}"))
                })
            });
            match task.await {
                Ok(marks) => marks.map(Arc::new),
                Err(e) => Err(GatewayError::Internal(format!("watermark task: {e}"))),
            }
        }
        .boxed()
        .shared()
    }

    /// A follower for `subscriber` at `plan`, counted against the node's
    /// bound; it is started by [`CatchUp::follow`].
    pub fn follower(
        &self,
        subscriber: Subscriber,
        plan: &Plan,
        stop: CancellationToken,
    ) -> Result<Follower, GatewayError> {
        Ok(Follower {
            subscriber,
            cursor: plan.cursor.clone(),
            skip_before: plan.skip_before,
            reached: HashSet::new(),
            stop,
            since: Instant::now(),
            counted: false,
            _slot: self.slot()?,
        })
    }

    /// Serves `follower` from the recent records (its own small task, no
    /// thread), or hands it to its topic's Kafka reader when it is behind
    /// them, until it joins the live members.
    pub fn follow(self: &Arc<Self>, follower: Follower) {
        tokio::spawn(self.clone().follow_recent(follower));
    }

    async fn follow_recent(self: Arc<Self>, mut follower: Follower) {
        let mut batch = Vec::new();
        loop {
            batch.clear();
            let step =
                self.hub.follow(&follower.subscriber, &follower.cursor, FOLLOW_BATCH, &mut batch);
            if !follower.counted && step != Step::Gone {
                follower.counted = true;
                metrics::resume_source(if step == Step::Behind { "kafka" } else { "recent" });
            }
            match step {
                Step::Records => {}
                Step::Joined => {
                    tracing::debug!(topic = follower.topic(), cursor = ?follower.cursor, "catch-up: joined live");
                    metrics::handed_over(follower.since.elapsed());
                    return;
                }
                Step::Behind => {
                    tracing::debug!(topic = follower.topic(), cursor = ?follower.cursor, "catch-up: behind the recent records");
                    return self.read(follower);
                }
                Step::Gone => return,
                Step::Wait => {
                    // The live consumer is catching up itself: wait until it
                    // has kept more records or reached the head.
                    let Some(mut signal) = self.hub.head_signal(follower.topic()) else { return };
                    if !*signal.borrow_and_update() {
                        tokio::select! {
                            _ = signal.changed() => {}
                            _ = follower.stop.cancelled() => return,
                        }
                    }
                    continue;
                }
            }
            if follower.deliver_all(&batch).await == Delivered::Gone {
                return;
            }
        }
    }

    /// Queues `follower` for its topic's Kafka reader, starting the reader
    /// if it is not running.
    fn read(self: &Arc<Self>, follower: Follower) {
        let topic = follower.topic().to_owned();
        let mut waiting = self.waiting.lock().expect("waiting lock");
        if let Some(queue) = waiting.get_mut(&topic) {
            queue.push(follower);
            return;
        }
        waiting.insert(topic.clone(), vec![follower]);
        drop(waiting);
        tokio::spawn(self.clone().reader(topic));
    }

    /// The topic's reader: passes over Kafka until no follower waits.
    async fn reader(self: Arc<Self>, topic: String) {
        let Ok(_slot) = self.slots.clone().acquire_owned().await else { return };
        metrics::catchup_readers(1.0);
        let mut consumer: Option<Arc<StreamConsumer<KafkaContext>>> = None;
        loop {
            let followers = {
                let mut waiting = self.waiting.lock().expect("waiting lock");
                let queue = waiting.get_mut(&topic).map(std::mem::take).unwrap_or_default();
                let queue: Vec<Follower> =
                    queue.into_iter().filter(|f| !f.stop.is_cancelled()).collect();
                if queue.is_empty() {
                    waiting.remove(&topic);
                    break;
                }
                queue
            };
            if consumer.is_none() {
                // Creating a librdkafka client blocks: off the async threads.
                let (config, context) = (self.client.replay_consumer(), self.context.clone());
                let made = tokio::task::spawn_blocking(move || {
                    config.create_with_context::<_, StreamConsumer<KafkaContext>>(context)
                })
                .await;
                match made.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                    Ok(c) => consumer = Some(Arc::new(c)),
                    Err(e) => {
                        tracing::warn!(topic, error = %e, "catch-up consumer failed; retrying");
                        self.requeue(&topic, followers);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let consumer = consumer.clone().expect("made above");
            self.pass(&consumer, &topic, followers).await;
        }
        metrics::catchup_readers(-1.0);
    }

    fn requeue(&self, topic: &str, followers: Vec<Follower>) {
        let mut waiting = self.waiting.lock().expect("waiting lock");
        waiting.entry(topic.to_owned()).or_default().extend(followers);
    }

    /// One pass over `topic` from the oldest position of `followers`, until
    /// each of them has reached the recent records, left, or was set aside.
    async fn pass(
        self: &Arc<Self>,
        consumer: &Arc<StreamConsumer<KafkaContext>>,
        topic: &str,
        followers: Vec<Follower>,
    ) {
        let mut from: BTreeMap<i32, i64> = BTreeMap::new();
        for follower in &followers {
            for (&p, &next) in &follower.cursor {
                let oldest = from.entry(p).or_insert(next);
                *oldest = (*oldest).min(next);
            }
        }
        let mut list = TopicPartitionList::new();
        for (&p, &offset) in &from {
            if let Err(e) = list.add_partition_offset(topic, p, Offset::Offset(offset)) {
                tracing::warn!(topic, error = %e, "catch-up assignment");
            }
        }
        // `assign` waits for librdkafka's own thread: off the async threads.
        let assigning = consumer.clone();
        let assigned = tokio::task::spawn_blocking(move || assigning.assign(&list)).await;
        if let Err(e) =
            assigned.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::warn!(topic, error = %e, "catch-up assign failed; retrying");
            self.requeue(topic, followers);
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
        tracing::debug!(topic, followers = followers.len(), ?from, "catch-up pass");
        let stop = CancellationToken::new();
        let mut pass = Pass {
            catchup: self.clone(),
            consumer,
            topic,
            followers,
            since_check: 0,
            tick: tokio::time::interval(HANDOVER_TICK),
            done: stop.clone(),
        };
        pass.hand_over();
        if !pass.followers.is_empty() {
            source::pump("catch-up", consumer, &stop, &mut pass).await;
        }
        let unassigning = consumer.clone();
        let _ = tokio::task::spawn_blocking(move || unassigning.unassign()).await;
    }
}

/// A reader's pass: its followers, and the hand-over check.
struct Pass<'a> {
    catchup: Arc<CatchUp>,
    consumer: &'a StreamConsumer<KafkaContext>,
    topic: &'a str,
    followers: Vec<Follower>,
    since_check: u32,
    tick: tokio::time::Interval,
    /// Cancelled once no follower is left: the pump stops, even while it
    /// waits for a record that may never come.
    done: CancellationToken,
}

impl Pass<'_> {
    /// Moves every follower whose position reached the recent records over
    /// to them; drops the ones that left.
    fn hand_over(&mut self) {
        self.since_check = 0;
        // Everything the reader handed on below its position went to every
        // follower (skipped offsets and control records included).
        let positions = self.consumer.position().ok();
        let mut i = 0;
        while i < self.followers.len() {
            let follower = &mut self.followers[i];
            if let Some(positions) = &positions {
                for element in positions.elements_for_topic(self.topic) {
                    if let (Offset::Offset(at), Some(next)) =
                        (element.offset(), follower.cursor.get_mut(&element.partition()))
                    {
                        *next = (*next).max(at);
                    }
                }
            }
            if follower.stop.is_cancelled() {
                self.followers.swap_remove(i);
                continue;
            }
            match self.catchup.hub.coverage(self.topic, &follower.cursor) {
                Some(Coverage::Behind) => i += 1,
                Some(Coverage::Covered) => {
                    let follower = self.followers.swap_remove(i);
                    tracing::debug!(topic = self.topic, cursor = ?follower.cursor, "catch-up: handed over");
                    self.catchup.follow(follower);
                }
                None => {
                    self.followers.swap_remove(i); // the topic has no subscriber left
                }
            }
        }
        if self.followers.is_empty() {
            self.done.cancel();
        }
    }
}

impl Route for &mut Pass<'_> {
    async fn deliver(&mut self, message: &BorrowedMessage<'_>) -> Flow {
        let record = recent_record(message);
        // Every socket with room takes the record at once; the ones without
        // wait for room together, for at most STALL, and a socket still
        // without room then is set aside: one slow socket (or many) holds
        // the others back by STALL at most.
        let mut full = Vec::new();
        let mut i = 0;
        while i < self.followers.len() {
            match self.followers[i].offer(&record) {
                Offered::Done => i += 1,
                Offered::Full(frame) => {
                    full.push((self.followers.swap_remove(i), frame));
                }
                Offered::Gone => {
                    self.followers.swap_remove(i);
                }
            }
        }
        if !full.is_empty() {
            let deadline = tokio::time::Instant::now() + STALL;
            let waits = full.into_iter().map(|(mut follower, frame)| {
                let outlet = follower.subscriber.outlet.clone();
                let stop = follower.stop.clone();
                let record = &record;
                async move {
                    let send = outlet.send_paced(PacedFrame { frame, done: None });
                    let sent = tokio::select! {
                        sent = tokio::time::timeout_at(deadline, send) => sent,
                        _ = stop.cancelled() => return None,
                    };
                    match sent {
                        Ok(Ok(())) => {
                            follower.advance(record);
                            Some(Ok(follower))
                        }
                        Ok(Err(_gone)) => None,
                        Err(_stalled) => Some(Err(follower)),
                    }
                }
            });
            for outcome in futures::future::join_all(waits).await.into_iter().flatten() {
                match outcome {
                    Ok(follower) => self.followers.push(follower),
                    Err(follower) => {
                        // Set aside: served again by the next pass, from here.
                        tracing::debug!(topic = self.topic, cursor = ?follower.cursor, "catch-up: set aside");
                        self.catchup.requeue(self.topic, vec![follower]);
                    }
                }
            }
        }
        self.since_check += 1;
        if self.since_check >= FOLLOW_BATCH as u32 {
            self.hand_over();
        }
        if self.followers.is_empty() {
            Flow::Stop
        } else {
            Flow::Next
        }
    }

    async fn between(&mut self) {
        self.tick.tick().await;
        self.hand_over();
    }

    fn finish(&mut self) {
        // Followers still behind when the pass stops go to the next one.
        let rest = std::mem::take(&mut self.followers);
        if !rest.is_empty() {
            self.catchup.requeue(self.topic, rest);
        }
    }
}

/// Where each partition starts, and a `gap` for every requested offset that
/// Kafka no longer (or does not yet) have.
fn plan(
    topic: &str,
    marks: &BTreeMap<i32, (i64, i64)>,
    from: &StartFrom,
    by_time: &BTreeMap<i32, i64>,
) -> Plan {
    let mut cursor = BTreeMap::new();
    let mut gaps = Vec::new();
    for (&p, &(low, high)) in marks {
        let start = match from {
            // A snapshot's live part starts from the table's positions
            // (offsets): never planned as a snapshot here.
            StartFrom::Latest | StartFrom::Snapshot => high,
            StartFrom::Earliest => low,
            StartFrom::Timestamp(_) => by_time.get(&p).copied().unwrap_or(high).clamp(low, high),
            StartFrom::Offsets(offsets) => match offsets.get(&p) {
                None => high,
                Some(&requested) if requested < low => {
                    gaps.push(gap(topic, p, requested, low, "retention"));
                    low
                }
                Some(&requested) if requested > high => {
                    gaps.push(gap(topic, p, requested, high, "beyond_end"));
                    high
                }
                Some(&requested) => requested,
            },
        };
        cursor.insert(p, start);
    }
    Plan { cursor, gaps, skip_before: None }
}

fn gap(topic: &str, partition: i32, requested: i64, resumed_at: i64, reason: &str) -> ServerFrame {
    ServerFrame::Gap {
        topic: topic.to_owned(),
        partition,
        requested,
        resumed_at,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reports_positions_kafka_does_not_have_as_gaps() {
        let marks = BTreeMap::from([(0, (5, 10)), (1, (0, 3)), (2, (0, 0))]);
        let from = StartFrom::Offsets(BTreeMap::from([(0, 2), (1, 7)]));
        let resumed = plan("t", &marks, &from, &BTreeMap::new());
        assert_eq!(resumed.cursor, BTreeMap::from([(0, 5), (1, 3), (2, 0)]));
        let reasons: Vec<String> = resumed
            .gaps
            .iter()
            .map(|g| match g {
                ServerFrame::Gap { partition, reason, .. } => format!("{partition}:{reason}"),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reasons, ["0:retention", "1:beyond_end"]);
        let earliest = plan("t", &marks, &StartFrom::Earliest, &BTreeMap::new());
        assert_eq!(earliest.cursor, BTreeMap::from([(0, 5), (1, 0), (2, 0)]));
        assert!(earliest.gaps.is_empty());
    }
}
