//! Multicast TFTP: one stream of a file to a group, driven by a master client at a time.
//!
//! - [`session`]: the server side (PXE MTFTP, PXE 2.1 spec; RFC 2090 `multicast` option).
//! - [`client`]: the receiving side, behaving like atftp and PXE ROMs, for tests and the load
//!   tester.

pub mod client;
pub mod session;

/// Which multicast protocol a session or a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// PXE 2.1 MTFTP: no options, 512-byte blocks, listen first, open on the MTFTP port; the
    /// opener answered with a unicast block 1 is the master.
    PxeMtftp,
    /// RFC 2090: the `multicast` option on an ordinary RRQ; the OACK names the group and the
    /// master.
    Rfc2090,
}
