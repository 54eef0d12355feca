//! The config file: one serde model for the whole TOML file.
//!
//! Contract:
//! - [`FileConfig`] is the file as written: every key optional and typed (ranges are checked by
//!   the types of [`super::value`] while reading), unknown keys refused at every level
//!   (`deny_unknown_fields`). The top-level keys are the `serve` flags with `_` for `-`
//!   (`max_blksize = 1468`, `listen = ["0.0.0.0:69"]`, `mtftp = [...]`, `multicast_groups`); the
//!   DHCP responder is the `[dhcp]` table (with `[[dhcp.rule]]` and `[[dhcp.mtftp]]`, see
//!   [`DhcpConfig`]); `[metrics]` holds `listen` (the metrics and status listener; checked in
//!   [`super::build`]); `[http]` is reserved and accepted as any table (a warning says so).
//! - [`parse`] reports every problem it finds, not only the first: all syntax errors, else each
//!   key whose value is wrong (the key is set aside and the rest read again, up to
//!   [`MAX_PROBLEMS`]). Each problem names the key (`dhcp.rule[0].arch`), the line and column, and
//!   what was expected. Pure: the caller reads the file.

use super::dhcp::DhcpConfig;
use super::value;
use super::{LogFormat, Problem};
use super::{MaxBlksize, MaxWindow, MaxWindowBytes, McCap, McTimeout, McWindow, MinRto};
use super::{Retries, Timeout, TransferCap, Ttl, Workers};
use crate::engine::mcast::{GroupPool, MtftpFile};
use crate::engine::workers::{BackendChoice, PortRange};
use crate::proto::mtftp::session::SlowPolicy;
use serde::Deserialize;
use serde_path_to_error::Segment;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// Problems reported from one file at most (the rest are found once these are fixed).
pub const MAX_PROBLEMS: usize = 32;

/// The whole config file. Field docs name each key's flag; README "Configuration" lists them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--root`: the directory served.
    pub root: Option<PathBuf>,
    /// `--listen`: one `ADDR:PORT` or a list.
    #[serde(default, deserialize_with = "value::listen")]
    pub listen: Option<Vec<SocketAddr>>,
    /// `--workers`.
    pub workers: Option<Workers>,
    /// `--max-blksize`.
    pub max_blksize: Option<MaxBlksize>,
    /// `--max-window`.
    pub max_window: Option<MaxWindow>,
    /// `--max-window-bytes`.
    pub max_window_bytes: Option<MaxWindowBytes>,
    /// `--timeout` (an integer counts seconds).
    pub timeout: Option<Timeout>,
    /// `--min-rto` (an integer counts milliseconds).
    pub min_rto: Option<MinRto>,
    /// `--retries`.
    pub retries: Option<Retries>,
    /// `--port-range`, `"LOW:HIGH"`.
    #[serde(default, deserialize_with = "value::parsed")]
    pub port_range: Option<PortRange>,
    /// `--rate-limit`: `"IFACE=RATE"` or a list (`["eth0=400M", "eth1=1G"]`).
    #[serde(default, deserialize_with = "value::parsed_list")]
    pub rate_limit: Option<Vec<value::RateLimit>>,
    /// `--max-transfers`.
    pub max_transfers: Option<TransferCap>,
    /// `--max-transfers-per-client`.
    pub max_transfers_per_client: Option<TransferCap>,
    /// `--client-rate` (0: no limit).
    pub client_rate: Option<u32>,
    /// `--allow-fragmentation`.
    pub allow_fragmentation: Option<bool>,
    /// `--small-file-limit`, bytes.
    pub small_file_limit: Option<u64>,
    /// `--io-backend`: `"auto"`, `"uring"` or `"fallback"`.
    pub io_backend: Option<BackendChoice>,
    /// `-v` (1: debug, 2: trace).
    pub verbose: Option<u8>,
    /// `--log-format`: `"text"` or `"json"`.
    pub log_format: Option<LogFormat>,
    /// `--user`: the user to run as once every socket is bound.
    pub user: Option<String>,
    /// `--group`: the group to run as (default: the user's).
    pub group: Option<String>,
    /// `--drain-timeout`: how long running transfers may finish at SIGTERM/SIGINT.
    pub drain_timeout: Option<super::DrainTimeout>,
    /// `--mtftp`: `"FILE@GROUP:CLIENTPORT"` or a list.
    #[serde(default, deserialize_with = "value::parsed_list")]
    pub mtftp: Option<Vec<MtftpFile>>,
    /// `--mtftp-port`.
    pub mtftp_port: Option<u16>,
    /// `--multicast-groups`, `"239.255.42.0/24"`.
    #[serde(default, deserialize_with = "value::parsed")]
    pub multicast_groups: Option<GroupPool>,
    /// `--multicast-port`.
    pub multicast_port: Option<u16>,
    /// `--multicast-rate`, Mbit/s (0: no cap).
    pub multicast_rate: Option<u64>,
    /// `--multicast-window`.
    pub multicast_window: Option<McWindow>,
    /// `--multicast-timeout` (an integer counts milliseconds).
    pub multicast_timeout: Option<McTimeout>,
    /// `--multicast-ttl`.
    pub multicast_ttl: Option<Ttl>,
    /// `--multicast-interface`.
    pub multicast_interface: Option<Ipv4Addr>,
    /// `--multicast-loop`.
    pub multicast_loop: Option<bool>,
    /// `--multicast-max-members`.
    pub multicast_max_members: Option<McCap>,
    /// `--multicast-max-per-source`.
    pub multicast_max_per_source: Option<McCap>,
    /// `--multicast-min-rate`, Mbit/s.
    pub multicast_min_rate: Option<u64>,
    /// `--multicast-slow-receivers`, `"pace"` or `"unicast"`.
    #[serde(default, deserialize_with = "value::parsed")]
    pub multicast_slow_receivers: Option<SlowPolicy>,
    /// The DHCP responder (`--dhcp*` and `--boot-file` set some of its keys).
    pub dhcp: Option<DhcpConfig>,
    /// The metrics and status listener: `listen = "ADDR:PORT"` (`--metrics`).
    pub metrics: Option<toml::Table>,
    /// Reserved for the HTTP listener.
    pub http: Option<toml::Table>,
}

