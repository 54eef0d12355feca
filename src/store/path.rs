//! Wire filename -> relative path below the root, or a refusal.
//!
//! Rules: one trailing 0xFF (old PXE ROMs) is dropped; NUL, control characters and invalid UTF-8
//! are refused; `/` and `\` both separate; leading, repeated and trailing separators and `.`
//! components collapse; `..` anywhere and a Windows drive prefix (`C:`) are refused, never
//! normalised away. The result holds only plain names: no separator, no `.`/`..`, none empty.

use super::LookupError;

/// A checked relative path: each component is a plain, non-empty name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelPath {
    components: Vec<String>,
}

impl RelPath {
    pub(crate) fn components(&self) -> &[String] {
        &self.components
    }

    /// The components joined with `/`.
    pub(crate) fn joined(&self) -> String {
        self.components.join("/")
    }
}

/// Decodes a filename exactly as it came off the wire.
pub(crate) fn decode(raw: &[u8]) -> Result<RelPath, LookupError> {
    let raw = match raw {
        [rest @ .., 0xFF] => rest,
        _ => raw,
    };
    if raw.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(LookupError::IllegalCharacter);
    }
    let text = std::str::from_utf8(raw).map_err(|_| LookupError::IllegalCharacter)?;
    let mut components = Vec::new();
    for part in text.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(LookupError::ParentDirectory),
            name => components.push(name.to_owned()),
        }
    }
    if let Some(first) = components.first() {
        let b = first.as_bytes();
        if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
            return Err(LookupError::DrivePrefix);
        }
    }
    if components.is_empty() {
        return Err(LookupError::EmptyName);
    }
    Ok(RelPath { components })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tftp::packet::ErrorCode;
    use proptest::prelude::*;

    fn ok(raw: &[u8]) -> String {
        decode(raw).unwrap().joined()
    }

    fn code(raw: &[u8]) -> ErrorCode {
        decode(raw).unwrap_err().error_code()
    }

    #[test]
    fn plain_names() {
        assert_eq!(ok(b"pxelinux.0"), "pxelinux.0");
        assert_eq!(ok(b"boot/x64/wdsnbp.com"), "boot/x64/wdsnbp.com");
        assert_eq!(ok("grub/ünïcode.cfg".as_bytes()), "grub/ünïcode.cfg");
        assert_eq!(ok(b"with space/a:b"), "with space/a:b");
    }

    #[test]
    fn separators_collapse() {
        assert_eq!(ok(b"\\Boot\\BCD"), "Boot/BCD");
        assert_eq!(ok(b"/boot//x64/./a.efi"), "boot/x64/a.efi");
        assert_eq!(ok(b"\\\\/./x\\/"), "x");
        assert_eq!(ok(b"./a"), "a");
    }

    #[test]
    fn trailing_ff_is_dropped_once() {
        assert_eq!(ok(b"pxelinux.0\xff"), "pxelinux.0");
        assert_eq!(code(b"pxelinux.0\xff\xff"), ErrorCode::AccessViolation);
        assert_eq!(code(b"pxe\xfflinux.0"), ErrorCode::AccessViolation);
    }

    #[test]
    fn illegal_characters() {
        for raw in [
            &b"a\0b"[..],
            b"a\nb",
            b"\x1bx",
            b"a\x7f",
            b"\tx",
            b"\x80abc",
            b"\xc3",
        ] {
            assert!(
                matches!(decode(raw), Err(LookupError::IllegalCharacter)),
                "{raw:?}"
            );
        }
        assert_eq!(
            LookupError::IllegalCharacter.to_string(),
            "illegal character in filename"
        );
    }

    #[test]
    fn parent_components_are_refused() {
        for raw in [
            &b"../etc/passwd"[..],
            b"/../x",
            b"a/../../x",
            b"a/b/..",
            b"..",
            b"\\..\\x",
            b"a\\..\\b",
        ] {
            assert!(
                matches!(decode(raw), Err(LookupError::ParentDirectory)),
                "{raw:?}"
            );
            assert_eq!(code(raw), ErrorCode::AccessViolation);
        }
        // Names that merely contain dots are fine.
        assert_eq!(ok(b"...x/..y/a.."), "...x/..y/a..");
    }

    #[test]
    fn drive_prefixes_are_refused() {
        for raw in [&b"C:\\x"[..], b"c:/x", b"\\D:\\boot", b"C:", b"z:file"] {
            assert!(
                matches!(decode(raw), Err(LookupError::DrivePrefix)),
                "{raw:?}"
            );
        }
        assert_eq!(code(b"C:\\x"), ErrorCode::AccessViolation);
    }

    #[test]
    fn empty_names() {
        for raw in [&b""[..], b"/", b"\\", b"./", b"\xff", b"//.//"] {
            assert!(
                matches!(decode(raw), Err(LookupError::EmptyName)),
                "{raw:?}"
            );
        }
        assert_eq!(code(b""), ErrorCode::FileNotFound);
    }

    proptest! {
        #[test]
        fn decoded_paths_are_plain(raw in proptest::collection::vec(
            prop_oneof![Just(b'/'), Just(b'\\'), Just(b'.'), Just(b':'), any::<u8>()],
            0..40,
        )) {
            if let Ok(rel) = decode(&raw) {
                for c in rel.components() {
                    prop_assert!(!c.is_empty() && c != "." && c != "..");
                    prop_assert!(!c.contains(['/', '\\', '\0']));
                }
            }
        }
    }
}
