//! The server side of one read transfer (RFC 1350, 2347-2349, 7440) as a sans-IO state machine.
//!
//! Contract (quinn-proto style):
//! - Created by the [`Endpoint`](super::endpoint::Endpoint) once the request is accepted and
//!   negotiated (or with [`Transfer::new`] in tests).
//! - Feed every datagram that arrives on the transfer's socket (connected to the client: only
//!   the client's datagrams arrive) to [`Transfer::handle_datagram`], and call
//!   [`Transfer::handle_timeout`] when the instant from [`Transfer::poll_timeout`] has passed.
//! - After each of those calls (and after `new`), drain [`Transfer::poll_transmit`] until it returns
//!   `None`, executing each [`Transmit`] (always to the client): a control datagram written into
//!   the caller's buffer (OACK, ERROR), or a run of DATA blocks described by index
//!   ([`Payload::Blocks`]), whose bytes the driver takes from the content with
//!   [`Transfer::block_range`] and [`data_header`](super::packet::data_header), never copying them.
//! - [`Transfer::poll_event`] says once that the transfer is over ([`Event::Ended`]); the driver
//!   then closes it and logs [`Transfer::stats`]. [`Transfer::outcome`] tells the same at any time.
//!
//! The machine never reads file bytes and never reads a clock.
//!
//! Reflection bound (a request whose source address may be spoofed): until the client has
//! acknowledged something (ACK 0 of the OACK, or ACK 1 without one) it has not proven that it
//! receives at its address, so the first response (the OACK, or block 1 when there is no OACK) is
//! sent at most `1 + PRE_ACK_RESENDS` times in all, with the timer backing off (1 s, 2 s, ...,
//! capped by the timeout ceiling), whether the resends come from the timer or from repeated
//! requests ([`Transfer::handle_duplicate_request`]). Then the transfer ends quietly as
//! [`Outcome::Unanswered`], with no ERROR: the address never answered, so nothing more goes to it.
//! The first response is at most 516 bytes of UDP payload (block 1 of a plain RFC 1350 transfer;
//! an OACK is smaller), so one request draws at most 3 x 516 = 1,548 bytes of payload (1,632 bytes
//! of IPv4 packets) toward an address that never answers, over about `1 + 2 + min(4, ceiling)`
//! seconds.

use super::block::BlockNum;
use super::options::Negotiated;
use super::packet::{emit_error, ErrorCode, Packet};
use crate::proto::cc::probe::{eifel_response, ProbeCheck, Verdict};
use crate::proto::cc::{AckSample, FlowCc, Grant};
use crate::proto::{Payload, Transmit};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Clock granularity term of RFC 6298 (`G`).
const GRANULARITY: Duration = Duration::from_millis(1);
/// Floor of the probe timeout: a probe costs one block, so it may follow a LAN's sub-millisecond
/// round trip closely.
const PTO_FLOOR: Duration = Duration::from_micros(250);
/// Decay of the recent longest round trip per sample: 1/this (it halves in about 44 windows).
const PEAK_DECAY: u32 = 64;
/// Retransmission timeout before the first round trip is measured (RFC 6298 §2.1 says 1 s).
const INITIAL_RTO: Duration = Duration::from_secs(1);
/// Resends of the first response (OACK or block 1) before the client's first ACK; after them the
/// transfer is dropped without an ERROR (see the module docs).
pub const PRE_ACK_RESENDS: u32 = 2;

/// `content_len` of a transfer whose length is learned only when the driver reaches the end of the
/// content (netascii, converted block by block as it is sent): see [`Transfer::set_last_block`].
pub const LENGTH_UNKNOWN: u64 = u64::MAX;

/// What a transfer needs to know, fixed at its start.
#[derive(Clone, Copy, Debug)]
pub struct TransferConfig {
    /// The client (every [`Transmit`] goes there).
    pub peer: SocketAddr,
    pub negotiated: Negotiated,
    /// Bytes that will be sent, or [`LENGTH_UNKNOWN`].
    pub content_len: u64,
    /// Ceiling of the retransmission timer (server `--timeout`); the client's RFC 2349 timeout, when
    /// smaller, lowers it further.
    pub max_timeout: Duration,
    /// Floor of the retransmission timer.
    pub min_rto: Duration,
    /// The transfer gives up after `retries` x ceiling of silence from the client.
    pub retries: u32,
}

