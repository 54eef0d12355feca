//! The session as one flow of its interface's congestion controller ([`crate::proto::cc`]), so
//! multicast and unicast share the uplink (issue 11, "inside the server-wide uplink controller").
//!
//! Contract:
//! - A driver that paces calls [`Session::poll_transmit_paced`] instead of
//!   [`Session::poll_transmit`], with the [`LinkCc`] of the interface the session's group leaves
//!   by, behind a [`PaceLink`] (a plain `LinkCc` in tests, a lock in the engine), exactly as a
//!   unicast transfer does ([`crate::proto::tftp::transfer::pace`]). Control datagrams (OACKs,
//!   PXE's unicast block 1, ERRORs) are never paced.
//! - Two rates hold at once: the room's ([`super::rate`], from the master's feedback, with
//!   `--multicast-rate` as its ceiling) and the link's grant (the session's fair share of the
//!   uplink, or an operator cap). Blocks go when both allow; a [`Grant::Wait`] makes
//!   [`Session::poll_timeout`] return its instant at the latest, and the driver polls again then.
//! - Samples: every master ACK becomes an [`AckSample`] (wire bytes of the blocks it moved, the
//!   round trip the session timed, the time since the latest send, whether it showed an own
//!   loss); a timeout is a loss. They are handed to the link at the next paced poll. Only the
//!   master's feedback reaches the link: passive members are silent (the session's own rate
//!   already follows the room).
//! - The link is entered at most once per call that has something for it; nothing allocates.

use super::*;
use crate::proto::cc::{wire_bytes, AckSample, FlowCc, Grant, LinkCc};
use crate::proto::tftp::transfer::pace::PaceLink;

/// What the session keeps for its flow of the link.
#[derive(Debug, Default)]
pub(super) struct CcState {
    flow: FlowCc,
    /// A pacing wait of the link not over yet.
    pub(super) pace_at: Option<Instant>,
    /// The master's feedback since the last paced poll.
    ack: Option<AckSample>,
    pub(super) loss: bool,
    /// The latest DATA send.
    pub(super) last_send: Option<Instant>,
}

impl CcState {
    /// The master's ACK that was noted last showed an own loss.
    pub(super) fn gap(&mut self) {
        if let Some(a) = self.ack.as_mut() {
            a.gap = true;
        }
    }
}

impl Session {
    /// [`poll_transmit`](Self::poll_transmit), with the blocks paced by `link` as well (see the
    /// module docs).
    pub fn poll_transmit_paced(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        link: &mut impl PaceLink,
    ) -> Option<Transmit> {
        if let Some(t) = self.poll_control(buf) {
            return Some(t);
        }
        let data_due =
            self.can_send() && now >= self.next_send_at && self.cc.pace_at.is_none_or(|t| now >= t);
        if !data_due && self.cc.ack.is_none() && !self.cc.loss {
            return None;
        }
        let want = if data_due { self.blocks_due(now) } else { 0 };
        let block = self.block_wire();
        let (ack, loss) = (self.cc.ack.take(), std::mem::take(&mut self.cc.loss));
        let flow = &mut self.cc.flow;
        let grant = link.with_link(|l: &mut LinkCc| {
            if let Some(a) = ack {
                flow.on_ack(now, l, a);
            }
            if loss {
                flow.on_loss(now, l);
            }
            (want > 0).then(|| flow.poll_send(now, l, want, block))
        });
        match grant? {
            Grant::Send(n) => {
                self.cc.pace_at = None;
                self.send_blocks(now, u64::from(n))
            }
            Grant::Wait(t) => {
                self.cc.pace_at = Some(t);
                None
            }
        }
    }

    /// The flow's controller counters.
    pub fn cc_stats(&self) -> crate::proto::cc::FlowStats {
        self.cc.flow.stats()
    }

    /// Wire bytes of one full DATA block to the group.
    fn block_wire(&self) -> u64 {
        wire_bytes(4 + self.blksize as usize, self.cfg.group.is_ipv6())
    }

    /// Blocks [`send_blocks`](Self::send_blocks) would send now: the next run, within the
    /// window's credit and the room's token bucket.
    fn blocks_due(&self, now: Instant) -> u32 {
        let avail = match self.repairs.front() {
            Some(&(_, n)) => n,
            None => (self.total_blocks + 1).saturating_sub(self.cursor),
        };
        let mut count = avail.min((self.cfg.window.get() as u64).saturating_sub(self.inflight));
        let rate = self.ctl.rate();
        if rate > 0 {
            let per_block = self.blksize as f64 / rate as f64;
            let start = self.next_send_at.max(now.checked_sub(BURST).unwrap_or(now));
            let allowed = (now.saturating_duration_since(start).as_secs_f64() / per_block.max(1e-9))
                as u64
                + 1;
            count = count.min(allowed);
        }
        count.min(u64::from(u32::MAX)) as u32
    }

    /// Note what a master ACK of `fwd` new blocks told (for the link, at the next paced poll).
    pub(super) fn note_cc_ack(&mut self, fwd: u64, rtt: Option<Duration>, now: Instant) {
        let since = self.cc.last_send.map(|t| now.saturating_duration_since(t));
        let bytes = fwd * self.block_wire();
        self.cc.ack = Some(match self.cc.ack {
            None => AckSample {
                bytes,
                rtt,
                since_last_send: since,
                gap: false,
            },
            Some(a) => AckSample {
                bytes: a.bytes + bytes,
                rtt: rtt.or(a.rtt),
                since_last_send: since.or(a.since_last_send),
                gap: a.gap,
            },
        });
    }
}
