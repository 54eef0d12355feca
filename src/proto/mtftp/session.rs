//! One multicast session: a file streamed once to a group, paced, driven by one master client at a
//! time (PXE MTFTP, PXE 2.1 spec; RFC 2090 `multicast` option). Sans-IO like
//! [`crate::proto::tftp::transfer`].
//!
//! Contract:
//! - The driver creates one [`Session`] per (file, group), calls [`Session::join`] for every request
//!   that belongs to it, feeds every datagram from a member to [`Session::handle_datagram`], calls
//!   [`Session::handle_timeout`] at [`Session::poll_timeout`], and after each call drains
//!   [`Session::poll_transmit`], sending each [`Transmit`] to its destination (the group, or one
//!   member), and [`Session::poll_event`] (who joined, left, became master). Every packet must leave from
//!   the same socket (address and port): RFC 2090 clients (atftp) drop data whose source differs
//!   from the OACK's.
//! - One pass through the file goes to the group, paced to `rate` bytes per second and clocked by
//!   the master's ACKs: at most `window` blocks not yet acknowledged (an ACK that moves the
//!   master's position by n frees n). Masters ACK their highest contiguous block (atftp; iPXE and
//!   EDK2 for PXE MTFTP too), so an ACK shows the master's first gap. A gap in what was sent and
//!   not on its way (older than the newest `inflight` sends) is repaired: that block alone goes to
//!   the group, before the stream goes on; the stream is never rewound, so a repair goes out once
//!   for everyone who lost it. A gap right after the last repair doubles the next run (up to
//!   `window`): a late joiner gets what it missed at the stream's pace, not a block per RTT. After
//!   the pass only repairs go out, one master's gaps after another's.
//! - Rate ([`rate`]): paced at a rate that follows the master's ACKs, per round trip: a standing
//!   queue (the round trip above the shortest by [`QUEUE_TARGET`]) steps it down by 1/16,
//!   persistent loss (in [`LOSSY_PERIODS`] of 8 round trips, or a timeout) by 1/8 (1/2), a clean
//!   round trip up by 1/16; between `min_rate` and `rate` (none: unpaced until trouble). A master
//!   that would take it below `min_rate` for [`SLOW_STRIKES`] round trips in a row is slow:
//!   [`SlowPolicy::Pace`] keeps the room at the floor; [`SlowPolicy::Unicast`] sends it an ERROR
//!   ([`LeaveReason::Slow`]; never the last member) and names the next master.
//! - Timing: the retransmission wait follows the master's RTT (RFC 6298 smoothing, at least
//!   [`MIN_RTO`], at most `timeout`; `timeout` until measured; no sample from the first ACK after
//!   a timeout). When it passes without an ACK, the master's first gap goes again and the
//!   window's credit comes back; the wait backs off 2x, 4x, at most 8x, and falls back when the
//!   master acknowledges; after `retries` such waits the master counts as vanished.
//! - RFC 2090: each joiner gets an OACK `multicast=addr,port,mc`; the first becomes master (mc=1), the
//!   others are passive (mc=0). When the master is done (ACKs the last block) or vanishes (silent for
//!   the retry budget; a newly named master is asked at a steady pace, without backoff), the next
//!   member is named master with a new OACK and ACKs its first gap; the session resumes from there.
//!   A named master that has not answered within a wait loses the role to the next member that
//!   asks (a joiner, or a member resending its request: it is alive; the silent one may be gone).
//!   A passive member that ACKs the last block is done. The session is over when no member is left.
//!   At most `max_members` members: a join past that is refused ([`JoinError::Full`]) and the
//!   driver serves the client some other way (unicast, or an ERROR).
//! - PXE MTFTP: an open (RRQ on the MTFTP port) starts a session: block 1 goes unicast to the
//!   opener (that is how a PXE client knows it is master), and when the opener acknowledges it
//!   the stream to the group starts, from block 1. Until some opener acknowledges, nothing goes
//!   to the group (listeners hear silence and open in turn) and the master is not established: a
//!   later open is answered at once the same way (block 1 unicast), and the first of these
//!   openers (at most [`MAX_CANDIDATES`], the oldest dropped) to ACK becomes the master; the
//!   others hear the stream from the group like any listener. So an opener that never ACKs (a
//!   spoofed source, a client that died) can hold the file against a real client only for the
//!   moment its block 1 is in flight. Openers within `timeout / 4` of the newest one are not
//!   answered (a classroom opening together gets one master); this also paces how fast a flood
//!   of opens can replace candidates. Nobody acknowledging: block 1 is resent to the openers
//!   [`UNCONFIRMED_RETRIES`] times, `timeout` apart (each new opener restarts that count), then
//!   the session ends. A re-open by an opener repeats its block 1 at most once per `timeout`.
//!   Once a master has acknowledged, opens are not answered ([`JoinError::Busy`]): those clients
//!   hear the stream and are remembered as listeners (at most [`MAX_LISTENERS`]); but while the
//!   master is silent (a wait passed without its ACK, so the group hears nothing) an opener is
//!   asked to be master at once (iPXE falls back to plain TFTP after four re-opens that no
//!   packet follows, and then completes with a corrupt image if it had heard the last block). When the master
//!   is done or vanished, the next listener is asked to be master (block 1 unicast, a short wait
//!   from the RTT, [`UNCONFIRMED_RETRIES`] resends): it acknowledges its first gap and the
//!   repairs go on in the same session, rather than a new pass from block 1. A listener that does
//!   not answer has most likely everything (counted in [`SessionStats::listeners_silent`], not
//!   as vanished); after [`SILENT_LISTENERS`] of them in a row the others are taken as done. When
//!   the listeners run out after silent ones, the session lingers ([`LINGER`]) with its port
//!   open: firmware still working through the stream answers late (iPXE under QEMU, 2-4 s) and
//!   re-opens, and is answered like a first opener in the same session. The
//!   master re-opening is answered again (block 1, at most once per `timeout`). The session ends
//!   when no master and no listener is left.
//! - Bounded: members (RFC 2090: `max_members`; PXE: [`MAX_CANDIDATES`]), listeners
//!   ([`MAX_LISTENERS`]), repair runs queued, control packets queued
//!   (one per member at most), events queued ([`EVENT_CAP`], the excess dropped and counted in
//!   [`SessionStats::events_dropped`]; a driver that drains after every call never loses one).
//! - Block numbers wrap past 65535 to 0 (iPXE accepts it), so large files are served, not refused.
//!   RFC 2090 carries no position, so a client can place a number only by following the stream
//!   from block 1: a file of more than 65535 blocks admits members only until its first block
//!   goes out; a later joiner is refused with [`JoinError::Late`] ([`Session::admits_joiners`])
//!   and the driver serves it by unicast (RFC 2090 lets a server ignore the option; atftp and
//!   iPXE then download as plain TFTP). PXE MTFTP: iPXE places a number in the 65536-block span
//!   of its first gap, so an iPXE listener that starts hearing a wrapping file mid-stream would
//!   misplace what it hears: for such a file an open once a master is established and the
//!   stream started is refused the same way ([`JoinError::Late`]; the driver sends an ERROR, a
//!   clean failure the client's script answers with plain TFTP or a later open). A client that
//!   listens without opening cannot be refused; one that places a number after the block
//!   received last (the [`client`](super::client) model) still gets a late start and the
//!   repairs of the beginning byte-exact.
//! - The session never reads file bytes: DATA is described by block index, like unicast transfers.

