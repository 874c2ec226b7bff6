//! The writer task: the only owner of a socket's sink.
//!
//! It drains the socket's [`outlet`](crate::outlet) (replies before
//! records), writes every item already queued before one flush (one
//! syscall for a burst rather than one per frame), sends WebSocket pings,
//! and gives up on a socket whose writes do not complete within the write
//! timeout.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures::{Sink, SinkExt};
use tokio::time::Instant;

use crate::metrics;
use crate::outlet::{Drain, Item, Taken};

/// Most items written before a flush.
const MAX_BATCH: usize = 64;
/// Batch room kept between writes; a burst's larger batch is given back.
const KEPT_BATCH: usize = 8;

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub ping_interval: Duration,
    pub write_timeout: Duration,
    /// How long an idle writer woken by a record waits for more records
    /// to write with it (`websocket.write_coalesce_ms`); zero: it only
    /// lets the burst under way finish queueing. Replies never wait.
    pub coalesce: Duration,
}

/// Runs until a close frame is sent, the session ends, or a write fails or
/// times out. `sink` is the socket's (any `Sink` of messages: the unit
/// tests use a recording one).
///
/// One timer serves the writer: while it waits for items it is the next
/// ping's deadline (pings go out every `ping_interval`, busy or not), while
/// it writes it is the write's.
pub async fn run<S>(mut sink: S, mut drain: Drain, config: WriterConfig)
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let mut next_ping = Instant::now() + config.ping_interval;
    let timer = tokio::time::sleep_until(next_ping);
    tokio::pin!(timer);
    let mut batch = Vec::new();
    loop {
        let taken = drain.take(MAX_BATCH, &mut batch);
        let ping_due = Instant::now() >= next_ping;
        if batch.is_empty() && !ping_due {
            // A throttled record held back may be due before the next ping.
            let wake = match taken {
                Taken::Ended => break,
                Taken::More(release) => release.map_or(next_ping, |at| at.min(next_ping)),
            };
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                biased;
                () = &mut timer => {}
                () = drain.ready() => {
                    if config.coalesce.is_zero() || drain.replies_waiting() {
                        // Let the producers of a burst queue the rest of it,
                        // so that it goes out in one write, not one per frame.
                        tokio::task::yield_now().await;
                    } else {
                        // Records only: the ones that follow within the
                        // window share their write.
                        tokio::time::sleep(config.coalesce).await;
                    }
                }
            }
            continue;
        }
        if ping_due {
            next_ping = Instant::now() + config.ping_interval;
        }
        timer.as_mut().reset(Instant::now() + config.write_timeout);
        let written = tokio::select! {
            written = write_batch(&mut sink, &mut batch, ping_due) => written,
            () = &mut timer => {
                tracing::debug!("socket write timed out");
                break;
            }
        };
        if batch.capacity() > KEPT_BATCH {
            // A burst is written: an idle socket keeps only a small batch.
            batch = Vec::new();
        }
        match written {
            Ok(Flow::Continue) => {}
            Ok(Flow::Closed) => break,
            Err(e) => {
                tracing::debug!(error = %e, "socket write failed");
                break;
            }
        }
        // Pings go out on their schedule however busy the socket is: a
        // client that only listens answers them with the pongs that keep
        // it from the idle timeout.
        timer.as_mut().reset(next_ping);
    }
}

enum Flow {
    Continue,
    Closed,
}

