//! The PXE DHCP responder: proxyDHCP beside an existing DHCP server, or a small DHCP server for
//! isolated labs.
//!
//! Contract:
//! - [`wire`] checks a datagram before dhcproto decodes it ([`wire::parse_request`] never
//!   panics) and builds option 43 (PXE vendor options, at most 255 bytes).
//! - [`decide::decide`] is the sans-IO core: request + [`decide::Context`] (addresses, port,
//!   `now`) + lease table + config -> at most one [`decide::Reply`] with its destination. No
//!   socket, no file, no clock. [`decide::decide_noted`] also returns the [`decide::Note`] the
//!   driver logs (rate-limited).
//! - [`leases`] holds the lease table (bounded by the pool, fixed-size client keys); the driver
//!   saves it (spare file, fsync, atomic exchange, fsync directory, no new descriptor) before it
//!   sends any ACK whose lease is not yet on disk, several ACKs per save (group commit).
//! - [`limit`] admits requests: per-client and per-segment (local link or relay) token buckets in
//!   bounded tables.
//! - [`server`] is the thin driver: one thread, UDP sockets on 67 (and 4011 in proxy mode, 68 in
//!   full mode to notice other servers), replies leave by the interface the request came in on.
//!   Lines a peer can cause per datagram are rate-limited; the thread never ends silently.
//! - [`client`] builds firmware-like requests for tests and the load tester.
//! - [`config`] is the `[dhcp]` TOML section and the `--dhcp*` flags.
//!
//! Specifications: RFC 2131/2132 (DHCP), RFC 4578 (options 93/94/97), RFC 3004 (option 77),
//! RFC 3396 (long options), PXE 2.1 (proxyDHCP, port 4011, option 43 sub-options).

pub mod client;
pub mod config;
pub mod decide;
pub mod leases;
pub mod limit;
pub mod server;
pub mod sys;
pub mod wire;

pub use config::{DhcpConfig, DhcpMode};
pub use decide::{decide, decide_noted, Context, Decision, Destination, Note, Reply, ServerPort};
pub use leases::{LeaseState, LeaseStore};
pub use server::spawn;