use super::Protocol;
use crate::proto::tftp::options::{BlockSize, WindowSize};
use crate::proto::tftp::packet::{emit_error, ErrorCode, OptionWriter, Packet};
use crate::proto::tftp::BlockNum;
use crate::proto::{Payload, Transmit};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Burst credit of the pacer: blocks may go out up to this much ahead of the average rate.
const BURST: Duration = Duration::from_millis(1);

/// Block sizes RFC 2090 sessions are grouped by (`--multicast-groups`): a request joins the
/// session of its file and of the largest of these not above the block size granted to it, so a
/// flood of odd block sizes cannot take a group each. See [`blksize_bucket`].
pub const BLKSIZE_BUCKETS: [u16; 6] = [512, 1024, 1428, 1456, 1468, 8192];

/// Default of [`SessionConfig::window`].
pub const WINDOW: WindowSize = match WindowSize::new(16) {
    Some(w) => w,
    None => WindowSize::ONE,
};

/// Default of [`SessionConfig::max_members`]: a lecture hall on one stream (1,000 receivers
/// complete in one session). A member costs about 150 bytes here (its entry and at most two
/// queued OACKs) and a membership in the service's tables; the cap is against a hostile segment
/// that fakes requests from many addresses, which the per-source cap alone does not stop: a
/// full pool of 256 groups holds at most 256 x 1024 members, about 40 MiB.
pub const DEFAULT_MAX_MEMBERS: usize = 1024;

