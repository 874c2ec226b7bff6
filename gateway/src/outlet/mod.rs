//! A socket's outlet: the one bounded queue that every delivery path (the
//! live fan-out through the [`crate::hub`], replays, shared groups) and the
//! session's replies fill for one socket, and that its writer drains. One
//! lock guards it, one wake-up tells the writer there is work, and the
//! writer takes everything queued in one go (up to a batch).
//!
//! What the queue holds, in the order the writer takes it:
//!
//! - replies (acks, errors, `subscribed`, …), bounded by the session's
//!   reply room: [`Replies::send`] waits for room, so a client that does
//!   not read its answers stops being read;
//! - records, in arrival order, by the policy of their subscription when
//!   the socket does not keep up:
//!   - `disconnect` (live, the default): at most `limits.outbound_queue`
//!     queued; past that the socket is kicked (close 4000) and the record
//!     is not queued. The hub never waits on a socket.
//!   - paced (replays and group records): the sender waits for room
//!     (`limits.replay_queue`), so the socket sets the pace of its own
//!     consumer and nothing is dropped;
//! - `drop_oldest` / `conflate` records ([`lossy`]): never kick, drop or
//!   replace old records and report `lagged` once drained.
//!
//! A throttled subscription's live records (`subscribe.throttle_ms`) pass
//! through [`throttle`] first: at most one per key per window, the newest;
//! the ones held back are queued (by the same policy) when their window
//! ends, which the writer learns from [`Drain::take`] ([`Taken::More`]).
//!
//! The outlet knows nothing of Kafka or sessions. A group record carries a
//! [`Done`], which the writer fires once the frame is flushed: it only sends
//! a [`Completion`] message back to the group, which owns the offsets.

pub mod lossy;
pub mod throttle;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::{CloseCode, Overflow};
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;

use lossy::Lossy;
use throttle::{Admit, Released, Throttle};

/// The senders' end of a socket's outlet; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outlet {
    shared: Arc<Shared>,
}

/// The session's end: its replies, and the end of the socket. Dropping it
/// tells the writer to stop once it has written the replies queued before.
#[derive(Debug)]
pub struct Replies {
    shared: Arc<Shared>,
}

/// The writer's end. Dropping it (the writer stopped) refuses every
/// sender from then on.
#[derive(Debug)]
pub struct Drain {
    shared: Arc<Shared>,
}

/// What the writer takes from the outlet, in the order to write it.
#[derive(Debug)]
pub enum Item {
    /// A reply, a live record or a notice.
    Frame(Utf8Bytes),
    /// A replayed or shared-group record; its `done` fires once flushed.
    Paced(PacedFrame),
    /// Send this close frame and stop.
    Close(CloseCode),
    /// The client closed: flush the echo of its close frame (queued by the
    /// socket itself) and stop.
    Finish,
}

impl From<Utf8Bytes> for Item {
    fn from(frame: Utf8Bytes) -> Self {
        Self::Frame(frame)
    }
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
/// paced room bounds. Boxed, so that the queue's items stay small.
#[derive(Debug)]
pub struct Done(Box<(tokio::sync::mpsc::UnboundedSender<Completion>, Completion)>);

impl Done {
    pub fn new(to: tokio::sync::mpsc::UnboundedSender<Completion>, completion: Completion) -> Self {
        Self(Box::new((to, completion)))
    }

