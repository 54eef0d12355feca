//! The simulation harness: machines against machines on virtual time, over a seeded link.
//!
//! Contract (quinn-proto's `tests/util.rs` `Pair` is the model):
//! - A [`Sim`] holds the virtual clock, the datagrams in flight and a seeded [`Link`]: loss,
//!   duplication, reordering and delay, all drawn from one [`Rng`], so a run is reproducible
//!   from its seed. Loss is drawn per receiver (a group datagram reaches each member, or not,
//!   on its own); duplication and reordering per datagram sent.
//! - Anything that sends and receives datagrams is a [`Node`]: it says which addresses it
//!   receives on (its own, the groups it joined), takes datagrams and timeouts, and yields
//!   datagrams to send and its next deadline. Adapters here wrap the crate's machines the way a
//!   driver would: [`TftpServer`] (an [`Endpoint`] with its transfers and an in-memory file
//!   table), [`TftpClient`] (the firmware-like [`Client`], in phases like a probing firmware),
//!   [`McServer`] (multicast [`Session`]s) and [`McMember`] ([`McClient`]).
//! - [`Sim::step`] does one thing: drain every node's transmits onto the link; else deliver
//!   the earliest datagram due; else move the clock to the earliest deadline (datagram or node)
//!   and fire the nodes' timeouts. [`Sim::run`] steps until nothing is left to happen or until a
//!   virtual instant. Time never goes back; nothing reads a clock (the origin comes in).
//! - Bounded: a run stops after `max_steps` steps (a livelock is a test failure, not a hang).

use super::rng::Rng;
use super::tftp::client::{Client, ClientConfig, Event as ClientEvent};
use super::tftp::endpoint::{Accept, Decision, Endpoint, Event as EndpointEvent, NoMulticast};
use super::tftp::endpoint::{CloseReason, TransferId};
use super::tftp::packet::{data_header, Mode};
use super::tftp::transfer::{Event as TransferEvent, Outcome, TransferStats};
use super::tftp::BlockNum;
use super::timer::TimerQueue;
use super::{Payload, Transmit};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Largest datagram a node may send.
pub const MAX_DATAGRAM: usize = 65536;

/// What the link does to datagrams.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Share of datagrams lost (per receiver).
    pub loss: f64,
    /// Share of datagrams delivered twice.
    pub dup: f64,
    /// Share of datagrams held back by three delays (overtaken by later ones).
    pub reorder: f64,
    /// One-way delay.
    pub delay: Duration,
}

impl Link {
    /// No loss, no duplication, no reordering, no delay.
    pub const PERFECT: Link = Link {
        loss: 0.0,
        dup: 0.0,
        reorder: 0.0,
        delay: Duration::ZERO,
    };

    /// A LAN: 100 µs one way, with the given impairments.
    pub fn lan(loss: f64, dup: f64, reorder: f64) -> Link {
        Link {
            loss,
            dup,
            reorder,
            delay: Duration::from_micros(100),
        }
    }
}

/// Counters of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Datagrams that reached no node.
    pub unroutable: u64,
}

/// Something on the simulated network. See the module docs.
pub trait Node {
    /// Whether a datagram sent to `addr` reaches this node.
    fn receives(&self, addr: SocketAddr) -> bool;
    /// A datagram from `from`, sent to `to` (one of the addresses it receives on).
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, datagram: &[u8]);
    /// The next datagram to send, written into `buf` ([`MAX_DATAGRAM`] bytes): `(source,
    /// destination, length)`.
    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)>;
    /// Its earliest deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Called when `now` has reached the deadline it gave (or later).
    fn handle_timeout(&mut self, now: Instant);
}

struct InFlight {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The virtual clock and the link. See the module docs.
pub struct Sim {
    now: Instant,
    rng: Rng,
    link: Link,
    queue: TimerQueue<u64>,
    in_flight: HashMap<u64, InFlight>,
    next_seq: u64,
    /// Datagrams to drop, by destination: deterministic faults for a test.
    drops: Vec<(SocketAddr, u32)>,
    steps: u64,
    /// Steps a run may take at most.
    pub max_steps: u64,
    pub stats: SimStats,
    buf: Vec<u8>,
}

/// How [`Sim::run`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// Nothing left to happen: no datagram in flight, no deadline.
    Quiet,
    /// The clock reached the instant given.
    Until,
}

