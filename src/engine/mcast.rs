//! The multicast service: runs [`crate::proto::mtftp::session::Session`]s for PXE MTFTP opens and for
//! RFC 2090 `multicast` requests, a [`Service`] of the control engine (`ringboot-ctl`).
//!
//! Contract:
//! - [`bind`] binds the PXE MTFTP server port (`--mtftp-port`, on each IPv4 listen address) and
//!   returns the service for the control engine to host ([`crate::engine::ctl`]); the hand-off
//!   side (admission, channel) is in [`handoff`]. Unicast workers offer RFC 2090 requests with [`McHandle::submit`].
//! - **Every RFC 2090 request gets an answer.** `submit` decides admission synchronously, on the
//!   worker's thread, under one short lock shared with the service (no I/O under it): the block
//!   size bucket, a session of that file and bucket with room (`--multicast-max-members`), the
//!   client address under its cap (`--multicast-max-per-source` memberships at once), and, for a
//!   new session, a free group of `--multicast-groups`. An admitted request holds a reservation
//!   (a membership counted against every cap, and the session's group) that the service honours,
//!   and is handed over through a bounded channel plus an eventfd wake-up. When anything says no
//!   (RFC 2090 off, a block size under 512, pool full, session full, source over its cap, channel
//!   full, service gone) `submit` says why, takes nothing, and the worker serves the request
//!   as ordinary unicast TFTP: its OACK has no `multicast` option, which RFC 2090 allows. A request
//!   already handed over that the service then cannot place (no socket) gets an ERROR from the
//!   service, and its reservation is given back. Nothing on the unicast hot path waits.
//! - One RFC 2090 session per (file, block size bucket): the bucket is the largest of
//!   [`BLKSIZE_BUCKETS`] not above the block size the worker granted (so at most six per file, and
//!   a flood of odd block sizes shares one), announced in the OACK (never more than asked). PXE
//!   MTFTP: one session per configured file at a time (see [`crate::proto::mtftp::session`] for how a
//!   spoofed opener is superseded by a real one).
//! - A group goes back to the pool when its session's last member is gone and no reservation
//!   names it; freed groups are reused oldest first, so a late packet of an old session rarely
//!   meets a new one (each session also has its own source port, which clients check).
//! - Each session has its own socket: OACKs, the unicast block 1 of PXE MTFTP and every multicast
//!   block leave from it, so clients see one source address and port (atftp checks both), and members'
//!   ACKs come back to it. TTL, outgoing interface and loopback are set on it. A session ended by
//!   the server (file changed) sends its remaining members an ERROR.
//! - Bounded: groups in use (the pool, at most 4096), memberships (groups x max members), the
//!   per-source table (one entry per address holding a membership), the hand-over channel (1024),
//!   datagrams read per socket per wake-up (256). Every line a remote peer can cause once per
//!   datagram (refusals, joins, opens, send and receive failures, sessions that served nobody)
//!   goes through a [`LogLimit`]: one line, then a count of the ones suppressed.
//! - Multicast is paced by the session (no per-client flow control exists); the engine calls the
//!   service at the earliest session deadline (or within a second) and after every wake-up, sends what the sessions produce, and logs each session's
//!   life: start, members, master changes, and at the end the blocks and bytes it sent, which show
//!   the file went out about once per session rather than once per client.
//! - A window goes out through the service's one [`TxBufs`] (sessions send synchronously, one at
//!   a time): header + file slice per block, several blocks per `UDP_SEGMENT` call to the group,
//!   with `sendmmsg`, inside the `Content::begin_send`/`end_send` bracket. A GSO call the kernel
//!   refuses (`EINVAL`, `EIO`, `EOPNOTSUPP`) turns GSO off for the service and the window is sent
//!   again from that call, one datagram per block.

