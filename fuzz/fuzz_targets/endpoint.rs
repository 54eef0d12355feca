//! Arbitrary datagrams from a few peers to an endpoint, each request accepted as a file of a
//! length taken from the input: no panic, every refusal emits a parsable ERROR, the table stays
//! within its caps, and every transfer accepted can be closed and released.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringboot::proto::tftp::admit::{Admission, AdmissionConfig};
use ringboot::proto::tftp::endpoint::{
    Accept, Decision, Endpoint, EndpointConfig, Event, NoMulticast, MAX_LINGERING,
};
use ringboot::proto::tftp::options::Limits;
use ringboot::proto::tftp::packet::Packet;
use std::net::SocketAddr;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let adm = Admission::new(AdmissionConfig {
        max_transfers: 4,
        max_per_client: 2,
        client_rate: 100,
    });
    let cfg = EndpointConfig {
        limits: Limits::default(),
        min_rto: Duration::from_millis(2),
        share: 4,
    };
    let mut e = Endpoint::new(cfg, adm.clone());
    let mut now = ringboot::sim_origin();
    let mut held = Vec::new();
    let mut buf = [0u8; 516];
    let local = "192.0.2.1".parse().unwrap();
    // Each chunk: [peer, flags, len, datagram...], separated by 0xFF 0xFF.
    for chunk in data.split(|&b| b == 0xFF) {
        let [peer, flags, size, dg @ ..] = chunk else { continue };
        now += Duration::from_millis(*flags as u64);
        let peer = SocketAddr::from(([10, 0, 0, peer % 4], 2000 + (*peer as u16 % 3)));
        let truncated = flags & 1 != 0;
        match e.handle_request(now, peer, local, dg, truncated) {
            Decision::Lookup(i) => {
                let len = (flags & 2 == 0).then_some(*size as u64 * 1000);
                let mtu = (flags & 4 != 0).then_some(576 + *size as u32 * 32);
                match e.accept(now, i, len, mtu, &mut NoMulticast) {
                    Accept::Unicast(a) => held.push(a.id),
                    Accept::Refuse(r) => {
                        let n = r.emit(&mut buf);
                        assert!(matches!(Packet::parse(&buf[..n]), Ok(Packet::Error { .. })));
                    }
                    Accept::Multicast => unreachable!("no multicast service"),
                }
            }
            Decision::Refuse(r) => {
                let n = r.emit(&mut buf);
                assert!(matches!(Packet::parse(&buf[..n]), Ok(Packet::Error { .. })));
            }
            Decision::Duplicate(id) => assert!(e.is_live(id)),
            Decision::Drop(_) => {}
        }
        while let Some(Event::Closed { id, .. }) = e.poll_event() {
            assert!(!e.is_live(id));
            if flags & 8 != 0 {
                e.release(id);
            }
        }
        assert!(e.held() <= 4);
        assert!(e.evicted_waiting() <= MAX_LINGERING);
        if flags & 16 != 0 {
            if let Some(id) = held.pop() {
                e.close(id);
                e.release(id);
            }
        }
    }
    for id in held {
        e.release(id);
    }
    // Whatever was evicted and not yet released still holds nothing more than its place.
    assert!(adm.total() <= 4);
});