/// How a transfer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client acknowledged the last block.
    Completed,
    /// The client answered the OACK with an ERROR: the firmware size probe. Normal, not a failure.
    ProbeEnded(ErrorCode),
    /// The client sent an ERROR during the transfer.
    ClientError(ErrorCode),
    /// The client went silent for the whole retry budget; an ERROR was sent.
    TimedOut,
    /// The client sent a packet that has no place in a read transfer; ERROR 4 was sent.
    ProtocolViolation,
    /// The server ended it (e.g. the file was modified in place); an ERROR was sent.
    Aborted(ErrorCode),
    /// The client never acknowledged the first response within the pre-ACK resend budget: it is
    /// gone, or its address was spoofed. Dropped without an ERROR (see the module docs).
    Unanswered,
    /// Every block was sent, the client had acknowledged earlier ones, and then it went away
    /// without its final ACK being seen: its port became unreachable (ICMP), or it stayed silent
    /// for the whole retry budget. A TFTP client leaves as soon as it has sent its final ACK, so
    /// when that ACK is lost (or a tail probe crosses it) this is how a completed download ends.
    /// Not a failure; no ERROR is sent (nobody is there to read it).
    Unconfirmed,
}

/// What the driver must know, from [`Transfer::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The transfer is over (reported once): close it and log its [`stats`](Transfer::stats).
    Ended(Outcome),
}

impl Outcome {
    /// Short word for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::ProbeEnded(_) => "probe",
            Outcome::ClientError(_) => "client-error",
            Outcome::TimedOut => "timeout",
            Outcome::ProtocolViolation => "protocol-violation",
            Outcome::Aborted(_) => "aborted",
            Outcome::Unanswered => "unanswered",
            Outcome::Unconfirmed => "completed-unconfirmed",
        }
    }
}

/// Counters for the end-of-transfer log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// DATA blocks handed to the driver, retransmissions included.
    pub blocks_sent: u64,
    /// Of those, blocks sent more than once.
    pub blocks_resent: u64,
    /// Retransmission timer expiries.
    pub timeouts: u32,
    /// Payload bytes the client acknowledged.
    pub bytes_acked: u64,
    /// Smoothed round trip, once measured.
    pub srtt: Option<Duration>,
    /// Tail-loss probes that the client's ACKs showed were not needed (the original had
    /// arrived; its ACK was late), and those that were.
    pub probes_spurious: u64,
    pub probes_genuine: u64,
}

/// RFC 6298 retransmission timer. Backoff doubles the timeout on each expiry and decays one step each
/// time the client acknowledges new data, so one loss does not slow what follows, while a client
/// that keeps falling behind (CPU-starved, say) is not flooded by spurious resends.
#[derive(Clone, Copy, Debug)]
struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    base: Duration,
    backoff: u32,
    min: Duration,
    max: Duration,
    /// Shortest clean sample: the path's round trip without queueing.
    min_rtt: Option<Duration>,
    /// Recent longest round trip: the largest sample (or late round trip of a spurious probe),
    /// decaying by 1/[`PEAK_DECAY`] per sample. On a busy host (a CPU-starved client or server)
    /// round trips are heavy-tailed, and a timer below the tail only draws duplicate ACKs.
    peak: Duration,
    /// Stretch of both timeouts after spurious probes in a row ([`ProbeCheck::pto_factor`]);
    /// back to 1 after a probe that was needed.
    pto_factor: u32,
}

