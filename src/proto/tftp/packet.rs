//! TFTP wire format (RFC 1350 §5, RFC 2347 OACK): parse borrowed views, emit into caller buffers.
//!
//! Contract:
//! - [`Packet::parse`] never panics and never allocates: every accessor of the returned value borrows
//!   from the input buffer and is already bounds-checked. Any malformed input is a [`ParseError`] that
//!   says what was wrong, which the caller turns into the right TFTP ERROR (usually code 4).
//! - The `emit_*` functions write into a caller-owned buffer and return the length written; they never
//!   allocate, so a transfer can build every packet it sends in a fixed per-transfer buffer.
//! - DATA payloads are never copied: a sender writes the 4-byte [`data_header`] and hands the payload
//!   (a slice of the memory map) to the kernel beside it.
//! - Wire enums keep unknown values ([`ErrorCode::Unknown`]) instead of failing.

use super::block::BlockNum;
use std::fmt;

/// Largest TFTP packet: 4-byte header plus the largest RFC 2348 block.
pub const MAX_PACKET: usize = 4 + 65464;
/// RFC 1350 block size.
pub const DEFAULT_BLKSIZE: u16 = 512;

/// TFTP opcodes (RFC 1350 §5, RFC 2347).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Opcode {
    Rrq = 1,
    Wrq = 2,
    Data = 3,
    Ack = 4,
    Error = 5,
    Oack = 6,
}

/// TFTP error codes (RFC 1350 appendix, RFC 2347 code 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: not defined, see message. Also what PXE ROMs send to abort after a tsize probe.
    NotDefined,
    /// 1
    FileNotFound,
    /// 2
    AccessViolation,
    /// 3
    DiskFull,
    /// 4
    IllegalOperation,
    /// 5
    UnknownTid,
    /// 6
    FileExists,
    /// 7
    NoSuchUser,
    /// 8: option negotiation refused (RFC 2347). What EDK2 sends to end its size probe.
    OptionNegotiation,
    /// Anything else a peer sent.
    Unknown(u16),
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => Self::NotDefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTid,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionNegotiation,
            n => Self::Unknown(n),
        }
    }

    pub fn as_u16(self) -> u16 {
        match self {
            Self::NotDefined => 0,
            Self::FileNotFound => 1,
            Self::AccessViolation => 2,
            Self::DiskFull => 3,
            Self::IllegalOperation => 4,
            Self::UnknownTid => 5,
            Self::FileExists => 6,
            Self::NoSuchUser => 7,
            Self::OptionNegotiation => 8,
            Self::Unknown(n) => n,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::NotDefined => "not defined",
            Self::FileNotFound => "file not found",
            Self::AccessViolation => "access violation",
            Self::DiskFull => "disk full",
            Self::IllegalOperation => "illegal operation",
            Self::UnknownTid => "unknown transfer id",
            Self::FileExists => "file exists",
            Self::NoSuchUser => "no such user",
            Self::OptionNegotiation => "option negotiation refused",
            Self::Unknown(_) => "unknown",
        };
        write!(f, "{} ({})", self.as_u16(), name)
    }
}

/// Transfer mode (RFC 1350 §1). Compared case-insensitively on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Text with CR LF line ends and CR NUL for a bare CR.
    Netascii,
    /// Raw bytes.
    Octet,
    /// Obsolete mail mode; parsed so it can be refused with a clear error.
    Mail,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
            Mode::Mail => "mail",
        }
    }
}

/// Why a datagram is not a valid TFTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet shorter than its header ({0} bytes)")]
    TooShort(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("request has no NUL-terminated filename")]
    MissingFilename,
    #[error("request has no NUL-terminated mode")]
    MissingMode,
    #[error("unknown transfer mode")]
    UnknownMode,
    #[error("option name without a NUL-terminated value")]
    TruncatedOption,
    #[error("ERROR packet message is not NUL-terminated")]
    UnterminatedMessage,
}

