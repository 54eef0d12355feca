//! The unicast storm: many emulated machines multiplexed on one thread, a [`Fleet`] of the load
//! tester's one engine ([`crate::drive`]: ringboot's poller and the core's timer queue).
//!
//! Each machine owns one nonblocking UDP socket at a time, bound to its own 127.x.y.z address and an
//! ephemeral port; a new phase (the real RRQ after a firmware's size probe) opens a new socket, as
//! firmware does. The protocol itself is [`ringboot::proto::tftp::client::Client`]; this module only moves
//! datagrams, injects seeded impairments between the socket and the state machine, checks the bytes
//! and keeps time. There is no thread per client and no sleep: every wait is the engine's timeout computed
//! from the earliest timer (client retransmission, delayed delivery, phase start, arrival).

use crate::dhcp::{DhcpClient, DhcpPort};
use crate::drive::{self, Counters, Fleet, Live, MachineResult, Outcome};
use crate::plan::{Expect, Step};
use dhcp_phase::{dhcp_slot, DhcpPhase};
use ringboot::proto::rng::Rng;
use ringboot::proto::tftp::client::{Client, ClientError, Event};
use ringboot::proto::tftp::packet::ErrorCode;
use ringboot::proto::timer::TimerQueue;
use ringboot::proto::Transmit;
use ringboot::sys::poll::{Event as Ready, Poller};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seeded impairments applied between the sockets and the client state machines.
#[derive(Clone, Debug, Default)]
pub struct Impair {
    /// Fraction of received DATA/OACK dropped before the state machine sees them.
    pub loss: f64,
    /// Fraction of ACKs dropped instead of sent.
    pub ack_loss: f64,
    /// Fraction of received DATA/OACK and of sent ACKs duplicated.
    pub dup: f64,
    /// Fraction of received DATA/OACK held back and delivered after the next one.
    pub reorder: f64,
    /// Extra delivery delay of every received packet.
    pub delay: Duration,
    /// Per-packet processing time of a slow client (iPXE ~2 ms): packets are handled one after another.
    pub slow: Duration,
    /// Fraction of machines that vanish in the middle of their last download.
    pub vanish: f64,
}

/// Everything the threads share.
pub struct Shared {
    pub server: SocketAddr,
    pub impair: Impair,
    pub seed: u64,
    pub t0: Instant,
    pub deadline: Instant,
    pub live: Live,
    /// `--dhcp`: every machine first gets its address and TFTP server ([`crate::dhcp`]).
    pub dhcp: Option<crate::dhcp::Setup>,
}

/// One emulated machine to run.
pub struct MachineSpec {
    pub index: usize,
    pub ip: IpAddr,
    /// Arrival time after `t0`.
    pub start: Duration,
    pub steps: Vec<Step>,
    /// Its DHCP identity when the run has a `--dhcp` phase.
    pub dhcp: Option<crate::dhcp::Spec>,
}

/// A reordered packet is released after the next one, or after this long without a next one.
const REORDER_HOLD: Duration = Duration::from_millis(10);
/// A slow client queues at most this many packets (its socket buffer), then drops.
const SLOW_QUEUE: usize = 256;
pub(crate) use ringboot::sys::recv::MAX_DGRAM;
use ringboot::sys::recv::{recv_icmp_errors, take_queued_error, RecvBatch as RxBatch};
/// Datagrams taken from one socket per `recvmmsg` call.
const RX_BATCH: usize = 8;

/// Errors that say the destination cannot be reached at all (not a passing shortage).
fn unreachable_errno(errno: Option<i32>) -> bool {
    matches!(
        errno,
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EADDRNOTAVAIL)
    )
}

enum Run {
    /// Not started yet.
    Waiting,
    Running,
    Done(Outcome),
}

