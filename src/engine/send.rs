//! Building the `sendmsg` calls of one window of DATA blocks, without copying file bytes.
//!
//! Contract:
//! - [`TxBufs`] is a transfer's preallocated send state: one 4-byte header per block of a window, two
//!   iovecs per block (header, then the slice of the content), one `mmsghdr` and one `UDP_SEGMENT`
//!   control buffer per call. It is sized once, when the transfer starts, for at most
//!   [`MAX_TX_BLOCKS`] blocks whatever the window (a larger window goes out in several builds, one
//!   after the other); building a window never allocates. It also holds the transfer's control
//!   datagram buffer and the one `sendmsg` call over it ([`TxBufs::ctrl_msg`]). So a transfer's send state is at most
//!   [`TxBufs::heap_bytes`]`(MAX_TX_BLOCKS)` (about 10 KiB), whatever `--max-window` allows.
//! - [`TxBufs::build`] lays out the blocks `first .. first + count` as calls of
//!   [`blocks_per_call`] consecutive blocks. With GSO, a call of several blocks carries
//!   `UDP_SEGMENT = 4 + blksize` and the kernel cuts it into datagrams; only the last datagram of a
//!   call may be short, and the only short block of a transfer is its last, which is always the last
//!   block of its window, hence of its call. A call of one block is a plain datagram.
//! - The built `mmsghdr`s point into the `TxBufs` heap buffers and into the content; they stay valid
//!   until the next `build` (and while the `TxBufs` and the content are alive), so an asynchronous
//!   backend may hand them to the kernel and wait for the completions.
//! - [`TxBufs::build_content`] is what the worker calls: octet content is laid out in place as
//!   above; netascii content is converted, one build at a time, into a buffer of the transfer
//!   (`capacity x blksize` bytes, allocated at its first window) by [`TextWindow`], which reads the
//!   source with `pread` (`Content::read_source`: a truncated file reads short, it never faults) in
//!   4 KiB steps from a stack buffer. The offset of block N of the converted stream is not
//!   `(N - 1) x blksize`, so [`TextWindow`] keeps the encoder's position at the start of each block
//!   of the last build and at every `capacity`-th block of the last window: a resend of the window,
//!   of part of it or of its last block (never further back, see `Transfer`) is encoded again from
//!   the closest one. When the encoder
//!   reaches the end it reports the short last block to the transfer (`Transfer::set_last_block`).
//!   Before the window that holds a transfer's last block is sent, `Content::verify_unchanged` is
//!   asked: a file changed meanwhile ends the transfer with an ERROR instead of completing it.

use crate::proto::tftp::netascii::{encode_step, EncodePos};
use crate::proto::tftp::packet::data_header;
use crate::proto::tftp::transfer::Transfer;
use crate::proto::tftp::BlockNum;
use crate::store::Content;
use crate::sys::cmsg::{put_gso_cmsg, CmsgBuf, GSO_CMSG_SPACE};
use std::mem::{size_of, zeroed};

/// The file changed while being sent (ERROR message and log reason).
pub(crate) const FILE_CHANGED: &str = "file changed on the server while being sent";
/// A window that does not lie inside the content (never happens for a transfer created over it).
pub(crate) const OUTSIDE: &str = "internal error: block outside the file";
/// Reading a netascii source failed.
pub(crate) const READ_FAILED: &str = "cannot read the file";
/// Bytes of source read per `pread` when converting netascii.
const SOURCE_CHUNK: usize = 4096;

