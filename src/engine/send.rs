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
mod tests {
    use super::*;
    use crate::proto::tftp::options::{negotiate, Limits, RequestOptions};
    use crate::proto::tftp::packet::OptionList;
    use crate::proto::tftp::transfer::TransferConfig;
    use std::time::{Duration, Instant};

    #[test]
    fn calls_per_blocksize() {
        assert_eq!(blocks_per_call(1468, true), 44);
        assert_eq!(blocks_per_call(512, true), 64);
        assert_eq!(blocks_per_call(8, true), 64);
        assert_eq!(blocks_per_call(8192, true), 7);
        assert_eq!(blocks_per_call(32768, true), 1);
        assert_eq!(blocks_per_call(65464, true), 1);
        assert_eq!(blocks_per_call(1468, false), 1);
        for b in [8usize, 512, 1428, 1468, 8192, 16000, 65464] {
            let k = blocks_per_call(b, true);
            assert!(k * (4 + b) <= MAX_GSO_BYTES || k == 1);
        }
    }

    #[test]
    fn plan_splits_in_order() {
        let v: Vec<Call> = plan(10, 100, 44).collect();
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[0],
            Call {
                first: 10,
                count: 44,
                gso: true
            }
        );
        assert_eq!(v[1].first, 54);
        assert_eq!(
            v[2],
            Call {
                first: 98,
                count: 12,
                gso: true
            }
        );
        let v: Vec<Call> = plan(5, 45, 44).collect();
        assert_eq!(
            v[1],
            Call {
                first: 49,
                count: 1,
                gso: false
            }
        );
        assert_eq!(plan(1, 0, 44).count(), 0);
        assert!(plan(1, 7, 1).all(|c| c.count == 1 && !c.gso));
    }

    fn transfer(len: u64, blksize: u32, window: u32) -> Transfer {
        let raw = format!("blksize\0{blksize}\0windowsize\0{window}\0");
        let list = OptionList::new_checked(raw.as_bytes()).unwrap();
        let n = negotiate(&RequestOptions::parse(&list), &Limits::default(), None, len);
        Transfer::new(
            TransferConfig {
                peer: "10.0.0.2:2000".parse().unwrap(),
                negotiated: n,
                content_len: len,
                max_timeout: Duration::from_secs(3),
                min_rto: Duration::from_millis(2),
                retries: 6,
            },
            Instant::now(),
        )
    }

    /// Reassemble what the kernel would put on the wire from the built iovecs.
    fn datagrams(tx: &mut TxBufs, blksize: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for m in tx.msgs().iter() {
            let iov =
                unsafe { std::slice::from_raw_parts(m.msg_hdr.msg_iov, m.msg_hdr.msg_iovlen) };
            let mut bytes = Vec::new();
            for v in iov {
                bytes.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
                });
            }
            let seg = if m.msg_hdr.msg_controllen > 0 {
                4 + blksize
            } else {
                bytes.len().max(1)
            };
            let segs: Vec<Vec<u8>> = bytes.chunks(seg).map(|c| c.to_vec()).collect();
            // Only the last segment of a call may be short.
            for s in &segs[..segs.len().saturating_sub(1)] {
                assert_eq!(s.len(), seg);
            }
            if bytes.is_empty() {
                out.push(Vec::new());
            }
            out.extend(segs);
        }
        out
    }

    /// A multicast session's window: header + file slice per block, GSO calls, addressed to the
    /// group (issue 9).
    #[test]
    fn session_windows_carry_the_exact_bytes_to_the_group() {
        use crate::proto::mtftp::session::{Session, SessionConfig};
        let content: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
        let group: std::net::SocketAddr = "239.1.2.3:1758".parse().unwrap();
        let cfg = SessionConfig::new(
            crate::proto::mtftp::Protocol::Rfc2090,
            crate::proto::tftp::options::BlockSize::new(512).unwrap(),
            content.len() as u64,
            group,
        );
        let session = Session::new(cfg, Instant::now());
        assert_eq!(session.total_blocks(), 6);
        for gso in [true, false] {
            let mut tx = TxBufs::new(MAX_TX_BLOCKS);
            let calls = tx.build_session(&session, &content, 2, 5, gso).unwrap();
            assert_eq!(calls, if gso { 1 } else { 5 });
            let to = socket2::SockAddr::from(group);
            tx.address(&to);
            for m in tx.msgs().iter() {
                assert_eq!(m.msg_hdr.msg_name as *const u8, to.as_ptr() as *const u8);
                assert_eq!(m.msg_hdr.msg_namelen, to.len());
            }
            let got = datagrams(&mut tx, 512);
            assert_eq!(got.len(), 5);
            for (k, d) in got.iter().enumerate() {
                let index = 2 + k as u64;
                let (off, len) = session.block_range(index);
                assert_eq!(&d[..4], &data_header(BlockNum::from_index(index)));
                assert_eq!(&d[4..], &content[off as usize..off as usize + len]);
            }
        }
        // Outside the session: nothing built.
        let mut tx = TxBufs::new(MAX_TX_BLOCKS);
        assert!(tx.build_session(&session, &content, 6, 2, true).is_none());
    }

    #[test]
    fn windows_carry_the_exact_bytes() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        for (len, blksize, window) in [
            (10_000u64, 512u32, 16u32),
            (1468 * 4, 1468, 8),
            (1468 * 4 + 1, 1468, 3),
            (0, 512, 4),
            (3000, 8, 64),
        ] {
            let t = transfer(len, blksize, window);
            let mut tx = TxBufs::new(window as usize);
            let body = &content[..len as usize];
            let mut got = Vec::new();
            let mut next = 1u64;
            while next <= t.total_blocks() {
                let count = (t.total_blocks() + 1 - next).min(window as u64) as u32;
                for gso in [true, false] {
                    let n = tx.build(&t, body, next, count, gso).unwrap();
                    assert!(n >= 1);
                    assert_eq!(tx.last_block(), Some(next + count as u64 - 1));
                    let d = datagrams(&mut tx, blksize as usize);
                    assert_eq!(d.len(), count as usize, "len {len} blksize {blksize}");
                    if !gso {
                        for (i, dg) in d.iter().enumerate() {
                            let idx = next + i as u64;
                            assert_eq!(&dg[..4], &data_header(BlockNum::from_index(idx)));
                            got.extend_from_slice(&dg[4..]);
                        }
                    }
                }
                next += count as u64;
            }
            assert_eq!(got, body);
        }
    }

    fn text_transfer(blksize: u32, window: u32) -> Transfer {
        let raw = format!("blksize\0{blksize}\0windowsize\0{window}\0");
        let list = OptionList::new_checked(raw.as_bytes()).unwrap();
        let n = negotiate(&RequestOptions::parse(&list), &Limits::default(), None, 0);
        Transfer::new(
            TransferConfig {
                peer: "10.0.0.2:2000".parse().unwrap(),
                negotiated: n,
                content_len: crate::proto::tftp::transfer::LENGTH_UNKNOWN,
                max_timeout: Duration::from_secs(3),
                min_rto: Duration::from_millis(2),
                retries: 6,
            },
            Instant::now(),
        )
    }

    fn netascii(bytes: &[u8]) -> (tempfile::TempDir, std::sync::Arc<Content>) {
        use crate::proto::tftp::packet::Mode;
        use crate::store::{Store, StoreOptions};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t"), bytes).unwrap();
        let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
        let c = s.lookup(b"t", Mode::Netascii).unwrap();
        (dir, c)
    }

    /// Sends a netascii transfer window by window, resending parts of windows (as a partial ACK,
    /// a tail probe or a timeout would), and returns what the client assembles.
    fn send_text(src: &[u8], blksize: u32, window: u32, resend: bool) -> (Vec<u8>, Transfer) {
        let (_dir, c) = netascii(src);
        let mut t = text_transfer(blksize, window);
        let mut tx = TxBufs::new(window as usize);
        let mut got = Vec::new();
        let mut next = 1u64;
        let mut rounds = 0;
        while next <= t.total_blocks() {
            rounds += 1;
            let count = window.min((t.total_blocks() - next + 1).min(u32::MAX as u64) as u32);
            if resend && rounds % 3 == 0 && next > 1 {
                // Resend the last block of the previous window alone, then from its start.
                tx.build_content(&mut t, &c, next - 1, 1, false).unwrap();
                let d = datagrams(&mut tx, blksize as usize);
                assert_eq!(d.len(), 1);
            }
            tx.build_content(&mut t, &c, next, count, rounds % 2 == 0)
                .unwrap();
            let sent = tx.last_block().unwrap() + 1 - next;
            tx.build_content(&mut t, &c, next, count, false).unwrap();
            let d = datagrams(&mut tx, blksize as usize);
            assert_eq!(d.len() as u64, sent);
            for (i, dg) in d.iter().enumerate() {
                assert_eq!(
                    &dg[..4],
                    &data_header(BlockNum::from_index(next + i as u64))
                );
                got.extend_from_slice(&dg[4..]);
                if i + 1 < d.len() {
                    assert_eq!(
                        dg.len(),
                        4 + blksize as usize,
                        "only the last block is short"
                    );
                }
            }
            next += sent;
        }
        (got, t)
    }

    #[test]
    fn netascii_windows_carry_the_converted_bytes() {
        let mut text = Vec::new();
        for i in 0..400 {
            text.extend_from_slice(format!("line {i} {}\n", "x".repeat(i % 37)).as_bytes());
            if i % 7 == 0 {
                text.extend_from_slice(b"bare\rcr\r\n");
            }
        }
        let mut edge = vec![b'a'; 7];
        edge.extend_from_slice(b"\r\nend\r");
        let exact = b"abc\nabc\n".to_vec(); // 10 converted bytes: blocks of 10 end empty
        for src in [text, edge, exact, Vec::new(), vec![b'\n'; 5000]] {
            let mut want = Vec::new();
            crate::proto::tftp::netascii::to_netascii(&src, &mut want);
            for (blksize, window) in [(8, 4), (10, 2), (512, 1), (1468, 16), (8, 64)] {
                for resend in [false, true] {
                    let (got, t) = send_text(&src, blksize, window, resend);
                    assert!(
                        got == want,
                        "blksize {blksize} window {window} resend {resend}"
                    );
                    assert_eq!(t.total_blocks(), want.len() as u64 / blksize as u64 + 1);
                }
            }
        }
    }

    /// Builds smaller than the window (the sender may cap them): a window of 16 goes out in
    /// builds of 3, and resends from the window's start still carry the right bytes.
    #[test]
    fn netascii_windows_larger_than_a_build() {
        let src: Vec<u8> = (0..3000u32)
            .map(|i| match i % 11 {
                0 => b'\n',
                5 => b'\r',
                _ => b'a' + (i % 26) as u8,
            })
            .collect();
        let mut want = Vec::new();
        crate::proto::tftp::netascii::to_netascii(&src, &mut want);
        let (_dir, c) = netascii(&src);
        let blksize = 8usize;
        let mut t = text_transfer(blksize as u32, 16);
        let mut tx = TxBufs::new(3);
        let block_of = |tx: &mut TxBufs| -> Vec<Vec<u8>> {
            datagrams(tx, blksize)
                .into_iter()
                .map(|d| d[4..].to_vec())
                .collect()
        };
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut next = 1u64;
        let mut round = 0;
        while next <= t.total_blocks() {
            round += 1;
            let start = next;
            // One window of 16 in builds of 3.
            let mut sent = Vec::new();
            while next < start + 16 && next <= t.total_blocks() {
                let count = (start + 16 - next).min(3) as u32;
                tx.build_content(&mut t, &c, next, count, false).unwrap();
                let b = block_of(&mut tx);
                next += b.len() as u64;
                sent.extend(b);
            }
            if round % 2 == 0 {
                // Resend the whole window from its start (a timeout), and its middle.
                for from in [start, start + 7] {
                    let mut again = Vec::new();
                    let mut i = from;
                    while i < next {
                        let count = (next - i).min(3) as u32;
                        tx.build_content(&mut t, &c, i, count, false).unwrap();
                        let b = block_of(&mut tx);
                        i += b.len() as u64;
                        again.extend(b);
                    }
                    assert_eq!(
                        again[..],
                        sent[(from - start) as usize..],
                        "resend from {from}"
                    );
                }
            }
            got.extend(sent);
        }
        assert_eq!(got.concat(), want);
        assert_eq!(got.len() as u64, t.total_blocks());
    }

    #[test]
    fn netascii_resend_before_the_kept_window_is_refused() {
        let (_dir, c) = netascii(&vec![b'x'; 1000]);
        let mut t = text_transfer(8, 4);
        let mut tx = TxBufs::new(4);
        for first in [1u64, 5, 9, 13, 17, 21, 25] {
            tx.build_content(&mut t, &c, first, 4, true).unwrap();
        }
        // Within the kept positions: fine; before them: an internal error, not wrong bytes.
        tx.build_content(&mut t, &c, 25, 4, true).unwrap();
        tx.build_content(&mut t, &c, 22, 4, true).unwrap();
        assert_eq!(tx.build_content(&mut t, &c, 2, 4, true), Err(OUTSIDE));
        // A window never built (superseded) is skipped over by encoding forward.
        tx.build_content(&mut t, &c, 37, 4, false).unwrap();
        let d = datagrams(&mut tx, 8);
        assert_eq!(&d[0][4..], b"xxxxxxxx");
    }

    /// A netascii source truncated or rewritten in place: the window fails or the last window is
    /// refused; the transfer never completes with mixed bytes.
    #[test]
    fn netascii_source_changed_in_place() {
        use std::io::Write;
        let (dir, c) = netascii(&vec![b'y'; 4000]);
        let mut t = text_transfer(512, 4);
        let mut tx = TxBufs::new(4);
        tx.build_content(&mut t, &c, 1, 4, true).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("t"))
            .unwrap()
            .write_all(b"zz")
            .unwrap();
        // The last window (blocks 5..8) is refused whether or not inotify saw the write yet.
        assert_eq!(tx.build_content(&mut t, &c, 5, 4, true), Err(FILE_CHANGED));
        // Truncated: the conversion meets the end early.
        let (dir, c) = netascii(&vec![b'y'; 4000]);
        let mut t = text_transfer(512, 4);
        let mut tx = TxBufs::new(4);
        std::fs::File::create(dir.path().join("t")).unwrap();
        assert_eq!(tx.build_content(&mut t, &c, 1, 4, true), Err(FILE_CHANGED));
    }

    #[test]
    fn out_of_range_is_refused_not_a_panic() {
        let t = transfer(1000, 512, 4);
        let mut tx = TxBufs::new(4);
        // Content shorter than the transfer believes.
        assert_eq!(tx.build(&t, &[0u8; 100], 1, 2, true), None);
        assert_eq!(tx.build(&t, &[0u8; 1000], 3, 1, true), None);
        assert_eq!(tx.build(&t, &[0u8; 1000], 0, 1, true), None);
        // A count above capacity is cut.
        let mut small = TxBufs::new(2);
        assert_eq!(small.build(&t, &[0u8; 1000], 1, 50, false), Some(2));
    }

    #[test]
    fn send_state_is_bounded_whatever_the_window() {
        assert_eq!(TxBufs::new(32767).capacity(), MAX_TX_BLOCKS);
        assert_eq!(TxBufs::new(0).capacity(), 1);
        let bound = TxBufs::heap_bytes(MAX_TX_BLOCKS);
        assert!(bound <= 12 * 1024, "{bound} bytes");
    }
}