impl RttEstimator {
    fn new(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            base: INITIAL_RTO.clamp(min, max),
            backoff: 0,
            min,
            max,
            min_rtt: None,
            peak: Duration::ZERO,
            pto_factor: 1,
        }
    }

    /// The retransmission timeout: the base, stretched after spurious probes, backed off.
    fn rto(&self) -> Duration {
        (self.base * self.pto_factor * (1u32 << self.backoff)).min(self.max)
    }

    /// Probe timeout: two smoothed round trips, or the round trip plus four deviations when the
    /// path is jittery (a busy client or server: probing inside the jitter only draws duplicate
    /// ACKs), at least [`PTO_FLOOR`], at most the RTO.
    fn pto(&self) -> Duration {
        match self.srtt {
            Some(s) => ((s * 2).max(s + self.rttvar * 4).max(self.peak_margin()) * self.pto_factor)
                .max(PTO_FLOOR)
                .min(self.rto()),
            None => self.rto(),
        }
    }

    /// 5/4 of the recent longest round trip.
    fn peak_margin(&self) -> Duration {
        self.peak + self.peak / 4
    }

    /// RFC 6298's `srtt + max(G, 4 rttvar)`, and at least [`Self::peak_margin`].
    fn set_base(&mut self) {
        let s = self.srtt.unwrap_or(self.peak);
        let b = (s + GRANULARITY.max(self.rttvar * 4)).max(self.peak_margin());
        self.base = b.clamp(self.min, self.max);
    }

    fn sample(&mut self, r: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(r, |m| m.min(r)));
        self.peak = (self.peak - self.peak / PEAK_DECAY).max(r);
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        self.set_base();
    }

    /// A probe was spurious: the original's ACK came `late` after its send. The Eifel response
    /// (RFC 4015 §2): the path's delay is that now, so the smoothed round trip and its variation
    /// rise to it (and the timeouts with them); the backoff taken since goes back to `backoff`.
    fn undo(&mut self, late: Duration, backoff: u32, pto_factor: u32) {
        let (srtt, rttvar) = eifel_response(self.srtt.unwrap_or(late), self.rttvar, late);
        self.srtt = Some(srtt);
        self.rttvar = rttvar;
        self.peak = self.peak.max(late);
        self.set_base();
        self.backoff = self.backoff.min(backoff);
        self.pto_factor = pto_factor;
    }

    fn backoff(&mut self) {
        if self.rto() < self.max {
            self.backoff += 1;
        }
    }

    fn decay_backoff(&mut self) {
        self.backoff = self.backoff.saturating_sub(1);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// OACK sent, waiting for ACK 0.
    AwaitOackAck,
    /// Sending windows of DATA.
    Sending,
    /// An ERROR is queued; the outcome is final once it is sent.
    Closing(Outcome),
    Done(Outcome),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Nothing,
    Oack,
    Window {
        from: u64,
    },
    /// The rest of a window that the pacer split ([`pace`]): blocks `from ..= end` of the window
    /// that began at `start`; `clean`: no block of it was sent before.
    Rest {
        from: u64,
        end: u64,
        start: u64,
        clean: bool,
    },
    /// Tail-loss probe: the last block sent, alone.
    Probe {
        index: u64,
    },
    Error {
        code: ErrorCode,
        message: &'static str,
    },
}

/// The send side of one window, kept to take a round-trip sample when it is acknowledged whole.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    sent_at: Instant,
    /// First and last index of the window (0 and 0 for the OACK).
    start: u64,
    end: u64,
    /// No block of it had been sent before (Karn's rule: only clean windows give samples).
    clean: bool,
}

/// The server side of one read transfer. See the module docs for the calling contract.
#[derive(Debug)]
pub struct Transfer {
    peer: SocketAddr,
    negotiated: Negotiated,
    blksize: u64,
    window: u64,
    content_len: u64,
    /// Number of DATA blocks: the last is shorter than `blksize`, possibly empty.
    total_blocks: u64,
    /// Highest index the client acknowledged (0: nothing yet, or the OACK).
    acked: u64,
    /// Highest index ever sent.
    sent_hi: u64,
    phase: Phase,
    pending: Pending,
    rtt: RttEstimator,
    deadline: Option<Instant>,
    last_progress: Instant,
    silence_budget: Duration,
    in_flight: Option<InFlight>,
    /// A tail-loss probe went out since the last progress.
    probed: bool,
    /// Judges the last probe by the ACKs that follow it (spurious or needed).
    probe_check: ProbeCheck,
    /// The backoff before the last probe's timer expiry (restored when it was spurious).
    probe_backoff: u32,
    /// The client acknowledged something: it receives at its address (not a spoofed source).
    verified: bool,
    /// Resends of the first response so far, while not `verified` (at most [`PRE_ACK_RESENDS`]).
    first_resends: u32,
    /// [`Event::Ended`] was taken by the driver.
    reported: bool,
    stats: TransferStats,
    /// Pacing (see [`pace`]): the flow's congestion state, what the ACKs since the last paced
    /// poll told it, and when the pacer lets the pending DATA go.
    cc: FlowCc,
    cc_ack: Option<AckSample>,
    cc_loss: bool,
    pace_at: Option<Instant>,
    last_send: Option<Instant>,
}

