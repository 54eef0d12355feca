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
//!   is over logs one line and stops receiving on its socket.
//! - A transfer's socket is closed (its descriptor number freed for reuse) only when no operation
//!   that names it can still be issued: no send of it in flight (io_uring resolves the descriptor
//!   of a linked send only when it issues it) and its receive ended (the driver says so at once, or
//!   later through [`Core::on_recv_ended`]). Until then the slot keeps the socket, the content and
//!   the send buffers; then they go together, with the transfer's admission [`Ticket`].
//! - New transfers pass admission first: the worker's share of `--max-transfers`, then the
//!   per-client-address caps shared by all workers ([`Admission`]: transfers at once, new
//!   transfers per second). When its share is full, the worker may drop its oldest transfer
//!   whose client never answered (its address unverified, perhaps spoofed) and hand its ticket to
//!   the new request, so a flood of spoofed requests cannot lock out real clients; at most
//!   [`MAX_LINGERING`] dropped transfers may wait for their socket to close, so the descriptor
//!   count stays bounded.
//! - Memory per transfer is bounded: the send buffers hold at most one build of
//!   [`MAX_TX_BLOCKS`](super::send::MAX_TX_BLOCKS) blocks (a larger window goes out in several
//!   builds), the request is kept for duplicate detection (at most one receive buffer), and the
//!   rest is fixed-size: [`transfer_memory_bound`] (15,056 bytes on x86-64 Linux) in all, so
//!   `--max-transfers` x 15 KiB bounds the workers' heap for transfers (59 MiB at the default
//!   4,096; file bytes are never copied). The server logs both figures at start.
//! - Every log line a remote peer can cause once per datagram goes through a [`LogLimit`]: one
//!   line, then a count of the suppressed ones (flushed from the timer).
//! - No allocation per datagram: receive buffers belong to the backend, send buffers to the
//!   transfer, and the timer heap and maps only grow with the number of transfers.

use super::admit::{Admission, Refusal, Ticket};
use super::send::TxBufs;
use super::sys::{self, PktInfo, PortRange, PortRng, TransferSocketError};
use crate::proto::options::{blksize_for_mtu, negotiate, IpVersion, Limits, RequestOptions};
use crate::proto::packet::{emit_error, ErrorCode, Mode, Packet, Request};
use crate::proto::transfer::{Outcome, Transfer, TransferConfig, Transmit, LENGTH_UNKNOWN};
use crate::ratelog::LogLimit;
use crate::store::Store;
use socket2::Socket;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
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
    /// Caps on transfers, shared by every worker.
    pub admission: Arc<Admission>,
    /// Number of workers (each holds its share of `--max-transfers`).
    pub workers: usize,
    /// A fault to inject (tests of the failure handling only).
    pub fault: Option<super::Fault>,
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
    /// Stop receiving on a transfer socket. `true`: no receive names `fd` any more; `false`: one
    /// may still, and the backend calls [`Core::on_recv_ended`] once its last completion is in.
    /// The core keeps the socket open until then (it owns it and closes it afterwards).
    fn unwatch(&mut self, id: SlotId, fd: RawFd) -> bool;
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
const EVICTED: &str =
    "dropped for a new request: server at its transfer cap, client never answered";
/// Transfers dropped to make room ([`Core`] eviction) that may wait at once for their socket to
/// close; beyond this, a request over the cap is refused instead.
pub(crate) const MAX_LINGERING: usize = 16;
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
    /// The rest of a window larger than the send buffers, sent once the build before completes.
    rest: Option<(u64, u32)>,
    /// Why the server ended it, for the log line.
    reason: Option<&'static str>,
    closed: bool,
    /// A receive on the socket may still complete (the socket must stay open).
    recv_armed: bool,
    /// Closed, waiting for its sends or receive to end (counted in `Core::lingering`).
    lingering: bool,
    /// Its place under the admission caps, released when the slot (and socket) goes.
    ticket: Option<Ticket>,
}

struct Slot {
    gen: u16,
    conn: Option<Box<Conn>>,
}

