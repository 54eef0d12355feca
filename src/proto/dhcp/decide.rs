//! The responder's decision: one request in, at most one reply out.
//!
//! Contract:
//! - [`decide`] is pure: no socket, no file, no clock (`now` comes in [`Context`], the
//!   configuration in a [`Policy`]). It may change the [`LeaseState`]; when
//!   [`LeaseState::is_dirty`] is set afterwards the driver must persist the state before it
//!   sends the reply.
//! - Proxy mode (PXE spec 2.1 section 2.2.4, "proxyDHCP"): only clients whose option 60 begins
//!   with `PXEClient` get an answer; a DISCOVER on port 67 gets a proxy OFFER (broadcast, yiaddr
//!   0, options 53/54/60/97/43, siaddr and file, no lease, mask or router), a REQUEST on port 4011
//!   gets an ACK with the file and sub-option 71 echoed, sent back to the port it came from.
//!   Nothing else is ever answered and no address is ever offered.
//! - Full mode (RFC 2131 section 4.3): DISCOVER -> OFFER (the client's previous address, then
//!   the requested one if free, then the lowest free), REQUEST -> ACK or NAK, DECLINE and RELEASE
//!   update the table, INFORM -> ACK without a lease. PXE clients get the PXE options in the same
//!   reply; other clients get a boot file only with `boot_non_pxe` or a rule that names them.
//! - Offers under pressure: while at least half the pool stays free after an offer, the offer
//!   holds its address for [`OFFER_HOLD`]; below that it is *soft* and its hold shrinks with
//!   the free addresses down to [`OFFER_HOLD_MIN`]. When no address is free, the oldest soft
//!   offer is offered again to the new client, and any REQUEST may take a soft offer (the first
//!   one wins; RFC 2131 section 4.3.1 lets a server not reserve an offered address). A DISCOVER
//!   flood from random MACs therefore cannot keep a real client from an address.
//! - A renewal in the first quarter of a lease (a duplicate REQUEST, iPXE asking again right
//!   after the firmware) is answered with the lease's remaining time and changes nothing, so it
//!   needs no save.
//! - A DECLINE is taken only from the client that holds the offer or lease of the address it
//!   names (same client key, option 50 = that address); others are ignored with a [`Note`].
//! - [`decide_noted`] also returns a [`Note`] for what deserves a log line (full pool, iPXE loop,
//!   DECLINE): a peer can cause one per datagram, so the driver logs them through rate limits.
//!   This module itself logs only at DEBUG (and an option 43 over 255 bytes, which
//!   `DhcpConfig::validate` refuses before any request arrives).
//! - Boot file selection ([`select_boot`]): the first matching `[[dhcp.rule]]`, then
//!   `boot_file`; a chainloaded iPXE gets `ipxe_script` and never the iPXE binary again.

use super::leases::{ClientKey, LeaseKind, LeaseState};
use super::policy::{
    looks_like_ipxe_binary, same_subnet, BootRule, DhcpMode, MtftpConfig, Policy, PoolRange,
};
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

/// How long an OFFER holds an address for its client while the pool has room.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);
/// The shortest hold of a soft offer (the pool nearly full).
pub const OFFER_HOLD_MIN: Duration = Duration::from_secs(10);

/// Something a request caused that deserves a log line (WARN unless said otherwise). A peer can
/// cause one per datagram, so the driver logs them through rate limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note<'a> {
    /// Full mode: no address to offer (every one bound, declined or firmly offered).
    PoolFull { range: PoolRange },
    /// iPXE asked again and would get the iPXE binary `file` (a boot loop): not answered.
    IpxeLoop { file: &'a str },
    /// A DECLINE from the address's holder: `ip` is out of the pool for `hold`.
    Declined { ip: Ipv4Addr, hold: Duration },
    /// A DECLINE for `ip` from a client that holds neither an offer nor a lease of it: ignored.
    ForeignDecline { ip: Option<Ipv4Addr> },
    /// The pool was full: the soft offer of `ip` was given to this client instead (DEBUG).
    Reclaimed { ip: Ipv4Addr },
}

/// What [`decide_noted`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub reply: Option<Reply>,
    pub note: Option<Note<'a>>,
}

/// Decide the reply to `req`; see the module contract.
pub fn decide(req: &Message, ctx: &Context, state: &mut LeaseState, cfg: &Policy) -> Option<Reply> {
    decide_noted(req, ctx, state, cfg).reply
}

