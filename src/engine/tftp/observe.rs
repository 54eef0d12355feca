//! What a worker tells the metrics registry and the status page (`--metrics`).
//!
//! Contract: a worker holds an [`Observer`] when metrics are on. Per transfer it records once at
//! the start, once at the first acknowledged data (time to first block: from the request's
//! arrival to the ACK that first acknowledges data, block 1), and once at the end (the rest of
//! its counters: blocks resent, timeouts, outcome, duration). Its DATA (blocks and bytes) is
//! counted as it goes: once a second, from the worker's timer, what each running transfer sent
//! since the last count is added to the worker's own shard (so `/metrics` grows during a long
//! transfer), and the rest at its end. The hot path (one datagram) costs nothing here; refusals
//! count one relaxed add each. The same once-a-second pass publishes the running transfers to
//! the status page (one lock of the worker's own slot). No allocation per packet.

use super::{Core, Io};
use crate::metrics::{
    Outcome as MOutcome, Recorder, RefuseReason, TransferPublisher, TransferView,
};
use crate::proto::tftp::admit::OverCap;
use crate::proto::tftp::endpoint::Refusal;
use crate::proto::tftp::transfer::{Outcome, Transfer};
use crate::store::LookupError;
use std::time::{Duration, Instant};

/// A worker's recorder and status publisher.
pub(crate) struct Observer {
    rec: Recorder,
    publisher: TransferPublisher,
}

impl Observer {
    /// The observer of a worker, or `None` when metrics are off.
    pub(crate) fn new(status: Option<&crate::metrics::Status>) -> Option<Observer> {
        let status = status?;
        Some(Observer {
            rec: status.registry().recorder(),
            publisher: status.transfer_publisher(),
        })
    }

    pub(crate) fn started(&self) {
        self.rec.transfer_started();
    }

    /// A transfer ended after `duration` (`outcome` `None`: superseded or dropped by the server).
    pub(crate) fn ended(&self, t: &Transfer, io: &Io, duration: Duration) {
        let mut counted = io.counted;
        count_sent(&self.rec, t, &mut counted, io.content.transfer_len(), true);
        let s = t.stats();
        let outcome = match t.outcome() {
            Some(Outcome::Completed) => MOutcome::Completed,
            Some(Outcome::Unconfirmed) => MOutcome::Unconfirmed,
            Some(Outcome::ProbeEnded(_)) => MOutcome::Probe,
            Some(Outcome::ClientError(_)) => MOutcome::ClientError,
            Some(Outcome::TimedOut) => MOutcome::Timeout,
            Some(Outcome::ProtocolViolation) => MOutcome::ProtocolViolation,
            Some(Outcome::Aborted(_)) | None => MOutcome::Aborted,
            Some(Outcome::Unanswered) => MOutcome::Unanswered,
        };
        self.rec.blocks_resent(s.blocks_resent);
        for _ in 0..s.timeouts.min(1 << 16) {
            self.rec.timeout();
        }
        self.rec.transfer_ended(outcome, duration, s.bytes_acked);
    }

    /// The multicast service did not take an RFC 2090 request (served by unicast instead).
    pub(crate) fn mc_refused(&self, r: crate::engine::mcast::Refusal) {
        use crate::engine::mcast::Refusal as R;
        use crate::metrics::McRefusal as M;
        self.rec.multicast_refused(match r {
            R::Disabled => M::Disabled,
            R::BlockSize => M::BlockSize,
            R::PoolFull => M::PoolFull,
            R::SessionFull => M::SessionFull,
            R::SourceCap => M::SourceCap,
            R::Saturated => M::Saturated,
            R::Late => M::Late,
            R::Slow => M::Slow,
        });
    }

    pub(crate) fn refused(&self, reason: RefuseReason) {
        self.rec.refused(reason);
    }

    pub(crate) fn refusal(&self, r: &Refusal<'_>) {
        self.rec.refused(match r {
            Refusal::TooLarge | Refusal::Malformed(_) => RefuseReason::Malformed,
            Refusal::Write { .. } => RefuseReason::WriteRequest,
            Refusal::MailMode { .. } => RefuseReason::UnsupportedMode,
            Refusal::OverCap(OverCap::ClientBusy) => RefuseReason::ClientBusy,
            Refusal::OverCap(OverCap::ClientRate) => RefuseReason::ClientRate,
            Refusal::OverCap(OverCap::Busy) => RefuseReason::ServerBusy,
        });
    }

    pub(crate) fn lookup_refused(&self, e: &LookupError) {
        self.rec.refused(match e {
            LookupError::NotFound { .. } => RefuseReason::NotFound,
            LookupError::IllegalCharacter
            | LookupError::ParentDirectory
            | LookupError::DrivePrefix
            | LookupError::EmptyName => RefuseReason::BadName,
            LookupError::MailMode => RefuseReason::UnsupportedMode,
            LookupError::Busy { .. } => RefuseReason::FileBusy,
            LookupError::Io { .. } => RefuseReason::ReadError,
            _ => RefuseReason::Forbidden,
        });
    }

