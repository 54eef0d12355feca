//! Building the `sendmsg` calls of one window of DATA blocks, without copying file bytes.
//!
//! Contract:
//! - [`TxBufs`] is a transfer's preallocated send state: one 4-byte header per block of a window, two
//!   iovecs per block (header, then the slice of the content), one `mmsghdr` and one `UDP_SEGMENT`
//!   control buffer per call. It is sized once, when the transfer starts, for at most
//!   [`MAX_TX_BLOCKS`] blocks whatever the window (a larger window goes out in several builds, one
//!   after the other); building a window never allocates. So a transfer's send state is at most
//!   [`TxBufs::heap_bytes`]`(MAX_TX_BLOCKS)` (about 10 KiB), whatever `--max-window` allows.
//! - [`TxBufs::build`] lays out the blocks `first .. first + count` as calls of
//!   [`blocks_per_call`] consecutive blocks. With GSO, a call of several blocks carries
//!   `UDP_SEGMENT = 4 + blksize` and the kernel cuts it into datagrams; only the last datagram of a
//!   call may be short, and the only short block of a transfer is its last, which is always the last
//!   block of its window, hence of its call. A call of one block is a plain datagram.
//! - The built `mmsghdr`s point into the `TxBufs` heap buffers and into the content; they stay valid
//!   until the next `build` (and while the `TxBufs` and the content are alive), so an asynchronous
//!   backend may hand them to the kernel and wait for the completions.

use super::sys::{put_gso_cmsg, CmsgBuf, GSO_CMSG_SPACE};
use crate::proto::packet::data_header;
use crate::proto::transfer::Transfer;
use crate::proto::BlockNum;
use std::mem::{size_of, zeroed};

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
    /// Control datagrams (OACK, ERROR) are written here by `poll_transmit`.
    pub ctrl: Box<[u8; 1024]>,
}

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
            ctrl: Box::new([0u8; 1024]),
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
        let count = (count as usize).min(self.capacity()) as u32;
        let blksize = transfer.negotiated().blksize.bytes();
        let per_call = blocks_per_call(blksize, gso);
        let segment = (4 + blksize) as u16;
        let mut n_calls = 0;
        for (ci, call) in plan(first, count, per_call).enumerate() {
            let base = (call.first - first) as usize;
            for k in 0..call.count as usize {
                let slot = base + k;
                let index = call.first + k as u64;
                if index == 0 || index > transfer.total_blocks() {
                    return None;
                }
                let (offset, len) = transfer.block_range(index);
                let offset = usize::try_from(offset).ok()?;
                let data = content.get(offset..offset.checked_add(len)?)?;
                self.headers[slot] = data_header(BlockNum::from_index(index));
                self.iov[2 * slot] = libc::iovec {
                    iov_base: self.headers[slot].as_mut_ptr().cast(),
                    iov_len: 4,
                };
                self.iov[2 * slot + 1] = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
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

    /// The calls of the last [`build`](Self::build).
    pub(crate) fn msgs(&mut self) -> &mut [libc::mmsghdr] {
        &mut self.msgs[..self.n_calls]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::options::{negotiate, Limits, RequestOptions};
    use crate::proto::packet::OptionList;
    use crate::proto::transfer::TransferConfig;
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