use crate::engine::links::{Links, Locked, SharedLink};
use crate::engine::send::{sendmmsg_all, TxBufs, MAX_TX_BLOCKS};
use crate::engine::{Io, Service};
use crate::proto::mtftp::session::{
    JoinError, Joined, LeaveReason, Session, SessionConfig, SessionEvent, SlowPolicy,
    BLKSIZE_BUCKETS,
};
use crate::proto::mtftp::Protocol;
use crate::proto::ratelog::LogLimit;
use crate::proto::tftp::options::{BlockSize, WindowSize};
use crate::proto::tftp::packet::{emit_error, ErrorCode, Mode, Packet};
use crate::proto::{Payload, Transmit};
use crate::store::{Content, Store};
use crate::sys::poll::EventFd;
use crossbeam::channel::{self, Receiver};
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Groups of the pool used at most (a /20).
const MAX_GROUPS: u32 = 4096;
/// Requests waiting for the service at most.
const CHANNEL_CAP: usize = 1024;
/// Datagrams read from one socket per wake-up (level-triggered: the rest wait for the next turn).
const RECV_BATCH: usize = 256;
/// Receive buffer of a session's socket: room for every member's ACK at once (kernel
/// accounting, about 1 KiB per small datagram, for [`DEFAULT_MAX_MEMBERS`] and more).
const SESSION_RCVBUF: i32 = 2 << 20;

/// Default of `--multicast-max-members`.
pub const DEFAULT_MAX_MEMBERS: usize = crate::proto::mtftp::session::DEFAULT_MAX_MEMBERS;
/// Default of `--multicast-max-per-source`.
pub const DEFAULT_MAX_PER_SOURCE: usize = 4;

/// An RFC 2090 request accepted by a unicast worker.
pub struct McJoin {
    pub client: SocketAddr,
    /// The address the request was sent to (the session answers from it).
    pub local: IpAddr,
    pub content: Arc<Content>,
    /// Negotiated block size (never more than the client asked); the session uses its bucket.
    pub blksize: BlockSize,
    pub tsize: bool,
}

mod config;
mod handoff;
pub use config::{GroupPool, McConfig, MtftpFile};
use handoff::{lock, Admission, Handoff};
pub use handoff::{McHandle, Refusal};

struct Running {
    session: Session,
    sock: UdpSocket,
    content: Arc<Content>,
    /// Destination of `Dest::Group`.
    group: SocketAddr,
    key: Key,
    started: Instant,
    /// Ended by a send error (file truncated).
    failed: bool,
    /// RFC 2090: the admission was told the session takes no new member (block numbers wrap and
    /// the stream started: [`JoinError::Late`]); later requests go to unicast.
    closed: bool,
    /// The controller of the interface the group leaves by (shared with the unicast transfers
    /// of that interface); `None` on an uncapped loopback, as for unicast.
    link: Option<SharedLink>,
}

