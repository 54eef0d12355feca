use super::*;
#[path = "../../tests/common/special.rs"]
mod special;
use special::Specials;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

fn opts(small_file_limit: u64, leases: bool) -> StoreOptions {
    StoreOptions {
        small_file_limit,
        leases,
        ..StoreOptions::default()
    }
}

fn code(store: &Store, name: &[u8]) -> ErrorCode {
    store.lookup(name, Mode::Octet).unwrap_err().error_code()
}

#[test]
fn store_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
    check::<Content>();
    check::<Arc<Content>>();
}

#[test]
fn new_requires_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), "x").unwrap();
    assert!(Store::new(&dir.path().join("f"), StoreOptions::default()).is_err());
    assert!(Store::new(&dir.path().join("missing"), StoreOptions::default()).is_err());
    let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.root(), fs::canonicalize(dir.path()).unwrap());
}

#[test]
fn serves_small_and_mapped_files_shared() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("small"), "hello").unwrap();
    fs::create_dir(dir.path().join("img")).unwrap();
    fs::write(dir.path().join("img/big"), vec![7u8; 10_000]).unwrap();
    let s = Store::new(dir.path(), opts(16, true)).unwrap();
    let a = s.lookup(b"small", Mode::Octet).unwrap();
    assert_eq!(a.bytes(), b"hello");
    assert!(matches!(a.data, Data::Heap(_)));
    let b = s.lookup(b"/img/big", Mode::Octet).unwrap();
    assert!(matches!(b.data, Data::Map(_)));
    assert_eq!(b.len(), 10_000);
    assert!(b.bytes().iter().all(|&x| x == 7));
    assert_eq!(b.display_path(), "img/big");
    assert!(Arc::ptr_eq(&a, &s.lookup(b"small", Mode::Octet).unwrap()));
    assert!(Arc::ptr_eq(
        &b,
        &s.lookup(b"\\img\\\\big", Mode::Octet).unwrap()
    ));
    assert!(!a.is_revoked() && !b.is_revoked());
}

/// The lease-break handshake: marking the content suspect waits for sends already begun;
/// a revocation stops every later send.
#[test]
fn a_lease_break_waits_for_sends_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), vec![1u8; 4096]).unwrap();
    let s = Store::new(dir.path(), opts(16, false)).unwrap();
    let c = s.lookup(b"f", Mode::Octet).unwrap();
    assert!(c.begin_send());
    assert!(c.begin_send());
    assert!(!c.suspect_and_drain(Duration::from_millis(5)));
    assert!(c.is_suspect() && !c.is_revoked());
    // A suspect content still sends (after checking for a change).
    assert!(c.begin_send());
    c.end_send();
    c.end_send();
    let c2 = c.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        c2.end_send();
    });
    assert!(c.suspect_and_drain(Duration::from_secs(5)));
    t.join().unwrap();
    assert_eq!(c.senders.total(), 0);
    c.revoke_changed("test");
    assert!(!c.begin_send(), "no send begins after the revocation");
    assert!(!c.verify_unchanged());
}

#[test]
fn empty_files_are_empty_content() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("empty"), "").unwrap();
    for limit in [0, 64 * 1024] {
        let s = Store::new(dir.path(), opts(limit, true)).unwrap();
        let c = s.lookup(b"empty", Mode::Octet).unwrap();
        assert!(c.is_empty());
        assert_eq!(c.len(), 0);
        assert!(s.lookup(b"empty", Mode::Netascii).unwrap().is_empty());
    }
}

