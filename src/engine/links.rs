//! The server-wide congestion controllers: one [`LinkCc`] per outgoing interface, shared by every
//! worker (issue 10; the controller's contract is [`crate::proto::cc`]).
//!
//! Contract:
//! - [`Links`] maps an interface index to its `Arc<Mutex<LinkCc>>`. A transfer takes its link
//!   once, when it starts ([`Links::get`]), keyed by the interface its request arrived on
//!   (`IP_PKTINFO`'s `ipi_ifindex`): a boot server answers on the segment the client asked from,
//!   so that is the interface its DATA leaves by. When the index is unknown (no packet info),
//!   key 0 stands for "the server's uplink": one controller for all such transfers.
//! - Why one controller per interface behind a lock, rather than one per worker: the bottleneck
//!   is the interface's queue, which every worker's flows share. Per-worker controllers would
//!   each see only their flows (a loss episode needs losses from two flows; the fair quantum
//!   needs every flow), each would have to guess its share of the capacity, and an operator cap
//!   would have to be split and re-split as flows move between workers. The cost is one
//!   uncontended lock per ACK and per grant (a transfer enters it once per poll that has a
//!   sample or DATA for it, never per datagram): on loopback, at 2,000 transfers on 2 workers,
//!   within the noise of the storms (docs/benchmarks.md).
//! - Loopback has no controller unless the operator caps it: it has no link queue to protect (a
//!   datagram lost there was dropped at a receiver's socket buffer, one flow's business), and its
//!   round trips measure CPU scheduling, not queueing, so the delay signal would only slow a busy
//!   host down (measured: 2,000 UEFI machines on loopback went from 0.05% to 1.2% resent and
//!   from 1.1 to 7.5 CPU-s/GB when loopback was paced). Its transfers are polled unpaced.
//! - The table is bounded by the host's interfaces (indexes come from the kernel, never from a
//!   client). An operator cap (`--rate-limit IFACE=RATE`, resolved to an index at start) is set
//!   on its link when the table is made and binds even while the link is open.
//! - A poisoned lock (a worker panicked while holding it) is taken over as it is: the
//!   controller's state is always consistent between calls.

use crate::proto::cc::{LinkCc, LinkConfig, Rate};
use crate::proto::tftp::transfer::pace::PaceLink;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// One interface's controller, shared.
pub(crate) type SharedLink = Arc<Mutex<LinkCc>>;

/// The controllers of the server's interfaces. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Links {
    caps: HashMap<u32, Rate>,
    map: Mutex<HashMap<u32, SharedLink>>,
}

impl Links {
    /// A table whose links get these operator caps (interface index, rate in wire bytes).
    pub(crate) fn new(caps: impl IntoIterator<Item = (u32, Rate)>) -> Self {
        Links {
            caps: caps.into_iter().collect(),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The controller of interface `ifindex` (0: unknown, the one shared fallback), for a
    /// transfer whose local address is `local`; `None` on loopback without a cap (module docs).
    pub(crate) fn get(&self, ifindex: u32, local: std::net::IpAddr) -> Option<SharedLink> {
        if local.is_loopback() && !self.caps.contains_key(&ifindex) {
            return None;
        }
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(ifindex)
            .or_insert_with(|| {
                Arc::new(Mutex::new(LinkCc::new(LinkConfig {
                    cap: self.caps.get(&ifindex).copied(),
                    ..LinkConfig::default()
                })))
            })
            .clone()
            .into()
    }
}

/// Lock a shared link (a poisoned one is taken over: see the module docs).
pub(crate) fn lock(link: &Mutex<LinkCc>) -> MutexGuard<'_, LinkCc> {
    link.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A shared link as the transfer machine's [`PaceLink`]: locked for one call.
pub(crate) struct Locked<'a>(pub &'a Mutex<LinkCc>);

impl PaceLink for Locked<'_> {
    fn with_link<R>(&mut self, f: impl FnOnce(&mut LinkCc) -> R) -> R {
        f(&mut lock(self.0))
    }
}
