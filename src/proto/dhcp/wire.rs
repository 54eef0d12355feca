//! DHCP on the wire: a checked entry in front of dhcproto, the encoder with BOOTP padding, the
//! PXE vendor options (option 43, PXE 2.1 section 2.2.5 / table 2-1), the client architecture
//! (option 93) and the requests PXE firmware sends.
//!
//! Contract:
//! - [`parse_request`] accepts any byte slice and never panics: it checks the fixed header
//!   (length, `op` = BOOTREQUEST, `hlen` <= 16, magic cookie) and walks the options TLVs
//!   (lengths inside the datagram, fixed-length options the right size) before dhcproto decodes
//!   the message, so no option can reach a decoder path that would assert or overflow.
//!   [`parse_any`] does the same for BOOTREPLY too (a client reading answers).
//! - [`encode`] writes a message and pads it to the 300-byte BOOTP minimum (RFC 1542 2.1).
//! - [`pxe_vendor_options`] builds option 43 and refuses anything over 255 bytes.
//! - [`pxe_discover`], [`pxe_request`] and [`pxe_boot_request`] build what EDK2 (UEFI) or a BIOS
//!   PXE ROM sends according to the architecture (options 53, 55, 57, 60, 93, 94, 97, broadcast
//!   flag); [`as_ipxe`] marks a request as a chainloaded iPXE's. Pure constructors, for the
//!   client machine ([`super::client`]) and for tests.

use super::policy::MtftpConfig;
use dhcproto::v4::{
    Architecture, DhcpOption, Flags, HType, Message, MessageType, OptionCode, MAGIC,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::net::Ipv4Addr;

/// Client system architecture, DHCP option 93 (RFC 4578 section 2.1, IANA "Processor
/// Architecture Types"). Unknown values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientArch(pub u16);

impl ClientArch {
    pub const BIOS: ClientArch = ClientArch(0);
    pub const EFI_IA32: ClientArch = ClientArch(6);
    pub const EFI_X64: ClientArch = ClientArch(7);
    /// x64 UEFI as some firmware sends it (the old "EFI BC" number).
    pub const EFI_BC: ClientArch = ClientArch(9);
    pub const EFI_ARM32: ClientArch = ClientArch(10);
    pub const EFI_ARM64: ClientArch = ClientArch(11);
    pub const HTTP_IA32: ClientArch = ClientArch(15);
    pub const HTTP_X64: ClientArch = ClientArch(16);
    pub const HTTP_ARM32: ClientArch = ClientArch(18);
    pub const HTTP_ARM64: ClientArch = ClientArch(19);

    /// The names accepted in `arch = [...]`, each with the option 93 values it matches.
    pub const NAMES: &'static [(&'static str, &'static [u16])] = &[
        ("bios", &[0]),
        ("efi-ia32", &[6]),
        ("efi-x64", &[7, 9]),
        ("efi-bc", &[9]),
        ("efi-arm32", &[10]),
        ("efi-arm64", &[11]),
        ("http-ia32", &[15]),
        ("http-x64", &[16]),
        ("http-arm32", &[18]),
        ("http-arm64", &[19]),
    ];

    /// Whether this is a UEFI HTTP boot client (vendor class `HTTPClient`).
    pub fn is_http(self) -> bool {
        matches!(self.0, 15 | 16 | 18 | 19)
    }
}

/// Size of the fixed BOOTP header before the magic cookie (RFC 2131 figure 1).
pub const HEADER_LEN: usize = 236;
/// The BOOTP minimum datagram (RFC 1542 section 2.1): replies are padded to it.
pub const MIN_LEN: usize = 300;
/// Largest datagram we accept (a full Ethernet frame's worth, RFC 2131 says 576 minimum).
pub const MAX_LEN: usize = 1500;

