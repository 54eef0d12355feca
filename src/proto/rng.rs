//! The one seeded pseudo-random generator: SplitMix64 (Steele, Lea, Flood 2014).
//!
//! Contract:
//! - Reproducible: the same seed gives the same sequence on every platform and build, so a
//!   simulation or a load-test run can be replayed from its seed. [`Rng::derive`] gives
//!   independent streams under one seed (one per emulated machine, one per link direction), so
//!   what one stream draws never shifts another.
//! - Not cryptographic: every output reveals the state. Anything an attacker must not predict
//!   (the transfer port choice) seeds a fresh `Rng` from the kernel's CSPRNG for each choice and
//!   never carries it over (see the server's `PortRng`).
//! - Tiny and allocation-free: one `u64` of state, a handful of arithmetic operations a draw.

/// Golden-ratio increment of SplitMix64.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A SplitMix64 generator. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed` (any value, zero included).
    pub fn from_seed(seed: u64) -> Self {
        Rng(seed)
    }

    /// An independent stream number `stream` (a machine index, say) under `seed`.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(GAMMA));
        r.next_u64();
        Rng(r.next_u64() ^ stream)
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift: no division, bias below 2^-32 for any `n` under 2^32);
    /// 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`; `lo` when `hi <= lo`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(n) => lo + self.below(n),
            None => self.next_u64(),
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`. Draws nothing when `p <= 0`, so a feature that is off leaves
    /// the stream as it was.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Exponentially distributed with mean `mean` (Poisson inter-arrival times).
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;
    use proptest::prelude::{any, prop_assert, proptest};

    #[test]
    fn reproducible_and_independent_streams() {
        let xs: Vec<u64> = {
            let mut a = Rng::derive(7, 3);
            (0..10).map(|_| a.next_u64()).collect()
        };
        let mut b = Rng::derive(7, 3);
        let ys: Vec<u64> = (0..10).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::derive(7, 4).next_u64(), Rng::derive(7, 3).next_u64());
        // SplitMix64's published first output for seed 0.
        assert_eq!(Rng::from_seed(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn chance_is_roughly_right_and_off_draws_nothing() {
        let mut r = Rng::from_seed(1);
        let hits = (0..100_000).filter(|_| r.chance(0.02)).count();
        assert!((1_700..2_300).contains(&hits), "{hits}");
        let mut a = Rng::from_seed(5);
        let b = a.clone();
        assert!(!a.chance(0.0));
        assert_eq!(a, b, "p = 0 draws nothing");
    }

    #[test]
    fn below_and_range_edges() {
        let mut r = Rng::from_seed(9);
        assert_eq!(r.below(0), 0);
        assert_eq!(r.below(1), 0);
        assert_eq!(r.range(5, 5), 5);
        assert_eq!(r.range(6, 5), 6);
        let _ = r.range(0, u64::MAX);
        let mut seen = [0u32; 6];
        for _ in 0..60_000 {
            seen[r.below(6) as usize] += 1;
        }
        assert!(
            seen.iter().all(|&n| (9_000..11_000).contains(&n)),
            "{seen:?}"
        );
    }

    proptest! {
        #[test]
        fn below_is_in_range(seed in any::<u64>(), n in 1u64..) {
            let mut r = Rng::from_seed(seed);
            prop_assert!(r.below(n) < n);
        }

        #[test]
        fn range_is_inclusive(seed in any::<u64>(), lo in 0u64..1000, span in 0u64..1000) {
            let mut r = Rng::from_seed(seed);
            let v = r.range(lo, lo + span);
            prop_assert!(v >= lo && v <= lo + span);
        }
    }
}