struct Machine {
    spec: MachineSpec,
    rng: Rng,
    run: Run,
    step: usize,
    phase: usize,
    /// Something came back on this phase's socket (the server is there).
    answered: bool,
    sock: Option<UdpSocket>,
    client: Option<Client>,
    next_phase_at: Option<Instant>,
    /// Received packets waiting for their delivery time (delay / slow client).
    inbound: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
    pool: Vec<Vec<u8>>,
    busy_until: Instant,
    held: Option<(Instant, SocketAddr, Vec<u8>)>,
    // Per step.
    tsize: Option<u64>,
    received: u64,
    hasher: Option<Sha256>,
    mismatch: Option<u64>,
    vanish_at: Option<u64>,
    // Per machine.
    will_vanish: bool,
    vanish_step: usize,
    started: Option<Instant>,
    first_data: Option<Instant>,
    ended: Option<Instant>,
    bytes: u64,
    counters: Counters,
    // The --dhcp phase (a machine of its own, in `Engine::dhcp`): its outcome, and the TFTP
    // server it named.
    dhcp_out: Option<crate::dhcp::Outcome>,
    server: Option<SocketAddr>,
}

impl Machine {
    fn next_wake(&self) -> Option<Instant> {
        let mut t = self.next_phase_at;
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        take(self.client.as_ref().and_then(|c| c.poll_timeout()));
        take(self.inbound.front().map(|p| p.0));
        take(self.held.as_ref().map(|h| h.0));
        t
    }

    fn recycle(&mut self, b: Vec<u8>) {
        if self.pool.len() < 8 {
            self.pool.push(b);
        }
    }

    fn copy_of(&mut self, data: &[u8]) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(data);
        b
    }
}

struct Engine {
    shared: Arc<Shared>,
    machines: Vec<Machine>,
    timers: TimerQueue<u32>,
    poller: Poller,
    /// The receive batch, reused (taken while a machine reads).
    rx: Option<RxBatch>,
    tx: Vec<u8>,
    running: usize,
    bytes_unreported: u64,
    /// The DHCP machines (`--dhcp`).
    dhcp: Option<DhcpPhase>,
}

/// The epoll token of the DHCP sockets (machines use their slot).
const DHCP_TOKEN: u64 = u64::MAX;

/// Run `specs` to the end (or the deadline) on the calling thread.
pub fn run_thread(shared: Arc<Shared>, mut specs: Vec<MachineSpec>) -> Vec<MachineResult> {
    specs.sort_by_key(|s| s.start);
    let poller = Poller::new().unwrap_or_else(|e| panic!("epoll_create1: {e}"));
    let now = Instant::now();
    let machines = specs
        .into_iter()
        .map(|spec| {
            let mut rng = Rng::derive(shared.seed, spec.index as u64);
            let will_vanish = rng.chance(shared.impair.vanish);
            let vanish_step = spec.steps.iter().rposition(|s| !s.miss).unwrap_or(0);
            Machine {
                rng,
                run: Run::Waiting,
                step: 0,
                phase: 0,
                sock: None,
                answered: false,
                client: None,
                next_phase_at: Some(shared.t0 + spec.start),
                inbound: VecDeque::new(),
                pool: Vec::new(),
                busy_until: now,
                held: None,
                tsize: None,
                received: 0,
                hasher: None,
                mismatch: None,
                vanish_at: None,
                will_vanish,
                vanish_step,
                started: None,
                first_data: None,
                ended: None,
                bytes: 0,
                counters: Counters::default(),
                dhcp_out: None,
                server: None,
                spec,
            }
        })
        .collect::<Vec<_>>();
    let mut e = Engine {
        running: machines.len(),
        shared,
        machines,
        timers: TimerQueue::new(),
        poller,
        rx: Some(RxBatch::new(RX_BATCH)),
        tx: vec![0u8; 2048],
        bytes_unreported: 0,
        dhcp: None,
    };
    if let Some(setup) = e.shared.dhcp.clone() {
        e.dhcp = Some(DhcpPhase::open(setup, &e.machines, &e.poller, DHCP_TOKEN));
    }
    for i in 0..e.machines.len() {
        e.rearm(i);
    }
    drive::run(&mut e, 1024);
    let t0 = e.shared.t0;
    let end = Instant::now();
    e.machines
        .into_iter()
        .map(|m| MachineResult {
            bytes: m.bytes,
            counters: m.counters,
            dhcp: m.dhcp_out,
            ..MachineResult::at_end(
                m.spec.index,
                match m.run {
                    Run::Done(o) => Some(o),
                    _ => None,
                },
                [m.started, m.first_data, m.ended],
                (t0, end),
            )
        })
        .collect()
}

