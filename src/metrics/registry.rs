//! The metrics registry: per-thread shards of relaxed atomics, summed when scraped.
//!
//! Contract: every thread that records gets its own [`Recorder`] from [`Registry::recorder`] (at
//! start, not per event). A recorder owns one [`Shard`]: a cache-line-aligned block of atomics
//! that only it writes, so recording is a relaxed load and store on a line no other thread
//! writes (no lock, no read-modify-write, no allocation). A scrape ([`Registry::totals`],
//! [`Registry::encode`]) reads every shard with relaxed loads and adds them up; a scrape racing
//! with recording sees each counter at some recent value (counters never go backwards).
//!
//! Memory is constant: one shard per recorder (2,432 bytes), every label an enum (no label
//! value comes from the network), every histogram a fixed set of buckets. The shard list only
//! grows when a recorder is made: make one per thread at start, not per connection.
//!
//! Gauges are *set*, by the one service that owns them (leases by the DHCP service, multicast
//! sessions by the multicast service), and summed like counters; a recorder that is dropped zeroes
//! its gauges so that a replacement does not count twice. `transfers_active` is not stored: it
//! is `started - ended` summed over the shards, so it can never drift.
//!
//! The names, types and labels are in the table of the [module docs](super).

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

mod labels;
pub use labels::*;

/// Most buckets a histogram has (its bounds; `+Inf` comes on top).
const MAX_BUCKETS: usize = 16;

/// A histogram's fixed buckets: upper bounds in an integer unit, and how many of that unit make
/// the metric's base unit (1,000,000 for microseconds of a `_seconds` metric). Encoded values are
/// `n / per_base`, a correctly rounded division: `le="0.01"`, never `0.009999999999999998`.
#[derive(Debug)]
pub struct Buckets {
    /// Upper bounds, increasing, at most 16.
    pub bounds: &'static [u64],
    /// Units of `bounds` (and of the stored sum) in one base unit.
    pub per_base: u64,
}

/// `ringboot_tftp_transfer_duration_seconds`: microseconds, 10 ms .. 10 min.
pub const DURATION_BUCKETS: Buckets = Buckets {
    bounds: &[
        10_000,
        50_000,
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        30_000_000,
        60_000_000,
        120_000_000,
        300_000_000,
        600_000_000,
    ],
    per_base: 1_000_000,
};

/// `ringboot_tftp_first_block_seconds`: microseconds, 1 ms .. 10 s.
pub const FIRST_BLOCK_BUCKETS: Buckets = Buckets {
    bounds: &[
        1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
        2_500_000, 5_000_000, 10_000_000,
    ],
    per_base: 1_000_000,
};

/// `ringboot_tftp_transfer_throughput_bytes_per_second`: bytes per second, 1 Mbit/s .. 40 Gbit/s.
pub const THROUGHPUT_BUCKETS: Buckets = Buckets {
    bounds: &[
        125_000,
        1_250_000,
        6_250_000,
        12_500_000,
        25_000_000,
        62_500_000,
        125_000_000,
        250_000_000,
        625_000_000,
        1_250_000_000,
        2_500_000_000,
        5_000_000_000,
    ],
    per_base: 1,
};

const DHCP_CELLS: usize = DhcpType::COUNT * DhcpMode::COUNT * ArchClass::COUNT;

