//! Pacing of a transfer's DATA by the congestion controller of its interface ([`crate::proto::cc`]).
//!
//! Contract:
//! - A driver that paces calls [`Transfer::poll_transmit_paced`] instead of
//!   [`Transfer::poll_transmit`], with the [`LinkCc`] of the interface the transfer sends on,
//!   behind a [`PaceLink`] (a plain `LinkCc` in tests; a lock in the engine, where every worker
//!   shares one per interface). The link is entered at most once per call that has something for
//!   it (ACK samples or a loss since the last call, or DATA due): one lock per ACK and per
//!   piece, never per datagram; a poll with nothing due does not touch it.
//! - Before each run of DATA (a window, the rest of one, a tail probe, a resend) the transfer asks
//!   its [`FlowCc`] for a grant: [`Grant::Send`]`(n)` sends the first `n` blocks now as one
//!   [`Payload::Blocks`] (one GSO call) and keeps the rest pending; [`Grant::Wait`]`(t)` sends
//!   nothing and makes [`Transfer::poll_timeout`] return `t` at the latest: the driver arms its
//!   one timer queue as usual, calls [`Transfer::handle_timeout`] then, and polls again. No
//!   other timer, no other call.
//! - While DATA waits for a grant, the retransmission timer is stopped: it starts when the last
//!   piece of the window leaves (a window's round trip is measured from its last piece, as
//!   [`crate::proto::cc::AckSample::rtt`] says). The silence budget still counts from the last
//!   progress.
//! - Samples: every ACK that moves the transfer forward (and ACK 0 of an OACK) becomes an
//!   [`AckSample`] (bytes acknowledged on the wire, the Karn-clean round trip when there is one,
//!   the time since the latest DATA send, and whether it goes back over sent blocks: a gap); a
//!   full resend after the probe did not help, and a probe judged genuine, are losses. They are
//!   handed to the controller at the next paced poll (the driver polls after every input).
//! - While the link is open and the flow has no ceiling, every grant is `Send(all)`: the
//!   transmits are exactly those of [`Transfer::poll_transmit`], with no timer and no wait.
//! - A lockstep transfer (window 1) is paced only by an operator cap, never by the estimate: it
//!   has one block in flight, clocked by its client's ACK, so it cannot burst, and a pacer slot
//!   would only add a round of the pacer to every round trip (measured: 100 iPXE machines through
//!   400 Mbit/s fell from 91% to 73% of the link when paced; docs/benchmarks.md). Its ACKs and
//!   losses still feed the link.

use super::{Pending, Phase, Transfer};
use crate::proto::cc::{wire_bytes, AckSample, FlowStats, Grant, LinkCc};
use crate::proto::{Payload, Transmit};
use std::time::Instant;

/// Access to the [`LinkCc`] of the transfer's interface, for one call.
pub trait PaceLink {
    fn with_link<R>(&mut self, f: impl FnOnce(&mut LinkCc) -> R) -> R;
}

impl PaceLink for LinkCc {
    fn with_link<R>(&mut self, f: impl FnOnce(&mut LinkCc) -> R) -> R {
        f(self)
    }
}

impl Transfer {
    /// [`poll_transmit`](Self::poll_transmit), paced by `link` (see the module docs).
    pub fn poll_transmit_paced(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        link: &mut impl PaceLink,
    ) -> Option<Transmit> {
        let data_due = matches!(
            self.pending,
            Pending::Window { .. } | Pending::Rest { .. } | Pending::Probe { .. }
        ) && self.pace_at.is_none_or(|t| now >= t);
        let mut grant = None;
        if data_due || self.cc_ack.is_some() || self.cc_loss {
            let lockstep = self.window == 1;
            let want = self.blocks_due();
            let block = self.block_wire();
            let (ack, loss) = (self.cc_ack.take(), std::mem::take(&mut self.cc_loss));
            let cc = &mut self.cc;
            grant = link.with_link(|l| {
                if let Some(a) = ack {
                    cc.on_ack(now, l, a);
                }
                if loss {
                    cc.on_loss(now, l);
                }
                let paced = !lockstep || l.cap().is_some();
                (data_due && want > 0 && paced).then(|| cc.poll_send(now, l, want, block))
            });
        }
        let pace_at = self.pace_at;
        let mut answer = |n: u32| match grant {
            Some(g) => g,
            // Not due: a pacing wait that has not ended (kept as it is).
            None if !data_due => Grant::Wait(pace_at.unwrap_or(now)),
            None => Grant::Send(n),
        };
        let payload = self.poll_payload(now, buf, &mut answer)?;
        Some(Transmit {
            dest: self.peer,
            payload,
        })
    }

