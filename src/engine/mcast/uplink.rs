//! The multicast service's share of the uplink (issue 10): each session is one flow of the
//! server-wide controller ([`crate::engine::links`]) of the interface its group leaves by, so a
//! session and the unicast transfers on that interface share it, and an operator's
//! `--rate-limit` binds both. Without [`McService::share_uplink`] (the unit tests), sessions are
//! paced by their own rate only.

use super::McService;
use crate::engine::links::SharedLink;
use std::net::IpAddr;

impl McService {
    /// The controller of the interface a session started for a request to `local` sends by:
    /// the configured multicast interface, else the interface that holds `local`, else the
    /// server's one fallback (index 0), as [`Links::get`] keys unicast transfers. Read once per
    /// session (one `getifaddrs`).
    pub(super) fn link_for(&self, local: IpAddr) -> Option<SharedLink> {
        let links = self.links.as_ref()?;
        let addr = self.cfg.interface.or(match local {
            IpAddr::V4(a) if !a.is_unspecified() => Some(a),
            _ => None,
        });
        let index = addr
            .and_then(|a| {
                let ifs = crate::sys::iface::interfaces().ok()?;
                ifs.iter().find(|i| i.addr == a).map(|i| i.index)
            })
            .unwrap_or(0);
        let local = addr.map_or(local, IpAddr::V4);
        links.get(index, local)
    }

    /// Share the unicast workers' interface controllers (issue 10): from now on, each new
    /// session is one more flow of the interface its group leaves by, so a session and the
    /// unicast transfers on that uplink share it (and an operator's `--rate-limit` binds both).
    pub fn share_uplink(&mut self, server: &crate::engine::workers::Server) {
        self.links = Some(server.links());
    }
}