fn dhcp_cell(t: DhcpType, m: DhcpMode, a: ArchClass) -> usize {
    (t.index() * DhcpMode::COUNT + m.index()) * ArchClass::COUNT + a.index()
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// One histogram in a shard: non-cumulative bucket counts (the last is `+Inf`) and the sum.
#[derive(Debug)]
struct Hist {
    counts: [AtomicU64; MAX_BUCKETS + 1],
    sum: AtomicU64,
}

impl Hist {
    fn new() -> Self {
        Hist {
            counts: zeros(),
            sum: AtomicU64::new(0),
        }
    }
}

/// One recorder's block of counters. Aligned to 128 bytes (two cache lines, for the adjacent-line
/// prefetcher) so that no two shards share a line.
#[derive(Debug)]
#[repr(C, align(128))]
pub struct Shard {
    started: AtomicU64,
    ended: [AtomicU64; Outcome::COUNT],
    refused: [AtomicU64; RefuseReason::COUNT],
    bytes_sent: AtomicU64,
    blocks_sent: AtomicU64,
    blocks_resent: AtomicU64,
    timeouts: AtomicU64,
    duration: Hist,
    first_block: Hist,
    throughput: Hist,
    dhcp: [AtomicU64; DHCP_CELLS],
    dhcp_ignored: [AtomicU64; DhcpIgnored::COUNT],
    leases_in_use: AtomicU64,
    leases_free: AtomicU64,
    mc_sessions: [AtomicU64; McProtocol::COUNT],
    mc_members: [AtomicU64; McProtocol::COUNT],
    mc_bytes: [AtomicU64; McProtocol::COUNT],
    mc_refused: [AtomicU64; McRefusal::COUNT],
}

impl Shard {
    fn new() -> Self {
        Shard {
            started: AtomicU64::new(0),
            ended: zeros(),
            refused: zeros(),
            bytes_sent: AtomicU64::new(0),
            blocks_sent: AtomicU64::new(0),
            blocks_resent: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            duration: Hist::new(),
            first_block: Hist::new(),
            throughput: Hist::new(),
            dhcp: zeros(),
            dhcp_ignored: zeros(),
            leases_in_use: AtomicU64::new(0),
            leases_free: AtomicU64::new(0),
            mc_sessions: zeros(),
            mc_members: zeros(),
            mc_bytes: zeros(),
            mc_refused: zeros(),
        }
    }
}

/// Add `n` to a counter only this thread writes: a plain load and store, no locked instruction.
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

#[inline]
fn observe(h: &Hist, buckets: &Buckets, value: u64) {
    let i = buckets.bounds.partition_point(|&b| b < value);
    bump(&h.counts[i.min(MAX_BUCKETS)], 1);
    bump(&h.sum, value);
}

/// What the server is, for `ringboot_info` and the status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The server's version (`env!("CARGO_PKG_VERSION")`).
    pub version: String,
    /// The I/O backend in use (`io_uring`, `epoll`).
    pub backend: String,
    /// How many TFTP workers run.
    pub workers: usize,
}

impl Default for Info {
    fn default() -> Self {
        Info {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            backend: String::from("unknown"),
            workers: 0,
        }
    }
}

/// The registry every thread records into. Share it as an `Arc`; see the module docs.
#[derive(Debug, Default)]
pub struct Registry {
    shards: Mutex<Vec<Arc<Shard>>>,
    info: Mutex<Info>,
}

impl Registry {
    /// A registry with no shards yet.
    pub fn new(info: Info) -> Self {
        Registry {
            shards: Mutex::new(Vec::new()),
            info: Mutex::new(info),
        }
    }

    /// A recorder for the calling thread (one per thread, made at its start: see the module docs).
    pub fn recorder(&self) -> Recorder {
        let shard = Arc::new(Shard::new());
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&shard));
        Recorder {
            shard,
            _not_sync: PhantomData,
        }
    }

    /// Replace the info (the backend is known once the engine has started).
    pub fn set_info(&self, info: Info) {
        *self.info.lock().unwrap_or_else(PoisonError::into_inner) = info;
    }

    /// The info as set last.
    pub fn info(&self) -> Info {
        self.info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every shard added up (relaxed loads; see the module docs).
    pub fn totals(&self) -> Totals {
        let shards: Vec<Arc<Shard>> = self
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut t = Totals::default();
        for s in &shards {
            t.add(s);
        }
        t
    }

    /// Append the Prometheus text format (version 0.0.4) of every metric to `out`.
    pub fn encode(&self, out: &mut String) {
        let info = self.info();
        self.totals().encode(&info, out);
    }
}

