//! The receiving side of a multicast session (RFC 2090 and PXE MTFTP), sans-IO, behaving like the
//! clients in the field (atftp, PXE ROMs), for tests and the load tester.
//!
//! Contract:
//! - Blocks may arrive in any order, from the group or unicast; each new one is returned as
//!   [`McEvent::Data`] with its byte offset, to be written there. Block numbers wrap past 65535:
//!   once the file's length is known (RFC 2090 `tsize`, or the short last block) a file of fewer
//!   than 65536 blocks places every block exactly, even when the stream starts over; past that, a
//!   block goes to the candidate nearest after the last one received, wrapping at the end.
//! - RFC 2090 ([`McClient::rfc2090`]): send the RRQ (with `multicast` and the configured options);
//!   an OACK names the group and the role. As master (mc=1) ACK the highest contiguous block after
//!   the OACK and after every block; passive (mc=0) stay silent; once everything is here, ACK the
//!   last block (RFC 2090 §"passive clients") and finish. A server may ignore the option (RFC
//!   2090): an OACK without `multicast`, or DATA straight to our socket, makes this an ordinary
//!   lockstep unicast download ([`McClient::is_unicast`]): ACK the OACK with 0 and every block,
//!   to the address the answer came from.
//! - PXE MTFTP ([`McClient::pxe`]): listen for `listen_timeout` first; if the stream does not
//!   complete the file, open (RRQ to the MTFTP server port); a unicast block 1 makes us master: ACK
//!   every block received. After a silence of `reopen_delay` with gaps left, open again.
//! - The driver joins the group (the event [`McEvent::JoinGroup`] says where, for RFC 2090), sends
//!   every `poll_transmit` datagram to [`McClient::destination`], and calls `handle_timeout`.

use super::block::BlockNum;
use super::packet::{emit_ack, Mode, OptionWriter, Packet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Which multicast protocol the client speaks.
/// Most blocks a client tracks (its received-block bitmap is at most this many bits, 32 MiB): a
/// server-announced size or block number beyond it is refused or ignored, never allocated.
pub const MAX_BLOCKS: u64 = 1 << 28;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McProtocol {
    Rfc2090,
    PxeMtftp,
}

/// Where the next datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McDest {
    /// The server's request port (RRQ / open).
    RequestPort,
    /// The session's port, learned from the first answer.
    Session,
}

/// Client parameters.
#[derive(Clone, Debug)]
pub struct McClientConfig {
    /// RFC 2090: blksize to ask for (None: 512).
    pub blksize: Option<u16>,
    pub tsize: bool,
    /// Time without any packet before resending / re-opening.
    pub timeout: Duration,
    /// Resends (or re-opens) without progress before failing.
    pub retries: u32,
    /// PXE MTFTP: passive listening before the first open.
    pub listen_timeout: Duration,
    /// PXE MTFTP: silence after which a client with gaps re-opens.
    pub reopen_delay: Duration,
}

impl Default for McClientConfig {
    fn default() -> Self {
        McClientConfig {
            blksize: None,
            tsize: true,
            timeout: Duration::from_secs(2),
            retries: 6,
            listen_timeout: Duration::from_secs(1),
            reopen_delay: Duration::from_millis(500),
        }
    }
}

/// What a datagram meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum McEvent<'a> {
    None,
    /// RFC 2090: the OACK named the group to join (only reported once, or when it changes).
    JoinGroup(SocketAddr),
    /// A new block: write `data` at `offset`.
    Data {
        offset: u64,
        data: &'a [u8],
    },
    /// Gave up (server error or silence).
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    Nothing,
    Request,
    Ack(u64),
}

