//! What the operator chose, as typed values: the mode, the address pool, the boot-file rules and
//! the MTFTP parameters advertised per file; and [`Policy`], everything the decision reads.
//!
//! Contract:
//! - Pure values: each type parses from the text a user writes ([`FromStr`], and serde for the
//!   `[dhcp]` table) and says what it matches; a mistake is a [`ValueError`] that names the
//!   value and how to write it.
//! - [`Policy`] is the decision's whole input besides the request, the lease table and the
//!   [`Context`](super::decide::Context). The config layer builds it from the `[dhcp]` table
//!   and the flags once they are validated (`DhcpConfig::validate`); the decision assumes that
//!   (a boot file that fits the header, an option 43 under 255 bytes).

use super::wire::ClientArch;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

/// A value that does not parse, with how to write it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("unknown DHCP mode {0:?}: use proxy, full or off")]
    Mode(String),
    #[error("unknown architecture {0:?} in a boot rule: use a number (option 93) or one of bios, efi-ia32, efi-x64, efi-bc, efi-arm32, efi-arm64, http-ia32, http-x64, http-arm32, http-arm64")]
    Arch(String),
    #[error("bad MAC {0:?} in a boot rule: write hex octets separated by ':' (a prefix like 52:54:00 is fine)")]
    Mac(String),
    #[error("bad subnet {0:?}: write it as ADDRESS/PREFIX, e.g. 10.0.0.0/24")]
    Subnet(String),
    #[error("bad DHCP range {0:?}: write START,END with START <= END, at most 65536 addresses")]
    Range(String),
}

/// What the responder does (`--dhcp proxy|full|off`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// No DHCP at all (the default).
    #[default]
    Off,
    /// proxyDHCP: another server hands out addresses; answer PXE clients with boot data only.
    Proxy,
    /// A small DHCP server with an address pool, for isolated labs.
    Full,
}

impl FromStr for DhcpMode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(DhcpMode::Off),
            "proxy" => Ok(DhcpMode::Proxy),
            "full" => Ok(DhcpMode::Full),
            _ => Err(ValueError::Mode(s.to_owned())),
        }
    }
}

impl fmt::Display for DhcpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DhcpMode::Off => "off",
            DhcpMode::Proxy => "proxy",
            DhcpMode::Full => "full",
        })
    }
}

/// One `arch` entry of a rule: a name from [`ClientArch::NAMES`] or a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchMatch(pub Vec<u16>);

impl ArchMatch {
    pub fn matches(&self, arch: ClientArch) -> bool {
        self.0.contains(&arch.0)
    }
}

impl FromStr for ArchMatch {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let lower = s.trim().to_ascii_lowercase();
        if let Some((_, v)) = ClientArch::NAMES.iter().find(|(n, _)| *n == lower) {
            return Ok(ArchMatch(v.to_vec()));
        }
        lower
            .parse::<u16>()
            .map(|n| ArchMatch(vec![n]))
            .map_err(|_| ValueError::Arch(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for ArchMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u16),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ArchMatch(vec![n])),
            Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A hardware address, or its first octets (`52:54:00` matches every QEMU NIC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacMatch(pub Vec<u8>);

impl MacMatch {
    pub fn matches(&self, chaddr: &[u8]) -> bool {
        chaddr.len() >= self.0.len() && chaddr[..self.0.len()] == self.0[..]
    }
}

impl FromStr for MacMatch {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bytes: Result<Vec<u8>, _> = s
            .split([':', '-'])
            .map(|p| u8::from_str_radix(p, 16))
            .collect();
        match bytes {
            Ok(b) if !b.is_empty() && b.len() <= 16 => Ok(MacMatch(b)),
            _ => Err(ValueError::Mac(s.to_owned())),
        }
    }
}

/// An IPv4 prefix, `10.0.0.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn mask(&self) -> Ipv4Addr {
        prefix_to_mask(self.prefix)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.mask());
        u32::from(ip) & m == u32::from(self.addr) & m
    }
}

/// The netmask of a prefix length (`24` -> `255.255.255.0`); lengths over 32 count as 32.
pub fn prefix_to_mask(prefix: u8) -> Ipv4Addr {
    match prefix {
        0 => Ipv4Addr::UNSPECIFIED,
        p => Ipv4Addr::from(u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

/// Whether `a` and `b` are in the same subnet under `mask`.
pub fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, mask: Ipv4Addr) -> bool {
    let m = u32::from(mask);
    u32::from(a) & m == u32::from(b) & m
}

impl FromStr for Ipv4Cidr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::Subnet(s.to_owned());
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let prefix: u8 = p.trim().parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

/// The address pool of full mode, `START,END` (both included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolRange {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

/// The largest pool accepted (a /16): the allocator scans it linearly.
pub const MAX_POOL: u32 = 1 << 16;

impl PoolRange {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }
    pub fn len(&self) -> u32 {
        u32::from(self.end)
            .saturating_sub(u32::from(self.start))
            .saturating_add(1)
    }
    pub fn is_empty(&self) -> bool {
        u32::from(self.end) < u32::from(self.start)
    }
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.start)..=u32::from(self.end)).map(Ipv4Addr::from)
    }
}

