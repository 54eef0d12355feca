//! Full-mode (address-assigning) decisions: DORA, DECLINE, pools, persistence.

use super::*;

fn full_cfg() -> Policy {
    Policy {
        dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
        ..Policy::full_lab("10.0.0.100,10.0.0.102", SERVER)
    }
}

/// The lab with one machine, `mac(1)`, bound: the policy, the context, the lease table and the
/// machine's address.
fn one_bound() -> (Policy, Context, LeaseState, Ipv4Addr) {
    let cfg = full_cfg();
    let c = ctx67();
    let mut st = LeaseState::new();
    let a = dora(mac(1), &mut st, &cfg, &c).unwrap();
    (cfg, c, st, a)
}

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0, n]
}

/// DISCOVER then REQUEST for `m`; returns the bound address.
fn dora(m: [u8; 6], st: &mut LeaseState, cfg: &Policy, c: &Context) -> Option<Ipv4Addr> {
    let d = wire::pxe_discover(m, ClientArch::BIOS, u32::from(m[5]));
    let offer = decide(&d, c, st, cfg)?.message;
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    let r = wire::pxe_request(&offer, m, ClientArch::BIOS, u32::from(m[5]));
    let ack = decide(&r, c, st, cfg)?.message;
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    Some(ack.yiaddr())
}

/// A DHCPDECLINE of `ip` from `m` to us (option 61 when `id` is given).
fn decline(m: [u8; 6], id: Option<&[u8]>, ip: Ipv4Addr) -> Vec<u8> {
    let (ip, sid) = (ip.octets(), SERVER.octets());
    let mut opts: Vec<(u8, &[u8])> = vec![(53, &[4]), (50, &ip), (54, &sid)];
    if let Some(id) = id {
        opts.push((61, id));
    }
    raw(m, 9, 0, [0; 4], [0; 4], &opts)
}

fn noted<'a>(bytes: &[u8], c: &Context, st: &mut LeaseState, cfg: &'a Policy) -> Decision<'a> {
    decide_noted(&parse_request(bytes).unwrap(), c, st, cfg)
}

#[test]
fn decline_is_taken_only_from_the_holder_of_the_address() {
    let (cfg, c, mut st, a) = one_bound();
    st.take_dirty();
    let other = Ipv4Addr::new(10, 0, 0, 101);
    // Another MAC, the holder's MAC with a client id that is not the holder's, the holder
    // for an address it does not hold: all ignored with a note, nothing changes.
    for (who, id, ip) in [
        (mac(2), None, a),
        (mac(1), Some(&[1u8, 2, 3][..]), a),
        (mac(1), None, other),
    ] {
        let d = noted(&decline(who, id, ip), &c, &mut st, &cfg);
        assert_eq!(d.reply, None);
        assert_eq!(d.note, Some(Note::ForeignDecline { ip: Some(ip) }));
        assert!(!st.is_dirty(), "a forged DECLINE changes nothing");
        let l = st.get(a).unwrap();
        assert_eq!(l.kind, LeaseKind::Bound);
        assert_eq!(l.client, ClientKey::new(None, 1, &mac(1)));
    }
    // Without option 50.
    let no50 = raw(
        mac(2),
        9,
        0,
        [0; 4],
        [0; 4],
        &[(53, &[4]), (54, &SERVER.octets())],
    );
    assert_eq!(
        noted(&no50, &c, &mut st, &cfg).note,
        Some(Note::ForeignDecline { ip: None })
    );
    // For another server: silently not ours.
    let elsewhere = raw(
        mac(1),
        9,
        0,
        [0; 4],
        [0; 4],
        &[(53, &[4]), (50, &a.octets()), (54, &[10, 0, 0, 2])],
    );
    assert_eq!(
        noted(&elsewhere, &c, &mut st, &cfg),
        Decision {
            reply: None,
            note: None
        }
    );
    // The holder's DECLINE takes the address out of the pool.
    let d = noted(&decline(mac(1), None, a), &c, &mut st, &cfg);
    assert_eq!(
        d.note,
        Some(Note::Declined {
            ip: a,
            hold: cfg.decline_hold
        })
    );
    assert!(st.take_dirty());
    assert_eq!(st.get(a).unwrap().kind, LeaseKind::Declined);
    // The holder of an offer may decline it too; with option 61 the key is the id.
    let id = [1, 0x52, 0x54, 0, 0, 0, 7];
    let mut d7 = wire::pxe_discover(mac(7), ClientArch::BIOS, 7);
    d7.opts_mut()
        .insert(DhcpOption::ClientIdentifier(id.to_vec()));
    let o7 = decide(&d7, &c, &mut st, &cfg).unwrap().message.yiaddr();
    let d = noted(&decline(mac(7), None, o7), &c, &mut st, &cfg);
    assert_eq!(
        d.note,
        Some(Note::ForeignDecline { ip: Some(o7) }),
        "hw key is not the holder's id"
    );
    let d = noted(&decline(mac(7), Some(&id), o7), &c, &mut st, &cfg);
    assert_eq!(
        d.note,
        Some(Note::Declined {
            ip: o7,
            hold: cfg.decline_hold
        })
    );
}

