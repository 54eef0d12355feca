//! The one system layer: every socket option, control message, interface query and readiness
//! call of ringboot (and of its load tester) lives here, over `libc` and `socket2`.
//!
//! Contract:
//! - [`socket`]: UDP sockets for each service (TFTP listener and transfer, DHCP) and the
//!   datagram calls that take no ring.
//! - [`cmsg`]: packet info v4/v6 built and parsed (one parser for every service), `UDP_SEGMENT`.
//! - [`iface`]: interfaces, their addresses and MTU.
//! - [`recv`]: `recvmmsg` batches and the ICMP error queue (the load tester's receive side).
//! - [`poll`]: epoll, eventfd, signalfd: the only place that waits for readiness.
//!
//! Nothing above this layer calls `libc` for sockets, control messages or readiness; the sans-IO
//! core (`proto`) never reaches it (`.ci/check-sans-io`).

pub mod cmsg;
pub mod iface;
pub mod poll;
pub mod recv;
pub mod socket;
