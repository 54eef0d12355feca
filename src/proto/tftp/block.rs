//! Block numbers (RFC 1350 §5) as a wrapping 16-bit newtype.
//!
//! Contract: a transfer longer than 65535 blocks wraps from 65535 to 0, the convention every common
//! client (PXE ROMs, EDK2, iPXE, tftp-hpa, atftp, curl) follows. Raw `u16` comparison is wrong across
//! the wrap, so ordering is serial-number arithmetic (RFC 1982): `a` is after `b` when the forward
//! distance from `b` to `a` is in `1..32768`. A transfer itself counts blocks with an absolute `u64`
//! index and only turns it into a `BlockNum` on the wire.

use std::cmp::Ordering;
use std::fmt;

/// A TFTP block number. Wraps from 65535 to 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlockNum(pub u16);

impl BlockNum {
    /// Block 0: the number a client ACKs to accept an OACK.
    pub const ZERO: BlockNum = BlockNum(0);

    /// The block number carried on the wire for absolute block index `index` (block 1 is index 1).
    #[inline]
    pub fn from_index(index: u64) -> Self {
        BlockNum(index as u16)
    }

    /// The next block number, wrapping 65535 to 0.
    #[inline]
    pub fn next(self) -> Self {
        BlockNum(self.0.wrapping_add(1))
    }

    /// The previous block number, wrapping 0 to 65535.
    #[inline]
    pub fn prev(self) -> Self {
        BlockNum(self.0.wrapping_sub(1))
    }

    /// `self + n`, wrapping.
    #[inline]
    pub fn wrapping_add(self, n: u16) -> Self {
        BlockNum(self.0.wrapping_add(n))
    }

    /// Forward distance from `self` to `later` (0 when equal), wrapping.
    #[inline]
    pub fn distance_to(self, later: BlockNum) -> u16 {
        later.0.wrapping_sub(self.0)
    }

    /// Serial-number comparison (RFC 1982): `None` when the two are exactly half the space apart.
    pub fn serial_cmp(self, other: BlockNum) -> Option<Ordering> {
        match other.distance_to(self) {
            0 => Some(Ordering::Equal),
            d if d < 0x8000 => Some(Ordering::Greater),
            0x8000 => None,
            _ => Some(Ordering::Less),
        }
    }

    /// `self` comes strictly after `other` in serial order.
    #[inline]
    pub fn is_after(self, other: BlockNum) -> bool {
        self.serial_cmp(other) == Some(Ordering::Greater)
    }

    /// Map a block number seen on the wire back to an absolute index, given a reference index
    /// known to be within 32767 blocks of it (the transfer's last acknowledged index).
    pub fn to_index_near(self, reference: u64) -> Option<u64> {
        let r = BlockNum::from_index(reference);
        let fwd = r.distance_to(self) as u64;
        if fwd < 0x8000 {
            Some(reference + fwd)
        } else {
            let back = 0x1_0000 - fwd;
            reference.checked_sub(back)
        }
    }
}

impl fmt::Debug for BlockNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for BlockNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_to_zero() {
        assert_eq!(BlockNum(65535).next(), BlockNum(0));
        assert_eq!(BlockNum(0).prev(), BlockNum(65535));
        assert!(BlockNum(0).is_after(BlockNum(65535)));
        assert!(BlockNum(3).is_after(BlockNum(65530)));
        assert!(!BlockNum(65530).is_after(BlockNum(3)));
        assert_eq!(BlockNum::from_index(65536), BlockNum(0));
        assert_eq!(BlockNum::from_index(65537), BlockNum(1));
    }

    #[test]
    fn index_near_reference() {
        assert_eq!(BlockNum(2).to_index_near(65534), Some(65538));
        assert_eq!(BlockNum(65534).to_index_near(65538), Some(65534));
        assert_eq!(BlockNum(65535).to_index_near(0), None);
        assert_eq!(BlockNum(5).to_index_near(5), Some(5));
    }

    proptest! {
        #[test]
        fn order_is_consistent_across_wrap(a in any::<u64>(), d in 1u64..0x8000) {
            let a = a >> 1;
            let x = BlockNum::from_index(a);
            let y = BlockNum::from_index(a + d);
            prop_assert!(y.is_after(x));
            prop_assert!(!x.is_after(y));
            prop_assert_eq!(x.distance_to(y) as u64, d);
            prop_assert_eq!(y.to_index_near(a), Some(a + d));
            prop_assert_eq!(x.to_index_near(a + d), Some(a));
        }
    }
}
