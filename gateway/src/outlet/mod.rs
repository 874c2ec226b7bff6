//! A socket's outlet: the bounded queues that every delivery path (the live
//! fan-out through the [`crate::hub`], replays, shared groups) fills for one
//! socket, and that its writer drains. The policy when a queue is full is
//! the subscription's:
//!
//! - `disconnect` (live, the default): the queue is bounded by
//!   `limits.outbound_queue`; a full queue kicks the socket (close 4000) and
//!   the record is not queued. The hub never waits on a socket.
//! - `drop_oldest` / `conflate` (live): the [`lossy`] queue drops or
//!   replaces old records and reports `lagged`; it never kicks.
//! - paced (replays and group records): the sender waits for room
//!   (`limits.replay_queue`), so the socket sets the pace of its own
//!   consumer and nothing is dropped.
//!
//! The outlet knows nothing of Kafka or sessions. A group record carries a
//! [`Done`], which the writer fires once the frame is flushed: it only sends
//! a [`Completion`] message back to the group, which owns the offsets.

pub mod lossy;

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::Overflow;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use lossy::LossyQueue;

/// The senders' end of a socket's outlet; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outlet {
    live: mpsc::Sender<Utf8Bytes>,
    lossy: Arc<LossyQueue>,
    paced: mpsc::Sender<PacedFrame>,
    /// Cancelled when the `disconnect` queue overflows: the session closes.
    kick: CancellationToken,
}

/// The writer's end of a socket's outlet.
#[derive(Debug)]
pub struct Drain {
    pub live: mpsc::Receiver<Utf8Bytes>,
    pub lossy: Arc<LossyQueue>,
    pub paced: mpsc::Receiver<PacedFrame>,
}

/// A record that flows at its socket's pace (a replay's, or a shared
/// group's): the sender waits for room rather than dropping it. `done`
/// marks a group record processed (`ack: "auto"`) once the writer has
/// flushed it.
#[derive(Debug)]
pub struct PacedFrame {
    pub frame: Utf8Bytes,
    pub done: Option<Done>,
}

/// Which group record a socket has processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub session: u64,
    pub partition: i32,
    pub offset: i64,
}

/// Reports one group record processed when fired. The channel is
/// unbounded but holds at most one message per record in flight, which the
/// paced queues bound.
#[derive(Debug)]
pub struct Done {
    to: mpsc::UnboundedSender<Completion>,
    completion: Completion,
}

impl Done {
    pub fn new(to: mpsc::UnboundedSender<Completion>, completion: Completion) -> Self {
        Self { to, completion }
    }

    pub fn complete(self) {
        // The group is gone: its next owner starts from the committed
        // offset and delivers the record again (at least once).
        let _ = self.to.send(self.completion);
    }
}

impl Outlet {
    /// An outlet whose `disconnect` and lossy queues hold `capacity` records
    /// and whose paced queue holds `paced_capacity`.
    pub fn new(capacity: usize, paced_capacity: usize) -> (Self, Drain) {
        let (live, live_rx) = mpsc::channel(capacity);
        let (paced, paced_rx) = mpsc::channel(paced_capacity);
        let lossy = Arc::new(LossyQueue::new(capacity));
        let outlet = Self { live, lossy: lossy.clone(), paced, kick: CancellationToken::new() };
        (outlet, Drain { live: live_rx, lossy, paced: paced_rx })
    }

    /// Queues a live record by the subscription's `overflow` policy; false
    /// when the socket did not take it. Never waits.
    pub fn offer(
        &self,
        overflow: Overflow,
        topic: &Arc<str>,
        partition: i32,
        key: Option<&[u8]>,
        frame: &Utf8Bytes,
    ) -> bool {
        match overflow {
            Overflow::Disconnect => match self.live.try_send(frame.clone()) {
                Ok(()) => true,
                // Policy when full: the socket is too slow; close it rather
                // than wait for it or grow its queue.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.kick.cancel();
                    false
                }
                // The session is ending and will leave on its own.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            Overflow::DropOldest => {
                self.lossy.push(topic, None, frame.clone());
                true
            }
            Overflow::Conflate => {
                self.lossy.push(topic, key.map(|k| (partition, k)), frame.clone());
                true
            }
        }
    }

    /// Queues a paced record, waiting for room; gives it back when the
    /// socket is gone.
    pub async fn send_paced(&self, frame: PacedFrame) -> Result<(), PacedFrame> {
        self.paced.send(frame).await.map_err(|e| e.0)
    }

    /// Whether the paced queue has room now.
    pub fn has_paced_room(&self) -> bool {
        self.paced.capacity() > 0
    }

    /// Cancelled when the socket was kicked for being too slow.
    pub fn kicked(&self) -> &CancellationToken {
        &self.kick
    }
}
