//! The `--dhcp` phase: before its TFTP steps each emulated machine gets its address (and in proxy
//! mode its boot file from the port-4011 boot server) the way PXE firmware does.
//!
//! Contract:
//! - Each machine's exchange is the core's client machine,
//!   [`ringboot::proto::dhcp::client::Client`] (DISCOVER/OFFER/REQUEST/ACK, proxyDHCP and the
//!   port-4011 boot server, retransmission, NAK restarts). This module is only its driver glue:
//!   [`DhcpClient`] builds the machine from the run's [`Setup`] and a machine's [`Spec`] and keeps
//!   its outcome; there is no second DHCP client or codec here.
//! - [`DhcpPort`] is the driver's side, one per engine thread: a socket on `0.0.0.0:68`
//!   (`SO_BROADCAST`, `SO_REUSEADDR`, bound to the interface) that every machine of the thread
//!   shares (a machine cannot have its own port 68), demultiplexed by xid and chaddr, and one
//!   socket on an ephemeral port for the unicast port-4011 exchange. With several threads, each
//!   one's port-68 socket sees every broadcast reply and keeps those with its machines' xids.
//! - The lease is recorded, not configured on the interface: the machines' TFTP traffic leaves
//!   from the client network's own address (each machine from its own ports), which is what a
//!   load test needs; the leased addresses are in the report.

use ringboot::proto::dhcp::client::{
    BootLease, Client, ClientConfig, ClientError, Event, BOOT_SERVER_PORT,
};
use ringboot::proto::dhcp::wire::{self, ClientArch};
use std::collections::HashMap;
use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
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
    pub fn tftp_server(&self, lease: &BootLease) -> Result<SocketAddr, Failure> {
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

/// Why a machine's DHCP phase failed; [`Failure::reason`] is the key in the failure table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The exchange itself gave up.
    Dhcp(ClientError),
    /// The answers name no TFTP server and `--server` gives none.
    NoServer,
}

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Dhcp(ClientError::NoOffer { .. }) => "dhcp-no-offer",
            Failure::Dhcp(ClientError::NoProxyOffer { .. }) => "dhcp-no-proxy-offer",
            Failure::Dhcp(ClientError::NoAck { .. }) => "dhcp-no-ack",
            Failure::Dhcp(ClientError::NoBootAck { .. }) => "dhcp-no-boot-ack",
            Failure::Dhcp(ClientError::Nak { .. }) => "dhcp-nak",
            Failure::Dhcp(ClientError::NoBootFile) => "dhcp-no-boot-file",
            Failure::NoServer => "dhcp-no-server",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Dhcp(e) => e.fmt(f),
            Failure::NoServer => {
                f.write_str("the DHCP answer names no TFTP server and --server gives none")
            }
        }
    }
}

/// One machine's exchange: the core's client machine and how it ended.
pub struct DhcpClient {
    machine: Client,
    outcome: Option<Result<BootLease, Failure>>,
}

impl DhcpClient {
    /// Start: the first DISCOVER is ready to send.
    pub fn new(spec: Spec, setup: &Setup, now: Instant) -> DhcpClient {
        let cfg = ClientConfig {
            mac: spec.mac,
            arch: spec.arch,
            ipxe: spec.ipxe,
            xid: spec.xid,
            proxy_dhcp: setup.mode == DhcpMode::Proxy,
            retransmit: setup.retransmit,
            tries: setup.tries,
        };
        DhcpClient {
            machine: Client::new(cfg, now),
            outcome: None,
        }
    }

    fn take_events(&mut self) {
        while let Some(e) = self.machine.poll_event() {
            match e {
                Event::Leased(l) => self.outcome = Some(Ok(l)),
                Event::Failed(f) => self.outcome = Some(Err(Failure::Dhcp(f))),
                Event::BootServer { .. } => {}
            }
        }
    }

