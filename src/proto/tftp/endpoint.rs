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
//!   segments of the granted blksize fit the interface ([`Accepted::gso`]).
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
    /// on an interface of `mtu` bytes (`None`: unknown). See the module docs.
    pub fn accept(
        &mut self,
        now: Instant,
        incoming: Incoming<'_>,
        len: Option<u64>,
        mtu: Option<u32>,
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
mod tests {
    use super::*;
    use crate::proto::sim::{addr, Link, Node, Phase, Ran, Sim, TftpClient, TftpServer};
    use crate::proto::tftp::admit::AdmissionConfig;
    use crate::proto::tftp::client::{ClientConfig, ClientError, Event as ClientEvent, ProbeEnd};
    use crate::proto::tftp::packet::{emit_ack, OptionWriter};
    use crate::proto::tftp::transfer::{Outcome, PRE_ACK_RESENDS};
    use crate::proto::tftp::{BlockNum, WindowSize};

    const SERVER: u8 = 1;

    fn endpoint(share: usize, per_client: usize, rate: u32) -> Endpoint {
        endpoint_with(share, per_client, rate, Limits::default())
    }

    fn endpoint_with(share: usize, per_client: usize, rate: u32, limits: Limits) -> Endpoint {
        let adm = Admission::new(AdmissionConfig {
            max_transfers: share,
            max_per_client: per_client,
            client_rate: rate,
        });
        let cfg = EndpointConfig {
            limits,
            min_rto: Duration::from_millis(2),
            share,
        };
        Endpoint::new(cfg, adm)
    }

    fn request(write: bool, name: &[u8], mode: Mode, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = [0u8; 512];
        let mut w = OptionWriter::request(&mut buf, write, name, mode).unwrap();
        for (n, v) in opts {
            w.option(n, v.as_bytes()).unwrap();
        }
        let n = w.finish();
        buf[..n].to_vec()
    }

    fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        request(false, name.as_bytes(), Mode::Octet, opts)
    }

    fn local() -> IpAddr {
        addr(SERVER, 69).ip()
    }

    /// A request from `peer`, looked up as a file of `len` bytes and accepted.
    fn accept(e: &mut Endpoint, now: Instant, peer: SocketAddr, dg: &[u8], len: u64) -> Accept {
        match e.handle_request(now, peer, local(), dg, false) {
            Decision::Lookup(i) => e.accept(now, i, Some(len), None, &mut NoMulticast),
            d => panic!("{d:?}"),
        }
    }

    fn unicast(a: Accept) -> Accepted {
        match a {
            Accept::Unicast(a) => a,
            a => panic!("{a:?}"),
        }
    }

    fn refused(a: Accept) -> Refusal<'static> {
        match a {
            Accept::Refuse(r) => r,
            a => panic!("{a:?}"),
        }
    }

    fn events(e: &mut Endpoint) -> Vec<Event> {
        std::iter::from_fn(|| e.poll_event()).collect()
    }

    /// The client ACKs the transfer's first reply: its address is verified.
    fn verify(e: &mut Endpoint, id: TransferId, now: Instant) {
        let t = e.transfer_mut(id).unwrap();
        let mut buf = [0u8; 512];
        while t.poll_transmit(now, &mut buf).is_some() {}
        let mut ack = [0u8; 4];
        emit_ack(&mut ack, BlockNum::ZERO);
        t.handle_datagram(now, &ack);
        assert!(t.is_verified());
    }

    #[test]
    fn refusals_carry_their_codes_and_drops_their_reasons() {
        let now = crate::sim_origin();
        let mut e = endpoint(4, 4, 0);
        let peer = addr(2, 2000);
        let mut buf = [0u8; 516];
        let wrq = request(true, b"x", Mode::Octet, &[]);
        let Decision::Refuse(r) = e.handle_request(now, peer, local(), &wrq, false) else {
            panic!()
        };
        assert_eq!(r, Refusal::Write { filename: b"x" });
        let n = r.emit(&mut buf);
        assert_eq!(
            &buf[..n],
            b"\x00\x05\x00\x02ringboot is a read-only server\x00"
        );
        let Decision::Refuse(r) = e.handle_request(now, peer, local(), b"\x00\x01x\x00", false)
        else {
            panic!()
        };
        assert_eq!(r, Refusal::Malformed(ParseError::MissingMode));
        let n = r.emit(&mut buf);
        assert_eq!(
            &buf[..n],
            b"\x00\x05\x00\x04request has no NUL-terminated mode\x00"
        );
        let mail = request(false, b"x", Mode::Mail, &[]);
        let Decision::Refuse(r) = e.handle_request(now, peer, local(), &mail, false) else {
            panic!()
        };
        assert_eq!(r.code(), ErrorCode::IllegalOperation);
        assert_eq!(r.to_string(), "mail mode is not supported");
        let rq = rrq("x", &[]);
        let d = e.handle_request(now, peer, local(), &rq, true);
        assert!(matches!(d, Decision::Refuse(Refusal::TooLarge)), "{d:?}");
        let cases: [(&[u8], bool, Ignored); 3] = [
            (b"\x00\x04\x00\x01", true, Ignored::Truncated),
            (b"\x00\x04\x00\x01", false, Ignored::Unexpected(Opcode::Ack)),
            (b"\x00", false, Ignored::Malformed(ParseError::TooShort(1))),
        ];
        for (dg, truncated, why) in cases {
            match e.handle_request(now, peer, local(), dg, truncated) {
                Decision::Drop(w) => assert_eq!(w, why),
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(e.held(), 0);
    }

    #[test]
    fn a_resent_request_is_a_duplicate_and_a_different_one_supersedes() {
        let now = crate::sim_origin();
        let mut e = endpoint(4, 4, 0);
        let peer = addr(2, 2000);
        let probe = rrq("f", &[("tsize", "0"), ("blksize", "1468")]);
        let a = unicast(accept(&mut e, now, peer, &probe, 10_000));
        assert!(e.is_live(a.id));
        let later = now + Duration::from_secs(1);
        match e.handle_request(later, peer, local(), &probe, false) {
            Decision::Duplicate(id) => assert_eq!(id, a.id),
            d => panic!("{d:?}"),
        }
        assert!(events(&mut e).is_empty());
        // The same request from another port is another client.
        let b = unicast(accept(&mut e, now, addr(2, 2001), &probe, 10_000));
        assert_ne!(a.id, b.id);
        // The real request after the probe, from the same port, its ERROR still on the way.
        let real = rrq("f", &[("blksize", "1468")]);
        let d = e.handle_request(later, peer, local(), &real, false);
        assert!(matches!(d, Decision::Lookup(_)), "{d:?}");
        let closed = Event::Closed {
            id: a.id,
            reason: CloseReason::Superseded,
        };
        assert_eq!(events(&mut e), [closed]);
        assert!(!e.is_live(a.id));
        assert_eq!(
            e.held(),
            2,
            "its place is held until the driver releases it"
        );
        e.release(a.id);
        assert_eq!(e.held(), 1);
        assert!(e.transfer(a.id).is_none());
    }

    #[test]
    fn negotiation_fits_the_mtu_and_decides_gso() {
        let now = crate::sim_origin();
        let mut e = endpoint(8, 8, 0);
        let big = rrq("f", &[("blksize", "65464"), ("tsize", "0")]);
        let cases = [
            (addr(2, 1), Some(1500), Some(1000), 1468, true, Some(1000)),
            (addr(2, 2), None, Some(1000), 65464, true, Some(1000)),
            // Netascii's length is learned while sending: no tsize.
            (addr(2, 3), Some(9000), None, 8968, true, None),
        ];
        for (peer, mtu, len, blksize, gso, tsize) in cases {
            let Decision::Lookup(i) = e.handle_request(now, peer, local(), &big, false) else {
                panic!()
            };
            let a = unicast(e.accept(now, i, len, mtu, &mut NoMulticast));
            let n = *e.transfer(a.id).unwrap().negotiated();
            assert_eq!((n.blksize.get(), a.gso, n.tsize), (blksize, gso, tsize));
        }
        // Fragmentation allowed: the block is not cut to the MTU, and GSO may not send it.
        let frag = Limits {
            allow_fragmentation: true,
            ..Limits::default()
        };
        let mut e = endpoint_with(8, 8, 0, frag);
        let Decision::Lookup(i) = e.handle_request(now, addr(2, 4), local(), &big, false) else {
            panic!()
        };
        let a = unicast(e.accept(now, i, Some(1), Some(1500), &mut NoMulticast));
        assert_eq!(e.transfer(a.id).unwrap().negotiated().blksize.get(), 65464);
        assert!(!a.gso);
    }

    #[test]
    fn rfc2090_requests_are_offered_to_the_multicast_service_first() {
        let now = crate::sim_origin();
        let mut e = endpoint(8, 8, 0);
        let peer = addr(2, 2000);
        let mc = rrq(
            "f",
            &[("multicast", ""), ("blksize", "1428"), ("tsize", "0")],
        );
        let mut offers = Vec::new();
        let Decision::Lookup(i) = e.handle_request(now, peer, local(), &mc, false) else {
            panic!()
        };
        let mut take = |r: &McRequest, _: Instant| {
            offers.push(*r);
            true
        };
        assert!(matches!(
            e.accept(now, i, Some(5000), None, &mut take),
            Accept::Multicast
        ));
        let want = McRequest {
            client: peer,
            local: local(),
            blksize: BlockSize::new(1428).unwrap(),
            tsize: true,
        };
        assert_eq!(offers, [want]);
        assert_eq!(e.held(), 0, "the service holds it, not the endpoint");
        // The service says no: plain unicast, no `multicast` in the OACK.
        let Decision::Lookup(i) = e.handle_request(now, peer, local(), &mc, false) else {
            panic!()
        };
        let a = unicast(e.accept(now, i, Some(5000), None, &mut |_: &McRequest, _| false));
        let mut buf = [0u8; 512];
        let t = e.transfer_mut(a.id).unwrap();
        let Some(crate::proto::Transmit {
            payload: crate::proto::Payload::Datagram(n),
            ..
        }) = t.poll_transmit(now, &mut buf)
        else {
            panic!()
        };
        let Ok(Packet::Oack(o)) = Packet::parse(&buf[..n]) else {
            panic!()
        };
        assert!(o.get("multicast").is_none());
        // Never offered: netascii, IPv6, or no `multicast` option.
        let never = |r: &McRequest, _: Instant| -> bool { panic!("offered {r:?}") };
        let v6: SocketAddr = "[2001:db8::2]:2000".parse().unwrap();
        let text = request(false, b"f", Mode::Netascii, &[("multicast", "")]);
        for (peer, dg) in [(addr(2, 3), &text), (v6, &mc), (addr(2, 4), &rrq("f", &[]))] {
            let Decision::Lookup(i) = e.handle_request(now, peer, local(), dg, false) else {
                panic!()
            };
            unicast(e.accept(now, i, Some(5000), None, &mut { never }));
        }
    }

    #[test]
    fn over_the_share_an_unverified_transfer_makes_room_within_the_per_address_caps() {
        let now = crate::sim_origin();
        let mut e = endpoint(2, 1, 0);
        let dg = rrq("f", &[("blksize", "1468")]);
        let a = unicast(accept(&mut e, now, addr(2, 1), &dg, 100_000));
        let b = unicast(accept(&mut e, now, addr(3, 1), &dg, 100_000));
        verify(&mut e, b.id, now);
        // Share full: the oldest unverified (a) goes for c.
        let c = unicast(accept(&mut e, now, addr(4, 1), &dg, 100_000));
        let evicted = Event::Closed {
            id: a.id,
            reason: CloseReason::Evicted,
        };
        assert_eq!(events(&mut e), [evicted]);
        assert_eq!((e.held(), e.evicted_waiting()), (2, 1));
        e.release(a.id);
        assert_eq!((e.held(), e.evicted_waiting()), (2, 0));
        verify(&mut e, c.id, now);
        // Everyone answered: nobody to drop.
        let r = refused(accept(&mut e, now, addr(5, 1), &dg, 100_000));
        assert_eq!(r, Refusal::OverCap(OverCap::Busy));
        assert_eq!(r.code(), ErrorCode::NotDefined);
        assert!(r.to_string().starts_with("server busy"));
        // Per address: b's address holds its one transfer.
        e.release(c.id);
        let r = refused(accept(&mut e, now, addr(3, 2), &dg, 100_000));
        assert_eq!(r, Refusal::OverCap(OverCap::ClientBusy));
        assert_eq!(e.held(), 1);
        e.close(b.id);
        e.release(b.id);
        assert_eq!(e.held(), 0);
        assert_eq!(e.admission().total(), 0);
    }

    #[test]
    fn evicted_transfers_waiting_for_their_sockets_are_bounded() {
        let now = crate::sim_origin();
        let mut e = endpoint(1, 1, 0);
        let dg = rrq("f", &[]);
        let mut last = unicast(accept(&mut e, now, addr(2, 1), &dg, 10)).id;
        for i in 1..=MAX_LINGERING as u8 {
            // Each new address evicts the one before, whose socket never closes here.
            let id = unicast(accept(&mut e, now, addr(2 + i, 1), &dg, 10)).id;
            assert_ne!(id, last);
            last = id;
        }
        assert_eq!(e.evicted_waiting(), MAX_LINGERING);
        let r = refused(accept(&mut e, now, addr(100, 1), &dg, 10));
        assert_eq!(r, Refusal::OverCap(OverCap::Busy));
        assert_eq!(e.held(), 1);
    }

    #[test]
    fn the_new_transfer_rate_of_an_address_is_capped() {
        let now = crate::sim_origin();
        // 10 a second, bursts of 2.
        let mut e = endpoint(100, 2, 10);
        let dg = rrq("f", &[]);
        for port in 0..2 {
            let id = unicast(accept(&mut e, now, addr(2, port), &dg, 10)).id;
            e.release(id);
        }
        let r = refused(accept(&mut e, now, addr(2, 9), &dg, 10));
        assert_eq!(r, Refusal::OverCap(OverCap::ClientRate));
        unicast(accept(
            &mut e,
            now + Duration::from_millis(100),
            addr(2, 9),
            &dg,
            10,
        ));
    }

    // -----------------------------------------------------------------------------------------
    // The endpoint, its transfers and firmware-like clients together, on virtual time.
    // -----------------------------------------------------------------------------------------

    fn server(share: usize, per_client: usize, files: &[(&str, usize)]) -> TftpServer {
        let mut s = TftpServer::new(endpoint(share, per_client, 0), addr(SERVER, 69));
        for (name, len) in files {
            let content = (0..*len).map(|i| (i * 7 + i / 251) as u8).collect();
            s.add_file(name.as_bytes(), content);
        }
        s
    }

    fn file(s: &TftpServer, len: usize) -> Vec<u8> {
        let _ = s;
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn edk2(probe: bool) -> ClientConfig {
        ClientConfig {
            blksize: BlockSize::new(1468),
            windowsize: WindowSize::new(4),
            tsize: probe,
            probe: probe.then_some(ProbeEnd::Error8),
            retransmit: Duration::from_millis(400),
            ..ClientConfig::default()
        }
    }

    fn run(net: &mut Sim, nodes: &mut [&mut dyn Node]) {
        let until = net.now() + Duration::from_secs(3600);
        assert_eq!(net.run(nodes, until), Ran::Quiet);
    }

    #[test]
    fn sim_duplicate_request_resends_the_oack_and_the_download_completes() {
        let t0 = crate::sim_origin();
        let mut s = server(4, 4, &[("f", 50_000)]);
        let mut c = TftpClient::one(addr(2, 2000), s.addr, b"f", edk2(false), t0);
        let mut net = Sim::new(t0, 1, Link::lan(0.0, 0.0, 0.0));
        // The first OACK is lost: the client asks again (the same bytes, the same port).
        net.drop_next(c.addr, 1);
        run(&mut net, &mut [&mut s, &mut c]);
        assert_eq!(c.last_event(), Some(&ClientEvent::Finished));
        assert!(c.received == file(&s, 50_000));
        assert_eq!(
            s.decisions[..2],
            ["lookup", "duplicate"],
            "{:?}",
            s.decisions
        );
        assert_eq!(s.ended.len(), 1, "one transfer: {:?}", s.ended);
        assert_eq!(s.ended[0].outcome, Some(Outcome::Completed));
        assert_eq!(s.endpoint.held(), 0);
    }

    #[test]
    fn sim_superseding_request_after_a_size_probe() {
        for lost_error in [true, false] {
            let t0 = crate::sim_origin();
            let mut s = server(4, 4, &[("f", 30_000)]);
            let phases = vec![
                Phase {
                    filename: b"f".to_vec(),
                    cfg: edk2(true),
                    gap: Duration::ZERO,
                },
                Phase {
                    filename: b"f".to_vec(),
                    cfg: edk2(false),
                    gap: Duration::from_millis(3),
                },
            ];
            // Both requests from one port (a ROM that keeps it); the probe's ERROR lost or not.
            let mut c = TftpClient::new(addr(2, 2000), s.addr, phases, t0);
            c.drop_probe_error = lost_error;
            let mut net = Sim::new(t0, 2, Link::lan(0.0, 0.0, 0.0));
            run(&mut net, &mut [&mut s, &mut c]);
            let probe = ClientEvent::ProbeDone {
                tsize: Some(30_000),
            };
            assert_eq!(c.events, [probe, ClientEvent::Finished]);
            assert!(c.received == file(&s, 30_000));
            assert_eq!(s.ended.len(), 2, "{:?}", s.ended);
            if lost_error {
                assert_eq!(s.ended[0].closed_by, Some(CloseReason::Superseded));
                assert_eq!(s.ended[0].outcome, None);
            } else {
                let end = Outcome::ProbeEnded(ErrorCode::OptionNegotiation);
                assert_eq!(s.ended[0].outcome, Some(end));
            }
            assert_eq!(s.ended[1].outcome, Some(Outcome::Completed));
            assert_eq!(s.endpoint.held(), 0);
        }
    }

    #[test]
    fn sim_refusals_reach_the_client_as_errors() {
        let t0 = crate::sim_origin();
        let mut s = server(4, 4, &[("f", 100)]);
        let mail = ClientConfig {
            mode: Mode::Mail,
            ..edk2(false)
        };
        let mut missing = TftpClient::one(addr(2, 1), s.addr, b"nope", edk2(false), t0);
        let mut mailer = TftpClient::one(addr(3, 1), s.addr, b"f", mail, t0);
        let mut net = Sim::new(t0, 3, Link::lan(0.0, 0.0, 0.0));
        run(&mut net, &mut [&mut s, &mut missing, &mut mailer]);
        let code = |c: &TftpClient| match c.last_event() {
            Some(ClientEvent::Failed(ClientError::Server { code, .. })) => *code,
            e => panic!("{e:?}"),
        };
        assert_eq!(code(&missing), ErrorCode::FileNotFound);
        assert_eq!(code(&mailer), ErrorCode::IllegalOperation);
        assert!(s.ended.is_empty());
        assert_eq!(s.decisions, ["lookup", "refuse"]);
    }

    #[test]
    fn sim_caps_refuse_with_error_0_and_a_spoofed_request_makes_room() {
        let t0 = crate::sim_origin();
        let mut s = server(1, 4, &[("f", 200_000)]);
        let mut real = TftpClient::one(addr(2, 1), s.addr, b"f", edk2(false), t0);
        let late = t0 + Duration::from_millis(5);
        let mut other = TftpClient::one(addr(3, 1), s.addr, b"f", edk2(false), late);
        let mut net = Sim::new(t0, 4, Link::lan(0.0, 0.0, 0.0));
        run(&mut net, &mut [&mut s, &mut real, &mut other]);
        assert_eq!(real.last_event(), Some(&ClientEvent::Finished));
        match other.last_event() {
            Some(ClientEvent::Failed(ClientError::Server { code, message })) => {
                assert_eq!(*code, ErrorCode::NotDefined);
                assert!(message.starts_with("server busy"), "{message}");
            }
            e => panic!("{e:?}"),
        }
        // A spoofed request holds the only place; a real client takes it over.
        let t1 = net.now();
        let mut spoofed = TftpClient::one(addr(4, 1), s.addr, b"f", edk2(false), t1);
        spoofed.silent = true;
        let mut net2 = Sim::new(t1, 5, Link::lan(0.0, 0.0, 0.0));
        let fake = rrq("f", &[("blksize", "1468"), ("windowsize", "4")]);
        net2.send(spoofed.addr, s.addr, &fake);
        let mut after = TftpClient::one(
            addr(5, 1),
            s.addr,
            b"f",
            edk2(false),
            t1 + Duration::from_millis(1),
        );
        run(&mut net2, &mut [&mut s, &mut spoofed, &mut after]);
        assert_eq!(after.last_event(), Some(&ClientEvent::Finished));
        let evicted = s.ended.iter().find(|e| e.peer == spoofed.addr).unwrap();
        assert_eq!(evicted.closed_by, Some(CloseReason::Evicted));
        assert_eq!(s.endpoint.held(), 0);
    }

    #[test]
    fn sim_a_spoofed_request_draws_the_pre_ack_budget_and_no_error() {
        for opts in [&[][..], &[("tsize", "0")][..]] {
            let t0 = crate::sim_origin();
            let mut s = server(4, 4, &[("f", 100_000)]);
            let mut victim = TftpClient::one(addr(2, 1), s.addr, b"f", edk2(false), t0);
            victim.silent = true;
            let mut net = Sim::new(t0, 6, Link::lan(0.0, 0.0, 0.0));
            net.send(victim.addr, s.addr, &rrq("f", opts));
            run(&mut net, &mut [&mut s, &mut victim]);
            let first = if opts.is_empty() { 3 } else { 6 }; // DATA 1, or the OACK
            assert_eq!(victim.heard.len(), 1 + PRE_ACK_RESENDS as usize, "{opts:?}");
            assert!(
                victim.heard.iter().all(|&op| op == first),
                "{:?}",
                victim.heard
            );
            assert_eq!(s.ended.len(), 1);
            assert_eq!(s.ended[0].outcome, Some(Outcome::Unanswered));
            assert!(net.now() - t0 <= Duration::from_secs(1 + 2 + 4));
            assert_eq!(s.endpoint.held(), 0);
        }
    }
}