/// PXE MTFTP: openers that may claim the master role at once, before one of them acknowledges.
pub const MAX_CANDIDATES: usize = 4;

/// PXE MTFTP: resends of the first window while no opener has acknowledged anything.
pub const UNCONFIRMED_RETRIES: u32 = 2;

/// Largest backoff of the window-resend timer, as a power of two of `timeout` (8x).
const MAX_BACKOFF_SHIFT: u32 = 3;

/// Smallest retransmission wait once the master's RTT is measured.
pub const MIN_RTO: Duration = Duration::from_millis(5);

/// Repair runs queued at most (more are learned again from the master's next ACK).
const REPAIR_RUNS: usize = 64;

/// Sends remembered for telling a block on its way from a lost one.
const RECENT_RUNS: usize = 1024;

/// PXE MTFTP: listeners remembered at most (opens while a master was established), to be asked
/// to be master in turn.
pub const MAX_LISTENERS: usize = 4096;

/// PXE MTFTP: how long a session whose last listeners asked were silent stays open for a late
/// ACK or re-open before it ends.
pub const LINGER: Duration = Duration::from_secs(5);

/// PXE MTFTP: listeners asked in a row without an answer before the others are taken as done.
pub const SILENT_LISTENERS: u32 = 4;

/// Events queued for [`Session::poll_event`] at most.
pub const EVENT_CAP: usize = 64;

/// The block size an RFC 2090 session uses for a request granted `granted` bytes per block: the
/// largest of [`BLKSIZE_BUCKETS`] not above it. `None` below 512: such a client is served by
/// unicast (it would otherwise need a session of its own).
pub fn blksize_bucket(granted: u16) -> Option<u16> {
    BLKSIZE_BUCKETS
        .iter()
        .rev()
        .copied()
        .find(|&b| b <= granted)
}

/// Fixed parameters of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    pub protocol: Protocol,
    /// Block size (512 for PXE MTFTP).
    pub blksize: BlockSize,
    pub content_len: u64,
    /// The group and port announced in RFC 2090 OACKs.
    pub group: SocketAddr,
    /// Blocks sent between two master ACKs.
    pub window: WindowSize,
    /// Pacing ceiling: payload bytes per second (0: none). The rate follows the master's
    /// feedback below it ([`rate`]).
    pub rate: u64,
    /// The floor of the rate ([`DEFAULT_MIN_RATE`]).
    pub min_rate: u64,
    /// What to do with a master too slow for `min_rate`.
    pub slow: SlowPolicy,
    /// Retransmission timeout for a window not acknowledged by the master (the first wait; it
    /// backs off up to 8x while the master stays silent).
    pub timeout: Duration,
    /// Resends of a window before the master counts as vanished.
    pub retries: u32,
    /// RFC 2090 OACK extras echoed to joiners that asked for them.
    pub tsize_in_oack: bool,
    /// RFC 2090: members at most (at least 1).
    pub max_members: usize,
}

impl SessionConfig {
    /// A configuration with the service's defaults for everything but what is named: window 16,
    /// unpaced, 200 ms timeout, 5 retries, no tsize, [`DEFAULT_MAX_MEMBERS`].
    pub fn new(
        protocol: Protocol,
        blksize: BlockSize,
        content_len: u64,
        group: SocketAddr,
    ) -> Self {
        SessionConfig {
            protocol,
            blksize,
            content_len,
            group,
            window: WINDOW,
            rate: 0,
            min_rate: DEFAULT_MIN_RATE,
            slow: SlowPolicy::Pace,
            timeout: Duration::from_millis(200),
            retries: 5,
            tsize_in_oack: false,
            max_members: DEFAULT_MAX_MEMBERS,
        }
    }
}

/// Why a member left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaveReason {
    /// It has every block (ACKed the last one).
    Done,
    /// Silent past the retry budget while master (or the session ended around it).
    Vanished,
    /// It sent an ERROR.
    Aborted,
    /// PXE MTFTP: another opener acknowledged first, or a newer opener took its place among the
    /// candidates. It hears the stream from the group like any listener.
    Superseded,
    /// Too slow for the floor rate under [`SlowPolicy::Unicast`]: it was sent an ERROR.
    Slow,
}