impl FromStr for PoolRange {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::Range(s.to_owned());
        let (a, b) = s.split_once([',', '-']).ok_or_else(bad)?;
        let start: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let end: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        let r = PoolRange { start, end };
        if r.is_empty() || r.len() > MAX_POOL {
            return Err(bad());
        }
        Ok(r)
    }
}

macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(MacMatch, Ipv4Cidr, PoolRange);

/// A boot-file rule (`[[dhcp.rule]]`): every criterion given must match; the first matching rule
/// wins; a rule without criteria matches everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootRule {
    /// Option 93 values or names (`bios`, `efi-x64`, `efi-arm64`, `http-x64`, 7, ...).
    pub arch: Vec<ArchMatch>,
    /// A MAC address or its first octets.
    pub mac: Option<MacMatch>,
    /// The client's subnet (relay address, current address or the receiving interface's).
    pub subnet: Option<Ipv4Cidr>,
    /// Option 77 (user class), e.g. `iPXE`: a rule for chainloaded iPXE.
    pub user_class: Option<String>,
    /// The file (or URL for HTTP boot and iPXE) to hand out.
    pub boot_file: Option<String>,
    /// What to hand iPXE instead of `boot_file` when this rule matches an iPXE client.
    pub ipxe_script: Option<String>,
    /// The TFTP server (siaddr) when it is not this server.
    pub next_server: Option<Ipv4Addr>,
}

/// PXE MTFTP parameters advertised for one boot file (`[[dhcp.mtftp]]`, PXE 2.1 table 2-1
/// sub-options 1 to 5).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtftpConfig {
    /// The boot file these parameters are for.
    pub file: String,
    /// Multicast group (sub-option 1).
    #[serde(default = "default_mtftp_group")]
    pub group: Ipv4Addr,
    /// Client UDP port (sub-option 2).
    #[serde(default = "default_mtftp_client_port")]
    pub client_port: u16,
    /// Server UDP port (sub-option 3).
    #[serde(default = "default_mtftp_server_port")]
    pub server_port: u16,
    /// Seconds a client listens before it opens (sub-option 4).
    #[serde(default = "default_mtftp_listen")]
    pub listen_timeout: u8,
    /// Seconds a client waits before it re-opens (sub-option 5).
    #[serde(default = "default_mtftp_reopen")]
    pub reopen_delay: u8,
}

impl MtftpConfig {
    /// MTFTP parameters for `file` with the default listen and re-open delays.
    pub fn new(file: &str, group: Ipv4Addr, client_port: u16, server_port: u16) -> Self {
        MtftpConfig {
            file: file.to_owned(),
            group,
            client_port,
            server_port,
            listen_timeout: default_mtftp_listen(),
            reopen_delay: default_mtftp_reopen(),
        }
    }
}

fn default_mtftp_group() -> Ipv4Addr {
    Ipv4Addr::new(239, 255, 1, 1)
}
fn default_mtftp_client_port() -> u16 {
    3001
}
fn default_mtftp_server_port() -> u16 {
    1759
}
fn default_mtftp_listen() -> u8 {
    1
}
fn default_mtftp_reopen() -> u8 {
    2
}

/// Name heuristic: does this file look like an iPXE binary (handing it to iPXE would loop)?
pub fn looks_like_ipxe_binary(file: &str) -> bool {
    let f = file.to_ascii_lowercase();
    let name = f.rsplit(['/', '\\']).next().unwrap_or(&f);
    name.ends_with(".kpxe")
        || name.ends_with(".kkpxe")
        || name.ends_with(".kkkpxe")
        || (name.contains("ipxe")
            && (name.ends_with(".efi")
                || name.ends_with(".pxe")
                || name.ends_with(".0")
                || name.ends_with(".lkrn")
                || name.ends_with(".usb")
                || !name.contains('.')))
        || name == "undionly.kpxe"
}

