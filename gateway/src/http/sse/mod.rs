//! `GET /sse?topic=A&topic=B[&from=..][&filter=..]`: a subscription as a
//! Server-Sent Events stream, for clients that cannot open a WebSocket
//! (proxies that break them, read-only dashboards).
//!
//! The request is checked like a socket `subscribe` per topic (the same
//! decoder, ACL with its imposed filters, `limits.max_subscriptions`
//! topics at most) and counts as a connection (`limits.max_connections`,
//! `limits.max_connections_per_subject`). Refusals are HTTP statuses with a
//! JSON body: 400, 401, 403, 429, 503.
//!
//! Events, in order:
//!
//! - `event: subscribed`, data `{"topics":{"A":{"0":12,...}}}`: where each
//!   partition starts;
//! - `event: gap`, data the protocol's `gap` frame, for a resume position
//!   lost to retention;
//! - `event: message`, data the protocol's `message` frame, byte for byte;
//! - `event: close`, data `{"reason":..}`, best effort, as the stream ends
//!   (`slow_consumer`, `token_expired`, `going_away`).
//!
//! Every `subscribed` and `message` event carries an `id:`, the resume
//! token ([`crate::resume`]): the next offset of every partition of every
//! topic. A browser `EventSource` that reconnects sends it back as
//! `Last-Event-ID` (a client that builds a new stream passes `resume=`):
//! each topic in it is then read from exactly those offsets (a replay), on
//! any node, with no gap and no duplicate. Comment lines are heartbeats
//! (`sse.heartbeat_ms`).
//!
//! Delivery is the socket's: the live fan-out or a catch-up fills an
//! [`Outlet`], and the stream's task moves each record from the outlet's
//! batch into a small bounded hand-off that the response body reads; the
//! record's position for the resume token is read from the front of its
//! frame, not by parsing it. The policy for a slow reader is the socket's
//! `disconnect`: when the outlet overflows, or an event waits longer than
//! `websocket.write_timeout_ms` for the body to take it, the stream ends
//! (the client resumes). The hand-off is what lets a stream whose reader
//! stopped reading end and give back its subscriptions, even while the
//! connection itself is stuck writing.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use ferry_protocol::{AckMode, MessageFrame, Overflow, ServerFrame, StartFrom};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod query;

use query::{bad, check_topics, parse_query, refusal_of, Refused};

use super::caller::{self, Refusal, TokenSources};
use super::server::HandshakeSlot;
use crate::auth::Principal;
use crate::delivery::{self, Held};
use crate::metrics;
use crate::node::limits::SubjectGuard;
use crate::node::registry::Transport;
use crate::node::Node;
use crate::outlet::{Drain, Item, Outlet, PacedFrame, Taken};
use crate::resume::Positions;
use crate::tables::is_snapshot_frame;

/// Events waiting for the response body to take them.
const EVENT_BUFFER: usize = 64;

/// Most records taken from the outlet at once.
const TAKE: usize = 64;

/// `GET /sse`.
pub(super) async fn stream(
    State(state): State<Arc<Node>>,
    slot: Option<Extension<HandshakeSlot>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut response = match open(&state, &headers, query.as_deref().unwrap_or_default()).await {
        Ok(response) => {
            // A stream counts as a connection (its permit), no longer as a
            // connection in the handshake.
            if let Some(Extension(slot)) = slot {
                slot.release();
            }
            response
        }
        Err((reason, refusal)) => {
            metrics::sse_rejected(reason);
            refusal.into_response()
        }
    };
    caller::allow_origin(&state, &headers, &mut response);
    response
}

