//! The command line: `ringboot serve [FLAGS]`.
//!
//! Contract: [`ServeArgs`] has one field per top-level key of the config file, of the same type
//! (`Option<T>`; clap holds no defaults, [`command`] only shows them in `--help` from
//! [`super::DEFAULTS`]), plus `--config`, `-v`, the DHCP flags (keys of the `[dhcp]` table) and
//! a hidden `--fault` for tests. Errors are clap's (exit code 2).

use super::dhcp::{DhcpConfig, DhcpMode, PoolRange};
use super::value::{self, value_name};
use super::{LogFormat, DEFAULTS};
use super::{MaxBlksize, MaxWindow, MaxWindowBytes, McCap, McTimeout, McWindow, MinRto};
use super::{Retries, Timeout, TransferCap, Ttl, Workers};
use crate::engine::mcast::{GroupPool, MtftpFile};
use crate::engine::workers::{BackendChoice, PortRange};
use crate::proto::mtftp::session::SlowPolicy;
use crate::store::StoreOptions;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "ringboot",
    version,
    about = "Network-boot content server: TFTP from memory maps",
    // A flag given twice: the last one counts.
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Clone, Debug)]
pub enum Cmd {
    /// Serve the files below a directory over TFTP (read-only).
    Serve(ServeArgs),
    /// Check a configuration (the same flags as `serve`, or --config) without serving: one line
    /// per problem, exit code 0 when it can be served, 1 when not.
    Check(ServeArgs),
}

/// Faults for the tests of the failure handling (hidden `--fault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TestFault {
    /// A worker panics on its first request.
    WorkerPanic,
    /// A worker's loop fails on its first request.
    WorkerError,
    /// A service thread ends on its own shortly after start.
    ServiceExit,
    /// A service thread panics shortly after start.
    ServicePanic,
}

