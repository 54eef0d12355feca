//! The DHCP driver: sockets, the lease file and the clock around [`decide`].
//!
//! Contract:
//! - One thread. UDP sockets on `0.0.0.0:67` (always), `0.0.0.0:4011` (proxy mode) and
//!   `0.0.0.0:68` (full mode, to notice other DHCP servers), each with `SO_BROADCAST`,
//!   `IP_PKTINFO` and `SO_BINDTODEVICE` when an interface is configured.
//! - A broadcast reply leaves by the interface the request came in on (`IP_PKTINFO` with
//!   `ipi_ifindex` on `sendmsg`); a unicast reply goes to the address and port the decision names
//!   (for port 4011, the port the request came from).
//! - When the decision changed the lease table, the table is written (temp, fsync, rename, fsync
//!   directory) before the reply is sent; if that fails the reply is not sent.
//! - Bad datagrams and floods are dropped and counted; a summary is logged at most every 10 s.
//! - Full mode probes for other DHCP servers at start and every 10 minutes and warns about any
//!   BOOTREPLY from a server id that is not ours.
//! - The thread ends within half a second of `shutdown` being set.

use super::config::{same_subnet, DhcpConfig, DhcpMode};
use super::decide::{decide, mac_str, Context, Destination, ServerPort};
use super::leases::{LeaseState, LeaseStore};
use super::sys::{self, IfAddr, RecvInfo};
use super::wire::{self, Malformed};
use anyhow::Context as _;
use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use socket2::Socket;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How often full mode looks for another DHCP server.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(600);
/// Requests accepted per second from one hardware address before the rest are dropped.
pub const PER_CLIENT_RATE: u32 = 20;
/// Requests accepted per second in all.
pub const TOTAL_RATE: u32 = 2000;

/// Start the responder on its own thread. `Off` returns a thread that ends at once. Errors name
/// what to fix: a port in use, missing privileges, an interface without address, a bad config,
/// an unreadable lease file.
pub fn spawn(cfg: DhcpConfig, shutdown: Arc<AtomicBool>) -> anyhow::Result<JoinHandle<()>> {
    let mut cfg = cfg;
    if cfg.mode == DhcpMode::Off {
        return Ok(std::thread::spawn(|| {}));
    }
    cfg.resolve_interface()?;
    cfg.validate()?;
    let dev = cfg.interface.as_deref();
    let s67 = sys::udp_socket(67, dev).with_context(|| {
        format!(
            "binding UDP 0.0.0.0:67{} for DHCP: needs root or CAP_NET_BIND_SERVICE (and SO_BINDTODEVICE needs CAP_NET_RAW); in full mode no other DHCP server may run on this host",
            dev.map(|d| format!(" on {d}")).unwrap_or_default()
        )
    })?;
    let s4011 = if cfg.mode == DhcpMode::Proxy {
        Some(sys::udp_socket(4011, dev).context(
            "binding UDP 0.0.0.0:4011 for the PXE boot server: is another PXE server running here?",
        )?)
    } else {
        None
    };
    let s68 = if cfg.mode == DhcpMode::Full && cfg.detect_other_servers {
        match sys::udp_socket(68, dev) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot listen on UDP port 68 to watch for other DHCP servers ({e}); going on without");
                None
            }
        }
    } else {
        None
    };
    let (store, state) = if cfg.mode == DhcpMode::Full {
        let store = LeaseStore::new(cfg.lease_path());
        let state = store.load()?;
        tracing::info!(file = %store.path().display(), leases = state.len(), "DHCP leases loaded");
        (Some(store), state)
    } else {
        (None, LeaseState::new())
    };
    tracing::info!(
        mode = %cfg.mode,
        interface = dev.unwrap_or("*"),
        boot_file = cfg.boot_file.as_deref().unwrap_or("-"),
        "DHCP responder listening on UDP 67{}",
        if s4011.is_some() { " and 4011" } else { "" }
    );
    let mut driver = Driver {
        cfg,
        s67,
        s4011,
        s68,
        store,
        state,
        ifs: sys::interfaces().unwrap_or_default(),
        ifs_at: Instant::now(),
        drops: Drops::default(),
        limiter: Limiter::new(),
        probe_xid: None,
        next_probe: Instant::now(),
        warned: HashMap::new(),
    };
    let handle = std::thread::Builder::new()
        .name("dhcp".into())
        .spawn(move || driver.run(&shutdown))
        .context("starting the DHCP thread")?;
    Ok(handle)
}