/// Most heap bytes one transfer holds in a worker: its `Conn`, its send buffers, its request
/// (at most one receive buffer), its slot, timer and map entries. File bytes are not counted:
/// they are the store's, shared, and never copied per transfer.
pub(crate) const fn transfer_memory_bound() -> usize {
    std::mem::size_of::<Conn>()
        + TxBufs::heap_bytes(super::send::MAX_TX_BLOCKS)
        + super::epoll::RX_BUF
        + std::mem::size_of::<Slot>()
        + 4 * 64
}

/// The rate limits of the worker's per-datagram log lines (see [`crate::ratelog`]).
struct WorkerLogs {
    malformed: LogLimit,
    refused: LogLimit,
    write: LogLimit,
    over_cap: LogLimit,
    no_socket: LogLimit,
    /// End-of-transfer lines of failed transfers: a few a second, each in full.
    failed: LogLimit,
    /// Transfers dropped because their client never answered, or to make room.
    unanswered: LogLimit,
    /// When the suppressed counts are next reported (set while some are pending).
    flush_at: Option<Instant>,
}

impl WorkerLogs {
    fn new() -> Self {
        WorkerLogs {
            malformed: LogLimit::default(),
            refused: LogLimit::default(),
            write: LogLimit::default(),
            over_cap: LogLimit::default(),
            no_socket: LogLimit::default(),
            failed: LogLimit::new(Duration::from_millis(100)),
            unanswered: LogLimit::new(Duration::from_secs(5)),
            flush_at: None,
        }
    }

    /// Count one event of `which`; `Some(suppressed)` when its line is to be logged now.
    fn allow(&mut self, which: fn(&mut Self) -> &mut LogLimit, now: Instant) -> Option<u64> {
        let r = which(self).allow(now);
        if r.is_none() && self.flush_at.is_none() {
            self.flush_at = Some(now + crate::ratelog::DEFAULT_INTERVAL);
        }
        r
    }

