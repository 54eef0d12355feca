//! The responder's decision: one request in, at most one reply out.
//!
//! Contract:
//! - [`decide`] is pure: no socket, no file, no clock (`now` comes in [`Context`]). It may change
//!   the [`LeaseState`]; when [`LeaseState::is_dirty`] is set afterwards the driver must persist
//!   the state before it sends the reply.
//! - Proxy mode (PXE spec 2.1 section 2.2.4, "proxyDHCP"): only clients whose option 60 begins
//!   with `PXEClient` get an answer; a DISCOVER on port 67 gets a proxy OFFER (broadcast, yiaddr
//!   0, options 53/54/60/97/43, siaddr and file, no lease, mask or router), a REQUEST on port 4011
//!   gets an ACK with the file and sub-option 71 echoed, sent back to the port it came from.
//!   Nothing else is ever answered and no address is ever offered.
//! - Full mode (RFC 2131 section 4.3): DISCOVER -> OFFER (the client's previous address, then
//!   the requested one if free, then the lowest free), REQUEST -> ACK or NAK, DECLINE and RELEASE
//!   update the table, INFORM -> ACK without a lease. PXE clients get the PXE options in the same
//!   reply; other clients get a boot file only with `boot_non_pxe` or a rule that names them.
//! - Boot file selection ([`select_boot`]): the first matching `[[dhcp.rule]]`, then
//!   `boot_file`; a chainloaded iPXE gets `ipxe_script` and never the iPXE binary again.

use super::config::{
    looks_like_ipxe_binary, same_subnet, BootRule, DhcpConfig, DhcpMode, MtftpConfig,
};
use super::leases::{ClientKey, LeaseState};
use super::wire::{self, pxe_tag, ClientInfo, VendorOptions};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The port a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerPort {
    /// 67, the DHCP server port.
    Dhcp,
    /// 4011, the PXE boot server port.
    BootServer,
}

/// Where and when a request arrived, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// Our address on the receiving interface (option 54, default siaddr).
    pub server_ip: Ipv4Addr,
    /// The receiving interface's netmask.
    pub netmask: Ipv4Addr,
    pub port: ServerPort,
    /// The request's source address and port.
    pub source: SocketAddrV4,
    pub now: SystemTime,
}

/// Where a reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:68 out of the interface the request came in on.
    Broadcast,
    Unicast(Ipv4Addr, u16),
}

/// A reply to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub message: Message,
    pub dest: Destination,
}

impl Reply {
    /// The reply's bytes (padded to the BOOTP minimum).
    pub fn encode(&self) -> Vec<u8> {
        wire::encode(&self.message)
    }
}

/// How long an OFFER holds an address for its client.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);

/// Decide the reply to `req`; see the module contract.
pub fn decide(
    req: &Message,
    ctx: &Context,
    state: &mut LeaseState,
    cfg: &DhcpConfig,
) -> Option<Reply> {
    if req.opcode() != Opcode::BootRequest {
        return None;
    }
    match cfg.mode {
        DhcpMode::Off => None,
        DhcpMode::Proxy => proxy(req, ctx, cfg),
        DhcpMode::Full => full(req, ctx, state, cfg),
    }
}

/// The boot file chosen for a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootChoice<'a> {
    pub file: &'a str,
    /// siaddr when not this server.
    pub next_server: Option<Ipv4Addr>,
    pub mtftp: Option<&'a MtftpConfig>,
    /// A rule named this client (MAC, subnet, arch or user class): boot it even if not PXE.
    pub by_rule: bool,
}

fn rule_matches(r: &BootRule, info: &ClientInfo, chaddr: &[u8], client_net: Ipv4Addr) -> bool {
    if !r.arch.is_empty() {
        match info.arch {
            Some(a) if r.arch.iter().any(|m| m.matches(a)) => {}
            _ => return false,
        }
    }
    if let Some(m) = &r.mac {
        if !m.matches(chaddr) {
            return false;
        }
    }
    if let Some(net) = &r.subnet {
        if !net.contains(client_net) {
            return false;
        }
    }
    if let Some(uc) = &r.user_class {
        let hit = info
            .user_class
            .as_deref()
            .is_some_and(|u| wire::user_class_has(u, uc))
            || (uc.eq_ignore_ascii_case("ipxe") && info.ipxe);
        if !hit {
            return false;
        }
    }
    true
}

