//! permessage-deflate (RFC 7692) on the WebSocket door.
//!
//! - [`negotiate`] reads a client's `Sec-WebSocket-Extensions` offers and
//!   picks the first one the gateway can honour.
//! - A connection that agreed is upgraded here ([`Upgrade`]) rather than by
//!   axum, so that [`Inflating`] can sit under the WebSocket layer and
//!   inflate what the client compressed.
//! - [`DeflateSocket`] is that connection as the session sees any socket.
//!   It compresses what it sends from [`compressed`]: without server
//!   context takeover (the default) a message compresses the same for
//!   every socket, so a record's frame, shared by all its sockets, is
//!   compressed by the first socket that sends it and found by the others.
//!   With takeover, each socket keeps its own compressor and window.
//!
//! Connections that offer no compression, or when `websocket.compression`
//! is `off`, take axum's upgrade as before.

mod inflate;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::ws::{self, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use futures::{Sink, Stream};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use inflate::Inflating;

use crate::config::Compression as Mode;
use crate::node::Node;

/// What the gateway and a client agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Agreed {
    /// The gateway keeps its compression window from message to message.
    pub(super) server_takeover: bool,
    /// The client keeps its window: its messages inflate in order, with one
    /// decompressor per connection.
    pub(super) client_takeover: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` answer.
    pub(super) fn header(&self) -> HeaderValue {
        let mut answer = String::from("permessage-deflate");
        if !self.server_takeover {
            answer.push_str("; server_no_context_takeover");
        }
        if !self.client_takeover {
            answer.push_str("; client_no_context_takeover");
        }
        HeaderValue::from_str(&answer).expect("ASCII")
    }
}

/// The first permessage-deflate offer of `headers` the gateway can honour
/// with context takeover `takeover` (`websocket.compression_context_takeover`).
///
/// An offer is declined when it asks the gateway for a window under 15 bits
/// (`server_max_window_bits`), or names a parameter twice or one RFC 7692
/// does not define.
pub(super) fn negotiate(headers: &HeaderMap, takeover: bool) -> Option<Agreed> {
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    offers.filter_map(|offer| accept(offer, takeover)).next()
}

fn accept(offer: &str, takeover: bool) -> Option<Agreed> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut agreed = Agreed { server_takeover: takeover, client_takeover: takeover };
    let mut seen = Vec::new();
    for param in parts.filter(|p| !p.is_empty()) {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => agreed.server_takeover = false,
            ("client_no_context_takeover", None) => agreed.client_takeover = false,
            // The gateway compresses with a 15-bit window only.
            ("server_max_window_bits", Some("15")) => {}
            // The client may use a smaller window: any inflates.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) if valid_bits(bits) => {}
            _ => return None,
        }
        seen.push(name);
    }
    Some(agreed)
}

fn valid_bits(bits: &str) -> bool {
    bits.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b))
}

/// The WebSocket upgrade of a request: axum's, or this module's when the
/// client offered compression the gateway takes.
#[derive(Debug)]
pub(super) enum Door {
    Plain(WebSocketUpgrade),
    Deflate(Upgrade),
}

impl FromRequestParts<Arc<Node>> for Door {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, Response> {
        let settings = &node.config.websocket;
        if settings.compression == Mode::Deflate {
            if let Some(upgrade) = Upgrade::from_parts(parts, settings.compression_context_takeover)
            {
                return Ok(Self::Deflate(upgrade));
            }
        }
        <WebSocketUpgrade as FromRequestParts<_>>::from_request_parts(parts, node)
            .await
            .map(Self::Plain)
            .map_err(IntoResponse::into_response)
    }
}

/// A well-formed WebSocket upgrade request whose client agreed to
/// compression.
#[derive(Debug)]
pub(super) struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
    agreed: Agreed,
    protocol: Option<HeaderValue>,
}

impl Upgrade {
    /// `None` unless the request is an HTTP/1.1 WebSocket upgrade (anything
    /// else goes to axum, which answers what is wrong) with an offer this
    /// gateway takes.
    fn from_parts(parts: &mut Parts, takeover: bool) -> Option<Self> {
        let headers = &parts.headers;
        let has_token = |name: header::HeaderName, token: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        let upgrade = parts.method == Method::GET
            && has_token(header::CONNECTION, "upgrade")
            && has_token(header::UPGRADE, "websocket")
            && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
        let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
        let agreed = negotiate(headers, takeover)?;
        if !upgrade || parts.extensions.get::<OnUpgrade>().is_none() {
            return None;
        }
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        Some(Self {
            accept: HeaderValue::from_str(&accept).ok()?,
            agreed,
            protocol: None,
            on_upgrade: parts.extensions.remove::<OnUpgrade>()?,
        })
    }

    /// Selects `protocol` when the client offered it, as
    /// [`WebSocketUpgrade::protocols`] does.
    pub(super) fn protocol(mut self, offered: bool, protocol: &'static str) -> Self {
        self.protocol = offered.then(|| HeaderValue::from_static(protocol));
        self
    }

    /// The 101 answer; once the connection is upgraded, `callback` gets it.
    pub(super) fn on_upgrade<F, Fut>(self, settings: Settings, callback: F) -> Response
    where
        F: FnOnce(DeflateSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Self { on_upgrade, accept, agreed, protocol } = self;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let io = Inflating::new(TokioIo::new(upgraded), settings.max, agreed.client_takeover);
            let socket =
                WebSocketStream::from_raw_socket(io, Role::Server, Some(settings.ws)).await;
            callback(DeflateSocket::new(socket, agreed, settings.min_bytes)).await;
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, agreed.header());
        if let Some(protocol) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response
    }
}

/// A compressing connection's limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// The WebSocket layer's buffers and limits.
    pub(super) ws: WebSocketConfig,
    /// The largest client message, inflated.
    pub(super) max: usize,
    /// Smaller messages go out uncompressed.
    pub(super) min_bytes: usize,
}

type Inner = WebSocketStream<Inflating<TokioIo<hyper::upgrade::Upgraded>>>;

/// A WebSocket with permessage-deflate, as the session sees any socket:
/// a stream and a sink of axum messages.
pub(super) struct DeflateSocket {
    inner: Inner,
    min_bytes: usize,
    /// With server context takeover, this socket's compressor.
    own: Option<Box<Compress>>,
}

impl std::fmt::Debug for DeflateSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeflateSocket").field("min_bytes", &self.min_bytes).finish_non_exhaustive()
    }
}

impl DeflateSocket {
    fn new(inner: Inner, agreed: Agreed, min_bytes: usize) -> Self {
        let own = agreed.server_takeover.then(|| Box::new(Compress::new(LEVEL, false)));
        Self { inner, min_bytes, own }
    }

    /// The frame that carries `payload` as a message of `kind`.
    fn frame(&mut self, payload: Bytes, kind: Data) -> Frame {
        if payload.len() < self.min_bytes {
            return Frame::message(payload, OpCode::Data(kind), true);
        }
        let deflated = match self.own.as_deref_mut() {
            Some(own) => deflate(own, &payload),
            None => compressed(&payload),
        };
        let mut frame = Frame::message(deflated, OpCode::Data(kind), true);
        frame.header_mut().rsv1 = true;
        frame
    }
}

fn to_axum(message: Message) -> Option<ws::Message> {
    Some(match message {
        Message::Text(text) => {
            let bytes = Bytes::from(text);
            // Already checked as UTF-8 by the WebSocket layer.
            ws::Message::Text(ws::Utf8Bytes::try_from(bytes).ok()?)
        }
        Message::Binary(data) => ws::Message::Binary(data),
        Message::Ping(data) => ws::Message::Ping(data),
        Message::Pong(data) => ws::Message::Pong(data),
        Message::Close(frame) => ws::Message::Close(
            frame.map(|f| ws::CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() }),
        ),
        Message::Frame(_) => return None,
    })
}

fn error(e: tokio_tungstenite::tungstenite::Error) -> axum::Error {
    axum::Error::new(e)
}

impl Stream for DeflateSocket {
    type Item = Result<ws::Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match futures::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(error(e)))),
                Some(Ok(message)) => {
                    if let Some(message) = to_axum(message) {
                        return Poll::Ready(Some(Ok(message)));
                    }
                }
            }
        }
    }
}

impl Sink<ws::Message> for DeflateSocket {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_ready(cx).map_err(error)
    }

    fn start_send(self: Pin<&mut Self>, item: ws::Message) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let message = match item {
            ws::Message::Text(text) => Message::Frame(this.frame(Bytes::from(text), Data::Text)),
            ws::Message::Binary(data) => Message::Frame(this.frame(data, Data::Binary)),
            ws::Message::Ping(data) => Message::Ping(data),
            ws::Message::Pong(data) => Message::Pong(data),
            ws::Message::Close(frame) => Message::Close(frame.map(|f| CloseFrame {
                code: f.code.into(),
                reason: Utf8Bytes::from(f.reason.as_str()),
            })),
        };
        Pin::new(&mut this.inner).start_send(message).map_err(error)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx).map_err(error)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx).map_err(error)
    }
}

/// zlib's default level: a record compresses once for all its sockets.
const LEVEL: Compression = Compression::new(6);
/// Compressed frames remembered for the sockets still to send them.
const REMEMBERED: usize = 4096;

thread_local! {
    /// Without context takeover every message compresses from a fresh
    /// state: one compressor per worker thread.
    static FRESH: std::cell::RefCell<Compress> = std::cell::RefCell::new(Compress::new(LEVEL, false));
}

/// Recently compressed frames by the address and length of their bytes.
/// An entry holds the original bytes too, so that its address cannot be
/// reused by other bytes while the entry lives.
#[derive(Default)]
struct Remembered {
    by_address: HashMap<(usize, usize), (Bytes, Bytes)>,
    order: VecDeque<(usize, usize)>,
}

static REMEMBERED_FRAMES: Mutex<Option<Remembered>> = Mutex::new(None);

/// `payload` compressed without context takeover: the same bytes for every
/// socket, so a frame shared by many sockets is compressed once.
pub(super) fn compressed(payload: &Bytes) -> Bytes {
    let key = (payload.as_ptr() as usize, payload.len());
    {
        // Held for a look-up only; compression happens outside.
        let remembered = REMEMBERED_FRAMES.lock().expect("deflate cache lock");
        if let Some((_, deflated)) = remembered.as_ref().and_then(|r| r.by_address.get(&key)) {
            return deflated.clone();
        }
    }
    let deflated = FRESH.with(|fresh| {
        let mut fresh = fresh.borrow_mut();
        fresh.reset();
        deflate(&mut fresh, payload)
    });
    let mut remembered = REMEMBERED_FRAMES.lock().expect("deflate cache lock");
    let remembered = remembered.get_or_insert_with(Remembered::default);
    if remembered.by_address.insert(key, (payload.clone(), deflated.clone())).is_none() {
        remembered.order.push_back(key);
    }
    while remembered.order.len() > REMEMBERED {
        if let Some(oldest) = remembered.order.pop_front() {
            remembered.by_address.remove(&oldest);
        }
    }
    crate::metrics::deflated_frame(payload.len(), deflated.len());
    deflated
}

/// `payload` through `state` with a sync flush, without the four bytes
/// RFC 7692 strips from a message's end.
fn deflate(state: &mut Compress, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    let start = state.total_in();
    loop {
        let consumed = (state.total_in() - start) as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        state
            .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .expect("deflate of a buffer in memory");
        let all_in = (state.total_in() - start) as usize == payload.len();
        if all_in && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&[0x00, 0x00, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests;
