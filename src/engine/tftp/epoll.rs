//! The TFTP service on the readiness reactor ([`Epoll`]): the fallback where io_uring cannot be
//! set up (or when forced with `--io-backend fallback`), with nonblocking sockets, `recvmsg` and
//! `sendmmsg`.
//!
//! Contract: it drives the same [`Core`] as the io_uring service and sends the same GSO
//! `mmsghdr`s, built by the shared code; only receiving differs. Transfer sockets are watched in
//! the engine's first pass and the listening sockets in its late pass ([`Pass::Late`]), so per
//! wake-up the ready transfer sockets are read before the listening sockets (a client's ERROR
//! that ends a size probe is seen before its next RRQ). Each ready socket is read until `EAGAIN`
//! (at most [`READ_BUDGET`] datagrams, for fairness). Sends are synchronous: nothing is in
//! flight when a callback returns.

use super::{Core, Driver, SendStatus, SlotId, CTRL_CALL};
use crate::engine::reactor::Ready;
use crate::engine::{Epoll, Io, Pass, Service};
use crate::proto::ratelog::LogLimit;
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

/// Sub-token: kind (2 bits) | generation (16) | slot (32).
fn tag(kind: u64, gen: u16, idx: u32) -> u64 {
    (kind << 48) | ((gen as u64) << 32) | idx as u64
}

fn untag(t: u64) -> (u64, u16, u32) {
    (t >> 48, (t >> 32) as u16, t as u32)
}

/// The core's I/O on epoll, during one callback.
struct EpollDriver<'a, 'b> {
    io: &'a mut Io<'b, Epoll>,
}

impl Driver for EpollDriver<'_, '_> {
    fn watch(&mut self, id: SlotId, fd: RawFd) -> io::Result<()> {
        self.io
            .watch_as(fd, tag(KIND_XFER, id.gen, id.idx), Pass::First)
    }

    fn unwatch(&mut self, _id: SlotId, fd: RawFd) -> bool {
        self.io.unwatch(fd);
        true
    }

    fn send(&mut self, _id: SlotId, fd: RawFd, msgs: &mut [libc::mmsghdr]) -> SendStatus {
        SendStatus::Done(crate::engine::send::sendmmsg_all(fd, msgs).err())
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

    fn arm(&mut self, key: u64, at: Instant) {
        self.io.arm(key, at);
    }

    fn cancel(&mut self, key: u64) {
        self.io.cancel(key);
    }
}

/// Receive buffers of the worker, preallocated.
struct Rx {
    buf: Box<[u8; RX_BUF]>,
    control: CmsgBuf<PKTINFO_CMSG_SPACE>,
    name: libc::sockaddr_storage,
}

/// The TFTP service of a worker on epoll.
pub(crate) struct TftpEpoll {
    core: Core,
    rx: Rx,
    listen_errors: LogLimit,
}

impl TftpEpoll {
    pub(crate) fn new(core: Core) -> Self {
        TftpEpoll {
            core,
            rx: Rx {
                buf: Box::new([0; RX_BUF]),
                control: CmsgBuf::new(),
                // SAFETY: all-zero is a valid sockaddr_storage.
                name: unsafe { zeroed() },
            },
            listen_errors: LogLimit::default(),
        }
    }
}

impl Service<Epoll> for TftpEpoll {
    fn name(&self) -> &'static str {
        "TFTP worker"
    }

    fn start(&mut self, io: &mut Io<'_, Epoll>, now: Instant) -> io::Result<()> {
        for (i, l) in self.core.listeners().iter().enumerate() {
            io.watch_as(
                l.sock.as_raw_fd(),
                tag(KIND_LISTEN, 0, i as u32),
                Pass::Late,
            )?;
        }
        let mut drv = EpollDriver { io };
        self.core.on_timer(super::AUX_KEY, now, &mut drv);
        self.core.sync_aux(now, &mut drv);
        Ok(())
    }

    fn on_readable(&mut self, _io: &mut Io<'_, Epoll>, _sub: u32, _now: Instant) -> io::Result<()> {
        Ok(())
    }

    fn on_event(
        &mut self,
        io: &mut Io<'_, Epoll>,
        sub: u64,
        _: Ready,
        now: Instant,
    ) -> io::Result<()> {
        let mut drv = EpollDriver { io };
        let (kind, gen, idx) = untag(sub);
        match kind {
            KIND_XFER => read_transfer(
                &mut self.core,
                &mut drv,
                &mut self.rx,
                SlotId { idx, gen },
                now,
            ),
            KIND_LISTEN => read_listener(
                &mut self.core,
                &mut drv,
                &mut self.rx,
                idx as usize,
                &mut self.listen_errors,
                now,
            ),
            _ => {}
        }
        if let Some(e) = self.core.take_injected_error() {
            return Err(e);
        }
        self.core.sync_aux(now, &mut drv);
        Ok(())
    }

    fn on_timer(&mut self, io: &mut Io<'_, Epoll>, key: u64, now: Instant) -> io::Result<()> {
        let mut drv = EpollDriver { io };
        self.core.on_timer(key, now, &mut drv);
        self.core.sync_aux(now, &mut drv);
        Ok(())
    }

    fn shutdown(&mut self, _now: Instant) {}

    fn wind_down(&mut self, io: &mut Io<'_, Epoll>, now: Instant) -> bool {
        self.core.shutdown(now, &mut EpollDriver { io });
        false
    }
}

fn read_transfer(core: &mut Core, drv: &mut EpollDriver, rx: &mut Rx, id: SlotId, now: Instant) {
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
    now: Instant,
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
                    if let Some(n) = errors.allow(now) {
                        warn!(worker = core.worker(), suppressed = n, reason = %io::Error::from_raw_os_error(e), "receive error on a listening socket (one line a second)");
                    }
                    return;
                }
            }
        }
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
