//! The portable backend: nonblocking sockets, `epoll`, `recvmsg` and `sendmmsg`.
//!
//! Contract: used where io_uring cannot be set up (or when forced with `--io-backend fallback`).
//! It drives the same [`Core`] as the io_uring backend and sends the same GSO `mmsghdr`s, built by
//! the shared code; only waiting and receiving differ. Per wake-up it handles the ready transfer
//! sockets before the listening sockets (so a client's ERROR that ends a size probe is seen before
//! its next RRQ), reads each ready socket until `EAGAIN` (at most [`READ_BUDGET`] datagrams, for
//! fairness) and fires due timers. The wait ends at the earliest timer deadline or when the
//! shutdown eventfd becomes readable.

use super::tftp::{Core, Driver, SendStatus, SlotId, CTRL_CALL};
use super::workers::Shutdown;
use crate::proto::ratelog::LogLimit;
use crate::sys::poll::{self, Events, Poller};
use crate::sys::{self, cmsg::CmsgBuf, cmsg::PKTINFO_CMSG_SPACE};
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;
use tracing::{debug, warn};

/// Datagrams read from one socket per wake-up before moving on to the others.
pub(crate) const READ_BUDGET: usize = 64;
/// Receive buffer: larger than any request a client sends; bigger datagrams are reported truncated.
pub(crate) const RX_BUF: usize = 4096;

const KIND_LISTEN: u64 = 1;
const KIND_XFER: u64 = 2;
const KIND_WAKE: u64 = 3;

fn tag(kind: u64, gen: u16, idx: u32) -> u64 {
    (kind << 56) | ((gen as u64) << 32) | idx as u64
}

fn untag(t: u64) -> (u64, u16, u32) {
    (t >> 56, (t >> 32) as u16, t as u32)
}

struct EpollDriver {
    ep: Poller,
}

impl Driver for EpollDriver {
    fn watch(&mut self, id: SlotId, fd: RawFd) -> io::Result<()> {
        self.ep.add(fd, tag(KIND_XFER, id.gen, id.idx))
    }

    fn unwatch(&mut self, _id: SlotId, fd: RawFd) -> bool {
        let _ = self.ep.delete(fd);
        true
    }

    fn send(&mut self, _id: SlotId, fd: RawFd, msgs: &mut [libc::mmsghdr]) -> SendStatus {
        SendStatus::Done(super::send::sendmmsg_all(fd, msgs).err())
    }

