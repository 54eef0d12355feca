//! The engine: one event loop, instantiated per thread, running the services that thread hosts
//! over one [`Reactor`] (how it waits: [`Epoll`] readiness, or the io_uring
//! [`Ring`](uring::Ring)) and one [`TimerQueue`].
//!
//! Contract:
//! - One turn ([`Engine::run`]): the reactor submits what the services queued and waits for
//!   events or the earliest deadline of the queue (one system call); the clock is read once;
//!   every event goes to its service ([`Service::on_event`]; readiness by default to
//!   [`Service::on_readable`]), in the reactor's two passes; then every due timer
//!   ([`Service::on_timer`]); then the [`Control`]s. So input that arrived before a deadline is
//!   handled before its timer fires, and timers are never starved (they run every turn).
//! - A [`Service`] never waits: it registers descriptors, queues operations (on io_uring) and
//!   arms timers through [`Io`]. Tokens and timer keys are the service's own; the engine tags
//!   them with the service's place, so two services never see each other's events.
//! - A service that fails stops its engine: on an error the services are wound down
//!   ([`Service::wind_down`], by default [`Service::shutdown`]) and [`Engine::run`] returns the
//!   failure, named after the service; a panic is logged (WARN) with the service's name and
//!   carried on, so the thread's watcher reports its place. Either way the process stops with
//!   one clear ERROR line (issue 8).
//! - Stopping: each service's [`Service::wind_down`] does its last I/O (the TFTP service sends
//!   an ERROR to each client); operations still in flight are awaited for at most [`LINGER`];
//!   then the reactor goes (io_uring: cancelling what is armed) before the services' memory.
//! - Services ask the process for things (stop, later reload) by pushing a [`Control`] through
//!   [`Io::control`]; the engine hands each to the caller's callback in [`Engine::run`], which says
//!   whether to go on. [`Stopper`] stops an engine (or several sharing it) from another thread.
//! - Threads: `ringboot-w0..` each run an engine hosting the TFTP service
//!   ([`tftp::uring::TftpRing`] on the ring, [`tftp::epoll::TftpEpoll`] on the fallback; see
//!   [`workers`]); `ringboot-ctl` runs [`ctl`]: signals, the multicast service, the DHCP
//!   responder and the metrics/status HTTP listener; the file watcher of [`crate::store`] runs
//!   the same engine on its own thread.

pub mod ctl;
pub mod dhcp;
pub(crate) mod links;
pub mod mcast;
pub mod reactor;
mod send;
pub mod settings;
pub mod tftp;
pub(crate) mod uring;
pub mod workers;

pub use reactor::{Epoll, Pass, Reactor};

use crate::proto::timer::TimerQueue;
use crate::sys::poll::EventFd;
use reactor::ENGINE_PLACE;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The token of the engine's own stop event.
const STOP_TOKEN: u64 = reactor::engine_token(0);
/// How long a stopping engine waits for the operations its services still have in flight.
pub const LINGER: Duration = Duration::from_millis(500);
/// Ready descriptors per wait of a readiness engine.
const EVENTS: usize = 256;

/// Something a service asks of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// A stop signal came (its name: `SIGTERM`, `SIGINT`).
    Stop(&'static str),
    /// A signal the engine was asked to forward (e.g. `SIGHUP` for a reload); the caller decides.
    Signal(i32),
}

/// What the caller of [`Engine::run`] answers to a [`Control`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Why a service stopped its engine.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the {service} stopped: {error}")]
    Error {
        service: &'static str,
        error: String,
    },
    #[error("the engine cannot wait for events: {0}")]
    Wait(#[source] io::Error),
}

/// What a service may do during a callback: watch descriptors and queue operations on the
/// engine's reactor, arm timers on its one queue, ask the process for things.
pub struct Io<'a, R: Reactor = Epoll> {
    ops: &'a mut R::Ops,
    timers: &'a mut TimerQueue<(u16, u64)>,
    controls: &'a mut Vec<Control>,
    place: u16,
}

impl<R: Reactor> Io<'_, R> {
    /// Watch `fd` for input; readiness comes back as [`Service::on_readable`] with `sub`.
    pub fn watch(&mut self, fd: RawFd, sub: u32) -> io::Result<()> {
        self.watch_as(fd, sub as u64, Pass::First)
    }

    /// Watch `fd` for input under a sub-token of up to [`reactor::SUB_BITS`] bits, handed in
    /// `pass`; readiness comes back as [`Service::on_event`].
    pub fn watch_as(&mut self, fd: RawFd, sub: u64, pass: Pass) -> io::Result<()> {
        let t = self.token(sub, pass);
        R::watch(self.ops, fd, t)
    }

    /// Stop watching `fd` (closing it does so too).
    pub fn unwatch(&mut self, fd: RawFd) {
        R::unwatch(self.ops, fd);
    }

    /// The reactor token of this service's `sub` (for operations it queues itself).
    pub fn token(&self, sub: u64, pass: Pass) -> u64 {
        reactor::token(self.place, sub, pass)
    }

    /// The reactor, to queue operations on it.
    pub fn ops(&mut self) -> &mut R::Ops {
        self.ops
    }

    /// Call [`Service::on_timer`] with `key` at `at` (replacing the key's earlier deadline).
    pub fn arm(&mut self, key: u64, at: Instant) {
        self.timers.arm((self.place, key), at);
    }

    pub fn cancel(&mut self, key: u64) {
        self.timers.cancel((self.place, key));
    }

    /// Ask the process for something (handed to [`Engine::run`]'s callback).
    pub fn control(&mut self, c: Control) {
        self.controls.push(c);
    }
}