/// One multicast client.
#[derive(Debug)]
pub struct McClient {
    protocol: McProtocol,
    cfg: McClientConfig,
    filename: Vec<u8>,
    blksize: u64,
    have: Vec<u64>,
    received: u64,
    /// Index of the last block, once seen (the short one).
    last: Option<u64>,
    /// Index of the block received last (the stream's position), to place wrapped numbers.
    pos: u64,
    master: bool,
    /// RFC 2090: the server ignored the option; plain unicast TFTP.
    unicast: bool,
    opened: bool,
    group: Option<SocketAddr>,
    pending: Out,
    deadline: Option<Instant>,
    tries: u32,
    done: bool,
    failed: bool,
    /// Counters.
    pub duplicates: u64,
    pub opens: u32,
    pub master_turns: u32,
}

impl McClient {
    /// An RFC 2090 client: sends the RRQ at once.
    pub fn rfc2090(filename: &[u8], cfg: McClientConfig, now: Instant) -> Self {
        let mut c = Self::new(McProtocol::Rfc2090, filename, cfg);
        c.pending = Out::Request;
        c.opened = true;
        c.opens = 1;
        c.deadline = Some(now + c.cfg.timeout);
        c
    }

    /// A PXE MTFTP client: listens first (the driver has joined the group already).
    pub fn pxe(filename: &[u8], cfg: McClientConfig, now: Instant) -> Self {
        let mut c = Self::new(McProtocol::PxeMtftp, filename, cfg);
        c.deadline = Some(now + c.cfg.listen_timeout);
        c
    }