    pub fn complete(self) {
        let (to, completion) = *self.0;
        // The group is gone: its next owner starts from the committed
        // offset and delivers the record again (at least once).
        let _ = to.send(completion);
    }
}

#[derive(Debug)]
struct Shared {
    /// Short critical sections only (a push, a take); never held across an
    /// await.
    queue: Mutex<Queue>,
    /// The writer waits here when it found nothing to take.
    ready: Notify,
    /// Room for paced records: a sender takes a permit, the writer gives it
    /// back when it takes the record.
    paced_room: Semaphore,
    /// Room for replies, likewise (zero until [`Outlet::replies`]).
    reply_room: Semaphore,
    /// The paced bound (what `paced_room` started with).
    paced_capacity: usize,
    /// Cancelled when a `disconnect` record finds no room (the socket is
    /// kicked) or the writer dropped its [`Drain`]: the session closes.
    stop: CancellationToken,
    /// The close code an operator asked for ([`Outlet::close_with`]), or 0.
    closing: AtomicU16,
}

#[derive(Debug)]
struct Queue {
    replies: VecDeque<Item>,
    records: VecDeque<Record>,
    /// `disconnect` records in `records`, and their bound.
    live: usize,
    live_capacity: usize,
    lossy: Lossy,
    /// Windows of throttled subscriptions, and the records they hold back
    /// (made on the first throttled record: most sockets have none).
    throttle: Option<Box<Throttle>>,
    /// The writer found nothing and may be waiting: the next push wakes it.
    writer_waiting: bool,
    /// The session dropped its [`Replies`].
    session_ended: bool,
    /// The writer dropped its [`Drain`].
    writer_gone: bool,
    /// A `disconnect` record found no room.
    kicked: bool,
}

/// Queue slots kept once a queue is drained; a queue that grew past this
/// for a burst (a catch-up, a spike) gives its room back when emptied, so
/// that an idle socket costs what it cost before the burst.
const KEPT_SLOTS: usize = 16;

impl Queue {
    /// Queues a live record by its subscription's policy; false when a
    /// `disconnect` record found no room (the socket is kicked: the caller
    /// cancels `stop`).
    fn push_live(
        &mut self,
        overflow: Overflow,
        topic: &Arc<str>,
        partition: i32,
        key: Option<&[u8]>,
        frame: Utf8Bytes,
    ) -> bool {
        match overflow {
            Overflow::Disconnect => {
                if self.live >= self.live_capacity {
                    // Policy when full: the socket is too slow; close it
                    // rather than wait for it or grow its queue.
                    self.kicked = true;
                    return false;
                }
                self.live += 1;
                self.records.push_back(Record::Live(frame));
            }
            Overflow::DropOldest => self.lossy.push(topic, None, frame),
            Overflow::Conflate => self.lossy.push(topic, key.map(|k| (partition, k)), frame),
        }
        true
    }

    fn release_burst_room(&mut self) {
        if self.records.is_empty() && self.records.capacity() > KEPT_SLOTS {
            self.records = VecDeque::new();
        }
        if self.replies.is_empty() && self.replies.capacity() > KEPT_SLOTS {
            self.replies = VecDeque::new();
        }
    }
}

#[derive(Debug)]
enum Record {
    Live(Utf8Bytes),
    Paced(PacedFrame),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic under this lock leaves plain queues behind: still usable.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends a push: wakes the writer if it may be waiting.
    fn pushed(&self, mut queue: MutexGuard<'_, Queue>) {
        let wake = std::mem::take(&mut queue.writer_waiting);
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
    }
}

impl Outlet {
    /// An outlet whose `disconnect` and lossy records are bounded by
    /// `capacity` each and whose paced records by `paced_capacity`. `stop`
    /// is cancelled when the socket is kicked for being too slow and when
    /// the writer's [`Drain`] is dropped: the one signal its session waits
    /// on (with the gateway's shutdown as its parent, say).
    pub fn new(capacity: usize, paced_capacity: usize, stop: CancellationToken) -> (Self, Drain) {
        let queue = Queue {
            replies: VecDeque::new(),
            records: VecDeque::new(),
            live: 0,
            live_capacity: capacity,
            lossy: Lossy::new(capacity),
            throttle: None,
            writer_waiting: false,
            session_ended: false,
            writer_gone: false,
            kicked: false,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(queue),
            ready: Notify::new(),
            paced_room: Semaphore::new(paced_capacity),
            reply_room: Semaphore::new(0),
            paced_capacity,
            stop,
            closing: AtomicU16::new(0),
        });
        (Self { shared: shared.clone() }, Drain { shared })
    }

