//! The io_uring backend (the `io-uring` crate, no async runtime).
//!
//! Contract:
//! - One ring per worker, created in the worker thread. Every socket the worker reads (its
//!   listening sockets and each transfer socket) has one multishot `RecvMsg` armed on it, drawing
//!   buffers from one provided-buffer ring ([`BufRing`]); a multishot that ends (no `F_MORE`, e.g.
//!   `ENOBUFS`) is re-armed. Buffers go back to the ring once their completion is handled.
//! - Windows go out as `SendMsg` SQEs built by the shared [`Core`] (one per GSO call, linked so they
//!   leave in order). A transfer's control datagrams (OACK, ERROR) go out as a `SendMsg` too (call
//!   [`CTRL_CALL`]), over its `TxBufs`; the core submits one only once the transfer's window has
//!   completed, so an ERROR never overtakes DATA. The `mmsghdr`s stay valid until their completions because the core keeps a
//!   transfer's memory while any of its sends is in flight, and queues a newer window meanwhile.
//! - A closed transfer's multishot receive is cancelled with `AsyncCancel`. The core closes the
//!   socket only once every operation naming its descriptor has completed: each send's completion
//!   (with `DEFER_TASKRUN`, a linked send looks its descriptor up only when the kernel issues it,
//!   which may be after the `io_uring_enter` that submitted it) and the receive's final completion
//!   (no `F_MORE`), reported through [`Core::on_recv_ended`]. So a descriptor number is never
//!   reused while an SQE that names it can still be issued. (Registered files would move the same
//!   problem to the registered slot, and need a register call per transfer: owning the socket
//!   until the last completion is simpler and covers both backends.) Completions of stale
//!   generations are dropped (their buffers still recycled).
//! - One `io_uring_enter` per loop: push everything produced by a batch of completions, publish the
//!   returned buffers, then submit and wait for at least one completion or the earliest timer
//!   deadline (`IORING_ENTER_EXT_ARG` timeout). Transfer completions of a batch are handled before
//!   listener completions. Shutdown arrives as a completed poll on the shutdown eventfd.

use super::tftp::{Core, Driver, SendStatus, SlotId, CTRL_CALL};
use super::workers::Shutdown;
use crate::proto::ratelog::LogLimit;
use crate::sys::{self, cmsg::PKTINFO_CMSG_SPACE};
use io_uring::types::{self, BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, trace, warn};

/// Submission queue entries per ring.
pub(crate) const RING_ENTRIES: u32 = 1024;
/// Provided receive buffers per worker (a power of two) and their size.
const BUFFERS: u16 = 1024;
const BUF_SIZE: usize = 2048;
const BGID: u16 = 0;
/// Name space reserved in each receive buffer (a `sockaddr_in6`, rounded up).
const NAME_LEN: u32 = 32;

const KIND_LISTEN: u8 = 1;
const KIND_RECV: u8 = 2;
const KIND_SEND: u8 = 3;
const KIND_CANCEL: u8 = 4;
const KIND_WAKE: u8 = 5;

/// `user_data`: kind (8 bits) | call (16) | generation (16) | slot (24).
fn ud(kind: u8, call: u16, id: SlotId) -> u64 {
    ((kind as u64) << 56)
        | ((call as u64) << 40)
        | ((id.gen as u64) << 24)
        | (id.idx as u64 & 0xff_ffff)
}