fn flood_mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0xff, b[0], b[1], b[2], b[3]]
}

#[test]
fn a_discover_flood_cannot_keep_a_real_client_from_an_address() {
    let cfg = Policy {
        range: Some("10.0.0.100,10.0.0.110".parse().unwrap()),
        ..full_cfg()
    };
    let c = ctx67();
    let now = unix(c.now);
    let mut st = LeaseState::new();
    // The reproduction: 15 DISCOVERs from fresh MACs on an 11-address pool.
    let mut holds = vec![];
    for n in 0..15 {
        let d = decide_noted(
            &wire::pxe_discover(flood_mac(n), ClientArch::BIOS, n),
            &c,
            &mut st,
            &cfg,
        );
        let ip = d
            .reply
            .expect("every DISCOVER gets an offer")
            .message
            .yiaddr();
        let l = st.get(ip).unwrap();
        assert_eq!(l.client, ClientKey::new(None, 1, &flood_mac(n)));
        holds.push((l.expires - now, l.soft));
        assert_eq!(d.note.is_some(), n >= 11, "offer {n}: {:?}", d.note);
    }
    // While half the pool is free offers hold 60 s; then they are soft and shrink to 10 s.
    assert_eq!(holds[..6], [(60, false); 6]);
    assert_eq!(
        holds[6..11],
        [(50, true), (40, true), (30, true), (20, true), (10, true)]
    );
    assert!(holds[11..].iter().all(|h| *h == (10, true)));
    // A real client: DISCOVER, then 50 more flood DISCOVERs before its REQUEST arrives.
    let real = mac(200);
    let offer = decide(
        &wire::pxe_discover(real, ClientArch::BIOS, 1),
        &c,
        &mut st,
        &cfg,
    )
    .expect("an offer during the flood")
    .message;
    for n in 15..65 {
        assert!(decide(
            &wire::pxe_discover(flood_mac(n), ClientArch::BIOS, n),
            &c,
            &mut st,
            &cfg
        )
        .is_some());
    }
    let r = wire::pxe_request(&offer, real, ClientArch::BIOS, 1);
    let ack = decide(&r, &c, &mut st, &cfg).expect("an answer").message;
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    assert_eq!(st.get(ack.yiaddr()).unwrap().kind, LeaseKind::Bound);
    // A firm offer is never given to someone else while it holds.
    for n in 0..6 {
        let ip = Ipv4Addr::new(10, 0, 0, 100 + n as u8);
        assert_eq!(
            st.get(ip).unwrap().client,
            ClientKey::new(None, 1, &flood_mac(n))
        );
    }
    // A bound lease is never taken by a REQUEST, soft or not.
    let mut steal = wire::pxe_request(&offer, flood_mac(999), ClientArch::BIOS, 2);
    steal.set_chaddr(&flood_mac(999));
    let nak = decide(&steal, &c, &mut st, &cfg).unwrap().message;
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    // After the holds, the flood's offers are gone: the pool is free again.
    let later = Context {
        now: c.now + OFFER_HOLD,
        ..c
    };
    assert!(dora(mac(201), &mut st, &cfg, &later).is_some());
}

#[test]
fn pool_full_of_leases_is_a_note_not_an_offer() {
    let cfg = full_cfg();
    let c = ctx67();
    let mut st = LeaseState::new();
    for n in 1..=3 {
        assert!(dora(mac(n), &mut st, &cfg, &c).is_some());
    }
    let d = noted(&plain_discover(mac(9)), &c, &mut st, &cfg);
    assert_eq!(d.reply, None);
    assert_eq!(
        d.note,
        Some(Note::PoolFull {
            range: cfg.range.unwrap()
        })
    );
}

