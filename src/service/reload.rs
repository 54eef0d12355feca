//! What a reload (SIGHUP) changes in a running server, decided from the old and the new
//! configuration. Pure: the binary applies the [`Plan`] (see `main.rs`).
//!
//! Contract: [`plan`] names every part that changed and can be applied at once, for what
//! follows only (running transfers and multicast sessions keep what they started with):
//! - the DHCP boot rules and boot files (the responder's policy), the log level;
//! - the transfer options of new requests (`[limits]`: max block size, window, window bytes,
//!   timeout, retries, fragmentation; the RTO floor);
//! - the transfer caps (`max_transfers` up to the descriptor ceiling, per client, rate);
//! - the multicast session settings of new sessions ([`crate::engine::mcast::McConfig::with_session_settings`]: the MTFTP file list,
//!   rate, window, timeout, retries, TTL, interface, loopback) when the multicast service runs
//!   and, for a non-empty MTFTP list, has its MTFTP port bound;
//! - the drain timeout.
//!
//! Everything else that changed is named in [`Plan::restart`]: what is bound or sized once at
//! start (the root, listen addresses, workers, backend, transfer port range, store options, DHCP
//! mode and interface, the metrics listener, user and group, the multicast groups, ports,
//! listen addresses and member caps, and turning multicast or MTFTP on where it was off).

use crate::config::Config;

/// What a reload does (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The transfer options for new requests changed.
    pub transfer_options: bool,
    /// The transfer caps changed.
    pub caps: bool,
    /// The multicast settings of new sessions changed and can be applied.
    pub multicast: bool,
    /// The DHCP policy changed (boot rules, boot files, options).
    pub dhcp: bool,
    pub log_level: bool,
    pub drain: bool,
    /// Settings that changed and take effect at the next restart only.
    pub restart: Vec<&'static str>,
}

/// What changes from `old` to `next` (see the module docs). `multicast_running`: the multicast
/// service runs (it was enabled at start).
pub fn plan(old: &Config, next: &Config, multicast_running: bool) -> Plan {
    let mut p = Plan::default();
    let mut restart = |changed: bool, what: &'static str| {
        if changed {
            p.restart.push(what);
        }
    };
    restart(next.root != old.root, "root");
    restart(next.listen != old.listen, "listen");
    restart(next.workers != old.workers, "workers");
    restart(next.backend != old.backend, "io_backend");
    restart(next.port_range != old.port_range, "port_range");
    restart(next.store != old.store, "store options");
    restart(
        next.dhcp.mode != old.dhcp.mode || next.dhcp.interface != old.dhcp.interface,
        "dhcp mode/interface",
    );
    restart(
        next.service.metrics != old.service.metrics,
        "metrics listener",
    );
    restart(
        next.service.user != old.service.user || next.service.group != old.service.group,
        "user/group",
    );
    let (o, n) = (&old.multicast, &next.multicast);
    restart(
        n.groups != o.groups
            || n.mtftp_port != o.mtftp_port
            || n.multicast_port != o.multicast_port
            || n.listen != o.listen
            || n.max_members != o.max_members
            || n.max_per_source != o.max_per_source,
        "multicast groups/ports/listen/member caps",
    );
    let live = o.with_session_settings(n);
    let mc_changed = live.mtftp != o.mtftp
        || live.rate != o.rate
        || live.window != o.window
        || live.timeout != o.timeout
        || live.retries != o.retries
        || live.ttl != o.ttl
        || live.interface != o.interface
        || live.loopback != o.loopback;
    // The MTFTP port is bound at start only when some file was listed.
    let mtftp_unbound = o.mtftp.is_empty() && !n.mtftp.is_empty();
    if mc_changed {
        if !multicast_running {
            restart(true, "multicast (off at start)");
        } else if mtftp_unbound {
            restart(true, "mtftp (none at start: its port is not bound)");
        } else {
            p.multicast = true;
        }
    }
    p.transfer_options = next.limits != old.limits || next.min_rto != old.min_rto;
    p.caps = next.caps != old.caps;
    p.dhcp = next.dhcp != old.dhcp;
    p.log_level = next.log.verbose != old.log.verbose;
    p.drain = next.service.drain != old.service.drain;
    p
}

#[cfg(test)]
mod tests;
