//! Was that tail-loss probe needed? Spurious-timeout detection for TFTP, after the ideas of Eifel
//! (RFC 3522: tell the ACK of the original from the ACK of the retransmission) and F-RTO (RFC 5682:
//! judge a timeout by the ACKs that follow it), with what a TFTP ACK carries: a block number and no
//! timestamp.
//!
//! When the transfer's probe timer fires it resends the last block sent, `e`, alone. What the
//! client says next decides whether that was needed:
//! - The ACK that moves the transfer to `e` arrives sooner after the probe than the path's
//!   shortest round trip (half of `min_rtt`): it left the client before the probe reached it, so
//!   the client had every block and only its ACK was late. **Spurious.**
//! - The ACK of `e` arrives, then a second ACK of `e` before anything newer: the client answered
//!   the probe's duplicate with a re-ACK (RFC 7440 receivers, EDK2, iPXE and tftp-hpa all re-ACK a
//!   duplicate), so it had `e` before the probe reached it. This is what a TCP DSACK says.
//!   **Spurious.** (One ambiguity: when `e` was lost, the probe filled it, and the first block of
//!   the next window is lost too, the client's re-ACK of `e` at that gap looks the same. The probe
//!   is then judged spurious although `e` was lost; the next window's loss is still seen as a gap,
//!   so a controller misses at most one of two loss events.)
//! - An ACK below `e` (the client lacks a block at or before `e`), or progress past `e` with no
//!   duplicate of `e`, or another expiry of the timer: the probe was needed. **Genuine.**
//!
//! What the transfer does with the verdict (see the module docs of [`super`]):
//! - Spurious: undo what the timeout decided (restore the backoff taken at the expiry; the probe
//!   does not count as a loss for congestion control), take the late round trip as an RTT sample
//!   the way the Eifel response does (RFC 4015 §2: `srtt = max(srtt, late)`, `rttvar =
//!   max(rttvar, late / 2)`), and stretch the probe timer of this transfer by
//!   [`ProbeCheck::pto_factor`].
//! - Genuine: report a loss to the flow's controller ([`super::FlowCc::on_loss`]).
//!
//! Pure state: no clock, no allocation; one probe is watched at a time (a new probe replaces the
//! old one's watch, whose verdict then stays unknown). One exception: a probe replaced while it
//! awaited its duplicate (lockstep through a queue: the late ACK came, the next block's timer
//! fired before the re-ACK did) leaves that re-ACK expected, so it counts the old probe spurious
//! instead of reading as an ACK below the new probe (a loss).

use std::time::{Duration, Instant};

/// Largest stretch of the probe timer after spurious probes in a row.
pub const MAX_PTO_FACTOR: u32 = 4;

/// What the ACK just fed says about the last probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to decide (no probe watched, or not yet).
    Pending,
    /// The probe was not needed: the client had the block. `late_rtt` is the round trip of the
    /// original block (from its send to the ACK that finally came), for the Eifel response.
    Spurious { late_rtt: Duration },
    /// The probe was needed (or the timer fired again): a loss.
    Genuine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    /// A probe of block index `index` went out at `probe_at`; the original at `orig_at`.
    Probed {
        index: u64,
        probe_at: Instant,
        orig_at: Instant,
        /// The block of the probe this one replaced while it awaited its duplicate: that
        /// duplicate may still be on its way, and is no ACK below `index`.
        stale: Option<u64>,
    },
    /// The ACK of `index` came (at `acked_at`); a duplicate of it before anything newer means the
    /// probe was a duplicate to the client.
    AwaitDup {
        index: u64,
        late_rtt: Duration,
    },
}

/// Watches the last tail-loss probe of one transfer. See the module docs.
#[derive(Clone, Copy, Debug)]
pub struct ProbeCheck {
    state: State,
    /// Spurious verdicts since the last genuine one.
    streak: u32,
    spurious: u64,
    genuine: u64,
}

impl Default for ProbeCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl ProbeCheck {
    pub fn new() -> Self {
        ProbeCheck {
            state: State::Idle,
            streak: 0,
            spurious: 0,
            genuine: 0,
        }
    }

