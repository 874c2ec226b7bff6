//! One client connection.
//!
//! The session task reads frames and owns the connection's state (its
//! subscriptions and in-flight publishes); a [`writer`] task owns the sink.
//! They talk through the socket's [`Outlet`]: one bounded queue that holds
//! the replies (room for every in-flight publish's answer) and the records
//! of every delivery path (see [`crate::outlet`] for the policies when it
//! is full; a full `disconnect` queue closes the socket with 4000).
//!
//! Requests that wait on Kafka (a subscribe, the topic look-up before a
//! publish to a topic the node has not seen recently) run as futures beside
//! the read loop, so a socket keeps answering its other requests meanwhile.
//! A publish's delivery is answered by the producer's delivery callback,
//! straight into the outlet (see `publish.rs`). Each is bounded
//! (`limits.request_timeout_ms`, or `kafka.message_timeout_ms` for a
//! delivery) and answered exactly once. Publishes to one topic are
//! produced in the order they arrived.
//!
//! Files: `mod.rs` (the connection: read loop, replies), `close.rs` (how it
//! ends: answers before the close, the close handshake),
//! `auth.rs` (welcome, authentication and refresh, ACL checks),
//! `publish.rs` and `subscribe.rs` (the commands), [`writer`] (the
//! socket's only writer). The limits and checks it applies are the node's
//! ([`crate::node`]).

mod auth;
mod close;
mod publish;
mod subscribe;
pub mod writer;