    fn new(protocol: McProtocol, filename: &[u8], cfg: McClientConfig) -> Self {
        let blksize = match protocol {
            McProtocol::PxeMtftp => 512,
            McProtocol::Rfc2090 => cfg.blksize.unwrap_or(512) as u64,
        };
        McClient {
            protocol,
            cfg,
            filename: filename.to_vec(),
            blksize,
            have: Vec::new(),
            received: 0,
            last: None,
            pos: 0,
            master: false,
            unicast: false,
            opened: false,
            group: None,
            pending: Out::Nothing,
            deadline: None,
            tries: 0,
            done: false,
            failed: false,
            duplicates: 0,
            opens: 0,
            master_turns: 0,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.done
    }

    pub fn is_over(&self) -> bool {
        self.done || self.failed
    }

    pub fn is_master(&self) -> bool {
        self.master
    }

    /// RFC 2090: the server answered without multicast; the file comes by plain unicast TFTP.
    pub fn is_unicast(&self) -> bool {
        self.unicast
    }

    /// Blocks received so far.
    pub fn blocks_received(&self) -> u64 {
        self.received
    }

    fn has(&self, i: u64) -> bool {
        let i = i as usize;
        self.have
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: u64) {
        let i = i as usize;
        if self.have.len() <= i / 64 {
            self.have.resize(i / 64 + 1, 0);
        }
        self.have[i / 64] |= 1 << (i % 64);
    }

    /// Highest index `n` such that blocks `1..=n` are all here.
    pub fn contiguous(&self) -> u64 {
        let mut n = 0u64;
        for (w, &bits) in self.have.iter().enumerate() {
            // Bit 0 of word 0 is index 0, which never exists: treat it as present.
            let bits = if w == 0 { bits | 1 } else { bits };
            if bits == u64::MAX {
                n = (w as u64 + 1) * 64 - 1;
                continue;
            }
            return w as u64 * 64 + (!bits).trailing_zeros() as u64 - 1;
        }
        n
    }

    fn complete(&self) -> bool {
        self.last.is_some_and(|l| self.received == l)
    }

    pub fn destination(&self) -> McDest {
        match self.pending {
            Out::Request => McDest::RequestPort,
            _ => McDest::Session,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_over() {
            None
        } else {
            self.deadline
        }
    }

    /// Build the next datagram into `buf` (>= 600 bytes). Check [`destination`](Self::destination)
    /// before calling.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        match std::mem::replace(&mut self.pending, Out::Nothing) {
            Out::Nothing => None,
            Out::Ack(n) => Some(emit_ack(buf, BlockNum::from_index(n))),
            Out::Request => {
                let mut w = OptionWriter::request(buf, false, &self.filename, Mode::Octet).ok()?;
                if self.protocol == McProtocol::Rfc2090 {
                    w.option("multicast", b"").ok()?;
                    if let Some(b) = self.cfg.blksize {
                        w.option_u64("blksize", b as u64).ok()?;
                    }
                    if self.cfg.tsize {
                        w.option("tsize", b"0").ok()?;
                    }
                }
                Some(w.finish())
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> McEvent<'static> {
        match self.poll_timeout() {
            Some(d) if now >= d => {}
            _ => return McEvent::None,
        }
        self.tries += 1;
        if self.tries > self.cfg.retries {
            self.failed = true;
            return McEvent::Failed("timed out".into());
        }
        match self.protocol {
            McProtocol::Rfc2090 => {
                // Master: ACK again. Before any answer: resend the RRQ. Passive: wait on.
                if !self.opened || (self.group.is_none() && !self.unicast) {
                    self.pending = Out::Request;
                } else if self.master {
                    self.pending = Out::Ack(self.contiguous());
                }
                self.deadline = Some(now + self.cfg.timeout);
            }
            McProtocol::PxeMtftp => {
                // Silence: (re-)open.
                self.master = false;
                self.pending = Out::Request;
                self.opens += 1;
                self.opened = true;
                self.deadline = Some(now + self.cfg.reopen_delay.max(self.cfg.timeout));
            }
        }
        McEvent::None
    }

    /// Feed a datagram. `unicast` is true when it came to our own socket rather than the group.
    pub fn handle_datagram<'a>(
        &mut self,
        datagram: &'a [u8],
        unicast: bool,
        now: Instant,
    ) -> McEvent<'a> {
        if self.is_over() {
            return McEvent::None;
        }
        match Packet::parse(datagram) {
            Ok(Packet::Oack(o)) if self.protocol == McProtocol::Rfc2090 && unicast => {
                let num =
                    |k: &str| -> Option<u64> { std::str::from_utf8(o.get(k)?).ok()?.parse().ok() };
                // The block size is fixed once a block has arrived (offsets depend on it); the
                // size is taken whenever it is still unknown (a late OACK after overheard blocks).
                if self.received == 0 {
                    // RFC 2348's range; anything else is the server's error, not a size to use.
                    if let Some(b) = num("blksize").filter(|&b| (8..=65464).contains(&b)) {
                        self.blksize = b;
                    }
                }
                if self.last.is_none() {
                    if let Some(t) = num("tsize") {
                        // The same last index the server counts: a short (maybe empty) final block.
                        let last = t / self.blksize + 1;
                        if last > MAX_BLOCKS {
                            self.failed = true;
                            return McEvent::Failed(format!(
                                "tsize {t} is more than this client tracks ({MAX_BLOCKS} blocks)"
                            ));
                        }
                        self.last = Some(last);
                    }
                }
                let Some(mc) = o.get("multicast") else {
                    if self.group.is_some() {
                        // A session already named us: a stray OACK changes nothing.
                        return McEvent::None;
                    }
                    // The server ignored the option (RFC 2090): plain unicast, ACK 0 first.
                    if !self.unicast {
                        self.unicast = true;
                        self.master = true;
                        self.master_turns += 1;
                    }
                    self.tries = 0;
                    self.deadline = Some(now + self.cfg.timeout);
                    self.pending = Out::Ack(self.contiguous());
                    return McEvent::None;
                };
                if self.unicast {
                    // Unicast already: a multicast OACK now is not ours to follow.
                    return McEvent::None;
                }
                let text = String::from_utf8_lossy(mc);
                let mut parts = text.split(',');
                let (a, p, m) = (parts.next(), parts.next(), parts.next());
                let master = m.is_some_and(|m| m.trim() == "1");
                let mut ev = McEvent::None;
                if let (Some(a), Some(p)) = (a, p) {
                    if let (Ok(ip), Ok(port)) = (a.parse(), p.parse()) {
                        let g = SocketAddr::new(ip, port);
                        if self.group != Some(g) {
                            self.group = Some(g);
                            ev = McEvent::JoinGroup(g);
                        }
                    }
                }
                if self.group.is_none() {
                    self.failed = true;
                    return McEvent::Failed("OACK without a multicast group".into());
                }
                if master && !self.master {
                    self.master_turns += 1;
                }
                self.master = master;
                self.tries = 0;
                self.deadline = Some(now + self.cfg.timeout);
                if master {
                    self.pending = Out::Ack(self.contiguous());
                }
                ev
            }
            Ok(Packet::Data { block, data }) => self.handle_data(block, data, unicast, now),
            Ok(Packet::Error { code, message }) if unicast => {
                self.failed = true;
                McEvent::Failed(format!(
                    "server error {code}: {}",
                    String::from_utf8_lossy(message)
                ))
            }
            _ => McEvent::None,
        }
    }