/// What happened to the members, for the driver's bookkeeping and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// A new member (RFC 2090 joiner, or PXE opener).
    Joined(SocketAddr),
    /// This member is master now (RFC 2090: named; PXE: acknowledged first).
    Master(SocketAddr),
    /// A member left the session.
    Left {
        addr: SocketAddr,
        reason: LeaveReason,
    },
}

/// Session counters, for logs and for checking that the file went out about once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub members_joined: u32,
    pub members_done: u32,
    pub members_vanished: u32,
    pub master_changes: u32,
    /// DATA blocks sent to the group (unicast copies of block 1 not included).
    pub blocks_sent: u64,
    /// Payload bytes sent to the group.
    pub bytes_sent: u64,
    /// Of the blocks sent, those sent again.
    pub blocks_resent: u64,
    pub timeouts: u32,
    /// PXE MTFTP: listeners asked to be master (block 1 unicast) after the first master.
    pub listeners_asked: u32,
    /// Of those, the ones that did not answer (done already, most likely: not counted as
    /// vanished).
    pub listeners_silent: u32,
    /// Masters sent away as too slow ([`SlowPolicy::Unicast`]).
    pub members_slow: u32,
    /// Joins refused because the session was full.
    pub joins_refused: u32,
    /// RFC 2090 joins refused because the file's block numbers wrap and the stream had started
    /// ([`JoinError::Late`]).
    pub joins_late: u32,
    /// Events not queued because the driver did not drain [`Session::poll_event`].
    pub events_dropped: u32,
    /// ACKs taken from members (a session whose members never acknowledged served nobody).
    pub acks: u64,
}

/// How [`Session::join`] took a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joined {
    /// A new member.
    New,
    /// Already a member (a resent request): answered again, nothing else changes.
    Again,
}

/// Why [`Session::join`] refused a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// PXE MTFTP: a master is established (or another opener was answered less than
    /// `timeout / 4` ago); the client will listen and re-open after it.
    #[error("a master is established or another opener was just answered")]
    Busy,
    /// The session is over; start a new one.
    #[error("the session is over")]
    Over,
    /// RFC 2090: `max_members` reached.
    #[error("the session is full")]
    Full,
    /// RFC 2090: the file has more than 65535 blocks and the stream has started: a joiner could
    /// not tell which wrap a block number is in (the protocol carries no position). Serve it by
    /// unicast (RFC 2090 lets a server ignore the option).
    #[error("the session's block numbers wrap and its stream has started")]
    Late,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// RFC 2090 OACK to a member, naming it master or not.
    Oack { to: SocketAddr, master: bool },
    /// RFC 2090: queue the passive OACK to `to` again (sent twice, the copy after the others).
    OackAgain { to: SocketAddr },
    /// PXE MTFTP: block 1 unicast to an opener.
    FirstBlock { to: SocketAddr },
    /// ERROR to a master sent away as too slow.
    Slow { to: SocketAddr },
}

