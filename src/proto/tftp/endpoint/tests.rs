use super::*;
use crate::proto::sim::{addr, Link, Node, Phase, Ran, Sim, TftpClient, TftpServer};
use crate::proto::tftp::admit::AdmissionConfig;
use crate::proto::tftp::client::{ClientConfig, ClientError, Event as ClientEvent, ProbeEnd};
use crate::proto::tftp::packet::{emit_ack, OptionWriter};
use crate::proto::tftp::transfer::{Outcome, PRE_ACK_RESENDS};
use crate::proto::tftp::{BlockNum, WindowSize};

const SERVER: u8 = 1;

fn endpoint(share: usize, per_client: usize, rate: u32) -> Endpoint {
    endpoint_with(share, per_client, rate, Limits::default())
}

fn endpoint_with(share: usize, per_client: usize, rate: u32, limits: Limits) -> Endpoint {
    let adm = Admission::new(AdmissionConfig {
        max_transfers: share,
        max_per_client: per_client,
        client_rate: rate,
    });
    let cfg = EndpointConfig {
        limits,
        min_rto: Duration::from_millis(2),
        share,
    };
    Endpoint::new(cfg, adm)
}

fn request(write: bool, name: &[u8], mode: Mode, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let mut w = OptionWriter::request(&mut buf, write, name, mode).unwrap();
    for (n, v) in opts {
        w.option(n, v.as_bytes()).unwrap();
    }
    let n = w.finish();
    buf[..n].to_vec()
}

fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    request(false, name.as_bytes(), Mode::Octet, opts)
}

fn local() -> IpAddr {
    addr(SERVER, 69).ip()
}

/// A request from `peer`, looked up as a file of `len` bytes and accepted.
fn accept(e: &mut Endpoint, now: Instant, peer: SocketAddr, dg: &[u8], len: u64) -> Accept {
    match e.handle_request(now, peer, local(), dg, false) {
        Decision::Lookup(i) => e.accept(now, i, Some(len), None, None, &mut NoMulticast),
        d => panic!("{d:?}"),
    }
}

fn unicast(a: Accept) -> Accepted {
    match a {
        Accept::Unicast(a) => a,
        a => panic!("{a:?}"),
    }
}

fn refused(a: Accept) -> Refusal<'static> {
    match a {
        Accept::Refuse(r) => r,
        a => panic!("{a:?}"),
    }
}

fn events(e: &mut Endpoint) -> Vec<Event> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

/// The client ACKs the transfer's first reply: its address is verified.
fn verify(e: &mut Endpoint, id: TransferId, now: Instant) {
    let t = e.transfer_mut(id).unwrap();
    let mut buf = [0u8; 512];
    while t.poll_transmit(now, &mut buf).is_some() {}
    let mut ack = [0u8; 4];
    emit_ack(&mut ack, BlockNum::ZERO);
    t.handle_datagram(now, &ack);
    assert!(t.is_verified());
}

#[test]
fn refusals_carry_their_codes_and_drops_their_reasons() {
    let now = crate::sim_origin();
    let mut e = endpoint(4, 4, 0);
    let peer = addr(2, 2000);
    let mut buf = [0u8; 516];
    let wrq = request(true, b"x", Mode::Octet, &[]);
    let Decision::Refuse(r) = e.handle_request(now, peer, local(), &wrq, false) else {
        panic!()
    };
    assert_eq!(r, Refusal::Write { filename: b"x" });
    let n = r.emit(&mut buf);
    assert_eq!(
        &buf[..n],
        b"\x00\x05\x00\x02ringboot is a read-only server\x00"
    );
    let Decision::Refuse(r) = e.handle_request(now, peer, local(), b"\x00\x01x\x00", false) else {
        panic!()
    };
    assert_eq!(r, Refusal::Malformed(ParseError::MissingMode));
    let n = r.emit(&mut buf);
    assert_eq!(
        &buf[..n],
        b"\x00\x05\x00\x04request has no NUL-terminated mode\x00"
    );
    let mail = request(false, b"x", Mode::Mail, &[]);
    let Decision::Refuse(r) = e.handle_request(now, peer, local(), &mail, false) else {
        panic!()
    };
    assert_eq!(r.code(), ErrorCode::IllegalOperation);
    assert_eq!(r.to_string(), "mail mode is not supported");
    let rq = rrq("x", &[]);
    let d = e.handle_request(now, peer, local(), &rq, true);
    assert!(matches!(d, Decision::Refuse(Refusal::TooLarge)), "{d:?}");
    let cases: [(&[u8], bool, Ignored); 3] = [
        (b"\x00\x04\x00\x01", true, Ignored::Truncated),
        (b"\x00\x04\x00\x01", false, Ignored::Unexpected(Opcode::Ack)),
        (b"\x00", false, Ignored::Malformed(ParseError::TooShort(1))),
    ];
    for (dg, truncated, why) in cases {
        match e.handle_request(now, peer, local(), dg, truncated) {
            Decision::Drop(w) => assert_eq!(w, why),
            d => panic!("{d:?}"),
        }
    }
    assert_eq!(e.held(), 0);
}

