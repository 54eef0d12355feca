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
mod tests;