impl Pending {
    fn to(&self) -> SocketAddr {
        match *self {
            Pending::Oack { to, .. }
            | Pending::OackAgain { to }
            | Pending::FirstBlock { to }
            | Pending::Slow { to } => to,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Member {
    addr: SocketAddr,
    /// Has been master already (a master that leaves is not named again before the others).
    served: bool,
    /// PXE MTFTP: when block 1 last went to it unicast.
    first_sent: Option<Instant>,
}

/// A multicast session. See the module docs for the calling contract.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    blksize: u64,
    total_blocks: u64,
    /// RFC 2090: the members; PXE MTFTP: the openers that may be master (the candidates until
    /// one acknowledges, then the master alone).
    members: Vec<Member>,
    master: Option<SocketAddr>,
    /// PXE MTFTP: some opener has acknowledged; it is the master and opens are refused.
    confirmed: bool,
    /// PXE MTFTP: when the newest opener was taken.
    newest_open: Option<Instant>,
    /// Highest contiguous index the current master acknowledged.
    acked: u64,
    /// The stream: the next index of the pass through the file (past the end: the pass is done,
    /// only repairs go out).
    cursor: u64,
    /// Blocks sent that the master has not acknowledged yet (flow control: at most `window`).
    inflight: u64,
    /// Repairs to send before the stream goes on: runs `(first, count)`, at most [`REPAIR_RUNS`].
    repairs: VecDeque<(u64, u64)>,
    /// The master's last repair run: its first and last index, and its length (runs of gaps
    /// double it, up to `window`).
    repair_lo: u64,
    repair_hi: u64,
    burst: u64,
    /// The last sends `(first, count, when)`, at most [`RECENT_RUNS`]: what went less than a
    /// retransmission wait ago may still be on its way to the master.
    recent: VecDeque<(u64, u64, Instant)>,
    /// Highest index ever sent (for resend accounting).
    sent_hi: u64,
    /// RTT of the master, smoothed, and its variation (samples from [`rate`]: a fresh block to
    /// the first ACK covering it, none across a loss or a timeout).
    srtt: Option<Duration>,
    rttvar: Duration,
    /// When the master last acknowledged (or was named): it vanishes only after `retries` waits
    /// and at least `(retries + 1) x timeout` of silence, however short its RTT.
    heard_at: Instant,
    /// The master's position is not known yet: RFC 2090, awaiting its first ACK after naming it
    /// (no data until then); PXE MTFTP, a listener asked to be master.
    awaiting_master: bool,
    /// PXE MTFTP: listeners that opened while a master was established (at most
    /// [`MAX_LISTENERS`]), asked in turn to be master (block 1 unicast) so their gaps are learned.
    listeners: VecDeque<SocketAddr>,
    /// PXE MTFTP: the openers now are listeners asked to be master, not first openers.
    promoting: bool,
    /// PXE MTFTP: listeners asked in a row that did not answer.
    silent_in_a_row: u32,
    /// PXE MTFTP: the listeners ran out after silent ones; the session waits [`LINGER`].
    lingering: bool,
    /// Control packets queued (OACKs to several joiners may wait).
    pending: VecDeque<Pending>,
    events: VecDeque<SessionEvent>,
    /// Pacing: the earliest instant the next block may go.
    next_send_at: Instant,
    /// Retransmission deadline while waiting for the master.
    deadline: Option<Instant>,
    /// The current wait for the master's ACK (backs off on timeouts).
    rto: Duration,
    tries: u32,
    over: bool,
    stats: SessionStats,
    /// The rate from the master's feedback.
    ctl: RateCtl,
    /// The stream's end when the master was named: its gaps past it are its own losses.
    named_hi: u64,
    /// The uplink's share ([`pace`]): the session as one flow of its interface's controller.
    cc: pace::CcState,
}

impl Session {
    /// A session with `cfg`; a `timeout` over one hour is taken as one hour.
    pub fn new(mut cfg: SessionConfig, now: Instant) -> Self {
        cfg.timeout = cfg.timeout.min(Duration::from_secs(3600));
        let blksize = cfg.blksize.get() as u64;
        Session {
            blksize,
            total_blocks: cfg.content_len / blksize + 1,
            rto: cfg.timeout,
            cfg,
            members: Vec::new(),
            master: None,
            confirmed: false,
            newest_open: None,
            acked: 0,
            cursor: 1,
            inflight: 0,
            repairs: VecDeque::new(),
            repair_lo: 0,
            repair_hi: 0,
            burst: 1,
            recent: VecDeque::new(),
            sent_hi: 0,
            srtt: None,
            rttvar: Duration::ZERO,
            heard_at: now,
            awaiting_master: false,
            listeners: VecDeque::new(),
            promoting: false,
            silent_in_a_row: 0,
            lingering: false,
            pending: VecDeque::new(),
            events: VecDeque::new(),
            next_send_at: now,
            deadline: None,
            tries: 0,
            over: false,
            stats: SessionStats::default(),
            ctl: RateCtl::new(&cfg, now),
            named_hi: 0,
            cc: pace::CcState::default(),
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The pacing rate now, payload bytes per second (0: unpaced).
    pub fn rate(&self) -> u64 {
        self.ctl.rate()
    }

    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// Current master, if any (PXE MTFTP before an opener acknowledged: the latest opener).
    pub fn master(&self) -> Option<SocketAddr> {
        self.master
    }

    /// Members still in the session.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// The members still in the session (for a driver that ends it early, to tell them).
    pub fn member_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.members.iter().map(|m| m.addr)
    }

    /// Whether a new member (RFC 2090) or listener (PXE MTFTP, once a master is established) may
    /// join. Not once the stream of a file of more than 65535 blocks has started
    /// ([`JoinError::Late`]): block numbers carry no wrap, so only members that heard the stream
    /// from block 1 can place what they hear.
    pub fn admits_joiners(&self) -> bool {
        !self.over && (self.total_blocks <= 0xffff || self.sent_hi == 0)
    }

    /// True once every member is done or gone.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Byte range `(offset, len)` of block `index` (`1..=total_blocks()`).
    pub fn block_range(&self, index: u64) -> (u64, usize) {
        let offset = (index.max(1) - 1) * self.blksize;
        (
            offset,
            self.blksize
                .min(self.cfg.content_len.saturating_sub(offset)) as usize,
        )
    }

    /// The next event (members joining, leaving, a new master). Drain after every call.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    fn event(&mut self, e: SessionEvent) {
        if self.events.len() < EVENT_CAP {
            self.events.push_back(e);
        } else {
            self.stats.events_dropped += 1;
        }
    }

    /// Add a member (an RRQ with the multicast option, or a PXE MTFTP open).
    pub fn join(&mut self, now: Instant, addr: SocketAddr) -> Result<Joined, JoinError> {
        if self.over {
            return Err(JoinError::Over);
        }
        match self.cfg.protocol {
            Protocol::PxeMtftp => self.open(addr, now),
            Protocol::Rfc2090 => {
                if let Some(m) = self.members.iter().find(|m| m.addr == addr) {
                    if self.master != Some(addr) && self.named_master_silent() {
                        // It asks, so it is alive: master, rather than the room waiting on.
                        self.stats.master_changes += 1;
                        self.name_master(addr, now);
                        return Ok(Joined::Again);
                    }
                    // A resent RRQ: answer again with the same role (once: one OACK queued).
                    let master = self.master == Some(m.addr);
                    if !self.pending.iter().any(|p| p.to() == addr) {
                        self.pending.push_back(Pending::Oack { to: addr, master });
                    }
                    return Ok(Joined::Again);
                }
                if !self.admits_joiners() {
                    self.stats.joins_late += 1;
                    return Err(JoinError::Late);
                }
                if self.members.len() >= self.cfg.max_members.max(1) {
                    self.stats.joins_refused += 1;
                    return Err(JoinError::Full);
                }
                self.members.push(Member {
                    addr,
                    served: false,
                    first_sent: None,
                });
                self.stats.members_joined += 1;
                self.event(SessionEvent::Joined(addr));
                if self.master.is_none() {
                    self.name_master(addr, now);
                } else if self.named_master_silent() {
                    self.stats.master_changes += 1;
                    self.name_master(addr, now);
                } else {
                    // Twice: a passive member whose OACK is lost hears nothing of the pass until
                    // it asks again (seconds later): all of the file would go again for it.
                    self.pending.push_back(Pending::Oack {
                        to: addr,
                        master: false,
                    });
                    self.pending.push_back(Pending::OackAgain { to: addr });
                }
                Ok(Joined::New)
            }
        }
    }

    /// RFC 2090: the member named master has not answered its OACK within a wait (it may have
    /// left without a word, as passive members do). A member that asks now (a joiner, or one
    /// resending its request) is alive and takes the role: the room does not wait out the
    /// silent one's retry budget, nor every other silent member's after it.
    fn named_master_silent(&self) -> bool {
        self.master.is_some() && self.awaiting_master && self.tries >= 1
    }

    fn name_master(&mut self, addr: SocketAddr, now: Instant) {
        self.master = Some(addr);
        if let Some(m) = self.members.iter_mut().find(|m| m.addr == addr) {
            m.served = true;
        }
        self.event(SessionEvent::Master(addr));
        self.new_master();
        // One master at a time: an OACK still queued for the one before names nobody now.
        self.pending
            .retain(|p| p.to() != addr && !matches!(p, Pending::Oack { master: true, .. }));
        self.pending.push_back(Pending::Oack {
            to: addr,
            master: true,
        });
        self.deadline = Some(now + self.cfg.timeout);
    }

    /// Feed a datagram from `from` (a member, or a stranger) on the session socket.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if self.over {
            return;
        }
        let Some(mut idx) = self.members.iter().position(|m| m.addr == from) else {
            return;
        };
        match Packet::parse(datagram) {
            Ok(Packet::Ack { block }) => {
                let pxe = self.cfg.protocol == Protocol::PxeMtftp;
                // PXE: until an opener acknowledges, any of them may claim the master role.
                let is_master = self.master == Some(from) || (pxe && !self.confirmed);
                let Some(index) = self.ack_index(block, is_master) else {
                    return;
                };
                self.stats.acks += 1;
                if pxe && !self.confirmed {
                    // The stream to the group starts now (a first master: from block 1; a
                    // listener asked to be master: it goes on, and its gaps are repaired).
                    idx = self.confirm(from);
                    self.awaiting_master = true;
                }
                if index >= self.total_blocks {
                    self.member_done(idx, now);
                } else if !is_master {
                    // Passive members stay silent until named; ignore anything else they send.
                } else if self.awaiting_master {
                    self.start_from(index, now);
                } else {
                    self.master_ack(index, now);
                }
            }
            Ok(Packet::Error { .. }) => self.member_gone(idx, now, LeaveReason::Aborted),
            Ok(Packet::Rrq(_)) => {
                // A member asking again: handled by join() through the driver.
            }
            _ => {}
        }
    }

