//! The per-flow half of the controller: one [`FlowCc`] per transfer or multicast session (see the
//! calling contract in [`super`]).

use super::*;

/// Counters of one flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Grants that made the flow wait (link slot or own rate).
    pub waits: u64,
    /// Losses reported (gaps, genuine probes, full resends).
    pub losses: u64,
    /// Times the flow's own rate was cut for persistent loss.
    pub own_cuts: u64,
}

/// The controller state of one flow (a transfer, a multicast session). See the module docs.
#[derive(Clone, Debug)]
pub struct FlowCc {
    /// Fixed ceiling (a multicast session's configured rate).
    ceiling: Option<Rate>,
    /// Own rate after persistent loss (`None`: not limited by itself).
    own: Option<Rate>,
    own_next: Option<Instant>,
    /// A reservation on the link's pacer: its start (in served bytes), how many blocks, and the
    /// instant the flow was last told to come back for it (lateness counts from there).
    reserved: Option<(u64, u32, Instant)>,
    /// When the first piece of the window in flight went (the send time of what a loss lost),
    /// and whether the next grant starts a new window (an ACK or a loss came since).
    window_at: Option<Instant>,
    fresh: bool,
    /// Serialization of the last piece at the pacing rate: part of every round trip measured
    /// from its send, but no queue. Taken off the samples so that windows and OACKs compare.
    piece_ser: Duration,
    min_rtt: Option<Duration>,
    /// Largest recent delivery rate of one window (bytes/s), decaying by 1/8 per sample.
    bw_max: u64,
    /// One bit per acknowledged window, newest lowest: it lost something.
    loss_bits: u8,
    pub(super) seen_phase: Option<u64>,
    pub(super) loss_phase: Option<u64>,
    stats: FlowStats,
}

impl Default for FlowCc {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowCc {
    pub fn new() -> Self {
        FlowCc {
            ceiling: None,
            own: None,
            own_next: None,
            reserved: None,
            window_at: None,
            fresh: true,
            piece_ser: Duration::ZERO,
            min_rtt: None,
            bw_max: 0,
            loss_bits: 0,
            seen_phase: None,
            loss_phase: None,
            stats: FlowStats::default(),
        }
    }

    /// A flow that never goes faster than `ceiling` (a multicast session's `--multicast-rate`).
    pub fn with_ceiling(ceiling: Rate) -> Self {
        FlowCc {
            ceiling: Some(ceiling),
            ..Self::new()
        }
    }

    /// The flow's own limit now: `min(ceiling, own)`.
    pub fn own_rate(&self) -> Option<Rate> {
        match (self.ceiling, self.own) {
            (Some(c), Some(o)) => Some(c.min(o)),
            (c, o) => c.or(o),
        }
    }

    /// Shortest round trip of this flow.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    pub fn stats(&self) -> FlowStats {
        self.stats
    }

    /// May the flow send `blocks` blocks of `block_bytes` wire bytes each now? See [`Grant`] and
    /// the module docs. `blocks == 0` is answered `Send(0)`.
    pub fn poll_send(
        &mut self,
        now: Instant,
        link: &mut LinkCc,
        blocks: u32,
        block_bytes: u64,
    ) -> Grant {
        link.tick(now);
        link.touch(self);
        if blocks == 0 {
            return Grant::Send(0);
        }
        if let Some((start, n, promised)) = self.reserved {
            if let Some(at) = link.due(now, start) {
                self.reserved = Some((start, n, at));
                return Grant::Wait(at);
            }
            self.reserved = None;
            // Claimed late (a starved driver woke long after the instant it was given): the
            // link time is gone, and sending now with every other late claim would be a burst
            // the queue cannot hold. Within [`LATE_CLAIM`] of that instant it goes; later, it
            // queues again. Lateness counts from the instant the flow was told, not from when
            // the slot came due: when the rate rose meanwhile the slot came early, and a flow
            // that comes back when told is on time (measured: counting from the slot, a rising
            // rate sent most of 200 flows to the back of the pacer again and again, and the
            // link idled; 200 x 4 MB through 100 Mbit/s fell to 25% of the link).
            if now.saturating_duration_since(promised) <= LATE_CLAIM {
                // The link's count ran past this slot while the flow slept to the instant it was
                // given (the rate rose): it counted bytes as served that leave only now. Take
                // them back (at most this piece's bytes, beyond what the driver's own lateness
                // explains), or reservations made meanwhile would come due at once and go out
                // together with the sleepers' (measured: bursts of 20+ frames after every rise
                // with 200 flows).
                let n = n.min(blocks);
                let slack = link
                    .pacing_rate()
                    .map_or(0, |r| r.bytes_in(now.saturating_duration_since(promised)));
                let ahead = link.v_served.saturating_sub(start + slack);
                link.v_served -= ahead.min(u64::from(n) * block_bytes);
                return self.granted(now, link, n, block_bytes);
            }
        }
        let own = self.own_rate();
        if let (Some(_), Some(t)) = (own, self.own_next) {
            if t > now {
                self.stats.waits += 1;
                return Grant::Wait(t);
            }
        }
        let link_rate = link.pacing_rate();
        let Some(rate) = link_rate.or(own) else {
            return self.granted(now, link, blocks, block_bytes);
        };
        let block_bytes = block_bytes.max(1);
        let quantum = (link.grant_bytes(rate, block_bytes) / block_bytes).max(1);
        let n = quantum.min(u64::from(blocks)) as u32;
        let bytes = u64::from(n) * block_bytes;
        if let Some(o) = own {
            let credit = o.time_for(link.quantum_bytes(o, block_bytes));
            let earliest = now.checked_sub(credit).unwrap_or(now);
            let start = self.own_next.map_or(now, |t| t.max(earliest));
            self.own_next = Some(start + o.time_for(bytes));
        }
        if link_rate.is_none() {
            return self.granted(now, link, n, block_bytes);
        }
        let start = link.reserve(now, bytes);
        let Some(at) = link.due(now, start) else {
            return self.granted(now, link, n, block_bytes);
        };
        link.delayed = true;
        link.stats.waits += 1;
        self.stats.waits += 1;
        self.reserved = Some((start, n, at));
        Grant::Wait(at)
    }