    fn send_ctrl(&mut self, _id: SlotId, fd: RawFd, msg: &mut libc::mmsghdr) -> SendStatus {
        loop {
            // SAFETY: the msghdr was built by TxBufs and points to its live control buffer.
            let r =
                unsafe { libc::sendmsg(fd, &msg.msg_hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if r >= 0 {
                return SendStatus::Done(None);
            }
            match sys::socket::errno() {
                libc::EINTR => continue,
                e => return SendStatus::Done(Some((CTRL_CALL, e))),
            }
        }
    }
}

/// Receive buffers of the worker, preallocated.
struct Rx {
    buf: Box<[u8; RX_BUF]>,
    control: CmsgBuf<PKTINFO_CMSG_SPACE>,
    name: libc::sockaddr_storage,
}

/// Run one worker on epoll until `shutdown`.
pub(crate) fn run(mut core: Core, shutdown: &Shutdown) -> io::Result<()> {
    let mut drv = EpollDriver { ep: Poller::new()? };
    for (i, l) in core.listeners().iter().enumerate() {
        drv.ep
            .add(l.sock.as_raw_fd(), tag(KIND_LISTEN, 0, i as u32))?;
    }
    drv.ep.add(shutdown.fd(), tag(KIND_WAKE, 0, 0))?;
    let mut rx = Rx {
        buf: Box::new([0; RX_BUF]),
        control: CmsgBuf::new(),
        // SAFETY: all-zero is a valid sockaddr_storage.
        name: unsafe { zeroed() },
    };
    let mut events = Events::with_capacity(256);
    let mut listen_errors = LogLimit::default();
    loop {
        if shutdown.is_triggered() {
            break;
        }
        if let Some(e) = core.take_injected_error() {
            return Err(e);
        }
        let now = Instant::now();
        core.run_timers(now, &mut drv);
        let timeout_ms = poll::timeout_ms(core.next_deadline(), Instant::now());
        drv.ep.wait(&mut events, timeout_ms)?;
        // Transfer sockets first, then the listeners.
        for ev in events.iter() {
            let (kind, gen, idx) = untag(ev.token);
            if kind == KIND_XFER {
                read_transfer(&mut core, &mut drv, &mut rx, SlotId { idx, gen });
            }
        }
        for ev in events.iter() {
            let (kind, _, idx) = untag(ev.token);
            if kind == KIND_LISTEN {
                read_listener(
                    &mut core,
                    &mut drv,
                    &mut rx,
                    idx as usize,
                    &mut listen_errors,
                );
            }
        }
    }
    core.shutdown(Instant::now(), &mut drv);
    Ok(())
}

fn read_transfer(core: &mut Core, drv: &mut EpollDriver, rx: &mut Rx, id: SlotId) {
    for _ in 0..READ_BUDGET {
        let Some(fd) = core.fd_of(id) else {
            return;
        };
        // SAFETY: rx.buf is a live buffer of RX_BUF bytes.
        let r = unsafe {
            libc::recv(
                fd,
                rx.buf.as_mut_ptr().cast(),
                RX_BUF,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        let now = Instant::now();
        if r < 0 {
            match sys::socket::errno() {
                libc::EAGAIN | libc::EINTR => return,
                e => {
                    core.on_transfer_error(id, e, now, drv);
                    return;
                }
            }
        }
        let len = r as usize;
        let truncated = len > RX_BUF;
        core.on_transfer_datagram(id, &rx.buf[..len.min(RX_BUF)], truncated, now, drv);
    }
}

fn read_listener(
    core: &mut Core,
    drv: &mut EpollDriver,
    rx: &mut Rx,
    li: usize,
    errors: &mut LogLimit,
) {
    let Some(fd) = core.listeners().get(li).map(|l| l.sock.as_raw_fd()) else {
        return;
    };
    for _ in 0..READ_BUDGET {
        let mut iov = libc::iovec {
            iov_base: rx.buf.as_mut_ptr().cast(),
            iov_len: RX_BUF,
        };
        // SAFETY: all pointers refer to live buffers of `rx` for the duration of the call.
        let (r, msg) = unsafe {
            let mut msg: libc::msghdr = zeroed();
            msg.msg_name = (&mut rx.name as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = rx.control.0.as_mut_ptr().cast();
            msg.msg_controllen = PKTINFO_CMSG_SPACE;
            let r = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
            (r, msg)
        };
        if r < 0 {
            match sys::socket::errno() {
                libc::EAGAIN | libc::EINTR => return,
                e => {
                    if let Some(n) = errors.allow(Instant::now()) {
                        warn!(worker = core.worker(), suppressed = n, reason = %io::Error::from_raw_os_error(e), "receive error on a listening socket (one line a second)");
                    }
                    return;
                }
            }
        }
        let now = Instant::now();
        // SAFETY: sockaddr_storage is plain bytes; namelen is clamped to its size.
        let name = unsafe {
            std::slice::from_raw_parts(
                (&rx.name as *const libc::sockaddr_storage).cast::<u8>(),
                (msg.msg_namelen as usize).min(size_of::<libc::sockaddr_storage>()),
            )
        };
        let peer = sys::cmsg::parse_sockaddr(name);
        let clen = msg.msg_controllen.min(PKTINFO_CMSG_SPACE);
        let info = sys::cmsg::parse_pktinfo(&rx.control.0[..clen]);
        let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
        let len = (r as usize).min(RX_BUF);
        if info.is_none() {
            debug!("request without packet info; replying from the listening address");
        }
        core.on_request(li, &rx.buf[..len], truncated, peer, info, now, drv);
    }
}