use publish::{Accepted, Awaiting, Rate};
use subscribe::{Opening, SubscribeDone, Subscriptions};

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use ferry_protocol::{decode_client_frame, ClientFrame, CloseCode, Publish, ServerFrame};
use futures::stream::{FuturesUnordered, SplitStream};
use futures::{Future, Sink, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::auth::Principal;
use crate::error::{request_error_frame, GatewayError};
use crate::metrics;
use crate::node::limits::{SubjectGuard, TokenBucket};
use crate::node::registry::Transport;
use crate::node::Node;
use crate::outlet::{Outlet, Replies, TrySendError};
use writer::WriterConfig;

/// Replies beyond the in-flight publishes the reply queue has room for
/// (subscribe answers, pongs, errors).
const REPLY_SLACK: usize = 64;

/// How long a closing session waits for its writer to send the close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A subscribe waiting on Kafka.
type PendingSubscribe = Pin<Box<dyn Future<Output = SubscribeDone> + Send>>;

/// The look-up of a topic that publishes to it wait for.
type PendingLookup = Pin<Box<dyn Future<Output = (String, Result<i32, GatewayError>)> + Send>>;

/// What is left to do for a client frame once it was handled.
enum Step {
    Done,
    /// The encoded reply.
    Reply(Utf8Bytes),
    Authenticate {
        id: Option<String>,
        token: String,
    },
    /// The encoded reply, then the session ends.
    ReplyThenEnd(Utf8Bytes, End),
    /// A publish to produce once its reply has room (boxed: rare, and
    /// large beside the other steps).
    Produce(Box<Publish<'static>>),
}

impl Step {
    fn reply(frame: ServerFrame) -> Self {
        Self::Reply(Utf8Bytes::from(frame.encode()))
    }
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
        use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
        let inner = err.into_inner();
        match inner.downcast_ref::<WsError>() {
            // The TCP connection ended without a close frame: the client
            // vanished (a closed tab, a lost network), it broke no rule.
            Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                Self::ClientGone
            }
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

/// What a session reads frames from and writes them to: an upgraded
/// WebSocket, or any stream and sink of messages (the unit tests drive a
/// session through channels).
pub trait Socket:
    Stream<Item = Result<Message, axum::Error>>
    + Sink<Message, Error = axum::Error>
    + Send
    + Unpin
    + 'static
{
}

impl<S> Socket for S where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Send
        + Unpin
        + 'static
{
}

/// Serves one upgraded WebSocket until it closes; `id` names the socket in
/// the gateway's logs and Kafka bookkeeping. Without `authenticated` the
/// socket must send an `auth` frame within the auth timeout.
///
/// Sets the session up at once (and spawns its writer); the future it
/// returns holds only what the session needs while it runs, since an idle
/// socket's memory is mostly its task.
pub fn run<S: Socket>(
    socket: S,
    context: Arc<Node>,
    id: u64,
    permit: OwnedSemaphorePermit,
    authenticated: Option<Authenticated>,
) -> impl Future<Output = ()> + Send {
    metrics::connection_opened();
    let limits = &context.config.limits;
    let (sink, stream) = socket.split();
    // The one signal the read loop waits on besides the socket: the
    // gateway shuts down, the socket is kicked for being too slow, or the
    // writer stopped (a write failed or timed out). `stopped` tells which.
    let stop = context.shutdown.child_token();
    let (outlet, drain) = Outlet::new(limits.outbound_queue, limits.replay_queue, stop);
    // An operator (the admin API, a drain) closes the socket through its
    // outlet ([`Outlet::close_with`]).
    context.registry.register(id, Transport::Websocket, &outlet);
    let replies = outlet.replies(limits.max_inflight_publishes + REPLY_SLACK);
    let ws = &context.config.websocket;
    let writer_config = WriterConfig {
        ping_interval: ws.ping_interval(),
        write_timeout: ws.write_timeout(),
        coalesce: ws.write_coalesce(),
    };
    let writer = tokio::spawn(writer::run(sink, drain, writer_config));

    let (principal, subject_guard) = match authenticated {
        Some(a) => (Some(a.principal), a.guard),
        None => (None, None),
    };
    if let Some(principal) = &principal {
        context.registry.identify(id, principal);
    }
    let mut session = Session {
        id,
        rate: TokenBucket::new(limits.publish_rate, limits.publish_burst),
        strikes: 0,
        principal,
        subject_guard,
        context: context.clone(),
        replies,
        outlet,
        subscriptions: Subscriptions::default(),
        openings: HashMap::new(),
        subscribing: FuturesUnordered::new(),
        awaiting: None,
        waiting: HashMap::new(),
        lookups: FuturesUnordered::new(),
    };
    async move {
        let mut stream = stream;
        let end = session.serve(&mut stream).await;
        tracing::debug!(session = session.id, end = end.label(), "session ended");
        // Boxed, like every rare step: only what an idle socket waits in
        // stays in its task.
        Box::pin(session.finish(end, writer, stream)).await;
        metrics::connection_closed(end.label());
        drop(permit);
    }
}

struct Session {
    id: u64,
    /// `None` until the socket authenticates.
    principal: Option<Principal>,
    subject_guard: Option<SubjectGuard>,
    rate: TokenBucket,
    /// Publishes refused in a row for the rate limit.
    strikes: u32,
    context: Arc<Node>,
    replies: Replies,
    /// The queues every delivery path fills for this socket; its `stop`
    /// token ends the read loop (see [`Session::stopped`]).
    outlet: Outlet,
    /// Topic → the subscription.
    subscriptions: Subscriptions,
    /// Topic → the subscribe waiting on Kafka for it.
    openings: HashMap<String, Opening>,
    subscribing: FuturesUnordered<PendingSubscribe>,
    /// Ids of the publishes not answered yet (in Kafka's hands, or in
    /// `waiting`), shared with the delivery callbacks that answer them;
    /// made on the first publish ([`Session::awaiting`]).
    awaiting: Option<Arc<Awaiting>>,
    /// Topic → publishes waiting for its look-up, in arrival order.
    waiting: HashMap<String, VecDeque<Publish<'static>>>,
    lookups: FuturesUnordered<PendingLookup>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Off the node's registry (a field-less guard: an idle socket pays
        // nothing for it).
        self.context.registry.remove(self.id);
    }
}

impl Session {
    async fn serve<S: Socket>(&mut self, stream: &mut SplitStream<S>) -> End {
        if self.principal.is_some() {
            if let Err(end) = Box::pin(self.welcome()).await {
                return end;
            }
        }
        let idle = self.context.config.websocket.idle_timeout();
        let mut last_heard = Instant::now();
        let idle_timer = tokio::time::sleep(idle);
        // One timer for the socket's deadline: the auth timeout until it
        // authenticates, then its token's expiry (one timer less in every
        // socket's task).
        let deadline = match self.principal {
            None => Instant::now() + self.context.auth_timeout(),
            Some(_) => self.expiry(),
        };
        let deadline_timer = tokio::time::sleep_until(deadline);
        // Made once, not on every turn of the loop.
        let stop = self.outlet.stop().clone().cancelled_owned();
        tokio::pin!(idle_timer, deadline_timer, stop);
        let mut armed_for = (self.principal.is_some(), self.expires_at());
        loop {
            let now_for = (self.principal.is_some(), self.expires_at());
            if now_for != armed_for {
                armed_for = now_for;
                deadline_timer.as_mut().reset(self.expiry());
            }
            tokio::select! {
                biased;
                () = &mut stop => return self.stopped(),
                Some(done) = self.subscribing.next(), if !self.subscribing.is_empty() => {
                    if let Err(end) = Box::pin(self.subscribe_done(done)).await {
                        return end;
                    }
                }
                Some((topic, found)) = self.lookups.next(), if !self.lookups.is_empty() => {
                    if let Err(end) = Box::pin(self.lookup_done(&topic, found)).await {
                        return end;
                    }
                }
                () = &mut deadline_timer => {
                    return End::Close(match self.principal {
                        None => CloseCode::AUTH_TIMEOUT,
                        Some(_) => CloseCode::TOKEN_EXPIRED,
                    });
                }
                // Before the idle timer: frames that queued up while the
                // loop was busy count as heard.
                incoming = stream.next() => {
                    last_heard = Instant::now();
                    let result = match incoming {
                        None => Err(End::ClientGone),
                        Some(Err(e)) => Err(End::from_read_error(e)),
                        Some(Ok(Message::Text(text))) => match self.handle_text(&text) {
                            Ok(step) => self.finish_step(step).await,
                            Err(end) => Err(end),
                        },
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
                () = &mut idle_timer => {
                    if last_heard.elapsed() >= idle {
                        return End::Close(CloseCode::IDLE_TIMEOUT);
                    }
                    idle_timer.as_mut().reset(last_heard + idle);
                }
            }
        }
    }

    /// Why the outlet's `stop` token was cancelled.
    fn stopped(&self) -> End {
        if let Some(code) = self.outlet.closing() {
            End::Close(code)
        } else if self.outlet.was_kicked() {
            End::Close(CloseCode::SLOW_CONSUMER)
        } else if self.outlet.writer_gone() {
            End::WriterGone
        } else {
            End::Shutdown
        }
    }

    /// Decodes and carries out one client frame. Synchronous, so that the
    /// read loop's task stays small: what must wait (the reply's room, a
    /// token check) is returned for the loop to do.
    fn handle_text(&mut self, text: &str) -> Result<Step, End> {
        metrics::frame_received();
        let frame = match decode_client_frame(text) {
            Ok(frame) => frame,
            Err(err) => return Ok(Step::reply(request_error_frame(err))),
        };
        if let ClientFrame::Auth { id, token } = frame {
            return Ok(Step::Authenticate { id, token });
        }
        if self.principal.is_none() {
            let err = GatewayError::Unauthorized("authenticate first: send an auth frame".into());
            return Ok(Step::reply(err.to_frame(Some(frame.id()))));
        }
        let reply = match frame {
            ClientFrame::Publish(publish) => {
                // One clock reading for the publish's checks and its latency.
                let now = std::time::Instant::now();
                match self.check_rate(now) {
                    Rate::Allowed => match self.publish(publish, now) {
                        Ok(Accepted::Done) => return Ok(Step::Done),
                        Ok(Accepted::NeedsRoom(publish)) => {
                            return Ok(Step::Produce(Box::new(publish)))
                        }
                        Err((id, e)) => {
                            metrics::publish_failed(e.code().as_str());
                            e.to_frame(Some(&id))
                        }
                    },
                    Rate::Refused(e) => {
                        metrics::publish_failed(e.code().as_str());
                        e.to_frame(Some(&publish.id))
                    }
                    Rate::Close(e) => {
                        // This publish is answered too, before the close frame.
                        metrics::publish_failed(e.code().as_str());
                        let reply = Utf8Bytes::from(e.to_frame(Some(&publish.id)).encode());
                        return Ok(Step::ReplyThenEnd(reply, End::Close(CloseCode::RATE_LIMITED)));
                    }
                }
            }
            ClientFrame::Subscribe(request) => match self.subscribe(&request) {
                Ok(()) => return Ok(Step::Done),
                Err(e) => e.to_frame(Some(&request.id)),
            },
            ClientFrame::Unsubscribe { id, topic } => {
                self.unsubscribe(&topic);
                ServerFrame::Unsubscribed { id: Some(id), topic, reason: None }
            }
            ClientFrame::Ping { id } => ServerFrame::Pong { id },
            ClientFrame::Commit { id, topic, partition, offset } => {
                let group = self.subscriptions.get(&topic).and_then(|s| s.held.group());
                let group = group.map(str::to_owned);
                let result = match group {
                    None => Err(GatewayError::BadRequest(format!(
                        "no group subscription to {topic:?} on this socket"
                    ))),
                    Some(group) => self
                        .context
                        .routes
                        .groups
                        .commit(&group, &topic, self.id, partition, offset),
                };
                match (result, id) {
                    (Ok(()), None) => return Ok(Step::Done),
                    (Ok(()), Some(id)) => ServerFrame::Committed { id, topic, partition, offset },
                    (Err(e), id) => e.to_frame(id.as_deref()),
                }
            }
            ClientFrame::Auth { .. } => unreachable!("handled above"),
        };
        Ok(Step::reply(reply))
    }

    /// Does what [`Session::handle_text`] left to do.
    async fn finish_step(&mut self, step: Step) -> Result<(), End> {
        match step {
            Step::Done => Ok(()),
            Step::Reply(text) => self.send_text(text).await,
            Step::ReplyThenEnd(text, end) => {
                self.send_text(text).await?;
                Err(end)
            }
            // Boxed: rare (the client does not read its answers).
            Step::Produce(publish) => Box::pin(self.produce_when_room(&publish)).await,
            // Boxed: a rare, large future (the token check) that would
            // otherwise take room in every idle socket's task.
            Step::Authenticate { id, token } => Box::pin(self.authenticate(id, &token)).await,
        }
    }

    /// Queues a reply (see [`Session::send_text`]). Not an `async fn`: the
    /// frame is encoded before the wait, so the future does not hold it.
    fn send(&mut self, frame: ServerFrame) -> impl Future<Output = Result<(), End>> + '_ {
        self.send_text(Utf8Bytes::from(frame.encode()))
    }

    /// Queues a reply, waiting for room while the client does not read its
    /// answers. The wait is rare and boxed, so that the futures that send
    /// (and the read loop holding them) stay small.
    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), End> {
        match self.replies.try_send(text) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(text)) => {
                Box::pin(self.replies.send(text)).await.map_err(|_| End::WriterGone)
            }
            Err(TrySendError::Gone) => Err(End::WriterGone),
        }
    }
}

#[cfg(test)]
mod tests;