#[test]
fn hostile_names_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir_all(root.join("a")).unwrap();
    fs::write(outer.path().join("x"), "secret").unwrap();
    fs::write(root.join("pxelinux.0"), "pxe").unwrap();
    let s = Store::new(&root, StoreOptions::default()).unwrap();
    // Every name the decoder refuses, refused by a real root with the same code (`../x` and
    // `..\\x` would reach the file beside the root).
    for (name, why) in path::tests::REFUSED {
        assert_eq!(code(&s, name), why.error_code(), "{name:?}");
    }
    assert_eq!(code(&s, b"nope"), ErrorCode::FileNotFound);
    assert_eq!(
        s.lookup(b"pxelinux.0\xff", Mode::Octet).unwrap().bytes(),
        b"pxe"
    );
    assert_eq!(
        s.lookup(b"/pxelinux.0", Mode::Octet).unwrap().bytes(),
        b"pxe"
    );
    let e = s.lookup(b"a\0b", Mode::Octet).unwrap_err();
    assert_eq!(e.to_string(), "illegal character in filename");
}

#[test]
fn symlinks_inside_served_outside_refused() {
    let (_outer, root) = jail::tests::linked_tree();
    let s = Store::new(&root, StoreOptions::default()).unwrap();
    let c = s.lookup(b"rel-in", Mode::Octet).unwrap();
    assert_eq!(c.bytes(), b"A");
    assert!(Arc::ptr_eq(
        &c,
        &s.lookup(b"images/a.efi", Mode::Octet).unwrap()
    ));
    for name in [&b"rel-out"[..], b"abs-out", b"slash/etc/passwd", b"loop"] {
        let e = s.lookup(name, Mode::Octet).unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::AccessViolation, "{name:?}: {e}");
    }
}

#[test]
fn only_regular_files_are_served() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("d")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
    let specials = Specials::make(dir.path());
    let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
    let t = Instant::now();
    let mut cases = vec![
        ("d", FileKind::Directory),
        ("fifo", FileKind::Fifo),
        ("sock", FileKind::Socket),
    ];
    if specials.have_dev {
        cases.push(("null", FileKind::CharDevice));
    }
    for (name, kind) in cases {
        for mode in [Mode::Octet, Mode::Netascii] {
            match s.lookup(name.as_bytes(), mode) {
                Err(e @ LookupError::NotRegularFile { .. }) => {
                    assert!(matches!(e, LookupError::NotRegularFile { kind: k, .. } if k == kind));
                    assert_eq!(e.error_code(), ErrorCode::AccessViolation);
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "opening a FIFO must not block"
    );
    specials.assert_never_opened("the store");
    assert_eq!(code(&s, b"/"), ErrorCode::FileNotFound);
}

#[test]
fn case_insensitive_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("boot")).unwrap();
    fs::write(dir.path().join("boot/bcd"), "bcd").unwrap();
    fs::create_dir(dir.path().join("EFI")).unwrap();
    fs::write(dir.path().join("EFI/BOOTX64.EFI"), "efi").unwrap();
    fs::write(dir.path().join("exact"), "lower").unwrap();
    fs::write(dir.path().join("EXACT"), "upper").unwrap();
    let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
    let c = s.lookup(b"\\Boot\\BCD", Mode::Octet).unwrap();
    assert_eq!((c.bytes(), c.display_path()), (&b"bcd"[..], "boot/bcd"));
    let c = s.lookup(b"/efi/bootx64.efi", Mode::Octet).unwrap();
    assert_eq!(
        (c.bytes(), c.display_path()),
        (&b"efi"[..], "EFI/BOOTX64.EFI")
    );
    assert_eq!(s.lookup(b"exact", Mode::Octet).unwrap().bytes(), b"lower");
    assert_eq!(s.lookup(b"EXACT", Mode::Octet).unwrap().bytes(), b"upper");
    let strict = Store::new(
        dir.path(),
        StoreOptions {
            case_insensitive: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(code(&strict, b"\\Boot\\BCD"), ErrorCode::FileNotFound);
    assert_eq!(
        code(&s, b"boot/../EFI/BOOTX64.EFI"),
        ErrorCode::AccessViolation
    );
}

#[test]
fn rename_over_gives_new_content_old_arc_keeps_old_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("boot.wim");
    fs::write(&p, vec![b'a'; 4096]).unwrap();
    let s = Store::new(dir.path(), opts(16, true)).unwrap();
    let old = s.lookup(b"boot.wim", Mode::Octet).unwrap();
    fs::write(dir.path().join("tmp"), vec![b'b'; 5000]).unwrap();
    fs::rename(dir.path().join("tmp"), &p).unwrap();
    let new = s.lookup(b"boot.wim", Mode::Octet).unwrap();
    assert!(!Arc::ptr_eq(&old, &new));
    assert!(!old.is_revoked(), "a renamed-over file is not modified");
    assert!(old.bytes().len() == 4096 && old.bytes().iter().all(|&x| x == b'a'));
    assert!(new.bytes().len() == 5000 && new.bytes().iter().all(|&x| x == b'b'));
    assert_eq!(
        s.cache.len(),
        1,
        "the replaced inode's entry is dropped from the cache"
    );
}

#[test]
fn in_place_change_revokes_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    for (limit, watch) in [(1 << 20, true), (16, true), (16, false)] {
        fs::write(&p, vec![b'x'; 100]).unwrap();
        let s = Store::new(
            dir.path(),
            StoreOptions {
                watch,
                ..opts(limit, false)
            },
        )
        .unwrap();
        let old = s.lookup(b"f", Mode::Octet).unwrap();
        let old_na = s.lookup(b"f", Mode::Netascii).unwrap();
        // Grow, same inode (never shrink a mapped file in a test that might read it).
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"yy")
            .unwrap();
        let new = s.lookup(b"f", Mode::Octet).unwrap();
        assert!(old.is_revoked(), "limit {limit} watch {watch}");
        assert!(!old.verify_unchanged());
        assert!(!new.is_revoked());
        assert!(new.verify_unchanged());
        assert_eq!(new.len(), 102);
        assert!(!old_na.verify_unchanged(), "the netascii source changed");
        let new_na = s.lookup(b"f", Mode::Netascii).unwrap();
        assert!(old_na.is_revoked() && new_na.verify_unchanged());
        fs::remove_file(&p).unwrap();
    }
}

