//! Received control data and peer addresses as the kernel (or a confused one) might write them:
//! `parse_pktinfo` and `parse_sockaddr` never panic; what `put_pktinfo_cmsg` writes parses back
//! to the same local address; a parsed peer address re-encodes to bytes that parse back alike.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringboot::fuzzing::{
    parse_pktinfo, parse_sockaddr, put_pktinfo_cmsg, sockaddr_bytes, PKTINFO_CMSG_SPACE,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// Linux values (the fuzz crate does not depend on libc).
const IPPROTO_IP: i32 = 0;
const IP_PKTINFO: i32 = 8;
const IPPROTO_IPV6: i32 = 41;
const IPV6_PKTINFO: i32 = 50;

fuzz_target!(|data: &[u8]| {
    // 1. The raw bytes as control data and as a sockaddr.
    let _ = parse_pktinfo(data);
    if let Some(a) = parse_sockaddr(data) {
        assert_eq!(parse_sockaddr(&sockaddr_bytes(a)), Some(a));
    }
    // 2. The first bytes as a local address and interface: the builder's message round trips,
    //    also after unknown messages and with trailing garbage.
    if data.len() < 21 {
        return;
    }
    let ifindex = u32::from_ne_bytes(data[1..5].try_into().unwrap());
    let local = if data[0] & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(data[5], data[6], data[7], data[8]))
    } else {
        let o: [u8; 16] = data[5..21].try_into().unwrap();
        IpAddr::V6(Ipv6Addr::from(o))
    };
    let rest = &data[21..];
    let mut buf = [0u8; 256];
    // An optional unknown message first (level/type from the input), as the kernel may add.
    let skip = if data[0] & 2 != 0 && rest.len() >= 9 {
        let len = (rest[8] as usize % 32).min(rest.len() - 9);
        let space = 16 + len.div_ceil(8) * 8;
        buf[..8].copy_from_slice(&(16 + len).to_ne_bytes());
        let level = i32::from_ne_bytes(rest[0..4].try_into().unwrap());
        let ty = i32::from_ne_bytes(rest[4..8].try_into().unwrap());
        if [(IPPROTO_IP, IP_PKTINFO), (IPPROTO_IPV6, IPV6_PKTINFO)].contains(&(level, ty)) {
            return; // would itself be a packet-info message
        }
        buf[8..12].copy_from_slice(&level.to_ne_bytes());
        buf[12..16].copy_from_slice(&ty.to_ne_bytes());
        buf[16..16 + len].copy_from_slice(&rest[9..9 + len]);
        space
    } else {
        0
    };
    let n = put_pktinfo_cmsg(&mut buf[skip..skip + PKTINFO_CMSG_SPACE], local, ifindex);
    let needed = match local {
        IpAddr::V4(a) => !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast(),
        IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
    };
    assert_eq!(n > 0, needed, "{local}: message written iff needed");
    if n == 0 {
        return;
    }
    assert!(n <= PKTINFO_CMSG_SPACE);
    let end = skip + n;
    let tail = rest
        .len()
        .min(buf.len() - end)
        .min(if data[0] & 4 != 0 { 40 } else { 0 });
    buf[end..end + tail].copy_from_slice(&rest[rest.len() - tail..]);
    let (got, got_if) = parse_pktinfo(&buf[..end + tail]).expect("own message parses");
    assert_eq!(got, local);
    match local {
        // The builder leaves the IPv4 interface to the routing table.
        IpAddr::V4(_) => assert_eq!(got_if, 0),
        IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80 => assert_eq!(got_if, ifindex),
        IpAddr::V6(_) => assert_eq!(got_if, 0),
    }
});
