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
//! - Blocks go to the group in windows of `window` blocks between master ACKs, paced to `rate`
//!   bytes per second (multicast has no per-client flow control). The window ends when the master
//!   acknowledges its last block; a timeout resends from the block after the master's last ACK.
//!   The wait for the master's ACK backs off: `timeout`, then 2x, 4x, at most 8x, and falls back
//!   to `timeout` when the master makes progress; after `retries` resends without an ACK the
//!   master counts as vanished.
//! - RFC 2090: each joiner gets an OACK `multicast=addr,port,mc`; the first becomes master (mc=1), the
//!   others are passive (mc=0). When the master is done (ACKs the last block) or vanishes (silent for
//!   the retry budget; a newly named master is asked at a steady pace, without backoff), the next
//!   member is named master with a new OACK and ACKs its first gap; the session resumes from there.
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
//!   hear the stream, fall back to listening and re-open after it ends (PXE spec; iPXE falls
//!   back to plain TFTP after 3 opens without an answer). The session ends with its master.
//! - Bounded: members (RFC 2090: `max_members`; PXE: [`MAX_CANDIDATES`]), control packets queued
//!   (one per member at most), events queued ([`EVENT_CAP`], the excess dropped and counted in
//!   [`SessionStats::events_dropped`]; a driver that drains after every call never loses one).
//! - Block numbers wrap past 65535 to 0 (iPXE accepts it), so large files are served, not refused.
//! - The session never reads file bytes: DATA is described by block index, like unicast transfers.

use super::Protocol;
use crate::proto::tftp::options::{BlockSize, WindowSize};
use crate::proto::tftp::packet::{OptionWriter, Packet};
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

/// Default of [`SessionConfig::max_members`].
pub const DEFAULT_MAX_MEMBERS: usize = 256;

/// PXE MTFTP: openers that may claim the master role at once, before one of them acknowledges.
pub const MAX_CANDIDATES: usize = 4;

/// PXE MTFTP: resends of the first window while no opener has acknowledged anything.
pub const UNCONFIRMED_RETRIES: u32 = 2;

/// Largest backoff of the window-resend timer, as a power of two of `timeout` (8x).
const MAX_BACKOFF_SHIFT: u32 = 3;

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
    /// Pacing: payload bytes per second (0: unpaced).
    pub rate: u64,
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
    /// Joins refused because the session was full.
    pub joins_refused: u32,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// RFC 2090 OACK to a member, naming it master or not.
    Oack { to: SocketAddr, master: bool },
    /// PXE MTFTP: block 1 unicast to an opener.
    FirstBlock { to: SocketAddr },
}

