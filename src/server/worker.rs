//! The per-worker driver shared by both I/O backends: the endpoint's I/O, transfer sockets,
//! timers, sends.
//!
//! Contract:
//! - A [`Core`] belongs to one worker thread. It owns the worker's listening sockets (for replies
//!   and MTU queries), its [`Endpoint`] (the sans-IO half: duplicates, refusals, caps,
//!   negotiation, the multicast hand-off, and the transfers themselves), and beside each transfer
//!   its I/O: a connected socket, the `Arc<Content>` and preallocated [`TxBufs`]. It performs no
//!   waiting and receives nothing itself: a backend feeds it what arrived ([`Core::on_request`],
//!   [`Core::on_transfer_datagram`], [`Core::on_transfer_error`], [`Core::on_send_complete`]) and
//!   calls [`Core::run_timers`] before waiting until [`Core::next_deadline`].
//! - What the core does with a request is only I/O: on [`Decision::Lookup`] it looks the file up
//!   in the store, asks the endpoint to [`accept`](Endpoint::accept) it (offering RFC 2090
//!   requests to the multicast service), opens the transfer socket and drives the transfer; every
//!   refusal is the endpoint's or the store's, sent from the listening socket.
//! - Everything the core asks of the I/O goes through the small [`Driver`] trait: start and stop
//!   receiving on a transfer socket, and send the `sendmsg` calls of one window. A synchronous
//!   driver (epoll) reports the result at once; an asynchronous one (io_uring) reports each call's
//!   completion later through `on_send_complete`. Control datagrams (OACK, ERROR) and refusals are
//!   rare and are sent directly with a nonblocking `send`.
//! - After every input to a transfer, the core drains `poll_transmit`, arms the transfer's
//!   deadline in the worker's [`TimerQueue`], and when `poll_event` says it is over, closes it.
//! - A transfer's socket is closed (its descriptor number freed for reuse) only when no operation
//!   that names it can still be issued: no send of it in flight (io_uring resolves the descriptor
//!   of a linked send only when it issues it) and its receive ended (the driver says so at once, or
//!   later through [`Core::on_recv_ended`]). Until then the slot keeps the socket, the content and
//!   the send buffers; then they go together, and the endpoint [`release`](Endpoint::release)s
//!   the transfer's place under the caps. Transfers the endpoint drops to make room (evicted) or
//!   that a new request supersedes come out of [`Endpoint::poll_event`], drained after every call
//!   to it: their sockets close before a new one opens.
//! - Memory per transfer is bounded: the send buffers hold at most one build of
//!   [`MAX_TX_BLOCKS`](super::send::MAX_TX_BLOCKS) blocks (a larger window goes out in several
//!   builds), the request is kept for duplicate detection (at most one receive buffer), and the
//!   rest is fixed-size: [`transfer_memory_bound`] in all, so `--max-transfers` x that bounds the
//!   workers' heap for transfers (file bytes are never copied). The server logs both figures at
//!   start.
//! - Every log line a remote peer can cause once per datagram goes through a [`LogLimit`]: one
//!   line, then a count of the suppressed ones (flushed from the timer).
//! - No allocation per datagram: receive buffers belong to the backend, send buffers to the
//!   transfer, and the timer queue and maps only grow with the number of transfers.

use super::send::TxBufs;
use crate::proto::ratelog::LogLimit;
use crate::proto::tftp::endpoint::{
    self, Accept, CloseReason, Decision, Endpoint, Event as EndpointEvent, McRequest, Multicast,
    NoMulticast, Refusal, TransferId,
};
use crate::proto::tftp::options::Limits;
use crate::proto::tftp::packet::{emit_error_fmt, ErrorCode};
use crate::proto::tftp::transfer::{Event as TransferEvent, Outcome};
use crate::proto::timer::TimerQueue;
use crate::proto::Payload;
use crate::store::Store;
use crate::sys;
use crate::sys::cmsg::PktInfo;
use crate::sys::socket::{PortRange, PortRng, TransferSocketError};
use socket2::Socket;
use std::collections::HashMap;
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
    pub admission: Arc<crate::proto::tftp::admit::Admission>,
    /// Number of workers (each holds its share of `--max-transfers`).
    pub workers: usize,
    /// A fault to inject (tests of the failure handling only).
    pub fault: Option<super::Fault>,
}

