//! How a session ends: it leaves every topic, answers every request it
//! read (publishes in Kafka's hands get their real outcome, within the
//! shutdown grace), closes the socket with its code and completes the
//! close handshake.

use axum::extract::ws::Message;
use ferry_protocol::{decode_client_frame, ClientFrame, CloseCode};
use futures::stream::SplitStream;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::{End, Session, Socket, CLOSE_WAIT, REPLY_SLACK};
use crate::error::GatewayError;
use crate::metrics;

impl Session {
    /// Leaves every topic, answers what must be answered, closes the socket.
    pub(super) async fn finish<S: Socket>(
        mut self,
        end: End,
        writer: tokio::task::JoinHandle<()>,
        mut stream: SplitStream<S>,
    ) {
        let topics = self.subscriptions.topics();
        for topic in topics {
            self.unsubscribe(&topic);
        }
        // Subscribes still waiting on Kafka: dropping their work undoes
        // whatever part of it was done.
        self.subscribing.clear();
        let close = match end {
            End::Shutdown => {
                // The gateway stops reading; what it read is answered.
                let shutting_down =
                    GatewayError::Unavailable("the gateway is shutting down".into());
                self.answer_before_close::<S>(shutting_down, None).await;
                Some(CloseCode::GOING_AWAY)
            }
            End::Close(code) if code == CloseCode::SLOW_CONSUMER => {
                // The client does not read: no answer would reach it.
                metrics::slow_consumer();
                Some(code)
            }
            End::Close(code) => {
                // Every publish read so far gets its answer before the close
                // frame, and so do the frames the client sent before it
                // could know (already in the socket's buffers).
                let (closing, read_ahead) = match code {
                    CloseCode::RATE_LIMITED => {
                        let rate = self.context.config.limits.publish_rate;
                        (GatewayError::RateLimited(rate), Some(&mut stream))
                    }
                    CloseCode::TOKEN_EXPIRED => {
                        let e = GatewayError::Unauthorized("the token expired".into());
                        (e, Some(&mut stream))
                    }
                    CloseCode::REVOKED => {
                        let e = GatewayError::Unauthorized("the token was revoked".into());
                        (e, Some(&mut stream))
                    }
                    _ => {
                        let why = format!("the connection is closing ({})", code.reason());
                        (GatewayError::Unavailable(why), None)
                    }
                };
                self.answer_before_close(closing, read_ahead).await;
                Some(code)
            }
            End::ClientClosed => {
                // The socket queued the echo of the client's close frame
                // itself; the writer only has to flush it.
                self.replies.finish();
                None
            }
            End::ClientGone | End::WriterGone => None,
        };
        if let Some(code) = close {
            // The writer may be stuck on a socket that does not read; the
            // close frame is best effort and the wait below is bounded.
            self.replies.close(code);
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

    /// Before the gateway closes the socket: every request it read gets its
    /// answer. Subscribes and publishes not yet handed to Kafka get
    /// `closing`; with `read_ahead`, so do the requests the client already
    /// sent (read without waiting); publishes in Kafka's hands get their
    /// real outcome (see [`Session::drain_inflight`]).
    async fn answer_before_close<S: Socket>(
        &mut self,
        closing: GatewayError,
        read_ahead: Option<&mut SplitStream<S>>,
    ) {
        let mut refused: Vec<String> = self.openings.drain().map(|(_, o)| o.id).collect();
        let waiting = self.waiting.drain().flat_map(|(_, queued)| queued);
        refused.extend(waiting.map(|publish| {
            metrics::publish_failed(closing.code().as_str());
            if let Some(awaiting) = &self.awaiting {
                awaiting.lock().remove(&publish.id);
            }
            publish.id.into_owned()
        }));
        if let Some(stream) = read_ahead {
            // Bounded by the reply queue's room, so this never waits long.
            for _ in 0..REPLY_SLACK {
                let Some(Some(Ok(message))) = stream.next().now_or_never() else { break };
                match message {
                    Message::Text(text) => {
                        let Ok(frame) = decode_client_frame(&text) else { continue };
                        if let ClientFrame::Publish(_) = frame {
                            metrics::publish_failed(closing.code().as_str());
                        }
                        refused.push(frame.id().to_owned());
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        }
        for id in refused {
            if self.send(closing.to_frame(Some(&id))).await.is_err() {
                return;
            }
        }
        self.drain_inflight().await;
    }

    /// Every in-flight publish gets its `ack` or `error`, waiting
    /// at most the shutdown grace for Kafka; past it, the rest get `timeout`.
    async fn drain_inflight(&mut self) {
        let deadline = Instant::now() + self.context.config.shutdown_grace();
        let Some(awaiting) = self.awaiting.clone() else { return };
        for id in awaiting.settle(deadline).await {
            let timeout = GatewayError::Timeout;
            metrics::publish_failed(timeout.code().as_str());
            if self.send(timeout.to_frame(Some(&id))).await.is_err() {
                return;
            }
        }
    }
}
