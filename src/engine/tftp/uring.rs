//! The TFTP service on the io_uring reactor ([`Ring`]): the [`Core`] of a worker, its
//! listening sockets and transfer sockets read by multishot `RecvMsg`, its windows sent as
//! linked `SendMsg`s.
//!
//! Contract:
//! - Every socket the worker reads (its listening sockets and each transfer socket) has one
//!   multishot `RecvMsg` armed on it, drawing buffers from the ring's provided buffers; a
//!   multishot that ends (no `F_MORE`, e.g. `ENOBUFS`) is re-armed. Listener completions come in
//!   the late pass ([`Pass::Late`]): a batch's transfer completions are handled first.
//! - Windows go out as `SendMsg` SQEs built by the shared [`Core`] (one per GSO call, linked so
//!   they leave in order). A transfer's control datagrams (OACK, ERROR) go out as a `SendMsg` too
//!   (call [`CTRL_CALL`]), over its `TxBufs`; the core submits one only once the transfer's
//!   window has completed, so an ERROR never overtakes DATA. The `mmsghdr`s stay valid until
//!   their completions because the core keeps a transfer's memory while any of its sends is in
//!   flight, and queues a newer window meanwhile.
//! - A closed transfer's multishot receive is cancelled with `AsyncCancel`. The core closes the
//!   socket only once every operation naming its descriptor has completed: each send's
//!   completion (with `DEFER_TASKRUN`, a linked send looks its descriptor up only when the kernel
//!   issues it, which may be after the `io_uring_enter` that submitted it) and the receive's
//!   final completion (no `F_MORE`), reported through [`Core::on_recv_ended`]. So a descriptor
//!   number is never reused while an SQE that names it can still be issued. (Registered files
//!   would move the same problem to the registered slot, and need a register call per transfer:
//!   owning the socket until the last completion is simpler and covers both backends.)
//!   Completions of stale generations are dropped (their buffers still recycled by the ring).
//! - The receive `msghdr` templates live in the service, at fixed heap addresses, for as long as
//!   the ring (the engine drops its reactor, cancelling every receive, before its services).
//! - At shutdown ([`Service::wind_down`]) every transfer's client gets an ERROR; the engine then
//!   hands in the send completions until none is in flight (at most [`LINGER`](crate::engine::LINGER)),
//!   and nothing else.

use super::{Core, Driver, SendStatus, SlotId, CTRL_CALL};
use crate::engine::uring::{recv_template, Cqe, Ring, RingEvent, RingOps, BGID, NAME_LEN};
use crate::engine::{Io, Pass, Service};
use crate::proto::ratelog::LogLimit;
use crate::sys::{self, cmsg::PKTINFO_CMSG_SPACE};
use io_uring::types::{Fd, RecvMsgOut};
use io_uring::{cqueue, opcode, squeue};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;
use tracing::{debug, trace, warn};

const KIND_CANCEL: u8 = 0;
const KIND_LISTEN: u8 = 1;
const KIND_RECV: u8 = 2;
const KIND_SEND: u8 = 3;

/// Sub-token: kind (2 bits) | call (16) | generation (16) | slot (24): the engine's 58 bits.
fn ud(kind: u8, call: u16, id: SlotId) -> u64 {
    ((kind as u64 & 3) << 56)
        | ((call as u64) << 40)
        | ((id.gen as u64) << 24)
        | (id.idx as u64 & 0xff_ffff)
}

fn un_ud(u: u64) -> (u8, u16, SlotId) {
    (
        ((u >> 56) & 3) as u8,
        (u >> 40) as u16,
        SlotId {
            idx: (u & 0xff_ffff) as u32,
            gen: (u >> 24) as u16,
        },
    )
}

/// The TFTP service of a worker on io_uring.
pub(crate) struct TftpRing {
    core: Core,
    listen_msg: Box<libc::msghdr>,
    xfer_msg: Box<libc::msghdr>,
    listen_errors: LogLimit,
    /// Wound down: only send completions are still wanted.
    stopping: bool,
}

impl TftpRing {
    pub(crate) fn new(core: Core) -> Self {
        TftpRing {
            core,
            listen_msg: recv_template(NAME_LEN, PKTINFO_CMSG_SPACE),
            xfer_msg: recv_template(0, 0),
            listen_errors: LogLimit::default(),
            stopping: false,
        }
    }

