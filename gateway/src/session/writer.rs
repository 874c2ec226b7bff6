//! The writer task: the only owner of a socket's sink.
//!
//! It takes replies (acks, errors, …) before fan-out frames, writes every
//! frame that is already queued before one flush (one syscall for a burst
//! rather than one per frame), sends WebSocket pings, and gives up on a
//! socket whose writes do not complete within the write timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use ferry_protocol::CloseCode;
use futures::stream::SplitSink;
use futures::SinkExt;
use tokio::sync::mpsc;

use crate::kafka::groups::PacedFrame;
use crate::metrics;
use crate::session::lossy::LossyQueue;

/// Most frames written before a flush.
const MAX_BATCH: usize = 64;

/// What the session asks the writer to send.
#[derive(Debug)]
pub enum Outbound {
    Frame(Utf8Bytes),
    /// A replayed or shared-group record; its `done` fires once flushed.
    Paced(PacedFrame),
    Close(CloseCode),
    /// The client closed: flush the echo of its close frame (queued by the
    /// socket itself) and stop.
    Finish,
}

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub ping_interval: Duration,
    pub write_timeout: Duration,
}

/// Runs until a close frame is sent, the session drops its sender, or a
/// write fails or times out.
pub async fn run(
    mut sink: SplitSink<WebSocket, Message>,
    mut replies: mpsc::Receiver<Outbound>,
    mut fanout: mpsc::Receiver<Utf8Bytes>,
    mut paced: mpsc::Receiver<PacedFrame>,
    lossy: Arc<LossyQueue>,
    config: WriterConfig,
) {
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.reset();
    loop {
        let first = tokio::select! {
            biased;
            reply = replies.recv() => match reply {
                Some(outbound) => outbound,
                None => break,
            },
            Some(frame) = fanout.recv() => Outbound::Frame(frame),
            Some(delivery) = paced.recv() => Outbound::Paced(delivery),
            () = lossy.ready() => {
                let frames = lossy.drain(MAX_BATCH);
                let write = async {
                    let n = frames.len() as u64;
                    for frame in frames {
                        sink.feed(Message::Text(frame)).await?;
                    }
                    metrics::frames_sent(n);
                    sink.flush().await
                };
                if !matches!(tokio::time::timeout(config.write_timeout, write).await, Ok(Ok(()))) {
                    break;
                }
                continue;
            }
            _ = ping.tick() => {
                let sent = tokio::time::timeout(
                    config.write_timeout,
                    sink.send(Message::Ping(Default::default())),
                ).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
                continue;
            }
        };
        // Let the producers of a burst queue the rest of it, so that it goes
        // out in one write rather than one per frame.
        tokio::task::yield_now().await;
        let queues = Queues { replies: &mut replies, fanout: &mut fanout, paced: &mut paced };
        let write = write_batch(&mut sink, first, queues);
        match tokio::time::timeout(config.write_timeout, write).await {
            Ok(Ok(Flow::Continue)) => {}
            Ok(Ok(Flow::Closed)) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "socket write failed");
                break;
            }
            Err(_) => {
                tracing::debug!("socket write timed out");
                break;
            }
        }
    }
}

enum Flow {
    Continue,
    Closed,
}

/// The queues a batch takes more frames from, in priority order.
struct Queues<'a> {
    replies: &'a mut mpsc::Receiver<Outbound>,
    fanout: &'a mut mpsc::Receiver<Utf8Bytes>,
    paced: &'a mut mpsc::Receiver<PacedFrame>,
}

impl Queues<'_> {
    fn next(&mut self) -> Option<Outbound> {
        self.replies.try_recv().ok().or_else(|| {
            let frame = self.fanout.try_recv().ok().map(Outbound::Frame);
            frame.or_else(|| self.paced.try_recv().ok().map(Outbound::Paced))
        })
    }
}

async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    first: Outbound,
    mut queues: Queues<'_>,
) -> Result<Flow, axum::Error> {
    let mut next = Some(first);
    let mut written = 0u64;
    let mut done = Vec::new();
    while let Some(outbound) = next.take() {
        match outbound {
            Outbound::Frame(text) => {
                sink.feed(Message::Text(text)).await?;
                written += 1;
            }
            Outbound::Paced(delivery) => {
                sink.feed(Message::Text(delivery.frame)).await?;
                done.extend(delivery.done);
                written += 1;
            }
            Outbound::Finish => {
                sink.flush().await?;
                metrics::frames_sent(written);
                return Ok(Flow::Closed);
            }
            Outbound::Close(code) => {
                let frame = CloseFrame { code: code.0, reason: code.reason().into() };
                sink.send(Message::Close(Some(frame))).await?;
                metrics::frames_sent(written);
                return Ok(Flow::Closed);
            }
        }
        if written < MAX_BATCH as u64 {
            next = queues.next();
        }
    }
    sink.flush().await?;
    metrics::frames_sent(written);
    // Written and flushed: `ack: "auto"` group records are processed.
    for d in done {
        d.complete();
    }
    Ok(Flow::Continue)
}