#[test]
fn an_early_renewal_is_answered_from_the_saved_lease_without_a_change() {
    let (cfg, c, mut st, a) = one_bound();
    assert!(st.take_dirty());
    assert!(st.is_durable(a));
    let renew = raw(mac(1), 11, 0, a.octets(), [0; 4], &[(53, &[3])]);
    // Ten minutes in (3000 s of 3600 left): the remaining time, nothing to save.
    let t = Context {
        now: c.now + Duration::from_secs(600),
        ..c
    };
    let (out, _) = run(&renew, &t, &mut st, &cfg).unwrap();
    assert_eq!(opt(&out, 53).unwrap(), [5]);
    assert_eq!(opt(&out, 51).unwrap(), 3000u32.to_be_bytes());
    assert_eq!(opt(&out, 58).unwrap(), 1500u32.to_be_bytes());
    assert!(!st.is_dirty());
    assert!(st.is_durable(a));
    // At T1 the lease is extended, which must be saved before the ACK leaves.
    let t1 = Context {
        now: c.now + Duration::from_secs(1800),
        ..c
    };
    let (out, _) = run(&renew, &t1, &mut st, &cfg).unwrap();
    assert_eq!(opt(&out, 51).unwrap(), 3600u32.to_be_bytes());
    assert!(st.is_dirty());
    assert!(!st.is_durable(a));
}

#[test]
fn a_one_kilobyte_client_id_is_kept_as_a_hash() {
    let cfg = full_cfg();
    let c = ctx67();
    let mut st = LeaseState::new();
    let id: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let mut d = wire::pxe_discover(mac(1), ClientArch::BIOS, 1);
    d.opts_mut()
        .insert(DhcpOption::ClientIdentifier(id.clone()));
    // Through the wire: RFC 3396 splits the option; the checked parser joins it again.
    let d = parse_request(&wire::encode(&d)).expect("a long option 61 parses");
    let offer = decide(&d, &c, &mut st, &cfg).unwrap().message;
    let mut r = wire::pxe_request(&offer, mac(1), ClientArch::BIOS, 1);
    r.opts_mut()
        .insert(DhcpOption::ClientIdentifier(id.clone()));
    let ack = decide(&r, &c, &mut st, &cfg).unwrap().message;
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    let l = st.get(ack.yiaddr()).unwrap();
    assert_eq!(l.client.kind(), crate::proto::dhcp::leases::KeyKind::IdHash);
    assert_eq!(l.client, ClientKey::new(Some(&id), 1, &mac(1)));
    assert!(
        st.to_text().lines().all(|line| line.len() < 120),
        "{}",
        st.to_text()
    );
}

#[test]
fn the_ipxe_loop_is_a_note() {
    let mut cfg = proxy_cfg();
    cfg.boot_file = Some("ipxe.efi".into());
    let d = noted(&ipxe_discover(7), &ctx67(), &mut LeaseState::new(), &cfg);
    assert_eq!(d.reply, None);
    assert_eq!(d.note, Some(Note::IpxeLoop { file: "ipxe.efi" }));
}

#[test]
fn excluded_addresses_are_counted_like_a_scan() {
    let cfg = Policy {
        router: Some(Ipv4Addr::new(10, 0, 0, 1)),
        dns: vec![
            Ipv4Addr::new(10, 0, 0, 53),
            Ipv4Addr::new(10, 0, 0, 53),
            Ipv4Addr::new(10, 0, 1, 0),
            Ipv4Addr::new(10, 0, 0, 1),
        ],
        ..Policy::default()
    };
    for prefix in [16u8, 23, 24, 30, 31, 32] {
        let ex = Excluded {
            server: Ipv4Addr::new(10, 0, 0, 9),
            cfg: &cfg,
            mask: u32::from(crate::proto::dhcp::policy::prefix_to_mask(prefix)),
        };
        let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
        for (a, b) in [
            (0, 0),
            (0, 255),
            (1, 254),
            (250, 260),
            (0, 600),
            (9, 9),
            (53, 54),
        ] {
            let (a, b) = (base + a, base + b);
            let scan = (a..=b).filter(|x| ex.contains(Ipv4Addr::from(*x))).count() as u64;
            assert_eq!(ex.count(a, b), scan, "/{prefix} {a}..={b}");
        }
    }
}