/// The options of an RRQ, WRQ or OACK as `(name, value)` byte pairs, in wire order, borrowed.
///
/// Validity (every name has a NUL-terminated value) is checked at parse time, so iterating never fails.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OptionList<'a> {
    raw: &'a [u8],
}

impl<'a> OptionList<'a> {
    /// Check that `raw` is a sequence of NUL-terminated name/value pairs.
    /// Some clients pad requests with NULs: a tail of only NUL bytes where a name would start ends
    /// the list.
    pub fn new_checked(raw: &'a [u8]) -> Result<Self, ParseError> {
        let mut rest = raw;
        while !rest.is_empty() {
            if rest.iter().all(|&b| b == 0) {
                let end = raw.len() - rest.len();
                return Ok(OptionList { raw: &raw[..end] });
            }
            let (_, r) = split_nul(rest).ok_or(ParseError::TruncatedOption)?;
            let (_, r) = split_nul(r).ok_or(ParseError::TruncatedOption)?;
            rest = r;
        }
        Ok(OptionList { raw })
    }

    pub fn empty() -> Self {
        OptionList { raw: &[] }
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    pub fn iter(&self) -> OptionIter<'a> {
        OptionIter { rest: self.raw }
    }

    /// Value of option `name` (ASCII case-insensitive), the first one if repeated.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

impl fmt::Debug for OptionList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

/// Iterator over `(name, value)` pairs of an [`OptionList`].
pub struct OptionIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let (name, r) = split_nul(self.rest)?;
        let (value, r) = split_nul(r)?;
        self.rest = r;
        Some((name, value))
    }
}

/// A read or write request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The filename exactly as sent (not yet validated as a path).
    pub filename: &'a [u8],
    pub mode: Mode,
    pub options: OptionList<'a>,
}

/// A parsed TFTP packet borrowing from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data {
        block: BlockNum,
        data: &'a [u8],
    },
    /// An ACK. Bytes after the block number (Microsoft's variable-window clients put the next
    /// window size there) are ignored.
    Ack {
        block: BlockNum,
    },
    Error {
        code: ErrorCode,
        message: &'a [u8],
    },
    Oack(OptionList<'a>),
}

fn split_nul(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == 0)?;
    Some((&b[..i], &b[i + 1..]))
}

fn parse_mode(m: &[u8]) -> Result<Mode, ParseError> {
    if m.eq_ignore_ascii_case(b"octet") {
        Ok(Mode::Octet)
    } else if m.eq_ignore_ascii_case(b"netascii") {
        Ok(Mode::Netascii)
    } else if m.eq_ignore_ascii_case(b"mail") {
        Ok(Mode::Mail)
    } else {
        Err(ParseError::UnknownMode)
    }
}

fn parse_request(body: &[u8]) -> Result<Request<'_>, ParseError> {
    let (filename, rest) = split_nul(body).ok_or(ParseError::MissingFilename)?;
    let (mode, rest) = split_nul(rest).ok_or(ParseError::MissingMode)?;
    let mode = parse_mode(mode)?;
    let options = OptionList::new_checked(rest)?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

impl<'a> Packet<'a> {
    /// Parse one datagram. Never panics.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < 2 {
            return Err(ParseError::TooShort(buf.len()));
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        let body = &buf[2..];
        match op {
            1 => Ok(Packet::Rrq(parse_request(body)?)),
            2 => Ok(Packet::Wrq(parse_request(body)?)),
            3..=5 if body.len() < 2 => Err(ParseError::TooShort(buf.len())),
            3 => Ok(Packet::Data {
                block: BlockNum(u16::from_be_bytes([body[0], body[1]])),
                data: &body[2..],
            }),
            4 => Ok(Packet::Ack {
                block: BlockNum(u16::from_be_bytes([body[0], body[1]])),
            }),
            5 => {
                let code = ErrorCode::from_u16(u16::from_be_bytes([body[0], body[1]]));
                // Be liberal: a missing terminator still yields the message bytes.
                let msg = &body[2..];
                let message = match split_nul(msg) {
                    Some((m, _)) => m,
                    None => msg,
                };
                Ok(Packet::Error { code, message })
            }
            6 => Ok(Packet::Oack(OptionList::new_checked(body)?)),
            n => Err(ParseError::UnknownOpcode(n)),
        }
    }

    pub fn opcode(&self) -> Opcode {
        match self {
            Packet::Rrq(_) => Opcode::Rrq,
            Packet::Wrq(_) => Opcode::Wrq,
            Packet::Data { .. } => Opcode::Data,
            Packet::Ack { .. } => Opcode::Ack,
            Packet::Error { .. } => Opcode::Error,
            Packet::Oack(_) => Opcode::Oack,
        }
    }
}