#[test]
fn a_resent_request_is_a_duplicate_and_a_different_one_supersedes() {
    let now = crate::sim_origin();
    let mut e = endpoint(4, 4, 0);
    let peer = addr(2, 2000);
    let probe = rrq("f", &[("tsize", "0"), ("blksize", "1468")]);
    let a = unicast(accept(&mut e, now, peer, &probe, 10_000));
    assert!(e.is_live(a.id));
    let later = now + Duration::from_secs(1);
    match e.handle_request(later, peer, local(), &probe, false) {
        Decision::Duplicate(id) => assert_eq!(id, a.id),
        d => panic!("{d:?}"),
    }
    assert!(events(&mut e).is_empty());
    // The same request from another port is another client.
    let b = unicast(accept(&mut e, now, addr(2, 2001), &probe, 10_000));
    assert_ne!(a.id, b.id);
    // The real request after the probe, from the same port, its ERROR still on the way.
    let real = rrq("f", &[("blksize", "1468")]);
    let d = e.handle_request(later, peer, local(), &real, false);
    assert!(matches!(d, Decision::Lookup(_)), "{d:?}");
    let closed = Event::Closed {
        id: a.id,
        reason: CloseReason::Superseded,
    };
    assert_eq!(events(&mut e), [closed]);
    assert!(!e.is_live(a.id));
    assert_eq!(
        e.held(),
        2,
        "its place is held until the driver releases it"
    );
    e.release(a.id);
    assert_eq!(e.held(), 1);
    assert!(e.transfer(a.id).is_none());
}

#[test]
fn negotiation_fits_the_mtu_and_decides_gso() {
    let now = crate::sim_origin();
    let mut e = endpoint(8, 8, 0);
    let big = rrq("f", &[("blksize", "65464"), ("tsize", "0")]);
    let cases = [
        (addr(2, 1), Some(1500), Some(1000), 1468, true, Some(1000)),
        (addr(2, 2), None, Some(1000), 65464, true, Some(1000)),
        // Netascii's length is learned while sending: no tsize.
        (addr(2, 3), Some(9000), None, 8968, true, None),
    ];
    for (peer, mtu, len, blksize, gso, tsize) in cases {
        let Decision::Lookup(i) = e.handle_request(now, peer, local(), &big, false) else {
            panic!()
        };
        let a = unicast(e.accept(now, i, len, mtu, None, &mut NoMulticast));
        let n = *e.transfer(a.id).unwrap().negotiated();
        assert_eq!((n.blksize.get(), a.gso, n.tsize), (blksize, gso, tsize));
    }
    // Fragmentation allowed: the block is not cut to the MTU, and GSO may not send it.
    let frag = Limits {
        allow_fragmentation: true,
        ..Limits::default()
    };
    let mut e = endpoint_with(8, 8, 0, frag);
    let Decision::Lookup(i) = e.handle_request(now, addr(2, 4), local(), &big, false) else {
        panic!()
    };
    let a = unicast(e.accept(now, i, Some(1), Some(1500), None, &mut NoMulticast));
    assert_eq!(e.transfer(a.id).unwrap().negotiated().blksize.get(), 65464);
    assert!(!a.gso);
}