#[test]
fn full_offer_and_ack_carry_lease_and_pxe_options() {
    let cfg = full_cfg();
    let mut st = LeaseState::new();
    let (out, dest) = run(&bios_discover(), &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(dest, Destination::Broadcast);
    assert_eq!(&out[16..20], &[10, 0, 0, 100]);
    assert_eq!(opt(&out, 53).unwrap(), [2]);
    assert_eq!(opt(&out, 1).unwrap(), [255, 255, 255, 0]);
    assert_eq!(opt(&out, 3).unwrap(), SERVER.octets());
    assert_eq!(opt(&out, 6).unwrap(), [10, 0, 0, 53]);
    assert_eq!(opt(&out, 51).unwrap(), 3600u32.to_be_bytes());
    assert_eq!(opt(&out, 58).unwrap(), 1800u32.to_be_bytes());
    assert_eq!(opt(&out, 59).unwrap(), 3150u32.to_be_bytes());
    assert_eq!(opt(&out, 60).unwrap(), b"PXEClient");
    assert_eq!(
        opt(&out, 43).unwrap(),
        [6, 1, 8, 10, 4, 0, b'P', b'X', b'E', 255]
    );
    assert_eq!(opt(&out, 67).unwrap(), b"pxelinux.0", "requested in 55");
    assert_eq!(file(&out), "pxelinux.0");
    assert!(!st.is_dirty(), "an offer is not persisted");
    // A non-PXE client gets an address and no boot file...
    let (out, _) = run(&plain_discover(mac(9)), &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(&out[16..20], &[10, 0, 0, 101]);
    assert_eq!(file(&out), "");
    assert!(opt(&out, 43).is_none() && opt(&out, 60).is_none());
    // ...unless configured.
    let mut cfg2 = cfg.clone();
    cfg2.boot_non_pxe = true;
    let (out, _) = run(&plain_discover(mac(9)), &ctx67(), &mut st, &cfg2).unwrap();
    assert_eq!(file(&out), "pxelinux.0");
    assert!(opt(&out, 43).is_none());
}

#[test]
fn full_pool_no_double_allocation_and_persistence() {
    let cfg = full_cfg();
    let c = ctx67();
    // What the lease file holds (src/dhcp/store.rs writes and reads this text).
    let mut st = LeaseState::from_text("").unwrap();
    let a = dora(mac(1), &mut st, &cfg, &c).unwrap();
    assert!(st.take_dirty());
    let b = dora(mac(2), &mut st, &cfg, &c).unwrap();
    let file = st.to_text();
    assert_ne!(a, b);
    // Restart: a new table from the file.
    let mut st = LeaseState::from_text(&file).unwrap();
    let c3 = dora(mac(3), &mut st, &cfg, &c).unwrap();
    assert!(c3 != a && c3 != b);
    // Pool of three is full now.
    let d = wire::pxe_discover(mac(4), ClientArch::BIOS, 4);
    assert!(decide(&d, &c, &mut st, &cfg).is_none());
    // The same client gets its address back after the restart.
    assert_eq!(dora(mac(1), &mut st, &cfg, &c), Some(a));
    // After its lease runs out, another client may have it.
    let later = Context {
        now: c.now + cfg.lease_time + Duration::from_secs(1),
        ..c
    };
    let got = dora(mac(4), &mut st, &cfg, &later).unwrap();
    assert!([a, b, c3].contains(&got));
}

#[test]
fn requested_address_nak_decline_release_inform() {
    let cfg = full_cfg();
    let c = ctx67();
    let mut st = LeaseState::new();
    // DISCOVER asking for .102 gets it when free.
    let mut d = wire::pxe_discover(mac(1), ClientArch::BIOS, 1);
    d.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 102)));
    let offer = decide(&d, &c, &mut st, &cfg).unwrap().message;
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 102));
    let a = dora(mac(1), &mut st, &cfg, &c).unwrap();
    assert_eq!(a, Ipv4Addr::new(10, 0, 0, 102));
    // Another client asking for it in INIT-REBOOT gets a NAK; so does an address off the pool.
    for (ip, why) in [
        ([10, 0, 0, 102], "in use"),
        ([10, 0, 0, 7], "not in the pool"),
        ([192, 168, 1, 5], "wrong network"),
    ] {
        let req = raw(mac(2), 8, 0, [0; 4], [0; 4], &[(53, &[3]), (50, &ip)]);
        let (out, dest) = run(&req, &c, &mut st, &cfg).unwrap();
        assert_eq!(opt(&out, 53).unwrap(), [6], "{why}");
        assert_eq!(&out[16..20], &[0; 4]);
        assert!(opt(&out, 51).is_none());
        assert_eq!(dest, Destination::Broadcast);
    }
    // REQUEST for another server's offer: silence, and our offer is withdrawn.
    let d2 = wire::pxe_discover(mac(2), ClientArch::BIOS, 2);
    let o2 = decide(&d2, &c, &mut st, &cfg).unwrap().message;
    let mut r2 = wire::pxe_request(&o2, mac(2), ClientArch::BIOS, 2);
    r2.opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)));
    assert!(decide(&r2, &c, &mut st, &cfg).is_none());
    assert!(st.get(o2.yiaddr()).is_none());
    // DECLINE from the holder: the address stays out of the pool for decline_hold.
    assert_eq!(dora(mac(2), &mut st, &cfg, &c), Some(o2.yiaddr()));
    st.take_dirty();
    let dec = decline(mac(2), None, o2.yiaddr());
    let d = decide_noted(&parse_request(&dec).unwrap(), &c, &mut st, &cfg);
    assert!(d.reply.is_none());
    assert_eq!(
        d.note,
        Some(Note::Declined {
            ip: o2.yiaddr(),
            hold: cfg.decline_hold
        })
    );
    assert!(st.take_dirty());
    let o3 = decide(&d2, &c, &mut st, &cfg).unwrap().message;
    assert_ne!(o3.yiaddr(), o2.yiaddr());
    let later = Context {
        now: c.now + cfg.decline_hold,
        ..c
    };
    let b = dora(mac(3), &mut st, &cfg, &later).unwrap();
    assert_eq!(
        b,
        o2.yiaddr(),
        "declined address back after the hold (mac 2 holds {})",
        o3.yiaddr()
    );
    // RELEASE frees the address for others.
    let rel = raw(
        mac(1),
        10,
        0,
        a.octets(),
        [0; 4],
        &[(53, &[7]), (54, &SERVER.octets())],
    );
    assert!(run(&rel, &c, &mut st, &cfg).is_none());
    assert!(st.take_dirty());
    assert!(st.is_free_for(a, &ClientKey::new(None, 1, &mac(5)), 1_700_000_001));
    // RENEW (ciaddr, unicast) extends; INFORM gets configuration without a lease.
    let ren = raw(mac(3), 11, 0, b.octets(), [0; 4], &[(53, &[3])]);
    let (out, dest) = run(&ren, &later, &mut st, &cfg).unwrap();
    assert_eq!(opt(&out, 53).unwrap(), [5]);
    assert_eq!(dest, Destination::Unicast(b, 68));
    let inf = raw(
        mac(3),
        12,
        0,
        b.octets(),
        [0; 4],
        &[(53, &[8]), (60, b"PXEClient:Arch:00000:UNDI:002001")],
    );
    let (out, dest) = run(&inf, &later, &mut st, &cfg).unwrap();
    assert_eq!(opt(&out, 53).unwrap(), [5]);
    assert!(opt(&out, 51).is_none());
    assert_eq!(&out[16..20], &[0; 4]);
    assert_eq!(dest, Destination::Unicast(b, 68));
}

