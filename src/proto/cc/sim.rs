//! A simulated bottleneck on virtual time, for the controller's tests: a FIFO queue of a fixed
//! number of frames drained at a fixed rate (a switch port, or `tc tbf`), the same one-way delay
//! both ways, and many flows that behave like TFTP transfers: a server side that sends windows
//! through [`FlowCc::poll_send`] and reacts like `proto::tftp::transfer` (go-back-N from a gap ACK, a
//! one-block tail-loss probe at the first expiry, a full resend with backoff at the next), and a
//! client side that behaves like EDK2 (ACK after a full window, re-ACK the last in-order block at
//! once on a gap or a duplicate). ACKs are never lost (the reverse path is idle).
//!
//! Deterministic: one event queue (the engine's [`TimerQueue`], ordered by time, then arming order), a seeded generator for
//! start jitter and driver wake-up lateness. (When `proto::sim` lands, its clock and PRNG replace
//! [`super::tests::epoch`] and [`Lcg`]; the queue and the flows stay here.)

use super::gap::{AckAction, GapCheck};
use super::probe::{eifel_response, ProbeCheck, Verdict};
use super::{wire_bytes, AckSample, FlowCc, Grant, LinkCc, LinkConfig, Rate};
use crate::proto::sim::jain;
use crate::proto::timer::TimerQueue;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A tiny seeded generator (numerical recipes LCG, high bits).
pub(crate) struct Lcg(u64);

