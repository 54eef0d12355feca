//! The one config model: the TOML file and the `serve` flags, merged, then validated once.
//!
//! Contract:
//! - [`file::FileConfig`] is the whole file (serde, `deny_unknown_fields`); [`cli::ServeArgs`] is
//!   the command line (clap). Their fields are `Option<T>` of the same types, and those types
//!   ([`value`]) check each value's range while reading it: in the file a problem names the key
//!   and the line, on the command line it reads as clap's own error (exit code 2).
//! - Merge: the file, then each flag given on the command line over its key (a repeatable flag
//!   replaces the file's list). The defaults are written once, here ([`DEFAULTS`] and the
//!   `Default` of the sub-configs); clap has none, and `--help` shows these.
//! - [`build`] validates the merged settings once into a [`Config`]: resolved and typed
//!   (`Limits`, the server's inputs, `McConfig`, `DhcpConfig`, store options, logging). It
//!   reports every problem it finds (not only the first) and warnings (things that will be
//!   ignored).
//! - No I/O here except [`load`] reading the file: what the configuration names on the host
//!   (an interface's address, the CPU count, the descriptor limit) is looked up at start by the
//!   binary. [`load`] may be called again at run time (reload, `ringboot check`).

pub mod cli;
pub mod dhcp;
pub mod file;
pub mod value;

use crate::engine::mcast::{self, McConfig};
use crate::engine::workers::{BackendChoice, ListenAddr, PortRange};
use crate::proto::mtftp::session::SlowPolicy;
use crate::proto::tftp::options::{BlockSize, Limits, WindowSize, MAX_BLKSIZE, MIN_BLKSIZE};
use crate::store::StoreOptions;
use cli::ServeArgs;
use dhcp::{DhcpConfig, DhcpMode, MtftpConfig};
use file::FileConfig;
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use value::{Millis, Ranged, Secs};

/// `max_blksize`: a block size (RFC 2348).
pub type MaxBlksize = Ranged<{ MIN_BLKSIZE as u64 }, { MAX_BLKSIZE as u64 }>;
/// `max_window`: blocks per window (RFC 7440), under half the block-number space.
pub type MaxWindow = Ranged<1, 32767>;
/// `max_window_bytes`.
pub type MaxWindowBytes = Ranged<8, { 1 << 30 }>;
/// `timeout`: seconds.
pub type Timeout = Secs<1, 255>;
/// `min_rto`: milliseconds.
pub type MinRto = Millis<1, 60_000>;
/// `retries`.
pub type Retries = Ranged<1, 1000>;
/// `workers`.
pub type Workers = Ranged<1, 4096>;
/// `max_transfers`, `max_transfers_per_client`.
pub type TransferCap = Ranged<1, { 1 << 20 }>;
/// `multicast_window`: blocks between master ACKs.
pub type McWindow = Ranged<1, 1024>;
/// `multicast_timeout`: milliseconds (0 counts as 1).
pub type McTimeout = Millis<0, 60_000>;
/// `multicast_ttl`: an IP TTL.
pub type Ttl = Ranged<0, 255>;
/// `multicast_max_members`, `multicast_max_per_source`.
pub type McCap = Ranged<1, 65536>;
/// `drain_timeout`: seconds.
pub type DrainTimeout = Secs<0, 3600>;

/// The defaults of the top-level keys (the `[dhcp]` table's are `DhcpConfig::default()`, the
/// store's `StoreOptions::default()`). Keys missing here have a default computed at start
/// (`listen`, `workers`, the transfer caps) or none (`root`, `port_range`, ...).
pub struct Defaults {
    pub max_blksize: MaxBlksize,
    pub max_window: MaxWindow,
    pub max_window_bytes: MaxWindowBytes,
    pub timeout: Timeout,
    pub min_rto: MinRto,
    pub retries: Retries,
    pub client_rate: u32,
    pub io_backend: BackendChoice,
    pub log_format: LogFormat,
    pub mtftp_port: u16,
    pub multicast_port: u16,
    pub multicast_rate: u64,
    pub multicast_window: McWindow,
    pub multicast_timeout: McTimeout,
    pub multicast_ttl: Ttl,
    pub multicast_loop: bool,
    pub multicast_max_members: McCap,
    pub multicast_max_per_source: McCap,
    pub multicast_min_rate: u64,
    pub multicast_slow_receivers: SlowPolicy,
    /// Retransmissions of a multicast window before the master is replaced (not a key).
    pub multicast_retries: u32,
    pub drain_timeout: DrainTimeout,
}

