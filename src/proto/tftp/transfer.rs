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
use crate::proto::{Payload, Transmit};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Clock granularity term of RFC 6298 (`G`).
const GRANULARITY: Duration = Duration::from_millis(1);
/// Floor of the probe timeout: a probe costs one block, so it may follow a LAN's sub-millisecond
/// round trip closely.
const PTO_FLOOR: Duration = Duration::from_micros(250);
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
        }
    }

    fn rto(&self) -> Duration {
        (self.base * (1u32 << self.backoff)).min(self.max)
    }

    /// Probe timeout: two smoothed round trips, or the round trip plus four deviations when the
    /// path is jittery (a busy client or server: probing inside the jitter only draws duplicate
    /// ACKs), at least [`PTO_FLOOR`], at most the RTO.
    fn pto(&self) -> Duration {
        match self.srtt {
            Some(s) => (s * 2)
                .max(s + self.rttvar * 4)
                .max(PTO_FLOOR)
                .min(self.rto()),
            None => self.rto(),
        }
    }

    fn sample(&mut self, r: Duration) {
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
        let s = self.srtt.unwrap_or(r);
        self.base = (s + GRANULARITY.max(self.rttvar * 4)).clamp(self.min, self.max);
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
    /// The client acknowledged something: it receives at its address (not a spoofed source).
    verified: bool,
    /// Resends of the first response so far, while not `verified` (at most [`PRE_ACK_RESENDS`]).
    first_resends: u32,
    /// [`Event::Ended`] was taken by the driver.
    reported: bool,
    stats: TransferStats,
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
            verified: false,
            first_resends: 0,
            reported: false,
            stats: TransferStats::default(),
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
            ..self.stats
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called; `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done(_) => None,
            _ => self.deadline,
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
                self.take_sample(0, now);
                self.verified = true;
                self.phase = Phase::Sending;
                self.progress(now);
                self.pending = Pending::Window { from: 1 };
            }
            Phase::Sending => {
                let fwd = BlockNum::from_index(self.acked).distance_to(block) as u64;
                // fwd == 0: a duplicate ACK. Never answer it with data (RFC 1123 §4.2.3.1).
                // fwd beyond what was sent: stale or bogus, ignore.
                if fwd == 0 || fwd > self.sent_hi - self.acked {
                    return;
                }
                self.acked += fwd;
                self.verified = true;
                self.take_sample(self.acked, now);
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
            self.close(
                Outcome::TimedOut,
                ErrorCode::NotDefined,
                "timed out waiting for ACK",
            );
            return;
        }
        self.in_flight = None;
        // The probe is one block: it does not back the timer off; a full resend does.
        if self.phase != Phase::Sending || self.probed {
            self.rtt.backoff();
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

    /// End the transfer from the server side with an ERROR to the client (e.g. the file changed).
    pub fn abort(&mut self, code: ErrorCode, message: &'static str) {
        if !matches!(self.phase, Phase::Done(_) | Phase::Closing(_)) {
            self.close(Outcome::Aborted(code), code, message);
        }
    }

    /// Next thing to send (to the client), writing control datagrams into `buf` (at least 512
    /// bytes).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let payload = self.poll_payload(now, buf)?;
        Some(Transmit {
            dest: self.peer,
            payload,
        })
    }

    fn poll_payload(&mut self, now: Instant, buf: &mut [u8]) -> Option<Payload> {
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
                        return self.poll_payload(now, buf);
                    }
                };
                let clean = self.stats.timeouts == 0;
                self.arm(now, 0, 0, clean);
                Some(Payload::Datagram(len))
            }
            Pending::Window { from } => {
                let end = (from + self.window - 1).min(self.total_blocks);
                let count = end + 1 - from;
                let resent = self.sent_hi.saturating_sub(from - 1).min(count);
                self.stats.blocks_sent += count;
                self.stats.blocks_resent += resent;
                self.sent_hi = self.sent_hi.max(end);
                self.arm(now, from, end, resent == 0);
                Some(Payload::Blocks {
                    first: from,
                    count: count as u32,
                })
            }
            Pending::Probe { index } => {
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

    fn take_sample(&mut self, acked: u64, now: Instant) {
        if let Some(f) = self.in_flight {
            // Any ACK inside a window sent once measures a round trip (Karn's rule excludes resends).
            if f.clean && (f.start..=f.end).contains(&acked) {
                self.rtt.sample(now.saturating_duration_since(f.sent_at));
            }
        }
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
    }

    fn finish(&mut self, outcome: Outcome) {
        self.phase = Phase::Done(outcome);
        self.pending = Pending::Nothing;
        self.deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tftp::client::{ClientConfig, Event};
    use crate::proto::tftp::options::{negotiate, Limits, RequestOptions};
    use crate::proto::tftp::options::{BlockSize, WindowSize};
    use crate::proto::tftp::packet::{emit_ack, OptionList};
    use proptest::prelude::*;

    fn cfg(opts: &[u8], len: u64) -> TransferConfig {
        let o = RequestOptions::parse(&OptionList::new_checked(opts).unwrap());
        TransferConfig {
            peer: "10.0.0.2:2000".parse().unwrap(),
            negotiated: negotiate(&o, &Limits::default(), None, len),
            content_len: len,
            max_timeout: Duration::from_secs(3),
            min_rto: Duration::from_millis(2),
            retries: 6,
        }
    }

    fn ack(t: &mut Transfer, b: u16, now: Instant) {
        let mut buf = [0u8; 4];
        emit_ack(&mut buf, BlockNum(b));
        t.handle_datagram(now, &buf);
    }

    /// Every transmit at `now` (all to the client).
    fn drain(t: &mut Transfer, now: Instant) -> Vec<Payload> {
        let mut buf = [0u8; 512];
        let peer = t.peer();
        std::iter::from_fn(|| t.poll_transmit(now, &mut buf))
            .inspect(|x| assert_eq!(x.dest, peer))
            .map(|x| x.payload)
            .collect()
    }

    #[test]
    fn lockstep_rfc1350_with_final_empty_block() {
        let now = crate::sim_origin();
        let mut t = Transfer::new(cfg(b"", 1024), now);
        assert_eq!(t.total_blocks(), 3);
        assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 1, count: 1 }]);
        ack(&mut t, 1, now);
        assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 2, count: 1 }]);
        ack(&mut t, 2, now);
        assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 3, count: 1 }]);
        assert_eq!(t.block_range(3), (1024, 0));
        ack(&mut t, 3, now);
        assert_eq!(t.outcome(), Some(Outcome::Completed));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn duplicate_ack_never_retransmits() {
        let now = crate::sim_origin();
        let mut t = Transfer::new(cfg(b"", 5000), now);
        drain(&mut t, now);
        ack(&mut t, 1, now);
        assert_eq!(drain(&mut t, now).len(), 1);
        ack(&mut t, 1, now);
        ack(&mut t, 1, now);
        assert!(drain(&mut t, now).is_empty());
        assert_eq!(t.stats().blocks_sent, 2);
    }

    #[test]
    fn oack_then_windows_and_partial_ack_resumes() {
        let now = crate::sim_origin();
        let mut t = Transfer::new(
            cfg(
                b"blksize\x001000\x00windowsize\x004\x00tsize\x000\x00",
                10_000,
            ),
            now,
        );
        let mut buf = [0u8; 512];
        let Some(Payload::Datagram(n)) = t.poll_transmit(now, &mut buf).map(|x| x.payload) else {
            panic!()
        };
        assert_eq!(
            &buf[..n],
            b"\x00\x06blksize\x001000\x00tsize\x0010000\x00windowsize\x004\x00"
        );
        ack(&mut t, 0, now);
        assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 1, count: 4 }]);
        // Block 3 lost: the client ACKs 2, the server resumes at 3 at once.
        ack(&mut t, 2, now);
        assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 3, count: 4 }]);
        assert_eq!(t.stats().blocks_resent, 2);
        ack(&mut t, 6, now);
        assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 7, count: 4 }]);
        ack(&mut t, 10, now);
        assert_eq!(
            drain(&mut t, now),
            [Payload::Blocks {
                first: 11,
                count: 1
            }]
        );
        assert_eq!(t.block_range(11), (10_000, 0));
        ack(&mut t, 11, now);
        assert_eq!(t.outcome(), Some(Outcome::Completed));
    }

    #[test]
    fn timeout_resends_from_after_last_ack_then_gives_up() {
        let t0 = crate::sim_origin();
        let mut t = Transfer::new(cfg(b"windowsize\x008\x00", 100_000), t0);
        drain(&mut t, t0); // OACK
        ack(&mut t, 0, t0 + Duration::from_millis(1));
        drain(&mut t, t0);
        ack(&mut t, 8, t0 + Duration::from_millis(2));
        drain(&mut t, t0);
        let d = t.poll_timeout().unwrap();
        // Retransmit timer adapted to the ~1 ms round trip: a few ms, not seconds.
        assert!(d - t0 < Duration::from_millis(50), "{:?}", d - t0);
        t.handle_timeout(d);
        // First expiry: a tail-loss probe (the window's last block); the next: the whole window.
        assert_eq!(
            drain(&mut t, d),
            [Payload::Blocks {
                first: 16,
                count: 1
            }]
        );
        let d = t.poll_timeout().unwrap();
        t.handle_timeout(d);
        assert_eq!(drain(&mut t, d), [Payload::Blocks { first: 9, count: 8 }]);
        let mut now = d;
        while let Some(d) = t.poll_timeout() {
            now = d;
            t.handle_timeout(now);
            drain(&mut t, now);
        }
        assert_eq!(t.outcome(), Some(Outcome::TimedOut));
        // Gave up only after retries x ceiling of silence.
        assert!(now - t0 >= Duration::from_secs(18));
    }

    #[test]
    fn duplicate_request_resends_oack_within_the_pre_ack_budget_only() {
        let t0 = crate::sim_origin();
        let mut t = Transfer::new(cfg(b"tsize\x000\x00", 10), t0);
        assert_eq!(drain(&mut t, t0).len(), 1);
        t.handle_duplicate_request(t0);
        assert!(drain(&mut t, t0).is_empty(), "just sent: nothing");
        // Half the timeout (1 s) later, a repeated request is an early timer expiry.
        let later = t0 + Duration::from_millis(500);
        t.handle_duplicate_request(later);
        assert!(matches!(drain(&mut t, later)[..], [Payload::Datagram(_)]));
        // The timer backed off (2 s): a repeat 0.5 s later is too early.
        let later = later + Duration::from_millis(500);
        t.handle_duplicate_request(later);
        assert!(drain(&mut t, later).is_empty());
        let later = later + Duration::from_millis(600);
        t.handle_duplicate_request(later);
        assert!(matches!(drain(&mut t, later)[..], [Payload::Datagram(_)]));
        // Budget spent: repeats draw nothing, and the timer drops the transfer quietly.
        for i in 0..100 {
            t.handle_duplicate_request(later + Duration::from_secs(i));
            assert!(drain(&mut t, later + Duration::from_secs(i)).is_empty());
        }
        let d = t.poll_timeout().unwrap();
        t.handle_timeout(d);
        assert!(
            drain(&mut t, d).is_empty(),
            "no ERROR to an unverified address"
        );
        assert_eq!(t.outcome(), Some(Outcome::Unanswered));
    }

    #[test]
    fn duplicate_request_after_the_first_ack_draws_nothing() {
        let t0 = crate::sim_origin();
        let mut t = Transfer::new(cfg(b"tsize\x000\x00", 10), t0);
        drain(&mut t, t0);
        ack(&mut t, 0, t0);
        assert_eq!(drain(&mut t, t0), [Payload::Blocks { first: 1, count: 1 }]);
        assert!(t.is_verified());
        t.handle_duplicate_request(t0 + Duration::from_secs(5));
        assert!(drain(&mut t, t0).is_empty());
    }

    /// A client that never answers: the first response goes out 1 + PRE_ACK_RESENDS times with
    /// backoff, then the transfer ends without an ERROR, with or without an OACK, whatever the
    /// timeout and retry settings.
    #[test]
    fn unanswered_first_response_is_bounded_and_quiet() {
        for (opts, timeout) in [
            (&b""[..], 3u64),
            (b"blksize\x001468\x00windowsize\x0064\x00tsize\x000\x00", 3),
            (b"", 1),
            (b"timeout\x00255\x00", 255),
        ] {
            let t0 = crate::sim_origin();
            let mut c = cfg(opts, 1 << 20);
            c.max_timeout = Duration::from_secs(timeout);
            c.retries = 1000;
            let mut t = Transfer::new(c, t0);
            let mut sends = drain(&mut t, t0).len();
            let mut last = t0;
            let mut gaps = Vec::new();
            while let Some(d) = t.poll_timeout() {
                t.handle_timeout(d);
                let tx = drain(&mut t, d);
                for x in &tx {
                    match x {
                        Payload::Datagram(_) => {}
                        Payload::Blocks { first, count } => assert_eq!((*first, *count), (1, 1)),
                    }
                }
                if !tx.is_empty() {
                    gaps.push(d - last);
                    last = d;
                }
                sends += tx.len();
            }
            assert_eq!(sends, 1 + PRE_ACK_RESENDS as usize, "{opts:?}");
            assert_eq!(t.outcome(), Some(Outcome::Unanswered));
            // Backoff: each wait at least as long as the one before.
            assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
            assert!(last - t0 <= Duration::from_secs(1 + 2 + 4));
        }
    }

    #[test]
    fn probe_and_client_error() {
        let now = crate::sim_origin();
        let mut t = Transfer::new(cfg(b"tsize\x000\x00", 10), now);
        drain(&mut t, now);
        t.handle_datagram(now, b"\x00\x05\x00\x00TFTP Aborted\x00");
        assert_eq!(
            t.outcome(),
            Some(Outcome::ProbeEnded(ErrorCode::NotDefined))
        );
        assert!(drain(&mut t, now).is_empty());
    }

    #[test]
    fn abort_sends_error() {
        let now = crate::sim_origin();
        let mut t = Transfer::new(cfg(b"", 10_000), now);
        drain(&mut t, now);
        t.abort(ErrorCode::NotDefined, "file changed");
        let mut buf = [0u8; 512];
        let Some(Payload::Datagram(n)) = t.poll_transmit(now, &mut buf).map(|x| x.payload) else {
            panic!()
        };
        assert_eq!(&buf[..n], b"\x00\x05\x00\x00file changed\x00");
        assert_eq!(t.outcome(), Some(Outcome::Aborted(ErrorCode::NotDefined)));
    }

    #[test]
    fn rollover_past_65535() {
        // blksize 8: 65536 full blocks + a final empty one.
        let len = 65536 * 8;
        let now = crate::sim_origin();
        let mut t = Transfer::new(cfg(b"blksize\x008\x00windowsize\x0064\x00", len), now);
        drain(&mut t, now);
        ack(&mut t, 0, now);
        let mut last = 0u64;
        loop {
            let tx = drain(&mut t, now);
            let [Payload::Blocks { first, count }] = tx[..] else {
                break;
            };
            assert_eq!(first, last + 1);
            last = first + count as u64 - 1;
            ack(&mut t, BlockNum::from_index(last).0, now);
        }
        assert_eq!(last, 65537);
        assert_eq!(t.outcome(), Some(Outcome::Completed));
    }

    /// Drives a transfer of unknown length the way the worker does for netascii: each run of blocks
    /// is "encoded" from a content of `len` bytes, and the first short block found is reported
    /// with `set_last_block`. Returns the indices of the blocks sent, in order.
    fn run_unknown_length(len: u64, opts: &[u8]) -> (Transfer, Vec<u64>) {
        let now = crate::sim_origin();
        let mut c = cfg(opts, 0);
        c.content_len = LENGTH_UNKNOWN;
        let mut t = Transfer::new(c, now);
        let blksize = t.negotiated().blksize.bytes() as u64;
        let mut sent = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..1_000_000 {
            let Some(Transmit { payload: tx, .. }) = t.poll_transmit(now, &mut buf) else {
                break;
            };
            match tx {
                Payload::Datagram(_) => ack(&mut t, 0, now),
                Payload::Blocks { first, count } => {
                    let mut last = first + count as u64 - 1;
                    for i in first..=last {
                        let block_len = len.saturating_sub((i - 1) * blksize).min(blksize);
                        if block_len < blksize {
                            t.set_last_block(i, len);
                            last = i;
                            break;
                        }
                    }
                    sent.extend(first..=last);
                    ack(&mut t, BlockNum::from_index(last).0, now);
                }
            }
        }
        (t, sent)
    }

    #[test]
    fn unknown_length_learns_its_last_block() {
        // 20 bytes in blocks of 8, window 4: blocks 1-3 go out, the run's 4th is never sent.
        let (t, sent) = run_unknown_length(20, b"blksize\x008\x00windowsize\x004\x00");
        assert_eq!(sent, [1, 2, 3]);
        assert_eq!(t.outcome(), Some(Outcome::Completed));
        assert_eq!(t.total_blocks(), 3);
        assert_eq!(t.stats().blocks_sent, 3);
        assert_eq!(t.stats().blocks_resent, 0);
        assert_eq!(t.stats().bytes_acked, 20);
        // An exact multiple of blksize ends with an empty block, found in the next run.
        let (t, sent) = run_unknown_length(16, b"blksize\x008\x00windowsize\x002\x00");
        assert_eq!(sent, [1, 2, 3]);
        assert_eq!(t.outcome(), Some(Outcome::Completed));
        assert_eq!(t.stats().bytes_acked, 16);
        // The empty file: one empty block, lockstep, no OACK.
        let (t, sent) = run_unknown_length(0, b"");
        assert_eq!(sent, [1]);
        assert_eq!(t.outcome(), Some(Outcome::Completed));
        assert_eq!(t.stats().bytes_acked, 0);
    }

    #[test]
    fn unknown_length_rolls_over_past_65535() {
        let len = 65536 * 8 + 3;
        let (t, sent) = run_unknown_length(len, b"blksize\x008\x00windowsize\x0064\x00");
        assert_eq!(sent.len(), 65537);
        assert_eq!(sent.last(), Some(&65537));
        assert_eq!(t.outcome(), Some(Outcome::Completed));
        assert_eq!(t.stats().bytes_acked, len);
    }

    #[test]
    fn last_block_is_resent_alone_after_a_timeout() {
        let t0 = crate::sim_origin();
        let mut c = cfg(b"blksize\x008\x00windowsize\x008\x00", 0);
        c.content_len = LENGTH_UNKNOWN;
        let mut t = Transfer::new(c, t0);
        drain(&mut t, t0); // OACK
        ack(&mut t, 0, t0);
        assert_eq!(drain(&mut t, t0), [Payload::Blocks { first: 1, count: 8 }]);
        // The encoder ends at block 5 (36 bytes); a wrong length is ignored.
        t.set_last_block(5, 100);
        assert_eq!(t.total_blocks(), LENGTH_UNKNOWN);
        t.set_last_block(5, 36);
        assert_eq!(t.total_blocks(), 5);
        assert_eq!(t.stats().blocks_sent, 5);
        // Once known, the length is fixed.
        t.set_last_block(4, 30);
        assert_eq!(t.total_blocks(), 5);
        ack(&mut t, 3, t0);
        assert_eq!(drain(&mut t, t0), [Payload::Blocks { first: 4, count: 2 }]);
        let d = t.poll_timeout().unwrap();
        t.handle_timeout(d);
        assert_eq!(drain(&mut t, d), [Payload::Blocks { first: 5, count: 1 }]);
        ack(&mut t, 5, d);
        assert_eq!(t.outcome(), Some(Outcome::Completed));
    }

    /// The server (an endpoint and its transfers) and a firmware-like client over a seeded lossy
    /// link on virtual time, with loss, duplication and reordering in both directions. The
    /// client must always end with the exact content; the request goes through the endpoint, so
    /// negotiation is the server's own.
    fn simulate(seed: u64, len: u64, ccfg: ClientConfig, loss: f64, dup: f64, reorder: f64) {
        use crate::proto::sim::{addr, Link, Node, Ran, Sim, TftpClient, TftpServer};
        use crate::proto::tftp::admit::{Admission, AdmissionConfig};
        use crate::proto::tftp::endpoint::{Endpoint, EndpointConfig};
        let content: Vec<u8> = (0..len).map(|i| (i * 31 + i / 7) as u8).collect();
        let t0 = crate::sim_origin();
        let limits = Limits {
            retries: 40,
            ..Limits::default()
        };
        let cfg = EndpointConfig {
            limits,
            min_rto: Duration::from_millis(2),
            share: 4,
        };
        let adm = Admission::new(AdmissionConfig {
            max_transfers: 4,
            max_per_client: 4,
            client_rate: 0,
        });
        let mut server = TftpServer::new(Endpoint::new(cfg, adm), addr(1, 69));
        server.add_file(b"f", content.clone());
        let mut client = TftpClient::one(addr(2, 2000), server.addr, b"f", ccfg, t0);
        let mut net = Sim::new(t0, seed, Link::lan(loss, dup, reorder));
        let ran = net.run(
            &mut [&mut server, &mut client as &mut dyn Node],
            t0 + Duration::from_secs(86_400),
        );
        assert_eq!(ran, Ran::Quiet);
        assert!(
            client.is_done(),
            "client did not finish: {:?}",
            client.events
        );
        assert_eq!(
            client.last_event(),
            Some(&Event::Finished),
            "{:?}",
            client.events
        );
        assert_eq!(client.received.len() as u64, len);
        assert!(client.received == content, "content differs");
        // The transfer that served the file completed, or timed out when the client's last ACK
        // was lost and the client left; any before it was dropped unanswered (the client never
        // heard its first reply, and asked again).
        let (last, before) = server.ended.split_last().expect("a transfer");
        assert!(
            matches!(last.outcome, Some(Outcome::Completed | Outcome::TimedOut)),
            "{last:?}"
        );
        assert!(
            before
                .iter()
                .all(|e| e.outcome == Some(Outcome::Unanswered)),
            "{before:?}"
        );
        assert_eq!(server.live(), 0);
        assert_eq!(
            server.endpoint.held(),
            0,
            "every place under the caps given back"
        );
    }

    fn client_cfg(blksize: Option<u16>, window: Option<u16>) -> ClientConfig {
        // As patient as firmware (EDK2: 4 s x 6), in finer steps.
        ClientConfig {
            blksize: blksize.and_then(BlockSize::new),
            windowsize: window.and_then(WindowSize::new),
            tsize: true,
            retransmit: Duration::from_millis(200),
            retries: 120,
            ..ClientConfig::default()
        }
    }

    #[test]
    fn sim_clean_windowed() {
        simulate(1, 100_000, client_cfg(Some(1468), Some(16)), 0.0, 0.0, 0.0);
    }

    #[test]
    fn sim_rollover_under_loss() {
        // 70,000 blocks of 8 bytes: past the 65535 wrap, with 5% loss, duplication and reordering.
        let mut c = client_cfg(Some(8), Some(16));
        c.tsize = false;
        simulate(7, 70_000 * 8 + 3, c, 0.05, 0.02, 0.02);
    }

    #[test]
    fn sim_heavy_loss_lockstep() {
        let mut c = client_cfg(None, None);
        c.tsize = false;
        simulate(11, 30_000, c, 0.3, 0.05, 0.05);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn sim_lossy_link_delivers_exact_file(
            seed in any::<u64>(),
            len in 0u64..40_000,
            bs_i in 0usize..4,
            win_i in 0usize..4,
            loss in 0u32..150,
            dup in 0u32..100,
            reorder in 0u32..100,
        ) {
            let bs = [None, Some(8u16), Some(512), Some(1468)][bs_i];
            let win = [None, Some(1u16), Some(4), Some(16)][win_i];
            let (loss, dup, reorder) = (loss as f64 / 1000.0, dup as f64 / 1000.0, reorder as f64 / 1000.0);
            simulate(seed, len, client_cfg(bs, win), loss, dup, reorder);
        }
    }
}
