//! The `ringboot` binary: command line, logging, signals; the work is in the library.
//!
//! `ringboot serve --root DIR` binds the listeners, logs `listening on ADDR[, ADDR...] (backend=...,
//! workers=N)` once every worker is ready, and runs until SIGINT or SIGTERM (exit code 0).
//!
//! At start the soft descriptor limit is raised to the hard one, and the transfer caps are sized
//! to it (see `ringboot::server::descriptor_budget`). A worker or service thread (DHCP,
//! multicast) that fails, panics or ends on its own stops the process: one ERROR line naming it
//! and why, then exit code 1 (a supervisor restarts it); nothing stops silently.

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ringboot::dhcp::{config::MtftpConfig, DhcpConfig, DhcpMode};
use ringboot::proto::tftp::options::{BlockSize, Limits, WindowSize};
use ringboot::server::mcast::{self, GroupPool, McConfig, MtftpFile};
use ringboot::server::{
    self as srv, AdmissionConfig, BackendChoice, Fault, ListenAddr, PortRange, Server,
    ServerConfig, Shutdown,
};
use ringboot::store::{self, Store, StoreOptions};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{error, info, warn};
use tracing_appender::non_blocking::{ErrorCounter, WorkerGuard};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringboot",
    version,
    about = "Network-boot content server: TFTP from memory maps",
    // A value from the command line overrides the same key of --config (see config_argv).
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the files below a directory over TFTP (read-only).
    Serve(ServeArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum IoBackend {
    /// io_uring when it works here, else epoll.
    Auto,
    /// io_uring, or fail.
    Uring,
    /// epoll.
    Fallback,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Faults for the tests of the failure handling (hidden `--fault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FaultArg {
    /// A worker panics on its first request.
    WorkerPanic,
    /// A worker's loop fails on its first request.
    WorkerError,
    /// A service thread ends on its own shortly after start.
    ServiceExit,
    /// A service thread panics shortly after start.
    ServicePanic,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML file with any of these options as keys (`max_blksize = 1468`, `listen = [...]`,
    /// DHCP in a `[dhcp]` table); the command line wins over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory to serve; requests cannot leave it (or the config key `root`).
    #[arg(long, value_name = "DIR", required_unless_present = "config")]
    root: Option<PathBuf>,
    /// Address to listen on; repeatable. Default: 0.0.0.0:69 and [::]:69.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Worker threads, each with its own listening socket. Default: one per CPU.
    #[arg(long, value_name = "N")]
    workers: Option<NonZeroUsize>,
    /// Largest block size granted (RFC 2348).
    #[arg(long, value_name = "N", default_value_t = 65464,
          value_parser = clap::value_parser!(u16).range(8..=65464))]
    max_blksize: u16,
    /// Largest window granted (RFC 7440).
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=32767))]
    max_window: u16,
    /// Largest number of payload bytes in one window; windows are reduced to fit.
    #[arg(long, value_name = "N", default_value_t = 131072,
          value_parser = clap::value_parser!(u64).range(8..=1 << 30))]
    max_window_bytes: u64,
    /// Ceiling of the retransmission timeout, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=255))]
    timeout: u64,
    /// Floor of the adaptive retransmission timeout, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=60000))]
    min_rto: u64,
    /// Retransmissions (in timeout ceilings of silence) before a transfer is abandoned.
    #[arg(long, value_name = "N", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    retries: u32,
    /// Local ports for transfer sockets, chosen at random in the range. Default: any ephemeral
    /// port (the kernel's random choice).
    #[arg(long, value_name = "LOW:HIGH")]
    port_range: Option<PortRange>,
    /// Transfers at once, all clients together; over it a request gets ERROR 0. Default: sized
    /// to the descriptor limit (half of what is left after the fixed descriptors), at most 4096.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    max_transfers: Option<u64>,
    /// Transfers at once from one client address (an IPv6 /64 counts as one); also the burst of
    /// --client-rate. Default: an eighth of --max-transfers, between 1 and 64.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    max_transfers_per_client: Option<u64>,
    /// New transfers per second from one client address (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 16)]
    client_rate: u32,
    /// Test only: inject a fault to check that it stops the server with a clear error.
    #[arg(long, value_enum, hide = true)]
    fault: Option<FaultArg>,
    /// Allow blocks larger than the interface MTU (IP fragmentation).
    #[arg(long)]
    allow_fragmentation: bool,
    /// Files up to this size are served from memory instead of a map.
    #[arg(long, value_name = "BYTES", default_value_t = 65536)]
    small_file_limit: u64,
    /// I/O backend.
    #[arg(long, value_enum, default_value_t = IoBackend::Auto)]
    io_backend: IoBackend,
    /// More logging: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Serve FILE by PXE MTFTP to multicast GROUP on client port CLIENTPORT; repeatable.
    #[arg(long, value_name = "FILE@GROUP:CLIENTPORT")]
    mtftp: Vec<MtftpFile>,
    /// PXE MTFTP server port.
    #[arg(long, value_name = "PORT", default_value_t = 1759)]
    mtftp_port: u16,
    /// Enable RFC 2090 multicast, drawing session groups from this range (e.g. 239.255.42.0/24).
    #[arg(long, value_name = "CIDR")]
    multicast_groups: Option<GroupPool>,
    /// Client (group) port announced in RFC 2090 OACKs.
    #[arg(long, value_name = "PORT", default_value_t = 1758)]
    multicast_port: u16,
    /// Rate cap of each multicast session, in Mbit/s of payload (0: no cap).
    #[arg(long, value_name = "MBIT", default_value_t = 100)]
    multicast_rate: u64,
    /// Blocks sent between two master ACKs in a multicast session.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    multicast_window: u16,
    /// Wait for the master's ACK before resending a window, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    multicast_timeout: u64,
    /// TTL of multicast packets (1: this subnet only).
    #[arg(long, value_name = "N", default_value_t = 1)]
    multicast_ttl: u32,
    /// Address of the interface multicast leaves by. Default: the routing table's choice.
    #[arg(long, value_name = "ADDR")]
    multicast_interface: Option<Ipv4Addr>,
    /// Deliver our multicast to clients on this host too (IP_MULTICAST_LOOP).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    multicast_loop: bool,
    /// Members of one RFC 2090 session at most; later requests are served by unicast.
    #[arg(long, value_name = "N", default_value_t = mcast::DEFAULT_MAX_MEMBERS as u32,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    multicast_max_members: u32,
    /// RFC 2090 sessions one client address may be a member of at once; past that, unicast.
    #[arg(long, value_name = "N", default_value_t = mcast::DEFAULT_MAX_PER_SOURCE as u32,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    multicast_max_per_source: u32,

    /// DHCP responder: proxy (beside an existing DHCP server), full (isolated lab) or off.
    /// Config file: `[dhcp] mode`.
    #[arg(long, value_name = "MODE", default_value_t = DhcpMode::Off)]
    dhcp: DhcpMode,
    /// Interface the DHCP responder serves. Config file: `[dhcp] interface`.
    #[arg(long, value_name = "IF")]
    dhcp_interface: Option<String>,
    /// Boot file handed to every client unless a rule says otherwise. Config: `[dhcp] boot_file`.
    #[arg(long, value_name = "FILE")]
    boot_file: Option<String>,
    /// Full mode: the address pool. Config file: `[dhcp] range`.
    #[arg(long, value_name = "START,END")]
    dhcp_range: Option<String>,
    /// Full mode: where leases persist. Config file: `[dhcp] lease_file`.
    #[arg(long, value_name = "PATH")]
    dhcp_lease_file: Option<PathBuf>,
}

/// Flags whose config key lives in the `[dhcp]` table (read by `DhcpConfig`), not at the top.
const DHCP_FLAGS: [(&str, &str); 5] = [
    ("dhcp", "mode"),
    ("dhcp_interface", "interface"),
    ("boot_file", "boot_file"),
    ("dhcp_range", "range"),
    ("dhcp_lease_file", "lease_file"),
];

/// Turn the top-level keys of a config file into `serve` flags placed before the real ones, so clap
/// validates both alike and a flag on the command line overrides its key (`args_override_self`).
/// Repeatable flags given on the command line replace the file's list instead of adding to it.
fn config_argv(table: &toml::Table, given: &clap::ArgMatches) -> Result<Vec<OsString>> {
    let cmd = Cli::command();
    let serve = cmd
        .find_subcommand("serve")
        .expect("the serve subcommand exists");
    let mut out = Vec::new();
    for (key, value) in table {
        if key == "dhcp" {
            continue; // the [dhcp] table
        }
        let arg = serve
            .get_arguments()
            .find(|a| a.get_id().as_str() == key && a.get_long().is_some() && key != "config")
            .with_context(|| {
                format!("unknown key {key:?} in the config file (keys are the serve flags with '_' for '-')")
            })?;
        if DHCP_FLAGS.iter().any(|(f, _)| f == key) {
            bail!("config key {key:?} belongs in the [dhcp] table");
        }
        let flag = format!("--{}", arg.get_long().unwrap_or_default());
        let from_cli = given.value_source(key) == Some(ValueSource::CommandLine);
        let scalar = |v: &toml::Value| -> Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!("config key {key:?}: unsupported value {other:?}"),
            })
        };
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(b)) => {
                if *b {
                    out.push(flag.into());
                }
            }
            (ArgAction::Count, toml::Value::Integer(n)) => {
                for _ in 0..*n {
                    out.push(flag.clone().into());
                }
            }
            (ArgAction::Append, toml::Value::Array(items)) => {
                if !from_cli {
                    for v in items {
                        out.push(flag.clone().into());
                        out.push(scalar(v)?.into());
                    }
                }
            }
            (ArgAction::Append, v) if !from_cli => {
                out.push(flag.into());
                out.push(scalar(v)?.into());
            }
            (ArgAction::Append, _) => {}
            (_, v) => {
                out.push(flag.into());
                out.push(scalar(v)?.into());
            }
        }
    }
    Ok(out)
}

/// Parse the command line, folding in `--config FILE` when given. Returns the arguments and the
/// config file's text (for its `[dhcp]` table).
fn parse_cli() -> Result<(ServeArgs, Option<String>, clap::ArgMatches)> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&argv);
    let first = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Cmd::Serve(args) = first.cmd;
    let Some(path) = args.config.clone() else {
        let sub = matches.subcommand_matches("serve").cloned().expect("serve");
        return Ok((args, None, sub));
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let sub = matches.subcommand_matches("serve").expect("serve");
    let extra = config_argv(&table, sub)?;
    let mut full: Vec<OsString> = argv[..1].to_vec();
    full.push("serve".into());
    full.extend(extra);
    full.extend(
        argv.iter()
            .skip_while(|a| a.as_os_str() != "serve")
            .skip(1)
            .cloned(),
    );
    let matches = Cli::command()
        .try_get_matches_from(&full)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Cmd::Serve(args) = cli.cmd;
    let sub = matches.subcommand_matches("serve").cloned().expect("serve");
    Ok((args, Some(text), sub))
}

/// The DHCP settings: the config file's `[dhcp]` table, with the command line's flags over it.
fn dhcp_config(args: &ServeArgs, text: Option<&str>, m: &clap::ArgMatches) -> Result<DhcpConfig> {
    let given = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    let mut cfg = match text {
        Some(t) => {
            DhcpConfig::from_toml_document(t).context("bad [dhcp] table in the config file")?
        }
        None => DhcpConfig::default(),
    };
    if given("dhcp") || text.is_none() {
        cfg.mode = args.dhcp;
    }
    if let Some(i) = &args.dhcp_interface {
        cfg.interface = Some(i.clone());
    }
    if let Some(f) = &args.boot_file {
        cfg.boot_file = Some(f.clone());
    }
    if let Some(r) = &args.dhcp_range {
        cfg.range = Some(
            r.parse()
                .map_err(|e| anyhow::anyhow!("--dhcp-range {r}: {e}"))?,
        );
    }
    if let Some(p) = &args.dhcp_lease_file {
        cfg.lease_file = Some(p.clone());
    }
    // Files served by PXE MTFTP are advertised with their MTFTP parameters.
    for f in &args.mtftp {
        if !cfg.mtftp.iter().any(|m| m.file == f.file) {
            cfg.mtftp.push(MtftpConfig::new(
                &f.file,
                f.group,
                f.client_port,
                args.mtftp_port,
            ));
        }
    }
    if cfg.mode != DhcpMode::Off {
        cfg.resolve_interface()?;
        if cfg.mode == DhcpMode::Full && cfg.router.is_none() {
            cfg.router = cfg.server_ip;
        }
        cfg.validate()?;
    }
    Ok(cfg)
}

/// Lines the log writer may hold before it drops (and counts) new ones.
const LOG_BUFFER_LINES: usize = 16_384;

/// Logging through a bounded, non-blocking buffer: workers never wait for stderr. When stderr is a
/// pipe nobody reads, lines beyond [`LOG_BUFFER_LINES`] are dropped and counted (see
/// [`report_dropped_log_lines`]) instead of stalling downloads. The guard flushes at exit.
fn init_logging(verbose: u8, format: LogFormat) -> Result<(WorkerGuard, ErrorCounter)> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => {
            EnvFilter::try_new(&s).with_context(|| format!("bad RUST_LOG {s:?}"))?
        }
        _ => EnvFilter::new(match verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("ringboot-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let r = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
    r.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    Ok((guard, dropped))
}

/// Log how many lines the bounded log buffer dropped since the last report (called periodically).
fn report_dropped_log_lines(counter: &ErrorCounter, reported: &mut usize) {
    let n = counter.dropped_lines();
    if n > *reported {
        tracing::warn!(
            dropped = n - *reported,
            "log output is not keeping up; lines were dropped"
        );
        *reported = n;
    }
}

/// Where the latest panic of each thread happened, for the line that reports it.
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Threads whose end the main loop watches and reports itself (workers, services).
fn watched(thread: &str) -> bool {
    thread.starts_with("ringboot-w")
        || thread == "ringboot-mcast"
        || thread == "dhcp"
        || thread == "ringboot-fault"
}

/// Panics go to the log: a watched thread's panic is reported (with its place) by the line
/// that stops the server; any other thread's panic is logged here at ERROR.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if watched(&thread) {
            let mut p = PANICS.lock().unwrap_or_else(|e| e.into_inner());
            p.retain(|(t, _)| *t != thread);
            if p.len() < 64 {
                p.push((thread, place));
            }
        } else {
            error!(
                thread,
                place,
                "panic: {}",
                srv::panic_message(info.payload())
            );
        }
    }));
}

fn panic_place(thread: &str) -> String {
    let p = PANICS.lock().unwrap_or_else(|e| e.into_inner());
    p.iter()
        .find(|(t, _)| t == thread)
        .map(|(_, place)| format!(" at {place}"))
        .unwrap_or_default()
}

/// A service thread (DHCP responder, multicast service) whose end is watched.
struct Service {
    name: &'static str,
    thread: &'static str,
    handle: Option<JoinHandle<()>>,
}

impl Service {
    /// Why it ended, if it has (joining it).
    fn ended(&mut self) -> Option<String> {
        if !self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            return None;
        }
        let h = self.handle.take()?;
        Some(match h.join() {
            Ok(()) => format!("the {} stopped unexpectedly", self.name),
            Err(p) => format!(
                "the {} panicked{}: {}",
                self.name,
                panic_place(self.thread),
                srv::panic_message(&*p)
            ),
        })
    }
}

/// The signals that end the server, blocked in every thread and read from a signalfd.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

fn block_stop_signals() -> Result<()> {
    let set = stop_signals();
    // SAFETY: `set` is initialised.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        bail!(
            "cannot block SIGINT/SIGTERM: {}",
            std::io::Error::from_raw_os_error(r)
        );
    }
    Ok(())
}

fn signalfd() -> Result<OwnedFd> {
    let set = stop_signals();
    // SAFETY: valid set; the result is checked before being owned.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        bail!(
            "cannot create a signalfd: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wait up to `ms` for a stop signal; its name when one came.
fn wait_signal(fd: &OwnedFd, ms: i32) -> Option<&'static str> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r <= 0 {
        return None;
    }
    // SAFETY: signalfd_siginfo is plain data; we read at most its size.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            std::mem::size_of::<libc::signalfd_siginfo>(),
        )
    };
    if n <= 0 {
        return None;
    }
    Some(match info.ssi_signo as i32 {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    })
}

/// The transfer caps: the flags, or defaults sized to the descriptor limit; flags above what the
/// descriptors allow are lowered (with a warning), so an overload is refused with an ERROR
/// rather than failing with `EMFILE` everywhere.
fn admission(args: &ServeArgs, nofile: u64, workers: usize, listen: usize) -> AdmissionConfig {
    let budget = srv::descriptor_budget(nofile, workers, listen);
    if budget < 64 {
        warn!(
            nofile,
            budget,
            "the descriptor limit {nofile} leaves room for only {budget} transfers with {workers} workers; raise it (LimitNOFILE= / ulimit -n) or use fewer --workers"
        );
    }
    let mut a = AdmissionConfig::for_descriptors(budget);
    if let Some(m) = args.max_transfers {
        let m = m as usize;
        if m as u64 > budget {
            warn!(
                max_transfers = m,
                budget,
                nofile,
                "--max-transfers {m} is more than the descriptor limit {nofile} allows; using {budget} (raise LimitNOFILE / ulimit -n to allow more)"
            );
            a.max_transfers = (budget as usize).max(1);
        } else {
            a.max_transfers = m;
        }
        a.max_per_client = (a.max_transfers / 8).clamp(1, 64);
    }
    if let Some(p) = args.max_transfers_per_client {
        a.max_per_client = (p as usize).min(a.max_transfers);
    }
    a.client_rate = args.client_rate;
    a
}

fn serve(
    args: ServeArgs,
    config_text: Option<String>,
    matches: clap::ArgMatches,
) -> Result<ExitCode> {
    let (_log_guard, log_dropped) = init_logging(args.verbose, args.log_format)?;
    install_panic_hook();
    let mut log_dropped_reported = 0;
    let nofile = match srv::raise_descriptor_limit() {
        Ok((before, after)) => {
            if after > before {
                info!(
                    before,
                    after, "descriptor limit raised from {before} to {after}"
                );
            } else {
                info!(limit = after, "descriptor limit {after}");
            }
            after
        }
        Err(e) => {
            let now = srv::descriptor_limit().unwrap_or(1024);
            warn!(limit = now, error = %e, "cannot raise the descriptor limit; it stays {now}");
            now
        }
    };
    let dhcp = dhcp_config(&args, config_text.as_deref(), &matches)?;
    let listen = if args.listen.is_empty() {
        vec![
            ListenAddr {
                addr: "0.0.0.0:69".parse()?,
                optional: false,
            },
            ListenAddr {
                addr: "[::]:69".parse()?,
                optional: true,
            },
        ]
    } else {
        args.listen
            .iter()
            .map(|&addr| ListenAddr {
                addr,
                optional: false,
            })
            .collect()
    };
    let workers = args
        .workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let limits = Limits {
        max_blksize: BlockSize::new(args.max_blksize)
            .with_context(|| format!("--max-blksize {} is outside 8..=65464", args.max_blksize))?,
        max_window: WindowSize::new(args.max_window)
            .with_context(|| format!("--max-window {} is outside 1..=32767", args.max_window))?,
        max_window_bytes: usize::try_from(args.max_window_bytes)?,
        timeout: Duration::from_secs(args.timeout),
        retries: args.retries,
        allow_fragmentation: args.allow_fragmentation,
    };
    let root = args
        .root
        .clone()
        .context("no directory to serve: give --root DIR or the config key `root`")?;
    let store = Store::new(
        &root,
        StoreOptions {
            small_file_limit: args.small_file_limit,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("cannot serve {}", root.display()))?;
    let backend = match args.io_backend {
        IoBackend::Auto => BackendChoice::Auto,
        IoBackend::Uring => BackendChoice::Uring,
        IoBackend::Fallback => BackendChoice::Fallback,
    };
    let mc = McConfig {
        mtftp: args.mtftp.clone(),
        mtftp_port: args.mtftp_port,
        groups: args.multicast_groups,
        multicast_port: args.multicast_port,
        ttl: args.multicast_ttl,
        interface: args.multicast_interface,
        loopback: args.multicast_loop,
        rate: args.multicast_rate.saturating_mul(1_000_000 / 8),
        window: args.multicast_window,
        timeout: Duration::from_millis(args.multicast_timeout.max(1)),
        retries: 5,
        max_members: args.multicast_max_members as usize,
        max_per_source: args.multicast_max_per_source as usize,
        listen: listen
            .iter()
            .filter_map(|l| match l.addr.ip() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect(),
    };
    let admission = admission(&args, nofile, workers, listen.len());
    info!(
        max_transfers = admission.max_transfers,
        max_per_client = admission.max_per_client,
        client_rate = admission.client_rate,
        "transfer caps: {} at once, {} per client address, {} new per second per address",
        admission.max_transfers,
        admission.max_per_client,
        admission.client_rate
    );
    let fault = match args.fault {
        Some(FaultArg::WorkerPanic) => Some(Fault::WorkerPanic),
        Some(FaultArg::WorkerError) => Some(Fault::WorkerError),
        _ => None,
    };
    let mut server = Server::bind(
        ServerConfig {
            listen,
            workers,
            limits,
            min_rto: Duration::from_millis(args.min_rto),
            port_range: args.port_range,
            backend,
            admission,
            fault,
        },
        store.clone(),
    )?;
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    let n = server.workers();
    let sigfd = signalfd()?;
    let shutdown = Shutdown::new().context("cannot create the shutdown eventfd")?;
    let mut services = Vec::new();
    if mc.enabled() {
        let (handle, thread) = mcast::spawn(mc, store, shutdown.clone())
            .context("cannot start the multicast service")?;
        server.set_multicast(handle);
        services.push(Service {
            name: "multicast service",
            thread: "ringboot-mcast",
            handle: Some(thread),
        });
    }
    let dhcp_stop = Arc::new(AtomicBool::new(false));
    if dhcp.mode != DhcpMode::Off {
        let mode = dhcp.mode;
        services.push(Service {
            name: "DHCP responder",
            thread: "dhcp",
            handle: Some(
                ringboot::dhcp::spawn(dhcp, dhcp_stop.clone())
                    .context("cannot start the DHCP responder")?,
            ),
        });
        info!(mode = %mode, "DHCP responder started");
    }
    if let Some(f @ (FaultArg::ServiceExit | FaultArg::ServicePanic)) = args.fault {
        let t = std::thread::Builder::new()
            .name("ringboot-fault".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                if f == FaultArg::ServicePanic {
                    panic!("injected fault (--fault service-panic)");
                }
            })?;
        services.push(Service {
            name: "test service (--fault)",
            thread: "ringboot-fault",
            handle: Some(t),
        });
    }
    let mut running = server.start(shutdown)?;
    info!(
        "listening on {} (backend={}, workers={})",
        addrs.join(", "),
        running.backend(),
        n
    );
    let mut failure = None;
    loop {
        if let Some(sig) = wait_signal(&sigfd, 200) {
            info!("received {sig}; shutting down");
            break;
        }
        if let Some(e) = running.poll_failure() {
            let place = match &e {
                srv::ServerError::Panicked(w, _) => panic_place(&format!("ringboot-w{w}")),
                _ => String::new(),
            };
            failure = Some(format!("{e}{place}"));
            break;
        }
        if let Some(why) = services.iter_mut().find_map(Service::ended) {
            failure = Some(why);
            break;
        }
        report_dropped_log_lines(&log_dropped, &mut log_dropped_reported);
    }
    if let Some(why) = &failure {
        error!("{why}; stopping ringboot (exit code 1)");
    }
    dhcp_stop.store(true, Ordering::SeqCst);
    let joined = running.join();
    for s in &mut services {
        if let Some(h) = s.handle.take() {
            let _ = h.join();
        }
    }
    if failure.is_some() {
        return Ok(ExitCode::FAILURE);
    }
    joined?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits the masks.
    store::block_lease_signal();
    if let Err(e) = block_stop_signals() {
        eprintln!("ringboot: {e:#}");
        return ExitCode::FAILURE;
    }
    let r = parse_cli().and_then(|(args, text, matches)| serve(args, text, matches));
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringboot: {e:#}");
            ExitCode::FAILURE
        }
    }
}