/// The 4-byte header of a DATA packet.
#[inline]
pub fn data_header(block: BlockNum) -> [u8; 4] {
    let b = block.0.to_be_bytes();
    [0, Opcode::Data as u8, b[0], b[1]]
}

/// Write an ACK; returns 4. `buf` must hold 4 bytes.
pub fn emit_ack(buf: &mut [u8], block: BlockNum) -> usize {
    let b = block.0.to_be_bytes();
    buf[..4].copy_from_slice(&[0, Opcode::Ack as u8, b[0], b[1]]);
    4
}

/// Write an ERROR packet, truncating the message to fit `buf`; returns the length.
/// `buf` must hold at least 5 bytes.
pub fn emit_error(buf: &mut [u8], code: ErrorCode, message: &str) -> usize {
    let c = code.as_u16().to_be_bytes();
    buf[..4].copy_from_slice(&[0, Opcode::Error as u8, c[0], c[1]]);
    let room = buf.len() - 5;
    let msg = message.as_bytes();
    let mut n = msg.len().min(room);
    // Keep the message free of NULs and cut on a char boundary.
    while n > 0 && !message.is_char_boundary(n) {
        n -= 1;
    }
    for (d, &s) in buf[4..4 + n].iter_mut().zip(&msg[..n]) {
        *d = if s == 0 { b' ' } else { s };
    }
    buf[4 + n] = 0;
    5 + n
}

/// [`emit_error`] with a formatted message (`format_args!`), written straight into `buf`
/// without allocating: cut to fit on a char boundary, NULs turned into spaces.
pub fn emit_error_fmt(buf: &mut [u8], code: ErrorCode, message: fmt::Arguments<'_>) -> usize {
    struct Cut<'b> {
        buf: &'b mut [u8],
        len: usize,
    }
    impl fmt::Write for Cut<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                let c = if c == '\0' { ' ' } else { c };
                let n = c.len_utf8();
                if self.len + n > self.buf.len() {
                    return Err(fmt::Error);
                }
                c.encode_utf8(&mut self.buf[self.len..]);
                self.len += n;
            }
            Ok(())
        }
    }
    let c = code.as_u16().to_be_bytes();
    buf[..4].copy_from_slice(&[0, Opcode::Error as u8, c[0], c[1]]);
    let end = buf.len() - 1;
    let mut w = Cut {
        buf: &mut buf[4..end],
        len: 0,
    };
    let _ = fmt::write(&mut w, message);
    let n = w.len;
    buf[4 + n] = 0;
    5 + n
}

/// Incremental writer for option lists (OACK from a server, RRQ from a client).
pub struct OptionWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

/// The buffer was too small for what was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("packet does not fit the buffer")]
pub struct BufferTooSmall;

impl<'b> OptionWriter<'b> {
    /// Start an OACK packet in `buf`.
    pub fn oack(buf: &'b mut [u8]) -> Result<Self, BufferTooSmall> {
        let mut w = OptionWriter { buf, len: 0 };
        w.put(&[0, Opcode::Oack as u8])?;
        Ok(w)
    }

