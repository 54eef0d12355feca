//! The engine: one event loop, instantiated per thread, running the services that thread hosts
//! over one [`Poller`] and one [`TimerQueue`].
//!
//! Contract:
//! - A [`Service`] never waits: it registers descriptors and arms timers through [`Io`], and the
//!   engine calls it back when one is readable ([`Service::on_readable`]) or due
//!   ([`Service::on_timer`]). The clock is read once per wake-up and handed to every callback.
//! - Tokens and timer keys are the service's own; the engine tags them with the service's place,
//!   so two services never see each other's events.
//! - A service that fails stops its engine: on an error the services are shut down
//!   ([`Service::shutdown`]) and [`Engine::run`] returns the failure, named after the service; a
//!   panic is logged with the service's name and carried on, so the thread's watcher reports its
//!   place. Either way the process stops with one clear line (issue 8).
//! - Services ask the process for things (stop, later reload) by pushing a [`Control`] through
//!   [`Io::control`]; the engine hands each to the caller's callback in [`Engine::run`], which says
//!   whether to go on. [`Stopper`] stops an engine from another thread.
//! - Threads: `ringboot-w0..` run the TFTP workers (the io_uring backend, or the epoll fallback
//!   in [`crate::engine::workers`]); `ringboot-ctl` runs [`ctl`]: signals, the multicast
//!   service, the DHCP responder and the metrics/status HTTP listener; the file watcher of
//!   [`crate::store`] runs the same engine on its own thread.

pub mod ctl;
mod epoll;
pub(crate) mod links;
pub mod mcast;
mod send;
pub mod settings;
pub mod tftp;
mod uring;
pub mod workers;

use crate::proto::timer::TimerQueue;
use crate::sys::poll::{self, EventFd, Events, Poller};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Tokens of the engine itself (above every service's place).
const STOP_TOKEN: u64 = u64::MAX;

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

/// What a service may do during a callback.
pub struct Io<'a> {
    poller: &'a Poller,
    timers: &'a mut TimerQueue<(u16, u64)>,
    controls: &'a mut Vec<Control>,
    place: u16,
}

impl Io<'_> {
    /// Watch `fd` for input; readiness comes back as [`Service::on_readable`] with `sub`.
    pub fn watch(&mut self, fd: RawFd, sub: u32) -> io::Result<()> {
        self.poller.add(fd, token(self.place, sub))
    }

    /// Stop watching `fd` (closing it does so too).
    pub fn unwatch(&mut self, fd: RawFd) {
        let _ = self.poller.delete(fd);
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

fn token(place: u16, sub: u32) -> u64 {
    ((place as u64) << 32) | sub as u64
}

/// A service an engine hosts. Callbacks get the clock of the wake-up.
pub trait Service {
    /// Its name in log lines and failures ("DHCP responder", "multicast service").
    fn name(&self) -> &'static str;
    /// Register descriptors and arm the first timers.
    fn start(&mut self, io: &mut Io<'_>, now: Instant) -> io::Result<()>;
    /// A descriptor registered with `sub` is readable.
    fn on_readable(&mut self, io: &mut Io<'_>, sub: u32, now: Instant) -> io::Result<()>;
    /// Timer `key` is due.
    fn on_timer(&mut self, io: &mut Io<'_>, key: u64, now: Instant) -> io::Result<()>;
    /// The engine stops: last words (a final save, ...).
    fn shutdown(&mut self, now: Instant);
}

/// Stops an engine from another thread.
#[derive(Clone)]
pub struct Stopper(Arc<(AtomicBool, EventFd)>);

impl Stopper {
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
/// dispatch).
pub struct Engine<S: Service> {
    poller: Poller,
    events: Events,
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

impl<S: Service> Engine<S> {
    pub fn new() -> io::Result<Self> {
        let poller = Poller::new()?;
        let stopper = Stopper(Arc::new((AtomicBool::new(false), EventFd::new()?)));
        poller.add(stopper.fd(), STOP_TOKEN)?;
        Ok(Engine {
            poller,
            events: Events::with_capacity(64),
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
        let mut io = Io {
            poller: &self.poller,
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
        let now = Instant::now();
        for s in &mut self.services {
            s.shutdown(now);
        }
        r
    }

    fn turns(&mut self, on_control: &mut impl FnMut(Control) -> Flow) -> Result<(), Failure> {
        loop {
            if self.stopper.is_stopped() {
                return Ok(());
            }
            let wait = poll::timeout_ms(self.timers.next_deadline(), Instant::now());
            self.poller
                .wait(&mut self.events, wait)
                .map_err(Failure::Wait)?;
            // The clock, once per wake-up.
            let now = Instant::now();
            for i in 0..self.events.len() {
                let Some(ev) = self.events.get(i) else {
                    break;
                };
                if ev.token == STOP_TOKEN {
                    return Ok(());
                }
                let (place, sub) = ((ev.token >> 32) as u16, ev.token as u32);
                self.call(place, |s, io| s.on_readable(io, sub, now))?;
            }
            while let Some((place, key)) = self.timers.pop_expired(now) {
                self.call(place, |s, io| s.on_timer(io, key, now))?;
            }
            for c in std::mem::take(&mut self.controls) {
                if on_control(c) == Flow::Stop {
                    return Ok(());
                }
            }
        }
    }

    fn call(
        &mut self,
        place: u16,
        f: impl FnOnce(&mut S, &mut Io<'_>) -> io::Result<()>,
    ) -> Result<(), Failure> {
        let Some(s) = self.services.get_mut(place as usize) else {
            return Ok(());
        };
        let mut io = Io {
            poller: &self.poller,
            timers: &mut self.timers,
            controls: &mut self.controls,
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
                // Carried on unchanged, so the thread's watcher reports its place.
                tracing::error!("the {service} panicked: {}", panic_message(&*p));
                std::panic::resume_unwind(p)
            }
        }
    }
}

/// Run `f` with an [`Io`] of a throwaway engine (unit tests of services).
#[cfg(test)]
pub(crate) fn with_test_io<R>(f: impl FnOnce(&mut Io<'_>) -> R) -> R {
    let poller = Poller::new().expect("epoll");
    let mut timers = TimerQueue::new();
    let mut controls = Vec::new();
    let mut io = Io {
        poller: &poller,
        timers: &mut timers,
        controls: &mut controls,
        place: 0,
    };
    f(&mut io)
}

#[cfg(test)]
mod tests;
