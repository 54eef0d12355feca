//! The `--dhcp` phase: before its TFTP steps each emulated machine gets its address (and in proxy
//! mode its boot file from the port-4011 boot server) the way PXE firmware does.
//!
//! Contract:
//! - [`DhcpClient`] is one machine's exchange as a sans-IO state machine: feed it every BOOTREPLY
//!   that carries its xid and MAC with [`DhcpClient::handle_reply`], call
//!   [`DhcpClient::handle_timeout`] when [`DhcpClient::poll_timeout`] is due, and send what
//!   [`DhcpClient::poll_transmit`] gives. No socket, no clock; [`DhcpClient::outcome`] says how it
//!   ended.
//!   - full: DISCOVER -> the first OFFER with an address -> REQUEST -> ACK.
//!   - proxy: DISCOVER -> an address OFFER (the network's DHCP server) and a proxy OFFER (option
//!     60 `PXEClient`, no address) -> REQUEST -> ACK -> boot-server REQUEST to port 4011 with
//!     sub-option 71 -> ACK with the boot file. An address OFFER that carries the PXE data itself
//!     counts as both and needs no port-4011 exchange.
//!   - DISCOVER, REQUEST and the boot-server REQUEST are resent every `retransmit` (1 s) up to
//!     `tries` (4) sends, like firmware; a NAK starts over from DISCOVER (at most [`MAX_NAKS`]).
//! - Every packet is built, encoded and parsed by [`ringboot::proto::dhcp::wire`]: there is no
//!   second DHCP codec here.
//! - [`DhcpPort`] is the driver's side, one per engine thread: a socket on `0.0.0.0:68`
//!   (`SO_BROADCAST`, `SO_REUSEADDR`, bound to the interface) that every machine of the thread
//!   shares (a machine cannot have its own port 68), demultiplexed by xid and chaddr, and one
//!   socket on an ephemeral port for the unicast port-4011 exchange. With several threads, each
//!   one's port-68 socket sees every broadcast reply and keeps those with its machines' xids.
//! - The lease is recorded, not configured on the interface: the machines' TFTP traffic leaves
//!   from the client network's own address (each machine from its own ports), which is what a
//!   load test needs; the leased addresses are in the report.

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use ringboot::proto::dhcp::wire::{
    as_ipxe, encode, parse_any, pxe_boot_request, pxe_discover, pxe_request, ClientArch,
};
use std::collections::HashMap;
use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// What the DHCP phase talks to (`--dhcp full|proxy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DhcpMode {
    /// A DHCP server that also sends the PXE data (ringboot `--dhcp full`, dnsmasq with PXE).
    Full,
    /// An address server plus a proxyDHCP that answers on 67 and on the port-4011 boot server.
    Proxy,
}

/// NAKs after which a machine gives up (each one starts over from DISCOVER).
pub const MAX_NAKS: u32 = 3;
/// The PXE boot server port (PXE 2.1 section 2.2.5).
pub const BOOT_SERVER_PORT: u16 = 4011;

/// The run's DHCP settings, shared by every machine.
#[derive(Clone, Debug)]
pub struct Setup {
    pub mode: DhcpMode,
    /// The interface the port-68 socket is bound to (`--dhcp-interface`).
    pub interface: String,
    /// Resend interval of DISCOVER and REQUEST.
    pub retransmit: Duration,
    /// Sends of one message before the machine gives up.
    pub tries: u32,
    /// TFTP port (from `--server`, else 69).
    pub tftp_port: u16,
    /// TFTP server when the DHCP answer names none (`--server`'s address).
    pub fallback: Option<Ipv4Addr>,
}

impl Setup {
    /// Where a machine's TFTP steps go: the DHCP answer's server, else the fallback.
    pub fn tftp_server(&self, lease: &Lease) -> Result<SocketAddr, Failure> {
        lease
            .next_server
            .or(self.fallback)
            .filter(|ip| !ip.is_unspecified())
            .map(|ip| SocketAddr::new(IpAddr::V4(ip), self.tftp_port))
            .ok_or(Failure::NoServer)
    }
}

/// One machine's DHCP identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub mac: [u8; 6],
    pub arch: ClientArch,
    /// Sends option 77 `iPXE` like a chainloaded iPXE.
    pub ipxe: bool,
    /// Transaction id, distinct per machine and kept for the whole exchange.
    pub xid: u32,
}