    /// Start an RRQ (or WRQ when `write`) for `filename` in `mode`.
    pub fn request(
        buf: &'b mut [u8],
        write: bool,
        filename: &[u8],
        mode: Mode,
    ) -> Result<Self, BufferTooSmall> {
        let mut w = OptionWriter { buf, len: 0 };
        let op = if write { Opcode::Wrq } else { Opcode::Rrq };
        w.put(&[0, op as u8])?;
        w.put(filename)?;
        w.put(&[0])?;
        w.put(mode.as_str().as_bytes())?;
        w.put(&[0])?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), BufferTooSmall> {
        let end = self.len + b.len();
        if end > self.buf.len() {
            return Err(BufferTooSmall);
        }
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    /// Append an option with a byte-string value.
    pub fn option(&mut self, name: &str, value: &[u8]) -> Result<(), BufferTooSmall> {
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.put(value)?;
        self.put(&[0])
    }

    /// Append an option with a decimal value, formatted without allocating.
    pub fn option_u64(&mut self, name: &str, value: u64) -> Result<(), BufferTooSmall> {
        self.option(name, Decimal::new(value).as_bytes())
    }

    /// Bytes written so far.
    pub fn finish(self) -> usize {
        self.len
    }
}

/// A number's decimal digits, formatted on the stack (option values, `/proc/self/fd/N`).
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn new(value: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut v = value;
        loop {
            start -= 1;
            digits[start] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_edk2_probe() {
        let pkt =
            b"\x00\x01\\Boot\\BCD\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00";
        let Packet::Rrq(r) = Packet::parse(pkt).unwrap() else {
            panic!()
        };
        assert_eq!(r.filename, b"\\Boot\\BCD");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options.get("BLKSIZE"), Some(&b"1468"[..]));
        assert_eq!(r.options.get("windowsize"), Some(&b"4"[..]));
        assert_eq!(r.options.iter().count(), 3);
    }

    #[test]
    fn mode_case_and_padding() {
        let pkt = b"\x00\x01a\x00NetASCII\x00\x00\x00";
        let Packet::Rrq(r) = Packet::parse(pkt).unwrap() else {
            panic!()
        };
        assert_eq!(r.mode, Mode::Netascii);
        assert!(r.options.is_empty());
    }

    #[test]
    fn decimals_fit_every_u64() {
        for v in [0, 7, 10, 1468, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(Decimal::new(v).as_bytes(), v.to_string().as_bytes());
        }
    }

    #[test]
    fn malformed() {
        let cases: [(&[u8], ParseError); 9] = [
            (b"", ParseError::TooShort(0)),
            (b"\x00", ParseError::TooShort(1)),
            (b"\x00\x09", ParseError::UnknownOpcode(9)),
            (b"\x00\x01abc", ParseError::MissingFilename),
            (b"\x00\x01a\x00oct", ParseError::MissingMode),
            (b"\x00\x01a\x00binary\x00", ParseError::UnknownMode),
            (
                b"\x00\x01a\x00octet\x00blksize\x00",
                ParseError::TruncatedOption,
            ),
            (
                b"\x00\x01a\x00octet\x00blksize\x00512",
                ParseError::TruncatedOption,
            ),
            (b"\x00\x04\x00", ParseError::TooShort(3)),
        ];
        for (raw, want) in cases {
            assert_eq!(Packet::parse(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn empty_value_and_padding() {
        let pkt = b"\x00\x01f\x00octet\x00multicast\x00\x00\x00\x00";
        let Packet::Rrq(r) = Packet::parse(pkt).unwrap() else {
            panic!()
        };
        assert_eq!(r.options.get("multicast"), Some(&b""[..]));
        assert_eq!(r.options.iter().count(), 1);
    }

    #[test]
    fn formatted_error_is_cut_to_fit_without_allocating() {
        let mut buf = [0u8; 16];
        let n = emit_error_fmt(
            &mut buf,
            ErrorCode::FileNotFound,
            format_args!("{}:{}", "no", 7),
        );
        assert_eq!(&buf[..n], b"\x00\x05\x00\x01no:7\x00");
        let n = emit_error_fmt(
            &mut buf,
            ErrorCode::NotDefined,
            format_args!("{}", "éééééééé\0"),
        );
        assert_eq!(
            n,
            4 + 10 + 1,
            "five 2-byte chars fit in 11 bytes, the sixth does not"
        );
        assert!(matches!(Packet::parse(&buf[..n]), Ok(Packet::Error { .. })));
        let n = emit_error_fmt(&mut buf, ErrorCode::NotDefined, format_args!("a\0b"));
        assert_eq!(&buf[4..n], b"a b\x00");
    }

    #[test]
    fn ack_error_data() {
        assert_eq!(
            Packet::parse(b"\x00\x04\xff\xff").unwrap(),
            Packet::Ack {
                block: BlockNum(65535),
            }
        );
        assert_eq!(
            Packet::parse(b"\x00\x05\x00\x08\x00").unwrap(),
            Packet::Error {
                code: ErrorCode::OptionNegotiation,
                message: b""
            }
        );
        assert_eq!(
            Packet::parse(b"\x00\x05\x00\x00TFTP Aborted").unwrap(),
            Packet::Error {
                code: ErrorCode::NotDefined,
                message: b"TFTP Aborted"
            }
        );
        assert_eq!(
            Packet::parse(b"\x00\x03\x00\x01").unwrap(),
            Packet::Data {
                block: BlockNum(1),
                data: b""
            }
        );
    }

    #[test]
    fn emit_error_truncates() {
        let mut buf = [0u8; 10];
        let n = emit_error(&mut buf, ErrorCode::FileNotFound, "no such file here");
        assert_eq!(n, 10);
        assert_eq!(&buf[..], b"\x00\x05\x00\x01no su\x00");
    }

    #[test]
    fn oack_writer() {
        let mut buf = [0u8; 64];
        let mut w = OptionWriter::oack(&mut buf).unwrap();
        w.option_u64("blksize", 1468).unwrap();
        w.option_u64("tsize", 0).unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], b"\x00\x06blksize\x001468\x00tsize\x000\x00");
        let Packet::Oack(o) = Packet::parse(&buf[..n]).unwrap() else {
            panic!()
        };
        assert_eq!(o.get("tsize"), Some(&b"0"[..]));
    }

    fn token() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..20)
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Packet::parse(&data);
        }

        #[test]
        fn request_round_trip(name in proptest::collection::vec(1u8..=255, 1..100),
                              opts in proptest::collection::vec(("[a-z]{1,12}", token()), 0..6),
                              netascii in any::<bool>()) {
            let mode = if netascii { Mode::Netascii } else { Mode::Octet };
            let mut buf = [0u8; 2048];
            let mut w = OptionWriter::request(&mut buf, false, &name, mode).unwrap();
            for (n, v) in &opts {
                w.option(n, v).unwrap();
            }
            let len = w.finish();
            let Packet::Rrq(r) = Packet::parse(&buf[..len]).unwrap() else { panic!() };
            prop_assert_eq!(r.filename, &name[..]);
            prop_assert_eq!(r.mode, mode);
            prop_assert_eq!(r.options.iter().count(), opts.len());
        }

        #[test]
        fn ack_round_trip(b in any::<u16>()) {
            let mut buf = [0u8; 4];
            emit_ack(&mut buf, BlockNum(b));
            prop_assert_eq!(Packet::parse(&buf).unwrap(), Packet::Ack { block: BlockNum(b) });
        }

        #[test]
        fn error_round_trip(code in any::<u16>(), msg in "[ -~]{0,100}") {
            let mut buf = [0u8; 128];
            let n = emit_error(&mut buf, ErrorCode::from_u16(code), &msg);
            let Packet::Error { code: c, message } = Packet::parse(&buf[..n]).unwrap() else { panic!() };
            prop_assert_eq!(c.as_u16(), code);
            prop_assert_eq!(message, msg.as_bytes());
        }
    }
}