/// Dropped datagrams by reason, logged as one line at most every 10 s.
#[derive(Default)]
struct Drops {
    counts: HashMap<&'static str, u64>,
    total: u64,
    last_log: Option<Instant>,
}

impl Drops {
    fn count(&mut self, why: &'static str) {
        *self.counts.entry(why).or_default() += 1;
        self.total += 1;
    }
    fn maybe_log(&mut self, now: Instant) {
        if self.counts.is_empty()
            || self
                .last_log
                .is_some_and(|t| now - t < Duration::from_secs(10))
        {
            return;
        }
        let mut parts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.sort();
        tracing::warn!(
            total = self.total,
            "dropped DHCP datagrams: {}",
            parts.join(" ")
        );
        self.counts.clear();
        self.last_log = Some(now);
    }
}

fn malformed_name(m: Malformed) -> &'static str {
    match m {
        Malformed::Truncated => "truncated",
        Malformed::TooLong => "too_long",
        Malformed::NotRequest => "not_bootrequest",
        Malformed::BadHlen => "bad_hlen",
        Malformed::BadCookie => "bad_cookie",
        Malformed::OptionOverflow => "option_overflow",
        Malformed::BadOptionLength(_) => "bad_option_length",
        Malformed::NoMessageType => "no_message_type",
        Malformed::Decode => "undecodable",
    }
}

/// Per-client and total request rates, in one-second windows.
struct Limiter {
    window: Instant,
    total: u32,
    per_client: HashMap<Vec<u8>, u32>,
}

impl Limiter {
    fn new() -> Limiter {
        Limiter {
            window: Instant::now(),
            total: 0,
            per_client: HashMap::new(),
        }
    }
    fn admit(&mut self, now: Instant, chaddr: &[u8]) -> Result<(), &'static str> {
        if now - self.window >= Duration::from_secs(1) {
            self.window = now;
            self.total = 0;
            self.per_client.clear();
        }
        self.total += 1;
        if self.total > TOTAL_RATE {
            return Err("flood_total");
        }
        if self.per_client.len() >= 4096 && !self.per_client.contains_key(chaddr) {
            return Err("flood_clients");
        }
        let n = self.per_client.entry(chaddr.to_vec()).or_default();
        *n += 1;
        if *n > PER_CLIENT_RATE {
            return Err("flood_client");
        }
        Ok(())
    }
}

struct Driver {
    cfg: DhcpConfig,
    s67: Socket,
    s4011: Option<Socket>,
    s68: Option<Socket>,
    store: Option<LeaseStore>,
    state: LeaseState,
    ifs: Vec<IfAddr>,
    ifs_at: Instant,
    drops: Drops,
    limiter: Limiter,
    probe_xid: Option<(u32, Instant)>,
    next_probe: Instant,
    warned: HashMap<Ipv4Addr, Instant>,
}

#[derive(Clone, Copy)]
enum Which {
    S67,
    S4011,
    S68,
}