/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` was 64 before 6.x raised it).
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (UDP payload is at most 65507 bytes over IPv4; keep a margin).
pub(crate) const MAX_GSO_BYTES: usize = 65000;

/// Most blocks one [`TxBufs`] holds: one default window (`--max-window` 64), i.e. one or two GSO
/// calls. A larger window is sent in builds of this many blocks.
pub(crate) const MAX_TX_BLOCKS: usize = 64;

/// Blocks sent per `sendmsg` call: 1 without GSO or when only one datagram fits.
pub(crate) fn blocks_per_call(blksize: usize, gso: bool) -> usize {
    if !gso {
        return 1;
    }
    (MAX_GSO_BYTES / (4 + blksize)).clamp(1, MAX_GSO_SEGMENTS)
}

/// One `sendmsg` of a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Call {
    /// Absolute index of its first block.
    pub first: u64,
    /// Number of blocks.
    pub count: u32,
    /// Sent as one GSO send (more than one block).
    pub gso: bool,
}

/// Split `first .. first + count` into calls of at most `per_call` blocks, in order.
pub(crate) fn plan(first: u64, count: u32, per_call: usize) -> impl Iterator<Item = Call> {
    let per = per_call.max(1) as u64;
    let count = count as u64;
    let n = count.div_ceil(per);
    (0..n).map(move |i| {
        let f = first + i * per;
        let c = per.min(first + count - f);
        Call {
            first: f,
            count: c as u32,
            gso: c > 1,
        }
    })
}

/// A transfer's preallocated send buffers. See the module docs.
pub(crate) struct TxBufs {
    headers: Box<[[u8; 4]]>,
    iov: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
    cmsgs: Box<[CmsgBuf<GSO_CMSG_SPACE>]>,
    calls: Box<[Call]>,
    n_calls: usize,
    /// netascii transfers: the converted window and the encoder positions.
    text: Option<Box<TextWindow>>,
    /// Control datagrams (OACK, ERROR) are written here by `poll_transmit`.
    pub ctrl: Box<[u8; 1024]>,
    /// The one `sendmsg` call of a control datagram (over `ctrl`), at a fixed heap address until
    /// its completion.
    ctrl_msg: Box<CtrlMsg>,
}

/// The call that sends a control datagram: one iovec over [`TxBufs::ctrl`].
struct CtrlMsg {
    iov: libc::iovec,
    msg: libc::mmsghdr,
}

// SAFETY: the raw pointers in the built calls point into the TxBufs' own heap buffers and into
// content its owner keeps alive; they are only dereferenced by sends made (or submitted) by the
// thread that owns the TxBufs. Moving it to another thread (the multicast service is built on one
// thread and run on the engine's) moves those buffers with it, unchanged.
unsafe impl Send for TxBufs {}

impl TxBufs {
    /// Buffers for windows of up to `window` blocks (at most [`MAX_TX_BLOCKS`]).
    pub(crate) fn new(window: usize) -> Self {
        let window = window.clamp(1, MAX_TX_BLOCKS);
        // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
        let zero_iov: libc::iovec = unsafe { zeroed() };
        TxBufs {
            headers: vec![[0u8; 4]; window].into_boxed_slice(),
            iov: vec![zero_iov; 2 * window].into_boxed_slice(),
            msgs: (0..window)
                // SAFETY: as above.
                .map(|_| unsafe { zeroed::<libc::mmsghdr>() })
                .collect(),
            cmsgs: vec![CmsgBuf::new(); window].into_boxed_slice(),
            calls: vec![Call::default(); window].into_boxed_slice(),
            n_calls: 0,
            text: None,
            ctrl: Box::new([0u8; 1024]),
            ctrl_msg: Box::new(CtrlMsg {
                iov: zero_iov,
                // SAFETY: as above.
                msg: unsafe { zeroed() },
            }),
        }
    }

    /// Most blocks one build may hold.
    pub(crate) fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// Heap bytes of the buffers for `blocks` blocks (the bound on a transfer's send state).
    pub(crate) const fn heap_bytes(blocks: usize) -> usize {
        blocks
            * (4 + 2 * size_of::<libc::iovec>()
                + size_of::<libc::mmsghdr>()
                + size_of::<CmsgBuf<GSO_CMSG_SPACE>>()
                + size_of::<Call>())
            + 1024
            + size_of::<CtrlMsg>()
    }

    /// Lay out blocks `first .. first + count` of `transfer` over `content` as `sendmsg` calls
    /// (GSO when `gso`). Returns the number of calls; `None` when the range does not lie inside the
    /// content (which never happens for a transfer created over it). A count above
    /// [`capacity`](Self::capacity) is cut to it.
    pub(crate) fn build(
        &mut self,
        transfer: &Transfer,
        content: &[u8],
        first: u64,
        count: u32,
        gso: bool,
    ) -> Option<usize> {
        let blksize = transfer.negotiated().blksize.bytes();
        self.layout(
            blksize,
            transfer.total_blocks(),
            first,
            count,
            gso,
            |index| {
                let (offset, len) = transfer.block_range(index);
                let offset = usize::try_from(offset).ok()?;
                let data = content.get(offset..offset.checked_add(len)?)?;
                Some((data.as_ptr(), len))
            },
        )
    }

    /// What the worker calls for each window: [`build`](Self::build) for octet content; for
    /// netascii, converts the window first (see the module docs), reporting the last block to
    /// `transfer` when the conversion reaches it. Before the window holding the transfer's last
    /// block, checks that the file did not change. `Err` is the reason to end the transfer with.
    pub(crate) fn build_content(
        &mut self,
        transfer: &mut Transfer,
        content: &Content,
        first: u64,
        count: u32,
        gso: bool,
    ) -> Result<usize, &'static str> {
        let n = if content.is_netascii() {
            let blksize = transfer.negotiated().blksize.bytes();
            let window = transfer.negotiated().windowsize.get() as usize;
            let cap = self.capacity();
            let mut text = match self.text.take() {
                Some(t) if t.blksize == blksize => t,
                _ => Box::new(TextWindow::new(cap, blksize, window)),
            };
            let count = (count as usize).min(cap) as u32;
            let built = text.encode(content, first, count).and_then(|w| {
                let count = w.count;
                if let Some((last, len)) = w.end {
                    transfer.set_last_block(last, len);
                }
                let t: &TextWindow = &text;
                let total = transfer.total_blocks();
                self.layout(blksize, total, first, count, gso, |index| {
                    let i = usize::try_from(index.checked_sub(first)?).ok()?;
                    let len = *t.lens.get(i)? as usize;
                    Some((t.buf.get(i * blksize..)?.as_ptr(), len))
                })
                .ok_or(OUTSIDE)
            });
            self.text = Some(text);
            built?
        } else {
            self.build(transfer, content.bytes(), first, count, gso)
                .ok_or(OUTSIDE)?
        };
        if self.last_block() == Some(transfer.total_blocks()) && !content.verify_unchanged() {
            return Err(FILE_CHANGED);
        }
        Ok(n)
    }

    /// Lays out the calls; `block(index)` gives the bytes of one block (pointer, length), which
    /// must stay valid as long as the built messages.
    fn layout(
        &mut self,
        blksize: usize,
        total: u64,
        first: u64,
        count: u32,
        gso: bool,
        block: impl Fn(u64) -> Option<(*const u8, usize)>,
    ) -> Option<usize> {
        let count = (count as usize).min(self.capacity()) as u32;
        let per_call = blocks_per_call(blksize, gso);
        let segment = (4 + blksize) as u16;
        let mut n_calls = 0;
        for (ci, call) in plan(first, count, per_call).enumerate() {
            let base = (call.first - first) as usize;
            for k in 0..call.count as usize {
                let slot = base + k;
                let index = call.first + k as u64;
                if index == 0 || index > total {
                    return None;
                }
                let (data, len) = block(index)?;
                self.headers[slot] = data_header(BlockNum::from_index(index));
                self.iov[2 * slot] = libc::iovec {
                    iov_base: self.headers[slot].as_mut_ptr().cast(),
                    iov_len: 4,
                };
                self.iov[2 * slot + 1] = libc::iovec {
                    iov_base: data as *mut libc::c_void,
                    iov_len: len,
                };
            }
            let msg = &mut self.msgs[ci];
            // SAFETY: all-zero is a valid msghdr.
            msg.msg_hdr = unsafe { zeroed() };
            msg.msg_len = 0;
            msg.msg_hdr.msg_iov = self.iov[2 * base..].as_mut_ptr();
            // Zero-length iovecs (the empty final block) are fine for the kernel.
            msg.msg_hdr.msg_iovlen = 2 * call.count as usize;
            if call.gso {
                let clen = put_gso_cmsg(&mut self.cmsgs[ci], segment);
                msg.msg_hdr.msg_control = self.cmsgs[ci].0.as_mut_ptr().cast();
                msg.msg_hdr.msg_controllen = clen;
            }
            self.calls[ci] = call;
            n_calls = ci + 1;
        }
        self.n_calls = n_calls;
        Some(n_calls)
    }

    /// Like [`build`](Self::build) for a multicast session's window over its `content`.
    pub(crate) fn build_session(
        &mut self,
        session: &crate::proto::mtftp::session::Session,
        content: &[u8],
        first: u64,
        count: u32,
        gso: bool,
    ) -> Option<usize> {
        let blksize = session.config().blksize.get() as usize;
        self.layout(
            blksize,
            session.total_blocks(),
            first,
            count,
            gso,
            |index| {
                let (offset, len) = session.block_range(index);
                let offset = usize::try_from(offset).ok()?;
                let data = content.get(offset..offset.checked_add(len)?)?;
                Some((data.as_ptr(), len))
            },
        )
    }

    /// Address the calls of the last build to `to` (an unconnected socket). `to` must outlive
    /// their sends (a synchronous caller's).
    pub(crate) fn address(&mut self, to: &socket2::SockAddr) {
        for m in &mut self.msgs[..self.n_calls] {
            m.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = to.len();
        }
    }

    /// The calls of the last [`build`](Self::build).
    pub(crate) fn msgs(&mut self) -> &mut [libc::mmsghdr] {
        &mut self.msgs[..self.n_calls]
    }

    /// The `sendmsg` call of the control datagram in the first `len` bytes of
    /// [`ctrl`](Self::ctrl) (on a connected socket: no address). It stays valid, and `ctrl` must
    /// not be written, until the call has completed.
    pub(crate) fn ctrl_msg(&mut self, len: usize) -> &mut libc::mmsghdr {
        let len = len.min(self.ctrl.len());
        let c = &mut *self.ctrl_msg;
        c.iov = libc::iovec {
            iov_base: self.ctrl.as_mut_ptr().cast(),
            iov_len: len,
        };
        // SAFETY: all-zero is a valid msghdr.
        c.msg.msg_hdr = unsafe { zeroed() };
        c.msg.msg_hdr.msg_iov = &mut c.iov;
        c.msg.msg_hdr.msg_iovlen = 1;
        c.msg.msg_len = 0;
        &mut c.msg
    }

    /// Layout of call `i` of the last build.
    pub(crate) fn call(&self, i: usize) -> Option<Call> {
        self.calls[..self.n_calls].get(i).copied()
    }

    /// The last block index of the last build.
    pub(crate) fn last_block(&self) -> Option<u64> {
        self.call(self.n_calls.checked_sub(1)?)
            .map(|c| c.first + c.count as u64 - 1)
    }
}

/// Send `msgs` with `sendmmsg` (nonblocking), all of them or up to the first failure:
/// `Err((call, errno))`.
pub(crate) fn sendmmsg_all(
    fd: std::os::fd::RawFd,
    msgs: &mut [libc::mmsghdr],
) -> Result<(), (usize, i32)> {
    let mut i = 0;
    while i < msgs.len() {
        let rest = &mut msgs[i..];
        // SAFETY: the mmsghdrs were built by TxBufs and point to live buffers and content.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r > 0 {
            i += r as usize;
            continue;
        }
        let e = if r == 0 {
            libc::EAGAIN
        } else {
            crate::sys::socket::errno()
        };
        if e != libc::EINTR {
            return Err((i, e));
        }
    }
    Ok(())
}

/// A netascii transfer's converted blocks and the encoder's positions. See the module docs.
///
/// Positions are kept two ways: for each block of the last builds (`starts`, at most one build's
/// capacity + 1), and every `stride` blocks (absolute indices 1, 1 + stride, ...) in a ring that
/// covers the last window (`ring`, `window / stride + 2` entries). Any block from the start of the
/// last window on is reached from the closest kept position before it by converting at most
/// `stride - 1` blocks again (discarded). So a window larger than one build (the sender may cap a
/// build below the window) can still be resent from its start. Memory: the buffer of one build,
/// plus 16 bytes per block of a build and about 32 bytes per `stride` blocks of the window.
pub(crate) struct TextWindow {
    blksize: usize,
    /// The converted blocks of the last build, `blksize` bytes apart.
    buf: Box<[u8]>,
    /// Their lengths.
    lens: Box<[u32]>,
    /// `starts[i]`: the encoder's position at the start of block `base + i`, for `i < known`.
    starts: Box<[EncodePos]>,
    base: u64,
    known: usize,
    /// `(index, position at the start of block index)` for indices `1 + k * stride`; index 0 is
    /// an empty slot.
    ring: Box<[(u64, EncodePos)]>,
    stride: u64,
}

impl TextWindow {
    /// For builds of at most `capacity` blocks of `blksize` bytes, in windows of `window` blocks.
    fn new(capacity: usize, blksize: usize, window: usize) -> TextWindow {
        let capacity = capacity.max(1);
        let stride = capacity as u64;
        let mut t = TextWindow {
            blksize,
            buf: vec![0u8; capacity * blksize].into_boxed_slice(),
            lens: vec![0u32; capacity].into_boxed_slice(),
            starts: vec![EncodePos::START; capacity + 1].into_boxed_slice(),
            base: 1,
            known: 1,
            ring: vec![(0, EncodePos::START); window.max(1).div_ceil(capacity) + 2]
                .into_boxed_slice(),
            stride,
        };
        t.checkpoint(1, EncodePos::START);
        t
    }

    /// Remembers `pos` as the start of block `index` if it falls on a stride.
    fn checkpoint(&mut self, index: u64, pos: EncodePos) {
        let k = index.wrapping_sub(1);
        if index >= 1 && k % self.stride == 0 {
            let slot = (k / self.stride) as usize % self.ring.len();
            self.ring[slot] = (index, pos);
        }
    }

    /// The encoder's position at the start of block `first`: kept, or reached by converting
    /// forward from the closest kept position before it.
    fn position(&mut self, src: &mut Source<'_>, first: u64) -> Result<EncodePos, &'static str> {
        let kept_end = self.base + self.known as u64;
        if first >= self.base && first < kept_end {
            return Ok(self.starts[(first - self.base) as usize]);
        }
        let mut best = (first >= kept_end - 1).then(|| (kept_end - 1, self.starts[self.known - 1]));
        for &(i, p) in self.ring.iter() {
            if i != 0 && i <= first && best.is_none_or(|(b, _)| i > b) {
                best = Some((i, p));
            }
        }
        // None: before anything kept; no transfer resends that far back.
        let (mut index, mut pos) = best.ok_or(OUTSIDE)?;
        let bs = self.blksize;
        while index < first {
            if src.block(&mut pos, &mut self.buf[..bs])? < bs {
                return Err(OUTSIDE); // the file ends before `first`
            }
            index += 1;
            self.checkpoint(index, pos);
        }
        Ok(pos)
    }

    /// Converts blocks `first .. first + count` (at most the capacity) into the buffer.
    fn encode(
        &mut self,
        content: &Content,
        first: u64,
        count: u32,
    ) -> Result<Encoded, &'static str> {
        let bs = self.blksize;
        let count = (count as usize).min(self.lens.len());
        let mut src = Source::new(content);
        let mut pos = self.position(&mut src, first)?;
        // Keep the positions before `first` while the new ones fit after them.
        let off = match first.checked_sub(self.base) {
            Some(d) if (d as usize) < self.known && d as usize + count < self.starts.len() => {
                d as usize
            }
            _ => {
                self.base = first;
                0
            }
        };
        self.starts[off] = pos;
        self.known = off + 1;
        for i in 0..count {
            let n = src.block(&mut pos, &mut self.buf[i * bs..(i + 1) * bs])?;
            self.lens[i] = n as u32;
            self.starts[off + i + 1] = pos;
            self.known = off + i + 2;
            self.checkpoint(first + i as u64 + 1, pos);
            if n < bs {
                let last = first + i as u64;
                let len = (last - 1) * bs as u64 + n as u64;
                return Ok(Encoded {
                    count: i as u32 + 1,
                    end: Some((last, len)),
                });
            }
        }
        Ok(Encoded {
            count: count as u32,
            end: None,
        })
    }
}

/// What [`TextWindow::encode`] converted.
struct Encoded {
    /// Blocks to send.
    count: u32,
    /// `(index, converted length)` when the last block of the file is among them.
    end: Option<(u64, u64)>,
}

/// Reads a netascii source in [`SOURCE_CHUNK`] steps, on the stack.
struct Source<'a> {
    content: &'a Content,
    size: u64,
    chunk: [u8; SOURCE_CHUNK],
    start: u64,
    len: usize,
}

impl<'a> Source<'a> {
    fn new(content: &'a Content) -> Self {
        Source {
            content,
            size: content.len(),
            chunk: [0; SOURCE_CHUNK],
            start: 0,
            len: 0,
        }
    }

    /// Converts one block from `pos` into `out` (its whole length unless the source ends).
    fn block(&mut self, pos: &mut EncodePos, out: &mut [u8]) -> Result<usize, &'static str> {
        let mut w = 0;
        loop {
            let end = self.start + self.len as u64;
            let done = pos.src >= self.size;
            let usable =
                pos.src >= self.start && pos.src < end && (end - pos.src >= 2 || end == self.size);
            if !done && !usable {
                let want = (self.size - pos.src).min(SOURCE_CHUNK as u64) as usize;
                let mut got = 0;
                while got < want {
                    match self
                        .content
                        .read_source(pos.src + got as u64, &mut self.chunk[got..want])
                    {
                        // Shorter than when it was opened: truncated in place.
                        Ok(0) => return Err(FILE_CHANGED),
                        Ok(n) => got += n,
                        Err(_) => return Err(READ_FAILED),
                    }
                }
                self.start = pos.src;
                self.len = want;
            }
            let (input, at_eof) = if done {
                (&[][..], true)
            } else {
                let from = (pos.src - self.start) as usize;
                (
                    &self.chunk[from..self.len],
                    self.start + self.len as u64 == self.size,
                )
            };
            w += encode_step(pos, input, at_eof, &mut out[w..]);
            if w == out.len() || (pos.src >= self.size && pos.owed.is_none()) {
                return Ok(w);
            }
        }
    }
}

#[cfg(test)]
mod tests;
