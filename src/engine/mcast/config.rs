//! The multicast service's configuration: the PXE MTFTP files, the RFC 2090 group pool and the
//! session parameters (parsed from flags and the config file, validated there).

use super::*;

/// A file served by PXE MTFTP (`--mtftp FILE@GROUP:CLIENTPORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtftpFile {
    /// The name as clients request it (resolved through the store like any request).
    pub file: String,
    pub group: Ipv4Addr,
    pub client_port: u16,
}

impl std::str::FromStr for MtftpFile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (file, rest) = s
            .rsplit_once('@')
            .ok_or_else(|| format!("expected FILE@GROUP:CLIENTPORT, got {s:?}"))?;
        let (group, port) = rest
            .split_once(':')
            .ok_or_else(|| format!("expected GROUP:CLIENTPORT after '@', got {rest:?}"))?;
        let group: Ipv4Addr = group
            .parse()
            .map_err(|e| format!("bad group {group:?}: {e}"))?;
        if !group.is_multicast() {
            return Err(format!("{group} is not a multicast address"));
        }
        let client_port = port
            .parse()
            .map_err(|e| format!("bad port {port:?}: {e}"))?;
        if file.is_empty() {
            return Err("empty file name".into());
        }
        Ok(MtftpFile {
            file: file.to_owned(),
            group,
            client_port,
        })
    }
}

/// The RFC 2090 group pool (`--multicast-groups CIDR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupPool {
    base: u32,
    pub(super) len: u32,
}

impl std::str::FromStr for GroupPool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, bits) = s.split_once('/').unwrap_or((s, "32"));
        let a: Ipv4Addr = a.parse().map_err(|e| format!("bad address {a:?}: {e}"))?;
        let bits: u32 = bits
            .parse()
            .map_err(|e| format!("bad prefix {bits:?}: {e}"))?;
        if !(4..=32).contains(&bits) || !a.is_multicast() {
            return Err(format!("{s} is not a multicast range (224.0.0.0/4)"));
        }
        let len = 1u32 << (32 - bits);
        Ok(GroupPool {
            base: u32::from(a) & !(len - 1),
            len,
        })
    }
}

impl GroupPool {
    pub(super) fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + (i % self.len))
    }
}

/// Settings of the multicast service.
#[derive(Clone, Debug)]
pub struct McConfig {
    pub mtftp: Vec<MtftpFile>,
    /// PXE MTFTP server port (PXE default 1759).
    pub mtftp_port: u16,
    /// RFC 2090 groups; `None`: RFC 2090 disabled.
    pub groups: Option<GroupPool>,
    /// RFC 2090 client (group) port announced in OACKs.
    pub multicast_port: u16,
    pub ttl: u32,
    /// Outgoing interface address for multicast (`IP_MULTICAST_IF`); `None`: the routing table's.
    pub interface: Option<Ipv4Addr>,
    /// Deliver our multicast to listeners on this host too (`IP_MULTICAST_LOOP`).
    pub loopback: bool,
    /// Payload bytes per second per session at most (0: no cap).
    pub rate: u64,
    /// Payload bytes per second a session's rate never goes below.
    pub min_rate: u64,
    /// What to do with a master too slow for `min_rate`.
    pub slow: SlowPolicy,
    /// Blocks between master ACKs.
    pub window: u16,
    pub timeout: Duration,
    pub retries: u32,
    /// IPv4 addresses to bind the MTFTP port on.
    pub listen: Vec<Ipv4Addr>,
    /// RFC 2090: members of one session at most (`--multicast-max-members`).
    pub max_members: usize,
    /// RFC 2090: sessions one client address may be a member of at once
    /// (`--multicast-max-per-source`).
    pub max_per_source: usize,
}

impl McConfig {
    /// True when any multicast protocol is configured.
    pub fn enabled(&self) -> bool {
        !self.mtftp.is_empty() || self.groups.is_some()
    }
}
