//! The DHCP responder's configuration: the `[dhcp]` TOML section (the `--dhcp*` flags set some
//! of its keys; [`crate::config`] merges them).
//!
//! Contract:
//! - [`DhcpConfig`] deserializes from the `[dhcp]` table (keys named like the flags: `mode`,
//!   `interface`, `boot_file`, `range`, ...; boot rules as `[[dhcp.rule]]`, multicast files as
//!   `[[dhcp.mtftp]]`). Its `Default` holds the defaults of every key.
//! - [`DhcpConfig::problems`] names every mistake a user can make (a range outside its subnet, a
//!   boot file too long for the header, an option 43 over 255 bytes) before a socket is opened.
//! - No I/O: [`DhcpConfig::resolve_addresses`] fills the server address, mask and router from a
//!   list of interface addresses that the caller read from the system at start.

use crate::proto::dhcp::Policy;
use crate::sys::iface::IfAddr;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::proto::dhcp::policy::{
    looks_like_ipxe_binary, prefix_to_mask, same_subnet, ArchMatch, BootRule, DhcpMode, Ipv4Cidr,
    MacMatch, MtftpConfig, PoolRange, MAX_POOL,
};
pub use crate::proto::dhcp::wire::ClientArch;

/// The `[dhcp]` section. Every field has a default; [`DhcpConfig::validate`] checks the whole.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpConfig {
    /// `off` (default), `proxy` or `full`.
    pub mode: DhcpMode,
    /// Serve only this interface (`SO_BINDTODEVICE`); defaults of full mode come from it.
    pub interface: Option<String>,
    /// Our address (option 54, default siaddr). Default: the receiving interface's address.
    pub server_ip: Option<Ipv4Addr>,
    /// The TFTP server handed to clients (siaddr) when it is not this server.
    pub next_server: Option<Ipv4Addr>,
    /// The boot file for every architecture unless a rule says otherwise.
    pub boot_file: Option<String>,
    /// What a chainloaded iPXE (option 77 `iPXE` or option 175) gets instead of a binary.
    pub ipxe_script: Option<String>,
    /// Full mode: hand the boot file to clients that are not PXE clients too.
    pub boot_non_pxe: bool,
    /// Boot-file rules, in order (`[[dhcp.rule]]`).
    #[serde(rename = "rule")]
    pub rules: Vec<BootRule>,
    /// Multicast MTFTP advertised per boot file (`[[dhcp.mtftp]]`).
    pub mtftp: Vec<MtftpConfig>,
    /// Text of PXE sub-option 10 (menu prompt) sent with a zero timeout.
    pub pxe_prompt: String,
    /// Full mode: the pool, `START,END`.
    pub range: Option<PoolRange>,
    /// Full mode: subnet mask (default: the interface's).
    pub netmask: Option<Ipv4Addr>,
    /// Full mode: default gateway (default: the server's address, see
    /// [`DhcpConfig::resolve_addresses`]).
    pub router: Option<Ipv4Addr>,
    /// Full mode: DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Full mode: domain name (option 15).
    pub domain_name: Option<String>,
    /// Full mode: lease time; an integer counts seconds, or `"12h"` (default 3600).
    #[serde(deserialize_with = "crate::config::value::seconds")]
    pub lease_time: Duration,
    /// Full mode: how long a declined address stays out of the pool; an integer counts seconds
    /// (default 600).
    #[serde(deserialize_with = "crate::config::value::seconds")]
    pub decline_hold: Duration,
    /// Full mode: where leases are kept (default `$STATE_DIRECTORY/dhcp.leases`, else
    /// `/var/lib/ringboot/dhcp.leases`).
    pub lease_file: Option<PathBuf>,
    /// Full mode: probe for another DHCP server at start and every 10 minutes.
    pub detect_other_servers: bool,
    /// Requests per second taken from one hardware address (default 20).
    pub client_rate: u32,
    /// Requests per second taken per segment (the local link or one relay), for new clients and
    /// for clients the lease table knows, each (default 1000).
    pub segment_rate: u32,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            mode: DhcpMode::Off,
            interface: None,
            server_ip: None,
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
            lease_file: None,
            detect_other_servers: true,
            client_rate: crate::proto::dhcp::limit::DEFAULT_CLIENT_RATE,
            segment_rate: crate::proto::dhcp::limit::DEFAULT_SEGMENT_RATE,
        }
    }
}

