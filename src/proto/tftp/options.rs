//! Typed TFTP options and server-side negotiation (RFC 2347, 2348, 2349, 7440).
//!
//! Contract: [`RequestOptions::parse`] turns the raw option list of an RRQ into typed values, keeping a
//! count of options it does not know (they are ignored, never refused: RFC 2347 §4) and of values it
//! could not use (out of range or not a number: that option is ignored, as tftp-hpa and dnsmasq do).
//! [`negotiate`] is a pure function of the request, the server's [`Limits`], the path's MTU and the file
//! length; it never grants more than the client asked (EDK2 rejects an OACK that does), echoes the
//! client's timeout unchanged, and caps the bytes of one window so a client's socket buffer cannot
//! overflow. [`Negotiated::emit_oack`] writes the OACK, or nothing when no option was acknowledged, in
//! which case the transfer behaves exactly like RFC 1350.

use super::packet::{BufferTooSmall, OptionList, OptionWriter, DEFAULT_BLKSIZE};
use std::time::Duration;

/// RFC 2348 bounds.
pub const MIN_BLKSIZE: u16 = 8;
pub const MAX_BLKSIZE: u16 = 65464;

/// Block size in bytes, always within RFC 2348's `8..=65464`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockSize(u16);

impl BlockSize {
    pub const DEFAULT: BlockSize = BlockSize(DEFAULT_BLKSIZE);
    pub const MAX: BlockSize = BlockSize(MAX_BLKSIZE);

    /// `None` outside `8..=65464`.
    pub const fn new(v: u16) -> Option<Self> {
        if v >= MIN_BLKSIZE && v <= MAX_BLKSIZE {
            Some(BlockSize(v))
        } else {
            None
        }
    }

    /// Clamp any value into range.
    pub fn clamped(v: u64) -> Self {
        BlockSize(v.clamp(MIN_BLKSIZE as u64, MAX_BLKSIZE as u64) as u16)
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    pub const fn bytes(self) -> usize {
        self.0 as usize
    }
}

/// RFC 7440 window size in blocks, `1..=65535`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WindowSize(u16);

impl WindowSize {
    pub const ONE: WindowSize = WindowSize(1);

    pub const fn new(v: u16) -> Option<Self> {
        if v >= 1 {
            Some(WindowSize(v))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }
}

/// Options of an RRQ as typed values. Unknown options are counted and otherwise ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// RFC 2348 `blksize` as requested (values above 65464 are clamped to it; below 8 ignored).
    pub blksize: Option<BlockSize>,
    /// RFC 2349 `timeout`, 1..=255 s.
    pub timeout: Option<Duration>,
    /// RFC 2349 `tsize` was present (its value in an RRQ is 0 and is not used).
    pub tsize: bool,
    /// RFC 7440 `windowsize`.
    pub windowsize: Option<WindowSize>,
    /// RFC 2090 `multicast` was present.
    pub multicast: bool,
    /// Options not recognised (ignored).
    pub unknown: u16,
    /// Recognised options with unusable values (ignored).
    pub invalid: u16,
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |a, &d| a * 10 + (d - b'0') as u64))
}

impl RequestOptions {
    pub fn parse(list: &OptionList<'_>) -> Self {
        let mut o = RequestOptions::default();
        for (name, value) in list.iter() {
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("blksize") {
                match parse_u64(value) {
                    Some(v) if v >= MIN_BLKSIZE as u64 && o.blksize.is_none() => {
                        o.blksize = Some(BlockSize::clamped(v))
                    }
                    _ => o.invalid += 1,
                }
            } else if is("timeout") {
                match parse_u64(value) {
                    Some(v @ 1..=255) if o.timeout.is_none() => {
                        o.timeout = Some(Duration::from_secs(v))
                    }
                    _ => o.invalid += 1,
                }
            } else if is("tsize") {
                o.tsize = true;
            } else if is("windowsize") {
                match parse_u64(value) {
                    Some(v @ 1..=65535) if o.windowsize.is_none() => {
                        o.windowsize = WindowSize::new(v as u16)
                    }
                    _ => o.invalid += 1,
                }
            } else if is("multicast") {
                o.multicast = true;
            } else {
                o.unknown += 1;
            }
        }
        o
    }
}

