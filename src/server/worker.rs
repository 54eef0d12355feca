//! The per-worker core shared by both I/O backends: requests, the transfer table, timers, sends.
//!
//! Contract:
//! - A [`Core`] belongs to one worker thread. It owns the worker's listening sockets (for replies
//!   and MTU queries), its transfers (each with its own connected socket, [`Transfer`] state machine,
//!   `Arc<Content>` and preallocated [`TxBufs`]) and a min-heap of timer deadlines. It performs no
//!   waiting and receives nothing itself: a backend feeds it what arrived ([`Core::on_request`],
//!   [`Core::on_transfer_datagram`], [`Core::on_transfer_error`], [`Core::on_send_complete`]) and
//!   calls [`Core::run_timers`] before waiting until [`Core::next_deadline`].
//! - Everything the core asks of the I/O goes through the small [`Driver`] trait: start and stop
//!   receiving on a transfer socket, and send the `sendmsg` calls of one window. A synchronous
//!   driver (epoll) reports the result at once; an asynchronous one (io_uring) reports each call's
//!   completion later through `on_send_complete`. Control datagrams (OACK, ERROR) and refusals are
//!   rare and are sent directly with a nonblocking `send`.
//! - After every input to a transfer, the core drains `poll_transmit`, makes sure the timer heap has
//!   an entry at or before the transfer's `poll_timeout()` (entries are lazily deleted: a popped entry
//!   that no longer matches is dropped or re-queued at the current deadline), and when the transfer
//!   is over logs one line and closes its socket. The transfer's memory is kept until the driver has
//!   no send of it in flight.
//! - No allocation per datagram: receive buffers belong to the backend, send buffers to the
//!   transfer, and the timer heap and maps only grow with the number of transfers.

use super::send::TxBufs;
use super::sys::{self, PktInfo, PortRange, TransferSocketError};
use crate::proto::options::{blksize_for_mtu, negotiate, IpVersion, Limits, RequestOptions};
use crate::proto::packet::{emit_error, ErrorCode, Mode, Packet, Request};
use crate::proto::transfer::{Outcome, Transfer, TransferConfig, Transmit};
use crate::store::Store;
use socket2::Socket;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::{self, Write as _};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, trace, warn};

/// What every worker shares, read-only.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub limits: Limits,
    pub min_rto: Duration,
    pub port_range: Option<PortRange>,
    /// The multicast service, when RFC 2090 is enabled: requests with the `multicast` option go there.
    pub multicast: Option<super::mcast::McHandle>,
}

/// A transfer's place in the worker's table; `gen` tells a reused slot from its previous owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotId {
    pub idx: u32,
    pub gen: u16,
}

/// What a [`Driver`] did with the calls of one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendStatus {
    /// All calls were made; `Some((call, errno))` is the first that failed (the rest were not made).
    Done(Option<(usize, i32)>),
    /// This many calls were queued; each completion comes back through [`Core::on_send_complete`].
    InFlight(u32),
}

/// The I/O a backend provides to the core.
pub(crate) trait Driver {
    /// Start receiving on a new transfer socket.
    fn watch(&mut self, id: SlotId, fd: RawFd) -> io::Result<()>;
    /// Stop receiving on a transfer socket and close it (possibly after pending submissions).
    fn unwatch(&mut self, id: SlotId, sock: Socket);
    /// Send the calls of one window on connected socket `fd`. The `mmsghdr`s (and what they point
    /// to) stay valid until every call has completed.
    fn send(&mut self, id: SlotId, fd: RawFd, msgs: &mut [libc::mmsghdr]) -> SendStatus;
}

/// A listening socket of this worker.
pub(crate) struct Listener {
    pub sock: Socket,
    pub addr: SocketAddr,
}

const FILE_CHANGED: &str = "file changed on the server while being sent";
const READ_ONLY: &str = "ringboot is a read-only server";
/// How long an interface MTU stays cached.
const MTU_CACHE_TTL: Duration = Duration::from_secs(60);