/// See [`Defaults`].
pub const DEFAULTS: Defaults = Defaults {
    max_blksize: Ranged::of(MAX_BLKSIZE as u64),
    max_window: Ranged::of(64),
    max_window_bytes: Ranged::of(128 * 1024),
    timeout: Secs::of(3),
    min_rto: Millis::of(2),
    retries: Ranged::of(6),
    client_rate: 16,
    io_backend: BackendChoice::Auto,
    log_format: LogFormat::Text,
    mtftp_port: 1759,
    multicast_port: 1758,
    multicast_rate: 100,
    multicast_window: Ranged::of(16),
    multicast_timeout: Millis::of(200),
    multicast_ttl: Ranged::of(1),
    multicast_loop: true,
    multicast_max_members: Ranged::of(mcast::DEFAULT_MAX_MEMBERS as u64),
    multicast_max_per_source: Ranged::of(mcast::DEFAULT_MAX_PER_SOURCE as u64),
    multicast_min_rate: 8,
    multicast_slow_receivers: SlowPolicy::Pace,
    multicast_retries: 5,
    drain_timeout: Secs::of(10),
};

/// The TFTP listening addresses when none is given: IPv4 everywhere, and IPv6 where the host
/// has it (optional).
pub const DEFAULT_LISTEN: [ListenAddr; 2] = [
    ListenAddr {
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 69),
        optional: false,
    },
    ListenAddr {
        addr: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 69),
        optional: true,
    },
];

/// Log line format (`--log-format`, `log_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging: the level (`-v`) and the line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// 0: info, 1: debug, 2 or more: trace (`RUST_LOG` overrides).
    pub verbose: u8,
    pub format: LogFormat,
}

/// The transfer caps as configured; the binary sizes what is not set to the descriptor limit at
/// start (`AdmissionConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Transfers at once, all clients together; `None`: sized to the descriptor limit.
    pub max_transfers: Option<usize>,
    /// Transfers at once per client address; `None`: an eighth of `max_transfers`, 1 to 64.
    pub max_per_client: Option<usize>,
    /// New transfers per second per client address; 0: no limit.
    pub client_rate: u32,
}

/// How the process runs as a service: the metrics listener, the user it drops to, the drain.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ServiceConfig {
    /// The metrics and status listener (`--metrics`, `[metrics] listen`); `None`: off.
    pub metrics: Option<SocketAddr>,
    /// The user to switch to once every socket is bound (`--user`).
    pub user: Option<String>,
    /// The group (`--group`); `None`: the user's primary group.
    pub group: Option<String>,
    /// How long running transfers may finish at SIGTERM/SIGINT.
    pub drain: Duration,
}

/// The validated configuration: everything the server needs, typed and in range. What depends
/// on the host (interface addresses, CPU count, descriptor limit) is resolved at start.
#[derive(Clone, Debug)]
pub struct Config {
    /// The directory served.
    pub root: PathBuf,
    /// TFTP listening addresses ([`DEFAULT_LISTEN`] when none is given).
    pub listen: Vec<ListenAddr>,
    /// Worker threads; `None`: one per CPU.
    pub workers: Option<NonZeroUsize>,
    /// Negotiation limits, retransmission ceiling and retries.
    pub limits: Limits,
    /// Floor of the retransmission timer.
    pub min_rto: Duration,
    /// Ports for transfer sockets; `None`: any ephemeral port.
    pub port_range: Option<PortRange>,
    pub backend: BackendChoice,
    pub caps: Caps,
    pub store: StoreOptions,
    /// PXE MTFTP and RFC 2090 (`enabled()` says whether either is on).
    pub multicast: McConfig,
    /// The DHCP responder (its interface's address and mask are filled in at start).
    pub dhcp: DhcpConfig,
    pub log: LogConfig,
    pub service: ServiceConfig,
    /// Operator caps per outgoing interface (`--rate-limit`), one per interface; the names are
    /// resolved (and checked to exist) at start.
    pub rate_limits: Vec<value::RateLimit>,
}

/// Where a problem is in the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePlace {
    pub path: PathBuf,
    /// 1-based line and column; `None` when the parser gave no position.
    pub position: Option<(usize, usize)>,
    /// The key (`max_blksize`, `dhcp.rule[0].arch`), when one is at fault.
    pub key: Option<String>,
}