/// Read a config file's text; `path` is only for the messages.
pub fn parse(path: &Path, text: &str) -> Result<FileConfig, Vec<Problem>> {
    let (mut table, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // A broken document reads as a different one: report the syntax alone.
        let mut out: Vec<Problem> = syntax
            .iter()
            .take(MAX_PROBLEMS)
            .map(|e| Problem::in_file(path, text, None, e.span(), e.message()))
            .collect();
        out.sort_by_key(|p| p.position());
        return Err(out);
    }
    let mut problems = Vec::new();
    loop {
        let de = toml::de::Deserializer::from(table.clone());
        match serde_path_to_error::deserialize::<_, FileConfig>(de) {
            Ok(file) if problems.is_empty() => return Ok(file),
            Ok(_) => break,
            Err(e) => {
                let segments: Vec<&Segment> = e.path().iter().collect();
                let key = (!segments.is_empty()).then(|| e.path().to_string());
                let inner = e.inner();
                problems.push(Problem::in_file(
                    path,
                    text,
                    key,
                    inner.span(),
                    &polish(inner.message()),
                ));
                // Set the key aside and read the rest again, to find the next problem.
                if problems.len() >= MAX_PROBLEMS || !remove(table.get_mut(), &segments) {
                    break;
                }
            }
        }
    }
    problems.sort_by_key(|p| p.position());
    Err(problems)
}

/// Remove the deepest table key on `path` (an array element takes its whole array with it, so
/// the indices of the next problems stay true). False when there is none.
fn remove(table: &mut DeTable<'_>, path: &[&Segment]) -> bool {
    let Some(Segment::Map { key }) = path.first() else {
        return false;
    };
    let rest = &path[1..];
    let deeper = rest.iter().any(|s| matches!(s, Segment::Map { .. }));
    if deeper {
        let found = match table.get_mut(key.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(t)) => remove(t, rest),
            Some(DeValue::Array(a)) => match rest {
                [Segment::Seq { index }, tail @ ..] => match a.get_mut(*index).map(|v| v.get_mut())
                {
                    Some(DeValue::Table(t)) => remove(t, tail),
                    _ => false,
                },
                _ => false,
            },
            _ => false,
        };
        if found {
            return true;
        }
    }
    table.remove(key.as_str()).is_some()
}