    /// PXE MTFTP: the opener `from` acknowledged first: it is the master; the other openers are
    /// listeners from now on. Returns its index in `members`.
    fn confirm(&mut self, from: SocketAddr) -> usize {
        self.confirmed = true;
        let promoted = std::mem::take(&mut self.promoting);
        if promoted {
            self.silent_in_a_row = 0;
        }
        let others: Vec<SocketAddr> = self
            .members
            .iter()
            .map(|m| m.addr)
            .filter(|&a| a != from)
            .collect();
        for addr in others {
            // It had block 1 unicast, so it takes itself for master and waits for repairs
            // that the stream does not send it: it is asked in turn like any listener (found
            // with two iPXE guests opening together: the one left out kept a gap to the end).
            self.remember(addr);
            self.event(SessionEvent::Left {
                addr,
                reason: LeaveReason::Superseded,
            });
        }
        self.members.retain(|m| m.addr == from);
        self.pending.retain(|p| p.to() == from);
        if self.master != Some(from) || promoted {
            self.stats.master_changes += 1;
        }
        self.master = Some(from);
        self.event(SessionEvent::Master(from));
        0
    }

    /// The absolute index an ACK names, or `None` when it names nothing usable.
    ///
    /// A passive member ACKs only the last block, to say it is done. The master ACKs its highest
    /// contiguous block (atftp: its first gap; PXE masters: the block just received), which never
    /// goes back while it is master, so it is read forward from the last one (a jump from an early
    /// gap to the end is more than half the number space on big files); a number a little behind
    /// is a late duplicate. A newly named master may be anywhere: below 65536 blocks its number
    /// says where; past that (numbers wrap) the last block is taken when it matches (the member is
    /// done), else the earliest candidate (late joiners and lossy members have early gaps).
    fn ack_index(&self, block: BlockNum, is_master: bool) -> Option<u64> {
        /// How far behind the master's last ACK a late duplicate may be.
        const BEHIND: u64 = 4096;
        let total = self.total_blocks;
        if block == BlockNum::from_index(total) && (!is_master || self.awaiting_master) {
            return Some(total);
        }
        if !is_master {
            return None;
        }
        let (from, fwd) = if self.awaiting_master {
            (0, BlockNum::ZERO.distance_to(block) as u64)
        } else {
            let fwd = BlockNum::from_index(self.acked).distance_to(block) as u64;
            if fwd > 0x1_0000 - BEHIND {
                return None;
            }
            (self.acked, fwd)
        };
        Some(from + fwd).filter(|&i| i <= total)
    }