    /// The absolute index of a block number. With the length known and under 65536 blocks the
    /// number says it exactly (a new master may restart the stream anywhere). Past that, or with
    /// the length unknown, take the candidate nearest after the last block received, wrapping at
    /// the end of the file: a stream moves forward, and a restart is most often near the start.
    fn place(&self, block: BlockNum) -> Option<u64> {
        let Some(last) = self.last else {
            return block.to_index_near(self.pos.max(1));
        };
        // Index 0 never carries data: number 0 is index 65536, 131072, ...
        let first = match block.0 {
            0 => 0x1_0000,
            n => n as u64,
        };
        if first > last {
            return None;
        }
        // Candidates are first, first + 65536, ... up to last. The nearest at or after the
        // position wins; past the last candidate the stream wrapped: the first one. Computed, not
        // searched: `last` comes from the server and may be huge.
        if self.pos <= first {
            return Some(first);
        }
        let steps = (self.pos - first).div_ceil(0x1_0000);
        match steps
            .checked_mul(0x1_0000)
            .and_then(|d| first.checked_add(d))
        {
            Some(c) if c <= last => Some(c),
            _ => Some(first),
        }
    }

    fn handle_data<'a>(
        &mut self,
        block: BlockNum,
        data: &'a [u8],
        unicast: bool,
        now: Instant,
    ) -> McEvent<'a> {
        let Some(index) = self.place(block) else {
            return McEvent::None;
        };
        if index == 0 || index > MAX_BLOCKS || data.len() as u64 > self.blksize {
            return McEvent::None;
        }
        if self.protocol == McProtocol::Rfc2090 && unicast && self.group.is_none() && !self.unicast
        {
            // DATA straight to us before any OACK: the server ignored every option.
            self.unicast = true;
            self.master = true;
            self.master_turns += 1;
        }
        if self.protocol == McProtocol::PxeMtftp && unicast && index == 1 && self.opened {
            // The server answered our open with block 1: we are master.
            if !self.master {
                self.master_turns += 1;
            }
            self.master = true;
        }
        self.pos = index;
        self.tries = 0;
        self.deadline = Some(
            now + match self.protocol {
                McProtocol::PxeMtftp if !self.master => self.cfg.reopen_delay,
                _ => self.cfg.timeout,
            },
        );
        if (data.len() as u64) < self.blksize {
            self.last = Some(index);
        }
        let new = !self.has(index);
        if new {
            self.set(index);
            self.received += 1;
        } else {
            self.duplicates += 1;
        }
        if self.master {
            self.pending = Out::Ack(match self.protocol {
                McProtocol::Rfc2090 => self.contiguous(),
                McProtocol::PxeMtftp => index,
            });
        }
        if self.complete() {
            self.done = true;
            // Tell the server we have everything (a passive RFC 2090 member too).
            if self.protocol == McProtocol::Rfc2090 || self.master {
                self.pending = Out::Ack(self.last.unwrap_or(index));
            }
        }
        if new {
            McEvent::Data {
                offset: (index - 1) * self.blksize,
                data,
            }
        } else {
            McEvent::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::multicast::{Dest, McTransmit, Protocol, Session, SessionConfig};
    use crate::proto::packet::data_header;

    /// The server session and `n` clients on a simulated multicast LAN with seeded loss; late
    /// joiners start at `late_at`; client 0 vanishes at `vanish_at` if given.
    fn lan(
        protocol: McProtocol,
        len: u64,
        n: usize,
        loss: u64,
        late_at: Option<Duration>,
        vanish_at: Option<Duration>,
    ) -> (Vec<McClient>, crate::proto::multicast::SessionStats) {
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let t0 = Instant::now();
        let mut now = t0;
        let group: SocketAddr = "239.255.1.1:3001".parse().unwrap();
        let scfg = |now| {
            Session::new(
                SessionConfig {
                    protocol: if protocol == McProtocol::Rfc2090 {
                        Protocol::Rfc2090
                    } else {
                        Protocol::PxeMtftp
                    },
                    blksize: if protocol == McProtocol::Rfc2090 {
                        1428
                    } else {
                        512
                    },
                    content_len: len,
                    group,
                    window: 16,
                    rate: 100_000_000,
                    timeout: Duration::from_millis(20),
                    retries: 3,
                    tsize_in_oack: true,
                    max_members: 256,
                },
                now,
            )
        };
        let mut session: Option<Session> = None;
        let mut stats = crate::proto::multicast::SessionStats::default();
        let ccfg = McClientConfig {
            blksize: Some(1428),
            timeout: Duration::from_millis(200),
            retries: 20,
            listen_timeout: Duration::from_millis(50),
            reopen_delay: Duration::from_millis(100),
            ..Default::default()
        };
        let addr = |i: usize| SocketAddr::from(([10, 0, 0, 2], 2000 + i as u16));
        let mut clients: Vec<Option<McClient>> = (0..n).map(|_| None).collect();
        let mut files: Vec<Vec<u8>> = vec![vec![0; len as usize]; n];
        let mut gone = vec![false; n];
        let mut rng = 0x2545F4914F6CDD1Du64;
        let mut lost = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % 1000 < loss
        };
        let mut buf = vec![0u8; 2000];
        for _ in 0..2_000_000 {
            let mut progressed = false;
            for (i, c) in clients.iter_mut().enumerate() {
                let start = match late_at {
                    Some(l) if i >= n / 2 => t0 + l,
                    _ => t0,
                };
                if c.is_none() && now >= start {
                    *c = Some(match protocol {
                        McProtocol::Rfc2090 => McClient::rfc2090(b"f", ccfg.clone(), now),
                        McProtocol::PxeMtftp => McClient::pxe(b"f", ccfg.clone(), now),
                    });
                }
            }
            if let Some(v) = vanish_at {
                if now >= t0 + v && !gone[0] {
                    gone[0] = true;
                }
            }
            // Clients to server.
            for i in 0..n {
                let Some(c) = clients[i].as_mut() else {
                    continue;
                };
                while let Some(len) = {
                    let d = c.destination();
                    c.poll_transmit(&mut buf).map(|l| (l, d))
                } {
                    let (l, dest) = len;
                    progressed = true;
                    if gone[i] || lost() {
                        continue;
                    }
                    match dest {
                        McDest::RequestPort => {
                            if session.as_ref().is_none_or(|s| s.is_over()) {
                                if let Some(s) = session.take() {
                                    stats = s.stats();
                                }
                                session = Some(scfg(now));
                            }
                            let _ = session.as_mut().unwrap().join(addr(i), now);
                        }
                        McDest::Session => {
                            if let Some(s) = session.as_mut() {
                                s.handle_datagram(addr(i), &buf[..l], now);
                            }
                        }
                    }
                }
            }
            // Server to clients.
            if let Some(s) = session.as_mut() {
                let mut out = vec![0u8; 600];
                while let Some(tx) = s.poll_transmit(now, &mut out) {
                    progressed = true;
                    let (dest, packets): (Dest, Vec<Vec<u8>>) = match tx {
                        McTransmit::Datagram { dest, len } => (dest, vec![out[..len].to_vec()]),
                        McTransmit::Blocks { dest, first, count } => (
                            dest,
                            (first..first + count as u64)
                                .map(|i| {
                                    let (o, l) = s.block_range(i);
                                    let mut p = data_header(BlockNum::from_index(i)).to_vec();
                                    p.extend_from_slice(&content[o as usize..o as usize + l]);
                                    p
                                })
                                .collect(),
                        ),
                    };
                    for p in packets {
                        for i in 0..n {
                            let to_me = match dest {
                                Dest::Group => true,
                                Dest::Member(a) => a == addr(i),
                            };
                            if !to_me || gone[i] || lost() {
                                continue;
                            }
                            let Some(c) = clients[i].as_mut() else {
                                continue;
                            };
                            match c.handle_datagram(&p, dest != Dest::Group, now) {
                                McEvent::Data { offset, data } => {
                                    files[i][offset as usize..offset as usize + data.len()]
                                        .copy_from_slice(data);
                                }
                                McEvent::Failed(e) => panic!("client {i}: {e}"),
                                _ => {}
                            }
                        }
                    }
                }
            }
            if progressed {
                // Let every answer go out before time moves on.
                continue;
            }
            if clients
                .iter()
                .enumerate()
                .all(|(i, c)| gone[i] || c.as_ref().is_some_and(|c| c.is_over()))
            {
                break;
            }
            // Advance time.
            let mut next: Option<Instant> = session.as_ref().and_then(|s| s.poll_timeout());
            for (_, c) in clients.iter().enumerate().filter(|(i, _)| !gone[*i]) {
                let Some(c) = c else { continue };
                next = match (next, c.poll_timeout()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            if let Some(l) = late_at {
                if now < t0 + l {
                    next = Some(next.map_or(t0 + l, |n| n.min(t0 + l)));
                }
            }
            now = now.max(next.expect("nothing left to wait for"));
            if let Some(s) = session.as_mut() {
                s.handle_timeout(now);
            }
            for i in 0..n {
                if let Some(c) = clients[i].as_mut() {
                    if !gone[i] {
                        if let McEvent::Failed(e) = c.handle_timeout(now) {
                            panic!("client {i}: {e}");
                        }
                    }
                }
            }
        }
        if let Some(s) = session {
            let st = s.stats();
            stats.bytes_sent += st.bytes_sent;
            stats.members_done += st.members_done;
        }
        for i in 0..n {
            if !gone[i] {
                assert!(
                    clients[i].as_ref().unwrap().is_finished(),
                    "client {i} unfinished"
                );
                assert!(files[i] == content, "client {i} content differs");
            }
        }
        (clients.into_iter().flatten().collect(), stats)
    }

    #[test]
    fn lan_rfc2090_twenty_clients_with_loss_late_joiners_and_vanishing_master() {
        let len = 1428 * 3000 + 11;
        let (_, st) = lan(McProtocol::Rfc2090, len, 20, 0, None, None);
        assert!(st.bytes_sent < len + len / 20, "clean: about once ({st:?})");
        assert_eq!(st.members_done, 20);
        lan(
            McProtocol::Rfc2090,
            len,
            20,
            50,
            Some(Duration::from_millis(20)),
            Some(Duration::from_millis(10)),
        );
    }

    #[test]
    fn lan_pxe_mtftp_twenty_clients_with_loss_and_late_joiners() {
        let len = 512 * 3000 + 7;
        lan(McProtocol::PxeMtftp, len, 20, 0, None, None);
        lan(
            McProtocol::PxeMtftp,
            len,
            20,
            50,
            Some(Duration::from_millis(40)),
            None,
        );
    }

    /// A DATA packet with block number `n` and `len` bytes.
    fn data(n: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0, 3];
        p.extend_from_slice(&n.to_be_bytes());
        p.resize(4 + len, 0xab);
        p
    }

    fn offset(ev: McEvent<'_>) -> Option<u64> {
        match ev {
            McEvent::Data { offset, .. } => Some(offset),
            _ => None,
        }
    }

    #[test]
    fn restarted_stream_is_placed_exactly_under_65536_blocks() {
        // PXE, 61 440 blocks: a late listener hears the second half and the short last block; the
        // re-opened stream then starts at block 1, which is index 1, not 65 537.
        let now = Instant::now();
        let mut c = McClient::pxe(b"f", McClientConfig::default(), now);
        for n in 30_000..61_440u16 {
            c.handle_datagram(&data(n, 512), false, now);
        }
        let ev = offset(c.handle_datagram(&data(61_440, 100), false, now));
        assert_eq!(ev, Some(61_439 * 512));
        assert_eq!(
            offset(c.handle_datagram(&data(1, 512), false, now)),
            Some(0)
        );
        for n in 2..30_000u16 {
            c.handle_datagram(&data(n, 512), false, now);
        }
        assert!(c.is_finished());
        assert_eq!(c.duplicates, 0);
    }

    #[test]
    fn wrapping_file_restarted_for_a_new_master_is_placed_at_the_start() {
        // RFC 2090, 150 000 blocks of 8 bytes (tsize in the OACK). This member joined after blocks
        // 1-16 went out; at the end a new master restarts the stream at block 1 (number 1 could
        // be 1, 65 537 or 131 073).
        let now = Instant::now();
        let cfg = McClientConfig {
            blksize: Some(8),
            ..Default::default()
        };
        let mut c = McClient::rfc2090(b"f", cfg, now);
        let tsize = 8 * 149_999 + 3;
        let oack = format!("\0\x06multicast\0239.255.1.1,1758,0\0blksize\08\0tsize\0{tsize}\0");
        c.handle_datagram(oack.as_bytes(), true, now);
        let at = |i: u64| BlockNum::from_index(i).0;
        for i in 17..150_000u64 {
            let ev = offset(c.handle_datagram(&data(at(i), 8), false, now));
            assert_eq!(ev, Some((i - 1) * 8), "block {i}");
        }
        let ev = offset(c.handle_datagram(&data(at(150_000), 3), false, now));
        assert_eq!(ev, Some(149_999 * 8), "the short last block");
        for i in 1..=16u64 {
            let ev = offset(c.handle_datagram(&data(at(i), 8), false, now));
            assert_eq!(ev, Some((i - 1) * 8), "block {i} again");
        }
        assert!(c.is_finished());
    }

    #[test]
    fn contiguous_counts_from_block_one() {
        let mut c = McClient::pxe(b"f", McClientConfig::default(), Instant::now());
        assert_eq!(c.contiguous(), 0);
        c.set(1);
        c.set(2);
        c.set(4);
        assert_eq!(c.contiguous(), 2);
        for i in 3..=200 {
            c.set(i);
        }
        assert_eq!(c.contiguous(), 200);
    }

    #[test]
    fn rfc2090_master_acks_first_gap() {
        let now = Instant::now();
        let cfg = McClientConfig {
            blksize: Some(8),
            ..Default::default()
        };
        let mut c = McClient::rfc2090(b"f", cfg, now);
        let mut buf = [0u8; 600];
        assert_eq!(c.destination(), McDest::RequestPort);
        let n = c.poll_transmit(&mut buf).unwrap();
        let Ok(Packet::Rrq(r)) = Packet::parse(&buf[..n]) else {
            panic!()
        };
        assert_eq!(r.options.get("multicast"), Some(&b""[..]));
        let ev = c.handle_datagram(
            b"\x00\x06multicast\x00239.255.1.1,1758,1\x00blksize\x008\x00",
            true,
            now,
        );
        assert_eq!(ev, McEvent::JoinGroup("239.255.1.1:1758".parse().unwrap()));
        assert_eq!(c.poll_transmit(&mut buf), Some(4));
        assert_eq!(&buf[..4], b"\x00\x04\x00\x00");
        c.handle_datagram(b"\x00\x03\x00\x02abcdefgh", false, now);
        c.poll_transmit(&mut buf);
        assert_eq!(&buf[..4], b"\x00\x04\x00\x00", "gap at 1: still ACK 0");
        c.handle_datagram(b"\x00\x03\x00\x01abcdefgh", false, now);
        c.poll_transmit(&mut buf);
        assert_eq!(&buf[..4], b"\x00\x04\x00\x02");
        let ev = c.handle_datagram(b"\x00\x03\x00\x03xy", false, now);
        assert_eq!(
            ev,
            McEvent::Data {
                offset: 16,
                data: &b"xy"[..]
            }
        );
        assert!(c.is_finished());
        c.poll_transmit(&mut buf);
        assert_eq!(&buf[..4], b"\x00\x04\x00\x03");
    }

    #[test]
    fn rfc2090_server_ignoring_the_option_means_a_plain_unicast_download() {
        // RFC 2090 lets a server ignore `multicast`: the OACK has none (ringboot when its pool is
        // full or a cap is reached). The client downloads by unicast, ACKing every block.
        let now = Instant::now();
        let cfg = McClientConfig {
            blksize: Some(8),
            ..Default::default()
        };
        let mut c = McClient::rfc2090(b"f", cfg, now);
        let mut buf = [0u8; 600];
        c.poll_transmit(&mut buf).unwrap();
        let ev = c.handle_datagram(b"\x00\x06blksize\x008\x00tsize\x0010\x00", true, now);
        assert_eq!(ev, McEvent::None);
        assert!(c.is_unicast() && c.is_master());
        assert_eq!(c.destination(), McDest::Session);
        assert_eq!(c.poll_transmit(&mut buf), Some(4));
        assert_eq!(&buf[..4], b"\x00\x04\x00\x00", "ACK of the OACK");
        // Silence: ACK again, never a new RRQ (the transfer is running).
        c.handle_timeout(now + Duration::from_secs(3));
        assert_eq!(c.destination(), McDest::Session);
        assert_eq!(c.poll_transmit(&mut buf), Some(4));
        assert_eq!(&buf[..4], b"\x00\x04\x00\x00");
        let ev = c.handle_datagram(b"\x00\x03\x00\x01abcdefgh", true, now);
        assert_eq!(
            ev,
            McEvent::Data {
                offset: 0,
                data: &b"abcdefgh"[..]
            }
        );
        c.poll_transmit(&mut buf);
        assert_eq!(&buf[..4], b"\x00\x04\x00\x01");
        c.handle_datagram(b"\x00\x03\x00\x02xy", true, now);
        assert!(c.is_finished());
        c.poll_transmit(&mut buf);
        assert_eq!(&buf[..4], b"\x00\x04\x00\x02");
        // DATA without any OACK (a server that ignores every option) works the same way.
        let mut c = McClient::rfc2090(b"f", McClientConfig::default(), now);
        c.poll_transmit(&mut buf);
        let ev = c.handle_datagram(b"\x00\x03\x00\x01short", true, now);
        assert!(matches!(ev, McEvent::Data { offset: 0, .. }));
        assert!(c.is_unicast() && c.is_finished());
        c.poll_transmit(&mut buf);
        assert_eq!(&buf[..4], b"\x00\x04\x00\x01");
    }
}
