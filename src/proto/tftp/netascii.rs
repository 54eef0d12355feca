//! netascii (RFC 1350 §1, RFC 764): the text mode's line-end translation, as pure functions.
//!
//! Contract: the sender's encoding turns LF into CR LF, keeps a CR LF already in the file as CR LF,
//! and turns any other CR into CR NUL. [`encode_step`] does it incrementally, block by block, with
//! the whole state in an [`EncodePos`] (source offset + a byte owed from an expansion cut by a
//! block boundary): a server converts a file of any size from a bounded buffer, and can restart
//! the encoding at any block whose starting position it kept. [`to_netascii`] converts a whole
//! buffer (tests, small inputs). [`from_netascii`] is the receiver's streaming decoder: CR LF
//! becomes LF, CR NUL becomes CR, and a CR that ends one block is carried to the next in
//! `pending_cr`; at the end of the transfer call [`finish_netascii`]. A CR followed by anything
//! else (not allowed on the wire) is passed through unchanged.

const CR: u8 = b'\r';
const LF: u8 = b'\n';
const NUL: u8 = 0;

/// Where the netascii encoding of a source stands between two calls of [`encode_step`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodePos {
    /// Offset in the source of the next byte to read.
    pub src: u64,
    /// The second byte of an expansion (the LF of CR LF, the NUL of CR NUL) not written yet
    /// because the output ended between the two.
    pub owed: Option<u8>,
}

impl EncodePos {
    /// The start of a source.
    pub const START: EncodePos = EncodePos { src: 0, owed: None };
}

/// Encodes source bytes into `out` until `out` is full or `input` is used up; returns the bytes
/// written and advances `pos`.
///
/// `input` holds the source from offset `pos.src` on; `at_eof` says it reaches the end of the
/// source. A CR that is the last byte of a non-final `input` is left unread (the byte after it
/// decides its encoding), so give at least two bytes unless at the end. The output ends early only
/// when the input is used up: with `at_eof`, a return below `out.len()` (and no byte owed) means
/// the encoding is complete.
pub fn encode_step(pos: &mut EncodePos, input: &[u8], at_eof: bool, out: &mut [u8]) -> usize {
    let mut w = 0;
    let mut i = 0;
    while w < out.len() {
        if let Some(b) = pos.owed.take() {
            out[w] = b;
            w += 1;
            continue;
        }
        let rest = &input[i..];
        // Copy the run of bytes that need no translation in one go.
        let run = rest
            .iter()
            .position(|&b| b == CR || b == LF)
            .unwrap_or(rest.len())
            .min(out.len() - w);
        if run > 0 {
            out[w..w + run].copy_from_slice(&rest[..run]);
            w += run;
            i += run;
            continue;
        }
        let Some(&b) = rest.first() else {
            break;
        };
        let (consumed, second) = match (b, rest.get(1)) {
            (LF, _) => (1, LF),
            (_, Some(&LF)) => (2, LF),
            (_, Some(_)) => (1, NUL),
            (_, None) if at_eof => (1, NUL),
            // A CR at the end of this input: its successor is not known yet.
            (_, None) => break,
        };
        out[w] = CR;
        w += 1;
        i += consumed;
        pos.owed = Some(second);
    }
    pos.src += i as u64;
    w
}

/// Appends the netascii form of `input` (a complete file) to `out`.
pub fn to_netascii(input: &[u8], out: &mut Vec<u8>) {
    let mut pos = EncodePos::START;
    let mut buf = [0u8; 4096];
    loop {
        let rest = &input[pos.src as usize..];
        let n = encode_step(&mut pos, rest, true, &mut buf);
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() && pos.owed.is_none() {
            return;
        }
    }
}

/// Appends the local form of one received block of netascii to `out`.
///
/// `pending_cr` carries a CR that ended the previous block; start a transfer with `false`.
pub fn from_netascii(input: &[u8], out: &mut Vec<u8>, pending_cr: &mut bool) {
    out.reserve(input.len());
    for &b in input {
        if *pending_cr {
            *pending_cr = false;
            match b {
                LF => out.push(LF),
                NUL => out.push(CR),
                CR => {
                    out.push(CR);
                    *pending_cr = true;
                }
                other => out.extend_from_slice(&[CR, other]),
            }
        } else if b == CR {
            *pending_cr = true;
        } else {
            out.push(b);
        }
    }
}