    fn member_done(&mut self, idx: usize, now: Instant) {
        self.stats.members_done += 1;
        self.member_gone(idx, now, LeaveReason::Done);
    }

    fn member_gone(&mut self, idx: usize, now: Instant, reason: LeaveReason) {
        let m = self.members.remove(idx);
        match reason {
            LeaveReason::Done => {}
            LeaveReason::Slow => self.stats.members_slow += 1,
            _ => self.stats.members_vanished += 1,
        }
        self.pending.retain(|p| p.to() != m.addr);
        self.event(SessionEvent::Left {
            addr: m.addr,
            reason,
        });
        if self.master == Some(m.addr) {
            self.master = None;
            self.next_master(now);
        }
    }

    fn next_master(&mut self, now: Instant) {
        match self.cfg.protocol {
            Protocol::PxeMtftp => {
                // Before anyone acknowledged, another opener may still claim the role; after,
                // the next listener is asked.
                match self.members.last() {
                    Some(m) if !self.confirmed => self.master = Some(m.addr),
                    _ => self.promote(now),
                }
            }
            Protocol::Rfc2090 => {
                // Prefer members never named; else anyone left.
                let pick = self
                    .members
                    .iter()
                    .find(|m| !m.served)
                    .or(self.members.first())
                    .map(|m| m.addr);
                match pick {
                    Some(a) => {
                        self.stats.master_changes += 1;
                        self.name_master(a, now);
                    }
                    None => self.finish(),
                }
            }
        }
    }

