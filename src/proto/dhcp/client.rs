//! One PXE machine's DHCP exchange, as firmware does it: a sans-IO client machine.
//!
//! Contract:
//! - Full DHCP ([`ClientConfig::proxy_dhcp`] false): DISCOVER -> the first OFFER with an address
//!   -> REQUEST (options 50 and 54 from that offer) -> ACK.
//! - proxyDHCP beside the network's DHCP server (PXE 2.1 section 2.2.4; `proxy_dhcp` true):
//!   DISCOVER -> an address OFFER (the network's server) and a proxy OFFER (option 60
//!   `PXEClient`, no address) -> REQUEST -> ACK -> boot-server REQUEST to port 4011 of the proxy
//!   (option 54, else siaddr) with sub-option 71 -> ACK with the boot file. An address OFFER that
//!   carries the PXE data itself (option 60 `PXEClient` and a boot file) counts as both and needs
//!   no port-4011 exchange.
//! - DISCOVER, REQUEST and the boot-server REQUEST are resent every [`ClientConfig::retransmit`]
//!   up to [`ClientConfig::tries`] sends, like firmware; a NAK from the server whose offer was
//!   taken starts over from DISCOVER, at most [`MAX_NAKS`] times.
//! - [`Client::handle_datagram`] takes any datagram: only a BOOTREPLY with this machine's xid
//!   and hardware address counts (checked on the fixed header before the options are decoded);
//!   anything else is ignored. An ACK or NAK naming another server than the offer taken is
//!   ignored too.
//! - [`Client::poll_transmit`] writes the datagram into the caller's buffer and says where it
//!   goes: `255.255.255.255:67` (from port 68) or `server:4011` (from any port). A buffer
//!   shorter than the datagram (at most [`wire::MAX_LEN`]) loses it, like a lost packet.
//! - [`Client::poll_event`] reports [`Event::BootServer`] (proxy: the address is ACKed, port
//!   4011 is asked next), then one of [`Event::Leased`] or [`Event::Failed`], after which the
//!   machine is finished: no timeout, nothing to send, datagrams ignored.
//! - Each message is built and encoded once when its phase begins; a retransmission copies the
//!   saved bytes. No clock: time comes in as `now`.

use super::wire::{self, ClientArch};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// NAKs after which a machine gives up (each one starts over from DISCOVER).
pub const MAX_NAKS: u32 = 3;
/// The DHCP server port (RFC 2131 section 4.1).
pub const SERVER_PORT: u16 = 67;
/// The PXE boot server port (PXE 2.1 section 2.2.5).
pub const BOOT_SERVER_PORT: u16 = 4011;

/// One machine's identity and timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    pub mac: [u8; 6],
    /// Option 93 and the matching vendor class, UNDI version and machine id.
    pub arch: ClientArch,
    /// Sends option 77 `iPXE` and option 175 like a chainloaded iPXE.
    pub ipxe: bool,
    /// Transaction id, kept for the whole exchange.
    pub xid: u32,
    /// A proxyDHCP answers beside the address server: wait for its offer (see the contract).
    pub proxy_dhcp: bool,
    /// Resend interval of each message.
    pub retransmit: Duration,
    /// Sends of one message before the machine gives up (at least 1).
    pub tries: u32,
}

/// What a machine got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootLease {
    pub address: Ipv4Addr,
    /// Option 54 of the ACK that gave the address.
    pub dhcp_server: Option<Ipv4Addr>,
    /// The TFTP server named by the answer that gave the boot file (siaddr, else option 66 as an
    /// address, else option 54; the boot server in proxy mode).
    pub next_server: Option<Ipv4Addr>,
    /// The boot file (header `file`, else option 67).
    pub boot_file: String,
}

/// Why a machine gave up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("no OFFER with an address after {tries} DISCOVERs")]
    NoOffer { tries: u32 },
    #[error(
        "no proxy OFFER (option 60 PXEClient) after {tries} DISCOVERs: is the proxyDHCP running?"
    )]
    NoProxyOffer { tries: u32 },
    #[error("no ACK after {tries} REQUESTs")]
    NoAck { tries: u32 },
    #[error("no ACK from the boot server {server}:{BOOT_SERVER_PORT} after {tries} REQUESTs")]
    NoBootAck { server: Ipv4Addr, tries: u32 },
    #[error("{naks} NAKs, the last: {message}")]
    Nak { naks: u32, message: String },
    #[error("the DHCP answers name no boot file (PXE-E53)")]
    NoBootFile,
}