impl Transfer {
    /// Start a transfer at `now`. The first [`poll_transmit`](Self::poll_transmit) yields the OACK
    /// when one was negotiated, else the first window of DATA.
    pub fn new(cfg: TransferConfig, now: Instant) -> Self {
        let n = cfg.negotiated;
        let blksize = n.blksize.bytes() as u64;
        let mut max = cfg.max_timeout.max(Duration::from_millis(1));
        if let Some(t) = n.timeout {
            max = max.min(t);
        }
        let (phase, pending) = if n.needs_oack() {
            (Phase::AwaitOackAck, Pending::Oack)
        } else {
            (Phase::Sending, Pending::Window { from: 1 })
        };
        Transfer {
            peer: cfg.peer,
            negotiated: n,
            blksize,
            // Serial arithmetic on 16-bit block numbers needs fewer than 32768 blocks in flight.
            window: (n.windowsize.get() as u64).min(0x7fff),
            content_len: cfg.content_len,
            total_blocks: match cfg.content_len {
                LENGTH_UNKNOWN => u64::MAX,
                len => len / blksize + 1,
            },
            acked: 0,
            sent_hi: 0,
            phase,
            pending,
            rtt: RttEstimator::new(cfg.min_rto, max),
            deadline: None,
            last_progress: now,
            silence_budget: max * cfg.retries,
            in_flight: None,
            probed: false,
            probe_check: ProbeCheck::new(),
            probe_backoff: 0,
            verified: false,
            first_resends: 0,
            reported: false,
            stats: TransferStats::default(),
            cc: FlowCc::new(),
            cc_ack: None,
            cc_loss: false,
            pace_at: None,
            last_send: None,
        }
    }

    /// The client.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The negotiated parameters.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Number of DATA blocks in the transfer.
    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// For a transfer created with [`LENGTH_UNKNOWN`]: the driver, producing the blocks of the last
    /// [`Payload::Blocks`], found that block `index` is the last one (shorter than blksize,
    /// possibly empty) and that the content is `len` bytes (`index == len / blksize + 1`). Call it
    /// before sending that run, and send only its blocks up to `index`: the ones after it are not
    /// counted as sent. From then on the transfer is one of known length. Ignored when the length is
    /// already known, when `len` does not match `index`, or when `index` was already acknowledged.
    pub fn set_last_block(&mut self, index: u64, len: u64) {
        if self.content_len != LENGTH_UNKNOWN
            || len == LENGTH_UNKNOWN
            || len / self.blksize + 1 != index
            || index <= self.acked
        {
            return;
        }
        self.total_blocks = index;
        self.content_len = len;
        if self.sent_hi > index {
            let cut = self.sent_hi - index;
            self.stats.blocks_sent = self.stats.blocks_sent.saturating_sub(cut);
            self.stats.blocks_resent = self.stats.blocks_resent.min(self.stats.blocks_sent);
            self.sent_hi = index;
        }
        if let Some(f) = &mut self.in_flight {
            f.start = f.start.min(index);
            f.end = f.end.min(index);
        }
    }

    /// Byte range `(offset, len)` of the content carried by block `index` (1-based).
    #[inline]
    pub fn block_range(&self, index: u64) -> (u64, usize) {
        debug_assert!(index >= 1 && index <= self.total_blocks);
        let offset = (index - 1) * self.blksize;
        let len = self.blksize.min(self.content_len - offset);
        (offset, len as usize)
    }

