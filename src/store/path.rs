//! Wire filename -> relative path below the root, or a refusal; decoded without allocating.
//!
//! Rules: one trailing 0xFF (old PXE ROMs) is dropped; NUL, control characters and invalid UTF-8
//! are refused; `/` and `\` both separate; leading, repeated and trailing separators and `.`
//! components collapse; `..` anywhere and a Windows drive prefix (`C:`) are refused, never
//! normalised away. The result holds only plain names: no separator, no `.`/`..`, none empty.
//!
//! Contract: [`decode`] writes the components, joined with `/` and NUL-terminated, into a
//! [`RelPath`]: a fixed buffer of `PATH_MAX` bytes that lives on the caller's stack. Nothing is
//! allocated on the request path; the jail opens the path straight from the buffer
//! ([`RelPath::as_cstr`]). A path longer than `PATH_MAX - 1` bytes could not be opened anyway:
//! it is refused as not found, as the kernel's `ENAMETOOLONG` was before (only that refusal
//! allocates, for its message).

use super::LookupError;
use std::ffi::CStr;

/// Bytes of a decoded path at most, its terminating NUL included (Linux `PATH_MAX`).
pub(crate) const PATH_MAX: usize = libc::PATH_MAX as usize;

/// A checked relative path: plain, non-empty names joined with `/`, NUL-terminated, in a fixed
/// buffer. See the module docs.
#[derive(Clone)]
pub(crate) struct RelPath {
    buf: [u8; PATH_MAX],
    /// Bytes of the joined path (the NUL is at `len`).
    len: usize,
}

impl RelPath {
    /// The components joined with `/`.
    pub(crate) fn as_str(&self) -> &str {
        // Only whole UTF-8 components and `/` were written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// The joined path with its NUL, for the system call.
    pub(crate) fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.buf[..=self.len]).unwrap_or(c"")
    }

    /// The components, in order.
    pub(crate) fn components(&self) -> impl Iterator<Item = &str> + Clone {
        self.as_str().split('/')
    }
}

impl std::fmt::Debug for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RelPath").field(&self.as_str()).finish()
    }
}

