//! The DHCP driver: sockets, the lease file and the clock around [`decide_noted`]. The layers
//! below it: the wire format, decision, lease table and admission in [`crate::proto::dhcp`], the
//! lease file in [`crate::store::dhcp`], the `[dhcp]` section in [`crate::config::dhcp`]; none
//! of them imports this module. [`crate::dhcp`] re-exports its public face.
//!
//! Contract:
//! - A [`Service`] of the control engine (`ringboot-ctl`, [`crate::engine::ctl`]): it never
//!   waits itself; the engine calls it when a socket is readable and every 250 ms. UDP sockets
//!   on `0.0.0.0:67` (always), `0.0.0.0:4011` (proxy mode) and
//!   `0.0.0.0:68` (full mode, to notice other DHCP servers), each with `SO_BROADCAST`,
//!   `IP_PKTINFO` and `SO_BINDTODEVICE` when an interface is configured.
//! - A broadcast reply leaves by the interface the request came in on (`IP_PKTINFO` with
//!   `ipi_ifindex` on `sendmsg`); a unicast reply goes to the address and port the decision names
//!   (for port 4011, the port the request came from).
//! - Every parsed request passes [`Admission`] first (per-client and per-segment token buckets,
//!   bounded tables; `client_rate` and `segment_rate` in `[dhcp]`).
//! - Group commit: each turn drains up to [`BATCH`] datagrams per socket. A reply that confirms
//!   a lease whose record is not yet on disk (a bind or an extended renewal) waits; every other
//!   reply (offers, NAKs, proxy replies, INFORM, a cached renewal of a saved lease) leaves at once.
//!   At the end of the turn (or when [`MAX_PENDING`] replies wait) the table is saved once, with
//!   one file fsync and one directory fsync, and then the waiting ACKs leave. If the save fails
//!   (a full disk, no descriptor left) they are dropped, the client retries, the failure is
//!   logged at most once a second and the save is tried again next turn; everything that needs no
//!   save keeps being answered. A crash therefore never leaves an ACKed lease off the disk.
//! - Logs (target `ringboot::dhcp`, as the decision's): every line a peer can cause once per
//!   datagram goes through a [`LogLimit`](crate::proto::ratelog::LogLimit): dropped datagrams (one summary every 10 s with a
//!   count per reason), a full pool, the iPXE loop, DECLINEs, replies from other DHCP servers,
//!   failed saves and sends. DEBUG shows every reply (a diagnostic switch, not rate-limited).
//! - Full mode probes for other DHCP servers at start and every 10 minutes and warns about any
//!   BOOTREPLY from a server id that is not ours; the server ids already reported are kept in a
//!   table of [`OTHER_SERVERS`] entries (the oldest goes first), so forged replies from random
//!   ids cost a bounded table and a rate-limited line.
//! - Nothing is allocated per datagram beyond dhcproto's decode and the encoded reply: the
//!   receive buffer and the queue of waiting replies are reused.
//! - When its engine stops, a last save ([`Service::shutdown`]). It never ends silently: the
//!   engine names it in the failure that stops the process, and a panic is logged at ERROR and
//!   carried on to the thread's watcher.

use crate::config::dhcp::{ConfigError, DhcpConfig};
use crate::engine::ctl::{self, Ctl, CtlService};
use crate::engine::{Flow, Io, Service};
use crate::proto::dhcp::decide::{
    client_key, decide_noted, mac_str, Context, Destination, Note, ServerPort,
};
use crate::proto::dhcp::leases::LeaseState;
use crate::proto::dhcp::limit::{Admission, Refused};
use crate::proto::dhcp::policy::{same_subnet, DhcpMode, Policy};
use crate::proto::dhcp::wire::{self, Malformed};
use crate::proto::ratelog::LogLimit;
use crate::store::dhcp::{LeaseFileError, LeaseStore};
pub use observe::{Hooks, PolicySlot};

mod observe;
use crate::sys::{self, iface::IfAddr, socket::RecvInfo};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use socket2::Socket;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

/// The target of the responder's log lines (`RUST_LOG=ringboot::dhcp=debug`), the same as
/// the decision's, wherever the code lives.
const LOG_TARGET: &str = "ringboot::dhcp";