struct Conn {
    transfer: Transfer,
    content: Arc<crate::store::Content>,
    /// `None` once closed (the slot lingers while sends are in flight).
    sock: Option<Socket>,
    peer: SocketAddr,
    /// The request datagram, to tell a retransmitted RRQ (identical bytes) from a new one sent
    /// from the same port (a firmware's real request after its size probe).
    request: Box<[u8]>,
    started: Instant,
    /// The earliest of this transfer's entries in the timer heap. A deadline that moves later
    /// pushes nothing: when this entry pops, it is re-queued at the transfer's current deadline.
    /// So the heap holds a few entries per transfer, not one per window sent.
    queued: Option<Instant>,
    tx: TxBufs,
    /// GSO allowed for this transfer (cleared when the path refuses it).
    gso: bool,
    /// Calls of the current window not yet completed (asynchronous drivers).
    in_flight: u32,
    /// First failed call of the window in flight.
    send_failure: Option<(usize, i32)>,
    /// A window polled while another was in flight: sent when it completes (the newest wins).
    pending: Option<(u64, u32)>,
    /// Blocks to send again at once, one datagram each, after GSO failed.
    redo: Option<(u64, u32)>,
    /// Why the server ended it, for the log line.
    reason: Option<&'static str>,
    closed: bool,
}

struct Slot {
    gen: u16,
    conn: Option<Box<Conn>>,
}

/// Rate limiter for warnings about floods of bad datagrams: at most one line per second.
struct FloodLog {
    count: u64,
    last_warn: Option<Instant>,
}

impl FloodLog {
    /// Count one event; `Some(n)` when a warning summarising `n` events is due.
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        match self.last_warn {
            Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => None,
            _ => {
                self.last_warn = Some(now);
                Some(std::mem::take(&mut self.count))
            }
        }
    }
}

/// A fixed buffer that formats without allocating, cutting what does not fit.
struct FmtBuf {
    buf: [u8; 256],
    len: usize,
}

impl FmtBuf {
    fn new() -> Self {
        FmtBuf {
            buf: [0; 256],
            len: 0,
        }
    }
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for FmtBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut tmp = [0u8; 4];
            let e = c.encode_utf8(&mut tmp).as_bytes();
            if self.len + e.len() > self.buf.len() {
                break;
            }
            self.buf[self.len..self.len + e.len()].copy_from_slice(e);
            self.len += e.len();
        }
        Ok(())
    }
}

/// The per-worker core. See the module docs.
pub(crate) struct Core {
    worker: usize,
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_peer: HashMap<SocketAddr, SlotId>,
    timers: BinaryHeap<Reverse<(Instant, u32, u16)>>,
    mtu_cache: HashMap<u32, (Option<u32>, Instant)>,
    gso: bool,
    port_cursor: u32,
    malformed: FloodLog,
    reply: [u8; 516],
}

impl Core {
    pub(crate) fn new(
        worker: usize,
        shared: Arc<Shared>,
        listeners: Vec<Listener>,
        gso: bool,
    ) -> Self {
        let port_cursor = match shared.port_range {
            // Spread workers over the range so they rarely collide.
            Some(r) => (worker as u32).wrapping_mul(r.size() / 16 + 1),
            None => 0,
        };
        Core {
            worker,
            shared,
            listeners,
            slots: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            timers: BinaryHeap::new(),
            mtu_cache: HashMap::new(),
            gso,
            port_cursor,
            malformed: FloodLog {
                count: 0,
                last_warn: None,
            },
            reply: [0; 516],
        }
    }

    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    pub(crate) fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    fn conn_mut(&mut self, id: SlotId) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(id.idx as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        slot.conn.as_deref_mut()
    }

    /// The transfer exists and is not closed: its socket's events are wanted.
    pub(crate) fn is_live(&self, id: SlotId) -> bool {
        self.fd_of(id).is_some()
    }

    /// The socket of a live transfer.
    pub(crate) fn fd_of(&self, id: SlotId) -> Option<RawFd> {
        let slot = self.slots.get(id.idx as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        let conn = slot.conn.as_deref()?;
        conn.sock.as_ref().map(|s| s.as_raw_fd())
    }

    /// Any transfer (closed or not) still has sends in flight.
    pub(crate) fn sends_in_flight(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.conn.as_ref().is_some_and(|c| c.in_flight > 0))
    }

