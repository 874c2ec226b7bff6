//! Recent records: what the live fan-out delivered lately, per
//! topic-partition, kept in memory so that a resume (or any start a few
//! seconds back) is served without a Kafka read and joins the live path at
//! the exact next offset.
//!
//! Each partition holds one contiguous range `[start, end)`: every record
//! the live consumer handed on from `start` (where the partition was
//! assigned, or the oldest record still kept) up to `end` (the next offset
//! the hub will see). The records are bounded by the node's byte budget
//! (`limits.recent_bytes`, shared by every topic) and by age
//! (`limits.recent_age_ms`); evicting the oldest moves `start` on. The age
//! bound waits while subscribers are catching up on the topic: they are
//! reading these records, and letting them go by age would send all of
//! them back to Kafka at the same moment. The byte budget always holds.
//!
//! A record is kept as the encoded `message` frame shared with the live
//! sockets, plus its key, headers and value so that filters apply to it as
//! to a live record.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::watch;

use crate::filter::{Filter, RecordView};

/// Bookkeeping per record besides its bytes (the `Arc`, the deque slot, the
/// boxes), counted against the budget.
const OVERHEAD: usize = 128;

/// A record header, owned: name and value.
type Header = (Box<str>, Option<Box<[u8]>>);

/// One record of a topic-partition, as the live path delivered it.
#[derive(Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// Kafka's timestamp (ms), if the record has one.
    pub timestamp: Option<i64>,
    /// The `message` frame, encoded once.
    pub frame: Utf8Bytes,
    key: Option<Box<[u8]>>,
    headers: Box<[Header]>,
    value: Option<Box<[u8]>>,
    cached_at: Instant,
}

impl Record {
    pub fn new(
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        frame: Utf8Bytes,
        key: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        value: Option<&[u8]>,
    ) -> Self {
        Self {
            partition,
            offset,
            timestamp,
            frame,
            key: key.map(Box::from),
            headers: headers.iter().map(|(k, v)| (Box::from(*k), v.map(Box::from))).collect(),
            value: value.map(Box::from),
            cached_at: Instant::now(),
        }
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// Whether `filter` (if any) lets this record through.
    pub fn passes(&self, filter: Option<&Filter>) -> bool {
        let Some(filter) = filter else { return true };
        self.with_view(|view| filter.matches(view))
    }

    /// Runs `f` with the record's filter view.
    pub fn with_view<T>(&self, f: impl FnOnce(&RecordView<'_>) -> T) -> T {
        let headers: Vec<(&str, Option<&[u8]>)> =
            self.headers.iter().map(|(k, v)| (&**k, v.as_deref())).collect();
        f(&RecordView::new(self.key(), &headers, self.value.as_deref()))
    }

    /// What the record costs the budget.
    fn bytes(&self) -> usize {
        let headers: usize =
            self.headers.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len())).sum();
        OVERHEAD
            + self.frame.len()
            + self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + headers
    }
}

/// The node's byte budget and age bound, shared by every topic.
#[derive(Debug)]
pub struct Budget {
    max_bytes: usize,
    max_age: Duration,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(max_bytes: usize, max_age: Duration) -> Arc<Self> {
        Arc::new(Self { max_bytes, max_age, used: AtomicUsize::new(0) })
    }

    /// Bytes held now, over every topic.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn over(&self) -> bool {
        self.used() > self.max_bytes
    }
}

/// One partition's range.
#[derive(Debug)]
struct Range {
    start: i64,
    end: i64,
    /// The partition's end when it was assigned: until the live consumer
    /// passes it, it is catching up itself.
    target: i64,
    records: VecDeque<Arc<Record>>,
}

/// Where a subscriber's position stands against a topic's recent records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every partition's position is at or past its range's start: the
    /// recent records (and then the live path) serve it.
    Covered,
    /// Some position is older than what is kept (or the partition is not
    /// assigned yet): Kafka must serve it first.
    Behind,
}

