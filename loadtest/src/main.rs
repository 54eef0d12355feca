//! `ringboot-loadtest`: replay a PXE boot storm against any TFTP server.
//!
//! Hundreds to thousands of emulated machines, each with its own loopback address and ports, behave
//! like BIOS PXE ROMs, EDK2 or iPXE (profiles in [`plan`]), are multiplexed on a few threads
//! ([`engine`]), check every byte they download, and end in a summary table, JSON, HDR percentile
//! files and an SVG plot ([`report`]). The protocol is ringboot's own sans-IO
//! [`ringboot::proto::tftp::client::Client`]; nothing here parses or builds TFTP packets by hand.
//!
//! Exit status: 0 when every machine completed (or vanished on purpose), 1 when any failed, 2 on a
//! usage or setup error.

mod dhcp;
mod drive;
mod engine;
mod mcast;
mod plan;
mod plot;
mod report;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use drive::Live;
use engine::{Impair, MachineSpec, Shared};
use plan::{Checker, Identity, ProfileKind, Scenario, Step, StepSpec};
use ringboot::proto::rng::Rng;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Replay a PXE boot storm against any TFTP server and check every byte.
#[derive(Parser, Debug)]
#[command(name = "ringboot-loadtest", version, about, long_about = None)]
struct Args {
    /// Server address, ADDR:PORT (the port requests go to). With --dhcp: the TFTP port (default
    /// 69) and the address used when the DHCP answer names no server.
    #[arg(long, required_unless_present = "dhcp")]
    server: Option<String>,
    /// Emulated machines.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// File every machine downloads, sent exactly as given (backslashes, case, leading '/').
    #[arg(long, conflicts_with = "scenario")]
    file: Option<String>,
    /// Boot sequence per machine (TOML, see loadtest/scenarios/) instead of --file.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Firmware behaviour for --file.
    #[arg(long, value_enum, default_value = "uefi")]
    profile: ProfileKind,
    /// custom: blksize to request.
    #[arg(long)]
    blksize: Option<u16>,
    /// custom: windowsize to request (RFC 7440).
    #[arg(long)]
    windowsize: Option<u16>,
    /// custom: request tsize.
    #[arg(long)]
    tsize: bool,
    /// custom: client retransmission timeout in seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// custom: resends before giving up.
    #[arg(long)]
    retries: Option<u32>,
    /// custom: RFC 2349 timeout option to request (whole seconds).
    #[arg(long)]
    timeout_opt: Option<u8>,
    /// custom: run a size probe first, ended with this ERROR code (0 like BIOS, 8 like EDK2).
    #[arg(long)]
    probe: Option<u8>,
    /// custom: accept OACKs that grant options not asked for (EDK2 rejects them).
    #[arg(long)]
    lenient_oack: bool,
    /// Directory holding the same files as the server: every download is compared byte for byte.
    #[arg(long, conflicts_with = "manifest")]
    verify: Option<PathBuf>,
    /// sha256sum-style manifest (`<sha256>  <name>`): every download's SHA-256 is compared.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Check only lengths against tsize (no --verify or --manifest at hand).
    #[arg(long)]
    no_verify: bool,
    /// Write the full report as JSON into FILE ('-': standard output; the summary table then goes
    /// to standard error).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// all-at-once, ramp:SECONDS (evenly spread) or poisson:RATE (machines per second).
    #[arg(long, default_value = "all-at-once")]
    arrival: String,
    /// Fraction of received DATA/OACK packets dropped.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Fraction of ACKs dropped instead of sent.
    #[arg(long, default_value_t = 0.0)]
    ack_loss: f64,
    /// Fraction of received DATA/OACK and sent ACKs duplicated.
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// Fraction of received DATA/OACK delivered after the next packet.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Extra delay of every received packet, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Per-packet processing time of each client in milliseconds (iPXE ~2).
    #[arg(long, default_value_t = 0.0)]
    slow_ms: f64,
    /// Fraction of machines that vanish mid-download (counted as vanished, not failed).
    #[arg(long, default_value_t = 0.0)]
    vanish: f64,
    /// Seed of every random choice (impairments, arrivals, gaps).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Source addresses, one per machine, from this IPv4 range (default 127.1.0.0/16 for a loopback
    /// server, else the kernel's choice).
    #[arg(long)]
    source_ips: Option<String>,
    /// Engine threads (each multiplexes its share of machines with epoll).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Overall bound in seconds: machines still running then fail with reason 'deadline'.
    #[arg(long, default_value_t = 600.0)]
    deadline: f64,
    /// Stop the run when no machine has heard anything from the server this many seconds after
    /// the first request (no server, a firewall, a wrong address). An ICMP error (port, host or
    /// network unreachable) before any answer stops it at once. 0: wait for the clients' own
    /// timeouts (about 28 s for the uefi and bios profiles).
    #[arg(long, value_name = "SECONDS", default_value_t = 6.0)]
    silence_limit: f64,
    /// Write duration.hgrm and ttfb.hgrm (HDR percentile distributions) into this directory.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Write an SVG with throughput and active machines over time and the completion-time CDF
    /// ('-': standard output).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// No progress line and no summary table (JSON and files are still written).
    #[arg(long)]
    quiet: bool,
    /// Multicast machines (--multicast rfc2090|pxe and its options; see loadtest/src/mcast.rs).
    #[command(flatten)]
    mc: mcast::McArgs,
    /// Each machine first does DHCP on --dhcp-interface (full: DISCOVER/OFFER/REQUEST/ACK;
    /// proxy: also the port-4011 boot-server exchange), then its TFTP steps to the server the
    /// answer names. Needs root (port 68, SO_BINDTODEVICE); run it in a network namespace.
    #[arg(long, value_enum, requires = "dhcp_interface")]
    dhcp: Option<dhcp::DhcpMode>,
    /// Interface the DHCP broadcasts leave by.
    #[arg(long)]
    dhcp_interface: Option<String>,
    /// Interface whose counters (/proc/net/dev) are read before and after the run: the wire
    /// bytes and packets of the storm, in the report.
    #[arg(long, value_name = "NAME")]
    iface: Option<String>,
    /// DHCP retransmission timeout in seconds (DISCOVER, REQUEST, port-4011 REQUEST).
    #[arg(long, default_value_t = 1.0)]
    dhcp_timeout: f64,
    /// Sends of each DHCP message before a machine gives up.
    #[arg(long, default_value_t = 4)]
    dhcp_tries: u32,
}

