//! Micro-benchmarks of the file store: what one RRQ's lookup costs.
//!
//! `cargo bench --bench store`. A cached lookup happens on every request (a boot storm does
//! thousands a second); a case-insensitive miss happens on every probe for a missing name
//! (PXELINUX tries about ten per boot), here in a directory of 20,000 entries.

use criterion::{criterion_group, criterion_main, Criterion};
#[path = "common/store_tree.rs"]
mod store_tree;

use ringboot::proto::tftp::packet::Mode;
use ringboot::store::{Store, StoreOptions};
use std::hint::black_box;
use std::time::Duration;
use store_tree::store_tree;

fn store(c: &mut Criterion) {
    let dir = store_tree();
    let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
    // Warm the cache (and, where there is one, the directory index).
    s.lookup(b"pxelinux.0", Mode::Octet).unwrap();
    s.lookup(b"boot.wim", Mode::Octet).unwrap();
    let _ = s.lookup(b"big/missing.cfg", Mode::Octet);
    let _ = s.lookup(b"big/file00042.CFG", Mode::Octet);

    let mut g = c.benchmark_group("store");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_millis(500));
    g.bench_function("cached_small", |b| {
        b.iter(|| s.lookup(black_box(b"pxelinux.0"), Mode::Octet).unwrap())
    });
    g.bench_function("cached_mapped", |b| {
        b.iter(|| s.lookup(black_box(b"boot.wim"), Mode::Octet).unwrap())
    });
    g.bench_function("miss_in_20000_entries", |b| {
        b.iter(|| {
            s.lookup(black_box(b"big/missing.cfg"), Mode::Octet)
                .unwrap_err()
        })
    });
    g.bench_function("case_insensitive_hit_in_20000_entries", |b| {
        b.iter(|| {
            s.lookup(black_box(b"BIG/file00042.CFG"), Mode::Octet)
                .unwrap()
        })
    });
    g.bench_function("miss_in_root", |b| {
        b.iter(|| {
            s.lookup(black_box(b"missing.cfg"), Mode::Octet)
                .unwrap_err()
        })
    });
    g.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
