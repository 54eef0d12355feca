//! Control messages: packet info (`IP_PKTINFO` / `IPV6_PKTINFO`) built and parsed, the
//! `UDP_SEGMENT` message of a GSO send, and raw socket addresses decoded.
//!
//! Contract:
//! - ONE parser of packet info for every service (TFTP listeners, the multicast service, the DHCP
//!   responder): [`parse_pktinfo`] reads byte slices with bounds checks only and never panics,
//!   whatever the kernel or a test hands it; unknown messages are skipped.
//! - Messages are built into caller-owned aligned buffers ([`CmsgBuf`]); nothing here allocates.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Size of `struct cmsghdr` on this platform, and the alignment of control data.
const CMSG_HDR: usize = size_of::<libc::cmsghdr>();
const CMSG_ALIGN_TO: usize = size_of::<usize>();

const fn cmsg_align(n: usize) -> usize {
    (n + CMSG_ALIGN_TO - 1) & !(CMSG_ALIGN_TO - 1)
}

/// `CMSG_SPACE(n)`.
pub const fn cmsg_space(n: usize) -> usize {
    cmsg_align(CMSG_HDR) + cmsg_align(n)
}

/// `CMSG_LEN(n)`.
const fn cmsg_len(n: usize) -> usize {
    cmsg_align(CMSG_HDR) + n
}

/// Room for one packet-info control message of either family, with slack for one more message.
pub const PKTINFO_CMSG_SPACE: usize = 64;
const _: () = assert!(cmsg_space(size_of::<libc::in6_pktinfo>()) <= PKTINFO_CMSG_SPACE);

/// An 8-byte aligned control-message buffer.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct CmsgBuf<const N: usize>(pub [u8; N]);

impl<const N: usize> Default for CmsgBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> CmsgBuf<N> {
    pub const fn new() -> Self {
        CmsgBuf([0; N])
    }
}

/// Space for the `UDP_SEGMENT` control message of one GSO send.
pub const GSO_CMSG_SPACE: usize = cmsg_space(size_of::<u16>());

/// Where a datagram arrived: the local (destination) address and the incoming interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PktInfo {
    /// The local address the request was addressed to (for IPv4, the kernel's `ipi_spec_dst`: the
    /// address a reply should come from, which is the destination for unicast).
    pub local: IpAddr,
    /// Incoming interface index (0 when unknown).
    pub ifindex: u32,
}

/// Write one control message (`level`, `ty`, `data`) at the start of `buf`; returns its space.
/// `None` when `buf` is too small.
fn put_cmsg(buf: &mut [u8], level: i32, ty: i32, data: &[u8]) -> Option<usize> {
    let space = cmsg_space(data.len());
    if buf.len() < space {
        return None;
    }
    buf[..space].fill(0);
    let len = cmsg_len(data.len());
    buf[..size_of::<usize>()].copy_from_slice(&len.to_ne_bytes());
    let lvl_at = size_of::<usize>();
    buf[lvl_at..lvl_at + 4].copy_from_slice(&level.to_ne_bytes());
    buf[lvl_at + 4..lvl_at + 8].copy_from_slice(&ty.to_ne_bytes());
    let d = cmsg_align(CMSG_HDR);
    buf[d..d + data.len()].copy_from_slice(data);
    Some(space)
}

/// Write the `SOL_UDP/UDP_SEGMENT` message that makes one `sendmsg` a GSO send of `segment`-byte
/// datagrams. Returns the control length.
pub fn put_gso_cmsg(buf: &mut CmsgBuf<GSO_CMSG_SPACE>, segment: u16) -> usize {
    // The buffer is exactly the right size, so this cannot fail.
    put_cmsg(
        &mut buf.0,
        libc::SOL_UDP,
        libc::UDP_SEGMENT,
        &segment.to_ne_bytes(),
    )
    .unwrap_or(0)
}

