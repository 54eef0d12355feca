//! The multicast service: runs [`crate::proto::multicast::Session`]s for PXE MTFTP opens and for
//! RFC 2090 `multicast` requests, on one thread of its own.
//!
//! Contract:
//! - [`spawn`] binds the PXE MTFTP server port (`--mtftp-port`, on each IPv4 listen address) and
//!   starts the thread. Unicast workers hand RFC 2090 requests over with [`McHandle::submit`]
//!   (a bounded crossbeam channel plus an eventfd wake-up); nothing on the unicast hot path waits.
//! - One session per (file, block size) for RFC 2090 and per configured file for PXE MTFTP, joined by
//!   every client that asks for that file while it runs. RFC 2090 sessions draw their group from the
//!   `--multicast-groups` pool and give it back when they end.
//! - Each session has its own socket: OACKs, the unicast block 1 of PXE MTFTP and every multicast
//!   block leave from it, so clients see one source address and port (atftp checks both), and members'
//!   ACKs come back to it. TTL, outgoing interface and loopback are set on it.
//! - Multicast is paced by the session (no per-client flow control exists); this thread only sleeps
//!   until the earliest session deadline, sends what the sessions produce, and logs each session's
//!   life: start, members, master changes, and at the end the blocks and bytes it sent, which show
//!   the file went out about once per session rather than once per client.

use super::sys;
use crate::proto::multicast::{Dest, McTransmit, Protocol, Session, SessionConfig};
use crate::proto::options::BlockSize;
use crate::proto::packet::{data_header, emit_error, ErrorCode, Mode, Packet};
use crate::proto::BlockNum;
use crate::store::{Content, Store};
use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use socket2::{Domain, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::mem::zeroed;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

use super::Shutdown;

/// A file served by PXE MTFTP (`--mtftp FILE@GROUP:CLIENTPORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtftpFile {
    /// The name as clients request it (resolved through the store like any request).
    pub file: String,
    pub group: Ipv4Addr,
    pub client_port: u16,
}

impl std::str::FromStr for MtftpFile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (file, rest) = s
            .rsplit_once('@')
            .ok_or_else(|| format!("expected FILE@GROUP:CLIENTPORT, got {s:?}"))?;
        let (group, port) = rest
            .split_once(':')
            .ok_or_else(|| format!("expected GROUP:CLIENTPORT after '@', got {rest:?}"))?;
        let group: Ipv4Addr = group
            .parse()
            .map_err(|e| format!("bad group {group:?}: {e}"))?;
        if !group.is_multicast() {
            return Err(format!("{group} is not a multicast address"));
        }
        let client_port = port
            .parse()
            .map_err(|e| format!("bad port {port:?}: {e}"))?;
        if file.is_empty() {
            return Err("empty file name".into());
        }
        Ok(MtftpFile {
            file: file.to_owned(),
            group,
            client_port,
        })
    }
}

/// The RFC 2090 group pool (`--multicast-groups CIDR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupPool {
    base: u32,
    len: u32,
}

impl std::str::FromStr for GroupPool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, bits) = s.split_once('/').unwrap_or((s, "32"));
        let a: Ipv4Addr = a.parse().map_err(|e| format!("bad address {a:?}: {e}"))?;
        let bits: u32 = bits
            .parse()
            .map_err(|e| format!("bad prefix {bits:?}: {e}"))?;
        if !(4..=32).contains(&bits) || !a.is_multicast() {
            return Err(format!("{s} is not a multicast range (224.0.0.0/4)"));
        }
        let len = 1u32 << (32 - bits);
        Ok(GroupPool {
            base: u32::from(a) & !(len - 1),
            len,
        })
    }
}

impl GroupPool {
    fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + (i % self.len))
    }
}

