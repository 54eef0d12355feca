//! Multicast client modes (`--multicast rfc2090|pxe`): a classroom of machines fed by one stream,
//! a [`Fleet`] of the same engine as [`crate::engine`] ([`crate::drive`]: ringboot's poller, the
//! core's timer queue, no thread per machine, no sleep).
//!
//! Contract:
//! - The protocol is ringboot's sans-IO [`McClient`]; this module moves datagrams, injects the seeded
//!   impairments, checks bytes and keeps time. `rfc2090`: an RRQ with the `multicast` option to
//!   `--server`; the OACK names the group. `pxe`: listen on `--mtftp-group` first, then open on
//!   `--mtftp-port` of the `--server` address (default: `--server` itself).
//! - Each machine has a unicast socket bound to its own source address (127.1.0.0/16 unless
//!   `--source-ips`): RRQ or open, ACKs, and what comes back unicast (OACK, PXE's block 1). ACKs go
//!   to the address the last unicast answer came from (the session's socket).
//! - Group datagrams: `--group-sockets shared` (default) opens one socket per group per thread,
//!   bound to GROUP:PORT with SO_REUSEADDR and SO_REUSEPORT and joined on the loopback interface,
//!   and hands each datagram to every member of that group on the thread. `per-machine` gives every
//!   machine its own joined socket, as separate hosts would have; Linux then copies each group
//!   datagram to every socket.
//! - Impairments per machine, seeded per machine like unicast: `--loss` drops received DATA and
//!   OACK, `--ack-loss` drops ACKs, `--vanish F` makes machines go silent mid-file,
//!   `--vanish-master` makes the first machine that is master go silent between 30% and 60% of the
//!   file, `--join-late F` starts that fraction of machines once any machine has half the file.
//! - Blocks arrive out of order, so downloads are compared at each block's offset against
//!   `--verify` (or only completed with `--no-verify`); a running SHA-256 cannot follow them, so
//!   `--manifest` is refused.
//! - Output: the unicast report (table, `--json`, `--hgrm`, `--plot`) plus a `multicast` object:
//!   protocol, groups, group datagrams received by the sockets and handed to machines, master
//!   turns and opens.

use crate::drive::{self, Fleet};
use crate::drive::{Counters, Live, MachineResult, Outcome};
use crate::engine::MAX_DGRAM;
use crate::plan::{Checker, Expect};
use crate::report;
use crate::Args;
use anyhow::{anyhow, bail, Context, Result};
use ringboot::proto::mtftp::client::{Arrival, McClient, McClientConfig, McClientError, McEvent};
use ringboot::proto::rng::Rng;
use ringboot::proto::tftp::BlockSize;
use ringboot::proto::timer::TimerQueue;
use ringboot::proto::Transmit;
use ringboot::sys::poll::{Event, Poller};
use ringboot::sys::recv::RecvBatch as RxBatch;
use ringboot::sys::socket::{group_socket, set_big_recv_buffer};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which multicast protocol the machines speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum McMode {
    /// RFC 2090: RRQ with the `multicast` option; the OACK names the group and the master.
    Rfc2090,
    /// PXE 2.1 MTFTP: listen on the group, open on the MTFTP port, re-open after a silence.
    Pxe,
}

impl McMode {
    fn name(self) -> &'static str {
        match self {
            McMode::Rfc2090 => "rfc2090",
            McMode::Pxe => "pxe",
        }
    }
}

/// How group datagrams reach the machines of one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupSockets {
    /// One socket per group per thread, each datagram handed to every member.
    Shared,
    /// One socket per machine (the kernel copies every datagram to each).
    PerMachine,
}