/// How often full mode looks for another DHCP server.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(600);
/// Requests accepted per second from one hardware address by default.
pub const PER_CLIENT_RATE: u32 = crate::proto::dhcp::limit::DEFAULT_CLIENT_RATE;
/// Datagrams read from one socket per turn.
pub const BATCH: usize = 64;
/// Lease-confirming replies that may wait for one save.
pub const MAX_PENDING: usize = 64;
/// Other servers' ids remembered (so each is reported once per [`PROBE_INTERVAL`]).
pub const OTHER_SERVERS: usize = 16;
/// The drop summary's interval.
pub const DROP_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Run the responder alone on a control engine (for an embedder without the binary, and the
/// tests); [`Ctl::join`] stops it after a last save.
pub fn spawn(cfg: DhcpConfig) -> Result<Ctl, SpawnError> {
    let responder = bind(cfg)?;
    ctl::spawn(vec![CtlService::Dhcp(Box::new(responder))], |_| {
        Flow::Continue
    })
    .map_err(SpawnError::Engine)
}

/// Bind the responder's sockets and load its leases: a [`Responder`] for an engine to host
/// (`ringboot-ctl`, see [`crate::engine::ctl`]). `Off` is the caller's to skip. Errors name what
/// to fix: a port in use, missing privileges, an interface without address, a bad config, an
/// unreadable lease file.
pub fn bind(cfg: DhcpConfig) -> Result<Responder, SpawnError> {
    bind_with(cfg, Hooks::default())
}

/// [`bind`], reporting to `hooks` (metrics, status page, reload: see [`observe`]).
pub fn bind_with(cfg: DhcpConfig, hooks: Hooks) -> Result<Responder, SpawnError> {
    let mut cfg = cfg;
    let ifs = if cfg.needs_addresses() {
        sys::iface::interfaces().map_err(|e| {
            SpawnError::Interface(format!("listing network interfaces (getifaddrs): {e}"))
        })?
    } else {
        Vec::new()
    };
    cfg.resolve_addresses(&ifs)?;
    let policy = Policy::from(&cfg);
    let dev = cfg.interface.as_deref();
    let s67 = sys::socket::dhcp_socket(67, dev).map_err(|source| SpawnError::Port67 {
        on: dev.map(|d| format!(" on {d}")).unwrap_or_default(),
        source,
    })?;
    let s4011 = if cfg.mode == DhcpMode::Proxy {
        Some(sys::socket::dhcp_socket(4011, dev).map_err(SpawnError::Port4011)?)
    } else {
        None
    };
    let s68 = if cfg.mode == DhcpMode::Full && cfg.detect_other_servers {
        match sys::socket::dhcp_socket(68, dev) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(target: LOG_TARGET, "cannot listen on UDP port 68 to watch for other DHCP servers ({e}); going on without");
                None
            }
        }
    } else {
        None
    };
    let (store, state) = if cfg.mode == DhcpMode::Full {
        let mut store = LeaseStore::new(cfg.lease_path());
        let state = store.load()?;
        tracing::info!(target: LOG_TARGET, file = %store.path().display(), leases = state.len(), "DHCP leases loaded");
        (Some(store), state)
    } else {
        (None, LeaseState::new())
    };
    tracing::info!(target: LOG_TARGET,
        mode = %cfg.mode,
        interface = dev.unwrap_or("*"),
        boot_file = cfg.boot_file.as_deref().unwrap_or("-"),
        "DHCP responder listening on UDP 67{}",
        if s4011.is_some() { " and 4011" } else { "" }
    );
    let now = Instant::now();
    Ok(Responder {
        admission: Admission::new(cfg.client_rate, cfg.segment_rate, now),
        policy,
        cfg,
        s67,
        s4011,
        s68,
        store,
        state,
        ifs: sys::iface::interfaces().unwrap_or_default(),
        ifs_at: now,
        drops: Drops::new(),
        logs: Logs::new(),
        pending: Vec::with_capacity(MAX_PENDING),
        save_failing: false,
        probe_xid: None,
        next_probe: now,
        others: OtherServers::default(),
        observer: observe::Observer::new(hooks),
        buf: vec![0u8; 2048].into_boxed_slice(),
    })
}

