use super::*;

fn out(tag: u8, lease: Option<Ipv4Addr>) -> Outgoing {
    Outgoing {
        bytes: vec![tag],
        dest: SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
        ifindex: 0,
        src: Ipv4Addr::UNSPECIFIED,
        port: ServerPort::Dhcp,
        lease,
    }
}

#[test]
fn group_commit_sends_an_ack_only_once_its_lease_is_saved() {
    let key = |n: u8| crate::proto::dhcp::leases::ClientKey::new(None, 1, &[2, 0, 0, 0, 0, n]);
    let ip = |n: u8| Ipv4Addr::new(10, 0, 0, n);
    let mut st = LeaseState::new();
    // Three bindings decided in one turn, their ACKs waiting, and an OFFER that went out.
    let mut pending = Vec::with_capacity(MAX_PENDING);
    for n in 1..=3 {
        st.bind(ip(n), &key(n), 0, 3600);
        pending.push(out(n, Some(ip(n))));
    }
    pending.push(out(9, None));
    let (mut saves, mut sent, mut dropped) = (0, vec![], 0);
    // The save fails: no ACK leaves, the rest does, and the table stays dirty.
    let r = group_commit(
        &mut st,
        &mut pending,
        |_| {
            saves += 1;
            Err("disk full")
        },
        |o| sent.push(o.bytes[0]),
        || dropped += 1,
    );
    assert_eq!(r, Some(Err("disk full")));
    assert_eq!((saves, dropped), (1, 3));
    assert_eq!(sent, [9]);
    assert!(st.is_dirty() && pending.is_empty());
    // The clients ask again; this time the one save of the turn works and all ACKs leave.
    for n in 1..=3 {
        pending.push(out(n, Some(ip(n))));
    }
    sent.clear();
    let r = group_commit(
        &mut st,
        &mut pending,
        |s: &LeaseState| {
            saves += 1;
            assert_eq!(s.len(), 3);
            Ok::<(), &str>(())
        },
        |o| sent.push(o.bytes[0]),
        || dropped += 1,
    );
    assert_eq!(r, Some(Ok(())));
    assert_eq!((saves, dropped), (2, 3), "one save for three ACKs");
    assert_eq!(sent, [1, 2, 3]);
    assert!(!st.is_dirty());
    assert!(pending.capacity() >= MAX_PENDING);
    // Nothing changed: nothing to save, a cached reply leaves at once.
    pending.push(out(1, Some(ip(1))));
    let r = group_commit(
        &mut st,
        &mut pending,
        |_| -> Result<(), ()> { panic!("no save needed") },
        |o| sent.push(o.bytes[0]),
        || dropped += 1,
    );
    assert_eq!(r, None);
    assert_eq!(sent.last(), Some(&1));
}

#[test]
fn other_servers_table_is_bounded_and_reports_each_once_per_interval() {
    let t0 = Instant::now();
    let mut o = OtherServers::default();
    let real = Ipv4Addr::new(10, 0, 0, 2);
    assert!(o.report(real, t0, PROBE_INTERVAL));
    assert!(!o.report(real, t0 + Duration::from_secs(5), PROBE_INTERVAL));
    // 2,000 forged server ids: the table never grows past its size.
    for n in 0..2000u32 {
        assert!(o.report(
            Ipv4Addr::from(0x0a64_0000 + n),
            t0 + Duration::from_millis(u64::from(n)),
            PROBE_INTERVAL
        ));
        assert!(o.len() <= OTHER_SERVERS);
    }
    assert!(o.report(real, t0 + PROBE_INTERVAL, PROBE_INTERVAL));
}

#[test]
fn two_thousand_drops_make_one_summary_per_interval_with_every_count() {
    let t0 = Instant::now();
    let mut d = Drops::new();
    for n in 0..2000u64 {
        let why = if n % 2 == 0 {
            Drop::Refused(Refused::Client)
        } else {
            Drop::Malformed(Malformed::BadCookie)
        };
        d.count(why, t0 + Duration::from_millis(n));
    }
    // The first drop was logged at once; the rest wait for the interval.
    assert_eq!(d.counts.iter().sum::<u64>(), 1999);
    assert_eq!(d.counts[Drop::Refused(Refused::Client).index()], 999);
    d.tick(t0 + Duration::from_secs(5));
    assert_eq!(d.counts.iter().sum::<u64>(), 1999, "not yet");
    d.tick(t0 + DROP_SUMMARY_INTERVAL);
    assert_eq!(d.counts.iter().sum::<u64>(), 0, "summarized");
    assert_eq!(d.total, 2000);
    let names: std::collections::HashSet<usize> = [
        Drop::TooLong,
        Drop::NoLocalAddress,
        Drop::AckNotSaved,
        Drop::Refused(Refused::Client),
        Drop::Refused(Refused::Segment),
        Drop::Refused(Refused::UnknownRelays),
        Drop::Malformed(Malformed::Truncated),
        Drop::Malformed(Malformed::TooLong),
        Drop::Malformed(Malformed::NotRequest),
        Drop::Malformed(Malformed::BadHlen),
        Drop::Malformed(Malformed::BadCookie),
        Drop::Malformed(Malformed::OptionOverflow),
        Drop::Malformed(Malformed::BadOptionLength(0)),
        Drop::Malformed(Malformed::NoMessageType),
        Drop::Malformed(Malformed::Decode),
    ]
    .iter()
    .map(|d| d.index())
    .collect();
    assert_eq!(names.len(), 15, "one counter per reason");
    assert!(names.iter().all(|i| !DROP_NAMES[*i].is_empty()));
}