/// A service an engine hosts. Callbacks get the clock of the wake-up. Services of the
/// readiness reactor ([`Epoll`], the default) implement the required methods; a service that
/// queues operations of its own (the TFTP service on io_uring) or needs wide tokens reads
/// every event in [`on_event`](Service::on_event).
pub trait Service<R: Reactor = Epoll> {
    /// Its name in log lines and failures ("DHCP responder", "multicast service").
    fn name(&self) -> &'static str;
    /// Register descriptors and arm the first timers.
    fn start(&mut self, io: &mut Io<'_, R>, now: Instant) -> io::Result<()>;
    /// A descriptor registered with `sub` is readable.
    fn on_readable(&mut self, io: &mut Io<'_, R>, sub: u32, now: Instant) -> io::Result<()>;
    /// Timer `key` is due.
    fn on_timer(&mut self, io: &mut Io<'_, R>, key: u64, now: Instant) -> io::Result<()>;
    /// The engine stops: last words (a final save, ...).
    fn shutdown(&mut self, now: Instant);

    /// An event of the reactor for one of this service's tokens. By default readiness goes to
    /// [`on_readable`](Service::on_readable).
    fn on_event(
        &mut self,
        io: &mut Io<'_, R>,
        sub: u64,
        ev: R::Event<'_>,
        now: Instant,
    ) -> io::Result<()> {
        if R::is_readiness(&ev) {
            self.on_readable(io, sub as u32, now)
        } else {
            Ok(())
        }
    }

    /// The engine stops, with I/O still at hand: what the service sends last (e.g. an ERROR to
    /// each client). Returns whether operations of its own are still in flight: the engine
    /// then goes on handing their events to [`on_event`](Service::on_event) until
    /// [`in_flight`](Service::in_flight) says none remain, for at most [`LINGER`]. The default
    /// is [`shutdown`](Service::shutdown).
    fn wind_down(&mut self, _io: &mut Io<'_, R>, now: Instant) -> bool {
        self.shutdown(now);
        false
    }

    /// Operations of its own are still in flight (see [`wind_down`](Service::wind_down)).
    fn in_flight(&self) -> bool {
        false
    }
}

/// Stops an engine from another thread.
#[derive(Clone)]
pub struct Stopper(Arc<(AtomicBool, EventFd)>);

impl Stopper {
    pub fn new() -> io::Result<Self> {
        Ok(Stopper(Arc::new((AtomicBool::new(false), EventFd::new()?))))
    }

    pub fn stop(&self) {
        self.0 .0.store(true, Ordering::SeqCst);
        self.0 .1.notify();
    }

    pub fn is_stopped(&self) -> bool {
        self.0 .0.load(Ordering::SeqCst)
    }

    pub fn fd(&self) -> RawFd {
        self.0 .1.as_raw_fd()
    }
}

/// One event loop over the services `S` (an enum of the services a thread hosts: static
/// dispatch), waiting with the reactor `R`.
pub struct Engine<S: Service<R>, R: Reactor = Epoll> {
    // Declared first: dropped (its pending operations cancelled) before the services whose
    // memory they name.
    reactor: R,
    timers: TimerQueue<(u16, u64)>,
    controls: Vec<Control>,
    services: Vec<S>,
    stopper: Stopper,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

impl<S: Service> Engine<S, Epoll> {
    /// A readiness engine with a stopper of its own.
    pub fn new() -> io::Result<Self> {
        Engine::with_reactor(Epoll::new(EVENTS)?, Stopper::new()?)
    }
}

/// Run `f` on service `place` with an [`Io`] over the engine's parts, catching a panic to name
/// the service (then carried on) and naming it in an error.
fn call<S: Service<R>, R: Reactor>(
    services: &mut [S],
    ops: &mut R::Ops,
    timers: &mut TimerQueue<(u16, u64)>,
    controls: &mut Vec<Control>,
    place: u16,
    f: impl FnOnce(&mut S, &mut Io<'_, R>) -> io::Result<()>,
) -> Result<(), Failure> {
    let Some(s) = services.get_mut(place as usize) else {
        return Ok(());
    };
    let mut io = Io {
        ops,
        timers,
        controls,
        place,
    };
    let service = s.name();
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(s, &mut io))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::Error {
            service,
            error: e.to_string(),
        }),
        Err(p) => {
            // Carried on unchanged, so the thread's watcher reports its place in the one ERROR
            // line of the stop; this line names the service.
            tracing::warn!("the {service} panicked: {}", panic_message(&*p));
            std::panic::resume_unwind(p)
        }
    }
}

impl<S: Service<R>, R: Reactor> Engine<S, R> {
    /// An engine waiting with `reactor`, stopped by `stopper` (which several engines may
    /// share: the TFTP workers stop together).
    pub fn with_reactor(mut reactor: R, stopper: Stopper) -> io::Result<Self> {
        R::watch(reactor.ops(), stopper.fd(), STOP_TOKEN)?;
        Ok(Engine {
            reactor,
            timers: TimerQueue::new(),
            controls: Vec::new(),
            services: Vec::new(),
            stopper,
        })
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Host `service`: it registers its descriptors and timers now.
    pub fn add(&mut self, mut service: S) -> io::Result<()> {
        let place = self.services.len() as u16;
        if place >= ENGINE_PLACE {
            return Err(io::Error::other("too many services on one engine"));
        }
        let mut io = Io {
            ops: self.reactor.ops(),
            timers: &mut self.timers,
            controls: &mut self.controls,
            place,
        };
        service.start(&mut io, Instant::now())?;
        self.services.push(service);
        Ok(())
    }

    /// Run until [`Stopper::stop`], until `on_control` answers [`Flow::Stop`], or until a
    /// service fails (then every service is shut down and the failure returned).
    pub fn run(&mut self, mut on_control: impl FnMut(Control) -> Flow) -> Result<(), Failure> {
        let r = self.turns(&mut on_control);
        self.wind_down();
        r
    }

    /// One turn: wait (one system call), read the clock, hand the events to their services,
    /// then the due timers, then the controls to the caller.
    fn turns(&mut self, on_control: &mut impl FnMut(Control) -> Flow) -> Result<(), Failure> {
        loop {
            if self.stopper.is_stopped() {
                return Ok(());
            }
            let deadline = self.timers.next_deadline();
            self.reactor.wait(deadline).map_err(Failure::Wait)?;
            if self.stopper.is_stopped() {
                return Ok(());
            }
            // The clock, once per wake-up.
            let now = Instant::now();
            self.deliver(now, true)?;
            for c in std::mem::take(&mut self.controls) {
                if on_control(c) == Flow::Stop {
                    return Ok(());
                }
            }
        }
    }

    /// Hand the events of the last wait to their services, then (`with_timers`) the timers due
    /// at `now` (winding down hands events only).
    fn deliver(&mut self, now: Instant, with_timers: bool) -> Result<(), Failure> {
        let Engine {
            reactor,
            timers,
            controls,
            services,
            ..
        } = self;
        reactor.dispatch(|ops, token, ev| {
            let (place, sub) = reactor::split(token);
            if place == ENGINE_PLACE {
                return Ok(());
            }
            call(services, ops, timers, controls, place, |s, io| {
                s.on_event(io, sub, ev, now)
            })
        })?;
        while let Some((place, key)) = with_timers.then(|| timers.pop_expired(now)).flatten() {
            call(services, reactor.ops(), timers, controls, place, |s, io| {
                s.on_timer(io, key, now)
            })?;
        }
        Ok(())
    }

    /// The services' last I/O, then their operations in flight for at most [`LINGER`].
    fn wind_down(&mut self) {
        let now = Instant::now();
        let mut lingering = false;
        for (place, s) in self.services.iter_mut().enumerate() {
            let mut io = Io {
                ops: self.reactor.ops(),
                timers: &mut self.timers,
                controls: &mut self.controls,
                place: place as u16,
            };
            lingering |= s.wind_down(&mut io, now);
        }
        // The stop event stays readable: no longer a reason to wake.
        R::unwatch(self.reactor.ops(), self.stopper.fd());
        let until = now + LINGER;
        while lingering && self.services.iter().any(|s| s.in_flight()) {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let step = until.min(now + Duration::from_millis(50));
            if self.reactor.wait(Some(step)).is_err() || self.deliver(now, false).is_err() {
                break;
            }
        }
    }
}

/// Run `f` with an [`Io`] of a throwaway engine (unit tests of services).
#[cfg(test)]
pub(crate) fn with_test_io<T>(f: impl FnOnce(&mut Io<'_>) -> T) -> T {
    let mut epoll = Epoll::new(1).expect("epoll");
    let mut timers = TimerQueue::new();
    let mut controls = Vec::new();
    let mut io = Io {
        ops: epoll.ops(),
        timers: &mut timers,
        controls: &mut controls,
        place: 0,
    };
    f(&mut io)
}

#[cfg(test)]
mod tests;