/// A configuration mistake, with what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
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
    #[error("full DHCP mode needs an address pool: give --dhcp-range START,END (or range = \"START,END\" in [dhcp])")]
    NoRange,
    #[error("DHCP range {start}-{end} is not inside the subnet {net}/{mask}: fix the range or the netmask")]
    RangeOutsideSubnet {
        start: Ipv4Addr,
        end: Ipv4Addr,
        net: Ipv4Addr,
        mask: Ipv4Addr,
    },
    #[error("{mode} DHCP mode needs a boot file: give --boot-file FILE, boot_file in [dhcp], or a [[dhcp.rule]] with boot_file")]
    NoBootFile { mode: DhcpMode },
    #[error("boot file name {0:?} is {len} bytes; the DHCP header holds at most 127: use a shorter path", len = .0.len())]
    BootFileTooLong(String),
    #[error("PXE vendor options (option 43) for {file:?} would take {len} bytes; at most 255 fit: shorten pxe_prompt")]
    Option43TooLong { file: String, len: usize },
    #[error("[dhcp] lease_time must be between 60 s and 49 days (got {0} s)")]
    LeaseTime(u64),
    #[error("[dhcp] {key} must be at least 1 request per second (got {value})")]
    Rate { key: &'static str, value: u32 },
    #[error("interface {0:?} has no IPv4 address: give it one (ip addr add ... dev {0}) or name another with --dhcp-interface")]
    NoInterfaceAddress(String),
    #[error("no interface has an address in the subnet of the DHCP range {start}-{end}: add one or give --dhcp-interface")]
    NoInterfaceForRange { start: Ipv4Addr, end: Ipv4Addr },
}

