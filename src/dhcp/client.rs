//! Client-side builders: the requests PXE firmware sends, for tests and the load tester.
//!
//! Contract: pure constructors, no I/O. [`pxe_discover`] builds what EDK2 (UEFI) or a BIOS PXE
//! ROM sends according to the architecture (options 53, 55, 57, 60, 93, 94, 97, broadcast flag);
//! [`pxe_request`] the REQUEST that selects an OFFER; [`pxe_boot_request`] the port-4011
//! boot-server REQUEST with sub-option 71.

use super::config::ClientArch;
use super::wire::{pxe_tag, VendorOptions};
use dhcproto::v4::{Architecture, DhcpOption, Flags, HType, Message, MessageType, OptionCode};
use std::net::Ipv4Addr;

/// The parameter request list EDK2 sends (PxeBcBuildDhcp4Options).
const PRL: &[u8] = &[
    1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60, 66,
    67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
];

/// A 17-byte option 97 (type 0 + a UUID derived from the MAC, stable per machine).
pub fn machine_id(mac: [u8; 6]) -> Vec<u8> {
    let mut v = vec![0u8; 17];
    v[1..7].copy_from_slice(&mac);
    v[11..17].copy_from_slice(&mac);
    v
}

fn base(mac: [u8; 6], arch: ClientArch, xid: u32, ty: MessageType) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_htype(HType::Eth)
        .set_flags(Flags::default().set_broadcast());
    let undi = if arch == ClientArch::BIOS {
        "002001"
    } else {
        "003000"
    };
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(ty));
    o.insert(DhcpOption::MaxMessageSize(1472));
    o.insert(DhcpOption::ParameterRequestList(
        PRL.iter().map(|c| OptionCode::from(*c)).collect(),
    ));
    o.insert(DhcpOption::ClassIdentifier(
        format!("PXEClient:Arch:{:05}:UNDI:{undi}", arch.0).into_bytes(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        arch.0,
    )));
    let (maj, min) = if arch == ClientArch::BIOS {
        (2, 1)
    } else {
        (3, 0)
    };
    o.insert(DhcpOption::ClientNetworkInterface(1, maj, min));
    o.insert(DhcpOption::ClientMachineIdentifier(machine_id(mac)));
    m
}

/// A PXE DHCPDISCOVER as firmware of `arch` sends it.
pub fn pxe_discover(mac: [u8; 6], arch: ClientArch, xid: u32) -> Message {
    base(mac, arch, xid, MessageType::Discover)
}

/// The DHCPREQUEST that takes `offer` (SELECTING: options 50 and 54 from the offer).
pub fn pxe_request(offer: &Message, mac: [u8; 6], arch: ClientArch, xid: u32) -> Message {
    let mut m = base(mac, arch, xid, MessageType::Request);
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    if let Some(DhcpOption::ServerIdentifier(s)) = offer.opts().get(OptionCode::ServerIdentifier) {
        m.opts_mut().insert(DhcpOption::ServerIdentifier(*s));
    }
    m
}

/// The boot-server REQUEST sent to port 4011 by a client that has address `ciaddr`; with
/// `boot_item` (type, layer) the PXE sub-option 71 is included, as EDK2 does after discovery.
pub fn pxe_boot_request(
    mac: [u8; 6],
    arch: ClientArch,
    xid: u32,
    ciaddr: Ipv4Addr,
    boot_item: Option<(u16, u16)>,
) -> Message {
    let mut m = base(mac, arch, xid, MessageType::Request);
    m.set_ciaddr(ciaddr).set_flags(Flags::default());
    if let Some((ty, layer)) = boot_item {
        let mut item = [0u8; 4];
        item[..2].copy_from_slice(&ty.to_be_bytes());
        item[2..].copy_from_slice(&layer.to_be_bytes());
        let mut v = VendorOptions::default();
        v.push(pxe_tag::BOOT_ITEM, &item);
        if let Ok(v) = v.finish() {
            m.opts_mut().insert(DhcpOption::VendorExtensions(v));
        }
    }
    m
}

/// Mark a request as coming from a chainloaded iPXE (option 77 `iPXE`, option 175).
pub fn as_ipxe(mut m: Message) -> Message {
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    m.opts_mut()
        .insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
            OptionCode::from(175u8),
            vec![0xb1, 1, 1],
        )));
    m
}