impl Running {
    /// A session of `cfg` started at `now`, sending `content` to `group` from `sock`.
    fn new(
        cfg: SessionConfig,
        now: Instant,
        sock: UdpSocket,
        content: Arc<Content>,
        group: SocketAddr,
        key: Key,
        link: Option<SharedLink>,
    ) -> Running {
        Running {
            session: Session::new(cfg, now),
            sock,
            content,
            group,
            key,
            started: now,
            failed: false,
            closed: false,
            link,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Mtftp(usize),
    /// The admission slot and its generation.
    Rfc2090 {
        slot: u32,
        gen: u64,
    },
    /// A PXE MTFTP session whose file a reload removed (or moved): no new opens join it.
    Retired,
}

/// Tokens of the wake-up eventfd and of the MTFTP listeners; sessions count up from 0.
const TOKEN_WAKE: u32 = u32::MAX;
const TOKEN_MTFTP: u32 = 1 << 30;
/// The one timer of the service: its turn.
const TURN: u64 = 0;

/// Bind the MTFTP sockets and start the service thread.
pub fn bind(cfg: McConfig, store: Arc<Store>) -> io::Result<(McHandle, McService)> {
    bind_with(cfg, store, None)
}

/// [`bind`], recording into `status` (`--metrics`).
pub fn bind_with(
    cfg: McConfig,
    store: Arc<Store>,
    status: Option<Arc<crate::metrics::Status>>,
) -> io::Result<(McHandle, McService)> {
    let mut listeners = Vec::new();
    if !cfg.mtftp.is_empty() {
        let addrs = if cfg.listen.is_empty() {
            vec![Ipv4Addr::UNSPECIFIED]
        } else {
            cfg.listen.clone()
        };
        for a in addrs {
            let s = UdpSocket::bind(SocketAddrV4::new(a, cfg.mtftp_port)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot bind the PXE MTFTP port {a}:{}: {e}", cfg.mtftp_port),
                )
            })?;
            s.set_nonblocking(true)?;
            listeners.push(s);
        }
    }
    // ERRORs for requests the service cannot place leave from here.
    let ctrl = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    ctrl.set_nonblocking(true)?;
    let (tx, rx) = channel::bounded(CHANNEL_CAP);
    let wake = Arc::new(EventFd::new()?);
    let admission = Arc::new(Mutex::new(Admission::new(
        cfg.groups,
        cfg.max_members,
        cfg.max_per_source,
    )));
    let handle = McHandle {
        tx,
        wake: wake.clone(),
        admission: admission.clone(),
    };
    for f in &cfg.mtftp {
        info!(file = f.file.as_str(), group = %f.group, client_port = f.client_port, port = cfg.mtftp_port, "PXE MTFTP enabled");
    }
    if let Some(g) = cfg.groups {
        info!(
            groups = %format!("{}/{}", g.nth(0), 32 - g.len.trailing_zeros()),
            port = cfg.multicast_port,
            max_members = cfg.max_members,
            max_per_source = cfg.max_per_source,
            blksizes = ?BLKSIZE_BUCKETS,
            "RFC 2090 multicast enabled"
        );
    }
    let svc = McService {
        cfg,
        store,
        rx,
        wake,
        listeners,
        ctrl,
        admission,
        sessions: HashMap::new(),
        next_token: 0,
        buf: vec![0u8; 2048],
        logs: Logs::default(),
        tokens: Vec::new(),
        observer: status.as_deref().map(observe::Observer::new),
        tx: TxBufs::new(MAX_TX_BLOCKS),
        gso: crate::sys::socket::gso_supported(),
        links: None,
    };
    Ok((handle, svc))
}

/// The service's rate-limited log lines (one limiter each).
#[derive(Default)]
struct Logs {
    open_refused: LogLimit,
    non_rrq: LogLimit,
    no_mtftp: LogLimit,
    busy: LogLimit,
    opened: LogLimit,
    joined: LogLimit,
    master: LogLimit,
    left: LogLimit,
    started: LogLimit,
    idle_finished: LogLimit,
    not_placed: LogLimit,
    send_failed: LogLimit,
    recv_failed: LogLimit,
}

impl Logs {
    fn flush(&mut self, now: Instant) {
        let all: [(&mut LogLimit, &str); 13] = [
            (&mut self.open_refused, "MTFTP open refused"),
            (&mut self.non_rrq, "non-RRQ on the MTFTP port dropped"),
            (
                &mut self.no_mtftp,
                "MTFTP open for a file without MTFTP settings refused",
            ),
            (
                &mut self.busy,
                "MTFTP open while a master is established: the client listens",
            ),
            (&mut self.opened, "MTFTP open answered"),
            (&mut self.joined, "multicast member joined"),
            (&mut self.master, "multicast master changed"),
            (&mut self.left, "multicast member vanished"),
            (&mut self.started, "multicast session started"),
            (
                &mut self.idle_finished,
                "multicast session finished without serving anyone",
            ),
            (&mut self.not_placed, "multicast request not placed"),
            (&mut self.send_failed, "multicast send failed"),
            (&mut self.recv_failed, "multicast receive failed"),
        ];
        for (l, what) in all {
            if let Some(n) = l.flush(now) {
                info!(what, suppressed = n, "multicast log lines suppressed");
            }
        }
    }
}

/// The multicast service: its listeners, its sessions and their sockets. A
/// [`Service`](crate::engine::Service) of the control engine.
pub struct McService {
    cfg: McConfig,
    store: Arc<Store>,
    rx: Receiver<Handoff>,
    wake: Arc<EventFd>,
    listeners: Vec<UdpSocket>,
    ctrl: UdpSocket,
    admission: Arc<Mutex<Admission>>,
    sessions: HashMap<u64, Running>,
    next_token: u64,
    buf: Vec<u8>,
    logs: Logs,
    observer: Option<observe::Observer>,
    /// The session tokens of one turn, reused.
    tokens: Vec<u64>,
    /// The send buffers of windows (sessions send synchronously, one at a time).
    tx: TxBufs,
    /// UDP GSO for windows (cleared for good when a GSO send is refused).
    gso: bool,
    /// The server-wide interface controllers ([`McService::share_uplink`]); `None`: sessions
    /// are paced by their own rate only.
    links: Option<Arc<Links>>,
}