/// A thread's handle for recording (see the module docs). Not `Clone`, not `Sync`: one thread
/// writes a shard, which is what makes [`bump`]'s load-then-store exact.
#[derive(Debug)]
pub struct Recorder {
    shard: Arc<Shard>,
    _not_sync: PhantomData<Cell<()>>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let s = &self.shard;
        s.leases_in_use.store(0, Relaxed);
        s.leases_free.store(0, Relaxed);
        for g in s.mc_sessions.iter().chain(&s.mc_members) {
            g.store(0, Relaxed);
        }
    }
}

impl Recorder {
    /// A unicast transfer was accepted (its first response is about to go out).
    #[inline]
    pub fn transfer_started(&self) {
        bump(&self.shard.started, 1);
    }

    /// The client acknowledged block 1, `elapsed` after its request arrived.
    #[inline]
    pub fn first_block(&self, elapsed: Duration) {
        observe(
            &self.shard.first_block,
            &FIRST_BLOCK_BUCKETS,
            micros(elapsed),
        );
    }

    /// A transfer ended. For [`Outcome::Completed`], `duration` (request to last ACK) and the
    /// throughput `bytes / duration` go into the histograms; other outcomes are only counted
    /// (a probe or a timeout would distort them).
    #[inline]
    pub fn transfer_ended(&self, outcome: Outcome, duration: Duration, bytes: u64) {
        let s = &self.shard;
        bump(&s.ended[outcome.index()], 1);
        if outcome == Outcome::Completed {
            let us = micros(duration).max(1);
            observe(&s.duration, &DURATION_BUCKETS, us);
            let rate = (u128::from(bytes) * 1_000_000 / u128::from(us)).min(u128::from(u64::MAX));
            observe(&s.throughput, &THROUGHPUT_BUCKETS, rate as u64);
        }
    }

    /// DATA handed to the driver: `blocks` blocks holding `bytes` bytes of the file, resends
    /// included.
    #[inline]
    pub fn data_sent(&self, blocks: u64, bytes: u64) {
        bump(&self.shard.blocks_sent, blocks);
        bump(&self.shard.bytes_sent, bytes);
    }

    /// `blocks` of the DATA sent were resends.
    #[inline]
    pub fn blocks_resent(&self, blocks: u64) {
        bump(&self.shard.blocks_resent, blocks);
    }

    /// A retransmission timer fired.
    #[inline]
    pub fn timeout(&self) {
        bump(&self.shard.timeouts, 1);
    }

    /// A request was refused with an ERROR.
    #[inline]
    pub fn refused(&self, reason: RefuseReason) {
        bump(&self.shard.refused[reason.index()], 1);
    }

    /// A DHCP message was received or sent.
    #[inline]
    pub fn dhcp_message(&self, kind: DhcpType, mode: DhcpMode, arch: ArchClass) {
        bump(&self.shard.dhcp[dhcp_cell(kind, mode, arch)], 1);
    }

    /// A DHCP message was not answered.
    #[inline]
    pub fn dhcp_ignored(&self, reason: DhcpIgnored) {
        bump(&self.shard.dhcp_ignored[reason.index()], 1);
    }

    /// The lease pool now (set by the DHCP service after each change).
    #[inline]
    pub fn set_leases(&self, in_use: u64, free: u64) {
        self.shard.leases_in_use.store(in_use, Relaxed);
        self.shard.leases_free.store(free, Relaxed);
    }

    /// The multicast sessions of `protocol` now, with their members in all.
    #[inline]
    pub fn set_multicast(&self, protocol: McProtocol, sessions: u64, members: u64) {
        self.shard.mc_sessions[protocol.index()].store(sessions, Relaxed);
        self.shard.mc_members[protocol.index()].store(members, Relaxed);
    }

    /// Bytes of DATA a multicast session sent to its group (resends included).
    #[inline]
    pub fn multicast_sent(&self, protocol: McProtocol, bytes: u64) {
        bump(&self.shard.mc_bytes[protocol.index()], bytes);
    }

