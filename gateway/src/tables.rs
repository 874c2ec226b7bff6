//! Keyed tables for `from: "snapshot"`: the latest record of every key of a
//! topic, kept by the node from its own reader of the topic, so that a
//! subscriber's snapshot costs no Kafka read.
//!
//! - Which topics: `[[tables]]` in the configuration (`topics`, an ACL-syntax
//!   pattern without placeholders; `max_keys`; `max_bytes`). A snapshot of
//!   another topic is refused with `bad_request` saying how to configure one.
//! - When: on first use. The first snapshot of a topic on a node starts the
//!   table's reader, from the topic's beginning; every snapshot waits until
//!   the table has read up to where the topic ended when its reader started
//!   (never a partial snapshot), bounded by `limits.request_timeout_ms`
//!   (then `timeout`, and the client asks again; the table goes on loading).
//!   From then on the reader follows the topic.
//! - What: a record without a key is not kept; a tombstone (no value)
//!   removes its key.
//! - Bounds: past `max_keys` keys or `max_bytes` bytes the table gives up
//!   (its memory is freed) and every snapshot of the topic is refused with
//!   `limit`, naming the bound, and counted: never a silently partial
//!   snapshot. Raise the bound and restart the node.
//!
//! A snapshot is taken under the table's lock: the frames of the keys (each
//! encoded once, when the record came, with `"snapshot":true`) and the
//! table's positions at that moment, from which the live subscription then
//! starts (see [`crate::delivery`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::acl::Pattern;
use crate::auth::Principal;
use crate::config::TableConfig;
use crate::error::GatewayError;
use crate::filter::Filter;
use crate::kafka::client_config::ClientSettings;
use crate::kafka::context::KafkaContext;
use crate::kafka::record::recent_record;
use crate::kafka::source::{self, Flow, Route};
use crate::kafka::topics::Topics;
use crate::metrics;
use crate::recent::Record;

fn compile(config: &TableConfig) -> Option<Pattern> {
    // Checked with the configuration (`config::TableConfig::check`).
    Pattern::parse(&config.topics).ok()
}

/// The state of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Loading,
    Current,
    /// Past a bound: why.
    Overflowed(String),
}

/// A snapshot: the frames to send, then the positions live records start
/// from.
#[derive(Debug)]
pub struct Snapshot {
    pub frames: Vec<Utf8Bytes>,
    pub positions: BTreeMap<i32, i64>,
}

/// Every table of the node, by topic.
pub struct Tables {
    rules: Vec<(Pattern, TableConfig)>,
    built: Mutex<HashMap<String, Arc<Table>>>,
    settings: ClientSettings,
    context: KafkaContext,
    topics: Arc<Topics>,
    stop: CancellationToken,
    /// Patterns are matched without claims (placeholders are refused).
    nobody: Principal,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables").field("rules", &self.rules.len()).finish_non_exhaustive()
    }
}

impl Tables {
    /// The tables `configs` names (checked by the configuration); none is
    /// built before its first snapshot. `stop` ends every table's reader.
    pub fn new(
        configs: &[TableConfig],
        settings: ClientSettings,
        context: KafkaContext,
        topics: Arc<Topics>,
        stop: CancellationToken,
    ) -> Self {
        let rules = configs
            .iter()
            .filter_map(|config| compile(config).map(|pattern| (pattern, config.clone())))
            .collect();
        Self {
            rules,
            built: Mutex::default(),
            settings,
            context,
            topics,
            stop,
            nobody: Principal::anonymous(),
        }
    }

    /// The table of `topic`, its reader started on first use.
    pub fn table(&self, topic: &str) -> Result<Arc<Table>, GatewayError> {
        let Some((_, config)) = self.rules.iter().find(|(p, _)| p.matches(topic, &self.nobody))
        else {
            return Err(GatewayError::BadRequest(format!(
                "topic {topic:?} has no table: a snapshot needs `[[tables]] topics = \"{topic}\"` \
                 in the gateway's configuration"
            )));
        };
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = built.get(topic) {
            return Ok(table.clone());
        }
        let (status, _) = watch::channel(Status::Loading);
        let table = Arc::new(Table {
            topic: topic.to_owned(),
            max_keys: config.max_keys,
            max_bytes: config.max_bytes,
            state: Mutex::default(),
            status,
        });
        built.insert(topic.to_owned(), table.clone());
        let reader = Reader {
            table: table.clone(),
            settings: self.settings.clone(),
            context: self.context.clone(),
            topics: self.topics.clone(),
        };
        tokio::spawn(reader.run(self.stop.clone()));
        tracing::info!(topic, "table: loading the topic from its beginning");
        Ok(table)
    }
}

