//! Subscriptions that start somewhere other than "now": `earliest`, given
//! offsets (resume after a reconnect), or a timestamp.
//!
//! Each reads with a consumer of its own (manual assignment, no group), so
//! a replay never slows live subscribers, and its records flow at the
//! socket's pace: the task waits on the socket's replay queue rather than
//! dropping or disconnecting. After catching up it simply stays live.
//! Replays are capped per node (`limits.max_replays`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{ServerFrame, StartFrom};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::filter::{Filter, RecordView};
use crate::kafka::client_config::ClientSettings;
use crate::kafka::context::KafkaContext;
use crate::kafka::fanout::{encode_record, record_headers};
use crate::kafka::retry_blocking;
use crate::kafka::source::{self, Flow, Route};
use crate::outlet::{Outlet, PacedFrame};

/// Starts replaying subscriptions.
#[derive(Debug)]
pub struct Replays {
    settings: ClientSettings,
    /// Shared with every Kafka client of the gateway (refusals, log limits).
    context: KafkaContext,
    /// The embedded mock has no time index (ListOffsets by time answers
    /// nothing): timestamp starts scan from the log start instead.
    scan_for_time: bool,
    slots: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
}

/// A running replay; it stops when this is dropped.
#[derive(Debug)]
pub struct ReplayHandle {
    stop: CancellationToken,
}

impl Drop for ReplayHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A started replay: where each partition starts, and the gaps to report.
#[derive(Debug)]
pub struct Started {
    pub handle: ReplayHandle,
    pub starts: BTreeMap<i32, i64>,
    pub gaps: Vec<ServerFrame>,
}

impl Replays {
    pub fn new(
        settings: ClientSettings,
        context: KafkaContext,
        max: usize,
        timeout: Duration,
    ) -> Self {
        let scan_for_time = settings.embedded();
        let slots = Arc::new(Semaphore::new(max));
        Self { settings, context, scan_for_time, slots, max, timeout }
    }

    /// Starts reading `topic` (with `partitions` partitions) from `from`,
    /// sending each encoded record to `out`.
    pub async fn start(
        &self,
        topic: &str,
        partitions: i32,
        from: &StartFrom,
        filter: Option<Arc<Filter>>,
        out: Outlet,
    ) -> Result<Started, GatewayError> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err(GatewayError::Limit(format!(
                "this node already runs {} replaying subscriptions; retry later or use \"latest\"",
                self.max
            )));
        };
        if let StartFrom::Offsets(offsets) = from {
            if let Some(p) = offsets.keys().find(|p| **p >= partitions) {
                return Err(GatewayError::BadRequest(format!(
                    "topic {topic:?} has {partitions} partitions; partition {p} does not exist"
                )));
            }
        }
        let consumer: StreamConsumer<KafkaContext> = self
            .settings
            .replay_consumer()
            .create_with_context(self.context.clone())
            .map_err(|e| GatewayError::Internal(format!("replay consumer: {e}")))?;
        let consumer = Arc::new(consumer);
        // Without a time index, start at the log start and skip, in `pump`,
        // each partition's records older than the timestamp.
        let (plan_from, skip_before) = match from {
            StartFrom::Timestamp(ts) if self.scan_for_time => (StartFrom::Earliest, Some(*ts)),
            other => (other.clone(), None),
        };
        let (name, timeout) = (topic.to_owned(), self.timeout);
        let planner = consumer.clone();
        let (starts, gaps) = tokio::task::spawn_blocking(move || {
            plan(&planner, &name, partitions, &plan_from, timeout)
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("replay planning task: {e}")))??;

        let mut list = TopicPartitionList::new();
        for (&p, &offset) in &starts {
            list.add_partition_offset(topic, p, Offset::Offset(offset))
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
        }
        consumer.assign(&list).map_err(|e| GatewayError::Internal(format!("assign: {e}")))?;
        let stop = CancellationToken::new();
        let route = Replay { out, _slot: slot, skip_before, reached: HashSet::new(), filter };
        let stopped = stop.clone();
        tokio::spawn(async move { source::pump("replay", &consumer, &stopped, route).await });
        Ok(Started { handle: ReplayHandle { stop }, starts, gaps })
    }
}

/// Where each partition starts, and a `gap` for every requested offset that
/// Kafka no longer (or does not yet) have.
fn plan(
    consumer: &StreamConsumer<KafkaContext>,
    topic: &str,
    partitions: i32,
    from: &StartFrom,
    timeout: Duration,
) -> Result<(BTreeMap<i32, i64>, Vec<ServerFrame>), GatewayError> {
    let unavailable = |e: rdkafka::error::KafkaError| {
        GatewayError::Unavailable(format!("reading offsets of {topic:?} failed: {e}"))
    };
    let marks = retry_blocking(timeout, || {
        (0..partitions)
            .map(|p| consumer.fetch_watermarks(topic, p, timeout).map(|marks| (p, marks)))
            .collect::<Result<BTreeMap<_, _>, _>>()
    })
    .map_err(unavailable)?;
    let by_time = match from {
        StartFrom::Timestamp(ts) => {
            let mut list = TopicPartitionList::new();
            for p in 0..partitions {
                list.add_partition_offset(topic, p, Offset::Offset(*ts))
                    .map_err(|e| GatewayError::Internal(e.to_string()))?;
            }
            let found = consumer.offsets_for_times(list, timeout).map_err(unavailable)?;
            found
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        }
        _ => BTreeMap::new(),
    };
    let mut starts = BTreeMap::new();
    let mut gaps = Vec::new();
    for (&p, &(low, high)) in &marks {
        let start = match from {
            StartFrom::Latest => high,
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
        starts.insert(p, start);
    }
    Ok((starts, gaps))
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

/// A replay's route: its one socket, paced; records before the start
/// time (when scanning for it) and records its filter excludes are skipped.
struct Replay {
    out: Outlet,
    /// Keeps the node's replay slot while the replay runs.
    _slot: OwnedSemaphorePermit,
    skip_before: Option<i64>,
    /// Partitions that already reached `skip_before` deliver everything.
    reached: HashSet<i32>,
    filter: Option<Arc<Filter>>,
}

impl Route for Replay {
    async fn deliver(&mut self, record: &BorrowedMessage<'_>) -> Flow {
        if let Some(ts) = self.skip_before {
            let older = record.timestamp().to_millis().is_some_and(|t| t < ts);
            if older && !self.reached.contains(&record.partition()) {
                return Flow::Next;
            }
            self.reached.insert(record.partition());
        }
        let headers = record_headers(record);
        if let Some(filter) = &self.filter {
            if !filter.matches(&RecordView::new(record.key(), &headers, record.payload())) {
                return Flow::Next;
            }
        }
        let frame = PacedFrame { frame: encode_record(record, &headers), done: None };
        match self.out.send_paced(frame).await {
            Ok(()) => Flow::Next,
            Err(_) => Flow::Stop, // the socket is gone
        }
    }
}
