//! Transfer driving in the TFTP service: datagrams and errors of transfer sockets, send
//! completions, windows built into [`TxBufs`] and submitted, control datagrams (OACK, ERROR),
//! the close of a transfer and its end-of-transfer line (see the contract of [`super`]).

use super::{Core, Driver, Io, SendStatus, SlotId, WorkerLogs, CTRL_CALL, FILE_CHANGED};
use crate::engine::links::Locked;
use crate::proto::ratelog::LogLimit;
use crate::proto::tftp::endpoint::TransferId;
use crate::proto::tftp::packet::ErrorCode;
use crate::proto::tftp::transfer::{Event as TransferEvent, Outcome};
use crate::proto::Payload;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;
use tracing::{debug, info, trace, warn};

impl Core {
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
    pub(super) fn abort(&mut self, id: TransferId, reason: &'static str, message: &'static str) {
        if let Some(io) = self.io_mut(id) {
            io.reason = Some(reason);
        }
        if let Some(t) = self.endpoint.transfer_mut(id) {
            t.abort(ErrorCode::NotDefined, message);
        }
    }

    /// The client's port is unreachable: the transfer ends as completed-unconfirmed when every
    /// block was sent, else it is aborted.
    fn peer_unreachable(&mut self, id: TransferId) {
        if let Some(io) = self.io_mut(id) {
            io.reason = Some("client port unreachable");
        }
        if let Some(t) = self.endpoint.transfer_mut(id) {
            t.peer_unreachable("client port unreachable");
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
                // ICMP unreachable: the client is gone (after its final ACK, or not).
                self.peer_unreachable(id);
                self.drive(id, now, drv);
            }
            e => {
                debug!(client = %io.peer, reason = %io::Error::from_raw_os_error(e), "receive error on a transfer socket");
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
        if call == CTRL_CALL {
            io.ctrl_in_flight = false;
            if res < 0 {
                debug!(client = %io.peer, reason = %io::Error::from_raw_os_error(-res), "control datagram not sent");
            }
        } else if was == 1 {
            // The window's last completion: the kernel holds none of the file's bytes any more.
            io.content.end_send();
        }
        if res < 0 && call != CTRL_CALL {
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
            // A control datagram (the ERROR that ended it) waited for the window: it goes now,
            // and the socket stays open until it has completed too.
            if let Some(len) = io.ctrl_pending.take() {
                self.send_ctrl(id, len, drv);
            }
            self.maybe_free(id);
            return;
        }
        if let Some((call, e)) = io.send_failure.take() {
            self.on_send_failure(id, call, e);
        }
        self.drive(id, now, drv);
    }

    pub(super) fn on_send_failure(&mut self, id: TransferId, call: usize, errno: i32) {
        let worker = self.worker;
        let mut disable_worker_gso = false;
        let Some(io) = self.io_mut(id) else {
            return;
        };
        let c = io.tx.call(call);
        let err = io::Error::from_raw_os_error(errno);
        let mut abort = None;
        let mut unreachable = false;
        match errno {
            libc::EAGAIN | libc::ENOBUFS | libc::ECANCELED | libc::EINTR => {
                // The rest of the window is lost; the transfer's timer resends it.
                trace!(client = %io.peer, reason = %err, "send queue full; window cut short");
            }
            libc::EIO | libc::EINVAL | libc::EOPNOTSUPP if c.is_some_and(|c| c.gso) => {
                if errno == libc::EINVAL {
                    // The path refuses this segment size; other transfers may be fine.
                    debug!(client = %io.peer, reason = %err, "UDP GSO refused for this transfer; sending one datagram per block");
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
                unreachable = true
            }
            libc::EMSGSIZE => {
                abort = Some((
                    "block larger than the path MTU",
                    "block size exceeds the path MTU",
                ))
            }
            _ => {
                debug!(client = %io.peer, reason = %err, "send failed; window cut short");
            }
        }
        if let Some((reason, message)) = abort {
            self.abort(id, reason, message);
        }
        if unreachable {
            self.peer_unreachable(id);
        }
        if disable_worker_gso && self.gso {
            self.gso = false;
            warn!(worker, reason = %err, "UDP GSO send failed; this worker sends one datagram per block from now on");
        }
    }

    /// Submit the control datagram in the first `len` bytes of the transfer's `tx.ctrl` (nothing
    /// of the transfer is in flight: see [`Driver::send_ctrl`]).
    fn send_ctrl(&mut self, id: TransferId, len: usize, drv: &mut impl Driver) {
        let Some(io) = self.io_mut(id) else {
            return;
        };
        let Some(fd) = io.sock.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        debug_assert_eq!(io.in_flight, 0);
        match drv.send_ctrl(id.into(), fd, io.tx.ctrl_msg(len)) {
            SendStatus::Done(None) => {}
            SendStatus::Done(Some((_, e))) => {
                debug!(client = %io.peer, reason = %io::Error::from_raw_os_error(e), "control datagram not sent");
            }
            SendStatus::InFlight(n) => {
                io.in_flight += n;
                io.ctrl_in_flight = n > 0;
            }
        }
    }

    pub(super) fn send_blocks(
        &mut self,
        id: TransferId,
        first: u64,
        count: u32,
        drv: &mut impl Driver,
    ) {
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
    pub(super) fn drive(&mut self, id: TransferId, now: Instant, drv: &mut impl Driver) {
        self.announce(id, now);
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
                if let Some(len) = io.ctrl_pending.take() {
                    self.send_ctrl(id, len, drv);
                    continue;
                }
            }
            if io.ctrl_in_flight || io.ctrl_pending.is_some() {
                // `tx.ctrl` is in use: nothing more is polled until the control datagram is out.
                break;
            }
            let Some(transfer) = self.endpoint.transfer_mut(id) else {
                return;
            };
            let polled = match &io.link {
                Some(l) => transfer.poll_transmit_paced(now, &mut io.tx.ctrl[..], &mut Locked(l)),
                None => transfer.poll_transmit(now, &mut io.tx.ctrl[..]),
            };
            let Some(tx) = polled else {
                break;
            };
            match tx.payload {
                Payload::Datagram(len) => {
                    if io.in_flight > 0 {
                        // DATA is in flight: the datagram follows it, never overtakes it.
                        io.ctrl_pending = Some(len);
                    } else {
                        self.send_ctrl(id, len, drv);
                    }
                }
                Payload::Blocks { first, count } => {
                    if io.in_flight > 0 {
                        // The newest run wins, but the next piece of a paced window joins the
                        // one waiting before it (both were granted; neither may be lost).
                        io.pending = match io.pending {
                            Some((f, n)) if f + u64::from(n) == first => {
                                Some((f, n.saturating_add(count)))
                            }
                            _ => Some((first, count)),
                        };
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
            Some(d) => drv.arm(super::timer_key(id), d),
            None => drv.cancel(super::timer_key(id)),
        }
    }

    /// Log the end of a transfer and stop receiving on its socket; free the slot (closing the
    /// socket) once no send is in flight and the receive has ended (see the module docs).
    pub(super) fn close(&mut self, id: TransferId, now: Instant, drv: &mut impl Driver) {
        let worker = self.worker;
        drv.cancel(super::timer_key(id));
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
            Some(o) => !matches!(
                o,
                Outcome::Completed | Outcome::ProbeEnded(_) | Outcome::Unconfirmed
            ),
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
            if let Some(o) = &self.observer {
                o.ended(transfer, io, now.saturating_duration_since(started));
            }
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
    let throughput_bps = bytes.saturating_mul(8_000) / duration_ms.max(1);
    let spurious = s.probes_spurious;
    // Pacing: the waits of this transfer, and its interface's controller now (0 bit/s: open).
    let paced_waits = t.cc_stats().waits;
    let (link_bps, link_loss_cuts, link_delay_cuts) = io.link.as_deref().map_or((0, 0, 0), |l| {
        let l = crate::engine::links::lock(l);
        let st = l.stats();
        (
            l.pacing_rate().map_or(0, |r| r.bits_per_sec()),
            st.congestion_events,
            st.delay_cuts,
        )
    });
    macro_rules! line {
        ($lvl:ident, $outcome:expr, $code:expr, $msg:literal) => {
            tracing::$lvl!(
                %client, file, bytes, duration_ms, throughput_bps, resent, timeouts, spurious, blksize, windowsize, srtt_us,
                paced_waits, link_bps, link_loss_cuts, link_delay_cuts,
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
                "client_error",
                c.as_u16(),
                "transfer ended by the client"
            )
        }
        Some(Outcome::TimedOut) => line!(warn, "timeout", 0u16, "transfer failed"),
        Some(Outcome::ProtocolViolation) => {
            line!(warn, "protocol_violation", 4u16, "transfer failed")
        }
        Some(Outcome::Aborted(c)) => line!(warn, "aborted", c.as_u16(), "transfer failed"),
        Some(Outcome::Unanswered) => line!(debug, "unanswered", 0u16, "transfer dropped"),
        Some(Outcome::Unconfirmed) => line!(
            info,
            "completed-unconfirmed",
            0u16,
            "transfer finished; every block was sent, the final ACK was not seen"
        ),
        // Superseded before any data was sent: the end of a size probe whose ERROR came late.
        None if s.blocks_sent == 0 => line!(debug, "superseded", 0u16, "transfer dropped"),
        None => line!(info, "superseded", 0u16, "transfer dropped"),
    }
}