/// Choose the boot file for a client; `None` means "no boot data for it". `client_net` is an
/// address in the client's subnet (relay, current, offered or the receiving interface's).
pub fn select_boot<'a>(
    cfg: &'a DhcpConfig,
    info: &ClientInfo,
    chaddr: &[u8],
    client_net: Ipv4Addr,
) -> Option<BootChoice<'a>> {
    let rule = cfg
        .rules
        .iter()
        .find(|r| rule_matches(r, info, chaddr, client_net));
    let file = rule
        .and_then(|r| r.boot_file.as_deref())
        .or(cfg.boot_file.as_deref());
    let script = rule
        .and_then(|r| r.ipxe_script.as_deref())
        .or(cfg.ipxe_script.as_deref());
    let next_server = rule.and_then(|r| r.next_server).or(cfg.next_server);
    let ipxe_rule = rule.is_some_and(|r| r.user_class.is_some());
    let by_rule = rule.is_some_and(|r| {
        !r.arch.is_empty() || r.mac.is_some() || r.subnet.is_some() || r.user_class.is_some()
    });
    let chosen = if info.ipxe && !ipxe_rule {
        match (script, file) {
            (Some(s), _) => s,
            (None, Some(f)) if !looks_like_ipxe_binary(f) => f,
            (None, Some(f)) => {
                tracing::warn!(
                    client = %mac_str(chaddr),
                    file = f,
                    "iPXE asked again and would get the iPXE binary {f:?} (a boot loop): not answering; set ipxe_script (or a [[dhcp.rule]] with user_class = \"iPXE\")"
                );
                return None;
            }
            (None, None) => return None,
        }
    } else {
        file?
    };
    Some(BootChoice {
        file: chosen,
        next_server,
        mtftp: cfg.mtftp_for(chosen),
        by_rule,
    })
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(chaddr: &[u8]) -> String {
    chaddr
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A reply skeleton: BOOTREPLY with the request's xid, flags, giaddr and hardware address, and
/// options 53 and 54.
fn reply_to(req: &Message, ty: MessageType, server: Ipv4Addr) -> Message {
    let mut m = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        req.chaddr(),
    );
    m.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_flags(req.flags());
    m.opts_mut().insert(DhcpOption::MessageType(ty));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    m
}

/// Put the boot file in the header (and option 67 when it does not fit or was asked for).
fn put_file(m: &mut Message, file: &str, requested: bool) {
    if file.len() <= 127 {
        m.set_fname(file.as_bytes());
    }
    if requested || file.len() > 127 {
        m.opts_mut()
            .insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    }
}

fn requested_options(req: &Message) -> &[OptionCode] {
    match req.opts().get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(v)) => v,
        _ => &[],
    }
}

/// Add the PXE boot data (siaddr, file, 60 `PXEClient`, 97 echoed, 43) to `m`; with
/// `answer_prl`, also options 66/67 when the client asked for them (full mode: a proxy offer
/// stays exactly what the PXE spec lists).
fn put_pxe(
    m: &mut Message,
    req: &Message,
    info: &ClientInfo,
    boot: &BootChoice,
    cfg: &DhcpConfig,
    server: Ipv4Addr,
    answer_prl: bool,
) -> bool {
    let prl = if answer_prl {
        requested_options(req)
    } else {
        &[]
    };
    m.set_siaddr(boot.next_server.unwrap_or(server));
    put_file(m, boot.file, prl.contains(&OptionCode::BootfileName));
    if prl.contains(&OptionCode::TFTPServerName) {
        m.opts_mut().insert(DhcpOption::TFTPServerName(
            boot.next_server.unwrap_or(server).to_string().into_bytes(),
        ));
    }
    if info.http {
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
        return true;
    }
    if !info.pxe {
        return true;
    }
    m.opts_mut()
        .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    if let Some(uuid) = &info.uuid {
        m.opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    }
    match wire::pxe_vendor_options(&cfg.pxe_prompt, boot.mtftp) {
        Ok(v) => {
            m.opts_mut().insert(DhcpOption::VendorExtensions(v));
            true
        }
        Err(e) => {
            // validate() refuses such a config; never send a truncated option 43.
            tracing::error!("not answering: {e}");
            false
        }
    }
}