/// The multicast options (flattened into the command line).
#[derive(clap::Args, Debug, Clone)]
pub struct McArgs {
    /// Multicast machines instead of unicast ones: rfc2090 or pxe (PXE MTFTP).
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub multicast: Option<McMode>,
    /// pxe: the file's group and client port (the server's --mtftp FILE@GROUP:PORT).
    #[arg(long, value_name = "GROUP:PORT")]
    pub mtftp_group: Option<SocketAddrV4>,
    /// pxe: the server's MTFTP port; opens go to the --server address on it (default: --server's port).
    #[arg(long, value_name = "PORT")]
    pub mtftp_port: Option<u16>,
    /// pxe: listen this long before the first open, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub mtftp_listen_ms: u64,
    /// pxe: silence (with blocks missing) before a re-open, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub mtftp_reopen_ms: u64,
    /// Fraction of machines that start only once some machine has half the file (needs --verify).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub join_late: f64,
    /// The first machine named master goes silent between 30% and 60% of the file.
    #[arg(long)]
    pub vanish_master: bool,
    /// Group sockets: shared (one per group per thread) or per-machine.
    #[arg(long, value_enum, default_value = "shared")]
    pub group_sockets: GroupSockets,
}

/// Everything the threads share.
struct Shared {
    mode: McMode,
    /// Where RRQs (rfc2090) or opens (pxe) go.
    open: SocketAddr,
    pxe_group: Option<SocketAddrV4>,
    filename: Vec<u8>,
    cfg: McClientConfig,
    expect: Option<Arc<memmap2::Mmap>>,
    /// The file's length, when --verify gives it.
    len: Option<u64>,
    loss: f64,
    ack_loss: f64,
    vanish: f64,
    vanish_master: bool,
    sockets: GroupSockets,
    seed: u64,
    t0: Instant,
    deadline: Instant,
    live: Live,
    /// Some machine has half the file: late joiners start.
    half: AtomicBool,
    /// `--vanish-master` has been used up.
    master_gone: AtomicBool,
}

/// One machine to run.
struct Spec {
    index: usize,
    ip: Ipv4Addr,
    start: Duration,
    late: bool,
}

/// What one thread saw besides its machines' results.
#[derive(Clone, Debug, Default)]
struct ThreadStats {
    group_datagrams: u64,
    group_deliveries: u64,
    group_sockets: u64,
    master_turns: u64,
    opens: u64,
    groups: Vec<SocketAddrV4>,
}

enum State {
    Waiting,
    Running,
    Done(Outcome),
}

struct Member {
    spec: Spec,
    rng: Rng,
    state: State,
    client: Option<McClient>,
    sock: Option<UdpSocket>,
    group: Option<usize>,
    received: u64,
    mismatch: Option<u64>,
    vanish_at: Option<u64>,
    master_vanish_at: u64,
    started: Option<Instant>,
    first_data: Option<Instant>,
    ended: Option<Instant>,
    counters: Counters,
}

struct Group {
    addr: SocketAddrV4,
    sock: UdpSocket,
    members: Vec<usize>,
    /// `per-machine`: the machine this socket belongs to.
    owner: Option<usize>,
}

/// Datagrams taken from a group socket per `recvmmsg` (a window arrives at once).
const RX_BATCH: usize = 32;
/// Epoll tokens at or above this are group sockets.
const GROUP_TOKEN: u64 = 1 << 40;
/// How often threads look whether late joiners may start.
const LATE_POLL: Duration = Duration::from_millis(5);

fn classify(why: &McClientError) -> &'static str {
    match why {
        McClientError::TimedOut => "timeout",
        McClientError::Server { .. } => "server-error",
        McClientError::NoGroup | McClientError::TooLarge(_) => "protocol",
    }
}

struct Engine {
    sh: Arc<Shared>,
    members: Vec<Member>,
    groups: Vec<Option<Group>>,
    timers: TimerQueue<u32>,
    poller: Poller,
    /// The receive batch of group sockets and the unicast buffer, reused.
    rx: Option<RxBatch>,
    ubuf: Vec<u8>,
    tx: Vec<u8>,
    running: usize,
    late_waiting: usize,
    bytes_unreported: u64,
    stats: ThreadStats,
}

