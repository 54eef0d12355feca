//! The TFTP endpoint of one worker: request in, decision out (quinn's `Endpoint` is the model).
//!
//! Contract:
//! - The driver feeds every datagram that arrives on a listening socket to
//!   [`Endpoint::handle_request`], which answers with a [`Decision`]:
//!   - [`Decision::Lookup`]: a new read request. The driver looks the file up (I/O: the store),
//!     refuses with the store's error if it must, and otherwise calls [`Endpoint::accept`] with
//!     the transfer's length (`None` when it is learned while sending: netascii) and the MTU of
//!     the interface the request came in on. [`Accept`] says what then happens: a unicast
//!     [`Transfer`] (the driver opens its socket and drives it), a hand-off to the multicast
//!     service, or a refusal.
//!   - [`Decision::Duplicate`]: the client sent its request again (the same bytes from the same
//!     address and port while its transfer lives): the transfer was told
//!     ([`Transfer::handle_duplicate_request`], within its pre-ACK resend budget); the driver
//!     drives it. A *different* request from the same address and port means the client moved
//!     on (a firmware's real request after its size probe, its ERROR still queued behind): the
//!     old transfer is closed ([`Event::Closed`], [`CloseReason::Superseded`]) and the request is
//!     looked up as new.
//!   - [`Decision::Refuse`]: answer with this ERROR from the listening socket (a write request,
//!     mail mode, a malformed or oversized request); [`Decision::Drop`]: nothing to answer (a
//!     datagram that is no request); both say why, for the driver's rate-limited log.
//! - Negotiation is here: options (never more than asked), the interface MTU to blksize (unless
//!   fragmentation is allowed), no tsize for a length learned while sending, and whether GSO
//!   segments of the granted blksize fit the interface ([`Accepted::gso`]). The window asked is
//!   reduced to the bytes the driver says the path holds for it (`path_bytes`: the link
//!   controller's share of what the path held when it last overflowed), never below
//!   [`MIN_PATH_WINDOW`](super::options::MIN_PATH_WINDOW) (RFC 7440: the server may grant less).
//! - RFC 2090: an octet-mode IPv4 request with the `multicast` option is offered to the
//!   multicast service first, through the [`Multicast`] the driver passes to `accept`: the
//!   service decides its own admission (groups, members, sources) synchronously and answers the
//!   client itself when it takes the request ([`Accept::Multicast`]). When it says no, the
//!   request is served as plain unicast, its OACK without `multicast` (RFC 2090 allows it).
//! - Caps ([`admit`](super::admit)): this endpoint's share of `--max-transfers`, then the
//!   per-address caps shared by all workers. When the share is full, the oldest transfer whose
//!   client never answered (its address unverified, perhaps spoofed) is closed
//!   ([`CloseReason::Evicted`]) and its place given to a request within its own address's limits,
//!   so a flood of spoofed requests cannot lock out real clients; at most [`MAX_LINGERING`]
//!   evicted transfers may wait for the driver to release them, so descriptors stay bounded.
//!   Otherwise the request is refused ([`Refusal::OverCap`], ERROR 0).
//! - The endpoint owns the transfers: the driver reaches them by [`TransferId`]
//!   ([`Endpoint::transfer_mut`]) and keeps its own I/O state (socket, send buffers) beside
//!   them under the same id. A transfer lives until the driver [`close`](Endpoint::close)s it
//!   (its outcome is in, or the driver aborted it); it keeps its place under the caps until the
//!   driver [`release`](Endpoint::release)s it, once its socket is closed. Closes the endpoint
//!   makes itself come out of [`Endpoint::poll_event`]: drain it after every call, before
//!   acting on the call's result (an evicted transfer's socket is closed before a new one opens).
//! - Bounded: transfers (live or closing) at most the share plus [`MAX_LINGERING`]; the table by
//!   peer holds live transfers only; each keeps its request (at most one datagram) to recognise
//!   a resend. No allocation per datagram; one per accepted transfer (its slot and request).