fn proxy(req: &Message, ctx: &Context, cfg: &DhcpConfig) -> Option<Reply> {
    let info = ClientInfo::of(req);
    if !info.pxe {
        return None;
    }
    let ty = req.opts().msg_type()?;
    let client_net = if !req.giaddr().is_unspecified() {
        req.giaddr()
    } else if !req.ciaddr().is_unspecified() {
        req.ciaddr()
    } else {
        ctx.server_ip
    };
    match (ctx.port, ty) {
        (ServerPort::Dhcp, MessageType::Discover) => {
            let boot = select_boot(cfg, &info, req.chaddr(), client_net)?;
            let mut m = reply_to(req, MessageType::Offer, ctx.server_ip);
            m.set_flags(req.flags().set_broadcast());
            if !put_pxe(&mut m, req, &info, &boot, cfg, ctx.server_ip, false) {
                return None;
            }
            let dest = if req.giaddr().is_unspecified() {
                Destination::Broadcast
            } else {
                Destination::Unicast(req.giaddr(), 67)
            };
            Some(Reply { message: m, dest })
        }
        (ServerPort::BootServer, MessageType::Request | MessageType::Inform) => {
            boot_server_ack(req, ctx, cfg, &info, client_net)
        }
        _ => None,
    }
}

/// Port 4011: ACK with the boot file; sub-option 71 echoed when the client sent it.
fn boot_server_ack(
    req: &Message,
    ctx: &Context,
    cfg: &DhcpConfig,
    info: &ClientInfo,
    client_net: Ipv4Addr,
) -> Option<Reply> {
    if let Some(item) = info.boot_item {
        if u16::from_be_bytes([item[2], item[3]]) & 0x8000 != 0 {
            tracing::debug!(client = %mac_str(req.chaddr()), "PXE boot item asks for BIS (not supported): not answering");
            return None;
        }
    }
    let boot = select_boot(cfg, info, req.chaddr(), client_net)?;
    let mut m = reply_to(req, MessageType::Ack, ctx.server_ip);
    m.set_yiaddr(req.ciaddr());
    m.set_siaddr(boot.next_server.unwrap_or(ctx.server_ip));
    put_file(&mut m, boot.file, false);
    m.opts_mut()
        .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    if let Some(uuid) = &info.uuid {
        m.opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    }
    let vendor = match info.boot_item {
        Some(item) => {
            let mut v = VendorOptions::default();
            v.push(pxe_tag::BOOT_ITEM, &item);
            v.finish().ok()?
        }
        None => wire::pxe_vendor_options(&cfg.pxe_prompt, boot.mtftp).ok()?,
    };
    m.opts_mut().insert(DhcpOption::VendorExtensions(vendor));
    let src = ctx.source;
    let dest = if src.ip().is_unspecified() {
        Destination::Broadcast
    } else {
        Destination::Unicast(*src.ip(), src.port())
    };
    Some(Reply { message: m, dest })
}

fn client_key(req: &Message) -> ClientKey {
    let id = match req.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(v)) => Some(v.as_slice()),
        _ => None,
    };
    ClientKey::new(id, u8::from(req.htype()), req.chaddr())
}

