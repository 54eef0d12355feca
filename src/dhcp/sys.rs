//! The system calls the DHCP driver needs: interface addresses (`getifaddrs`), UDP sockets with
//! `SO_BROADCAST`, `SO_BINDTODEVICE` and `IP_PKTINFO`, and `sendmsg` with an outgoing interface.
//!
//! Contract: every control message is parsed with bounds checks; nothing here panics on what the
//! kernel hands back. Linux only.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::ffi::CStr;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

/// One IPv4 address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub name: String,
    pub index: u32,
    pub addr: Ipv4Addr,
    pub netmask: Ipv4Addr,
}

/// Every IPv4 address of every interface that is up (`getifaddrs(3)`).
pub fn interfaces() -> io::Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if family != libc::AF_INET || ifa.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        // SAFETY: family is AF_INET, so the sockaddr is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let netmask = if ifa.ifa_netmask.is_null() {
            Ipv4Addr::BROADCAST
        } else {
            // SAFETY: the netmask of an AF_INET address is a sockaddr_in.
            let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
            Ipv4Addr::from(u32::from_be(m.sin_addr.s_addr))
        };
        // SAFETY: ifa_name is a NUL-terminated C string.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_name is a valid C string.
        let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
        out.push(IfAddr {
            name,
            index,
            addr,
            netmask,
        });
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// A nonblocking UDP socket bound to `0.0.0.0:port` with `SO_BROADCAST`, `SO_REUSEADDR`,
/// `IP_PKTINFO`, and `SO_BINDTODEVICE` when `device` is given.
pub fn udp_socket(port: u16, device: Option<&str>) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(dev) = device {
        s.bind_device(Some(dev.as_bytes()))?;
    }
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid fd and an int option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            &on as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    s.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        port,
    )))?;
    Ok(s)
}

/// One received datagram's addressing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvInfo {
    pub len: usize,
    pub source: SocketAddrV4,
    /// Incoming interface (0 if the kernel did not say).
    pub ifindex: u32,
    /// The local address the kernel would answer from on that interface (`ipi_spec_dst`).
    pub local: Ipv4Addr,
}

const CMSG_SPACE: usize = 64;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE]);

/// `recvmsg` one datagram with its packet info. `WouldBlock` when none is waiting.
pub fn recv(sock: &Socket, buf: &mut [u8]) -> io::Result<RecvInfo> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: zeroed plain C structs.
    let mut from: libc::sockaddr_in = unsafe { zeroed() };
    let mut cbuf = CmsgBuf([0; CMSG_SPACE]);
    // SAFETY: zeroed msghdr, then every pointer set to live buffers of the sizes given.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = CMSG_SPACE as _;
    // SAFETY: msg points to live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let source = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
        u16::from_be(from.sin_port),
    );
    let (ifindex, local) = parse_pktinfo(&cbuf.0[..(msg.msg_controllen as usize).min(CMSG_SPACE)])
        .unwrap_or((0, Ipv4Addr::UNSPECIFIED));
    Ok(RecvInfo {
        len: n as usize,
        source,
        ifindex,
        local,
    })
}

/// Find `IP_PKTINFO` in a control buffer: (ifindex, spec_dst). Bounds-checked.
pub fn parse_pktinfo(mut c: &[u8]) -> Option<(u32, Ipv4Addr)> {
    let hdr = size_of::<libc::cmsghdr>();
    let align = |n: usize| (n + size_of::<usize>() - 1) & !(size_of::<usize>() - 1);
    while c.len() >= hdr {
        let len = usize::from_ne_bytes(c[..size_of::<usize>()].try_into().ok()?);
        let level = i32::from_ne_bytes(
            c[size_of::<usize>()..size_of::<usize>() + 4]
                .try_into()
                .ok()?,
        );
        let ty = i32::from_ne_bytes(
            c[size_of::<usize>() + 4..size_of::<usize>() + 8]
                .try_into()
                .ok()?,
        );
        if len < hdr || len > c.len() {
            return None;
        }
        let data = &c[align(hdr)..len];
        if level == libc::IPPROTO_IP && ty == libc::IP_PKTINFO && data.len() >= 12 {
            let ifindex = i32::from_ne_bytes(data[0..4].try_into().ok()?) as u32;
            let spec = Ipv4Addr::new(data[4], data[5], data[6], data[7]);
            return Some((ifindex, spec));
        }
        let next = align(len);
        if next >= c.len() {
            return None;
        }
        c = &c[next..];
    }
    None
}

