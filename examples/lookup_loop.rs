//! Times store lookups by hand (a noisy machine makes criterion's numbers drift between runs;
//! run two builds of this side by side instead):
//! `cargo run --release --example lookup_loop [iterations]`.
#[path = "../benches/common/store_tree.rs"]
mod store_tree;

use ringboot::proto::tftp::packet::Mode;
use ringboot::store::{Store, StoreOptions};
use std::time::Instant;
use store_tree::store_tree;

fn main() {
    let dir = store_tree();
    // Let the directory's mtime settle (an index is not kept for a directory changed < 2 s ago).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
    let n: u32 = std::env::args()
        .nth(1)
        .map_or(200_000, |a| a.parse().unwrap());
    for (name, hit) in [
        (&b"pxelinux.0"[..], true),
        (b"boot.wim", true),
        (b"big/missing.cfg", false),
        (b"missing.cfg", false),
    ] {
        let _ = s.lookup(name, Mode::Octet);
        let iters = if name.starts_with(b"big") { n / 200 } else { n };
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(s.lookup(name, Mode::Octet).is_ok() == hit);
        }
        println!(
            "{:<16} {:?}/lookup",
            String::from_utf8_lossy(name),
            t.elapsed() / iters
        );
    }
}