/// Server limits that bound negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted.
    pub max_blksize: BlockSize,
    /// Largest window granted.
    pub max_window: WindowSize,
    /// Largest number of payload bytes in one window (blocks x blksize); windows are reduced to fit.
    pub max_window_bytes: usize,
    /// Server retransmission timeout ceiling when the client names none.
    pub timeout: Duration,
    /// Retransmissions of one window before the transfer is abandoned.
    pub retries: u32,
    /// Allow blocks larger than the path MTU (IP fragmentation).
    pub allow_fragmentation: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: BlockSize::MAX,
            max_window: WindowSize(64),
            max_window_bytes: 128 * 1024,
            timeout: Duration::from_secs(3),
            retries: 6,
            allow_fragmentation: false,
        }
    }
}

/// IP version of the path, for the MTU arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// Largest block that fits one unfragmented datagram on a link of `mtu` bytes.
pub fn blksize_for_mtu(mtu: u32, ip: IpVersion) -> BlockSize {
    let ip_hdr = match ip {
        IpVersion::V4 => 20,
        IpVersion::V6 => 40,
    };
    BlockSize::clamped((mtu as u64).saturating_sub(ip_hdr + 8 + 4))
}

/// The outcome of negotiation: what the transfer uses and what the OACK says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: BlockSize,
    pub windowsize: WindowSize,
    /// The client's RFC 2349 timeout, if it sent one (echoed in the OACK, bounds the retransmit timer).
    pub timeout: Option<Duration>,
    /// Transfer size to report, when the client asked.
    pub tsize: Option<u64>,
    ack_blksize: bool,
    ack_windowsize: bool,
}

impl Negotiated {
    /// True when an OACK must be sent (at least one option acknowledged).
    pub fn needs_oack(&self) -> bool {
        self.ack_blksize || self.ack_windowsize || self.timeout.is_some() || self.tsize.is_some()
    }

    /// Plain RFC 1350 parameters: 512-byte blocks, lockstep, no OACK.
    pub fn plain() -> Self {
        Negotiated {
            blksize: BlockSize::DEFAULT,
            windowsize: WindowSize::ONE,
            timeout: None,
            tsize: None,
            ack_blksize: false,
            ack_windowsize: false,
        }
    }

    /// Write the OACK into `buf`; 0 when none is needed.
    pub fn emit_oack(&self, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
        if !self.needs_oack() {
            return Ok(0);
        }
        let mut w = OptionWriter::oack(buf)?;
        if self.ack_blksize {
            w.option_u64("blksize", self.blksize.get() as u64)?;
        }
        if let Some(t) = self.timeout {
            w.option_u64("timeout", t.as_secs())?;
        }
        if let Some(t) = self.tsize {
            w.option_u64("tsize", t)?;
        }
        if self.ack_windowsize {
            w.option_u64("windowsize", self.windowsize.get() as u64)?;
        }
        Ok(w.finish())
    }
}

/// The smallest window the path policy grants (a client asking less gets what it asked): the
/// pacer serves windows of 4 blocks from hundreds of flows without steady resends
/// (docs/benchmarks.md), and fewer blocks per round trip would cap a lone flow's rate.
pub const MIN_PATH_WINDOW: WindowSize = WindowSize(4);

impl Negotiated {
    /// Reduce a negotiated window to what the path holds: `path_bytes` of frames (headers
    /// included, as [`crate::proto::cc::wire_bytes`] counts), never below [`MIN_PATH_WINDOW`]
    /// nor above what was negotiated. A window the client did not ask stays 1.
    pub fn cap_window_to_path(&mut self, path_bytes: u64, ipv6: bool) {
        if !self.ack_windowsize {
            return;
        }
        let frame = crate::proto::cc::wire_bytes(self.blksize.bytes() + 4, ipv6);
        let fits = (path_bytes / frame.max(1)).min(u64::from(u16::MAX)) as u16;
        let w = fits.max(MIN_PATH_WINDOW.get()).min(self.windowsize.get());
        self.windowsize = WindowSize(w.max(1));
    }
}

