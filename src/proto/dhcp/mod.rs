//! PXE DHCP without I/O: the wire format, the responder's decision, the lease table and its file
//! format, admission, and a firmware-like client machine.
//!
//! Contract:
//! - Nothing here opens a socket or a file, reads a clock or starts a thread: time comes in as
//!   `now`, datagrams as byte slices, and what to send goes out as values or into the caller's
//!   buffer. The driver is `crate::engine::dhcp` (sockets, the clock), the lease file
//!   `crate::store::dhcp`; this module never uses them.
//! - [`wire`] checks a datagram before dhcproto decodes it ([`wire::parse_request`] never
//!   panics), builds option 43 (PXE vendor options, at most 255 bytes), holds [`ClientArch`]
//!   (option 93) and builds the requests PXE firmware sends.
//! - [`policy`] holds the operator's choices as typed values and [`Policy`], the decision's
//!   configuration.
//! - [`decide::decide`] is the responder's core: request + [`decide::Context`] (addresses,
//!   port, `now`) + lease table + [`Policy`] -> at most one [`decide::Reply`] with its
//!   destination. [`decide::decide_noted`] also returns the [`decide::Note`] the driver logs
//!   (rate-limited).
//! - [`leases`] holds the lease table (bounded by the pool, fixed-size client keys) and its text
//!   form; the driver saves it before it sends any ACK whose lease is not yet on disk.
//! - [`limit`] admits requests: per-client and per-segment (local link or relay) token buckets in
//!   bounded tables.
//! - [`client`] is one PXE machine's DHCP exchange (DISCOVER, OFFER, REQUEST, ACK, proxyDHCP and
//!   the port-4011 boot server) with the house machine shape: `handle_datagram`,
//!   `handle_timeout`, `poll_transmit`, `poll_timeout`, `poll_event`.
//!
//! Specifications: RFC 2131/2132 (DHCP), RFC 4578 (options 93/94/97), RFC 3004 (option 77),
//! RFC 3396 (long options), PXE 2.1 (proxyDHCP, port 4011, option 43 sub-options).

pub mod client;
pub mod decide;
pub mod leases;
pub mod limit;
pub mod policy;
pub mod wire;

pub use decide::{decide, decide_noted, Context, Decision, Destination, Note, Reply, ServerPort};
pub use leases::LeaseState;
pub use policy::{DhcpMode, Policy};
pub use wire::ClientArch;
