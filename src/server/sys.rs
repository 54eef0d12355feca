//! Thin, checked wrappers over the Linux socket calls the workers need.
//!
//! Contract:
//! - Sockets are created nonblocking and close-on-exec. Listening sockets carry `SO_REUSEPORT` and
//!   ask for the packet info of every datagram (`IP_PKTINFO` / `IPV6_RECVPKTINFO`), so a worker learns
//!   the local address and the incoming interface of each request. Transfer sockets are bound to that
//!   local address, `connect()`ed to the client and, unless fragmentation is allowed, never fragment
//!   (`IP_PMTUDISC_DO`, `IPV6_DONTFRAG`).
//! - Control messages are parsed from byte slices with bounds checks only ([`parse_pktinfo`] never
//!   panics, whatever the kernel or a test hands it) and built into caller-owned aligned buffers.
//! - Nothing here allocates on a per-datagram path.

use crate::proto::rng::Rng;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

/// Socket buffer size asked for (the kernel clamps it to `net.core.[rw]mem_max`).
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;

/// Size of `struct cmsghdr` on this platform, and the alignment of control data.
const CMSG_HDR: usize = size_of::<libc::cmsghdr>();
const CMSG_ALIGN_TO: usize = size_of::<usize>();

const fn cmsg_align(n: usize) -> usize {
    (n + CMSG_ALIGN_TO - 1) & !(CMSG_ALIGN_TO - 1)
}

/// `CMSG_SPACE(n)`.
pub(crate) const fn cmsg_space(n: usize) -> usize {
    cmsg_align(CMSG_HDR) + cmsg_align(n)
}

/// `CMSG_LEN(n)`.
const fn cmsg_len(n: usize) -> usize {
    cmsg_align(CMSG_HDR) + n
}

/// Room for one packet-info control message of either family, with slack for one more message.
pub(crate) const PKTINFO_CMSG_SPACE: usize = 64;
const _: () = assert!(cmsg_space(size_of::<libc::in6_pktinfo>()) <= PKTINFO_CMSG_SPACE);

/// An 8-byte aligned control-message buffer.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct CmsgBuf<const N: usize>(pub [u8; N]);

impl<const N: usize> CmsgBuf<N> {
    pub(crate) const fn new() -> Self {
        CmsgBuf([0; N])
    }
}

/// Space for the `UDP_SEGMENT` control message of one GSO send.
pub(crate) const GSO_CMSG_SPACE: usize = cmsg_space(size_of::<u16>());