impl Lcg {
    pub(crate) fn new(seed: u64) -> Self {
        Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// The bottleneck and the run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NetConfig {
    /// Drain rate of the queue, wire bytes per second.
    pub rate: Rate,
    /// Frames the queue holds (the one on the wire included).
    pub queue: usize,
    /// One-way delay, each way.
    pub delay: Duration,
    /// Driver timers fire up to this much late (uniform), like a busy event loop.
    pub timer_slack: Duration,
    /// Flows start within this much of their nominal start (uniform).
    pub start_jitter: Duration,
    /// Run the controller (false: send every window at once, as the server does today).
    pub controlled: bool,
    pub cap: Option<Rate>,
    pub seed: u64,
    /// The sender goes back at once on an ACK inside its window and ignores duplicate ACKs, as
    /// `proto::tftp::transfer` does today; false: it follows [`GapCheck`] (what the integration does).
    pub literal_gaps: bool,
}

impl NetConfig {
    pub(crate) fn new(mbit: u64, queue: usize) -> Self {
        NetConfig {
            rate: Rate::from_bits_per_sec(mbit * 1_000_000),
            queue,
            delay: Duration::from_micros(25),
            timer_slack: Duration::ZERO,
            start_jitter: Duration::from_millis(2),
            controlled: true,
            cap: None,
            seed: 1,
            literal_gaps: false,
        }
    }
}

/// One flow of the run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlowSpec {
    pub window: u64,
    pub blksize: u64,
    /// Blocks in the file.
    pub blocks: u64,
    pub start: Duration,
    /// Leaves (stops, as a client that is done with it) at this time, if not finished.
    pub stop: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// The frame at the head of the queue has left the link.
    Depart,
    /// DATA `block` of `flow` reaches its client.
    ClientRx {
        flow: usize,
        block: u64,
    },
    /// ACK `block` of `flow` reaches the server.
    ServerAck {
        flow: usize,
        block: u64,
    },
    /// The server's timer of `flow` (generation `gen`).
    Wake {
        flow: usize,
        gen: u64,
    },
    Start {
        flow: usize,
    },
    Stop {
        flow: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Nothing,
    /// Blocks `cursor ..= end` of the current window remain to be sent.
    Window,
    /// The tail-loss probe (block `sent_hi`) waits for its grant.
    Probe,
}

struct Flow {
    spec: FlowSpec,
    cc: FlowCc,
    probe: ProbeCheck,
    block_bytes: u64,
    // server
    acked: u64,
    sent_hi: u64,
    cursor: u64,
    end: u64,
    pending: Pending,
    win_start: u64,
    win_sent_at: Option<Instant>,
    /// When the first block of the current window went.
    win_first_at: Option<Instant>,
    gap: GapCheck,
    realigns: u64,
    last_send_at: Option<Instant>,
    /// The first block this window sends for the first time: an ACK of it or later, with no
    /// probe since, is a clean round-trip sample (Karn's rule, per block).
    first_new: u64,
    probed: bool,
    backoff: u32,
    srtt: Option<Duration>,
    rttvar: Duration,
    deadline: Option<Instant>,
    gen: u64,
    running: bool,
    // client
    expected: u64,
    since_ack: u64,
    // results
    sent: u64,
    resent: u64,
    started_at: Option<Instant>,
    done_at: Option<Instant>,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outcome {
    /// Goodput (in-order wire bytes at the clients) per measured interval, as a share of the link.
    pub goodput: Vec<f64>,
    /// Per flow, in-order wire bytes delivered inside each interval.
    pub per_flow: Vec<Vec<u64>>,
    /// Resent blocks / blocks delivered in order, whole run.
    pub resent_share: f64,
    /// The same, per measured interval (resends sent inside it / deliveries inside it).
    pub resent_in: Vec<f64>,
    pub dropped: u64,
    pub completed: usize,
    pub spurious_probes: u64,
    /// ACKs inside a window taken as re-alignments (see [`GapCheck`]).
    pub realigns: u64,
    pub genuine_probes: u64,
    pub link_waits: u64,
    pub congestion_events: u64,
    pub delay_cuts: u64,
    /// Completion time of each finished flow.
    pub durations: Vec<Duration>,
}

impl Outcome {
    /// Jain's fairness index of the flows' deliveries in interval `i`, over the flows that
    /// delivered anything in it.
    pub(crate) fn jain(&self, i: usize) -> f64 {
        jain(
            self.per_flow
                .iter()
                .map(|f| f[i] as f64)
                .filter(|&x| x > 0.0),
        )
    }
}

pub(crate) struct Sim {
    cfg: NetConfig,
    t0: Instant,
    now: Instant,
    /// Pending events: the timer queue orders their slots by (instant, arming order); a slot's
    /// event is in `slots`, and freed slots are reused.
    events: TimerQueue<usize>,
    slots: Vec<Option<Ev>>,
    free: Vec<usize>,
    queue: VecDeque<(usize, u64)>,
    link: LinkCc,
    flows: Vec<Flow>,
    rng: Lcg,
    dropped: u64,
    /// Interval boundaries (offsets from t0) and, per flow, in-order bytes per interval.
    bounds: Vec<Duration>,
    delivered: Vec<Vec<u64>>,
    /// Resent blocks per interval.
    resent_in: Vec<u64>,
    /// Clean round-trip samples taken (for the trace).
    clean_samples: u64,
}

const MIN_RTO: Duration = Duration::from_millis(2);
const MAX_RTO: Duration = Duration::from_secs(3);
const PTO_FLOOR: Duration = Duration::from_micros(250);
const INITIAL_RTO: Duration = Duration::from_secs(1);

impl Sim {
    pub(crate) fn new(cfg: NetConfig, specs: &[FlowSpec], bounds: &[Duration]) -> Sim {
        let t0 = super::tests::epoch();
        let mut rng = Lcg::new(cfg.seed);
        let mut sim = Sim {
            cfg,
            t0,
            now: t0,
            events: TimerQueue::new(),
            slots: Vec::new(),
            free: Vec::new(),
            queue: VecDeque::new(),
            link: LinkCc::new(LinkConfig {
                cap: cfg.cap,
                ..LinkConfig::default()
            }),
            flows: Vec::with_capacity(specs.len()),
            rng: Lcg::new(cfg.seed ^ 0x5555),
            dropped: 0,
            bounds: bounds.to_vec(),
            delivered: vec![vec![0; bounds.len().saturating_sub(1)]; specs.len()],
            resent_in: vec![0; bounds.len().saturating_sub(1)],
            clean_samples: 0,
        };
        for (i, s) in specs.iter().enumerate() {
            let jitter = Duration::from_nanos(rng.below(cfg.start_jitter.as_nanos() as u64 + 1));
            sim.flows.push(Flow {
                spec: *s,
                cc: FlowCc::new(),
                probe: ProbeCheck::new(),
                block_bytes: wire_bytes(4 + s.blksize as usize, false),
                acked: 0,
                sent_hi: 0,
                cursor: 1,
                end: 0,
                pending: Pending::Nothing,
                win_start: 1,
                win_sent_at: None,
                win_first_at: None,
                gap: GapCheck::new(),
                realigns: 0,
                last_send_at: None,
                first_new: 1,
                probed: false,
                backoff: 0,
                // As measured by the OACK and its ACK 0 (the transfer takes that sample).
                srtt: Some(cfg.delay * 2 + Duration::from_micros(10)),
                rttvar: cfg.delay + Duration::from_micros(5),
                deadline: None,
                gen: 0,
                running: false,
                expected: 1,
                since_ack: 0,
                sent: 0,
                resent: 0,
                started_at: None,
                done_at: None,
            });
            sim.at(t0 + s.start + jitter, Ev::Start { flow: i });
            if let Some(stop) = s.stop {
                sim.at(t0 + stop, Ev::Stop { flow: i });
            }
        }
        sim
    }