    /// A probe of block `index` (absolute, 1-based) was sent at `now`; the block was first sent at
    /// `original_sent_at` (the send time of the window it ended).
    pub fn on_probe(&mut self, now: Instant, index: u64, original_sent_at: Instant) {
        let stale = match self.state {
            State::AwaitDup { index: e, .. } if e < index => Some(e),
            _ => None,
        };
        self.state = State::Probed {
            index,
            probe_at: now,
            orig_at: original_sent_at,
            stale,
        };
    }

    /// The timer expired again (a full resend follows): the probe did not bring the client
    /// forward, so it was needed.
    pub fn on_rto(&mut self) -> Verdict {
        match self.state {
            State::Idle => Verdict::Pending,
            State::Probed { .. } | State::AwaitDup { .. } => self.genuine(),
        }
    }

    /// Every ACK the transfer takes (duplicates included), with the absolute index it names and
    /// the path's shortest round trip seen so far (`None` before the first sample).
    pub fn on_ack(&mut self, now: Instant, index: u64, min_rtt: Option<Duration>) -> Verdict {
        match self.state {
            State::Idle => Verdict::Pending,
            State::Probed {
                index: e,
                probe_at,
                orig_at,
                stale,
            } => {
                if stale == Some(index) {
                    // The re-ACK of the duplicate the replaced probe drew: that probe was
                    // spurious; this one is still to be judged.
                    self.state = State::Probed {
                        index: e,
                        probe_at,
                        orig_at,
                        stale: None,
                    };
                    self.streak = self.streak.saturating_add(1);
                    self.spurious += 1;
                    return Verdict::Pending;
                }
                if index < e {
                    return self.genuine();
                }
                let late_rtt = now.saturating_duration_since(orig_at);
                let since_probe = now.saturating_duration_since(probe_at);
                if min_rtt.is_some_and(|m| since_probe < m / 2) {
                    // Too soon to be the probe's answer: the original's ACK was just late.
                    return self.spurious(late_rtt);
                }
                self.state = State::AwaitDup { index: e, late_rtt };
                Verdict::Pending
            }
            State::AwaitDup { index: e, late_rtt } => {
                if index == e {
                    self.spurious(late_rtt)
                } else {
                    // Progress past `e` (or something older) with no duplicate of `e` first: the
                    // client needed the probe (its ACK of `e` was lost, or `e` itself).
                    self.genuine()
                }
            }
        }
    }

    /// How much to stretch this transfer's probe timeout: 1, plus one for each spurious probe in a
    /// row (at most [`MAX_PTO_FACTOR`]); back to 1 after a genuine one.
    pub fn pto_factor(&self) -> u32 {
        (1 + self.streak).min(MAX_PTO_FACTOR)
    }

    /// Probes judged spurious and genuine so far (for the end-of-transfer log line).
    pub fn counts(&self) -> (u64, u64) {
        (self.spurious, self.genuine)
    }

    /// A probe is being watched.
    pub fn is_watching(&self) -> bool {
        self.state != State::Idle
    }

    fn spurious(&mut self, late_rtt: Duration) -> Verdict {
        self.state = State::Idle;
        self.streak = self.streak.saturating_add(1);
        self.spurious += 1;
        Verdict::Spurious { late_rtt }
    }

    fn genuine(&mut self) -> Verdict {
        self.state = State::Idle;
        self.streak = 0;
        self.genuine += 1;
        Verdict::Genuine
    }
}