impl Sim {
    /// A simulation starting at `origin` (any instant: [`crate::sim_origin`] in tests).
    pub fn new(origin: Instant, seed: u64, link: Link) -> Self {
        Sim {
            now: origin,
            rng: Rng::from_seed(seed),
            link,
            queue: TimerQueue::new(),
            in_flight: HashMap::new(),
            next_seq: 0,
            drops: Vec::new(),
            steps: 0,
            max_steps: 20_000_000,
            stats: SimStats::default(),
            buf: vec![0; MAX_DATAGRAM],
        }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn link(&self) -> Link {
        self.link
    }

    pub fn set_link(&mut self, link: Link) {
        self.link = link;
    }

    /// Move the clock forward to `to` (never back), without firing anything: what falls due
    /// meanwhile is handled by the next step.
    pub fn advance(&mut self, to: Instant) {
        self.now = self.now.max(to);
    }

    /// Drop the next `count` datagrams sent to `to` (a deterministic loss, on top of the link's).
    pub fn drop_next(&mut self, to: SocketAddr, count: u32) {
        self.drops.push((to, count));
    }

    /// Put a datagram on the link (through its duplication and reordering).
    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        self.stats.sent += 1;
        if let Some(d) = self.drops.iter_mut().find(|(a, n)| *a == to && *n > 0) {
            d.1 -= 1;
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.link.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = self.now + self.link.delay;
            if self.rng.chance(self.link.reorder) {
                self.stats.reordered += 1;
                at += self.link.delay.max(Duration::from_micros(100)) * 3;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.in_flight.insert(
                seq,
                InFlight {
                    from,
                    to,
                    bytes: bytes.to_vec(),
                },
            );
            self.queue.arm(seq, at);
        }
    }

    /// One step (see the module docs). `false`: nothing is left to happen.
    pub fn step(&mut self, nodes: &mut [&mut dyn Node]) -> bool {
        self.steps += 1;
        assert!(
            self.steps <= self.max_steps,
            "simulation did not settle in {} steps",
            self.max_steps
        );
        if self.flush(nodes) {
            return true;
        }
        if let Some(seq) = self.queue.pop_expired(self.now) {
            let d = self.in_flight.remove(&seq).expect("a datagram in flight");
            let mut reached = false;
            for n in nodes.iter_mut() {
                if !n.receives(d.to) {
                    continue;
                }
                reached = true;
                if self.rng.chance(self.link.loss) {
                    self.stats.lost += 1;
                    continue;
                }
                self.stats.delivered += 1;
                n.handle_datagram(self.now, d.from, d.to, &d.bytes);
            }
            self.stats.unroutable += u64::from(!reached);
            return true;
        }
        let next = nodes
            .iter()
            .filter_map(|n| n.poll_timeout())
            .chain(self.queue.next_deadline())
            .min();
        let Some(next) = next else {
            return false;
        };
        self.now = self.now.max(next);
        for n in nodes.iter_mut() {
            if n.poll_timeout().is_some_and(|t| t <= self.now) {
                n.handle_timeout(self.now);
            }
        }
        true
    }

    /// Step until nothing is left to happen, or until the clock would pass `until`.
    pub fn run(&mut self, nodes: &mut [&mut dyn Node], until: Instant) -> Ran {
        loop {
            self.flush(nodes);
            let due = self.queue.next_deadline().is_some_and(|t| t <= self.now);
            if !due {
                let next = nodes
                    .iter()
                    .filter_map(|n| n.poll_timeout())
                    .chain(self.queue.next_deadline())
                    .min();
                match next {
                    None => return Ran::Quiet,
                    Some(t) if t > until => {
                        self.now = self.now.max(until);
                        return Ran::Until;
                    }
                    Some(_) => {}
                }
            }
            if !self.step(nodes) {
                return Ran::Quiet;
            }
        }
    }

    /// Put everything the nodes have to send now on the link.
    fn flush(&mut self, nodes: &mut [&mut dyn Node]) -> bool {
        let mut buf = std::mem::take(&mut self.buf);
        let mut any = false;
        for n in nodes.iter_mut() {
            while let Some((from, to, len)) = n.poll_transmit(self.now, &mut buf) {
                self.send(from, to, &buf[..len]);
                any = true;
            }
        }
        self.buf = buf;
        any
    }
}

/// What a server node still has to put on the link of a [`Payload::Blocks`]: one DATA
/// datagram per block, built from the content like a driver does (header + the block's bytes).
#[derive(Clone, Copy, Debug)]
pub struct BlockRun {
    to: SocketAddr,
    next: u64,
    last: u64,
}

impl BlockRun {
    /// The blocks of `t`, if it is a run of blocks.
    pub fn of(t: Transmit) -> Option<BlockRun> {
        match t.payload {
            Payload::Blocks { first, count } => Some(BlockRun {
                to: t.dest,
                next: first,
                last: first + count as u64 - 1,
            }),
            Payload::Datagram(_) => None,
        }
    }

