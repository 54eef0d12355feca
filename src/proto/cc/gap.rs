//! What an ACK inside a window means: a lost block, or a client that re-aligned its window on a
//! duplicate. A pure helper for the transfer machine (see the integration notes in [`super`]).
//!
//! An RFC 7440 receiver that gets a block it did not expect (out of order, or a duplicate) ACKs
//! the last block it has in order at once, and EDK2 also restarts its window count there
//! (`Mtftp4RrqSendAck` sets `AckedBlock = TotalBlock`). So an ACK of block `k` inside the window
//! `s ..= e` means one of two things:
//! - the client lost `k + 1` (a later block arrived first), or
//! - a duplicate reached it (a copy from an earlier window, a probe, a resend the client did not
//!   need): it has `k` and every block after it that is still on the way, and it now expects a
//!   window `k + 1 ..= k + W`.
//!
//! Going back to `k + 1` at once (the literal reading) is right in the first case and, in the
//! second, resends blocks that are still on the way. Those arrive as duplicates, each making the
//! client re-ACK and re-align again: a chain of resends that feeds itself (reproduced in this
//! module's simulated bottleneck, where it turned 0 drops into 8% resent blocks). TCP has the same
//! ambiguity with reordering and answers it with a duplicate-ACK threshold; this is the TFTP form:
//! - An ACK inside the window moves the transfer to `k` and **re-aligns** the window to
//!   `k + 1 ..= k + W`: the sender goes on with blocks it has not sent yet, and resends nothing.
//! - If the client really lost `k + 1`, the blocks after it make it ACK `k` again: a duplicate of
//!   the point just re-aligned to **goes back** and resends from `k + 1` (a loss). A real loss
//!   costs the sender about one round trip more than going back at once; a re-alignment costs
//!   nothing.
//! - A duplicate ACK of a window's start (the client lost the first block of the window) is taken
//!   as a suspicion when it comes a round trip after that window began (before, it answers
//!   something older), and a second one goes back, instead of waiting for the probe timer.
//! - Windows of one block (lockstep) never go back on duplicates: each block is ACKed, a
//!   duplicate ACK only says a duplicate block arrived (RFC 1123 §4.2.3.1: never answer one with
//!   data).
//!
//! Every decision resends at most one window per suspicion, so no duplicate ACK stream can make
//! the sender resend more than it receives (no Sorcerer's Apprentice).

/// What the sender does with one ACK, from [`GapCheck::on_ack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckAction {
    /// The ACK ends the window: the next window starts after it.
    Advance,
    /// Inside the window: move to it, and send on up to `ack + window` without resending.
    Realign,
    /// The client lacks the block after `acked`: resend from there. A loss.
    GoBack,
    /// Nothing to do (a duplicate, a stale or bogus ACK).
    Ignore,
}

/// The sender's state for [`AckAction`] decisions: at most one suspected gap.
#[derive(Clone, Copy, Debug, Default)]
pub struct GapCheck {
    /// The block a gap is suspected after.
    suspect: Option<u64>,
}

impl GapCheck {
    pub fn new() -> Self {
        GapCheck { suspect: None }
    }

    /// Decide what ACK `ack` means. `acked`: the highest block acknowledged before it;
    /// `window_end`: the last block of the window in progress; `sent_hi`: the highest block sent;
    /// `window`: the negotiated window size; `answerable`: a round trip has passed since the
    /// first block of the window in progress went (an ACK before that answers something older).
    pub fn on_ack(
        &mut self,
        ack: u64,
        acked: u64,
        window_end: u64,
        sent_hi: u64,
        window: u64,
        answerable: bool,
    ) -> AckAction {
        if ack > sent_hi || ack < acked {
            return AckAction::Ignore;
        }
        if ack == acked {
            if window <= 1 {
                return AckAction::Ignore;
            }
            if self.suspect == Some(acked) {
                self.suspect = None;
                return AckAction::GoBack;
            }
            if answerable {
                self.suspect = Some(acked);
            }
            return AckAction::Ignore;
        }
        if ack >= window_end || window <= 1 {
            self.suspect = None;
            return AckAction::Advance;
        }
        self.suspect = Some(ack);
        AckAction::Realign
    }

    /// The gap suspected, if any (for logs and tests).
    pub fn suspect(&self) -> Option<u64> {
        self.suspect
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AckAction::*;

    #[test]
    fn a_full_window_advances() {
        let mut g = GapCheck::new();
        assert_eq!(g.on_ack(8, 4, 8, 8, 4, true), Advance);
        assert_eq!(g.suspect(), None);
    }

    #[test]
    fn inside_the_window_realigns_and_a_repeat_goes_back() {
        let mut g = GapCheck::new();
        // Window 5..=8 sent; the client ACKs 6: re-align, resend nothing.
        assert_eq!(g.on_ack(6, 4, 8, 8, 4, true), Realign);
        // It ACKs 6 again: it lacks 7.
        assert_eq!(g.on_ack(6, 6, 10, 9, 4, true), GoBack);
        // Once per suspicion: a third 6 is a plain duplicate.
        assert_eq!(g.on_ack(6, 6, 10, 10, 4, true), Ignore);
    }

    #[test]
    fn a_realignment_that_was_only_an_echo_costs_nothing() {
        let mut g = GapCheck::new();
        assert_eq!(g.on_ack(6, 4, 8, 8, 4, true), Realign);
        // The client ACKs the end of its re-aligned window 7..=10.
        assert_eq!(g.on_ack(10, 6, 10, 10, 4, true), Advance);
        assert_eq!(g.suspect(), None);
    }

    #[test]
    fn duplicates_of_the_window_start_need_two_and_a_round_trip() {
        let mut g = GapCheck::new();
        // Too early to answer the window 5..=8: ignored, not even suspected.
        assert_eq!(g.on_ack(4, 4, 8, 8, 4, false), Ignore);
        assert_eq!(g.on_ack(4, 4, 8, 8, 4, false), Ignore);
        // A round trip later: the first suspects, the second goes back.
        assert_eq!(g.on_ack(4, 4, 8, 8, 4, true), Ignore);
        assert_eq!(g.on_ack(4, 4, 8, 8, 4, true), GoBack);
    }

    #[test]
    fn lockstep_never_goes_back_on_duplicates() {
        let mut g = GapCheck::new();
        for _ in 0..5 {
            assert_eq!(g.on_ack(3, 3, 4, 4, 1, true), Ignore);
        }
        assert_eq!(g.on_ack(4, 3, 4, 4, 1, true), Advance);
    }

    #[test]
    fn stale_and_bogus_acks_are_ignored() {
        let mut g = GapCheck::new();
        assert_eq!(g.on_ack(2, 4, 8, 8, 4, true), Ignore);
        assert_eq!(g.on_ack(9, 4, 8, 8, 4, true), Ignore);
    }
}