/// The firmware a TFTP profile stands for: option 93 and whether it is iPXE.
pub fn arch_of(profile: crate::plan::ProfileKind) -> (ClientArch, bool) {
    use crate::plan::ProfileKind as P;
    match profile {
        P::Bios => (ClientArch::BIOS, false),
        P::Uefi | P::Custom => (ClientArch::EFI_X64, false),
        P::Ipxe => (ClientArch::EFI_X64, true),
    }
}

/// Distinct xids for machines `0..n` of a run with `seed` (a seeded base plus the index).
pub fn xid(seed: u64, index: usize) -> u32 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) as u32).wrapping_add(index as u32)
}

/// What a machine got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    /// Option 54 of the ACK that gave the address.
    pub dhcp_server: Option<Ipv4Addr>,
    /// The TFTP server named by the answer that gave the boot file (siaddr, else option 66 as an
    /// address, else option 54).
    pub next_server: Option<Ipv4Addr>,
    pub boot_file: Option<String>,
}

/// Why a machine's DHCP phase failed; [`Failure::reason`] is the key in the failure table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    NoOffer { tries: u32 },
    NoProxyOffer { tries: u32 },
    NoAck { tries: u32 },
    NoBootAck { server: Ipv4Addr, tries: u32 },
    Nak(String),
    NoBootFile,
    NoServer,
}

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::NoOffer { .. } => "dhcp-no-offer",
            Failure::NoProxyOffer { .. } => "dhcp-no-proxy-offer",
            Failure::NoAck { .. } => "dhcp-no-ack",
            Failure::NoBootAck { .. } => "dhcp-no-boot-ack",
            Failure::Nak(_) => "dhcp-nak",
            Failure::NoBootFile => "dhcp-no-boot-file",
            Failure::NoServer => "dhcp-no-server",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoOffer { tries } => write!(f, "no OFFER with an address after {tries} DISCOVERs"),
            Failure::NoProxyOffer { tries } => write!(
                f,
                "no proxy OFFER (option 60 PXEClient) after {tries} DISCOVERs: is the proxyDHCP running?"
            ),
            Failure::NoAck { tries } => write!(f, "no ACK after {tries} REQUESTs"),
            Failure::NoBootAck { server, tries } => write!(
                f,
                "no ACK from the boot server {server}:{BOOT_SERVER_PORT} after {tries} REQUESTs"
            ),
            Failure::Nak(m) => write!(f, "{} NAKs, the last: {m}", MAX_NAKS + 1),
            Failure::NoBootFile => f.write_str("the DHCP answers name no boot file (PXE-E53)"),
            Failure::NoServer => f.write_str(
                "the DHCP answer names no TFTP server and --server gives none",
            ),
        }
    }
}

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// `255.255.255.255:67` from port 68.
    Broadcast,
    /// `server:4011` from the boot socket.
    BootServer(Ipv4Addr),
}

/// A datagram to send.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub bytes: Vec<u8>,
    pub dest: Dest,
}

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
        lease: Lease,
        server: Ipv4Addr,
    },
    Done(Lease),
    Failed(Failure),
}

/// One machine's DHCP exchange; see the module contract.
pub struct DhcpClient {
    spec: Spec,
    mode: DhcpMode,
    retransmit: Duration,
    tries: u32,
    state: State,
    /// Sends of the current message.
    sent: u32,
    timer: Option<Instant>,
    pending: Option<Transmit>,
    /// Resent DISCOVERs and REQUESTs.
    pub retransmits: u32,
    pub naks: u32,
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

impl DhcpClient {
    /// Start: the first DISCOVER is ready to send.
    pub fn new(spec: Spec, setup: &Setup, now: Instant) -> DhcpClient {
        let mut c = DhcpClient {
            spec,
            mode: setup.mode,
            retransmit: setup.retransmit,
            tries: setup.tries.max(1),
            state: State::Selecting {
                address: None,
                proxy: None,
            },
            sent: 0,
            timer: None,
            pending: None,
            retransmits: 0,
            naks: 0,
        };
        c.send_current(now);
        c
    }