/// [`decide`], with the [`Note`] the driver logs.
pub fn decide_noted<'a>(
    req: &Message,
    ctx: &Context,
    state: &mut LeaseState,
    cfg: &'a Policy,
) -> Decision<'a> {
    let mut note = None;
    let reply = if req.opcode() != Opcode::BootRequest {
        None
    } else {
        match cfg.mode {
            DhcpMode::Off => None,
            DhcpMode::Proxy => proxy(req, ctx, cfg, &mut note),
            DhcpMode::Full => full(req, ctx, state, cfg, &mut note),
        }
    };
    Decision { reply, note }
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

/// Why a client gets no boot data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoBoot<'a> {
    /// No rule and no `boot_file` for it.
    NoFile,
    /// iPXE would get the iPXE binary `file` again (a boot loop) and no script is configured.
    IpxeLoop { file: &'a str },
}

/// Choose the boot file for a client. `client_net` is an address in the client's subnet (relay,
/// current, offered or the receiving interface's).
pub fn select_boot<'a>(
    cfg: &'a Policy,
    info: &ClientInfo,
    chaddr: &[u8],
    client_net: Ipv4Addr,
) -> Result<BootChoice<'a>, NoBoot<'a>> {
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
            (None, Some(f)) => return Err(NoBoot::IpxeLoop { file: f }),
            (None, None) => return Err(NoBoot::NoFile),
        }
    } else {
        file.ok_or(NoBoot::NoFile)?
    };
    Ok(BootChoice {
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
    cfg: &Policy,
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
            tracing::error!(target: "ringboot::dhcp", "not answering: {e}");
            false
        }
    }
}

/// [`select_boot`], keeping the iPXE loop as the decision's note.
fn boot_for<'a>(
    cfg: &'a Policy,
    info: &ClientInfo,
    chaddr: &[u8],
    client_net: Ipv4Addr,
    note: &mut Option<Note<'a>>,
) -> Option<BootChoice<'a>> {
    match select_boot(cfg, info, chaddr, client_net) {
        Ok(b) => Some(b),
        Err(NoBoot::IpxeLoop { file }) => {
            *note = Some(Note::IpxeLoop { file });
            None
        }
        Err(NoBoot::NoFile) => None,
    }
}

fn proxy<'a>(
    req: &Message,
    ctx: &Context,
    cfg: &'a Policy,
    note: &mut Option<Note<'a>>,
) -> Option<Reply> {
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
            let boot = boot_for(cfg, &info, req.chaddr(), client_net, note)?;
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
            boot_server_ack(req, ctx, cfg, &info, client_net, note)
        }
        _ => None,
    }
}

/// Port 4011: ACK with the boot file; sub-option 71 echoed when the client sent it.
fn boot_server_ack<'a>(
    req: &Message,
    ctx: &Context,
    cfg: &'a Policy,
    info: &ClientInfo,
    client_net: Ipv4Addr,
    note: &mut Option<Note<'a>>,
) -> Option<Reply> {
    if let Some(item) = info.boot_item {
        if u16::from_be_bytes([item[2], item[3]]) & 0x8000 != 0 {
            tracing::debug!(target: "ringboot::dhcp", client = %mac_str(req.chaddr()), "PXE boot item asks for BIS (not supported): not answering");
            return None;
        }
    }
    let boot = boot_for(cfg, info, req.chaddr(), client_net, note)?;
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

/// The key a request's lease is held under (option 61, else htype and chaddr).
pub fn client_key(req: &Message) -> ClientKey {
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

/// The addresses of the pool never handed out: the server's, the router's, the DNS servers',
/// and the network and broadcast addresses of the pool's subnet.
struct Excluded<'a> {
    server: Ipv4Addr,
    cfg: &'a Policy,
    mask: u32,
}

/// Numbers `x` in `a..=b` with `x % s == r` (`s` >= 1, `r` < `s`).
fn count_congruent(a: u64, b: u64, s: u64, r: u64) -> u64 {
    let upto = |n: i128| (n - r as i128).div_euclid(s as i128);
    (upto(b as i128) - upto(a as i128 - 1)) as u64
}

impl Excluded<'_> {
    fn net_or_broadcast(&self, ip: Ipv4Addr) -> bool {
        let host = u32::from(ip) & !self.mask;
        self.mask != u32::MAX && (host == 0 || host == !self.mask)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        ip == self.server
            || Some(ip) == self.cfg.router
            || self.cfg.dns.contains(&ip)
            || self.net_or_broadcast(ip)
    }

    fn named(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        std::iter::once(self.server)
            .chain(self.cfg.router)
            .chain(self.cfg.dns.iter().copied())
    }

    /// How many excluded addresses lie in `a..=b`.
    fn count(&self, a: u32, b: u32) -> u64 {
        if a > b {
            return 0;
        }
        let mut n = 0;
        if self.mask != u32::MAX {
            let s = u64::from(!self.mask) + 1;
            n += count_congruent(a.into(), b.into(), s, 0);
            n += count_congruent(a.into(), b.into(), s, s - 1);
        }
        for (i, ip) in self.named().enumerate() {
            let x = u32::from(ip);
            if (a..=b).contains(&x)
                && !self.net_or_broadcast(ip)
                && !self.named().take(i).any(|e| e == ip)
            {
                n += 1;
            }
        }
        n
    }
}

