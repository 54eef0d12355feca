//! Real [`Transfer`]s paced by one [`LinkCc`] through a simulated bottleneck, on virtual time: a
//! FIFO of a fixed number of frames drained at a fixed rate, seeded random loss before it, and
//! EDK2-like clients (ACK after a full window or the last block, re-ACK the last in-order block
//! at once on anything out of order). Every transfer must end (completed byte-exact, or timed
//! out for a client that left), and no transfer may leave its timer in the past.

use super::super::*;
use crate::proto::cc::{LinkCc, LinkConfig, Rate};
use crate::proto::tftp::options::{negotiate, Limits, RequestOptions};
use crate::proto::tftp::packet::{emit_ack, OptionList};
use crate::proto::timer::EventQueue;
use std::collections::VecDeque;

const BLKSIZE: u64 = 1428;

fn config(window: u16, len: u64, peer: u16) -> TransferConfig {
    let opts = format!("blksize\0{BLKSIZE}\0windowsize\0{window}\0tsize\00\0");
    let o = RequestOptions::parse(&OptionList::new_checked(opts.as_bytes()).unwrap());
    TransferConfig {
        peer: SocketAddr::from(([10, 0, 0, 2], peer)),
        negotiated: negotiate(&o, &Limits::default(), None, len),
        content_len: len,
        max_timeout: Duration::from_secs(1),
        min_rto: Duration::from_millis(2),
        retries: 4,
    }
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    window: u16,
    blocks: u64,
    start: Duration,
    /// The client leaves (goes silent) at this time.
    leave: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Depart,
    /// DATA `index` (`len` payload bytes) of flow `f`, or its OACK (`index` 0), at the client.
    ClientRx {
        f: usize,
        index: u64,
        len: u64,
    },
    /// ACK `block` of flow `f` at the server.
    Ack {
        f: usize,
        block: u16,
    },
    Timer {
        f: usize,
        gen: u64,
    },
    Start {
        f: usize,
    },
}

struct Client {
    expected: u64,
    since_ack: u64,
    bytes: u64,
    gone: bool,
    done: bool,
}

struct Bench {
    now: Instant,
    t0: Instant,
    rate: Rate,
    queue_cap: usize,
    delay: Duration,
    loss_per_mille: u64,
    seed: u64,
    events: EventQueue<Ev>,
    queue: VecDeque<(usize, u64, u64, u64)>,
    link: LinkCc,
    specs: Vec<Spec>,
    transfers: Vec<Option<Transfer>>,
    gens: Vec<u64>,
    clients: Vec<Client>,
    outcomes: Vec<Option<Outcome>>,
    dropped: u64,
    delivered: u64,
    resent: u64,
    /// When the last client got its last block.
    last_done: Duration,
}

