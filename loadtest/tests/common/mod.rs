//! What the load tester's integration tests share (each includes it with `mod common;`).

#![allow(dead_code)]

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