/// The pool as one client sees it at `now`: one pass over the records in the range.
#[derive(Debug, Default)]
struct PoolView {
    /// Addresses of the pool that may be handed out at all.
    usable: u64,
    /// Usable addresses free for this client (no record, its own, or a record that lapsed).
    free: u64,
    /// The lowest usable address without any record.
    first_unused: Option<Ipv4Addr>,
    /// The lowest usable address whose record lapsed (or is the client's own).
    first_lapsed: Option<Ipv4Addr>,
    /// The oldest soft offer held for another client.
    oldest_soft: Option<Ipv4Addr>,
}

fn view_pool(
    state: &LeaseState,
    range: PoolRange,
    ex: &Excluded,
    client: &ClientKey,
    now: u64,
) -> PoolView {
    let mut v = PoolView {
        usable: u64::from(range.len()) - ex.count(range.start.into(), range.end.into()),
        ..PoolView::default()
    };
    let mut soft_seq = u64::MAX;
    let end = u64::from(u32::from(range.end));
    let mut next = u64::from(u32::from(range.start));
    let gap = |v: &mut PoolView, from: u64, to: u64| {
        // The unused addresses from..=to (to < 2^32).
        if from > to {
            return;
        }
        let (a, b) = (from as u32, to as u32);
        v.free += u64::from(b - a) + 1 - ex.count(a, b);
        if v.first_unused.is_none() {
            v.first_unused = (a..=b).map(Ipv4Addr::from).find(|ip| !ex.contains(*ip));
        }
    };
    for l in state.in_range(range) {
        // Records come lowest address first, all inside the range.
        let n = u64::from(u32::from(l.ip));
        if n > next {
            gap(&mut v, next, n - 1);
        }
        next = n + 1;
        if ex.contains(l.ip) {
            continue;
        }
        if state.is_free_for(l.ip, client, now) {
            v.free += 1;
            v.first_lapsed.get_or_insert(l.ip);
        } else if l.kind == LeaseKind::Offered && l.soft && l.offer_seq() < soft_seq {
            soft_seq = l.offer_seq();
            v.oldest_soft = Some(l.ip);
        }
    }
    gap(&mut v, next, end);
    v
}

/// How long an offer holds its address when `free_after` usable addresses stay free, and
/// whether it is soft (see the module contract).
fn offer_hold(usable: u64, free_after: u64) -> (Duration, bool) {
    let half = (usable / 2).max(1);
    if free_after >= half {
        return (OFFER_HOLD, false);
    }
    let span = (OFFER_HOLD - OFFER_HOLD_MIN).as_secs();
    let hold = OFFER_HOLD_MIN.as_secs() + span * free_after / half;
    (Duration::from_secs(hold), true)
}

/// The address to offer `client`: its previous one, the requested one if free, else the lowest
/// address nobody ever had, else the lowest free one; with its hold and softness. When none is
/// free, the oldest soft offer of another client (`reclaimed`).
struct Pick {
    ip: Ipv4Addr,
    hold: Duration,
    soft: bool,
    reclaimed: bool,
}

fn pick_address(
    state: &LeaseState,
    range: PoolRange,
    ex: &Excluded,
    client: &ClientKey,
    requested: Option<Ipv4Addr>,
    now: u64,
) -> Option<Pick> {
    let usable =
        |ip: Ipv4Addr| range.contains(ip) && !ex.contains(ip) && state.is_free_for(ip, client, now);
    let v = view_pool(state, range, ex, client, now);
    let chosen = state
        .of_client(client)
        .map(|l| l.ip)
        .filter(|ip| usable(*ip))
        .or(requested.filter(|ip| usable(*ip)))
        .or(v.first_unused)
        .or(v.first_lapsed);
    match chosen {
        Some(ip) => {
            let (hold, soft) = offer_hold(v.usable, v.free.saturating_sub(1));
            Some(Pick {
                ip,
                hold,
                soft,
                reclaimed: false,
            })
        }
        None => v.oldest_soft.map(|ip| Pick {
            ip,
            hold: OFFER_HOLD_MIN,
            soft: true,
            reclaimed: true,
        }),
    }
}