/// Why the responder did not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The interfaces could not be listed (see `DhcpConfig::resolve_addresses`).
    #[error("{0}")]
    Interface(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("binding UDP 0.0.0.0:67{on} for DHCP: needs root or CAP_NET_BIND_SERVICE (and SO_BINDTODEVICE needs CAP_NET_RAW); in full mode no other DHCP server may run on this host")]
    Port67 {
        /// ` on IFACE` when an interface is configured.
        on: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "binding UDP 0.0.0.0:4011 for the PXE boot server: is another PXE server running here?"
    )]
    Port4011(#[source] io::Error),
    #[error(transparent)]
    Leases(#[from] LeaseFileError),
    #[error("starting the DHCP responder's engine")]
    Engine(#[source] io::Error),
}

/// Why a datagram (or a reply) was dropped: one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drop {
    Malformed(Malformed),
    TooLong,
    Refused(Refused),
    NoLocalAddress,
    /// An ACK not sent because its lease could not be saved.
    AckNotSaved,
}

const DROP_NAMES: [&str; 15] = [
    "truncated",
    "too_long",
    "not_bootrequest",
    "bad_hlen",
    "bad_cookie",
    "option_overflow",
    "bad_option_length",
    "no_message_type",
    "undecodable",
    "flood_client",
    "flood_segment",
    "flood_unknown_relays",
    "no_local_address",
    "ack_not_saved",
    "oversized",
];

impl Drop {
    fn index(self) -> usize {
        match self {
            Drop::Malformed(m) => match m {
                Malformed::Truncated => 0,
                Malformed::TooLong => 1,
                Malformed::NotRequest => 2,
                Malformed::BadHlen => 3,
                Malformed::BadCookie => 4,
                Malformed::OptionOverflow => 5,
                Malformed::BadOptionLength(_) => 6,
                Malformed::NoMessageType => 7,
                Malformed::Decode => 8,
            },
            Drop::Refused(Refused::Client) => 9,
            Drop::Refused(Refused::Segment) => 10,
            Drop::Refused(Refused::UnknownRelays) => 11,
            Drop::NoLocalAddress => 12,
            Drop::AckNotSaved => 13,
            Drop::TooLong => 14,
        }
    }
}

/// Dropped datagrams by reason: one summary line at most every [`DROP_SUMMARY_INTERVAL`].
struct Drops {
    counts: [u64; DROP_NAMES.len()],
    total: u64,
    limit: LogLimit,
}

impl Drops {
    fn new() -> Drops {
        Drops {
            counts: [0; DROP_NAMES.len()],
            total: 0,
            limit: LogLimit::new(DROP_SUMMARY_INTERVAL),
        }
    }

    fn count(&mut self, why: Drop, now: Instant) {
        self.counts[why.index()] += 1;
        self.total += 1;
        if self.limit.allow(now).is_some() {
            self.log();
        }
    }

    fn tick(&mut self, now: Instant) {
        if self.limit.flush(now).is_some() {
            self.log();
        }
    }

    fn log(&mut self) {
        let parts: Vec<String> = DROP_NAMES
            .iter()
            .zip(&self.counts)
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        tracing::warn!(target: LOG_TARGET,
            total = self.total,
            "dropped DHCP datagrams: {}",
            parts.join(" ")
        );
        self.counts = [0; DROP_NAMES.len()];
    }
}

/// The kinds of rate-limited lines (one [`LogLimit`] each).
#[derive(Clone, Copy)]
enum Kind {
    PoolFull,
    IpxeLoop,
    Declined,
    ForeignDecline,
    OtherServer,
    SaveFailed,
    SendFailed,
    RecvFailed,
}

const KINDS: usize = 8;

/// What a kind's summary line says after its count.
const KIND_SUMMARY: [&str; KINDS] = [
    "more DISCOVERs found the DHCP pool full",
    "more iPXE requests were not answered (boot loop)",
    "more DHCPDECLINEs took addresses out of the pool",
    "more DHCPDECLINEs from clients that hold no such address were ignored",
    "more replies from other DHCP servers were seen",
    "more lease-file saves failed",
    "more DHCP replies could not be sent",
    "more DHCP receive errors",
];

struct Logs([LogLimit; KINDS]);

impl Logs {
    fn new() -> Logs {
        Logs(std::array::from_fn(|_| LogLimit::default()))
    }

    /// `Some(suppressed)` when a line of `kind` may be logged now.
    fn allow(&mut self, kind: Kind, now: Instant) -> Option<u64> {
        self.0[kind as usize].allow(now)
    }

    fn tick(&mut self, now: Instant) {
        for (l, what) in self.0.iter_mut().zip(KIND_SUMMARY) {
            if let Some(n) = l.flush(now) {
                tracing::warn!(target: LOG_TARGET, "{n} {what} in the last interval");
            }
        }
    }
}

/// Server ids of other DHCP servers already reported, bounded (see the module contract).
#[derive(Default)]
struct OtherServers {
    seen: [Option<(Ipv4Addr, Instant)>; OTHER_SERVERS],
}

impl OtherServers {
    /// Whether `sid` should be reported now: unknown, or reported `again` ago or longer. It is
    /// recorded either way; a full table forgets its oldest entry.
    fn report(&mut self, sid: Ipv4Addr, now: Instant, again: Duration) -> bool {
        if let Some(e) = self.seen.iter_mut().flatten().find(|(s, _)| *s == sid) {
            if now.saturating_duration_since(e.1) < again {
                return false;
            }
            e.1 = now;
            return true;
        }
        let slot = self
            .seen
            .iter_mut()
            .min_by_key(|e| e.map(|(_, t)| Some(t)))
            .expect("OTHER_SERVERS > 0");
        *slot = Some((sid, now));
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.iter().flatten().count()
    }
}

/// A reply ready to send.
struct Outgoing {
    bytes: Vec<u8>,
    dest: SocketAddrV4,
    ifindex: u32,
    src: Ipv4Addr,
    port: ServerPort,
    /// The lease this reply confirms, when it must be on disk first.
    lease: Option<Ipv4Addr>,
}

/// The DHCP responder: its sockets, its lease table and file, its admission and logs. A
/// [`Service`] of the control engine.
pub struct Responder {
    cfg: DhcpConfig,
    /// What the decision reads (from `cfg`; replaced on reload).
    policy: Policy,
    observer: observe::Observer,
    s67: Socket,
    s4011: Option<Socket>,
    s68: Option<Socket>,
    store: Option<LeaseStore>,
    state: LeaseState,
    ifs: Vec<IfAddr>,
    ifs_at: Instant,
    admission: Admission,
    drops: Drops,
    logs: Logs,
    /// Replies waiting for the next save (group commit).
    pending: Vec<Outgoing>,
    save_failing: bool,
    probe_xid: Option<(u32, Instant)>,
    next_probe: Instant,
    others: OtherServers,
    /// The receive buffer, reused.
    buf: Box<[u8]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    S67 = 0,
    S4011 = 1,
    S68 = 2,
}

/// The boot file of a reply, for the DEBUG line.
fn file_of(m: &Message) -> String {
    m.fname()
        .map(|f| String::from_utf8_lossy(f).trim_end_matches('\0').to_owned())
        .unwrap_or_default()
}

/// Send `out` on the socket of its port.
fn send_on(s67: &Socket, s4011: Option<&Socket>, logs: &mut Logs, out: &Outgoing, now: Instant) {
    let sock = match out.port {
        ServerPort::Dhcp => s67,
        ServerPort::BootServer => s4011.unwrap_or(s67),
    };
    if let Err(e) = sys::socket::send_v4(sock, &out.bytes, out.dest, out.ifindex, out.src) {
        if let Some(n) = logs.allow(Kind::SendFailed, now) {
            tracing::warn!(target: LOG_TARGET, to = %out.dest, suppressed = n, "sending a DHCP reply failed: {e}");
        }
    }
}

/// Group commit: when `state` changed, `save` it once; then `send` the replies in `pending` in
/// order, except those confirming a lease that is still not on disk (the save failed, or the
/// record changed again), which go to `dropped`. `pending` is left empty with its capacity.
/// Returns the save's outcome, `None` when nothing needed saving.
fn group_commit<E>(
    state: &mut LeaseState,
    pending: &mut Vec<Outgoing>,
    save: impl FnOnce(&LeaseState) -> Result<(), E>,
    mut send: impl FnMut(&Outgoing),
    mut dropped: impl FnMut(),
) -> Option<Result<(), E>> {
    let saved = state.is_dirty().then(|| {
        let v = state.version();
        let r = save(state);
        if r.is_ok() {
            state.mark_saved(v);
        }
        r
    });
    for out in pending.drain(..) {
        match out.lease {
            Some(ip) if !state.is_durable(ip) => dropped(),
            _ => send(&out),
        }
    }
    saved
}

/// Log a decision's note through its rate limit.
fn log_note(logs: &mut Logs, note: Note, req: &Message, now: Instant) {
    match note {
        Note::PoolFull { range } => {
            if let Some(n) = logs.allow(Kind::PoolFull, now) {
                tracing::warn!(target: LOG_TARGET,
                    client = %mac_str(req.chaddr()),
                    suppressed = n,
                    "DHCP pool {}-{} is full: no address to offer",
                    range.start,
                    range.end
                );
            }
        }
        Note::IpxeLoop { file } => {
            if let Some(n) = logs.allow(Kind::IpxeLoop, now) {
                tracing::warn!(target: LOG_TARGET,
                    client = %mac_str(req.chaddr()),
                    file,
                    suppressed = n,
                    "iPXE asked again and would get the iPXE binary {file:?} (a boot loop): not answering; set ipxe_script (or a [[dhcp.rule]] with user_class = \"iPXE\")"
                );
            }
        }
        Note::Declined { ip, hold } => {
            if let Some(n) = logs.allow(Kind::Declined, now) {
                tracing::warn!(target: LOG_TARGET,
                    client = %mac_str(req.chaddr()),
                    suppressed = n,
                    "DHCPDECLINE {ip} from its holder: someone else uses it; out of the pool for {} s",
                    hold.as_secs()
                );
            }
        }
        Note::ForeignDecline { ip } => {
            if let Some(n) = logs.allow(Kind::ForeignDecline, now) {
                let ip = ip.map_or_else(|| "no address".to_owned(), |i| i.to_string());
                tracing::warn!(target: LOG_TARGET,
                    client = %mac_str(req.chaddr()),
                    suppressed = n,
                    "ignored a DHCPDECLINE for {ip}: this client holds no offer or lease of it (a forged DECLINE would take the address from its holder)"
                );
            }
        }
        Note::Reclaimed { ip } => {
            tracing::debug!(target: LOG_TARGET, client = %mac_str(req.chaddr()), "DHCP pool full: offering {ip}, softly offered before, again");
        }
    }
}

impl Responder {
    fn sock(&self, w: Which) -> &Socket {
        match w {
            Which::S67 => &self.s67,
            Which::S4011 => self.s4011.as_ref().unwrap_or(&self.s67),
            Which::S68 => self.s68.as_ref().unwrap_or(&self.s67),
        }
    }

    /// Work due at `now`: the probe for other servers, the log summaries, a save that failed
    /// last time.
    fn tick(&mut self, now: Instant) {
        if self.s68.is_some() && now >= self.next_probe {
            self.probe();
            self.next_probe = now + PROBE_INTERVAL;
        }
        self.drops.tick(now);
        self.logs.tick(now);
        if self.state.is_dirty() {
            // A save that failed last turn is tried again.
            self.commit(now);
        }
    }

    /// Read a bounded batch from socket `w` (so one socket cannot starve the others), then save
    /// once and send the replies that waited for it (group commit).
    fn read(&mut self, w: Which) {
        let mut buf = std::mem::take(&mut self.buf);
        for _ in 0..BATCH {
            let r = sys::socket::recv_v4(self.sock(w), &mut buf);
            match r {
                Ok(info) => {
                    if info.len > buf.len() {
                        self.dropped(Drop::TooLong, Instant::now());
                        continue;
                    }
                    let data = &buf[..info.len];
                    match w {
                        Which::S68 => self.observe(data, &info),
                        Which::S67 => self.handle(data, &info, ServerPort::Dhcp),
                        Which::S4011 => self.handle(data, &info, ServerPort::BootServer),
                    }
                    if self.pending.len() >= MAX_PENDING {
                        self.commit(Instant::now());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if let Some(n) = self.logs.allow(Kind::RecvFailed, Instant::now()) {
                        tracing::warn!(target: LOG_TARGET, suppressed = n, "DHCP receive failed: {e}");
                    }
                    break;
                }
            }
        }
        self.buf = buf;
        self.commit(Instant::now());
    }

    /// The address and netmask of interface `ifindex`.
    fn iface(&mut self, ifindex: u32) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let find = |ifs: &[IfAddr]| {
            ifs.iter()
                .find(|i| i.index == ifindex)
                .map(|i| (i.addr, i.netmask))
        };
        if let Some(i) = find(&self.ifs) {
            return Some(i);
        }
        if self.ifs_at.elapsed() > Duration::from_secs(2) {
            self.ifs = sys::iface::interfaces().unwrap_or_default();
            self.ifs_at = Instant::now();
        }
        find(&self.ifs)
    }

    fn handle(&mut self, data: &[u8], info: &RecvInfo, port: ServerPort) {
        let now = Instant::now();
        // The client's own rate first, from the fixed header: a flood from one MAC costs no
        // decoding.
        if let Some((htype, chaddr, _)) = wire::peek_request(data) {
            if let Err(why) = self.admission.admit_client(now, htype, chaddr) {
                self.dropped(Drop::Refused(why), now);
                return;
            }
        }
        let req = match wire::parse_request(data) {
            Ok(r) => r,
            Err(Malformed::NotRequest) if data.first() == Some(&2) => {
                // Another server's reply, relayed or looped back to port 67.
                self.observe(data, info);
                return;
            }
            Err(m) => {
                self.dropped(Drop::Malformed(m), now);
                return;
            }
        };
        if let Some((xid, _)) = self.probe_xid {
            if req.xid() == xid {
                return; // our own probe
            }
        }
        let known = self.store.is_some() && self.state.knows(&client_key(&req));
        if let Err(why) = self.admission.admit_segment(now, req.giaddr(), known) {
            self.dropped(Drop::Refused(why), now);
            return;
        }
        let iface = self.iface(info.ifindex);
        let server_ip = self
            .cfg
            .server_ip
            .or(iface.map(|i| i.0))
            .unwrap_or(info.local);
        if server_ip.is_unspecified() {
            self.dropped(Drop::NoLocalAddress, now);
            return;
        }
        let netmask = self
            .cfg
            .netmask
            .or(iface.map(|i| i.1))
            .unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
        let ctx = Context {
            server_ip,
            netmask,
            port,
            source: info.source,
            now: SystemTime::now(),
        };
        self.take_reload();
        let decision = decide_noted(&req, &ctx, &mut self.state, &self.policy);
        if let Some(note) = decision.note {
            log_note(&mut self.logs, note, &req, now);
        }
        let Some(reply) = decision.reply else {
            self.note_unanswered(&req, decision.note.as_ref());
            tracing::trace!(target: LOG_TARGET, client = %mac_str(req.chaddr()), msg_type = req.opts().msg_type().map_or(0, u8::from), "DHCP request not answered");
            return;
        };
        self.note_decision(&req, &reply.message, server_ip);
        let ty = reply.message.opts().msg_type();
        let yiaddr = reply.message.yiaddr();
        let confirms_lease = self.store.is_some()
            && ty == Some(MessageType::Ack)
            && !yiaddr.is_unspecified()
            && port == ServerPort::Dhcp;
        let wait = confirms_lease && !self.state.is_durable(yiaddr);
        let (dest, ifindex) = match reply.dest {
            Destination::Broadcast => (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), info.ifindex),
            Destination::Unicast(ip, p) => (SocketAddrV4::new(ip, p), 0),
        };
        tracing::debug!(target: LOG_TARGET,
            client = %mac_str(req.chaddr()),
            request = req.opts().msg_type().map_or(0, u8::from),
            reply = ty.map_or(0, u8::from),
            yiaddr = %yiaddr,
            file = %file_of(&reply.message),
            to = %dest,
            after_save = wait,
            "DHCP reply"
        );
        let out = Outgoing {
            bytes: reply.encode(),
            dest,
            ifindex,
            src: server_ip,
            port,
            lease: wait.then_some(yiaddr),
        };
        if wait {
            self.pending.push(out);
        } else {
            self.send(&out, now);
        }
    }

    fn send(&mut self, out: &Outgoing, now: Instant) {
        send_on(&self.s67, self.s4011.as_ref(), &mut self.logs, out, now);
    }

    /// Group commit (see [`group_commit`]), with the store, the sockets and the logs.
    fn commit(&mut self, now: Instant) {
        let Responder {
            state,
            pending,
            store,
            s67,
            s4011,
            logs,
            drops,
            ..
        } = self;
        let saved = group_commit(
            state,
            pending,
            |st| store.as_mut().map_or(Ok(()), |s| s.save(st)),
            |out| send_on(s67, s4011.as_ref(), logs, out, now),
            || drops.count(Drop::AckNotSaved, now),
        );
        match saved {
            Some(Ok(())) if std::mem::take(&mut self.save_failing) => {
                tracing::info!(target: LOG_TARGET, "the lease file is written again; ACKs go out again");
            }
            Some(Err(e)) => {
                self.save_failing = true;
                if let Some(n) = self.logs.allow(Kind::SaveFailed, now) {
                    let hint = if e.is_out_of_descriptors() {
                        " (out of file descriptors: raise LimitNOFILE or lower the TFTP load)"
                    } else {
                        ""
                    };
                    tracing::error!(target: LOG_TARGET,
                        suppressed = n,
                        "cannot save the DHCP leases: {e}{hint}; ACKs are held back until a save works (offers and other replies go on)"
                    );
                }
            }
            Some(Ok(())) | None => {}
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
        if !self.others.report(sid, now, PROBE_INTERVAL) {
            return;
        }
        let Some(n) = self.logs.allow(Kind::OtherServer, now) else {
            return;
        };
        let iface = self
            .ifs
            .iter()
            .find(|i| i.index == info.ifindex)
            .map_or("?", |i| i.name.as_str());
        tracing::warn!(target: LOG_TARGET,
            other_server = %sid,
            interface = %iface,
            offered = %msg.yiaddr(),
            suppressed = n,
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
        let m = wire::client_message(MessageType::Discover, mac, xid);
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
            if let Err(e) = sys::socket::send_v4(s68, &bytes, dest, i.index, i.addr) {
                tracing::debug!(target: LOG_TARGET, interface = %i.name, "DHCP probe not sent: {e}");
            } else {
                tracing::debug!(target: LOG_TARGET, interface = %i.name, "probing for other DHCP servers");
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

#[cfg(test)]
mod tests;

/// The responder's timer: the tick (probe, log summaries, retried save).
const TICK: u64 = 0;
/// How often the tick runs.
const TICK_INTERVAL: Duration = Duration::from_millis(250);

impl Service for Responder {
    fn name(&self) -> &'static str {
        "DHCP responder"
    }

    fn start(&mut self, io: &mut Io<'_>, now: Instant) -> io::Result<()> {
        io.watch(self.s67.as_raw_fd(), Which::S67 as u32)?;
        if let Some(s) = &self.s4011 {
            io.watch(s.as_raw_fd(), Which::S4011 as u32)?;
        }
        if let Some(s) = &self.s68 {
            io.watch(s.as_raw_fd(), Which::S68 as u32)?;
        }
        io.arm(TICK, now);
        Ok(())
    }

    fn on_readable(&mut self, _io: &mut Io<'_>, sub: u32, _now: Instant) -> io::Result<()> {
        let w = match sub {
            0 => Which::S67,
            1 => Which::S4011,
            _ => Which::S68,
        };
        self.read(w);
        Ok(())
    }

    fn on_timer(&mut self, io: &mut Io<'_>, _key: u64, now: Instant) -> io::Result<()> {
        self.tick(now);
        io.arm(TICK, now + TICK_INTERVAL);
        Ok(())
    }

    fn shutdown(&mut self, now: Instant) {
        self.commit(now);
        tracing::info!(target: LOG_TARGET, "DHCP responder stopped");
    }
}