fn requested_ip(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_id(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// Addresses of the pool never handed out: the server's and the router's.
fn excluded(ip: Ipv4Addr, server: Ipv4Addr, cfg: &DhcpConfig, mask: Ipv4Addr) -> bool {
    ip == server || Some(ip) == cfg.router || cfg.dns.contains(&ip) || {
        // The network and broadcast addresses of the pool's subnet.
        let mask = u32::from(mask);
        let host = u32::from(ip) & !mask;
        mask != u32::MAX && (host == 0 || host == !mask)
    }
}

/// The address to offer `client`: its previous one, the requested one if free, else the lowest
/// address nobody ever had, else the lowest free one.
fn pick_address(
    state: &LeaseState,
    cfg: &DhcpConfig,
    server: Ipv4Addr,
    mask: Ipv4Addr,
    client: &ClientKey,
    requested: Option<Ipv4Addr>,
    now: u64,
) -> Option<Ipv4Addr> {
    let range = cfg.range?;
    let usable = |ip: Ipv4Addr| {
        range.contains(ip) && !excluded(ip, server, cfg, mask) && state.is_free_for(ip, client, now)
    };
    if let Some(l) = state.of_client(client) {
        if usable(l.ip) {
            return Some(l.ip);
        }
    }
    if let Some(ip) = requested.filter(|ip| usable(*ip)) {
        return Some(ip);
    }
    range
        .iter()
        .find(|ip| state.is_unused(*ip) && usable(*ip))
        .or_else(|| range.iter().find(|ip| usable(*ip)))
}

/// Options 1, 3, 6, 15 (and 51/58/59 when `lease` is given).
fn put_config(m: &mut Message, cfg: &DhcpConfig, mask: Ipv4Addr, lease: Option<Duration>) {
    let o = m.opts_mut();
    if let Some(lt) = lease {
        let s = lt.as_secs().min(u64::from(u32::MAX - 1)) as u32;
        o.insert(DhcpOption::AddressLeaseTime(s));
        o.insert(DhcpOption::Renewal(s / 2));
        o.insert(DhcpOption::Rebinding(s / 8 * 7));
    }
    o.insert(DhcpOption::SubnetMask(cfg.netmask.unwrap_or(mask)));
    if let Some(r) = cfg.router {
        o.insert(DhcpOption::Router(vec![r]));
    }
    if !cfg.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(cfg.dns.clone()));
    }
    if let Some(d) = &cfg.domain_name {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
}

/// RFC 2131 section 4.1: relay -> giaddr:67; broadcast bit or no ciaddr -> broadcast; else
/// unicast to ciaddr. (Unicast to yiaddr before the client has an address would need an ARP
/// entry we cannot add from a UDP socket: broadcast is what every client accepts.)
fn destination(req: &Message) -> Destination {
    if !req.giaddr().is_unspecified() {
        Destination::Unicast(req.giaddr(), 67)
    } else if req.flags().broadcast() || req.ciaddr().is_unspecified() {
        Destination::Broadcast
    } else {
        Destination::Unicast(req.ciaddr(), 68)
    }
}

fn nak(req: &Message, server: Ipv4Addr, why: &str) -> Reply {
    let mut m = reply_to(req, MessageType::Nak, server);
    m.opts_mut().insert(DhcpOption::Message(why.to_owned()));
    let mut flags = req.flags();
    if !req.giaddr().is_unspecified() {
        flags = flags.set_broadcast();
    }
    m.set_flags(flags);
    let dest = if req.giaddr().is_unspecified() {
        Destination::Broadcast
    } else {
        Destination::Unicast(req.giaddr(), 67)
    };
    tracing::debug!(client = %mac_str(req.chaddr()), "DHCPNAK: {why}");
    Reply { message: m, dest }
}

/// Boot data for a full-mode reply: PXE clients, HTTP clients, and others only if configured.
fn put_boot(
    m: &mut Message,
    req: &Message,
    info: &ClientInfo,
    cfg: &DhcpConfig,
    server: Ipv4Addr,
    client_net: Ipv4Addr,
) {
    if let Some(boot) = select_boot(cfg, info, req.chaddr(), client_net) {
        if info.pxe || info.http || info.ipxe || cfg.boot_non_pxe || boot.by_rule {
            put_pxe(m, req, info, &boot, cfg, server, true);
        }
    }
}

fn full(req: &Message, ctx: &Context, state: &mut LeaseState, cfg: &DhcpConfig) -> Option<Reply> {
    if ctx.port != ServerPort::Dhcp {
        return None;
    }
    let range = cfg.range?;
    let server = ctx.server_ip;
    let mask = cfg.netmask.unwrap_or(ctx.netmask);
    // Serve only the segment the pool belongs to: the relay's, or the receiving interface's.
    let segment = if req.giaddr().is_unspecified() {
        server
    } else {
        req.giaddr()
    };
    if !same_subnet(segment, range.start, mask) {
        return None;
    }
    let now = unix(ctx.now);
    let client = client_key(req);
    let info = ClientInfo::of(req);
    let ty = req.opts().msg_type()?;
    let lease_until = now + cfg.lease_time.as_secs();
    match ty {
        MessageType::Discover => {
            let Some(ip) = pick_address(state, cfg, server, mask, &client, requested_ip(req), now)
            else {
                tracing::warn!(client = %mac_str(req.chaddr()), "DHCP pool {}-{} is full: no address to offer", range.start, range.end);
                return None;
            };
            state.offer(ip, &client, now + OFFER_HOLD.as_secs());
            let mut m = reply_to(req, MessageType::Offer, server);
            m.set_yiaddr(ip);
            put_config(&mut m, cfg, mask, Some(cfg.lease_time));
            put_boot(&mut m, req, &info, cfg, server, ip);
            Some(Reply {
                message: m,
                dest: destination(req),
            })
        }
        MessageType::Request => {
            let sid = server_id(req);
            if let Some(sid) = sid {
                if sid != server {
                    // SELECTING another server's offer.
                    state.withdraw_offer(&client);
                    return None;
                }
            }
            let (ip, renewing) = match (requested_ip(req), req.ciaddr()) {
                (Some(ip), _) => (ip, false),
                (None, c) if !c.is_unspecified() => (c, true),
                _ => return Some(nak(req, server, "no requested address")),
            };
            if !same_subnet(ip, range.start, mask) {
                return Some(nak(req, server, "wrong network"));
            }
            if !range.contains(ip) || excluded(ip, server, cfg, mask) {
                return Some(nak(req, server, "address not in the pool"));
            }
            if !state.is_free_for(ip, &client, now) {
                return Some(nak(req, server, "address in use by another client"));
            }
            state.bind(ip, &client, lease_until);
            let mut m = reply_to(req, MessageType::Ack, server);
            m.set_yiaddr(ip);
            if renewing {
                m.set_ciaddr(req.ciaddr());
            }
            put_config(&mut m, cfg, mask, Some(cfg.lease_time));
            put_boot(&mut m, req, &info, cfg, server, ip);
            Some(Reply {
                message: m,
                dest: destination(req),
            })
        }
        MessageType::Decline => {
            if server_id(req) != Some(server) {
                return None;
            }
            let ip = requested_ip(req)?;
            if range.contains(ip) {
                tracing::warn!(client = %mac_str(req.chaddr()), "DHCPDECLINE {ip}: someone else uses it; out of the pool for {} s", cfg.decline_hold.as_secs());
                state.decline(ip, now + cfg.decline_hold.as_secs());
            }
            None
        }
        MessageType::Release => {
            if server_id(req) == Some(server) {
                state.release(req.ciaddr(), &client, now);
            }
            None
        }
        MessageType::Inform => {
            let mut m = reply_to(req, MessageType::Ack, server);
            m.set_ciaddr(req.ciaddr());
            put_config(&mut m, cfg, mask, None);
            put_boot(&mut m, req, &info, cfg, server, req.ciaddr());
            let dest = if !req.giaddr().is_unspecified() {
                Destination::Unicast(req.giaddr(), 67)
            } else if !req.ciaddr().is_unspecified() {
                Destination::Unicast(req.ciaddr(), 68)
            } else {
                Destination::Broadcast
            };
            Some(Reply { message: m, dest })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::client;
    use crate::dhcp::config::{ClientArch, MtftpConfig};
    use crate::dhcp::leases::LeaseStore;
    use crate::dhcp::wire::parse_request;
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
            0x4c, 0x4c, 0x45, 0x44, 0, 0x37, 0x10, 0x80, 0x80, 0x31, 0xb4, 0xc0, 0x4f, 0x4b, 0x4d,
            0x31,
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
                        1, 2, 3, 5, 6, 11, 12, 13, 15, 16, 17, 18, 43, 54, 60, 67, 128, 129, 130,
                        131, 132, 133, 134, 135,
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
                        1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51,
                        54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
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
                        1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132,
                        133, 134, 135, 175, 203,
                    ],
                ),
                (
                    175,
                    &[
                        0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0x13, 0x01, 0x01, 0x15, 0x01,
                        0x01,
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

    fn proxy_cfg() -> DhcpConfig {
        DhcpConfig {
            mode: DhcpMode::Proxy,
            boot_file: Some("pxelinux.0".into()),
            ..DhcpConfig::default()
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
        cfg: &DhcpConfig,
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
        let off = DhcpConfig::default();
        assert!(run(&bios_discover(), &ctx67(), &mut st, &off).is_none());
        assert!(st.is_empty());
    }

    #[test]
    fn boot_server_ack_echoes_71_to_the_source_port() {
        let cfg = proxy_cfg();
        let ci = Ipv4Addr::new(10, 0, 0, 50);
        for (port, item) in [(4011u16, Some((0x8000u16 >> 15, 0u16))), (68, None)] {
            let m = client::pxe_boot_request(MAC, ClientArch::EFI_X64, 99, ci, item);
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
        let m = client::pxe_boot_request(MAC, ClientArch::EFI_X64, 99, ci, Some((1, 0x8000)));
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
        let text = r#"
            [dhcp]
            mode = "proxy"
            boot_file = "pxelinux.0"
            [[dhcp.rule]]
            mac = "52:54:00:12:34:56"
            arch = ["bios"]
            boot_file = "special.0"
            next_server = "10.0.0.9"
            [[dhcp.rule]]
            subnet = "10.5.0.0/16"
            boot_file = "remote.0"
            [[dhcp.rule]]
            arch = ["efi-x64", "efi-arm64"]
            boot_file = "grub.efi"
        "#;
        let cfg = DhcpConfig::from_toml_document(text).unwrap();
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
        cfg.mtftp.push(MtftpConfig {
            file: "pxelinux.0".into(),
            group: Ipv4Addr::new(239, 255, 1, 1),
            client_port: 3001,
            server_port: 1759,
            listen_timeout: 1,
            reopen_delay: 2,
        });
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

    fn full_cfg(dir: &std::path::Path) -> DhcpConfig {
        DhcpConfig {
            mode: DhcpMode::Full,
            boot_file: Some("pxelinux.0".into()),
            range: Some("10.0.0.100,10.0.0.102".parse().unwrap()),
            netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            router: Some(SERVER),
            dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
            lease_file: Some(dir.join("leases")),
            ..DhcpConfig::default()
        }
    }

    fn mac(n: u8) -> [u8; 6] {
        [0x52, 0x54, 0, 0, 0, n]
    }

    /// DISCOVER then REQUEST for `m`; returns the bound address.
    fn dora(m: [u8; 6], st: &mut LeaseState, cfg: &DhcpConfig, c: &Context) -> Option<Ipv4Addr> {
        let d = client::pxe_discover(m, ClientArch::BIOS, u32::from(m[5]));
        let offer = decide(&d, c, st, cfg)?.message;
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        let r = client::pxe_request(&offer, m, ClientArch::BIOS, u32::from(m[5]));
        let ack = decide(&r, c, st, cfg)?.message;
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), offer.yiaddr());
        Some(ack.yiaddr())
    }

    #[test]
    fn full_offer_and_ack_carry_lease_and_pxe_options() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = full_cfg(dir.path());
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
        let dir = tempfile::tempdir().unwrap();
        let cfg = full_cfg(dir.path());
        let store = LeaseStore::new(cfg.lease_path());
        let c = ctx67();
        let mut st = store.load().unwrap();
        let a = dora(mac(1), &mut st, &cfg, &c).unwrap();
        assert!(st.take_dirty());
        store.save(&st).unwrap();
        let b = dora(mac(2), &mut st, &cfg, &c).unwrap();
        store.save(&st).unwrap();
        assert_ne!(a, b);
        // Restart: a new table from the file.
        let mut st = store.load().unwrap();
        let c3 = dora(mac(3), &mut st, &cfg, &c).unwrap();
        assert!(c3 != a && c3 != b);
        // Pool of three is full now.
        let d = client::pxe_discover(mac(4), ClientArch::BIOS, 4);
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
        let dir = tempfile::tempdir().unwrap();
        let cfg = full_cfg(dir.path());
        let c = ctx67();
        let mut st = LeaseState::new();
        // DISCOVER asking for .102 gets it when free.
        let mut d = client::pxe_discover(mac(1), ClientArch::BIOS, 1);
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
        let d2 = client::pxe_discover(mac(2), ClientArch::BIOS, 2);
        let o2 = decide(&d2, &c, &mut st, &cfg).unwrap().message;
        let mut r2 = client::pxe_request(&o2, mac(2), ClientArch::BIOS, 2);
        r2.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)));
        assert!(decide(&r2, &c, &mut st, &cfg).is_none());
        assert!(st.get(o2.yiaddr()).is_none());
        // DECLINE: the address stays out of the pool for decline_hold.
        let dec = raw(
            mac(2),
            9,
            0,
            [0; 4],
            [0; 4],
            &[
                (53, &[4]),
                (50, &o2.yiaddr().octets()),
                (54, &SERVER.octets()),
            ],
        );
        assert!(run(&dec, &c, &mut st, &cfg).is_none());
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
        let dir = tempfile::tempdir().unwrap();
        let cfg = full_cfg(dir.path());
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
        let dir = std::env::temp_dir();
        let cfgs = [proxy_cfg(), full_cfg(&dir)];
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
}