impl Bench {
    fn new(mbit: u64, queue: usize, cap: Option<Rate>, specs: Vec<Spec>) -> Bench {
        let t0 = crate::sim_origin();
        let n = specs.len();
        let mut b = Bench {
            now: t0,
            t0,
            rate: Rate::from_bits_per_sec(mbit * 1_000_000),
            queue_cap: queue,
            delay: Duration::from_micros(50),
            loss_per_mille: 0,
            seed: 7,
            events: EventQueue::new(),
            queue: VecDeque::new(),
            link: LinkCc::new(LinkConfig {
                cap,
                ..LinkConfig::default()
            }),
            specs,
            transfers: (0..n).map(|_| None).collect(),
            gens: vec![0; n],
            clients: (0..n)
                .map(|_| Client {
                    expected: 1,
                    since_ack: 0,
                    bytes: 0,
                    gone: false,
                    done: false,
                })
                .collect(),
            outcomes: vec![None; n],
            dropped: 0,
            delivered: 0,
            resent: 0,
            last_done: Duration::ZERO,
        };
        for f in 0..n {
            let s = b.specs[f].start;
            b.at(t0 + s, Ev::Start { f });
        }
        b
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.seed = self
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.seed >> 33) % n.max(1)
    }

    fn at(&mut self, t: Instant, ev: Ev) {
        self.events.push(t, ev);
    }

    fn enqueue(&mut self, f: usize, index: u64, len: u64, wire: u64) {
        if self.loss_per_mille > 0 && self.rand(1000) < self.loss_per_mille {
            self.dropped += 1;
            return;
        }
        if self.queue.len() >= self.queue_cap {
            self.dropped += 1;
            return;
        }
        self.queue.push_back((f, index, len, wire));
        if self.queue.len() == 1 {
            let t = self.now + self.rate.time_for(wire);
            self.at(t, Ev::Depart);
        }
    }

    fn depart(&mut self) {
        let Some((f, index, len, _)) = self.queue.pop_front() else {
            return;
        };
        self.at(self.now + self.delay, Ev::ClientRx { f, index, len });
        if let Some(&(_, _, _, wire)) = self.queue.front() {
            let t = self.now + self.rate.time_for(wire);
            self.at(t, Ev::Depart);
        }
    }

    /// Drain the transfer's transmits (paced), then check and arm its timer.
    fn drive(&mut self, f: usize) {
        let now = self.now;
        let mut buf = [0u8; 512];
        loop {
            let Some(t) = self.transfers[f].as_mut() else {
                return;
            };
            let Some(tx) = t.poll_transmit_paced(now, &mut buf, &mut self.link) else {
                break;
            };
            match tx.payload {
                Payload::Datagram(n) => {
                    if buf[1] == 6 {
                        self.enqueue(f, 0, 0, 42 + n as u64);
                    }
                }
                Payload::Blocks { first, count } => {
                    let runs: Vec<(u64, u64)> = (first..first + u64::from(count))
                        .map(|i| (i, t.block_range(i).1 as u64))
                        .collect();
                    for (i, len) in runs {
                        let wire = 46 + 4 + len;
                        self.enqueue(f, i, len, wire);
                    }
                }
            }
        }
        let t = self.transfers[f].as_mut().unwrap();
        if let Some(Event::Ended(o)) = t.poll_event() {
            self.outcomes[f] = Some(o);
            self.resent += t.stats().blocks_resent;
            self.transfers[f] = None;
            return;
        }
        let d = t.poll_timeout();
        assert!(
            d.is_some_and(|d| d > now),
            "flow {f}: a live transfer's timer must be armed in the future ({d:?} at {:?})",
            now - self.t0
        );
        self.gens[f] += 1;
        let gen = self.gens[f];
        self.at(d.unwrap(), Ev::Timer { f, gen });
    }

    fn client_rx(&mut self, f: usize, index: u64, len: u64) {
        let leave = self.specs[f].leave.is_some_and(|l| self.now >= self.t0 + l);
        let c = &mut self.clients[f];
        c.gone |= leave;
        if c.gone || c.done {
            return;
        }
        let w = u64::from(self.specs[f].window);
        let ack = if index == 0 {
            // The OACK.
            (c.expected == 1).then_some(0)
        } else if index == c.expected {
            c.expected += 1;
            c.since_ack += 1;
            c.bytes += len;
            self.delivered += 1;
            if len < BLKSIZE {
                c.done = true;
                self.last_done = self.now - self.t0;
                Some(index)
            } else if c.since_ack >= w {
                c.since_ack = 0;
                Some(index)
            } else {
                None
            }
        } else {
            c.since_ack = 0;
            Some(c.expected - 1)
        };
        if let Some(i) = ack {
            let block = (i & 0xffff) as u16;
            self.at(self.now + self.delay, Ev::Ack { f, block });
        }
    }

    fn run(mut self, limit: Duration) -> Bench {
        let end = self.t0 + limit;
        let mut steps = 0u64;
        while let Some((t, ev)) = self.events.pop() {
            assert!(t >= self.now, "time never goes back");
            if t > end {
                break;
            }
            steps += 1;
            assert!(steps < 50_000_000, "livelock");
            self.now = t;
            match ev {
                Ev::Depart => self.depart(),
                Ev::ClientRx { f, index, len } => self.client_rx(f, index, len),
                Ev::Ack { f, block } => {
                    if let Some(t) = self.transfers[f].as_mut() {
                        let mut b = [0u8; 4];
                        emit_ack(&mut b, BlockNum(block));
                        t.handle_datagram(self.now, &b);
                        self.drive(f);
                    }
                }
                Ev::Timer { f, gen } => {
                    if gen == self.gens[f] {
                        if let Some(t) = self.transfers[f].as_mut() {
                            t.handle_timeout(self.now);
                            self.drive(f);
                        }
                    }
                }
                Ev::Start { f } => {
                    let s = self.specs[f];
                    let len = s.blocks * BLKSIZE - 100;
                    let t = Transfer::new(config(s.window, len, 2000 + f as u16), self.now);
                    self.transfers[f] = Some(t);
                    self.drive(f);
                }
            }
        }
        self
    }

    /// Every flow ended: completed byte-exact, or (a client that left) timed out.
    fn check_all_ended(&self) {
        for (f, s) in self.specs.iter().enumerate() {
            let o = self.outcomes[f];
            if s.leave.is_some() && !self.clients[f].done {
                assert!(
                    matches!(o, Some(Outcome::TimedOut | Outcome::Unconfirmed)),
                    "flow {f} (client left) ended {o:?}"
                );
                continue;
            }
            assert_eq!(o, Some(Outcome::Completed), "flow {f}");
            assert_eq!(self.clients[f].bytes, s.blocks * BLKSIZE - 100, "flow {f}");
        }
    }

    fn blocks(&self) -> u64 {
        self.specs.iter().map(|s| s.blocks).sum()
    }
}

