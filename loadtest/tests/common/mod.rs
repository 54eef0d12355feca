//! What the load tester's integration tests share (each includes it with `mod common;`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Deterministic pseudo-random bytes (so a failure reproduces).
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Where ringboot's binaries may be: this test's own target directory, `CARGO_TARGET_DIR`, and
/// the workspace's `target`.
pub fn target_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    // <target>/<profile>/deps/<test>-xxxx
    if let Ok(exe) = std::env::current_exe() {
        if let Some(t) = exe
            .parent()
            .and_then(|d| d.parent())
            .and_then(|d| d.parent())
        {
            v.push(t.to_path_buf());
        }
    }
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        v.push(PathBuf::from(t));
    }
    v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    v
}

/// The ringboot binary: `RINGBOOT_BIN`; else the newest debug or release build in
/// [`target_dirs`] when `usable` takes it; else one built now (`cargo build -p ringboot` into a
/// target directory of its own, so no lock is shared with the cargo that runs us).
pub fn ringboot_bin(usable: impl Fn(&Path) -> bool) -> PathBuf {
    if let Ok(p) = std::env::var("RINGBOOT_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for t in target_dirs() {
        for prof in ["debug", "release"] {
            let p = t.join(prof).join("ringboot");
            if let Ok(m) = std::fs::metadata(&p).and_then(|m| m.modified()) {
                found.push((m, p));
            }
        }
    }
    found.sort();
    if let Some((_, p)) = found.pop().filter(|(_, p)| usable(p)) {
        return p;
    }
    let target = target_dirs()[0].join("loadtest-ringboot");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-p", "ringboot", "--bin", "ringboot"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo build -p ringboot");
    assert!(st.success(), "cargo build -p ringboot failed");
    target.join("debug").join("ringboot")
}
