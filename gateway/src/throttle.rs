//! Rate-limited logging: while Kafka is down, every client reports the same
//! failure many times a second. A [`Throttle`] lets one line through per
//! interval and counts the ones it held back, so the log stays readable and
//! still says how often it happened.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a repeated warning is logged by default.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// Lets an event through at most once per interval.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    /// When the last event went through, and how many were held back since.
    /// Short critical sections only.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(held_back)` when this event should be logged (with the number
    /// of events held back since the last one), `None` when it should not.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().expect("throttle lock");
        let (last, held) = &mut *state;
        match last {
            Some(at) if at.elapsed() < self.every => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(Instant::now());
                Some(std::mem::take(held))
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(LOG_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_event_passes_then_repeats_are_counted_until_the_interval_ends() {
        let throttle = Throttle::new(Duration::from_millis(50));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(throttle.allow(), Some(2), "says how many it held back");
        assert_eq!(throttle.allow(), None);
    }
}