fn run_thread(sh: Arc<Shared>, specs: Vec<Spec>) -> (Vec<MachineResult>, ThreadStats) {
    let poller = Poller::new().unwrap_or_else(|e| panic!("epoll_create1: {e}"));
    let members: Vec<Member> = specs
        .into_iter()
        .map(|spec| {
            let mut rng = Rng::derive(sh.seed, spec.index as u64);
            let len = sh.len.unwrap_or(1 << 20).max(2);
            let master_vanish_at = rng.range(len * 3 / 10, len * 6 / 10).max(1);
            Member {
                rng,
                state: State::Waiting,
                client: None,
                sock: None,
                group: None,
                received: 0,
                mismatch: None,
                vanish_at: None,
                master_vanish_at,
                started: None,
                first_data: None,
                ended: None,
                counters: Counters::default(),
                spec,
            }
        })
        .collect();
    let mut e = Engine {
        running: members.len(),
        late_waiting: members.iter().filter(|m| m.spec.late).count(),
        members,
        sh,
        groups: Vec::new(),
        timers: TimerQueue::new(),
        poller,
        rx: Some(RxBatch::new(RX_BATCH)),
        ubuf: vec![0u8; MAX_DGRAM],
        tx: vec![0u8; 2048],
        bytes_unreported: 0,
        stats: ThreadStats::default(),
    };
    for i in 0..e.members.len() {
        e.rearm(i);
    }
    drive::run(&mut e, 256);
    let t0 = e.sh.t0;
    let end = Instant::now();
    let results = e
        .members
        .into_iter()
        .map(|m| MachineResult {
            bytes: m.received,
            counters: m.counters,
            ..MachineResult::at_end(
                m.spec.index,
                match m.state {
                    State::Done(o) => Some(o),
                    _ => None,
                },
                [m.started, m.first_data, m.ended],
                (t0, end),
            )
        })
        .collect();
    (results, e.stats)
}

impl Fleet for Engine {
    drive::fleet_common!(sh);

    /// Late joiners start once half the file has gone by; until then, look every few ms.
    fn turn(&mut self, now: Instant) -> Option<Instant> {
        if self.late_waiting > 0 && self.sh.half.load(Relaxed) {
            for i in 0..self.members.len() {
                if self.members[i].spec.late && matches!(self.members[i].state, State::Waiting) {
                    self.start(i, now);
                    self.rearm(i);
                }
            }
        }
        (self.late_waiting > 0).then(|| now + LATE_POLL)
    }

    fn on_ready(&mut self, ev: Event, now: Instant) {
        if ev.token >= GROUP_TOKEN {
            let mut rx = self.rx.take().unwrap_or_else(|| RxBatch::new(RX_BATCH));
            self.on_group(ev.token - GROUP_TOKEN, &mut rx, now);
            self.rx = Some(rx);
        } else {
            let i = ev.token as usize;
            let mut ubuf = std::mem::take(&mut self.ubuf);
            self.on_unicast(i, &mut ubuf, now);
            self.ubuf = ubuf;
            self.rearm(i);
        }
    }

    fn report_bytes(&mut self) {
        Engine::report_bytes(self)
    }
}

impl Engine {
    fn report_bytes(&mut self) {
        if self.bytes_unreported > 0 {
            self.sh.live.bytes.fetch_add(self.bytes_unreported, Relaxed);
            self.bytes_unreported = 0;
        }
    }

    fn stop_all(&mut self, now: Instant) {
        for i in 0..self.members.len() {
            let detail = match self.members[i].state {
                State::Done(_) => continue,
                State::Waiting => "not started before the deadline",
                State::Running => "still running at the deadline",
            };
            self.fail(i, now, "deadline", detail.into());
        }
    }

    fn next_wake(&self, i: usize) -> Option<Instant> {
        let m = &self.members[i];
        match m.state {
            State::Waiting if !m.spec.late => Some(self.sh.t0 + m.spec.start),
            State::Running => m.client.as_ref().and_then(|c| c.poll_timeout()),
            _ => None,
        }
    }