    /// The session's end, with room for `capacity` replies. Once per outlet.
    pub fn replies(&self, capacity: usize) -> Replies {
        self.shared.reply_room.add_permits(capacity);
        Replies { shared: self.shared.clone() }
    }

    /// Queues a live record by the subscription's `overflow` policy, after
    /// its `throttle` window if it has one; false when the socket did not
    /// take it. Never waits.
    #[allow(clippy::too_many_arguments)] // one record's coordinates and its subscription's policies
    pub fn offer(
        &self,
        overflow: Overflow,
        throttle_ms: Option<std::num::NonZeroU32>,
        topic: &Arc<str>,
        partition: i32,
        key: Option<&[u8]>,
        frame: &Utf8Bytes,
    ) -> bool {
        let mut queue = self.shared.lock();
        if queue.writer_gone {
            // The session is ending and will leave on its own.
            return false;
        }
        if let Some(ms) = throttle_ms {
            let window = std::time::Duration::from_millis(u64::from(ms.get()));
            let now = std::time::Instant::now();
            let throttle = queue.throttle.get_or_insert_with(Box::default);
            match throttle.admit(topic, partition, key, frame, overflow, window, now) {
                Admit::Now => {}
                Admit::Held(false) => return true,
                // The writer may sleep past the new release: wake it.
                Admit::Held(true) => {
                    queue.writer_waiting = true;
                    self.shared.pushed(queue);
                    return true;
                }
            }
        }
        if !queue.push_live(overflow, topic, partition, key, frame.clone()) {
            drop(queue);
            self.shared.stop.cancel();
            return false;
        }
        self.shared.pushed(queue);
        true
    }

    /// Queues a paced record, waiting for room; gives it back when the
    /// socket is gone.
    pub async fn send_paced(&self, frame: PacedFrame) -> Result<(), PacedFrame> {
        match self.shared.paced_room.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_closed) => return Err(frame),
        }
        let mut queue = self.shared.lock();
        if queue.writer_gone {
            return Err(frame);
        }
        queue.records.push_back(Record::Paced(frame));
        self.shared.pushed(queue);
        Ok(())
    }

    /// Queues a paced record if there is room now; gives it back when there
    /// is not (`Ok(Some)`), `Err` when the socket is gone.
    pub fn try_send_paced(&self, frame: PacedFrame) -> Result<Option<PacedFrame>, WriterGone> {
        match self.shared.paced_room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Ok(Some(frame)),
            Err(TryAcquireError::Closed) => return Err(WriterGone),
        }
        let mut queue = self.shared.lock();
        if queue.writer_gone {
            return Err(WriterGone);
        }
        queue.records.push_back(Record::Paced(frame));
        self.shared.pushed(queue);
        Ok(None)
    }

    /// Queues paced records, in order, waiting for room for each chunk of at
    /// most the paced bound: one lock and one wake-up per chunk rather than
    /// per record. False when the socket is gone.
    pub async fn send_paced_all(&self, frames: Vec<Utf8Bytes>) -> bool {
        let bound = self.shared.paced_capacity.max(1);
        let mut frames = frames.into_iter().peekable();
        while frames.peek().is_some() {
            let chunk: Vec<Utf8Bytes> = frames.by_ref().take(bound).collect();
            match self.shared.paced_room.acquire_many(chunk.len() as u32).await {
                Ok(permit) => permit.forget(),
                Err(_closed) => return false,
            }
            let mut queue = self.shared.lock();
            if queue.writer_gone {
                return false;
            }
            let paced =
                chunk.into_iter().map(|frame| Record::Paced(PacedFrame { frame, done: None }));
            queue.records.extend(paced);
            self.shared.pushed(queue);
        }
        true
    }

    /// Whether a paced record would be queued now without waiting.
    pub fn has_paced_room(&self) -> bool {
        self.shared.paced_room.available_permits() > 0
    }

    /// The `stop` token given to [`Outlet::new`].
    pub fn stop(&self) -> &CancellationToken {
        &self.shared.stop
    }

    /// Closes the socket from outside (an operator, a drain) with `code`:
    /// its session ends as when kicked, and reads the code from
    /// [`Outlet::closing`]. The first code asked for wins.
    pub fn close_with(&self, code: CloseCode) {
        let _ =
            self.shared.closing.compare_exchange(0, code.0, Ordering::AcqRel, Ordering::Acquire);
        self.shared.stop.cancel();
    }

    /// The code [`Outlet::close_with`] asked for, if it was called.
    pub fn closing(&self) -> Option<CloseCode> {
        match self.shared.closing.load(Ordering::Acquire) {
            0 => None,
            code => Some(CloseCode(code)),
        }
    }

    /// Whether the socket was kicked for being too slow.
    pub fn was_kicked(&self) -> bool {
        self.shared.lock().kicked
    }

    /// Whether the writer dropped its end.
    pub fn writer_gone(&self) -> bool {
        self.shared.lock().writer_gone
    }
}

