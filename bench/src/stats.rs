//! HDR histograms of latencies, shared by many receiving tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly (µs); larger values saturate.
const MAX_US: u64 = 120_000_000;

/// A fresh histogram of microseconds, 3 significant figures.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Latencies recorded by many tasks: a few shards, each behind its own
/// (almost never contended) lock, merged when read.
#[derive(Debug)]
pub(crate) struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
    /// Every event counted, including those outside a measurement window.
    pub(crate) events: AtomicU64,
}

impl Recorder {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Mutex::new(histogram())).collect(),
            events: AtomicU64::new(0),
        }
    }

    /// Records one latency (µs) from task `task`.
    pub(crate) fn record(&self, task: usize, latency_us: u64) {
        let shard = &self.shards[task % self.shards.len()];
        shard.lock().expect("recorder lock").saturating_record(latency_us.max(1));
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Everything recorded so far, merged; the shards are emptied.
    pub(crate) fn take(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            let mut h = shard.lock().expect("recorder lock");
            all.add(&*h).expect("same bounds");
            h.reset();
        }
        all
    }
}

/// A latency distribution as reported, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Summary {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// `p50 1.23 / p99 4.56 / p99.9 7.89 / max 12.3 ms`.
    pub(crate) fn text(&self) -> String {
        if self.count == 0 {
            return "no samples".to_owned();
        }
        format!(
            "p50 {} / p99 {} / p99.9 {} / max {} ms",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.p999_ms),
            fmt_ms(self.max_ms)
        )
    }
}

/// Milliseconds with sensible precision.
pub(crate) fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// A CPU share, `"87%"`, or `"-"` when unknown.
pub(crate) fn pct(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.0}%"))
}

/// The median of some numbers (0 for none).
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_reset() {
        let r = Recorder::new(4);
        for i in 0..1000 {
            r.record(i, 1000 + i as u64);
        }
        let s = Summary::of(&r.take());
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 1.5).abs() < 0.01, "{s:?}");
        assert_eq!(Summary::of(&r.take()).count, 0);
        assert_eq!(r.events(), 1000);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