    /// The earliest timer entry (possibly stale or postponed: waking for it is harmless).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Fire every transfer timer due at `now`.
    pub(crate) fn run_timers(&mut self, now: Instant, drv: &mut impl Driver) {
        while let Some(&Reverse((t, idx, gen))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let id = SlotId { idx, gen };
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            if conn.closed || conn.queued != Some(t) {
                continue;
            }
            conn.queued = None;
            match conn.transfer.poll_timeout() {
                Some(d) if d <= now => {
                    conn.transfer.handle_timeout(now);
                    self.drive(id, now, drv);
                }
                Some(d) => {
                    conn.queued = Some(d);
                    self.timers.push(Reverse((d, idx, gen)));
                }
                None => {}
            }
        }
    }

    fn note_malformed(&mut self, peer: Option<SocketAddr>, what: &dyn fmt::Display, now: Instant) {
        debug!(worker = self.worker, client = ?peer, error = %what, "malformed datagram on the listening port");
        if let Some(n) = self.malformed.note(now) {
            warn!(
                worker = self.worker,
                count = n,
                "malformed datagrams on the listening port (at most one report a second; details at debug)"
            );
        }
    }

    fn reply_error(
        &mut self,
        li: usize,
        peer: &SocketAddr,
        info: Option<&PktInfo>,
        code: ErrorCode,
        msg: &str,
    ) {
        let Some(l) = self.listeners.get(li) else {
            return;
        };
        let n = emit_error(&mut self.reply, code, msg);
        if let Err(e) = sys::send_from(l.sock.as_raw_fd(), &self.reply[..n], peer, info) {
            debug!(client = %peer, error = %e, "could not send ERROR");
        }
    }