/// The `--dhcp` settings, checked (the sockets are opened once here so that a missing
/// privilege or interface is a usage error, not 1000 failed machines).
fn dhcp_setup(a: &Args, server: SocketAddr) -> Result<Option<dhcp::Setup>> {
    let Some(mode) = a.dhcp else {
        return Ok(None);
    };
    let interface = a.dhcp_interface.clone().unwrap_or_default();
    if !(a.dhcp_timeout > 0.0 && a.dhcp_timeout.is_finite()) || a.dhcp_tries == 0 {
        bail!("--dhcp-timeout must be positive and --dhcp-tries at least 1");
    }
    let IpAddr::V4(ip) = server.ip() else {
        bail!("--dhcp is IPv4 only: give --server an IPv4 address (or none)");
    };
    dhcp_interface_ready(&interface)?;
    dhcp::DhcpPort::open(&interface).map_err(|e| anyhow!("--dhcp: {e}"))?;
    Ok(Some(dhcp::Setup {
        mode,
        interface,
        retransmit: Duration::from_secs_f64(a.dhcp_timeout),
        tries: a.dhcp_tries,
        tftp_port: server.port(),
        fallback: Some(ip).filter(|ip| !ip.is_unspecified()),
    }))
}

/// `--dhcp` needs the interface to exist, be up and carry an IPv4 address: the leases the
/// machines get are recorded, not configured, so their DHCP broadcasts and then their TFTP leave
/// from that address.
fn dhcp_interface_ready(interface: &str) -> Result<()> {
    let c = std::ffi::CString::new(interface)
        .map_err(|_| anyhow!("--dhcp-interface: a NUL byte in the name"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        bail!("--dhcp-interface {interface}: no such interface here (`ip link` lists them)");
    }
    let ifs = ringboot::sys::iface::interfaces().context("listing interface addresses")?;
    if !ifs.iter().any(|i| i.name == interface) {
        bail!(
            "--dhcp-interface {interface} has no IPv4 address or is down. The machines' leases \
             are recorded, not configured, so their DHCP and TFTP packets leave from the \
             interface's own address: give it one on the server's subnet, e.g. \
             `ip addr add 10.0.0.2/24 dev {interface} && ip link set {interface} up`"
        );
    }
    Ok(())
}

enum Arrival {
    AllAtOnce,
    Ramp(f64),
    Poisson(f64),
}

fn parse_arrival(s: &str) -> Result<Arrival> {
    let num = |v: &str, what: &str| -> Result<f64> {
        let x: f64 = v
            .parse()
            .map_err(|_| anyhow!("--arrival {s}: '{v}' is not a number of {what}"))?;
        if !(x.is_finite() && x > 0.0) {
            bail!("--arrival {s}: {what} must be positive");
        }
        Ok(x)
    };
    match s.split_once(':') {
        None if s == "all-at-once" => Ok(Arrival::AllAtOnce),
        Some(("ramp", v)) => Ok(Arrival::Ramp(num(v, "seconds")?)),
        Some(("poisson", v)) => Ok(Arrival::Poisson(num(v, "machines per second")?)),
        _ => bail!("--arrival must be all-at-once, ramp:SECONDS or poisson:RATE, not '{s}'"),
    }
}

/// Arrival offsets for `n` machines.
fn arrivals(a: &Arrival, n: usize, seed: u64) -> Vec<Duration> {
    let mut rng = Rng::derive(seed, u64::MAX);
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            let s = match a {
                Arrival::AllAtOnce => 0.0,
                Arrival::Ramp(secs) => secs * i as f64 / n as f64,
                Arrival::Poisson(rate) => {
                    let at = t;
                    t += rng.exp(1.0 / rate);
                    at
                }
            };
            Duration::from_secs_f64(s)
        })
        .collect()
}

