//! What metrics and the status page cost: a record on the hot path, a scrape, a page refresh, a
//! request parse; and per-thread shards against one shared atomic with two threads recording.
//!
//! `cargo bench --bench metrics`. Per-operation costs on this machine, to compare commits.

use criterion::{criterion_group, criterion_main, Criterion};
use ringboot::metrics::http::{Connection, Limits};
use ringboot::metrics::{
    ArchClass, DhcpMode, DhcpType, DhcpView, Info, Outcome, Registry, Site, Status,
    TransferPublisher, TransferView,
};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    let r = Registry::new(Info::default());
    let w = r.recorder();
    g.bench_function("record_data_sent", |b| {
        b.iter(|| w.data_sent(black_box(4), black_box(5728)))
    });
    g.bench_function("record_transfer_ended", |b| {
        b.iter(|| {
            w.transfer_ended(
                black_box(Outcome::Completed),
                black_box(Duration::from_millis(1234)),
                black_box(400 << 20),
            )
        })
    });
    g.bench_function("record_dhcp_message", |b| {
        b.iter(|| {
            w.dhcp_message(
                black_box(DhcpType::Offer),
                DhcpMode::Proxy,
                ArchClass::from_option93(black_box(Some(7))),
            )
        })
    });
    g.finish();
}

/// The time of `iters` rounds of two threads that each run what `setup` returns (`setup` runs on
/// the thread itself, before the common start; spawning and set-up are not counted).
fn two_threads<S, W>(iters: u64, setup: S) -> Duration
where
    S: Fn() -> W + Clone + Send + 'static,
    W: FnOnce(),
{
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Arc::new(Barrier::new(3));
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let setup = setup.clone();
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    let work = setup();
                    start.wait();
                    work();
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        for h in hs {
            h.join().unwrap();
        }
        total += t.elapsed();
    }
    total
}

/// Two threads each add 1 a million times: into their own shards, or into one shared atomic.
fn contention(c: &mut Criterion) {
    const OPS: u64 = 1_000_000;
    let mut g = c.benchmark_group("two_threads_1M_adds");
    g.sample_size(10);
    g.bench_function("per_thread_shards", |b| {
        b.iter_custom(|iters| {
            let r = Arc::new(Registry::new(Info::default()));
            two_threads(iters, move || {
                let w = r.recorder();
                move || {
                    for _ in 0..OPS {
                        w.data_sent(1, black_box(512));
                    }
                }
            })
        })
    });
    g.bench_function("one_shared_atomic", |b| {
        b.iter_custom(|iters| {
            let shared = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
            two_threads(iters, move || {
                let shared = Arc::clone(&shared);
                move || {
                    for _ in 0..OPS {
                        shared[0].fetch_add(1, Ordering::Relaxed);
                        shared[1].fetch_add(black_box(512), Ordering::Relaxed);
                    }
                }
            })
        })
    });
    g.finish();
}

/// One batch at `now` of a worker's running transfers, one per name (started at `t0`).
fn publish(p: &mut TransferPublisher, now: Instant, names: &[String], t0: Instant) {
    let mut batch = p.begin(now);
    for (i, name) in names.iter().enumerate() {
        batch.push(&TransferView {
            id: i as u64,
            client: ([10, 0, (i >> 8) as u8, i as u8], 2000).into(),
            file: name.as_bytes(),
            bytes_done: i as u64 * 1000,
            size: Some(400 << 20),
            started: t0,
        });
    }
}

fn serve(c: &mut Criterion) {
    let mut g = c.benchmark_group("status");
    let t0 = Instant::now();
    let registry = Arc::new(Registry::new(Info::default()));
    let status = Arc::new(Status::new(Arc::clone(&registry), t0));
    let workers: Vec<_> = (0..4).map(|_| registry.recorder()).collect();
    for w in &workers {
        for _ in 0..1000 {
            w.transfer_started();
        }
        w.data_sent(100, 1 << 20);
    }
    let names: Vec<String> = (0..1000)
        .map(|i| format!("boot/x64/sources/boot-{i}.wim"))
        .collect();
    let mut pubs: Vec<_> = (0..4).map(|_| status.transfer_publisher()).collect();
    // A worker's batch of 1,000 running transfers (64 kept).
    g.bench_function("publish_1000_transfers", |b| {
        let mut now = t0;
        b.iter(|| {
            now += Duration::from_secs(1);
            publish(&mut pubs[0], now, &names, t0);
        })
    });
    let now = t0 + Duration::from_secs(10_000);
    for p in &mut pubs {
        publish(p, now, &names, t0);
    }
    for i in 0..60u8 {
        status.record_dhcp(
            now,
            &DhcpView {
                message: DhcpType::Ack,
                mode: DhcpMode::Full,
                mac: &[0x52, 0x54, 0, 0, 0, i],
                ip: Some([10, 0, 0, i].into()),
                arch: Some(7),
                vendor_class: b"PXEClient:Arch:00007:UNDI:003016",
                boot: b"ipxe/snponly.efi",
            },
        );
    }
    for s in 0..400u64 {
        status.tick(t0 + Duration::from_secs(s));
    }
    g.bench_function("scrape_metrics_4_shards", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(8192);
            registry.encode(&mut out);
            out
        })
    });
    g.bench_function("status_json_full", |b| {
        b.iter(|| status.snapshot(now).to_json())
    });
    let mut site = Site::new(Arc::clone(&status));
    let req = b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\nAccept: */*\r\nAccept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate\r\nReferer: http://127.0.0.1:9100/\r\nConnection: keep-alive\r\n\r\n";
    g.bench_function("http_parse_browser_request", |b| {
        b.iter(|| {
            let mut c = Connection::new(now, Limits::default());
            c.handle_bytes(now, black_box(req));
            c.poll_request().unwrap()
        })
    });
    g.bench_function("http_request_to_status_json_bytes", |b| {
        b.iter(|| {
            let mut c = Connection::new(now, Limits::default());
            c.handle_bytes(now, req);
            c.serve(now, &mut site);
            c.poll_transmit().unwrap().len()
        })
    });
    g.finish();
}

criterion_group!(benches, record, contention, serve);
criterion_main!(benches);