/// Where a datagram arrived: the local (destination) address and the incoming interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PktInfo {
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
pub(crate) fn put_gso_cmsg(buf: &mut CmsgBuf<GSO_CMSG_SPACE>, segment: u16) -> usize {
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
pub(crate) fn put_pktinfo_cmsg(buf: &mut [u8], info: &PktInfo) -> usize {
    match info.local {
        IpAddr::V4(a) if !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast() => {
            // in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
            let mut d = [0u8; 12];
            d[4..8].copy_from_slice(&a.octets());
            put_cmsg(buf, libc::IPPROTO_IP, libc::IP_PKTINFO, &d).unwrap_or(0)
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

/// Find the packet info in received control data. Never panics; unknown messages are skipped.
pub(crate) fn parse_pktinfo(control: &[u8]) -> Option<PktInfo> {
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
pub(crate) fn parse_sockaddr(raw: &[u8]) -> Option<SocketAddr> {
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

pub(crate) fn is_unicast_link_local(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a plain int option on a valid descriptor.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn new_udp_socket(addr: &SocketAddr) -> io::Result<Socket> {
    Socket::new(
        Domain::for_address(*addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )
}

/// A listening socket of one worker: `SO_REUSEPORT`, packet info on, large buffers, bound to `addr`.
pub(crate) fn listener_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = new_udp_socket(&addr)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]:69` and `0.0.0.0:69` are separate listeners.
        s.set_only_v6(true)?;
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
    } else {
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    }
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&SockAddr::from(addr))?;
    Ok(s)
}

/// Fail with `EADDRINUSE` when some other socket already holds `addr`: `SO_REUSEPORT` would
/// otherwise let a second server (of the same user) silently share the port and half the requests.
pub(crate) fn check_address_free(addr: SocketAddr) -> io::Result<()> {
    let s = new_udp_socket(&addr)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&SockAddr::from(addr))
}

/// `--port-range LOW:HIGH` for transfer sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    /// `None` unless `1 <= low <= high`.
    pub fn new(low: u16, high: u16) -> Option<Self> {
        (low >= 1 && low <= high).then_some(PortRange { low, high })
    }

    pub fn size(&self) -> u32 {
        (self.high - self.low) as u32 + 1
    }

    /// Every port of the range exactly once, in the order `start, start + stride, ...` (modulo
    /// the length), for a `stride` coprime to the length (any other stride is made so).
    pub(crate) fn candidates(&self, start: u32, stride: u32) -> impl Iterator<Item = u16> {
        let len = self.size() as u64;
        let low = self.low as u64;
        let start = start as u64 % len;
        let mut stride = (stride as u64 % len).max(1);
        while gcd(stride, len) != 1 {
            stride += 1;
        }
        (0..len).map(move |i| (low + (start + i * stride) % len) as u16)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Unpredictable seeds for transfer port choice. Each choice gets its own generator
/// ([`PortRng::choice`], the crate's one [`Rng`]) seeded with 64 fresh bits from the kernel's
/// CSPRNG (`getrandom`, drawn 256 bytes at a time: one system call per 32 transfers), and nothing
/// carries over from one choice to the next. So a port cannot be predicted from the ports other
/// transfers got, which one long-lived seeded generator (SplitMix, xorshift, PCG: each output
/// reveals its state) would allow after a few observations: an attacker learning the next port
/// could send blind ACKs for a spoofed victim's transfer. Only if `getrandom` fails (a kernel
/// older than 3.17) do the seeds come from an [`Rng`] seeded from the clock and the thread,
/// which still makes the choice non-sequential.
pub(crate) struct PortRng {
    buf: [u8; 256],
    pos: usize,
    fallback: Rng,
}

impl Default for PortRng {
    fn default() -> Self {
        Self::new()
    }
}

impl PortRng {
    pub(crate) fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        PortRng {
            buf: [0; 256],
            pos: 256,
            fallback: Rng::from_seed(t ^ (&local as *const u8 as u64).rotate_left(32)),
        }
    }

    /// A generator for one port choice, seeded with 64 fresh unpredictable bits.
    pub(crate) fn choice(&mut self) -> Rng {
        if self.pos + 8 > self.buf.len() {
            // SAFETY: writes at most buf.len() bytes into our buffer.
            let n = unsafe { libc::getrandom(self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n != self.buf.len() as isize {
                return Rng::from_seed(self.fallback.next_u64());
            }
            self.pos = 0;
        }
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&self.buf[self.pos..self.pos + 8]);
        self.pos += 8;
        Rng::from_seed(u64::from_ne_bytes(seed))
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (l, h) = s
            .split_once(':')
            .ok_or_else(|| format!("expected LOW:HIGH, got {s:?}"))?;
        let l: u16 = l
            .trim()
            .parse()
            .map_err(|e| format!("bad low port {l:?}: {e}"))?;
        let h: u16 = h
            .trim()
            .parse()
            .map_err(|e| format!("bad high port {h:?}: {e}"))?;
        PortRange::new(l, h).ok_or_else(|| format!("need 1 <= LOW <= HIGH, got {l}:{h}"))
    }
}

/// Why a transfer socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferSocketError {
    #[error("no free transfer port")]
    NoFreePort,
    #[error("cannot open a transfer socket: {0}")]
    Io(#[from] io::Error),
}

/// The per-transfer socket (RFC 1350 TID): bound to `local` (port 0: the kernel's random choice,
/// or a free port of `range` chosen at random with `rng`: a random start and a random stride
/// through the range, so successive transfers get unrelated ports), connected to `peer`.
pub(crate) fn transfer_socket(
    local: IpAddr,
    ifindex: u32,
    peer: SocketAddr,
    range: Option<PortRange>,
    rng: &mut PortRng,
    allow_fragmentation: bool,
) -> Result<Socket, TransferSocketError> {
    let bind_at = |port: u16| -> SocketAddr {
        match local {
            IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, port)),
            IpAddr::V6(a) => {
                let scope = if is_unicast_link_local(&a) {
                    ifindex
                } else {
                    0
                };
                SocketAddr::V6(SocketAddrV6::new(a, port, 0, scope))
            }
        }
    };
    let s = new_udp_socket(&peer)?;
    let fd = s.as_raw_fd();
    if peer.is_ipv6() {
        s.set_only_v6(true)?;
        if !allow_fragmentation {
            setsockopt_int(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DO,
            )?;
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?;
        }
    } else if !allow_fragmentation {
        setsockopt_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
    }
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let _ = s.set_recv_buffer_size(256 << 10);
    match range {
        None => s.bind(&SockAddr::from(bind_at(0)))?,
        Some(r) => {
            let mut bound = false;
            let mut pick = rng.choice();
            let (start, stride) = (pick.next_u64() as u32, pick.next_u64() as u32);
            for port in r.candidates(start, stride) {
                match s.bind(&SockAddr::from(bind_at(port))) {
                    Ok(()) => {
                        bound = true;
                        break;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if !bound {
                return Err(TransferSocketError::NoFreePort);
            }
        }
    }
    s.connect(&SockAddr::from(peer))?;
    Ok(s)
}

/// Send `payload` from a listening socket to `peer`, leaving from `info.local` when known.
pub(crate) fn send_from(
    fd: RawFd,
    payload: &[u8],
    peer: &SocketAddr,
    info: Option<&PktInfo>,
) -> io::Result<()> {
    let dst = SockAddr::from(*peer);
    let mut control = CmsgBuf::<PKTINFO_CMSG_SPACE>::new();
    let clen = info.map_or(0, |i| put_pktinfo_cmsg(&mut control.0, i));
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: every pointer refers to a live local for the duration of the call.
    let r = unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = dst.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = dst.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if clen > 0 {
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = clen;
        }
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The soft and hard `RLIMIT_NOFILE`.
pub(crate) fn nofile_limit() -> io::Result<(u64, u64)> {
    // SAFETY: getrlimit writes one rlimit.
    let mut r: libc::rlimit = unsafe { zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// Raise the soft `RLIMIT_NOFILE` to the hard one (to `fs.nr_open` when the hard one is
/// unlimited). Returns the soft limit before and after.
pub(crate) fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile_limit()?;
    let mut want = hard;
    if hard == libc::RLIM_INFINITY {
        want = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if want <= soft {
        return Ok((soft, soft));
    }
    let r = libc::rlimit {
        rlim_cur: want as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads one rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((soft, want))
}

/// `send()` on a connected socket. Returns the errno on failure.
pub(crate) fn send_connected(fd: RawFd, payload: &[u8]) -> Result<(), i32> {
    // SAFETY: payload is a live slice.
    let r = unsafe {
        libc::send(
            fd,
            payload.as_ptr().cast(),
            payload.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

pub(crate) fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// MTU of interface `ifindex`, asked through any socket `fd` (`SIOCGIFMTU`).
pub(crate) fn interface_mtu(fd: RawFd, ifindex: u32) -> io::Result<u32> {
    if ifindex == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    // SAFETY: `ifreq` is plain data; if_indextoname writes at most IF_NAMESIZE bytes into
    // `ifr_name`, and the ioctl reads the name and writes the `ifru_mtu` member.
    unsafe {
        let mut req: libc::ifreq = zeroed();
        if libc::if_indextoname(ifindex, req.ifr_name.as_mut_ptr()).is_null() {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(fd, libc::SIOCGIFMTU as _, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mtu = req.ifr_ifru.ifru_mtu;
        u32::try_from(mtu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// Whether this kernel accepts `UDP_SEGMENT` (UDP GSO, Linux 4.18+).
pub(crate) fn gso_supported() -> bool {
    let Ok(s) = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP)) else {
        return false;
    };
    setsockopt_int(s.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 1200).is_ok()
}

/// A nonblocking eventfd, for waking workers at shutdown.
pub(crate) fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; the result is checked before being owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

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
    fn port_range_candidates_cover_once() {
        let r = PortRange::new(7000, 7003).unwrap();
        assert_eq!(r.size(), 4);
        let v: Vec<u16> = r.candidates(6, 1).collect();
        assert_eq!(v, vec![7002, 7003, 7000, 7001]);
        // A stride sharing a factor with the length is made coprime: still every port once.
        let v: Vec<u16> = r.candidates(1, 2).collect();
        assert_eq!(v, vec![7001, 7000, 7003, 7002]);
        let one = PortRange::new(65535, 65535).unwrap();
        assert_eq!(
            one.candidates(u32::MAX, u32::MAX).collect::<Vec<_>>(),
            vec![65535]
        );
        let mut rng = PortRng::new();
        let big = PortRange::new(1000, 60999).unwrap();
        for _ in 0..20 {
            let mut r = rng.choice();
            let (start, stride) = (r.next_u64() as u32, r.next_u64() as u32);
            let mut v: Vec<u16> = big.candidates(start, stride).collect();
            v.sort_unstable();
            v.dedup();
            assert_eq!(v.len(), 60000);
        }
        assert!(PortRange::new(0, 10).is_none());
        assert!(PortRange::new(10, 9).is_none());
        assert_eq!("1:65535".parse::<PortRange>().unwrap().size(), 65535);
        assert!("5".parse::<PortRange>().is_err());
    }

    #[test]
    fn port_range_exhaustion_and_reuse() {
        // Find two adjacent free ports on loopback, take one, and allocate from a range of both.
        let hold = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = hold.local_addr().unwrap().port();
        let range = PortRange::new(port, port).unwrap();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut cursor = PortRng::new();
        let err = transfer_socket(
            "127.0.0.1".parse().unwrap(),
            0,
            peer,
            Some(range),
            &mut cursor,
            false,
        )
        .unwrap_err();
        assert!(matches!(err, TransferSocketError::NoFreePort));
        drop(hold);
        let s = transfer_socket(
            "127.0.0.1".parse().unwrap(),
            0,
            peer,
            Some(range),
            &mut cursor,
            false,
        )
        .unwrap();
        let local = s.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(local.port(), port);
        assert_eq!(s.peer_addr().unwrap().as_socket(), Some(peer));
    }

    #[test]
    fn port_rng_is_not_sequential() {
        let mut rng = PortRng::new();
        let v: Vec<u32> = (0..200).map(|_| rng.choice().next_u64() as u32).collect();
        let mut d = v.clone();
        d.sort_unstable();
        d.dedup();
        assert!(d.len() > 190, "200 draws, {} distinct", d.len());
        let ones = v
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(ones < 3);
    }

    #[test]
    fn a_held_port_is_reported_in_use() {
        let hold = listener_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = hold.local_addr().unwrap().as_socket().unwrap();
        // SO_REUSEPORT alone would let a second group member bind; the check refuses.
        assert!(listener_socket(addr).is_ok());
        let e = check_address_free(addr).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
        drop(hold);
    }

    #[test]
    fn loopback_mtu_and_pktinfo() {
        // ifindex of "lo".
        // SAFETY: NUL-terminated literal.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        if lo == 0 {
            return;
        }
        let s = listener_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let mtu = interface_mtu(s.as_raw_fd(), lo).unwrap();
        assert!(mtu >= 1280);
        assert!(interface_mtu(s.as_raw_fd(), 0).is_err());
    }
}