async fn open(state: &Arc<Node>, headers: &HeaderMap, query: &str) -> Result<Response, Refused> {
    if let Err((reason, why)) = state.accepting() {
        let e = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
        return Err((reason, e.retry_after(1)));
    }
    caller::check_origin(state, headers).map_err(|e| ("origin", e))?;
    let request = parse_query(query)?;
    let sse = &state.config.sse;
    let sources = TokenSources {
        query: sse.allow_query_token.then_some("access_token"),
        cookie: sse.token_cookie.as_deref(),
    };
    let principal = caller::principal(state, headers, &request.query, sources)
        .await
        .map_err(|e| ("unauthorized", e))?;
    let wanted = check_topics(state, &principal, &request)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .or(request.resume.as_deref());
    let resume = match resume {
        None => None,
        Some(token) => Some(Positions::decode(token).map_err(|e| bad(e.to_string()))?),
    };
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        let e =
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "too many connections");
        return Err(("max_connections", e.retry_after(1)));
    };
    let guard = state.count_connection(&principal).map_err(|e| {
        let refused = Refusal::of(&e);
        ("max_connections_per_subject", refused)
    })?;

    let session = state.next_session.fetch_add(1, Ordering::Relaxed);
    let limits = &state.config.limits;
    let (outlet, drain) =
        Outlet::new(limits.outbound_queue, limits.replay_queue, CancellationToken::new());
    state.registry.register(session, Transport::Sse, &outlet);
    state.registry.identify(session, &principal);
    // What the stream holds on the delivery path; dropping it lets go.
    let mut held = Vec::new();
    let mut positions = Positions::new();
    let mut gaps = Vec::new();
    for want in wanted {
        let from = match resume.as_ref().and_then(|r| r.topic(&want.topic)) {
            Some(offsets) => StartFrom::Offsets(offsets.clone()),
            None => want.from,
        };
        let request = delivery::Request {
            session,
            topic: want.topic.clone(),
            from,
            group: None,
            ack: AckMode::Auto,
            overflow: Overflow::Disconnect,
            throttle: want.throttle,
            filter: want.filter,
            outlet: outlet.clone(),
        };
        match state.open_subscription(request).await {
            Ok(opened) => {
                state.registry.subscribed(session, &want.topic);
                positions.start(&want.topic, &opened.starts);
                gaps.extend(opened.gaps);
                held.push(opened.held);
                // Its frames wait in the outlet until the stream has sent
                // its opening events.
                if let Some(prelude) = opened.prelude {
                    prelude.start();
                }
            }
            Err(e) => return Err(refusal_of(&e)),
        }
    }

    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let expires_at = expiry(state, &principal);
    let stream = Stream {
        state: state.clone(),
        session,
        _held: held,
        outlet,
        drain,
        positions,
        tx,
        expires_at,
        _permit: permit,
        _guard: guard,
    };
    let first = stream.opening_events(gaps);
    state.sessions.spawn(stream.run(first));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok::<Event, Infallible>(event), rx))
    });
    let keep_alive = KeepAlive::new().interval(sse.heartbeat());
    let mut response = Sse::new(body).keep_alive(keep_alive).into_response();
    // Reverse proxies (nginx) must not buffer the stream.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// When the caller's token runs out (plus leeway).
fn expiry(state: &Node, principal: &Principal) -> Option<Instant> {
    let expires_at = principal.expires_at?;
    let leeway_ms = state.config.auth.leeway_secs as i64 * 1000;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let left = (expires_at + leeway_ms - now_ms).max(0) as u64;
    Some(Instant::now() + Duration::from_millis(left))
}

/// The `topic`, `partition` and `offset` of an encoded `message` frame.
#[derive(Deserialize)]
struct Position<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    partition: i32,
    offset: i64,
}

/// One open stream: moves its outlet's frames into the response body.
struct Stream {
    state: Arc<Node>,
    session: u64,
    /// Its subscriptions; dropping them takes the stream off their routes.
    _held: Vec<Held>,
    outlet: Outlet,
    drain: Drain,
    positions: Positions,
    tx: mpsc::Sender<Event>,
    expires_at: Option<Instant>,
    _permit: OwnedSemaphorePermit,
    _guard: Option<SubjectGuard>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.state.registry.remove(self.session);
    }
}

impl Stream {
    fn opening_events(&self, gaps: Vec<ServerFrame>) -> Vec<Event> {
        let mut topics = serde_json::Map::new();
        for topic in self.positions.topics() {
            if let Some(starts) = self.positions.topic(topic) {
                let starts: serde_json::Map<String, Value> =
                    starts.iter().map(|(p, o)| (p.to_string(), json!(o))).collect();
                topics.insert(topic.to_owned(), Value::Object(starts));
            }
        }
        let subscribed = Event::default()
            .event("subscribed")
            .id(self.positions.encode())
            .retry(self.state.config.sse.retry())
            .data(json!({ "topics": topics }).to_string());
        let gaps = gaps.into_iter().map(|gap| Event::default().event("gap").data(gap.encode()));
        std::iter::once(subscribed).chain(gaps).collect()
    }