impl McService {
    /// After every wake-up (as the loop of its own did): drive every session, flush the log
    /// summaries, and be called again at the earliest session deadline, or within a second.
    fn turn(&mut self, io: &mut Io<'_>, now: Instant) {
        let mut tokens = std::mem::take(&mut self.tokens);
        tokens.clear();
        tokens.extend(self.sessions.keys().copied());
        for &t in &tokens {
            self.drive(t, now);
        }
        self.tokens = tokens;
        self.logs.flush(now);
        lock(&self.admission).flush_logs(now);
        self.observe(now);
        let next = self
            .sessions
            .values()
            .filter_map(|r| r.session.poll_timeout())
            .min();
        let second = now + Duration::from_secs(1);
        io.arm(TURN, next.map_or(second, |t| t.min(second)));
    }

    fn session_socket(&self, local: IpAddr) -> io::Result<UdpSocket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM.nonblocking().cloexec(), None)?;
        s.set_multicast_ttl_v4(self.cfg.ttl)?;
        s.set_multicast_loop_v4(self.cfg.loopback)?;
        if let Some(i) = self.cfg.interface {
            s.set_multicast_if_v4(&i)?;
        }
        let _ = s.set_send_buffer_size(1 << 20);
        // Every member's last ACK may come at once (a room finishing the pass together): the
        // default buffer (~200 small datagrams) dropped most of 1,000, and each member whose
        // ACK was lost was later named master and waited out while the room heard nothing.
        crate::sys::socket::set_recv_buffer(&s, SESSION_RCVBUF);
        let bind = match local {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        s.bind(&SockAddr::from(SocketAddrV4::new(bind, 0)))?;
        Ok(s.into())
    }

    fn session_config(
        &self,
        protocol: Protocol,
        blksize: BlockSize,
        len: u64,
        group: SocketAddr,
        tsize: bool,
    ) -> SessionConfig {
        SessionConfig {
            protocol,
            blksize,
            content_len: len,
            group,
            window: WindowSize::new(self.cfg.window).unwrap_or(WindowSize::ONE),
            rate: self.cfg.rate,
            min_rate: self.cfg.min_rate,
            slow: self.cfg.slow,
            timeout: self.cfg.timeout,
            retries: self.cfg.retries,
            tsize_in_oack: tsize,
            max_members: self.cfg.max_members,
        }
    }

    fn add_session(&mut self, io: &mut Io<'_>, r: Running) -> io::Result<u64> {
        let token = self.next_token;
        self.next_token = (self.next_token + 1) % TOKEN_MTFTP as u64;
        io.watch(r.sock.as_raw_fd(), token as u32)?;
        if let Some(suppressed) = self.logs.started.allow(r.started) {
            info!(
                protocol = match r.session.config().protocol { Protocol::PxeMtftp => "pxe_mtftp", Protocol::Rfc2090 => "rfc2090" },
                file = r.content.display_path(),
                group = %r.group,
                blksize = r.session.config().blksize.get(),
                suppressed,
                "multicast session started"
            );
        }
        self.sessions.insert(token, r);
        Ok(token)
    }

    /// Answer a request the service cannot place with an ERROR (it was promised an answer).
    fn not_placed(&mut self, client: SocketAddr, file: &str, message: &str, now: Instant) {
        let mut out = [0u8; 128];
        let len = emit_error(&mut out, ErrorCode::NotDefined, message);
        let _ = self.ctrl.send_to(&out[..len], client);
        if let Some(suppressed) = self.logs.not_placed.allow(now) {
            warn!(%client, file, reason = message, suppressed, "multicast request not placed; ERROR sent");
        }
    }

    /// Answer an MTFTP open on listener `i` with an ERROR (no session takes it).
    fn refuse_open(&self, i: usize, to: SocketAddr, code: ErrorCode, message: &str) {
        let mut out = [0u8; 256];
        let len = emit_error(&mut out, code, message);
        let _ = self.listeners[i].send_to(&out[..len], to);
    }

    /// The token of the session of `key` that is not over yet, if any.
    fn live_session(&self, key: Key) -> Option<u64> {
        self.sessions
            .iter()
            .find(|(_, r)| r.key == key && !r.session.is_over())
            .map(|(t, _)| *t)
    }

    fn join_rfc2090(&mut self, io: &mut Io<'_>, h: Handoff) {
        let Handoff { join: j, ticket: t } = h;
        let now = Instant::now();
        let key = Key::Rfc2090 {
            slot: t.slot,
            gen: t.gen,
        };
        let token = match self.live_session(key) {
            Some(t) => t,
            None => {
                let group = {
                    let mut a = lock(&self.admission);
                    if a.is_live(t.slot, t.gen) {
                        a.group(t.slot)
                    } else {
                        None
                    }
                };
                let Some(group) = group else {
                    // A resent request whose session ended meanwhile.
                    let file = j.content.display_path().to_owned();
                    self.not_placed(j.client, &file, "multicast session ended; ask again", now);
                    return;
                };
                let group = SocketAddr::from((group, self.cfg.multicast_port));
                let started = self.session_socket(j.local).and_then(|sock| {
                    let cfg = self.session_config(
                        Protocol::Rfc2090,
                        BlockSize::new(t.bucket).unwrap_or(BlockSize::DEFAULT),
                        j.content.len(),
                        group,
                        j.tsize,
                    );
                    let link = self.link_for(j.local);
                    let r = Running::new(cfg, now, sock, j.content.clone(), group, key, link);
                    self.add_session(io, r)
                });
                match started {
                    Ok(token) => token,
                    Err(e) => {
                        if t.counted {
                            lock(&self.admission).release(t.slot, t.gen, j.client);
                        }
                        let file = j.content.display_path().to_owned();
                        let msg = format!("cannot open a multicast session socket: {e}");
                        self.not_placed(j.client, &file, &msg, now);
                        return;
                    }
                }
            }
        };
        let Some(r) = self.sessions.get_mut(&token) else {
            return;
        };
        match r.session.join(now, j.client) {
            Ok(Joined::New) => {
                if !t.counted {
                    lock(&self.admission).adopt(t.slot, t.gen, j.client);
                }
            }
            Ok(Joined::Again) => {}
            Err(e) => {
                // Only if the session and the admission disagree (they share the caps).
                if t.counted {
                    lock(&self.admission).release(t.slot, t.gen, j.client);
                }
                let file = r.content.display_path().to_owned();
                let msg = match e {
                    JoinError::Full => "multicast session full",
                    JoinError::Late => "multicast session past its start; ask again",
                    JoinError::Busy | JoinError::Over => "multicast session ended; ask again",
                };
                self.not_placed(j.client, &file, msg, now);
                return;
            }
        }
        self.settle(token, now);
    }

    /// Drain a session's events: give back the memberships that ended, log (rate-limited).
    fn settle(&mut self, token: u64, now: Instant) {
        let Some(r) = self.sessions.get_mut(&token) else {
            return;
        };
        if !r.closed && !r.session.admits_joiners() {
            r.closed = true;
            if let Key::Rfc2090 { slot, gen } = r.key {
                lock(&self.admission).close(slot, gen);
            }
        }
        let file = r.content.display_path();
        let pxe = r.session.config().protocol == Protocol::PxeMtftp;
        while let Some(ev) = r.session.poll_event() {
            match ev {
                SessionEvent::Joined(client) if pxe => {
                    if let Some(suppressed) = self.logs.opened.allow(now) {
                        info!(%client, file, group = %r.group, suppressed, "MTFTP open answered: block 1 unicast, the client may be master");
                    }
                }
                SessionEvent::Joined(client) => {
                    if let Some(suppressed) = self.logs.joined.allow(now) {
                        info!(%client, file, group = %r.group, members = r.session.members(), suppressed, "multicast member joined");
                    }
                }
                SessionEvent::Master(master) => {
                    if let Some(suppressed) = self.logs.master.allow(now) {
                        info!(file, group = %r.group, %master, suppressed, "multicast master changed");
                    }
                }
                SessionEvent::Left { addr, reason } => {
                    if let Key::Rfc2090 { slot, gen } = r.key {
                        let mut a = lock(&self.admission);
                        a.release(slot, gen, addr);
                        if reason == LeaveReason::Slow {
                            a.mark_slow(addr.ip());
                        }
                    }
                    if reason == LeaveReason::Slow {
                        if let Some(suppressed) = self.logs.left.allow(now) {
                            info!(file, group = %r.group, client = %addr, min_rate = r.session.config().min_rate, suppressed, "multicast master too slow for the floor rate: ERROR sent, served by unicast when it asks again");
                        }
                    }
                    if matches!(reason, LeaveReason::Vanished | LeaveReason::Aborted) {
                        if let Some(suppressed) = self.logs.left.allow(now) {
                            info!(file, group = %r.group, client = %addr, reason = if matches!(reason, LeaveReason::Vanished) { "vanished" } else { "aborted" }, suppressed, "multicast member vanished (silent past the retry budget, or sent an ERROR)");
                        }
                    }
                }
            }
        }
    }

    fn mtftp_readable(&mut self, io: &mut Io<'_>, i: usize) {
        for _ in 0..RECV_BATCH {
            let (n, from) = match self.listeners[i].recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if let Some(suppressed) = self.logs.recv_failed.allow(Instant::now()) {
                        debug!(reason = %e, suppressed, "MTFTP receive failed");
                    }
                    return;
                }
            };
            let now = Instant::now();
            let local = self.listeners[i]
                .local_addr()
                .map(|a| a.ip())
                .unwrap_or(Ipv4Addr::UNSPECIFIED.into());
            let req = match Packet::parse(&self.buf[..n]) {
                Ok(Packet::Rrq(r)) if r.mode == Mode::Octet || r.mode == Mode::Netascii => r,
                _ => {
                    if let Some(suppressed) = self.logs.non_rrq.allow(now) {
                        debug!(client = %from, suppressed, "non-RRQ on the MTFTP port dropped");
                    }
                    continue;
                }
            };
            let content = match self.store.lookup(req.filename, Mode::Octet) {
                Ok(c) => c,
                Err(e) => {
                    self.observe_refusal(crate::metrics::McRefusal::NotFound);
                    if let Some(suppressed) = self.logs.open_refused.allow(now) {
                        info!(client = %from, file = String::from_utf8_lossy(req.filename).as_ref(), reason = %e, suppressed, "MTFTP open refused");
                    }
                    self.refuse_open(i, from, e.error_code(), &e.to_string());
                    continue;
                }
            };
            // Which configured MTFTP file is it? Compare the resolved files.
            let which = self.cfg.mtftp.iter().position(|f| {
                self.store
                    .lookup(f.file.as_bytes(), Mode::Octet)
                    .is_ok_and(|c| Arc::ptr_eq(&c, &content))
            });
            let Some(which) = which else {
                self.observe_refusal(crate::metrics::McRefusal::NoMtftp);
                if let Some(suppressed) = self.logs.no_mtftp.allow(now) {
                    info!(client = %from, file = String::from_utf8_lossy(req.filename).as_ref(), suppressed, "MTFTP open for a file without MTFTP settings refused");
                }
                self.refuse_open(i, from, ErrorCode::FileNotFound, "no MTFTP for this file");
                continue;
            };
            let key = Key::Mtftp(which);
            let token = match self.live_session(key) {
                Some(t) => t,
                None => {
                    let f = &self.cfg.mtftp[which];
                    let group = SocketAddr::from((f.group, f.client_port));
                    let cfg = self.session_config(
                        Protocol::PxeMtftp,
                        BlockSize::DEFAULT,
                        content.len(),
                        group,
                        false,
                    );
                    let started = self.session_socket(local).and_then(|sock| {
                        let link = self.link_for(local);
                        let r = Running::new(cfg, now, sock, content, group, key, link);
                        self.add_session(io, r)
                    });
                    match started {
                        Ok(t) => t,
                        Err(e) => {
                            // The client re-opens (and iPXE falls back to TFTP after 3 opens).
                            self.refuse_open(
                                i,
                                from,
                                ErrorCode::NotDefined,
                                "cannot open a multicast session",
                            );
                            if let Some(suppressed) = self.logs.not_placed.allow(now) {
                                warn!(client = %from, reason = %e, suppressed, "cannot open a multicast session socket; ERROR sent");
                            }
                            continue;
                        }
                    }
                }
            };
            let mut late = None;
            if let Some(r) = self.sessions.get_mut(&token) {
                match r.session.join(now, from) {
                    Err(JoinError::Late) => late = Some(r.content.display_path().to_owned()),
                    Err(e) => {
                        if let Some(suppressed) = self.logs.busy.allow(now) {
                            debug!(client = %from, file = r.content.display_path(), reason = %format!("{e:?}").to_lowercase(), suppressed, "MTFTP open while a master is established: the client listens and re-opens");
                        }
                    }
                    Ok(_) => {}
                }
            }
            if let Some(file) = late {
                // Past block 65535 of a wrapping file: an ERROR, not a listener that would
                // misplace what it hears (Session::admits_joiners).
                self.refuse_open(
                    i,
                    from,
                    ErrorCode::NotDefined,
                    "multicast session past block 65535; open again after it, or use TFTP",
                );
                self.observe_refusal(crate::metrics::McRefusal::Late);
                if let Some(suppressed) = self.logs.not_placed.allow(now) {
                    info!(client = %from, file, suppressed, "MTFTP open refused: the session of this file of more than 65535 blocks is past its start; ERROR sent");
                }
            }
            self.settle(token, now);
        }
    }

    fn session_readable(&mut self, token: u64) {
        for _ in 0..RECV_BATCH {
            let Some(r) = self.sessions.get_mut(&token) else {
                return;
            };
            let now = Instant::now();
            match r.sock.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    r.session.handle_datagram(now, from, &self.buf[..n]);
                    self.settle(token, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors from a member that went away, mostly.
                    if let Some(suppressed) = self.logs.recv_failed.allow(now) {
                        debug!(reason = %e, suppressed, "multicast session receive failed");
                    }
                    return;
                }
            }
        }
    }

    fn drive(&mut self, token: u64, now: Instant) {
        let Some(r) = self.sessions.get_mut(&token) else {
            return;
        };
        r.session.handle_timeout(now);
        let mut ctrl = [0u8; 512];
        loop {
            let tx = match &r.link {
                Some(l) => r
                    .session
                    .poll_transmit_paced(now, &mut ctrl, &mut Locked(l)),
                None => r.session.poll_transmit(now, &mut ctrl),
            };
            let Some(tx) = tx else { break };
            let Transmit { dest: to, payload } = tx;
            match payload {
                Payload::Datagram(len) => {
                    if let Err(e) = r.sock.send_to(&ctrl[..len], to) {
                        if let Some(suppressed) = self.logs.send_failed.allow(now) {
                            debug!(reason = %e, to = %to, suppressed, "multicast control send failed");
                        }
                    }
                }
                Payload::Blocks { first, count } => {
                    let to = SockAddr::from(to);
                    // Held across the synchronous sends: a lease break waits for them.
                    if !r.content.begin_send() {
                        warn!(
                            file = r.content.display_path(),
                            "file changed on the server while multicast; session ended"
                        );
                        r.failed = true;
                        break;
                    }
                    let bytes = r.content.bytes();
                    let fd = r.sock.as_raw_fd();
                    let end = first + count as u64;
                    let mut next = first;
                    // In builds of at most MAX_TX_BLOCKS blocks: header + file slice per block,
                    // several blocks per GSO call; one datagram per block once GSO is refused.
                    while next < end {
                        let n = (end - next).min(self.tx.capacity() as u64) as u32;
                        let built = self.tx.build_session(&r.session, bytes, next, n, self.gso);
                        if built.is_none() {
                            break;
                        }
                        self.tx.address(&to);
                        let Err((call, e)) = sendmmsg_all(fd, self.tx.msgs()) else {
                            next += n as u64;
                            continue;
                        };
                        let c = self.tx.call(call);
                        match e {
                            libc::EFAULT => {
                                // The mapped file was truncated under us.
                                warn!(
                                    file = r.content.display_path(),
                                    "file changed on the server while multicast; session ended"
                                );
                                r.failed = true;
                            }
                            libc::EIO | libc::EINVAL | libc::EOPNOTSUPP
                                if c.is_some_and(|c| c.gso) =>
                            {
                                warn!(reason = %io::Error::from_raw_os_error(e), "UDP GSO refused for a multicast window; one datagram per block from now on");
                                self.gso = false;
                                if let Some(c) = c {
                                    next = c.first;
                                    continue;
                                }
                            }
                            _ => {
                                // Lost like any datagram: the master's ACKs bring it back.
                                if let Some(suppressed) = self.logs.send_failed.allow(now) {
                                    debug!(reason = %io::Error::from_raw_os_error(e), suppressed, "multicast block send failed");
                                }
                            }
                        }
                        break;
                    }
                    r.content.end_send();
                }
            }
        }
        self.settle(token, now);
        let Some(r) = self.sessions.get(&token) else {
            return;
        };
        if !(r.session.is_over() || r.failed || r.content.is_revoked()) {
            return;
        }
        let r = self.sessions.remove(&token).expect("present");
        self.observe_end(&r);
        // Ended by the server with members left: tell them, and give their places back.
        if r.session.members() > 0 {
            let mut out = [0u8; 128];
            let len = emit_error(
                &mut out,
                ErrorCode::NotDefined,
                "file changed on the server",
            );
            for client in r.session.member_addrs() {
                let _ = r.sock.send_to(&out[..len], client);
                if let Key::Rfc2090 { slot, gen } = r.key {
                    lock(&self.admission).release(slot, gen, client);
                }
            }
        }
        let st = r.session.stats();
        let groups_in_use = lock(&self.admission).groups_in_use();
        // A session that served nobody (all its members vanished: spoofed or gone) is what a
        // flood makes; those lines are rate-limited. The others are one per real session.
        let served = st.members_done > 0 || st.acks > 0;
        let suppressed = if served {
            Some(0)
        } else {
            self.logs.idle_finished.allow(now)
        };
        if let Some(suppressed) = suppressed {
            info!(
                protocol = match r.session.config().protocol { Protocol::PxeMtftp => "pxe_mtftp", Protocol::Rfc2090 => "rfc2090" },
                file = r.content.display_path(),
                group = %r.group,
                members = st.members_joined,
                done = st.members_done,
                vanished = st.members_vanished,
                master_changes = st.master_changes,
                blocks_sent = st.blocks_sent,
                bytes_sent = st.bytes_sent,
                file_bytes = r.content.len(),
                resent = st.blocks_resent,
                listeners_asked = st.listeners_asked,
                listeners_silent = st.listeners_silent,
                timeouts = st.timeouts,
                duration_ms = r.started.elapsed().as_millis() as u64,
                groups_in_use,
                suppressed,
                "multicast session finished"
            );
        }
    }
}

