//! The DHCP lease store under descriptor exhaustion (issue 8, defect 2, DHCP part).
//!
//! Contract: one test in its own binary, because it lowers this process's RLIMIT_NOFILE and
//! fills every descriptor: after [`LeaseStore::load`] a save needs no new descriptor, so
//! bindings are saved (and could be ACKed) while `File::create`, which the old store used for
//! every save, fails with EMFILE. Where the filesystem refuses `RENAME_EXCHANGE` the store
//! needs one descriptor per save; the test says so and checks only that the failure is
//! reported as descriptor exhaustion and that nothing on disk is lost.

use ringboot::dhcp::store::LeaseStore;
use ringboot::proto::dhcp::leases::ClientKey;
use std::fs::File;
use std::net::Ipv4Addr;

fn key(n: u32) -> ClientKey {
    let b = n.to_be_bytes();
    ClientKey::new(None, 1, &[0x52, 0x54, b[0], b[1], b[2], b[3]])
}

fn nofile() -> (libc::rlim_t, libc::rlim_t) {
    // SAFETY: getrlimit fills a zeroed struct.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    (r.rlim_cur, r.rlim_max)
}

fn set_soft(soft: libc::rlim_t) {
    let (_, hard) = nofile();
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit with a valid struct; lowering the soft limit is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
}

#[test]
fn saves_go_on_when_no_descriptor_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dhcp.leases");
    let mut store = LeaseStore::new(&path);
    let mut st = store.load().unwrap();
    st.bind(Ipv4Addr::new(10, 0, 0, 1), &key(1), 100, 5000);
    store.commit(&mut st).unwrap();
    let exchange = store.files_opened() == 2;

    // Fill every descriptor under a low soft limit.
    let (soft, _) = nofile();
    set_soft(256);
    let mut held = vec![];
    let exhausted = loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => break e,
        }
        assert!(held.len() < 300, "the soft limit did not take");
    };
    assert_eq!(exhausted.raw_os_error(), Some(libc::EMFILE));
    let old_way = File::create(dir.path().join("probe"));
    assert_eq!(
        old_way.err().and_then(|e| e.raw_os_error()),
        Some(libc::EMFILE),
        "what the old store needed for every save is gone"
    );

    let mut saved = 0;
    let mut failure = None;
    for n in 2..=101u32 {
        st.bind(Ipv4Addr::from(0x0a00_0000 + n), &key(n), 100, 5000);
        match store.commit(&mut st) {
            Ok(()) => saved += 1,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(held);
    set_soft(soft);

    let on_disk = std::fs::read_to_string(&path).unwrap();
    if exchange {
        assert!(failure.is_none(), "{failure:?}");
        assert_eq!(saved, 100);
        assert_eq!(on_disk, st.to_text(), "every binding is on disk");
    } else {
        println!("this filesystem refuses RENAME_EXCHANGE: a save needs one descriptor here");
        let e = failure.expect("no descriptor, no save");
        assert!(e.is_out_of_descriptors(), "{e}");
        // What the file holds is a complete earlier table.
        assert!(on_disk.starts_with("# ringboot DHCP leases"));
        st.take_dirty();
    }
    // And with descriptors back, saves work as before.
    st.bind(Ipv4Addr::new(10, 0, 1, 1), &key(999), 100, 5000);
    store.commit(&mut st).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), st.to_text());
}
