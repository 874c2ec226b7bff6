//! One client connection.
//!
//! The session task reads frames and owns the connection's state (its
//! subscriptions and in-flight publishes); a [`writer`] task owns the sink.
//! They talk over two bounded queues: replies (sized so every in-flight
//! publish can be answered) and fan-out frames (`limits.outbound_queue`,
//! filled by the hub with `try_send`; full means the socket is too slow and
//! is closed with 4000).

pub mod limits;
pub mod lossy;
pub mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use ferry_protocol::{
    decode_client_frame, ClientFrame, CloseCode, Limits, Publish, ServerFrame, StartFrom, Subscribe,
};
use futures::stream::{FuturesUnordered, SplitStream};
use futures::{Future, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::acl::{Action, SubscribeGrantResult};
use crate::app::AppState;
use crate::auth::{AuthMode, Principal};
use crate::error::{request_error_frame, GatewayError};
use crate::filter::Filter;
use crate::hub::Subscriber;
use crate::kafka::groups::{Member, PacedFrame};
use crate::kafka::replay::ReplayHandle;
use crate::metrics;
use limits::{SubjectGuard, TokenBucket};
use lossy::LossyQueue;
use writer::{Outbound, WriterConfig};

/// Replies beyond the in-flight publishes the reply queue has room for
/// (subscribe answers, pongs, errors).
const REPLY_SLACK: usize = 64;

/// How long a closing session waits for its writer to send the close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// An in-flight publish: resolves to its request id and reply.
type PendingReply = Pin<Box<dyn Future<Output = (String, ServerFrame)> + Send>>;

/// One subscription of the socket.
#[derive(Debug)]
struct Subscription {
    /// Its replay, or `None` for a live (hub) or group subscription.
    replay: Option<ReplayHandle>,
    /// The shared group it is a member of.
    group: Option<String>,
    /// The canonical ACL-imposed filter it was granted with; a token refresh
    /// that changes it ends the subscription.
    imposed: Option<String>,
}

/// Why the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The gateway closes the socket with this code.
    Close(CloseCode),
    /// The gateway is shutting down: answer in-flight publishes, then 1001.
    Shutdown,
    /// The client sent a close frame: echo it (completing the handshake).
    ClientClosed,
    /// The connection dropped.
    ClientGone,
    /// The writer stopped (write failed or timed out).
    WriterGone,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            Self::Close(code) => code.reason(),
            Self::Shutdown => CloseCode::GOING_AWAY.reason(),
            Self::ClientClosed => "client_closed",
            Self::ClientGone => "connection_lost",
            Self::WriterGone => "write_failed",
        }
    }

    /// Maps a read error from the socket to how the session ends.
    fn from_read_error(err: axum::Error) -> Self {
        use tungstenite::error::{CapacityError, Error as WsError};
        let inner = err.into_inner();
        match inner.downcast_ref::<WsError>() {
            Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                Self::Close(CloseCode::MESSAGE_TOO_BIG)
            }
            Some(WsError::Capacity(_)) => Self::Close(CloseCode::MESSAGE_TOO_BIG),
            Some(WsError::Utf8(_)) => Self::Close(CloseCode::INVALID_PAYLOAD),
            Some(WsError::Protocol(_)) => Self::Close(CloseCode::PROTOCOL_ERROR),
            _ => Self::ClientGone,
        }
    }
}

/// Who the socket is, when the upgrade request already said so.
#[derive(Debug)]
pub struct Authenticated {
    pub principal: Principal,
    /// Counts the connection against its subject's limit (JWT mode only).
    pub guard: Option<SubjectGuard>,
}