    /// A datagram for this machine (see [`DhcpPort::recv`]).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.machine.handle_datagram(now, from, datagram);
        self.take_events();
    }

    /// The retransmission timer fired.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.machine.handle_timeout(now);
        self.take_events();
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    /// `None` while running; the lease or why not when done.
    pub fn outcome(&self) -> Option<Result<&BootLease, &Failure>> {
        self.outcome.as_ref().map(Result::as_ref)
    }

    /// Resent DISCOVERs and REQUESTs.
    pub fn retransmits(&self) -> u32 {
        self.machine.retransmits()
    }

    pub fn naks(&self) -> u32 {
        self.machine.naks()
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
        let bcast: UdpSocket = ringboot::sys::socket::dhcp_socket(68, dev)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "binding UDP 0.0.0.0:68 on {interface}: {e} (needs root or CAP_NET_BIND_SERVICE + CAP_NET_RAW, and an existing interface)"
                    ),
                )
            })?
            .into();
        let boot: UdpSocket = ringboot::sys::socket::dhcp_socket(0, dev)?.into();
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

    /// Send everything machine `c` has to send: broadcasts to port 67 from port 68, the
    /// boot-server REQUEST from the ephemeral socket.
    pub fn flush(&mut self, c: &mut DhcpClient, now: Instant) {
        while let Some(t) = c.machine.poll_transmit(now, &mut self.buf) {
            let sock = if t.dest.port() == BOOT_SERVER_PORT {
                &self.boot
            } else {
                &self.bcast
            };
            // A lost send is a lost packet: the retransmission timer deals with it.
            let _ = sock.send_to(&self.buf[..t.len], t.dest);
        }
    }

    /// Every datagram waiting on both sockets: the BOOTREPLYs for a registered machine (xid and
    /// MAC read from the fixed header) are handed to `f` with its slot and their source;
    /// anything else is dropped.
    pub fn recv(&mut self, mut f: impl FnMut(usize, SocketAddr, &[u8])) {
        let DhcpPort {
            bcast,
            boot,
            machines,
            buf,
        } = self;
        for sock in [&*bcast, &*boot] {
            // Bounded: the engine comes back while the socket stays readable.
            for _ in 0..256 {
                let (n, from) = match sock.recv_from(buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let data = &buf[..n];
                // A request (another client's broadcast) or too short for a header: not ours.
                if n < wire::HEADER_LEN || data[0] != 2 {
                    continue;
                }
                let xid = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                if let Some(&(i, mac)) = machines.get(&xid) {
                    if data[28..34] == mac {
                        f(i, from, data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_outcome_names_why_and_the_tftp_server() {
        // The exchange itself is tested in ringboot::proto::dhcp::client; here the glue.
        let t0 = ringboot::sim_origin();
        let mut c = DhcpClient::new(spec(3, ClientArch::BIOS), &setup(DhcpMode::Proxy), t0);
        let mut t = t0;
        while let Some(due) = c.poll_timeout() {
            t = t.max(due);
            c.handle_timeout(t);
        }
        let f = c.outcome().unwrap().unwrap_err();
        assert_eq!(f.reason(), "dhcp-no-offer");
        assert_eq!(c.retransmits(), 3);
        assert!(f.to_string().contains("4 DISCOVERs"), "{f}");
        let lease = BootLease {
            address: Ipv4Addr::new(10, 0, 0, 100),
            dhcp_server: Some(Ipv4Addr::new(10, 0, 0, 1)),
            next_server: Some(Ipv4Addr::new(10, 0, 0, 1)),
            boot_file: "pxelinux.0".into(),
        };
        assert_eq!(
            setup(DhcpMode::Full).tftp_server(&lease).unwrap(),
            "10.0.0.1:6969".parse().unwrap()
        );
        let none = BootLease {
            next_server: None,
            ..lease
        };
        let f = setup(DhcpMode::Full).tftp_server(&none).unwrap_err();
        assert_eq!(f.reason(), "dhcp-no-server");
    }

    #[test]
    fn xids_are_distinct_per_machine() {
        let v: std::collections::HashSet<u32> = (0..10_000).map(|i| xid(7, i)).collect();
        assert_eq!(v.len(), 10_000);
        assert_ne!(xid(1, 0), xid(2, 0));
    }
}