use super::admit::{Admission, OverCap, Ticket};
use super::options::{blksize_for_mtu, negotiate, BlockSize, IpVersion, Limits, RequestOptions};
use super::packet::Request;
use super::packet::{emit_error, emit_error_fmt, ErrorCode, Mode, Opcode, Packet, ParseError};
use super::transfer::{Transfer, TransferConfig, LENGTH_UNKNOWN};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Evicted transfers that may wait at once for the driver to release them; beyond this, a
/// request over the share is refused instead.
pub const MAX_LINGERING: usize = 16;

/// Events queued at most (a driver that drains after every call sees at most two).
const EVENT_CAP: usize = 64;

/// ERROR message of a write request.
pub const READ_ONLY: &str = "ringboot is a read-only server";

/// What an endpoint is configured with.
#[derive(Clone, Copy, Debug)]
pub struct EndpointConfig {
    /// Negotiation limits, retransmission ceiling and retries.
    pub limits: Limits,
    /// Floor of the transfers' retransmission timer.
    pub min_rto: Duration,
    /// Transfers this endpoint may hold at once (its worker's share of `--max-transfers`).
    pub share: usize,
}

/// A transfer's handle. Its [`index`](TransferId::index) is a small dense number (reused after
/// [`Endpoint::release`]) for the driver's own table; the generation tells a reused slot from
/// its previous owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransferId {
    idx: u32,
    gen: u16,
}

impl TransferId {
    pub fn index(self) -> usize {
        self.idx as usize
    }

    /// Its parts (index, generation), for a driver that encodes ids in completion tokens.
    pub fn to_raw(self) -> (u32, u16) {
        (self.idx, self.gen)
    }

    /// An id from [`to_raw`](Self::to_raw)'s parts. One that names no transfer (stale, or made
    /// up) is ignored by every call that takes it.
    pub fn from_raw(idx: u32, gen: u16) -> Self {
        TransferId { idx, gen }
    }
}

/// A new read request, to look up and then [`accept`](Endpoint::accept). Borrows the datagram.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    peer: SocketAddr,
    local: IpAddr,
    raw: &'a [u8],
    request: Request<'a>,
}

impl<'a> Incoming<'a> {
    /// The filename as it came off the wire.
    pub fn filename(&self) -> &'a [u8] {
        self.request.filename
    }

    pub fn mode(&self) -> Mode {
        self.request.mode
    }

    /// The client.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The address the request was sent to (the transfer answers from it).
    pub fn local(&self) -> IpAddr {
        self.local
    }
}

/// What to do with a datagram that arrived on a listening socket.
#[derive(Debug)]
pub enum Decision<'a> {
    /// A new read request: look the file up, then call [`Endpoint::accept`].
    Lookup(Incoming<'a>),
    /// A resent request of a live transfer, already handed to it: drive that transfer.
    Duplicate(TransferId),
    /// Answer with this ERROR (to the sender, from the listening socket).
    Refuse(Refusal<'a>),
    /// Nothing to answer; the reason is for the log.
    Drop(Ignored),
}

/// Why a request is refused with an ERROR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal<'a> {
    /// A request larger than the receive buffer.
    TooLarge,
    /// A request that does not parse.
    Malformed(ParseError),
    /// A write request (this server is read-only).
    Write { filename: &'a [u8] },
    /// Mail mode (RFC 1350 obsoleted it).
    MailMode { filename: &'a [u8] },
    /// A transfer cap.
    OverCap(OverCap),
}

impl Refusal<'_> {
    /// The ERROR code sent.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::TooLarge | Refusal::Malformed(_) | Refusal::MailMode { .. } => {
                ErrorCode::IllegalOperation
            }
            Refusal::Write { .. } => ErrorCode::AccessViolation,
            Refusal::OverCap(_) => ErrorCode::NotDefined,
        }
    }

    /// Write the ERROR packet into `buf` (at least 5 bytes; 516 holds any message); returns its
    /// length. Does not allocate.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        match self {
            Refusal::Malformed(e) => emit_error_fmt(buf, self.code(), format_args!("{e}")),
            _ => emit_error(buf, self.code(), self.message()),
        }
    }

    /// The ERROR message, when it is a constant.
    fn message(&self) -> &'static str {
        match self {
            Refusal::TooLarge => "request too large",
            Refusal::Malformed(_) => "malformed request",
            Refusal::Write { .. } => READ_ONLY,
            Refusal::MailMode { .. } => "mail mode is not supported",
            Refusal::OverCap(r) => r.message(),
        }
    }
}

