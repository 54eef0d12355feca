//! Arbitrary datagrams and timer firings fed to a server transfer: no panic, never a block index
//! outside the file, every transmit to the client, and the transfer always ends (saying so once)
//! or keeps a timer armed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringboot::proto::tftp::options::{negotiate, Limits, RequestOptions};
use ringboot::proto::tftp::packet::{OptionList, Packet};
use ringboot::proto::tftp::transfer::{Event, Transfer, TransferConfig};
use ringboot::proto::{Payload, Transmit};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some((&len_byte, rest)) = data.split_first() else {
        return;
    };
    let len = len_byte as u64 * 97;
    let opts = OptionList::new_checked(b"blksize\x0016\x00windowsize\x004\x00").unwrap();
    let n = negotiate(&RequestOptions::parse(&opts), &Limits::default(), None, len);
    let peer = "192.0.2.7:2000".parse().unwrap();
    let cfg = TransferConfig {
        peer,
        negotiated: n,
        content_len: len,
        max_timeout: Duration::from_secs(1),
        min_rto: Duration::from_millis(2),
        retries: 3,
    };
    let mut now = ringboot::sim_origin();
    let mut t = Transfer::new(cfg, now);
    let mut buf = [0u8; 512];
    let mut ended = 0;
    for chunk in rest.chunks(5) {
        if chunk[0] & 1 == 0 {
            t.handle_datagram(now, &chunk[1..]);
        } else {
            now += Duration::from_millis(chunk[0] as u64 * 10);
            t.handle_timeout(now);
        }
        while let Some(Transmit { dest, payload }) = t.poll_transmit(now, &mut buf) {
            assert_eq!(dest, peer);
            match payload {
                Payload::Blocks { first, count } => {
                    assert!(first >= 1 && first + count as u64 - 1 <= t.total_blocks());
                    let (off, l) = t.block_range(first + count as u64 - 1);
                    assert!(off + l as u64 <= len);
                }
                Payload::Datagram(n) => assert!(Packet::parse(&buf[..n]).is_ok()),
            }
        }
        while let Some(Event::Ended(o)) = t.poll_event() {
            assert_eq!(Some(o), t.outcome());
            ended += 1;
        }
        assert!(ended <= 1, "the end reported once");
        assert!(t.outcome().is_some() || t.poll_timeout().is_some());
    }
});