    fn arm_listener(&self, io: &mut Io<'_, Ring>, li: usize) -> io::Result<()> {
        let Some(l) = self.core.listeners().get(li) else {
            return Ok(());
        };
        let id = SlotId {
            idx: li as u32,
            gen: 0,
        };
        let e = opcode::RecvMsgMulti::new(Fd(l.sock.as_raw_fd()), &*self.listen_msg, BGID)
            .build()
            .user_data(io.token(ud(KIND_LISTEN, 0, id), Pass::Late));
        io.ops().push(&e)
    }

    fn on_listen(
        &mut self,
        io: &mut Io<'_, Ring>,
        li: usize,
        c: Cqe<'_>,
        now: Instant,
    ) -> io::Result<()> {
        if let Some(data) = c.buf {
            if c.res >= 0 {
                match RecvMsgOut::parse(data, &self.listen_msg) {
                    Ok(out) => {
                        let peer = sys::cmsg::parse_sockaddr(out.name_data());
                        let info = sys::cmsg::parse_pktinfo(out.control_data());
                        let mut drv = RingDriver::new(io, &self.xfer_msg);
                        self.core.on_request(
                            li,
                            out.payload_data(),
                            out.is_payload_truncated(),
                            peer,
                            info,
                            now,
                            &mut drv,
                        );
                    }
                    Err(()) => trace!("unparsable receive buffer"),
                }
            }
        } else if c.res < 0 && c.res != -libc::ENOBUFS && c.res != -libc::ECANCELED {
            if let Some(n) = self.listen_errors.allow(now) {
                warn!(worker = self.core.worker(), suppressed = n, reason = %io::Error::from_raw_os_error(-c.res), "receive error on a listening socket (one line a second)");
            }
        }
        if !cqueue::more(c.flags) {
            self.arm_listener(io, li)?;
        }
        Ok(())
    }

    fn on_recv(
        &mut self,
        io: &mut Io<'_, Ring>,
        id: SlotId,
        c: Cqe<'_>,
        now: Instant,
    ) -> io::Result<()> {
        let mut drv = RingDriver::new(io, &self.xfer_msg);
        if let Some(data) = c.buf {
            if c.res >= 0 && self.core.is_live(id) {
                match RecvMsgOut::parse(data, &self.xfer_msg) {
                    Ok(out) => self.core.on_transfer_datagram(
                        id,
                        out.payload_data(),
                        out.is_payload_truncated(),
                        now,
                        &mut drv,
                    ),
                    Err(()) => trace!("unparsable receive buffer"),
                }
            }
        } else if c.res < 0 {
            match -c.res {
                libc::ENOBUFS | libc::ECANCELED => {}
                e => self.core.on_transfer_error(id, e, now, &mut drv),
            }
        }
        if !cqueue::more(c.flags) {
            // The multishot ended: re-arm it on a live transfer; otherwise no receive names the
            // socket any more and the core may close it.
            match self.core.fd_of(id) {
                Some(fd) if c.res != -libc::ECANCELED => drv.watch(id, fd)?,
                _ => self.core.on_recv_ended(id),
            }
        }
        Ok(())
    }
}

impl Service<Ring> for TftpRing {
    fn name(&self) -> &'static str {
        "TFTP worker"
    }

    fn start(&mut self, io: &mut Io<'_, Ring>, now: Instant) -> io::Result<()> {
        for li in 0..self.core.listeners().len() {
            self.arm_listener(io, li)?;
        }
        let mut drv = RingDriver::new(io, &self.xfer_msg);
        self.core.on_timer(super::AUX_KEY, now, &mut drv);
        self.core.sync_aux(now, &mut drv);
        Ok(())
    }

    fn on_readable(&mut self, _io: &mut Io<'_, Ring>, _sub: u32, _now: Instant) -> io::Result<()> {
        Ok(())
    }

    fn on_event(
        &mut self,
        io: &mut Io<'_, Ring>,
        sub: u64,
        ev: RingEvent<'_>,
        now: Instant,
    ) -> io::Result<()> {
        let RingEvent::Done(c) = ev else {
            return Ok(());
        };
        let (kind, call, id) = un_ud(sub);
        match kind {
            KIND_SEND => {
                let mut drv = RingDriver::new(io, &self.xfer_msg);
                self.core
                    .on_send_complete(id, call as usize, c.res, now, &mut drv);
            }
            _ if self.stopping => {}
            KIND_RECV => self.on_recv(io, id, c, now)?,
            KIND_LISTEN => self.on_listen(io, id.idx as usize, c, now)?,
            _ => {}
        }
        if let Some(e) = self.core.take_injected_error() {
            return Err(e);
        }
        self.core
            .sync_aux(now, &mut RingDriver::new(io, &self.xfer_msg));
        Ok(())
    }

    fn on_timer(&mut self, io: &mut Io<'_, Ring>, key: u64, now: Instant) -> io::Result<()> {
        let mut drv = RingDriver::new(io, &self.xfer_msg);
        self.core.on_timer(key, now, &mut drv);
        self.core.sync_aux(now, &mut drv);
        Ok(())
    }

    fn shutdown(&mut self, _now: Instant) {}

    fn wind_down(&mut self, io: &mut Io<'_, Ring>, now: Instant) -> bool {
        // Tell the clients, then let in-flight sends finish before the memory goes.
        self.stopping = true;
        self.core
            .shutdown(now, &mut RingDriver::new(io, &self.xfer_msg));
        self.core.sends_in_flight()
    }

    fn in_flight(&self) -> bool {
        self.core.sends_in_flight()
    }
}