    /// Arm the machine's timer at its earliest wake-up (or disarm it).
    fn rearm(&mut self, i: usize) {
        match self.next_wake(i) {
            Some(t) => self.timers.arm(i as u32, t),
            None => self.timers.cancel(i as u32),
        }
    }

    fn service(&mut self, i: usize, now: Instant) {
        let m = &mut self.members[i];
        match m.state {
            State::Waiting if !m.spec.late && self.sh.t0 + m.spec.start <= now => {
                self.start(i, now)
            }
            State::Running => {
                let Some(c) = m.client.as_mut() else { return };
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    m.counters.timeouts += 1;
                    c.handle_timeout(now);
                    self.after_input(i, now);
                }
            }
            _ => {}
        }
    }

    fn start(&mut self, i: usize, now: Instant) {
        let m = &mut self.members[i];
        if m.spec.late {
            self.late_waiting -= 1;
        }
        m.state = State::Running;
        m.started = Some(now);
        self.sh.live.started.fetch_add(1, Relaxed);
        let ip = m.spec.ip;
        let sock = match UdpSocket::bind(SocketAddr::from((ip, 0))) {
            Ok(s) => s,
            Err(e) => {
                return self.fail(i, now, "socket", format!("cannot bind to {ip}: {e}"));
            }
        };
        let _ = sock.set_nonblocking(true);
        set_big_recv_buffer(&sock);
        if let Err(e) = self.poller.add(sock.as_raw_fd(), i as u64) {
            return self.fail(i, now, "socket", format!("epoll_ctl: {e}"));
        }
        let sh = self.sh.clone();
        let m = &mut self.members[i];
        m.sock = Some(sock);
        if m.rng.chance(sh.vanish) {
            let len = sh.len.unwrap_or(1 << 20).max(2);
            m.vanish_at = Some(m.rng.range(1, len - 1));
        }
        if let Some(g) = sh.pxe_group {
            // A PXE client listens before it opens.
            if !self.subscribe(i, g, now) {
                return;
            }
        }
        let m = &mut self.members[i];
        m.client = Some(match sh.mode {
            McMode::Rfc2090 => McClient::rfc2090(sh.open, &sh.filename, sh.cfg.clone(), now),
            McMode::Pxe => McClient::pxe(sh.open, &sh.filename, sh.cfg.clone(), now),
        });
        self.flush(i, now);
    }

    /// Join machine `i` to `group` (its thread's shared socket, or its own). False: it failed.
    fn subscribe(&mut self, i: usize, group: SocketAddrV4, now: Instant) -> bool {
        if let Some(g) = self.members[i].group {
            if self.groups[g].as_ref().is_some_and(|x| x.addr == group) {
                return true;
            }
            self.unsubscribe(i);
        }
        let owner = match self.sh.sockets {
            GroupSockets::Shared => None,
            GroupSockets::PerMachine => Some(i),
        };
        let found = self.groups.iter().position(|x| {
            x.as_ref()
                .is_some_and(|x| x.addr == group && x.owner == owner)
        });
        let g = match found {
            Some(g) => g,
            None => {
                let sock = match group_socket(group) {
                    Ok(s) => s,
                    Err(e) => {
                        let detail = format!("cannot join {group} on the loopback interface: {e}");
                        self.fail(i, now, "socket", detail);
                        return false;
                    }
                };
                let g = self
                    .groups
                    .iter()
                    .position(|x| x.is_none())
                    .unwrap_or_else(|| {
                        self.groups.push(None);
                        self.groups.len() - 1
                    });
                if let Err(e) = self.poller.add(sock.as_raw_fd(), GROUP_TOKEN + g as u64) {
                    self.fail(i, now, "socket", format!("epoll_ctl: {e}"));
                    return false;
                }
                self.stats.group_sockets += 1;
                if !self.stats.groups.contains(&group) {
                    self.stats.groups.push(group);
                }
                self.groups[g] = Some(Group {
                    addr: group,
                    sock,
                    members: Vec::new(),
                    owner,
                });
                g
            }
        };
        if let Some(x) = self.groups[g].as_mut() {
            x.members.push(i);
        }
        self.members[i].group = Some(g);
        true
    }

    fn unsubscribe(&mut self, i: usize) {
        let Some(g) = self.members[i].group.take() else {
            return;
        };
        if let Some(x) = self.groups[g].as_mut() {
            x.members.retain(|&m| m != i);
            if x.owner.is_some() {
                // Closing the fd takes it out of the epoll set.
                self.groups[g] = None;
            }
        }
    }

    fn on_unicast(&mut self, i: usize, buf: &mut [u8], now: Instant) {
        loop {
            let Some(sock) = self.members[i].sock.as_ref() else {
                return;
            };
            let (n, src) = match sock.recv_from(buf) {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // WouldBlock: drained. ICMP errors: the client's timer deals with silence.
                Err(_) => return,
            };
            self.deliver(i, src, &buf[..n], Arrival::Unicast, now);
            self.flush(i, now);
        }
    }

    fn on_group(&mut self, g: u64, rx: &mut RxBatch, now: Instant) {
        let g = g as usize;
        let mut scratch: Vec<usize> = Vec::new();
        // Bounded: a busy group yields to the timers after a few batches.
        for _ in 0..16 {
            let Some(grp) = self.groups.get(g).and_then(|x| x.as_ref()) else {
                return;
            };
            let n = match rx.recv(grp.sock.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            scratch.clear();
            scratch.extend_from_slice(&grp.members);
            self.stats.group_datagrams += n as u64;
            for k in 0..n {
                let (data, src) = rx.get(k);
                let Some(src) = src else { continue };
                for &i in &scratch {
                    if self.members[i].group == Some(g) {
                        self.stats.group_deliveries += 1;
                        self.deliver(i, src, data, Arrival::Group, now);
                        // An ACK after every block, as clients do: the RFC 2090 master's repeated
                        // ACK of its first gap is how the server learns of a loss early.
                        self.flush(i, now);
                    }
                }
            }
            for &i in &scratch {
                self.rearm(i);
            }
            if n < RX_BATCH {
                break;
            }
        }
    }

    /// Hand a datagram to machine `i`'s state machine through the inbound impairments.
    fn deliver(&mut self, i: usize, src: SocketAddr, data: &[u8], arrival: Arrival, now: Instant) {
        let loss = self.sh.loss;
        let m = &mut self.members[i];
        let Some(c) = m.client.as_mut() else { return };
        let impairable = data.len() >= 2 && data[0] == 0 && (data[1] == 3 || data[1] == 6);
        if impairable && m.rng.chance(loss) {
            m.counters.dropped_in += 1;
            return;
        }
        if let Some(d) = c.handle_datagram(now, src, arrival, data) {
            if !self.on_data(i, d.offset, d.bytes, now) {
                return;
            }
        }
        self.after_input(i, now);
    }

    /// Act on the client's events (join its group, complete, fail).
    fn after_input(&mut self, i: usize, now: Instant) {
        while let Some(ev) = self.members[i].client.as_mut().and_then(|c| c.poll_event()) {
            match ev {
                McEvent::JoinGroup(SocketAddr::V4(g)) => {
                    if !self.subscribe(i, g, now) {
                        return;
                    }
                }
                McEvent::JoinGroup(g) => {
                    return self.fail(i, now, "protocol", format!("IPv6 group {g} named"));
                }
                McEvent::Finished => return self.complete(i, now),
                McEvent::Failed(why) => {
                    let detail = format!("{}: {why}", String::from_utf8_lossy(&self.sh.filename));
                    return self.fail(i, now, classify(&why), detail);
                }
            }
        }
        self.flush(i, now);
    }

    /// A new block: check it, count it, and vanish here if this machine is to. False: vanished.
    fn on_data(&mut self, i: usize, offset: u64, data: &[u8], now: Instant) -> bool {
        let sh = self.sh.clone();
        let m = &mut self.members[i];
        m.first_data.get_or_insert(now);
        if let Some(f) = &sh.expect {
            let end = offset as usize + data.len();
            if f.get(offset as usize..end) != Some(data) && m.mismatch.is_none() {
                m.mismatch = Some(offset);
            }
        }
        m.received += data.len() as u64;
        self.bytes_unreported += data.len() as u64;
        if let Some(len) = sh.len {
            if m.received * 2 >= len && !sh.half.load(Relaxed) {
                sh.half.store(true, Relaxed);
            }
        }
        let master = m.client.as_ref().is_some_and(|c| c.is_master());
        let vanish = m.vanish_at.is_some_and(|v| m.received >= v)
            || (sh.vanish_master
                && master
                && m.received >= m.master_vanish_at
                && !sh.master_gone.swap(true, Relaxed));
        if vanish {
            // Gone without a word: no ACK, no ERROR.
            self.finish(i, now, Outcome::Vanished);
            return false;
        }
        true
    }

    /// Every block is here: send the last ACK, close, and check what came.
    fn complete(&mut self, i: usize, now: Instant) {
        self.flush(i, now);
        let m = &self.members[i];
        let name = String::from_utf8_lossy(&self.sh.filename).into_owned();
        let verdict = match (&self.sh.expect, m.mismatch) {
            (Some(_), Some(off)) => Some((
                "verify-mismatch",
                format!("{name}: content differs from the verify file at byte {off}"),
            )),
            (Some(f), None) if f.len() as u64 != m.received => Some((
                "verify-mismatch",
                format!(
                    "{name}: received {} bytes, verify file has {}",
                    m.received,
                    f.len()
                ),
            )),
            _ => None,
        };
        match verdict {
            Some((reason, detail)) => self.fail(i, now, reason, detail),
            None => self.finish(i, now, Outcome::Completed),
        }
    }

    /// Send what the state machine has to send, through the outbound impairments.
    fn flush(&mut self, i: usize, now: Instant) {
        let ack_loss = self.sh.ack_loss;
        let m = &mut self.members[i];
        let (Some(c), Some(sock)) = (m.client.as_mut(), m.sock.as_ref()) else {
            return;
        };
        while let Some((to, n)) = c
            .poll_transmit(now, &mut self.tx)
            .and_then(Transmit::datagram)
        {
            let pkt = &self.tx[..n];
            if pkt[1] == 4 {
                if m.rng.chance(ack_loss) {
                    m.counters.dropped_acks += 1;
                    continue;
                }
                m.counters.acks_sent += 1;
            }
            let _ = sock.send_to(pkt, to);
        }
    }

    fn fail(&mut self, i: usize, now: Instant, reason: &str, detail: String) {
        self.finish(
            i,
            now,
            Outcome::Failed {
                reason: reason.into(),
                detail,
            },
        );
    }

    fn finish(&mut self, i: usize, now: Instant, outcome: Outcome) {
        self.unsubscribe(i);
        let m = &mut self.members[i];
        if let Some(c) = m.client.take() {
            m.counters.blocks += c.blocks_received();
            m.counters.duplicates += c.duplicates;
            m.counters.requests += c.opens as u64;
            self.stats.opens += c.opens as u64;
            self.stats.master_turns += c.master_turns as u64;
        }
        m.sock = None;
        if matches!(m.state, State::Done(_)) {
            return;
        }
        let live = &self.sh.live;
        match &outcome {
            Outcome::Completed => live.completed.fetch_add(1, Relaxed),
            Outcome::Failed { .. } => live.failed.fetch_add(1, Relaxed),
            Outcome::Vanished => live.vanished.fetch_add(1, Relaxed),
        };
        if m.spec.late && matches!(m.state, State::Waiting) {
            self.late_waiting -= 1;
        }
        m.state = State::Done(outcome);
        m.ended = Some(now);
        self.running -= 1;
    }
}

mod setup;
pub use setup::run;

#[cfg(test)]
mod tests;