    fn at(&mut self, t: Instant, ev: Ev) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(ev);
                i
            }
            None => {
                self.slots.push(Some(ev));
                self.slots.len() - 1
            }
        };
        self.events.arm(slot, t);
    }

    /// The earliest pending event (the first armed among equals).
    fn next_event(&mut self) -> Option<(Instant, Ev)> {
        let t = self.events.next_deadline()?;
        let slot = self.events.pop_expired(t)?;
        self.free.push(slot);
        Some((t, self.slots[slot].take()?))
    }

    /// Run until `end` (offset from the start) or until nothing is left to do.
    pub(crate) fn run(mut self, end: Duration) -> Outcome {
        let end = self.t0 + end;
        let trace = std::env::var_os("CC_SIM_TRACE").is_some();
        let watch: Option<usize> = std::env::var("CC_SIM_FLOW")
            .ok()
            .and_then(|v| v.parse().ok());
        let mut next_trace = self.t0;
        let (mut last_sent, mut last_resent, mut last_drop, mut last_del) =
            (0u64, 0u64, 0u64, 0u64);
        while let Some((t, ev)) = self.next_event() {
            if t > end {
                break;
            }
            self.now = t;
            if let Some(w) = watch {
                let hit = match ev {
                    Ev::ClientRx { flow, .. }
                    | Ev::ServerAck { flow, .. }
                    | Ev::Wake { flow, .. } => flow == w,
                    _ => false,
                };
                if hit {
                    let f = &self.flows[w];
                    eprintln!(
                        "  {:>9.3} ms {:?} acked {} sent_hi {} cursor {} end {} pending {:?} probed {} backoff {} srtt {:?} gen {} dl {:?}",
                        (t - self.t0).as_secs_f64() * 1e3, ev, f.acked, f.sent_hi, f.cursor, f.end, f.pending, f.probed, f.backoff, f.srtt, f.gen,
                        f.deadline.map(|d| (d - self.t0).as_secs_f64() * 1e3)
                    );
                }
            }
            if trace && t >= next_trace {
                let sent: u64 = self.flows.iter().map(|f| f.sent).sum();
                let resent: u64 = self.flows.iter().map(|f| f.resent).sum();
                let del: u64 = self.flows.iter().map(|f| f.expected - 1).sum();
                let to: u32 = self.flows.iter().map(|f| f.backoff).max().unwrap_or(0);
                eprintln!(
                    "{:>7.1} ms clean {:>5} tgt {:?} est {:>14} rate {:>14} act {:>3} sent {:>6} resent {:>5} drop {:>5} deliv {:>6} q {:>3} maxbackoff {} minrtt {:?}",
                    (t - self.t0).as_secs_f64() * 1e3,
                    self.clean_samples,
                    self.link.delay_target(),
                    self.link.estimate().map_or("open".into(), |r| r.to_string()),
                    self.link.pacing_rate().map_or("-".into(), |r| r.to_string()),
                    self.link.active_flows(),
                    sent - last_sent,
                    resent - last_resent,
                    self.dropped - last_drop,
                    del - last_del,
                    self.queue.len(),
                    to,
                    self.link.min_rtt(),
                );
                (last_sent, last_resent, last_drop, last_del) = (sent, resent, self.dropped, del);
                next_trace = t + Duration::from_millis(20);
            }
            match ev {
                Ev::Depart => self.depart(),
                Ev::ClientRx { flow, block } => self.client_rx(flow, block),
                Ev::ServerAck { flow, block } => self.server_ack(flow, block),
                Ev::Wake { flow, gen } => self.wake(flow, gen),
                Ev::Start { flow } => self.start(flow),
                Ev::Stop { flow } => self.flows[flow].running = false,
            }
        }
        self.outcome()
    }

    fn outcome(&self) -> Outcome {
        let n = self.bounds.len().saturating_sub(1);
        let mut goodput = vec![0.0; n];
        for (i, g) in goodput.iter_mut().enumerate() {
            let span = self.bounds[i + 1] - self.bounds[i];
            let cap = self.cfg.cap.unwrap_or(self.cfg.rate).min(self.cfg.rate);
            let total: u64 = self.delivered.iter().map(|f| f[i]).sum();
            *g = total as f64 / cap.bytes_in(span) as f64;
        }
        let resent: u64 = self.flows.iter().map(|f| f.resent).sum();
        let resent_in: Vec<f64> = (0..n)
            .map(|i| {
                let blocks: u64 = self
                    .flows
                    .iter()
                    .zip(&self.delivered)
                    .map(|(f, d)| d[i] / f.block_bytes)
                    .sum();
                self.resent_in[i] as f64 / blocks.max(1) as f64
            })
            .collect();
        let delivered: u64 = self.flows.iter().map(|f| f.expected - 1).sum();
        let (mut sp, mut ge) = (0, 0);
        for f in &self.flows {
            let (s, g) = f.probe.counts();
            sp += s;
            ge += g;
        }
        Outcome {
            goodput,
            per_flow: self.delivered.clone(),
            resent_share: resent as f64 / delivered.max(1) as f64,
            resent_in,
            dropped: self.dropped,
            completed: self.flows.iter().filter(|f| f.done_at.is_some()).count(),
            spurious_probes: sp,
            realigns: self.flows.iter().map(|f| f.realigns).sum(),
            genuine_probes: ge,
            link_waits: self.link.stats().waits,
            congestion_events: self.link.stats().congestion_events,
            delay_cuts: self.link.stats().delay_cuts,
            durations: self
                .flows
                .iter()
                .filter_map(|f| Some(f.done_at? - f.started_at?))
                .collect(),
        }
    }

    // --- the bottleneck -----------------------------------------------------------------------

    fn enqueue(&mut self, flow: usize, block: u64) {
        if self.queue.len() >= self.cfg.queue {
            self.dropped += 1;
            return;
        }
        self.queue.push_back((flow, block));
        if self.queue.len() == 1 {
            let t = self.now + self.cfg.rate.time_for(self.flows[flow].block_bytes);
            self.at(t, Ev::Depart);
        }
    }

    fn depart(&mut self) {
        let Some((flow, block)) = self.queue.pop_front() else {
            return;
        };
        self.at(self.now + self.cfg.delay, Ev::ClientRx { flow, block });
        if let Some(&(f, _)) = self.queue.front() {
            let t = self.now + self.cfg.rate.time_for(self.flows[f].block_bytes);
            self.at(t, Ev::Depart);
        }
    }

    // --- the client (EDK2-like) ---------------------------------------------------------------

    fn client_rx(&mut self, i: usize, block: u64) {
        let now = self.now;
        let f = &mut self.flows[i];
        if f.done_at.is_some() {
            return;
        }
        let ack = if block == f.expected {
            f.expected += 1;
            f.since_ack += 1;
            // Account the delivery to its interval.
            let off = now - self.t0;
            if let Some(k) = self
                .bounds
                .windows(2)
                .position(|w| off >= w[0] && off < w[1])
            {
                self.delivered[i][k] += f.block_bytes;
            }
            if block == f.spec.blocks || f.since_ack >= f.spec.window {
                f.since_ack = 0;
                Some(block)
            } else {
                None
            }
        } else {
            f.since_ack = 0;
            Some(f.expected - 1)
        };
        if let Some(b) = ack {
            self.at(now + self.cfg.delay, Ev::ServerAck { flow: i, block: b });
        }
    }

    // --- the server (like proto::tftp::transfer) ----------------------------------------------------

    fn start(&mut self, i: usize) {
        let now = self.now;
        let f = &mut self.flows[i];
        f.running = true;
        f.started_at = Some(now);
        f.win_start = 1;
        f.cursor = 1;
        f.end = f.spec.window.min(f.spec.blocks);
        f.first_new = 1;
        f.pending = Pending::Window;
        if self.cfg.controlled {
            // The OACK and its ACK 0 measured the path once (the transfer takes that sample).
            let rtt = f.srtt;
            let ack = AckSample {
                rtt,
                since_last_send: rtt,
                ..AckSample::default()
            };
            f.cc.on_ack(now, &mut self.link, ack);
        }
        self.pump(i);
    }

    fn rto(f: &Flow) -> Duration {
        let base = match f.srtt {
            Some(s) => (s + Duration::from_millis(1).max(f.rttvar * 4)).clamp(MIN_RTO, MAX_RTO),
            None => INITIAL_RTO,
        };
        (base * (1u32 << f.backoff.min(10))).min(MAX_RTO)
    }

    fn pto(f: &Flow) -> Duration {
        let p = match f.srtt {
            Some(s) => (s * 2)
                .max(s + f.rttvar * 4)
                .max(PTO_FLOOR)
                .min(Self::rto(f)),
            None => Self::rto(f),
        };
        p * f.probe.pto_factor()
    }

    /// Arm the flow's timer (a new generation makes older wakes stale).
    fn arm(&mut self, i: usize, at: Instant) {
        let slack = self.cfg.timer_slack.as_nanos() as u64;
        let late = Duration::from_nanos(self.rng.below(slack + 1));
        let f = &mut self.flows[i];
        f.gen += 1;
        let gen = f.gen;
        self.at(at + late, Ev::Wake { flow: i, gen });
    }

    /// Send what is pending, as far as the controller allows.
    fn pump(&mut self, i: usize) {
        let now = self.now;
        loop {
            let f = &mut self.flows[i];
            if !f.running || f.done_at.is_some() {
                return;
            }
            let want = match f.pending {
                Pending::Nothing => return,
                Pending::Window => (f.end + 1 - f.cursor) as u32,
                Pending::Probe => 1,
            };
            let grant = if self.cfg.controlled {
                f.cc.poll_send(now, &mut self.link, want, f.block_bytes)
            } else {
                Grant::Send(want)
            };
            match grant {
                Grant::Wait(t) => {
                    f.deadline = None;
                    self.arm(i, t);
                    return;
                }
                Grant::Send(n) => {
                    let (first, n) = match f.pending {
                        Pending::Probe => (f.sent_hi, 1),
                        _ => (f.cursor, u64::from(n)),
                    };
                    f.last_send_at = Some(now);
                    let off = now - self.t0;
                    let k = self
                        .bounds
                        .windows(2)
                        .position(|w| off >= w[0] && off < w[1]);
                    for b in first..first + n {
                        f.sent += 1;
                        if b <= f.sent_hi {
                            f.resent += 1;
                            if let Some(k) = k {
                                self.resent_in[k] += 1;
                            }
                        }
                    }
                    f.sent_hi = f.sent_hi.max(first + n - 1);
                    let finished = match f.pending {
                        Pending::Probe => {
                            let orig = f.win_sent_at.unwrap_or(now);
                            f.probe.on_probe(now, f.sent_hi, orig);
                            true
                        }
                        _ => {
                            f.win_first_at.get_or_insert(now);
                            f.cursor += n;
                            f.cursor > f.end
                        }
                    };
                    for b in first..first + n {
                        self.enqueue(i, b);
                    }
                    let f = &mut self.flows[i];
                    if finished {
                        if f.pending == Pending::Window {
                            f.win_sent_at = Some(now);
                        }
                        f.pending = Pending::Nothing;
                        let wait = if f.probed { Self::rto(f) } else { Self::pto(f) };
                        f.deadline = Some(now + wait);
                        self.arm(i, now + wait);
                        return;
                    }
                }
            }
        }
    }

    fn wake(&mut self, i: usize, gen: u64) {
        let now = self.now;
        let f = &mut self.flows[i];
        if gen != f.gen || !f.running || f.done_at.is_some() {
            return;
        }
        if f.pending != Pending::Nothing {
            // A pacing wait is over.
            self.pump(i);
            return;
        }
        match f.deadline {
            Some(d) if now >= d => {}
            _ => return,
        }
        f.deadline = None;
        if !f.probed {
            // First expiry since progress: probe with the last block sent.
            f.probed = true;
            f.pending = Pending::Probe;
        } else {
            // Again: the probe did not help. A loss; resend the window, back off.
            f.probe.on_rto();
            if self.cfg.controlled {
                f.cc.on_loss(now, &mut self.link);
            }
            f.backoff = (f.backoff + 1).min(10);
            f.cursor = f.acked + 1;
            f.win_start = f.cursor;
            f.end = (f.acked + f.spec.window).min(f.spec.blocks);
            f.first_new = f.sent_hi + 1;
            f.win_first_at = None;
            f.pending = Pending::Window;
        }
        self.pump(i);
    }

    fn server_ack(&mut self, i: usize, block: u64) {
        let now = self.now;
        let controlled = self.cfg.controlled;
        let literal = self.cfg.literal_gaps;
        let f = &mut self.flows[i];
        if !f.running || f.done_at.is_some() {
            return;
        }
        let mut genuine = false;
        match f.probe.on_ack(now, block, f.cc.min_rtt()) {
            Verdict::Spurious { late_rtt } => {
                // Undo: no loss; the Eifel response raises the estimator to the late sample.
                let (s, v) = eifel_response(f.srtt.unwrap_or(late_rtt), f.rttvar, late_rtt);
                f.srtt = Some(s);
                f.rttvar = v;
            }
            Verdict::Genuine => genuine = true,
            Verdict::Pending => {}
        }
        let min_rtt = f.cc.min_rtt().or(f.srtt);
        let answerable = matches!((f.win_first_at, min_rtt), (Some(t), Some(m)) if now - t >= m);
        let action = if self.cfg.literal_gaps {
            // proto::tftp::transfer today: an ACK inside the window goes back at once; duplicates are
            // ignored.
            if block <= f.acked || block > f.sent_hi {
                AckAction::Ignore
            } else if block < f.end {
                AckAction::GoBack
            } else {
                AckAction::Advance
            }
        } else {
            f.gap
                .on_ack(block, f.acked, f.end, f.sent_hi, f.spec.window, answerable)
        };
        let fwd = block.saturating_sub(f.acked);
        match action {
            AckAction::Ignore => {
                if genuine && controlled {
                    f.cc.on_loss(now, &mut self.link);
                }
                return;
            }
            AckAction::GoBack => {
                // A loss: resend from the block after `block` (which may move `acked`).
                f.acked = f.acked.max(block);
                f.probed = false;
                if controlled {
                    if fwd > 0 {
                        let ack = AckSample {
                            bytes: fwd * f.block_bytes,
                            rtt: None,
                            since_last_send: f.last_send_at.map(|t| now - t),
                            gap: true,
                        };
                        f.cc.on_ack(now, &mut self.link, ack);
                    } else {
                        f.cc.on_loss(now, &mut self.link);
                    }
                }
            }
            AckAction::Advance | AckAction::Realign => {
                let rtt = match f.win_sent_at {
                    Some(t)
                        if action == AckAction::Advance
                            && if literal {
                                // proto::tftp::transfer today: the whole window sent once.
                                f.win_start >= f.first_new
                            } else {
                                !f.probed && block >= f.first_new
                            } =>
                    {
                        Some(now - t)
                    }
                    _ => None,
                };
                if rtt.is_some() {
                    self.clean_samples += 1;
                }
                if let Some(r) = rtt {
                    match f.srtt {
                        None => {
                            f.srtt = Some(r);
                            f.rttvar = r / 2;
                        }
                        Some(s) => {
                            f.rttvar = (f.rttvar * 3 + s.abs_diff(r)) / 4;
                            f.srtt = Some((s * 7 + r) / 8);
                        }
                    }
                }
                f.acked = block;
                f.probed = false;
                f.backoff = f.backoff.saturating_sub(1);
                if controlled {
                    let ack = AckSample {
                        bytes: fwd * f.block_bytes,
                        rtt,
                        since_last_send: f.last_send_at.map(|t| now - t),
                        gap: false,
                    };
                    f.cc.on_ack(now, &mut self.link, ack);
                    if genuine {
                        f.cc.on_loss(now, &mut self.link);
                    }
                }
            }
        }
        let f = &mut self.flows[i];
        if f.acked == f.spec.blocks {
            f.done_at = Some(now);
            f.gen += 1;
            return;
        }
        if action == AckAction::Realign {
            f.realigns += 1;
            f.end = (block + f.spec.window).min(f.spec.blocks);
            f.cursor = f.cursor.max(block + 1);
            if f.cursor <= f.end {
                f.pending = Pending::Window;
            }
        } else {
            f.win_start = f.acked + 1;
            f.cursor = f.win_start;
            f.end = (f.acked + f.spec.window).min(f.spec.blocks);
            f.first_new = f.sent_hi + 1;
            f.win_sent_at = None;
            f.win_first_at = None;
            f.pending = Pending::Window;
        }
        self.pump(i);
    }
}

#[cfg(test)]
mod tests;