    /// Report the counts of floods that stopped (and come back in a second while some remain).
    fn flush(&mut self, worker: usize, now: Instant) {
        if self.flush_at.is_none_or(|t| t > now) {
            return;
        }
        self.flush_at = None;
        let kinds: [(&str, &mut LogLimit); 7] = [
            (
                "malformed datagrams on the listening port",
                &mut self.malformed,
            ),
            ("requests refused", &mut self.refused),
            ("write requests refused", &mut self.write),
            (
                "requests over the transfer caps refused",
                &mut self.over_cap,
            ),
            (
                "requests refused for want of a transfer socket",
                &mut self.no_socket,
            ),
            ("failed transfers not logged one by one", &mut self.failed),
            (
                "transfers dropped because the client never answered",
                &mut self.unanswered,
            ),
        ];
        let mut pending = false;
        for (what, l) in kinds {
            if let Some(n) = l.flush(now) {
                info!(
                    worker,
                    suppressed = n,
                    "{n} more {what} since the last line of that kind"
                );
            }
            pending |= l.pending() > 0;
        }
        if pending {
            self.flush_at = Some(now + crate::ratelog::DEFAULT_INTERVAL);
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
    port_rng: PortRng,
    logs: WorkerLogs,
    /// This worker's share of `--max-transfers`, and the tickets its slots hold.
    share: usize,
    admitted: usize,
    /// Transfers whose client has not answered yet, oldest first (lazily cleaned: entries that
    /// are gone or answered are skipped; compacted when it grows past twice the slots).
    unverified: VecDeque<SlotId>,
    /// Closed transfers waiting for their sends or receive to end.
    lingering: usize,
    /// Those of them dropped to make room for a new request.
    evicted_lingering: usize,
    /// An error injected by `--fault worker-error`, returned by the backend's loop.
    injected: Option<io::Error>,
    reply: [u8; 516],
}

impl Core {
    pub(crate) fn new(
        worker: usize,
        shared: Arc<Shared>,
        listeners: Vec<Listener>,
        gso: bool,
    ) -> Self {
        let share = shared.admission.config().share(worker, shared.workers);
        Core {
            worker,
            share,
            admitted: 0,
            shared,
            listeners,
            slots: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            timers: BinaryHeap::new(),
            mtu_cache: HashMap::new(),
            gso,
            port_rng: PortRng::new(),
            logs: WorkerLogs::new(),
            unverified: VecDeque::new(),
            lingering: 0,
            evicted_lingering: 0,
            injected: None,
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

    /// The socket of a live (not closed) transfer.
    pub(crate) fn fd_of(&self, id: SlotId) -> Option<RawFd> {
        let slot = self.slots.get(id.idx as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        let conn = slot.conn.as_deref()?;
        if conn.closed {
            return None;
        }
        conn.sock.as_ref().map(|s| s.as_raw_fd())
    }

    /// The error injected by `--fault worker-error`, once.
    pub(crate) fn take_injected_error(&mut self) -> Option<io::Error> {
        self.injected.take()
    }

    /// Any transfer (closed or not) still has sends in flight.
    pub(crate) fn sends_in_flight(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.conn.as_ref().is_some_and(|c| c.in_flight > 0))
    }

    /// The earliest timer entry (possibly stale or postponed: waking for it is harmless), or
    /// the next report of suppressed log lines.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((t, _, _))| *t);
        match (t, self.logs.flush_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fire every transfer timer due at `now` (and report suppressed log lines when due).
    pub(crate) fn run_timers(&mut self, now: Instant, drv: &mut impl Driver) {
        self.logs.flush(self.worker, now);
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
        if let Some(n) = self.logs.allow(|l| &mut l.malformed, now) {
            warn!(
                worker = self.worker,
                client = ?peer,
                error = %what,
                suppressed = n,
                "malformed datagram on the listening port (one line a second; details at debug)"
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
        match self.shared.fault {
            Some(super::Fault::WorkerPanic) => {
                panic!("injected fault (--fault worker-panic) on a request")
            }
            Some(super::Fault::WorkerError) if self.injected.is_none() => {
                self.injected = Some(io::Error::other(
                    "injected fault (--fault worker-error) on a request",
                ));
                return;
            }
            _ => {}
        }
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
                if let Some(n) = self.logs.allow(|l| &mut l.write, now) {
                    info!(client = %peer, file = %r.filename.escape_ascii(), reason = READ_ONLY, suppressed = n, "write request refused");
                }
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
                if let Some(n) = self.logs.allow(|l| &mut l.refused, now) {
                    info!(client = %peer, file = %req.filename.escape_ascii(), code = e.error_code().as_u16(), reason = %e, suppressed = n, "request refused");
                }
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
        let mut negotiated = negotiate(
            &opts,
            &limits,
            mtu.map(|m| blksize_for_mtu(m, ipv)),
            content.len(),
        );
        // netascii is converted as it is sent: its length is unknown, so no tsize (as tftpd-hpa).
        if content.transfer_len().is_none() {
            negotiated.tsize = None;
        }
        if opts.multicast && req.mode == Mode::Octet && peer.is_ipv4() {
            if let Some(mc) = &self.shared.multicast {
                let join = super::mcast::McJoin {
                    client: peer,
                    local,
                    content: content.clone(),
                    blksize: negotiated.blksize,
                    tsize: opts.tsize,
                };
                // Admission is decided here, synchronously: handed over, the service answers
                // (OACK or ERROR); refused (pool, caps, saturation; logged there, rate-limited),
                // this worker serves it as plain unicast, its OACK without `multicast`.
                if mc.submit(join) {
                    return;
                }
            }
        }
        let Some(ticket) = self.admit(li, &peer, info.as_ref(), now, drv) else {
            return;
        };
        let sock = match sys::transfer_socket(
            local,
            ifindex,
            peer,
            self.shared.port_range,
            &mut self.port_rng,
            limits.allow_fragmentation,
        ) {
            Ok(s) => s,
            Err(e) => {
                let msg = match &e {
                    TransferSocketError::NoFreePort => "no free transfer port",
                    TransferSocketError::Io(_) => "cannot open a transfer socket",
                };
                self.reply_error(li, &peer, info.as_ref(), ErrorCode::NotDefined, msg);
                if let Some(n) = self.logs.allow(|l| &mut l.no_socket, now) {
                    warn!(client = %peer, file = content.display_path(), error = %e, suppressed = n, "request refused");
                }
                return;
            }
        };
        let transfer = Transfer::new(
            TransferConfig {
                negotiated,
                content_len: content.transfer_len().unwrap_or(LENGTH_UNKNOWN),
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
            rest: None,
            reason: None,
            closed: false,
            recv_armed: false,
            lingering: false,
            ticket: Some(ticket),
        });
        let id = self.insert(conn);
        if let Err(e) = drv.watch(id, sock.as_raw_fd()) {
            if let Some(n) = self.logs.allow(|l| &mut l.no_socket, now) {
                warn!(client = %peer, error = %e, suppressed = n, "cannot watch a transfer socket; request dropped");
            }
            self.free_slot(id);
            return;
        }
        self.note_unverified(id);
        let worker = self.worker;
        if let Some(c) = self.conn_mut(id) {
            c.sock = Some(sock);
            c.recv_armed = true;
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

    /// Admission of a new transfer from `peer` (see the module docs). `None`: refused, the
    /// client got ERROR 0 saying why.
    fn admit(
        &mut self,
        li: usize,
        peer: &SocketAddr,
        info: Option<&PktInfo>,
        now: Instant,
        drv: &mut impl Driver,
    ) -> Option<Ticket> {
        let adm = self.shared.admission.clone();
        let first = if self.admitted < self.share {
            adm.admit(peer.ip(), now)
        } else {
            Err(Refusal::Busy)
        };
        let refusal = match first {
            Ok(t) => {
                self.admitted += 1;
                return Some(t);
            }
            // The share is full: make room only for a request within its own address's limits.
            Err(Refusal::Busy) => match adm.check(peer.ip(), now) {
                Err(r) => r,
                Ok(()) => match self.evict_unverified(now, drv) {
                    Some(t) => match adm.reassign(t, peer.ip(), now) {
                        Ok(t) => return Some(t),
                        Err((t, r)) => {
                            // The victim is gone already; its place is given back.
                            drop(t);
                            self.admitted -= 1;
                            r
                        }
                    },
                    None => Refusal::Busy,
                },
            },
            Err(r) => r,
        };
        self.reply_error(li, peer, info, ErrorCode::NotDefined, refusal.message());
        if let Some(n) = self.logs.allow(|l| &mut l.over_cap, now) {
            let c = adm.config();
            warn!(
                worker = self.worker,
                client = %peer,
                cause = refusal.as_str(),
                max_transfers = c.max_transfers,
                max_per_client = c.max_per_client,
                client_rate = c.client_rate,
                suppressed = n,
                "request refused: {} (one line a second)",
                refusal.message()
            );
        }
        None
    }

    /// Remember a new transfer as not yet answered; compact the list when it has grown.
    fn note_unverified(&mut self, id: SlotId) {
        self.unverified.push_back(id);
        if self.unverified.len() > 2 * self.slots.len() + 64 {
            let slots = &self.slots;
            self.unverified.retain(|id| {
                slots.get(id.idx as usize).is_some_and(|s| {
                    s.gen == id.gen
                        && s.conn
                            .as_deref()
                            .is_some_and(|c| !c.closed && !c.transfer.is_verified())
                })
            });
        }
    }

    /// Drop this worker's oldest transfer whose client never answered, to make room for a new
    /// request, and return its ticket (still counted in `admitted`); its slot keeps the socket
    /// until the driver is done with it. `None` when there is none, or when too many dropped
    /// transfers are still waiting for their socket to close.
    fn evict_unverified(&mut self, now: Instant, drv: &mut impl Driver) -> Option<Ticket> {
        if self.evicted_lingering >= MAX_LINGERING {
            return None;
        }
        while let Some(id) = self.unverified.pop_front() {
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            if conn.closed || conn.transfer.is_verified() {
                continue;
            }
            let Some(ticket) = conn.ticket.take() else {
                continue;
            };
            conn.reason = Some(EVICTED);
            self.close(id, now, drv);
            return Some(ticket);
        }
        None
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

    /// Free a slot: its socket is closed, its ticket released.
    fn free_slot(&mut self, id: SlotId) {
        if let Some(slot) = self.slots.get_mut(id.idx as usize) {
            if slot.gen == id.gen {
                if let Some(conn) = slot.conn.take() {
                    slot.gen = slot.gen.wrapping_add(1);
                    self.free.push(id.idx);
                    if conn.ticket.is_some() {
                        self.admitted -= 1;
                    }
                    if conn.lingering {
                        self.lingering -= 1;
                        if conn.reason == Some(EVICTED) {
                            self.evicted_lingering -= 1;
                        }
                    }
                    drop(conn);
                }
            }
        }
    }

    /// Free a closed transfer once nothing can name its socket any more.
    fn maybe_free(&mut self, id: SlotId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closed && conn.in_flight == 0 && !conn.recv_armed {
            self.free_slot(id);
        } else if conn.closed && !conn.lingering {
            conn.lingering = true;
            let evicted = conn.reason == Some(EVICTED);
            self.lingering += 1;
            if evicted {
                self.evicted_lingering += 1;
            }
        }
    }

    /// The receive on a transfer socket has ended for good (its last completion came in, e.g.
    /// after the cancel that [`Driver::unwatch`] queued). Frees the slot if nothing else is
    /// pending on it.
    pub(crate) fn on_recv_ended(&mut self, id: SlotId) {
        if let Some(conn) = self.conn_mut(id) {
            conn.recv_armed = false;
        }
        self.maybe_free(id);
    }

    /// Closed transfers whose socket is still open, waiting for the driver.
    #[cfg(test)]
    pub(crate) fn lingering(&self) -> usize {
        self.lingering
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
            self.maybe_free(id);
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
        // A window larger than the send buffers goes out in several builds, one after another.
        let cap = c.tx.capacity() as u32;
        let count = if count > cap {
            c.rest = Some((first + cap as u64, count - cap));
            cap
        } else {
            c.rest = None;
            count
        };
        // Octet: laid out from the content; netascii: converted into the transfer's window buffer.
        // Before the last block goes out, the content is checked unchanged (send.rs).
        let built =
            c.tx.build_content(&mut c.transfer, &c.content, first, count, gso);
        // A netascii transfer may learn its end in this build: no later build past it.
        if let Some((f, n)) = c.rest {
            let t = c.transfer.total_blocks();
            c.rest = (f <= t).then(|| (f, n.min((t - f + 1) as u32)));
        }
        if let Err(why) = built {
            c.content.end_send();
            c.reason = Some(why);
            c.transfer.abort(ErrorCode::NotDefined, why);
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
                    conn.rest = None;
                    conn.pending.take()
                } else if conn.redo.is_some() {
                    let redo = conn.redo.take();
                    // The redo covers this build's blocks; what follows them is still due.
                    let rest = conn.rest.take();
                    if let (Some((f, n)), Some((rf, rn))) = (redo, rest) {
                        if f + n as u64 == rf {
                            conn.rest = None;
                            Some((f, n + rn))
                        } else {
                            conn.rest = rest;
                            redo
                        }
                    } else {
                        conn.rest = rest;
                        redo
                    }
                } else {
                    conn.rest.take()
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

    /// Log the end of a transfer and stop receiving on its socket; free the slot (closing the
    /// socket) once no send is in flight and the receive has ended (see the module docs).
    fn close(&mut self, id: SlotId, now: Instant, drv: &mut impl Driver) {
        let worker = self.worker;
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
        conn.rest = None;
        let peer = conn.peer;
        let fd = conn.sock.as_ref().map(|s| s.as_raw_fd());
        if conn.recv_armed {
            if let Some(fd) = fd {
                if drv.unwatch(id, fd) {
                    conn.recv_armed = false;
                }
            } else {
                conn.recv_armed = false;
            }
        }
        let outcome = conn.transfer.outcome();
        // Lines a remote peer can cause at will go through a limiter: quiet drops (an unanswered
        // or evicted transfer: the address may be spoofed) and failures; completions do not.
        let quiet = outcome == Some(Outcome::Unanswered) || conn.reason == Some(EVICTED);
        let failed = match outcome {
            Some(o) => !matches!(o, Outcome::Completed | Outcome::ProbeEnded(_)),
            None => conn.transfer.stats().blocks_sent > 0,
        };
        let limited: Option<fn(&mut WorkerLogs) -> &mut LogLimit> = if quiet {
            Some(|l| &mut l.unanswered)
        } else if failed {
            Some(|l| &mut l.failed)
        } else {
            None
        };
        let logged = match limited {
            None => Some(0),
            Some(which) => self.logs.allow(which, now),
        };
        if let Some(conn) = self.conn_mut(id) {
            log_end(conn, now, quiet || logged.is_none());
        }
        if let (true, Some(n)) = (quiet, logged) {
            info!(
                worker,
                client = %peer,
                suppressed = n,
                "transfer dropped: the client never acknowledged the first reply (gone, or a spoofed address); one line every 5 s, details at debug"
            );
        }
        if self.by_peer.get(&peer) == Some(&id) {
            self.by_peer.remove(&peer);
        }
        self.maybe_free(id);
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

/// The end-of-transfer line; `quiet`: at debug level only.
fn log_end(conn: &Conn, now: Instant, quiet: bool) {
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
    if quiet {
        let outcome = conn.transfer.outcome().map_or("superseded", |o| o.as_str());
        line!(debug, outcome, 0u16, "transfer ended");
        return;
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
    use crate::server::admit::AdmissionConfig;
    use crate::store::StoreOptions;
    use std::net::UdpSocket;

    /// A driver that keeps every send in flight and every receive armed until the test says
    /// otherwise (an io_uring stand-in), or completes them at once (an epoll stand-in).
    struct FakeDriver {
        asynchronous: bool,
        watched: Vec<(SlotId, RawFd)>,
        unwatched: Vec<SlotId>,
        sends: Vec<(SlotId, usize)>,
    }

    impl FakeDriver {
        fn new(asynchronous: bool) -> Self {
            FakeDriver {
                asynchronous,
                watched: Vec::new(),
                unwatched: Vec::new(),
                sends: Vec::new(),
            }
        }
    }

    impl Driver for FakeDriver {
        fn watch(&mut self, id: SlotId, fd: RawFd) -> io::Result<()> {
            self.watched.push((id, fd));
            Ok(())
        }
        fn unwatch(&mut self, id: SlotId, _fd: RawFd) -> bool {
            self.unwatched.push(id);
            !self.asynchronous
        }
        fn send(&mut self, id: SlotId, _fd: RawFd, msgs: &mut [libc::mmsghdr]) -> SendStatus {
            self.sends.push((id, msgs.len()));
            if self.asynchronous {
                SendStatus::InFlight(msgs.len() as u32)
            } else {
                SendStatus::Done(None)
            }
        }
    }

    /// The identity of what `fd` refers to now (device, inode), or `None` if it is closed.
    fn identity(fd: RawFd) -> Option<(u64, u64)> {
        // SAFETY: fstat on any integer is safe; it fails with EBADF when nothing is open.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    }

    struct Rig {
        _dir: tempfile::TempDir,
        core: Core,
    }

    fn rig(adm: AdmissionConfig) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), vec![7u8; 1 << 20]).unwrap();
        let store = Store::new(dir.path(), StoreOptions::default()).unwrap();
        let shared = Arc::new(Shared {
            store,
            limits: Limits::default(),
            min_rto: Duration::from_millis(2),
            port_range: None,
            multicast: None,
            admission: Admission::new(adm),
            workers: 1,
            fault: None,
        });
        let sock = sys::listener_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        let core = Core::new(0, shared, vec![Listener { sock, addr }], true);
        Rig { _dir: dir, core }
    }

    const RRQ: &[u8] = b"\x00\x01a.bin\x00octet\x00blksize\x001468\x00windowsize\x0064\x00";

    fn request(r: &mut Rig, client: &UdpSocket, drv: &mut FakeDriver, now: Instant) {
        let info = PktInfo {
            local: "127.0.0.1".parse().unwrap(),
            ifindex: 0,
        };
        let peer = client.local_addr().unwrap();
        r.core
            .on_request(0, RRQ, false, Some(peer), Some(info), now, drv);
    }

    fn client() -> UdpSocket {
        client_at("127.0.0.1")
    }

    fn client_at(ip: &str) -> UdpSocket {
        let c = UdpSocket::bind((ip, 0)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    /// The core closes a transfer's socket only after every send naming it has completed and its
    /// receive has ended: the descriptor number cannot be reused while a linked send that names
    /// it may still be issued (issue 8, defect 6).
    #[test]
    fn socket_stays_open_until_sends_and_receive_end() {
        let mut r = rig(AdmissionConfig::for_descriptors(100));
        let mut drv = FakeDriver::new(true);
        let c = client();
        let now = Instant::now();
        request(&mut r, &c, &mut drv, now);
        let (id, fd) = drv.watched[0];
        let sock_id = identity(fd).expect("transfer socket open");
        let mut buf = [0u8; 1500];
        let (n, _) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..2], &[0, 6], "OACK first: {:?}", &buf[..n]);
        // ACK 0: one window of 64 blocks goes out as linked calls that stay in flight.
        r.core
            .on_transfer_datagram(id, b"\x00\x04\x00\x00", false, now, &mut drv);
        let calls = drv.sends[0].1;
        assert!(calls >= 2, "a window of 64 x 1468 bytes is several calls");
        // The client aborts mid-window: the transfer is over, but its socket must stay open.
        r.core
            .on_transfer_datagram(id, b"\x00\x05\x00\x00stop\x00", false, now, &mut drv);
        assert_eq!(drv.unwatched, [id]);
        assert!(!r.core.is_live(id));
        assert_eq!(r.core.lingering(), 1);
        assert_eq!(identity(fd), Some(sock_id), "closed with sends in flight");
        for call in 0..calls {
            r.core.on_send_complete(id, call, 1000, now, &mut drv);
        }
        assert_eq!(
            identity(fd),
            Some(sock_id),
            "closed while its receive could still complete"
        );
        r.core.on_recv_ended(id);
        assert_eq!(r.core.lingering(), 0);
        assert_ne!(identity(fd), Some(sock_id), "socket not closed at the end");
        // Stale completions for the freed slot are ignored.
        r.core.on_send_complete(id, 0, 1000, now, &mut drv);
        r.core.on_recv_ended(id);
    }

    /// The other order: the receive ends first, the sends complete later.
    #[test]
    fn socket_closes_after_the_last_send_when_the_receive_ended_first() {
        let mut r = rig(AdmissionConfig::for_descriptors(100));
        let mut drv = FakeDriver::new(true);
        let c = client();
        let now = Instant::now();
        request(&mut r, &c, &mut drv, now);
        let (id, fd) = drv.watched[0];
        let sock_id = identity(fd).unwrap();
        r.core
            .on_transfer_datagram(id, b"\x00\x04\x00\x00", false, now, &mut drv);
        r.core
            .on_transfer_datagram(id, b"\x00\x05\x00\x00stop\x00", false, now, &mut drv);
        r.core.on_recv_ended(id);
        let calls = drv.sends[0].1;
        for call in 0..calls - 1 {
            r.core.on_send_complete(id, call, 1000, now, &mut drv);
            assert_eq!(identity(fd), Some(sock_id));
        }
        r.core.on_send_complete(id, calls - 1, 1000, now, &mut drv);
        assert_ne!(identity(fd), Some(sock_id));
    }

    /// A synchronous driver (epoll) frees at once.
    #[test]
    fn synchronous_driver_closes_at_once() {
        let mut r = rig(AdmissionConfig::for_descriptors(100));
        let mut drv = FakeDriver::new(false);
        let c = client();
        let now = Instant::now();
        request(&mut r, &c, &mut drv, now);
        let (id, fd) = drv.watched[0];
        let sock_id = identity(fd).unwrap();
        r.core
            .on_transfer_datagram(id, b"\x00\x04\x00\x00", false, now, &mut drv);
        r.core
            .on_transfer_datagram(id, b"\x00\x05\x00\x00stop\x00", false, now, &mut drv);
        assert_eq!(r.core.lingering(), 0);
        assert_ne!(identity(fd), Some(sock_id));
    }

    /// At the transfer cap, a new request takes the place of the oldest transfer whose client
    /// never answered; with an asynchronous driver that transfer's socket still waits for its
    /// receive to end. Either way the new client gets its OACK and the count stays right.
    #[test]
    fn over_the_cap_an_unanswered_transfer_makes_room() {
        for asynchronous in [true, false] {
            let mut r = rig(AdmissionConfig {
                max_transfers: 1,
                max_per_client: 1,
                client_rate: 0,
            });
            let mut drv = FakeDriver::new(asynchronous);
            // Three client addresses (each within its own per-client cap of 1).
            let (a, b) = (client_at("127.0.0.2"), client_at("127.0.0.3"));
            let now = Instant::now();
            request(&mut r, &a, &mut drv, now);
            let (ida, fda) = drv.watched[0];
            let sock_a = identity(fda).unwrap();
            request(&mut r, &b, &mut drv, now);
            assert_eq!(drv.watched.len(), 2, "b admitted");
            assert!(!r.core.is_live(ida), "a dropped");
            if asynchronous {
                assert_eq!(
                    identity(fda),
                    Some(sock_a),
                    "a's socket waits for its receive"
                );
            }
            let mut buf = [0u8; 1500];
            b.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..2], &[0, 6]);
            // b answered: it cannot be dropped for a third client, which is refused.
            let (idb, _) = drv.watched[1];
            r.core
                .on_transfer_datagram(idb, b"\x00\x04\x00\x00", false, now, &mut drv);
            let third = client_at("127.0.0.4");
            request(&mut r, &third, &mut drv, now);
            assert_eq!(drv.watched.len(), 2);
            let (n, _) = third.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..4], &[0, 5, 0, 0]);
            assert!(std::str::from_utf8(&buf[4..n])
                .unwrap()
                .contains("server busy"));
            r.core.on_recv_ended(ida);
            assert_ne!(identity(fda), Some(sock_a));
            assert_eq!(r.core.shared.admission.total(), 1);
            assert_eq!((r.core.admitted, r.core.evicted_lingering), (1, 0));
            // b ends: its place comes back, and a new client gets it.
            r.core
                .on_transfer_datagram(idb, b"\x00\x05\x00\x00stop\x00", false, now, &mut drv);
            r.core.on_recv_ended(idb);
            if asynchronous {
                let calls: Vec<usize> = drv
                    .sends
                    .iter()
                    .filter(|(id, _)| *id == idb)
                    .map(|(_, n)| *n)
                    .collect();
                for n in calls {
                    for call in 0..n {
                        r.core.on_send_complete(idb, call, 1000, now, &mut drv);
                    }
                }
            }
            assert_eq!(r.core.admitted, 0);
            request(&mut r, &third, &mut drv, now);
            assert_eq!(drv.watched.len(), 3);
        }
    }

    /// A window larger than the send buffers goes out in several builds.
    #[test]
    fn large_windows_are_sent_in_bounded_builds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), vec![7u8; 1 << 20]).unwrap();
        let store = Store::new(dir.path(), StoreOptions::default()).unwrap();
        let limits = Limits {
            max_window: crate::proto::options::WindowSize::new(1024).unwrap(),
            max_window_bytes: 1 << 30,
            ..Limits::default()
        };
        let shared = Arc::new(Shared {
            store,
            limits,
            min_rto: Duration::from_millis(2),
            port_range: None,
            multicast: None,
            admission: Admission::new(AdmissionConfig::for_descriptors(100)),
            workers: 1,
            fault: None,
        });
        let sock = sys::listener_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        let mut core = Core::new(0, shared, vec![Listener { sock, addr }], false);
        let mut drv = FakeDriver::new(true);
        let c = client();
        let info = PktInfo {
            local: "127.0.0.1".parse().unwrap(),
            ifindex: 0,
        };
        let rrq = b"\x00\x01a.bin\x00octet\x00blksize\x00512\x00windowsize\x001000\x00";
        let now = Instant::now();
        core.on_request(
            0,
            rrq,
            false,
            Some(c.local_addr().unwrap()),
            Some(info),
            now,
            &mut drv,
        );
        let (id, _) = drv.watched[0];
        core.on_transfer_datagram(id, b"\x00\x04\x00\x00", false, now, &mut drv);
        // Without GSO: one call per block, at most MAX_TX_BLOCKS per build.
        let mut total = 0;
        for _ in 0..100 {
            let Some(&(_, n)) = drv.sends.last() else {
                break;
            };
            assert!(n <= super::super::send::MAX_TX_BLOCKS);
            total += n;
            let before = drv.sends.len();
            for call in 0..n {
                core.on_send_complete(id, call, 516, now, &mut drv);
            }
            if drv.sends.len() == before {
                break;
            }
        }
        assert_eq!(total, 1000, "the whole window went out");
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