    /// Write the next block's DATA into `buf`: the header, then the payload that
    /// `fill(index, after_header)` writes and measures; `(dest, len)`, or `None` when the run is
    /// over.
    pub fn emit(
        &mut self,
        buf: &mut [u8],
        fill: impl FnOnce(u64, &mut [u8]) -> usize,
    ) -> Option<(SocketAddr, usize)> {
        if self.next > self.last {
            return None;
        }
        let i = self.next;
        self.next += 1;
        buf[..4].copy_from_slice(&data_header(BlockNum::from_index(i)));
        let n = fill(i, &mut buf[4..]);
        Some((self.to, 4 + n))
    }

    /// [`emit`](Self::emit) with the block's bytes taken from `content` at the `(offset, len)`
    /// that `range(index)` gives (a machine's `block_range`).
    pub fn emit_from(
        &mut self,
        buf: &mut [u8],
        content: &[u8],
        range: impl FnOnce(u64) -> (u64, usize),
    ) -> Option<(SocketAddr, usize)> {
        self.emit(buf, |i, out| {
            let (off, len) = range(i);
            out[..len].copy_from_slice(&content[off as usize..off as usize + len]);
            len
        })
    }
}

// ---------------------------------------------------------------------------------------------
// TFTP nodes
// ---------------------------------------------------------------------------------------------

/// How a unicast transfer of the [`TftpServer`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub peer: SocketAddr,
    /// `None`: closed by the endpoint before it ended by itself.
    pub outcome: Option<Outcome>,
    pub closed_by: Option<CloseReason>,
    pub stats: TransferStats,
}

struct Served {
    id: TransferId,
    /// Its transfer address (the TID).
    local: SocketAddr,
    peer: SocketAddr,
    content: usize,
    /// Blocks of a `Payload::Blocks` still to put on the link.
    blocks: Option<BlockRun>,
}

/// An [`Endpoint`] with its transfers and a table of files, as a driver runs them: every
/// transfer gets its own port; DATA is built from the file's bytes. Octet mode only (a
/// netascii request is refused as a lookup error would be: file not found).
pub struct TftpServer {
    pub endpoint: Endpoint,
    /// The request address.
    pub addr: SocketAddr,
    files: Vec<(Vec<u8>, Vec<u8>)>,
    served: Vec<Served>,
    next_port: u16,
    /// ERRORs to send from the request port: (to, datagram).
    replies: VecDeque<(SocketAddr, Vec<u8>)>,
    /// MTU of the interface requests come in on (`None`: unknown).
    pub mtu: Option<u32>,
    /// Transfers that ended, in order.
    pub ended: Vec<Ended>,
    /// Decisions taken, in order (for assertions): "lookup", "duplicate", "refuse", "drop".
    pub decisions: Vec<&'static str>,
}

impl TftpServer {
    pub fn new(endpoint: Endpoint, addr: SocketAddr) -> Self {
        TftpServer {
            endpoint,
            addr,
            files: Vec::new(),
            served: Vec::new(),
            next_port: 50_000,
            replies: VecDeque::new(),
            mtu: None,
            ended: Vec::new(),
            decisions: Vec::new(),
        }
    }

    /// Serve `content` as `name`.
    pub fn add_file(&mut self, name: &[u8], content: Vec<u8>) {
        self.files.push((name.to_vec(), content));
    }

    /// Live transfers.
    pub fn live(&self) -> usize {
        self.served.len()
    }

    fn end(&mut self, id: TransferId, closed_by: Option<CloseReason>) {
        let Some(i) = self.served.iter().position(|s| s.id == id) else {
            return;
        };
        let s = self.served.remove(i);
        let t = self.endpoint.transfer(id);
        self.ended.push(Ended {
            peer: s.peer,
            outcome: t.and_then(|t| t.outcome()),
            closed_by,
            stats: t.map(|t| t.stats()).unwrap_or_default(),
        });
        self.endpoint.release(id);
    }

    fn drain_endpoint_events(&mut self) {
        while let Some(EndpointEvent::Closed { id, reason }) = self.endpoint.poll_event() {
            self.end(id, Some(reason));
        }
    }

