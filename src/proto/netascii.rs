//! netascii (RFC 1350 §1, RFC 764): the text mode's line-end translation, as pure functions.
//!
//! Contract: [`to_netascii`] converts a whole local file for sending: LF becomes CR LF, a CR LF
//! already in the file stays CR LF, and any other CR becomes CR NUL. [`from_netascii`] is the
//! receiver's streaming decoder: CR LF becomes LF, CR NUL becomes CR, and a CR that ends one block
//! is carried to the next in `pending_cr`; at the end of the transfer call [`finish_netascii`].
//! A CR followed by anything else (not allowed on the wire) is passed through unchanged.

const CR: u8 = b'\r';
const LF: u8 = b'\n';
const NUL: u8 = 0;

/// Appends the netascii form of `input` (a complete file) to `out`.
pub fn to_netascii(input: &[u8], out: &mut Vec<u8>) {
    out.reserve(input.len() + input.len() / 16);
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

    proptest! {
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