/// What the driver must know; see the module contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// proxyDHCP: `address` is ACKed; the boot server `server` is asked on port 4011 next.
    BootServer { address: Ipv4Addr, server: Ipv4Addr },
    /// Done: an address and a boot file.
    Leased(BootLease),
    /// Done: gave up.
    Failed(ClientError),
}

/// A datagram to send: `len` bytes written into the buffer given to [`Client::poll_transmit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dest: SocketAddr,
    pub len: usize,
}

/// The address/boot file of an answer before the exchange is over (the file may come later).
#[derive(Clone, Debug)]
struct Partial {
    address: Ipv4Addr,
    dhcp_server: Option<Ipv4Addr>,
    next_server: Option<Ipv4Addr>,
    boot_file: Option<String>,
}

/// RFC 2131 section 4.4 client states, with PXE's boot-server phase.
#[derive(Debug)]
enum State {
    Selecting {
        address: Option<Message>,
        proxy: Option<Message>,
    },
    Requesting {
        offer: Message,
        /// The proxy OFFER to follow up on port 4011 (None: the offer carried the PXE data).
        proxy: Option<Message>,
    },
    BootServer {
        lease: Partial,
        server: Ipv4Addr,
    },
    Finished,
}

/// One machine's DHCP exchange; see the module contract.
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    state: State,
    /// Sends of the current message.
    sent: u32,
    timer: Option<Instant>,
    /// The current message, encoded once per phase.
    out: Vec<u8>,
    dest: SocketAddr,
    /// `out` waits to be sent.
    pending: bool,
    events: VecDeque<Event>,
    retransmits: u32,
    naks: u32,
}

fn server_id(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    }
}

fn is_pxe(m: &Message) -> bool {
    matches!(m.opts().get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(v)) if v.starts_with(b"PXEClient"))
}

fn boot_file(m: &Message) -> Option<String> {
    let header = m
        .fname()
        .map(|f| String::from_utf8_lossy(f).trim_end_matches('\0').to_owned());
    let opt = match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(v)) => {
            Some(String::from_utf8_lossy(v).trim_end_matches('\0').to_owned())
        }
        _ => None,
    };
    header.into_iter().chain(opt).find(|f| !f.is_empty())
}

fn next_server(m: &Message) -> Option<Ipv4Addr> {
    let named = match m.opts().get(OptionCode::TFTPServerName) {
        Some(DhcpOption::TFTPServerName(v)) => String::from_utf8_lossy(v)
            .trim_end_matches('\0')
            .parse()
            .ok(),
        _ => None,
    };
    Some(m.siaddr())
        .filter(|s| !s.is_unspecified())
        .or(named)
        .or_else(|| server_id(m))
}