/// The Eifel response (RFC 4015 §2) applied to an RTT estimator's state: after a spurious
/// timeout, the late round trip is the path's delay now, so the smoothed RTT and its variation
/// are raised to it. Returns the new `(srtt, rttvar)`.
pub fn eifel_response(
    srtt: Duration,
    rttvar: Duration,
    late_rtt: Duration,
) -> (Duration, Duration) {
    (srtt.max(late_rtt), rttvar.max(late_rtt / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// One probe scenario on a path of 10 ms round trip: returns the verdicts of the ACKs.
    fn run(t0: Instant, acks: &[(u64, u64)]) -> Vec<Verdict> {
        let mut p = ProbeCheck::new();
        // Window ending at block 8 sent at t0, probe at t0 + 30 ms.
        p.on_probe(t0 + ms(30), 8, t0);
        acks.iter()
            .map(|&(at, idx)| p.on_ack(t0 + ms(at), idx, Some(ms(10))))
            .collect()
    }

    #[test]
    fn verdicts() {
        let t0 = crate::proto::cc::tests::epoch();
        // The original ACK arrives 1 ms after the probe left: it cannot be the probe's answer.
        assert_eq!(
            run(t0, &[(31, 8)]),
            [Verdict::Spurious { late_rtt: ms(31) }]
        );
        // The original ACK arrives 8 ms after the probe, then the client's re-ACK of the probe's
        // duplicate: spurious (the DSACK case).
        assert_eq!(
            run(t0, &[(38, 8), (41, 8)]),
            [Verdict::Pending, Verdict::Spurious { late_rtt: ms(38) }]
        );
        // The probe filled the last block (or replaced a lost ACK): one ACK of 8, then progress.
        assert_eq!(
            run(t0, &[(40, 8), (52, 12)]),
            [Verdict::Pending, Verdict::Genuine]
        );
        // The client lacks block 6: it answers the probe at the gap.
        assert_eq!(run(t0, &[(40, 5)]), [Verdict::Genuine]);
        // Nothing watched: ACKs are not judged.
        let mut p = ProbeCheck::new();
        assert_eq!(p.on_ack(t0, 3, None), Verdict::Pending);
        assert_eq!(p.on_rto(), Verdict::Pending);
    }

    #[test]
    fn no_round_trip_known_needs_the_duplicate() {
        let t0 = crate::proto::cc::tests::epoch();
        let mut p = ProbeCheck::new();
        p.on_probe(t0 + ms(5), 4, t0);
        assert_eq!(p.on_ack(t0 + ms(5), 4, None), Verdict::Pending);
        assert_eq!(
            p.on_ack(t0 + ms(6), 4, None),
            Verdict::Spurious { late_rtt: ms(5) }
        );
    }

    #[test]
    fn timer_factor_grows_with_spurious_probes_and_resets_on_a_loss() {
        let t0 = crate::proto::cc::tests::epoch();
        let mut p = ProbeCheck::new();
        assert_eq!(p.pto_factor(), 1);
        for k in 0..6 {
            p.on_probe(t0, 2 + k, t0);
            assert!(matches!(
                p.on_ack(t0 + ms(1), 2 + k, Some(ms(10))),
                Verdict::Spurious { .. }
            ));
        }
        assert_eq!(p.pto_factor(), MAX_PTO_FACTOR);
        p.on_probe(t0, 20, t0);
        assert_eq!(p.on_rto(), Verdict::Genuine);
        assert_eq!(p.pto_factor(), 1);
        assert_eq!(p.counts(), (6, 1));
        assert!(!p.is_watching());
    }

    #[test]
    fn the_re_ack_of_a_replaced_probe_is_not_a_loss() {
        // Lockstep: probe of 5, late ACK of 5, then 6's timer fires before the re-ACK of 5.
        let t0 = crate::proto::cc::tests::epoch();
        let mut p = ProbeCheck::new();
        p.on_probe(t0 + ms(20), 5, t0);
        assert_eq!(p.on_ack(t0 + ms(25), 5, Some(ms(1))), Verdict::Pending);
        p.on_probe(t0 + ms(45), 6, t0 + ms(25));
        assert_eq!(p.on_ack(t0 + ms(46), 5, Some(ms(1))), Verdict::Pending);
        assert_eq!(p.counts(), (1, 0));
        assert!(p.is_watching());
        // A second ACK of 5 is below the new probe again: the client lacks 6.
        assert_eq!(p.on_ack(t0 + ms(47), 5, Some(ms(1))), Verdict::Genuine);
    }

    #[test]
    fn eifel_raises_the_estimator_to_the_late_sample() {
        assert_eq!(eifel_response(ms(2), ms(1), ms(30)), (ms(30), ms(15)));
        assert_eq!(eifel_response(ms(40), ms(30), ms(30)), (ms(40), ms(30)));
    }
}
