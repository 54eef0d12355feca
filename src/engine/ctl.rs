//! The control engine: the thread `ringboot-ctl`, one [`Engine`] hosting the services that are
//! not TFTP workers: the process's signals, the multicast service, the DHCP responder and the
//! metrics/status HTTP listener.
//!
//! Contract:
//! - [`Signals`] reads a signalfd of the stop signals (`SIGINT`, `SIGTERM`) and of any signal the
//!   caller asks to have forwarded (the hook for `SIGHUP` reload): each arrives as a [`Control`]
//!   to the callback given to [`spawn`]. The signals must be blocked in every thread
//!   ([`block_signals`], before any thread starts).
//! - [`CtlService`] is the closed set of services this engine runs (static dispatch).
//! - [`spawn`] starts the thread; [`Ctl::stop`] stops it; the thread's end (a service failure)
//!   is reported by its join handle.

use super::{Control, Engine, Failure, Flow, Io, Service, Stopper};
use crate::sys::poll::{self, SignalFd};
use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::Instant;

/// The signals that stop the process.
pub const STOP_SIGNALS: [i32; 2] = [libc::SIGINT, libc::SIGTERM];

/// Block the stop signals and `forward` in the calling thread (call it before any thread
/// starts, so every thread inherits the mask and only the signalfd sees them).
pub fn block_signals(forward: &[i32]) -> io::Result<()> {
    let mut all = STOP_SIGNALS.to_vec();
    all.extend_from_slice(forward);
    poll::block_signals(&all)
}

/// The process's signals, as [`Control`]s.
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// A signalfd of the stop signals and of `forward`.
    pub fn new(forward: &[i32]) -> io::Result<Self> {
        let mut all = STOP_SIGNALS.to_vec();
        all.extend_from_slice(forward);
        Ok(Signals {
            fd: SignalFd::new(&all)?,
        })
    }
}

impl Service for Signals {
    fn name(&self) -> &'static str {
        "signal handler"
    }

    fn start(&mut self, io: &mut Io<'_>, _now: Instant) -> io::Result<()> {
        io.watch(self.fd.as_raw_fd(), 0)
    }

    fn on_readable(&mut self, io: &mut Io<'_>, _sub: u32, _now: Instant) -> io::Result<()> {
        while let Some(info) = self.fd.read() {
            io.control(match info.signo {
                libc::SIGINT => Control::Stop("SIGINT"),
                libc::SIGTERM => Control::Stop("SIGTERM"),
                n => Control::Signal(n),
            });
        }
        Ok(())
    }

    fn on_timer(&mut self, _io: &mut Io<'_>, _key: u64, _now: Instant) -> io::Result<()> {
        Ok(())
    }

    fn shutdown(&mut self, _now: Instant) {}
}

/// The services of the control engine.
pub enum CtlService {
    Signals(Signals),
    Dhcp(Box<super::dhcp::Responder>),
    Multicast(Box<crate::engine::mcast::McService>),
    /// The metrics/status HTTP listener (`--metrics`).
    Http(Box<crate::metrics::serve::HttpService>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            CtlService::Signals($s) => $e,
            CtlService::Dhcp($s) => $e,
            CtlService::Multicast($s) => $e,
            CtlService::Http($s) => $e,
        }
    };
}

impl Service for CtlService {
    fn name(&self) -> &'static str {
        each!(self, s => s.name())
    }
    fn start(&mut self, io: &mut Io<'_>, now: Instant) -> io::Result<()> {
        each!(self, s => s.start(io, now))
    }
    fn on_readable(&mut self, io: &mut Io<'_>, sub: u32, now: Instant) -> io::Result<()> {
        each!(self, s => s.on_readable(io, sub, now))
    }
    fn on_timer(&mut self, io: &mut Io<'_>, key: u64, now: Instant) -> io::Result<()> {
        each!(self, s => s.on_timer(io, key, now))
    }
    fn shutdown(&mut self, now: Instant) {
        each!(self, s => s.shutdown(now))
    }
}

/// The running control engine.
pub struct Ctl {
    stopper: Stopper,
    handle: Option<JoinHandle<Result<(), Failure>>>,
}

/// The thread's name.
pub const THREAD: &str = "ringboot-ctl";

/// Start `ringboot-ctl` hosting `services` (started here, so a service that cannot register
/// fails the call). `on_control` gets every [`Control`] on the engine's thread.
pub fn spawn(
    services: Vec<CtlService>,
    on_control: impl FnMut(Control) -> Flow + Send + 'static,
) -> io::Result<Ctl> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    // The engine is built on its thread (its poller and timers never cross threads); the
    // services are moved in.
    let handle = std::thread::Builder::new()
        .name(THREAD.into())
        .spawn(move || {
            let mut engine = match Engine::new() {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            for s in services {
                if let Err(e) = engine.add(s) {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            }
            let _ = tx.send(Ok(engine.stopper()));
            let r = engine.run(on_control);
            if let Err(e) = &r {
                tracing::error!("{e}");
            }
            r
        })?;
    match rx.recv() {
        Ok(Ok(stopper)) => Ok(Ctl {
            stopper,
            handle: Some(handle),
        }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            // The thread panicked while starting a service.
            let _ = handle.join();
            Err(io::Error::other(
                "the control engine stopped while starting",
            ))
        }
    }
}

impl Ctl {
    /// Ask the engine to stop (its services shut down: DHCP saves its leases).
    pub fn stop(&self) {
        self.stopper.stop();
    }

    /// Why the engine ended, if it has ended (joining it): `Some(Ok(()))` for a clean stop.
    pub fn ended(&mut self) -> Option<std::thread::Result<Result<(), Failure>>> {
        if !self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            return None;
        }
        self.handle.take().map(|h| h.join())
    }

    /// Stop and wait for the engine.
    pub fn join(mut self) -> std::thread::Result<Result<(), Failure>> {
        self.stop();
        match self.handle.take() {
            Some(h) => h.join(),
            None => Ok(Ok(())),
        }
    }
}
