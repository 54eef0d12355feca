//! Congestion control for the server's sends (issue 10): rate-based pacing, sans-IO.
//!
//! # Why rate-based, and why this model
//! A TFTP sender cannot shrink a window it granted: an RFC 7440 receiver ACKs only after a full
//! window (or its own timeout, seconds long). What the server controls is *when* datagrams leave.
//! So the controller paces: it says when the next piece of a window may go, never how many blocks
//! a window has.
//!
//! The rate follows the queue the server's own traffic builds, like Swift (Kumar et al., SIGCOMM
//! 2020) and LEDBAT (RFC 6817): the *standing* queueing delay (the shortest round trip seen in a
//! phase, minus the shortest the path has shown) above a target means the bottleneck is full, so
//! the rate steps down by 1/20; at or below it, while the pacer holds flows back, the rate creeps
//! up by 1/128 per phase (4/128 while below 9/10 of where the last loss happened: BIC's idea of
//! hurrying back to the trouble, then tiptoeing). A loss episode (below) cuts it by 15%, and
//! teaches the target: half the queueing delay seen when the queue overflowed, so a shallow
//! switch buffer is kept below full.
//!
//! BBR (Cardwell et al., 2016) was the first candidate: pace at the windowed maximum of the
//! delivery rate, probe at 5/4 of it. In the simulated bottleneck of this module its
//! delivery-rate samples ran up to 60% above the link rate: a TFTP client ACKs a window only when
//! its last block lands, so the ACKs of many interleaved windows arrive in bunches, and a maximum
//! filter keeps the bunches. The minimum round trip of a phase has no such bias (bunching only
//! lengthens round trips). Loss-based AIMD alone (Reno, TFRC) was not chosen either: it must
//! overflow the queue to learn anything, and that loss is what this controller exists to avoid.
//!
//! Three things differ from a TCP sender, because of what a boot server is:
//! - **Open until congestion is seen.** On an empty LAN a transfer is limited by its window and
//!   the client, never by the network; pacing there only costs timer wakeups. So a link starts
//!   *open* ([`LinkCc::pacing_rate`] is `None`: every [`FlowCc::poll_send`] says "send it all
//!   now", as the server does today) and becomes *bound* at the first loss episode, at 9/10 of what
//!   the link delivered over the last [`RING`] phases. It opens again after [`RELEASE_PHASES`]
//!   phases in which the pacer held nobody back.
//! - **One controller sees every flow of an interface** (the server knows all flows on its
//!   uplink, which a TCP sender never does). A loss episode is losses from two different flows
//!   within two phases (a shared bottleneck drops from many flows at once; one flow's loss is its
//!   own path's business, see below); losses of data sent before the last reaction, or so soon
//!   after it that they met the queue of then, belong to the episode already handled; one
//!   reaction per phase at most. The pacer is one shared token bucket in which each grant
//!   reserves the next stretch of link bytes, first come first served; counting in bytes (not
//!   instants) makes a change of rate apply to every reservation at once. Every flow asks for its
//!   next piece only after its previous one, so backlogged flows are served in turn: a round
//!   robin, and since a grant carries the same quantum for everyone (the bytes of
//!   [`QUANTUM_TIME`] at the pacing rate shared by the active flows, at least two blocks), it is
//!   fair in bytes whatever each flow's window. No per-flow table; O(1) per call.
//! - **Per flow, an own ceiling only for persistent trouble.** A flow whose windows keep losing
//!   while the link is not congested (a slow client, a slower access link) gets an own pacing rate:
//!   [`OWN_CUT`] of its measured delivery rate when at least half of its last 8 windows lost
//!   something, growing by 1/8 per clean window and dropped when it no longer binds. A random
//!   loss now and then (a bad cable) changes nothing. A multicast session's configured rate is
//!   a fixed own ceiling ([`FlowCc::with_ceiling`]).
//!
//! A flow's rate is thus `min(own, its round robin share of the link)`, and the link's rate is
//! `min(operator cap, estimate)`; an operator cap (`--rate-limit`) binds even while the link is
//! open.
//!
//! Round trips: a window's round trip is measured from the send of its *last piece*; the
//! serialization of that piece at the pacing rate is taken off (at most half the sample), so a
//! window's sample and an OACK's compare. Clean samples (Karn's rule: everything acknowledged
//! was sent once, no probe since) set the path's shortest round trip. A standing queue is proven
//! when even the shortest sample of a phase, lower bounds included (the time since the flow's
//! latest send, which holds after resends too), is above target; its absence only by a clean
//! sample at or below target. A phase that proves neither holds the rate, unless no clean sample
//! came for 8 phases (very large windows ACK rarely): then the rate creeps up blind.
//!
//! What the simulated bottleneck ([`sim`], tests) shows, and where it falls short, is in
//! `docs/benchmarks.md`: storms of windows 1 to 16 through 100 Mbit/s to 1 Gbit/s with queues of
//! 16 to 64 frames converge to 95-99% of the link with no resends in steady state and Jain's
//! index above 0.99; 200 flows whose fair share is less than a window per round trip (window 4
//! through 100 Mbit/s) hold about 93% with no steady resends; windows as large as the whole queue (64 blocks into 64 frames at
//! 100 Mbit/s, or 200 x 16 into 256) stay near 72-74% with 8-34% of resends: for transfers that
//! start once the path has overflowed, the OACK window policy ([`LinkCc::oack_window_bytes`],
//! applied by `proto::tftp::endpoint`) grants a window that fits the path.
//!
//! # Calling contract (what the engine and the machines do)
//! - One [`LinkCc`] per outgoing interface for the whole server, shared by every worker thread
//!   behind a lock (`engine::links`: one controller sees every flow of the interface, so loss
//!   episodes, the fair quantum and an operator cap need no per-worker split). A caller enters it
//!   once per ACK and once per grant, never per datagram. A transfer drives it through
//!   `Transfer::poll_transmit_paced` (`proto::tftp::transfer::pace`).
//! - One [`FlowCc`] per flow (a unicast transfer, a multicast session), made with
//!   [`FlowCc::new`]; it needs no registration and no removal (the link counts the flows that
//!   used it in the last two phases).
//! - Before sending DATA (a window, the rest of one, a probe, a resend), ask
//!   [`FlowCc::poll_send`] with the number of blocks to send and the wire bytes of one
//!   ([`wire_bytes`]). [`Grant::Send`]`(n)`: send the first `n` blocks now (one GSO call), then
//!   ask again for the rest. [`Grant::Wait`]`(t)`: arm a timer for `t` and ask again then. While
//!   the link is open and no ceiling applies, the answer is always `Send(all)`.
//! - On every ACK that moves the flow forward, and on ACK 0 of an OACK (its round trip):
//!   [`FlowCc::on_ack`] with an [`AckSample`].
//! - On a loss not signalled by a gap: [`FlowCc::on_loss`] (a full resend after the timer
//!   backed off, a go-back on a duplicate ACK ([`gap::GapCheck`]), or a probe that
//!   [`probe::ProbeCheck`] judged genuine). A probe not yet judged is not a loss.
//! - Nothing to call on a timer: phases advance lazily on the calls above. Nothing allocates;
//!   every call is O(1); no clock is read (`now` comes in).

