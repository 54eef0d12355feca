use super::*;
use crate::proto::dhcp::wire::{parse_request, ClientArch};
use proptest::prelude::*;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A client request as raw bytes, field by field (RFC 2131 figure 1).
fn raw(
    mac: [u8; 6],
    xid: u32,
    flags: u16,
    ciaddr: [u8; 4],
    giaddr: [u8; 4],
    opts: &[(u8, &[u8])],
) -> Vec<u8> {
    let mut b = vec![1u8, 1, 6, 0];
    b.extend_from_slice(&xid.to_be_bytes());
    b.extend_from_slice(&[0, 4]); // secs
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&ciaddr);
    b.extend_from_slice(&[0; 8]); // yiaddr, siaddr
    b.extend_from_slice(&giaddr);
    b.extend_from_slice(&mac);
    b.extend_from_slice(&[0; 10 + 64 + 128]);
    b.extend_from_slice(&[99, 130, 83, 99]);
    for (code, val) in opts {
        b.push(*code);
        b.push(val.len() as u8);
        b.extend_from_slice(val);
    }
    b.push(255);
    b
}

fn uuid() -> Vec<u8> {
    let mut u = vec![0u8];
    u.extend_from_slice(&[
        0x4c, 0x4c, 0x45, 0x44, 0, 0x37, 0x10, 0x80, 0x80, 0x31, 0xb4, 0xc0, 0x4f, 0x4b, 0x4d, 0x31,
    ]);
    u
}

/// A BIOS PXE ROM's DISCOVER (Intel UNDI 2.1).
fn bios_discover() -> Vec<u8> {
    let u = uuid();
    raw(
        MAC,
        0x1234_5678,
        0x8000,
        [0; 4],
        [0; 4],
        &[
            (53, &[1]),
            (57, &[0x04, 0xec]),
            (
                55,
                &[
                    1, 2, 3, 5, 6, 11, 12, 13, 15, 16, 17, 18, 43, 54, 60, 67, 128, 129, 130, 131,
                    132, 133, 134, 135,
                ],
            ),
            (97, &u),
            (93, &[0, 0]),
            (94, &[1, 2, 1]),
            (60, b"PXEClient:Arch:00000:UNDI:002001"),
        ],
    )
}

/// EDK2 (OVMF) x64: 93 = 7, 97 = 17 zero bytes, no 61 or 77.
fn uefi_discover() -> Vec<u8> {
    raw(
        MAC,
        0x0a0b_0c0d,
        0x0000,
        [0; 4],
        [0; 4],
        &[
            (53, &[1]),
            (57, &[0x05, 0xc0]),
            (
                55,
                &[
                    1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54,
                    58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
                ],
            ),
            (97, &[0; 17]),
            (94, &[1, 3, 0]),
            (93, &[0, 7]),
            (60, b"PXEClient:Arch:00007:UNDI:003000"),
        ],
    )
}