/// The hosts of an IPv4 range `A.B.C.D/LEN` (network and broadcast addresses left out when there
/// is room).
fn parse_range(s: &str) -> Result<(u32, u32)> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| anyhow!("--source-ips: '{ip}' is not an IPv4 address"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| anyhow!("--source-ips: bad prefix length in '{s}'"))?;
    let size = 1u64 << (32 - len);
    let base = u32::from(ip) & (u64::from(u32::MAX) << (32 - len)) as u32;
    if size <= 2 {
        Ok((base, size as u32))
    } else {
        Ok((base + 1, (size - 2) as u32))
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Thousands of sockets need more than the usual 1024 descriptors.
fn raise_fd_limit(need: u64) {
    // SAFETY: plain get/setrlimit on our own process.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < need {
            r.rlim_cur = r.rlim_max.min(need.max(r.rlim_cur));
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn check_fraction(name: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        bail!("--{name} must be a fraction between 0 and 1, not {v}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ringboot-loadtest: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether every machine completed (or vanished on purpose).
fn run(a: Args) -> Result<bool> {
    if a.json.as_deref() == Some(Path::new("-")) && a.plot.as_deref() == Some(Path::new("-")) {
        bail!("--json - and --plot - cannot both write to standard output");
    }
    if let Some(mode) = a.mc.multicast {
        return mcast::run(&a, mode);
    }
    for (n, v) in [
        ("loss", a.loss),
        ("ack-loss", a.ack_loss),
        ("dup", a.dup),
        ("reorder", a.reorder),
        ("vanish", a.vanish),
    ] {
        check_fraction(n, v)?;
    }
    if a.clients == 0 || a.threads == 0 {
        bail!("--clients and --threads must be at least 1");
    }
    if !(a.deadline > 0.0 && a.deadline.is_finite()) || a.delay_ms < 0.0 || a.slow_ms < 0.0 {
        bail!("--deadline must be positive, --delay-ms and --slow-ms not negative");
    }
    if a.verify.is_none() && a.manifest.is_none() && !a.no_verify {
        bail!("say how downloads are checked: --verify DIR (same files as the server), --manifest FILE (sha256sum lines) or --no-verify");
    }
    // With --dhcp and no --server: port 69 of whatever server the DHCP answer names.
    let server_arg = a.server.clone().unwrap_or_else(|| "0.0.0.0:69".into());
    let server: SocketAddr = server_arg
        .to_socket_addrs()
        .with_context(|| format!("--server '{server_arg}' is not ADDR:PORT"))?
        .next()
        .ok_or_else(|| anyhow!("--server '{server_arg}' resolves to nothing"))?;
    let dhcp_setup = dhcp_setup(&a, server)?;
    let arrival = parse_arrival(&a.arrival)?;

    // The steps one machine takes (templates; placeholders are expanded per machine).
    let (specs, scenario_name): (Vec<StepSpec>, Option<String>) = match (&a.scenario, &a.file) {
        (Some(p), _) => {
            let s = Scenario::load(p)?;
            let name = s.name.clone().unwrap_or_else(|| p.display().to_string());
            (s.steps, Some(name))
        }
        (None, Some(f)) => (
            vec![StepSpec {
                file: f.clone(),
                profile: a.profile,
                miss: false,
                custom: plan::Custom {
                    blksize: a.blksize,
                    windowsize: a.windowsize,
                    tsize: a.tsize,
                    timeout: a.timeout,
                    retries: a.retries,
                    timeout_opt: a.timeout_opt,
                    probe: a.probe,
                    strict: a.lenient_oack.then_some(false),
                },
            }],
            None,
        ),
        (None, None) => bail!("give --file NAME or --scenario FILE"),
    };
    let phases: Vec<Arc<[plan::Phase]>> = specs
        .iter()
        .map(|s| plan::phases(s.profile, &s.custom).map(Arc::from))
        .collect::<Result<_>>()?;

    // Source addresses.
    let ips: Box<dyn Fn(usize) -> IpAddr> = match (server.ip(), &a.source_ips) {
        (IpAddr::V6(_), Some(_)) => {
            bail!("--source-ips is IPv4 only; an IPv6 server is reached from ::1")
        }
        (IpAddr::V6(v6), None) => {
            let src = if v6.is_loopback() {
                IpAddr::V6(v6)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            };
            Box::new(move |_| src)
        }
        (IpAddr::V4(v4), r) => {
            let r = match r {
                Some(r) => Some(r.clone()),
                None if v4.is_loopback() => Some("127.1.0.0/16".to_string()),
                None => None,
            };
            match r {
                None => Box::new(|_| IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                Some(r) => {
                    let (base, n) = parse_range(&r)?;
                    Box::new(move |i| IpAddr::V4(Ipv4Addr::from(base + (i as u32 % n))))
                }
            }
        }
    };

    // Expand every machine's plan and map the files to check against (once each).
    let mut checker = Checker::new(a.verify.clone(), a.manifest.as_deref())?;
    let offsets = arrivals(&arrival, a.clients, a.seed);
    let mut per_thread: Vec<Vec<MachineSpec>> = (0..a.threads).map(|_| Vec::new()).collect();
    for (i, start) in offsets.into_iter().enumerate() {
        let ip = ips(i);
        let id = Identity {
            index: i,
            ip: match ip {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
            },
        };
        let mut steps = Vec::with_capacity(specs.len());
        for (s, ph) in specs.iter().zip(&phases) {
            let name = id.expand(&s.file)?;
            let expect = if s.miss {
                plan::Expect::Unchecked
            } else {
                checker.expect(&name)?
            };
            steps.push(Step {
                filename: name.into_bytes(),
                phases: ph.clone(),
                miss: s.miss,
                expect,
            });
        }
        let dhcp = dhcp_setup.as_ref().map(|_| {
            let (arch, ipxe) = dhcp::arch_of(specs[0].profile);
            dhcp::Spec {
                mac: id.mac(),
                arch,
                ipxe,
                xid: dhcp::xid(a.seed, i),
            }
        });
        per_thread[i % a.threads].push(MachineSpec {
            index: i,
            ip,
            start,
            steps,
            dhcp,
        });
    }
    raise_fd_limit(a.clients as u64 * 2 + 256);

    let iface0 = iface_before(&a)?;
    let start = Start::now();
    let t0 = start.t0;
    let shared = Arc::new(Shared {
        server,
        impair: Impair {
            loss: a.loss,
            ack_loss: a.ack_loss,
            dup: a.dup,
            reorder: a.reorder,
            delay: Duration::from_secs_f64(a.delay_ms / 1000.0),
            slow: Duration::from_secs_f64(a.slow_ms / 1000.0),
            vanish: a.vanish,
        },
        seed: a.seed,
        t0,
        deadline: t0 + Duration::from_secs_f64(a.deadline),
        live: Live::default(),
        dhcp: dhcp_setup.clone(),
    });
    let body = {
        let sh = shared.clone();
        move |specs| engine::run_thread(sh.clone(), specs)
    };
    let handles = drive::spawn("engine", per_thread, body);

    let check = ServerCheck {
        server: match (&a.server, &dhcp_setup) {
            (None, Some(_)) => "the DHCP-named server".to_string(),
            _ => server.to_string(),
        },
        silence: (a.silence_limit > 0.0).then(|| Duration::from_secs_f64(a.silence_limit)),
    };
    let mut samples = watch(&handles, &shared.live, t0, a.clients, a.quiet, Some(&check));
    let live = &shared.live;
    let mut results = Vec::with_capacity(a.clients);
    for r in drive::join(handles)? {
        results.extend(r);
    }
    let run = report::Run {
        server: match (&a.server, &dhcp_setup) {
            (None, Some(d)) => {
                format!("DHCP-named server:{} (via {})", server.port(), d.interface)
            }
            _ => server.to_string(),
        },
        profile: match &scenario_name {
            Some(n) => format!("scenario:{n}"),
            None => a.profile.name().to_string(),
        },
        file: a.file.clone(),
        scenario: scenario_name,
    };
    let (mut rep, elapsed) = conclude(&a, &start, run, &mut results, &mut samples, live);
    iface_after(&a, iface0, &mut rep)?;
    summary(&a, &rep.table());
    let stopped = live.server.verdict.lock().unwrap().clone();
    let at_end = Duration::from_secs_f64(elapsed);
    let quiet_check = ServerCheck {
        silence: None,
        ..check
    };
    match stopped {
        Some(v) => eprintln!("ringboot-loadtest: stopped early: {v}"),
        None => {
            if let Some(v) = server_verdict(&live.server, at_end, &quiet_check) {
                eprintln!("ringboot-loadtest: {v}");
            }
        }
    }
    if let Some(p) = &a.json {
        rep.write_json(p)?;
    }
    if let Some(d) = &a.hgrm {
        rep.write_hgrm(d)?;
    }
    if let Some(p) = &a.plot {
        rep.write_plot(p)?;
    }
    Ok(rep.failed == 0)
}

/// The summary table (and other end-of-run text): standard output, or standard error when
/// `--json -` takes standard output; nothing with `--quiet`.
pub(crate) fn summary(a: &Args, text: &str) {
    if a.quiet {
        return;
    }
    if stdout_taken(a) {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}

/// Whether `--json -` or `--plot -` writes to standard output.
fn stdout_taken(a: &Args) -> bool {
    let dash = Some(Path::new("-"));
    a.json.as_deref() == dash || a.plot.as_deref() == dash
}

/// How the watcher tells an absent server from a slow one ([`server_verdict`]).
pub(crate) struct ServerCheck {
    /// The server as the user named it, for the message.
    pub server: String,
    /// `--silence-limit` (None: 0, off).
    pub silence: Option<Duration>,
}

/// Why the run should stop for want of a server, or None while it may still answer. Nothing is
/// decided once any transfer got an answer: a slow server under a long storm is left alone.
/// Before that, an ICMP error to a request (port, host or network unreachable) decides at once,
/// and complete silence decides `silence` after the first request.
pub(crate) fn server_verdict(
    signs: &drive::ServerSigns,
    since_t0: Duration,
    check: &ServerCheck,
) -> Option<String> {
    if signs.answered.load(Relaxed) > 0 {
        return None;
    }
    let server = &check.server;
    let icmp = signs.unreachable.load(Relaxed);
    if icmp > 0 {
        return Some(format!(
            "no server at {server}: the first request{} got an ICMP error before any answer \
             (port unreachable: nothing listens on that port; host or network unreachable: a \
             wrong address or route); failure reason 'unreachable' has the details",
            if icmp == 1 { "" } else { "s" }
        ));
    }
    let first = signs.first_request_us.load(Relaxed);
    let limit = check.silence?;
    let first = Duration::from_micros(first.checked_sub(1)?);
    let quiet = since_t0.checked_sub(first)?;
    (quiet >= limit).then(|| {
        format!(
            "no answer from {server} to any request in {:.1} s, and no ICMP error either: no \
             server there, a firewall dropping TFTP, or a wrong address (--silence-limit 0 \
             waits for the clients' own timeouts)",
            quiet.as_secs_f64()
        )
    })
}

/// The live counters now.
/// When a storm started: by the monotonic clock (its times), the wall clock (the report's
/// date) and the process's CPU time (its CPU share).
pub(crate) struct Start {
    pub t0: Instant,
    wall: SystemTime,
    cpu: f64,
}

impl Start {
    pub(crate) fn now() -> Start {
        Start {
            cpu: cpu_seconds(),
            wall: SystemTime::now(),
            t0: Instant::now(),
        }
    }
}

/// The end of a storm: a last sample, the results in machine order, and the report of `run`
/// with the seconds since the start.
pub(crate) fn conclude(
    a: &Args,
    start: &Start,
    run: report::Run,
    results: &mut [drive::MachineResult],
    samples: &mut Vec<report::Sample>,
    live: &Live,
) -> (report::Report, f64) {
    let elapsed = start.t0.elapsed().as_secs_f64();
    samples.push(sample(live, elapsed));
    results.sort_by_key(|r| r.index);
    let meta = report::Meta {
        run,
        threads: a.threads,
        seed: a.seed,
        cpu_seconds: cpu_seconds() - start.cpu,
        elapsed,
        started_at: start.wall,
    };
    (report::build(results, samples, meta), elapsed)
}

fn sample(live: &Live, t: f64) -> report::Sample {
    let started = live.started.load(Relaxed);
    let ended =
        live.completed.load(Relaxed) + live.failed.load(Relaxed) + live.vanished.load(Relaxed);
    report::Sample {
        t,
        bytes: live.bytes.load(Relaxed),
        active: started.saturating_sub(ended),
    }
}

/// `--iface`: the interface's counters before the run (a usage error when unreadable).
fn iface_before(a: &Args) -> Result<Option<report::IfaceCounters>> {
    a.iface.as_deref().map(report::read_iface).transpose()
}

/// `--iface`: what crossed the interface during the run, into the report.
fn iface_after(
    a: &Args,
    before: Option<report::IfaceCounters>,
    rep: &mut report::Report,
) -> Result<()> {
    if let (Some(name), Some(before)) = (&a.iface, before) {
        let after = report::read_iface(name)?;
        rep.network.iface = Some(report::iface_delta(name, before, after, rep.bytes));
    }
    Ok(())
}

/// Wait for the engine threads, sampling the live counters every 250 ms (for the plot), showing
/// progress on a terminal and, with `check`, stopping the run early when there is no server.
/// Returns the samples; the caller adds the final one after joining.
pub(crate) fn watch<T>(
    handles: &[std::thread::JoinHandle<T>],
    live: &Live,
    t0: Instant,
    clients: usize,
    quiet: bool,
    check: Option<&ServerCheck>,
) -> Vec<report::Sample> {
    let tty = std::io::stderr().is_terminal() && !quiet;
    let mut samples = vec![report::Sample::default()];
    let tick = report::SAMPLE_EVERY;
    let mut next = t0 + tick;
    while handles.iter().any(|h| !h.is_finished()) {
        let now = Instant::now();
        if now < next {
            // Monitoring only: the engines never sleep to pace traffic.
            std::thread::sleep((next - now).min(Duration::from_millis(20)));
            continue;
        }
        next += tick;
        let since = now.duration_since(t0);
        if let Some(c) = check {
            if !live.abort.load(Relaxed) {
                if let Some(v) = server_verdict(&live.server, since, c) {
                    *live.server.verdict.lock().unwrap() = Some(v);
                    live.abort.store(true, Relaxed);
                }
            }
        }
        let t = since.as_secs_f64();
        let prev = *samples.last().expect("starts with one sample");
        let cur = sample(live, t);
        samples.push(cur);
        if tty {
            let gbps = if t > prev.t {
                cur.bytes.saturating_sub(prev.bytes) as f64 * 8.0 / (t - prev.t) / 1e9
            } else {
                0.0
            };
            let mut e = std::io::stderr().lock();
            let _ = write!(
                e,
                "\r\x1b[2K{:6.1}s  started {}/{} | completed {} | failed {} | vanished {} | {:.2} Gbit/s",
                t,
                live.started.load(Relaxed),
                clients,
                live.completed.load(Relaxed),
                live.failed.load(Relaxed),
                live.vanished.load(Relaxed),
                gbps
            );
            let _ = e.flush();
        }
    }
    if tty {
        eprint!("\r\x1b[2K");
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_and_ranges() {
        let r = arrivals(&Arrival::Ramp(10.0), 5, 1);
        assert_eq!(r[0], Duration::ZERO);
        assert_eq!(r[4], Duration::from_secs(8));
        let p = arrivals(&Arrival::Poisson(100.0), 1000, 1);
        let last = p[999].as_secs_f64();
        assert!((7.0..13.0).contains(&last), "{last}");
        assert!(p.windows(2).all(|w| w[0] <= w[1]));
        assert!(matches!(
            parse_arrival("all-at-once"),
            Ok(Arrival::AllAtOnce)
        ));
        assert!(parse_arrival("ramp:x").is_err());
        assert!(parse_arrival("poisson:0").is_err());
        assert_eq!(
            parse_range("127.1.0.0/16").unwrap(),
            (u32::from(Ipv4Addr::new(127, 1, 0, 1)), 65534)
        );
        assert_eq!(
            parse_range("127.0.0.9/32").unwrap(),
            (u32::from(Ipv4Addr::new(127, 0, 0, 9)), 1)
        );
        assert!(parse_range("127.0.0.0/33").is_err());
    }

    #[test]
    fn absent_server_verdicts() {
        let check = |silence: Option<u64>| ServerCheck {
            server: "10.0.0.1:69".into(),
            silence: silence.map(Duration::from_secs),
        };
        let s = drive::ServerSigns::default();
        let at = Duration::from_secs;
        // Nothing sent yet: nothing to decide.
        assert_eq!(server_verdict(&s, at(60), &check(Some(6))), None);
        s.first_request_us.store(1_000_001, Relaxed); // first request at 1 s
        assert_eq!(server_verdict(&s, at(6), &check(Some(6))), None);
        let v = server_verdict(&s, at(7), &check(Some(6))).unwrap();
        assert!(
            v.starts_with("no answer from 10.0.0.1:69 to any request in 6.0 s"),
            "{v}"
        );
        assert_eq!(
            server_verdict(&s, at(600), &check(None)),
            None,
            "--silence-limit 0"
        );
        // An ICMP error decides at once.
        s.unreachable.store(1, Relaxed);
        let v = server_verdict(&s, at(1), &check(None)).unwrap();
        assert!(
            v.starts_with("no server at 10.0.0.1:69: the first request got"),
            "{v}"
        );
        // Once anything answered, a slow server is never called absent.
        s.answered.store(1, Relaxed);
        assert_eq!(server_verdict(&s, at(600), &check(Some(6))), None);
    }
}