/// Writes `batch` (emptying it) and a ping first if one is due, then
/// flushes once.
async fn write_batch<S>(sink: &mut S, batch: &mut Vec<Item>, ping: bool) -> Result<Flow, S::Error>
where
    S: Sink<Message> + Unpin,
{
    if ping {
        sink.feed(Message::Ping(Default::default())).await?;
    }
    let mut written = 0u64;
    let mut done = Vec::new();
    for item in batch.drain(..) {
        match item {
            Item::Frame(text) => {
                sink.feed(Message::Text(text)).await?;
                written += 1;
            }
            Item::Paced(delivery) => {
                sink.feed(Message::Text(delivery.frame)).await?;
                done.extend(delivery.done);
                written += 1;
            }
            Item::Finish => {
                sink.flush().await?;
                metrics::frames_sent(written);
                return Ok(Flow::Closed);
            }
            Item::Close(code) => {
                let frame = CloseFrame { code: code.0, reason: code.reason().into() };
                sink.send(Message::Close(Some(frame))).await?;
                metrics::frames_sent(written);
                return Ok(Flow::Closed);
            }
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use super::*;
    use crate::outlet::{Completion, Done, Outlet, PacedFrame};
    use ferry_protocol::CloseCode;
    use tokio_util::sync::CancellationToken;

    /// What the writer did to the sink, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Text(String),
        Ping,
        Close(u16),
        Flush,
    }

    /// A sink that records every frame and flush; a stalled one never
    /// takes a frame (a peer that stopped reading).
    #[derive(Clone, Default)]
    struct Recorder {
        log: Arc<Mutex<Vec<Event>>>,
        stalled: bool,
    }

    impl Recorder {
        fn events(&self) -> Vec<Event> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Sink<Message> for Recorder {
        type Error = std::io::Error;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.stalled {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }

        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            let event = match item {
                Message::Text(text) => Event::Text(text.to_string()),
                Message::Ping(_) => Event::Ping,
                Message::Close(frame) => Event::Close(frame.map_or(1005, |f| f.code)),
                other => panic!("the writer sent {other:?}"),
            };
            self.log.lock().unwrap().push(event);
            Ok(())
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.stalled {
                return Poll::Pending;
            }
            self.log.lock().unwrap().push(Event::Flush);
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    const CONFIG: WriterConfig = WriterConfig {
        ping_interval: Duration::from_secs(20),
        write_timeout: Duration::from_secs(5),
        coalesce: Duration::ZERO,
    };

    fn text(s: &str) -> Event {
        Event::Text(s.to_owned())
    }

    fn record(outlet: &Outlet, frame: &str) {
        let topic: Arc<str> = "t".into();
        assert!(outlet.offer(
            ferry_protocol::Overflow::Disconnect,
            None,
            &topic,
            0,
            None,
            &frame.into()
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_out_in_one_flush_replies_first() {
        let sink = Recorder::default();
        let (outlet, drain) = Outlet::new(8, 8, CancellationToken::new());
        let replies = outlet.replies(8);
        record(&outlet, "r1");
        record(&outlet, "r2");
        replies.send("ack".into()).await.unwrap();
        let writer = tokio::spawn(run(sink.clone(), drain, CONFIG));
        tokio::task::yield_now().await;
        drop(replies); // the session ended: the writer stops
        writer.await.unwrap();
        assert_eq!(sink.events(), [text("ack"), text("r1"), text("r2"), Event::Flush]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_record_is_completed_only_once_flushed() {
        let sink = Recorder::default();
        let (outlet, drain) = Outlet::new(8, 8, CancellationToken::new());
        let replies = outlet.replies(8);
        let (to_group, mut completions) = tokio::sync::mpsc::unbounded_channel();
        let completion = Completion { session: 1, partition: 0, offset: 7 };
        let paced = PacedFrame { frame: "g".into(), done: Some(Done::new(to_group, completion)) };
        outlet.send_paced(paced).await.unwrap();
        let writer = tokio::spawn(run(sink.clone(), drain, CONFIG));
        let completed = completions.recv().await.expect("completion");
        assert_eq!(completed, completion);
        assert_eq!(sink.events(), [text("g"), Event::Flush], "flushed before the completion");
        drop(replies);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn pings_keep_their_schedule_on_a_busy_socket() {
        let sink = Recorder::default();
        let (outlet, drain) = Outlet::new(8, 8, CancellationToken::new());
        let replies = outlet.replies(8);
        let writer = tokio::spawn(run(sink.clone(), drain, CONFIG));
        // A record every second for 45 s: two pings are due meanwhile.
        for i in 0..45 {
            record(&outlet, &i.to_string());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let pings = sink.events().iter().filter(|e| **e == Event::Ping).count();
        assert_eq!(pings, 2, "{:?}", sink.events());
        drop(replies);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_socket_ends_the_writer_after_the_write_timeout() {
        let sink = Recorder { stalled: true, ..Recorder::default() };
        let (outlet, drain) = Outlet::new(8, 8, CancellationToken::new());
        let _replies = outlet.replies(8);
        record(&outlet, "stuck");
        let started = Instant::now();
        run(sink, drain, CONFIG).await;
        let waited = started.elapsed();
        assert!(waited >= CONFIG.write_timeout, "gave up after {waited:?}");
        assert!(waited < CONFIG.write_timeout + Duration::from_secs(1), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn close_sends_the_code_and_ends_the_writer() {
        let sink = Recorder::default();
        let (outlet, drain) = Outlet::new(8, 8, CancellationToken::new());
        let replies = outlet.replies(8);
        replies.send("bye".into()).await.unwrap();
        replies.close(CloseCode::IDLE_TIMEOUT);
        run(sink.clone(), drain, CONFIG).await;
        let code = CloseCode::IDLE_TIMEOUT.0;
        assert_eq!(sink.events(), [text("bye"), Event::Close(code), Event::Flush]);
    }

    #[tokio::test(start_paused = true)]
    async fn records_within_the_coalescing_window_share_a_write_and_replies_do_not_wait() {
        let sink = Recorder::default();
        let (outlet, drain) = Outlet::new(8, 8, CancellationToken::new());
        let replies = outlet.replies(8);
        let config = WriterConfig { coalesce: Duration::from_millis(5), ..CONFIG };
        let writer = tokio::spawn(run(sink.clone(), drain, config));
        tokio::task::yield_now().await;
        record(&outlet, "r1");
        tokio::time::sleep(Duration::from_millis(2)).await;
        record(&outlet, "r2");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(sink.events(), [], "still within the window");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(sink.events(), [text("r1"), text("r2"), Event::Flush], "one write");

        replies.send("ack".into()).await.unwrap();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let events = sink.events();
        assert_eq!(events[3..], [text("ack"), Event::Flush], "a reply goes out at once");
        drop(replies);
        writer.await.unwrap();
    }
}
