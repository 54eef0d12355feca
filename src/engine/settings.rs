//! What a reload (SIGHUP) hands the running TFTP workers: the transfer options for new requests.
//!
//! Contract:
//! - One [`Settings`] is shared by every worker (in [`super::tftp`]'s `Shared`). The binary
//!   calls [`Settings::replace`] with the new [`Tunables`] (block size, window, timeout and
//!   retries from `[limits]`, the RTO floor) and [`Settings::touch`] after it changed the
//!   transfer caps ([`crate::proto::tftp::admit::Admission::reconfigure`]).
//! - A worker compares the generation (one acquire load, a line written only by reloads) before
//!   each new request, and only when it changed takes the lock and hands the endpoint its new
//!   limits and its new share of `max_transfers`
//!   ([`crate::proto::tftp::endpoint::Endpoint::reconfigure`]). Transfers already running keep
//!   what they negotiated; nothing is read per datagram of a transfer.

use crate::proto::tftp::options::Limits;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The transfer options a reload may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunables {
    /// Negotiation limits, retransmission ceiling and retries.
    pub limits: Limits,
    /// Floor of the retransmission timer.
    pub min_rto: Duration,
}

/// The shared, reloadable transfer options (see the module docs).
#[derive(Debug)]
pub struct Settings {
    generation: AtomicU64,
    now: Mutex<Tunables>,
}

impl Settings {
    pub fn new(t: Tunables) -> Self {
        Settings {
            generation: AtomicU64::new(0),
            now: Mutex::new(t),
        }
    }

    /// Hand `t` to the workers for their next requests.
    pub fn replace(&self, t: Tunables) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = t;
        self.touch();
    }

    /// Make every worker read its settings and its share of the caps again.
    pub fn touch(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Bumped by every [`replace`](Self::replace) and [`touch`](Self::touch).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The options in force.
    pub fn current(&self) -> Tunables {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