/// Why a datagram was dropped. Counted per kind by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than a DHCP header")]
    Truncated,
    #[error("longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("hardware address length over 16")]
    BadHlen,
    #[error("wrong magic cookie")]
    BadCookie,
    #[error("an option runs past the end of the datagram")]
    OptionOverflow,
    #[error("option {0} has an impossible length")]
    BadOptionLength(u8),
    #[error("no message type (option 53)")]
    NoMessageType,
    #[error("undecodable")]
    Decode,
}

/// Check `bytes` and decode it as a client request; see the module contract.
pub fn parse_request(bytes: &[u8]) -> Result<Message, Malformed> {
    let msg = parse_any(bytes)?;
    if bytes[0] != 1 {
        return Err(Malformed::NotRequest);
    }
    if msg.opts().msg_type().is_none() {
        return Err(Malformed::NoMessageType);
    }
    Ok(msg)
}

/// The hardware type, hardware address and relay address of what looks like a BOOTREQUEST, read
/// from the fixed header only (for admission before the options are decoded). `None` when the
/// datagram is too short, not a request or has `hlen` over 16; [`parse_request`] still checks
/// everything else.
pub fn peek_request(bytes: &[u8]) -> Option<(u8, &[u8], Ipv4Addr)> {
    if bytes.len() < HEADER_LEN + MAGIC.len() || bytes[0] != 1 || bytes[2] > 16 {
        return None;
    }
    let giaddr = Ipv4Addr::new(bytes[24], bytes[25], bytes[26], bytes[27]);
    Some((bytes[1], &bytes[28..28 + usize::from(bytes[2])], giaddr))
}

/// Like [`parse_request`] but also accepts BOOTREPLY (for watching other servers' answers).
pub fn parse_any(bytes: &[u8]) -> Result<Message, Malformed> {
    if bytes.len() < HEADER_LEN + MAGIC.len() {
        return Err(Malformed::Truncated);
    }
    if bytes.len() > MAX_LEN {
        return Err(Malformed::TooLong);
    }
    if bytes[0] != 1 && bytes[0] != 2 {
        return Err(Malformed::NotRequest);
    }
    if bytes[2] > 16 {
        return Err(Malformed::BadHlen);
    }
    if bytes[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
        return Err(Malformed::BadCookie);
    }
    check_options(&bytes[HEADER_LEN + 4..])?;
    Message::decode(&mut Decoder::new(bytes)).map_err(|_| Malformed::Decode)
}

/// Walk the options area: every TLV inside the slice, and runs of one code (RFC 3396
/// concatenation, which the decoder joins) of a length the decoder handles.
fn check_options(mut opts: &[u8]) -> Result<(), Malformed> {
    let mut run: Option<(u8, usize)> = None;
    loop {
        let (code, len) = match opts {
            [] | [255, ..] => break,
            [0, rest @ ..] => {
                check_run(run.take())?;
                opts = rest;
                continue;
            }
            [code, len, rest @ ..] if rest.len() >= *len as usize => {
                opts = &rest[*len as usize..];
                (*code, *len as usize)
            }
            _ => return Err(Malformed::OptionOverflow),
        };
        run = match run {
            Some((c, l)) if c == code => Some((c, l + len)),
            other => {
                check_run(other)?;
                Some((code, len))
            }
        };
    }
    check_run(run)
}

fn check_run(run: Option<(u8, usize)>) -> Result<(), Malformed> {
    let Some((code, len)) = run else {
        return Ok(());
    };
    let ok = match code {
        // Rapid commit carries nothing; client network interface is type + major + minor.
        80 => len == 0,
        94 => len == 3,
        // Client FQDN: flags, two rcodes, then a name.
        81 => len >= 3,
        // Bulk leasequery: status code + text; 32-bit times.
        151 => len >= 1,
        152..=155 => len == 4,
        // The message type.
        53 => len >= 1,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Malformed::BadOptionLength(code))
    }
}