fn un_ud(u: u64) -> (u8, u16, SlotId) {
    (
        (u >> 56) as u8,
        (u >> 40) as u16,
        SlotId {
            idx: (u & 0xff_ffff) as u32,
            gen: (u >> 24) as u16,
        },
    )
}

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`) and the buffers it hands out.
struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_bytes: usize,
    mask: u16,
    tail: u16,
    bufs: Box<[u8]>,
}

impl BufRing {
    /// Allocate and register `entries` buffers of `BUF_SIZE` bytes as group `bgid`.
    fn new(ring: &IoUring, entries: u16, bgid: u16) -> io::Result<BufRing> {
        debug_assert!(entries.is_power_of_two());
        let ring_bytes = entries as usize * size_of::<BufRingEntry>();
        // SAFETY: anonymous mapping, checked below; page-aligned as the kernel requires.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let Some(ptr) = NonNull::new(mem.cast::<BufRingEntry>()) else {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        };
        let mut br = BufRing {
            ring: ptr,
            ring_bytes,
            mask: entries - 1,
            tail: 0,
            bufs: vec![0u8; entries as usize * BUF_SIZE].into_boxed_slice(),
        };
        // SAFETY: the ring memory lives as long as `br`, which the caller drops after the ring.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(mem as u64, entries, bgid, 0)?;
        }
        for bid in 0..entries {
            br.recycle(bid);
        }
        br.publish();
        Ok(br)
    }

    /// Give buffer `bid` back (visible to the kernel after [`publish`](Self::publish)).
    fn recycle(&mut self, bid: u16) {
        let i = (bid & self.mask) as usize;
        let addr = self.bufs[i * BUF_SIZE..].as_ptr() as u64;
        // SAFETY: the slot index is masked into the ring; only addr/len/bid are written, never
        // the tail word that shares the first entry.
        unsafe {
            let e = &mut *self.ring.as_ptr().add((self.tail & self.mask) as usize);
            e.set_addr(addr);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(i as u16);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make recycled buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail is a u16 inside the mapped ring, shared with the kernel.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The bytes the kernel wrote into buffer `bid`.
    fn get(&self, bid: u16, len: usize) -> &[u8] {
        let i = (bid & self.mask) as usize;
        &self.bufs[i * BUF_SIZE..i * BUF_SIZE + len.min(BUF_SIZE)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length.
        unsafe {
            libc::munmap(self.ring.as_ptr().cast(), self.ring_bytes);
        }
    }
}

/// A `msghdr` template for multishot receives, kept at a fixed heap address.
fn recv_template(namelen: u32, controllen: usize) -> Box<libc::msghdr> {
    // SAFETY: all-zero is a valid msghdr.
    let mut m: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
    m.msg_namelen = namelen;
    m.msg_controllen = controllen;
    m
}

struct UringDriver {
    ring: IoUring,
    xfer_msg: Box<libc::msghdr>,
}

impl UringDriver {
    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry's buffers outlive its completion (see the module contract).
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Replace `cqes` with up to `cap` completions taken from the ring: (user data, result,
    /// flags), so the ring is free to the handlers while they run.
    #[inline]
    fn reap(&mut self, cqes: &mut Vec<(u64, i32, u32)>, cap: usize) {
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .take(cap)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }

    fn room(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }
}

impl Driver for UringDriver {
    fn watch(&mut self, id: SlotId, fd: RawFd) -> io::Result<()> {
        let e = opcode::RecvMsgMulti::new(Fd(fd), &*self.xfer_msg, BGID)
            .build()
            .user_data(ud(KIND_RECV, 0, id));
        self.push(&e)
    }

    fn unwatch(&mut self, id: SlotId, _fd: RawFd) -> bool {
        let e = opcode::AsyncCancel::new(ud(KIND_RECV, 0, id))
            .build()
            .user_data(ud(KIND_CANCEL, 0, id));
        if let Err(err) = self.push(&e) {
            // The receive stays armed until the ring goes; the slot (and socket) wait for it.
            debug!(reason = %err, "cannot queue a cancel");
        }
        false
    }

    fn send(&mut self, id: SlotId, fd: RawFd, msgs: &mut [libc::mmsghdr]) -> SendStatus {
        let n = msgs.len();
        if n > self.room() {
            if let Err(e) = self.ring.submit() {
                return SendStatus::Done(Some((0, e.raw_os_error().unwrap_or(libc::EAGAIN))));
            }
        }
        for (i, m) in msgs.iter().enumerate() {
            let mut e = opcode::SendMsg::new(Fd(fd), &m.msg_hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(ud(KIND_SEND, i as u16, id));
            if i + 1 < n {
                e = e.flags(squeue::Flags::IO_LINK);
            }
            if let Err(err) = self.push(&e) {
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
            .user_data(ud(KIND_SEND, CTRL_CALL as u16, id));
        match self.push(&e) {
            Ok(()) => SendStatus::InFlight(1),
            Err(err) => SendStatus::Done(Some((
                CTRL_CALL,
                err.raw_os_error().unwrap_or(libc::EAGAIN),
            ))),
        }
    }
}

/// Names of what [`probe`] checks, for the fallback message.
fn op_name(code: u8) -> &'static str {
    match code {
        opcode::RecvMsg::CODE => "RecvMsg",
        opcode::SendMsg::CODE => "SendMsg",
        opcode::AsyncCancel::CODE => "AsyncCancel",
        opcode::PollAdd::CODE => "PollAdd",
        _ => "?",
    }
}

/// Create a worker's ring, with the single-issuer/deferred task-run flags where the kernel has them.
pub(crate) fn new_ring() -> io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(RING_ENTRIES * 4)
        .build(RING_ENTRIES);
    match tuned {
        Ok(r) => Ok(r),
        Err(_) => IoUring::builder()
            .setup_cqsize(RING_ENTRIES * 4)
            .build(RING_ENTRIES),
    }
}

/// Check that io_uring works here with everything this backend uses: a ring, the opcodes,
/// `EXT_ARG` waits, provided-buffer rings and multishot `RecvMsg` (exercised over loopback).
pub(crate) fn probe() -> io::Result<()> {
    let mut ring = IoUring::new(8)?;
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for code in [
        opcode::RecvMsg::CODE,
        opcode::SendMsg::CODE,
        opcode::AsyncCancel::CODE,
        opcode::PollAdd::CODE,
    ] {
        if !p.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel lacks the io_uring {} operation", op_name(code)),
            ));
        }
    }
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)",
        ));
    }
    let bufs = BufRing::new(&ring, 4, 7).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("provided buffer rings unavailable (Linux 5.19): {e}"),
        )
    })?;
    let rx = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let tx = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let msg = recv_template(NAME_LEN, 0);
    let e = opcode::RecvMsgMulti::new(Fd(rx.as_raw_fd()), &*msg, 7)
        .build()
        .user_data(1);
    // SAFETY: msg and bufs outlive the ring's use of them (the ring is dropped first below).
    unsafe { ring.submission().push(&e) }.map_err(|_| io::Error::other("submission queue full"))?;
    tx.send_to(b"probe", rx.local_addr()?)?;
    let ts = Timespec::new().sec(1);
    match ring
        .submitter()
        .submit_with_args(1, &SubmitArgs::new().timespec(&ts))
    {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => return Err(e),
    }
    let cqe = ring.completion().next();
    let result = match cqe {
        Some(c) if c.result() >= 0 && cqueue::buffer_select(c.flags()).is_some() => {
            if cqueue::more(c.flags()) {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "multishot RecvMsg is not supported (Linux 6.0)",
                ))
            }
        }
        Some(c) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "multishot RecvMsg failed: {}",
                io::Error::from_raw_os_error(-c.result())
            ),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no completion for a loopback RecvMsg within 1 s",
        )),
    };
    drop(ring);
    drop(bufs);
    result
}

/// Run one worker on io_uring until `shutdown`.
pub(crate) fn run(mut core: Core, ring: IoUring, shutdown: &Shutdown) -> io::Result<()> {
    let mut bufs = BufRing::new(&ring, BUFFERS, BGID)?;
    let listen_msg = recv_template(NAME_LEN, PKTINFO_CMSG_SPACE);
    let mut drv = UringDriver {
        ring,
        xfer_msg: recv_template(0, 0),
    };
    let nl = core.listeners().len();
    for li in 0..nl {
        arm_listener(&mut drv, &core, &listen_msg, li)?;
    }
    let wake = opcode::PollAdd::new(Fd(shutdown.fd()), libc::POLLIN as u32)
        .build()
        .user_data(ud(KIND_WAKE, 0, SlotId { idx: 0, gen: 0 }));
    drv.push(&wake)?;
    let cap = drv.ring.completion().capacity();
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(cap);
    let mut listen_errors = LogLimit::default();
    // Timers were held back last round for input that was already there.
    let mut held = false;
    loop {
        if let Some(e) = core.take_injected_error() {
            return Err(e);
        }
        let now = Instant::now();
        // Input before timers: on a busy worker, ACKs that arrived before a deadline may sit in
        // the ring's deferred work; surface them and handle them first, so the server does not
        // take its own backlog for a lost packet (a spurious probe or resend). Once in a row at
        // most, so timers are never starved.
        held = !held && core.next_deadline().is_some_and(|t| t <= now) && {
            let zero = Timespec::new();
            let _ = drv
                .ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&zero));
            !drv.ring.completion().is_empty()
        };
        if !held {
            core.run_timers(now, &mut drv);
        }
        bufs.publish();
        let r = if !drv.ring.completion().is_empty() {
            drv.ring.submit()
        } else {
            match core.next_deadline() {
                None => drv.ring.submit_and_wait(1),
                Some(t) => {
                    let d = t.saturating_duration_since(Instant::now());
                    if d.is_zero() {
                        drv.ring.submit()
                    } else {
                        let ts = Timespec::from(d);
                        drv.ring
                            .submitter()
                            .submit_with_args(1, &SubmitArgs::new().timespec(&ts))
                    }
                }
            }
        };
        match r {
            Ok(_) => {}
            Err(e) => match e.raw_os_error() {
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => return Err(e),
            },
        }
        if shutdown.is_triggered() {
            break;
        }
        drv.reap(&mut cqes, cap);
        // Transfers first, listeners second.
        for &(u, res, flags) in &cqes {
            let (kind, call, id) = un_ud(u);
            let now = Instant::now();
            match kind {
                KIND_RECV => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if res >= 0 && core.is_live(id) {
                            let data = bufs.get(bid, res as usize);
                            match RecvMsgOut::parse(data, &drv.xfer_msg) {
                                Ok(out) => core.on_transfer_datagram(
                                    id,
                                    out.payload_data(),
                                    out.is_payload_truncated(),
                                    now,
                                    &mut drv,
                                ),
                                Err(()) => trace!("unparsable receive buffer"),
                            }
                        }
                        bufs.recycle(bid);
                    } else if res < 0 {
                        match -res {
                            libc::ENOBUFS | libc::ECANCELED => {}
                            e => core.on_transfer_error(id, e, now, &mut drv),
                        }
                    }
                    if !cqueue::more(flags) {
                        // The multishot ended: re-arm it on a live transfer; otherwise no
                        // receive names the socket any more and the core may close it.
                        match core.fd_of(id) {
                            Some(fd) if res != -libc::ECANCELED => drv.watch(id, fd)?,
                            _ => core.on_recv_ended(id),
                        }
                    }
                }
                KIND_SEND => core.on_send_complete(id, call as usize, res, now, &mut drv),
                _ => {}
            }
        }
        for &(u, res, flags) in &cqes {
            let (kind, _, id) = un_ud(u);
            if kind != KIND_LISTEN {
                continue;
            }
            let li = id.idx as usize;
            let now = Instant::now();
            if let Some(bid) = cqueue::buffer_select(flags) {
                if res >= 0 {
                    let data = bufs.get(bid, res as usize);
                    match RecvMsgOut::parse(data, &listen_msg) {
                        Ok(out) => {
                            let peer = sys::cmsg::parse_sockaddr(out.name_data());
                            let info = sys::cmsg::parse_pktinfo(out.control_data());
                            core.on_request(
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
                bufs.recycle(bid);
            } else if res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED {
                if let Some(n) = listen_errors.allow(now) {
                    warn!(worker = core.worker(), suppressed = n, reason = %io::Error::from_raw_os_error(-res), "receive error on a listening socket (one line a second)");
                }
            }
            if !cqueue::more(flags) {
                arm_listener(&mut drv, &core, &listen_msg, li)?;
            }
        }
    }
    // Shutdown: tell the clients, then let in-flight sends finish before the memory goes.
    core.shutdown(Instant::now(), &mut drv);
    bufs.publish();
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let _ = drv.ring.submit();
        if !core.sends_in_flight() || Instant::now() >= deadline {
            break;
        }
        let ts = Timespec::from(Duration::from_millis(50));
        let _ = drv
            .ring
            .submitter()
            .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
        drv.reap(&mut cqes, cap);
        for &(u, res, flags) in &cqes {
            let (kind, call, id) = un_ud(u);
            if let Some(bid) = cqueue::buffer_select(flags) {
                bufs.recycle(bid);
            }
            if kind == KIND_SEND {
                core.on_send_complete(id, call as usize, res, Instant::now(), &mut drv);
            }
        }
    }
    // Cancel every request still armed (the multishot receives) and wait for that to complete, so
    // that no request touches the buffers after they are freed; then the ring, then the buffers.
    let cancel_ud = ud(KIND_CANCEL, 1, SlotId { idx: 0, gen: 0 });
    let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
        .build()
        .user_data(cancel_ud);
    if drv.push(&cancel).is_ok() {
        let deadline = Instant::now() + Duration::from_millis(200);
        'wait: while Instant::now() < deadline {
            let ts = Timespec::from(Duration::from_millis(20));
            let _ = drv
                .ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            for c in drv.ring.completion() {
                if c.user_data() == cancel_ud {
                    break 'wait;
                }
            }
        }
    }
    drop(drv);
    drop(bufs);
    Ok(())
}

fn arm_listener(
    drv: &mut UringDriver,
    core: &Core,
    msg: &libc::msghdr,
    li: usize,
) -> io::Result<()> {
    let Some(l) = core.listeners().get(li) else {
        return Ok(());
    };
    let e = opcode::RecvMsgMulti::new(Fd(l.sock.as_raw_fd()), msg, BGID)
        .build()
        .user_data(ud(
            KIND_LISTEN,
            0,
            SlotId {
                idx: li as u32,
                gen: 0,
            },
        ));
    drv.push(&e)
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