impl fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Malformed(e) => write!(f, "{e}"),
            r => f.write_str(r.message()),
        }
    }
}

/// Why a datagram on a listening socket is dropped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Larger than the receive buffer, and not a request.
    Truncated,
    /// A packet that has no place on the request port (DATA, ACK, ...).
    Unexpected(Opcode),
    /// Not a TFTP packet.
    Malformed(ParseError),
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::Truncated => f.write_str("datagram larger than the receive buffer"),
            Ignored::Unexpected(op) => write!(f, "unexpected {op:?} packet"),
            Ignored::Malformed(e) => write!(f, "{e}"),
        }
    }
}

/// An RFC 2090 request the endpoint offers to the multicast service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct McRequest {
    pub client: SocketAddr,
    /// The address the request was sent to.
    pub local: IpAddr,
    /// The block size negotiated for it (never more than asked); the service uses its bucket.
    pub blksize: BlockSize,
    /// The client asked for `tsize`.
    pub tsize: bool,
}

/// The multicast service as the endpoint sees it: [`offer`](Multicast::offer) decides, at once
/// and without blocking, whether the service takes the request (and then answers the client
/// itself). A closure `FnMut(&McRequest, Instant) -> bool` is one.
pub trait Multicast {
    fn offer(&mut self, request: &McRequest, now: Instant) -> bool;
}

impl<F: FnMut(&McRequest, Instant) -> bool> Multicast for F {
    fn offer(&mut self, request: &McRequest, now: Instant) -> bool {
        self(request, now)
    }
}

/// No multicast service: every request is served by unicast.
pub struct NoMulticast;

impl Multicast for NoMulticast {
    fn offer(&mut self, _: &McRequest, _: Instant) -> bool {
        false
    }
}

/// What [`Endpoint::accept`] decided.
#[derive(Debug)]
pub enum Accept {
    /// A unicast transfer: the driver opens its socket (from the request's local address, to the
    /// client), then drives [`Endpoint::transfer_mut`]. If it cannot, it answers with an ERROR
    /// and [`release`](Endpoint::release)s the transfer.
    Unicast(Accepted),
    /// The multicast service took it (and answers the client).
    Multicast,
    /// Refused: answer with this ERROR.
    Refuse(Refusal<'static>),
}

/// A unicast transfer just accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: TransferId,
    /// Segments of the granted blksize fit the interface unfragmented: GSO may send them.
    pub gso: bool,
}

/// Why the endpoint closed a transfer itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A different request came from the same client address and port.
    Superseded,
    /// Dropped to make room for a new request: the share was full and its client never answered.
    Evicted,
}

impl CloseReason {
    /// For the end-of-transfer log line.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Superseded => "superseded by a new request from the same client port",
            CloseReason::Evicted => {
                "dropped for a new request: server at its transfer cap, client never answered"
            }
        }
    }
}

/// What the driver must know, from [`Endpoint::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The endpoint closed this transfer: stop receiving on its socket, log its end, and
    /// [`release`](Endpoint::release) it once its socket is closed.
    Closed { id: TransferId, reason: CloseReason },
}

struct Entry {
    transfer: Transfer,
    /// The request datagram, to tell a resend (identical bytes) from a new request.
    request: Box<[u8]>,
    started: Instant,
    /// Its place under the caps, given back when released.
    ticket: Option<Ticket>,
    /// In the table by peer (not closed).
    live: bool,
    /// Closed by eviction (counted in `evicted_closing` until released).
    evicted: bool,
}

struct Slot {
    gen: u16,
    entry: Option<Box<Entry>>,
}

