//! The session's rate, from the master's feedback, and the slow-receiver policy. See the module
//! docs of [`super`](crate::proto::mtftp::session) for the contract.
//!
//! The master's ACKs are the only feedback a multicast session has (passive members are silent),
//! so the rate follows the master, in periods of one smoothed round trip (at least
//! [`MIN_PERIOD`]), each closed by the first master ACK after it ends. Round trips are timed
//! from the send of a fresh block (or of a repair of the master's first gap, whose last copy
//! went more than a wait ago) to the first ACK that covers it, one at a time, none across a
//! timeout (Karn).
//! - **Queue**: the shortest round trip of the period above the shortest the session has seen by
//!   more than the target ([`QUEUE_TARGET`] at first) means a queue builds on the path: the rate
//!   steps down by 1/16.
//! - **Own loss**: a loss in a period whose every round trip saw a queue (the shortest
//!   [`MIN_TARGET`] above the base) is the session's overflowing it: down by 1/8, and the target becomes half the queue
//!   seen, so the next approach stops below the overflow.
//! - **Persistent loss**: a master loses blocks now and then (a busy socket buffer, a flaky port)
//!   whatever the rate, and slowing the whole room for that only costs time; periods that lost
//!   1 block in [`LOSSY_SHARE`] or more, in at least [`LOSSY_PERIODS`] of the last 8 (or a
//!   timeout counts as such a loss), are taken as too fast: down by 1/8.
//! - **Otherwise** the rate creeps up by 1/32 per period, up to the ceiling (`--multicast-rate`;
//!   unpaced once past it when there is none).
//! - Never below the floor (`--multicast-min-rate`). A period that wanted to go below it is a
//!   strike against the master; a clean one clears them. [`SlowPolicy::Pace`]: the room stays at
//!   the floor while that master is master. [`SlowPolicy::Unicast`]: after [`SLOW_STRIKES`] in a
//!   row the master is sent an ERROR and leaves ([`LeaveReason::Slow`]); the next member is master
//!   and the room goes on at its pace. The driver serves that client by unicast when it asks again.

use super::*;

/// A queue of this much above the base round trip is one the session built (at first; a loss
/// that comes with a queue teaches half of that queue, at least [`MIN_TARGET`]).
pub const QUEUE_TARGET: Duration = Duration::from_millis(2);

/// The smallest queue target, and the least queue that makes a loss the session's own.
pub const MIN_TARGET: Duration = Duration::from_micros(100);

/// A rate period lasts a smoothed round trip, at least this.
pub const MIN_PERIOD: Duration = Duration::from_millis(5);

/// Periods that lost much, of the last 8, that make loss persistent.
pub const LOSSY_PERIODS: u32 = 5;

/// A period loses much when the master lost at least 1 block in this many sent in it: random
/// loss of a few percent (a busy receiver, a flaky port) is not the rate's doing.
pub const LOSSY_SHARE: u64 = 16;

/// Periods in a row that wanted a rate below the floor before [`SlowPolicy::Unicast`] drops the
/// master.
pub const SLOW_STRIKES: u32 = 4;

/// Default of [`SessionConfig::min_rate`]: 1 MB/s (8 Mbit/s).
pub const DEFAULT_MIN_RATE: u64 = 1_000_000;

/// The message of the ERROR to a master sent away as too slow.
pub const SLOW_ERROR: &str = "too slow for the multicast session; download by unicast";

/// Rate of an unpaced session, as far as the controller is concerned (10 GB/s).
const UNPACED: u64 = 10_000_000_000;

/// What to do with a master too slow for the floor rate (`--multicast-slow-receivers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlowPolicy {
    /// Keep the room at its pace, down to the floor.
    #[default]
    Pace,
    /// ERROR to it (it leaves the session; the driver serves it by unicast when it asks again),
    /// so the room keeps its rate.
    Unicast,
}

impl std::str::FromStr for SlowPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pace" => Ok(SlowPolicy::Pace),
            "unicast" => Ok(SlowPolicy::Unicast),
            _ => Err(format!("expected pace or unicast, got {s:?}")),
        }
    }
}

impl std::fmt::Display for SlowPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlowPolicy::Pace => "pace",
            SlowPolicy::Unicast => "unicast",
        })
    }
}

/// The rate controller of one session.
#[derive(Clone, Copy, Debug)]
pub(super) struct RateCtl {
    /// Payload bytes per second now.
    rate: u64,
    ceiling: u64,
    floor: u64,
    /// The current period: when it ends, when it began, what the master acknowledged in it, the
    /// shortest round trip, whether the master lost something.
    ends: Option<Instant>,
    began: Instant,
    min_rtt: Option<Duration>,
    max_rtt: Option<Duration>,
    lost: bool,
    /// The block whose first ACK is timed, and when it went; the round trip timed last.
    probe: Option<(u64, Instant)>,
    sample: Option<Duration>,
    /// A loss came while the probe was out: its sample does not go to the smoothed round trip.
    dirty: bool,
    /// The highest block sent, and what it was at the last step down.
    sent_hi: u64,
    /// Fresh blocks sent and losses of the master in this period.
    sent: u64,
    losses: u64,
    cut_hi: u64,
    /// Queueing delay above the base round trip that counts as a standing queue (learned).
    target: Duration,
    /// Loss of the last 8 periods, a bit each (newest lowest).
    history: u8,
    /// The shortest round trip seen (the path without a queue).
    base_rtt: Option<Duration>,
    pub(super) strikes: u32,
}

