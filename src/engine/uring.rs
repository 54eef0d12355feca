//! The io_uring reactor ([`Ring`], the `io-uring` crate, no async runtime): the wait of an
//! [`Engine`](super::Engine) whose services queue operations of their own (the TFTP workers).
//!
//! Contract:
//! - One ring per engine, created in its thread, with one provided-buffer ring ([`BufRing`],
//!   group [`BGID`]) that multishot receives draw from. A completion that carries a buffer lends
//!   it to the service for the call ([`Cqe::buf`]); it goes back to the kernel when the call
//!   returns (published at the next wait).
//! - One `io_uring_enter` per turn ([`Ring::wait`](super::Reactor::wait)): it submits what the
//!   services queued and waits for at least one completion or the engine's earliest deadline
//!   (`IORING_ENTER_EXT_ARG` timeout). A deadline already past waits zero but still asks for
//!   completions (`GETEVENTS`: with `DEFER_TASKRUN` that is what runs the deferred work), so
//!   input that arrived before a deadline is handed out before its timer fires.
//! - Services queue operations through [`RingOps::push`] with tokens from
//!   [`Io::token`](super::Io::token) (bit 62 is the ring's: readiness). Readiness watches
//!   ([`Reactor::watch`](super::Reactor::watch): the engine's stop event) are multishot polls,
//!   re-armed when one ends; [`Reactor::unwatch`](super::Reactor::unwatch) cancels them by
//!   descriptor.
//! - A service must keep the memory an operation names (its `msghdr`, iovecs) until that
//!   operation's completion. When the ring goes, every operation still armed is cancelled and
//!   the cancel awaited (at most 200 ms) before the ring, then the buffers, are freed; the engine
//!   drops its reactor before its services.

use super::reactor::{self, Reactor, REACTOR_BIT};
use io_uring::types::{self, BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Submission queue entries per ring.
pub(crate) const RING_ENTRIES: u32 = 1024;
/// Provided receive buffers per ring (a power of two) and their size.
const BUFFERS: u16 = 1024;
const BUF_SIZE: usize = 2048;
/// The buffer group that multishot receives name.
pub(crate) const BGID: u16 = 0;
/// Name space reserved in each receive buffer (a `sockaddr_in6`, rounded up).
pub(crate) const NAME_LEN: u32 = 32;

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
pub(crate) fn recv_template(namelen: u32, controllen: usize) -> Box<libc::msghdr> {
    // SAFETY: all-zero is a valid msghdr.
    let mut m: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
    m.msg_namelen = namelen;
    m.msg_controllen = controllen;
    m
}

/// What services use of a [`Ring`] during a callback.
pub(crate) struct RingOps {
    ring: IoUring,
    /// Readiness watches (token, descriptor), re-armed when their multishot poll ends.
    watches: Vec<(u64, RawFd)>,
}

impl RingOps {
    /// Queue `e` (submitting first when the queue is full).
    pub(crate) fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry's memory outlives its completion (see the module contract).
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Free entries in the submission queue.
    pub(crate) fn room(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }

    /// Submit what is queued now, without waiting.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }

    fn poll(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token | REACTOR_BIT);
        self.push(&e)
    }
}

/// An event of the ring for a service.
pub(crate) enum RingEvent<'a> {
    /// A watched descriptor is readable.
    Readable,
    /// An operation of the service completed.
    Done(Cqe<'a>),
}

/// A completion: the operation's result (bytes, or `-errno`), its flags, and the provided
/// buffer it filled, lent for the call.
pub(crate) struct Cqe<'a> {
    pub res: i32,
    pub flags: u32,
    pub buf: Option<&'a [u8]>,
}

/// The io_uring reactor. See the module docs.
pub(crate) struct Ring {
    // Field order is drop order: the ring goes before the buffers it names.
    ops: RingOps,
    bufs: BufRing,
    /// The completions of the last wait: (token, result, flags).
    cqes: Vec<(u64, i32, u32)>,
}

/// The token of the ring's own operations (the cancels of `unwatch` and of the drop).
const OWN: u64 = reactor::engine_token(1);