/// A topic's recent records, per assigned partition.
#[derive(Debug)]
pub struct Recent {
    budget: Arc<Budget>,
    ranges: BTreeMap<i32, Range>,
    /// True once the live consumer has reached every partition's `target`:
    /// subscribers that caught up may join the live path then, not before
    /// (they would get its catch-up as a burst of live records). While it
    /// is false, it is sent again every [`PROGRESS_EVERY`] records kept, so
    /// that subscribers waiting at the end of what is kept go on reading
    /// as the live consumer reads on.
    at_head: watch::Sender<bool>,
    /// Records kept since `at_head` was last sent.
    unsignalled: usize,
}

/// Records the live consumer keeps, while it is catching up itself, between
/// two wake-ups of the subscribers waiting for more.
pub const PROGRESS_EVERY: usize = 64;

impl Recent {
    pub fn new(budget: Arc<Budget>) -> Self {
        Self { budget, ranges: BTreeMap::new(), at_head: watch::Sender::new(true), unsignalled: 0 }
    }

    /// The live consumer starts `partition` at `offset`, and the partition
    /// ended at `target` then: the range starts at `offset`, empty (whatever
    /// it held before is let go).
    pub fn assign(&mut self, partition: i32, offset: i64, target: i64) {
        let fresh = Range { start: offset, end: offset, target, records: VecDeque::new() };
        if let Some(old) = self.ranges.insert(partition, fresh) {
            self.budget.give(old.records.iter().map(|r| r.bytes()).sum());
        }
        self.check_head();
    }

    /// Whether the live consumer has reached where every partition ended
    /// when it was assigned.
    pub fn at_head(&self) -> bool {
        *self.at_head.borrow()
    }

    /// A receiver that sees [`Recent::at_head`] turn true, and, until then,
    /// a change every [`PROGRESS_EVERY`] records kept.
    pub fn head_signal(&self) -> watch::Receiver<bool> {
        self.at_head.subscribe()
    }

    /// The live consumer's position reached `positions` (records it had
    /// nothing to hand on for, such as transaction markers, included).
    pub fn reached(&mut self, positions: &BTreeMap<i32, i64>) {
        if self.at_head() {
            return;
        }
        for (p, &at) in positions {
            if let Some(range) = self.ranges.get_mut(p) {
                if at >= range.target {
                    // Past the target with nothing more to hand on below it.
                    range.target = range.target.min(range.end);
                }
            }
        }
        self.check_head();
    }

    fn check_head(&mut self) {
        let at_head = self.ranges.values().all(|r| r.end >= r.target);
        if at_head != self.at_head() {
            self.unsignalled = 0;
            self.at_head.send_replace(at_head);
        }
    }

    /// One more record kept while not at the head: every
    /// [`PROGRESS_EVERY`], the waiting subscribers are woken to read on.
    fn progressed(&mut self) {
        if self.at_head() {
            return;
        }
        self.unsignalled += 1;
        if self.unsignalled >= PROGRESS_EVERY {
            self.unsignalled = 0;
            self.at_head.send_replace(false);
        }
    }

    /// `partition`'s range: the oldest offset kept, and the next offset the
    /// live path hands on.
    pub fn bounds(&self, partition: i32) -> Option<(i64, i64)> {
        self.ranges.get(&partition).map(|r| (r.start, r.end))
    }

    /// The next offset the live path hands on, per assigned partition.
    pub fn ends(&self) -> BTreeMap<i32, i64> {
        self.ranges.iter().map(|(&p, r)| (p, r.end)).collect()
    }

    /// Keeps `record`, the live consumer's next one; evicts what the
    /// node's budget and (unless subscribers are `catching_up` on the
    /// topic) the age bound no longer allow. A record of an unassigned
    /// partition, or one not past the range's end, is ignored.
    pub fn push(&mut self, record: Arc<Record>, catching_up: bool) {
        let partition = record.partition;
        let Some(range) = self.ranges.get_mut(&partition) else { return };
        if record.offset < range.end {
            return;
        }
        range.end = record.offset + 1;
        let reached_target = range.end >= range.target;
        if reached_target && !self.at_head() {
            self.check_head();
        }
        let Some(range) = self.ranges.get_mut(&record.partition) else { return };
        let bytes = record.bytes();
        if bytes > self.budget.max_bytes {
            // Larger than the whole budget: nothing before it is kept.
            let freed: usize = range.records.drain(..).map(|r| r.bytes()).sum();
            self.budget.give(freed);
            range.start = range.end;
            return;
        }
        self.budget.take(bytes);
        range.records.push_back(record);
        self.progressed();
        let Some(range) = self.ranges.get_mut(&partition) else { return };
        let now = Instant::now();
        let max_age = self.budget.max_age;
        while let Some(oldest) = range.records.front() {
            let expired = !catching_up && now.duration_since(oldest.cached_at) > max_age;
            if !expired && !self.budget.over() {
                break;
            }
            let oldest = range.records.pop_front().expect("front exists");
            self.budget.give(oldest.bytes());
            range.start = oldest.offset + 1;
        }
    }