/// `sendmsg` `data` to `dest`, leaving by interface `ifindex` (0: let routing decide) from
/// source address `src` (unspecified: the kernel picks).
pub fn send(
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
    // SAFETY: zeroed plain C structs.
    let mut to: libc::sockaddr_in = unsafe { zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_port = dest.port().to_be();
    to.sin_addr.s_addr = u32::from(*dest.ip()).to_be();
    let mut cbuf = CmsgBuf([0; CMSG_SPACE]);
    // SAFETY: zeroed msghdr, pointers set below to live buffers.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut to as *mut _ as *mut libc::c_void;
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if ifindex != 0 || !src.is_unspecified() {
        // SAFETY: CMSG macros over a buffer large enough for one in_pktinfo (checked).
        unsafe {
            let space = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            debug_assert!(space <= CMSG_SPACE);
            msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let cm = libc::CMSG_FIRSTHDR(&msg);
            (*cm).cmsg_level = libc::IPPROTO_IP;
            (*cm).cmsg_type = libc::IP_PKTINFO;
            (*cm).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let pi = libc::CMSG_DATA(cm) as *mut libc::in_pktinfo;
            std::ptr::write_unaligned(
                pi,
                libc::in_pktinfo {
                    ipi_ifindex: ifindex as i32,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(src).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            );
        }
    }
    // SAFETY: msg points to live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Wait until one of `fds` has an event or `timeout_ms` passes; `revents` is filled in. An
/// interrupted wait (EINTR) counts as a timeout: every `revents` is 0. Allocates nothing.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    for f in fds.iter_mut() {
        f.revents = 0;
    }
    // SAFETY: fds is a live array of pollfd of the length given.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(rc as usize)
}

/// A `pollfd` waiting for input on `sock`.
pub fn pollin(sock: &Socket) -> libc::pollfd {
    libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        let ifs = interfaces().unwrap();
        assert!(
            ifs.iter()
                .any(|i| i.addr == Ipv4Addr::LOCALHOST && i.index > 0),
            "{ifs:?}"
        );
    }

    #[test]
    fn pktinfo_parser_never_panics() {
        assert_eq!(parse_pktinfo(&[]), None);
        assert_eq!(parse_pktinfo(&[0xff; 64]), None);
        assert_eq!(parse_pktinfo(&[0; 16]), None);
        for n in 0..64 {
            let _ = parse_pktinfo(&[7u8; 64][..n]);
        }
    }

    #[test]
    fn send_and_receive_pktinfo_on_loopback() {
        let a = udp_socket(0, None).unwrap();
        let port = a.local_addr().unwrap().as_socket_ipv4().unwrap().port();
        let b = udp_socket(0, None).unwrap();
        let lo = interfaces()
            .unwrap()
            .into_iter()
            .find(|i| i.addr.is_loopback())
            .unwrap();
        send(
            &b,
            b"hello",
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            lo.index,
            Ipv4Addr::LOCALHOST,
        )
        .unwrap();
        let mut fds = [pollin(&a)];
        assert_eq!(poll(&mut fds, 1000).unwrap(), 1);
        assert_ne!(fds[0].revents & libc::POLLIN, 0);
        let mut buf = [0u8; 64];
        let info = recv(&a, &mut buf).unwrap();
        assert_eq!(&buf[..info.len], b"hello");
        assert_eq!(info.ifindex, lo.index);
        assert_eq!(info.local, Ipv4Addr::LOCALHOST);
    }
}