#[test]
fn rfc2090_requests_are_offered_to_the_multicast_service_first() {
    let now = crate::sim_origin();
    let mut e = endpoint(8, 8, 0);
    let peer = addr(2, 2000);
    let mc = rrq(
        "f",
        &[("multicast", ""), ("blksize", "1428"), ("tsize", "0")],
    );
    let mut offers = Vec::new();
    let Decision::Lookup(i) = e.handle_request(now, peer, local(), &mc, false) else {
        panic!()
    };
    let mut take = |r: &McRequest, _: Instant| {
        offers.push(*r);
        true
    };
    assert!(matches!(
        e.accept(now, i, Some(5000), None, None, &mut take),
        Accept::Multicast
    ));
    let want = McRequest {
        client: peer,
        local: local(),
        blksize: BlockSize::new(1428).unwrap(),
        tsize: true,
    };
    assert_eq!(offers, [want]);
    assert_eq!(e.held(), 0, "the service holds it, not the endpoint");
    // The service says no: plain unicast, no `multicast` in the OACK.
    let Decision::Lookup(i) = e.handle_request(now, peer, local(), &mc, false) else {
        panic!()
    };
    let a = unicast(
        e.accept(now, i, Some(5000), None, None, &mut |_: &McRequest, _| {
            false
        }),
    );
    let mut buf = [0u8; 512];
    let t = e.transfer_mut(a.id).unwrap();
    let Some(crate::proto::Transmit {
        payload: crate::proto::Payload::Datagram(n),
        ..
    }) = t.poll_transmit(now, &mut buf)
    else {
        panic!()
    };
    let Ok(Packet::Oack(o)) = Packet::parse(&buf[..n]) else {
        panic!()
    };
    assert!(o.get("multicast").is_none());
    // Never offered: netascii, IPv6, or no `multicast` option.
    let never = |r: &McRequest, _: Instant| -> bool { panic!("offered {r:?}") };
    let v6: SocketAddr = "[2001:db8::2]:2000".parse().unwrap();
    let text = request(false, b"f", Mode::Netascii, &[("multicast", "")]);
    for (peer, dg) in [(addr(2, 3), &text), (v6, &mc), (addr(2, 4), &rrq("f", &[]))] {
        let Decision::Lookup(i) = e.handle_request(now, peer, local(), dg, false) else {
            panic!()
        };
        unicast(e.accept(now, i, Some(5000), None, None, &mut { never }));
    }
}

#[test]
fn over_the_share_an_unverified_transfer_makes_room_within_the_per_address_caps() {
    let now = crate::sim_origin();
    let mut e = endpoint(2, 1, 0);
    let dg = rrq("f", &[("blksize", "1468")]);
    let a = unicast(accept(&mut e, now, addr(2, 1), &dg, 100_000));
    let b = unicast(accept(&mut e, now, addr(3, 1), &dg, 100_000));
    verify(&mut e, b.id, now);
    // Share full: the oldest unverified (a) goes for c.
    let c = unicast(accept(&mut e, now, addr(4, 1), &dg, 100_000));
    let evicted = Event::Closed {
        id: a.id,
        reason: CloseReason::Evicted,
    };
    assert_eq!(events(&mut e), [evicted]);
    assert_eq!((e.held(), e.evicted_waiting()), (2, 1));
    e.release(a.id);
    assert_eq!((e.held(), e.evicted_waiting()), (2, 0));
    verify(&mut e, c.id, now);
    // Everyone answered: nobody to drop.
    let r = refused(accept(&mut e, now, addr(5, 1), &dg, 100_000));
    assert_eq!(r, Refusal::OverCap(OverCap::Busy));
    assert_eq!(r.code(), ErrorCode::NotDefined);
    assert!(r.to_string().starts_with("server busy"));
    // Per address: b's address holds its one transfer.
    e.release(c.id);
    let r = refused(accept(&mut e, now, addr(3, 2), &dg, 100_000));
    assert_eq!(r, Refusal::OverCap(OverCap::ClientBusy));
    assert_eq!(e.held(), 1);
    e.close(b.id);
    e.release(b.id);
    assert_eq!(e.held(), 0);
    assert_eq!(e.admission().total(), 0);
}