/// Encode `msg` padded to [`MIN_LEN`] (empty if a field is over its size, which the builders in
/// this module never produce).
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(MIN_LEN);
    encode_into(msg, &mut buf);
    buf
}

/// [`encode`] into a reused buffer (cleared first).
pub fn encode_into(msg: &Message, buf: &mut Vec<u8>) {
    buf.clear();
    let mut e = Encoder::new(buf);
    if msg.encode(&mut e).is_err() {
        buf.clear();
    }
    if !buf.is_empty() && buf.len() < MIN_LEN {
        buf.resize(MIN_LEN, 0);
    }
}

/// PXE vendor sub-option tags (PXE 2.1 table 2-1).
pub mod pxe_tag {
    pub const MTFTP_IP: u8 = 1;
    pub const MTFTP_CPORT: u8 = 2;
    pub const MTFTP_SPORT: u8 = 3;
    pub const MTFTP_TMOUT: u8 = 4;
    pub const MTFTP_DELAY: u8 = 5;
    pub const DISCOVERY_CONTROL: u8 = 6;
    pub const DISCOVERY_MCAST_ADDR: u8 = 7;
    pub const BOOT_SERVERS: u8 = 8;
    pub const BOOT_MENU: u8 = 9;
    pub const MENU_PROMPT: u8 = 10;
    pub const BOOT_ITEM: u8 = 71;
    pub const END: u8 = 255;
}

/// Discovery control bit 3: "a boot file is in this packet: download it, no prompt, no menu,
/// no discovery".
pub const DISCOVERY_USE_BOOT_FILE: u8 = 8;

/// Option 43 would exceed 255 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("PXE vendor options take {len} bytes, over 255")]
pub struct Option43TooLong {
    pub len: usize,
}

/// A builder for encapsulated vendor options (TLVs ending with 255).
#[derive(Default)]
pub struct VendorOptions(Vec<u8>);

impl VendorOptions {
    pub fn push(&mut self, tag: u8, value: &[u8]) -> &mut Self {
        self.0.push(tag);
        self.0.push(value.len().min(255) as u8);
        self.0.extend_from_slice(&value[..value.len().min(255)]);
        self
    }
    /// End the list; the whole must fit option 43's one-byte length.
    pub fn finish(mut self) -> Result<Vec<u8>, Option43TooLong> {
        self.0.push(pxe_tag::END);
        if self.0.len() > 255 {
            return Err(Option43TooLong { len: self.0.len() });
        }
        Ok(self.0)
    }
}

/// Option 43 of an offer: MTFTP tags 1-5 when multicast is configured for the file, always with
/// discovery control 6 = 8 and a zero-timeout prompt 10 (EDK2 discards an offer whose option 43
/// has the MTFTP tags but no discovery tag; dnsmasq sends 6 and 10 the same way).
pub fn pxe_vendor_options(
    prompt: &str,
    mtftp: Option<&MtftpConfig>,
) -> Result<Vec<u8>, Option43TooLong> {
    let mut v = VendorOptions::default();
    if let Some(m) = mtftp {
        v.push(pxe_tag::MTFTP_IP, &m.group.octets())
            .push(pxe_tag::MTFTP_CPORT, &m.client_port.to_be_bytes())
            .push(pxe_tag::MTFTP_SPORT, &m.server_port.to_be_bytes())
            .push(pxe_tag::MTFTP_TMOUT, &[m.listen_timeout])
            .push(pxe_tag::MTFTP_DELAY, &[m.reopen_delay]);
    }
    v.push(pxe_tag::DISCOVERY_CONTROL, &[DISCOVERY_USE_BOOT_FILE]);
    let mut p = Vec::with_capacity(prompt.len() + 1);
    p.push(0); // timeout 0: boot at once
    p.extend_from_slice(prompt.as_bytes());
    if 2 + p.len() > 255 {
        return Err(Option43TooLong {
            len: 2 + p.len() + 4,
        });
    }
    v.push(pxe_tag::MENU_PROMPT, &p);
    v.finish()
}