/// Converts netascii content as the sender does, through the block encoder and `read_source`.
fn convert(c: &Content) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = crate::proto::tftp::netascii::EncodePos::START;
    let mut src = vec![0u8; 7];
    let mut block = [0u8; 5];
    loop {
        let n = c.read_source(pos.src, &mut src).unwrap();
        let at_eof = pos.src + n as u64 == c.len();
        let w = crate::proto::tftp::netascii::encode_step(&mut pos, &src[..n], at_eof, &mut block);
        out.extend_from_slice(&block[..w]);
        if at_eof && pos.src == c.len() && pos.owed.is_none() && w < block.len() {
            return out;
        }
    }
}

#[test]
fn netascii_and_mail_modes() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("t.cfg"), "a\nb\r\nc\r").unwrap();
    let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
    let n = s.lookup(b"t.cfg", Mode::Netascii).unwrap();
    assert!(n.is_netascii());
    assert_eq!(n.transfer_len(), None, "converted length unknown up front");
    assert_eq!(n.len(), 7, "the source length");
    assert!(n.bytes().is_empty(), "nothing converted up front");
    assert_eq!(convert(&n), b"a\r\nb\r\nc\r\0");
    let o = s.lookup(b"t.cfg", Mode::Octet).unwrap();
    assert_eq!(o.bytes(), b"a\nb\r\nc\r");
    assert_eq!(o.transfer_len(), Some(7));
    assert_eq!(
        convert(&s.lookup(b"T.CFG", Mode::Netascii).unwrap()),
        convert(&n)
    );
    let e = s.lookup(b"t.cfg", Mode::Mail).unwrap_err();
    assert_eq!(e.error_code(), ErrorCode::IllegalOperation);
    assert_eq!(e.to_string(), "mail mode is not supported");
    // Big files are converted from the descriptor too, never from the map.
    fs::write(dir.path().join("big"), "x\n".repeat(50_000)).unwrap();
    let s = Store::new(dir.path(), opts(16, true)).unwrap();
    let big = s.lookup(b"big", Mode::Netascii).unwrap();
    assert_eq!(convert(&big), "x\r\n".repeat(50_000).as_bytes());
    // A sparse file of 1 TiB: the lookup reads nothing.
    let f = fs::File::create(dir.path().join("sparse")).unwrap();
    f.set_len(1 << 40).unwrap();
    let t = Instant::now();
    let sparse = s.lookup(b"sparse", Mode::Netascii).unwrap();
    assert_eq!(sparse.len(), 1 << 40);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn error_codes() {
    let p = || "p".to_owned();
    let cases = [
        (LookupError::IllegalCharacter, ErrorCode::AccessViolation),
        (LookupError::ParentDirectory, ErrorCode::AccessViolation),
        (LookupError::DrivePrefix, ErrorCode::AccessViolation),
        (LookupError::EmptyName, ErrorCode::FileNotFound),
        (LookupError::MailMode, ErrorCode::IllegalOperation),
        (LookupError::NotFound { path: p() }, ErrorCode::FileNotFound),
        (
            LookupError::OutsideRoot { path: p() },
            ErrorCode::AccessViolation,
        ),
        (
            LookupError::SymlinkLoop { path: p() },
            ErrorCode::AccessViolation,
        ),
        (
            LookupError::PermissionDenied { path: p() },
            ErrorCode::AccessViolation,
        ),
        (
            LookupError::NotRegularFile {
                path: p(),
                kind: FileKind::Directory,
            },
            ErrorCode::AccessViolation,
        ),
        (LookupError::Busy { path: p() }, ErrorCode::NotDefined),
        (
            LookupError::Io {
                path: p(),
                source: io::Error::other("x"),
            },
            ErrorCode::NotDefined,
        ),
    ];
    for (e, c) in cases {
        assert_eq!(e.error_code(), c, "{e}");
    }
    let from =
        |errno| LookupError::from_open(io::Error::from_raw_os_error(errno), "p").error_code();
    assert_eq!(from(libc::EACCES), ErrorCode::AccessViolation);
    assert_eq!(from(libc::EPERM), ErrorCode::AccessViolation);
    assert_eq!(from(libc::EXDEV), ErrorCode::AccessViolation);
    assert_eq!(from(libc::ENOTDIR), ErrorCode::FileNotFound);
    assert_eq!(from(libc::EIO), ErrorCode::NotDefined);
    assert_eq!(from(libc::ESTALE), ErrorCode::NotDefined);
}