/// Serves one upgraded WebSocket until it closes. Without `authenticated`
/// the socket must send an `auth` frame within the auth timeout.
pub async fn run(
    socket: WebSocket,
    state: Arc<AppState>,
    permit: OwnedSemaphorePermit,
    authenticated: Option<Authenticated>,
) {
    metrics::connection_opened();
    let limits = &state.config.limits;
    let (sink, stream) = socket.split();
    let (replies, replies_rx) = mpsc::channel(limits.max_inflight_publishes + REPLY_SLACK);
    let (fanout, fanout_rx) = mpsc::channel(limits.outbound_queue);
    let (paced, paced_rx) = mpsc::channel(limits.replay_queue);
    let lossy = Arc::new(LossyQueue::new(limits.outbound_queue));
    let ws = &state.config.websocket;
    let writer_config =
        WriterConfig { ping_interval: ws.ping_interval(), write_timeout: ws.write_timeout() };
    let writer = tokio::spawn(writer::run(
        sink,
        replies_rx,
        fanout_rx,
        paced_rx,
        lossy.clone(),
        writer_config,
    ));

    let (principal, subject_guard) = match authenticated {
        Some(a) => (Some(a.principal), a.guard),
        None => (None, None),
    };
    let mut session = Session {
        id: state.next_session.fetch_add(1, Ordering::Relaxed),
        rate: TokenBucket::new(limits.publish_rate, limits.publish_burst),
        strikes: 0,
        principal,
        subject_guard,
        state: state.clone(),
        replies,
        fanout,
        kick: CancellationToken::new(),
        give_up: CancellationToken::new(),
        paced,
        lossy,
        subscriptions: HashMap::new(),
        inflight: FuturesUnordered::new(),
        inflight_ids: HashSet::new(),
    };
    let mut stream = stream;
    let end = session.serve(&mut stream).await;
    tracing::debug!(session = session.id, end = end.label(), "session ended");
    session.finish(end, writer, stream).await;
    metrics::connection_closed(end.label());
    drop(permit);
}

struct Session {
    id: u64,
    /// `None` until the socket authenticates.
    principal: Option<Principal>,
    subject_guard: Option<SubjectGuard>,
    rate: TokenBucket,
    /// Publishes refused in a row for the rate limit.
    strikes: u32,
    state: Arc<AppState>,
    replies: mpsc::Sender<Outbound>,
    fanout: mpsc::Sender<Utf8Bytes>,
    /// Cancelled by the hub when the fan-out queue is full.
    kick: CancellationToken,
    /// Cancelled when the shutdown grace runs out: in-flight publishes are
    /// then answered with `timeout`.
    give_up: CancellationToken,
    /// Replayed and shared-group records for this socket (see
    /// [`crate::kafka::replay`], [`crate::kafka::groups`]).
    paced: mpsc::Sender<PacedFrame>,
    /// Queue of the `drop_oldest` / `conflate` subscriptions.
    lossy: Arc<LossyQueue>,
    /// Topic → the subscription.
    subscriptions: HashMap<String, Subscription>,
    inflight: FuturesUnordered<PendingReply>,
    /// Ids of the publishes in `inflight`.
    inflight_ids: HashSet<String>,
}

impl Session {
    async fn serve(&mut self, stream: &mut SplitStream<WebSocket>) -> End {
        if self.principal.is_some() {
            if let Err(end) = self.welcome().await {
                return end;
            }
        }
        let idle = self.state.config.websocket.idle_timeout();
        let mut last_heard = Instant::now();
        let idle_timer = tokio::time::sleep(idle);
        let auth_timer = tokio::time::sleep(self.state.config.auth.auth_timeout());
        let expiry_timer = tokio::time::sleep_until(self.expiry());
        // Made once, not on every turn of the loop.
        let kicked = self.kick.clone().cancelled_owned();
        let shutdown = self.state.shutdown.clone().cancelled_owned();
        tokio::pin!(idle_timer, auth_timer, expiry_timer, kicked, shutdown);
        let mut armed_for = self.expires_at();
        loop {
            if self.expires_at() != armed_for {
                armed_for = self.expires_at();
                expiry_timer.as_mut().reset(self.expiry());
            }
            tokio::select! {
                biased;
                () = &mut kicked => return End::Close(CloseCode::SLOW_CONSUMER),
                () = &mut shutdown => return End::Shutdown,
                Some((id, reply)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.inflight_ids.remove(&id);
                    if let Err(end) = self.send(reply).await {
                        return end;
                    }
                }
                () = &mut auth_timer, if self.principal.is_none() => {
                    return End::Close(CloseCode::AUTH_TIMEOUT);
                }
                () = &mut expiry_timer, if armed_for.is_some() => {
                    return End::Close(CloseCode::TOKEN_EXPIRED);
                }
                () = &mut idle_timer => {
                    if last_heard.elapsed() >= idle {
                        return End::Close(CloseCode::IDLE_TIMEOUT);
                    }
                    idle_timer.as_mut().reset(last_heard + idle);
                }
                incoming = stream.next() => {
                    last_heard = Instant::now();
                    let result = match incoming {
                        None => Err(End::ClientGone),
                        Some(Err(e)) => Err(End::from_read_error(e)),
                        Some(Ok(Message::Text(text))) => self.handle_text(&text).await,
                        Some(Ok(Message::Binary(_))) => {
                            Err(End::Close(CloseCode::UNSUPPORTED_DATA))
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Ok(Message::Close(_))) => Err(End::ClientClosed),
                    };
                    if let Err(end) = result {
                        return end;
                    }
                }
            }
        }
    }