/// Why [`Replies::try_send`] did not queue a reply.
#[derive(Debug)]
pub enum TrySendError {
    /// The replies are at their bound: the frame, to send with a wait.
    Full(Utf8Bytes),
    /// The writer is gone.
    Gone,
}

/// The writer is gone: nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterGone;

impl Replies {
    /// Queues a reply, waiting while the socket's replies are at their bound.
    pub async fn send(&self, frame: Utf8Bytes) -> Result<(), WriterGone> {
        match self.shared.reply_room.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_closed) => return Err(WriterGone),
        }
        self.push(Item::Frame(frame))
    }

    /// Queues a reply if there is room now; gives it back when there is not
    /// (then [`Replies::send`] waits for room).
    pub fn try_send(&self, frame: Utf8Bytes) -> Result<(), TrySendError> {
        match self.shared.reply_room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Err(TrySendError::Full(frame)),
            Err(TryAcquireError::Closed) => return Err(TrySendError::Gone),
        }
        self.push(Item::Frame(frame)).map_err(|WriterGone| TrySendError::Gone)
    }

    /// Takes room for one reply to be written later, from any thread (a
    /// publish's answer, written by the producer's delivery callback); `None`
    /// while the replies are at their bound.
    pub fn try_reserve(&self) -> Result<Option<ReplySlot>, WriterGone> {
        match self.shared.reply_room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Ok(None),
            Err(TryAcquireError::Closed) => return Err(WriterGone),
        }
        Ok(Some(ReplySlot { shared: Some(self.shared.clone()) }))
    }

    /// Takes room for one reply, waiting while the replies are at their
    /// bound (see [`Replies::try_reserve`]).
    pub async fn reserve(&self) -> Result<ReplySlot, WriterGone> {
        match self.shared.reply_room.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_closed) => return Err(WriterGone),
        }
        Ok(ReplySlot { shared: Some(self.shared.clone()) })
    }

    /// Queues the close frame (best effort, past the bound): the writer
    /// writes the replies before it, then stops.
    pub fn close(&self, code: CloseCode) {
        let _ = self.push(Item::Close(code));
    }

    /// The client closed: the writer flushes the echo and stops.
    pub fn finish(&self) {
        let _ = self.push(Item::Finish);
    }

    fn push(&self, item: Item) -> Result<(), WriterGone> {
        let mut queue = self.shared.lock();
        if queue.writer_gone {
            return Err(WriterGone);
        }
        queue.replies.push_back(item);
        self.shared.pushed(queue);
        Ok(())
    }
}

/// Room for one reply in a socket's outlet ([`Replies::try_reserve`]):
/// filled once, from any thread, or given back when dropped unfilled.
#[derive(Debug)]
pub struct ReplySlot {
    /// `None` once filled.
    shared: Option<Arc<Shared>>,
}

