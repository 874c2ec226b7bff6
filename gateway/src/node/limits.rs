//! The node's bounds on callers: the token bucket (publish rates) and the
//! per-subject connection counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second sustained, `burst` at once.
/// The one rate limit of the gateway: a socket's publishes take one token
/// each, an HTTP batch takes one per record.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: f64::from(rate), burst, tokens: burst, last: Instant::now() }
    }

    /// Takes one token if there is one at `now` (the caller's clock
    /// reading, shared with its other checks).
    pub fn take_at(&mut self, now: Instant) -> bool {
        self.take_n_at(1, now).is_ok()
    }

    /// Takes `n` tokens at once, or none and says how long until there
    /// are enough.
    pub fn take_n(&mut self, n: usize) -> Result<(), Duration> {
        self.take_n_at(n, Instant::now())
    }

    fn take_n_at(&mut self, n: usize, now: Instant) -> Result<(), Duration> {
        let now = now.max(self.last);
        self.tokens = self.tokens_at(now);
        self.last = now;
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        Err(Duration::from_secs_f64(((n - self.tokens) / self.rate).max(0.001)))
    }

    /// Whether the bucket has refilled completely by `now` (an idle bucket
    /// a caller may forget: a new one is the same).
    pub fn is_full(&self, now: Instant) -> bool {
        self.tokens_at(now) >= self.burst
    }

    fn tokens_at(&self, now: Instant) -> f64 {
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        (self.tokens + refill).min(self.burst)
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
        assert!((0..3).all(|_| bucket.take_at(Instant::now())));
        assert!(!bucket.take_at(Instant::now()));
    }

    #[test]
    fn a_batch_takes_all_its_tokens_or_none_and_is_told_how_long_to_wait() {
        let mut bucket = TokenBucket::new(10, 5);
        assert!(bucket.take_n(4).is_ok());
        let wait = bucket.take_n(3).unwrap_err();
        // 1 token left, 2 missing at 10 per second: about 200 ms.
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(bucket.take_at(Instant::now()), "the refused batch took nothing");
        assert!(!bucket.is_full(Instant::now()));
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