/// serde's wording, in the file's terms: "unknown key" with a suggestion, integer ranges for
/// Rust's integer type names.
fn polish(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        return match known.iter().find(|k| close(name, k)) {
            Some(k) => format!("unknown key `{name}`; did you mean `{k}`?"),
            None if known.is_empty() => format!("unknown key `{name}`"),
            None => format!(
                "unknown key `{name}`; the keys here are {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    let mut m = message.to_owned();
    for (ty, range) in [
        ("u8", "an integer in 0..=255"),
        ("u16", "an integer in 0..=65535"),
        ("u32", "an integer in 0..=4294967295"),
        ("u64", "a non-negative integer"),
    ] {
        let word = format!("expected {ty}");
        if m.ends_with(&word) {
            let cut = m.len() - ty.len();
            m.replace_range(cut.., range);
        }
    }
    m
}

/// Whether `a` is a likely typo of `b` (at most two edits, or one is the other with `_` or `s`).
fn close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 2 {
        return false;
    }
    // Levenshtein distance, two rows.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dhcp::DhcpMode;
    use crate::config::value::Ranged;
    use std::time::Duration;

    fn p(text: &str) -> Result<FileConfig, Vec<Problem>> {
        parse(Path::new("ringboot.toml"), text)
    }

    fn errors(text: &str) -> Vec<String> {
        p(text)
            .expect_err("the file should be refused")
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(p("").unwrap(), FileConfig::default());
        assert_eq!(p("# nothing\n\n").unwrap(), FileConfig::default());
    }

    #[test]
    fn type_error_names_key_line_and_type() {
        let e = errors("root = \"/srv\"\nallow_fragmentation = \"yes\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0],
            "ringboot.toml:2:23: allow_fragmentation: invalid type: string \"yes\", expected a boolean"
        );
    }

    /// `text` gives exactly one error, `want`.
    fn refused_as(text: &str, want: &str) {
        assert_eq!(errors(text), [want]);
    }

    /// The first error `text` gives starts with `start` and names every one of `parts`.
    fn refused_naming(text: &str, start: &str, parts: &[&str]) {
        let e = errors(text);
        assert!(
            e[0].starts_with(start) && parts.iter().all(|part| e[0].contains(part)),
            "{e:?}"
        );
    }

    #[test]
    fn a_number_written_as_a_string_is_refused() {
        refused_as(
            "max_blksize = \"1468\"\n",
            "ringboot.toml:1:15: max_blksize: invalid type: string \"1468\", expected an integer in 8..=65464",
        );
        refused_naming("mtftp_port = \"1759\"\n", "", &["mtftp_port", "0..=65535"]);
    }

    #[test]
    fn out_of_range_names_key_and_range() {
        refused_as(
            "\n\nmax_blksize = 70000\n",
            "ringboot.toml:3:15: max_blksize: invalid value: integer `70000`, expected an integer in 8..=65464",
        );
        refused_naming(
            "timeout = 0\n",
            "ringboot.toml:1:11: timeout:",
            &["1s..=255s"],
        );
        refused_naming("multicast_ttl = 300\n", "", &["multicast_ttl", "0..=255"]);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        refused_as(
            "max_blksiz = 1468\n",
            "ringboot.toml:1:1: max_blksiz: unknown key `max_blksiz`; did you mean `max_blksize`?",
        );
        refused_as(
            "[dhcp]\nmdoe = \"full\"\n",
            "ringboot.toml:2:1: dhcp.mdoe: unknown key `mdoe`; did you mean `mode`?",
        );
        refused_naming(
            "[[dhcp.rule]]\nboot_file = \"a\"\n[[dhcp.rule]]\nfrobnicate = 1\n",
            "ringboot.toml:4:1: dhcp.rule[1].frobnicate: unknown key `frobnicate`; the keys here are `arch`",
            &[],
        );
        // The DHCP flags' keys live in [dhcp]; at the top they are unknown.
        refused_naming(
            "boot_file = \"pxelinux.0\"\n",
            "",
            &["unknown key `boot_file`"],
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let e = errors(
            "allow_fragmentation = \"yes\"\nmax_blksize = \"1468\"\nbogus = 1\n[dhcp]\nlease_time = true\n[[dhcp.rule]]\narch = [\"efi-x65\"]\n",
        );
        let starts = [
            "ringboot.toml:1:23: allow_fragmentation:",
            "ringboot.toml:2:15: max_blksize:",
            "ringboot.toml:3:1: bogus:",
            "ringboot.toml:5:14: dhcp.lease_time:",
            "ringboot.toml:7:",
        ];
        assert_eq!(e.len(), starts.len(), "{e:#?}");
        for (line, start) in e.iter().zip(starts) {
            assert!(line.starts_with(start), "{e:#?}");
        }
        assert!(e[4].contains("efi-x65"), "{e:#?}");
    }

    #[test]
    fn syntax_errors_are_reported_with_lines() {
        let e = errors("max_blksize = 1468\nlisten = [\"0.0.0.0:69\"\nroot = /srv\n");
        assert!(!e.is_empty());
        assert!(e.iter().all(|l| l.starts_with("ringboot.toml:")), "{e:#?}");
        assert!(e.iter().any(|l| l.contains(":3:")), "{e:#?}");
    }

    /// The README's ```toml blocks, in order.
    fn readme_examples() -> Vec<&'static str> {
        include_str!("../../README.md")
            .split("```toml\n")
            .skip(1)
            .map(|block| block.split("```").next().unwrap_or_default())
            .collect()
    }

    #[test]
    fn readme_examples_read() {
        let examples = readme_examples();
        assert!(examples.len() >= 3, "{examples:#?}");
        for text in &examples {
            if let Err(e) = p(text) {
                panic!("README example does not read: {e:?}\n{text}");
            }
        }
        // The first is the whole example of the configuration section.
        let f = p(examples[0]).unwrap();
        assert_eq!(f.root, Some(PathBuf::from("/srv/tftp")));
        assert_eq!(f.listen, Some(vec!["0.0.0.0:69".parse().unwrap()]));
        assert_eq!(f.max_blksize, Some(Ranged::of(1468)));
        let m = f.mtftp.unwrap();
        assert_eq!(m[0].file, "boot/x64/boot.wim");
        assert_eq!(m[0].client_port, 3001);
        assert!(f.multicast_groups.is_some());
        let d = f.dhcp.unwrap();
        assert_eq!(d.mode, DhcpMode::Proxy);
        assert_eq!(d.interface.as_deref(), Some("eth0"));
        assert_eq!(
            d.rules[0].ipxe_script.as_deref(),
            Some("http://10.0.0.1/boot.ipxe")
        );
    }

    #[test]
    fn every_top_level_key_reads() {
        let f = p(r#"
root = "/srv/tftp"
listen = "127.0.0.1:6969"
workers = 2
max_blksize = 1432
max_window = 16
max_window_bytes = 65536
timeout = 5
min_rto = 10
retries = 3
port_range = "5000:5100"
max_transfers = 100
max_transfers_per_client = 10
client_rate = 0
allow_fragmentation = true
small_file_limit = 4096
io_backend = "fallback"
verbose = 1
log_format = "json"
mtftp = "pxelinux.0@239.255.1.1:3001"
mtftp_port = 1760
multicast_groups = "239.255.42.0/24"
multicast_port = 1758
multicast_rate = 50
multicast_window = 8
multicast_timeout = "1s"
multicast_ttl = 2
multicast_interface = "10.0.0.1"
multicast_loop = false
multicast_max_members = 32
multicast_max_per_source = 2
multicast_min_rate = 4
multicast_slow_receivers = "unicast"

[metrics]
listen = "127.0.0.1:9100"
"#)
        .unwrap();
        assert_eq!(f.workers, Some(Ranged::of(2)));
        assert_eq!(f.timeout.unwrap().get(), Duration::from_secs(5));
        assert_eq!(f.min_rto.unwrap().get(), Duration::from_millis(10));
        assert_eq!(f.multicast_timeout.unwrap().get(), Duration::from_secs(1));
        assert_eq!(f.port_range, PortRange::new(5000, 5100));
        assert_eq!(f.io_backend, Some(BackendChoice::Fallback));
        assert_eq!(f.log_format, Some(LogFormat::Json));
        assert_eq!(f.multicast_loop, Some(false));
        assert_eq!(f.multicast_min_rate, Some(4));
        assert_eq!(f.multicast_slow_receivers, Some(SlowPolicy::Unicast));
        assert_eq!(f.allow_fragmentation, Some(true));
        assert_eq!(f.verbose, Some(1));
        assert!(f.metrics.is_some());
    }

    #[test]
    fn dhcp_docs_examples_read() {
        // docs/dhcp.md: full mode, rules, iPXE, MTFTP advertising.
        let f = p(r#"
[dhcp]
mode = "full"
interface = "eth1"
boot_file = "pxelinux.0"
range = "10.0.0.100,10.0.0.200"
netmask = "255.255.255.0"        # default: the interface's
router = "10.0.0.1"              # default: the server's address (with --dhcp-range)
dns = ["10.0.0.1"]
domain_name = "lab.example"
lease_time = 3600                # seconds
decline_hold = 600               # seconds a DECLINEd address stays out of the pool
lease_file = "/var/lib/ringboot/dhcp.leases"   # default: $STATE_DIRECTORY/dhcp.leases
boot_non_pxe = false             # also give non-PXE clients the boot file
detect_other_servers = true
client_rate = 20                 # requests/s taken from one MAC (both modes)
segment_rate = 1000              # requests/s per segment (local link or relay), per class
ipxe_script = "http://10.0.0.1/boot.ipxe"      # what iPXE gets (a URL or a TFTP file)

[[dhcp.rule]]
arch = ["efi-x64", "efi-arm64"]      # option 93 names or numbers
boot_file = "grubx64.efi"

[[dhcp.rule]]
mac = "52:54:00"                     # a MAC or its first octets
subnet = "10.5.0.0/16"               # relay address, current address or receiving interface
boot_file = "test/pxelinux.0"
next_server = "10.5.0.2"             # another TFTP server (siaddr)

[[dhcp.rule]]
user_class = "iPXE"                  # option 77
boot_file = "http://10.0.0.1/menu.ipxe"

[[dhcp.mtftp]]
file = "pxelinux.0"
group = "239.255.1.1"   # sub-option 1 (default)
client_port = 3001      # sub-option 2
server_port = 1759      # sub-option 3
listen_timeout = 1      # sub-option 4, seconds
reopen_delay = 2        # sub-option 5, seconds
"#)
        .unwrap();
        let d = f.dhcp.unwrap();
        assert_eq!(d.mode, DhcpMode::Full);
        assert_eq!(d.lease_time, Duration::from_secs(3600));
        assert_eq!(d.decline_hold, Duration::from_secs(600));
        assert_eq!(d.rules.len(), 3);
        assert_eq!(d.rules[1].next_server, Some(Ipv4Addr::new(10, 5, 0, 2)));
        assert_eq!(d.mtftp[0].reopen_delay, 2);
        assert_eq!(d.client_rate, 20);
        d.validate().unwrap();
        // A lease time with a unit.
        let d = p("[dhcp]\nlease_time = \"12h\"\n").unwrap().dhcp.unwrap();
        assert_eq!(d.lease_time, Duration::from_secs(12 * 3600));
    }

    #[test]
    fn typos_are_close() {
        assert!(close("mdoe", "mode"));
        assert!(close("max_blksiz", "max_blksize"));
        assert!(!close("frobnicate", "arch"));
    }
}
