//! The receive side the load tester needs beyond the server's: `recvmmsg` batches and the ICMP
//! error queue (`IP_RECVERR`, `MSG_ERRQUEUE`).
//!
//! Contract: buffers are allocated once per [`RecvBatch`]; addresses are decoded by
//! [`super::cmsg::parse_sockaddr`] (bounds-checked); the error-queue walk stays within what the
//! kernel filled in.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// The largest datagram a [`RecvBatch`] slot holds.
pub const MAX_DGRAM: usize = 65536;

/// The address in a `sockaddr_storage` the kernel filled in.
fn storage_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: a sockaddr_storage is plain data of its size.
    let raw = unsafe {
        std::slice::from_raw_parts(
            (ss as *const libc::sockaddr_storage).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr_storage>(),
        )
    };
    super::cmsg::parse_sockaddr(raw)
}

/// Buffers for one `recvmmsg` call (one syscall for a whole window instead of one per block).
pub struct RecvBatch {
    batch: usize,
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    /// Room for `batch` datagrams per call.
    pub fn new(batch: usize) -> Self {
        RecvBatch {
            batch,
            bufs: vec![0u8; batch * MAX_DGRAM],
            // SAFETY (these three): all-zero is a valid value for these plain C structs.
            names: (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect(),
            iovs: (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect(),
            hdrs: (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect(),
        }
    }

    /// Receive up to `batch` datagrams without blocking; returns how many.
    pub fn recv(&mut self, fd: i32) -> std::io::Result<usize> {
        for k in 0..self.batch {
            self.iovs[k] = libc::iovec {
                // SAFETY: in bounds: bufs holds batch * MAX_DGRAM bytes.
                iov_base: unsafe { self.bufs.as_mut_ptr().add(k * MAX_DGRAM) }.cast(),
                iov_len: MAX_DGRAM,
            };
            // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = (&mut self.names[k] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut self.iovs[k];
            h.msg_iovlen = 1;
            self.hdrs[k] = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
        }
        // SAFETY: every header points into buffers owned by self, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.batch as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `k` of the last call and where it came from.
    pub fn get(&self, k: usize) -> (&[u8], Option<SocketAddr>) {
        let len = (self.hdrs[k].msg_len as usize).min(MAX_DGRAM);
        let data = &self.bufs[k * MAX_DGRAM..k * MAX_DGRAM + len];
        (data, storage_addr(&self.names[k]))
    }
}

/// Ask the kernel to queue ICMP errors on this unconnected socket (`IP_RECVERR`,
/// `IPV6_RECVERR`; without it Linux reports them only to connected sockets).
pub fn recv_icmp_errors(sock: &UdpSocket) {
    let (level, name) = match sock.local_addr() {
        Ok(SocketAddr::V6(_)) => (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
        _ => (libc::IPPROTO_IP, libc::IP_RECVERR),
    };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live variable.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// One entry of the socket's error queue (`MSG_ERRQUEUE`): its errno and the destination of
/// the datagram that caused it. None when the queue is empty.
pub fn take_queued_error(fd: i32) -> Option<(i32, Option<SocketAddr>)> {
    let mut data = [0u8; 64];
    let mut control = [0u64; 64];
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: as above.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    h.msg_iov = &mut iov;
    h.msg_iovlen = 1;
    h.msg_control = control.as_mut_ptr().cast();
    h.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `h` points to a live local buffer of the declared size.
    let n = unsafe { libc::recvmsg(fd, &mut h, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    let mut errno = 0;
    // SAFETY: the CMSG_* walk stays within msg_controllen bytes the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&h);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            let ours = (level == libc::IPPROTO_IP && kind == libc::IP_RECVERR)
                || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_RECVERR);
            let need = libc::CMSG_LEN(std::mem::size_of::<libc::sock_extended_err>() as u32);
            if ours && (*c).cmsg_len as usize >= need as usize {
                let ee: libc::sock_extended_err =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                errno = ee.ee_errno as i32;
            }
            c = libc::CMSG_NXTHDR(&h, c);
        }
    }
    Some((errno, storage_addr(&name)))
}
