//! Per-connection publish rate limit and per-subject connection counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token bucket: `rate` publishes per second sustained, `burst` at once.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: f64::from(rate), burst, tokens: burst, last: Instant::now() }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Open connections per subject on this node.
#[derive(Debug, Default)]
pub struct SubjectConnections {
    /// Short critical sections only.
    counts: Mutex<HashMap<String, usize>>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct SubjectGuard {
    owner: Arc<SubjectConnections>,
    subject: String,
}

impl SubjectConnections {
    /// Counts a connection of `subject` unless it already has `max`.
    pub fn acquire(self: &Arc<Self>, subject: &str, max: usize) -> Option<SubjectGuard> {
        let mut counts = self.counts.lock().expect("subject lock");
        let count = counts.entry(subject.to_owned()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SubjectGuard { owner: self.clone(), subject: subject.to_owned() })
    }
}

impl Drop for SubjectGuard {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().expect("subject lock");
        if let Some(count) = counts.get_mut(&self.subject) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refuses() {
        let mut bucket = TokenBucket::new(1, 3);
        assert!((0..3).all(|_| bucket.take()));
        assert!(!bucket.take());
    }

    #[test]
    fn subject_guard_counts_and_releases() {
        let subjects = Arc::new(SubjectConnections::default());
        let a = subjects.acquire("u", 2).unwrap();
        let _b = subjects.acquire("u", 2).unwrap();
        assert!(subjects.acquire("u", 2).is_none());
        assert!(subjects.acquire("v", 2).is_some());
        drop(a);
        assert!(subjects.acquire("u", 2).is_some());
    }
}
