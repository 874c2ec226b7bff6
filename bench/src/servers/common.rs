//! What the two baseline servers (`ferry-relay`, `ferry-publisher`) share:
//! their command line, the Kafka client settings, the WebSocket handshake,
//! and one bounded outbound queue per socket drained by a writer task.
//!
//! The pieces copy the gateway's choices where they decide cost: the same
//! librdkafka settings (taken from the gateway's own `ClientSettings`, with
//! the same `--librdkafka` overrides), the same socket buffer sizes and
//! `TCP_NODELAY`, the same queue bound (1,024 frames, full = disconnect with
//! 4000) and the same writer batch (up to 64 frames per flush). What they
//! leave out is what a minimal server does not need: authentication, ACLs,
//! limits, metrics, replay.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use ferry_gateway::config::KafkaConfig;
use ferry_gateway::kafka::client_config::ClientSettings;
use ferry_protocol::{CloseCode, ErrorCode, ServerFrame};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// The gateway's per-socket queue (`limits.outbound_queue`).
const QUEUE: usize = 1024;
/// The gateway's writer batch (frames per flush).
const MAX_BATCH: usize = 64;
/// The gateway's WebSocket buffers (`gateway/src/http/ws.rs`).
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 2 * 1024;
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;
/// The gateway's default `limits.max_frame_bytes`.
const MAX_FRAME: usize = 1 << 20;

/// The command line of a baseline server; `ferry-bench` starts it like the
/// gateway and reads `listening on http://ADDR` from its stderr.
#[derive(Debug, Parser)]
pub(crate) struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: SocketAddr,
    /// Kafka bootstrap servers.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) kafka: String,
    /// The Kafka is the gateway's embedded mock cluster (the consumer then
    /// gets the gateway's `fetch.wait.max.ms=5`).
    #[arg(long)]
    pub(crate) embedded: bool,
    /// Raw librdkafka setting `KEY=VALUE` (repeatable), applied last, as the
    /// gateway applies `kafka.librdkafka`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
    pub(crate) librdkafka: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

impl Args {
    /// The gateway's own Kafka client settings for this Kafka.
    pub(crate) fn settings(&self) -> Result<ClientSettings> {
        let config = KafkaConfig {
            brokers: (!self.embedded).then(|| self.kafka.clone()),
            librdkafka: self.librdkafka.iter().cloned().collect(),
            ..KafkaConfig::default()
        };
        ClientSettings::new(&config, self.kafka.clone()).map_err(|e| anyhow!(e.join("; ")))
    }
}

/// Binds the listener and says where, in the line `ferry-bench` waits for.
pub(crate) async fn listen(args: &Args, name: &str) -> Result<TcpListener> {
    let listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    eprintln!("{name}: listening on http://{}", listener.local_addr()?);
    Ok(listener)
}

/// One socket's outbound frames: a bounded queue that never waits. A frame
/// that does not fit marks the socket slow; its writer then closes it with
/// 4000, as the gateway does.
#[derive(Debug)]
pub(crate) struct Outlet {
    tx: mpsc::Sender<Utf8Bytes>,
    kick: Arc<Kick>,
}

/// Tells the writer its socket is slow (the writer holds this, not the
/// outlet, so that the queue closes when the last holder of the outlet
/// goes).
#[derive(Debug, Default)]
struct Kick {
    slow: AtomicBool,
    notify: Notify,
}

impl Outlet {
    /// Queues `frame`; false when the socket is slow (now or already) or
    /// gone.
    pub(crate) fn push(&self, frame: Utf8Bytes) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.kick.slow.swap(true, Ordering::Relaxed) {
                    self.kick.notify.notify_one();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a reply frame.
    pub(crate) fn reply(&self, frame: &ServerFrame) {
        self.push(frame.encode().into());
    }

    /// Queues an `error` reply.
    pub(crate) fn error(&self, id: Option<&str>, code: ErrorCode, message: impl Into<String>) {
        self.reply(&ServerFrame::Error {
            id: id.map(str::to_owned),
            code,
            message: message.into(),
            retry_after_ms: None,
        });
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Completes the WebSocket handshake (answering Ferry's subprotocol),
/// starts the socket's writer and queues `welcome`. Returns the socket's
/// reading half and its outlet; `None` if the handshake failed.
// The handshake callback's error type is tungstenite's, large as it is.
#[allow(clippy::result_large_err)]
pub(crate) async fn accept(tcp: TcpStream) -> Option<(SplitStream<Ws>, Arc<Outlet>)> {
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let select_subprotocol = |req: &Request, mut resp: Response| {
        if req.headers().contains_key("Sec-WebSocket-Protocol") {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(ferry_protocol::SUBPROTOCOL),
            );
        }
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(tcp, select_subprotocol, Some(config))
        .await
        .ok()?;
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel(QUEUE);
    let kick = Arc::new(Kick::default());
    tokio::spawn(write(sink, rx, kick.clone()));
    let outlet = Arc::new(Outlet { tx, kick });
    outlet.push(Utf8Bytes::from_static(r#"{"type":"welcome","protocol":1}"#));
    Some((stream, outlet))
}

/// The socket's writer, sole owner of its sink: writes every queued frame
/// (up to a batch) before one flush; closes the socket with 4000 once it is
/// slow. Ends when every holder of the outlet is gone or a write fails.
async fn write(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Utf8Bytes>,
    kick: Arc<Kick>,
) {
    loop {
        let first = tokio::select! {
            biased;
            () = kick.notify.notified() => {
                let close = CloseFrame {
                    code: WsCloseCode::from(CloseCode::SLOW_CONSUMER.0),
                    reason: "slow consumer".into(),
                };
                let _ = sink.send(Message::Close(Some(close))).await;
                return;
            }
            frame = rx.recv() => match frame {
                Some(frame) => frame,
                None => return,
            },
        };
        if sink.feed(Message::Text(first)).await.is_err() {
            return;
        }
        let mut written = 1;
        while written < MAX_BATCH {
            let Ok(next) = rx.try_recv() else { break };
            if sink.feed(Message::Text(next)).await.is_err() {
                return;
            }
            written += 1;
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// The next text frame from the client; `None` once the socket is closed.
/// Binary frames are refused as the gateway refuses them (by closing).
pub(crate) async fn next_text(stream: &mut SplitStream<Ws>) -> Option<Utf8Bytes> {
    loop {
        match stream.next().await? {
            Ok(Message::Text(text)) => return Some(text),
            Ok(Message::Close(_)) | Ok(Message::Binary(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A multi-threaded runtime like the gateway's (one worker per core).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")
}
