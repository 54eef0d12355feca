//! The PXE DHCP responder's public face: proxyDHCP beside an existing DHCP server, or a small
//! DHCP server for isolated labs. Re-exports only; the responder is split like TFTP:
//!
//! - wire format, decision, lease table, admission and the client machine: sans-IO, in
//!   [`crate::proto::dhcp`];
//! - the lease file on disk: [`store`] ([`crate::store::dhcp`]);
//! - the `[dhcp]` section and `--dhcp*` flags, and the [`Policy`](crate::proto::dhcp::Policy)
//!   the decision reads: [`config`] ([`crate::config::dhcp`]);
//! - the driver, a service of the control engine (sockets, the clock, group commit):
//!   [`crate::engine::dhcp`].
//!
//! Layering: nothing inside the library imports this module (each layer names the real one), so
//! it closes no circle; the binary, the tests and embedders keep their paths.

pub use crate::config::dhcp as config;
pub use crate::engine::dhcp::{bind, bind_with, spawn, Hooks, PolicySlot, Responder, SpawnError};
pub use crate::store::dhcp as store;
pub use config::{DhcpConfig, DhcpMode};
pub use store::{LeaseFileError, LeaseStore};