    fn expires_at(&self) -> Option<i64> {
        self.principal.as_ref().and_then(|p| p.expires_at)
    }

    /// When the socket's token runs out (plus leeway); far away without one.
    fn expiry(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let Some(expires_at) = self.expires_at() else {
            return far;
        };
        let leeway_ms = self.state.config.auth.leeway_secs as i64 * 1000;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let left = (expires_at + leeway_ms - now_ms).max(0) as u64;
        Instant::now() + Duration::from_millis(left)
    }

    async fn welcome(&mut self) -> Result<(), End> {
        let limits = &self.state.config.limits;
        let jwt = self.state.auth.mode() == AuthMode::Jwt;
        let principal = self.principal.as_ref();
        let welcome = ServerFrame::Welcome {
            protocol: ferry_protocol::PROTOCOL_VERSION,
            session: uuid::Uuid::new_v4().to_string(),
            node: self.state.node_id.clone(),
            limits: Limits {
                max_frame_bytes: limits.max_frame_bytes,
                max_inflight_publishes: limits.max_inflight_publishes,
                max_subscriptions: limits.max_subscriptions,
                publish_rate: Some(limits.publish_rate),
                publish_burst: Some(limits.publish_burst),
                max_connections_per_subject: jwt.then_some(limits.max_connections_per_subject),
            },
            subject: principal.filter(|_| jwt).map(|p| p.subject.clone()),
            expires_at: principal.and_then(|p| p.expires_at),
        };
        self.send(welcome).await
    }

