//! What a worker tells the metrics registry and the status page (`--metrics`).
//!
//! Contract: a worker holds an [`Observer`] when metrics are on. Per transfer it records once at
//! the start and once at the end (the end adds the transfer's own counters: blocks sent and
//! resent, bytes, timeouts), so the hot path (one datagram) costs nothing here; refusals count
//! one relaxed add each. Once a second, from the worker's timer, the running transfers are
//! published to the status page (one lock of the worker's own slot). No allocation per packet.

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
    pub(crate) fn ended(&self, t: &Transfer, len: Option<u64>, duration: Duration) {
        let s = t.stats();
        let outcome = match t.outcome() {
            Some(Outcome::Completed) => MOutcome::Completed,
            Some(Outcome::ProbeEnded(_)) => MOutcome::Probe,
            Some(Outcome::ClientError(_)) => MOutcome::ClientError,
            Some(Outcome::TimedOut) => MOutcome::Timeout,
            Some(Outcome::ProtocolViolation) => MOutcome::ProtocolViolation,
            Some(Outcome::Aborted(_)) | None => MOutcome::Aborted,
            Some(Outcome::Unanswered) => MOutcome::Unanswered,
        };
        let blksize = u64::from(t.negotiated().blksize.get());
        // File bytes in DATA, resends included: each block sent once, cut at the file's end,
        // plus the resends counted as full blocks.
        let once = (s.blocks_sent - s.blocks_resent.min(s.blocks_sent)).saturating_mul(blksize);
        let once = len.map_or(once, |l| once.min(l));
        let sent = once + s.blocks_resent.saturating_mul(blksize);
        self.rec.data_sent(s.blocks_sent, sent.max(s.bytes_acked));
        self.rec.blocks_resent(s.blocks_resent);
        for _ in 0..s.timeouts.min(1 << 16) {
            self.rec.timeout();
        }
        if s.bytes_acked > 0 || outcome == MOutcome::Completed {
            if let Some(srtt) = s.srtt {
                // The first block's ACK comes one round trip after the reply: a floor of it.
                self.rec.first_block(srtt);
            }
        }
        self.rec.transfer_ended(outcome, duration, s.bytes_acked);
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

impl Core {
    /// The INFO `transfer started` line, once the client has acknowledged data (so a flood of
    /// spoofed requests writes none). A flag test per call once written.
    pub(super) fn announce(&mut self, id: crate::proto::tftp::endpoint::TransferId) {
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
        info: Option<&super::PktInfo>,
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
                self.slots.get(id.index()).and_then(|s| s.as_ref()),
                self.endpoint.transfer(id),
                self.endpoint.started(id),
            ) else {
                continue;
            };
            let Some(io) = slot.io.as_deref().filter(|io: &&Io| !io.closed) else {
                continue;
            };
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