    fn firmware(&self, m: Message) -> Message {
        if self.spec.ipxe {
            as_ipxe(m)
        } else {
            m
        }
    }

    /// Queue the current state's message and arm the timer.
    fn send_current(&mut self, now: Instant) {
        let Spec { mac, arch, xid, .. } = self.spec;
        let (msg, dest) = match &self.state {
            State::Selecting { .. } => (pxe_discover(mac, arch, xid), Dest::Broadcast),
            State::Requesting { offer, .. } => {
                (pxe_request(offer, mac, arch, xid), Dest::Broadcast)
            }
            State::BootServer { lease, server } => (
                pxe_boot_request(mac, arch, xid, lease.address, Some((0, 0))),
                Dest::BootServer(*server),
            ),
            State::Done(_) | State::Failed(_) => return,
        };
        if self.sent > 0 {
            self.retransmits += 1;
        }
        self.sent += 1;
        self.pending = Some(Transmit {
            bytes: encode(&self.firmware(msg)),
            dest,
        });
        self.timer = Some(now + self.retransmit);
    }

    fn enter(&mut self, state: State, now: Instant) {
        self.state = state;
        self.sent = 0;
        self.timer = None;
        self.pending = None;
        self.send_current(now);
    }

    /// A BOOTREPLY with this machine's xid and MAC.
    pub fn handle_reply(&mut self, msg: &Message, now: Instant) {
        let Some(ty) = msg.opts().msg_type() else {
            return;
        };
        let proxy_mode = self.mode == DhcpMode::Proxy;
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
                let lease = Lease {
                    address: msg.yiaddr(),
                    dhcp_server: server_id(msg),
                    next_server: next_server(msg),
                    boot_file: boot_file(msg),
                };
                match proxy.take() {
                    Some(p) => {
                        let server = server_id(&p).unwrap_or(p.siaddr());
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
                    let text = match msg.opts().get(OptionCode::Message) {
                        Some(DhcpOption::Message(m)) => m.clone(),
                        _ => "(no message)".into(),
                    };
                    self.fail(Failure::Nak(text));
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

    fn finish(&mut self, lease: Lease) {
        self.timer = None;
        self.pending = None;
        self.state = if lease.boot_file.is_some() {
            State::Done(lease)
        } else {
            State::Failed(Failure::NoBootFile)
        };
    }

    fn fail(&mut self, f: Failure) {
        self.timer = None;
        self.pending = None;
        self.state = State::Failed(f);
    }

    /// The retransmission timer fired: resend, or give up after `tries` sends.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timer.is_none_or(|t| t > now) {
            return;
        }
        if self.sent < self.tries {
            return self.send_current(now);
        }
        let tries = self.sent;
        let f = match &self.state {
            State::Selecting { address: None, .. } => Failure::NoOffer { tries },
            State::Selecting { .. } => Failure::NoProxyOffer { tries },
            State::Requesting { .. } => Failure::NoAck { tries },
            State::BootServer { server, .. } => Failure::NoBootAck {
                server: *server,
                tries,
            },
            State::Done(_) | State::Failed(_) => return,
        };
        self.fail(f);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.pending.take()
    }

    /// `None` while running; the lease or why not when done.
    pub fn outcome(&self) -> Option<Result<&Lease, &Failure>> {
        match &self.state {
            State::Done(l) => Some(Ok(l)),
            State::Failed(f) => Some(Err(f)),
            _ => None,
        }
    }
}

/// What one machine's DHCP phase came to (in its result).
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// First DISCOVER to the last ACK (None: it failed).
    pub duration: Option<Duration>,
    pub address: Option<Ipv4Addr>,
    pub tftp_server: Option<Ipv4Addr>,
    pub retransmits: u32,
    pub naks: u32,
}

/// The sockets of one engine thread; see the module contract.
pub struct DhcpPort {
    bcast: UdpSocket,
    boot: UdpSocket,
    /// xid -> (machine slot, MAC).
    machines: HashMap<u32, (usize, [u8; 6])>,
    buf: Vec<u8>,
}

impl DhcpPort {
    /// Bind `0.0.0.0:68` and an ephemeral port on `interface`, both nonblocking.
    pub fn open(interface: &str) -> std::io::Result<DhcpPort> {
        let dev = Some(interface);
        let bcast: UdpSocket = ringboot::dhcp::sys::udp_socket(68, dev)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "binding UDP 0.0.0.0:68 on {interface}: {e} (needs root or CAP_NET_BIND_SERVICE + CAP_NET_RAW, and an existing interface)"
                    ),
                )
            })?
            .into();
        let boot: UdpSocket = ringboot::dhcp::sys::udp_socket(0, dev)?.into();
        Ok(DhcpPort {
            bcast,
            boot,
            machines: HashMap::new(),
            buf: vec![0u8; 2048],
        })
    }

    pub fn fds(&self) -> [RawFd; 2] {
        [self.bcast.as_raw_fd(), self.boot.as_raw_fd()]
    }

    /// Route replies with `spec`'s xid and MAC to machine slot `i`.
    pub fn register(&mut self, spec: &Spec, i: usize) {
        self.machines.insert(spec.xid, (i, spec.mac));
    }

    pub fn send(&self, t: &Transmit) {
        let r = match t.dest {
            Dest::Broadcast => self
                .bcast
                .send_to(&t.bytes, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)),
            Dest::BootServer(ip) => self
                .boot
                .send_to(&t.bytes, SocketAddrV4::new(ip, BOOT_SERVER_PORT)),
        };
        // A lost send is a lost packet: the retransmission timer deals with it.
        let _ = r;
    }

    /// Every datagram waiting on both sockets: the BOOTREPLYs for a registered machine are
    /// handed to `f` with its slot; anything else is dropped.
    pub fn recv(&mut self, mut f: impl FnMut(usize, &Message)) {
        for sock in [&self.bcast, &self.boot] {
            // Bounded: the engine comes back while the socket stays readable.
            for _ in 0..256 {
                let n = match sock.recv_from(&mut self.buf) {
                    Ok((n, _)) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let data = &self.buf[..n];
                let Ok(msg) = parse_any(data) else {
                    continue;
                };
                if data[0] != 2 {
                    continue; // a request (another client's broadcast)
                }
                if let Some(&(i, mac)) = self.machines.get(&msg.xid()) {
                    if msg.chaddr().get(..6) == Some(&mac[..]) {
                        f(i, &msg);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringboot::proto::dhcp::{decide, Context, LeaseState, Policy, ServerPort};
    use std::net::SocketAddrV4;
    use std::time::SystemTime;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn setup(mode: DhcpMode) -> Setup {
        Setup {
            mode,
            interface: "x".into(),
            retransmit: Duration::from_secs(1),
            tries: 4,
            tftp_port: 6969,
            fallback: None,
        }
    }

    fn spec(n: u8, arch: ClientArch) -> Spec {
        Spec {
            mac: [0x52, 0x54, 0, 0, 0, n],
            arch,
            ipxe: false,
            xid: 0x1000 + u32::from(n),
        }
    }

    fn ctx(port: ServerPort, source: SocketAddrV4) -> Context {
        Context {
            server_ip: SERVER,
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            port,
            source,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn full_cfg() -> Policy {
        Policy {
            mode: ringboot::proto::dhcp::DhcpMode::Full,
            boot_file: Some("pxelinux.0".into()),
            range: Some("10.0.0.100,10.0.0.199".parse().unwrap()),
            netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            router: Some(SERVER),
            ..Policy::default()
        }
    }

    /// Deliver `t` to the responder and return the reply's bytes, as a link would.
    fn serve(t: &Transmit, st: &mut LeaseState, cfg: &Policy) -> Option<Message> {
        let req = ringboot::proto::dhcp::wire::parse_request(&t.bytes).unwrap();
        let c = match t.dest {
            Dest::Broadcast => ctx(
                ServerPort::Dhcp,
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
            ),
            Dest::BootServer(_) => ctx(
                ServerPort::BootServer,
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000),
            ),
        };
        let r = decide(&req, &c, st, cfg)?;
        parse_any(&r.encode()).ok()
    }

    #[test]
    fn full_mode_against_the_responder_with_a_lost_offer() {
        let cfg = full_cfg();
        let mut st = LeaseState::new();
        let t0 = Instant::now();
        let mut c = DhcpClient::new(spec(1, ClientArch::BIOS), &setup(DhcpMode::Full), t0);
        // The first OFFER is lost; the DISCOVER is resent after 1 s.
        let d = c.poll_transmit().unwrap();
        assert_eq!(d.dest, Dest::Broadcast);
        assert!(serve(&d, &mut st, &cfg).is_some());
        assert!(c.poll_transmit().is_none());
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        c.handle_timeout(t1);
        let d = c.poll_transmit().unwrap();
        let offer = serve(&d, &mut st, &cfg).unwrap();
        c.handle_reply(&offer, t1);
        let r = c.poll_transmit().unwrap();
        let ack = serve(&r, &mut st, &cfg).unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        c.handle_reply(&ack, t1);
        let lease = c.outcome().unwrap().unwrap().clone();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(lease.boot_file.as_deref(), Some("pxelinux.0"));
        assert_eq!(lease.next_server, Some(SERVER));
        assert_eq!(c.retransmits, 1);
        assert_eq!(
            setup(DhcpMode::Full).tftp_server(&lease).unwrap(),
            "10.0.0.1:6969".parse().unwrap()
        );
    }

    #[test]
    fn proxy_mode_takes_the_address_from_one_and_the_file_from_4011() {
        // The network's DHCP server: full mode without PXE data (a different server id).
        let mut addr_cfg = full_cfg();
        addr_cfg.boot_file = None;
        let proxy_cfg = Policy {
            mode: ringboot::proto::dhcp::DhcpMode::Proxy,
            boot_file: Some("grubx64.efi".into()),
            ..Policy::default()
        };
        let mut st = LeaseState::new();
        let mut none = LeaseState::new();
        let now = Instant::now();
        let mut c = DhcpClient::new(spec(2, ClientArch::EFI_X64), &setup(DhcpMode::Proxy), now);
        let d = c.poll_transmit().unwrap();
        let proxy_offer = serve(&d, &mut none, &proxy_cfg).unwrap();
        let mut addr_offer = serve(&d, &mut st, &addr_cfg).unwrap();
        assert!(!is_pxe(&addr_offer));
        // The address server is another host.
        let dns = Ipv4Addr::new(10, 0, 0, 2);
        addr_offer
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(dns));
        c.handle_reply(&proxy_offer, now);
        assert!(c.poll_transmit().is_none(), "waits for an address offer");
        c.handle_reply(&addr_offer, now);
        let r = c.poll_transmit().unwrap();
        let req = ringboot::proto::dhcp::wire::parse_request(&r.bytes).unwrap();
        assert_eq!(server_id(&req), Some(dns));
        // The address server's ACK (built from its offer).
        let mut ack = addr_offer.clone();
        ack.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        c.handle_reply(&ack, now);
        let b = c.poll_transmit().unwrap();
        assert_eq!(b.dest, Dest::BootServer(SERVER));
        let boot_ack = serve(&b, &mut none, &proxy_cfg).unwrap();
        c.handle_reply(&boot_ack, now);
        let lease = c.outcome().unwrap().unwrap();
        assert_eq!(lease.address, addr_offer.yiaddr());
        assert_eq!(lease.boot_file.as_deref(), Some("grubx64.efi"));
        assert_eq!(lease.next_server, Some(SERVER));
    }

    #[test]
    fn gives_up_after_the_tries_and_names_why() {
        let now = Instant::now();
        let mut c = DhcpClient::new(spec(3, ClientArch::BIOS), &setup(DhcpMode::Proxy), now);
        let mut t = now;
        for _ in 0..4 {
            assert!(c.poll_transmit().is_some());
            t += Duration::from_secs(1);
            c.handle_timeout(t);
        }
        assert!(c.poll_transmit().is_none());
        let f = c.outcome().unwrap().unwrap_err();
        assert_eq!(f.reason(), "dhcp-no-offer");
        assert_eq!(c.retransmits, 3);
        assert!(f.to_string().contains("4 DISCOVERs"), "{f}");
    }

    #[test]
    fn xids_are_distinct_per_machine() {
        let v: std::collections::HashSet<u32> = (0..10_000).map(|i| xid(7, i)).collect();
        assert_eq!(v.len(), 10_000);
        assert_ne!(xid(1, 0), xid(2, 0));
    }
}