pub mod gap;
pub mod probe;

mod flow;
mod rate;
#[cfg(test)]
mod sim;

pub use flow::{FlowCc, FlowStats};
pub use rate::{wire_bytes, ParseRateError, Rate};

use std::time::{Duration, Instant};

/// Shortest phase (a phase is also at least two shortest round trips).
pub const MIN_PHASE: Duration = Duration::from_millis(2);
/// Longest phase, whatever the round trip.
pub const MAX_PHASE: Duration = Duration::from_millis(100);
/// Phases over which the delivered rate is averaged (for the estimate a link starts bound at).
pub const RING: usize = 8;
/// Phases without any delayed grant and without congestion before a bound link opens again.
pub const RELEASE_PHASES: u32 = 32;
/// Growth per phase while the pacer holds flows back and the queue is below target: 1/this.
const GROW_DIV: u64 = 128;
/// Cut when the standing queue is above target (num, den), at most every other phase.
const DELAY_CUT: (u64, u64) = (19, 20);
/// Cut at a loss episode (num, den).
const LOSS_CUT: (u64, u64) = (17, 20);
/// Pacing quantum: the bytes one grant may carry are what the rate sends in this time (at least
/// two blocks, at most [`MAX_QUANTUM`]).
pub const QUANTUM_TIME: Duration = Duration::from_micros(250);
/// A pacer slot claimed later than this after the instant the flow was told to come back is
/// given up and queued again (see [`FlowCc::poll_send`]): bounds the burst after a driver was
/// starved.
pub const LATE_CLAIM: Duration = Duration::from_millis(1);
/// Largest quantum in bytes (one GSO call is at most 64 KiB anyway).
pub const MAX_QUANTUM: u64 = 64 * 1024;
/// Standing queueing delay the link keeps below, until a loss teaches a smaller one.
pub const DELAY_TARGET: Duration = Duration::from_micros(500);
/// The smallest target a loss can teach.
pub const MIN_DELAY_TARGET: Duration = Duration::from_micros(100);
/// Nor below the serialization of this many full Ethernet frames at the pacing rate: at
/// 100 Mbit/s one frame takes 121 µs, and a target below a few frames cannot be held by any
/// pacer (every piece of every flow waits behind the one before it). Measured: 200 x window 4
/// through 100 Mbit/s held the link at 75-90% with a taught target of 100 µs.
const TARGET_FRAMES: u64 = 4;
/// A full Ethernet frame of 1500 bytes of IP, headers included (what [`wire_bytes`] counts).
const FULL_FRAME: u64 = 1514;
/// A flow's own rate after persistent loss: this share (num, den) of its delivery rate.
pub const OWN_CUT: (u64, u64) = (17, 20);
/// How long a congestion episode informs [`LinkCc::window_hint`].
pub const HINT_TTL: Duration = Duration::from_secs(10);
/// The shortest round trip is forgotten after this long without a new minimum.
const MIN_RTT_TTL: Duration = Duration::from_secs(10);
/// Delivered bytes over less than this, or fewer ACKs than this, say nothing about a rate (a
/// window's ACK covers all its blocks at once). Few ACKs will do: to enter bound, a rough rate
/// now beats flooding while measuring.
const MIN_MEASURE: Duration = Duration::from_millis(1);
const MIN_ACKS_ENTRY: u32 = 4;