/// iPXE chainloaded from UEFI: 77 `iPXE`, 175 (iPXE features), 93 = 7, 61.
fn ipxe_discover(arch: u8) -> Vec<u8> {
    let class = format!("PXEClient:Arch:0000{arch}:UNDI:002001");
    raw(
        MAC,
        0x5555_aaaa,
        0x0000,
        [0; 4],
        [0; 4],
        &[
            (53, &[1]),
            (57, &[0x05, 0xdc]),
            (93, &[0, arch]),
            (94, &[1, 2, 1]),
            (60, class.as_bytes()),
            (61, &[1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            (77, b"iPXE"),
            (
                55,
                &[
                    1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133,
                    134, 135, 175, 203,
                ],
            ),
            (
                175,
                &[
                    0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0x13, 0x01, 0x01, 0x15, 0x01, 0x01,
                ],
            ),
        ],
    )
}

fn plain_discover(mac: [u8; 6]) -> Vec<u8> {
    raw(
        mac,
        0x77,
        0x0000,
        [0; 4],
        [0; 4],
        &[
            (53, &[1]),
            (60, b"udhcp 1.35.0"),
            (55, &[1, 3, 6, 12, 15, 28, 42]),
        ],
    )
}

fn ctx(port: ServerPort, source: SocketAddrV4) -> Context {
    Context {
        server_ip: SERVER,
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        port,
        source,
        now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}
fn ctx67() -> Context {
    ctx(
        ServerPort::Dhcp,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    )
}

fn proxy_cfg() -> Policy {
    Policy {
        mode: DhcpMode::Proxy,
        boot_file: Some("pxelinux.0".into()),
        ..Policy::default()
    }
}

/// The options of an encoded reply, in wire order.
fn options(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = vec![];
    let mut o = &bytes[240..];
    while let [code, rest @ ..] = o {
        match code {
            255 => break,
            0 => o = rest,
            _ => {
                let len = rest[0] as usize;
                out.push((*code, rest[1..1 + len].to_vec()));
                o = &rest[1 + len..];
            }
        }
    }
    out
}
fn opt(bytes: &[u8], code: u8) -> Option<Vec<u8>> {
    options(bytes)
        .into_iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v)
}
fn file(bytes: &[u8]) -> String {
    let f = &bytes[108..236];
    String::from_utf8_lossy(&f[..f.iter().position(|b| *b == 0).unwrap_or(128)]).into_owned()
}

fn run(
    bytes: &[u8],
    c: &Context,
    st: &mut LeaseState,
    cfg: &Policy,
) -> Option<(Vec<u8>, Destination)> {
    let req = parse_request(bytes).expect("valid request");
    decide(&req, c, st, cfg).map(|r| (r.encode(), r.dest))
}

fn assert_proxy_offer(out: &[u8], req: &[u8], file_name: &str) {
    assert_eq!(out[0], 2, "BOOTREPLY");
    assert_eq!(&out[1..3], &[1, 6]);
    assert_eq!(&out[4..8], &req[4..8], "xid");
    assert_eq!(&out[10..12], &[0x80, 0], "broadcast flag");
    assert_eq!(&out[12..16], &[0; 4], "ciaddr");
    assert_eq!(
        &out[16..20],
        &[0; 4],
        "yiaddr 0: a proxy never offers an address"
    );
    assert_eq!(&out[20..24], &SERVER.octets(), "siaddr = boot server");
    assert_eq!(&out[28..34], &MAC);
    assert_eq!(file(out), file_name);
    assert_eq!(&out[236..240], &[99, 130, 83, 99]);
    assert!(out.len() >= 300);
    let codes: Vec<u8> = options(out).iter().map(|(c, _)| *c).collect();
    assert_eq!(
        codes,
        vec![43, 53, 54, 60, 97],
        "exactly these, no lease/mask/router"
    );
    assert_eq!(opt(out, 53).unwrap(), [2]);
    assert_eq!(opt(out, 54).unwrap(), SERVER.octets());
    assert_eq!(opt(out, 60).unwrap(), b"PXEClient");
    assert_eq!(
        opt(out, 43).unwrap(),
        [6, 1, 8, 10, 4, 0, b'P', b'X', b'E', 255]
    );
}

#[test]
fn proxy_offer_for_bios() {
    let req = bios_discover();
    let (out, dest) = run(&req, &ctx67(), &mut LeaseState::new(), &proxy_cfg()).unwrap();
    assert_eq!(dest, Destination::Broadcast);
    assert_proxy_offer(&out, &req, "pxelinux.0");
    assert_eq!(opt(&out, 97).unwrap(), uuid(), "97 echoed");
}

#[test]
fn proxy_offer_for_uefi_x64() {
    let mut cfg = proxy_cfg();
    cfg.rules.push(BootRule {
        arch: vec!["efi-x64".parse().unwrap()],
        boot_file: Some("grubx64.efi".into()),
        ..BootRule::default()
    });
    let req = uefi_discover();
    let (out, dest) = run(&req, &ctx67(), &mut LeaseState::new(), &cfg).unwrap();
    assert_eq!(dest, Destination::Broadcast);
    assert_proxy_offer(&out, &req, "grubx64.efi");
    assert_eq!(opt(&out, 97).unwrap(), [0u8; 17]);
    // BIOS still gets the default.
    let (out, _) = run(&bios_discover(), &ctx67(), &mut LeaseState::new(), &cfg).unwrap();
    assert_eq!(file(&out), "pxelinux.0");
}

#[test]
fn proxy_never_answers_non_pxe_or_other_messages() {
    let cfg = proxy_cfg();
    let mut st = LeaseState::new();
    assert!(run(&plain_discover(MAC), &ctx67(), &mut st, &cfg).is_none());
    let no60 = raw(MAC, 1, 0, [0; 4], [0; 4], &[(53, &[1])]);
    assert!(run(&no60, &ctx67(), &mut st, &cfg).is_none());
    // A PXE REQUEST on 67 is for the real DHCP server.
    let req = raw(
        MAC,
        1,
        0,
        [0; 4],
        [0; 4],
        &[
            (53, &[3]),
            (50, &[10, 0, 0, 77]),
            (54, &[10, 0, 0, 2]),
            (60, b"PXEClient:Arch:00000:UNDI:002001"),
        ],
    );
    assert!(run(&req, &ctx67(), &mut st, &cfg).is_none());
    // A DISCOVER on 4011 is not a boot-server request.
    let c = ctx(
        ServerPort::BootServer,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 4011),
    );
    assert!(run(&bios_discover(), &c, &mut st, &cfg).is_none());
    // Off answers nothing.
    let off = Policy::default();
    assert!(run(&bios_discover(), &ctx67(), &mut st, &off).is_none());
    assert!(st.is_empty());
}

#[test]
fn boot_server_ack_echoes_71_to_the_source_port() {
    let cfg = proxy_cfg();
    let ci = Ipv4Addr::new(10, 0, 0, 50);
    for (port, item) in [(4011u16, Some((0x8000u16 >> 15, 0u16))), (68, None)] {
        let m = wire::pxe_boot_request(MAC, ClientArch::EFI_X64, 99, ci, item);
        let bytes = wire::encode(&m);
        let c = ctx(ServerPort::BootServer, SocketAddrV4::new(ci, port));
        let (out, dest) = run(&bytes, &c, &mut LeaseState::new(), &cfg).unwrap();
        assert_eq!(dest, Destination::Unicast(ci, port));
        assert_eq!(opt(&out, 53).unwrap(), [5]);
        assert_eq!(&out[16..20], &ci.octets(), "yiaddr = the client's address");
        assert_eq!(&out[20..24], &SERVER.octets());
        assert_eq!(file(&out), "pxelinux.0");
        assert_eq!(opt(&out, 60).unwrap(), b"PXEClient");
        assert!(opt(&out, 51).is_none() && opt(&out, 1).is_none());
        let v = opt(&out, 43).unwrap();
        match item {
            Some(_) => assert_eq!(v, [71, 4, 0, 1, 0, 0, 255]),
            None => assert_eq!(wire::find_sub_option(&v, 6), Some(&[8u8][..])),
        }
    }
    // BIS layers are refused.
    let m = wire::pxe_boot_request(MAC, ClientArch::EFI_X64, 99, ci, Some((1, 0x8000)));
    let c = ctx(ServerPort::BootServer, SocketAddrV4::new(ci, 4011));
    assert!(run(&wire::encode(&m), &c, &mut LeaseState::new(), &cfg).is_none());
}

#[test]
fn ipxe_gets_its_script_never_the_binary_again() {
    let mut cfg = proxy_cfg();
    cfg.boot_file = Some("ipxe.efi".into());
    let mut st = LeaseState::new();
    // Firmware gets the iPXE binary...
    let (out, _) = run(&uefi_discover(), &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(file(&out), "ipxe.efi");
    // ...iPXE without a script configured gets nothing (no loop).
    assert!(run(&ipxe_discover(7), &ctx67(), &mut st, &cfg).is_none());
    // With a script, iPXE gets the script.
    cfg.ipxe_script = Some("http://10.0.0.1/boot.ipxe".into());
    let (out, _) = run(&ipxe_discover(7), &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(file(&out), "http://10.0.0.1/boot.ipxe");
    let (out, _) = run(&ipxe_discover(0), &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(file(&out), "http://10.0.0.1/boot.ipxe");
    // A non-iPXE boot file is fine for iPXE without a script.
    cfg.ipxe_script = None;
    cfg.boot_file = Some("pxelinux.0".into());
    let (out, _) = run(&ipxe_discover(0), &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(file(&out), "pxelinux.0");
    // A user_class rule wins for iPXE; 175 alone is enough to detect it.
    cfg.boot_file = Some("undionly.kpxe".into());
    cfg.rules.push(BootRule {
        user_class: Some("iPXE".into()),
        boot_file: Some("menu.ipxe".into()),
        ..BootRule::default()
    });
    let (out, _) = run(&ipxe_discover(0), &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(file(&out), "menu.ipxe");
    let only175 = raw(
        MAC,
        3,
        0,
        [0; 4],
        [0; 4],
        &[
            (53, &[1]),
            (60, b"PXEClient:Arch:00000:UNDI:002001"),
            (175, &[0xb1, 1, 1]),
        ],
    );
    let (out, _) = run(&only175, &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(file(&out), "menu.ipxe");
    let (out, _) = run(&bios_discover(), &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(file(&out), "undionly.kpxe");
}

#[test]
fn rules_by_arch_mac_and_subnet() {
    // The rules as the `[[dhcp.rule]]` tables of a config file write them.
    let text = r#"
        [[rule]]
        mac = "52:54:00:12:34:56"
        arch = ["bios"]
        boot_file = "special.0"
        next_server = "10.0.0.9"
        [[rule]]
        subnet = "10.5.0.0/16"
        boot_file = "remote.0"
        [[rule]]
        arch = ["efi-x64", "efi-arm64"]
        boot_file = "grub.efi"
    "#;
    #[derive(serde::Deserialize)]
    struct Rules {
        rule: Vec<BootRule>,
    }
    let cfg = Policy {
        mode: DhcpMode::Proxy,
        boot_file: Some("pxelinux.0".into()),
        rules: toml::from_str::<Rules>(text).unwrap().rule,
        ..Policy::default()
    };
    let mut st = LeaseState::new();
    let (out, _) = run(&bios_discover(), &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(file(&out), "special.0");
    assert_eq!(&out[20..24], &[10, 0, 0, 9], "rule's next-server");
    let other = raw(
        [2, 0, 0, 0, 0, 1],
        5,
        0,
        [0; 4],
        [0; 4],
        &[
            (53, &[1]),
            (93, &[0, 0]),
            (60, b"PXEClient:Arch:00000:UNDI:002001"),
        ],
    );
    let (out, _) = run(&other, &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(file(&out), "pxelinux.0");
    // Relayed from 10.5.3.1: the subnet rule.
    let relayed = raw(
        [2, 0, 0, 0, 0, 1],
        5,
        0,
        [0; 4],
        [10, 5, 3, 1],
        &[
            (53, &[1]),
            (93, &[0, 0]),
            (60, b"PXEClient:Arch:00000:UNDI:002001"),
        ],
    );
    let (out, dest) = run(&relayed, &ctx67(), &mut st, &cfg).unwrap();
    assert_eq!(file(&out), "remote.0");
    assert_eq!(dest, Destination::Unicast(Ipv4Addr::new(10, 5, 3, 1), 67));
    for arch in [7u8, 9, 11] {
        let d = raw(
            [2, 0, 0, 0, 0, 2],
            5,
            0,
            [0; 4],
            [0; 4],
            &[
                (53, &[1]),
                (93, &[0, arch]),
                (60, b"PXEClient:Arch:00007:UNDI:003000"),
            ],
        );
        let (out, _) = run(&d, &ctx67(), &mut st, &cfg).unwrap();
        assert_eq!(file(&out), "grub.efi", "arch {arch}");
    }
}

#[test]
fn mtftp_tags_come_with_discovery_control() {
    let mut cfg = proxy_cfg();
    cfg.mtftp.push(MtftpConfig::new(
        "pxelinux.0",
        Ipv4Addr::new(239, 255, 1, 1),
        3001,
        1759,
    ));
    let (out, _) = run(&bios_discover(), &ctx67(), &mut LeaseState::new(), &cfg).unwrap();
    let v = opt(&out, 43).unwrap();
    assert_eq!(wire::find_sub_option(&v, 1), Some(&[239, 255, 1, 1][..]));
    assert_eq!(
        wire::find_sub_option(&v, 2),
        Some(&3001u16.to_be_bytes()[..])
    );
    assert_eq!(
        wire::find_sub_option(&v, 3),
        Some(&1759u16.to_be_bytes()[..])
    );
    assert_eq!(wire::find_sub_option(&v, 4), Some(&[1u8][..]));
    assert_eq!(wire::find_sub_option(&v, 5), Some(&[2u8][..]));
    assert_eq!(
        wire::find_sub_option(&v, 6),
        Some(&[8u8][..]),
        "EDK2 drops MTFTP-only offers"
    );
}

mod full;
