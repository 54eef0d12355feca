//! One multicast session: a file streamed once to a group, paced, driven by one master client at a
//! time (PXE MTFTP, PXE 2.1 spec; RFC 2090 `multicast` option). Sans-IO like [`super::transfer`].
//!
//! Contract:
//! - The driver creates one [`Session`] per (file, group), calls [`Session::join`] for every request
//!   that belongs to it, feeds every datagram from a member to [`Session::handle_datagram`], calls
//!   [`Session::handle_timeout`] at [`Session::poll_timeout`], and after each call drains
//!   [`Session::poll_transmit`], sending each [`McTransmit`] to its [`Dest`]: the group, or one member.
//!   Every packet must leave from the same socket (address and port): RFC 2090 clients (atftp) drop
//!   data whose source differs from the OACK's.
//! - Blocks go to the group in windows of `window` blocks between master ACKs, paced to `rate`
//!   bytes per second (multicast has no per-client flow control). The window ends when the master
//!   acknowledges its last block; a timeout resends from the block after the master's last ACK.
//! - RFC 2090: each joiner gets an OACK `multicast=addr,port,mc`; the first becomes master (mc=1), the
//!   others are passive (mc=0). When the master is done (ACKs the last block) or vanishes (silent for
//!   the retry budget), the next member is named master with a new OACK and ACKs its first gap; the
//!   session resumes from there. A passive member that ACKs the last block is done. The session is
//!   over when no member is left.
//! - PXE MTFTP: an open (RRQ on the MTFTP port) starts a session with the opener as master; block 1
//!   also goes unicast to it (that is how a PXE client knows it is master), and every block to the
//!   group. Opens while a session runs are not answered: those clients hear the stream, fall back to
//!   listening and re-open after it ends (PXE spec). The session ends with its master.
//! - Block numbers wrap past 65535 to 0 (iPXE accepts it), so large files are served, not refused.
//! - The session never reads file bytes: DATA is described by block index, like unicast transfers.

use super::block::BlockNum;
use super::packet::{OptionWriter, Packet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Burst credit of the pacer: blocks may go out up to this much ahead of the average rate.
const BURST: Duration = Duration::from_millis(1);

/// Which multicast protocol a session speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// PXE 2.1 MTFTP: no options, 512-byte blocks, master is whoever opened.
    PxeMtftp,
    /// RFC 2090 `multicast` option on ordinary RRQs.
    Rfc2090,
}

/// Fixed parameters of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    pub protocol: Protocol,
    /// Block size (512 for PXE MTFTP).
    pub blksize: u16,
    pub content_len: u64,
    /// The group and port announced in RFC 2090 OACKs.
    pub group: SocketAddr,
    /// Blocks sent between two master ACKs.
    pub window: u16,
    /// Pacing: payload bytes per second (0: unpaced).
    pub rate: u64,
    /// Retransmission timeout for a window not acknowledged by the master.
    pub timeout: Duration,
    /// Resends of a window before the master counts as vanished.
    pub retries: u32,
    /// RFC 2090 OACK extras echoed to joiners that asked for them.
    pub tsize_in_oack: bool,
}

/// Where a transmit goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Group,
    Member(SocketAddr),
}

/// One thing to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McTransmit {
    /// A control datagram (OACK or ERROR) of this many bytes is in the caller's buffer.
    Datagram { dest: Dest, len: usize },
    /// DATA blocks `first .. first + count` (absolute indices, 1-based) to `dest`.
    Blocks { dest: Dest, first: u64, count: u32 },
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
}

/// Why [`Session::join`] refused a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinError {
    /// PXE MTFTP: a session is running; the client will listen and re-open after it.
    Busy,
    /// The session is over; start a new one.
    Over,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// RFC 2090 OACK to a member, naming it master or not.
    Oack { to: SocketAddr, master: bool },
}

#[derive(Clone, Copy, Debug)]
struct Member {
    addr: SocketAddr,
    /// Has been master already (a master that leaves is not named again before the others).
    served: bool,
}

/// A multicast session. See the module docs for the calling contract.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    blksize: u64,
    total_blocks: u64,
    members: Vec<Member>,
    master: Option<SocketAddr>,
    /// Highest contiguous index the current master acknowledged.
    acked: u64,
    /// Next index to send in the current window, and the window's last index.
    next: u64,
    window_end: u64,
    /// Highest index ever sent (for resend accounting).
    sent_hi: u64,
    /// Block 1 still owes its unicast copy to a new PXE master.
    unicast_first: bool,
    /// Awaiting the master's first ACK after naming it (RFC 2090) — no data until then.
    awaiting_master: bool,
    /// Control packets queued (OACKs to several joiners may wait).
    pending: std::collections::VecDeque<Pending>,
    /// Pacing: the earliest instant the next block may go.
    next_send_at: Instant,
    /// Retransmission deadline while waiting for the master.
    deadline: Option<Instant>,
    /// The master ACK already answered by an immediate resend (RFC 2090 repeated ACK).
    fast_resent: Option<u64>,
    tries: u32,
    over: bool,
    stats: SessionStats,
}

