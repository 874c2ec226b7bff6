//! The fleet's control topic: one compacted Kafka topic
//! (`admin.control_topic`) that every node with the admin API on reads from
//! its start and writes to. It carries:
//!
//! | key | record | kept |
//! |---|---|---|
//! | `node/<id>` | a node's heartbeat (`admin.heartbeat_ms`) | until the node stops (then a tombstone) |
//! | `revoke/subject/<S>`, `revoke/jti/<J>` | a revocation, with its `until` | compacted to the latest per key |
//! | `disconnect/<request>` | close a subject's or a session's connections | tombstoned once answered |
//! | `query/<request>` | list a subject's connections, count a topic's subscribers | tombstoned once answered |
//! | `answer/<request>/<node>` | one node's answer to a request | tombstoned once collected |
//!
//! A node reads the topic from its beginning at start: the revocations in
//! it apply at once, and the node takes no connection until it has read up
//! to where the topic ended when it started ([`Loaded::Current`]). Requests
//! (disconnects, queries) written before that are history and are not
//! carried out again; revocations always are.
//!
//! The admin API ([`crate::http::admin`]) asks through [`Control::ask`]:
//! the request goes to the topic, every live node (itself included)
//! carries it out when it reads it and answers on the topic, and the
//! asking node collects the answers for at most [`ANSWER_WAIT`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::kafka::client_config::ClientSettings;
use crate::kafka::context::KafkaContext;
use crate::kafka::producer::{self, KafkaProducer};
use crate::kafka::source::{self, Flow, Route};
use crate::metrics;
use crate::node::registry::{now_ms, ConnectionInfo, Target};
use crate::node::revocations::Loaded;
use crate::node::Node;
use crate::throttle::Throttle;
use ferry_protocol::CloseCode;

/// How long a request waits for every live node's answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// A node not heard from for this many heartbeats is gone.
const LIVE_HEARTBEATS: u32 = 5;

/// How long a failed start (no topic, no Kafka) waits before trying again.
const RETRY: Duration = Duration::from_secs(2);

/// A node's heartbeat: what `GET /admin/v1/nodes` lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub version: String,
    /// Unix milliseconds.
    pub started_ms: i64,
    /// When it was sent, unix milliseconds.
    pub at_ms: i64,
    pub connections: usize,
    pub subscriptions: usize,
    /// Set while the node drains.
    #[serde(default)]
    pub draining: bool,
}

/// What a request asks every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Ask {
    /// Close a subject's connections (4006).
    DisconnectSubject { subject: String },
    /// Close one connection (4006), by its session id.
    DisconnectSession { session: String },
    /// Refuse `subject`'s tokens issued at or before `before` (unix s)
    /// until `until` (unix s), and close its connections holding one (4502).
    RevokeSubject { subject: String, before: i64, until: i64 },
    /// Refuse the token `jti` until `until`, and close its connections.
    RevokeToken { jti: String, until: i64 },
    /// A subject's connections.
    Connections { subject: String },
    /// How many connections read a topic.
    Subscribers { topic: String },
}

impl Ask {
    /// The record's key: revocations are kept per subject or token (the
    /// latest wins); the rest per request.
    fn key(&self, request: &str) -> String {
        match self {
            Self::RevokeSubject { subject, .. } => format!("revoke/subject/{subject}"),
            Self::RevokeToken { jti, .. } => format!("revoke/jti/{jti}"),
            Self::DisconnectSubject { .. } | Self::DisconnectSession { .. } => {
                format!("disconnect/{request}")
            }
            Self::Connections { .. } | Self::Subscribers { .. } => format!("query/{request}"),
        }
    }

    fn is_revocation(&self) -> bool {
        matches!(self, Self::RevokeSubject { .. } | Self::RevokeToken { .. })
    }
}

/// One node's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub request: String,
    pub node: String,
    /// Connections it closed (disconnects and revocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Vec<ConnectionInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<usize>,
}

/// A control record's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Record {
    Node(Heartbeat),
    Request {
        request: String,
        from: String,
        #[serde(flatten)]
        ask: Ask,
    },
    Answer(Answer),
}

/// Every node's answers to one request, and the live nodes that gave none
/// in time.
#[derive(Debug, Clone, Serialize)]
pub struct Answers {
    pub answers: Vec<Answer>,
    pub missing: Vec<String>,
}