impl PartialEq for RelPath {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
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
    let mut out = RelPath {
        buf: [0; PATH_MAX],
        len: 0,
    };
    let mut too_long = false;
    let mut drive = false;
    let mut first = true;
    for part in text.split(['/', '\\']) {
        match part {
            "" | "." => continue,
            ".." => return Err(LookupError::ParentDirectory),
            _ => {}
        }
        if first {
            let b = part.as_bytes();
            drive = b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':';
        }
        // Keep checking every component for `..` even past the buffer's end.
        let sep = usize::from(!first);
        first = false;
        if too_long || out.len + sep + part.len() >= PATH_MAX {
            too_long = true;
            continue;
        }
        if sep == 1 {
            out.buf[out.len] = b'/';
        }
        out.buf[out.len + sep..out.len + sep + part.len()].copy_from_slice(part.as_bytes());
        out.len += sep + part.len();
    }
    if drive {
        return Err(LookupError::DrivePrefix);
    }
    if first {
        return Err(LookupError::EmptyName);
    }
    if too_long {
        let path = text
            .split(['/', '\\'])
            .filter(|p| !p.is_empty() && *p != ".")
            .collect::<Vec<_>>()
            .join("/");
        return Err(LookupError::NotFound { path });
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::proto::tftp::packet::ErrorCode;
    use proptest::prelude::*;

    fn ok(raw: &[u8]) -> String {
        let p = decode(raw).unwrap();
        assert_eq!(p.as_cstr().to_bytes(), p.as_str().as_bytes());
        p.as_str().to_owned()
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

    /// Names the decoder refuses, each with its reason (a variant without data). The store's
    /// tests send every one of them to a real root too.
    pub(in crate::store) const REFUSED: &[(&[u8], LookupError)] = &[
        (b"a\0b", LookupError::IllegalCharacter),
        (b"a\nb", LookupError::IllegalCharacter),
        (b"\x1bx", LookupError::IllegalCharacter),
        (b"a\x7f", LookupError::IllegalCharacter),
        (b"\x7f", LookupError::IllegalCharacter),
        (b"\tx", LookupError::IllegalCharacter),
        (b"\x80abc", LookupError::IllegalCharacter),
        (b"\xc3", LookupError::IllegalCharacter),
        (b"pxelinux.0\0", LookupError::IllegalCharacter),
        (b"pxe\x01linux.0", LookupError::IllegalCharacter),
        (b"pxelinux.0\xfe", LookupError::IllegalCharacter),
        (b"../etc/passwd", LookupError::ParentDirectory),
        (b"../x", LookupError::ParentDirectory),
        (b"/../x", LookupError::ParentDirectory),
        (b"a/../../x", LookupError::ParentDirectory),
        (b"a/b/..", LookupError::ParentDirectory),
        (b"..", LookupError::ParentDirectory),
        (b"..\\x", LookupError::ParentDirectory),
        (b"\\..\\x", LookupError::ParentDirectory),
        (b"a\\..\\b", LookupError::ParentDirectory),
        (b"C:\\x", LookupError::DrivePrefix),
        (b"c:/x", LookupError::DrivePrefix),
        (b"\\D:\\boot", LookupError::DrivePrefix),
        (b"C:", LookupError::DrivePrefix),
        (b"z:file", LookupError::DrivePrefix),
        (b"", LookupError::EmptyName),
        (b"/", LookupError::EmptyName),
        (b"\\", LookupError::EmptyName),
        (b"./", LookupError::EmptyName),
        (b"\xff", LookupError::EmptyName),
        (b"//.//", LookupError::EmptyName),
    ];

    #[test]
    fn refused_names_give_their_reason_and_code() {
        for (raw, why) in REFUSED {
            let e = decode(raw)
                .err()
                .unwrap_or_else(|| panic!("{raw:?} decoded"));
            assert_eq!(
                std::mem::discriminant(&e),
                std::mem::discriminant(why),
                "{raw:?}: {e}"
            );
            assert_eq!(e.error_code(), why.error_code(), "{raw:?}");
        }
        assert_eq!(
            LookupError::IllegalCharacter.to_string(),
            "illegal character in filename"
        );
        for why in [LookupError::ParentDirectory, LookupError::DrivePrefix] {
            assert_eq!(why.error_code(), ErrorCode::AccessViolation);
        }
        assert_eq!(LookupError::EmptyName.error_code(), ErrorCode::FileNotFound);
        // Names that merely contain dots are fine.
        assert_eq!(ok(b"...x/..y/a.."), "...x/..y/a..");
    }

    #[test]
    fn paths_up_to_path_max_decode_longer_ones_are_not_found() {
        let name = "a".repeat(250);
        let fits: Vec<String> = (0..16).map(|_| name.clone()).collect();
        let joined = fits.join("/");
        assert_eq!(joined.len(), 16 * 251 - 1);
        assert_eq!(ok(joined.as_bytes()), joined);
        let exact = "b".repeat(PATH_MAX - 1);
        assert_eq!(ok(exact.as_bytes()), exact);
        let over = "b".repeat(PATH_MAX);
        assert_eq!(code(over.as_bytes()), ErrorCode::FileNotFound);
        // Every component is still checked past the end of the buffer.
        let sneaky = format!("{over}/../x");
        assert!(matches!(
            decode(sneaky.as_bytes()),
            Err(LookupError::ParentDirectory)
        ));
        let p = decode(b"\\a\\b//c").unwrap();
        assert_eq!(p.components().collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    /// Counts the allocations of the calling thread (tests run on many threads at once).
    struct Counting;

    thread_local! {
        static ALLOCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    // SAFETY: forwards to the system allocator; the counter touches no allocation.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: the caller's contract is the system allocator's.
            unsafe { std::alloc::System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
            // SAFETY: as above.
            unsafe { std::alloc::System.dealloc(p, l) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    fn allocations(f: impl FnOnce()) -> u64 {
        let before = ALLOCS.with(|c| c.get());
        f();
        ALLOCS.with(|c| c.get()) - before
    }

    /// The request path of a cached file allocates nothing: decode into the stack buffer, open
    /// through the jail from it, find the content in the cache.
    #[test]
    fn a_cached_lookup_allocates_nothing() {
        use crate::proto::tftp::Mode;
        use crate::store::{Store, StoreOptions};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("boot/x64")).unwrap();
        std::fs::write(dir.path().join("boot/x64/wdsnbp.com"), vec![1u8; 100_000]).unwrap();
        let store = Store::new(dir.path(), StoreOptions::default()).unwrap();
        let name = b"\\boot\\x64\\wdsnbp.com";
        let first = store.lookup(name, Mode::Octet).unwrap();
        assert_eq!(
            allocations(|| drop(std::hint::black_box(String::from("x")))),
            1
        );
        let n = allocations(|| {
            let rel = decode(name).unwrap();
            assert_eq!(rel.as_str(), "boot/x64/wdsnbp.com");
        });
        assert_eq!(n, 0, "decode allocated");
        let mut again = None;
        let n = allocations(|| again = Some(store.lookup(name, Mode::Octet).unwrap()));
        assert!(std::sync::Arc::ptr_eq(&first, &again.unwrap()));
        assert_eq!(n, 0, "a cache hit allocated");
    }

    proptest! {
        #[test]
        fn decoded_paths_are_plain(raw in proptest::collection::vec(
            prop_oneof![Just(b'/'), Just(b'\\'), Just(b'.'), Just(b':'), any::<u8>()],
            0..40,
        )) {
            if let Ok(rel) = decode(&raw) {
                prop_assert_eq!(rel.as_cstr().to_bytes(), rel.as_str().as_bytes());
                for c in rel.components() {
                    prop_assert!(!c.is_empty() && c != "." && c != "..");
                    prop_assert!(!c.contains(['/', '\\', '\0']));
                }
            }
        }
    }
}