#[test]
fn eviction_keeps_held_entries() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10 {
        fs::write(dir.path().join(format!("f{i}")), format!("{i}")).unwrap();
    }
    let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
    let held: Vec<_> = (0..3)
        .map(|i| s.lookup(format!("f{i}").as_bytes(), Mode::Octet).unwrap())
        .collect();
    for i in 3..10 {
        s.lookup(format!("f{i}").as_bytes(), Mode::Octet).unwrap();
    }
    assert_eq!(s.cache.len(), 10);
    evict(&mut lock(&s.cache.map), 4, usize::MAX);
    assert_eq!(s.cache.len(), 3);
    for c in &held {
        assert!(Arc::ptr_eq(
            c,
            &s.lookup(c.display_path().as_bytes(), Mode::Octet).unwrap()
        ));
    }
    evict(&mut lock(&s.cache.map), usize::MAX, 0);
    assert_eq!(
        s.cache.len(),
        3,
        "held entries survive even over the heap budget"
    );
}

/// Waits (bounded) until `cond` holds.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A store with leases over a directory holding one 64 KiB file, `boot.wim` (mapped, not read
/// into memory), and that file's path; lease signals blocked on this thread.
fn mapped_boot_wim() -> (tempfile::TempDir, std::path::PathBuf, Arc<Store>) {
    block_lease_signal();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("boot.wim");
    fs::write(&p, vec![b'a'; 65_536]).unwrap();
    let s = Store::new(dir.path(), opts(16, true)).unwrap();
    (dir, p, s)
}

