//! Micro-benchmarks of the sans-IO core: what one request and one window cost in CPU.
//!
//! `cargo bench --bench codec`. These are per-operation costs on this machine, useful to compare
//! commits; end-to-end throughput is measured with `loadtest/` (see docs/benchmarks.md).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringboot::proto::tftp::options::{negotiate, Limits, RequestOptions};
use ringboot::proto::tftp::packet::{data_header, emit_ack, Packet};
use ringboot::proto::tftp::transfer::{Transfer, TransferConfig};
use ringboot::proto::tftp::BlockNum;
use ringboot::proto::Payload;
use std::hint::black_box;
use std::time::{Duration, Instant};

const EDK2_RRQ: &[u8] =
    b"\x00\x01\\Boot\\boot.wim\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00";

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.bench_function("parse_rrq_edk2", |b| {
        b.iter(|| Packet::parse(black_box(EDK2_RRQ)).unwrap())
    });
    g.bench_function("parse_ack", |b| {
        b.iter(|| Packet::parse(black_box(b"\x00\x04\x12\x34")).unwrap())
    });
    g.bench_function("negotiate_and_oack", |b| {
        let Ok(Packet::Rrq(r)) = Packet::parse(EDK2_RRQ) else {
            unreachable!()
        };
        let limits = Limits::default();
        let mut buf = [0u8; 512];
        b.iter(|| {
            let o = RequestOptions::parse(&r.options);
            let n = negotiate(&o, &limits, None, 300 << 20);
            n.emit_oack(&mut buf).unwrap()
        })
    });
    g.bench_function("data_header", |b| {
        b.iter(|| data_header(black_box(BlockNum(4242))))
    });
    g.finish();
}

/// The state machine's cost per window: ACK in, window descriptor out (no I/O).
fn transfer(c: &mut Criterion) {
    let mut g = c.benchmark_group("transfer");
    let len: u64 = 64 << 20;
    let Ok(Packet::Rrq(r)) =
        Packet::parse(b"\x00\x01f\x00octet\x00blksize\x001468\x00windowsize\x0016\x00")
    else {
        unreachable!()
    };
    let negotiated = negotiate(
        &RequestOptions::parse(&r.options),
        &Limits::default(),
        None,
        len,
    );
    let blocks = len / 1468 + 1;
    g.throughput(Throughput::Bytes(len));
    g.bench_function("64MiB_window16_state_machine", |b| {
        b.iter(|| {
            let now = Instant::now();
            let mut t = Transfer::new(
                TransferConfig {
                    peer: "192.0.2.7:2000".parse().unwrap(),
                    negotiated,
                    content_len: len,
                    max_timeout: Duration::from_secs(3),
                    min_rto: Duration::from_millis(2),
                    retries: 6,
                },
                now,
            );
            let mut buf = [0u8; 512];
            let mut ack = [0u8; 4];
            emit_ack(&mut ack, BlockNum::ZERO);
            let _ = t.poll_transmit(now, &mut buf);
            t.handle_datagram(now, &ack);
            while let Some(tx) = t.poll_transmit(now, &mut buf) {
                if let Payload::Blocks { first, count } = tx.payload {
                    let last = first + count as u64 - 1;
                    emit_ack(&mut ack, BlockNum::from_index(last));
                    t.handle_datagram(now, &ack);
                }
            }
            assert_eq!(t.stats().blocks_sent, blocks);
        })
    });
    g.finish();
}

criterion_group!(benches, codec, transfer);
criterion_main!(benches);