    /// Lets go of records older than the age bound (an idle topic's
    /// records age out too, not only on the next push).
    pub fn expire(&mut self, now: Instant) {
        let max_age = self.budget.max_age;
        for range in self.ranges.values_mut() {
            while range.records.front().is_some_and(|r| now.duration_since(r.cached_at) > max_age) {
                let oldest = range.records.pop_front().expect("front exists");
                self.budget.give(oldest.bytes());
                range.start = oldest.offset + 1;
            }
        }
    }

    /// Whether the recent records serve a subscriber at `cursor` (the
    /// next offset it needs, per partition).
    pub fn coverage(&self, cursor: &BTreeMap<i32, i64>) -> Coverage {
        let behind = cursor
            .iter()
            .any(|(p, &next)| self.ranges.get(p).is_none_or(|range| next < range.start));
        if behind {
            Coverage::Behind
        } else {
            Coverage::Covered
        }
    }

    /// Adds to `out` up to `max` kept records at or past `cursor`, in
    /// offset order per partition, an equal share from each partition (so
    /// that none falls behind while another is read); the caller checked
    /// the coverage.
    pub fn read(&self, cursor: &BTreeMap<i32, i64>, max: usize, out: &mut Vec<Arc<Record>>) {
        let share = max.div_ceil(cursor.len().max(1)).max(1);
        for (p, &next) in cursor {
            let Some(range) = self.ranges.get(p) else { continue };
            let from = range.records.partition_point(|r| r.offset < next);
            let room = share.min(max.saturating_sub(out.len()));
            out.extend(range.records.range(from..).take(room).cloned());
        }
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        let held: usize = self.ranges.values().flat_map(|r| &r.records).map(|r| r.bytes()).sum();
        self.budget.give(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64, value: &str) -> Arc<Record> {
        let frame = Utf8Bytes::from(format!("{{\"o\":{offset}}}"));
        Arc::new(Record::new(partition, offset, None, frame, None, &[], Some(value.as_bytes())))
    }

    fn offsets(out: &[Arc<Record>]) -> Vec<(i32, i64)> {
        out.iter().map(|r| (r.partition, r.offset)).collect()
    }

    #[test]
    fn reads_from_a_cursor_and_says_when_it_is_behind() {
        let budget = Budget::new(1 << 20, Duration::from_secs(60));
        let mut recent = Recent::new(budget);
        recent.assign(0, 10, 10);
        recent.assign(1, 0, 0);
        for o in 10..15 {
            recent.push(record(0, o, "v"), false);
        }
        recent.push(record(1, 0, "v"), false);
        recent.push(record(1, 3, "v"), false); // offsets may skip (compaction)
        assert_eq!(recent.ends(), BTreeMap::from([(0, 15), (1, 4)]));
        let cursor = BTreeMap::from([(0, 12), (1, 1)]);
        assert_eq!(recent.coverage(&cursor), Coverage::Covered);
        let mut out = Vec::new();
        recent.read(&cursor, 10, &mut out);
        assert_eq!(offsets(&out), [(0, 12), (0, 13), (0, 14), (1, 3)]);
        out.clear();
        recent.read(&cursor, 2, &mut out);
        assert_eq!(offsets(&out), [(0, 12), (1, 3)], "at most max, a share of each partition");
        assert_eq!(recent.coverage(&BTreeMap::from([(0, 9)])), Coverage::Behind);
        assert_eq!(recent.coverage(&BTreeMap::from([(2, 0)])), Coverage::Behind, "unassigned");
        assert_eq!(recent.coverage(&BTreeMap::from([(0, 20)])), Coverage::Covered, "ahead");
        recent.push(record(0, 12, "v"), false);
        assert_eq!(recent.ends()[&0], 15, "a record behind the end is ignored");
    }

    #[test]
    fn the_budget_evicts_the_oldest_and_moves_the_start() {
        let one = record(0, 0, "x").bytes();
        let budget = Budget::new(3 * one, Duration::from_secs(60));
        let mut recent = Recent::new(budget.clone());
        recent.assign(0, 0, 0);
        for o in 0..5 {
            recent.push(record(0, o, "x"), false);
        }
        assert_eq!(budget.used(), 3 * one);
        let mut out = Vec::new();
        recent.read(&BTreeMap::from([(0, 0)]), 10, &mut out);
        assert_eq!(offsets(&out), [(0, 2), (0, 3), (0, 4)]);
        assert_eq!(recent.coverage(&BTreeMap::from([(0, 1)])), Coverage::Behind);
        assert_eq!(recent.coverage(&BTreeMap::from([(0, 2)])), Coverage::Covered);
        drop(recent);
        assert_eq!(budget.used(), 0, "a dropped topic gives its bytes back");
    }

    #[test]
    fn records_age_out() {
        let budget = Budget::new(1 << 20, Duration::from_millis(0));
        let mut recent = Recent::new(budget.clone());
        recent.assign(0, 0, 0);
        recent.push(record(0, 0, "x"), false);
        recent.expire(Instant::now() + Duration::from_millis(5));
        assert_eq!(budget.used(), 0);
        assert_eq!(recent.coverage(&BTreeMap::from([(0, 0)])), Coverage::Behind);
        assert_eq!(recent.coverage(&BTreeMap::from([(0, 1)])), Coverage::Covered);
    }

    #[test]
    fn at_head_once_the_live_consumer_passes_where_it_was_assigned() {
        let mut recent = Recent::new(Budget::new(1 << 20, Duration::from_secs(60)));
        recent.assign(0, 0, 2);
        recent.assign(1, 5, 5);
        let signal = recent.head_signal();
        assert!(!recent.at_head() && !*signal.borrow());
        recent.push(record(0, 0, "x"), false);
        assert!(!recent.at_head());
        recent.push(record(0, 1, "x"), false);
        assert!(recent.at_head() && *signal.borrow(), "end 2 reached the target 2");
        recent.assign(2, 0, 3);
        assert!(!recent.at_head());
        recent.reached(&BTreeMap::from([(2, 2)]));
        assert!(!recent.at_head(), "the consumer is not past the target yet");
        recent.reached(&BTreeMap::from([(2, 3)]));
        assert!(recent.at_head(), "past it, with nothing handed on (markers only)");
    }

    #[test]
    fn while_the_consumer_catches_up_waiting_subscribers_are_woken_as_it_reads() {
        let mut recent = Recent::new(Budget::new(1 << 20, Duration::from_secs(60)));
        recent.assign(0, 0, 1_000);
        let mut signal = recent.head_signal();
        for offset in 0..PROGRESS_EVERY as i64 - 1 {
            recent.push(record(0, offset, "x"), true);
        }
        assert!(!signal.has_changed().unwrap(), "woken before {PROGRESS_EVERY} records");
        recent.push(record(0, PROGRESS_EVERY as i64 - 1, "x"), true);
        assert!(signal.has_changed().unwrap(), "not woken after {PROGRESS_EVERY} records");
        assert!(!*signal.borrow_and_update(), "still not at the head");
    }

    #[test]
    fn a_filter_applies_to_a_kept_record() {
        let filter = Filter::parse(&serde_json::json!({"key": {"eq": "a"}})).unwrap();
        let frame = Utf8Bytes::from("{}");
        let a = Record::new(0, 0, None, frame.clone(), Some(b"a"), &[("h", None)], None);
        let b = Record::new(0, 1, None, frame, Some(b"b"), &[], None);
        assert!(a.passes(Some(&filter)) && !b.passes(Some(&filter)) && b.passes(None));
    }
}
