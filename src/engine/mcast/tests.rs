use super::handoff::Ticket;
use super::*;

#[test]
fn parses_cli_values() {
    let f: MtftpFile = "boot/x.wim@239.255.1.1:3001".parse().unwrap();
    assert_eq!(f.file, "boot/x.wim");
    assert_eq!(f.group, Ipv4Addr::new(239, 255, 1, 1));
    assert_eq!(f.client_port, 3001);
    assert!("x@10.0.0.1:3001".parse::<MtftpFile>().is_err());
    assert!("x@239.1.1.1".parse::<MtftpFile>().is_err());
    let p: GroupPool = "239.255.7.0/24".parse().unwrap();
    assert_eq!(p.nth(0), Ipv4Addr::new(239, 255, 7, 0));
    assert_eq!(p.nth(257), Ipv4Addr::new(239, 255, 7, 1));
    assert!("10.0.0.0/8".parse::<GroupPool>().is_err());
}

fn client(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, host], port))
}

fn pool(s: &str) -> Option<GroupPool> {
    Some(s.parse().unwrap())
}

#[test]
fn admission_puts_odd_block_sizes_of_a_file_in_one_session() {
    // The reported attack: blksizes 600..603 took a /30 pool, one group each.
    let mut a = Admission::new(pool("239.255.42.0/30"), 256, 4);
    let t: Vec<Ticket> = (0..4)
        .map(|i| a.admit(client(1 + i as u8, 1000), 7, 600 + i).unwrap())
        .collect();
    assert!(t
        .iter()
        .all(|x| x.slot == t[0].slot && x.bucket == 512 && x.counted));
    assert_eq!(a.groups_in_use(), 1);
    // The next RFC 2090 client (another bucket, another file) finds a group.
    let b = a.admit(client(9, 1000), 7, 1428).unwrap();
    assert_ne!(b.slot, t[0].slot);
    assert_eq!(b.bucket, 1428);
    assert!(a.admit(client(9, 1001), 8, 1468).is_ok());
    assert_eq!(a.groups_in_use(), 3);
    assert_eq!(a.admit(client(9, 1002), 7, 100), Err(Refusal::BlockSize));
}

#[test]
fn admission_refuses_when_the_pool_is_full_and_frees_the_group_with_its_last_member() {
    let mut a = Admission::new(pool("239.255.42.7/32"), 256, 4);
    let x = a.admit(client(1, 1000), 1, 512).unwrap();
    let y = a.admit(client(2, 1000), 1, 512).unwrap();
    assert_eq!(x.slot, y.slot);
    assert_eq!(a.admit(client(3, 1000), 2, 512), Err(Refusal::PoolFull));
    a.release(x.slot, x.gen, client(1, 1000));
    assert_eq!(a.admit(client(3, 1000), 2, 512), Err(Refusal::PoolFull));
    a.release(y.slot, y.gen, client(2, 1000));
    assert!(!a.is_live(x.slot, x.gen));
    let z = a.admit(client(3, 1000), 2, 512).unwrap();
    assert_eq!(z.slot, x.slot);
    assert_ne!(z.gen, x.gen, "a new session on the same group");
    // A late release for the old generation changes nothing.
    a.release(x.slot, x.gen, client(3, 1000));
    assert!(a.is_live(z.slot, z.gen));
    assert_eq!(a.group(z.slot), Some(Ipv4Addr::new(239, 255, 42, 7)));
}

#[test]
fn admission_caps_members_per_session_and_sessions_per_source() {
    let mut a = Admission::new(pool("239.255.42.0/24"), 3, 2);
    for i in 0..3 {
        a.admit(client(1 + i, 1000), 1, 1468).unwrap();
    }
    assert_eq!(a.admit(client(9, 1000), 1, 1468), Err(Refusal::SessionFull));
    // One address, many ports: two memberships, then unicast.
    assert!(a.admit(client(20, 1), 2, 512).is_ok());
    assert!(a.admit(client(20, 2), 2, 512).is_ok());
    assert_eq!(a.admit(client(20, 3), 2, 512), Err(Refusal::SourceCap));
    assert_eq!(a.admit(client(20, 4), 3, 512), Err(Refusal::SourceCap));
    assert!(a.admit(client(21, 1), 2, 512).is_ok());
    assert_eq!(a.per_source.len(), 5);
}