#[derive(Debug)]
struct Entry {
    record: Arc<Record>,
    /// The record's `message` frame with `"snapshot":true`, encoded once.
    frame: Utf8Bytes,
    bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    /// (partition, key) → the key's latest record.
    entries: HashMap<(i32, Box<[u8]>), Entry>,
    bytes: usize,
    /// Partition → the next offset the table reads.
    next: BTreeMap<i32, i64>,
}

/// One topic's table.
#[derive(Debug)]
pub struct Table {
    topic: String,
    max_keys: usize,
    max_bytes: usize,
    /// Short critical sections only (an update, a snapshot's copy of
    /// pointers); never held across an await.
    state: Mutex<State>,
    status: watch::Sender<Status>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest record of every key that `filter` lets through, once the
    /// table is current, and the positions live records start from.
    pub async fn snapshot(&self, filter: Option<&Filter>) -> Result<Snapshot, GatewayError> {
        let started = std::time::Instant::now();
        let mut status = self.status.subscribe();
        let ready = status
            .wait_for(|s| *s != Status::Loading)
            .await
            .map_err(|_| GatewayError::Unavailable("the table's reader stopped".into()))?
            .clone();
        if let Status::Overflowed(why) = ready {
            metrics::snapshot_refused();
            return Err(GatewayError::Limit(why));
        }
        let state = self.lock();
        let frames = state
            .entries
            .values()
            .filter(|e| filter.is_none_or(|f| e.record.with_view(|view| f.matches(view))))
            .map(|e| e.frame.clone())
            .collect();
        let positions = state.next.clone();
        drop(state);
        metrics::snapshot_taken(started.elapsed());
        Ok(Snapshot { frames, positions })
    }

    /// Keeps `record` (or removes its key, for a tombstone); false once
    /// the table is past a bound.
    fn apply(&self, record: &BorrowedMessage<'_>) -> bool {
        let partition = record.partition();
        let mut state = self.lock();
        state.next.insert(partition, record.offset() + 1);
        let Some(key) = record.key() else { return true };
        let id = (partition, Box::<[u8]>::from(key));
        if record.payload().is_none() {
            if let Some(old) = state.entries.remove(&id) {
                state.bytes -= old.bytes;
            }
        } else {
            let kept = recent_record(record);
            let frame = snapshot_frame(&kept.frame);
            let bytes = frame.len() + kept.frame.len() + 2 * key.len() + 128;
            let entry = Entry { record: kept, frame, bytes };
            if let Some(old) = state.entries.insert(id, entry) {
                state.bytes -= old.bytes;
            }
            state.bytes += bytes;
        }
        let over = if state.entries.len() > self.max_keys {
            Some(format!(
                "the table of {:?} holds more than max_keys ({})",
                self.topic, self.max_keys
            ))
        } else if state.bytes > self.max_bytes {
            Some(format!(
                "the table of {:?} holds more than max_bytes ({})",
                self.topic, self.max_bytes
            ))
        } else {
            None
        };
        let Some(why) = over else { return true };
        *state = State::default();
        drop(state);
        metrics::table_size(&self.topic, 0, 0);
        tracing::error!(topic = %self.topic, "{why}: snapshots of it are refused until the bound is raised");
        self.status.send_replace(Status::Overflowed(format!(
            "{why}: raise it in [[tables]] and restart the node"
        )));
        false
    }
}

/// A `message` frame with `"snapshot":true` added at its end (the
/// protocol crate's encoding, checked by its test vectors).
fn snapshot_frame(frame: &Utf8Bytes) -> Utf8Bytes {
    Utf8Bytes::from(ferry_protocol::MessageFrame::snapshot_of(frame.as_str()))
}

/// Whether an encoded frame is a snapshot's `message`.
pub fn is_snapshot_frame(frame: &str) -> bool {
    ferry_protocol::MessageFrame::is_snapshot(frame)
}

/// A table's reader: the topic from its beginning, then live.
struct Reader {
    table: Arc<Table>,
    settings: ClientSettings,
    context: KafkaContext,
    topics: Arc<Topics>,
}