    /// A request for multicast was served by unicast instead.
    #[inline]
    pub fn multicast_refused(&self, reason: McRefusal) {
        bump(&self.shard.mc_refused[reason.index()], 1);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One histogram added up over the shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistTotals {
    /// Non-cumulative counts per bucket; index `bounds.len()` is `+Inf`.
    pub counts: [u64; MAX_BUCKETS + 1],
    /// The sum of the observations, in the buckets' unit.
    pub sum: u64,
}

impl HistTotals {
    fn add(&mut self, h: &Hist) {
        for (t, c) in self.counts.iter_mut().zip(&h.counts) {
            *t = t.wrapping_add(c.load(Relaxed));
        }
        self.sum = self.sum.wrapping_add(h.sum.load(Relaxed));
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.wrapping_add(c))
    }
}

/// Every shard added up: what a scrape and the status page read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    pub started: u64,
    pub ended: [u64; Outcome::COUNT],
    pub refused: [u64; RefuseReason::COUNT],
    pub bytes_sent: u64,
    pub blocks_sent: u64,
    pub blocks_resent: u64,
    pub timeouts: u64,
    pub duration: HistTotals,
    pub first_block: HistTotals,
    pub throughput: HistTotals,
    pub dhcp: [u64; DHCP_CELLS],
    pub dhcp_ignored: [u64; DhcpIgnored::COUNT],
    pub leases_in_use: u64,
    pub leases_free: u64,
    pub mc_sessions: [u64; McProtocol::COUNT],
    pub mc_members: [u64; McProtocol::COUNT],
    pub mc_bytes: [u64; McProtocol::COUNT],
    pub mc_refused: [u64; McRefusal::COUNT],
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            started: 0,
            ended: [0; Outcome::COUNT],
            refused: [0; RefuseReason::COUNT],
            bytes_sent: 0,
            blocks_sent: 0,
            blocks_resent: 0,
            timeouts: 0,
            duration: HistTotals::default(),
            first_block: HistTotals::default(),
            throughput: HistTotals::default(),
            dhcp: [0; DHCP_CELLS],
            dhcp_ignored: [0; DhcpIgnored::COUNT],
            leases_in_use: 0,
            leases_free: 0,
            mc_sessions: [0; McProtocol::COUNT],
            mc_members: [0; McProtocol::COUNT],
            mc_bytes: [0; McProtocol::COUNT],
            mc_refused: [0; McRefusal::COUNT],
        }
    }
}

fn add_all(to: &mut [u64], from: &[AtomicU64]) {
    for (t, f) in to.iter_mut().zip(from) {
        *t = t.wrapping_add(f.load(Relaxed));
    }
}

impl Totals {
    fn add(&mut self, s: &Shard) {
        // `ended` before `started`: a transfer ending during the scrape cannot make
        // `active` negative.
        add_all(&mut self.ended, &s.ended);
        self.started = self.started.wrapping_add(s.started.load(Relaxed));
        add_all(&mut self.refused, &s.refused);
        self.bytes_sent = self.bytes_sent.wrapping_add(s.bytes_sent.load(Relaxed));
        self.blocks_sent = self.blocks_sent.wrapping_add(s.blocks_sent.load(Relaxed));
        self.blocks_resent = self
            .blocks_resent
            .wrapping_add(s.blocks_resent.load(Relaxed));
        self.timeouts = self.timeouts.wrapping_add(s.timeouts.load(Relaxed));
        self.duration.add(&s.duration);
        self.first_block.add(&s.first_block);
        self.throughput.add(&s.throughput);
        add_all(&mut self.dhcp, &s.dhcp);
        add_all(&mut self.dhcp_ignored, &s.dhcp_ignored);
        self.leases_in_use = self
            .leases_in_use
            .wrapping_add(s.leases_in_use.load(Relaxed));
        self.leases_free = self.leases_free.wrapping_add(s.leases_free.load(Relaxed));
        add_all(&mut self.mc_sessions, &s.mc_sessions);
        add_all(&mut self.mc_members, &s.mc_members);
        add_all(&mut self.mc_bytes, &s.mc_bytes);
        add_all(&mut self.mc_refused, &s.mc_refused);
    }