    fn request(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let decision = self
            .endpoint
            .handle_request(now, from, self.addr.ip(), datagram, false);
        let mut buf = [0u8; 516];
        let incoming = match decision {
            Decision::Lookup(i) => i,
            Decision::Duplicate(_) => {
                self.decisions.push("duplicate");
                return self.drain_endpoint_events();
            }
            Decision::Refuse(r) => {
                self.decisions.push("refuse");
                let n = r.emit(&mut buf);
                self.replies.push_back((from, buf[..n].to_vec()));
                return self.drain_endpoint_events();
            }
            Decision::Drop(_) => {
                self.decisions.push("drop");
                return;
            }
        };
        self.decisions.push("lookup");
        self.drain_endpoint_events();
        let file = self
            .files
            .iter()
            .position(|(n, _)| n == incoming.filename())
            .filter(|_| incoming.mode() == Mode::Octet);
        let Some(file) = file else {
            let n = super::tftp::packet::emit_error(
                &mut buf,
                super::tftp::ErrorCode::FileNotFound,
                "file not found",
            );
            self.replies.push_back((from, buf[..n].to_vec()));
            return;
        };
        let len = self.files[file].1.len() as u64;
        let accepted =
            self.endpoint
                .accept(now, incoming, Some(len), self.mtu, None, &mut NoMulticast);
        self.drain_endpoint_events();
        match accepted {
            Accept::Unicast(a) => {
                let local = SocketAddr::new(self.addr.ip(), self.next_port);
                self.next_port = self.next_port.wrapping_add(1).max(50_000);
                self.served.push(Served {
                    id: a.id,
                    local,
                    peer: from,
                    content: file,
                    blocks: None,
                });
            }
            Accept::Multicast => {}
            Accept::Refuse(r) => {
                let n = r.emit(&mut buf);
                self.replies.push_back((from, buf[..n].to_vec()));
            }
        }
    }
}

impl Node for TftpServer {
    fn receives(&self, addr: SocketAddr) -> bool {
        addr == self.addr || self.served.iter().any(|s| s.local == addr)
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, datagram: &[u8]) {
        if to == self.addr {
            return self.request(now, from, datagram);
        }
        // A connected socket: only the client's datagrams arrive.
        let Some(s) = self.served.iter().find(|s| s.local == to && s.peer == from) else {
            return;
        };
        if let Some(t) = self.endpoint.transfer_mut(s.id) {
            t.handle_datagram(now, datagram);
        }
    }

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)> {
        if let Some((to, d)) = self.replies.pop_front() {
            buf[..d.len()].copy_from_slice(&d);
            return Some((self.addr, to, d.len()));
        }
        let mut i = 0;
        while i < self.served.len() {
            let s = &mut self.served[i];
            let (id, local) = (s.id, s.local);
            if let Some(run) = s.blocks.as_mut() {
                let t = self.endpoint.transfer(id)?;
                match run.emit_from(buf, &self.files[s.content].1, |i| t.block_range(i)) {
                    Some((to, n)) => return Some((local, to, n)),
                    None => s.blocks = None,
                }
            }
            let Some(t) = self.endpoint.transfer_mut(id) else {
                i += 1;
                continue;
            };
            if let Some(tx) = t.poll_transmit(now, buf) {
                if let Some((dest, n)) = tx.datagram() {
                    return Some((local, dest, n));
                }
                self.served[i].blocks = BlockRun::of(tx);
                continue;
            }
            if let Some(TransferEvent::Ended(_)) = t.poll_event() {
                self.endpoint.close(id);
                self.end(id, None);
                continue;
            }
            i += 1;
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.served
            .iter()
            .filter_map(|s| self.endpoint.transfer(s.id)?.poll_timeout())
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        for s in &self.served {
            if let Some(t) = self.endpoint.transfer_mut(s.id) {
                if t.poll_timeout().is_some_and(|d| d <= now) {
                    t.handle_timeout(now);
                }
            }
        }
    }
}

/// One phase of a [`TftpClient`]: a request, from the client's port, like firmware's probe
/// then real download.
#[derive(Clone, Debug)]
pub struct Phase {
    pub filename: Vec<u8>,
    pub cfg: ClientConfig,
    /// Wait before it starts (after the previous phase ended).
    pub gap: Duration,
}

