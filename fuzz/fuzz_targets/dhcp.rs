//! Any datagram through the DHCP responder: `wire::parse_request` never panics; a request that
//! parses is decided in proxy and full mode (fixed configs, a lease table with bound, offered,
//! declined and expired records), on port 67 and 4011, from a client, a relay and a boot-server
//! peer, and decided again (a retransmission) on the changed table. Every reply must:
//! - encode to 300..=1500 bytes that parse back as a BOOTREPLY with the request's xid and chaddr,
//!   a message type, and our server identifier;
//! - go only where RFC 2131 4.1 / PXE say: broadcast, the relay (giaddr:67), the client's ciaddr:68,
//!   or (port 4011 only) back to the request's own source;
//! - in proxy mode, never offer an address or a lease and never touch the lease table;
//! - in full mode, give only addresses of the pool that are not the server's, router's or DNS
//!   server's, and leave a table whose file form reads back identically, with at most one live
//!   bound record per client.
#![no_main]
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use libfuzzer_sys::fuzz_target;
use ringboot::dhcp::config::{BootRule, ClientArch, MtftpConfig};
use ringboot::dhcp::{DhcpConfig, DhcpMode};
use ringboot::proto::dhcp::leases::LeaseKind;
use ringboot::proto::dhcp::wire::{
    self, as_ipxe, parse_any, parse_request, pxe_discover, pxe_request,
};
use ringboot::proto::dhcp::{Context, Destination, LeaseState, Policy, Reply, ServerPort};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);
const MASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
const T0: u64 = 1_700_000_000;

fn proxy_cfg() -> DhcpConfig {
    let rule = |f: fn(&mut BootRule)| {
        let mut r = BootRule::default();
        f(&mut r);
        r
    };
    let cfg = DhcpConfig {
        mode: DhcpMode::Proxy,
        boot_file: Some("pxelinux.0".into()),
        ipxe_script: Some("http://10.0.0.1/boot.ipxe".into()),
        rules: vec![
            rule(|r| {
                r.user_class = Some("iPXE".into());
                r.mac = Some("52:54:00:aa".parse().unwrap());
                r.boot_file = Some("lab.ipxe".into());
            }),
            rule(|r| {
                r.arch = vec!["efi-x64".parse().unwrap(), "efi-arm64".parse().unwrap()];
                r.boot_file = Some("efi/syslinux.efi".into());
            }),
            rule(|r| {
                r.arch = vec!["http-x64".parse().unwrap()];
                r.boot_file = Some("http://10.0.0.1/boot.efi".into());
            }),
            rule(|r| {
                r.subnet = Some("10.9.0.0/16".parse().unwrap());
                r.boot_file = Some("remote.0".into());
                r.next_server = Some(Ipv4Addr::new(10, 9, 0, 1));
            }),
        ],
        mtftp: vec![MtftpConfig::new(
            "pxelinux.0",
            Ipv4Addr::new(239, 255, 1, 1),
            3001,
            1759,
        )],
        pxe_prompt: "ringboot".into(),
        ..DhcpConfig::default()
    };
    cfg.validate().expect("proxy config is valid");
    cfg
}

fn full_cfg() -> DhcpConfig {
    let cfg = DhcpConfig {
        mode: DhcpMode::Full,
        range: Some("10.0.0.100,10.0.0.110".parse().unwrap()),
        netmask: Some(MASK),
        router: Some(Ipv4Addr::new(10, 0, 0, 105)),
        dns: vec![DNS, Ipv4Addr::new(10, 0, 0, 107)],
        domain_name: Some("lab.example".into()),
        lease_time: Duration::from_secs(600),
        decline_hold: Duration::from_secs(300),
        ..proxy_cfg()
    };
    cfg.validate().expect("full config is valid");
    cfg
}

fn ctx(port: ServerPort, source: SocketAddrV4, at: u64) -> Context {
    Context {
        server_ip: SERVER,
        netmask: MASK,
        port,
        source,
        now: UNIX_EPOCH + Duration::from_secs(at),
    }
}

fn from_client(at: u64) -> Context {
    ctx(
        ServerPort::Dhcp,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        at,
    )
}

/// The decision with `cfg`'s policy (the driver builds the policy once at start).
fn decide(req: &Message, c: &Context, st: &mut LeaseState, cfg: &DhcpConfig) -> Option<Reply> {
    ringboot::proto::dhcp::decide(req, c, st, &Policy::from(cfg))
}

/// Run `m` through its wire form, as the driver does.
fn wire_decide(m: &Message, c: &Context, st: &mut LeaseState, cfg: &DhcpConfig) -> Option<Reply> {
    let bytes = wire::encode(m);
    decide(
        &parse_request(&bytes).expect("builder output parses"),
        c,
        st,
        cfg,
    )
}