    /// Transfers running now: started minus ended.
    pub fn active(&self) -> u64 {
        self.started.saturating_sub(self.ended_all())
    }

    /// Transfers ended, every outcome.
    pub fn ended_all(&self) -> u64 {
        self.ended.iter().sum()
    }

    /// Transfers ended with `outcome`.
    pub fn ended(&self, outcome: Outcome) -> u64 {
        self.ended[outcome.index()]
    }

    /// Requests refused for `reason`.
    pub fn refused(&self, reason: RefuseReason) -> u64 {
        self.refused[reason.index()]
    }

    /// DHCP messages of one type, mode and class.
    pub fn dhcp(&self, kind: DhcpType, mode: DhcpMode, arch: ArchClass) -> u64 {
        self.dhcp[dhcp_cell(kind, mode, arch)]
    }

    /// Bytes sent by multicast sessions, every protocol.
    pub fn multicast_bytes(&self) -> u64 {
        self.mc_bytes.iter().sum()
    }

    /// The Prometheus text format of these totals (see [`Registry::encode`]).
    pub fn encode(&self, info: &Info, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = self.write(info, out);
    }

    fn write(&self, info: &Info, out: &mut String) -> fmt::Result {
        head(
            out,
            "ringboot_info",
            "gauge",
            "What runs: version, I/O backend, TFTP workers.",
        )?;
        out.push_str("ringboot_info{version=\"");
        escape_label(out, &info.version);
        out.push_str("\",backend=\"");
        escape_label(out, &info.backend);
        writeln!(out, "\",workers=\"{}\"}} 1", info.workers)?;

        head(
            out,
            "ringboot_tftp_transfers_active",
            "gauge",
            "Unicast transfers running now.",
        )?;
        writeln!(out, "ringboot_tftp_transfers_active {}", self.active())?;
        counter(
            out,
            "ringboot_tftp_transfers_started_total",
            "Unicast transfers accepted.",
            self.started,
        )?;
        labelled(
            out,
            "ringboot_tftp_transfers_ended_total",
            "counter",
            "Unicast transfers ended, by outcome.",
            Outcome::ALL.iter().map(|o| (*o, self.ended[o.index()])),
        )?;
        labelled(
            out,
            "ringboot_tftp_requests_refused_total",
            "counter",
            "Requests refused with an ERROR, by reason.",
            RefuseReason::ALL
                .iter()
                .map(|r| (*r, self.refused[r.index()])),
        )?;
        counter(
            out,
            "ringboot_tftp_sent_bytes_total",
            "File bytes sent in DATA blocks, resends included.",
            self.bytes_sent,
        )?;
        counter(
            out,
            "ringboot_tftp_blocks_sent_total",
            "DATA blocks sent, resends included.",
            self.blocks_sent,
        )?;
        counter(
            out,
            "ringboot_tftp_blocks_resent_total",
            "DATA blocks sent again.",
            self.blocks_resent,
        )?;
        counter(
            out,
            "ringboot_tftp_timeouts_total",
            "Retransmission timeouts.",
            self.timeouts,
        )?;
        histogram(
            out,
            "ringboot_tftp_transfer_duration_seconds",
            "Completed transfers: request to last acknowledgement.",
            &DURATION_BUCKETS,
            &self.duration,
        )?;
        histogram(
            out,
            "ringboot_tftp_first_block_seconds",
            "Request to the acknowledgement of block 1.",
            &FIRST_BLOCK_BUCKETS,
            &self.first_block,
        )?;
        histogram(
            out,
            "ringboot_tftp_transfer_throughput_bytes_per_second",
            "Completed transfers: file bytes over duration.",
            &THROUGHPUT_BUCKETS,
            &self.throughput,
        )?;

        head(
            out,
            "ringboot_dhcp_messages_total",
            "counter",
            "DHCP messages received and sent, by type, mode and client architecture (combinations seen).",
        )?;
        for t in DhcpType::ALL {
            for m in DhcpMode::ALL {
                for a in ArchClass::ALL {
                    let v = self.dhcp[dhcp_cell(*t, *m, *a)];
                    if v != 0 {
                        writeln!(
                            out,
                            "ringboot_dhcp_messages_total{{type=\"{t}\",mode=\"{m}\",arch=\"{a}\"}} {v}"
                        )?;
                    }
                }
            }
        }
        labelled(
            out,
            "ringboot_dhcp_ignored_total",
            "counter",
            "DHCP messages not answered, by reason.",
            DhcpIgnored::ALL
                .iter()
                .map(|r| (*r, self.dhcp_ignored[r.index()])),
        )?;
        head(
            out,
            "ringboot_dhcp_leases",
            "gauge",
            "Addresses of the pool (full mode), by state.",
        )?;
        writeln!(
            out,
            "ringboot_dhcp_leases{{state=\"in_use\"}} {}",
            self.leases_in_use
        )?;
        writeln!(
            out,
            "ringboot_dhcp_leases{{state=\"free\"}} {}",
            self.leases_free
        )?;

        labelled(
            out,
            "ringboot_multicast_sessions",
            "gauge",
            "Multicast sessions running now, by protocol.",
            McProtocol::ALL
                .iter()
                .map(|p| (*p, self.mc_sessions[p.index()])),
        )?;
        labelled(
            out,
            "ringboot_multicast_members",
            "gauge",
            "Members of the multicast sessions now, by protocol.",
            McProtocol::ALL
                .iter()
                .map(|p| (*p, self.mc_members[p.index()])),
        )?;
        labelled(
            out,
            "ringboot_multicast_sent_bytes_total",
            "counter",
            "File bytes sent to multicast groups, resends included, by protocol.",
            McProtocol::ALL
                .iter()
                .map(|p| (*p, self.mc_bytes[p.index()])),
        )?;
        labelled(
            out,
            "ringboot_multicast_refused_total",
            "counter",
            "Requests for multicast not served by multicast, by reason (RFC 2090: served by unicast instead; PXE MTFTP: refused).",
            McRefusal::ALL
                .iter()
                .map(|r| (*r, self.mc_refused[r.index()])),
        )?;
        Ok(())
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) -> fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) -> fmt::Result {
    head(out, name, "counter", help)?;
    writeln!(out, "{name} {v}")
}