/// The core's I/O on the ring, during one callback.
struct RingDriver<'a, 'b> {
    io: &'a mut Io<'b, Ring>,
    xfer_msg: &'a libc::msghdr,
}

impl<'a, 'b> RingDriver<'a, 'b> {
    fn new(io: &'a mut Io<'b, Ring>, xfer_msg: &'a libc::msghdr) -> Self {
        RingDriver { io, xfer_msg }
    }

    fn ops(&mut self) -> &mut RingOps {
        self.io.ops()
    }
}

impl Driver for RingDriver<'_, '_> {
    fn watch(&mut self, id: SlotId, fd: RawFd) -> io::Result<()> {
        let e = opcode::RecvMsgMulti::new(Fd(fd), self.xfer_msg, BGID)
            .build()
            .user_data(self.io.token(ud(KIND_RECV, 0, id), Pass::First));
        self.ops().push(&e)
    }

    fn unwatch(&mut self, id: SlotId, _fd: RawFd) -> bool {
        let e = opcode::AsyncCancel::new(self.io.token(ud(KIND_RECV, 0, id), Pass::First))
            .build()
            .user_data(self.io.token(ud(KIND_CANCEL, 0, id), Pass::First));
        if let Err(err) = self.ops().push(&e) {
            // The receive stays armed until the ring goes; the slot (and socket) wait for it.
            debug!(reason = %err, "cannot queue a cancel");
        }
        false
    }

    fn send(&mut self, id: SlotId, fd: RawFd, msgs: &mut [libc::mmsghdr]) -> SendStatus {
        let n = msgs.len();
        if n > self.ops().room() {
            if let Err(e) = self.ops().submit() {
                return SendStatus::Done(Some((0, e.raw_os_error().unwrap_or(libc::EAGAIN))));
            }
        }
        for (i, m) in msgs.iter().enumerate() {
            let mut e = opcode::SendMsg::new(Fd(fd), &m.msg_hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(self.io.token(ud(KIND_SEND, i as u16, id), Pass::First));
            if i + 1 < n {
                e = e.flags(squeue::Flags::IO_LINK);
            }
            if let Err(err) = self.ops().push(&e) {
                // Nothing after `i` was queued; what was queued completes normally.
                let e = err.raw_os_error().unwrap_or(libc::EAGAIN);
                return if i == 0 {
                    SendStatus::Done(Some((0, e)))
                } else {
                    SendStatus::InFlight(i as u32)
                };
            }
        }
        SendStatus::InFlight(n as u32)
    }

    fn send_ctrl(&mut self, id: SlotId, fd: RawFd, msg: &mut libc::mmsghdr) -> SendStatus {
        let e = opcode::SendMsg::new(Fd(fd), &msg.msg_hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(
                self.io
                    .token(ud(KIND_SEND, CTRL_CALL as u16, id), Pass::First),
            );
        match self.ops().push(&e) {
            Ok(()) => SendStatus::InFlight(1),
            Err(err) => SendStatus::Done(Some((
                CTRL_CALL,
                err.raw_os_error().unwrap_or(libc::EAGAIN),
            ))),
        }
    }

    fn arm(&mut self, key: u64, at: Instant) {
        self.io.arm(key, at);
    }

    fn cancel(&mut self, key: u64) {
        self.io.cancel(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trip() {
        for (kind, call, idx, gen) in [
            (KIND_SEND, 0u16, 0u32, 0u16),
            (KIND_RECV, 65535, 0xff_ffff, 65535),
            (KIND_LISTEN, 7, 3, 1),
        ] {
            let id = SlotId { idx, gen };
            assert_eq!(un_ud(ud(kind, call, id)), (kind, call, id));
        }
    }
}