impl Driver {
    fn run(&mut self, shutdown: &AtomicBool) {
        let mut buf = vec![0u8; 2048];
        while !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if self.s68.is_some() && now >= self.next_probe {
                self.probe();
                self.next_probe = now + PROBE_INTERVAL;
            }
            self.drops.maybe_log(now);
            let mut socks: Vec<(&Socket, Which)> = vec![(&self.s67, Which::S67)];
            if let Some(s) = &self.s4011 {
                socks.push((s, Which::S4011));
            }
            if let Some(s) = &self.s68 {
                socks.push((s, Which::S68));
            }
            let refs: Vec<&Socket> = socks.iter().map(|(s, _)| *s).collect();
            let ready = match sys::poll_readable(&refs, 250) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("DHCP poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            };
            let which: Vec<Which> = socks
                .iter()
                .zip(ready)
                .filter(|(_, r)| *r)
                .map(|((_, w), _)| *w)
                .collect();
            for w in which {
                // Drain a bounded batch so one socket cannot starve the others.
                for _ in 0..64 {
                    let sock = match w {
                        Which::S67 => &self.s67,
                        Which::S4011 => self.s4011.as_ref().unwrap_or(&self.s67),
                        Which::S68 => self.s68.as_ref().unwrap_or(&self.s67),
                    };
                    match sys::recv(sock, &mut buf) {
                        Ok(info) => {
                            let len = info.len.min(buf.len());
                            if info.len > buf.len() {
                                self.drops.count("too_long");
                                continue;
                            }
                            let data = buf[..len].to_vec();
                            match w {
                                Which::S68 => self.observe(&data, &info),
                                Which::S67 => self.handle(&data, &info, ServerPort::Dhcp),
                                Which::S4011 => self.handle(&data, &info, ServerPort::BootServer),
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::debug!("DHCP recv: {e}");
                            break;
                        }
                    }
                }
            }
        }
        tracing::info!("DHCP responder stopped");
    }

    fn iface(&mut self, ifindex: u32) -> Option<IfAddr> {
        let find = |ifs: &[IfAddr]| ifs.iter().find(|i| i.index == ifindex).cloned();
        if let Some(i) = find(&self.ifs) {
            return Some(i);
        }
        if self.ifs_at.elapsed() > Duration::from_secs(2) {
            self.ifs = sys::interfaces().unwrap_or_default();
            self.ifs_at = Instant::now();
        }
        find(&self.ifs)
    }

    fn handle(&mut self, data: &[u8], info: &RecvInfo, port: ServerPort) {
        let req = match wire::parse_request(data) {
            Ok(r) => r,
            Err(Malformed::NotRequest) if data.first() == Some(&2) => {
                // Another server's reply, relayed or looped back to port 67.
                self.observe(data, info);
                return;
            }
            Err(m) => {
                self.drops.count(malformed_name(m));
                return;
            }
        };
        if let Some((xid, _)) = self.probe_xid {
            if req.xid() == xid {
                return; // our own probe
            }
        }
        if let Err(why) = self.limiter.admit(Instant::now(), req.chaddr()) {
            self.drops.count(why);
            return;
        }
        let iface = self.iface(info.ifindex);
        let server_ip = self
            .cfg
            .server_ip
            .or(iface.as_ref().map(|i| i.addr))
            .unwrap_or(info.local);
        if server_ip.is_unspecified() {
            self.drops.count("no_local_address");
            return;
        }
        let netmask = self
            .cfg
            .netmask
            .or(iface.as_ref().map(|i| i.netmask))
            .unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
        let ctx = Context {
            server_ip,
            netmask,
            port,
            source: info.source,
            now: SystemTime::now(),
        };
        let ty = req.opts().msg_type();
        let Some(reply) = decide(&req, &ctx, &mut self.state, &self.cfg) else {
            tracing::trace!(client = %mac_str(req.chaddr()), ?ty, "DHCP request not answered");
            // A DECLINE or RELEASE changes the table without a reply.
            self.persist();
            return;
        };
        if !self.persist() {
            return;
        }
        let bytes = reply.encode();
        let (dest, ifindex) = match reply.dest {
            Destination::Broadcast => (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), info.ifindex),
            Destination::Unicast(ip, p) => (SocketAddrV4::new(ip, p), 0),
        };
        let sock = match port {
            ServerPort::Dhcp => &self.s67,
            ServerPort::BootServer => self.s4011.as_ref().unwrap_or(&self.s67),
        };
        let file = reply
            .message
            .fname()
            .map(|f| String::from_utf8_lossy(f).trim_end_matches('\0').to_owned())
            .unwrap_or_default();
        match sys::send(sock, &bytes, dest, ifindex, server_ip) {
            Ok(_) => tracing::debug!(
                client = %mac_str(req.chaddr()),
                request = ?ty,
                reply = ?reply.message.opts().msg_type(),
                yiaddr = %reply.message.yiaddr(),
                file = %file,
                to = %dest,
                "DHCP reply sent"
            ),
            Err(e) => tracing::warn!(to = %dest, "sending DHCP reply failed: {e}"),
        }
    }

