//! The PXE DHCP responder's driver: proxyDHCP beside an existing DHCP server, or a small DHCP
//! server for isolated labs. The protocol itself (wire format, decision, lease table, admission,
//! the client machine) is sans-IO in [`crate::proto::dhcp`]; this module adds the system.
//!
//! Contract:
//! - [`engine::workers`] is the thin driver, a service of the control engine: UDP sockets on 67 (and 4011 in proxy mode, 68 in
//!   full mode to notice other servers), replies leave by the interface the request came in on.
//!   Every request passes [`Admission`](crate::proto::dhcp::limit::Admission) and then
//!   [`decide_noted`](crate::proto::dhcp::decide::decide_noted) with the [`Policy`] built from
//!   the config. Lines a peer can cause per datagram are rate-limited; it never ends
//!   silently.
//! - [`store`] saves the lease table (spare file, fsync, atomic exchange, fsync directory, no new
//!   descriptor) before the driver sends any ACK whose lease is not yet on disk, several ACKs per
//!   save (group commit).
//! - sockets and interfaces come from [`crate::sys`].
//! - [`config`] is the `[dhcp]` TOML section and the `--dhcp*` flags; `Policy::from(&config)`
//!   is what the decision reads.
//!
//! Layering: this module uses `proto::dhcp`, never the other way round.

pub mod config;
pub mod server;
pub mod store;

pub use config::{DhcpConfig, DhcpMode};
pub use server::{bind, bind_with, Hooks, PolicySlot, Responder, SpawnError};
pub use store::{LeaseFileError, LeaseStore};

use crate::engine::ctl::{self, Ctl, CtlService};
use crate::engine::Flow;
use crate::proto::dhcp::Policy;

/// Run the responder alone on a control engine (for an embedder without the binary, and the
/// tests); [`Ctl::join`] stops it after a last save.
pub fn spawn(cfg: DhcpConfig) -> Result<Ctl, SpawnError> {
    let responder = bind(cfg)?;
    ctl::spawn(vec![CtlService::Dhcp(Box::new(responder))], |_| {
        Flow::Continue
    })
    .map_err(SpawnError::Engine)
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