/// Everything the decision reads from the configuration (see the module contract). The fields
/// mean what the `[dhcp]` keys of the same names mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: DhcpMode,
    /// The TFTP server handed to clients (siaddr) when it is not this server.
    pub next_server: Option<Ipv4Addr>,
    /// The boot file for every architecture unless a rule says otherwise.
    pub boot_file: Option<String>,
    /// What a chainloaded iPXE gets instead of a binary.
    pub ipxe_script: Option<String>,
    /// Full mode: hand the boot file to clients that are not PXE clients too.
    pub boot_non_pxe: bool,
    /// Boot-file rules, in order.
    pub rules: Vec<BootRule>,
    /// Multicast MTFTP advertised per boot file.
    pub mtftp: Vec<MtftpConfig>,
    /// Text of PXE sub-option 10 (menu prompt) sent with a zero timeout.
    pub pxe_prompt: String,
    /// Full mode: the pool.
    pub range: Option<PoolRange>,
    /// Full mode: subnet mask (default: the receiving interface's).
    pub netmask: Option<Ipv4Addr>,
    /// Full mode: default gateway.
    pub router: Option<Ipv4Addr>,
    /// Full mode: DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Full mode: domain name (option 15).
    pub domain_name: Option<String>,
    /// Full mode: lease time.
    pub lease_time: Duration,
    /// Full mode: how long a declined address stays out of the pool.
    pub decline_hold: Duration,
}

impl Default for Policy {
    /// The defaults of the `[dhcp]` table.
    fn default() -> Self {
        Policy {
            mode: DhcpMode::Off,
            next_server: None,
            boot_file: None,
            ipxe_script: None,
            boot_non_pxe: false,
            rules: Vec::new(),
            mtftp: Vec::new(),
            pxe_prompt: "PXE".to_owned(),
            range: None,
            netmask: None,
            router: None,
            dns: Vec::new(),
            domain_name: None,
            lease_time: Duration::from_secs(3600),
            decline_hold: Duration::from_secs(600),
        }
    }
}

impl Policy {
    /// The MTFTP parameters configured for `file`, if any.
    pub fn mtftp_for(&self, file: &str) -> Option<&MtftpConfig> {
        self.mtftp.iter().find(|m| m.file == file)
    }
}

#[cfg(test)]
impl Policy {
    /// The tests' isolated lab: full mode handing out `range` of 10.0.0.0/24 with `router` as
    /// the gateway, and pxelinux.0 to boot.
    pub(crate) fn full_lab(range: &str, router: Ipv4Addr) -> Policy {
        Policy {
            mode: DhcpMode::Full,
            boot_file: Some("pxelinux.0".into()),
            range: Some(range.parse().expect("a valid range")),
            netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            router: Some(router),
            ..Policy::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_name_their_mistakes() {
        assert!("10.0.0.9,10.0.0.1".parse::<PoolRange>().is_err());
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert_eq!("FULL".parse::<DhcpMode>(), Ok(DhcpMode::Full));
        let e = "fulll".parse::<DhcpMode>().unwrap_err();
        assert!(e.to_string().contains("fulll"), "{e}");
        let e = "efi-x65".parse::<ArchMatch>().unwrap_err();
        assert!(e.to_string().contains("efi-x65"), "{e}");
        assert_eq!("efi-x64".parse::<ArchMatch>(), Ok(ArchMatch(vec![7, 9])));
        assert_eq!("11".parse::<ArchMatch>(), Ok(ArchMatch(vec![11])));
        assert_eq!(
            "52:54:00".parse::<MacMatch>(),
            Ok(MacMatch(vec![0x52, 0x54, 0]))
        );
        assert!("52:54:zz".parse::<MacMatch>().is_err());
        let r: PoolRange = "10.0.0.100,10.0.0.150".parse().unwrap();
        assert_eq!(r.len(), 51);
        assert!(r.contains(Ipv4Addr::new(10, 0, 0, 150)));
        assert!(!r.contains(Ipv4Addr::new(10, 0, 0, 151)));
    }

    #[test]
    fn ipxe_binary_heuristic() {
        for f in [
            "undionly.kpxe",
            "ipxe.efi",
            "x86_64/ipxe.efi",
            "snponly-ipxe.efi",
            "ipxe.pxe",
            "IPXE.EFI",
            "ipxe",
        ] {
            assert!(looks_like_ipxe_binary(f), "{f}");
        }
        for f in [
            "pxelinux.0",
            "grubx64.efi",
            "boot.ipxe",
            "http://srv/boot.ipxe",
            "menu.ipxe",
        ] {
            assert!(!looks_like_ipxe_binary(f), "{f}");
        }
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_to_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_to_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_to_mask(32), Ipv4Addr::BROADCAST);
        let c: Ipv4Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 1, 200, 3)));
        assert!(!c.contains(Ipv4Addr::new(10, 2, 0, 3)));
    }
}