/// A transfer's place in the worker's table (the endpoint's [`TransferId`] in the form the
/// backends encode in their completion tokens); `gen` tells a reused slot from its previous
/// owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotId {
    pub idx: u32,
    pub gen: u16,
}

impl From<TransferId> for SlotId {
    fn from(id: TransferId) -> Self {
        let (idx, gen) = id.to_raw();
        SlotId { idx, gen }
    }
}

impl From<SlotId> for TransferId {
    fn from(id: SlotId) -> Self {
        TransferId::from_raw(id.idx, id.gen)
    }
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
/// Transfers dropped to make room (see [`Endpoint`]) that may wait at once for their socket to
/// close; beyond this, a request over the cap is refused instead.
pub(crate) const MAX_LINGERING: usize = endpoint::MAX_LINGERING;
/// How long an interface MTU stays cached.
const MTU_CACHE_TTL: Duration = Duration::from_secs(60);

/// The I/O half of a transfer (its protocol half is the endpoint's).
struct Io {
    content: Arc<crate::store::Content>,
    /// `None` once closed (the slot lingers while sends are in flight).
    sock: Option<Socket>,
    peer: SocketAddr,
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
    /// Closed by the endpoint to make room (its socket counts against `MAX_LINGERING`).
    evicted: bool,
    closed: bool,
    /// A receive on the socket may still complete (the socket must stay open).
    recv_armed: bool,
    /// Closed, waiting for its sends or receive to end (counted in `Core::lingering`).
    lingering: bool,
}

struct Slot {
    id: TransferId,
    io: Option<Box<Io>>,
}

/// Most heap bytes one transfer holds in a worker: its I/O state and send buffers, its request
/// (at most one receive buffer), its endpoint entry, its slot, timer and map entries. File bytes
/// are not counted: they are the store's, shared, and never copied per transfer.
pub(crate) const fn transfer_memory_bound() -> usize {
    std::mem::size_of::<Io>()
        + TxBufs::heap_bytes(super::send::MAX_TX_BLOCKS)
        + super::epoll::RX_BUF
        + std::mem::size_of::<Slot>()
        + endpoint::transfer_memory_bound()
        + 64
}

/// The rate limits of the worker's per-datagram log lines (see [`crate::proto::ratelog`]).
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
            self.flush_at = Some(now + crate::proto::ratelog::DEFAULT_INTERVAL);
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
            self.flush_at = Some(now + crate::proto::ratelog::DEFAULT_INTERVAL);
        }
    }
}