/// Find sub-option `tag` in an encapsulated option list (bounds-checked; `None` if absent or
/// malformed before it).
pub fn find_sub_option(mut opts: &[u8], tag: u8) -> Option<&[u8]> {
    loop {
        match opts {
            [] | [255, ..] => return None,
            [0, rest @ ..] => opts = rest,
            [t, len, rest @ ..] if rest.len() >= *len as usize => {
                if *t == tag {
                    return Some(&rest[..*len as usize]);
                }
                opts = &rest[*len as usize..];
            }
            _ => return None,
        }
    }
}

/// What a request says about the client, read once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// Option 60 begins with `PXEClient`.
    pub pxe: bool,
    /// Option 60 begins with `HTTPClient` (UEFI HTTP boot).
    pub http: bool,
    /// Option 93 (first value).
    pub arch: Option<ClientArch>,
    /// Option 77 says `iPXE` or option 175 (iPXE encapsulated options) is present.
    pub ipxe: bool,
    /// Option 77, raw.
    pub user_class: Option<Vec<u8>>,
    /// Option 97, raw (echoed in PXE replies).
    pub uuid: Option<Vec<u8>>,
    /// Option 43 sub-option 71 (boot item type and layer) of a port-4011 request.
    pub boot_item: Option<[u8; 4]>,
}

impl ClientInfo {
    pub fn of(req: &Message) -> ClientInfo {
        let opts = req.opts();
        let class = match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => v.as_slice(),
            _ => &[],
        };
        let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(ClientArch(u16::from(*a))),
            _ => None,
        };
        let user_class = match opts.get(OptionCode::UserClass) {
            Some(DhcpOption::UserClass(v)) => Some(v.clone()),
            _ => None,
        };
        let uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
            Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
            _ => None,
        };
        let boot_item = match opts.get(OptionCode::VendorExtensions) {
            Some(DhcpOption::VendorExtensions(v)) => {
                find_sub_option(v, pxe_tag::BOOT_ITEM).and_then(|b| <[u8; 4]>::try_from(b).ok())
            }
            _ => None,
        };
        let ipxe = user_class
            .as_deref()
            .is_some_and(|u| user_class_has(u, "iPXE"))
            || opts.contains(OptionCode::Unknown(175));
        ClientInfo {
            pxe: class.starts_with(b"PXEClient"),
            http: class.starts_with(b"HTTPClient"),
            arch,
            ipxe,
            user_class,
            uuid,
            boot_item,
        }
    }
}

