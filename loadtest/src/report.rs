//! What a person sees at the end: the summary table, `--json`, `--hgrm` and `--plot`.

use crate::drive::{Counters, MachineResult, Outcome};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
/// Jain's fairness index, shared with the congestion controller's simulation.
pub use ringboot::proto::sim::jain;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// One reading of the live counters, taken every [`SAMPLE_EVERY`] while the storm runs and once
/// more at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the storm started.
    pub t: f64,
    /// Bytes received so far, all machines together.
    pub bytes: u64,
    /// Machines started and not finished (completed, failed or vanished).
    pub active: u64,
}

/// How often the live counters are sampled (progress line, plot, `throughput_samples`).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Percentiles of one distribution, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub min: f64,
    pub mean: f64,
    pub count: u64,
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        min: ms(h.min()),
        mean: h.mean() / 1000.0,
        count: h.len(),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Blocks {
    pub in_order: u64,
    /// Blocks received again: server retransmissions and injected duplicates.
    pub retransmitted_or_duplicate: u64,
    pub out_of_order: u64,
}

/// The `--dhcp` phase over all machines.
#[derive(Clone, Debug, Serialize)]
pub struct DhcpSummary {
    /// Machines that got an address and a boot file.
    pub leased: u64,
    pub failed: u64,
    /// Distinct addresses among the leases (equal to `leased` unless a server gave one twice).
    pub distinct_addresses: u64,
    /// The TFTP servers the answers named.
    pub tftp_servers: Vec<String>,
    pub retransmits: u64,
    pub naks: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Impairments {
    pub dropped_data: u64,
    pub dropped_acks: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub slow_queue_overflow: u64,
}

/// What a network engineer reads off a storm (issue 10). Shares are of the DATA blocks the
/// machines received, all copies counted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Network {
    /// DATA blocks received: in order, again, and ahead of a gap.
    pub blocks_received: u64,
    /// Received blocks that brought nothing new: copies the machine already had plus blocks
    /// after a gap (dropped by the machine, so sent again). On a path that loses nothing this is
    /// the share of resends among the blocks received; with loss it is a lower bound (a resend
    /// of a lost block arrives as new).
    pub resent_share: f64,
    /// Received blocks the machine already had (spurious resends, duplicated packets).
    pub duplicate_share: f64,
    /// Jain's fairness index of per-machine throughput (completed machines): 1 when all got the
    /// same rate, 1/n when one got everything.
    pub jain_index: f64,
    /// p99 / p50 of completion time (completed machines).
    pub p99_over_p50: f64,
    /// Interface counters around the run (`--iface`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<IfaceDelta>,
}

/// Counters of one interface (`/proc/net/dev`), as read at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct IfaceCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
}

/// What crossed an interface during the run. Packets are what the interface counts: on loopback
/// or a veth a GSO train may count as one packet (its bytes count one set of headers).
#[derive(Clone, Debug, Default, Serialize)]
pub struct IfaceDelta {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    /// Received wire bytes (frames, headers included) per byte of file payload delivered: the
    /// cost of headers, ACK-path aside, plus every resent or duplicate block.
    pub rx_wire_per_file_byte: f64,
}

/// Read the counters of interface `name` (`--iface`) from `/proc/net/dev`, which shows the
/// interfaces of this process's network namespace (sysfs shows those of whoever mounted it, so
/// it is wrong in a namespace entered with `setns` alone).
pub fn read_iface(name: &str) -> Result<IfaceCounters> {
    let text = std::fs::read_to_string("/proc/net/dev")
        .with_context(|| format!("--iface {name}: cannot read /proc/net/dev"))?;
    parse_net_dev(&text, name)
        .ok_or_else(|| anyhow::anyhow!("--iface {name}: no such interface in this namespace"))
}