impl Ring {
    /// A reactor over `ring` (from [`new_ring`]), registering its provided buffers.
    pub(crate) fn new(mut ring: IoUring) -> io::Result<Ring> {
        let bufs = BufRing::new(&ring, BUFFERS, BGID)?;
        let cap = ring.completion().capacity();
        Ok(Ring {
            ops: RingOps {
                ring,
                watches: Vec::new(),
            },
            bufs,
            cqes: Vec::with_capacity(cap),
        })
    }
}

impl Reactor for Ring {
    type Ops = RingOps;
    type Event<'a> = RingEvent<'a>;

    fn watch(ops: &mut RingOps, fd: RawFd, token: u64) -> io::Result<()> {
        ops.poll(fd, token)?;
        ops.watches.push((token, fd));
        Ok(())
    }

    fn unwatch(ops: &mut RingOps, fd: RawFd) {
        ops.watches.retain(|&(_, f)| f != fd);
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(Fd(fd)).all())
            .build()
            .user_data(OWN);
        let _ = ops.push(&e);
    }

    fn is_readiness(ev: &RingEvent<'_>) -> bool {
        matches!(ev, RingEvent::Readable)
    }

    fn ops(&mut self) -> &mut RingOps {
        &mut self.ops
    }

    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.bufs.publish();
        let ring = &mut self.ops.ring;
        // Completions of the last wait not handed out yet (the engine stopped before its
        // dispatch) stay first in line: submit only.
        let pending = !self.cqes.is_empty();
        let r = if pending || !ring.completion().is_empty() {
            ring.submit()
        } else {
            match deadline {
                None => ring.submit_and_wait(1),
                Some(t) => {
                    let ts = Timespec::from(t.saturating_duration_since(Instant::now()));
                    ring.submitter()
                        .submit_with_args(1, &SubmitArgs::new().timespec(&ts))
                }
            }
        };
        if let Err(e) = r {
            match e.raw_os_error() {
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => return Err(e),
            }
        }
        if pending {
            return Ok(());
        }
        let cap = self.cqes.capacity();
        self.cqes.extend(
            ring.completion()
                .take(cap)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        Ok(())
    }

    fn dispatch<E>(
        &mut self,
        mut f: impl FnMut(&mut RingOps, u64, RingEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut r = Ok(());
        'passes: for late in [false, true] {
            for &(token, res, flags) in &self.cqes {
                if reactor::is_late(token) != late || token == OWN {
                    continue;
                }
                let ev = if token & REACTOR_BIT != 0 {
                    let token = token & !REACTOR_BIT;
                    if !cqueue::more(flags) && res != -libc::ECANCELED {
                        // The multishot poll ended (an overflow, say): arm it again.
                        if let Some(&(_, fd)) = self.ops.watches.iter().find(|w| w.0 == token) {
                            let _ = self.ops.poll(fd, token);
                        }
                    }
                    if res < 0 {
                        continue;
                    }
                    (token, RingEvent::Readable)
                } else {
                    let buf = cqueue::buffer_select(flags)
                        .map(|bid| self.bufs.get(bid, res.max(0) as usize));
                    (token, RingEvent::Done(Cqe { res, flags, buf }))
                };
                if let Err(e) = f(&mut self.ops, ev.0, ev.1) {
                    r = Err(e);
                    break 'passes;
                }
            }
        }
        // Every buffer goes back, handed out or not.
        for &(_, _, flags) in &self.cqes {
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.bufs.recycle(bid);
            }
        }
        self.cqes.clear();
        r
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Cancel every operation still armed (the multishot receives) and wait for that to
        // complete, so that none touches the buffers or a service's memory once freed.
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(OWN | REACTOR_BIT);
        if self.ops.push(&cancel).is_err() {
            return;
        }
        let ring = &mut self.ops.ring;
        let deadline = Instant::now() + Duration::from_millis(200);
        'wait: while Instant::now() < deadline {
            let ts = Timespec::from(Duration::from_millis(20));
            let _ = ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            for c in ring.completion() {
                if c.user_data() == OWN | REACTOR_BIT {
                    break 'wait;
                }
            }
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
