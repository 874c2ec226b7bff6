//! Open-loop load: events at fixed intended times, whatever the system
//! under test does. A late event is sent as soon as possible with its
//! original intended time, so the time it waited counts in its latency (no
//! coordinated omission).

use std::thread::JoinHandle;

use crate::util;

/// How a paced run went.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Paced {
    pub(crate) sent: u64,
    /// Worst lateness of the pacer itself (µs): how far behind its schedule
    /// the bench was when it sent an event.
    pub(crate) max_lag_us: u64,
}

/// Calls `event(seq, intended_us)` `count` times at `rate` per second from
/// `start_us` on, on a dedicated thread (more precise than a 1 ms async
/// timer). `event` returns false to stop early.
pub(crate) fn spawn(
    rate: f64,
    count: u64,
    start_us: u64,
    mut event: impl FnMut(u64, u64) -> bool + Send + 'static,
) -> JoinHandle<Paced> {
    let interval = 1e6 / rate.max(1e-3);
    std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            let mut paced = Paced::default();
            for seq in 0..count {
                let intended = start_us + (seq as f64 * interval) as u64;
                util::sleep_until_us(intended);
                paced.max_lag_us = paced.max_lag_us.max(util::now_us().saturating_sub(intended));
                if !event(seq, intended) {
                    break;
                }
                paced.sent += 1;
            }
            paced
        })
        .expect("pacer thread")
}