/// The counters of `name` in the text of `/proc/net/dev`.
fn parse_net_dev(text: &str, name: &str) -> Option<IfaceCounters> {
    text.lines().find_map(|l| {
        let (n, rest) = l.split_once(':')?;
        if n.trim() != name {
            return None;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        (v.len() >= 10).then(|| IfaceCounters {
            rx_bytes: v[0],
            rx_packets: v[1],
            rx_dropped: v[3],
            tx_bytes: v[8],
            tx_packets: v[9],
        })
    })
}

/// The difference of two readings of interface `name`, against `file_bytes` delivered.
pub fn iface_delta(
    name: &str,
    before: IfaceCounters,
    after: IfaceCounters,
    file_bytes: u64,
) -> IfaceDelta {
    let rx_bytes = after.rx_bytes.saturating_sub(before.rx_bytes);
    IfaceDelta {
        name: name.to_string(),
        rx_bytes,
        tx_bytes: after.tx_bytes.saturating_sub(before.tx_bytes),
        rx_packets: after.rx_packets.saturating_sub(before.rx_packets),
        tx_packets: after.tx_packets.saturating_sub(before.tx_packets),
        rx_dropped: after.rx_dropped.saturating_sub(before.rx_dropped),
        rx_wire_per_file_byte: if file_bytes > 0 {
            rx_bytes as f64 / file_bytes as f64
        } else {
            0.0
        },
    }
}

/// The [`Network`] section from the machines' results.
fn network(results: &[MachineResult], c: &Counters, duration_hist: &Histogram<u64>) -> Network {
    let received = c.blocks + c.duplicates + c.out_of_order;
    let share = |x: u64| {
        if received > 0 {
            x as f64 / received as f64
        } else {
            0.0
        }
    };
    let rates = results
        .iter()
        .filter_map(|r| match (&r.outcome, r.started) {
            (Outcome::Completed, Some(s)) if r.ended > s => {
                Some(r.bytes as f64 / (r.ended - s).as_secs_f64())
            }
            _ => None,
        });
    let p50 = duration_hist.value_at_quantile(0.50) as f64;
    Network {
        blocks_received: received,
        resent_share: share(c.duplicates + c.out_of_order),
        duplicate_share: share(c.duplicates),
        jain_index: jain(rates),
        p99_over_p50: if duration_hist.is_empty() || p50 <= 0.0 {
            0.0
        } else {
            duration_hist.value_at_quantile(0.99) as f64 / p50
        },
        iface: None,
    }
}

/// What ran against what, as the command line named it (the first keys of the report).
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub server: String,
    pub profile: String,
    pub file: Option<String>,
    pub scenario: Option<String>,
}

impl Run {
    /// "uefi 'boot.wim'", "scenario winpe" or "uefi"; with `size` ("64.0 MiB") after the file,
    /// or per machine after a scenario.
    pub fn what(&self, size: Option<&str>) -> String {
        match (&self.scenario, &self.file, size) {
            (Some(sc), _, None) => format!("scenario {sc}"),
            (Some(sc), _, Some(size)) => format!("scenario {sc} ({size} per machine)"),
            (None, Some(f), None) => format!("{} '{f}'", self.profile),
            (None, Some(f), Some(size)) => format!("{} '{f}' ({size})", self.profile),
            (None, None, _) => self.profile.clone(),
        }
    }
}

/// The whole report; also the `--json` document.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub run: Run,
    pub clients: u64,
    pub completed: u64,
    pub failed: u64,
    pub vanished: u64,
    pub bytes: u64,
    pub wall_seconds: f64,
    pub throughput_bps: f64,
    pub throughput_gbps: f64,
    pub throughput_mbytes_per_s: f64,
    /// Per machine, first packet to last step done (completed machines).
    pub duration_ms: Percentiles,
    /// Per machine, first packet to first in-order DATA block.
    pub ttfb_ms: Percentiles,
    /// Per machine, first DISCOVER to the last ACK (`--dhcp`; also inside `duration_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp_ms: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpSummary>,
    pub failures: BTreeMap<String, u64>,
    pub failure_examples: BTreeMap<String, String>,
    pub requests: u64,
    pub expected_misses: u64,
    pub blocks: Blocks,
    pub client_timeouts: u64,
    pub acks_sent: u64,
    pub foreign_tid_packets: u64,
    pub impairments: Impairments,
    pub network: Network,
    pub loadtest_cpu_seconds: f64,
    pub loadtest_cpu_share: f64,
    pub threads: usize,
    pub seed: u64,
    /// When the storm started (UTC, RFC 3339).
    pub started_at: String,
    /// `[seconds since start, bits per second]` every 250 ms: the average over the interval that
    /// ends there (a last interval shorter than half of that is merged into the one before).
    pub throughput_samples: Vec<[f64; 2]>,
    /// `[seconds since start, machines active]` at the same instants (plus `[0, 0]`).
    pub active_samples: Vec<[f64; 2]>,
    /// Bytes one completed machine received (its file, or all its steps), for the plot title.
    #[serde(skip)]
    pub bytes_per_machine: Option<u64>,
    /// Completion times in seconds, sorted (for the CDF).
    #[serde(skip)]
    pub completion_s: Vec<f64>,
    #[serde(skip)]
    pub duration_hist: Histogram<u64>,
    #[serde(skip)]
    pub ttfb_hist: Histogram<u64>,
    #[serde(skip)]
    pub dhcp_hist: Option<Histogram<u64>>,
}