fn classify(err: &ClientError) -> (String, String) {
    match err {
        ClientError::TimedOut => ("timeout".into(), err.to_string()),
        ClientError::Server { code, .. } => {
            (format!("server-error-{}", code.as_u16()), err.to_string())
        }
        ClientError::BadOack(_) => ("bad-oack".into(), err.to_string()),
        ClientError::Protocol(_) => ("protocol".into(), err.to_string()),
    }
}

impl Fleet for Engine {
    drive::fleet_common!(shared);

    fn on_ready(&mut self, ev: Ready, now: Instant) {
        if ev.token == DHCP_TOKEN {
            self.on_dhcp_readable(now);
            return;
        }
        let i = ev.token as usize;
        if ev.error {
            self.on_socket_error(i, now);
        }
        let mut rx = self.rx.take().unwrap_or_else(|| RxBatch::new(RX_BATCH));
        self.on_readable(i, &mut rx, now);
        self.rx = Some(rx);
        self.rearm(i);
    }

    fn report_bytes(&mut self) {
        Engine::report_bytes(self)
    }
}

impl Engine {
    fn report_bytes(&mut self) {
        if self.bytes_unreported > 0 {
            self.shared
                .live
                .bytes
                .fetch_add(self.bytes_unreported, Relaxed);
            self.bytes_unreported = 0;
        }
    }

    fn stop_all(&mut self, now: Instant) {
        let verdict = self.shared.live.server.verdict.lock().unwrap().clone();
        for i in 0..self.machines.len() {
            if !matches!(self.machines[i].run, Run::Done(_)) {
                let detail = match self.machines[i].run {
                    Run::Waiting => "not started before the deadline",
                    _ => "still running at the deadline",
                };
                let (reason, detail) = match &verdict {
                    Some(v) => ("no-server", format!("stopped early: {v}")),
                    None => ("deadline", detail.to_string()),
                };
                self.finish(
                    i,
                    now,
                    Outcome::Failed {
                        reason: reason.into(),
                        detail,
                    },
                );
            }
        }
    }

    /// Arm the machine's timer at its earliest wake-up (or disarm it). A DHCP machine's key
    /// ([`dhcp_slot`]) is armed where its exchange goes on.
    fn rearm(&mut self, i: usize) {
        if dhcp_slot(i).is_some() {
            return;
        }
        match self.machines[i].next_wake() {
            Some(t) => self.timers.arm(i as u32, t),
            None => self.timers.cancel(i as u32),
        }
    }