/// One thing wrong with the configuration (an error), or worth saying (a warning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// In the file, or `None`: the configuration as a whole (several keys, or flags).
    pub place: Option<FilePlace>,
    pub message: String,
}

impl Problem {
    /// A problem of the configuration as a whole.
    pub fn whole(message: impl Into<String>) -> Problem {
        Problem {
            place: None,
            message: message.into(),
        }
    }

    /// A problem at byte `span` of the file `text`.
    pub fn in_file(
        path: &Path,
        text: &str,
        key: Option<String>,
        span: Option<Range<usize>>,
        message: &str,
    ) -> Problem {
        Problem {
            place: Some(FilePlace {
                path: path.to_owned(),
                position: span.map(|s| line_column(text, s.start)),
                key,
            }),
            message: message.to_owned(),
        }
    }

    /// Line and column, for sorting (problems of the whole configuration first).
    pub fn position(&self) -> (usize, usize) {
        self.place
            .as_ref()
            .and_then(|p| p.position)
            .unwrap_or((0, 0))
    }
}

/// 1-based line and column (in characters) of byte `at` of `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.place {
            write!(f, "{}", p.path.display())?;
            if let Some((line, column)) = p.position {
                write!(f, ":{line}:{column}")?;
            }
            f.write_str(": ")?;
            if let Some(key) = &p.key {
                write!(f, "{key}: ")?;
            }
        }
        f.write_str(&self.message)
    }
}

/// Every problem that stops a configuration from being used; one line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read the config file named by `--config` (if any), merge the flags over it and validate:
/// the configuration and its warnings, or every problem found. Reads the file and nothing else;
/// call it again to reload.
pub fn load(cli: &ServeArgs) -> Result<(Config, Vec<Problem>), ConfigErrors> {
    let text = match &cli.config {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![Problem::whole(format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))])
        })?),
        None => None,
    };
    from_text(text.as_deref(), cli)
}

/// [`load`] with the file's text given (`cli.config` names it in messages). Pure.
pub fn from_text(
    text: Option<&str>,
    cli: &ServeArgs,
) -> Result<(Config, Vec<Problem>), ConfigErrors> {
    let file = match (text, &cli.config) {
        (Some(text), path) => {
            let path = path.as_deref().unwrap_or(Path::new("config"));
            file::parse(path, text).map_err(ConfigErrors)?
        }
        (None, _) => FileConfig::default(),
    };
    build(merge(file, cli))
}

/// The file with the flags given on the command line over its keys.
pub fn merge(file: FileConfig, cli: &ServeArgs) -> FileConfig {
    let c = cli.clone();
    let mut dhcp = file.dhcp;
    let dhcp_flags = c.dhcp.is_some()
        || c.dhcp_interface.is_some()
        || c.boot_file.is_some()
        || c.dhcp_range.is_some()
        || c.dhcp_lease_file.is_some();
    if dhcp_flags {
        let d = dhcp.get_or_insert_with(DhcpConfig::default);
        if let Some(m) = c.dhcp {
            d.mode = m;
        }
        if let Some(i) = c.dhcp_interface {
            d.interface = Some(i);
        }
        if let Some(f) = c.boot_file {
            d.boot_file = Some(f);
        }
        if let Some(r) = c.dhcp_range {
            d.range = Some(r);
        }
        if let Some(p) = c.dhcp_lease_file {
            d.lease_file = Some(p);
        }
    }
    FileConfig {
        root: c.root.or(file.root),
        listen: c.listen.or(file.listen),
        workers: c.workers.or(file.workers),
        max_blksize: c.max_blksize.or(file.max_blksize),
        max_window: c.max_window.or(file.max_window),
        max_window_bytes: c.max_window_bytes.or(file.max_window_bytes),
        timeout: c.timeout.or(file.timeout),
        min_rto: c.min_rto.or(file.min_rto),
        retries: c.retries.or(file.retries),
        port_range: c.port_range.or(file.port_range),
        rate_limit: c.rate_limit.or(file.rate_limit),
        max_transfers: c.max_transfers.or(file.max_transfers),
        max_transfers_per_client: c.max_transfers_per_client.or(file.max_transfers_per_client),
        client_rate: c.client_rate.or(file.client_rate),
        allow_fragmentation: c.allow_fragmentation.or(file.allow_fragmentation),
        small_file_limit: c.small_file_limit.or(file.small_file_limit),
        io_backend: c.io_backend.or(file.io_backend),
        verbose: (c.verbose > 0).then_some(c.verbose).or(file.verbose),
        log_format: c.log_format.or(file.log_format),
        user: c.user.or(file.user),
        group: c.group.or(file.group),
        drain_timeout: c.drain_timeout.or(file.drain_timeout),
        mtftp: c.mtftp.or(file.mtftp),
        mtftp_port: c.mtftp_port.or(file.mtftp_port),
        multicast_groups: c.multicast_groups.or(file.multicast_groups),
        multicast_port: c.multicast_port.or(file.multicast_port),
        multicast_rate: c.multicast_rate.or(file.multicast_rate),
        multicast_window: c.multicast_window.or(file.multicast_window),
        multicast_timeout: c.multicast_timeout.or(file.multicast_timeout),
        multicast_ttl: c.multicast_ttl.or(file.multicast_ttl),
        multicast_interface: c.multicast_interface.or(file.multicast_interface),
        multicast_loop: c.multicast_loop.or(file.multicast_loop),
        multicast_max_members: c.multicast_max_members.or(file.multicast_max_members),
        multicast_max_per_source: c.multicast_max_per_source.or(file.multicast_max_per_source),
        multicast_min_rate: c.multicast_min_rate.or(file.multicast_min_rate),
        multicast_slow_receivers: c.multicast_slow_receivers.or(file.multicast_slow_receivers),
        dhcp,
        metrics: match c.metrics {
            Some(a) => {
                let mut t = file.metrics.unwrap_or_default();
                t.insert("listen".into(), toml::Value::String(a.to_string()));
                Some(t)
            }
            None => file.metrics,
        },
        http: file.http,
    }
}

