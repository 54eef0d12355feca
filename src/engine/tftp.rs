//! The TFTP service of a worker: its [`Core`], shared by the service on each reactor
//! ([`uring::TftpRing`] on io_uring, [`epoll::TftpEpoll`] on the fallback): the endpoint's I/O,
//! transfer sockets, timers, sends. The request path is in [`request`], the driving of
//! transfers (windows, control datagrams, close) in [`drive`].
//!
//! Contract:
//! - A [`Core`] belongs to one worker thread. It owns the worker's listening sockets (for replies
//!   and MTU queries), its [`Endpoint`] (the sans-IO half: duplicates, refusals, caps,
//!   negotiation, the multicast hand-off, and the transfers themselves), and beside each transfer
//!   its I/O: a connected socket, the `Arc<Content>` and preallocated [`TxBufs`]. It performs no
//!   waiting and receives nothing itself: a backend feeds it what arrived ([`Core::on_request`],
//!   [`Core::on_transfer_datagram`], [`Core::on_transfer_error`], [`Core::on_send_complete`]) and
//!   its timers come due on the engine's one queue ([`Core::on_timer`]): each transfer's deadline
//!   under its [`timer_key`], the core's own (reports of suppressed log lines, status batches)
//!   under [`AUX_KEY`], kept armed by [`Core::sync_aux`] after every input.
//! - What the core does with a request is only I/O: on [`Decision::Lookup`] it looks the file up
//!   in the store, asks the endpoint to [`accept`](Endpoint::accept) it (offering RFC 2090
//!   requests to the multicast service), opens the transfer socket and drives the transfer; every
//!   refusal is the endpoint's or the store's, sent from the listening socket.
//! - Everything the core asks of the I/O goes through the small [`Driver`] trait: start and stop
//!   receiving on a transfer socket, send the `sendmsg` calls of one window, arm and cancel
//!   timers. A synchronous
//!   driver (epoll) reports the result at once; an asynchronous one (io_uring) reports each call's
//!   completion later through `on_send_complete`. A transfer's control datagrams (OACK, ERROR) go
//!   through the same driver ([`Driver::send_ctrl`], one call over the transfer's `TxBufs`), and
//!   only when nothing of the transfer is in flight: one polled while a window is in flight waits
//!   for it (and its remaining builds), so an ERROR never overtakes DATA; nothing more is polled
//!   while it waits or is in flight. Refusals (from the listening socket) are sent directly.
//! - After every input to a transfer, the core drains `poll_transmit`, arms the transfer's
//!   deadline on the engine's timer queue, and when `poll_event` says it is over, closes it.
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
    self, CloseReason, Endpoint, Event as EndpointEvent, TransferId,
};
use crate::proto::tftp::options::Limits;
use crate::store::Store;
use crate::sys::socket::{PortRange, PortRng};
use socket2::Socket;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

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
    /// The options a reload changes for new requests (`None`: `limits` and `min_rto` for good).
    pub settings: Option<Arc<super::settings::Settings>>,
    /// Number of workers (each holds its share of `--max-transfers`).
    pub workers: usize,
    /// A fault to inject (tests of the failure handling only).
    pub fault: Option<super::workers::Fault>,
    /// The metrics and status page (`--metrics`), when on.
    pub metrics: Option<Arc<crate::metrics::Status>>,
    /// Set at SIGTERM: new requests are refused while running transfers finish.
    pub draining: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The congestion controller of each outgoing interface, shared by every worker.
    pub links: Arc<super::links::Links>,
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
    /// Send one control datagram (OACK, ERROR) on connected socket `fd`. The core submits it only
    /// when no send of the transfer is in flight, so it leaves after every DATA submitted before
    /// it. `msg` stays valid until it completes; an asynchronous driver reports that completion
    /// with call [`CTRL_CALL`]; a failure is reported with call `CTRL_CALL` too.
    fn send_ctrl(&mut self, id: SlotId, fd: RawFd, msg: &mut libc::mmsghdr) -> SendStatus;
    /// Call [`Core::on_timer`] with `key` at `at` (replacing the key's earlier deadline): the
    /// engine's one timer queue.
    fn arm(&mut self, key: u64, at: Instant);
    /// Disarm timer `key`.
    fn cancel(&mut self, key: u64);
}

/// The timer key of the core's own deadlines (the report of suppressed log lines, the status
/// batch); every other key is a transfer's ([`timer_key`]).
pub(crate) const AUX_KEY: u64 = u64::MAX;

/// The timer key of a transfer.
pub(crate) fn timer_key(id: TransferId) -> u64 {
    let (idx, gen) = id.to_raw();
    (u64::from(gen) << 32) | u64::from(idx)
}

fn key_transfer(key: u64) -> TransferId {
    TransferId::from_raw(key as u32, (key >> 32) as u16)
}