    /// Everything due for machine `i` at `now` (or for the DHCP machine of a [`dhcp_slot`]).
    fn service(&mut self, i: usize, now: Instant) {
        if let Some(j) = dhcp_slot(i) {
            return self.dhcp_timer(j, now);
        }
        if self.machines[i].next_phase_at.is_some_and(|t| t <= now) {
            self.start_phase(i, now);
        }
        if self.machines[i].held.as_ref().is_some_and(|h| h.0 <= now) {
            let (_, src, b) = self.machines[i].held.take().unwrap();
            self.deliver(i, src, &b, now);
            self.machines[i].recycle(b);
        }
        while self.machines[i].inbound.front().is_some_and(|p| p.0 <= now) {
            let (_, src, b) = self.machines[i].inbound.pop_front().unwrap();
            self.feed(i, src, &b, now);
            self.machines[i].recycle(b);
        }
        let m = &mut self.machines[i];
        if let Some(c) = m.client.as_mut() {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
                self.after_input(i, now);
            }
        }
    }

    fn start_phase(&mut self, i: usize, now: Instant) {
        let m = &mut self.machines[i];
        m.next_phase_at = None;
        if matches!(m.run, Run::Done(_)) {
            return;
        }
        if matches!(m.run, Run::Waiting) {
            m.run = Run::Running;
            m.started = Some(now);
            self.shared.live.started.fetch_add(1, Relaxed);
        }
        if m.spec.dhcp.is_some() && m.dhcp_out.is_none() {
            return self.start_dhcp(i, now);
        }
        let step = &m.spec.steps[m.step];
        if m.phase == 0 {
            m.tsize = None;
            m.received = 0;
            m.mismatch = None;
            m.vanish_at = None;
            m.hasher = matches!(step.expect, Expect::Sha256(_)).then(Sha256::new);
        }
        let cfg = step.phases[m.phase].cfg.clone();
        let sock = match UdpSocket::bind(SocketAddr::new(m.spec.ip, 0)) {
            Ok(s) => s,
            Err(e) => {
                let detail = format!("cannot bind a UDP socket to {}: {e}", m.spec.ip);
                return self.finish(
                    i,
                    now,
                    Outcome::Failed {
                        reason: "socket".into(),
                        detail,
                    },
                );
            }
        };
        let _ = sock.set_nonblocking(true);
        recv_icmp_errors(&sock);
        if let Err(e) = self.poller.add(sock.as_raw_fd(), i as u64) {
            let detail = format!("epoll_ctl: {e}");
            return self.finish(
                i,
                now,
                Outcome::Failed {
                    reason: "socket".into(),
                    detail,
                },
            );
        }
        m.sock = Some(sock);
        m.answered = false;
        let server = m.server.unwrap_or(self.shared.server);
        m.client = Some(Client::new(server, &step.filename, cfg, now));
        m.busy_until = now;
        m.counters.requests += 1;
        let us = now.saturating_duration_since(self.shared.t0).as_micros() as u64 + 1;
        let first = &self.shared.live.server.first_request_us;
        if first.load(Relaxed) == 0 {
            let _ = first.compare_exchange(0, us, Relaxed, Relaxed);
        }
        self.flush(i, now);
    }

    fn on_readable(&mut self, i: usize, rx: &mut RxBatch, now: Instant) {
        // Bounded: a socket that keeps being readable yields after a few batches.
        for _ in 0..8 {
            let Some(fd) = self.machines[i].sock.as_ref().map(|s| s.as_raw_fd()) else {
                return;
            };
            let n = match rx.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // WouldBlock: drained. ICMP errors and the like: the retransmission timer deals
                // with silence.
                Err(_) => return,
            };
            for k in 0..n {
                let (data, src) = rx.get(k);
                if let Some(src) = src {
                    self.on_datagram(i, data, src, now);
                }
                if self.machines[i].sock.is_none() {
                    // The phase ended: what is left belonged to the closed port.
                    return;
                }
            }
            if n < RX_BATCH {
                return;
            }
        }
    }

    fn on_datagram(&mut self, i: usize, data: &[u8], src: SocketAddr, now: Instant) {
        let m = &mut self.machines[i];
        if m.client.is_none() {
            return;
        }
        // The first answer of this phase: the server is there (the client itself answers a
        // stranger port with ERROR 5 and counts it).
        if !m.answered {
            m.answered = true;
            self.shared.live.server.answered.fetch_add(1, Relaxed);
        }
        let imp = &self.shared.impair;
        // DATA (3) and OACK (6) are what a lossy link loses and what the server resends.
        let impairable = data.len() >= 2 && data[0] == 0 && (data[1] == 3 || data[1] == 6);
        if impairable && m.rng.chance(imp.loss) {
            m.counters.dropped_in += 1;
            return;
        }
        let copies = if impairable && m.rng.chance(imp.dup) {
            m.counters.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let m = &mut self.machines[i];
            if impairable && m.held.is_none() && m.rng.chance(self.shared.impair.reorder) {
                m.counters.reordered += 1;
                let b = m.copy_of(data);
                m.held = Some((now + REORDER_HOLD, src, b));
                continue;
            }
            self.deliver(i, src, data, now);
            if let Some((_, src, b)) = self.machines[i].held.take() {
                self.deliver(i, src, &b, now);
                self.machines[i].recycle(b);
            }
        }
    }

    /// Hand a packet to the state machine now, or queue it for a delayed or slow client.
    fn deliver(&mut self, i: usize, src: SocketAddr, data: &[u8], now: Instant) {
        let imp = &self.shared.impair;
        if imp.delay.is_zero() && imp.slow.is_zero() {
            return self.feed(i, src, data, now);
        }
        let (delay, slow) = (imp.delay, imp.slow);
        let m = &mut self.machines[i];
        if m.inbound.len() >= SLOW_QUEUE {
            m.counters.overflow += 1;
            return;
        }
        let due = (now + delay).max(m.busy_until) + slow;
        m.busy_until = due;
        let b = m.copy_of(data);
        m.inbound.push_back((due, src, b));
    }

    /// Feed one datagram to the state machine and act on what it says.
    fn feed(&mut self, i: usize, src: SocketAddr, data: &[u8], now: Instant) {
        let Some(c) = self.machines[i].client.as_mut() else {
            return;
        };
        if let Some(d) = c.handle_datagram(now, src, data) {
            if !self.on_data(i, d.offset, d.bytes, now) {
                return;
            }
        }
        self.after_input(i, now);
    }

    /// After an input: act on the client's events, then send what it has to send.
    fn after_input(&mut self, i: usize, now: Instant) {
        while let Some(ev) = self.machines[i]
            .client
            .as_mut()
            .and_then(|c| c.poll_event())
        {
            self.on_event(i, ev, now);
        }
        self.flush(i, now);
    }

    /// In-order payload: check it and count it; vanish here if this machine is to. False: it
    /// vanished.
    fn on_data(&mut self, i: usize, offset: u64, data: &[u8], now: Instant) -> bool {
        let m = &mut self.machines[i];
        m.first_data.get_or_insert(now);
        let step = &m.spec.steps[m.step];
        if offset != m.received && m.mismatch.is_none() {
            m.mismatch = Some(offset);
        }
        match &step.expect {
            Expect::Bytes(file) => {
                let end = offset as usize + data.len();
                let same = file.get(offset as usize..end).is_some_and(|f| f == data);
                if !same && m.mismatch.is_none() {
                    m.mismatch = Some(offset);
                }
            }
            Expect::Sha256(_) => {
                if let Some(h) = m.hasher.as_mut() {
                    h.update(data);
                }
            }
            Expect::Unchecked => {}
        }
        let len = data.len() as u64;
        m.received += len;
        m.bytes += len;
        self.bytes_unreported += len;
        if m.will_vanish && m.step == m.vanish_step && m.phase + 1 == step.phases.len() {
            let total = match &step.expect {
                Expect::Bytes(f) => Some(f.len() as u64),
                _ => m.tsize,
            }
            .unwrap_or(1 << 20)
            .max(2);
            let at = *m.vanish_at.get_or_insert_with(|| m.rng.range(1, total - 1));
            if m.received >= at {
                // Gone without a word: no final ACK, no ERROR.
                self.finish(i, now, Outcome::Vanished);
                return false;
            }
        }
        true
    }

    fn on_event(&mut self, i: usize, ev: Event, now: Instant) {
        match ev {
            Event::Finished => self.transfer_done(i, now),
            Event::ProbeDone { tsize } => {
                self.flush(i, now);
                let m = &mut self.machines[i];
                m.tsize = tsize;
                self.close(i);
                let m = &mut self.machines[i];
                let step = &m.spec.steps[m.step];
                if m.phase + 1 >= step.phases.len() {
                    // A probe-only step: done.
                    return self.step_ok(i, now);
                }
                m.phase += 1;
                let (lo, hi) = step.phases[m.phase].gap_ms;
                let gap = m.rng.range(lo, hi);
                m.next_phase_at = Some(now + Duration::from_millis(gap));
            }
            Event::Failed(err) => {
                self.flush(i, now);
                self.close(i);
                let m = &mut self.machines[i];
                let miss = m.spec.steps[m.step].miss;
                if miss
                    && matches!(
                        &err,
                        ClientError::Server {
                            code: ErrorCode::FileNotFound,
                            ..
                        }
                    )
                {
                    m.counters.misses += 1;
                    return self.step_ok(i, now);
                }
                let (reason, detail) = classify(&err);
                let name = String::from_utf8_lossy(&m.spec.steps[m.step].filename).into_owned();
                let detail = format!("{name}: {detail}");
                self.finish(i, now, Outcome::Failed { reason, detail });
            }
        }
    }

    /// The last block arrived: send the final ACK, close, and check what came.
    fn transfer_done(&mut self, i: usize, now: Instant) {
        self.flush(i, now);
        // Firmware closes its port at once after the final ACK, and so do we.
        let tsize_oack = self.machines[i].client.as_ref().and_then(|c| c.tsize());
        self.close(i);
        let m = &mut self.machines[i];
        let step = &m.spec.steps[m.step];
        let name = String::from_utf8_lossy(&step.filename).into_owned();
        let fail = |reason: &str, detail: String| Outcome::Failed {
            reason: reason.into(),
            detail: format!("{name}: {detail}"),
        };
        let verdict = if step.miss {
            Some(fail(
                "unexpected-hit",
                "expected 'file not found', got the file".into(),
            ))
        } else if let Some(t) = m.tsize.or(tsize_oack).filter(|&t| t != m.received) {
            Some(fail(
                "length-mismatch",
                format!("received {} bytes, tsize said {t}", m.received),
            ))
        } else {
            match &step.expect {
                Expect::Bytes(f) if m.mismatch.is_some() || f.len() as u64 != m.received => {
                    let detail = match m.mismatch {
                        Some(off) => format!("content differs from the verify file at byte {off}"),
                        None => {
                            format!("received {} bytes, verify file has {}", m.received, f.len())
                        }
                    };
                    Some(fail("verify-mismatch", detail))
                }
                Expect::Sha256(d) => {
                    let got = m.hasher.take().map(|h| h.finalize());
                    if got.as_ref().map(|g| g.as_slice()) != Some(&d[..]) || m.mismatch.is_some() {
                        Some(fail(
                            "sha256-mismatch",
                            "SHA-256 differs from the manifest".into(),
                        ))
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        match verdict {
            Some(o) => self.finish(i, now, o),
            None => self.step_ok(i, now),
        }
    }

    fn step_ok(&mut self, i: usize, now: Instant) {
        let m = &mut self.machines[i];
        m.step += 1;
        m.phase = 0;
        if m.step >= m.spec.steps.len() {
            return self.finish(i, now, Outcome::Completed);
        }
        m.next_phase_at = Some(now);
    }

    /// Send whatever the state machine has to send, through the outbound impairments.
    fn flush(&mut self, i: usize, now: Instant) {
        let imp = &self.shared.impair;
        let m = &mut self.machines[i];
        let (Some(c), Some(sock)) = (m.client.as_mut(), m.sock.as_ref()) else {
            return;
        };
        let mut send_error = None;
        let mut last_dest = None;
        while let Some((dest, n)) = c
            .poll_transmit(now, &mut self.tx)
            .and_then(Transmit::datagram)
        {
            last_dest = Some(dest);
            let pkt = &self.tx[..n];
            let is_ack = pkt[1] == 4;
            if is_ack && m.rng.chance(imp.ack_loss) {
                m.counters.dropped_acks += 1;
                continue;
            }
            if let Err(e) = sock.send_to(pkt, dest) {
                if !m.answered && send_error.is_none() {
                    send_error = Some(e);
                }
            }
            if is_ack && m.rng.chance(imp.dup) {
                m.counters.duplicated += 1;
                let _ = sock.send_to(pkt, dest);
            }
        }
        if let (Some(e), Some(dest)) = (
            send_error.filter(|e| unreachable_errno(e.raw_os_error())),
            last_dest,
        ) {
            self.unreachable(i, now, format!("{dest}: {e} (sending the request)"));
        }
    }

    /// Machine `i`'s socket has an error queued: read the queue (so epoll stops reporting it)
    /// and, when it says that the request port of the server is unreachable before anything came
    /// back, fail the machine at once instead of letting it retry for half a minute.
    fn on_socket_error(&mut self, i: usize, now: Instant) {
        let m = &self.machines[i];
        let Some(fd) = m.sock.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        let asked = m.server.unwrap_or(self.shared.server);
        let waiting = m.client.is_some() && !m.answered;
        let mut hit = None;
        // Bounded: a socket queues at most a few errors between two polls.
        for _ in 0..16 {
            let Some((errno, dest)) = take_queued_error(fd) else {
                break;
            };
            if hit.is_none() && waiting && dest == Some(asked) && unreachable_errno(Some(errno)) {
                hit = Some(errno);
            }
        }
        if let Some(errno) = hit {
            let why = match errno {
                libc::ECONNREFUSED => "ICMP port unreachable: nothing listens on that port",
                libc::EHOSTUNREACH => "ICMP host unreachable",
                _ => "ICMP network unreachable",
            };
            self.unreachable(i, now, format!("{asked}: {why}"));
        }
    }

    /// The server cannot be reached: fail machine `i` (reason `unreachable`) and count it for
    /// the absent-server check.
    fn unreachable(&mut self, i: usize, now: Instant, detail: String) {
        self.shared.live.server.unreachable.fetch_add(1, Relaxed);
        let m = &self.machines[i];
        let name = String::from_utf8_lossy(&m.spec.steps[m.step].filename).into_owned();
        let outcome = Outcome::Failed {
            reason: "unreachable".into(),
            detail: format!("{name}: {detail}"),
        };
        self.finish(i, now, outcome);
    }

    /// Close the current phase's socket (epoll forgets it with the fd) and keep the client's counters.
    fn close(&mut self, i: usize) {
        let m = &mut self.machines[i];
        m.counters_from_client();
        m.client = None;
        m.sock = None;
        m.inbound.clear();
        m.held = None;
    }

    fn finish(&mut self, i: usize, now: Instant, outcome: Outcome) {
        self.close(i);
        if let Some(p) = self.dhcp.as_mut() {
            p.forget(i);
            self.timers.cancel((dhcp_phase::DHCP_KEY | i) as u32);
        }
        let m = &mut self.machines[i];
        if matches!(m.run, Run::Done(_)) {
            return;
        }
        m.next_phase_at = None;
        let live = &self.shared.live;
        match &outcome {
            Outcome::Completed => live.completed.fetch_add(1, Relaxed),
            Outcome::Failed { .. } => live.failed.fetch_add(1, Relaxed),
            Outcome::Vanished => live.vanished.fetch_add(1, Relaxed),
        };
        m.run = Run::Done(outcome);
        m.ended = Some(now);
        self.running -= 1;
    }
}

impl Machine {
    /// Move the state machine's counters into the machine's (once per client).
    fn counters_from_client(&mut self) {
        if let Some(c) = self.client.as_mut() {
            let s = std::mem::take(&mut c.stats);
            self.counters.foreign += s.foreign;
            self.counters.blocks += s.data_received;
            self.counters.duplicates += s.duplicates;
            self.counters.out_of_order += s.out_of_order;
            self.counters.acks_sent += s.acks_sent;
            self.counters.timeouts += s.timeouts as u64;
        }
    }
}

/// The `--dhcp` phase: DHCP machines of their own on this engine, sharing this thread's
/// [`DhcpPort`]; a machine starts its TFTP steps, to the server the answer named, once its DHCP
/// machine has a lease.
mod dhcp_phase;