/// Validate merged settings into a [`Config`] (with warnings), or say everything that is wrong.
pub fn build(s: FileConfig) -> Result<(Config, Vec<Problem>), ConfigErrors> {
    let d = &DEFAULTS;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    let root = s.root.unwrap_or_else(|| {
        errors.push(Problem::whole(
            "no directory to serve: give --root DIR or the config key `root`",
        ));
        PathBuf::new()
    });
    let listen: Vec<ListenAddr> = match s.listen {
        Some(l) if !l.is_empty() => l
            .into_iter()
            .map(|addr| ListenAddr {
                addr,
                optional: false,
            })
            .collect(),
        _ => DEFAULT_LISTEN.to_vec(),
    };
    let max_blksize = s.max_blksize.unwrap_or(d.max_blksize).get();
    let max_window = s.max_window.unwrap_or(d.max_window).get();
    let limits = Limits {
        // In range by their types.
        max_blksize: BlockSize::new(max_blksize as u16).unwrap_or(BlockSize::MAX),
        max_window: WindowSize::new(max_window as u16).unwrap_or(WindowSize::ONE),
        max_window_bytes: s.max_window_bytes.unwrap_or(d.max_window_bytes).as_usize(),
        timeout: s.timeout.unwrap_or(d.timeout).get(),
        retries: s.retries.unwrap_or(d.retries).get() as u32,
        allow_fragmentation: s.allow_fragmentation.unwrap_or(false),
    };
    let caps = Caps {
        max_transfers: s.max_transfers.map(Ranged::as_usize),
        max_per_client: s.max_transfers_per_client.map(Ranged::as_usize),
        client_rate: s.client_rate.unwrap_or(d.client_rate),
    };
    let rate_limits = s.rate_limit.unwrap_or_default();
    for (i, r) in rate_limits.iter().enumerate() {
        if rate_limits[..i].iter().any(|o| o.iface == r.iface) {
            errors.push(Problem::whole(format!(
                "--rate-limit names interface {:?} twice: give one rate per interface",
                r.iface
            )));
        }
    }
    let mut store = StoreOptions::default();
    if let Some(n) = s.small_file_limit {
        store.small_file_limit = n;
    }
    let mtftp = s.mtftp.unwrap_or_default();
    let mtftp_port = s.mtftp_port.unwrap_or(d.mtftp_port);
    let multicast = McConfig {
        mtftp: mtftp.clone(),
        mtftp_port,
        groups: s.multicast_groups,
        multicast_port: s.multicast_port.unwrap_or(d.multicast_port),
        ttl: s.multicast_ttl.unwrap_or(d.multicast_ttl).get() as u32,
        interface: s.multicast_interface,
        loopback: s.multicast_loop.unwrap_or(d.multicast_loop),
        rate: s
            .multicast_rate
            .unwrap_or(d.multicast_rate)
            .saturating_mul(1_000_000 / 8),
        min_rate: s
            .multicast_min_rate
            .unwrap_or(d.multicast_min_rate)
            .saturating_mul(1_000_000 / 8),
        slow: s
            .multicast_slow_receivers
            .unwrap_or(d.multicast_slow_receivers),
        window: s.multicast_window.unwrap_or(d.multicast_window).get() as u16,
        timeout: s
            .multicast_timeout
            .unwrap_or(d.multicast_timeout)
            .get()
            .max(Duration::from_millis(1)),
        retries: d.multicast_retries,
        max_members: s
            .multicast_max_members
            .unwrap_or(d.multicast_max_members)
            .as_usize(),
        max_per_source: s
            .multicast_max_per_source
            .unwrap_or(d.multicast_max_per_source)
            .as_usize(),
        listen: listen
            .iter()
            .filter_map(|l| match l.addr.ip() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect(),
    };

    let mut dhcp = s.dhcp.unwrap_or_default();
    if dhcp.mode == DhcpMode::Off {
        if dhcp != DhcpConfig::default() {
            let mut set = Vec::new();
            for (on, name) in [
                (dhcp.boot_file.is_some(), "--boot-file"),
                (dhcp.range.is_some(), "--dhcp-range"),
                (dhcp.interface.is_some(), "--dhcp-interface"),
                (dhcp.lease_file.is_some(), "--dhcp-lease-file"),
                (!dhcp.rules.is_empty(), "[[dhcp.rule]]"),
            ] {
                if on {
                    set.push(name);
                }
            }
            let named = if set.is_empty() {
                String::new()
            } else {
                format!(" ({})", set.join(", "))
            };
            warnings.push(Problem::whole(format!(
                "the DHCP settings{named} are not used: the DHCP responder is off (set `mode` in [dhcp] or give --dhcp proxy|full)",
            )));
        }
    } else {
        // Files served by PXE MTFTP are advertised with their MTFTP parameters.
        for f in &mtftp {
            if !dhcp.mtftp.iter().any(|m| m.file == f.file) {
                dhcp.mtftp.push(MtftpConfig::new(
                    &f.file,
                    f.group,
                    f.client_port,
                    mtftp_port,
                ));
            }
        }
        errors.extend(
            dhcp.problems()
                .into_iter()
                .map(|e| Problem::whole(e.to_string())),
        );
    }
    let mut metrics = None;
    if let Some(t) = &s.metrics {
        for (k, v) in t {
            match (k.as_str(), v) {
                ("listen", toml::Value::String(a)) => match value::metrics_addr(a) {
                    Ok(a) => metrics = Some(a),
                    Err(e) => errors.push(Problem::whole(format!("metrics.listen: {e}"))),
                },
                ("listen", _) => errors.push(Problem::whole(
                    "metrics.listen: expected a string \"ADDR:PORT\" or \"PORT\"",
                )),
                (other, _) => errors.push(Problem::whole(format!(
                    "metrics.{other}: unknown key (the [metrics] table has `listen`)"
                ))),
            }
        }
    }
    if s.http.is_some() {
        warnings.push(Problem::whole(
            "the [http] table is reserved for a later version and not used by this one; ignored",
        ));
    }
    if s.group.is_some() && s.user.is_none() {
        warnings.push(Problem::whole(
            "--group is ignored without --user (the process keeps its user and group)",
        ));
    }
    if dhcp.mode == DhcpMode::Full && dhcp.interface.is_none() {
        errors.push(Problem::whole(
            "DHCP full mode needs an explicit interface: --dhcp-interface NAME (or `interface` in [dhcp]); `*` means every interface",
        ));
    }
    if dhcp.interface.as_deref() == Some("*") {
        // Every interface: what no interface meant before.
        dhcp.interface = None;
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let config = Config {
        root,
        listen,
        workers: s.workers.and_then(|w| NonZeroUsize::new(w.as_usize())),
        limits,
        min_rto: s.min_rto.unwrap_or(d.min_rto).get(),
        port_range: s.port_range,
        backend: s.io_backend.unwrap_or(d.io_backend),
        caps,
        store,
        multicast,
        dhcp,
        log: LogConfig {
            verbose: s.verbose.unwrap_or(0),
            format: s.log_format.unwrap_or(d.log_format),
        },
        service: ServiceConfig {
            metrics,
            user: s.user,
            group: s.group,
            drain: s.drain_timeout.unwrap_or(d.drain_timeout).get(),
        },
        rate_limits,
    };
    Ok((config, warnings))
}

#[cfg(test)]
mod tests;