/// The call number of a control datagram's send (window calls are numbered from 0, below
/// [`super::send::MAX_TX_BLOCKS`]).
pub(crate) const CTRL_CALL: usize = u16::MAX as usize;

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
    /// The congestion controller of the interface the transfer sends on ([`super::links`]).
    /// `None`: not paced (loopback without a cap).
    link: Option<super::links::SharedLink>,
    /// `None` once closed (the slot lingers while sends are in flight).
    sock: Option<Socket>,
    peer: SocketAddr,
    tx: TxBufs,
    /// GSO allowed for this transfer (cleared when the path refuses it).
    gso: bool,
    /// Calls of the current window, or the control datagram, not yet completed (asynchronous
    /// drivers). Never both: each is submitted only when nothing of the transfer is in flight.
    in_flight: u32,
    /// The control datagram in `tx.ctrl` is in flight (`tx.ctrl` must not be written).
    ctrl_in_flight: bool,
    /// A control datagram (its length in `tx.ctrl`) polled while a window was in flight: it goes
    /// out once the window (and what is left of it) has completed, so it never overtakes DATA.
    ctrl_pending: Option<usize>,
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
    /// Its `transfer started` line is written (at the first acknowledged data).
    announced: bool,
    /// DATA already counted in the metrics (blocks, bytes), once a second while it runs.
    counted: (u64, u64),
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
        + epoll::RX_BUF
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
    /// The deadline of [`AUX_KEY`] last armed.
    aux_armed: Option<Instant>,
    mtu_cache: HashMap<u32, (Option<u32>, Instant)>,
    gso: bool,
    port_rng: PortRng,
    logs: WorkerLogs,
    /// Closed transfers waiting for their sends or receive to end.
    lingering: usize,
    /// An error injected by `--fault worker-error`, returned by the backend's loop.
    injected: Option<io::Error>,
    reply: [u8; 516],
    /// Metrics and status (`--metrics`), when on.
    observer: Option<observe::Observer>,
    /// The generation of `shared.settings` the endpoint has.
    settings_seen: u64,
}

impl Core {
    pub(crate) fn new(
        worker: usize,
        shared: Arc<Shared>,
        listeners: Vec<Listener>,
        gso: bool,
    ) -> Self {
        let share = shared.admission.config().share(worker, shared.workers);
        let shared_metrics = shared.metrics.clone();
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
            aux_armed: None,
            mtu_cache: HashMap::new(),
            gso,
            port_rng: PortRng::new(),
            logs: WorkerLogs::new(),
            lingering: 0,
            injected: None,
            reply: [0; 516],
            observer: observe::Observer::new(shared_metrics.as_deref()),
            settings_seen: 0,
        }
    }

    /// Before a new request: take the options and the share of the caps of a reload, if one
    /// happened since the last request (one atomic load otherwise).
    fn take_settings(&mut self) {
        let Some(s) = &self.shared.settings else {
            return;
        };
        let g = s.generation();
        if g == self.settings_seen {
            return;
        }
        self.settings_seen = g;
        let t = s.current();
        let share = self
            .shared
            .admission
            .current()
            .share(self.worker, self.shared.workers);
        self.endpoint.reconfigure(endpoint::EndpointConfig {
            limits: t.limits,
            min_rto: t.min_rto,
            share,
        });
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

    /// A timer armed through [`Driver::arm`] is due.
    pub(crate) fn on_timer(&mut self, key: u64, now: Instant, drv: &mut impl Driver) {
        if key == AUX_KEY {
            self.aux_armed = None;
            self.logs.flush(self.worker, now);
            self.publish(now);
            return;
        }
        let id = key_transfer(key);
        if self.io(id).is_none_or(|io| io.closed) {
            return;
        }
        if let Some(t) = self.endpoint.transfer_mut(id) {
            t.handle_timeout(now);
        }
        self.drive(id, now, drv);
    }

    /// Arm [`AUX_KEY`] at the next report of suppressed log lines or status batch, if that
    /// changed (call after every input; a comparison when nothing did).
    pub(crate) fn sync_aux(&mut self, now: Instant, drv: &mut impl Driver) {
        let publish = self.observer.as_ref().map(|o| o.next_due().unwrap_or(now));
        let want = [self.logs.flush_at, publish].into_iter().flatten().min();
        if want != self.aux_armed {
            match want {
                Some(t) => drv.arm(AUX_KEY, t),
                None => drv.cancel(AUX_KEY),
            }
            self.aux_armed = want;
        }
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
        // Its timer went at the close (and a stale one finds no transfer).
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

mod drive;
pub(crate) mod epoll;
mod observe;
mod request;
pub(crate) mod uring;

#[cfg(test)]
mod tests;