    /// `n` blocks go now: note when the window's first piece went.
    fn granted(&mut self, now: Instant, link: &LinkCc, n: u32, block_bytes: u64) -> Grant {
        if self.fresh {
            self.window_at = Some(now);
            self.fresh = false;
        }
        self.piece_ser = link
            .est
            .map_or(Duration::ZERO, |r| r.time_for(u64::from(n) * block_bytes));
        Grant::Send(n)
    }

    /// An ACK came that moved the flow forward, or that carries a round trip (ACK 0 of an OACK).
    /// See [`AckSample`].
    pub fn on_ack(&mut self, now: Instant, link: &mut LinkCc, ack: AckSample) {
        let AckSample {
            bytes,
            rtt,
            since_last_send,
            gap,
        } = ack;
        link.tick(now);
        link.touch(self);
        if bytes > 0 {
            if link.acked == 0 && link.ring[(link.ring_pos + RING - 1) % RING].0 == 0 {
                link.measure_from.get_or_insert(now);
            }
            link.acked += bytes;
            link.acks += 1;
            link.stats.acked_bytes += bytes;
        }
        let window_at = self.window_at;
        self.fresh = true;
        if let Some(r) = rtt {
            self.min_rtt = Some(self.min_rtt.map_or(r, |m| m.min(r)));
            let sample = Rate::per(bytes, r).map_or(0, Rate::bytes_per_sec);
            self.bw_max = sample.max(self.bw_max - self.bw_max / 8);
        }
        let floor = match (rtt, since_last_send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(f) = floor {
            // Never more than half a sample: the piece may have drained faster than the
            // estimate says, and a base round trip too short would make every window look queued.
            let ser = self.piece_ser;
            let net = |r: Duration| r.saturating_sub(ser).max(r / 2);
            link.on_rtt(now, rtt.map(net), net(f), self.min_rtt);
        }
        if bytes == 0 && !gap {
            return;
        }
        self.loss_bits = (self.loss_bits << 1) | u8::from(gap);
        if gap {
            self.loss(now, link, window_at);
        } else if let Some(o) = self.own {
            let grown = o.scale(9, 8);
            if grown.bytes_per_sec() > self.bw_max.saturating_mul(2) {
                self.own = None;
                self.own_next = None;
            } else {
                self.own = Some(grown);
            }
        }
    }

    /// A loss not signalled by a gap: a full resend after the timer backed off, or a probe judged
    /// genuine by [`probe::ProbeCheck`].
    pub fn on_loss(&mut self, now: Instant, link: &mut LinkCc) {
        link.tick(now);
        link.touch(self);
        self.loss_bits |= 1;
        // What follows (a resend) is a new window.
        self.fresh = true;
        self.loss(now, link, self.window_at);
    }

    fn loss(&mut self, now: Instant, link: &mut LinkCc, sent_at: Option<Instant>) {
        self.stats.losses += 1;
        if link.on_flow_loss(now, self, sent_at) {
            return;
        }
        // Not the link: this flow's own path, if it keeps happening.
        if self.loss_bits.count_ones() >= 4 && self.bw_max > 0 {
            let base = Rate::from_bytes_per_sec(self.bw_max);
            let base = self.own.map_or(base, |o| o.min(base));
            self.own = Some(base.scale(OWN_CUT.0, OWN_CUT.1).max(link.cfg.floor));
            self.loss_bits = 0;
            self.stats.own_cuts += 1;
        }
    }
}