/// Negotiate a read transfer.
///
/// `mtu_blksize` is the largest block that fits the MTU of the interface the request came in on
/// (see [`blksize_for_mtu`]), or `None` when unknown. `file_len` is the length that will be sent.
pub fn negotiate(
    req: &RequestOptions,
    limits: &Limits,
    mtu_blksize: Option<BlockSize>,
    file_len: u64,
) -> Negotiated {
    let mut n = Negotiated::plain();
    if let Some(want) = req.blksize {
        let mut b = want.min(limits.max_blksize);
        if !limits.allow_fragmentation {
            if let Some(m) = mtu_blksize {
                b = b.min(m);
            }
        }
        n.blksize = b;
        n.ack_blksize = true;
    }
    if let Some(want) = req.windowsize {
        let by_bytes = (limits.max_window_bytes / n.blksize.bytes()).clamp(1, 65535) as u16;
        n.windowsize = WindowSize(want.get().min(limits.max_window.get()).min(by_bytes).max(1));
        n.ack_windowsize = true;
    }
    n.timeout = req.timeout;
    if req.tsize {
        n.tsize = Some(file_len);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tftp::packet::Packet;

    fn opts(raw: &[u8]) -> RequestOptions {
        RequestOptions::parse(&OptionList::new_checked(raw).unwrap())
    }

    #[test]
    fn parses_and_ignores() {
        let o = opts(
            b"BlkSize\x001468\x00tsize\x000\x00foo\x00bar\x00windowsize\x000\x00timeout\x00300\x00",
        );
        assert_eq!(o.blksize, BlockSize::new(1468));
        assert!(o.tsize);
        assert_eq!(o.windowsize, None);
        assert_eq!(o.timeout, None);
        assert_eq!(o.unknown, 1);
        assert_eq!(o.invalid, 2);
        let o = opts(b"blksize\x00100000\x00blksize\x00512\x00");
        assert_eq!(o.blksize, Some(BlockSize::MAX));
        assert_eq!(o.invalid, 1);
        let o = opts(b"blksize\x004\x00");
        assert_eq!(o.blksize, None);
    }

    #[test]
    fn never_grants_more_than_asked() {
        let o = opts(b"blksize\x001468\x00windowsize\x004\x00tsize\x000\x00");
        let n = negotiate(&o, &Limits::default(), None, 1234);
        assert_eq!(n.blksize.get(), 1468);
        assert_eq!(n.windowsize.get(), 4);
        assert_eq!(n.tsize, Some(1234));
        let mut buf = [0u8; 128];
        let len = n.emit_oack(&mut buf).unwrap();
        assert_eq!(
            &buf[..len],
            b"\x00\x06blksize\x001468\x00tsize\x001234\x00windowsize\x004\x00"
        );
        assert!(matches!(Packet::parse(&buf[..len]), Ok(Packet::Oack(_))));
    }

    #[test]
    fn clamps_to_mtu_and_limits() {
        let o = opts(b"blksize\x0065464\x00windowsize\x0064\x00");
        let mtu = blksize_for_mtu(1500, IpVersion::V4);
        assert_eq!(mtu.get(), 1468);
        assert_eq!(blksize_for_mtu(1500, IpVersion::V6).get(), 1448);
        let n = negotiate(&o, &Limits::default(), Some(mtu), 0);
        assert_eq!(n.blksize.get(), 1468);
        assert_eq!(n.windowsize.get(), 64);
        let frag = Limits {
            allow_fragmentation: true,
            ..Limits::default()
        };
        let n = negotiate(&o, &frag, Some(mtu), 0);
        assert_eq!(n.blksize.get(), 65464);
        // 128 KiB cap: two 65464-byte blocks per window.
        assert_eq!(n.windowsize.get(), 2);
    }

    #[test]
    fn plain_request_needs_no_oack() {
        let n = negotiate(&opts(b"foo\x001\x00"), &Limits::default(), None, 10);
        assert!(!n.needs_oack());
        assert_eq!(n, Negotiated::plain());
        let mut buf = [0u8; 16];
        assert_eq!(n.emit_oack(&mut buf), Ok(0));
    }

    #[test]
    fn timeout_is_echoed() {
        let n = negotiate(&opts(b"timeout\x004\x00"), &Limits::default(), None, 10);
        let mut buf = [0u8; 32];
        let len = n.emit_oack(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"\x00\x06timeout\x004\x00");
    }
}