impl Pending {
    fn to(&self) -> SocketAddr {
        match *self {
            Pending::Oack { to, .. } | Pending::FirstBlock { to } => to,
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
    /// Next index to send in the current window, and the window's last index.
    next: u64,
    window_end: u64,
    /// Highest index ever sent (for resend accounting).
    sent_hi: u64,
    /// Awaiting the master's first ACK after naming it (RFC 2090) — no data until then.
    awaiting_master: bool,
    /// Control packets queued (OACKs to several joiners may wait).
    pending: VecDeque<Pending>,
    events: VecDeque<SessionEvent>,
    /// Pacing: the earliest instant the next block may go.
    next_send_at: Instant,
    /// Retransmission deadline while waiting for the master.
    deadline: Option<Instant>,
    /// The current wait for the master's ACK of a window (backs off on timeouts).
    rto: Duration,
    /// The master ACK already answered by an immediate resend (RFC 2090 repeated ACK).
    fast_resent: Option<u64>,
    tries: u32,
    over: bool,
    stats: SessionStats,
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
            next: 1,
            window_end: 0,
            sent_hi: 0,
            awaiting_master: false,
            pending: VecDeque::new(),
            events: VecDeque::new(),
            next_send_at: now,
            deadline: None,
            fast_resent: None,
            tries: 0,
            over: false,
            stats: SessionStats::default(),
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
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
                    // A resent RRQ: answer again with the same role (once: one OACK queued).
                    let master = self.master == Some(m.addr);
                    if !self.pending.iter().any(|p| p.to() == addr) {
                        self.pending.push_back(Pending::Oack { to: addr, master });
                    }
                    return Ok(Joined::Again);
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
                } else {
                    self.pending.push_back(Pending::Oack {
                        to: addr,
                        master: false,
                    });
                }
                Ok(Joined::New)
            }
        }
    }

    /// PXE MTFTP open. See the module docs.
    fn open(&mut self, addr: SocketAddr, now: Instant) -> Result<Joined, JoinError> {
        if self.confirmed {
            return Err(JoinError::Busy);
        }
        if let Some(i) = self.members.iter().position(|m| m.addr == addr) {
            // A re-open by a candidate: its block 1 may be lost. Once per timeout at most.
            let due = self.members[i]
                .first_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.timeout);
            if due && !self.pending.contains(&Pending::FirstBlock { to: addr }) {
                self.members[i].first_sent = Some(now);
                self.pending.push_back(Pending::FirstBlock { to: addr });
            }
            return Ok(Joined::Again);
        }
        // The newest opener gets `timeout / 4` to acknowledge its block 1 before another may try:
        // openers arriving together (a classroom powered on at once) get one master, not several.
        if self
            .newest_open
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.timeout / 4)
        {
            return Err(JoinError::Busy);
        }
        self.newest_open = Some(now);
        if self.members.len() >= MAX_CANDIDATES {
            let old = self.members.remove(0);
            self.pending.retain(|p| p.to() != old.addr);
            self.event(SessionEvent::Left {
                addr: old.addr,
                reason: LeaveReason::Superseded,
            });
        }
        self.members.push(Member {
            addr,
            served: true,
            first_sent: Some(now),
        });
        self.stats.members_joined += 1;
        self.event(SessionEvent::Joined(addr));
        self.master = Some(addr);
        // Each new opener gets the whole (short) unconfirmed budget to acknowledge.
        self.tries = 0;
        self.deadline = Some(now + self.cfg.timeout);
        self.pending.push_back(Pending::FirstBlock { to: addr });
        Ok(Joined::New)
    }

    fn name_master(&mut self, addr: SocketAddr, now: Instant) {
        self.master = Some(addr);
        if let Some(m) = self.members.iter_mut().find(|m| m.addr == addr) {
            m.served = true;
        }
        self.event(SessionEvent::Master(addr));
        self.awaiting_master = true;
        self.window_end = 0;
        self.tries = 0;
        self.pending.retain(|p| p.to() != addr);
        self.pending.push_back(Pending::Oack {
            to: addr,
            master: true,
        });
        self.deadline = Some(now + self.cfg.timeout);
    }

    /// Resume sending after index `acked` with a fresh window.
    fn start_from(&mut self, acked: u64, now: Instant) {
        self.acked = acked;
        self.next = acked + 1;
        self.window_end = (acked + self.cfg.window.get() as u64).min(self.total_blocks);
        self.awaiting_master = false;
        self.tries = 0;
        self.rto = self.cfg.timeout;
        // No deadline while the window goes out (paced); poll_transmit arms it after the last block.
        let _ = now;
        self.deadline = None;
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
                    // The stream to the group starts now, from block 1.
                    idx = self.confirm(from);
                    self.start_from(0, now);
                }
                if index >= self.total_blocks {
                    self.member_done(idx, now);
                } else if !is_master {
                    // Passive members stay silent until named; ignore anything else they send.
                } else if self.awaiting_master || index >= self.window_end {
                    self.start_from(index, now);
                } else if index > self.acked {
                    // Progress inside the window (PXE masters ACK every block): keep going.
                    self.acked = index;
                    self.tries = 0;
                    self.rto = self.cfg.timeout;
                } else if index == self.acked
                    && self.cfg.protocol == Protocol::Rfc2090
                    && self.next > self.window_end
                    && self.fast_resent != Some(index)
                {
                    // The RFC 2090 master ACKs its first gap after every block: the same ACK
                    // again once the window is out means it heard a later block but not
                    // `acked + 1`. Resend from there now rather than after a timeout (once per
                    // gap: the other repeats are already in flight).
                    self.fast_resent = Some(index);
                    self.rewind();
                    self.deadline = None;
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
        let others: Vec<SocketAddr> = self
            .members
            .iter()
            .map(|m| m.addr)
            .filter(|&a| a != from)
            .collect();
        for addr in others {
            self.event(SessionEvent::Left {
                addr,
                reason: LeaveReason::Superseded,
            });
        }
        self.members.retain(|m| m.addr == from);
        self.pending.retain(|p| p.to() == from);
        if self.master != Some(from) {
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
        if reason != LeaveReason::Done {
            self.stats.members_vanished += 1;
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
                // Before anyone acknowledged, another opener may still claim the role.
                match self.members.last() {
                    Some(m) if !self.confirmed => self.master = Some(m.addr),
                    _ => self.finish(),
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
        let pace = (!self.awaiting_master && self.master.is_some() && self.next <= self.window_end)
            .then_some(self.next_send_at);
        match (self.deadline, pace) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(d) = self.deadline else { return };
        if now < d || self.over {
            return;
        }
        self.stats.timeouts += 1;
        self.tries += 1;
        let unconfirmed = self.cfg.protocol == Protocol::PxeMtftp && !self.confirmed;
        let budget = if unconfirmed {
            self.cfg.retries.min(UNCONFIRMED_RETRIES)
        } else {
            self.cfg.retries
        };
        if self.tries > budget {
            if unconfirmed {
                // No opener ever acknowledged: they all go (spoofed, or gone); the session ends.
                self.finish();
            } else if let Some(idx) = self
                .master
                .and_then(|a| self.members.iter().position(|m| m.addr == a))
            {
                // The master vanished.
                self.member_gone(idx, now, LeaveReason::Vanished);
            } else {
                self.finish();
            }
            return;
        }
        if self.awaiting_master {
            if let Some(m) = self.master {
                if !self.pending.iter().any(|p| p.to() == m) {
                    self.pending.push_back(Pending::Oack {
                        to: m,
                        master: true,
                    });
                }
            }
            // A named master that never answered may be long gone (passive members leave
            // without a word): every member waits while it is asked, so ask at a steady pace,
            // not backing off.
            self.deadline = Some(now + self.cfg.timeout);
            return;
        }
        if unconfirmed {
            // Every opener may have lost its unicast block 1 (or its ACK): once more each, at a
            // steady pace; still nothing to the group.
            for i in 0..self.members.len() {
                let to = self.members[i].addr;
                self.members[i].first_sent = Some(now);
                if !self.pending.contains(&Pending::FirstBlock { to }) {
                    self.pending.push_back(Pending::FirstBlock { to });
                }
            }
            self.deadline = Some(now + self.cfg.timeout);
            return;
        }
        self.rewind();
        self.rto = self.cfg.timeout * (1 << self.tries.min(MAX_BACKOFF_SHIFT));
        // Until the resent window is out; poll_transmit re-arms it (with `rto`) after its last
        // block.
        self.deadline = Some(now + self.rto);
    }

    /// Resend a window from the block after the master's last ACK.
    fn rewind(&mut self) {
        self.next = self.acked + 1;
        self.window_end = (self.acked + self.cfg.window.get() as u64).min(self.total_blocks);
        if self.cfg.protocol == Protocol::PxeMtftp && self.acked == 0 {
            // The master's ACK of block 1 (or block 1 itself) was lost: its copy again.
            if let Some(to) = self.master {
                if !self.pending.contains(&Pending::FirstBlock { to }) {
                    self.pending.push_back(Pending::FirstBlock { to });
                }
            }
        }
    }

    /// Next thing to send; control datagrams are written into `buf` (>= 512 bytes).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.over {
            return None;
        }
        if let Some(p) = self.pending.pop_front() {
            return Some(match p {
                Pending::Oack { to, master } => Transmit {
                    dest: to,
                    payload: Payload::Datagram(self.write_oack(buf, master)),
                },
                Pending::FirstBlock { to } => Transmit {
                    dest: to,
                    payload: Payload::Blocks { first: 1, count: 1 },
                },
            });
        }
        if self.awaiting_master || self.master.is_none() || self.next > self.window_end {
            return None;
        }
        if now < self.next_send_at {
            return None;
        }
        // Token bucket: as many blocks as the rate allows by `now`, with at most 1 ms of burst credit.
        let mut count = self.window_end + 1 - self.next;
        if self.cfg.rate > 0 {
            let per_block = Duration::from_secs_f64(self.blksize as f64 / self.cfg.rate as f64);
            let earliest = now.checked_sub(BURST).unwrap_or(now);
            let start = self.next_send_at.max(earliest);
            let allowed = (now.saturating_duration_since(start).as_secs_f64()
                / per_block.as_secs_f64().max(1e-9)) as u64
                + 1;
            count = count.min(allowed);
            self.next_send_at = start + per_block.mul_f64(count as f64);
        }
        let first = self.next;
        self.next += count;
        let resent = self.sent_hi.saturating_sub(first - 1).min(count);
        self.sent_hi = self.sent_hi.max(first + count - 1);
        self.stats.blocks_sent += count;
        self.stats.blocks_resent += resent;
        let (off, _) = self.block_range(first);
        let (last_off, last_len) = self.block_range(first + count - 1);
        self.stats.bytes_sent += last_off + last_len as u64 - off;
        if self.next > self.window_end {
            // The window is out: now the master has the current (backed-off) wait to
            // acknowledge it.
            self.deadline = Some(now + self.rto);
        }
        Some(Transmit {
            dest: self.cfg.group,
            payload: Payload::Blocks {
                first,
                count: count as u32,
            },
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rng::Rng;
    use crate::proto::sim;
    use crate::proto::tftp::packet::{emit_ack, Packet};

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000 + i))
    }

    fn cfg(protocol: Protocol, len: u64) -> SessionConfig {
        SessionConfig {
            protocol,
            blksize: BlockSize::new(if protocol == Protocol::PxeMtftp {
                512
            } else {
                1428
            })
            .unwrap(),
            content_len: len,
            group: "239.255.1.1:3001".parse().unwrap(),
            window: WindowSize::new(8).unwrap(),
            rate: 50_000_000,
            timeout: Duration::from_millis(50),
            retries: 4,
            tsize_in_oack: true,
            max_members: DEFAULT_MAX_MEMBERS,
        }
    }

    /// An RFC 2090 client as atftp behaves: passive until named master; the master ACKs its first
    /// gap after the OACK and after every block; a member with everything ACKs the last block (RFC).
    /// Blocks reach it through the simulated network; their payload carries their absolute index
    /// (so the fake needs no placement logic of its own), and it drops `loss` of them itself.
    struct Sim {
        at: SocketAddr,
        have: Vec<bool>,
        master: bool,
        gone: bool,
        /// Drops this share of received blocks (per mille).
        loss: u32,
        rng: Rng,
        /// ACKs (absolute indices) to send to the session.
        acks: VecDeque<u64>,
    }

    impl Sim {
        fn first_gap(&self) -> u64 {
            self.have.iter().position(|h| !h).unwrap_or(self.have.len()) as u64
        }
        fn complete(&self) -> bool {
            self.have.iter().all(|&h| h)
        }
        fn deliver_block(&mut self, index: u64) {
            let loss = self.loss as f64 / 1000.0;
            if self.gone || self.rng.chance(loss) {
                return;
            }
            self.have[(index - 1) as usize] = true;
            if self.master {
                let g = self.first_gap();
                self.acks.push_back(g);
            } else if self.complete() {
                self.acks.push_back(self.have.len() as u64);
            }
        }
    }

    const SESSION: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
        1759,
    );

    impl sim::Node for Sim {
        fn receives(&self, a: SocketAddr) -> bool {
            a == self.at || a == "239.255.1.1:3001".parse().unwrap()
        }
        fn handle_datagram(&mut self, _: Instant, _: SocketAddr, to: SocketAddr, d: &[u8]) {
            match Packet::parse(d) {
                Ok(Packet::Oack(o)) => {
                    assert_eq!(to, self.at, "OACK to the group");
                    let mc = o.get("multicast").unwrap();
                    assert!(mc.starts_with(b"239.255.1.1,3001,"));
                    if self.gone {
                        return;
                    }
                    self.master = mc.ends_with(b",1");
                    if self.master {
                        let g = self.first_gap();
                        self.acks.push_back(g);
                    }
                }
                Ok(Packet::Data { data, .. }) => {
                    let index = u64::from_be_bytes(data[..8].try_into().unwrap());
                    self.deliver_block(index);
                }
                other => panic!("{other:?}"),
            }
        }
        fn poll_transmit(
            &mut self,
            _: Instant,
            buf: &mut [u8],
        ) -> Option<(SocketAddr, SocketAddr, usize)> {
            let n = self.acks.pop_front()?;
            Some((self.at, SESSION, emit_ack(buf, BlockNum::from_index(n))))
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn handle_timeout(&mut self, _: Instant) {}
    }

    /// The session as the multicast service drives it: DATA built with the block's absolute
    /// index as payload.
    struct Server<'a> {
        s: &'a mut Session,
        events: &'a mut Vec<SessionEvent>,
        blocks: Option<sim::BlockRun>,
    }

    impl sim::Node for Server<'_> {
        fn receives(&self, a: SocketAddr) -> bool {
            a == SESSION
        }
        fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _: SocketAddr, d: &[u8]) {
            self.s.handle_datagram(now, from, d);
            self.events
                .extend(std::iter::from_fn(|| self.s.poll_event()));
        }
        fn poll_transmit(
            &mut self,
            now: Instant,
            buf: &mut [u8],
        ) -> Option<(SocketAddr, SocketAddr, usize)> {
            loop {
                if let Some(run) = self.blocks.as_mut() {
                    let index = |i: u64, out: &mut [u8]| {
                        out[..8].copy_from_slice(&i.to_be_bytes());
                        8
                    };
                    match run.emit(buf, index) {
                        Some((to, n)) => return Some((SESSION, to, n)),
                        None => self.blocks = None,
                    }
                }
                let t = self.s.poll_transmit(now, buf);
                self.events
                    .extend(std::iter::from_fn(|| self.s.poll_event()));
                let t = t?;
                if let Some((dest, n)) = t.datagram() {
                    return Some((SESSION, dest, n));
                }
                self.blocks = sim::BlockRun::of(t);
            }
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.s.poll_timeout()
        }
        fn handle_timeout(&mut self, now: Instant) {
            self.s.handle_timeout(now);
            self.events
                .extend(std::iter::from_fn(|| self.s.poll_event()));
        }
    }

    struct World {
        s: Session,
        sims: Vec<Sim>,
        net: sim::Sim,
        now: Instant,
        events: Vec<SessionEvent>,
    }

    impl World {
        /// Member `i` acknowledges block `n` (its first gap, as a master does).
        fn ack(&mut self, i: usize, n: u64) {
            self.sims[i].acks.push_back(n);
        }

        /// Run until the session is over or `until`.
        fn run(&mut self, until: Instant) {
            self.net.advance(self.now);
            let mut server = Server {
                s: &mut self.s,
                events: &mut self.events,
                blocks: None,
            };
            let mut nodes: Vec<&mut dyn sim::Node> = vec![&mut server];
            nodes.extend(self.sims.iter_mut().map(|m| m as &mut dyn sim::Node));
            self.net.run(&mut nodes, until);
            self.now = self.net.now();
        }

        /// Members that left, by reason.
        fn left(&self, reason: LeaveReason) -> usize {
            self.events
                .iter()
                .filter(|e| matches!(e, SessionEvent::Left { reason: r, .. } if *r == reason))
                .count()
        }

        fn joined(&self) -> usize {
            self.events
                .iter()
                .filter(|e| matches!(e, SessionEvent::Joined(_)))
                .count()
        }
    }

    fn world(protocol: Protocol, len: u64, members: usize, loss: u32) -> World {
        let now = crate::sim_origin();
        let s = Session::new(cfg(protocol, len), now);
        let blocks = s.total_blocks() as usize;
        World {
            s,
            sims: (0..members)
                .map(|i| Sim {
                    at: addr(i as u16),
                    have: vec![false; blocks],
                    master: false,
                    gone: false,
                    loss,
                    rng: Rng::derive(0x9e37_79b9_7f4a_7c15, i as u64),
                    acks: VecDeque::new(),
                })
                .collect(),
            net: sim::Sim::new(now, 1, sim::Link::PERFECT),
            now,
            events: vec![],
        }
    }

    #[test]
    fn rfc2090_all_members_complete_and_file_goes_out_about_once() {
        let len = 1428 * 1000 + 77;
        let mut w = world(Protocol::Rfc2090, len, 20, 0);
        for i in 0..20 {
            w.s.join(w.now, addr(i)).unwrap();
        }
        let end = w.now + Duration::from_secs(60);
        w.run(end);
        assert!(w.s.is_over());
        assert!(w.sims.iter().all(Sim::complete));
        let st = w.s.stats();
        assert_eq!(st.members_done, 20);
        assert!(
            st.bytes_sent >= len && st.bytes_sent < len + len / 10,
            "{st:?}"
        );
        // Every member that joined is reported leaving: the driver's accounting balances.
        assert_eq!((w.joined(), w.left(LeaveReason::Done)), (20, 20));
        assert_eq!(st.events_dropped, 0);
    }

    #[test]
    fn rfc2090_late_joiner_and_vanishing_master_and_loss() {
        let len = 1428 * 2000;
        let mut w = world(Protocol::Rfc2090, len, 10, 50);
        for i in 0..5 {
            w.s.join(w.now, addr(i)).unwrap();
        }
        // Half way through, five more join; the master vanishes.
        let half = w.now + Duration::from_millis(30);
        w.run(half);
        assert!(!w.s.is_over());
        let m = w.s.master().unwrap();
        w.sims[(m.port() - 40000) as usize].gone = true;
        for i in 5..10 {
            w.s.join(w.now, addr(i)).unwrap();
        }
        let end = w.now + Duration::from_secs(120);
        w.run(end);
        assert!(w.s.is_over());
        for (i, sim) in w.sims.iter().enumerate() {
            assert!(sim.gone || sim.complete(), "member {i} incomplete");
        }
        let st = w.s.stats();
        assert_eq!(st.members_done, 9);
        assert_eq!(st.members_vanished, 1);
        assert_eq!(w.joined(), 10);
        assert_eq!(
            (w.left(LeaveReason::Done), w.left(LeaveReason::Vanished)),
            (9, 1)
        );
        assert!(st.master_changes >= 9);
        // Late joiners and 5% loss cost resends, but far less than once per member.
        assert!(st.bytes_sent < 3 * len, "{st:?}");
    }

    #[test]
    fn pxe_mtftp_master_gets_block_one_unicast_and_busy_opens_are_refused() {
        let len = 512 * 300 + 5;
        let mut w = world(Protocol::PxeMtftp, len, 3, 0);
        w.s.join(w.now, addr(0)).unwrap();
        // Openers arriving together: the first is answered, the others listen.
        assert_eq!(w.s.join(w.now, addr(1)), Err(JoinError::Busy));
        let mut buf = [0u8; 600];
        assert_eq!(
            w.s.poll_transmit(w.now, &mut buf),
            Some(Transmit {
                dest: addr(0),
                payload: Payload::Blocks { first: 1, count: 1 }
            })
        );
        w.sims[0].have[0] = true;
        w.sims[0].master = true;
        let end = w.now + Duration::from_secs(30);
        w.run(end);
        assert!(w.s.is_over());
        // Listeners (not members) heard the whole stream too.
        assert!(w.sims.iter().all(Sim::complete));
        assert!(w.s.stats().bytes_sent < len + 2048);
        // Once the master has acknowledged, opens are refused: the client listens, re-opens.
        let mut s = Session::new(cfg(Protocol::PxeMtftp, len), w.now);
        s.join(w.now, addr(0)).unwrap();
        s.handle_datagram(w.now, addr(0), &ack(1));
        let later = w.now + Duration::from_secs(1);
        assert_eq!(s.join(later, addr(1)), Err(JoinError::Busy));
    }

    #[test]
    fn pxe_mtftp_rolls_over_past_65535_blocks() {
        let len = 512 * 70_000;
        let mut w = world(Protocol::PxeMtftp, len, 1, 0);
        w.s.join(w.now, addr(0)).unwrap();
        w.sims[0].master = true;
        let end = w.now + Duration::from_secs(60);
        w.run(end);
        assert!(w.s.is_over());
        assert!(w.sims[0].complete());
    }

    #[test]
    fn rfc2090_past_32768_blocks_members_that_finish_together_are_all_done() {
        // 40 000 blocks: the last block's number is more than half the sequence space away from 0
        // and from where a new master's stream resumes.
        let len = 1428 * 40_000 + 3;
        let mut w = world(Protocol::Rfc2090, len, 5, 0);
        for i in 0..5 {
            w.s.join(w.now, addr(i)).unwrap();
        }
        let end = w.now + Duration::from_secs(120);
        w.run(end);
        assert!(w.s.is_over());
        let st = w.s.stats();
        assert_eq!((st.members_done, st.members_vanished), (5, 0), "{st:?}");
        assert!(st.bytes_sent < len + len / 10, "{st:?}");
    }

    #[test]
    fn rfc2090_past_65535_blocks_late_joiners_and_loss_complete() {
        // Block numbers wrap; late joiners become masters with their first gap at the start, and
        // masters jump from an early gap to the end.
        let len = 1428 * 70_000;
        let mut w = world(Protocol::Rfc2090, len, 6, 0);
        for i in 0..3 {
            w.sims[i].loss = 20;
            w.s.join(w.now, addr(i as u16)).unwrap();
        }
        let half = w.now + Duration::from_millis(1000);
        w.run(half);
        assert!(!w.s.is_over());
        for i in 3..6 {
            w.s.join(w.now, addr(i)).unwrap();
        }
        let end = w.now + Duration::from_secs(600);
        w.run(end);
        assert!(w.s.is_over());
        for (i, sim) in w.sims.iter().enumerate() {
            assert!(sim.complete(), "member {i} incomplete");
        }
        let st = w.s.stats();
        assert_eq!((st.members_done, st.members_vanished), (6, 0), "{st:?}");
    }

    #[test]
    fn rfc2090_master_gap_is_resent_without_waiting_for_a_timeout() {
        // 5% loss everywhere: each gap of the master's shows as a repeated ACK once it hears a
        // later block, and the window is resent from there at once; timeouts stay rare.
        let len = 1428 * 3000;
        let mut w = world(Protocol::Rfc2090, len, 5, 50);
        for i in 0..5 {
            w.s.join(w.now, addr(i)).unwrap();
        }
        let t0 = w.now;
        let end = w.now + Duration::from_secs(600);
        w.run(end);
        assert!(w.s.is_over());
        assert!(w.sims.iter().all(Sim::complete));
        let st = w.s.stats();
        assert_eq!(st.members_done, 5, "{st:?}");
        // Only losses at the end of a window (nothing later to show the gap) wait for a timeout.
        assert!(st.timeouts < 50, "{st:?} in {:?}", w.now - t0);
        assert!(st.bytes_sent < 2 * len, "{st:?}");
    }

    #[test]
    fn rfc2090_members_that_left_silently_cost_little_when_named() {
        // Four of six members are gone before the first master finishes; each is named in turn
        // and must be given up on quickly, or the others would hear nothing for seconds.
        let len = 1428 * 1000;
        let mut w = world(Protocol::Rfc2090, len, 6, 0);
        for i in 0..6 {
            w.s.join(w.now, addr(i)).unwrap();
        }
        for i in 1..5 {
            w.sims[i].gone = true;
        }
        let t0 = w.now;
        w.run(t0 + Duration::from_secs(60));
        assert!(w.s.is_over());
        assert!(w.sims[0].complete() && w.sims[5].complete());
        let st = w.s.stats();
        assert_eq!((st.members_done, st.members_vanished), (2, 4), "{st:?}");
        // 4 x (1 + retries) x timeout = 1 s; with backoff it was over 9 s.
        assert!(w.now - t0 < Duration::from_millis(1500), "{:?}", w.now - t0);
    }

    #[test]
    fn pacing_respects_rate() {
        let len = 1428 * 3500; // 5 MB at 50 MB/s: about 100 ms
        let mut w = world(Protocol::Rfc2090, len, 1, 0);
        let t0 = w.now;
        w.s.join(w.now, addr(0)).unwrap();
        let end = w.now + Duration::from_secs(10);
        w.run(end);
        assert!(w.sims[0].complete());
        let took = w.now - t0;
        assert!(took >= Duration::from_millis(95), "{took:?}");
        assert!(took < Duration::from_millis(200), "{took:?}");
    }

    fn ack(n: u64) -> [u8; 4] {
        let mut b = [0u8; 4];
        emit_ack(&mut b, BlockNum::from_index(n));
        b
    }

    /// Drain every transmit at `now`; the blocks sent to the group.
    fn drain(s: &mut Session, now: Instant) -> u64 {
        let mut buf = [0u8; 600];
        let mut blocks = 0;
        while let Some(tx) = s.poll_transmit(now, &mut buf) {
            if let Transmit {
                dest,
                payload: Payload::Blocks { count, .. },
            } = tx
            {
                if dest != s.config().group {
                    continue;
                }
                blocks += count as u64;
            }
        }
        blocks
    }

    #[test]
    fn blksize_buckets_take_the_largest_standard_size_not_above_the_grant() {
        assert_eq!(blksize_bucket(511), None);
        assert_eq!(blksize_bucket(8), None);
        for b in 512..=1023 {
            assert_eq!(blksize_bucket(b), Some(512), "{b}");
        }
        assert_eq!(blksize_bucket(1024), Some(1024));
        assert_eq!(blksize_bucket(1432), Some(1428), "iPXE asks 1432");
        assert_eq!(blksize_bucket(1456), Some(1456));
        assert_eq!(blksize_bucket(1467), Some(1456));
        assert_eq!(blksize_bucket(1468), Some(1468));
        assert_eq!(blksize_bucket(8191), Some(1468));
        assert_eq!(blksize_bucket(65464), Some(8192));
        // Every possible grant lands in one of a few buckets, never above the grant.
        let mut seen = std::collections::BTreeSet::new();
        for b in 8..=65464u16 {
            if let Some(k) = blksize_bucket(b) {
                assert!(k <= b);
                seen.insert(k);
            }
        }
        assert_eq!(seen.len(), BLKSIZE_BUCKETS.len());
    }

    #[test]
    fn rfc2090_member_cap_refuses_past_max_members_and_answers_a_resent_request() {
        let now = crate::sim_origin();
        let mut c = cfg(Protocol::Rfc2090, 1428 * 10);
        c.max_members = 3;
        let mut s = Session::new(c, now);
        for i in 0..3 {
            assert_eq!(s.join(now, addr(i)), Ok(Joined::New));
        }
        assert_eq!(s.join(now, addr(3)), Err(JoinError::Full));
        assert_eq!(s.members(), 3);
        assert_eq!(s.stats().joins_refused, 1);
        // Drain the three OACKs; a member asking again gets one more, in its role.
        drain(&mut s, now);
        assert_eq!(s.join(now, addr(1)), Ok(Joined::Again));
        assert_eq!(s.join(now, addr(1)), Ok(Joined::Again));
        let mut buf = [0u8; 600];
        let Some(Transmit {
            dest,
            payload: Payload::Datagram(len),
        }) = s.poll_transmit(now, &mut buf)
        else {
            panic!("no OACK for the resent request")
        };
        assert_eq!(dest, addr(1));
        let Ok(Packet::Oack(o)) = Packet::parse(&buf[..len]) else {
            panic!()
        };
        assert!(o.get("multicast").unwrap().ends_with(b",0"));
        assert_eq!(
            s.poll_transmit(now, &mut buf),
            None,
            "one OACK per resend burst"
        );
        let ev: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(
            ev,
            [
                SessionEvent::Joined(addr(0)),
                SessionEvent::Master(addr(0)),
                SessionEvent::Joined(addr(1)),
                SessionEvent::Joined(addr(2)),
            ]
        );
    }

    #[test]
    fn window_resend_timer_backs_off_while_the_master_is_silent() {
        // The master acknowledged the OACK, got a window, and went quiet: each resend waits twice
        // as long as the one before (up to 8x), then the master counts as vanished.
        let t0 = crate::sim_origin();
        let mut c = cfg(Protocol::Rfc2090, 1428 * 100);
        c.rate = 0;
        c.retries = 5;
        let t = c.timeout;
        let mut s = Session::new(c, t0);
        s.join(t0, addr(0)).unwrap();
        drain(&mut s, t0);
        s.handle_datagram(t0, addr(0), &ack(0));
        assert_eq!(drain(&mut s, t0), 8);
        let mut waits = Vec::new();
        let mut sent_at = t0;
        while !s.is_over() {
            let at = s
                .poll_timeout()
                .expect("a deadline while the master is silent");
            waits.push(at - sent_at);
            s.handle_timeout(at);
            if !s.is_over() {
                assert_eq!(drain(&mut s, at), 8, "the window again");
            }
            sent_at = at;
            assert!(waits.len() <= 10, "{waits:?}");
        }
        assert_eq!(waits, [t, 2 * t, 4 * t, 8 * t, 8 * t, 8 * t]);
        assert_eq!(s.stats().members_vanished, 1);
    }

    #[test]
    fn backoff_falls_back_to_the_first_wait_once_the_master_makes_progress() {
        let t0 = crate::sim_origin();
        let mut c = cfg(Protocol::Rfc2090, 1428 * 100);
        c.rate = 0;
        let t = c.timeout;
        let mut s = Session::new(c, t0);
        s.join(t0, addr(0)).unwrap();
        drain(&mut s, t0);
        s.handle_datagram(t0, addr(0), &ack(0));
        drain(&mut s, t0);
        // Two silent waits: T then 2T.
        let a = s.poll_timeout().unwrap();
        assert_eq!(a - t0, t);
        s.handle_timeout(a);
        drain(&mut s, a);
        let b = s.poll_timeout().unwrap();
        assert_eq!(b - a, 2 * t);
        s.handle_timeout(b);
        drain(&mut s, b);
        // The master acknowledges the window: the next window's wait is T again.
        s.handle_datagram(b, addr(0), &ack(8));
        assert_eq!(drain(&mut s, b), 8);
        assert_eq!(s.poll_timeout().unwrap() - b, t);
    }

    #[test]
    fn pxe_opener_that_never_acknowledges_is_superseded_by_a_later_one() {
        // A spoofed open (its source never ACKs), then a real client opens: the real client is
        // answered at once (block 1 unicast), acknowledges, becomes master and gets the file.
        let len = 512 * 60 + 5;
        let mut w = world(Protocol::PxeMtftp, len, 3, 0);
        let t0 = w.now;
        w.sims[0].gone = true;
        w.s.join(t0, addr(0)).unwrap();
        let mut buf = [0u8; 600];
        assert_eq!(
            w.s.poll_transmit(t0, &mut buf),
            Some(Transmit {
                dest: addr(0),
                payload: Payload::Blocks { first: 1, count: 1 }
            })
        );
        // Well within the spoofed opener's first wait (50 ms here, 200 ms by default).
        let t1 = t0 + w.s.config().timeout / 2;
        w.now = t1;
        assert_eq!(w.s.join(t1, addr(1)), Ok(Joined::New));
        assert_eq!(
            w.s.poll_transmit(t1, &mut buf),
            Some(Transmit {
                dest: addr(1),
                payload: Payload::Blocks { first: 1, count: 1 }
            })
        );
        w.sims[1].have[0] = true;
        w.sims[1].master = true;
        let gap = w.sims[1].first_gap();
        w.ack(1, gap);
        w.run(t1 + Duration::from_secs(30));
        assert!(w.s.is_over());
        assert!(w.sims[1].complete() && w.sims[2].complete());
        assert!(w.events.contains(&SessionEvent::Left {
            addr: addr(0),
            reason: LeaveReason::Superseded
        }));
        assert!(w.events.contains(&SessionEvent::Master(addr(1))));
        assert_eq!(w.left(LeaveReason::Done), 1);
        // Bytes sent: about once, though the stream started for the spoofed opener.
        assert!(w.s.stats().bytes_sent < len + 8 * 1024, "{:?}", w.s.stats());
    }

    #[test]
    fn pxe_session_nobody_acknowledges_sends_nothing_to_the_group_and_ends_soon() {
        let t0 = crate::sim_origin();
        let mut c = cfg(Protocol::PxeMtftp, 512 * 100);
        c.retries = 5;
        let t = c.timeout;
        let mut s = Session::new(c, t0);
        s.join(t0, addr(0)).unwrap();
        let mut now = t0;
        let mut unicast = 0;
        let mut buf = [0u8; 600];
        while !s.is_over() {
            while let Some(tx) = s.poll_transmit(now, &mut buf) {
                match tx {
                    Transmit {
                        payload: Payload::Blocks { .. },
                        dest,
                    } if dest != s.config().group => unicast += 1,
                    other => panic!("{other:?} while no opener acknowledged"),
                }
            }
            let Some(at) = s.poll_timeout() else { break };
            now = now.max(at);
            s.handle_timeout(now);
        }
        assert!(s.is_over());
        let st = s.stats();
        assert_eq!(st.timeouts, 1 + UNCONFIRMED_RETRIES, "{st:?}");
        assert_eq!(st.members_vanished, 1);
        assert_eq!(unicast, 1 + UNCONFIRMED_RETRIES as usize);
        // Steady, short: the file is free for the next opener after about three waits.
        assert!(now - t0 < t * (2 + UNCONFIRMED_RETRIES), "{:?}", now - t0);
    }

    #[test]
    fn pxe_reopen_by_an_opener_repeats_block_one_at_most_once_per_timeout() {
        let t0 = crate::sim_origin();
        let c = cfg(Protocol::PxeMtftp, 512 * 100);
        let t = c.timeout;
        let mut s = Session::new(c, t0);
        s.join(t0, addr(0)).unwrap();
        drain(&mut s, t0);
        let mut unicast = 0;
        let mut buf = [0u8; 600];
        for i in 0..100u32 {
            let now = t0 + t * i / 100;
            assert_eq!(s.join(now, addr(0)), Ok(Joined::Again));
            while let Some(tx) = s.poll_transmit(now, &mut buf) {
                if matches!(
                    tx,
                    Transmit { payload: Payload::Blocks { .. }, dest } if dest != s.config().group
                ) {
                    unicast += 1;
                }
            }
        }
        assert_eq!(unicast, 0, "block 1 went out less than a timeout ago");
        assert_eq!(s.join(t0 + t, addr(0)), Ok(Joined::Again));
        assert_eq!(
            s.poll_transmit(t0 + t, &mut buf),
            Some(Transmit {
                dest: addr(0),
                payload: Payload::Blocks { first: 1, count: 1 }
            })
        );
    }

    #[test]
    fn pxe_candidates_are_bounded() {
        let t0 = crate::sim_origin();
        let c = cfg(Protocol::PxeMtftp, 512 * 100);
        let t = c.timeout;
        let mut s = Session::new(c, t0);
        for i in 0..50u16 {
            let now = t0 + t / 4 * i as u32;
            if s.is_over() {
                break;
            }
            assert_eq!(s.join(now, addr(i)), Ok(Joined::New), "opener {i}");
            assert!(s.members() <= MAX_CANDIDATES);
            drain(&mut s, now);
            s.handle_timeout(now);
            while s.poll_event().is_some() {}
        }
    }
}