    async fn handle_text(&mut self, text: &str) -> Result<(), End> {
        metrics::frame_received();
        let frame = match decode_client_frame(text) {
            Ok(frame) => frame,
            Err(err) => return self.send(request_error_frame(err)).await,
        };
        if let ClientFrame::Auth { id, token } = frame {
            return self.authenticate(id, &token).await;
        }
        if self.principal.is_none() {
            let err = GatewayError::Unauthorized("authenticate first: send an auth frame".into());
            return self.send(err.to_frame(Some(frame.id()))).await;
        }
        let reply = match frame {
            ClientFrame::Publish(publish) => {
                if let Err(e) = self.check_rate()? {
                    metrics::publish_failed(e.code().as_str());
                    e.to_frame(Some(&publish.id))
                } else {
                    match self.publish(&publish).await {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            metrics::publish_failed(e.code().as_str());
                            e.to_frame(Some(&publish.id))
                        }
                    }
                }
            }
            ClientFrame::Subscribe(request) => {
                let (id, topic) = (request.id.clone(), request.topic.clone());
                match self.subscribe(&request).await {
                    Ok((starts, gaps)) => {
                        let partitions =
                            starts.into_iter().map(|(p, o)| (p.to_string(), o)).collect();
                        self.send(ServerFrame::Subscribed { id, topic, partitions }).await?;
                        for gap in gaps {
                            self.send(gap).await?;
                        }
                        return Ok(());
                    }
                    Err(e) => e.to_frame(Some(&id)),
                }
            }
            ClientFrame::Unsubscribe { id, topic } => {
                self.unsubscribe(&topic);
                ServerFrame::Unsubscribed { id: Some(id), topic, reason: None }
            }
            ClientFrame::Ping { id } => ServerFrame::Pong { id },
            ClientFrame::Commit { id, topic, partition, offset } => {
                let group = self.subscriptions.get(&topic).and_then(|s| s.group.clone());
                let result = match group {
                    None => Err(GatewayError::BadRequest(format!(
                        "no group subscription to {topic:?} on this socket"
                    ))),
                    Some(group) => {
                        self.state.groups.commit(&group, &topic, self.id, partition, offset)
                    }
                };
                match (result, id) {
                    (Ok(()), None) => return Ok(()),
                    (Ok(()), Some(id)) => ServerFrame::Committed { id, topic, partition, offset },
                    (Err(e), id) => e.to_frame(id.as_deref()),
                }
            }
            ClientFrame::Auth { .. } => unreachable!("handled above"),
        };
        self.send(reply).await
    }

    /// The publish rate limit: `Ok(Err(_))` refuses this publish; `Err`
    /// closes a client that keeps going after `rate_limit_strikes` refusals.
    fn check_rate(&mut self) -> Result<Result<(), GatewayError>, End> {
        if self.rate.take() {
            self.strikes = 0;
            return Ok(Ok(()));
        }
        self.strikes += 1;
        let limits = &self.state.config.limits;
        if self.strikes >= limits.rate_limit_strikes {
            return Err(End::Close(CloseCode::RATE_LIMITED));
        }
        Ok(Err(GatewayError::RateLimited(limits.publish_rate)))
    }

    /// First authentication or in-band refresh.
    async fn authenticate(&mut self, id: Option<String>, token: &str) -> Result<(), End> {
        if self.state.auth.mode() == AuthMode::None {
            let err = GatewayError::BadRequest(
                "authentication is disabled (auth.mode = \"none\")".into(),
            );
            return self.send(err.to_frame(id.as_deref())).await;
        }
        let principal = match self.state.auth.verify(token).await {
            Ok(principal) => principal,
            Err(e) => {
                let err = GatewayError::Unauthorized(e.to_string());
                return self.send(err.to_frame(id.as_deref())).await;
            }
        };
        match &self.principal {
            None => {
                let max = self.state.config.limits.max_connections_per_subject;
                let Some(guard) = self.state.subjects.acquire(&principal.subject, max) else {
                    return Err(End::Close(CloseCode::TOO_MANY_CONNECTIONS));
                };
                self.subject_guard = Some(guard);
                self.principal = Some(principal);
                self.welcome().await
            }
            Some(current) if current.subject == principal.subject => {
                let expires_at = principal.expires_at;
                self.principal = Some(principal);
                self.send(ServerFrame::Authed { id, expires_at }).await?;
                self.drop_forbidden_subscriptions().await
            }
            Some(_) => Err(End::Close(CloseCode::SUBJECT_CHANGED)),
        }
    }

    /// After a refresh: subscriptions the new claims no longer allow end.
    async fn drop_forbidden_subscriptions(&mut self) -> Result<(), End> {
        let forbidden: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(topic, sub)| {
                !self.allowed(Action::Subscribe, topic)
                    || self.imposed_canonical(topic) != sub.imposed
            })
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in forbidden {
            self.unsubscribe(&topic);
            let reason = Some("forbidden".to_owned());
            self.send(ServerFrame::Unsubscribed { id: None, topic, reason }).await?;
        }
        Ok(())
    }

    fn subscribe_grant(&self, topic: &str) -> SubscribeGrantResult {
        let grant = match &self.principal {
            Some(p) => self.state.policy().subscribe_grant(p, topic),
            None => SubscribeGrantResult::Denied,
        };
        if grant == SubscribeGrantResult::Denied {
            metrics::forbidden(Action::Subscribe.as_str());
        }
        grant
    }

    /// The canonical form of the filter the ACL imposes on `topic` now.
    fn imposed_canonical(&self, topic: &str) -> Option<String> {
        match self.subscribe_grant(topic) {
            SubscribeGrantResult::Allowed { imposed: Some(f) } => Some(f.canonical()),
            _ => None,
        }
    }

    fn allowed(&self, action: Action, topic: &str) -> bool {
        let allowed = self.principal.as_ref().is_some_and(|p| self.state.allows(p, action, topic));
        if !allowed {
            metrics::forbidden(action.as_str());
        }
        allowed
    }

    /// Hands the record to Kafka; the reply comes later through `inflight`.
    async fn publish(&mut self, publish: &Publish<'_>) -> Result<(), GatewayError> {
        if !self.allowed(Action::Publish, &publish.topic) {
            return Err(GatewayError::Forbidden(format!(
                "not allowed to publish to {:?}",
                publish.topic
            )));
        }
        if self.inflight_ids.contains(&publish.id) {
            // A retry of a publish still awaiting Kafka: not produced twice;
            // the original's reply answers this id.
            return Ok(());
        }
        let max = self.state.config.limits.max_inflight_publishes;
        if self.inflight.len() >= max {
            return Err(GatewayError::Limit(format!(
                "{max} publishes are already awaiting Kafka on this connection"
            )));
        }
        let topics = &self.state.topics;
        let mut partitions = topics.partitions(&publish.topic).await?;
        if let Some(partition) = publish.partition.filter(|&p| p >= partitions) {
            partitions = topics.refresh(&publish.topic).await?;
            if partition >= partitions {
                return Err(GatewayError::BadRequest(format!(
                    "topic {:?} has {partitions} partitions; partition {partition} does not exist",
                    publish.topic
                )));
            }
        }
        let delivery = self.state.publisher.send(publish)?;
        let (id, topic) = (publish.id.clone(), publish.topic.clone());
        self.inflight_ids.insert(id.clone());
        let give_up = self.give_up.clone();
        self.inflight.push(Box::pin(async move {
            let outcome = tokio::select! {
                outcome = delivery => outcome,
                _ = give_up.cancelled() => Err(GatewayError::Timeout),
            };
            let reply = match outcome {
                Ok(stored) => ServerFrame::Ack {
                    id: id.clone(),
                    topic,
                    partition: stored.partition,
                    offset: stored.offset,
                },
                Err(e) => {
                    metrics::publish_failed(e.code().as_str());
                    e.to_frame(Some(&id))
                }
            };
            (id, reply)
        }));
        Ok(())
    }

    /// Subscribes from `from`; returns where each partition starts and any
    /// `gap` notices to send after `subscribed`.
    async fn subscribe(
        &mut self,
        request: &Subscribe,
    ) -> Result<(BTreeMap<i32, i64>, Vec<ServerFrame>), GatewayError> {
        let (topic, from) = (request.topic.as_str(), &request.from);
        let imposed = match self.subscribe_grant(topic) {
            SubscribeGrantResult::Denied => {
                return Err(GatewayError::Forbidden(format!(
                    "not allowed to subscribe to {topic:?}"
                )))
            }
            SubscribeGrantResult::Allowed { imposed } => imposed,
        };
        let requested = match &request.filter {
            None => None,
            Some(wire) => Some(
                Filter::parse(wire)
                    .map_err(|e| GatewayError::BadRequest(format!("bad filter: {e}")))?,
            ),
        };
        let filter = match (requested, imposed) {
            (None, None) => None,
            (Some(f), None) | (None, Some(f)) => Some(Arc::new(f)),
            (Some(asked), Some(imposed)) => Some(Arc::new(asked.and(imposed))),
        };
        if self.subscriptions.contains_key(topic) {
            return Err(GatewayError::BadRequest(format!(
                "already subscribed to {topic:?}; unsubscribe first to start elsewhere"
            )));
        }
        let max = self.state.config.limits.max_subscriptions;
        if self.subscriptions.len() >= max {
            return Err(GatewayError::Limit(format!(
                "this connection already has {max} subscriptions"
            )));
        }
        let partitions = self.state.topics.partitions(topic).await?;
        let (handle, starts, gaps) = match (&request.group, from) {
            (Some(group), _) => {
                if !self.allowed(Action::Group, group) {
                    return Err(GatewayError::Forbidden(format!(
                        "not allowed to join group {group:?}"
                    )));
                }
                let member = Member {
                    session: self.id,
                    ack: request.ack,
                    queue: self.paced.clone(),
                    filter: filter.clone(),
                };
                self.state.groups.join(group, topic, from, member).await?;
                (None, BTreeMap::new(), Vec::new())
            }
            (None, StartFrom::Latest) => {
                let subscriber = Subscriber {
                    session: self.id,
                    topic: topic.into(),
                    overflow: request.overflow,
                    queue: self.fanout.clone(),
                    lossy: self.lossy.clone(),
                    kick: self.kick.clone(),
                    filter: filter.clone(),
                };
                self.state.fanout.subscribe(topic, partitions, subscriber).await?;
                // Read after the subscription is live: every record at or
                // past these offsets will arrive.
                (None, self.state.fanout.live_starts(topic), Vec::new())
            }
            (None, _) => {
                let replay = self.paced.clone();
                let started = self
                    .state
                    .replays
                    .start(topic, partitions, from, filter.clone(), replay)
                    .await?;
                (Some(started.handle), started.starts, started.gaps)
            }
        };
        let imposed = self.imposed_canonical(topic);
        let group = request.group.clone();
        self.subscriptions
            .insert(topic.to_owned(), Subscription { replay: handle, group, imposed });
        metrics::subscriptions_changed(1.0);
        Ok((starts, gaps))
    }

    fn unsubscribe(&mut self, topic: &str) {
        match self.subscriptions.remove(topic) {
            Some(Subscription { group: Some(group), .. }) => {
                self.state.groups.leave(&group, topic, self.id)
            }
            Some(Subscription { replay: None, .. }) => {
                self.state.fanout.unsubscribe(topic, self.id)
            }
            Some(Subscription { replay: Some(_), .. }) => {} // dropping it stops the replay
            None => return,
        }
        metrics::subscriptions_changed(-1.0);
    }

    async fn send(&mut self, frame: ServerFrame) -> Result<(), End> {
        let text = Utf8Bytes::from(frame.encode());
        self.replies.send(Outbound::Frame(text)).await.map_err(|_| End::WriterGone)
    }

    /// Leaves every topic, answers what must be answered, closes the socket.
    async fn finish(
        mut self,
        end: End,
        writer: tokio::task::JoinHandle<()>,
        mut stream: SplitStream<WebSocket>,
    ) {
        let topics: Vec<String> = self.subscriptions.keys().cloned().collect();
        for topic in topics {
            self.unsubscribe(&topic);
        }
        let close = match end {
            End::Shutdown => {
                self.drain_inflight().await;
                Some(CloseCode::GOING_AWAY)
            }
            End::Close(code) => {
                if code == CloseCode::SLOW_CONSUMER {
                    metrics::slow_consumer();
                }
                Some(code)
            }
            End::ClientClosed => {
                // The socket queued the echo of the client's close frame
                // itself; the writer only has to flush it.
                let _ = self.replies.try_send(Outbound::Finish);
                None
            }
            End::ClientGone | End::WriterGone => None,
        };
        if let Some(code) = close {
            // The writer may be stuck on a socket that does not read; the
            // close frame is best effort and the wait below is bounded.
            let _ = self.replies.try_send(Outbound::Close(code));
        }
        drop(self);
        let abort = writer.abort_handle();
        if tokio::time::timeout(CLOSE_WAIT, writer).await.is_err() {
            abort.abort();
        }
        if close.is_some() {
            // Complete the close handshake: read (and drop) what the client
            // still sends until its close frame. Dropping a socket with
            // unread input makes the kernel reset the connection, which can
            // discard our last frames before the client reads them.
            let drain = async {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
        }
    }

    /// Shutdown: every in-flight publish gets its `ack` or `error`, waiting
    /// at most the shutdown grace for Kafka.
    async fn drain_inflight(&mut self) {
        let deadline = Instant::now() + self.state.config.shutdown_grace();
        loop {
            let next = if self.give_up.is_cancelled() {
                self.inflight.next().await
            } else {
                match tokio::time::timeout_at(deadline, self.inflight.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.give_up.cancel();
                        continue;
                    }
                }
            };
            let Some((_, reply)) = next else { break };
            if self.send(reply).await.is_err() {
                return;
            }
        }
    }
}