/// The flags of `serve`: every top-level key of the config file, the DHCP flags and `--config`.
#[derive(Args, Clone, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of these options as keys (`max_blksize = 1468`, `listen = [...]`,
    /// DHCP in a `[dhcp]` table); the command line wins over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory to serve; requests cannot leave it (or the config key `root`).
    #[arg(long, value_name = "DIR", required_unless_present = "config")]
    pub root: Option<PathBuf>,
    /// Address to listen on; repeatable. Default: `0.0.0.0:69` and `[::]:69`.
    #[arg(long, value_name = "ADDR:PORT", value_parser = value::socket_addr)]
    pub listen: Option<Vec<SocketAddr>>,
    /// Worker threads, each with its own listening socket. Default: one per CPU.
    #[arg(long, value_name = "N")]
    pub workers: Option<Workers>,
    /// Largest block size granted (RFC 2348).
    #[arg(long, value_name = "N")]
    pub max_blksize: Option<MaxBlksize>,
    /// Largest window granted (RFC 7440).
    #[arg(long, value_name = "N")]
    pub max_window: Option<MaxWindow>,
    /// Largest number of payload bytes in one window; windows are reduced to fit.
    #[arg(long, value_name = "N")]
    pub max_window_bytes: Option<MaxWindowBytes>,
    /// Ceiling of the retransmission timeout, in seconds (or with a unit: 1500ms is refused, 2m
    /// is fine).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<Timeout>,
    /// Floor of the adaptive retransmission timeout, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub min_rto: Option<MinRto>,
    /// Retransmissions (in timeout ceilings of silence) before a transfer is abandoned.
    #[arg(long, value_name = "N")]
    pub retries: Option<Retries>,
    /// Local ports for transfer sockets, chosen at random in the range. Default: any ephemeral
    /// port (the kernel's random choice).
    #[arg(long, value_name = "LOW:HIGH")]
    pub port_range: Option<PortRange>,
    /// Cap the DATA sent out of interface IFACE at RATE bit/s on the wire (e.g. eth0=400M,
    /// eth1=1G); repeat for several interfaces. Binds even on an empty link; without it the
    /// server paces only once it sees congestion.
    #[arg(long, value_name = "IFACE=RATE")]
    pub rate_limit: Option<Vec<super::value::RateLimit>>,
    /// Transfers at once, all clients together; over it a request gets ERROR 0. Default: sized
    /// to the descriptor limit (half of what is left after the fixed descriptors), at most 4096.
    #[arg(long, value_name = "N")]
    pub max_transfers: Option<TransferCap>,
    /// Transfers at once from one client address (an IPv6 /64 counts as one); also the burst of
    /// --client-rate. Default: an eighth of --max-transfers, between 1 and 64.
    #[arg(long, value_name = "N")]
    pub max_transfers_per_client: Option<TransferCap>,
    /// New transfers per second from one client address (0: no limit).
    #[arg(long, value_name = "N")]
    pub client_rate: Option<u32>,
    /// Test only: inject a fault to check that it stops the server with a clear error.
    #[arg(long, value_enum, hide = true)]
    pub fault: Option<TestFault>,
    /// Allow blocks larger than the interface MTU (IP fragmentation).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_fragmentation: Option<bool>,
    /// Files up to this size are served from memory instead of a map.
    #[arg(long, value_name = "BYTES")]
    pub small_file_limit: Option<u64>,
    /// I/O backend.
    #[arg(long, value_name = "BACKEND")]
    pub io_backend: Option<BackendChoice>,
    /// More logging: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Log line format.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Serve Prometheus metrics (/metrics) and the status page (/) on this address; a port
    /// alone means 127.0.0.1. Config file: `[metrics] listen`. Default: off.
    #[arg(long, value_name = "ADDR:PORT", value_parser = value::metrics_addr)]
    pub metrics: Option<SocketAddr>,
    /// Once every socket is bound, run as this user (keeping only the capabilities the DHCP
    /// responder needs).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// With --user: run as this group. Default: the user's primary group.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// At SIGTERM/SIGINT, how long running transfers may finish before the server exits.
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<super::DrainTimeout>,

    /// Serve FILE by PXE MTFTP to multicast GROUP on client port CLIENTPORT; repeatable.
    #[arg(long, value_name = "FILE@GROUP:CLIENTPORT")]
    pub mtftp: Option<Vec<MtftpFile>>,
    /// PXE MTFTP server port.
    #[arg(long, value_name = "PORT")]
    pub mtftp_port: Option<u16>,
    /// Enable RFC 2090 multicast, drawing session groups from this range (e.g. 239.255.42.0/24).
    #[arg(long, value_name = "CIDR")]
    pub multicast_groups: Option<GroupPool>,
    /// Client (group) port announced in RFC 2090 OACKs.
    #[arg(long, value_name = "PORT")]
    pub multicast_port: Option<u16>,
    /// Rate cap of each multicast session, in Mbit/s of payload (0: no cap).
    #[arg(long, value_name = "MBIT")]
    pub multicast_rate: Option<u64>,
    /// Blocks sent between two master ACKs in a multicast session.
    #[arg(long, value_name = "N")]
    pub multicast_window: Option<McWindow>,
    /// Wait for the master's ACK before resending a window, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub multicast_timeout: Option<McTimeout>,
    /// TTL of multicast packets (1: this subnet only).
    #[arg(long, value_name = "N")]
    pub multicast_ttl: Option<Ttl>,
    /// Address of the interface multicast leaves by. Default: the routing table's choice.
    #[arg(long, value_name = "ADDR")]
    pub multicast_interface: Option<Ipv4Addr>,
    /// Deliver our multicast to clients on this host too (IP_MULTICAST_LOOP).
    #[arg(long, value_name = "BOOL")]
    pub multicast_loop: Option<bool>,
    /// Members of one RFC 2090 session at most; later requests are served by unicast.
    #[arg(long, value_name = "N")]
    pub multicast_max_members: Option<McCap>,
    /// RFC 2090 sessions one client address may be a member of at once; past that, unicast.
    #[arg(long, value_name = "N")]
    pub multicast_max_per_source: Option<McCap>,
    /// Floor of a multicast session's rate, in Mbit/s of payload: the rate follows the master's
    /// ACKs between this and `--multicast-rate`.
    #[arg(long, value_name = "MBIT")]
    pub multicast_min_rate: Option<u64>,
    /// A master too slow for `--multicast-min-rate`: `pace` keeps the room at the floor while it
    /// is master; `unicast` sends it an ERROR (it leaves; asking again, it is served by unicast).
    #[arg(long, value_name = "POLICY")]
    pub multicast_slow_receivers: Option<SlowPolicy>,

    /// DHCP responder: proxy (beside an existing DHCP server), full (isolated lab) or off.
    /// Config file: `[dhcp] mode`.
    #[arg(long, value_name = "MODE")]
    pub dhcp: Option<DhcpMode>,
    /// Interface the DHCP responder serves. Config file: `[dhcp] interface`.
    #[arg(long, value_name = "IF")]
    pub dhcp_interface: Option<String>,
    /// Boot file handed to every client unless a rule says otherwise. Config: `[dhcp] boot_file`.
    #[arg(long, value_name = "FILE")]
    pub boot_file: Option<String>,
    /// Full mode: the address pool. Config file: `[dhcp] range`.
    #[arg(long, value_name = "START,END")]
    pub dhcp_range: Option<PoolRange>,
    /// Full mode: where leases persist. Config file: `[dhcp] lease_file`.
    #[arg(long, value_name = "PATH")]
    pub dhcp_lease_file: Option<PathBuf>,
}