/// Settings of the multicast service.
#[derive(Clone, Debug)]
pub struct McConfig {
    pub mtftp: Vec<MtftpFile>,
    /// PXE MTFTP server port (PXE default 1759).
    pub mtftp_port: u16,
    /// RFC 2090 groups; `None`: RFC 2090 disabled.
    pub groups: Option<GroupPool>,
    /// RFC 2090 client (group) port announced in OACKs.
    pub multicast_port: u16,
    pub ttl: u32,
    /// Outgoing interface address for multicast (`IP_MULTICAST_IF`); `None`: the routing table's.
    pub interface: Option<Ipv4Addr>,
    /// Deliver our multicast to listeners on this host too (`IP_MULTICAST_LOOP`).
    pub loopback: bool,
    /// Payload bytes per second per session.
    pub rate: u64,
    /// Blocks between master ACKs.
    pub window: u16,
    pub timeout: Duration,
    pub retries: u32,
    /// IPv4 addresses to bind the MTFTP port on.
    pub listen: Vec<Ipv4Addr>,
}

impl McConfig {
    /// True when any multicast protocol is configured.
    pub fn enabled(&self) -> bool {
        !self.mtftp.is_empty() || self.groups.is_some()
    }
}

/// An RFC 2090 request accepted by a unicast worker.
pub struct McJoin {
    pub client: SocketAddr,
    /// The address the request was sent to (the session answers from it).
    pub local: IpAddr,
    pub content: Arc<Content>,
    /// Negotiated block size (never more than the client asked).
    pub blksize: BlockSize,
    pub tsize: bool,
}

/// Where workers send RFC 2090 requests.
#[derive(Clone)]
pub struct McHandle {
    tx: Sender<McJoin>,
    wake: Arc<OwnedFd>,
}

impl McHandle {
    /// Hand a request over; `false` when the service is saturated (the worker then serves it by
    /// unicast).
    pub fn submit(&self, j: McJoin) -> bool {
        match self.tx.try_send(j) {
            Ok(()) => {
                let one: u64 = 1;
                // SAFETY: 8 bytes to our eventfd.
                unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

struct Running {
    session: Session,
    sock: UdpSocket,
    content: Arc<Content>,
    /// Destination of `Dest::Group`.
    group: SocketAddr,
    /// Pool slot (RFC 2090) to give back.
    slot: Option<u32>,
    key: Key,
    started: Instant,
    /// Ended by a send error (file truncated).
    failed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Mtftp(usize),
    Rfc2090 { content: usize, blksize: u16 },
}

const TOKEN_SHUTDOWN: u64 = u64::MAX;
const TOKEN_WAKE: u64 = u64::MAX - 1;
const TOKEN_MTFTP: u64 = 1 << 62;

/// Bind the MTFTP sockets and start the service thread.
pub fn spawn(
    cfg: McConfig,
    store: Arc<Store>,
    shutdown: Arc<Shutdown>,
) -> io::Result<(McHandle, JoinHandle<()>)> {
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
    let (tx, rx) = channel::bounded(1024);
    let wake = Arc::new(sys::eventfd()?);
    let handle = McHandle {
        tx,
        wake: wake.clone(),
    };
    for f in &cfg.mtftp {
        info!(file = %f.file, group = %f.group, client_port = f.client_port, port = cfg.mtftp_port, "PXE MTFTP enabled");
    }
    if let Some(g) = cfg.groups {
        info!(groups = %format!("{}/{}", g.nth(0), 32 - g.len.trailing_zeros()), port = cfg.multicast_port, "RFC 2090 multicast enabled");
    }
    let thread = std::thread::Builder::new()
        .name("ringboot-mcast".into())
        .spawn(move || {
            let mut svc = Service {
                cfg,
                store,
                rx,
                wake,
                listeners,
                sessions: HashMap::new(),
                next_token: 0,
                slots_used: Vec::new(),
                buf: vec![0u8; 2048],
            };
            if let Err(e) = svc.run(&shutdown) {
                warn!(error = %e, "multicast service stopped");
            }
        })?;
    Ok((handle, thread))
}

struct Service {
    cfg: McConfig,
    store: Arc<Store>,
    rx: Receiver<McJoin>,
    wake: Arc<OwnedFd>,
    listeners: Vec<UdpSocket>,
    sessions: HashMap<u64, Running>,
    next_token: u64,
    slots_used: Vec<u32>,
    buf: Vec<u8>,
}

fn epoll_add(ep: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: valid epoll fd and event.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Service {
    fn run(&mut self, shutdown: &Shutdown) -> io::Result<()> {
        // SAFETY: plain syscall; the fd is owned below.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ep is a fresh fd we own.
        let ep_owned: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(ep) };
        epoll_add(ep, shutdown.fd(), TOKEN_SHUTDOWN)?;
        epoll_add(ep, self.wake.as_raw_fd(), TOKEN_WAKE)?;
        for (i, l) in self.listeners.iter().enumerate() {
            epoll_add(ep, l.as_raw_fd(), TOKEN_MTFTP + i as u64)?;
        }
        // SAFETY: zeroed epoll_event is valid.
        let mut events: [libc::epoll_event; 64] = unsafe { zeroed() };
        while !shutdown.is_triggered() {
            let now = Instant::now();
            let wait_ms = self
                .sessions
                .values()
                .filter_map(|r| r.session.poll_timeout())
                .min()
                .map(|d| {
                    let d = d.saturating_duration_since(now);
                    // Round up so a deadline is never polled early in a busy loop.
                    (d.as_micros().div_ceil(1000)).min(1000) as i32
                })
                .unwrap_or(1000);
            // SAFETY: events buffer is valid for 64 entries.
            let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 64, wait_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let token = ev.u64;
                match token {
                    TOKEN_SHUTDOWN => {}
                    TOKEN_WAKE => {
                        let mut v = 0u64;
                        // SAFETY: reading 8 bytes from our eventfd.
                        unsafe {
                            libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8)
                        };
                        while let Ok(j) = self.rx.try_recv() {
                            self.join_rfc2090(ep, j);
                        }
                    }
                    t if t >= TOKEN_MTFTP => self.mtftp_readable(ep, (t - TOKEN_MTFTP) as usize),
                    t => self.session_readable(t),
                }
            }
            let now = Instant::now();
            let tokens: Vec<u64> = self.sessions.keys().copied().collect();
            for t in tokens {
                self.drive(t, now);
            }
        }
        drop(ep_owned);
        Ok(())
    }

    fn session_socket(&self, local: IpAddr) -> io::Result<UdpSocket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM.nonblocking().cloexec(), None)?;
        s.set_multicast_ttl_v4(self.cfg.ttl)?;
        s.set_multicast_loop_v4(self.cfg.loopback)?;
        if let Some(i) = self.cfg.interface {
            s.set_multicast_if_v4(&i)?;
        }
        let _ = s.set_send_buffer_size(1 << 20);
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
        blksize: u16,
        len: u64,
        group: SocketAddr,
        tsize: bool,
    ) -> SessionConfig {
        SessionConfig {
            protocol,
            blksize,
            content_len: len,
            group,
            window: self.cfg.window,
            rate: self.cfg.rate,
            timeout: self.cfg.timeout,
            retries: self.cfg.retries,
            tsize_in_oack: tsize,
        }
    }