/// One worker's endpoint. See the module docs.
pub struct Endpoint {
    cfg: EndpointConfig,
    admission: Arc<Admission>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_peer: HashMap<SocketAddr, TransferId>,
    /// Transfers whose client has not answered yet, oldest first (lazily cleaned: entries that
    /// are gone or answered are skipped; compacted when it grows past twice the slots).
    unverified: VecDeque<TransferId>,
    /// Tickets held by transfers not yet released (at most `share`).
    held: usize,
    /// Evicted transfers not yet released.
    evicted_closing: usize,
    events: VecDeque<Event>,
}

/// Heap bytes the endpoint holds per transfer, besides its request (at most one receive
/// buffer): its entry and slot, and its table entries.
pub const fn transfer_memory_bound() -> usize {
    std::mem::size_of::<Entry>() + std::mem::size_of::<Slot>() + 3 * 64
}

impl Endpoint {
    pub fn new(cfg: EndpointConfig, admission: Arc<Admission>) -> Self {
        Endpoint {
            cfg: EndpointConfig {
                share: cfg.share.max(1),
                ..cfg
            },
            admission,
            slots: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            unverified: VecDeque::new(),
            held: 0,
            evicted_closing: 0,
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    /// New limits and share for the requests that follow (a reload); running transfers keep
    /// what they negotiated. A share below the transfers held only refuses (or makes room
    /// among them) until enough have ended.
    pub fn reconfigure(&mut self, cfg: EndpointConfig) {
        self.cfg = EndpointConfig {
            share: cfg.share.max(1),
            ..cfg
        };
    }

    /// `datagram` from `peer` is a resend of the request of a live transfer (what
    /// [`handle_request`](Self::handle_request) would answer with [`Decision::Duplicate`]).
    pub fn is_resend(&self, peer: SocketAddr, datagram: &[u8]) -> bool {
        self.by_peer
            .get(&peer)
            .and_then(|&id| self.entry(id))
            .is_some_and(|e| e.live && *e.request == *datagram)
    }

    /// The caps shared with the other workers.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// A datagram from `peer` arrived on a listening socket, addressed to `local`; `truncated`:
    /// it was larger than the receive buffer. See the module docs.
    pub fn handle_request<'a>(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        local: IpAddr,
        datagram: &'a [u8],
        truncated: bool,
    ) -> Decision<'a> {
        let is_request = matches!(datagram, [0, 1 | 2, ..]);
        if truncated {
            return match is_request {
                true => Decision::Refuse(Refusal::TooLarge),
                false => Decision::Drop(Ignored::Truncated),
            };
        }
        let request = match Packet::parse(datagram) {
            Ok(Packet::Rrq(r)) => r,
            Ok(Packet::Wrq(r)) => {
                return Decision::Refuse(Refusal::Write {
                    filename: r.filename,
                })
            }
            Ok(other) => return Decision::Drop(Ignored::Unexpected(other.opcode())),
            Err(e) if is_request => return Decision::Refuse(Refusal::Malformed(e)),
            Err(e) => return Decision::Drop(Ignored::Malformed(e)),
        };
        if let Some(&old) = self.by_peer.get(&peer) {
            if let Some(e) = self.entry_mut(old) {
                if *e.request == *datagram {
                    // A retransmitted RRQ: the client has seen nothing of our answer yet. The
                    // transfer resends its OACK or first block (rate-limited), not a new one.
                    e.transfer.handle_duplicate_request(now);
                    return Decision::Duplicate(old);
                }
            }
            // Same client port, another request: the client has moved on.
            self.close_as(old, CloseReason::Superseded);
        }
        if request.mode == Mode::Mail {
            return Decision::Refuse(Refusal::MailMode {
                filename: request.filename,
            });
        }
        Decision::Lookup(Incoming {
            peer,
            local,
            raw: datagram,
            request,
        })
    }

