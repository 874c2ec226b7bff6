//! The lossy queue of a socket's `drop_oldest` and `conflate`
//! subscriptions: bounded, never blocking the hub, and never closing the
//! socket. When full, the oldest record goes (and is counted); with
//! `conflate`, a newer record of the same partition and key replaces the
//! queued one in place. Once the writer has drained the queue it reports
//! what was dropped, per topic, with a `lagged` notice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use ferry_protocol::ServerFrame;

/// Identifies "the same value" for conflation.
type ConflateKey = (Arc<str>, i32, Vec<u8>);

#[derive(Debug)]
struct Entry {
    topic: Arc<str>,
    conflate: Option<ConflateKey>,
    bytes: Utf8Bytes,
}

/// One socket's lossy records; it lives inside the socket's outlet, under
/// the outlet's lock.
#[derive(Debug)]
pub struct Lossy {
    capacity: usize,
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    front_seq: u64,
    /// Where each conflatable record sits, by sequence number.
    slots: HashMap<ConflateKey, u64>,
    dropped: BTreeMap<Arc<str>, u64>,
}

impl Lossy {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: VecDeque::new(),
            front_seq: 0,
            slots: HashMap::new(),
            dropped: BTreeMap::new(),
        }
    }

    /// Queues a record; `conflate` is `Some((partition, key))` for a
    /// conflating subscription and a keyed record.
    pub fn push(&mut self, topic: &Arc<str>, conflate: Option<(i32, &[u8])>, bytes: Utf8Bytes) {
        let key = conflate.map(|(p, k)| (topic.clone(), p, k.to_vec()));
        if let Some(key) = &key {
            if let Some(&seq) = self.slots.get(key) {
                let index = (seq - self.front_seq) as usize;
                self.entries[index].bytes = bytes;
                return;
            }
        }
        if self.entries.len() >= self.capacity {
            self.pop_front_dropped();
        }
        let seq = self.front_seq + self.entries.len() as u64;
        if let Some(key) = &key {
            self.slots.insert(key.clone(), seq);
        }
        self.entries.push_back(Entry { topic: topic.clone(), conflate: key, bytes });
    }

    /// Whether nothing is queued and nothing is left to report.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.dropped.is_empty()
    }

    /// Moves up to `max` queued frames into `out`; when that empties the
    /// queue, the `lagged` notices for what was dropped follow.
    pub fn drain_into<T: From<Utf8Bytes>>(&mut self, max: usize, out: &mut Vec<T>) {
        for _ in 0..max {
            let Some(entry) = self.pop_front() else { break };
            out.push(entry.bytes.into());
        }
        if self.entries.is_empty() {
            for (topic, dropped) in std::mem::take(&mut self.dropped) {
                let notice = ServerFrame::Lagged { topic: topic.to_string(), dropped };
                out.push(Utf8Bytes::from(notice.encode()).into());
            }
        }
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        if let Some(key) = &entry.conflate {
            if self.slots.get(key) == Some(&self.front_seq) {
                self.slots.remove(key);
            }
        }
        self.front_seq += 1;
        Some(entry)
    }

    fn pop_front_dropped(&mut self) {
        if let Some(entry) = self.pop_front() {
            *self.dropped.entry(entry.topic).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(q: &mut Lossy, max: usize) -> Vec<String> {
        let mut out: Vec<Utf8Bytes> = Vec::new();
        q.drain_into(max, &mut out);
        out.iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_reports_the_count() {
        let mut q = Lossy::new(3);
        let topic: Arc<str> = "t".into();
        for i in 0..5 {
            q.push(&topic, None, Utf8Bytes::from(format!("m{i}")));
        }
        assert_eq!(
            texts(&mut q, 10),
            vec!["m2", "m3", "m4", r#"{"type":"lagged","topic":"t","dropped":2}"#]
        );
        assert!(texts(&mut q, 10).is_empty(), "the notice is sent once");
    }

    #[test]
    fn conflate_keeps_the_latest_per_key_in_place() {
        let mut q = Lossy::new(10);
        let topic: Arc<str> = "prices".into();
        q.push(&topic, Some((0, b"EUR")), "eur1".into());
        q.push(&topic, Some((0, b"USD")), "usd1".into());
        q.push(&topic, Some((0, b"EUR")), "eur2".into());
        q.push(&topic, Some((1, b"EUR")), "eur-p1".into());
        assert_eq!(texts(&mut q, 10), vec!["eur2", "usd1", "eur-p1"]);
        // After draining, the same key queues again.
        q.push(&topic, Some((0, b"EUR")), "eur3".into());
        assert_eq!(texts(&mut q, 10), vec!["eur3"]);
    }

    #[test]
    fn conflate_stays_bounded_with_many_keys() {
        let mut q = Lossy::new(4);
        let topic: Arc<str> = "t".into();
        for i in 0..100u32 {
            q.push(&topic, Some((0, &i.to_be_bytes())), Utf8Bytes::from(format!("k{i}")));
        }
        let out = texts(&mut q, 100);
        assert_eq!(out[..4], ["k96", "k97", "k98", "k99"]);
        assert_eq!(out[4], r#"{"type":"lagged","topic":"t","dropped":96}"#);
        // Slots of dropped entries are gone: a new key conflates correctly.
        q.push(&topic, Some((0, &5u32.to_be_bytes())), "a".into());
        q.push(&topic, Some((0, &5u32.to_be_bytes())), "b".into());
        assert_eq!(texts(&mut q, 10), vec!["b"]);
    }

    #[test]
    fn partial_drain_defers_the_notice() {
        let mut q = Lossy::new(2);
        let topic: Arc<str> = "t".into();
        for i in 0..4 {
            q.push(&topic, None, Utf8Bytes::from(format!("m{i}")));
        }
        assert_eq!(texts(&mut q, 1), vec!["m2"]);
        assert_eq!(texts(&mut q, 1), vec!["m3", r#"{"type":"lagged","topic":"t","dropped":2}"#]);
    }
}