/// What one ACK told a flow, for [`FlowCc::on_ack`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckSample {
    /// Wire bytes it acknowledged for the first time (0 for ACK 0 of an OACK).
    pub bytes: u64,
    /// Round trip of what it acknowledged, from the send of the window's last piece, when every
    /// block it acknowledges was sent once and no probe went since (Karn's rule). ACK 0 of an OACK
    /// gives one too (the OACK's round trip).
    pub rtt: Option<Duration>,
    /// Time since the flow's latest DATA send: a lower bound of the round trip even when what
    /// the ACK acknowledges was sent more than once. The standing-queue signal takes it (a lower
    /// bound can hide a queue, never invent one), so a flow that resends still reports queueing.
    pub since_last_send: Option<Duration>,
    /// The ACK named a block inside the window, not its last, and the transfer resends from the
    /// block after it: a loss ([`gap::AckAction::GoBack`]; not a re-alignment).
    pub gap: bool,
}

/// What a flow may do now, from [`FlowCc::poll_send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Send this many of the blocks asked for now (as one GSO call), then ask again for the rest.
    Send(u32),
    /// Send nothing before this instant; ask again then.
    Wait(Instant),
}

/// Fixed settings of one link.
#[derive(Clone, Copy, Debug)]
pub struct LinkConfig {
    /// Operator cap (`--rate-limit`), in wire bytes per second: binds even while the link is open.
    pub cap: Option<Rate>,
    /// The estimate never goes below this (default 1 Mbit/s).
    pub floor: Rate,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            cap: None,
            floor: Rate::from_bits_per_sec(1_000_000),
        }
    }
}

/// Counters of one link, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Loss episodes the link reacted to (entering bound, or a cut).
    pub congestion_events: u64,
    /// Cuts for a standing queue above target.
    pub delay_cuts: u64,
    /// Times the link went back to open.
    pub releases: u64,
    /// Loss reports of all flows (gaps, genuine probes, full resends).
    pub losses: u64,
    /// Grants that made a flow wait for its slot.
    pub waits: u64,
    /// Wire bytes acknowledged, all flows.
    pub acked_bytes: u64,
}