#[test]
fn admission_a_resent_request_is_not_counted_twice_and_release_is_idempotent() {
    let mut a = Admission::new(pool("239.255.42.0/24"), 256, 1);
    let c = client(1, 1000);
    let t = a.admit(c, 1, 1428).unwrap();
    let again = a.admit(c, 1, 1428).unwrap();
    assert_eq!(
        (again.slot, again.gen, again.counted),
        (t.slot, t.gen, false)
    );
    assert_eq!(a.slots[t.slot as usize].as_ref().unwrap().refs, 1);
    a.release(t.slot, t.gen, c);
    a.release(t.slot, t.gen, c);
    assert_eq!(a.groups_in_use(), 0);
    assert!(a.per_source.is_empty() && a.memberships.is_empty() && a.by_key.is_empty());
    // Adopting into a session that is gone fails; into a live one counts once.
    assert!(!a.adopt(t.slot, t.gen, c));
    let u = a.admit(client(2, 1), 1, 1428).unwrap();
    assert!(a.adopt(u.slot, u.gen, c));
    assert!(a.adopt(u.slot, u.gen, c));
    assert_eq!(a.slots[u.slot as usize].as_ref().unwrap().refs, 2);
}

#[test]
fn admission_reuses_freed_groups_oldest_first() {
    let mut a = Admission::new(pool("239.255.42.0/30"), 256, 8);
    let t: Vec<Ticket> = (0..4)
        .map(|f| a.admit(client(1, 1000 + f as u16), f, 512).unwrap())
        .collect();
    a.release(t[2].slot, t[2].gen, client(1, 1002));
    a.release(t[0].slot, t[0].gen, client(1, 1000));
    assert_eq!(a.admit(client(2, 1), 10, 512).unwrap().slot, t[2].slot);
    assert_eq!(a.admit(client(2, 2), 11, 512).unwrap().slot, t[0].slot);
}

#[test]
fn admission_is_off_without_a_pool() {
    let mut a = Admission::new(None, 256, 4);
    assert_eq!(a.admit(client(1, 1), 1, 1468), Err(Refusal::Disabled));
}

#[test]
fn a_request_handed_over_that_the_service_cannot_place_gets_an_error_and_its_place_back() {
    // The session socket cannot be bound (the request's local address is not ours): the
    // client was promised an answer by the hand-over, so it gets an ERROR, and the group
    // and its membership go back.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![7u8; 5000]).unwrap();
    let store = Store::new(dir.path(), crate::store::StoreOptions::default()).unwrap();
    let content = store.lookup(b"f", Mode::Octet).unwrap();
    let cfg = test_config();
    let (tx, rx) = channel::bounded(4);
    let admission = Arc::new(Mutex::new(Admission::new(cfg.groups, 256, 4)));
    let wake = Arc::new(crate::sys::poll::EventFd::new().unwrap());
    let handle = McHandle {
        tx,
        wake: wake.clone(),
        admission: admission.clone(),
    };
    let client_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = client_sock.local_addr().unwrap();
    let join = McJoin {
        client,
        local: "192.0.2.1".parse().unwrap(),
        content,
        blksize: BlockSize::new(1428).unwrap(),
        tsize: false,
    };
    assert!(handle.submit(join, Instant::now()).is_ok());
    assert_eq!(lock(&admission).groups_in_use(), 1);
    let mut svc = service(cfg, store, rx, wake, admission.clone());
    let h = svc.rx.try_recv().unwrap();
    crate::engine::with_test_io(|io| svc.join_rfc2090(io, h));
    client_sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = client_sock.recv_from(&mut buf).expect("an ERROR");
    let Ok(Packet::Error { message, .. }) = Packet::parse(&buf[..n]) else {
        panic!("not an ERROR: {:?}", &buf[..n])
    };
    assert!(message.starts_with(b"cannot open a multicast session"));
    let a = lock(&admission);
    assert_eq!(a.groups_in_use(), 0);
    assert!(a.memberships.is_empty() && a.per_source.is_empty());
    assert!(svc.sessions.is_empty());
}

