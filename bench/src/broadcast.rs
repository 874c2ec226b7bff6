//! The raw broadcast baseline: a minimal tokio-tungstenite server that
//! speaks just enough of protocol v1 (`welcome`, `subscribe` →
//! `subscribed`) for the bench's clients, and broadcasts the frames it is
//! given to every subscribed socket. No Kafka, no JSON parsing of records.
//!
//! It uses the same shape as the gateway's fan-out (one bounded queue per
//! socket filled with `try_send`, a writer task per socket that writes every
//! queued frame before one flush, the same socket buffer sizes), so the
//! difference between the two is what Kafka and the gateway add.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Result;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The gateway's per-socket queue (`limits.outbound_queue`).
const QUEUE: usize = 1024;
/// The gateway's writer batch.
const MAX_BATCH: usize = 64;

/// A running raw broadcast server.
#[derive(Debug)]
pub(crate) struct RawBroadcast {
    pub(crate) addr: SocketAddr,
    hub: Arc<Hub>,
    accept: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Hub {
    subscribers: RwLock<Vec<mpsc::Sender<Utf8Bytes>>>,
    kicked: AtomicU64,
}

impl RawBroadcast {
    pub(crate) async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hub = Arc::new(Hub::default());
        let accept = tokio::spawn({
            let hub = hub.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    tokio::spawn(serve(tcp, hub.clone()));
                }
            }
        });
        Ok(Self { addr, hub, accept })
    }

    /// Queues `frame` to every subscriber; returns how many got it. A
    /// subscriber whose queue is full is dropped (the gateway closes it).
    pub(crate) fn broadcast(&self, frame: &Utf8Bytes) -> usize {
        let subscribers = self.hub.subscribers.read().expect("hub lock");
        let mut delivered = 0;
        for s in subscribers.iter() {
            match s.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.hub.kicked.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }

    /// Frames dropped because a socket's queue was full.
    pub(crate) fn kicked(&self) -> u64 {
        self.hub.kicked.load(Ordering::Relaxed)
    }
}

impl Drop for RawBroadcast {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

// The handshake callback's error type is tungstenite's, large as it is.
#[allow(clippy::result_large_err)]
async fn serve(tcp: TcpStream, hub: Arc<Hub>) {
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024);
    let select_subprotocol = |req: &Request, mut resp: Response| {
        if req.headers().contains_key("Sec-WebSocket-Protocol") {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(ferry_protocol::SUBPROTOCOL),
            );
        }
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, select_subprotocol, Some(config))
            .await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (replies, mut replies_rx) = mpsc::channel::<Utf8Bytes>(64);
    let (queue, mut queue_rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    let writer = tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                biased;
                r = replies_rx.recv() => match r { Some(r) => r, None => break },
                Some(f) = queue_rx.recv() => f,
            };
            if sink.feed(Message::Text(first)).await.is_err() {
                break;
            }
            let mut written = 1;
            while written < MAX_BATCH {
                let Some(next) = replies_rx.try_recv().ok().or_else(|| queue_rx.try_recv().ok())
                else {
                    break;
                };
                if sink.feed(Message::Text(next)).await.is_err() {
                    return;
                }
                written += 1;
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
    });
    let welcome = Utf8Bytes::from_static(r#"{"type":"welcome","protocol":1}"#);
    if replies.send(welcome).await.is_err() {
        return;
    }
    let mut queue = Some(queue);
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let text = text.as_str();
        let id = crate::util::frame_id(text).unwrap_or("r");
        match crate::util::frame_type(text) {
            "subscribe" => {
                if let Some(q) = queue.take() {
                    hub.subscribers.write().expect("hub lock").push(q);
                }
                let reply = format!(r#"{{"type":"subscribed","id":"{id}"}}"#);
                let _ = replies.send(reply.into()).await;
            }
            "unsubscribe" => {
                let reply = format!(r#"{{"type":"unsubscribed","id":"{id}"}}"#);
                let _ = replies.send(reply.into()).await;
            }
            _ => {}
        }
    }
    drop(replies);
    writer.abort();
}
