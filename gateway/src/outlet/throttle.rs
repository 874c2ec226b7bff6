//! Per-key throttling of a socket's live records (`subscribe.throttle_ms`),
//! inside the socket's outlet, under its lock.
//!
//! Each key of a topic-partition (a keyless record counts as one key per
//! partition) gets at most one record per window, always the newest:
//!
//! - a record whose key is outside a window goes to the queue at once and
//!   opens a window;
//! - a record inside its key's window waits as the key's pending record; a
//!   newer one replaces it (per-key conflation);
//! - when the window ends the pending record is queued, and a new window
//!   opens: the last value of a key is never lost, only the ones in
//!   between.
//!
//! The writer learns from [`Throttle::next_release`] when to come back for
//! pending records. Bounded: at most [`MAX_KEYS`] keys are tracked per
//! socket; past that a record whose key has no window goes through
//! unthrottled (the queue's own bound and policy still apply), and expired
//! windows are forgotten first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::Overflow;

/// Keys tracked per socket.
pub const MAX_KEYS: usize = 65_536;

/// A topic, a partition and a key (`None`: the partition's keyless records).
type Key = (Arc<str>, i32, Option<Box<[u8]>>);

#[derive(Debug)]
struct Slot {
    /// When the key's window ends.
    ends: Instant,
    window: Duration,
    /// The newest record that arrived inside the window.
    pending: Option<(Utf8Bytes, Overflow)>,
}

/// What to do with a throttled record now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Queue it now.
    Now,
    /// Held as its key's pending record; `true` when that scheduled a new
    /// release (the writer may need waking to learn of it).
    Held(bool),
}

/// A pending record whose window ended: queue it by its policy.
#[derive(Debug)]
pub struct Released {
    pub topic: Arc<str>,
    pub partition: i32,
    pub key: Option<Box<[u8]>>,
    pub frame: Utf8Bytes,
    pub overflow: Overflow,
}

/// One socket's throttle windows.
#[derive(Debug, Default)]
pub struct Throttle {
    slots: HashMap<Key, Slot>,
    /// Windows with a pending record, by when they end (the sequence number
    /// keeps equal instants apart).
    due: BTreeMap<(Instant, u64), Key>,
    seq: u64,
}

impl Throttle {
    /// Decides for a record of `key` under a `window`.
    #[allow(clippy::too_many_arguments)] // one record's coordinates, as the hub has them
    pub fn admit(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        key: Option<&[u8]>,
        frame: &Utf8Bytes,
        overflow: Overflow,
        window: Duration,
        now: Instant,
    ) -> Admit {
        let id: Key = (topic.clone(), partition, key.map(Box::from));
        if let Some(slot) = self.slots.get_mut(&id) {
            // Inside the window, or past it with the pending record not yet
            // taken by the writer: this newer one takes its place (sending
            // it now would overtake the older one).
            if now < slot.ends || slot.pending.is_some() {
                let first = slot.pending.is_none();
                if !first {
                    crate::metrics::throttled(1);
                }
                slot.pending = Some((frame.clone(), overflow));
                if first {
                    self.seq += 1;
                    self.due.insert((slot.ends, self.seq), id);
                }
                return Admit::Held(first);
            }
            // Its window is over (and had nothing pending): a new one.
            slot.ends = now + window;
            slot.window = window;
            return Admit::Now;
        }
        if self.slots.len() >= MAX_KEYS {
            self.forget_expired(now);
            if self.slots.len() >= MAX_KEYS {
                return Admit::Now;
            }
        }
        self.slots.insert(id, Slot { ends: now + window, window, pending: None });
        Admit::Now
    }

    /// The pending records whose windows ended by `now`, oldest window
    /// first; each key's next window opens now.
    pub fn release(&mut self, now: Instant, out: &mut Vec<Released>) {
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            let Some(slot) = self.slots.get_mut(&id) else { continue };
            let Some((frame, overflow)) = slot.pending.take() else { continue };
            slot.ends = now + slot.window;
            let (topic, partition, key) = id;
            out.push(Released { topic, partition, key, frame, overflow });
        }
    }

    /// When the next pending record is due, if any.
    pub fn next_release(&self) -> Option<Instant> {
        self.due.first_key_value().map(|((at, _), _)| *at)
    }

    fn forget_expired(&mut self, now: Instant) {
        self.slots.retain(|_, slot| slot.pending.is_some() || slot.ends > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_one_record_per_window_and_always_its_last_value() {
        let mut t = Throttle::default();
        let topic: Arc<str> = "t".into();
        let window = Duration::from_millis(100);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let frame = |n: u32| Utf8Bytes::from(n.to_string());
        let d = Overflow::Disconnect;
        assert_eq!(t.admit(&topic, 0, Some(b"k"), &frame(1), d, window, at(0)), Admit::Now);
        assert_eq!(t.admit(&topic, 0, Some(b"k"), &frame(2), d, window, at(10)), Admit::Held(true));
        assert_eq!(
            t.admit(&topic, 0, Some(b"k"), &frame(3), d, window, at(20)),
            Admit::Held(false)
        );
        // Another key, and the keyless records of a partition, have windows of their own.
        assert_eq!(t.admit(&topic, 0, Some(b"j"), &frame(9), d, window, at(20)), Admit::Now);
        assert_eq!(t.admit(&topic, 1, None, &frame(7), d, window, at(20)), Admit::Now);
        assert_eq!(t.next_release(), Some(at(100)));

        let mut out = Vec::new();
        t.release(at(99), &mut out);
        assert!(out.is_empty(), "not before the window ends");
        t.release(at(100), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].frame.as_str(), "3", "the newest value, never an older one");
        // A new window opened when the pending record went out.
        assert_eq!(
            t.admit(&topic, 0, Some(b"k"), &frame(4), d, window, at(150)),
            Admit::Held(true)
        );
        assert_eq!(t.next_release(), Some(at(200)));
        // Past the window but before the writer took the pending record: a
        // newer record replaces it rather than overtake it.
        assert_eq!(
            t.admit(&topic, 0, Some(b"k"), &frame(5), d, window, at(210)),
            Admit::Held(false)
        );
        out.clear();
        t.release(at(220), &mut out);
        assert_eq!(out[0].frame.as_str(), "5");
        // After a quiet window the next record goes at once.
        assert_eq!(t.admit(&topic, 0, Some(b"k"), &frame(6), d, window, at(400)), Admit::Now);
    }
}