/// A rewrite in place (`cp new old`) of a mapped file: the writer is released at once (the
/// lease break waits only for sends in progress), and the write itself (inotify `IN_MODIFY`)
/// revokes the content. Where leases cannot be taken (filesystem without lease support, not
/// the owner) the same holds through inotify alone.
#[test]
fn in_place_rewrite_breaks_the_lease() {
    let (_dir, p, s) = mapped_boot_wim();
    let old = s.lookup(b"boot.wim", Mode::Octet).unwrap();
    let leased = old.lease_fd().is_some();
    if leased {
        assert!(lease::is_registered(old.lease_fd().unwrap()));
        assert!(old.lease_proves_unchanged());
    } else {
        eprintln!("no lease on this filesystem; checking inotify alone");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let writer_path = p.clone();
    std::thread::spawn(move || {
        let t = Instant::now();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&writer_path)
            .unwrap();
        f.write_all(b"new contents").unwrap();
        drop(f);
        tx.send(t.elapsed()).unwrap();
    });
    let took = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("writer finished");
    assert!(took < Duration::from_secs(5), "writer held back {took:?}");
    if old.watched() {
        assert!(
            eventually(|| old.is_revoked()),
            "the write revokes before the next lookup"
        );
    }
    // Never read `old.bytes()` here: the file was truncated under the map.
    assert!(!old.verify_unchanged());
    let new = s.lookup(b"boot.wim", Mode::Octet).unwrap();
    assert!(old.is_revoked());
    assert!(!Arc::ptr_eq(&old, &new));
    assert_eq!(new.bytes(), b"new contents");
}

/// What `touch` does: open for writing, set both times to now (`futimens(fd, NULL)`, which
/// inotify reports as `IN_ATTRIB`; setting the mtime alone, as `touch -m` does, is reported as
/// `IN_MODIFY` and counts as a change), close.
/// One byte `b` written in place at `at` (no truncation: a change only the content shows).
fn write_b_at(p: &Path, at: u64) {
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(b"b", at).unwrap();
}

fn touch(p: &Path) {
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    // SAFETY: an open descriptor; NULL times mean "now" for both.
    assert_eq!(
        unsafe { libc::futimens(f.as_raw_fd(), std::ptr::null()) },
        0
    );
}

/// An open for writing that writes nothing (a backup agent's `r+`, `touch`) is not a change:
/// the content stays valid and cached, and its lease is taken again once the writer closed.
#[test]
fn opening_for_write_or_touch_is_not_a_change() {
    let (dir, p, s) = mapped_boot_wim();
    let c = s.lookup(b"boot.wim", Mode::Octet).unwrap();
    if !c.watched() {
        eprintln!("no inotify here: a touch counts as a change; nothing to check");
        return;
    }
    // open(O_RDWR) + close, no write.
    drop(
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap(),
    );
    touch(&p);
    if c.lease_fd().is_some() {
        assert!(
            eventually(|| !c.is_suspect()),
            "the lease is taken again after the writer closed"
        );
        assert!(c.lease_proves_unchanged());
    }
    assert!(!c.is_revoked());
    assert!(c.verify_unchanged());
    assert!(c.begin_send());
    c.end_send();
    // The mtime moved, the bytes did not: the cached content is still served.
    assert!(Arc::ptr_eq(
        &c,
        &s.lookup(b"boot.wim", Mode::Octet).unwrap()
    ));
    // A small file (heap snapshot) touched: same bytes, kept.
    fs::write(dir.path().join("small"), "abc").unwrap();
    let s2 = Store::new(dir.path(), opts(1 << 20, true)).unwrap();
    let h = s2.lookup(b"small", Mode::Octet).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    touch(&dir.path().join("small"));
    assert!(Arc::ptr_eq(&h, &s2.lookup(b"small", Mode::Octet).unwrap()));
    assert!(!h.is_revoked());
    // A real write to the big one still revokes.
    write_b_at(&p, 100);
    assert!(!c.verify_unchanged());
    assert!(c.is_revoked());
}