    fn add_session(&mut self, ep: RawFd, r: Running) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = epoll_add(ep, r.sock.as_raw_fd(), token) {
            warn!(error = %e, "cannot watch a multicast session socket");
            return None;
        }
        info!(
            protocol = ?r.session.config().protocol,
            file = %r.content.display_path(),
            group = %r.group,
            blksize = r.session.config().blksize,
            "multicast session started"
        );
        self.sessions.insert(token, r);
        Some(token)
    }

    fn join_rfc2090(&mut self, ep: RawFd, j: McJoin) {
        let key = Key::Rfc2090 {
            content: Arc::as_ptr(&j.content) as usize,
            blksize: j.blksize.get(),
        };
        let now = Instant::now();
        let existing = self
            .sessions
            .iter()
            .find(|(_, r)| r.key == key && !r.session.is_over())
            .map(|(t, _)| *t);
        let token = match existing {
            Some(t) => t,
            None => {
                let Some(pool) = self.cfg.groups else { return };
                let Some(slot) = (0..pool.len.min(4096)).find(|s| !self.slots_used.contains(s))
                else {
                    warn!(client = %j.client, "no free multicast group in the pool; request dropped");
                    return;
                };
                let group = SocketAddr::from((pool.nth(slot), self.cfg.multicast_port));
                let sock = match self.session_socket(j.local) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "cannot open a multicast session socket");
                        return;
                    }
                };
                let cfg = self.session_config(
                    Protocol::Rfc2090,
                    j.blksize.get(),
                    j.content.len(),
                    group,
                    j.tsize,
                );
                self.slots_used.push(slot);
                let r = Running {
                    session: Session::new(cfg, now),
                    sock,
                    content: j.content.clone(),
                    group,
                    slot: Some(slot),
                    key,
                    started: now,
                    failed: false,
                };
                match self.add_session(ep, r) {
                    Some(t) => t,
                    None => {
                        self.slots_used.retain(|s| *s != slot);
                        return;
                    }
                }
            }
        };
        if let Some(r) = self.sessions.get_mut(&token) {
            if r.session.join(j.client, now).is_ok() {
                info!(client = %j.client, file = %r.content.display_path(), group = %r.group, members = r.session.members(), "multicast member joined");
            }
        }
    }

    fn mtftp_readable(&mut self, ep: RawFd, i: usize) {
        loop {
            let (n, from) = match self.listeners[i].recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "MTFTP receive failed");
                    return;
                }
            };
            let local = self.listeners[i]
                .local_addr()
                .map(|a| a.ip())
                .unwrap_or(Ipv4Addr::UNSPECIFIED.into());
            let req = match Packet::parse(&self.buf[..n]) {
                Ok(Packet::Rrq(r)) if r.mode == Mode::Octet || r.mode == Mode::Netascii => r,
                _ => {
                    debug!(client = %from, "non-RRQ on the MTFTP port dropped");
                    continue;
                }
            };
            let name = String::from_utf8_lossy(req.filename).into_owned();
            let content = match self.store.lookup(req.filename, Mode::Octet) {
                Ok(c) => c,
                Err(e) => {
                    info!(client = %from, file = %name, reason = %e, "MTFTP open refused");
                    let mut out = [0u8; 256];
                    let len = emit_error(&mut out, e.error_code(), &e.to_string());
                    let _ = self.listeners[i].send_to(&out[..len], from);
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
                info!(client = %from, file = %name, "MTFTP open for a file without MTFTP settings refused");
                let mut out = [0u8; 128];
                let len = emit_error(&mut out, ErrorCode::FileNotFound, "no MTFTP for this file");
                let _ = self.listeners[i].send_to(&out[..len], from);
                continue;
            };
            let now = Instant::now();
            let key = Key::Mtftp(which);
            let existing = self
                .sessions
                .iter()
                .find(|(_, r)| r.key == key && !r.session.is_over())
                .map(|(t, _)| *t);
            let token = match existing {
                Some(t) => t,
                None => {
                    let f = &self.cfg.mtftp[which];
                    let group = SocketAddr::from((f.group, f.client_port));
                    let sock = match self.session_socket(local) {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(error = %e, "cannot open a multicast session socket");
                            continue;
                        }
                    };
                    let cfg =
                        self.session_config(Protocol::PxeMtftp, 512, content.len(), group, false);
                    let r = Running {
                        session: Session::new(cfg, now),
                        sock,
                        content,
                        group,
                        slot: None,
                        key,
                        started: now,
                        failed: false,
                    };
                    match self.add_session(ep, r) {
                        Some(t) => t,
                        None => continue,
                    }
                }
            };
            if let Some(r) = self.sessions.get_mut(&token) {
                match r.session.join(from, now) {
                    Ok(()) => {
                        info!(client = %from, file = %r.content.display_path(), group = %r.group, "MTFTP open: client is master")
                    }
                    Err(e) => {
                        debug!(client = %from, file = %r.content.display_path(), reason = ?e, "MTFTP open while a session runs: the client listens")
                    }
                }
            }
        }
    }

    fn session_readable(&mut self, token: u64) {
        let Some(r) = self.sessions.get_mut(&token) else {
            return;
        };
        loop {
            match r.sock.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let before = (r.session.master(), r.session.stats());
                    r.session
                        .handle_datagram(from, &self.buf[..n], Instant::now());
                    log_changes(r, before);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "multicast session receive failed");
                    return;
                }
            }
        }
    }

    fn drive(&mut self, token: u64, now: Instant) {
        let Some(r) = self.sessions.get_mut(&token) else {
            return;
        };
        let before = (r.session.master(), r.session.stats());
        r.session.handle_timeout(now);
        log_changes(r, before);
        let mut ctrl = [0u8; 512];
        while let Some(tx) = r.session.poll_transmit(now, &mut ctrl) {
            match tx {
                McTransmit::Datagram { dest, len } => {
                    let to = dest_addr(dest, r.group);
                    if let Err(e) = r.sock.send_to(&ctrl[..len], to) {
                        debug!(error = %e, to = %to, "multicast control send failed");
                    }
                }
                McTransmit::Blocks { dest, first, count } => {
                    let to = SockAddr::from(dest_addr(dest, r.group));
                    // Held across the synchronous sends: a lease break waits for them.
                    if !r.content.begin_send() {
                        warn!(file = %r.content.display_path(), "file changed on the server while multicast; session ended");
                        r.failed = true;
                        break;
                    }
                    let bytes = r.content.bytes();
                    for i in first..first + count as u64 {
                        let (off, len) = r.session.block_range(i);
                        let hdr = data_header(BlockNum::from_index(i));
                        let payload = &bytes[off as usize..off as usize + len];
                        if let Err(e) = send_block(r.sock.as_raw_fd(), &hdr, payload, &to) {
                            if e.raw_os_error() == Some(libc::EFAULT) {
                                // The mapped file was truncated under us.
                                warn!(file = %r.content.display_path(), "file changed on the server while multicast; session ended");
                                r.failed = true;
                                break;
                            }
                            // Lost like any datagram: the master's ACKs bring it back.
                            debug!(error = %e, "multicast block send failed");
                            break;
                        }
                    }
                    r.content.end_send();
                }
            }
        }
        if r.session.is_over() || r.failed || r.content.is_revoked() {
            let r = self.sessions.remove(&token).expect("present");
            let st = r.session.stats();
            info!(
                protocol = ?r.session.config().protocol,
                file = %r.content.display_path(),
                group = %r.group,
                members = st.members_joined,
                done = st.members_done,
                vanished = st.members_vanished,
                master_changes = st.master_changes,
                blocks_sent = st.blocks_sent,
                bytes_sent = st.bytes_sent,
                file_bytes = r.content.len(),
                resent = st.blocks_resent,
                timeouts = st.timeouts,
                duration_ms = r.started.elapsed().as_millis() as u64,
                "multicast session finished"
            );
            if let Some(slot) = r.slot {
                self.slots_used.retain(|s| *s != slot);
            }
        }
    }
}