/// Options 1, 3, 6, 15 (and 51/58/59 when `lease` is given).
fn put_config(m: &mut Message, cfg: &Policy, mask: Ipv4Addr, lease: Option<Duration>) {
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
    tracing::debug!(target: "ringboot::dhcp", client = %mac_str(req.chaddr()), "DHCPNAK: {why}");
    Reply { message: m, dest }
}

/// Boot data for a full-mode reply: PXE clients, HTTP clients, and others only if configured.
fn put_boot<'a>(
    m: &mut Message,
    req: &Message,
    info: &ClientInfo,
    cfg: &'a Policy,
    server: Ipv4Addr,
    client_net: Ipv4Addr,
    note: &mut Option<Note<'a>>,
) {
    if let Some(boot) = boot_for(cfg, info, req.chaddr(), client_net, note) {
        if info.pxe || info.http || info.ipxe || cfg.boot_non_pxe || boot.by_rule {
            put_pxe(m, req, info, &boot, cfg, server, true);
        }
    }
}

/// A renewal this early in the lease is answered with the remaining time, without a change.
fn cached_renewal(
    state: &LeaseState,
    ip: Ipv4Addr,
    client: &ClientKey,
    cfg: &Policy,
    now: u64,
) -> Option<Duration> {
    let l = state.get(ip)?;
    let remaining = l.expires.saturating_sub(now);
    let lease = cfg.lease_time.as_secs();
    (l.kind == LeaseKind::Bound && &l.client == client && remaining > lease / 4 * 3)
        .then(|| Duration::from_secs(remaining.min(lease)))
}

fn full<'a>(
    req: &Message,
    ctx: &Context,
    state: &mut LeaseState,
    cfg: &'a Policy,
    note: &mut Option<Note<'a>>,
) -> Option<Reply> {
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
    let ex = Excluded {
        server,
        cfg,
        mask: u32::from(mask),
    };
    let now = unix(ctx.now);
    let client = client_key(req);
    let info = ClientInfo::of(req);
    let ty = req.opts().msg_type()?;
    let lease_until = now + cfg.lease_time.as_secs();
    match ty {
        MessageType::Discover => {
            let Some(pick) = pick_address(state, range, &ex, &client, requested_ip(req), now)
            else {
                *note = Some(Note::PoolFull { range });
                return None;
            };
            if pick.reclaimed {
                *note = Some(Note::Reclaimed { ip: pick.ip });
            }
            let ip = pick.ip;
            state.offer(ip, &client, now, now + pick.hold.as_secs(), pick.soft);
            let mut m = reply_to(req, MessageType::Offer, server);
            m.set_yiaddr(ip);
            put_config(&mut m, cfg, mask, Some(cfg.lease_time));
            put_boot(&mut m, req, &info, cfg, server, ip, note);
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
            if !range.contains(ip) || ex.contains(ip) {
                return Some(nak(req, server, "address not in the pool"));
            }
            let lease = match cached_renewal(state, ip, &client, cfg, now) {
                Some(remaining) => remaining,
                None => {
                    if !state.may_bind(ip, &client, now) {
                        return Some(nak(req, server, "address in use by another client"));
                    }
                    state.bind(ip, &client, now, lease_until);
                    cfg.lease_time
                }
            };
            let mut m = reply_to(req, MessageType::Ack, server);
            m.set_yiaddr(ip);
            if renewing {
                m.set_ciaddr(req.ciaddr());
            }
            put_config(&mut m, cfg, mask, Some(lease));
            put_boot(&mut m, req, &info, cfg, server, ip, note);
            Some(Reply {
                message: m,
                dest: destination(req),
            })
        }
        MessageType::Decline => {
            if server_id(req) != Some(server) {
                return None; // for another server
            }
            let ip = requested_ip(req);
            let holder = ip.and_then(|ip| state.get(ip)).is_some_and(|l| {
                l.client == client
                    && matches!(l.kind, LeaseKind::Bound | LeaseKind::Offered)
                    && l.holds(now)
            });
            match ip {
                Some(ip) if holder => {
                    state.decline(ip, now + cfg.decline_hold.as_secs());
                    *note = Some(Note::Declined {
                        ip,
                        hold: cfg.decline_hold,
                    });
                }
                _ => *note = Some(Note::ForeignDecline { ip }),
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
            put_boot(&mut m, req, &info, cfg, server, req.ciaddr(), note);
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
mod tests;