mod observe;
mod reload;
#[cfg(test)]
mod tests;
mod uplink;

impl Service for McService {
    fn name(&self) -> &'static str {
        "multicast service"
    }

    fn start(&mut self, io: &mut Io<'_>, now: Instant) -> io::Result<()> {
        io.watch(self.wake.as_raw_fd(), TOKEN_WAKE)?;
        for (i, l) in self.listeners.iter().enumerate() {
            io.watch(l.as_raw_fd(), TOKEN_MTFTP + i as u32)?;
        }
        io.arm(TURN, now);
        Ok(())
    }

    fn on_readable(&mut self, io: &mut Io<'_>, sub: u32, now: Instant) -> io::Result<()> {
        match sub {
            TOKEN_WAKE => {
                self.wake.drain();
                self.take_reload();
                while let Ok(h) = self.rx.try_recv() {
                    self.join_rfc2090(io, h);
                }
            }
            t if t >= TOKEN_MTFTP => self.mtftp_readable(io, (t - TOKEN_MTFTP) as usize),
            t => self.session_readable(t as u64),
        }
        self.turn(io, now);
        Ok(())
    }

    fn on_timer(&mut self, io: &mut Io<'_>, _key: u64, now: Instant) -> io::Result<()> {
        self.turn(io, now);
        Ok(())
    }

    fn shutdown(&mut self, _now: Instant) {}
}