impl RateCtl {
    pub(super) fn new(cfg: &SessionConfig, now: Instant) -> Self {
        let ceiling = if cfg.rate == 0 { UNPACED } else { cfg.rate };
        RateCtl {
            rate: ceiling,
            ceiling,
            floor: cfg.min_rate.min(ceiling),
            ends: None,
            began: now,
            probe: None,
            sample: None,
            dirty: false,
            sent_hi: 0,
            cut_hi: 0,
            sent: 0,
            losses: 0,
            min_rtt: None,
            max_rtt: None,
            lost: false,
            history: 0,
            base_rtt: None,
            target: QUEUE_TARGET,
            strikes: 0,
        }
    }

    /// The pacing rate (0: unpaced).
    pub(super) fn rate(&self) -> u64 {
        if self.rate >= UNPACED {
            0
        } else {
            self.rate
        }
    }

    /// A new master: nothing of the last one's losses holds against it.
    pub(super) fn new_master(&mut self) {
        self.history = 0;
        self.strikes = 0;
        self.lost = false;
        self.ends = None;
        self.probe = None;
    }

    /// Blocks up to `last` went out: time the first ACK that covers them, if none is timed.
    pub(super) fn on_send(&mut self, now: Instant, last: u64) {
        self.sent += last.saturating_sub(self.sent_hi);
        self.sent_hi = self.sent_hi.max(last);
        if self.probe.is_none() {
            self.probe = Some((last, now));
            self.dirty = false;
        }
    }

    /// The master lost block `index`, sent while it was master. Losses of blocks sent before
    /// the last step down belong to what it reacted to already.
    pub(super) fn on_loss(&mut self, index: u64) {
        // The probe's ACK may now wait for a repair: a long sample, harmless to the period's
        // shortest (what the queue signal reads), kept from the smoothed round trip (Karn).
        self.dirty = true;
        if index > self.cut_hi {
            self.lost = true;
            self.losses += 1;
        }
    }

    /// No round trip timed across a timeout (the ACK may answer a resend).
    pub(super) fn forget_probe(&mut self) {
        self.probe = None;
    }

    /// The round trip the last ACK timed, once.
    pub(super) fn take_sample(&mut self) -> Option<Duration> {
        self.sample.take()
    }

    /// The master was silent for a retransmission wait: a loss like the others (a lost ACK or
    /// block with the window's credit spent is common under random loss; halving the rate for
    /// each one took a lossy PXE room to the floor), and a strike at the floor.
    pub(super) fn on_timeout(&mut self) {
        if self.rate <= self.floor {
            self.strikes += 1;
        }
        self.lost = true;
        self.losses += 1;
        self.probe = None;
    }

    /// A master ACK of `index` (its highest contiguous block). Returns true when the master has
    /// been too slow for the floor for [`SLOW_STRIKES`] periods in a row (see [`Self::is_slow`]).
    pub(super) fn on_ack(&mut self, now: Instant, index: u64, srtt: Option<Duration>) -> bool {
        if let Some((i, sent)) = self.probe {
            if index >= i {
                self.probe = None;
                let r = now.saturating_duration_since(sent);
                if !std::mem::take(&mut self.dirty) {
                    self.sample = Some(r);
                }
                self.min_rtt = Some(self.min_rtt.map_or(r, |m| m.min(r)));
                self.max_rtt = Some(self.max_rtt.map_or(r, |m| m.max(r)));
                self.base_rtt = Some(self.base_rtt.map_or(r, |m| m.min(r)));
            }
        }
        let Some(ends) = self.ends else {
            self.start(now, srtt);
            return false;
        };
        if now < ends {
            return false;
        }
        // A period loses much (at least 1 block in [`LOSSY_SHARE`] sent) or not.
        let much = self.lost && self.losses * LOSSY_SHARE >= self.sent.max(1);
        self.history = (self.history << 1) | u8::from(much);
        let base = self.base_rtt.unwrap_or_default();
        let queue = self.min_rtt.is_some_and(|m| m > base + self.target);
        // A loss in a period whose every round trip saw a queue is the session's own: learn to
        // keep the queue below half of what it was when it overflowed.
        let own_loss = self.lost && self.min_rtt.is_some_and(|m| m > base + MIN_TARGET);
        if own_loss {
            let seen = self.min_rtt.unwrap_or_default().saturating_sub(base);
            self.target = (seen / 2).clamp(MIN_TARGET, QUEUE_TARGET);
        }
        let lossy = own_loss || self.history.count_ones() >= LOSSY_PERIODS;
        // At the floor already, a period with a loss or a queue is a strike; a clean one clears.
        if self.rate <= self.floor && (self.lost || queue) {
            self.strikes += 1;
        } else if !self.lost && !queue {
            self.strikes = 0;
        }
        let wanted = if lossy {
            self.rate / 8 * 7
        } else if queue {
            self.rate / 16 * 15
        } else if self.lost {
            self.rate
        } else {
            self.rate.saturating_add(self.rate / 32)
        };
        if lossy || queue {
            self.cut_hi = self.sent_hi;
        }
        self.set(wanted);
        if lossy {
            // One reaction per loss history.
            self.history = 0;
        }
        self.start(now, srtt);
        self.strikes >= SLOW_STRIKES
    }

    /// The master has been too slow for the floor for [`SLOW_STRIKES`] periods (or timeouts).
    pub(super) fn is_slow(&self) -> bool {
        self.strikes >= SLOW_STRIKES
    }

    fn start(&mut self, now: Instant, srtt: Option<Duration>) {
        self.began = now;
        self.ends = Some(now + srtt.unwrap_or_default().max(MIN_PERIOD));
        self.min_rtt = None;
        self.max_rtt = None;
        self.lost = false;
        self.losses = 0;
        self.sent = 0;
    }

    fn set(&mut self, rate: u64) {
        self.rate = rate.clamp(self.floor.max(1), self.ceiling);
    }
}

#[cfg(test)]
#[path = "rate_tests.rs"]
mod tests;
