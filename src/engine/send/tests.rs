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
        let iov = unsafe { std::slice::from_raw_parts(m.msg_hdr.msg_iov, m.msg_hdr.msg_iovlen) };
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