fn storm(n: usize, window: u16, blocks: u64, spread_ms: u64) -> Vec<Spec> {
    (0..n)
        .map(|i| Spec {
            window,
            blocks,
            start: Duration::from_micros(i as u64 * spread_ms * 1000 / n as u64),
            leave: None,
        })
        .collect()
}

#[test]
fn open_link_paces_nothing_and_sends_what_poll_transmit_sends() {
    let now = crate::sim_origin();
    let mut link = LinkCc::new(LinkConfig::default());
    let mut a = Transfer::new(config(8, 100 * BLKSIZE, 2000), now);
    let mut b = Transfer::new(config(8, 100 * BLKSIZE, 2000), now);
    let (mut ba, mut bb) = ([0u8; 512], [0u8; 512]);
    let mut t = now;
    for step in 0..40u16 {
        loop {
            let x = a.poll_transmit(t, &mut ba).map(|x| x.payload);
            let y = b
                .poll_transmit_paced(t, &mut bb, &mut link)
                .map(|x| x.payload);
            assert_eq!(x, y);
            if x.is_none() {
                break;
            }
        }
        assert_eq!(a.poll_timeout(), b.poll_timeout());
        t += Duration::from_micros(300);
        // ACK every window, with a gap now and then.
        let block = if step % 7 == 3 {
            step * 8 - 2
        } else {
            step * 8
        };
        let mut ack = [0u8; 4];
        emit_ack(&mut ack, BlockNum(block));
        a.handle_datagram(t, &ack);
        b.handle_datagram(t, &ack);
    }
    assert_eq!(a.stats(), b.stats());
    assert!(link.pacing_rate().is_none());
    assert_eq!(link.stats().waits, 0);
    assert!(link.stats().acked_bytes > 0, "the link saw the ACKs");
}

#[test]
fn storm_through_a_small_queue_completes_byte_exact() {
    // 40 UEFI-like flows (window 4) into 100 Mbit/s with 32 frames of queue.
    let b = Bench::new(100, 32, None, storm(40, 4, 200, 20)).run(Duration::from_secs(30));
    b.check_all_ended();
    let st = b.link.stats();
    assert!(st.congestion_events > 0, "{st:?}");
    assert!(st.waits > 0, "the bound link paced: {st:?}");
    assert!(b.link.is_bound() || st.releases > 0);
    // At 100 Mbit/s the 40 x 200 blocks take about 0.95 s of link time.
    eprintln!(
        "dropped {} resent {} of {} blocks, all done at {:?}; {:?}",
        b.dropped,
        b.resent,
        b.blocks(),
        b.last_done,
        st
    );
    assert!(b.resent * 20 < b.blocks(), "resent under 5%");
}

#[test]
fn flows_joining_leaving_and_random_loss_all_end() {
    let mut specs = storm(30, 16, 150, 10);
    // A second wave joins while the first runs; some clients leave half-way.
    specs.extend(storm(20, 4, 120, 10).into_iter().map(|mut s| {
        s.start += Duration::from_millis(150);
        s
    }));
    for s in specs.iter_mut().step_by(7) {
        s.leave = Some(s.start + Duration::from_millis(40));
    }
    specs.extend(storm(10, 1, 60, 5));
    let mut b = Bench::new(200, 24, None, specs);
    b.loss_per_mille = 10;
    let b = b.run(Duration::from_secs(60));
    b.check_all_ended();
    assert!(b.link.stats().losses > 0);
}

#[test]
fn operator_cap_binds_on_an_open_link() {
    // A 1 Gbit/s link with a deep queue never overflows; a 50 Mbit/s cap still paces.
    let cap = Rate::from_bits_per_sec(50_000_000);
    let b = Bench::new(1000, 10_000, Some(cap), storm(20, 16, 100, 5)).run(Duration::from_secs(30));
    b.check_all_ended();
    assert_eq!(b.dropped, 0);
    assert_eq!(b.resent, 0, "a cap alone causes no resend");
    assert!(b.link.stats().waits > 0);
    assert_eq!(b.link.stats().congestion_events, 0);
    // 20 x 100 blocks of 1478 wire bytes at 50 Mbit/s: 0.47 s at least.
    assert!(
        b.last_done >= Duration::from_millis(440),
        "{:?}",
        b.last_done
    );
}

#[test]
fn lockstep_is_paced_by_a_cap_only() {
    // 30 lockstep flows into a queue of 8 frames: losses, maybe a bound link, never a wait.
    let b = Bench::new(100, 8, None, storm(30, 1, 100, 5)).run(Duration::from_secs(60));
    b.check_all_ended();
    assert_eq!(b.link.stats().waits, 0, "{:?}", b.link.stats());
    // Under an operator cap they are paced like everyone else.
    let cap = Some(Rate::from_bits_per_sec(20_000_000));
    let b = Bench::new(1000, 1000, cap, storm(30, 1, 100, 5)).run(Duration::from_secs(60));
    b.check_all_ended();
    assert!(b.link.stats().waits > 0);
}