/// Option 77 holds either the raw class (what iPXE sends) or RFC 3004 length-prefixed entries.
pub fn user_class_has(raw: &[u8], class: &str) -> bool {
    if raw == class.as_bytes() {
        return true;
    }
    let mut rest = raw;
    while let [len, tail @ ..] = rest {
        let len = *len as usize;
        if len == 0 || tail.len() < len {
            return false;
        }
        if &tail[..len] == class.as_bytes() {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

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

/// A client message of type `ty` from `mac` (Ethernet, broadcast flag, no address yet) with no
/// option but the type: what a plain DHCP client sends, and the base of the firmware's messages.
pub fn client_message(ty: MessageType, mac: [u8; 6], xid: u32) -> Message {
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
    m.opts_mut().insert(DhcpOption::MessageType(ty));
    m
}

fn firmware_base(mac: [u8; 6], arch: ClientArch, xid: u32, ty: MessageType) -> Message {
    let mut m = client_message(ty, mac, xid);
    let undi = if arch == ClientArch::BIOS {
        "002001"
    } else {
        "003000"
    };
    let o = m.opts_mut();
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
    firmware_base(mac, arch, xid, MessageType::Discover)
}

/// The DHCPREQUEST that takes `offer` (SELECTING: options 50 and 54 from the offer).
pub fn pxe_request(offer: &Message, mac: [u8; 6], arch: ClientArch, xid: u32) -> Message {
    let mut m = firmware_base(mac, arch, xid, MessageType::Request);
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
    let mut m = firmware_base(mac, arch, xid, MessageType::Request);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn header(op: u8) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = op;
        b[1] = 1;
        b[2] = 6;
        b[236..240].copy_from_slice(&MAGIC);
        b
    }

    #[test]
    fn peek_reads_only_the_fixed_header() {
        let mut b = header(1);
        b[24..28].copy_from_slice(&[10, 5, 0, 1]);
        b[28..34].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        let (htype, chaddr, giaddr) = peek_request(&b).unwrap();
        assert_eq!(htype, 1);
        assert_eq!(chaddr, &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(giaddr, Ipv4Addr::new(10, 5, 0, 1));
        b[2] = 16;
        assert_eq!(peek_request(&b).unwrap().1.len(), 16);
        b[2] = 17;
        assert_eq!(peek_request(&b), None);
        assert_eq!(peek_request(&header(2)), None);
        assert_eq!(peek_request(&header(1)[..239]), None);
        for n in 0..260 {
            let _ = peek_request(&vec![1u8; n]);
        }
    }

    #[test]
    fn header_checks() {
        assert_eq!(parse_request(&[]), Err(Malformed::Truncated));
        assert_eq!(parse_request(&header(1)[..239]), Err(Malformed::Truncated));
        let mut b = header(1);
        b.extend_from_slice(&[53, 1, 1, 255]);
        assert!(parse_request(&b).is_ok());
        b[0] = 2;
        assert_eq!(parse_request(&b), Err(Malformed::NotRequest));
        b[0] = 1;
        b[2] = 17;
        assert_eq!(parse_request(&b), Err(Malformed::BadHlen));
        b[2] = 6;
        b[236] = 0;
        assert_eq!(parse_request(&b), Err(Malformed::BadCookie));
        let mut b = header(1);
        b.push(255);
        assert_eq!(parse_request(&b), Err(Malformed::NoMessageType));
    }

    #[test]
    fn option_walk() {
        let mut b = header(1);
        b.extend_from_slice(&[53, 1, 1, 60, 20, b'P']);
        assert_eq!(parse_request(&b), Err(Malformed::OptionOverflow));
        let mut b = header(1);
        b.extend_from_slice(&[53, 1, 1, 94, 2, 1, 2, 255]);
        assert_eq!(parse_request(&b), Err(Malformed::BadOptionLength(94)));
        // Concatenated 94 (RFC 3396) adds up to 3: fine.
        let mut b = header(1);
        b.extend_from_slice(&[53, 1, 1, 94, 2, 1, 2, 94, 1, 0, 255]);
        assert!(parse_request(&b).is_ok());
        let mut b = header(1);
        b.extend_from_slice(&[53, 1, 1, 80, 1, 0, 255]);
        assert_eq!(parse_request(&b), Err(Malformed::BadOptionLength(80)));
        let mut b = header(1);
        b.extend_from_slice(&[53, 0, 255]);
        assert_eq!(parse_request(&b), Err(Malformed::BadOptionLength(53)));
        let mut b = header(1);
        b.extend_from_slice(&[151, 0, 53, 1, 1, 255]);
        assert_eq!(parse_request(&b), Err(Malformed::BadOptionLength(151)));
    }

    #[test]
    fn vendor_options_bytes() {
        let v = pxe_vendor_options("PXE", None).unwrap();
        assert_eq!(v, [6, 1, 8, 10, 4, 0, b'P', b'X', b'E', 255]);
        // Listen and re-open delays at their defaults: 1 and 2 s.
        let m = MtftpConfig::new("f", Ipv4Addr::new(239, 255, 1, 1), 3001, 1759);
        let v = pxe_vendor_options("PXE", Some(&m)).unwrap();
        assert_eq!(
            v,
            [
                1, 4, 239, 255, 1, 1, 2, 2, 0x0b, 0xb9, 3, 2, 0x06, 0xdf, 4, 1, 1, 5, 1, 2, 6, 1,
                8, 10, 4, 0, b'P', b'X', b'E', 255
            ]
        );
        assert_eq!(find_sub_option(&v, 6), Some(&[8u8][..]));
        assert_eq!(find_sub_option(&v, 3), Some(&[0x06, 0xdf][..]));
        assert_eq!(find_sub_option(&v, 71), None);
        assert!(pxe_vendor_options(&"x".repeat(252), None).is_err());
        assert!(pxe_vendor_options(&"x".repeat(240), None).is_ok());
        assert!(pxe_vendor_options(&"x".repeat(240), Some(&m)).is_err());
    }

    #[test]
    fn user_class_forms() {
        assert!(user_class_has(b"iPXE", "iPXE"));
        assert!(user_class_has(b"\x04iPXE", "iPXE"));
        assert!(user_class_has(b"\x03foo\x04iPXE", "iPXE"));
        assert!(!user_class_has(b"\x09iPXE", "iPXE"));
        assert!(!user_class_has(b"gPXE", "iPXE"));
    }

    #[test]
    fn encode_pads_to_bootp_minimum() {
        let mut b = header(1);
        b.extend_from_slice(&[53, 1, 1, 255]);
        let m = parse_request(&b).unwrap();
        let out = encode(&m);
        assert_eq!(out.len(), MIN_LEN);
        assert_eq!(&out[..240], &b[..240]);
    }

    #[test]
    fn firmware_requests_parse_back_as_the_firmware_sends_them() {
        let mac = [0x52, 0x54, 0, 1, 2, 3];
        let d = parse_request(&encode(&pxe_discover(mac, ClientArch::EFI_X64, 7))).unwrap();
        assert_eq!(d.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(d.xid(), 7);
        assert!(d.flags().broadcast());
        let info = ClientInfo::of(&d);
        assert!(info.pxe && !info.ipxe);
        assert_eq!(info.arch, Some(ClientArch::EFI_X64));
        assert_eq!(info.uuid, Some(machine_id(mac)));
        match d.opts().get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => {
                assert_eq!(v, b"PXEClient:Arch:00007:UNDI:003000")
            }
            other => panic!("{other:?}"),
        }
        // The REQUEST takes the offer's address and server.
        let mut offer = d.clone();
        offer.set_yiaddr(Ipv4Addr::new(10, 0, 0, 9));
        offer
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)));
        let r = pxe_request(&offer, mac, ClientArch::BIOS, 8);
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert!(matches!(
            r.opts().get(OptionCode::RequestedIpAddress),
            Some(DhcpOption::RequestedIpAddress(ip)) if *ip == Ipv4Addr::new(10, 0, 0, 9)
        ));
        assert!(matches!(
            r.opts().get(OptionCode::ServerIdentifier),
            Some(DhcpOption::ServerIdentifier(ip)) if *ip == Ipv4Addr::new(10, 0, 0, 1)
        ));
        // The boot-server REQUEST: unicast, ciaddr, sub-option 71; iPXE says so.
        let ci = Ipv4Addr::new(10, 0, 0, 9);
        let b = as_ipxe(pxe_boot_request(mac, ClientArch::BIOS, 9, ci, Some((0, 0))));
        let b = parse_request(&encode(&b)).unwrap();
        assert_eq!(b.ciaddr(), ci);
        assert!(!b.flags().broadcast());
        let info = ClientInfo::of(&b);
        assert_eq!(info.boot_item, Some([0, 0, 0, 0]));
        assert!(info.ipxe);
        let mut reused = Vec::new();
        encode_into(&b, &mut reused);
        assert_eq!(reused, encode(&b));
    }
}