/// A lease table built by the responder itself (so it stays valid whatever the table's own API
/// becomes): bound clients (one by option 61), an open offer, a decline, an expired lease.
fn full_state() -> &'static LeaseState {
    static ST: OnceLock<LeaseState> = OnceLock::new();
    ST.get_or_init(|| {
        let cfg = full_cfg();
        let mut st = LeaseState::new();
        // DISCOVER then REQUEST, both passed through `dress` (option 61, option 77).
        let dora = |st: &mut LeaseState, mac, arch, xid, at, dress: &dyn Fn(Message) -> Message| {
            let d = dress(pxe_discover(mac, arch, xid));
            let offer = wire_decide(&d, &from_client(at), st, &cfg).expect("offer");
            let req = dress(pxe_request(&offer.message, mac, arch, xid));
            let ack = wire_decide(&req, &from_client(at), st, &cfg).expect("ack");
            assert_eq!(ack.message.opts().msg_type(), Some(MessageType::Ack));
            (req, offer.message.yiaddr())
        };
        // Expired long ago: its address is free for others but kept for it.
        let old = [0x52, 0x54, 0, 0, 0, 0x01];
        dora(&mut st, old, ClientArch::BIOS, 1, T0 - 100_000, &|m| m);
        // Bound now, by MAC, and by option 61 (iPXE sends one).
        let a = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        dora(&mut st, a, ClientArch::BIOS, 2, T0 - 10, &|m| m);
        let b = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
        let with_id = |m: Message| {
            let mut m = as_ipxe(m);
            m.opts_mut()
                .insert(DhcpOption::ClientIdentifier([&[1u8][..], &b[..]].concat()));
            m
        };
        let (d, got) = dora(&mut st, b, ClientArch::EFI_X64, 3, T0 - 10, &with_id);
        // Offered, not yet requested.
        let c = [0x52, 0x54, 0x00, 0xde, 0xad, 0x01];
        wire_decide(
            &pxe_discover(c, ClientArch::EFI_X64, 4),
            &from_client(T0 - 5),
            &mut st,
            &cfg,
        )
        .expect("offer");
        // Declined by the client bound by option 61.
        let mut decline = d;
        decline
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Decline));
        decline
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(got));
        decline
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER));
        let _ = wire_decide(&decline, &from_client(T0 - 5), &mut st, &cfg);
        let _ = st.take_dirty();
        st
    })
}

fn cfgs() -> &'static (DhcpConfig, DhcpConfig) {
    static C: OnceLock<(DhcpConfig, DhcpConfig)> = OnceLock::new();
    C.get_or_init(|| (proxy_cfg(), full_cfg()))
}

fn check_reply(req: &Message, c: &Context, r: &Reply, cfg: &DhcpConfig) {
    let bytes = r.encode();
    assert!(
        (wire::MIN_LEN..=wire::MAX_LEN).contains(&bytes.len()),
        "reply of {} bytes",
        bytes.len()
    );
    let back = parse_any(&bytes).expect("a reply parses back");
    assert_eq!(back.opcode(), Opcode::BootReply);
    assert_eq!(back.xid(), req.xid());
    assert_eq!(back.chaddr(), req.chaddr());
    let ty = back.opts().msg_type().expect("reply has a message type");
    assert!(matches!(
        ty,
        MessageType::Offer | MessageType::Ack | MessageType::Nak
    ));
    assert_eq!(
        back.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    if let Destination::Unicast(ip, port) = r.dest {
        let relay = port == 67 && !req.giaddr().is_unspecified() && ip == req.giaddr();
        let client = port == 68 && !req.ciaddr().is_unspecified() && ip == req.ciaddr();
        let back_to_source =
            c.port == ServerPort::BootServer && SocketAddrV4::new(ip, port) == c.source;
        assert!(
            relay || client || back_to_source,
            "reply to {ip}:{port} for a request from {} on {:?} (giaddr {}, ciaddr {})",
            c.source,
            c.port,
            req.giaddr(),
            req.ciaddr()
        );
    }
    let lease = back.opts().get(OptionCode::AddressLeaseTime).is_some();
    match cfg.mode {
        DhcpMode::Proxy => {
            assert!(!lease, "proxy reply with a lease");
            if ty == MessageType::Offer {
                assert!(back.yiaddr().is_unspecified(), "proxy offers an address");
            }
        }
        _ => {
            let y = back.yiaddr();
            if ty != MessageType::Nak && lease {
                let range = cfg.range.unwrap();
                assert!(range.contains(y), "{y} outside the pool");
                assert!(
                    y != SERVER && Some(y) != cfg.router && !cfg.dns.contains(&y),
                    "{y} is an excluded address"
                );
            }
        }
    }
}

fn check_state(st: &LeaseState, at: u64) {
    let text = st.to_text();
    let back = LeaseState::from_text(&text).expect("lease file reads back");
    assert_eq!(back.to_text(), text, "lease file round trip");
    let mut bound = HashSet::new();
    for l in st.iter() {
        if l.kind == LeaseKind::Bound && l.holds(at) {
            assert!(
                bound.insert(l.client.clone()),
                "{:?} holds two addresses",
                l.client
            );
        }
    }
}

fn run(req: &Message) {
    let (proxy, full) = cfgs();
    let relay = Ipv4Addr::new(10, 0, 0, 254);
    let sources = [
        (
            ServerPort::Dhcp,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        ),
        (ServerPort::Dhcp, SocketAddrV4::new(relay, 67)),
        (
            ServerPort::BootServer,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 68),
        ),
        (
            ServerPort::BootServer,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 4011),
        ),
        (
            ServerPort::BootServer,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        ),
    ];
    for (port, source) in sources {
        let c = ctx(port, source, T0);
        let mut st = full_state().clone();
        if let Some(r) = decide(req, &c, &mut st, proxy) {
            check_reply(req, &c, &r, proxy);
        }
        assert!(&st == full_state(), "proxy mode changed the lease table");
        for at in [T0, T0 + 30] {
            let c = ctx(port, source, at);
            if let Some(r) = decide(req, &c, &mut st, full) {
                check_reply(req, &c, &r, full);
            }
            check_state(&st, at);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request(data) {
        run(&req);
    }
    let _ = parse_any(data);
});
