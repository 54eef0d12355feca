//! ringboot: a network-boot content server.
//!
//! Layout (see README "Architecture"):
//! - [`proto`]: the sans-IO protocol core (codec, negotiation, transfer and client state machines).
//! - [`store`]: the memory-mapped file store with a path jail.
//! - [`dhcp`]: the PXE DHCP responder (proxyDHCP, or a small full DHCP server).

pub mod dhcp;
pub mod proto;
pub mod store;
