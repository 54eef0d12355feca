//! Network interfaces: their IPv4 addresses (`getifaddrs`) and their MTU (`SIOCGIFMTU`).
//!
//! Contract: what the kernel hands back is copied into owned values before the list is freed;
//! nothing here panics on it. Linux only.

use std::ffi::CStr;
use std::io;
use std::mem::zeroed;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

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

/// Index of the interface named `name` (`if_nametoindex(3)`), whatever its addresses; `None`
/// when there is none of that name.
pub fn index_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// MTU of interface `ifindex`, asked through any socket `fd` (`SIOCGIFMTU`).
pub fn interface_mtu(fd: RawFd, ifindex: u32) -> io::Result<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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
    fn loopback_mtu() {
        // SAFETY: NUL-terminated literal.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        if lo == 0 {
            return;
        }
        let s = crate::sys::socket::listener_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let mtu = interface_mtu(s.as_raw_fd(), lo).unwrap();
        assert!(mtu >= 1280);
        assert!(interface_mtu(s.as_raw_fd(), 0).is_err());
    }
}
