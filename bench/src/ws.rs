//! WebSocket clients that speak protocol v1, spread over several loopback
//! source addresses (so tens of thousands of connections do not run out of
//! ephemeral ports), with the authentication every connection will need.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::util;

/// A connected client socket.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// How long one connect + handshake + welcome may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `subscribe` may wait for `subscribed`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Buffers of a client socket.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Buffers {
    /// Idle connections: the least memory.
    Small,
    /// Sockets that receive or send many frames.
    Busy,
}

impl Buffers {
    fn config(self) -> WebSocketConfig {
        let (read, write) = match self {
            Self::Small => (1024, 1024),
            Self::Busy => (64 * 1024, 16 * 1024),
        };
        WebSocketConfig::default()
            .read_buffer_size(read)
            .write_buffer_size(write)
            .max_write_buffer_size(64 << 20)
    }
}

/// Opens client connections to one server.
#[derive(Debug)]
pub(crate) struct Connector {
    addr: SocketAddr,
    url: String,
    token: Option<String>,
    sources: Vec<Ipv4Addr>,
    next: AtomicUsize,
}

impl Connector {
    /// `sources` loopback addresses 127.0.0.2, 127.0.0.3, … are used in turn
    /// as the client side of the connections.
    pub(crate) fn new(addr: SocketAddr, token: Option<String>, sources: usize) -> Self {
        let sources =
            (0..sources.clamp(1, 250)).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8)).collect();
        Self { addr, url: format!("ws://{addr}/ws"), token, sources, next: AtomicUsize::new(0) }
    }

    /// The server's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token of every connection, if the server wants one.
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Connects, completes the handshake and reads `welcome`.
    pub(crate) async fn connect(&self, buffers: Buffers) -> Result<Ws> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(buffers))
            .await
            .map_err(|_| anyhow!("connect to {} timed out", self.url))?
    }

    async fn connect_inner(&self, buffers: Buffers) -> Result<Ws> {
        let source = self.sources[self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len()];
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
            .with_context(|| format!("bind {source}"))?;
        let tcp = socket
            .connect(self.addr)
            .await
            .with_context(|| format!("connect {source} → {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let mut request = self.url.as_str().into_client_request()?;
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(ferry_protocol::SUBPROTOCOL),
        );
        // Authentication: one bearer token on every connection. (If auth
        // becomes a first frame instead, send it right after `welcome`
        // below.)
        if let Some(token) = &self.token {
            headers.insert("Authorization", format!("Bearer {token}").parse()?);
        }
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(request, tcp, Some(buffers.config()))
                .await
                .context("WebSocket handshake")?;
        let first = next_text(&mut ws).await?;
        if util::frame_type(&first) != "welcome" {
            bail!("expected welcome, got {first}");
        }
        Ok(ws)
    }

    /// Connects and subscribes to `topic`.
    pub(crate) async fn subscriber(&self, topic: &str, buffers: Buffers) -> Result<Ws> {
        let mut ws = self.connect(buffers).await?;
        subscribe(&mut ws, topic).await?;
        Ok(ws)
    }
}

/// Sends `subscribe` and waits for `subscribed`. A node that cannot reach
/// Kafka at that moment answers `unavailable` at once: asked again a second
/// later, as clients do, for up to the reply timeout.
pub(crate) async fn subscribe(ws: &mut Ws, topic: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        match request(ws, "subscribe", topic, "subscribed").await {
            Err(e)
                if e.to_string().contains(r#""code":"unavailable""#)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            done => return done,
        }
    }
}

/// Sends `unsubscribe` and waits for `unsubscribed`.
pub(crate) async fn unsubscribe(ws: &mut Ws, topic: &str) -> Result<()> {
    request(ws, "unsubscribe", topic, "unsubscribed").await
}

async fn request(ws: &mut Ws, kind: &str, topic: &str, reply: &str) -> Result<()> {
    let frame = format!(r#"{{"type":"{kind}","id":"r","topic":"{topic}"}}"#);
    ws.send(Message::Text(frame.into())).await?;
    tokio::time::timeout(REPLY_TIMEOUT, async {
        loop {
            let text = next_text(ws).await?;
            match util::frame_type(&text) {
                t if t == reply => return Ok(()),
                "error" => bail!("{kind} {topic}: {text}"),
                _ => {} // a record that raced the reply
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no reply to {kind} {topic}"))?
}

/// The next text frame (pings are answered by tungstenite).
pub(crate) async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// A `publish` frame with id `id` and the JSON `value` embedded as is.
pub(crate) fn publish_frame(id: &str, topic: &str, value: &str) -> String {
    format!(r#"{{"type":"publish","id":"{id}","topic":"{topic}","value":{value}}}"#)
}

/// Connections kept open and quiet: each is read by a small task, so that
/// the gateway's pings are answered (tungstenite queues the pong on read)
/// and a connection the server closes is noticed. Dropping closes them all.
#[derive(Debug, Default)]
pub(crate) struct Held {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Held {
    pub(crate) fn hold(&mut self, mut ws: Ws) {
        self.tasks.push(tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        }));
    }

    /// Connections opened.
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Connections still open.
    pub(crate) fn open(&self) -> usize {
        self.tasks.iter().filter(|t| !t.is_finished()).count()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens `n` connections with at most `parallel` handshakes at once, each
/// optionally subscribed to `topic`, and holds them. Stops early at the
/// first `max_errors` failures or at `deadline`; returns the connections
/// and the errors.
pub(crate) async fn open_many(
    connector: &std::sync::Arc<Connector>,
    n: usize,
    parallel: usize,
    topic: Option<&str>,
    deadline: tokio::time::Instant,
    max_errors: usize,
) -> (Held, Vec<String>) {
    let topic = topic.map(str::to_owned);
    let opens = futures::stream::iter(0..n)
        .map(|_| {
            let connector = connector.clone();
            let topic = topic.clone();
            async move {
                match topic {
                    Some(t) => connector.subscriber(&t, Buffers::Small).await,
                    None => connector.connect(Buffers::Small).await,
                }
            }
        })
        .buffer_unordered(parallel.max(1));
    tokio::pin!(opens);
    let mut sockets = Held::default();
    let mut errors = Vec::new();
    loop {
        let next = tokio::select! {
            next = opens.next() => next,
            () = tokio::time::sleep_until(deadline) => {
                errors.push("time budget exhausted".to_owned());
                break;
            }
        };
        match next {
            None => break,
            Some(Ok(ws)) => sockets.hold(ws),
            Some(Err(e)) => {
                errors.push(format!("{e:#}"));
                if errors.len() >= max_errors {
                    break;
                }
            }
        }
    }
    (sockets, errors)
}