    /// Write the lease table if it changed; false (and nothing may be sent) if that failed.
    fn persist(&mut self) -> bool {
        if !self.state.take_dirty() {
            return true;
        }
        let Some(store) = &self.store else {
            return true;
        };
        match store.save(&self.state) {
            Ok(()) => true,
            Err(e) => {
                self.state.mark_dirty();
                tracing::error!("not answering: {e}");
                false
            }
        }
    }

    /// A BOOTREPLY seen on 67 or 68: warn if another server answers on our segment.
    fn observe(&mut self, data: &[u8], info: &RecvInfo) {
        let Ok(msg) = wire::parse_any(data) else {
            return;
        };
        if data[0] != 2 {
            return;
        }
        let sid = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => *info.source.ip(),
        };
        let ours = self.cfg.server_ip == Some(sid) || self.ifs.iter().any(|i| i.addr == sid);
        if ours || sid.is_unspecified() {
            return;
        }
        // proxyDHCP offers (no address) do not compete with us.
        if msg.yiaddr().is_unspecified() && msg.opts().msg_type() != Some(MessageType::Nak) {
            return;
        }
        let now = Instant::now();
        if self
            .warned
            .get(&sid)
            .is_some_and(|t| now - *t < PROBE_INTERVAL)
        {
            return;
        }
        self.warned.insert(sid, now);
        let iface = self
            .iface(info.ifindex)
            .map(|i| i.name)
            .unwrap_or_else(|| "?".into());
        tracing::warn!(
            other_server = %sid,
            interface = %iface,
            offered = %msg.yiaddr(),
            "another DHCP server answers on this segment: two servers handing out addresses will break clients. Stop it, or run ringboot with --dhcp proxy beside it"
        );
    }

    /// Broadcast a plain DISCOVER from port 68 on the served interface(s).
    fn probe(&mut self) {
        let Some(s68) = &self.s68 else {
            return;
        };
        let xid = rand_xid();
        let mut mac = [0x02, 0x72, 0x62, 0, 0, 0];
        mac[3..].copy_from_slice(&xid.to_be_bytes()[1..]);
        let mut m = dhcproto::v4::Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.set_flags(dhcproto::v4::Flags::default().set_broadcast());
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        let bytes = wire::encode(&m);
        self.probe_xid = Some((xid, Instant::now()));
        let targets: Vec<IfAddr> = self
            .ifs
            .iter()
            .filter(|i| match (&self.cfg.interface, self.cfg.range) {
                (Some(name), _) => &i.name == name,
                (None, Some(r)) => same_subnet(i.addr, r.start, i.netmask),
                (None, None) => false,
            })
            .cloned()
            .collect();
        for i in targets {
            let dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
            if let Err(e) = sys::send(s68, &bytes, dest, i.index, i.addr) {
                tracing::debug!(interface = %i.name, "DHCP probe not sent: {e}");
            } else {
                tracing::debug!(interface = %i.name, "probing for other DHCP servers");
            }
        }
    }
}

fn rand_xid() -> u32 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
    t ^ std::process::id().rotate_left(16)
}