/// This node's side of the control topic.
pub struct Control {
    node: Arc<Node>,
    topic: String,
    producer: KafkaProducer,
    settings: ClientSettings,
    context: KafkaContext,
    started_ms: i64,
    /// Node id → its last heartbeat and when it was heard.
    nodes: Mutex<HashMap<String, (Heartbeat, Instant)>>,
    /// This node's requests waiting for answers.
    waiting: Mutex<HashMap<String, mpsc::UnboundedSender<Answer>>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Control {
    pub fn new(
        node: Arc<Node>,
        producer: KafkaProducer,
        settings: ClientSettings,
        context: KafkaContext,
    ) -> Arc<Self> {
        Arc::new(Self {
            topic: node.config.admin.control_topic.clone(),
            node,
            producer,
            settings,
            context,
            started_ms: now_ms(),
            nodes: Mutex::default(),
            waiting: Mutex::default(),
        })
    }

    /// The node this control belongs to.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Reads the control topic and sends heartbeats until `stop`; then
    /// announces the node gone.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let heartbeats = tokio::spawn(self.clone().heartbeats(stop.clone()));
        loop {
            match self.follow(&stop).await {
                Ok(()) => break,
                Err(why) => {
                    tracing::error!(topic = %self.topic, "control topic: {why}; retrying in {RETRY:?}");
                    self.node.revocations.set_loaded(Loaded::Failed(why));
                    metrics::control_ready(false);
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        () = stop.cancelled() => break,
                    }
                }
            }
        }
        let _ = heartbeats.await;
    }

    /// Assigns the whole topic from its beginning and reads it until `stop`.
    async fn follow(self: &Arc<Self>, stop: &CancellationToken) -> Result<(), String> {
        let partitions =
            self.node.topics.ensure_compacted(&self.topic, 1).await.map_err(|e| match e {
                GatewayError::UnknownTopic(_) => format!(
                    "topic {:?} does not exist and kafka.auto_create_topics is off: create it \
                     (1 partition, cleanup.policy=compact)",
                    self.topic
                ),
                other => other.to_string(),
            })?;
        let consumer: StreamConsumer<KafkaContext> = self
            .settings
            .consumer()
            .set("client.id", "ferry-control")
            .create_with_context(self.context.clone())
            .map_err(|e| format!("control consumer: {e}"))?;
        let consumer = Arc::new(consumer);
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(&self.topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&assignment).map_err(|e| format!("assign: {e}"))?;
        let ends = self.ends(&consumer, partitions).await?;
        let mut route = ControlRoute {
            control: self.clone(),
            consumer: consumer.clone(),
            ends,
            tick: None,
            current: false,
        };
        route.check_current();
        source::pump("control", &consumer, stop, route).await;
        Ok(())
    }

    /// Where each partition ends now: what a node must read before it
    /// takes connections.
    async fn ends(
        &self,
        consumer: &Arc<StreamConsumer<KafkaContext>>,
        partitions: i32,
    ) -> Result<HashMap<i32, i64>, String> {
        let (consumer, topic) = (consumer.clone(), self.topic.clone());
        let timeout = self.node.config.kafka.metadata_timeout();
        tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    let (_, high) = consumer
                        .fetch_watermarks(&topic, p, timeout)
                        .map_err(|e| format!("reading where partition {p} ends: {e}"))?;
                    Ok((p, high))
                })
                .collect()
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Announces this node every heartbeat; expires revocations; says the
    /// node is gone when `stop` is cancelled.
    async fn heartbeats(self: Arc<Self>, stop: CancellationToken) {
        let every = self.node.config.admin.heartbeat();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let errors = Throttle::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
                () = self.node.shutdown.cancelled() => break,
            }
            let now = now_ms();
            self.node.revocations.expire(now / 1000);
            let (connections, subscriptions) = self.node.registry.counts();
            let beat = Heartbeat {
                node: self.node.node_id.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_ms: self.started_ms,
                at_ms: now,
                connections,
                subscriptions,
                draining: self.node.draining.load(std::sync::atomic::Ordering::Acquire),
            };
            if let Err(e) = self.write(&self.node_key(), Some(&Record::Node(beat))).await {
                if errors.allow().is_some() {
                    tracing::warn!(topic = %self.topic, "control heartbeat not written: {e}");
                }
            }
            let (subjects, tokens) = self.node.revocations.counts();
            metrics::fleet(self.live_nodes().len(), subjects + tokens);
        }
        // Gone at once from every node's list, rather than after 5 beats.
        if let Err(e) = self.write(&self.node_key(), None).await {
            tracing::debug!("control: leaving not written: {e}");
        }
    }

    fn node_key(&self) -> String {
        format!("node/{}", self.node.node_id)
    }

    /// Writes one record (`None`: a tombstone) and waits for Kafka to
    /// store it.
    async fn write(&self, key: &str, record: Option<&Record>) -> Result<(), String> {
        let payload = record.map(|r| serde_json::to_vec(r).expect("control records serialize"));
        let delivery = producer::write(&self.producer, &self.topic, key, payload.as_deref())
            .map_err(|e| e.to_string())?;
        delivery.await.map(drop).map_err(|e| e.to_string())
    }

    /// Nodes heard from within the last [`LIVE_HEARTBEATS`] heartbeats.
    pub fn live_nodes(&self) -> Vec<Heartbeat> {
        let window = self.node.config.admin.heartbeat() * LIVE_HEARTBEATS;
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut live: Vec<Heartbeat> = nodes
            .values()
            .filter(|(_, heard)| heard.elapsed() < window)
            .map(|(beat, _)| beat.clone())
            .collect();
        live.sort_by(|a, b| a.node.cmp(&b.node));
        live
    }

    /// Sends `ask` to every node and collects their answers (this node's
    /// included) for at most [`ANSWER_WAIT`].
    pub async fn ask(&self, ask: Ask) -> Result<Answers, String> {
        let request = uuid::Uuid::new_v4().simple().to_string();
        let mut expected: HashSet<String> =
            self.live_nodes().into_iter().map(|beat| beat.node).collect();
        expected.insert(self.node.node_id.clone());
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.waiting_lock().insert(request.clone(), tx);
        let key = ask.key(&request);
        let revocation = ask.is_revocation();
        let record =
            Record::Request { request: request.clone(), from: self.node.node_id.clone(), ask };
        if let Err(e) = self.write(&key, Some(&record)).await {
            self.waiting_lock().remove(&request);
            return Err(format!("the control topic did not take the request: {e}"));
        }
        let deadline = Instant::now() + ANSWER_WAIT;
        let mut answers: Vec<Answer> = Vec::new();
        while answers.len() < expected.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(answer)) => {
                    if !answers.iter().any(|a| a.node == answer.node) {
                        answers.push(answer);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.waiting_lock().remove(&request);
        answers.sort_by(|a, b| a.node.cmp(&b.node));
        let answered: HashSet<&str> = answers.iter().map(|a| a.node.as_str()).collect();
        let mut missing: Vec<String> =
            expected.iter().filter(|n| !answered.contains(n.as_str())).cloned().collect();
        missing.sort();
        // Requests and answers need not stay in the compacted topic; a
        // revocation stays (its key holds the latest one).
        let mut spent: Vec<String> =
            answers.iter().map(|a| format!("answer/{request}/{}", a.node)).collect();
        if !revocation {
            spent.push(key);
        }
        for key in spent {
            if let Err(e) = self.write(&key, None).await {
                tracing::debug!("control: tombstone not written: {e}");
            }
        }
        Ok(Answers { answers, missing })
    }

    fn waiting_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Answer>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Carries out one record read from the topic. `live`: written after
    /// this node started reading (a request before that is history).
    fn apply(&self, key: &str, record: Option<Record>, live: bool) -> Option<(String, Answer)> {
        let Some(record) = record else {
            // A tombstone: only a node leaving matters here.
            if let Some(node) = key.strip_prefix("node/") {
                self.nodes.lock().unwrap_or_else(|e| e.into_inner()).remove(node);
            }
            return None;
        };
        match record {
            Record::Node(beat) => {
                // A heartbeat from history counts from when it was sent.
                let age = Duration::from_millis((now_ms() - beat.at_ms).max(0) as u64);
                let heard = if live { Instant::now() } else { Instant::now() - age.min(hour()) };
                let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
                nodes.insert(beat.node.clone(), (beat, heard));
                None
            }
            Record::Answer(answer) => {
                if let Some(tx) = self.waiting_lock().get(&answer.request) {
                    let _ = tx.send(answer);
                }
                None
            }
            Record::Request { request, from, ask } => {
                if !live && !ask.is_revocation() {
                    return None;
                }
                let answer = self.carry_out(&request, &from, ask);
                live.then(|| (format!("answer/{request}/{}", self.node.node_id), answer))
            }
        }
    }

    /// Does what `ask` asks of this node; returns its answer.
    fn carry_out(&self, request: &str, from: &str, ask: Ask) -> Answer {
        let node = &self.node;
        let mut answer = Answer {
            request: request.to_owned(),
            node: node.node_id.clone(),
            closed: None,
            connections: None,
            subscribers: None,
        };
        match ask {
            Ask::DisconnectSubject { subject } => {
                let closed =
                    node.registry.close(&Target::Subject(subject.clone()), CloseCode::DISCONNECTED);
                tracing::info!(target: "ferry::admin", from, subject, closed, "disconnected");
                answer.closed = Some(closed);
            }
            Ask::DisconnectSession { session } => {
                let closed =
                    node.registry.close(&Target::Session(session.clone()), CloseCode::DISCONNECTED);
                tracing::info!(target: "ferry::admin", from, session, closed, "disconnected");
                answer.closed = Some(closed);
            }
            Ask::RevokeSubject { subject, before, until } => {
                node.revocations.revoke_subject(&subject, before, until);
                let target = Target::IssuedBefore { subject: subject.clone(), before };
                let closed = node.registry.close(&target, CloseCode::REVOKED);
                tracing::info!(target: "ferry::admin", from, subject, before, until, closed, "revoked");
                answer.closed = Some(closed);
            }
            Ask::RevokeToken { jti, until } => {
                node.revocations.revoke_token(&jti, until);
                let closed = node.registry.close(&Target::TokenId(jti.clone()), CloseCode::REVOKED);
                tracing::info!(target: "ferry::admin", from, jti, until, closed, "revoked");
                answer.closed = Some(closed);
            }
            Ask::Connections { subject } => {
                answer.connections = Some(node.registry.of_subject(&subject));
            }
            Ask::Subscribers { topic } => {
                answer.subscribers = Some(node.registry.subscribers(&topic))
            }
        }
        answer
    }
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

/// The control consumer's route: applies each record and answers requests.
struct ControlRoute {
    control: Arc<Control>,
    consumer: Arc<StreamConsumer<KafkaContext>>,
    /// Partitions not yet read to where they ended at start → that end.
    ends: HashMap<i32, i64>,
    /// Checks the read position while still loading.
    tick: Option<tokio::time::Interval>,
    /// Read to where the topic ended at start.
    current: bool,
}

impl ControlRoute {
    /// Marks the node current once every partition is read to its end at
    /// start (by the consumer's position too: the last records of a
    /// compacted topic may be gone).
    fn check_current(&mut self) {
        if self.current {
            return;
        }
        if let Ok(positions) = self.consumer.position() {
            for element in positions.elements() {
                if let Offset::Offset(at) = element.offset() {
                    if self.ends.get(&element.partition()).is_some_and(|end| at >= *end) {
                        self.ends.remove(&element.partition());
                    }
                }
            }
        }
        self.ends.retain(|_, end| *end > 0);
        if self.ends.is_empty() {
            self.current = true;
            tracing::info!(topic = %self.control.topic, "control topic read: revocations current");
            self.control.node.revocations.set_loaded(Loaded::Current);
            metrics::control_ready(true);
        }
    }
}

impl Route for ControlRoute {
    async fn deliver(&mut self, record: &BorrowedMessage<'_>) -> Flow {
        let key = record.key().and_then(|k| std::str::from_utf8(k).ok()).unwrap_or_default();
        let live = self.current;
        let parsed = match record.payload() {
            None => None,
            Some(bytes) => match serde_json::from_slice::<Record>(bytes) {
                Ok(parsed) => Some(parsed),
                Err(e) => {
                    tracing::warn!(key, "control record ignored: {e}");
                    return Flow::Next;
                }
            },
        };
        if let Some((answer_key, answer)) = self.control.apply(key, parsed, live) {
            let control = self.control.clone();
            tokio::spawn(async move {
                if let Err(e) = control.write(&answer_key, Some(&Record::Answer(answer))).await {
                    tracing::warn!("control: answer not written: {e}");
                }
            });
        }
        if !self.current {
            let partition = record.partition();
            if self.ends.get(&partition).is_some_and(|end| record.offset() + 1 >= *end) {
                self.ends.remove(&partition);
                self.check_current();
            }
        }
        Flow::Next
    }

    async fn between(&mut self) {
        if self.current {
            return std::future::pending().await;
        }
        let tick =
            self.tick.get_or_insert_with(|| tokio::time::interval(Duration::from_millis(200)));
        tick.tick().await;
        self.check_current();
    }
}