    /// A datagram arrived on listening socket `li` from `peer`, addressed to `info.local`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_request(
        &mut self,
        li: usize,
        data: &[u8],
        truncated: bool,
        peer: Option<SocketAddr>,
        info: Option<PktInfo>,
        now: Instant,
        drv: &mut impl Driver,
    ) {
        let Some(peer) = peer else {
            self.note_malformed(None, &"no source address", now);
            return;
        };
        let is_request = matches!(data, [0, 1 | 2, ..]);
        if truncated {
            self.note_malformed(Some(peer), &"datagram larger than the receive buffer", now);
            if is_request {
                self.reply_error(
                    li,
                    &peer,
                    info.as_ref(),
                    ErrorCode::IllegalOperation,
                    "request too large",
                );
            }
            return;
        }
        let req = match Packet::parse(data) {
            Ok(Packet::Rrq(r)) => r,
            Ok(Packet::Wrq(r)) => {
                self.reply_error(
                    li,
                    &peer,
                    info.as_ref(),
                    ErrorCode::AccessViolation,
                    READ_ONLY,
                );
                info!(client = %peer, file = %r.filename.escape_ascii(), reason = READ_ONLY, "write request refused");
                return;
            }
            Ok(other) => {
                let mut m = FmtBuf::new();
                let _ = write!(m, "unexpected {:?} packet", other.opcode());
                self.note_malformed(Some(peer), &m.as_str(), now);
                return;
            }
            Err(e) => {
                if is_request {
                    let mut m = FmtBuf::new();
                    let _ = write!(m, "{e}");
                    self.reply_error(
                        li,
                        &peer,
                        info.as_ref(),
                        ErrorCode::IllegalOperation,
                        m.as_str(),
                    );
                }
                self.note_malformed(Some(peer), &e, now);
                return;
            }
        };
        self.on_rrq(li, data, req, peer, info, now, drv);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_rrq(
        &mut self,
        li: usize,
        raw: &[u8],
        req: Request<'_>,
        peer: SocketAddr,
        info: Option<PktInfo>,
        now: Instant,
        drv: &mut impl Driver,
    ) {
        if let Some(&old) = self.by_peer.get(&peer) {
            if let Some(conn) = self.conn_mut(old) {
                if !conn.closed && *conn.request == *raw {
                    // A retransmitted RRQ: the client has seen nothing of our answer yet. The
                    // transfer resends its OACK or first block (rate-limited), not a new transfer.
                    trace!(client = %peer, "duplicate request");
                    conn.transfer.handle_duplicate_request(now);
                    self.drive(old, now, drv);
                    return;
                }
                if !conn.closed {
                    // Same client port, another request: the client has moved on (for example
                    // its ERROR ending a size probe is still queued behind this RRQ).
                    conn.reason = Some("superseded by a new request from the same client port");
                    self.close(old, now, drv);
                }
            }
        }
        let content = match self.shared.store.lookup(req.filename, req.mode) {
            Ok(c) => c,
            Err(e) => {
                let mut m = FmtBuf::new();
                let _ = write!(m, "{e}");
                self.reply_error(li, &peer, info.as_ref(), e.error_code(), m.as_str());
                info!(client = %peer, file = %req.filename.escape_ascii(), code = e.error_code().as_u16(), reason = %e, "request refused");
                return;
            }
        };
        let Some(listener) = self.listeners.get(li) else {
            return;
        };
        let listen_fd = listener.sock.as_raw_fd();
        let local = info.map_or(listener.addr.ip(), |i| i.local);
        let ifindex = info.map_or(0, |i| i.ifindex);
        let opts = RequestOptions::parse(&req.options);
        let mtu = self.mtu(ifindex, listen_fd, now);
        let ipv = if peer.is_ipv4() {
            IpVersion::V4
        } else {
            IpVersion::V6
        };
        let limits = self.shared.limits;
        let negotiated = negotiate(
            &opts,
            &limits,
            mtu.map(|m| blksize_for_mtu(m, ipv)),
            content.len(),
        );
        if opts.multicast && req.mode == Mode::Octet && peer.is_ipv4() {
            if let Some(mc) = &self.shared.multicast {
                let join = super::mcast::McJoin {
                    client: peer,
                    local,
                    content: content.clone(),
                    blksize: negotiated.blksize,
                    tsize: opts.tsize,
                };
                if mc.submit(join) {
                    debug!(client = %peer, file = content.display_path(), "request handed to the multicast service");
                    return;
                }
                warn!(client = %peer, file = content.display_path(), "multicast service saturated; serving by unicast");
            }
        }
        let sock = match sys::transfer_socket(
            local,
            ifindex,
            peer,
            self.shared.port_range,
            &mut self.port_cursor,
            limits.allow_fragmentation,
        ) {
            Ok(s) => s,
            Err(e) => {
                let msg = match &e {
                    TransferSocketError::NoFreePort => "no free transfer port",
                    TransferSocketError::Io(_) => "cannot open a transfer socket",
                };
                self.reply_error(li, &peer, info.as_ref(), ErrorCode::NotDefined, msg);
                warn!(client = %peer, file = content.display_path(), error = %e, "request refused");
                return;
            }
        };
        let transfer = Transfer::new(
            TransferConfig {
                negotiated,
                content_len: content.len(),
                max_timeout: limits.timeout,
                min_rto: self.shared.min_rto,
                retries: limits.retries,
            },
            now,
        );
        let blksize = negotiated.blksize.bytes();
        // GSO only where every segment fits the interface unfragmented.
        let hdr = if peer.is_ipv4() { 28 } else { 48 };
        let gso = !matches!(mtu, Some(m) if blksize + 4 + hdr > m as usize);
        let window = (negotiated.windowsize.get() as usize).min(0x7fff);
        let conn = Box::new(Conn {
            transfer,
            content,
            sock: None,
            peer,
            request: raw.into(),
            started: now,
            queued: None,
            tx: TxBufs::new(window),
            gso,
            in_flight: 0,
            send_failure: None,
            pending: None,
            redo: None,
            reason: None,
            closed: false,
        });
        let id = self.insert(conn);
        if let Err(e) = drv.watch(id, sock.as_raw_fd()) {
            warn!(client = %peer, error = %e, "cannot watch a transfer socket; request dropped");
            self.free_slot(id);
            return;
        }
        let worker = self.worker;
        if let Some(c) = self.conn_mut(id) {
            c.sock = Some(sock);
            debug!(
                worker,
                client = %peer,
                file = c.content.display_path(),
                local = %local,
                mode = req.mode.as_str(),
                blksize,
                windowsize = negotiated.windowsize.get(),
                tsize = ?negotiated.tsize,
                mtu = ?mtu,
                "transfer started"
            );
        }
        self.by_peer.insert(peer, id);
        self.drive(id, now, drv);
    }

    fn mtu(&mut self, ifindex: u32, fd: RawFd, now: Instant) -> Option<u32> {
        if ifindex == 0 {
            return None;
        }
        if let Some(&(m, at)) = self.mtu_cache.get(&ifindex) {
            if now.saturating_duration_since(at) < MTU_CACHE_TTL {
                return m;
            }
        }
        let m = match sys::interface_mtu(fd, ifindex) {
            Ok(m) => Some(m),
            Err(e) => {
                debug!(ifindex, error = %e, "cannot read the interface MTU");
                None
            }
        };
        self.mtu_cache.insert(ifindex, (m, now));
        m
    }

    fn insert(&mut self, conn: Box<Conn>) -> SlotId {
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.slots[idx as usize];
            slot.conn = Some(conn);
            SlotId { idx, gen: slot.gen }
        } else {
            let idx = self.slots.len() as u32;
            self.slots.push(Slot {
                gen: 0,
                conn: Some(conn),
            });
            SlotId { idx, gen: 0 }
        }
    }

    fn free_slot(&mut self, id: SlotId) {
        if let Some(slot) = self.slots.get_mut(id.idx as usize) {
            if slot.gen == id.gen && slot.conn.is_some() {
                slot.conn = None;
                slot.gen = slot.gen.wrapping_add(1);
                self.free.push(id.idx);
            }
        }
    }

    /// A datagram arrived on a transfer socket (connected: it is from the client).
    pub(crate) fn on_transfer_datagram(
        &mut self,
        id: SlotId,
        data: &[u8],
        truncated: bool,
        now: Instant,
        drv: &mut impl Driver,
    ) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closed {
            return;
        }
        if truncated {
            trace!(client = %conn.peer, "oversized datagram on a transfer port dropped");
            return;
        }
        conn.transfer.handle_datagram(data, now);
        self.drive(id, now, drv);
    }

    /// Receiving on a transfer socket failed with `errno`.
    pub(crate) fn on_transfer_error(
        &mut self,
        id: SlotId,
        errno: i32,
        now: Instant,
        drv: &mut impl Driver,
    ) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closed {
            return;
        }
        match errno {
            libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN => {
                // ICMP unreachable: the client is gone.
                conn.reason = Some("client port unreachable");
                conn.transfer
                    .abort(ErrorCode::NotDefined, "client port unreachable");
                self.drive(id, now, drv);
            }
            e => {
                debug!(client = %conn.peer, error = %io::Error::from_raw_os_error(e), "receive error on a transfer socket");
            }
        }
    }

    /// One call of a window queued by an asynchronous driver completed with `res` (bytes or -errno).
    pub(crate) fn on_send_complete(
        &mut self,
        id: SlotId,
        call: usize,
        res: i32,
        now: Instant,
        drv: &mut impl Driver,
    ) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let was = conn.in_flight;
        conn.in_flight = was.saturating_sub(1);
        if was == 1 {
            // The window's last completion: the kernel holds none of the file's bytes any more.
            conn.content.end_send();
        }
        if res < 0 {
            let e = -res;
            let replace = match conn.send_failure {
                None => true,
                Some((c, old)) => e != libc::ECANCELED && (old == libc::ECANCELED || call < c),
            };
            if replace {
                conn.send_failure = Some((call, e));
            }
        }
        if conn.in_flight > 0 {
            return;
        }
        if conn.closed {
            self.free_slot(id);
            return;
        }
        if let Some((call, e)) = conn.send_failure.take() {
            self.on_send_failure(id, call, e);
        }
        self.drive(id, now, drv);
    }

    fn on_send_failure(&mut self, id: SlotId, call: usize, errno: i32) {
        let worker = self.worker;
        let mut disable_worker_gso = false;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let c = conn.tx.call(call);
        let err = io::Error::from_raw_os_error(errno);
        match errno {
            libc::EAGAIN | libc::ENOBUFS | libc::ECANCELED | libc::EINTR => {
                // The rest of the window is lost; the transfer's timer resends it.
                trace!(client = %conn.peer, error = %err, "send queue full; window cut short");
            }
            libc::EIO | libc::EINVAL | libc::EOPNOTSUPP if c.is_some_and(|c| c.gso) => {
                if errno == libc::EINVAL {
                    // The path refuses this segment size; other transfers may be fine.
                    debug!(client = %conn.peer, error = %err, "UDP GSO refused for this transfer; sending one datagram per block");
                    conn.gso = false;
                } else {
                    disable_worker_gso = true;
                }
                if let (Some(c), Some(last)) = (c, conn.tx.last_block()) {
                    conn.redo = Some((c.first, (last + 1 - c.first) as u32));
                }
            }
            libc::EFAULT => {
                conn.reason = Some(FILE_CHANGED);
                conn.transfer.abort(ErrorCode::NotDefined, FILE_CHANGED);
            }
            libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN => {
                conn.reason = Some("client port unreachable");
                conn.transfer
                    .abort(ErrorCode::NotDefined, "client port unreachable");
            }
            libc::EMSGSIZE => {
                conn.reason = Some("block larger than the path MTU");
                conn.transfer
                    .abort(ErrorCode::NotDefined, "block size exceeds the path MTU");
            }
            _ => {
                debug!(client = %conn.peer, error = %err, "send failed; window cut short");
            }
        }
        if disable_worker_gso && self.gso {
            self.gso = false;
            warn!(worker, error = %err, "UDP GSO send failed; this worker sends one datagram per block from now on");
        }
    }

    fn send_blocks(&mut self, id: SlotId, first: u64, count: u32, drv: &mut impl Driver) {
        let gso_worker = self.gso;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Some(fd) = conn.sock.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        // From here until the kernel has copied the bytes, a lease break waits for this send
        // (Content::begin_send): a file rewritten in place never leaks new bytes into it.
        if !conn.content.begin_send() {
            conn.reason = Some(FILE_CHANGED);
            conn.transfer.abort(ErrorCode::NotDefined, FILE_CHANGED);
            return;
        }
        let gso = gso_worker && conn.gso;
        let c: &mut Conn = conn;
        if c.tx
            .build(&c.transfer, c.content.bytes(), first, count, gso)
            .is_none()
        {
            c.content.end_send();
            c.reason = Some("block outside the file");
            c.transfer.abort(
                ErrorCode::NotDefined,
                "internal error: block outside the file",
            );
            return;
        }
        let status = drv.send(id, fd, c.tx.msgs());
        if !matches!(status, SendStatus::InFlight(n) if n > 0) {
            c.content.end_send();
        }
        match status {
            SendStatus::Done(None) => {}
            SendStatus::Done(Some((call, errno))) => self.on_send_failure(id, call, errno),
            SendStatus::InFlight(n) => {
                c.in_flight = n;
                c.send_failure = None;
            }
        }
    }

    /// Drain the transfer's transmits, then close it if it is over, else re-arm its timer.
    fn drive(&mut self, id: SlotId, now: Instant, drv: &mut impl Driver) {
        loop {
            let Some(conn) = self.conn_mut(id) else {
                return;
            };
            if conn.closed {
                return;
            }
            if conn.in_flight == 0 {
                let next = if conn.pending.is_some() {
                    conn.redo = None;
                    conn.pending.take()
                } else {
                    conn.redo.take()
                };
                if let Some((first, count)) = next {
                    self.send_blocks(id, first, count, drv);
                    continue;
                }
            }
            let c: &mut Conn = conn;
            match c.transfer.poll_transmit(now, &mut c.tx.ctrl[..]) {
                None => break,
                Some(Transmit::Datagram(len)) => {
                    if let (Some(s), Some(bytes)) = (&c.sock, c.tx.ctrl.get(..len)) {
                        if let Err(e) = sys::send_connected(s.as_raw_fd(), bytes) {
                            debug!(client = %c.peer, error = %io::Error::from_raw_os_error(e), "control datagram not sent");
                        }
                    }
                }
                Some(Transmit::Blocks { first, count }) => {
                    if c.in_flight > 0 {
                        c.pending = Some((first, count));
                    } else {
                        self.send_blocks(id, first, count, drv);
                    }
                }
            }
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.transfer.outcome().is_some() {
            self.close(id, now, drv);
            return;
        }
        if let Some(d) = conn.transfer.poll_timeout() {
            if !matches!(conn.queued, Some(q) if q <= d) {
                conn.queued = Some(d);
                self.timers.push(Reverse((d, id.idx, id.gen)));
            }
        }
    }

    /// Log the end of a transfer and close its socket; free it once no send is in flight.
    fn close(&mut self, id: SlotId, now: Instant, drv: &mut impl Driver) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closed {
            return;
        }
        conn.closed = true;
        conn.queued = None;
        conn.pending = None;
        conn.redo = None;
        log_end(conn, now);
        let peer = conn.peer;
        let sock = conn.sock.take();
        let in_flight = conn.in_flight;
        if self.by_peer.get(&peer) == Some(&id) {
            self.by_peer.remove(&peer);
        }
        if let Some(s) = sock {
            drv.unwatch(id, s);
        }
        if in_flight == 0 {
            self.free_slot(id);
        }
    }

    /// End every transfer with an ERROR to its client (server shutdown).
    pub(crate) fn shutdown(&mut self, now: Instant, drv: &mut impl Driver) {
        for idx in 0..self.slots.len() {
            let gen = self.slots[idx].gen;
            let id = SlotId {
                idx: idx as u32,
                gen,
            };
            if let Some(conn) = self.conn_mut(id) {
                if !conn.closed {
                    conn.reason = Some("server shutting down");
                    conn.transfer
                        .abort(ErrorCode::NotDefined, "server shutting down");
                    self.drive(id, now, drv);
                }
            }
        }
    }
}