/// The default of each flag that has a fixed one, as `--help` shows it.
pub fn shown_defaults() -> Vec<(&'static str, String)> {
    let d = &DEFAULTS;
    vec![
        ("max_blksize", d.max_blksize.to_string()),
        ("max_window", d.max_window.to_string()),
        ("max_window_bytes", d.max_window_bytes.to_string()),
        ("timeout", d.timeout.to_string()),
        ("min_rto", d.min_rto.to_string()),
        ("retries", d.retries.to_string()),
        ("client_rate", d.client_rate.to_string()),
        ("allow_fragmentation", "false".into()),
        (
            "small_file_limit",
            StoreOptions::default().small_file_limit.to_string(),
        ),
        ("io_backend", value_name(&d.io_backend)),
        ("log_format", value_name(&d.log_format)),
        ("mtftp_port", d.mtftp_port.to_string()),
        ("multicast_port", d.multicast_port.to_string()),
        ("multicast_rate", d.multicast_rate.to_string()),
        ("multicast_window", d.multicast_window.to_string()),
        ("multicast_timeout", d.multicast_timeout.to_string()),
        ("multicast_ttl", d.multicast_ttl.to_string()),
        ("multicast_loop", d.multicast_loop.to_string()),
        ("multicast_max_members", d.multicast_max_members.to_string()),
        (
            "multicast_max_per_source",
            d.multicast_max_per_source.to_string(),
        ),
        ("multicast_min_rate", d.multicast_min_rate.to_string()),
        (
            "multicast_slow_receivers",
            d.multicast_slow_receivers.to_string(),
        ),
        ("dhcp", DhcpConfig::default().mode.to_string()),
        ("drain_timeout", d.drain_timeout.to_string()),
    ]
}

/// The command, with each flag's default added to its help.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("serve", |mut serve| {
        for (id, shown) in shown_defaults() {
            serve = serve.mut_arg(id, |a| {
                let tail = format!(" [default: {shown}]");
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let long = a.get_long_help().map(|h| h.to_string());
                let a = a.help(format!("{help}{tail}"));
                match long {
                    Some(l) => a.long_help(format!("{l}{tail}")),
                    None => a,
                }
            });
        }
        serve
    })
}

/// Parse the process's arguments; on a usage error, print clap's message and exit with code 2.
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Parse `argv` (the program name first), for tests and tools.
pub fn try_parse_from<I, T>(argv: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(argv)?;
    Cli::from_arg_matches(&matches)
}