impl DhcpConfig {
    /// Parse a document and take its `[dhcp]` table (absent: the defaults), ignoring the other
    /// tables: for tests and tools. The server reads the whole file through [`crate::config`].
    pub fn from_toml_document(text: &str) -> Result<DhcpConfig, toml::de::Error> {
        // Other sections belong to other parts of ringboot: serde skips them.
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            dhcp: DhcpConfig,
        }
        Ok(toml::from_str::<Doc>(text)?.dhcp)
    }

    /// Whether [`DhcpConfig::resolve_addresses`] needs the host's interface list: the responder
    /// is on and the server address (and in full mode the mask) is not configured.
    pub fn needs_addresses(&self) -> bool {
        self.mode != DhcpMode::Off
            && !(self.server_ip.is_some()
                && (self.netmask.is_some() || self.mode != DhcpMode::Full))
    }

    /// Fill what the configuration leaves to the host, from `ifs` (the IPv4 addresses of the
    /// interfaces that are up, read at start): the server address and mask from the named
    /// interface, or from the one whose subnet holds the range (proxy mode uses the receiving
    /// interface's address per request anyway); in full mode the router defaults to the server
    /// (an isolated lab: the server is the only way out, if any). Then the whole is checked
    /// again ([`DhcpConfig::validate`]), now that the subnet is known.
    pub fn resolve_addresses(&mut self, ifs: &[IfAddr]) -> Result<(), ConfigError> {
        if self.mode == DhcpMode::Off {
            return Ok(());
        }
        if self.needs_addresses() {
            let pick = match (&self.interface, self.range) {
                (Some(name), _) => Some(
                    ifs.iter()
                        .find(|i| &i.name == name)
                        .ok_or_else(|| ConfigError::NoInterfaceAddress(name.clone()))?,
                ),
                (None, Some(r)) => Some(
                    ifs.iter()
                        .find(|i| same_subnet(i.addr, r.start, i.netmask))
                        .ok_or(ConfigError::NoInterfaceForRange {
                            start: r.start,
                            end: r.end,
                        })?,
                ),
                (None, None) => None,
            };
            if let Some(pick) = pick {
                self.server_ip.get_or_insert(pick.addr);
                self.netmask.get_or_insert(pick.netmask);
            }
        }
        if self.mode == DhcpMode::Full && self.router.is_none() {
            self.router = self.server_ip;
        }
        self.validate()
    }

    /// Check the whole configuration: the first of [`DhcpConfig::problems`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every mistake in the configuration (none when the responder is off); see [`ConfigError`].
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if self.mode == DhcpMode::Off {
            return out;
        }
        let any_file = self.boot_file.is_some()
            || self.ipxe_script.is_some()
            || self.rules.iter().any(|r| r.boot_file.is_some());
        if self.mode == DhcpMode::Proxy && !any_file {
            out.push(ConfigError::NoBootFile { mode: self.mode });
        }
        let files = self.boot_file.iter().chain(self.ipxe_script.iter()).chain(
            self.rules
                .iter()
                .flat_map(|r| r.boot_file.iter().chain(r.ipxe_script.iter())),
        );
        for f in files {
            // URLs (HTTP boot, iPXE scripts) may be longer: they also go in option 67.
            if (f.len() > 127 && !f.contains("://")) || f.len() > 255 {
                out.push(ConfigError::BootFileTooLong(f.clone()));
            } else if let Err(e) =
                crate::proto::dhcp::wire::pxe_vendor_options(&self.pxe_prompt, self.mtftp_for(f))
            {
                out.push(ConfigError::Option43TooLong {
                    file: f.clone(),
                    len: e.len,
                });
            }
        }
        for (key, value) in [
            ("client_rate", self.client_rate),
            ("segment_rate", self.segment_rate),
        ] {
            if value == 0 {
                out.push(ConfigError::Rate { key, value });
            }
        }
        if self.mode == DhcpMode::Full {
            match self.range {
                None => out.push(ConfigError::NoRange),
                Some(r) if r.is_empty() || r.len() > MAX_POOL => {
                    out.push(ConfigError::Range(format!("{},{}", r.start, r.end)))
                }
                Some(r) => {
                    if let (Some(ip), Some(mask)) = (self.server_ip, self.netmask) {
                        if !same_subnet(ip, r.start, mask) || !same_subnet(ip, r.end, mask) {
                            let net = Ipv4Addr::from(u32::from(ip) & u32::from(mask));
                            out.push(ConfigError::RangeOutsideSubnet {
                                start: r.start,
                                end: r.end,
                                net,
                                mask,
                            });
                        }
                    }
                }
            }
            let lt = self.lease_time.as_secs();
            if !(60..=49 * 86400).contains(&lt) {
                out.push(ConfigError::LeaseTime(lt));
            }
        }
        out
    }

    /// The MTFTP parameters configured for `file`, if any.
    pub fn mtftp_for(&self, file: &str) -> Option<&MtftpConfig> {
        self.mtftp.iter().find(|m| m.file == file)
    }

    /// The lease file to use: the configured one, or the default location.
    pub fn lease_path(&self) -> PathBuf {
        if let Some(p) = &self.lease_file {
            return p.clone();
        }
        match std::env::var_os("STATE_DIRECTORY") {
            // systemd's StateDirectory= may list several, separated by ':'.
            Some(d) => {
                let first = d
                    .to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                PathBuf::from(first).join("dhcp.leases")
            }
            None => PathBuf::from("/var/lib/ringboot/dhcp.leases"),
        }
    }
}