fn log_end(conn: &Conn, now: Instant) {
    let s = conn.transfer.stats();
    let n = conn.transfer.negotiated();
    let duration_ms = now.saturating_duration_since(conn.started).as_millis() as u64;
    let srtt_us = s.srtt.map_or(0, |d| d.as_micros() as u64);
    let file = conn.content.display_path();
    let client = conn.peer;
    let blksize = n.blksize.get();
    let windowsize = n.windowsize.get();
    let bytes = s.bytes_acked;
    let resent = s.blocks_resent;
    let timeouts = s.timeouts;
    macro_rules! line {
        ($lvl:ident, $outcome:expr, $code:expr, $msg:literal) => {
            tracing::$lvl!(
                %client, file, bytes, blksize, windowsize, duration_ms, resent, timeouts, srtt_us,
                outcome = $outcome, code = $code, reason = conn.reason.unwrap_or(""), $msg
            )
        };
    }
    match conn.transfer.outcome() {
        Some(Outcome::Completed) => line!(info, "completed", 0u16, "transfer finished"),
        Some(Outcome::ProbeEnded(c)) => line!(debug, "probe", c.as_u16(), "transfer finished"),
        Some(Outcome::ClientError(c)) => {
            line!(
                info,
                "client-error",
                c.as_u16(),
                "transfer ended by the client"
            )
        }
        Some(Outcome::TimedOut) => line!(warn, "timeout", 0u16, "transfer failed"),
        Some(Outcome::ProtocolViolation) => {
            line!(warn, "protocol-violation", 4u16, "transfer failed")
        }
        Some(Outcome::Aborted(c)) => line!(warn, "aborted", c.as_u16(), "transfer failed"),
        Some(Outcome::Unanswered) => line!(debug, "unanswered", 0u16, "transfer dropped"),
        // Superseded before any data was sent: the end of a size probe whose ERROR came late.
        None if s.blocks_sent == 0 => line!(debug, "superseded", 0u16, "transfer dropped"),
        None => line!(info, "superseded", 0u16, "transfer dropped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_log_reports_once_a_second() {
        let mut f = FloodLog {
            count: 0,
            last_warn: None,
        };
        let t0 = Instant::now();
        assert_eq!(f.note(t0), Some(1));
        for i in 1..100 {
            assert_eq!(f.note(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(f.note(t0 + Duration::from_millis(1001)), Some(100));
    }

    #[test]
    fn fmt_buf_truncates_on_char_boundary() {
        let mut m = FmtBuf::new();
        let long = "é".repeat(200);
        let _ = write!(m, "{long}");
        assert_eq!(m.as_str().len(), 256);
        assert!(m.as_str().chars().all(|c| c == 'é'));
    }
}