impl Session {
    pub fn new(cfg: SessionConfig, now: Instant) -> Self {
        let blksize = cfg.blksize.max(8) as u64;
        Session {
            blksize,
            total_blocks: cfg.content_len / blksize + 1,
            cfg,
            members: Vec::new(),
            master: None,
            acked: 0,
            next: 1,
            window_end: 0,
            sent_hi: 0,
            unicast_first: false,
            awaiting_master: false,
            pending: Default::default(),
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

    /// Current master, if any.
    pub fn master(&self) -> Option<SocketAddr> {
        self.master
    }

    /// Members still in the session.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// True once every member is done or gone.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Byte range `(offset, len)` of block `index`.
    pub fn block_range(&self, index: u64) -> (u64, usize) {
        let offset = (index - 1) * self.blksize;
        (
            offset,
            self.blksize.min(self.cfg.content_len - offset) as usize,
        )
    }

    /// Add a member (an RRQ with the multicast option, or a PXE MTFTP open).
    pub fn join(&mut self, addr: SocketAddr, now: Instant) -> Result<(), JoinError> {
        if self.over {
            return Err(JoinError::Over);
        }
        match self.cfg.protocol {
            Protocol::PxeMtftp => {
                if self.master.is_some() {
                    return Err(JoinError::Busy);
                }
                self.members.push(Member { addr, served: true });
                self.stats.members_joined += 1;
                self.master = Some(addr);
                self.start_from(0, now);
                self.unicast_first = true;
                Ok(())
            }
            Protocol::Rfc2090 => {
                if let Some(m) = self.members.iter().find(|m| m.addr == addr) {
                    // A resent RRQ: answer again with the same role.
                    let master = self.master == Some(m.addr);
                    self.pending.push_back(Pending::Oack { to: addr, master });
                    return Ok(());
                }
                self.members.push(Member {
                    addr,
                    served: false,
                });
                self.stats.members_joined += 1;
                if self.master.is_none() {
                    self.name_master(addr, now);
                } else {
                    self.pending.push_back(Pending::Oack {
                        to: addr,
                        master: false,
                    });
                }
                Ok(())
            }
        }
    }

    fn name_master(&mut self, addr: SocketAddr, now: Instant) {
        self.master = Some(addr);
        if let Some(m) = self.members.iter_mut().find(|m| m.addr == addr) {
            m.served = true;
        }
        self.awaiting_master = true;
        self.window_end = 0;
        self.tries = 0;
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
        self.window_end = (acked + self.cfg.window.max(1) as u64).min(self.total_blocks);
        self.awaiting_master = false;
        self.tries = 0;
        // No deadline while the window goes out (paced); poll_transmit arms it after the last block.
        let _ = now;
        self.deadline = None;
    }

    /// Feed a datagram from `from` (a member, or a stranger) on the session socket.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        if self.over {
            return;
        }
        let Some(idx) = self.members.iter().position(|m| m.addr == from) else {
            return;
        };
        match Packet::parse(datagram) {
            Ok(Packet::Ack { block, .. }) => {
                let is_master = self.master == Some(from);
                let Some(index) = self.ack_index(block, is_master) else {
                    return;
                };
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
            Ok(Packet::Error { .. }) => self.member_gone(idx, now, false),
            Ok(Packet::Rrq(_)) => {
                // A member asking again: handled by join() through the driver.
            }
            _ => {}
        }
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
        self.member_gone(idx, now, true);
    }

    fn member_gone(&mut self, idx: usize, now: Instant, done: bool) {
        let m = self.members.remove(idx);
        if !done {
            self.stats.members_vanished += 1;
        }
        self.pending
            .retain(|Pending::Oack { to, .. }| *to != m.addr);
        if self.master == Some(m.addr) {
            self.master = None;
            self.next_master(now);
        }
    }

    fn next_master(&mut self, now: Instant) {
        match self.cfg.protocol {
            Protocol::PxeMtftp => self.finish(),
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

    fn finish(&mut self) {
        self.over = true;
        self.master = None;
        self.deadline = None;
        self.pending.clear();
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
        if self.tries > self.cfg.retries {
            // The master vanished.
            if let Some(idx) = self
                .master
                .and_then(|a| self.members.iter().position(|m| m.addr == a))
            {
                self.member_gone(idx, now, false);
            } else {
                self.finish();
            }
            return;
        }
        if self.awaiting_master {
            if let Some(m) = self.master {
                self.pending.push_back(Pending::Oack {
                    to: m,
                    master: true,
                });
            }
        } else {
            self.rewind();
        }
        // A named master that never answered may be long gone (passive members leave without a
        // word): every member waits while it is asked, so ask at a steady pace, not backing off.
        let backoff = if self.awaiting_master {
            1
        } else {
            1 << self.tries.min(4)
        };
        self.deadline = Some(now + self.cfg.timeout * backoff);
    }

    /// Resend a window from the block after the master's last ACK.
    fn rewind(&mut self) {
        self.next = self.acked + 1;
        self.window_end = (self.acked + self.cfg.window.max(1) as u64).min(self.total_blocks);
        if self.cfg.protocol == Protocol::PxeMtftp && self.acked == 0 {
            self.unicast_first = true;
        }
    }

    /// Next thing to send; control datagrams are written into `buf` (>= 512 bytes).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<McTransmit> {
        if self.over {
            return None;
        }
        if let Some(p) = self.pending.pop_front() {
            let Pending::Oack { to, master } = p;
            let len = self.write_oack(buf, master);
            return Some(McTransmit::Datagram {
                dest: Dest::Member(to),
                len,
            });
        }
        if self.awaiting_master || self.master.is_none() || self.next > self.window_end {
            return None;
        }
        if self.unicast_first && self.next == 1 {
            self.unicast_first = false;
            let m = self.master?;
            return Some(McTransmit::Blocks {
                dest: Dest::Member(m),
                first: 1,
                count: 1,
            });
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
            // The window is out: now the master has `timeout` to acknowledge it.
            self.deadline = Some(now + self.cfg.timeout);
        }
        Some(McTransmit::Blocks {
            dest: Dest::Group,
            first,
            count: count as u32,
        })
    }

    fn write_oack(&self, buf: &mut [u8], master: bool) -> usize {
        let mut mc = [0u8; 64];
        let text = format_mc(&mut mc, self.cfg.group, master);
        let Ok(mut w) = OptionWriter::oack(buf) else {
            return 0;
        };
        let mut ok = w.option("multicast", text).is_ok();
        if self.cfg.blksize != 512 {
            ok &= w.option_u64("blksize", self.cfg.blksize as u64).is_ok();
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

    /// The wire block number of index `i`.
    pub fn block_num(i: u64) -> BlockNum {
        BlockNum::from_index(i)
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
    use crate::proto::packet::{emit_ack, Packet};

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000 + i))
    }

    fn cfg(protocol: Protocol, len: u64) -> SessionConfig {
        SessionConfig {
            protocol,
            blksize: if protocol == Protocol::PxeMtftp {
                512
            } else {
                1428
            },
            content_len: len,
            group: "239.255.1.1:3001".parse().unwrap(),
            window: 8,
            rate: 50_000_000,
            timeout: Duration::from_millis(50),
            retries: 4,
            tsize_in_oack: true,
        }
    }

    /// An RFC 2090 client as atftp behaves: passive until named master; the master ACKs its first
    /// gap after the OACK and after every block; a member with everything ACKs the last block (RFC).
    struct Sim {
        have: Vec<bool>,
        master: bool,
        gone: bool,
        /// Drops this share of received blocks (per mille).
        loss: u32,
    }

    impl Sim {
        fn first_gap(&self) -> u64 {
            self.have.iter().position(|h| !h).unwrap_or(self.have.len()) as u64
        }
        fn complete(&self) -> bool {
            self.have.iter().all(|&h| h)
        }
    }

    struct World {
        s: Session,
        sims: Vec<Sim>,
        now: Instant,
        rng: u64,
        acks: Vec<(usize, u64)>,
    }

    impl World {
        fn rand(&mut self, per_mille: u32) -> bool {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % 1000) < per_mille as u64
        }

        fn deliver_block(&mut self, i: usize, index: u64) {
            let loss = self.sims[i].loss;
            if self.sims[i].gone || self.rand(loss) {
                return;
            }
            self.sims[i].have[(index - 1) as usize] = true;
            let sim = &self.sims[i];
            if sim.master {
                self.acks.push((i, sim.first_gap()));
            } else if sim.complete() {
                self.acks.push((i, sim.have.len() as u64));
            }
        }

        /// Run until the session is over or `until`.
        fn run(&mut self, until: Instant) {
            let mut buf = [0u8; 600];
            while !self.s.is_over() && self.now < until {
                while let Some(tx) = self.s.poll_transmit(self.now, &mut buf) {
                    match tx {
                        McTransmit::Datagram {
                            dest: Dest::Member(a),
                            len,
                        } => {
                            let i = (a.port() - 40000) as usize;
                            let Ok(Packet::Oack(o)) = Packet::parse(&buf[..len]) else {
                                panic!("not an OACK")
                            };
                            let mc = o.get("multicast").unwrap();
                            assert!(mc.starts_with(b"239.255.1.1,3001,"));
                            if self.sims[i].gone {
                                continue;
                            }
                            self.sims[i].master = mc.ends_with(b",1");
                            if self.sims[i].master {
                                let g = self.sims[i].first_gap();
                                self.acks.push((i, g));
                            }
                        }
                        McTransmit::Datagram { .. } => panic!("control to group"),
                        McTransmit::Blocks { dest, first, count } => {
                            for index in first..first + count as u64 {
                                match dest {
                                    Dest::Group => {
                                        for i in 0..self.sims.len() {
                                            self.deliver_block(i, index);
                                        }
                                    }
                                    Dest::Member(a) => {
                                        let i = (a.port() - 40000) as usize;
                                        self.deliver_block(i, index);
                                    }
                                }
                            }
                        }
                    }
                }
                let acks = std::mem::take(&mut self.acks);
                if !acks.is_empty() {
                    for (i, n) in acks {
                        let mut b = [0u8; 4];
                        emit_ack(&mut b, BlockNum::from_index(n));
                        self.s.handle_datagram(addr(i as u16), &b, self.now);
                    }
                    continue;
                }
                match self.s.poll_timeout() {
                    Some(t) => self.now = self.now.max(t),
                    None => break,
                }
                self.s.handle_timeout(self.now);
            }
        }
    }

    fn world(protocol: Protocol, len: u64, members: usize, loss: u32) -> World {
        let now = Instant::now();
        let s = Session::new(cfg(protocol, len), now);
        let blocks = s.total_blocks() as usize;
        World {
            s,
            sims: (0..members)
                .map(|_| Sim {
                    have: vec![false; blocks],
                    master: false,
                    gone: false,
                    loss,
                })
                .collect(),
            now,
            rng: 0x9e3779b97f4a7c15,
            acks: vec![],
        }
    }

    #[test]
    fn rfc2090_all_members_complete_and_file_goes_out_about_once() {
        let len = 1428 * 1000 + 77;
        let mut w = world(Protocol::Rfc2090, len, 20, 0);
        for i in 0..20 {
            w.s.join(addr(i), w.now).unwrap();
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
    }

    #[test]
    fn rfc2090_late_joiner_and_vanishing_master_and_loss() {
        let len = 1428 * 2000;
        let mut w = world(Protocol::Rfc2090, len, 10, 50);
        for i in 0..5 {
            w.s.join(addr(i), w.now).unwrap();
        }
        // Half way through, five more join; the master vanishes.
        let half = w.now + Duration::from_millis(30);
        w.run(half);
        assert!(!w.s.is_over());
        let m = w.s.master().unwrap();
        w.sims[(m.port() - 40000) as usize].gone = true;
        for i in 5..10 {
            w.s.join(addr(i), w.now).unwrap();
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
        assert!(st.master_changes >= 9);
        // Late joiners and 5% loss cost resends, but far less than once per member.
        assert!(st.bytes_sent < 3 * len, "{st:?}");
    }

    #[test]
    fn pxe_mtftp_master_gets_block_one_unicast_and_busy_opens_are_refused() {
        let len = 512 * 300 + 5;
        let mut w = world(Protocol::PxeMtftp, len, 3, 0);
        w.s.join(addr(0), w.now).unwrap();
        assert_eq!(w.s.join(addr(1), w.now), Err(JoinError::Busy));
        let mut buf = [0u8; 600];
        assert_eq!(
            w.s.poll_transmit(w.now, &mut buf),
            Some(McTransmit::Blocks {
                dest: Dest::Member(addr(0)),
                first: 1,
                count: 1
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
    }

    #[test]
    fn pxe_mtftp_rolls_over_past_65535_blocks() {
        let len = 512 * 70_000;
        let mut w = world(Protocol::PxeMtftp, len, 1, 0);
        w.s.join(addr(0), w.now).unwrap();
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
            w.s.join(addr(i), w.now).unwrap();
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
            w.s.join(addr(i as u16), w.now).unwrap();
        }
        let half = w.now + Duration::from_millis(1000);
        w.run(half);
        assert!(!w.s.is_over());
        for i in 3..6 {
            w.s.join(addr(i), w.now).unwrap();
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
            w.s.join(addr(i), w.now).unwrap();
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
            w.s.join(addr(i), w.now).unwrap();
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
        w.s.join(addr(0), w.now).unwrap();
        let end = w.now + Duration::from_secs(10);
        w.run(end);
        assert!(w.sims[0].complete());
        let took = w.now - t0;
        assert!(took >= Duration::from_millis(95), "{took:?}");
        assert!(took < Duration::from_millis(200), "{took:?}");
    }
}