impl Client {
    /// Start: the first DISCOVER is ready to send.
    pub fn new(cfg: ClientConfig, now: Instant) -> Client {
        let mut c = Client {
            cfg: ClientConfig {
                tries: cfg.tries.max(1),
                ..cfg
            },
            state: State::Selecting {
                address: None,
                proxy: None,
            },
            sent: 0,
            timer: None,
            out: Vec::with_capacity(wire::MIN_LEN),
            dest: SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), SERVER_PORT),
            pending: false,
            events: VecDeque::with_capacity(2),
            retransmits: 0,
            naks: 0,
        };
        c.begin(now);
        c
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Messages resent so far (DISCOVERs, REQUESTs, boot-server REQUESTs).
    pub fn retransmits(&self) -> u32 {
        self.retransmits
    }

    /// NAKs taken so far.
    pub fn naks(&self) -> u32 {
        self.naks
    }

    /// Whether the exchange is over (its last event may still wait in [`Client::poll_event`]).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// Build and encode the current phase's message, then send it.
    fn begin(&mut self, now: Instant) {
        let ClientConfig { mac, arch, xid, .. } = self.cfg;
        let (msg, dest) = match &self.state {
            State::Selecting { .. } => (
                wire::pxe_discover(mac, arch, xid),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), SERVER_PORT),
            ),
            State::Requesting { offer, .. } => (
                wire::pxe_request(offer, mac, arch, xid),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), SERVER_PORT),
            ),
            State::BootServer { lease, server } => (
                wire::pxe_boot_request(mac, arch, xid, lease.address, Some((0, 0))),
                SocketAddr::new(IpAddr::V4(*server), BOOT_SERVER_PORT),
            ),
            State::Finished => return,
        };
        let msg = if self.cfg.ipxe {
            wire::as_ipxe(msg)
        } else {
            msg
        };
        wire::encode_into(&msg, &mut self.out);
        self.dest = dest;
        self.sent = 0;
        self.send(now);
    }

    /// Queue the current message (again) and arm the timer.
    fn send(&mut self, now: Instant) {
        if self.sent > 0 {
            self.retransmits += 1;
        }
        self.sent += 1;
        self.pending = true;
        self.timer = Some(now + self.cfg.retransmit);
    }

    fn enter(&mut self, state: State, now: Instant) {
        self.state = state;
        self.begin(now);
    }

    fn finish(&mut self, lease: Partial) {
        let event = match lease.boot_file {
            Some(boot_file) => Event::Leased(BootLease {
                address: lease.address,
                dhcp_server: lease.dhcp_server,
                next_server: lease.next_server,
                boot_file,
            }),
            None => Event::Failed(ClientError::NoBootFile),
        };
        self.end(event);
    }

    fn end(&mut self, event: Event) {
        self.state = State::Finished;
        self.timer = None;
        self.pending = false;
        self.events.push_back(event);
    }

    /// A datagram arrived on the machine's port 68 (or its boot-server socket) from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let _ = from;
        if self.is_finished() || !self.is_mine(datagram) {
            return;
        }
        let Ok(msg) = wire::parse_any(datagram) else {
            return;
        };
        self.handle_reply(&msg, now);
    }

    /// A BOOTREPLY with this machine's xid and hardware address (fixed header only).
    fn is_mine(&self, d: &[u8]) -> bool {
        d.len() >= wire::HEADER_LEN
            && d[0] == 2
            && d[4..8] == self.cfg.xid.to_be_bytes()
            && d[28..34] == self.cfg.mac
    }

    fn handle_reply(&mut self, msg: &Message, now: Instant) {
        let Some(ty) = msg.opts().msg_type() else {
            return;
        };
        let proxy_mode = self.cfg.proxy_dhcp;
        match (&mut self.state, ty) {
            (State::Selecting { address, proxy }, MessageType::Offer) => {
                let has_address = !msg.yiaddr().is_unspecified();
                if has_address && address.is_none() {
                    *address = Some(msg.clone());
                } else if !has_address && is_pxe(msg) && proxy.is_none() {
                    *proxy = Some(msg.clone());
                }
                let Some(offer) = address.as_ref() else {
                    return;
                };
                // The PXE data came with the address (or full mode): no proxy to follow.
                let self_contained = is_pxe(offer) && boot_file(offer).is_some();
                if !proxy_mode || self_contained {
                    let offer = offer.clone();
                    self.enter(State::Requesting { offer, proxy: None }, now);
                } else if let Some(p) = proxy.take() {
                    let offer = offer.clone();
                    self.enter(
                        State::Requesting {
                            offer,
                            proxy: Some(p),
                        },
                        now,
                    );
                }
            }
            (State::Requesting { offer, proxy }, MessageType::Ack) => {
                if server_id(msg).is_some() && server_id(msg) != server_id(offer) {
                    return;
                }
                let lease = Partial {
                    address: msg.yiaddr(),
                    dhcp_server: server_id(msg),
                    next_server: next_server(msg),
                    boot_file: boot_file(msg),
                };
                match proxy.take() {
                    Some(p) => {
                        let server = server_id(&p).unwrap_or(p.siaddr());
                        self.events.push_back(Event::BootServer {
                            address: lease.address,
                            server,
                        });
                        self.enter(State::BootServer { lease, server }, now);
                    }
                    None => self.finish(lease),
                }
            }
            (State::Requesting { offer, .. }, MessageType::Nak) => {
                if server_id(msg).is_some() && server_id(msg) != server_id(offer) {
                    return;
                }
                self.naks += 1;
                if self.naks > MAX_NAKS {
                    let message = match msg.opts().get(OptionCode::Message) {
                        Some(DhcpOption::Message(m)) => m.clone(),
                        _ => "(no message)".into(),
                    };
                    self.end(Event::Failed(ClientError::Nak {
                        naks: self.naks,
                        message,
                    }));
                } else {
                    self.enter(
                        State::Selecting {
                            address: None,
                            proxy: None,
                        },
                        now,
                    );
                }
            }
            (State::BootServer { lease, server }, MessageType::Ack) => {
                if server_id(msg).is_some_and(|s| s != *server) && !is_pxe(msg) {
                    return; // a late ACK from the address server
                }
                let mut lease = lease.clone();
                lease.next_server = next_server(msg).or(Some(*server));
                lease.boot_file = boot_file(msg);
                self.finish(lease);
            }
            _ => {}
        }
    }

    /// Call when [`Client::poll_timeout`] is due: resend, or give up after `tries` sends.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timer.is_none_or(|t| t > now) {
            return;
        }
        if self.sent < self.cfg.tries {
            return self.send(now);
        }
        let tries = self.sent;
        let e = match &self.state {
            State::Selecting { address: None, .. } => ClientError::NoOffer { tries },
            State::Selecting { .. } => ClientError::NoProxyOffer { tries },
            State::Requesting { .. } => ClientError::NoAck { tries },
            State::BootServer { server, .. } => ClientError::NoBootAck {
                server: *server,
                tries,
            },
            State::Finished => return,
        };
        self.end(Event::Failed(e));
    }

    /// The datagram to send now, written into `buf`; call until `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let _ = now;
        if !std::mem::take(&mut self.pending) {
            return None;
        }
        let len = self.out.len();
        let slot = buf.get_mut(..len)?;
        slot.copy_from_slice(&self.out);
        Some(Transmit {
            dest: self.dest,
            len,
        })
    }

    /// When to call [`Client::handle_timeout`] (None: finished).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer
    }

    /// What happened since the last call; see the module contract.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    //! The machine against the real decision ([`super::super::decide`]) on virtual time, through
    //! a small link that can lose datagrams. (To move onto `proto::sim` once it is here.)
    use super::*;
    use crate::proto::dhcp::decide::{decide, Context, ServerPort};
    use crate::proto::dhcp::leases::LeaseState;
    use crate::proto::dhcp::policy::{DhcpMode, Policy};
    use std::net::SocketAddrV4;
    use std::time::UNIX_EPOCH;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const SEC: Duration = Duration::from_secs(1);

    fn origin() -> Instant {
        crate::sim_origin()
    }

    fn cfg(n: u8, arch: ClientArch, proxy_dhcp: bool) -> ClientConfig {
        ClientConfig {
            mac: [0x52, 0x54, 0, 0, 0, n],
            arch,
            ipxe: false,
            xid: 0x1000 + u32::from(n),
            proxy_dhcp,
            retransmit: SEC,
            tries: 4,
        }
    }

    /// The network's DHCP server (addresses, no boot file) at `OTHER` and ringboot's proxyDHCP
    /// (`grubx64.efi`) at `SERVER`.
    fn proxy_net() -> Net {
        let mut addr = full_policy();
        addr.boot_file = None;
        let proxy = Policy {
            mode: DhcpMode::Proxy,
            boot_file: Some("grubx64.efi".into()),
            ..Policy::default()
        };
        Net::new(vec![Server::new(addr, OTHER), Server::new(proxy, SERVER)])
    }

    fn full_policy() -> Policy {
        Policy::full_lab("10.0.0.100,10.0.0.199", SERVER)
    }

    /// A responder on the segment: its policy, its lease table and its address.
    struct Server {
        policy: Policy,
        leases: LeaseState,
        ip: Ipv4Addr,
        /// Rewrite of every reply (e.g. a NAK where an ACK was decided).
        edit: Option<fn(&mut Message)>,
    }

    impl Server {
        fn new(policy: Policy, ip: Ipv4Addr) -> Server {
            Server {
                policy,
                leases: LeaseState::new(),
                ip,
                edit: None,
            }
        }

        /// The reply to a datagram sent to `dest`, as bytes on the wire.
        fn serve(&mut self, bytes: &[u8], dest: SocketAddr) -> Option<Vec<u8>> {
            let req = wire::parse_request(bytes).expect("the client sends valid requests");
            let port = match dest.port() {
                SERVER_PORT => ServerPort::Dhcp,
                BOOT_SERVER_PORT if dest.ip() == IpAddr::V4(self.ip) => ServerPort::BootServer,
                _ => return None,
            };
            let source = match port {
                ServerPort::Dhcp => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
                ServerPort::BootServer => SocketAddrV4::new(req.ciaddr(), 40000),
            };
            let ctx = Context {
                server_ip: self.ip,
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                port,
                source,
                now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            };
            let mut reply = decide(&req, &ctx, &mut self.leases, &self.policy)?.message;
            if let Some(edit) = self.edit {
                edit(&mut reply);
            }
            Some(wire::encode(&reply))
        }
    }

    /// The client, the servers and virtual time; `lose(n)` says whether the n-th datagram sent
    /// (by anyone, from 0) is lost.
    struct Net {
        now: Instant,
        servers: Vec<Server>,
        sent: usize,
        lose: fn(usize) -> bool,
        buf: Vec<u8>,
        /// (destination, message type) of every datagram the client sent.
        log: Vec<(SocketAddr, Option<MessageType>)>,
        events: Vec<Event>,
    }

    impl Net {
        fn new(servers: Vec<Server>) -> Net {
            Net {
                now: origin(),
                servers,
                sent: 0,
                lose: |_| false,
                buf: vec![0; wire::MAX_LEN],
                log: vec![],
                events: vec![],
            }
        }

        fn lost(&mut self) -> bool {
            self.sent += 1;
            (self.lose)(self.sent - 1)
        }

        /// Deliver what the client sends and the answers until it is quiet, then move the clock
        /// to its timeout; until it is finished (bounded).
        fn run(&mut self, c: &mut Client) {
            for _ in 0..1000 {
                while let Some(t) = c.poll_transmit(self.now, &mut self.buf) {
                    let bytes = self.buf[..t.len].to_vec();
                    let ty = wire::parse_request(&bytes).unwrap().opts().msg_type();
                    self.log.push((t.dest, ty));
                    if self.lost() {
                        continue;
                    }
                    let mut replies = vec![];
                    for s in &mut self.servers {
                        if let Some(r) = s.serve(&bytes, t.dest) {
                            replies.push((s.ip, r));
                        }
                    }
                    for (ip, r) in replies {
                        if !self.lost() {
                            let from = SocketAddr::new(IpAddr::V4(ip), t.dest.port());
                            c.handle_datagram(self.now, from, &r);
                        }
                    }
                }
                while let Some(e) = c.poll_event() {
                    self.events.push(e);
                }
                if c.is_finished() {
                    return;
                }
                let t = c.poll_timeout().expect("a running machine has a timer");
                assert!(t > self.now, "time goes forward");
                self.now = t;
                c.handle_timeout(self.now);
            }
            panic!("the exchange did not end");
        }

        fn leased(&self) -> &BootLease {
            match self.events.last() {
                Some(Event::Leased(l)) => l,
                other => panic!("not leased: {other:?}"),
            }
        }

        fn failed(&self) -> &ClientError {
            match self.events.last() {
                Some(Event::Failed(e)) => e,
                other => panic!("not failed: {other:?}"),
            }
        }

        fn sent_types(&self) -> Vec<MessageType> {
            self.log.iter().filter_map(|(_, t)| *t).collect()
        }
    }

    #[test]
    fn full_mode_resends_the_discover_when_the_offer_is_lost() {
        let mut net = Net::new(vec![Server::new(full_policy(), SERVER)]);
        // Datagram 0 is the first DISCOVER, 1 its OFFER: lost.
        net.lose = |n| n == 1;
        let mut c = Client::new(cfg(1, ClientArch::BIOS, false), net.now);
        let t0 = net.now;
        net.run(&mut c);
        let lease = net.leased().clone();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(lease.boot_file, "pxelinux.0");
        assert_eq!(lease.next_server, Some(SERVER));
        assert_eq!(lease.dhcp_server, Some(SERVER));
        assert_eq!(c.retransmits(), 1);
        assert_eq!(
            net.sent_types(),
            [
                MessageType::Discover,
                MessageType::Discover,
                MessageType::Request
            ]
        );
        assert!(net
            .log
            .iter()
            .all(|(d, _)| *d == SocketAddr::from((Ipv4Addr::BROADCAST, SERVER_PORT))));
        assert_eq!(net.now, t0 + SEC, "one retransmission interval");
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(net.events.len(), 1, "no boot-server phase in full mode");
    }

    #[test]
    fn proxy_mode_takes_the_address_from_one_and_the_file_from_4011() {
        // The network's DHCP server (no PXE data) and ringboot's proxyDHCP.
        let mut net = proxy_net();
        // The first boot-server REQUEST (datagram 4: DISCOVER, 2 OFFERs, REQUEST, ACK, ...) is
        // answered but the answer is lost: sent again.
        net.lose = |n| n == 6;
        let mut c = Client::new(cfg(2, ClientArch::EFI_X64, true), net.now);
        net.run(&mut c);
        assert_eq!(
            net.events[0],
            Event::BootServer {
                address: Ipv4Addr::new(10, 0, 0, 100),
                server: SERVER
            }
        );
        let lease = net.leased();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(lease.dhcp_server, Some(OTHER));
        assert_eq!(lease.boot_file, "grubx64.efi");
        assert_eq!(lease.next_server, Some(SERVER));
        let boot = SocketAddr::from((SERVER, BOOT_SERVER_PORT));
        assert_eq!(
            net.log.iter().filter(|(d, _)| *d == boot).count(),
            2,
            "{:?}",
            net.log
        );
        assert_eq!(c.retransmits(), 1);
        // The REQUEST selected the address server's offer (option 54).
        assert_eq!(net.log[1].1, Some(MessageType::Request));
    }

    #[test]
    fn proxy_mode_waits_for_the_proxy_offer_unless_the_offer_has_the_pxe_data() {
        // Only an address server without PXE data: no proxy offer ever comes.
        let mut addr = full_policy();
        addr.boot_file = None;
        let mut net = Net::new(vec![Server::new(addr, OTHER)]);
        let mut c = Client::new(cfg(3, ClientArch::BIOS, true), net.now);
        net.run(&mut c);
        assert_eq!(net.failed(), &ClientError::NoProxyOffer { tries: 4 });
        assert!(net.sent_types().iter().all(|t| *t == MessageType::Discover));
        // An address server that sends the PXE data itself needs no proxy and no port 4011.
        let mut net = Net::new(vec![Server::new(full_policy(), SERVER)]);
        let mut c = Client::new(cfg(3, ClientArch::BIOS, true), net.now);
        net.run(&mut c);
        assert_eq!(net.leased().boot_file, "pxelinux.0");
        assert!(net.log.iter().all(|(d, _)| d.port() == SERVER_PORT));
    }

    #[test]
    fn a_nak_starts_over_from_discover_and_too_many_fail() {
        fn nak(m: &mut Message) {
            if m.opts().msg_type() == Some(MessageType::Ack) {
                m.opts_mut()
                    .insert(DhcpOption::MessageType(MessageType::Nak));
                m.opts_mut()
                    .insert(DhcpOption::Message("address in use".into()));
            }
        }
        // The first REQUEST is NAKed (the server rewrites its ACK), the next one is not.
        let mut net = Net::new(vec![Server::new(full_policy(), SERVER)]);
        net.servers[0].edit = Some(nak);
        let mut c = Client::new(cfg(4, ClientArch::EFI_X64, false), net.now);
        for _ in 0..2 {
            // DISCOVER -> OFFER, REQUEST -> NAK.
            let t = c.poll_transmit(net.now, &mut net.buf).unwrap();
            let reply = net.servers[0].serve(&net.buf[..t.len], t.dest).unwrap();
            c.handle_datagram(net.now, t.dest, &reply);
        }
        assert_eq!(c.naks(), 1, "the REQUEST after the OFFER was NAKed");
        net.servers[0].edit = None;
        net.run(&mut c);
        assert_eq!(net.leased().address, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(c.naks(), 1);
        assert_eq!(
            net.sent_types(),
            [MessageType::Discover, MessageType::Request],
            "after the NAK: DISCOVER again, then REQUEST"
        );
        // A server that always NAKs: MAX_NAKS restarts, then the machine gives up.
        let mut net = Net::new(vec![Server::new(full_policy(), SERVER)]);
        net.servers[0].edit = Some(nak);
        let mut c = Client::new(cfg(5, ClientArch::BIOS, false), net.now);
        net.run(&mut c);
        let e = net.failed();
        assert_eq!(
            e,
            &ClientError::Nak {
                naks: MAX_NAKS + 1,
                message: "address in use".into()
            }
        );
        assert_eq!(e.to_string(), "4 NAKs, the last: address in use");
        assert_eq!(
            net.sent_types()
                .iter()
                .filter(|t| **t == MessageType::Discover)
                .count(),
            MAX_NAKS as usize + 1
        );
        assert_eq!(c.retransmits(), 0, "no timer ever fired");
    }

    #[test]
    fn gives_up_after_the_tries_and_names_why() {
        let mut net = Net::new(vec![]);
        let mut c = Client::new(cfg(6, ClientArch::BIOS, true), net.now);
        let t0 = net.now;
        net.run(&mut c);
        let e = net.failed();
        assert_eq!(e, &ClientError::NoOffer { tries: 4 });
        assert!(e.to_string().contains("4 DISCOVERs"), "{e}");
        assert_eq!(c.retransmits(), 3);
        assert_eq!(net.now, t0 + 4 * SEC);
        assert!(c.is_finished() && c.poll_timeout().is_none());
        assert!(c.poll_transmit(net.now, &mut net.buf).is_none());
        // A boot server that never answers.
        let mut net = proxy_net();
        net.servers[1].ip = Ipv4Addr::new(10, 0, 0, 3); // port 4011 goes nowhere
        net.servers[1].edit = Some(|m| {
            m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        });
        let mut c = Client::new(cfg(7, ClientArch::EFI_X64, true), net.now);
        net.run(&mut c);
        assert_eq!(
            net.failed(),
            &ClientError::NoBootAck {
                server: SERVER,
                tries: 4
            }
        );
    }

    #[test]
    fn only_its_own_replies_count() {
        let t = origin();
        let mut c = Client::new(cfg(8, ClientArch::BIOS, false), t);
        let mut buf = [0u8; wire::MAX_LEN];
        let d = c.poll_transmit(t, &mut buf).unwrap();
        let mut server = Server::new(full_policy(), SERVER);
        let discover = buf[..d.len].to_vec();
        let offer = server.serve(&discover, d.dest).unwrap();
        let from = SocketAddr::from((SERVER, 67));
        // Another xid, another MAC, the request itself, garbage: ignored.
        let mut other_xid = offer.clone();
        other_xid[7] ^= 1;
        let mut other_mac = offer.clone();
        other_mac[33] ^= 1;
        for bad in [
            &other_xid[..],
            &other_mac[..],
            &discover[..],
            &offer[..200],
            &[],
        ] {
            c.handle_datagram(t, from, bad);
            assert!(c.poll_transmit(t, &mut buf).is_none());
        }
        c.handle_datagram(t, from, &offer);
        // A buffer too small loses the datagram (the timer sends it again).
        assert!(c.poll_transmit(t, &mut buf[..100]).is_none());
        assert!(c.poll_transmit(t, &mut buf).is_none());
        c.handle_timeout(t + SEC);
        let r = c.poll_transmit(t + SEC, &mut buf).unwrap();
        let req = wire::parse_request(&buf[..r.len]).unwrap();
        assert_eq!(req.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(c.retransmits(), 1);
    }

    #[test]
    fn ipxe_machines_say_so() {
        let t = origin();
        let mut c = Client::new(
            ClientConfig {
                ipxe: true,
                ..cfg(9, ClientArch::EFI_X64, false)
            },
            t,
        );
        let mut buf = [0u8; wire::MAX_LEN];
        let d = c.poll_transmit(t, &mut buf).unwrap();
        let req = wire::parse_request(&buf[..d.len]).unwrap();
        let info = wire::ClientInfo::of(&req);
        assert!(info.ipxe && info.pxe);
        assert_eq!(info.arch, Some(ClientArch::EFI_X64));
    }
}