impl ReplySlot {
    /// Queues `frame` in the room taken. Not queued once the session has
    /// ended or the writer is gone: nobody would write it.
    pub fn fill(mut self, frame: Utf8Bytes) {
        let Some(shared) = self.shared.take() else { return };
        let mut queue = shared.lock();
        if queue.writer_gone || queue.session_ended {
            drop(queue);
            shared.reply_room.add_permits(1);
            return;
        }
        queue.replies.push_back(Item::Frame(frame));
        shared.pushed(queue);
    }
}

impl Drop for ReplySlot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.reply_room.add_permits(1);
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.session_ended = true;
        queue.writer_waiting = true;
        self.shared.pushed(queue);
    }
}

/// What [`Drain::take`] found besides the items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Go on (wait on [`Drain::ready`] if nothing was taken), and take
    /// again at this instant if it is given: a throttled record held back
    /// is due then.
    More(Option<tokio::time::Instant>),
    /// The session ended: write what was taken, then stop.
    Ended,
}

impl Drain {
    /// Whether a reply (or a close) waits: the writer sends those at once
    /// rather than wait for more records to write with them.
    pub fn replies_waiting(&self) -> bool {
        !self.shared.lock().replies.is_empty()
    }

    /// Moves up to `max` items into `out`: replies first, then records in
    /// their order, then lossy records (with their `lagged` notices).
    pub fn take(&mut self, max: usize, out: &mut Vec<Item>) -> Taken {
        let start = out.len();
        let (mut replies, mut paced) = (0, 0);
        let mut queue = self.shared.lock();
        let mut kicked = false;
        if let Some(due) = queue.throttle.as_ref().and_then(|t| t.next_release()) {
            let now = std::time::Instant::now();
            if due <= now {
                let mut released = Vec::new();
                if let Some(throttle) = queue.throttle.as_mut() {
                    throttle.release(now, &mut released);
                }
                for Released { topic, partition, key, frame, overflow } in released {
                    kicked |= !queue.push_live(overflow, &topic, partition, key.as_deref(), frame);
                }
            }
        }
        while out.len() - start < max {
            let Some(item) = queue.replies.pop_front() else { break };
            replies += usize::from(matches!(item, Item::Frame(_)));
            out.push(item);
        }
        while out.len() - start < max {
            match queue.records.pop_front() {
                Some(Record::Live(frame)) => {
                    queue.live -= 1;
                    out.push(Item::Frame(frame));
                }
                Some(Record::Paced(frame)) => {
                    paced += 1;
                    out.push(Item::Paced(frame));
                }
                None => break,
            }
        }
        let room = max - (out.len() - start);
        if room > 0 && !queue.lossy.is_empty() {
            queue.lossy.drain_into(room, out);
        }
        let ended = queue.session_ended;
        if out.len() == start {
            queue.writer_waiting = true;
        }
        queue.release_burst_room();
        let release_at = queue.throttle.as_ref().and_then(|t| t.next_release());
        drop(queue);
        if kicked {
            self.shared.stop.cancel();
        }
        self.shared.reply_room.add_permits(replies);
        self.shared.paced_room.add_permits(paced);
        if ended {
            Taken::Ended
        } else {
            Taken::More(release_at.map(tokio::time::Instant::from_std))
        }
    }