/// The per-worker core. See the module docs.
pub(crate) struct Core {
    worker: usize,
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    endpoint: Endpoint,
    /// The I/O of each transfer, at its id's index.
    slots: Vec<Option<Slot>>,
    timers: TimerQueue<TransferId>,
    mtu_cache: HashMap<u32, (Option<u32>, Instant)>,
    gso: bool,
    port_rng: PortRng,
    logs: WorkerLogs,
    /// Closed transfers waiting for their sends or receive to end.
    lingering: usize,
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
        let endpoint = Endpoint::new(
            endpoint::EndpointConfig {
                limits: shared.limits,
                min_rto: shared.min_rto,
                share,
            },
            shared.admission.clone(),
        );
        Core {
            worker,
            shared,
            listeners,
            endpoint,
            slots: Vec::new(),
            timers: TimerQueue::new(),
            mtu_cache: HashMap::new(),
            gso,
            port_rng: PortRng::new(),
            logs: WorkerLogs::new(),
            lingering: 0,
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

    fn io(&self, id: TransferId) -> Option<&Io> {
        let slot = self.slots.get(id.index())?.as_ref()?;
        (slot.id == id).then_some(())?;
        slot.io.as_deref()
    }

    fn io_mut(&mut self, id: TransferId) -> Option<&mut Io> {
        let slot = self.slots.get_mut(id.index())?.as_mut()?;
        (slot.id == id).then_some(())?;
        slot.io.as_deref_mut()
    }

    /// The transfer exists and is not closed: its socket's events are wanted.
    pub(crate) fn is_live(&self, id: SlotId) -> bool {
        self.fd_of(id).is_some()
    }

    /// The socket of a live (not closed) transfer.
    pub(crate) fn fd_of(&self, id: SlotId) -> Option<RawFd> {
        let io = self.io(id.into())?;
        if io.closed {
            return None;
        }
        io.sock.as_ref().map(|s| s.as_raw_fd())
    }

    /// The error injected by `--fault worker-error`, once.
    pub(crate) fn take_injected_error(&mut self) -> Option<io::Error> {
        self.injected.take()
    }

    /// Any transfer (closed or not) still has sends in flight.
    pub(crate) fn sends_in_flight(&self) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|s| s.io.as_deref().is_some_and(|io| io.in_flight > 0))
    }

    /// The earliest transfer deadline, or the next report of suppressed log lines.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        match (self.timers.next_deadline(), self.logs.flush_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fire every transfer timer due at `now` (and report suppressed log lines when due).
    pub(crate) fn run_timers(&mut self, now: Instant, drv: &mut impl Driver) {
        self.logs.flush(self.worker, now);
        while let Some(id) = self.timers.pop_expired(now) {
            if self.io(id).is_none_or(|io| io.closed) {
                continue;
            }
            if let Some(t) = self.endpoint.transfer_mut(id) {
                t.handle_timeout(now);
            }
            self.drive(id, now, drv);
        }
    }

    fn note_malformed(
        &mut self,
        peer: Option<SocketAddr>,
        what: &dyn std::fmt::Display,
        now: Instant,
    ) {
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

    /// Send the ERROR datagram of `len` bytes in `self.reply` from listening socket `li`.
    fn send_reply(&mut self, li: usize, len: usize, peer: &SocketAddr, info: Option<&PktInfo>) {
        let Some(l) = self.listeners.get(li) else {
            return;
        };
        if let Err(e) = sys::socket::send_from(l.sock.as_raw_fd(), &self.reply[..len], peer, info) {
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
        let Some(listener) = self.listeners.get(li) else {
            return;
        };
        let local = info.map_or(listener.addr.ip(), |i| i.local);
        let listen_fd = listener.sock.as_raw_fd();
        let decision = self
            .endpoint
            .handle_request(now, peer, local, data, truncated);
        self.drain_endpoint(now, drv);
        let incoming = match decision {
            Decision::Lookup(incoming) => incoming,
            Decision::Duplicate(id) => {
                trace!(client = %peer, "duplicate request");
                return self.drive(id, now, drv);
            }
            Decision::Refuse(r) => {
                let n = r.emit(&mut self.reply);
                self.send_reply(li, n, &peer, info.as_ref());
                match r {
                    Refusal::Write { filename } => {
                        if let Some(n) = self.logs.allow(|l| &mut l.write, now) {
                            info!(client = %peer, file = %filename.escape_ascii(), reason = %r, suppressed = n, "write request refused");
                        }
                    }
                    Refusal::MailMode { filename } => {
                        if let Some(n) = self.logs.allow(|l| &mut l.refused, now) {
                            info!(client = %peer, file = %filename.escape_ascii(), code = r.code().as_u16(), reason = %r, suppressed = n, "request refused");
                        }
                    }
                    Refusal::TooLarge => self.note_malformed(
                        Some(peer),
                        &"datagram larger than the receive buffer",
                        now,
                    ),
                    _ => self.note_malformed(Some(peer), &r, now),
                }
                return;
            }
            Decision::Drop(why) => return self.note_malformed(Some(peer), &why, now),
        };
        let content = match self
            .shared
            .store
            .lookup(incoming.filename(), incoming.mode())
        {
            Ok(c) => c,
            Err(e) => {
                let n = emit_error_fmt(&mut self.reply, e.error_code(), format_args!("{e}"));
                self.send_reply(li, n, &peer, info.as_ref());
                if let Some(n) = self.logs.allow(|l| &mut l.refused, now) {
                    info!(client = %peer, file = %incoming.filename().escape_ascii(), code = e.error_code().as_u16(), reason = %e, suppressed = n, "request refused");
                }
                return;
            }
        };
        let ifindex = info.map_or(0, |i| i.ifindex);
        let mtu = self.mtu(ifindex, listen_fd, now);
        let mode = incoming.mode();
        let accepted = match &self.shared.multicast {
            Some(mc) => {
                // The service decides its own admission, synchronously: handed over, it answers
                // (OACK or ERROR); refused (pool, caps, saturation; logged there, rate-limited),
                // the endpoint serves the request as plain unicast, its OACK without `multicast`.
                let mut offer = |r: &McRequest, now: Instant| {
                    let join = super::mcast::McJoin {
                        client: r.client,
                        local: r.local,
                        content: content.clone(),
                        blksize: r.blksize,
                        tsize: r.tsize,
                    };
                    mc.submit(join, now).is_ok()
                };
                let offer: &mut dyn Multicast = &mut offer;
                self.endpoint
                    .accept(now, incoming, content.transfer_len(), mtu, offer)
            }
            None => {
                self.endpoint
                    .accept(now, incoming, content.transfer_len(), mtu, &mut NoMulticast)
            }
        };
        // An evicted transfer's socket closes before the new one opens.
        self.drain_endpoint(now, drv);
        let accepted = match accepted {
            Accept::Unicast(a) => a,
            Accept::Multicast => return,
            Accept::Refuse(r) => {
                let n = r.emit(&mut self.reply);
                self.send_reply(li, n, &peer, info.as_ref());
                if let Some(n) = self.logs.allow(|l| &mut l.over_cap, now) {
                    let c = self.shared.admission.config();
                    warn!(
                        worker = self.worker,
                        client = %peer,
                        cause = match r { Refusal::OverCap(o) => o.as_str(), _ => "" },
                        max_transfers = c.max_transfers,
                        max_per_client = c.max_per_client,
                        client_rate = c.client_rate,
                        suppressed = n,
                        "request refused: {r} (one line a second)",
                    );
                }
                return;
            }
        };
        let id = accepted.id;
        let sock = match sys::socket::transfer_socket(
            local,
            ifindex,
            peer,
            self.shared.port_range,
            &mut self.port_rng,
            self.shared.limits.allow_fragmentation,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.endpoint.release(id);
                let msg = match &e {
                    TransferSocketError::NoFreePort => "no free transfer port",
                    TransferSocketError::Io(_) => "cannot open a transfer socket",
                };
                let n = crate::proto::tftp::packet::emit_error(
                    &mut self.reply,
                    ErrorCode::NotDefined,
                    msg,
                );
                self.send_reply(li, n, &peer, info.as_ref());
                if let Some(n) = self.logs.allow(|l| &mut l.no_socket, now) {
                    warn!(client = %peer, file = content.display_path(), error = %e, suppressed = n, "request refused");
                }
                return;
            }
        };
        if let Err(e) = drv.watch(id.into(), sock.as_raw_fd()) {
            if let Some(n) = self.logs.allow(|l| &mut l.no_socket, now) {
                warn!(client = %peer, error = %e, suppressed = n, "cannot watch a transfer socket; request dropped");
            }
            self.endpoint.release(id);
            return;
        }
        let Some(t) = self.endpoint.transfer(id) else {
            return;
        };
        let negotiated = *t.negotiated();
        debug!(
            worker = self.worker,
            client = %peer,
            file = content.display_path(),
            local = %local,
            mode = mode.as_str(),
            blksize = negotiated.blksize.get(),
            windowsize = negotiated.windowsize.get(),
            tsize = ?negotiated.tsize,
            mtu = ?mtu,
            "transfer started"
        );
        let window = (negotiated.windowsize.get() as usize).min(0x7fff);
        let io = Box::new(Io {
            content,
            sock: Some(sock),
            peer,
            tx: TxBufs::new(window),
            gso: accepted.gso,
            in_flight: 0,
            send_failure: None,
            pending: None,
            redo: None,
            rest: None,
            reason: None,
            evicted: false,
            closed: false,
            recv_armed: true,
            lingering: false,
        });
        let idx = id.index();
        if self.slots.len() <= idx {
            self.slots.resize_with(idx + 1, || None);
        }
        self.slots[idx] = Some(Slot { id, io: Some(io) });
        self.drive(id, now, drv);
    }

    /// Act on the transfers the endpoint closed itself (superseded, evicted).
    fn drain_endpoint(&mut self, now: Instant, drv: &mut impl Driver) {
        while let Some(EndpointEvent::Closed { id, reason }) = self.endpoint.poll_event() {
            if let Some(io) = self.io_mut(id) {
                io.reason = Some(reason.as_str());
                io.evicted = reason == CloseReason::Evicted;
            }
            self.close(id, now, drv);
        }
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
        let m = match sys::iface::interface_mtu(fd, ifindex) {
            Ok(m) => Some(m),
            Err(e) => {
                debug!(ifindex, error = %e, "cannot read the interface MTU");
                None
            }
        };
        self.mtu_cache.insert(ifindex, (m, now));
        m
    }

    /// Free a slot: its socket is closed, and the endpoint releases the transfer's place.
    fn free_slot(&mut self, id: TransferId) {
        let Some(slot) = self.slots.get_mut(id.index()) else {
            return;
        };
        if slot.as_ref().is_none_or(|s| s.id != id) {
            return;
        }
        if let Some(io) = slot.take().and_then(|s| s.io) {
            if io.lingering {
                self.lingering -= 1;
            }
            drop(io);
        }
        self.timers.cancel(id);
        self.endpoint.release(id);
    }

    /// Free a closed transfer once nothing can name its socket any more.
    fn maybe_free(&mut self, id: TransferId) {
        let Some(io) = self.io_mut(id) else {
            return;
        };
        if io.closed && io.in_flight == 0 && !io.recv_armed {
            self.free_slot(id);
        } else if io.closed && !io.lingering {
            io.lingering = true;
            self.lingering += 1;
        }
    }

    /// The receive on a transfer socket has ended for good (its last completion came in, e.g.
    /// after the cancel that [`Driver::unwatch`] queued). Frees the slot if nothing else is
    /// pending on it.
    pub(crate) fn on_recv_ended(&mut self, id: SlotId) {
        let id = id.into();
        if let Some(io) = self.io_mut(id) {
            io.recv_armed = false;
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
        let id = id.into();
        let Some(io) = self.io(id) else {
            return;
        };
        if io.closed {
            return;
        }
        if truncated {
            trace!(client = %io.peer, "oversized datagram on a transfer port dropped");
            return;
        }
        if let Some(t) = self.endpoint.transfer_mut(id) {
            t.handle_datagram(now, data);
        }
        self.drive(id, now, drv);
    }

    /// Abort a transfer from the server side with an ERROR to its client, for `reason`.
    fn abort(&mut self, id: TransferId, reason: &'static str, message: &'static str) {
        if let Some(io) = self.io_mut(id) {
            io.reason = Some(reason);
        }
        if let Some(t) = self.endpoint.transfer_mut(id) {
            t.abort(ErrorCode::NotDefined, message);
        }
    }

    /// Receiving on a transfer socket failed with `errno`.
    pub(crate) fn on_transfer_error(
        &mut self,
        id: SlotId,
        errno: i32,
        now: Instant,
        drv: &mut impl Driver,
    ) {
        let id = id.into();
        let Some(io) = self.io(id) else {
            return;
        };
        if io.closed {
            return;
        }
        match errno {
            libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN => {
                // ICMP unreachable: the client is gone.
                self.abort(id, "client port unreachable", "client port unreachable");
                self.drive(id, now, drv);
            }
            e => {
                debug!(client = %io.peer, error = %io::Error::from_raw_os_error(e), "receive error on a transfer socket");
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
        let id = id.into();
        let Some(io) = self.io_mut(id) else {
            return;
        };
        let was = io.in_flight;
        io.in_flight = was.saturating_sub(1);
        if was == 1 {
            // The window's last completion: the kernel holds none of the file's bytes any more.
            io.content.end_send();
        }
        if res < 0 {
            let e = -res;
            let replace = match io.send_failure {
                None => true,
                Some((c, old)) => e != libc::ECANCELED && (old == libc::ECANCELED || call < c),
            };
            if replace {
                io.send_failure = Some((call, e));
            }
        }
        if io.in_flight > 0 {
            return;
        }
        if io.closed {
            self.maybe_free(id);
            return;
        }
        if let Some((call, e)) = io.send_failure.take() {
            self.on_send_failure(id, call, e);
        }
        self.drive(id, now, drv);
    }

    fn on_send_failure(&mut self, id: TransferId, call: usize, errno: i32) {
        let worker = self.worker;
        let mut disable_worker_gso = false;
        let Some(io) = self.io_mut(id) else {
            return;
        };
        let c = io.tx.call(call);
        let err = io::Error::from_raw_os_error(errno);
        let mut abort = None;
        match errno {
            libc::EAGAIN | libc::ENOBUFS | libc::ECANCELED | libc::EINTR => {
                // The rest of the window is lost; the transfer's timer resends it.
                trace!(client = %io.peer, error = %err, "send queue full; window cut short");
            }
            libc::EIO | libc::EINVAL | libc::EOPNOTSUPP if c.is_some_and(|c| c.gso) => {
                if errno == libc::EINVAL {
                    // The path refuses this segment size; other transfers may be fine.
                    debug!(client = %io.peer, error = %err, "UDP GSO refused for this transfer; sending one datagram per block");
                    io.gso = false;
                } else {
                    disable_worker_gso = true;
                }
                if let (Some(c), Some(last)) = (c, io.tx.last_block()) {
                    io.redo = Some((c.first, (last + 1 - c.first) as u32));
                }
            }
            libc::EFAULT => abort = Some((FILE_CHANGED, FILE_CHANGED)),
            libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN => {
                abort = Some(("client port unreachable", "client port unreachable"))
            }
            libc::EMSGSIZE => {
                abort = Some((
                    "block larger than the path MTU",
                    "block size exceeds the path MTU",
                ))
            }
            _ => {
                debug!(client = %io.peer, error = %err, "send failed; window cut short");
            }
        }
        if let Some((reason, message)) = abort {
            self.abort(id, reason, message);
        }
        if disable_worker_gso && self.gso {
            self.gso = false;
            warn!(worker, error = %err, "UDP GSO send failed; this worker sends one datagram per block from now on");
        }
    }

    fn send_blocks(&mut self, id: TransferId, first: u64, count: u32, drv: &mut impl Driver) {
        let gso_worker = self.gso;
        let Some(slot) = self.slots.get_mut(id.index()).and_then(|s| s.as_mut()) else {
            return;
        };
        let Some(io) = slot.io.as_deref_mut().filter(|_| slot.id == id) else {
            return;
        };
        let Some(transfer) = self.endpoint.transfer_mut(id) else {
            return;
        };
        let Some(fd) = io.sock.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        // From here until the kernel has copied the bytes, a lease break waits for this send
        // (Content::begin_send): a file rewritten in place never leaks new bytes into it.
        if !io.content.begin_send() {
            io.reason = Some(FILE_CHANGED);
            transfer.abort(ErrorCode::NotDefined, FILE_CHANGED);
            return;
        }
        let gso = gso_worker && io.gso;
        // A window larger than the send buffers goes out in several builds, one after another.
        let cap = io.tx.capacity() as u32;
        let count = if count > cap {
            io.rest = Some((first + cap as u64, count - cap));
            cap
        } else {
            io.rest = None;
            count
        };
        // Octet: laid out from the content; netascii: converted into the transfer's window buffer.
        // Before the last block goes out, the content is checked unchanged (send.rs).
        let built = io
            .tx
            .build_content(transfer, &io.content, first, count, gso);
        // A netascii transfer may learn its end in this build: no later build past it.
        if let Some((f, n)) = io.rest {
            let t = transfer.total_blocks();
            io.rest = (f <= t).then(|| (f, n.min((t - f + 1) as u32)));
        }
        if let Err(why) = built {
            io.content.end_send();
            io.reason = Some(why);
            transfer.abort(ErrorCode::NotDefined, why);
            return;
        }
        let status = drv.send(id.into(), fd, io.tx.msgs());
        if !matches!(status, SendStatus::InFlight(n) if n > 0) {
            io.content.end_send();
        }
        match status {
            SendStatus::Done(None) => {}
            SendStatus::Done(Some((call, errno))) => self.on_send_failure(id, call, errno),
            SendStatus::InFlight(n) => {
                io.in_flight = n;
                io.send_failure = None;
            }
        }
    }

    /// Drain the transfer's transmits, then close it if it is over, else re-arm its timer.
    fn drive(&mut self, id: TransferId, now: Instant, drv: &mut impl Driver) {
        loop {
            let Some(slot) = self.slots.get_mut(id.index()).and_then(|s| s.as_mut()) else {
                return;
            };
            let Some(io) = slot.io.as_deref_mut().filter(|_| slot.id == id) else {
                return;
            };
            if io.closed {
                return;
            }
            if io.in_flight == 0 {
                let next = if io.pending.is_some() {
                    io.redo = None;
                    io.rest = None;
                    io.pending.take()
                } else if io.redo.is_some() {
                    let redo = io.redo.take();
                    // The redo covers this build's blocks; what follows them is still due.
                    let rest = io.rest.take();
                    if let (Some((f, n)), Some((rf, rn))) = (redo, rest) {
                        if f + n as u64 == rf {
                            io.rest = None;
                            Some((f, n + rn))
                        } else {
                            io.rest = rest;
                            redo
                        }
                    } else {
                        io.rest = rest;
                        redo
                    }
                } else {
                    io.rest.take()
                };
                if let Some((first, count)) = next {
                    self.send_blocks(id, first, count, drv);
                    continue;
                }
            }
            let Some(transfer) = self.endpoint.transfer_mut(id) else {
                return;
            };
            let Some(tx) = transfer.poll_transmit(now, &mut io.tx.ctrl[..]) else {
                break;
            };
            match tx.payload {
                Payload::Datagram(len) => {
                    if let (Some(s), Some(bytes)) = (&io.sock, io.tx.ctrl.get(..len)) {
                        if let Err(e) = sys::socket::send_connected(s.as_raw_fd(), bytes) {
                            debug!(client = %io.peer, error = %io::Error::from_raw_os_error(e), "control datagram not sent");
                        }
                    }
                }
                Payload::Blocks { first, count } => {
                    if io.in_flight > 0 {
                        io.pending = Some((first, count));
                    } else {
                        self.send_blocks(id, first, count, drv);
                    }
                }
            }
        }
        let Some(transfer) = self.endpoint.transfer_mut(id) else {
            return;
        };
        if let Some(TransferEvent::Ended(_)) = transfer.poll_event() {
            self.close(id, now, drv);
            return;
        }
        match transfer.poll_timeout() {
            Some(d) => self.timers.arm(id, d),
            None => self.timers.cancel(id),
        }
    }

    /// Log the end of a transfer and stop receiving on its socket; free the slot (closing the
    /// socket) once no send is in flight and the receive has ended (see the module docs).
    fn close(&mut self, id: TransferId, now: Instant, drv: &mut impl Driver) {
        let worker = self.worker;
        self.timers.cancel(id);
        self.endpoint.close(id);
        let Some(io) = self.io_mut(id) else {
            // Never opened (accept, then no socket): nothing to close.
            return;
        };
        if io.closed {
            return;
        }
        io.closed = true;
        io.pending = None;
        io.redo = None;
        io.rest = None;
        let peer = io.peer;
        let fd = io.sock.as_ref().map(|s| s.as_raw_fd());
        if io.recv_armed {
            if let Some(fd) = fd {
                if drv.unwatch(id.into(), fd) {
                    io.recv_armed = false;
                }
            } else {
                io.recv_armed = false;
            }
        }
        let evicted = io.evicted;
        let Some(transfer) = self.endpoint.transfer(id) else {
            return;
        };
        let outcome = transfer.outcome();
        // Lines a remote peer can cause at will go through a limiter: quiet drops (an unanswered
        // or evicted transfer: the address may be spoofed) and failures; completions do not.
        let quiet = outcome == Some(Outcome::Unanswered) || evicted;
        let failed = match outcome {
            Some(o) => !matches!(o, Outcome::Completed | Outcome::ProbeEnded(_)),
            None => transfer.stats().blocks_sent > 0,
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
        if let (Some(io), Some(transfer), Some(started)) = (
            self.io(id),
            self.endpoint.transfer(id),
            self.endpoint.started(id),
        ) {
            let end = End {
                io,
                transfer,
                started,
            };
            log_end(&end, now, quiet || logged.is_none());
        }
        if let (true, Some(n)) = (quiet, logged) {
            info!(
                worker,
                client = %peer,
                suppressed = n,
                "transfer dropped: the client never acknowledged the first reply (gone, or a spoofed address); one line every 5 s, details at debug"
            );
        }
        self.maybe_free(id);
    }

    /// End every transfer with an ERROR to its client (server shutdown).
    pub(crate) fn shutdown(&mut self, now: Instant, drv: &mut impl Driver) {
        let live: Vec<TransferId> = self.endpoint.live().collect();
        for id in live {
            if self.io(id).is_some_and(|io| !io.closed) {
                self.abort(id, "server shutting down", "server shutting down");
                self.drive(id, now, drv);
            }
        }
    }
}

/// What the end-of-transfer line is made of.
struct End<'a> {
    io: &'a Io,
    transfer: &'a crate::proto::tftp::transfer::Transfer,
    started: Instant,
}

/// The end-of-transfer line; `quiet`: at debug level only.
fn log_end(end: &End<'_>, now: Instant, quiet: bool) {
    let (io, t) = (end.io, end.transfer);
    let s = t.stats();
    let n = t.negotiated();
    let duration_ms = now.saturating_duration_since(end.started).as_millis() as u64;
    let srtt_us = s.srtt.map_or(0, |d| d.as_micros() as u64);
    let file = io.content.display_path();
    let client = io.peer;
    let blksize = n.blksize.get();
    let windowsize = n.windowsize.get();
    let bytes = s.bytes_acked;
    let resent = s.blocks_resent;
    let timeouts = s.timeouts;
    macro_rules! line {
        ($lvl:ident, $outcome:expr, $code:expr, $msg:literal) => {
            tracing::$lvl!(
                %client, file, bytes, blksize, windowsize, duration_ms, resent, timeouts, srtt_us,
                outcome = $outcome, code = $code, reason = io.reason.unwrap_or(""), $msg
            )
        };
    }
    if quiet {
        let outcome = t.outcome().map_or("superseded", |o| o.as_str());
        line!(debug, outcome, 0u16, "transfer ended");
        return;
    }
    match t.outcome() {
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
mod tests;