    async fn run(mut self, first: Vec<Event>) {
        let topics = self.positions.topics().count() as f64;
        metrics::sse_opened();
        metrics::subscriptions_changed(topics);
        let reason = self.serve(first).await;
        if reason != "client_gone" && reason != "write_timeout" {
            let close =
                Event::default().event("close").data(json!({ "reason": reason }).to_string());
            let _ = self.tx.try_send(close);
        }
        tracing::debug!(session = self.session, reason, "SSE stream ended");
        metrics::subscriptions_changed(-topics);
        metrics::sse_closed(reason);
    }

    /// Runs until the stream ends; returns why. Each record goes from the
    /// outlet's batch straight to the body's bounded hand-off, under the
    /// write timeout.
    async fn serve(&mut self, first: Vec<Event>) -> &'static str {
        let write_timeout = self.state.config.websocket.write_timeout();
        // Cancelled when the stream is kicked (it holds the drain itself),
        // or an operator closes it (the outlet says with which code).
        let kicked = self.outlet.stop().clone().cancelled_owned();
        let outlet = self.outlet.clone();
        let stopped = move || outlet.closing().map_or("slow_consumer", |code| code.reason());
        let shutdown = self.state.shutdown.clone().cancelled_owned();
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let expiry = tokio::time::sleep_until(self.expires_at.unwrap_or(far));
        tokio::pin!(kicked, shutdown, expiry);
        // The opening events, then each record of the outlet's batches.
        let mut opening = first.into_iter();
        let mut records = Vec::new().into_iter();
        loop {
            let (event, is_record) = if let Some(event) = opening.next() {
                (event, false)
            } else if let Some(item) = records.next() {
                // A stream has records only: no replies, no lossy policy.
                let (Item::Frame(frame) | Item::Paced(PacedFrame { frame, .. })) = item else {
                    continue;
                };
                (self.message(frame.as_str()), true)
            } else {
                let mut batch = Vec::new();
                let taken = self.drain.take(TAKE, &mut batch);
                if batch.is_empty() {
                    // A throttled record held back is due then.
                    let release = match taken {
                        Taken::More(Some(at)) => at,
                        _ => far,
                    };
                    tokio::select! {
                        biased;
                        () = &mut kicked => return stopped(),
                        () = &mut shutdown => return "going_away",
                        () = &mut expiry => return "token_expired",
                        () = self.tx.closed() => return "client_gone",
                        () = self.drain.ready() => {}
                        () = tokio::time::sleep_until(release) => {}
                    }
                }
                records = batch.into_iter();
                continue;
            };
            tokio::select! {
                biased;
                () = &mut kicked => return stopped(),
                () = &mut shutdown => return "going_away",
                () = &mut expiry => return "token_expired",
                sent = tokio::time::timeout(write_timeout, self.tx.send(event)) => match sent {
                    Ok(Ok(())) if is_record => metrics::sse_events(1),
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "client_gone",
                    Err(_) => return "write_timeout",
                },
            }
        }
    }

    /// The `message` event of an encoded frame, with the token that
    /// includes it.
    fn message(&mut self, frame: &str) -> Event {
        if frame.starts_with(r#"{"type":"snapshot_end""#) {
            // The positions the live records start from are the stream's
            // since `subscribed`.
            return Event::default().event("snapshot_end").id(self.positions.encode()).data(frame);
        }
        if frame.starts_with(r#"{"type":"unsubscribed""#) {
            return Event::default().event("unsubscribed").data(frame);
        }
        // A snapshot's records are older than where the stream resumes:
        // they leave its positions as they are.
        if !is_snapshot_frame(frame) {
            match position(frame) {
                Some((topic, partition, offset)) => {
                    self.positions.delivered(&topic, partition, offset)
                }
                None => tracing::error!("a message frame without its position"),
            }
        }
        // JSON allows a raw CR only as whitespace: dropping it changes
        // nothing, and SSE would read it as a line break.
        let data: Cow<'_, str> =
            if frame.contains('\r') { frame.replace('\r', "").into() } else { frame.into() };
        Event::default().event("message").id(self.positions.encode()).data(data)
    }
}

/// Where a `message` frame's record is: read from the frame's front (as
/// the gateway encodes it), else from the whole frame.
fn position(frame: &str) -> Option<(Cow<'_, str>, i32, i64)> {
    if let Some((topic, partition, offset)) = MessageFrame::position(frame) {
        return Some((Cow::Borrowed(topic), partition, offset));
    }
    let at = serde_json::from_str::<Position<'_>>(frame).ok()?;
    Some((at.topic, at.partition, at.offset))
}
