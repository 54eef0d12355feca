//! How an engine waits: the [`Reactor`] trait, its token layout, and the readiness reactor
//! [`Epoll`] (the io_uring one is [`super::uring::Ring`]).
//!
//! Contract:
//! - A reactor makes one system call per turn of its engine: [`Reactor::wait`] submits what the
//!   services queued (io_uring) and waits for events or the engine's earliest timer deadline; a
//!   deadline already past does not block, but still collects what is ready (so input that
//!   arrived before a deadline is handled before its timer fires). Events of a wait that were
//!   not dispatched (the engine stopped first) are not lost: the io_uring reactor keeps them for
//!   the next dispatch, epoll reports them again (level-triggered).
//! - [`Reactor::dispatch`] hands each event of that wait, with its token, to the engine, in two
//!   passes: first the tokens without [`Pass::Late`], then those with it (the TFTP service reads
//!   its running transfers before new requests). Every event is handed exactly once; whatever a
//!   reactor lent for it (an io_uring provided buffer) is taken back when the call returns.
//! - Tokens: bit 63 is the pass, bit 62 the reactor's own (io_uring: a readiness watch), bits
//!   58..62 the service's place in its engine ([`ENGINE_PLACE`]: the engine itself), bits 0..58
//!   the service's own sub-token ([`SUB_BITS`]).
//! - Readiness ([`Reactor::watch`]) is offered by both: level-triggered on epoll, a multishot
//!   poll on io_uring (one event per wake-up: read until `EAGAIN`). Operations of their own
//!   (multishot receives, linked sends) only the io_uring reactor has; their completions come as
//!   [`Reactor::Event`]s that a service of that reactor reads.
//! - Nothing allocates per event: the event buffers are sized at creation.

use crate::sys::poll::{self, Events, Poller};
use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// Bits of a service's own sub-token.
pub const SUB_BITS: u32 = 58;
const SUB_MASK: u64 = (1 << SUB_BITS) - 1;
const PLACE_MASK: u64 = 0xf;
/// The reactor's own bit (io_uring: the completion of a readiness watch).
pub(crate) const REACTOR_BIT: u64 = 1 << 62;
const LATE_BIT: u64 = 1 << 63;
/// The place of the engine itself (its stop event); services take the places below it.
pub const ENGINE_PLACE: u16 = PLACE_MASK as u16;

/// A token of the engine itself (its stop event, a reactor's own operations): no service's.
pub(crate) const fn engine_token(sub: u64) -> u64 {
    ((ENGINE_PLACE as u64) << SUB_BITS) | sub
}

/// Which pass of a dispatch an event comes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    First,
    /// After every event of the first pass of the same wait.
    Late,
}

/// The token of `sub` (its low [`SUB_BITS`] bits) of the service at `place`.
pub fn token(place: u16, sub: u64, pass: Pass) -> u64 {
    debug_assert!(sub <= SUB_MASK && place <= ENGINE_PLACE);
    let late = if pass == Pass::Late { LATE_BIT } else { 0 };
    late | ((place as u64 & PLACE_MASK) << SUB_BITS) | (sub & SUB_MASK)
}

/// The place and sub-token of a token.
pub fn split(token: u64) -> (u16, u64) {
    (((token >> SUB_BITS) & PLACE_MASK) as u16, token & SUB_MASK)
}

pub(crate) fn is_late(token: u64) -> bool {
    token & LATE_BIT != 0
}

/// What an engine waits with. See the module docs.
pub trait Reactor {
    /// What services use during a callback: register descriptors, queue operations.
    type Ops;
    /// One event handed to a service (readiness; on io_uring, a completion with its buffer).
    type Event<'a>;

    /// Watch `fd` for input under `token`.
    fn watch(ops: &mut Self::Ops, fd: RawFd, token: u64) -> io::Result<()>;
    /// Stop watching `fd` (closing it does so too).
    fn unwatch(ops: &mut Self::Ops, fd: RawFd);
    /// Whether `ev` is readiness (else a completion of an operation of the service's own).
    fn is_readiness(ev: &Self::Event<'_>) -> bool;
    /// The services' side, outside a dispatch (starting a service).
    fn ops(&mut self) -> &mut Self::Ops;
    /// Submit what is queued and wait until an event or `deadline`: one system call.
    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()>;
    /// Hand every event of the last wait to `f` (token, event), in the two passes; stops at
    /// the first error of `f` (and still takes back what was lent for the events not handed).
    fn dispatch<E>(
        &mut self,
        f: impl FnMut(&mut Self::Ops, u64, Self::Event<'_>) -> Result<(), E>,
    ) -> Result<(), E>;
}

/// Readiness of a watched descriptor (epoll: level-triggered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready;

/// The readiness reactor: one [`Poller`] and its event buffer.
pub struct Epoll {
    poller: Poller,
    events: Events,
}

impl Epoll {
    /// Room for `capacity` ready descriptors per wait.
    pub fn new(capacity: usize) -> io::Result<Self> {
        Ok(Epoll {
            poller: Poller::new()?,
            events: Events::with_capacity(capacity),
        })
    }
}

impl Reactor for Epoll {
    type Ops = Poller;
    type Event<'a> = Ready;

    fn watch(ops: &mut Poller, fd: RawFd, token: u64) -> io::Result<()> {
        ops.add(fd, token)
    }

    fn unwatch(ops: &mut Poller, fd: RawFd) {
        let _ = ops.delete(fd);
    }

    fn is_readiness(_: &Ready) -> bool {
        true
    }

    fn ops(&mut self) -> &mut Poller {
        &mut self.poller
    }

    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let ms = poll::timeout_ms(deadline, Instant::now());
        self.poller.wait(&mut self.events, ms).map(|_| ())
    }

    fn dispatch<E>(
        &mut self,
        mut f: impl FnMut(&mut Poller, u64, Ready) -> Result<(), E>,
    ) -> Result<(), E> {
        for late in [false, true] {
            for i in 0..self.events.len() {
                let Some(ev) = self.events.get(i) else {
                    break;
                };
                if is_late(ev.token) == late {
                    f(&mut self.poller, ev.token, Ready)?;
                }
            }
        }
        Ok(())
    }
}