    /// Accept a looked-up request for content of `len` bytes (`None`: learned while sending),
    /// on an interface of `mtu` bytes (`None`: unknown), whose path holds `path_bytes` for this
    /// window (the link controller's [`crate::proto::cc::LinkCc::oack_window_bytes`]; `None`:
    /// open, the window asked is granted). See the module docs.
    pub fn accept(
        &mut self,
        now: Instant,
        incoming: Incoming<'_>,
        len: Option<u64>,
        mtu: Option<u32>,
        path_bytes: Option<u64>,
        multicast: &mut dyn Multicast,
    ) -> Accept {
        let peer = incoming.peer;
        let opts = RequestOptions::parse(&incoming.request.options);
        let ip = if peer.is_ipv4() {
            IpVersion::V4
        } else {
            IpVersion::V6
        };
        let limits = self.cfg.limits;
        let mut negotiated = negotiate(
            &opts,
            &limits,
            mtu.map(|m| blksize_for_mtu(m, ip)),
            len.unwrap_or(0),
        );
        if let Some(b) = path_bytes {
            negotiated.cap_window_to_path(b, ip == IpVersion::V6);
        }
        // A length learned while sending (netascii) cannot be announced: no tsize (as tftpd-hpa).
        if len.is_none() {
            negotiated.tsize = None;
        }
        if opts.multicast && incoming.request.mode == Mode::Octet && peer.is_ipv4() {
            let offer = McRequest {
                client: peer,
                local: incoming.local,
                blksize: negotiated.blksize,
                tsize: opts.tsize,
            };
            if multicast.offer(&offer, now) {
                return Accept::Multicast;
            }
        }
        let ticket = match self.admit(now, peer) {
            Ok(t) => t,
            Err(r) => return Accept::Refuse(Refusal::OverCap(r)),
        };
        let transfer = Transfer::new(
            TransferConfig {
                peer,
                negotiated,
                content_len: len.unwrap_or(LENGTH_UNKNOWN),
                max_timeout: limits.timeout,
                min_rto: self.cfg.min_rto,
                retries: limits.retries,
            },
            now,
        );
        // GSO only where every segment fits the interface unfragmented.
        let hdr = if peer.is_ipv4() { 28 } else { 48 };
        let gso = !matches!(mtu, Some(m) if negotiated.blksize.bytes() + 4 + hdr > m as usize);
        let id = self.insert(Entry {
            transfer,
            request: incoming.raw.into(),
            started: now,
            ticket: Some(ticket),
            live: true,
            evicted: false,
        });
        self.by_peer.insert(peer, id);
        self.note_unverified(id);
        Accept::Unicast(Accepted { id, gso })
    }

    /// What the driver must know (see [`Event`]). Drain after every call.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A transfer (live or closed, until released).
    pub fn transfer(&self, id: TransferId) -> Option<&Transfer> {
        self.entry(id).map(|e| &e.transfer)
    }

    /// A transfer to drive (live or closed, until released).
    pub fn transfer_mut(&mut self, id: TransferId) -> Option<&mut Transfer> {
        self.entry_mut(id).map(|e| &mut e.transfer)
    }

    /// When the transfer was accepted.
    pub fn started(&self, id: TransferId) -> Option<Instant> {
        self.entry(id).map(|e| e.started)
    }

    /// The transfer is not closed.
    pub fn is_live(&self, id: TransferId) -> bool {
        self.entry(id).is_some_and(|e| e.live)
    }