impl Reader {
    async fn run(self, stop: CancellationToken) {
        let topic = self.table.topic.clone();
        loop {
            match self.follow(&stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(topic, "table reader: {e}; retrying in 2 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn follow(&self, stop: &CancellationToken) -> Result<(), String> {
        let topic = &self.table.topic;
        let partitions = self.topics.partitions(topic).await.map_err(|e| e.to_string())?;
        let consumer: StreamConsumer<KafkaContext> = self
            .settings
            .replay_consumer()
            .set("client.id", "ferry-table")
            .create_with_context(self.context.clone())
            .map_err(|e| e.to_string())?;
        let consumer = Arc::new(consumer);
        let marks = {
            let (consumer, name) = (consumer.clone(), topic.clone());
            tokio::task::spawn_blocking(move || {
                (0..partitions)
                    .map(|p| {
                        consumer
                            .fetch_watermarks(&name, p, Duration::from_secs(10))
                            .map(|marks| (p, marks))
                            .map_err(|e| format!("partition {p}: {e}"))
                    })
                    .collect::<Result<BTreeMap<i32, (i64, i64)>, String>>()
            })
            .await
            .map_err(|e| e.to_string())??
        };
        let mut assignment = TopicPartitionList::new();
        {
            let mut state = self.table.lock();
            for (&p, &(low, _)) in &marks {
                state.next.insert(p, low);
                assignment
                    .add_partition_offset(topic, p, Offset::Offset(low))
                    .map_err(|e| e.to_string())?;
            }
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        let ends: BTreeMap<i32, i64> = marks.iter().map(|(&p, &(_, high))| (p, high)).collect();
        let mut route = TableRoute {
            table: self.table.clone(),
            consumer: consumer.clone(),
            tick: None,
            unreported: 0,
            ends,
            current: false,
        };
        route.check_current();
        source::pump("table", &consumer, stop, route).await;
        Ok(())
    }
}

struct TableRoute {
    table: Arc<Table>,
    consumer: Arc<StreamConsumer<KafkaContext>>,
    /// Checks the read position while loading.
    tick: Option<tokio::time::Interval>,
    /// Records applied since the size metrics were last set.
    unreported: u32,
    /// Where each partition ended when the reader started.
    ends: BTreeMap<i32, i64>,
    current: bool,
}

impl TableRoute {
    fn check_current(&mut self) {
        if self.current {
            return;
        }
        // The last records of a compacted partition may be gone: where the
        // consumer stands counts too.
        let positions = self.consumer.position().ok();
        let position = |p: i32| {
            positions.as_ref().and_then(|list| {
                list.elements_for_topic(&self.table.topic)
                    .iter()
                    .find(|e| e.partition() == p)
                    .and_then(|e| e.offset().to_raw())
            })
        };
        let state = self.table.lock();
        let behind = self.ends.iter().any(|(&p, end)| {
            state.next.get(&p).is_none_or(|n| n < end) && position(p).is_none_or(|at| at < *end)
        });
        drop(state);
        if !behind {
            self.current = true;
            tracing::info!(topic = %self.table.topic, "table: current");
            self.table.status.send_if_modified(|s| {
                let loading = *s == Status::Loading;
                if loading {
                    *s = Status::Current;
                }
                loading
            });
        }
    }
}

impl Route for TableRoute {
    async fn deliver(&mut self, record: &BorrowedMessage<'_>) -> Flow {
        if !self.table.apply(record) {
            return Flow::Stop;
        }
        self.unreported += 1;
        if self.unreported >= 1024 {
            self.report();
        }
        self.check_current();
        Flow::Next
    }

    async fn between(&mut self) {
        // While loading, look at the position now and then; once current,
        // report the size after a quiet moment.
        let every = if self.current { Duration::from_secs(1) } else { Duration::from_millis(200) };
        let tick = self.tick.get_or_insert_with(|| tokio::time::interval(every));
        tick.tick().await;
        self.check_current();
        if self.unreported > 0 {
            self.report();
        }
    }
}

impl TableRoute {
    fn report(&mut self) {
        self.unreported = 0;
        let state = self.table.lock();
        let (keys, bytes) = (state.entries.len(), state.bytes);
        drop(state);
        metrics::table_size(&self.table.topic, keys, bytes);
    }
}