/// Run description the engine does not know.
pub struct Meta {
    pub run: Run,
    pub threads: usize,
    pub seed: u64,
    pub cpu_seconds: f64,
    pub elapsed: f64,
    /// Wall-clock time of the start (the plot title, `started_at`).
    pub started_at: SystemTime,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 24 * 3600 * 1_000_000, 3).expect("valid histogram bounds")
}

/// `samples`: the live counters every [`SAMPLE_EVERY`], then once at the end.
pub fn build(results: &[MachineResult], samples: &[Sample], meta: Meta) -> Report {
    let mut duration_hist = hist();
    let mut ttfb_hist = hist();
    let mut failures = BTreeMap::new();
    let mut examples = BTreeMap::new();
    let mut c = Counters::default();
    let (mut completed, mut failed, mut vanished, mut bytes) = (0, 0, 0, 0);
    let mut first = f64::MAX;
    let mut last: f64 = 0.0;
    let mut completion_s = Vec::new();
    for r in results {
        c.add(&r.counters);
        bytes += r.bytes;
        if let Some(s) = r.started {
            first = first.min(s.as_secs_f64());
            last = last.max(r.ended.as_secs_f64());
            if let Some(f) = r.first_data {
                ttfb_hist.saturating_record((f - s).as_micros().max(1) as u64);
            }
        }
        match &r.outcome {
            Outcome::Completed => {
                completed += 1;
                if let Some(s) = r.started {
                    let d = r.ended - s;
                    duration_hist.saturating_record(d.as_micros().max(1) as u64);
                    completion_s.push(d.as_secs_f64());
                }
            }
            Outcome::Vanished => vanished += 1,
            Outcome::Failed { reason, detail } => {
                failed += 1;
                *failures.entry(reason.clone()).or_insert(0) += 1;
                examples
                    .entry(reason.clone())
                    .or_insert_with(|| detail.clone());
            }
        }
    }
    completion_s.sort_by(f64::total_cmp);
    let network = network(results, &c, &duration_hist);
    let (dhcp_hist, dhcp) = dhcp_summary(results);
    let wall = if first <= last {
        last - first
    } else {
        meta.elapsed
    };
    let bps = if wall > 0.0 {
        bytes as f64 * 8.0 / wall
    } else {
        0.0
    };
    let (throughput_samples, active_samples) = series(samples);
    let bytes_per_machine = results
        .iter()
        .filter(|r| r.outcome == Outcome::Completed)
        .map(|r| r.bytes)
        .max();
    Report {
        run: meta.run,
        clients: results.len() as u64,
        completed,
        failed,
        vanished,
        bytes,
        wall_seconds: wall,
        throughput_bps: bps,
        throughput_gbps: bps / 1e9,
        throughput_mbytes_per_s: bps / 8e6,
        duration_ms: percentiles(&duration_hist),
        ttfb_ms: percentiles(&ttfb_hist),
        dhcp_ms: dhcp_hist.as_ref().map(percentiles),
        dhcp,
        failures,
        failure_examples: examples,
        requests: c.requests,
        expected_misses: c.misses,
        blocks: Blocks {
            in_order: c.blocks,
            retransmitted_or_duplicate: c.duplicates,
            out_of_order: c.out_of_order,
        },
        client_timeouts: c.timeouts,
        acks_sent: c.acks_sent,
        foreign_tid_packets: c.foreign,
        impairments: Impairments {
            dropped_data: c.dropped_in,
            dropped_acks: c.dropped_acks,
            duplicated: c.duplicated,
            reordered: c.reordered,
            slow_queue_overflow: c.overflow,
        },
        network,
        loadtest_cpu_seconds: meta.cpu_seconds,
        loadtest_cpu_share: if meta.elapsed > 0.0 {
            meta.cpu_seconds / meta.elapsed
        } else {
            0.0
        },
        threads: meta.threads,
        seed: meta.seed,
        started_at: rfc3339(meta.started_at),
        throughput_samples,
        active_samples,
        bytes_per_machine,
        completion_s,
        duration_hist,
        ttfb_hist,
        dhcp_hist,
    }
}