#[test]
fn full_mode_ignores_other_segments() {
    let cfg = full_cfg();
    let c = Context {
        server_ip: Ipv4Addr::new(192, 168, 7, 1),
        ..ctx67()
    };
    assert!(run(&bios_discover(), &c, &mut LeaseState::new(), &cfg).is_none());
}

#[test]
fn malformed_input_is_refused_without_panic() {
    let good = bios_discover();
    for n in 0..good.len() {
        let _ = parse_request(&good[..n]);
    }
    assert!(parse_request(&good[..200]).is_err());
    let mut bad = good.clone();
    bad[236] = 0x63 ^ 1;
    assert_eq!(parse_request(&bad), Err(wire::Malformed::BadCookie));
    let mut over = good[..good.len() - 1].to_vec();
    over.extend_from_slice(&[60, 200, b'x']);
    assert_eq!(parse_request(&over), Err(wire::Malformed::OptionOverflow));
}

fn all_modes(bytes: &[u8]) {
    let cfgs = [proxy_cfg(), full_cfg()];
    if let Ok(req) = parse_request(bytes) {
        for cfg in &cfgs {
            for port in [ServerPort::Dhcp, ServerPort::BootServer] {
                let c = ctx(port, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 68));
                if let Some(r) = decide(&req, &c, &mut LeaseState::new(), cfg) {
                    let _ = r.encode();
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        all_modes(&bytes);
    }

    #[test]
    fn mutated_discovers_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..12),
        tail in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let mut b = match which { 0 => bios_discover(), 1 => uefi_discover(), 2 => ipxe_discover(7), _ => plain_discover(MAC) };
        let end = b.len() - 1;
        b.truncate(end);
        b.extend_from_slice(&tail);
        for (i, v) in flips {
            if i < b.len() && !(4..236).contains(&i) {
                b[i] = v;
            }
        }
        all_modes(&b);
    }
}