impl From<&DhcpConfig> for Policy {
    /// The decision's part of a (validated) `[dhcp]` configuration.
    fn from(c: &DhcpConfig) -> Policy {
        Policy {
            mode: c.mode,
            next_server: c.next_server,
            boot_file: c.boot_file.clone(),
            ipxe_script: c.ipxe_script.clone(),
            boot_non_pxe: c.boot_non_pxe,
            rules: c.rules.clone(),
            mtftp: c.mtftp.clone(),
            pxe_prompt: c.pxe_prompt.clone(),
            range: c.range,
            netmask: c.netmask,
            router: c.router,
            dns: c.dns.clone(),
            domain_name: c.domain_name.clone(),
            lease_time: c.lease_time,
            decline_hold: c.decline_hold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_section_with_rules_and_mtftp() {
        let text = r#"
            [tftp]
            whatever = 1

            [dhcp]
            mode = "full"
            interface = "eth1"
            boot_file = "pxelinux.0"
            ipxe_script = "boot.ipxe"
            range = "10.0.0.100,10.0.0.150"
            netmask = "255.255.255.0"
            server_ip = "10.0.0.1"
            dns = ["10.0.0.1"]
            lease_time = 7200
            lease_file = "/tmp/x.leases"

            [[dhcp.rule]]
            arch = ["efi-x64", 11]
            boot_file = "grubx64.efi"

            [[dhcp.rule]]
            mac = "52:54:00"
            subnet = "10.0.0.0/24"
            user_class = "iPXE"
            boot_file = "http://10.0.0.1/menu.ipxe"

            [[dhcp.mtftp]]
            file = "pxelinux.0"
        "#;
        let cfg = DhcpConfig::from_toml_document(text).unwrap();
        assert_eq!(cfg.mode, DhcpMode::Full);
        assert_eq!(cfg.lease_time, Duration::from_secs(7200));
        assert_eq!(cfg.rules.len(), 2);
        assert_eq!(
            cfg.rules[0].arch,
            vec![ArchMatch(vec![7, 9]), ArchMatch(vec![11])]
        );
        assert_eq!(cfg.rules[1].mac, Some(MacMatch(vec![0x52, 0x54, 0])));
        assert_eq!(cfg.mtftp[0].group, Ipv4Addr::new(239, 255, 1, 1));
        assert_eq!(cfg.mtftp[0].client_port, 3001);
        assert_eq!(
            cfg.range,
            Some(PoolRange {
                start: Ipv4Addr::new(10, 0, 0, 100),
                end: Ipv4Addr::new(10, 0, 0, 150)
            })
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn no_dhcp_section_is_off() {
        let cfg = DhcpConfig::from_toml_document("[other]\na = 1\n").unwrap();
        assert_eq!(cfg.mode, DhcpMode::Off);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = DhcpConfig::from_toml_document("[dhcp]\nmdoe = \"full\"\n").unwrap_err();
        assert!(e.to_string().contains("mdoe"), "{e}");
        let e = DhcpConfig::from_toml_document("[dhcp]\n[[dhcp.rule]]\narch = [\"efi-x65\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("efi-x65"), "{e}");
        assert!("10.0.0.9,10.0.0.1".parse::<PoolRange>().is_err());
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert_eq!("FULL".parse::<DhcpMode>(), Ok(DhcpMode::Full));
        assert!("fulll".parse::<DhcpMode>().is_err());
    }

    #[test]
    fn validation() {
        let mut cfg = DhcpConfig {
            mode: DhcpMode::Full,
            server_ip: Some(Ipv4Addr::new(10, 0, 0, 1)),
            netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            ..DhcpConfig::default()
        };
        assert_eq!(cfg.validate(), Err(ConfigError::NoRange));
        cfg.range = Some("10.0.1.10,10.0.1.20".parse().unwrap());
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::RangeOutsideSubnet { .. })
        ));
        cfg.range = Some("10.0.0.10,10.0.0.20".parse().unwrap());
        cfg.validate().unwrap();
        cfg.mode = DhcpMode::Proxy;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::NoBootFile { .. })
        ));
        cfg.boot_file = Some("x".repeat(128));
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::BootFileTooLong(_))
        ));
        cfg.boot_file = Some("pxelinux.0".into());
        cfg.validate().unwrap();
    }

    #[test]
    fn option_43_limit_is_a_config_error() {
        let mut cfg = DhcpConfig {
            mode: DhcpMode::Proxy,
            boot_file: Some("pxelinux.0".into()),
            pxe_prompt: "p".repeat(230),
            ..DhcpConfig::default()
        };
        cfg.validate().unwrap();
        cfg.mtftp.push(MtftpConfig::new(
            "pxelinux.0",
            Ipv4Addr::new(239, 255, 1, 1),
            3001,
            1759,
        ));
        match cfg.validate() {
            Err(ConfigError::Option43TooLong { len, .. }) => assert!(len > 255, "{len}"),
            other => panic!("{other:?}"),
        }
    }

    fn ifaddr(name: &str, addr: [u8; 4], prefix: u8) -> IfAddr {
        IfAddr {
            name: name.into(),
            index: 2,
            addr: Ipv4Addr::from(addr),
            netmask: prefix_to_mask(prefix),
        }
    }

    #[test]
    fn addresses_come_from_the_interface_list() {
        let ifs = [
            ifaddr("lo", [127, 0, 0, 1], 8),
            ifaddr("eth0", [192, 168, 1, 5], 24),
            ifaddr("eth1", [10, 0, 0, 1], 24),
        ];
        // Full mode, interface named: address and mask from it, router defaults to it.
        let mut cfg = DhcpConfig {
            mode: DhcpMode::Full,
            interface: Some("eth1".into()),
            range: Some("10.0.0.10,10.0.0.20".parse().unwrap()),
            boot_file: Some("pxelinux.0".into()),
            ..DhcpConfig::default()
        };
        assert!(cfg.needs_addresses());
        cfg.resolve_addresses(&ifs).unwrap();
        assert_eq!(cfg.server_ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(cfg.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(cfg.router, cfg.server_ip);
        // No interface named: the one whose subnet holds the range.
        let mut cfg = DhcpConfig {
            interface: None,
            server_ip: None,
            netmask: None,
            router: Some(Ipv4Addr::new(10, 0, 0, 254)),
            ..cfg
        };
        cfg.resolve_addresses(&ifs).unwrap();
        assert_eq!(cfg.server_ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(cfg.router, Some(Ipv4Addr::new(10, 0, 0, 254)));
        // The range outside the named interface's subnet is found once the subnet is known.
        let mut wrong = DhcpConfig {
            interface: Some("eth0".into()),
            server_ip: None,
            netmask: None,
            ..cfg.clone()
        };
        assert!(matches!(
            wrong.resolve_addresses(&ifs),
            Err(ConfigError::RangeOutsideSubnet { .. })
        ));
        // A missing interface, or none in the range's subnet, is named.
        let mut missing = DhcpConfig {
            interface: Some("eth9".into()),
            server_ip: None,
            ..cfg.clone()
        };
        let e = missing.resolve_addresses(&ifs).unwrap_err();
        assert_eq!(e, ConfigError::NoInterfaceAddress("eth9".into()));
        assert!(e.to_string().contains("--dhcp-interface"), "{e}");
        let mut nowhere = DhcpConfig {
            interface: None,
            server_ip: None,
            range: Some("172.16.0.10,172.16.0.20".parse().unwrap()),
            ..cfg.clone()
        };
        assert!(matches!(
            nowhere.resolve_addresses(&ifs),
            Err(ConfigError::NoInterfaceForRange { .. })
        ));
        // Proxy mode without interface or range needs nothing from the host.
        let mut proxy = DhcpConfig {
            mode: DhcpMode::Proxy,
            boot_file: Some("pxelinux.0".into()),
            ..DhcpConfig::default()
        };
        proxy.resolve_addresses(&[]).unwrap();
        assert_eq!(proxy.server_ip, None);
        assert!(!DhcpConfig::default().needs_addresses());
    }

    #[test]
    fn the_policy_is_the_config_s_decision_part() {
        let text = r#"
            [dhcp]
            mode = "full"
            boot_file = "pxelinux.0"
            ipxe_script = "boot.ipxe"
            range = "10.0.0.100,10.0.0.150"
            netmask = "255.255.255.0"
            router = "10.0.0.1"
            dns = ["10.0.0.53"]
            domain_name = "lab"
            lease_time = 7200
            decline_hold = 60
            pxe_prompt = "boot"
            boot_non_pxe = true
            next_server = "10.0.0.9"
            [[dhcp.rule]]
            arch = ["efi-x64"]
            boot_file = "grubx64.efi"
            [[dhcp.mtftp]]
            file = "pxelinux.0"
        "#;
        let cfg = DhcpConfig::from_toml_document(text).unwrap();
        let p = Policy::from(&cfg);
        assert_eq!(p.mode, DhcpMode::Full);
        assert_eq!(p.boot_file.as_deref(), Some("pxelinux.0"));
        assert_eq!(p.ipxe_script.as_deref(), Some("boot.ipxe"));
        assert_eq!(p.range, cfg.range);
        assert_eq!(p.netmask, cfg.netmask);
        assert_eq!(p.router, cfg.router);
        assert_eq!(p.dns, cfg.dns);
        assert_eq!(p.domain_name.as_deref(), Some("lab"));
        assert_eq!(p.lease_time, std::time::Duration::from_secs(7200));
        assert_eq!(p.decline_hold, std::time::Duration::from_secs(60));
        assert_eq!(p.pxe_prompt, "boot");
        assert!(p.boot_non_pxe);
        assert_eq!(p.next_server, cfg.next_server);
        assert_eq!(p.rules, cfg.rules);
        assert_eq!(p.mtftp, cfg.mtftp);
        // The defaults agree too.
        assert_eq!(Policy::from(&DhcpConfig::default()), Policy::default());
    }
}
