//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden, and free to change).
//!
//! Contract: thin wrappers over crate-private parsers that take network input, so the fuzz crate
//! can reach them without widening the real API. Each wrapper calls the production function and
//! converts crate-private types to plain ones; it adds no logic of its own. Public parsers (the
//! TFTP codec, the transfer and multicast machines, the DHCP wire and decision) are used directly
//! by the targets and need nothing here.

use crate::store::{path, LookupError};
use crate::sys;
use std::net::{IpAddr, SocketAddr};

/// `store::path::decode`: a wire filename to its checked components.
pub fn decode_path(raw: &[u8]) -> Result<Vec<String>, LookupError> {
    path::decode(raw).map(|p| p.components().map(str::to_owned).collect())
}

/// The components of a decoded path joined with `/`, as the store looks them up.
pub fn decode_path_joined(raw: &[u8]) -> Result<String, LookupError> {
    path::decode(raw).map(|p| p.as_str().to_owned())
}

/// Room the driver gives received control data (and a packet-info send).
pub const PKTINFO_CMSG_SPACE: usize = sys::cmsg::PKTINFO_CMSG_SPACE;

/// `server::sys::cmsg::parse_pktinfo`: the local address and interface index from received control
/// data.
pub fn parse_pktinfo(control: &[u8]) -> Option<(IpAddr, u32)> {
    sys::cmsg::parse_pktinfo(control).map(|p| (p.local, p.ifindex))
}

/// `server::sys::cmsg::put_pktinfo_cmsg`: the control message that makes a reply leave from `local`;
/// returns its length (0: none needed).
pub fn put_pktinfo_cmsg(buf: &mut [u8], local: IpAddr, ifindex: u32) -> usize {
    sys::cmsg::put_pktinfo_cmsg(buf, &sys::cmsg::PktInfo { local, ifindex })
}

/// `server::sys::cmsg::parse_sockaddr`: a peer address as `recvmsg` or io_uring wrote it.
pub fn parse_sockaddr(raw: &[u8]) -> Option<SocketAddr> {
    sys::cmsg::parse_sockaddr(raw)
}

/// The kernel's bytes for `addr` (`sockaddr_in` / `sockaddr_in6`), to check round trips.
pub fn sockaddr_bytes(addr: SocketAddr) -> Vec<u8> {
    let sa = socket2::SockAddr::from(addr);
    // SAFETY: `SockAddr` holds `len()` initialised bytes at `as_ptr()`.
    unsafe { std::slice::from_raw_parts(sa.as_ptr().cast::<u8>(), sa.len() as usize) }.to_vec()
}
