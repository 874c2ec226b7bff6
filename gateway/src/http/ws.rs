//! The WebSocket upgrade: subprotocol and origin checks, connection limits,
//! the token from the request (header, or query when enabled), frame limits
//! and small socket buffers; then the session takes over. Every refusal is
//! an HTTP status of [`UpgradeRefusal`] with a one-line body.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use ferry_protocol::{UpgradeRefusal, SUBPROTOCOL};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::deflate::{self, Door};
use crate::auth::{AuthMode, Principal};
use crate::node::Node;
use crate::session::Authenticated;
use crate::{metrics, session};

/// Read buffer per socket; it grows only for frames that need more. Small,
/// since client frames are small and idle sockets are many.
const READ_BUFFER: usize = 1024;
/// Bytes gathered before a write reaches the socket (flushes write sooner).
/// The buffer keeps the room it grew to for as long as the socket lives, so
/// this sets what a socket that once took a burst (a catch-up, a spike)
/// keeps holding: a little more than this plus one frame, rounded up as the
/// buffer doubles (2.7 KiB with 350-byte frames; a 16 KiB setting kept
/// 22 KiB). A write of the live fan-out carries one or two frames anyway; a
/// burst takes a write per 2 KiB, which costs little beside the bytes.
const WRITE_BUFFER: usize = 2 * 1024;
/// A socket whose unsent bytes pass this is failed rather than buffered.
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

fn refuse(refusal: UpgradeRefusal, reason: &'static str, text: String) -> Response {
    metrics::connection_rejected(reason);
    let status = StatusCode::from_u16(refusal.status()).expect("refusal statuses are valid");
    (status, text + "\n").into_response()
}

pub(super) async fn upgrade(
    State(state): State<Arc<Node>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    door: Door,
) -> Response {
    if let Err((reason, why)) = state.accepting() {
        return refuse(UpgradeRefusal::Unavailable, reason, why);
    }
    let offered = offered_subprotocols(&headers);
    if !offered.is_empty() && !offered.contains(&SUBPROTOCOL) {
        return refuse(
            UpgradeRefusal::UnsupportedSubprotocol,
            "subprotocol",
            format!(
                "unsupported subprotocol: offered {}; this gateway speaks {SUBPROTOCOL}",
                offered.join(", ")
            ),
        );
    }
    if !origin_allowed(&state, &headers) {
        return refuse(UpgradeRefusal::OriginForbidden, "origin", "origin not allowed".into());
    }
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return refuse(
            UpgradeRefusal::Unavailable,
            "max_connections",
            "too many connections".into(),
        );
    };
    let authenticated = match state.auth.mode() {
        AuthMode::None => Some(Authenticated { principal: Principal::anonymous(), guard: None }),
        AuthMode::Jwt => match request_token(&state, &headers, &query) {
            None => None,
            Some(token) => match state.authenticate(token).await {
                Err(e) => {
                    return refuse(UpgradeRefusal::Unauthorized, "unauthorized", e.to_string())
                }
                Ok(principal) => match state.count_connection(&principal) {
                    Ok(guard) => Some(Authenticated { principal, guard }),
                    Err(e) => {
                        return refuse(
                            UpgradeRefusal::TooManyForSubject,
                            "max_connections_per_subject",
                            e.to_string(),
                        )
                    }
                },
            },
        },
    };
    let max_frame = state.config.limits.max_frame_bytes;
    let (node, id) = (state.clone(), state.next_session.fetch_add(1, Ordering::Relaxed));
    // Counts as a session from the 101 on: a shutdown that comes before the
    // session starts still waits for it to say goodbye (1001), rather than
    // ending the process under a client that believes it is connected.
    let pending = state.sessions.token();
    match door {
        Door::Plain(ws) => ws
            .protocols([SUBPROTOCOL])
            .max_message_size(max_frame)
            .max_frame_size(max_frame)
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_write_buffer_size(MAX_WRITE_BUFFER)
            .on_upgrade(move |socket| start(socket, node, id, permit, authenticated, pending)),
        Door::Deflate(upgrade) => {
            let ws = tungstenite::protocol::WebSocketConfig::default()
                .max_message_size(Some(max_frame))
                .max_frame_size(Some(max_frame))
                .read_buffer_size(READ_BUFFER)
                .write_buffer_size(WRITE_BUFFER)
                .max_write_buffer_size(MAX_WRITE_BUFFER);
            let settings = deflate::Settings {
                ws,
                max: max_frame,
                min_bytes: state.config.websocket.compression_min_bytes,
            };
            upgrade
                .protocol(offered.contains(&SUBPROTOCOL), SUBPROTOCOL)
                .on_upgrade(settings, move |socket| {
                    start(socket, node, id, permit, authenticated, pending)
                })
        }
    }
}

/// Runs an upgraded socket's session in a task of its own rather than the
/// upgrade's, which also holds the handshake's state for as long as it runs.
fn start<S: session::Socket>(
    socket: S,
    node: Arc<Node>,
    id: u64,
    permit: OwnedSemaphorePermit,
    authenticated: Option<Authenticated>,
    pending: TaskTrackerToken,
) -> std::future::Ready<()> {
    let sessions = node.sessions.clone();
    tokio::spawn(sessions.track_future(session::run(socket, node, id, permit, authenticated)));
    drop(pending);
    std::future::ready(())
}

/// The subprotocols a request offers: every `Sec-WebSocket-Protocol` header,
/// each a comma-separated list. Empty when it offers none, which is
/// accepted (non-browser tools connect that way); an offer without
/// `ferry.v1` is refused, since a browser fails a handshake that selects
/// none and would only see a 1006.
fn offered_subprotocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// `Authorization: Bearer`, else `?token=` when `auth.allow_query_token`.
fn request_token<'a>(
    state: &Node,
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Option<&'a str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    bearer.or_else(|| {
        state
            .config
            .auth
            .allow_query_token
            .then(|| query.get("token").map(String::as_str))
            .flatten()
    })
}

/// Cross-site WebSocket hijacking guard. Requests without `Origin`
/// (non-browser clients) pass; browser origins must be listed in
/// `auth.allowed_origins` (or `"*"`), be the gateway's own host, or, in the
/// unauthenticated loopback dev setup, be a loopback page.
pub(super) fn origin_allowed(state: &Node, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    let allowed = &state.config.auth.allowed_origins;
    if allowed.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host)) {
        return true;
    }
    let dev = state.auth.mode() == AuthMode::None && state.config.listen.ip().is_loopback();
    dev && is_loopback_host(origin_host)
}

fn is_loopback_host(host_port: &str) -> bool {
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
