//! UDP sockets, with the options each service needs, and the datagram calls that take no ring.
//!
//! Contract:
//! - Sockets are created nonblocking and close-on-exec. TFTP listening sockets carry
//!   `SO_REUSEPORT` and ask for the packet info of every datagram (`IP_PKTINFO` /
//!   `IPV6_RECVPKTINFO`), so a worker learns the local address and the incoming interface of each
//!   request. Transfer sockets are bound to that local address, `connect()`ed to the client and,
//!   unless fragmentation is allowed, never fragment (`IP_PMTUDISC_DO`, `IPV6_DONTFRAG`). DHCP
//!   sockets ([`dhcp_socket`]) carry `SO_BROADCAST`, `SO_REUSEADDR`, `IP_PKTINFO` and, when asked,
//!   `SO_BINDTODEVICE`.
//! - Packet info is built and parsed by [`super::cmsg`] only.
//! - Nothing here allocates on a per-datagram path.

use super::cmsg::{self, CmsgBuf, PktInfo, PKTINFO_CMSG_SPACE};
use crate::proto::rng::Rng;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

/// Socket buffer size asked for (the kernel clamps it to `net.core.[rw]mem_max`).
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;

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

/// A nonblocking IPv4 UDP socket with `SO_REUSEADDR`, not bound yet.
fn reusable_v4_socket() -> io::Result<Socket> {
    let s = new_udp_socket(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    s.set_reuse_address(true)?;
    Ok(s)
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
                let scope = if cmsg::is_unicast_link_local(&a) {
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
    let clen = info.map_or(0, |i| cmsg::put_pktinfo_cmsg(&mut control.0, i));
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

pub(crate) fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A big receive buffer (8 MiB): a window of blocks arrives in one burst. `SO_RCVBUFFORCE` first
/// (root may exceed `net.core.rmem_max`), else `SO_RCVBUF` (clamped by the kernel).
pub fn set_big_recv_buffer(sock: &impl AsRawFd) {
    set_recv_buffer(sock, 8 << 20);
}

/// A receive buffer of `bytes`: `SO_RCVBUFFORCE` first (root may exceed `net.core.rmem_max`),
/// else `SO_RCVBUF` (clamped by the kernel).
pub fn set_recv_buffer(sock: &impl AsRawFd, bytes: i32) {
    let fd = sock.as_raw_fd();
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes);
    }
}

/// A nonblocking socket bound to `group` with `SO_REUSEADDR` and `SO_REUSEPORT` (other machines
/// and other programs listen on the same port), a big receive buffer, joined to the group on the
/// loopback interface (the load tester's multicast members).
pub fn group_socket(group: SocketAddrV4) -> io::Result<std::net::UdpSocket> {
    let s = reusable_v4_socket()?;
    s.set_reuse_port(true)?;
    set_big_recv_buffer(&s);
    s.bind(&SockAddr::from(group))?;
    s.join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)?;
    Ok(s.into())
}

/// Whether this kernel accepts `UDP_SEGMENT` (UDP GSO, Linux 4.18+).
pub(crate) fn gso_supported() -> bool {
    let Ok(s) = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP)) else {
        return false;
    };
    setsockopt_int(s.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 1200).is_ok()
}

/// A nonblocking UDP socket bound to `0.0.0.0:port` with `SO_BROADCAST`, `SO_REUSEADDR`,
/// `IP_PKTINFO`, and `SO_BINDTODEVICE` when `device` is given.
pub fn dhcp_socket(port: u16, device: Option<&str>) -> io::Result<Socket> {
    let s = reusable_v4_socket()?;
    s.set_broadcast(true)?;
    if let Some(dev) = device {
        s.bind_device(Some(dev.as_bytes()))?;
    }
    setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    s.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        port,
    )))?;
    Ok(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvInfo {
    pub len: usize,
    pub source: SocketAddrV4,
    /// Incoming interface (0 if the kernel did not say).
    pub ifindex: u32,
    /// The local address the kernel would answer from on that interface (`ipi_spec_dst`).
    pub local: Ipv4Addr,
}

/// `recvmsg` one IPv4 datagram with its packet info. `WouldBlock` when none is waiting.
pub fn recv_v4(sock: &Socket, buf: &mut [u8]) -> io::Result<RecvInfo> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: zeroed plain C structs.
    let mut from: libc::sockaddr_in = unsafe { zeroed() };
    let mut cbuf = CmsgBuf::<PKTINFO_CMSG_SPACE>::new();
    // SAFETY: zeroed msghdr, then every pointer set to live buffers of the sizes given.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = PKTINFO_CMSG_SPACE as _;
    // SAFETY: msg points to live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let source = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
        u16::from_be(from.sin_port),
    );
    let control = &cbuf.0[..(msg.msg_controllen as usize).min(PKTINFO_CMSG_SPACE)];
    let (ifindex, local) = match cmsg::parse_pktinfo(control) {
        // The address a reply would come from: a unicast one, else the kernel's choice.
        Some(PktInfo {
            local: IpAddr::V4(a),
            ifindex,
        }) if !a.is_broadcast() && !a.is_multicast() => (ifindex, a),
        Some(p) => (p.ifindex, Ipv4Addr::UNSPECIFIED),
        None => (0, Ipv4Addr::UNSPECIFIED),
    };
    Ok(RecvInfo {
        len: n as usize,
        source,
        ifindex,
        local,
    })
}

/// `sendmsg` `data` to `dest`, leaving by interface `ifindex` (0: let routing decide) from
/// source address `src` (unspecified: the kernel picks).
pub fn send_v4(
    sock: &Socket,
    data: &[u8],
    dest: SocketAddrV4,
    ifindex: u32,
    src: Ipv4Addr,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let to = SockAddr::from(dest);
    let mut cbuf = CmsgBuf::<PKTINFO_CMSG_SPACE>::new();
    // SAFETY: zeroed msghdr, pointers set below to live buffers.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = to.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = to.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if ifindex != 0 || !src.is_unspecified() {
        let clen = cmsg::put_pktinfo_v4(&mut cbuf.0, ifindex, src);
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = clen as _;
    }
    // SAFETY: msg points to live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

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
        let mut take = || {
            let local = "127.0.0.1".parse().unwrap();
            transfer_socket(local, 0, peer, Some(range), &mut cursor, false)
        };
        let err = take().unwrap_err();
        assert!(matches!(err, TransferSocketError::NoFreePort));
        drop(hold);
        let s = take().unwrap();
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
    fn dhcp_send_and_receive_pktinfo_on_loopback() {
        let a = dhcp_socket(0, None).unwrap();
        let port = a.local_addr().unwrap().as_socket_ipv4().unwrap().port();
        let b = dhcp_socket(0, None).unwrap();
        let lo = crate::sys::iface::interfaces()
            .unwrap()
            .into_iter()
            .find(|i| i.addr.is_loopback())
            .unwrap();
        send_v4(
            &b,
            b"hello",
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            lo.index,
            Ipv4Addr::LOCALHOST,
        )
        .unwrap();
        let poller = crate::sys::poll::Poller::new().unwrap();
        poller.add(a.as_raw_fd(), 1).unwrap();
        let mut ev = crate::sys::poll::Events::with_capacity(1);
        assert_eq!(poller.wait(&mut ev, 1000).unwrap(), 1);
        let mut buf = [0u8; 64];
        let info = recv_v4(&a, &mut buf).unwrap();
        assert_eq!(&buf[..info.len], b"hello");
        assert_eq!(info.ifindex, lo.index);
        assert_eq!(info.local, Ipv4Addr::LOCALHOST);
    }
}