    /// The session is over; members still in it are reported as vanished.
    fn finish(&mut self) {
        self.over = true;
        self.master = None;
        self.deadline = None;
        self.pending.clear();
        for m in std::mem::take(&mut self.members) {
            self.stats.members_vanished += 1;
            self.event(SessionEvent::Left {
                addr: m.addr,
                reason: LeaveReason::Vanished,
            });
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout): a retransmission deadline, or the
    /// pacing instant of the next block.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.over {
            return None;
        }
        let pace = self.can_send().then(|| {
            self.next_send_at
                .max(self.cc.pace_at.unwrap_or(self.next_send_at))
        });
        match (self.deadline, pace) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Next thing to send; control datagrams are written into `buf` (>= 512 bytes).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.poll_control(buf)
            .or_else(|| self.send_blocks(now, u64::MAX))
    }

    /// The next control datagram (OACK, PXE block 1, ERROR), never paced.
    fn poll_control(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if self.over {
            return None;
        }
        if let Some(p) = self.pending.pop_front() {
            return Some(match p {
                Pending::Oack { to, master } => Transmit {
                    dest: to,
                    payload: Payload::Datagram(self.write_oack(buf, master)),
                },
                Pending::OackAgain { to } => {
                    // After the others' first OACKs: the copy of a passive member's.
                    self.pending.push_back(Pending::Oack { to, master: false });
                    return self.poll_control(buf);
                }
                Pending::FirstBlock { to } => Transmit {
                    dest: to,
                    payload: Payload::Blocks { first: 1, count: 1 },
                },
                Pending::Slow { to } => Transmit {
                    dest: to,
                    payload: Payload::Datagram(emit_error(buf, ErrorCode::NotDefined, SLOW_ERROR)),
                },
            });
        }
        None
    }

    fn write_oack(&self, buf: &mut [u8], master: bool) -> usize {
        let mut mc = [0u8; 64];
        let text = format_mc(&mut mc, self.cfg.group, master);
        let Ok(mut w) = OptionWriter::oack(buf) else {
            return 0;
        };
        let mut ok = w.option("multicast", text).is_ok();
        if self.cfg.blksize != BlockSize::DEFAULT {
            ok &= w
                .option_u64("blksize", self.cfg.blksize.get() as u64)
                .is_ok();
        }
        if self.cfg.tsize_in_oack {
            ok &= w.option_u64("tsize", self.cfg.content_len).is_ok();
        }
        if ok {
            w.finish()
        } else {
            0
        }
    }
}

/// `addr,port,mc` without allocating.
fn format_mc(buf: &mut [u8; 64], group: SocketAddr, master: bool) -> &[u8] {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cur, "{},{},{}", group.ip(), group.port(), u8::from(master));
    let n = cur.position() as usize;
    &buf[..n]
}

mod pace;
mod rate;
mod stream;

use rate::RateCtl;
pub use rate::{
    SlowPolicy, DEFAULT_MIN_RATE, LOSSY_PERIODS, MIN_PERIOD, MIN_TARGET, QUEUE_TARGET, SLOW_ERROR,
    SLOW_STRIKES,
};

#[cfg(test)]
mod bottleneck_tests;
#[cfg(test)]
mod pace_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tests;