    /// The flow's controller counters.
    pub fn cc_stats(&self) -> FlowStats {
        self.cc.stats()
    }

    /// Wire bytes of one full DATA block to the peer.
    fn block_wire(&self) -> u64 {
        wire_bytes(4 + self.blksize as usize, self.peer.is_ipv6())
    }

    /// DATA blocks the pending transmit would send whole.
    fn blocks_due(&self) -> u32 {
        let run = |from: u64, end: u64| (end.min(self.total_blocks) + 1).saturating_sub(from);
        let n = match self.pending {
            Pending::Window { from } => run(from, from + self.window - 1),
            Pending::Rest { from, end, .. } => run(from, end),
            Pending::Probe { .. } => 1,
            _ => 0,
        };
        n.min(u64::from(u32::MAX)) as u32
    }

    /// Note what an ACK of `fwd` new blocks told (for the controller, at the next paced poll).
    pub(super) fn note_ack(
        &mut self,
        fwd: u64,
        rtt: Option<std::time::Duration>,
        now: Instant,
        gap: bool,
    ) {
        let since = self.last_send.map(|t| now.saturating_duration_since(t));
        let bytes = fwd * self.block_wire();
        self.cc_ack = Some(match self.cc_ack {
            None => AckSample {
                bytes,
                rtt,
                since_last_send: since,
                gap,
            },
            // Several ACKs before one poll (not the engine's way, but possible): one sample.
            Some(a) => AckSample {
                bytes: a.bytes + bytes,
                rtt: rtt.or(a.rtt),
                since_last_send: since.or(a.since_last_send),
                gap: a.gap || gap,
            },
        });
    }

    /// Keep `pending` and wait for the pacer until `t`; the retransmission timer is stopped
    /// meanwhile (it starts with the window's last piece).
    pub(super) fn wait(&mut self, t: Instant, pending: Pending) -> Option<Payload> {
        self.pending = pending;
        self.pace_at = Some(t);
        self.deadline = None;
        None
    }

    /// Send blocks `from ..= end` of the window that began at `start` (`clean`: none of its
    /// earlier pieces was a resend), as far as the grant allows.
    pub(super) fn send_run(
        &mut self,
        now: Instant,
        from: u64,
        end: u64,
        start: u64,
        clean: bool,
        grant: &mut dyn FnMut(u32) -> Grant,
    ) -> Option<Payload> {
        let end = end.min(self.total_blocks);
        if from > end {
            // A netascii transfer learned its end inside an earlier piece: that piece was the
            // window's last.
            if self.phase == Phase::Sending && self.deadline.is_none() {
                self.arm(now, start, end, clean);
            }
            return None;
        }
        let count = end + 1 - from;
        let n = match grant(count.min(u64::from(u32::MAX)) as u32) {
            Grant::Wait(t) => {
                return self.wait(
                    t,
                    Pending::Rest {
                        from,
                        end,
                        start,
                        clean,
                    },
                )
            }
            Grant::Send(n) => u64::from(n).clamp(1, count),
        };
        self.pace_at = None;
        self.last_send = Some(now);
        let last = from + n - 1;
        let resent = self.sent_hi.saturating_sub(from - 1).min(n);
        self.stats.blocks_sent += n;
        self.stats.blocks_resent += resent;
        self.sent_hi = self.sent_hi.max(last);
        let clean = clean && resent == 0;
        if last < end {
            self.pending = Pending::Rest {
                from: last + 1,
                end,
                start,
                clean,
            };
            self.deadline = None;
        } else {
            self.arm(now, start, end, clean);
        }
        Some(Payload::Blocks {
            first: from,
            count: n as u32,
        })
    }
}

#[cfg(test)]
mod tests;