/// The controller of one outgoing interface: its rate estimate and shared pacer. See the module
/// docs.
#[derive(Clone, Debug)]
pub struct LinkCc {
    cfg: LinkConfig,
    /// `Some`: bound (congestion was seen); `None`: open.
    est: Option<Rate>,
    phase_id: u64,
    phase_start: Option<Instant>,
    /// Wire bytes acknowledged in this phase.
    acked: u64,
    /// The first ACK after a phase without any: the delivered rate is measured from there (the
    /// time before it, a round trip of silence, says nothing about the link).
    measure_from: Option<Instant>,
    /// ACKs that moved a flow forward in this phase.
    acks: u32,
    /// Bytes acknowledged, measured time and ACKs of the last [`RING`] phases.
    ring: [(u64, Duration, u32); RING],
    ring_pos: usize,
    /// Shortest round trip sampled in this phase: of every sample (lower bounds included), and
    /// of the clean ones only.
    phase_min_rtt: Option<Duration>,
    phase_min_clean: Option<Duration>,
    /// Largest queueing delay (round trip above the sampling flow's shortest) in this phase and
    /// the one before.
    phase_max_qdelay: Duration,
    prev_max_qdelay: Duration,
    /// A loss was reported in this phase (no growth then).
    lossy: bool,
    /// How long the queue took to drain when the link last reacted: losses of data sent before
    /// the reaction plus this belong to that episode.
    cut_drain: Duration,
    /// Distinct flows that reported a loss in this phase and the one before.
    loss_flows: u32,
    prev_loss_flows: u32,
    /// Distinct flows that used the link in this phase and the one before.
    active: u32,
    prev_active: u32,
    /// The pacer delayed someone in this phase.
    delayed: bool,
    /// A loss episode in this phase.
    congested: bool,
    quiet_phases: u32,
    /// The estimate when the last loss episode cut it.
    last_loss_rate: Option<Rate>,
    /// The last phase with a round-trip sample.
    last_measured: u64,
    last_delay_cut: Option<u64>,
    /// When the link last reacted to a loss episode.
    last_cut_at: Option<Instant>,
    min_rtt: Option<Duration>,
    min_rtt_at: Option<Instant>,
    target: Duration,
    /// The shared pacer, as a queue of bytes drained at the pacing rate: reservations reach
    /// `v_reserved`; the link has served up to `v_served` (as of `v_time`). A reservation is due
    /// when the served count reaches its start. Counting in bytes, not instants, makes a change of
    /// rate apply at once to every reservation already made.
    v_reserved: u64,
    v_served: u64,
    v_time: Option<Instant>,
    /// Bytes the path held when it last overflowed, and when.
    held: Option<(u64, Instant)>,
    stats: LinkStats,
}

impl LinkCc {
    pub fn new(cfg: LinkConfig) -> Self {
        LinkCc {
            cfg,
            est: None,
            phase_id: 0,
            phase_start: None,
            acked: 0,
            measure_from: None,
            acks: 0,
            ring: [(0, Duration::ZERO, 0); RING],
            ring_pos: 0,
            phase_min_rtt: None,
            phase_min_clean: None,
            phase_max_qdelay: Duration::ZERO,
            prev_max_qdelay: Duration::ZERO,
            lossy: false,
            cut_drain: Duration::ZERO,
            loss_flows: 0,
            prev_loss_flows: 0,
            active: 0,
            prev_active: 0,
            delayed: false,
            congested: false,
            quiet_phases: 0,
            last_loss_rate: None,
            last_measured: 0,
            last_delay_cut: None,
            last_cut_at: None,
            min_rtt: None,
            min_rtt_at: None,
            target: DELAY_TARGET,
            v_reserved: 0,
            v_served: 0,
            v_time: None,
            held: None,
            stats: LinkStats::default(),
        }
    }

    /// Set or lift the operator cap (a worker's share of `--rate-limit`, see the module docs).
    pub fn set_cap(&mut self, cap: Option<Rate>, now: Instant) {
        self.advance(now);
        self.cfg.cap = cap;
    }

    /// The rate the shared pacer runs at now: `None` while the link is open and uncapped.
    pub fn pacing_rate(&self) -> Option<Rate> {
        match (self.est, self.cfg.cap) {
            (Some(e), Some(c)) => Some(e.min(c)),
            (e, c) => e.or(c),
        }
    }

    /// The operator cap (`--rate-limit`), if any.
    pub fn cap(&self) -> Option<Rate> {
        self.cfg.cap
    }

    /// The bottleneck estimate (`None` while open: no congestion seen lately).
    pub fn estimate(&self) -> Option<Rate> {
        self.est
    }