/// Ends a decode started with [`from_netascii`]: a lone CR at the very end is kept as CR.
pub fn finish_netascii(out: &mut Vec<u8>, pending_cr: &mut bool) {
    if std::mem::take(pending_cr) {
        out.push(CR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        to_netascii(input, &mut out);
        out
    }

    fn dec_chunks(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cr = false;
        for c in input.chunks(chunk.max(1)) {
            from_netascii(c, &mut out, &mut cr);
        }
        finish_netascii(&mut out, &mut cr);
        out
    }

    /// What a round trip yields: a CR LF pair in the source comes back as LF.
    fn normalise(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            if input[i] == CR && input.get(i + 1) == Some(&LF) {
                i += 1;
            }
            out.push(input[i]);
            i += 1;
        }
        out
    }

    #[test]
    fn encodes_line_ends() {
        assert_eq!(enc(b"a\nb"), b"a\r\nb");
        assert_eq!(enc(b"a\r\nb"), b"a\r\nb");
        assert_eq!(enc(b"a\rb"), b"a\r\0b");
        assert_eq!(enc(b"\r"), b"\r\0");
        assert_eq!(enc(b"\r\r\n\n"), b"\r\0\r\n\r\n");
        assert_eq!(enc(b""), b"");
        assert_eq!(enc(b"\0plain"), b"\0plain");
    }

    #[test]
    fn decodes_line_ends() {
        assert_eq!(dec_chunks(b"a\r\nb\r\0c", 100), b"a\nb\rc");
        assert_eq!(dec_chunks(b"a\r\nb\r\0c", 1), b"a\nb\rc");
        assert_eq!(dec_chunks(b"x\r", 1), b"x\r");
        assert_eq!(dec_chunks(b"\r\r\n", 2), b"\r\n");
        // Not valid netascii, passed through.
        assert_eq!(dec_chunks(b"\rz", 1), b"\rz");
    }

    #[test]
    fn pending_cr_crosses_a_block_boundary() {
        let mut out = Vec::new();
        let mut cr = false;
        from_netascii(b"ab\r", &mut out, &mut cr);
        assert!(cr);
        assert_eq!(out, b"ab");
        from_netascii(b"\ncd", &mut out, &mut cr);
        assert!(!cr);
        assert_eq!(out, b"ab\ncd");
    }

    /// Bytes weighted towards the ones the conversion cares about.
    fn text() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(CR), Just(LF), Just(NUL), any::<u8>()],
            0..300,
        )
    }

    /// The reference encoding, byte by byte, as the server always did it.
    fn reference(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                LF => out.extend_from_slice(&[CR, LF]),
                CR if input.get(i + 1) == Some(&LF) => {
                    out.extend_from_slice(&[CR, LF]);
                    i += 1;
                }
                CR => out.extend_from_slice(&[CR, NUL]),
                b => out.push(b),
            }
            i += 1;
        }
        out
    }

    /// Encode `input` in output blocks of `block` bytes from input chunks of `chunk` bytes (at
    /// least 2, as the contract asks), restarting each block from its kept position.
    fn enc_blocks(input: &[u8], block: usize, chunk: usize) -> Vec<Vec<u8>> {
        let mut blocks = Vec::new();
        let mut pos = EncodePos::START;
        loop {
            let mut out = vec![0u8; block];
            let mut w = 0;
            loop {
                let from = pos.src as usize;
                let to = (from + chunk).min(input.len());
                let at_eof = to == input.len();
                let n = encode_step(&mut pos, &input[from..to], at_eof, &mut out[w..]);
                w += n;
                if w == block || (at_eof && pos.src as usize == input.len() && pos.owed.is_none()) {
                    break;
                }
            }
            out.truncate(w);
            let last = w < block;
            blocks.push(out);
            if last {
                return blocks;
            }
        }
    }

    #[test]
    fn cr_at_a_block_boundary_and_owed_bytes() {
        // "a\r\n" in 2-byte blocks: "a\r", then the owed "\n" in the short last block.
        assert_eq!(enc_blocks(b"a\r\n", 2, 2), [&b"a\r"[..], b"\n"]);
        assert_eq!(enc_blocks(b"ab\r\n", 2, 2), [&b"ab"[..], b"\r\n", b""]);
        assert_eq!(enc_blocks(b"a\n", 2, 2), [&b"a\r"[..], b"\n"]);
        assert_eq!(enc_blocks(b"a\r", 2, 2), [&b"a\r"[..], b"\0"]);
        // A CR that ends an input chunk waits for the next byte.
        let mut pos = EncodePos::START;
        let mut out = [0u8; 8];
        assert_eq!(encode_step(&mut pos, b"ab\r", false, &mut out), 2);
        assert_eq!(pos, EncodePos { src: 2, owed: None });
        assert_eq!(encode_step(&mut pos, b"\r\nc", true, &mut out), 3);
        assert_eq!(&out[..3], b"\r\nc");
        assert_eq!(pos.src, 5);
    }

    #[test]
    fn exact_multiple_ends_with_an_empty_block() {
        // 2 lines of "abc\n" = 10 encoded bytes in blocks of 5: two full blocks and an empty one.
        assert_eq!(
            enc_blocks(b"abc\nabc\n", 5, 3),
            [&b"abc\r\n"[..], b"abc\r\n", b""]
        );
        assert_eq!(enc_blocks(b"", 5, 3), [&b""[..]]);
    }

    proptest! {
        #[test]
        fn blockwise_encoding_equals_whole_encoding(
            data in text(),
            block in 1usize..20,
            chunk in 2usize..30,
        ) {
            let blocks = enc_blocks(&data, block, chunk);
            let whole = reference(&data);
            prop_assert_eq!(blocks.concat(), whole.clone());
            prop_assert_eq!(enc(&data), whole.clone());
            // Every block but the last is full; the last is short (possibly empty).
            for b in &blocks[..blocks.len() - 1] {
                prop_assert_eq!(b.len(), block);
            }
            prop_assert!(blocks.last().unwrap().len() < block);
            prop_assert_eq!(blocks.len(), whole.len() / block + 1);
        }

        #[test]
        fn round_trip(data in text(), chunk in 1usize..40) {
            let wire = enc(&data);
            prop_assert_eq!(dec_chunks(&wire, chunk), normalise(&data));
        }

        #[test]
        fn output_is_valid_netascii(data in text()) {
            let wire = enc(&data);
            for (i, &b) in wire.iter().enumerate() {
                if b == LF {
                    prop_assert!(i > 0 && wire[i - 1] == CR, "bare LF at {}", i);
                }
                if b == CR {
                    let next = wire.get(i + 1);
                    prop_assert!(matches!(next, Some(&LF) | Some(&NUL)), "bare CR at {}", i);
                }
            }
        }

        #[test]
        fn text_without_cr_round_trips_exactly(data in text(), chunk in 1usize..40) {
            let data: Vec<u8> = data.into_iter().filter(|&b| b != CR).collect();
            prop_assert_eq!(dec_chunks(&enc(&data), chunk), data);
        }
    }
}