/// The `--dhcp` histogram and summary (None when no machine had a DHCP phase).
fn dhcp_summary(results: &[MachineResult]) -> (Option<Histogram<u64>>, Option<DhcpSummary>) {
    let phases: Vec<_> = results.iter().filter_map(|r| r.dhcp.as_ref()).collect();
    if phases.is_empty() {
        return (None, None);
    }
    let mut h = hist();
    let mut addrs = std::collections::BTreeSet::new();
    let mut servers = std::collections::BTreeSet::new();
    let mut s = DhcpSummary {
        leased: 0,
        failed: 0,
        distinct_addresses: 0,
        tftp_servers: vec![],
        retransmits: 0,
        naks: 0,
    };
    for d in phases {
        s.retransmits += u64::from(d.retransmits);
        s.naks += u64::from(d.naks);
        match (d.duration, d.address) {
            (Some(t), Some(a)) => {
                s.leased += 1;
                h.saturating_record(t.as_micros().max(1) as u64);
                addrs.insert(a);
            }
            _ => s.failed += 1,
        }
        servers.extend(d.tftp_server);
    }
    s.distinct_addresses = addrs.len() as u64;
    s.tftp_servers = servers.iter().map(|a| a.to_string()).collect();
    (Some(h), Some(s))
}

fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

impl Report {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let what = self.run.what(None);
        let _ = writeln!(
            s,
            "ringboot-loadtest: {} x {} -> {} (seed {}, {} thread{})",
            self.clients,
            what,
            self.run.server,
            self.seed,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        );
        s.push_str(&self.machines_line());
        let _ = writeln!(
            s,
            "  transferred  {} in {:.2} s = {:.3} Gbit/s ({:.1} MB/s)",
            human_bytes(self.bytes),
            self.wall_seconds,
            self.throughput_gbps,
            self.throughput_mbytes_per_s
        );
        let _ = writeln!(
            s,
            "  {:<22}{:>11}{:>11}{:>11}{:>11}",
            "", "p50", "p90", "p99", "max"
        );
        for (name, p) in [
            ("duration (ms)", &self.duration_ms),
            ("first block (ms)", &self.ttfb_ms),
        ]
        .into_iter()
        .chain(self.dhcp_ms.as_ref().map(|p| ("dhcp (ms)", p)))
        {
            let _ = writeln!(
                s,
                "  {:<22}{:>11.1}{:>11.1}{:>11.1}{:>11.1}",
                name, p.p50, p.p90, p.p99, p.max
            );
        }
        if let Some(d) = &self.dhcp {
            let _ = writeln!(
                s,
                "  dhcp         {} leased ({} distinct addresses), {} failed; {} retransmits, {} NAKs; TFTP from {}",
                d.leased,
                d.distinct_addresses,
                d.failed,
                d.retransmits,
                d.naks,
                if d.tftp_servers.is_empty() { "-".to_string() } else { d.tftp_servers.join(", ") }
            );
        }
        let _ = writeln!(
            s,
            "  blocks       {} in order, {} retransmitted/duplicate, {} out of order",
            self.blocks.in_order, self.blocks.retransmitted_or_duplicate, self.blocks.out_of_order
        );
        let _ = writeln!(
            s,
            "  requests     {} (probes included), {} expected misses; client timeouts {}; ACKs sent {}",
            self.requests, self.expected_misses, self.client_timeouts, self.acks_sent
        );
        let i = &self.impairments;
        if i.dropped_data + i.dropped_acks + i.duplicated + i.reordered + i.slow_queue_overflow > 0
            || self.foreign_tid_packets > 0
        {
            let _ = writeln!(
                s,
                "  impairments  dropped {} DATA/OACK, {} ACKs; duplicated {}; reordered {}; \
                 slow-queue drops {}; foreign-TID packets {}",
                i.dropped_data,
                i.dropped_acks,
                i.duplicated,
                i.reordered,
                i.slow_queue_overflow,
                self.foreign_tid_packets
            );
        }
        self.network_lines(&mut s);
        let _ = writeln!(
            s,
            "  loadtest CPU {:.2} s ({:.0}% of wall time, {} thread{})",
            self.loadtest_cpu_seconds,
            self.loadtest_cpu_share * 100.0,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        );
        if !self.failures.is_empty() {
            let _ = writeln!(s, "  failures:");
            for (reason, n) in &self.failures {
                let ex = self
                    .failure_examples
                    .get(reason)
                    .map(String::as_str)
                    .unwrap_or("");
                let _ = writeln!(s, "    {reason:<18}{n:>7}  e.g. {ex}");
            }
        }
        s
    }

    /// The network lines of the summary table (see [`Network`]).
    fn network_lines(&self, s: &mut String) {
        let n = &self.network;
        let _ = writeln!(
            s,
            "  network      resent {:.2}% and duplicate {:.2}% of {} blocks received; Jain {:.3}; \
             p99/p50 {:.2}",
            n.resent_share * 100.0,
            n.duplicate_share * 100.0,
            n.blocks_received,
            n.jain_index,
            n.p99_over_p50
        );
        if let Some(i) = &n.iface {
            let _ = writeln!(
                s,
                "  wire ({:<6}) received {} in {} packets ({:.4} per file byte, {} dropped); sent {} in {} packets",
                i.name,
                human_bytes(i.rx_bytes),
                i.rx_packets,
                i.rx_wire_per_file_byte,
                i.rx_dropped,
                human_bytes(i.tx_bytes),
                i.tx_packets
            );
        }
    }

    /// The report as JSON into `path` (`-`: standard output).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_text(path, &(serde_json::to_string_pretty(self)? + "\n"))
    }

    /// `duration.hgrm` and `ttfb.hgrm` in `dir` (HdrHistogram's classic percentile table, ms).
    pub fn write_hgrm(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dhcp = self.dhcp_hist.as_ref().map(|h| ("dhcp", h));
        for (name, h) in [("duration", &self.duration_hist), ("ttfb", &self.ttfb_hist)]
            .into_iter()
            .chain(dhcp)
        {
            let p = dir.join(format!("{name}.hgrm"));
            std::fs::write(&p, hgrm(h)).with_context(|| format!("cannot write {}", p.display()))?;
        }
        Ok(())
    }
}