#[test]
fn evicted_transfers_waiting_for_their_sockets_are_bounded() {
    let now = crate::sim_origin();
    let mut e = endpoint(1, 1, 0);
    let dg = rrq("f", &[]);
    let mut last = unicast(accept(&mut e, now, addr(2, 1), &dg, 10)).id;
    for i in 1..=MAX_LINGERING as u8 {
        // Each new address evicts the one before, whose socket never closes here.
        let id = unicast(accept(&mut e, now, addr(2 + i, 1), &dg, 10)).id;
        assert_ne!(id, last);
        last = id;
    }
    assert_eq!(e.evicted_waiting(), MAX_LINGERING);
    let r = refused(accept(&mut e, now, addr(100, 1), &dg, 10));
    assert_eq!(r, Refusal::OverCap(OverCap::Busy));
    assert_eq!(e.held(), 1);
}

#[test]
fn the_new_transfer_rate_of_an_address_is_capped() {
    let now = crate::sim_origin();
    // 10 a second, bursts of 2.
    let mut e = endpoint(100, 2, 10);
    let dg = rrq("f", &[]);
    for port in 0..2 {
        let id = unicast(accept(&mut e, now, addr(2, port), &dg, 10)).id;
        e.release(id);
    }
    let r = refused(accept(&mut e, now, addr(2, 9), &dg, 10));
    assert_eq!(r, Refusal::OverCap(OverCap::ClientRate));
    unicast(accept(
        &mut e,
        now + Duration::from_millis(100),
        addr(2, 9),
        &dg,
        10,
    ));
}

// -----------------------------------------------------------------------------------------
// The endpoint, its transfers and firmware-like clients together, on virtual time.
// -----------------------------------------------------------------------------------------

fn server(share: usize, per_client: usize, files: &[(&str, usize)]) -> TftpServer {
    let mut s = TftpServer::new(endpoint(share, per_client, 0), addr(SERVER, 69));
    for (name, len) in files {
        let content = (0..*len).map(|i| (i * 7 + i / 251) as u8).collect();
        s.add_file(name.as_bytes(), content);
    }
    s
}