/// Write a packet-info message that makes a reply leave from `info.local`. Returns the control
/// length, 0 when no message is needed (unspecified or multicast local address).
pub fn put_pktinfo_cmsg(buf: &mut [u8], info: &PktInfo) -> usize {
    match info.local {
        IpAddr::V4(a) if !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast() => {
            put_pktinfo_v4(buf, 0, a)
        }
        IpAddr::V6(a) if !a.is_unspecified() && !a.is_multicast() => {
            // in6_pktinfo { in6_addr ipi6_addr; unsigned ipi6_ifindex; }
            let mut d = [0u8; 20];
            d[..16].copy_from_slice(&a.octets());
            let ifindex = if is_unicast_link_local(&a) {
                info.ifindex
            } else {
                0
            };
            d[16..20].copy_from_slice(&ifindex.to_ne_bytes());
            put_cmsg(buf, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &d).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Write an `IP_PKTINFO` message that makes a datagram leave by interface `ifindex` (0: routing
/// decides) from source address `src` (unspecified: the kernel picks). Returns the control length.
pub fn put_pktinfo_v4(buf: &mut [u8], ifindex: u32, src: Ipv4Addr) -> usize {
    // in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
    let mut d = [0u8; 12];
    d[0..4].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    d[4..8].copy_from_slice(&src.octets());
    put_cmsg(buf, libc::IPPROTO_IP, libc::IP_PKTINFO, &d).unwrap_or(0)
}

/// Find the packet info in received control data. Never panics; unknown messages are skipped.
pub fn parse_pktinfo(control: &[u8]) -> Option<PktInfo> {
    let mut at = 0usize;
    let hdr = cmsg_align(CMSG_HDR);
    while control.len().saturating_sub(at) >= hdr {
        let word = |o: usize, n: usize| &control[at + o..at + o + n];
        let len = usize::from_ne_bytes(word(0, size_of::<usize>()).try_into().ok()?);
        let level = i32::from_ne_bytes(word(size_of::<usize>(), 4).try_into().ok()?);
        let ty = i32::from_ne_bytes(word(size_of::<usize>() + 4, 4).try_into().ok()?);
        if len < hdr || len > control.len() - at {
            return None;
        }
        let data = &control[at + hdr..at + len];
        if level == libc::IPPROTO_IP && ty == libc::IP_PKTINFO && data.len() >= 12 {
            let ifindex = i32::from_ne_bytes(data[0..4].try_into().ok()?);
            let spec_dst = Ipv4Addr::new(data[4], data[5], data[6], data[7]);
            let dst = Ipv4Addr::new(data[8], data[9], data[10], data[11]);
            let local = if spec_dst.is_unspecified() {
                dst
            } else {
                spec_dst
            };
            return Some(PktInfo {
                local: IpAddr::V4(local),
                ifindex: ifindex.max(0) as u32,
            });
        }
        if level == libc::IPPROTO_IPV6 && ty == libc::IPV6_PKTINFO && data.len() >= 20 {
            let octets: [u8; 16] = data[0..16].try_into().ok()?;
            let ifindex = u32::from_ne_bytes(data[16..20].try_into().ok()?);
            return Some(PktInfo {
                local: IpAddr::V6(Ipv6Addr::from(octets)),
                ifindex,
            });
        }
        at += cmsg_align(len);
    }
    None
}

/// Decode a `sockaddr_in` / `sockaddr_in6` from raw bytes (as `recvmsg` or io_uring wrote it).
pub fn parse_sockaddr(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(raw.get(0..2)?.try_into().ok()?);
    match family as i32 {
        libc::AF_INET => {
            let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
            let ip: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
            // Kept as the kernel stored it, like std and socket2 (so it round trips).
            let flow = u32::from_ne_bytes(raw.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(raw.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

pub fn is_unicast_link_local(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockAddr;

    #[test]
    fn cmsg_round_trip_v4_and_v6() {
        let mut buf = CmsgBuf::<PKTINFO_CMSG_SPACE>::new();
        let v4 = PktInfo {
            local: "127.0.0.7".parse().unwrap(),
            ifindex: 1,
        };
        let n = put_pktinfo_cmsg(&mut buf.0, &v4);
        assert_eq!(n, cmsg_space(12));
        // The builder leaves ifindex 0 (any interface); parsing reads spec_dst.
        assert_eq!(
            parse_pktinfo(&buf.0[..n]),
            Some(PktInfo { ifindex: 0, ..v4 })
        );
        let v6 = PktInfo {
            local: "fe80::1".parse().unwrap(),
            ifindex: 3,
        };
        let n = put_pktinfo_cmsg(&mut buf.0, &v6);
        assert_eq!(n, cmsg_space(20));
        assert_eq!(parse_pktinfo(&buf.0[..n]), Some(v6));
        let unspecified = PktInfo {
            local: "0.0.0.0".parse().unwrap(),
            ifindex: 0,
        };
        assert_eq!(put_pktinfo_cmsg(&mut buf.0, &unspecified), 0);
    }

    #[test]
    fn parse_never_panics_on_garbage() {
        assert_eq!(parse_pktinfo(&[]), None);
        assert_eq!(parse_pktinfo(&[0xff; 7]), None);
        assert_eq!(parse_pktinfo(&[0xff; 64]), None);
        // cmsg_len of 0 must not loop forever.
        assert_eq!(parse_pktinfo(&[0; 64]), None);
        // A truncated pktinfo (len claims more than there is).
        let mut buf = CmsgBuf::<PKTINFO_CMSG_SPACE>::new();
        let v6 = PktInfo {
            local: "::1".parse().unwrap(),
            ifindex: 1,
        };
        let n = put_pktinfo_cmsg(&mut buf.0, &v6);
        assert_eq!(parse_pktinfo(&buf.0[..n - 8]), None);
        for cut in 0..n {
            let _ = parse_pktinfo(&buf.0[..cut]);
        }
        assert_eq!(parse_sockaddr(&[]), None);
        assert_eq!(parse_sockaddr(&[2, 0, 0]), None);
    }

    #[test]
    fn skips_unknown_cmsg() {
        let mut buf = [0u8; 128];
        let a = put_cmsg(&mut buf, libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[1; 16]).unwrap();
        let v4 = PktInfo {
            local: "10.0.0.1".parse().unwrap(),
            ifindex: 0,
        };
        let b = put_pktinfo_cmsg(&mut buf[a..], &v4);
        assert_eq!(parse_pktinfo(&buf[..a + b]), Some(v4));
    }

    #[test]
    fn gso_cmsg_layout() {
        let mut buf = CmsgBuf::<GSO_CMSG_SPACE>::new();
        let n = put_gso_cmsg(&mut buf, 1472);
        assert_eq!(n, GSO_CMSG_SPACE);
        let hdr = cmsg_align(CMSG_HDR);
        assert_eq!(&buf.0[hdr..hdr + 2], &1472u16.to_ne_bytes());
        assert_eq!(
            usize::from_ne_bytes(buf.0[..8].try_into().unwrap()),
            cmsg_len(2)
        );
    }

    #[test]
    fn sockaddr_decoding() {
        let a: SocketAddr = "192.0.2.1:4444".parse().unwrap();
        let sa = SockAddr::from(a);
        // SAFETY: SockAddr exposes `len` valid bytes at `as_ptr`.
        let raw =
            unsafe { std::slice::from_raw_parts(sa.as_ptr().cast::<u8>(), sa.len() as usize) };
        assert_eq!(parse_sockaddr(raw), Some(a));
        let b: SocketAddr = "[fe80::2%7]:69".parse().unwrap();
        let sb = SockAddr::from(b);
        // SAFETY: as above.
        let raw =
            unsafe { std::slice::from_raw_parts(sb.as_ptr().cast::<u8>(), sb.len() as usize) };
        assert_eq!(parse_sockaddr(raw), Some(b));
    }

    #[test]
    fn v4_pktinfo_with_an_interface_round_trips() {
        let mut buf = CmsgBuf::<PKTINFO_CMSG_SPACE>::new();
        let n = put_pktinfo_v4(&mut buf.0, 7, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(n, cmsg_space(12));
        assert_eq!(
            parse_pktinfo(&buf.0[..n]),
            Some(PktInfo {
                local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                ifindex: 7
            })
        );
        for n in 0..64 {
            let _ = parse_pktinfo(&[7u8; 64][..n]);
        }
    }
}