impl Report {
    /// The machines line of the summary: the total first, then each outcome, so no count reads
    /// as another's label.
    pub fn machines_line(&self) -> String {
        format!(
            "  machines: {} | completed {} | failed {} | vanished {}\n",
            self.clients, self.completed, self.failed, self.vanished
        )
    }
}

/// Write `text` to `path`, or to standard output when `path` is `-`.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("cannot write to standard output")
    } else {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// The plotted series from the samples: throughput over each interval (`[end, bits/s]`) and the
/// active machines (`[t, n]`, from `[0, 0]`). A last interval shorter than half a sampling period
/// (the final reading after the engines stopped) is merged into the one before, so its few
/// bytes over a few milliseconds do not draw a spike.
pub fn series(samples: &[Sample]) -> (Vec<[f64; 2]>, Vec<[f64; 2]>) {
    let mut kept: Vec<Sample> = Vec::with_capacity(samples.len());
    let half = SAMPLE_EVERY.as_secs_f64() / 2.0;
    for (i, &x) in samples.iter().enumerate() {
        let last = i + 1 == samples.len();
        if last && kept.len() >= 2 && x.t - kept[kept.len() - 1].t < half {
            kept.pop();
        }
        if kept.last().is_none_or(|p| x.t > p.t) {
            kept.push(x);
        }
    }
    let mut rate = Vec::with_capacity(kept.len());
    let mut active = vec![[0.0, 0.0]];
    for w in kept.windows(2) {
        let dt = w[1].t - w[0].t;
        rate.push([
            w[1].t,
            w[1].bytes.saturating_sub(w[0].bytes) as f64 * 8.0 / dt,
        ]);
        active.push([w[1].t, w[1].active as f64]);
    }
    (rate, active)
}

/// `2026-01-31T12:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (H. Hinnant's algorithm, proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// HdrHistogram's classic `.hgrm` percentile distribution (values recorded in µs, printed in ms).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if h.is_empty() {
        let _ = writeln!(
            s,
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
            0.0, 0.0
        );
        let _ = writeln!(s, "#[Max     = {:>12.3}, Total count    = {:>12}]", 0.0, 0);
        return s;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let ms = h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{:>12.3} {:>2.12} {:>10} {:>14.2}",
                ms,
                q,
                total,
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(s, "{:>12.3} {:>2.12} {:>10}", ms, q, total);
        }
    }
    let sub_buckets = (2 * 10u64.pow(h.sigfig() as u32)).next_power_of_two();
    let _ = writeln!(
        s,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets
    );
    s
}

#[cfg(test)]
pub(crate) mod tests;