/// The firmware-like [`Client`] at one address, running its phases in turn and keeping what it
/// received. `silent`: it takes nothing and sends nothing (a spoofed source, a client gone).
pub struct TftpClient {
    pub addr: SocketAddr,
    pub server: SocketAddr,
    pub client: Option<Client>,
    phases: VecDeque<Phase>,
    start_at: Option<Instant>,
    /// The payload of the current phase, in order.
    pub received: Vec<u8>,
    /// Events of every phase, in order.
    pub events: Vec<ClientEvent>,
    /// Takes and sends nothing.
    pub silent: bool,
    /// The opcode of every datagram that reached it (silent or not).
    pub heard: Vec<u16>,
    /// Drops the ERROR that ends a probe (it is lost, or still queued behind the next request).
    pub drop_probe_error: bool,
    probe_ended: bool,
}

impl TftpClient {
    /// A client at `addr` that starts `phases` at `start` (one after another).
    pub fn new(addr: SocketAddr, server: SocketAddr, phases: Vec<Phase>, start: Instant) -> Self {
        TftpClient {
            addr,
            server,
            client: None,
            phases: phases.into(),
            start_at: Some(start),
            received: Vec::new(),
            events: Vec::new(),
            silent: false,
            heard: Vec::new(),
            drop_probe_error: false,
            probe_ended: false,
        }
    }

    /// One download of `filename` with `cfg`, starting at `start`.
    pub fn one(
        addr: SocketAddr,
        server: SocketAddr,
        filename: &[u8],
        cfg: ClientConfig,
        start: Instant,
    ) -> Self {
        let phase = Phase {
            filename: filename.to_vec(),
            cfg,
            gap: Duration::ZERO,
        };
        TftpClient::new(addr, server, vec![phase], start)
    }

    /// Every phase ran and the last one finished (or probed).
    pub fn is_done(&self) -> bool {
        self.phases.is_empty()
            && self.start_at.is_none()
            && self.client.as_ref().is_none_or(|c| c.is_over())
    }

    /// The last event, if any.
    pub fn last_event(&self) -> Option<&ClientEvent> {
        self.events.last()
    }

    fn take_events(&mut self, now: Instant) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        while let Some(e) = c.poll_event() {
            let next = matches!(e, ClientEvent::ProbeDone { .. });
            self.events.push(e);
            if next {
                self.probe_ended = true;
                if let Some(p) = self.phases.front() {
                    self.start_at = Some(now + p.gap);
                }
            }
        }
    }
}

impl Node for TftpClient {
    fn receives(&self, addr: SocketAddr) -> bool {
        addr == self.addr
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _: SocketAddr, datagram: &[u8]) {
        if let [a, b, ..] = *datagram {
            self.heard.push(u16::from_be_bytes([a, b]));
        }
        if self.silent {
            return;
        }
        let Some(c) = self.client.as_mut() else {
            return;
        };
        if let Some(d) = c.handle_datagram(now, from, datagram) {
            assert_eq!(d.offset, self.received.len() as u64, "payload out of order");
            self.received.extend_from_slice(d.bytes);
        }
        self.take_events(now);
    }

    fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)> {
        if self.silent {
            return None;
        }
        let c = self.client.as_mut()?;
        while let Some((dest, n)) = c.poll_transmit(now, buf).and_then(Transmit::datagram) {
            if std::mem::take(&mut self.probe_ended) && self.drop_probe_error {
                continue;
            }
            return Some((self.addr, dest, n));
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.silent {
            return None;
        }
        let c = self.client.as_ref().and_then(|c| c.poll_timeout());
        match (c, self.start_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.start_at.is_some_and(|t| t <= now) {
            self.start_at = None;
            if let Some(p) = self.phases.pop_front() {
                self.received.clear();
                self.client = Some(Client::new(self.server, &p.filename, p.cfg, now));
                return;
            }
        }
        if let Some(c) = self.client.as_mut() {
            c.handle_timeout(now);
        }
        self.take_events(now);
    }
}

mod mcast;
pub use mcast::{McMember, McServer};

/// Jain's fairness index of `xs`: (sum x)^2 / (n sum x^2), from 1/n (one takes all) to 1 (all
/// equal); 1 for no samples or all zero. The congestion controller's simulation and the load
/// tester's report both rate fairness with it.
pub fn jain(xs: impl IntoIterator<Item = f64>) -> f64 {
    let (mut n, mut s, mut s2) = (0.0, 0.0, 0.0);
    for x in xs {
        n += 1.0;
        s += x;
        s2 += x * x;
    }
    if n == 0.0 || s2 == 0.0 {
        1.0
    } else {
        s * s / (n * s2)
    }
}

/// An address on the simulated LAN: `10.0.0.x:port`.
pub fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from([10, 0, 0, host]), port)
}

#[cfg(test)]
mod tests;