/// A counter or gauge (`kind`) with one enum label: every value is written, zeros included, so
/// that `rate()` starts from zero.
fn labelled<L: LabelValue>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    values: impl Iterator<Item = (L, u64)>,
) -> fmt::Result {
    head(out, name, kind, help)?;
    for (l, v) in values {
        writeln!(out, "{name}{{{}=\"{}\"}} {v}", L::LABEL, l.value())?;
    }
    Ok(())
}

trait LabelValue {
    const LABEL: &'static str;
    fn value(&self) -> &'static str;
}

macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl LabelValue for $t {
            const LABEL: &'static str = <$t>::LABEL;
            fn value(&self) -> &'static str {
                self.as_str()
            }
        }
    )*};
}
label_value!(Outcome, RefuseReason, DhcpIgnored, McProtocol, McRefusal);

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    buckets: &Buckets,
    h: &HistTotals,
) -> fmt::Result {
    head(out, name, "histogram", help)?;
    let mut cumulative = 0u64;
    for (i, &b) in buckets.bounds.iter().enumerate() {
        cumulative = cumulative.wrapping_add(h.counts[i]);
        writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            b as f64 / buckets.per_base as f64
        )?;
    }
    writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count())?;
    writeln!(out, "{name}_sum {}", h.sum as f64 / buckets.per_base as f64)?;
    writeln!(out, "{name}_count {}", h.count())
}

/// A label value as the text format wants it: `\`, `"` and newline escaped.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests;