fn file(s: &TftpServer, len: usize) -> Vec<u8> {
    let _ = s;
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn edk2(probe: bool) -> ClientConfig {
    ClientConfig {
        blksize: BlockSize::new(1468),
        windowsize: WindowSize::new(4),
        tsize: probe,
        probe: probe.then_some(ProbeEnd::Error8),
        retransmit: Duration::from_millis(400),
        ..ClientConfig::default()
    }
}

fn run(net: &mut Sim, nodes: &mut [&mut dyn Node]) {
    let until = net.now() + Duration::from_secs(3600);
    assert_eq!(net.run(nodes, until), Ran::Quiet);
}

#[test]
fn sim_duplicate_request_resends_the_oack_and_the_download_completes() {
    let t0 = crate::sim_origin();
    let mut s = server(4, 4, &[("f", 50_000)]);
    let mut c = TftpClient::one(addr(2, 2000), s.addr, b"f", edk2(false), t0);
    let mut net = Sim::new(t0, 1, Link::lan(0.0, 0.0, 0.0));
    // The first OACK is lost: the client asks again (the same bytes, the same port).
    net.drop_next(c.addr, 1);
    run(&mut net, &mut [&mut s, &mut c]);
    assert_eq!(c.last_event(), Some(&ClientEvent::Finished));
    assert!(c.received == file(&s, 50_000));
    assert_eq!(
        s.decisions[..2],
        ["lookup", "duplicate"],
        "{:?}",
        s.decisions
    );
    assert_eq!(s.ended.len(), 1, "one transfer: {:?}", s.ended);
    assert_eq!(s.ended[0].outcome, Some(Outcome::Completed));
    assert_eq!(s.endpoint.held(), 0);
}

#[test]
fn sim_superseding_request_after_a_size_probe() {
    for lost_error in [true, false] {
        let t0 = crate::sim_origin();
        let mut s = server(4, 4, &[("f", 30_000)]);
        let phases = vec![
            Phase {
                filename: b"f".to_vec(),
                cfg: edk2(true),
                gap: Duration::ZERO,
            },
            Phase {
                filename: b"f".to_vec(),
                cfg: edk2(false),
                gap: Duration::from_millis(3),
            },
        ];
        // Both requests from one port (a ROM that keeps it); the probe's ERROR lost or not.
        let mut c = TftpClient::new(addr(2, 2000), s.addr, phases, t0);
        c.drop_probe_error = lost_error;
        let mut net = Sim::new(t0, 2, Link::lan(0.0, 0.0, 0.0));
        run(&mut net, &mut [&mut s, &mut c]);
        let probe = ClientEvent::ProbeDone {
            tsize: Some(30_000),
        };
        assert_eq!(c.events, [probe, ClientEvent::Finished]);
        assert!(c.received == file(&s, 30_000));
        assert_eq!(s.ended.len(), 2, "{:?}", s.ended);
        if lost_error {
            assert_eq!(s.ended[0].closed_by, Some(CloseReason::Superseded));
            assert_eq!(s.ended[0].outcome, None);
        } else {
            let end = Outcome::ProbeEnded(ErrorCode::OptionNegotiation);
            assert_eq!(s.ended[0].outcome, Some(end));
        }
        assert_eq!(s.ended[1].outcome, Some(Outcome::Completed));
        assert_eq!(s.endpoint.held(), 0);
    }
}

#[test]
fn sim_refusals_reach_the_client_as_errors() {
    let t0 = crate::sim_origin();
    let mut s = server(4, 4, &[("f", 100)]);
    let mail = ClientConfig {
        mode: Mode::Mail,
        ..edk2(false)
    };
    let mut missing = TftpClient::one(addr(2, 1), s.addr, b"nope", edk2(false), t0);
    let mut mailer = TftpClient::one(addr(3, 1), s.addr, b"f", mail, t0);
    let mut net = Sim::new(t0, 3, Link::lan(0.0, 0.0, 0.0));
    run(&mut net, &mut [&mut s, &mut missing, &mut mailer]);
    let code = |c: &TftpClient| match c.last_event() {
        Some(ClientEvent::Failed(ClientError::Server { code, .. })) => *code,
        e => panic!("{e:?}"),
    };
    assert_eq!(code(&missing), ErrorCode::FileNotFound);
    assert_eq!(code(&mailer), ErrorCode::IllegalOperation);
    assert!(s.ended.is_empty());
    assert_eq!(s.decisions, ["lookup", "refuse"]);
}

#[test]
fn sim_caps_refuse_with_error_0_and_a_spoofed_request_makes_room() {
    let t0 = crate::sim_origin();
    let mut s = server(1, 4, &[("f", 200_000)]);
    let mut real = TftpClient::one(addr(2, 1), s.addr, b"f", edk2(false), t0);
    let late = t0 + Duration::from_millis(5);
    let mut other = TftpClient::one(addr(3, 1), s.addr, b"f", edk2(false), late);
    let mut net = Sim::new(t0, 4, Link::lan(0.0, 0.0, 0.0));
    run(&mut net, &mut [&mut s, &mut real, &mut other]);
    assert_eq!(real.last_event(), Some(&ClientEvent::Finished));
    match other.last_event() {
        Some(ClientEvent::Failed(ClientError::Server { code, message })) => {
            assert_eq!(*code, ErrorCode::NotDefined);
            assert!(message.starts_with("server busy"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    // A spoofed request holds the only place; a real client takes it over.
    let t1 = net.now();
    let mut spoofed = TftpClient::one(addr(4, 1), s.addr, b"f", edk2(false), t1);
    spoofed.silent = true;
    let mut net2 = Sim::new(t1, 5, Link::lan(0.0, 0.0, 0.0));
    let fake = rrq("f", &[("blksize", "1468"), ("windowsize", "4")]);
    net2.send(spoofed.addr, s.addr, &fake);
    let mut after = TftpClient::one(
        addr(5, 1),
        s.addr,
        b"f",
        edk2(false),
        t1 + Duration::from_millis(1),
    );
    run(&mut net2, &mut [&mut s, &mut spoofed, &mut after]);
    assert_eq!(after.last_event(), Some(&ClientEvent::Finished));
    let evicted = s.ended.iter().find(|e| e.peer == spoofed.addr).unwrap();
    assert_eq!(evicted.closed_by, Some(CloseReason::Evicted));
    assert_eq!(s.endpoint.held(), 0);
}

#[test]
fn sim_a_spoofed_request_draws_the_pre_ack_budget_and_no_error() {
    for opts in [&[][..], &[("tsize", "0")][..]] {
        let t0 = crate::sim_origin();
        let mut s = server(4, 4, &[("f", 100_000)]);
        let mut victim = TftpClient::one(addr(2, 1), s.addr, b"f", edk2(false), t0);
        victim.silent = true;
        let mut net = Sim::new(t0, 6, Link::lan(0.0, 0.0, 0.0));
        net.send(victim.addr, s.addr, &rrq("f", opts));
        run(&mut net, &mut [&mut s, &mut victim]);
        let first = if opts.is_empty() { 3 } else { 6 }; // DATA 1, or the OACK
        assert_eq!(victim.heard.len(), 1 + PRE_ACK_RESENDS as usize, "{opts:?}");
        assert!(
            victim.heard.iter().all(|&op| op == first),
            "{:?}",
            victim.heard
        );
        assert_eq!(s.ended.len(), 1);
        assert_eq!(s.ended[0].outcome, Some(Outcome::Unanswered));
        assert!(net.now() - t0 <= Duration::from_secs(1 + 2 + 4));
        assert_eq!(s.endpoint.held(), 0);
    }
}

/// A reload's new limits and share apply to the next request only; a running transfer keeps
/// what it negotiated. A resent request of a live transfer is recognised without deciding.
#[test]
fn reconfigure_applies_to_the_next_request_and_resends_are_recognised() {
    let now = crate::sim_origin();
    let mut e = endpoint(1, 4, 0);
    let (a, b) = (addr(10, 2000), addr(11, 2000));
    let first = rrq("f", &[("blksize", "1400")]);
    let id = unicast(accept(&mut e, now, a, &first, 100_000)).id;
    assert!(e.is_resend(a, &first));
    assert!(!e.is_resend(a, &rrq("g", &[])) && !e.is_resend(b, &first));
    verify(&mut e, id, now);
    assert!(matches!(
        refused(accept(&mut e, now, b, &rrq("f", &[]), 10)),
        Refusal::OverCap(_)
    ));
    e.reconfigure(EndpointConfig {
        limits: Limits {
            max_blksize: BlockSize::new(512).unwrap(),
            ..Limits::default()
        },
        min_rto: Duration::from_millis(2),
        share: 2,
    });
    let second = unicast(accept(
        &mut e,
        now,
        b,
        &rrq("f", &[("blksize", "1400")]),
        10,
    ))
    .id;
    assert_eq!(e.transfer(second).unwrap().negotiated().blksize.get(), 512);
    assert_eq!(e.transfer(id).unwrap().negotiated().blksize.get(), 1400);
}

#[test]
fn the_oack_window_fits_what_the_path_holds() {
    let now = crate::sim_origin();
    let mut e = endpoint_with(8, 8, 0, Limits::default());
    let ask = |w: &str| {
        rrq(
            "f",
            &[("blksize", "1468"), ("windowsize", w), ("tsize", "0")],
        )
    };
    // Frame bytes of one 1468-byte block over IPv4.
    let frame = crate::proto::cc::wire_bytes(1468 + 4, false);
    let cases = [
        // Open path (loopback, or a link that never overflowed): what was asked.
        (addr(3, 1), "64", None, 64),
        // A path that held 10 frames for this flow: 10.
        (addr(3, 2), "64", Some(10 * frame + frame / 2), 10),
        // Never below 4 blocks, never above what was asked.
        (addr(3, 3), "64", Some(frame), 4),
        (addr(3, 4), "2", Some(frame), 2),
        (addr(3, 5), "16", Some(1000 * frame), 16),
    ];
    for (peer, w, path, granted) in cases {
        let dg = ask(w);
        let Decision::Lookup(i) = e.handle_request(now, peer, local(), &dg, false) else {
            panic!()
        };
        let a = unicast(e.accept(now, i, Some(1 << 20), Some(1500), path, &mut NoMulticast));
        let n = *e.transfer(a.id).unwrap().negotiated();
        assert_eq!(
            n.windowsize.get(),
            granted,
            "{peer} asked {w} path {path:?}"
        );
    }
    // A client that asked no window stays lockstep whatever the path.
    let plain = rrq("f", &[("blksize", "1468")]);
    let Decision::Lookup(i) = e.handle_request(now, addr(3, 6), local(), &plain, false) else {
        panic!()
    };
    let a = unicast(e.accept(
        now,
        i,
        Some(1 << 20),
        Some(1500),
        Some(frame),
        &mut NoMulticast,
    ));
    assert_eq!(e.transfer(a.id).unwrap().negotiated().windowsize.get(), 1);
}
