//! Rates (bytes per second, parsed from an operator's bit/s) and the wire size of a datagram.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Bytes one UDP datagram with `payload` bytes of UDP payload occupies on an Ethernet link: IP,
/// UDP and Ethernet headers included (what `tc`'s tbf counts, and what an operator's `--rate-limit`
/// in bit/s means). For a DATA block the payload is `4 + block length`.
pub const fn wire_bytes(payload: usize, ipv6: bool) -> u64 {
    payload as u64 + 8 + if ipv6 { 40 } else { 20 } + 14
}
/// A data rate in bytes per second (never zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub(super) u64);

impl Rate {
    /// `b` bytes per second (0 becomes 1).
    pub const fn from_bytes_per_sec(b: u64) -> Rate {
        Rate(if b == 0 { 1 } else { b })
    }

    /// `b` bits per second, rounded down to whole bytes (at least 1 byte/s).
    pub const fn from_bits_per_sec(b: u64) -> Rate {
        Rate::from_bytes_per_sec(b / 8)
    }

    pub const fn bytes_per_sec(self) -> u64 {
        self.0
    }

    pub const fn bits_per_sec(self) -> u64 {
        self.0.saturating_mul(8)
    }

    /// Time to send `bytes` at this rate.
    pub fn time_for(self, bytes: u64) -> Duration {
        let ns = (bytes as u128 * 1_000_000_000) / self.0 as u128;
        Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
    }

    /// Bytes sent in `d` at this rate.
    pub fn bytes_in(self, d: Duration) -> u64 {
        ((self.0 as u128 * d.as_nanos()) / 1_000_000_000).min(u64::MAX as u128) as u64
    }

    /// The rate that moves `bytes` in `d` (`None` for an empty interval).
    pub fn per(bytes: u64, d: Duration) -> Option<Rate> {
        let ns = d.as_nanos();
        (ns > 0).then(|| {
            let r = (bytes as u128 * 1_000_000_000) / ns;
            Rate::from_bytes_per_sec(r.min(u64::MAX as u128) as u64)
        })
    }

    /// `self x num / den`.
    pub fn scale(self, num: u64, den: u64) -> Rate {
        let r = self.0 as u128 * num as u128 / den.max(1) as u128;
        Rate::from_bytes_per_sec(r.min(u64::MAX as u128) as u64)
    }
}

impl fmt::Display for Rate {
    /// In bit/s with a unit: `400.0 Mbit/s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bits_per_sec() as f64;
        if b >= 1e9 {
            write!(f, "{:.2} Gbit/s", b / 1e9)
        } else if b >= 1e6 {
            write!(f, "{:.1} Mbit/s", b / 1e6)
        } else if b >= 1e3 {
            write!(f, "{:.1} kbit/s", b / 1e3)
        } else {
            write!(f, "{b} bit/s")
        }
    }
}

/// A rate that could not be parsed (see [`Rate::from_str`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a rate: give bit/s as a number with an optional k, M or G (e.g. 400M, 2.5G)")]
pub struct ParseRateError(String);

impl FromStr for Rate {
    type Err = ParseRateError;

    /// Bits per second, as an operator writes them: `400000000`, `400M`, `400Mbit`, `2.5G`,
    /// `100k` (decimal prefixes; at least 8 bit/s).
    fn from_str(s: &str) -> Result<Rate, ParseRateError> {
        let err = || ParseRateError(s.to_string());
        let t = s.trim();
        let t = t
            .strip_suffix("bit/s")
            .or_else(|| t.strip_suffix("bps"))
            .or_else(|| t.strip_suffix("bit"))
            .unwrap_or(t)
            .trim_end();
        let (num, mult) = match t.char_indices().last() {
            Some((i, 'k' | 'K')) => (&t[..i], 1e3),
            Some((i, 'm' | 'M')) => (&t[..i], 1e6),
            Some((i, 'g' | 'G')) => (&t[..i], 1e9),
            _ => (t, 1.0),
        };
        let v: f64 = num.trim().parse().map_err(|_| err())?;
        let bits = v * mult;
        if !(bits.is_finite() && (8.0..1e15).contains(&bits)) {
            return Err(err());
        }
        Ok(Rate::from_bits_per_sec(bits as u64))
    }
}
