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
mod tests {
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

    fn full_cfg() -> Policy {
        Policy {
            mode: DhcpMode::Full,
            boot_file: Some("pxelinux.0".into()),
            range: Some("10.0.0.100,10.0.0.102".parse().unwrap()),
            netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            router: Some(SERVER),
            dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
            ..Policy::default()
        }
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
        let cfg = full_cfg();
        let c = ctx67();
        let mut st = LeaseState::new();
        let a = dora(mac(1), &mut st, &cfg, &c).unwrap();
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
        // The issue's reproduction: 15 DISCOVERs from fresh MACs on an 11-address pool.
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
        let cfg = full_cfg();
        let c = ctx67();
        let mut st = LeaseState::new();
        let a = dora(mac(1), &mut st, &cfg, &c).unwrap();
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
}