#[test]
fn a_full_channel_takes_nothing_and_says_so() {
    let (tx, _rx) = channel::bounded(0);
    let admission = Arc::new(Mutex::new(Admission::new(pool("239.255.42.0/30"), 256, 4)));
    let handle = McHandle {
        tx,
        wake: Arc::new(crate::sys::poll::EventFd::new().unwrap()),
        admission: admission.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let store = Store::new(dir.path(), crate::store::StoreOptions::default()).unwrap();
    let join = McJoin {
        client: client(1, 1000),
        local: Ipv4Addr::LOCALHOST.into(),
        content: store.lookup(b"f", Mode::Octet).unwrap(),
        blksize: BlockSize::new(1468).unwrap(),
        tsize: false,
    };
    assert_eq!(handle.submit(join, Instant::now()), Err(Refusal::Saturated));
    assert_eq!(lock(&admission).groups_in_use(), 0);
}

#[test]
fn admission_sends_joiners_of_a_closed_session_to_unicast_but_keeps_its_members() {
    // A session whose block numbers wrap takes no member once its stream started (the driver
    // closes it): newcomers are served by unicast, members' resent requests still reach it.
    let mut a = Admission::new(pool("239.255.42.0/24"), 256, 4);
    let x = a.admit(client(1, 1000), 1, 1468).unwrap();
    a.close(x.slot, x.gen);
    assert_eq!(a.admit(client(2, 1000), 1, 1468), Err(Refusal::Late));
    let again = a.admit(client(1, 1000), 1, 1468).unwrap();
    assert_eq!((again.slot, again.counted), (x.slot, false));
    // When it ends, the next session of the file admits again.
    a.release(x.slot, x.gen, client(1, 1000));
    assert!(a.admit(client(2, 1000), 1, 1468).unwrap().counted);
}

#[test]
fn a_session_takes_the_controller_of_the_interface_it_sends_by() {
    // As for unicast: an uncapped loopback has no controller; a capped one (or any other
    // interface) gives the session the same shared controller the transfers there use.
    let lo = crate::sys::iface::interfaces()
        .unwrap()
        .into_iter()
        .find(|i| i.addr == Ipv4Addr::LOCALHOST)
        .expect("lo is up");
    let mut svc = test_service();
    let local: IpAddr = Ipv4Addr::LOCALHOST.into();
    assert!(svc.link_for(local).is_none(), "no table: not paced");
    svc.links = Some(Arc::new(Links::new([])));
    assert!(
        svc.link_for(local).is_none(),
        "uncapped loopback: not paced"
    );
    let cap = crate::proto::cc::Rate::from_bits_per_sec(80_000_000);
    let links = Arc::new(Links::new([(lo.index, cap)]));
    svc.links = Some(links.clone());
    let a = svc.link_for(local).expect("capped loopback: paced");
    let b = links.get(lo.index, local).unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "the transfers' controller, not one of its own"
    );
}

/// The service settings of these tests (RFC 2090 groups, no MTFTP files).
fn test_config() -> McConfig {
    McConfig {
        mtftp: vec![],
        mtftp_port: 0,
        groups: pool("239.255.42.0/30"),
        multicast_port: 1758,
        ttl: 1,
        interface: None,
        loopback: true,
        rate: 0,
        min_rate: 1_000_000,
        slow: SlowPolicy::Pace,
        window: 16,
        timeout: Duration::from_millis(200),
        retries: 5,
        listen: vec![],
        max_members: 256,
        max_per_source: 4,
    }
}

/// A service built around its parts, without sockets of its own beyond the control one.
fn service(
    cfg: McConfig,
    store: Arc<Store>,
    rx: Receiver<Handoff>,
    wake: Arc<crate::sys::poll::EventFd>,
    admission: Arc<Mutex<Admission>>,
) -> McService {
    McService {
        cfg,
        store,
        rx,
        wake,
        listeners: vec![],
        ctrl: UdpSocket::bind("127.0.0.1:0").unwrap(),
        admission,
        sessions: HashMap::new(),
        next_token: 0,
        buf: vec![0u8; 2048],
        logs: Logs::default(),
        observer: None,
        tokens: Vec::new(),
        tx: crate::engine::send::TxBufs::new(crate::engine::send::MAX_TX_BLOCKS),
        gso: true,
        links: None,
    }
}

fn test_service() -> McService {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path(), crate::store::StoreOptions::default()).unwrap();
    let cfg = test_config();
    let admission = Arc::new(Mutex::new(Admission::new(cfg.groups, 256, 4)));
    let (_tx, rx) = channel::bounded(1);
    let wake = Arc::new(crate::sys::poll::EventFd::new().unwrap());
    service(cfg, store, rx, wake, admission)
}