fn dest_addr(dest: Dest, group: SocketAddr) -> SocketAddr {
    match dest {
        Dest::Group => group,
        Dest::Member(a) => a,
    }
}

fn log_changes(r: &Running, before: (Option<SocketAddr>, crate::proto::multicast::SessionStats)) {
    let st = r.session.stats();
    if st.members_vanished > before.1.members_vanished {
        info!(file = %r.content.display_path(), group = %r.group, "multicast member vanished (silent past the retry budget)");
    }
    if r.session.master() != before.0 {
        if let Some(m) = r.session.master() {
            info!(file = %r.content.display_path(), group = %r.group, master = %m, "multicast master changed");
        }
    }
}

/// One DATA block: header and file slice as two iovecs, never copied together.
fn send_block(fd: RawFd, hdr: &[u8; 4], payload: &[u8], to: &SockAddr) -> io::Result<()> {
    let mut iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: 4,
        },
        libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        },
    ];
    // SAFETY: all pointers refer to live data for the duration of the call.
    let r = unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = to.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = to.len();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = if payload.is_empty() { 1 } else { 2 };
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cli_values() {
        let f: MtftpFile = "boot/x.wim@239.255.1.1:3001".parse().unwrap();
        assert_eq!(f.file, "boot/x.wim");
        assert_eq!(f.group, Ipv4Addr::new(239, 255, 1, 1));
        assert_eq!(f.client_port, 3001);
        assert!("x@10.0.0.1:3001".parse::<MtftpFile>().is_err());
        assert!("x@239.1.1.1".parse::<MtftpFile>().is_err());
        let p: GroupPool = "239.255.7.0/24".parse().unwrap();
        assert_eq!(p.nth(0), Ipv4Addr::new(239, 255, 7, 0));
        assert_eq!(p.nth(257), Ipv4Addr::new(239, 255, 7, 1));
        assert!("10.0.0.0/8".parse::<GroupPool>().is_err());
    }
}