    /// Waits until something may have been queued since a [`Drain::take`]
    /// that found nothing.
    pub async fn ready(&self) {
        self.shared.ready.notified().await
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.writer_gone = true;
        queue.replies.clear();
        queue.records.clear();
        drop(queue);
        self.shared.paced_room.close();
        self.shared.reply_room.close();
        self.shared.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(items: &[Item]) -> Vec<&str> {
        items
            .iter()
            .map(|item| match item {
                Item::Frame(f) => f.as_str(),
                Item::Paced(p) => p.frame.as_str(),
                Item::Close(_) => "close",
                Item::Finish => "finish",
            })
            .collect()
    }

    fn live(outlet: &Outlet, frame: &str) -> bool {
        outlet.offer(Overflow::Disconnect, None, &"t".into(), 0, None, &frame.into())
    }

    #[tokio::test]
    async fn replies_go_first_then_records_in_order_then_lossy() {
        let (outlet, mut drain) = Outlet::new(4, 4, CancellationToken::new());
        let replies = outlet.replies(4);
        outlet.offer(Overflow::DropOldest, None, &"t".into(), 0, None, &"lossy".into());
        assert!(live(&outlet, "r1"));
        outlet.send_paced(PacedFrame { frame: "p1".into(), done: None }).await.unwrap();
        assert!(live(&outlet, "r2"));
        replies.send("ack".into()).await.unwrap();
        let mut out = Vec::new();
        assert_eq!(drain.take(64, &mut out), Taken::More(None));
        assert_eq!(frames(&out), ["ack", "r1", "p1", "r2", "lossy"]);
    }

    #[tokio::test]
    async fn reserved_reply_room_is_filled_from_another_thread_or_given_back() {
        let (outlet, mut drain) = Outlet::new(4, 4, CancellationToken::new());
        let replies = outlet.replies(2);
        let first = replies.try_reserve().unwrap().expect("room for one");
        let second = replies.try_reserve().unwrap().expect("room for two");
        assert!(replies.try_reserve().unwrap().is_none(), "the bound holds");
        assert!(matches!(replies.try_send("pong".into()), Err(TrySendError::Full(_))));
        drop(second);
        let third = replies.try_reserve().unwrap().expect("an unfilled slot gives its room back");
        // Filled on another thread (the producer's delivery callback).
        std::thread::spawn(move || first.fill("ack-1".into())).join().unwrap();
        let waiting = tokio::spawn(async move { replies.reserve().await.map(|_| replies) });
        let mut out = Vec::new();
        assert_eq!(drain.take(64, &mut out), Taken::More(None));
        assert_eq!(frames(&out), ["ack-1"]);
        let replies = waiting.await.unwrap().expect("taking the ack made room");
        drop(replies);
        third.fill("after the session ended".into());
        out.clear();
        assert_eq!(drain.take(64, &mut out), Taken::Ended);
        assert!(out.is_empty(), "nothing is queued once the session has ended: {out:?}");
    }

    #[tokio::test]
    async fn a_full_disconnect_queue_kicks_and_takes_nothing_more() {
        let (outlet, mut drain) = Outlet::new(2, 2, CancellationToken::new());
        assert!(live(&outlet, "a") && live(&outlet, "b"));
        assert!(!outlet.was_kicked() && !outlet.stop().is_cancelled());
        assert!(!live(&outlet, "c"), "no room: not queued");
        assert!(outlet.was_kicked() && outlet.stop().is_cancelled(), "the session is told");
        let mut out = Vec::new();
        drain.take(64, &mut out);
        assert_eq!(frames(&out), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_paced_sender_waits_for_room_and_the_take_gives_it_back() {
        let (outlet, mut drain) = Outlet::new(2, 1, CancellationToken::new());
        outlet.send_paced(PacedFrame { frame: "p1".into(), done: None }).await.unwrap();
        assert!(!outlet.has_paced_room());
        let sender = outlet.clone();
        let second = tokio::spawn(async move {
            sender.send_paced(PacedFrame { frame: "p2".into(), done: None }).await.is_ok()
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "waits while the queue is full");
        let mut out = Vec::new();
        drain.take(64, &mut out);
        assert!(second.await.unwrap());
        drain.take(64, &mut out);
        assert_eq!(frames(&out), ["p1", "p2"]);
    }

    #[tokio::test]
    async fn paced_records_go_in_chunks_of_the_bound_and_in_order() {
        let (outlet, mut drain) = Outlet::new(8, 2, CancellationToken::new());
        let sender = outlet.clone();
        let all = tokio::spawn(async move {
            let frames: Vec<Utf8Bytes> = ["a", "b", "c", "d", "e"].map(Utf8Bytes::from).into();
            sender.send_paced_all(frames).await
        });
        let mut out = Vec::new();
        while out.len() < 5 {
            drain.take(64, &mut out);
            tokio::task::yield_now().await;
            assert!(out.len() <= 5);
        }
        assert!(all.await.unwrap());
        assert_eq!(frames(&out), ["a", "b", "c", "d", "e"]);
        drop(drain);
        assert!(!outlet.send_paced_all(vec!["f".into()]).await, "the socket is gone");
    }

    #[tokio::test]
    async fn a_batch_takes_at_most_max_and_leaves_the_rest() {
        let (outlet, mut drain) = Outlet::new(8, 8, CancellationToken::new());
        for i in 0..5 {
            assert!(live(&outlet, &i.to_string()));
        }
        let mut out = Vec::new();
        drain.take(3, &mut out);
        assert_eq!(frames(&out), ["0", "1", "2"]);
        out.clear();
        drain.take(3, &mut out);
        assert_eq!(frames(&out), ["3", "4"]);
        assert!(live(&outlet, "5") && live(&outlet, "6") && live(&outlet, "7"));
    }

    #[tokio::test]
    async fn a_drained_burst_gives_its_room_back() {
        let (outlet, mut drain) = Outlet::new(1_024, 1_024, CancellationToken::new());
        let burst: Vec<Utf8Bytes> = (0..500).map(|i| i.to_string().into()).collect();
        assert!(outlet.send_paced_all(burst).await);
        assert!(outlet.shared.lock().records.capacity() >= 500);
        let mut out = Vec::new();
        while out.len() < 500 {
            drain.take(64, &mut out);
        }
        assert_eq!(frames(&out[..3]), ["0", "1", "2"]);
        let capacity = outlet.shared.lock().records.capacity();
        assert!(capacity <= KEPT_SLOTS, "an idle socket still holds {capacity} slots");
        // Still a working queue afterwards.
        assert!(live(&outlet, "next"));
        out.clear();
        drain.take(64, &mut out);
        assert_eq!(frames(&out), ["next"]);
    }

    #[tokio::test]
    async fn try_send_queues_while_there_is_room_and_gives_the_frame_back_when_full() {
        let (outlet, mut drain) = Outlet::new(2, 2, CancellationToken::new());
        let replies = outlet.replies(1);
        assert!(replies.try_send("a".into()).is_ok());
        match replies.try_send("b".into()) {
            Err(TrySendError::Full(frame)) => assert_eq!(frame.as_str(), "b"),
            other => panic!("expected Full, got {other:?}"),
        }
        let mut out = Vec::new();
        drain.take(64, &mut out);
        assert!(replies.try_send("b".into()).is_ok(), "the take gave the room back");
        drain.take(64, &mut out);
        assert_eq!(frames(&out), ["a", "b"]);
        drop(drain);
        assert!(matches!(replies.try_send("c".into()), Err(TrySendError::Gone)));
    }

    #[tokio::test]
    async fn when_the_writer_is_gone_senders_are_refused() {
        let (outlet, drain) = Outlet::new(2, 2, CancellationToken::new());
        let replies = outlet.replies(2);
        assert!(!outlet.stop().is_cancelled());
        drop(drain);
        assert!(outlet.stop().is_cancelled() && outlet.writer_gone(), "the session is told");
        assert!(!live(&outlet, "x"));
        assert!(!outlet.was_kicked(), "not a slow consumer");
        assert!(outlet.send_paced(PacedFrame { frame: "p".into(), done: None }).await.is_err());
        assert_eq!(replies.send("ack".into()).await, Err(WriterGone));
    }

    #[tokio::test]
    async fn the_session_ending_wakes_the_writer_and_ends_it() {
        let (outlet, mut drain) = Outlet::new(2, 2, CancellationToken::new());
        let replies = outlet.replies(2);
        let mut out = Vec::new();
        assert_eq!(drain.take(64, &mut out), Taken::More(None));
        replies.close(CloseCode::GOING_AWAY);
        drop(replies);
        drain.ready().await;
        assert_eq!(drain.take(64, &mut out), Taken::Ended);
        assert_eq!(frames(&out), ["close"]);
    }
}
