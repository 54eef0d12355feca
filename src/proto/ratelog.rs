//! Rate limits for log lines driven by network input.
//!
//! Contract: anything a remote peer can trigger once per datagram (a refusal, a malformed packet,
//! a full pool, a forged reply) logs through a [`LogLimit`]: the first event of a quiet period is
//! logged in full, later ones within `interval` are only counted, and the next line that is let
//! through carries the number suppressed since the previous one. A caller with a periodic tick
//! (a worker's timer, the DHCP loop) calls [`LogLimit::flush`] so that the count of a flood that
//! stopped is still reported once. No clock is read here: `now` comes in, like every sans-IO
//! machine of the crate, so the limiter is tested on virtual time. Memory is constant.

use std::time::{Duration, Instant};

/// Default interval between two lines of one kind.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// One rate-limited kind of log line. See the module docs.
#[derive(Clone, Debug)]
pub struct LogLimit {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new(DEFAULT_INTERVAL)
    }
}

impl LogLimit {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        LogLimit {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Count one event at `now`. `Some(n)`: log this event now, mentioning the `n` events
    /// suppressed since the previous line (0 after a quiet period). `None`: it was counted only.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// `Some(n)` when `n > 0` events were suppressed and the interval since the last line has
    /// passed: the caller logs one summary line with the count. Call it from a periodic tick.
    pub fn flush(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0 {
            return None;
        }
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.interval => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Events counted but not yet reported.
    pub fn pending(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_event_passes_then_one_per_interval_with_counts() {
        let t0 = crate::sim_origin();
        let mut l = LogLimit::new(Duration::from_secs(1));
        assert_eq!(l.allow(t0), Some(0));
        for i in 1..=99 {
            assert_eq!(l.allow(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.pending(), 99);
        assert_eq!(l.flush(t0 + Duration::from_millis(500)), None);
        assert_eq!(l.allow(t0 + Duration::from_millis(1000)), Some(99));
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn flush_reports_a_flood_that_stopped_once() {
        let t0 = crate::sim_origin();
        let mut l = LogLimit::new(Duration::from_secs(1));
        l.allow(t0);
        l.allow(t0 + Duration::from_millis(10));
        l.allow(t0 + Duration::from_millis(20));
        assert_eq!(l.flush(t0 + Duration::from_secs(2)), Some(2));
        assert_eq!(l.flush(t0 + Duration::from_secs(5)), None);
        // A quiet period: the next event passes at once with no backlog.
        assert_eq!(l.allow(t0 + Duration::from_secs(9)), Some(0));
    }

    #[test]
    fn a_million_events_make_a_handful_of_lines() {
        let t0 = crate::sim_origin();
        let mut l = LogLimit::default();
        let mut lines = 0;
        let mut counted = 0;
        for i in 0..1_000_000u64 {
            // One event every 10 µs: 10 s in all.
            if let Some(n) = l.allow(t0 + Duration::from_micros(10 * i)) {
                lines += 1;
                counted += n + 1;
            }
        }
        counted += l.pending();
        assert!(lines <= 11, "{lines} lines");
        assert_eq!(counted, 1_000_000, "every event is counted exactly once");
    }
}