    /// Congestion was seen and the pacer runs at the estimate.
    pub fn is_bound(&self) -> bool {
        self.est.is_some()
    }

    /// Flows that used the link in this phase or the one before.
    pub fn active_flows(&self) -> u32 {
        self.active.max(self.prev_active)
    }

    /// Each active flow's equal share of the pacing rate (what a backlogged flow gets).
    pub fn fair_share(&self) -> Option<Rate> {
        let n = u64::from(self.active_flows().max(1));
        self.pacing_rate().map(|r| r.scale(1, n))
    }

    /// Shortest round trip seen on the link (any flow, last 10 s).
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The standing queueing delay the link keeps below.
    pub fn delay_target(&self) -> Duration {
        let frames = self
            .pacing_rate()
            .map_or(Duration::ZERO, |r| r.time_for(TARGET_FRAMES * FULL_FRAME));
        self.target.max(frames.min(DELAY_TARGET))
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Largest window (in blocks of `block_bytes` on the wire) that the path has shown it can
    /// hold: the bytes in flight when it last overflowed (estimate x (shortest round trip +
    /// queueing delay then)), at least 1. `None` when the path has not overflowed in the last
    /// [`HINT_TTL`]. For the OACK policy: a window above this overflows the queue by itself.
    pub fn window_hint(&self, now: Instant, block_bytes: u64) -> Option<u16> {
        let (bytes, at) = self.held?;
        if now.saturating_duration_since(at) > HINT_TTL {
            return None;
        }
        Some((bytes / block_bytes.max(1)).clamp(1, u64::from(u16::MAX)) as u16)
    }

    /// Bytes a newly negotiated window may hold, for the OACK (RFC 7440 lets the server grant
    /// less than asked): the bytes the path held when it last overflowed ([`Self::window_hint`]'s
    /// measure) shared by the active flows and the new one. `None` while the path has not
    /// overflowed in the last [`HINT_TTL`] (an open link grants what is asked).
    pub fn oack_window_bytes(&self, now: Instant) -> Option<u64> {
        let (bytes, at) = self.held?;
        if now.saturating_duration_since(at) > HINT_TTL {
            return None;
        }
        Some(bytes / (u64::from(self.active_flows()) + 1))
    }

    fn phase_len(&self) -> Duration {
        let rtt2 = self.min_rtt.map_or(Duration::ZERO, |r| r * 2);
        rtt2.clamp(MIN_PHASE, MAX_PHASE)
    }

    /// Close the phase when its time is up (lazily, on any call).
    fn tick(&mut self, now: Instant) {
        let Some(start) = self.phase_start else {
            self.phase_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < self.phase_len() {
            return;
        }
        let measured = match self.measure_from.take() {
            Some(t) => now.saturating_duration_since(t),
            None if self.acked > 0 => elapsed,
            None => Duration::ZERO,
        };
        self.advance(now);
        self.close_phase(measured);
        self.phase_start = Some(now);
    }

    /// Time of this phase that counts for the delivered rate, up to `now`.
    fn measured_now(&self, now: Instant) -> Duration {
        match (self.measure_from, self.phase_start) {
            (Some(t), _) => now.saturating_duration_since(t),
            (None, Some(s)) if self.acked > 0 => now.saturating_duration_since(s),
            _ => Duration::ZERO,
        }
    }

    fn close_phase(&mut self, measured: Duration) {
        self.ring[self.ring_pos] = (self.acked, measured, self.acks);
        self.ring_pos = (self.ring_pos + 1) % RING;
        if let Some(est) = self.est {
            let over = |p: Option<Duration>| match (p, self.min_rtt) {
                (Some(p), Some(m)) => Some(p.saturating_sub(m)),
                _ => None,
            };
            // Every sample, lower bounds included, can prove a standing queue (even the shortest
            // is above target); only a clean sample can prove there is none.
            let target = self.delay_target();
            let above = over(self.phase_min_rtt).is_some_and(|q| q > target);
            let clean = over(self.phase_min_clean);
            if clean.is_some() {
                self.last_measured = self.phase_id;
            }
            // A phase without a clean round trip cannot say the queue is short: hold, unless
            // none came for 8 phases (windows so large that clean ACKs are rare): then creep up
            // blind, as before any measurement.
            let blind = self.phase_id.saturating_sub(self.last_measured) >= 8;
            let below = !above && clean.map_or(blind, |q| q <= target);
            let spaced = self.last_delay_cut.is_none_or(|p| self.phase_id >= p + 2);
            let next = if self.congested {
                est
            } else if above && spaced {
                self.last_delay_cut = Some(self.phase_id);
                self.stats.delay_cuts += 1;
                est.scale(DELAY_CUT.0, DELAY_CUT.1)
            } else if self.delayed && !self.lossy && below {
                // Creep up: 1/128 per phase near the rate the last loss happened at, four times
                // faster below 9/10 of it (the idea of BIC/CUBIC: hurry back to where the
                // trouble was, then tiptoe).
                let far = self.last_loss_rate.is_some_and(|m| est < m.scale(9, 10));
                let step = (est.bytes_per_sec() / GROW_DIV) << if far { 2 } else { 0 };
                Rate::from_bytes_per_sec(est.bytes_per_sec() + step)
            } else {
                est
            };
            self.est = Some(next.max(self.cfg.floor));
            if self.delayed || self.congested {
                self.quiet_phases = 0;
            } else {
                self.quiet_phases += 1;
                if self.quiet_phases >= RELEASE_PHASES {
                    self.est = None;
                    self.quiet_phases = 0;
                    self.stats.releases += 1;
                }
            }
        }
        self.prev_active = self.active;
        self.active = 0;
        self.prev_loss_flows = self.loss_flows;
        self.loss_flows = 0;
        self.acked = 0;
        self.acks = 0;
        self.delayed = false;
        self.congested = false;
        self.phase_min_rtt = None;
        self.phase_min_clean = None;
        self.prev_max_qdelay = self.phase_max_qdelay;
        self.phase_max_qdelay = Duration::ZERO;
        self.lossy = false;
        self.phase_id += 1;
    }

    /// What the link delivered over the last [`RING`] phases and this one so far (`None`: less
    /// than [`MIN_MEASURE`] of history).
    fn delivered_rate(&self, now: Instant, min_acks: u32) -> Option<Rate> {
        let (mut bytes, mut time, mut acks) = (self.acked, self.measured_now(now), self.acks);
        for &(b, d, a) in &self.ring {
            bytes += b;
            time += d;
            acks += a;
        }
        if time < MIN_MEASURE || acks < min_acks {
            return None;
        }
        Rate::per(bytes, time)
    }

    /// Count `flow` among the flows of this phase (once).
    fn touch(&mut self, flow: &mut FlowCc) {
        if flow.seen_phase != Some(self.phase_id) {
            flow.seen_phase = Some(self.phase_id);
            self.active += 1;
        }
    }

    /// Round-trip information of one ACK: `clean` (Karn) sets the path's shortest round trip;
    /// `floor` (a lower bound of the round trip, at most `clean`) feeds the standing-queue signal.
    fn on_rtt(
        &mut self,
        now: Instant,
        clean: Option<Duration>,
        floor: Duration,
        flow_min: Option<Duration>,
    ) {
        if let Some(rtt) = clean {
            self.phase_min_clean = Some(self.phase_min_clean.map_or(rtt, |p| p.min(rtt)));
            let stale = self
                .min_rtt_at
                .is_none_or(|t| now.saturating_duration_since(t) > MIN_RTT_TTL);
            if stale || self.min_rtt.is_none_or(|m| rtt <= m) {
                self.min_rtt = Some(rtt);
                self.min_rtt_at = Some(now);
            }
        }
        self.phase_min_rtt = Some(self.phase_min_rtt.map_or(floor, |p| p.min(floor)));
        if let Some(m) = flow_min {
            let q = clean.unwrap_or(floor).saturating_sub(m);
            self.phase_max_qdelay = self.phase_max_qdelay.max(q);
        }
    }

    /// A loss reported by `flow`, of data first sent at `sent_at`. True when the link judges it
    /// congested: losses from two flows within two phases; a loss of data sent before the last
    /// reaction, or so soon after it that it met the queue then (its queueing delay), belongs to
    /// the episode already handled (one reaction per episode, as TCP reduces once per round
    /// trip). Any loss stops growth for the phase.
    fn on_flow_loss(&mut self, now: Instant, flow: &mut FlowCc, sent_at: Option<Instant>) -> bool {
        self.stats.losses += 1;
        self.lossy = true;
        if let Some(cut) = self.last_cut_at {
            // Sent before the reaction, or so soon after it that it met the queue the episode
            // had built (or sent we do not know when): the same episode.
            if sent_at.is_none_or(|sent| sent < cut + self.cut_drain) {
                return true;
            }
        }
        if flow.loss_phase != Some(self.phase_id) {
            flow.loss_phase = Some(self.phase_id);
            self.loss_flows += 1;
        }
        if self.active_flows() <= 1 || self.loss_flows + self.prev_loss_flows < 2 {
            return false;
        }
        if self.congested {
            // One reaction per phase.
            return true;
        }
        self.congestion(now)
    }

    /// React to a loss episode. Returns false when there is nothing to react with: an open link
    /// with no delivery measured yet has no rate to pace at (the flows' own timers back off
    /// meanwhile).
    fn congestion(&mut self, now: Instant) -> bool {
        self.advance(now);
        let est = match self.est {
            None => match self.delivered_rate(now, MIN_ACKS_ENTRY) {
                Some(r) => r.scale(9, 10),
                None => return false,
            },
            Some(e) => e.scale(LOSS_CUT.0, LOSS_CUT.1),
        }
        .max(self.cfg.floor);
        self.last_loss_rate = Some(self.est.unwrap_or(est));
        self.est = Some(est);
        self.congested = true;
        self.quiet_phases = 0;
        self.last_cut_at = Some(now);
        self.stats.congestion_events += 1;
        // The queue overflowed at about this much delay: keep the standing queue at half of it.
        let q = self.phase_max_qdelay.max(self.prev_max_qdelay);
        self.cut_drain = q.max(self.phase_len());
        if q > Duration::ZERO {
            self.target = (q / 2).clamp(MIN_DELAY_TARGET, DELAY_TARGET);
        }
        let path = self.min_rtt.unwrap_or(Duration::ZERO) + q;
        self.held = Some((est.bytes_in(path), now));
        true
    }

    /// Bring the served count of the pacer up to `now` at the current rate (call before the
    /// rate changes). An idle pacer banks at most one quantum of credit.
    fn advance(&mut self, now: Instant) {
        let Some(rate) = self.pacing_rate() else {
            self.v_served = self.v_reserved;
            self.v_time = Some(now);
            return;
        };
        let Some(t) = self.v_time else {
            self.v_time = Some(now);
            return;
        };
        let gained = rate.bytes_in(now.saturating_duration_since(t));
        let room = (self.v_reserved + self.quantum_bytes(rate, 0)).saturating_sub(self.v_served);
        if gained >= room {
            // Idle: the credit is full, the time beyond it is lost.
            self.v_served += room;
            self.v_time = Some(now);
        } else {
            // Keep the fraction of a byte not yet earned for the next call.
            self.v_served += gained;
            self.v_time = Some(t + rate.time_for(gained));
        }
    }

    /// Reserve `bytes` of the pacer: the start of the reservation, in served bytes.
    fn reserve(&mut self, now: Instant, bytes: u64) -> u64 {
        self.advance(now);
        let start = self.v_reserved;
        self.v_reserved += bytes;
        start
    }

    /// When the reservation starting at `start` is due: `None` if it is now.
    fn due(&mut self, now: Instant, start: u64) -> Option<Instant> {
        self.advance(now);
        if self.v_served >= start {
            return None;
        }
        let rate = self.pacing_rate()?;
        let from = self.v_time.unwrap_or(now);
        let at = from + rate.time_for(start - self.v_served) + Duration::from_nanos(1);
        Some(at.max(now + Duration::from_nanos(1)))
    }

    /// Bytes one grant may carry: the quantum shared by the active flows (each backlogged flow
    /// gets one grant per round, so equal grants make the round robin fair in bytes whatever
    /// the windows), at least two blocks.
    fn grant_bytes(&self, rate: Rate, block_bytes: u64) -> u64 {
        let n = u64::from(self.active_flows().max(1));
        let lo = 2 * block_bytes;
        (rate.bytes_in(QUANTUM_TIME) / n).clamp(lo, MAX_QUANTUM.max(lo))
    }

    fn quantum_bytes(&self, rate: Rate, block_bytes: u64) -> u64 {
        let lo = 2 * block_bytes;
        rate.bytes_in(QUANTUM_TIME).clamp(lo, MAX_QUANTUM.max(lo))
    }
}

#[cfg(test)]
pub(crate) mod tests;