    /// When the next status batch is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.publisher.next_due()
    }
}

/// DATA `t` sent: (blocks, file bytes), resends included: each block once, cut at the file's
/// end, plus the resends as full blocks; at the `end`, at least the bytes acknowledged.
fn sent(t: &Transfer, len: Option<u64>, end: bool) -> (u64, u64) {
    let s = t.stats();
    let blksize = u64::from(t.negotiated().blksize.get());
    let once = (s.blocks_sent - s.blocks_resent.min(s.blocks_sent)).saturating_mul(blksize);
    let once = len.map_or(once, |l| once.min(l));
    let bytes = once + s.blocks_resent.saturating_mul(blksize);
    (
        s.blocks_sent,
        if end { bytes.max(s.bytes_acked) } else { bytes },
    )
}

/// Count what `t` sent since `counted` (DATA blocks and file bytes, resends included).
fn count_sent(rec: &Recorder, t: &Transfer, counted: &mut (u64, u64), len: Option<u64>, end: bool) {
    let (blocks, bytes) = sent(t, len, end);
    let (b0, y0) = *counted;
    if blocks > b0 || bytes > y0 {
        rec.data_sent(blocks.saturating_sub(b0), bytes.saturating_sub(y0));
        *counted = (blocks.max(b0), bytes.max(y0));
    }
}

impl Core {
    /// The INFO `transfer started` line, once the client has acknowledged data (so a flood of
    /// spoofed requests writes none), and the time to first block. A flag test per call once
    /// written.
    pub(super) fn announce(&mut self, id: crate::proto::tftp::endpoint::TransferId, now: Instant) {
        let worker = self.worker;
        let Some(slot) = self.slots.get_mut(id.index()).and_then(|s| s.as_mut()) else {
            return;
        };
        let Some(io) = slot
            .io
            .as_deref_mut()
            .filter(|io| slot.id == id && !io.announced)
        else {
            return;
        };
        let Some(t) = self.endpoint.transfer(id) else {
            return;
        };
        if t.stats().bytes_acked == 0 {
            return;
        }
        io.announced = true;
        if let (Some(o), Some(started)) = (&self.observer, self.endpoint.started(id)) {
            o.rec.first_block(now.saturating_duration_since(started));
        }
        let n = t.negotiated();
        tracing::info!(
            client = %io.peer,
            file = io.content.display_path(),
            size = io.content.transfer_len().unwrap_or(0),
            blksize = n.blksize.get(),
            windowsize = n.windowsize.get(),
            tsize = n.tsize.is_some(),
            worker,
            "transfer started"
        );
    }

    /// While draining, a new read request (not a retransmission of one: those find their
    /// transfer) gets ERROR 0; `true` when it was refused.
    pub(super) fn draining(
        &mut self,
        li: usize,
        data: &[u8],
        peer: &std::net::SocketAddr,
        info: Option<&crate::sys::cmsg::PktInfo>,
    ) -> bool {
        let on = self
            .shared
            .draining
            .as_ref()
            .is_some_and(|d| d.load(std::sync::atomic::Ordering::Relaxed));
        // Opcode 1 (RRQ) or 2 (WRQ): a new request. Other datagrams on the listening port go on.
        if !on || !matches!(data.get(..2), Some([0, 1 | 2])) {
            return false;
        }
        // A resend of a running transfer's request is the duplicate it is: the transfer answers.
        if self.endpoint.is_resend(*peer, data) {
            return false;
        }
        let n = crate::proto::tftp::packet::emit_error(
            &mut self.reply,
            crate::proto::tftp::packet::ErrorCode::NotDefined,
            "server shutting down",
        );
        self.send_reply(li, n, peer, info);
        true
    }

    /// Publish the running transfers when a batch is due (called from the timer).
    pub(super) fn publish(&mut self, now: Instant) {
        let Some(obs) = self.observer.as_mut() else {
            return;
        };
        if !obs.publisher.due(now) {
            return;
        }
        let mut batch = obs.publisher.begin(now);
        for id in self.endpoint.live() {
            let (Some(slot), Some(t), Some(started)) = (
                self.slots.get_mut(id.index()).and_then(|s| s.as_mut()),
                self.endpoint.transfer(id),
                self.endpoint.started(id),
            ) else {
                continue;
            };
            let Some(io) = slot.io.as_deref_mut().filter(|io| !io.closed) else {
                continue;
            };
            let len = io.content.transfer_len();
            count_sent(&obs.rec, t, &mut io.counted, len, false);
            let (idx, gen) = id.to_raw();
            batch.push(&TransferView {
                id: (u64::from(idx) << 16) | u64::from(gen),
                client: io.peer,
                file: io.content.display_path().as_bytes(),
                bytes_done: t.stats().bytes_acked,
                size: io.content.transfer_len(),
                started,
            });
        }
    }
}