/// Without lease and without inotify, the (size, mtime, ctime) check catches a change before
/// the last block, a touch counts as one, and a file renamed over keeps its old bytes.
#[test]
fn stat_check_without_lease_or_watch() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    fs::write(&p, vec![b'a'; 4096]).unwrap();
    let s = Store::new(
        dir.path(),
        StoreOptions {
            watch: false,
            ..opts(16, false)
        },
    )
    .unwrap();
    let c = s.lookup(b"img", Mode::Octet).unwrap();
    assert!(matches!(c.data, Data::Map(_)));
    assert!(c.lease_fd().is_none() && !c.watched(), "no descriptor kept");
    assert!(c.verify_unchanged());
    // Same size, new bytes: only the stat shows it.
    write_b_at(&p, 0);
    assert!(!c.verify_unchanged());
    assert!(c.is_revoked());
    let c = s.lookup(b"img", Mode::Octet).unwrap();
    assert!(c.verify_unchanged());
    std::thread::sleep(Duration::from_millis(20));
    touch(&p);
    assert!(
        !c.verify_unchanged(),
        "without inotify a touch counts as a change"
    );
    let c = s.lookup(b"img", Mode::Octet).unwrap();
    fs::write(dir.path().join("tmp"), vec![b'c'; 4096]).unwrap();
    fs::rename(dir.path().join("tmp"), &p).unwrap();
    assert!(
        c.verify_unchanged(),
        "renamed over: the old inode is unchanged"
    );
}

/// `read_stable` never allocates above the limit: a file found bigger than the version said
/// is re-read at its new size, or mapped when that is above the limit.
#[test]
fn read_stable_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    fs::write(&p, vec![b'z'; 100]).unwrap();
    let f = File::open(&p).unwrap();
    let actual = Version::of_fd(f.as_raw_fd()).unwrap();
    let claimed = |size| Version { size, ..actual };
    // Grew while read: re-read at the new size.
    match read_stable(&f, claimed(10), 1000, "f").unwrap() {
        Stable::Read(b, v) => assert!(b.len() == 100 && v == actual),
        Stable::Grew => panic!("100 bytes fit the limit"),
    }
    // Grew past the limit: no allocation of the new size.
    assert!(matches!(
        read_stable(&f, claimed(10), 50, "f").unwrap(),
        Stable::Grew
    ));
    // A size above the limit is never allocated.
    assert!(matches!(
        read_stable(&f, claimed(1 << 40), 50, "f").unwrap(),
        Stable::Grew
    ));
}

/// Mapped files keep no descriptor unless they hold a lease, and evicting or dropping a
/// leased one releases its descriptor and its registration.
#[test]
fn descriptors_only_for_leases() {
    block_lease_signal();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        fs::write(dir.path().join(format!("f{i}")), vec![b'q'; 1000]).unwrap();
    }
    let plain = Store::new(dir.path(), opts(16, false)).unwrap();
    for i in 0..20 {
        let c = plain
            .lookup(format!("f{i}").as_bytes(), Mode::Octet)
            .unwrap();
        assert!(matches!(c.data, Data::Map(_)) && c.fd().is_none());
    }
    let leasing = Store::new(dir.path(), opts(16, true)).unwrap();
    let c = leasing.lookup(b"f0", Mode::Octet).unwrap();
    if let Some(fd) = c.lease_fd() {
        assert!(lease::is_registered(fd));
        drop(c);
        evict(&mut lock(&leasing.cache.map), 0, 0);
        assert_eq!(leasing.cache.len(), 0);
        assert!(
            !lease::is_registered(fd),
            "eviction released the leased descriptor"
        );
    }
}