    /// How the transfer ended, once it has.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.phase {
            Phase::Done(o) => Some(o),
            _ => None,
        }
    }

    pub fn stats(&self) -> TransferStats {
        TransferStats {
            bytes_acked: (self.acked * self.blksize).min(self.content_len),
            srtt: self.rtt.srtt,
            probes_spurious: self.probe_check.counts().0,
            probes_genuine: self.probe_check.counts().1,
            ..self.stats
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called; `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done(_) => None,
            _ => match (self.deadline, self.pace_at) {
                (Some(d), Some(p)) => Some(d.min(p)),
                (d, p) => d.or(p),
            },
        }
    }

    /// What the driver must know: [`Event::Ended`] once, when the transfer is over. Call after
    /// each input (and after draining [`poll_transmit`](Self::poll_transmit)).
    pub fn poll_event(&mut self) -> Option<Event> {
        match self.phase {
            Phase::Done(o) if !self.reported => {
                self.reported = true;
                Some(Event::Ended(o))
            }
            _ => None,
        }
    }

    /// Feed one datagram that arrived on this transfer's socket (from the client's address and port).
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        if matches!(self.phase, Phase::Done(_) | Phase::Closing(_)) {
            return;
        }
        match Packet::parse(datagram) {
            Ok(Packet::Ack { block }) => self.handle_ack(block, now),
            Ok(Packet::Error { code, .. }) => {
                let outcome = if self.phase == Phase::AwaitOackAck {
                    Outcome::ProbeEnded(code)
                } else {
                    Outcome::ClientError(code)
                };
                self.finish(outcome);
            }
            Ok(_) => self.close(
                Outcome::ProtocolViolation,
                ErrorCode::IllegalOperation,
                "only ACK or ERROR is expected during a read transfer",
            ),
            // Garbage on the transfer port is dropped; the timer covers whatever it displaced.
            Err(_) => {}
        }
    }

    fn handle_ack(&mut self, block: BlockNum, now: Instant) {
        match self.phase {
            Phase::AwaitOackAck => {
                if block != BlockNum::ZERO {
                    return;
                }
                let rtt = self.take_sample(0, now);
                self.note_ack(0, rtt, now, false);
                self.verified = true;
                self.phase = Phase::Sending;
                self.progress(now);
                self.pending = Pending::Window { from: 1 };
            }
            Phase::Sending => {
                let fwd = BlockNum::from_index(self.acked).distance_to(block) as u64;
                // fwd beyond what was sent: stale or bogus, ignore.
                if fwd > self.sent_hi - self.acked {
                    return;
                }
                self.judge_probe(self.acked + fwd, now);
                // fwd == 0: a duplicate ACK. Never answer it with data (RFC 1123 §4.2.3.1).
                if fwd == 0 {
                    return;
                }
                self.acked += fwd;
                self.verified = true;
                let rtt = self.take_sample(self.acked, now);
                // An ACK short of what was sent, before the end: the transfer goes back to the
                // block after it (a loss signalled by a gap).
                let gap = self.acked < self.sent_hi && self.acked < self.total_blocks;
                self.note_ack(fwd, rtt, now, gap);
                self.progress(now);
                if self.acked == self.total_blocks {
                    self.finish(Outcome::Completed);
                } else {
                    // A full window acknowledged: the next one. An ACK inside the window: the client
                    // lost the block after it, so resume from there at once (RFC 7440 §4).
                    self.pending = Pending::Window {
                        from: self.acked + 1,
                    };
                }
            }
            Phase::Closing(_) | Phase::Done(_) => {}
        }
    }

    /// Feed an ACK of absolute index `index` to the probe check, and act on its verdict.
    fn judge_probe(&mut self, index: u64, now: Instant) {
        match self.probe_check.on_ack(now, index, self.rtt.min_rtt) {
            Verdict::Pending => {}
            Verdict::Genuine => {
                self.rtt.pto_factor = self.probe_check.pto_factor();
                self.cc_loss = true;
            }
            Verdict::Spurious { late_rtt } => {
                self.rtt
                    .undo(late_rtt, self.probe_backoff, self.probe_check.pto_factor());
            }
        }
    }

    /// The client sent its request again (same bytes, same port): it has seen nothing of our answer.
    /// Resend the OACK, or block 1 when there is no OACK, as an early timer expiry: only before the
    /// client's first ACK, only while the pre-ACK resend budget lasts ([`PRE_ACK_RESENDS`], shared
    /// with the timer), and only once half the current (backed-off) timeout has passed since the
    /// last send. A client (or a spoofer) repeating its request draws no more than the timer sends.
    pub fn handle_duplicate_request(&mut self, now: Instant) {
        if self.verified
            || self.pending != Pending::Nothing
            || self.first_resends >= PRE_ACK_RESENDS
            || !matches!(self.phase, Phase::AwaitOackAck | Phase::Sending)
        {
            return;
        }
        let since = self
            .in_flight
            .map_or(Duration::MAX, |f| now.saturating_duration_since(f.sent_at));
        if since < self.rtt.rto() / 2 {
            return;
        }
        self.resend_first();
    }

    /// One resend of the first response, counted against the pre-ACK budget, with backoff.
    fn resend_first(&mut self) {
        self.first_resends += 1;
        self.in_flight = None;
        self.rtt.backoff();
        self.pending = match self.phase {
            Phase::AwaitOackAck => Pending::Oack,
            _ => Pending::Window { from: 1 },
        };
    }

    /// The client has acknowledged something (it receives at its address).
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    /// Call when the instant from [`poll_timeout`](Self::poll_timeout) has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.pace_at.is_some_and(|p| now >= p) {
            // The pacer's wait is over: the next paced poll asks for the grant again.
            self.pace_at = None;
        }
        match (self.phase, self.deadline) {
            (Phase::AwaitOackAck | Phase::Sending, Some(d)) if now >= d => {}
            _ => return,
        }
        self.stats.timeouts += 1;
        if !self.verified {
            // Nobody has answered from this address: a few resends, then a quiet drop.
            if self.first_resends >= PRE_ACK_RESENDS {
                self.finish(Outcome::Unanswered);
            } else {
                self.resend_first();
            }
            return;
        }
        if now.saturating_duration_since(self.last_progress) >= self.silence_budget {
            if self.all_sent() {
                // The final ACK (or the client's last re-ACK) was lost and the client has gone.
                self.finish(Outcome::Unconfirmed);
                return;
            }
            self.close(
                Outcome::TimedOut,
                ErrorCode::NotDefined,
                "timed out waiting for ACK",
            );
            return;
        }
        let orig = self.in_flight.take();
        // The probe is one block: it does not back the timer off; a full resend does.
        if self.phase != Phase::Sending || self.probed {
            if self.probe_check.on_rto() == Verdict::Genuine {
                self.rtt.pto_factor = self.probe_check.pto_factor();
            }
            if self.phase == Phase::Sending {
                // The probe did not help: a full resend, a loss for the controller.
                self.cc_loss = true;
            }
            self.rtt.backoff();
        } else {
            self.probe_backoff = self.rtt.backoff;
            if let Some(f) = orig {
                self.probe_check.on_probe(now, self.sent_hi, f.sent_at);
            }
        }
        self.pending = match self.phase {
            Phase::AwaitOackAck => Pending::Oack,
            // First expiry since progress: probe with the last block of the window only. If the
            // client lost just that block, it completes the window; if our ACK was lost, the
            // duplicate makes the client ACK again; if it lost an earlier block, the out-of-order
            // probe makes it re-ACK the gap (RFC 7440 receivers, EDK2). A spurious expiry (a slow
            // client) then costs one block instead of a window.
            _ if !self.probed => {
                self.probed = true;
                Pending::Probe {
                    index: self.sent_hi,
                }
            }
            _ => Pending::Window {
                from: self.acked + 1,
            },
        };
    }

    /// Every block of the content was sent at least once, to a client that had acknowledged
    /// something (so it receives at its address).
    pub fn all_sent(&self) -> bool {
        self.verified && self.phase == Phase::Sending && self.sent_hi >= self.total_blocks
    }

    /// The client's port or host became unreachable (an ICMP error on the transfer's socket).
    /// When [`all_sent`](Self::all_sent), the client most likely left after its final ACK (lost,
    /// or crossed by a tail probe): the transfer ends as [`Outcome::Unconfirmed`]. Otherwise it is
    /// aborted ([`Outcome::Aborted`], with an ERROR, as [`abort`](Self::abort) does).
    pub fn peer_unreachable(&mut self, message: &'static str) {
        if matches!(self.phase, Phase::Done(_) | Phase::Closing(_)) {
            return;
        }
        if self.all_sent() {
            self.finish(Outcome::Unconfirmed);
        } else {
            self.abort(ErrorCode::NotDefined, message);
        }
    }

    /// End the transfer from the server side with an ERROR to the client (e.g. the file changed).
    pub fn abort(&mut self, code: ErrorCode, message: &'static str) {
        if !matches!(self.phase, Phase::Done(_) | Phase::Closing(_)) {
            self.close(Outcome::Aborted(code), code, message);
        }
    }

    /// Next thing to send (to the client), writing control datagrams into `buf` (at least 512
    /// bytes).
    /// Not paced: every window goes whole, at once (see [`poll_transmit_paced`](Self::poll_transmit_paced)).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let payload = self.poll_payload(now, buf, &mut |n| Grant::Send(n))?;
        Some(Transmit {
            dest: self.peer,
            payload,
        })
    }

    /// `grant(blocks)`: how many of the `blocks` DATA blocks due may go now ([`pace`]).
    fn poll_payload(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        grant: &mut dyn FnMut(u32) -> Grant,
    ) -> Option<Payload> {
        match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => None,
            Pending::Oack => {
                let len = match self.negotiated.emit_oack(buf) {
                    Ok(len) => len,
                    Err(_) => {
                        self.close(
                            Outcome::Aborted(ErrorCode::NotDefined),
                            ErrorCode::NotDefined,
                            "internal error: OACK too large",
                        );
                        return self.poll_payload(now, buf, grant);
                    }
                };
                let clean = self.stats.timeouts == 0;
                self.arm(now, 0, 0, clean);
                Some(Payload::Datagram(len))
            }
            Pending::Window { from } => {
                let end = (from + self.window - 1).min(self.total_blocks);
                self.send_run(now, from, end, from, true, grant)
            }
            Pending::Rest {
                from,
                end,
                start,
                clean,
            } => self.send_run(now, from, end, start, clean, grant),
            Pending::Probe { index } => {
                if let Grant::Wait(t) = grant(1) {
                    return self.wait(t, Pending::Probe { index });
                }
                self.pace_at = None;
                self.last_send = Some(now);
                self.stats.blocks_sent += 1;
                self.stats.blocks_resent += 1;
                self.arm(now, index, index, false);
                Some(Payload::Blocks {
                    first: index,
                    count: 1,
                })
            }
            Pending::Error { code, message } => {
                let len = emit_error(buf, code, message);
                if let Phase::Closing(o) = self.phase {
                    self.finish(o);
                }
                Some(Payload::Datagram(len))
            }
        }
    }

    fn arm(&mut self, now: Instant, start: u64, end: u64, clean: bool) {
        self.in_flight = Some(InFlight {
            sent_at: now,
            start,
            end,
            clean,
        });
        // The first expiry after progress only sends a one-block probe, so it may come early: after
        // the probe timeout (TCP's PTO, about two round trips) rather than the full RTO.
        let wait = if self.phase == Phase::Sending && !self.probed {
            self.rtt.pto()
        } else {
            self.rtt.rto()
        };
        self.deadline = Some(now + wait);
    }

    /// A round-trip sample, when the ACK of `acked` gives one (returned for the controller).
    fn take_sample(&mut self, acked: u64, now: Instant) -> Option<Duration> {
        let f = self.in_flight?;
        // Any ACK inside a window sent once measures a round trip (Karn's rule excludes resends).
        if f.clean && (f.start..=f.end).contains(&acked) {
            let r = now.saturating_duration_since(f.sent_at);
            self.rtt.sample(r);
            return Some(r);
        }
        None
    }

    fn progress(&mut self, now: Instant) {
        self.last_progress = now;
        self.probed = false;
        self.rtt.decay_backoff();
        self.in_flight = None;
    }

    fn close(&mut self, outcome: Outcome, code: ErrorCode, message: &'static str) {
        self.phase = Phase::Closing(outcome);
        self.pending = Pending::Error { code, message };
        self.deadline = None;
        self.pace_at = None;
    }

    fn finish(&mut self, outcome: Outcome) {
        self.phase = Phase::Done(outcome);
        self.pending = Pending::Nothing;
        self.deadline = None;
        self.pace_at = None;
    }
}

pub mod pace;
#[cfg(test)]
mod tests;