    /// The live transfers.
    pub fn live(&self) -> impl Iterator<Item = TransferId> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.entry.as_ref().filter(|e| e.live).map(|_| TransferId {
                idx: i as u32,
                gen: s.gen,
            })
        })
    }

    /// Places under the caps held (transfers live or waiting to be released).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Evicted transfers waiting to be released (at most [`MAX_LINGERING`]).
    pub fn evicted_waiting(&self) -> usize {
        self.evicted_closing
    }

    /// The driver ended this transfer (its outcome is in, or the driver aborted it): it leaves
    /// the table by peer (a new request from its client is new). It keeps its place under the
    /// caps until [`release`](Self::release)d. Closing twice does nothing.
    pub fn close(&mut self, id: TransferId) {
        let Some(e) = self.entry_mut(id) else {
            return;
        };
        if !e.live {
            return;
        }
        e.live = false;
        let peer = e.transfer.peer();
        if self.by_peer.get(&peer) == Some(&id) {
            self.by_peer.remove(&peer);
        }
    }

    /// The transfer's socket is closed (or was never opened): its place under the caps goes
    /// back and its id may be reused. Closes it first if needed.
    pub fn release(&mut self, id: TransferId) {
        self.close(id);
        let Some(slot) = self.slots.get_mut(id.idx as usize) else {
            return;
        };
        if slot.gen != id.gen {
            return;
        }
        let Some(entry) = slot.entry.take() else {
            return;
        };
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(id.idx);
        if entry.ticket.is_some() {
            self.held -= 1;
        }
        if entry.evicted {
            self.evicted_closing -= 1;
        }
    }

    fn entry(&self, id: TransferId) -> Option<&Entry> {
        let s = self.slots.get(id.idx as usize)?;
        (s.gen == id.gen).then_some(())?;
        s.entry.as_deref()
    }

    fn entry_mut(&mut self, id: TransferId) -> Option<&mut Entry> {
        let s = self.slots.get_mut(id.idx as usize)?;
        (s.gen == id.gen).then_some(())?;
        s.entry.as_deref_mut()
    }

    fn close_as(&mut self, id: TransferId, reason: CloseReason) {
        if !self.is_live(id) {
            return;
        }
        self.close(id);
        if reason == CloseReason::Evicted {
            if let Some(e) = self.entry_mut(id) {
                e.evicted = true;
            }
            self.evicted_closing += 1;
        }
        if self.events.len() < EVENT_CAP {
            self.events.push_back(Event::Closed { id, reason });
        }
    }

    fn insert(&mut self, entry: Entry) -> TransferId {
        let entry = Some(Box::new(entry));
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.slots[idx as usize];
            slot.entry = entry;
            TransferId { idx, gen: slot.gen }
        } else {
            let idx = self.slots.len() as u32;
            self.slots.push(Slot { gen: 0, entry });
            TransferId { idx, gen: 0 }
        }
    }

    /// Admission of a new transfer from `peer` (see the module docs). The ticket returned is
    /// counted in `held`: a fresh one here, a reassigned one still from its victim.
    fn admit(&mut self, now: Instant, peer: SocketAddr) -> Result<Ticket, OverCap> {
        let adm = self.admission.clone();
        if self.held < self.cfg.share {
            let t = adm.admit(peer.ip(), now)?;
            self.held += 1;
            return Ok(t);
        }
        // The share is full: make room only for a request within its own address's limits.
        adm.check(peer.ip(), now)?;
        let ticket = self.evict_unverified().ok_or(OverCap::Busy)?;
        match adm.reassign(ticket, peer.ip(), now) {
            Ok(t) => Ok(t),
            // The victim is gone already; its place is given back with the ticket.
            Err((t, r)) => {
                drop(t);
                self.held -= 1;
                Err(r)
            }
        }
    }

    /// Remember a new transfer as not yet answered; compact the list when it has grown.
    fn note_unverified(&mut self, id: TransferId) {
        self.unverified.push_back(id);
        if self.unverified.len() > 2 * self.slots.len() + 64 {
            let slots = &self.slots;
            self.unverified.retain(|id| {
                slots.get(id.idx as usize).is_some_and(|s| {
                    s.gen == id.gen
                        && s.entry
                            .as_deref()
                            .is_some_and(|e| e.live && !e.transfer.is_verified())
                })
            });
        }
    }

    /// Close the oldest transfer whose client never answered, to make room for a new request,
    /// and return its ticket (still counted in `held`); the transfer itself waits for the
    /// driver's release. `None` when there is none, or when too many evicted transfers still
    /// wait.
    fn evict_unverified(&mut self) -> Option<Ticket> {
        if self.evicted_closing >= MAX_LINGERING {
            return None;
        }
        while let Some(id) = self.unverified.pop_front() {
            let Some(e) = self.entry_mut(id) else {
                continue;
            };
            if !e.live || e.transfer.is_verified() {
                continue;
            }
            let Some(ticket) = e.ticket.take() else {
                continue;
            };
            self.close_as(id, CloseReason::Evicted);
            return Some(ticket);
        }
        None
    }
}

#[cfg(test)]
mod tests;
