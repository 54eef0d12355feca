//! The TFTP workers (`ringboot-w0..`): one [`Engine`] thread per core, waiting on io_uring
//! ([`uring::Ring`]), or on epoll ([`Epoll`]) where io_uring is unavailable, each hosting the
//! TFTP service of that reactor ([`tftp::uring::TftpRing`], [`tftp::epoll::TftpEpoll`], both
//! over one [`tftp::Core`]). All workers share one [`Shutdown`] (the engines' stopper).
//!
//! Contract:
//! - [`Server::bind`] opens every listening socket (one per worker per listen address, all
//!   `SO_REUSEPORT`, so the kernel spreads requests over the workers) and picks the backend, so
//!   that every error a user can fix (a port needing privileges, an address in use, io_uring
//!   forbidden) surfaces before anything runs. [`Server::start`] spawns the workers and returns once
//!   each is ready; [`Running::join`] waits for them after [`Shutdown::trigger`].
//! - A worker owns its sockets and transfers and shares nothing mutable with the others: the
//!   store is a read-only `Arc`. A request, and the whole transfer it starts, lives on the worker
//!   whose listening socket received it.
//! - What a request means is the sans-IO endpoint's ([`crate::proto::tftp::endpoint`]); its
//!   I/O, the transfer sockets, timers and send building are one code path ([`tftp::Core`](super::tftp::Core));
//!   the two services only receive and submit, and the engine only waits.
//! - Transfers are capped for the whole server ([`admit`]): in all, per client address, and in new
//!   transfers per second per address. The defaults follow the descriptor limit
//!   ([`descriptor_budget`]): each transfer holds one socket, and half of the descriptors left
//!   after the fixed ones are kept for the file store, the multicast service, DHCP and logging.
//! - A worker that fails or panics is reported by [`Running::poll_failure`] (the binary then stops
//!   with an error): nothing stops silently.

/// The caps of `--max-transfers`, `--max-transfers-per-client`, `--client-rate` (defined with
/// their logic in the endpoint's [`admit`] module).
pub use crate::proto::tftp::admit::AdmissionConfig;
use crate::sys;
pub use crate::sys::socket::PortRange;

use super::tftp::{Core, Listener, Shared};
use super::{mcast, tftp, uring, Engine, Epoll, Failure, Flow, Stopper};
use crate::proto::tftp::admit;
use crate::proto::tftp::options::Limits;
use crate::store::Store;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{info, warn};

/// Which I/O backend to use (`--io-backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring when it works here, else the epoll fallback.
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll.
    Fallback,
}

/// The backend a server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Fallback,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Uring => "uring",
            Backend::Fallback => "fallback",
        })
    }
}

/// One address to listen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    pub addr: SocketAddr,
    /// Skip it, with a warning, when its address family is unavailable (the default `[::]:69`).
    pub optional: bool,
}

/// Everything the server needs besides the store.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: Vec<ListenAddr>,
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Negotiation limits, retransmission ceiling and retries.
    pub limits: Limits,
    /// Floor of the retransmission timer.
    pub min_rto: Duration,
    /// Ports for transfer sockets; `None`: any ephemeral port.
    pub port_range: Option<PortRange>,
    pub backend: BackendChoice,
    /// Caps on transfers (see [`admit`]).
    pub admission: AdmissionConfig,
    /// The most `max_transfers` a reload may raise it to (what the descriptors allow; see
    /// [`admit::Admission::with_ceiling`]).
    pub max_transfers_ceiling: usize,
    /// A fault to inject, for tests of the failure handling (`--fault`, hidden).
    pub fault: Option<Fault>,
    /// Operator caps of outgoing interfaces (`--rate-limit`): interface index and rate in wire
    /// bytes per second.
    pub rate_limits: Vec<(u32, crate::proto::cc::Rate)>,
}

/// Faults a test can inject into a running server (hidden `--fault` flag), to check that a
/// failing component stops the process with a clear message instead of vanishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A worker panics on its first request.
    WorkerPanic,
    /// A worker's loop returns an error on its first request.
    WorkerError,
}

/// Descriptors a server needs besides its admitted transfer sockets: standard streams, signal
/// and shutdown descriptors, and per worker its listeners, its ring or epoll descriptor, and the
/// sockets of transfers dropped to make room that still wait to close
/// ([`tftp::MAX_LINGERING`]).
pub fn fixed_descriptors(workers: usize, listen_addrs: usize) -> u64 {
    32 + (workers * (listen_addrs + 3 + tftp::MAX_LINGERING)) as u64
}

/// Descriptors transfer sockets may use under a limit of `nofile`: half of what the fixed ones
/// leave. The other half is the reserve for everything whose descriptors the network can make
/// grow too, each bounded by its own cap: the file store (open or leased files), the multicast
/// service (a socket per session), the DHCP responder (its lease file) and logging; plus the
/// transfers dropped to make room that are still waiting for their socket to close.
pub fn descriptor_budget(nofile: u64, workers: usize, listen_addrs: usize) -> u64 {
    nofile.saturating_sub(fixed_descriptors(workers, listen_addrs)) / 2
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit. Returns the soft limit before and after.
pub fn raise_descriptor_limit() -> io::Result<(u64, u64)> {
    sys::socket::raise_nofile_limit()
}

/// The current soft `RLIMIT_NOFILE`.
pub fn descriptor_limit() -> io::Result<u64> {
    sys::socket::nofile_limit().map(|(soft, _)| soft)
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("no address to listen on")]
    NoListener,
    #[error("io_uring is unavailable ({0}); run with --io-backend auto or fallback")]
    UringUnavailable(io::Error),
    #[error("cannot set up the shutdown event: {0}")]
    Shutdown(io::Error),
    #[error("cannot start worker {worker}: {source}")]
    Spawn {
        worker: usize,
        #[source]
        source: io::Error,
    },
    #[error("worker {worker} failed: {source}")]
    Worker {
        worker: usize,
        #[source]
        source: io::Error,
    },
    #[error("worker {0} panicked: {1}")]
    Panicked(usize, String),
    #[error("worker {0} stopped unexpectedly")]
    Stopped(usize),
}

/// The message of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

fn bind_reason(addr: &SocketAddr, e: &io::Error) -> String {
    let base = match e.raw_os_error() {
        Some(libc::EACCES) => "permission denied".to_owned(),
        Some(libc::EADDRINUSE) => "address already in use".to_owned(),
        Some(libc::EADDRNOTAVAIL) => "address not available".to_owned(),
        Some(libc::EAFNOSUPPORT) => "address family not supported".to_owned(),
        _ => e.to_string(),
    };
    match e.raw_os_error() {
        // PXE firmware only asks port 69 (and 67/4011): another port is no way out.
        Some(libc::EACCES) if addr.port() < 1024 => format!(
            "{base} (port {} needs root or CAP_NET_BIND_SERVICE: start as root with --user NAME to drop root once bound, give the binary the capability with `setcap cap_net_bind_service=+ep`, or run the systemd unit dist/ringboot.service)",
            addr.port()
        ),
        Some(libc::EADDRINUSE) => format!("{base} (is another TFTP server running?)"),
        Some(libc::EADDRNOTAVAIL) => format!("{base} (no interface of this host has that address)"),
        _ => base,
    }
}

/// The stopper every worker's engine shares: one trigger stops them all.
pub struct Shutdown(Stopper);

impl Shutdown {
    pub fn new() -> io::Result<Arc<Shutdown>> {
        Ok(Arc::new(Shutdown(Stopper::new()?)))
    }

    /// Ask every worker to stop (they finish within one loop turn).
    pub fn trigger(&self) {
        self.0.stop();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_stopped()
    }
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    /// `sockets[w]`: worker w's listeners, one per listen address.
    sockets: Vec<Vec<Listener>>,
    addrs: Vec<SocketAddr>,
    backend: Backend,
    forced: bool,
}

impl Server {
    /// Bind every listening socket and choose the backend. See the module docs.
    pub fn bind(cfg: ServerConfig, store: Arc<Store>) -> Result<Server, ServerError> {
        let workers = cfg.workers.max(1);
        let mut sockets: Vec<Vec<Listener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for la in &cfg.listen {
            // The first socket fixes the port (the asked one, or the kernel's pick for port 0).
            let first = match sys::socket::check_address_free(la.addr)
                .and_then(|()| sys::socket::listener_socket(la.addr))
            {
                Ok(s) => s,
                Err(e)
                    if la.optional
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
                        ) =>
                {
                    warn!(addr = %la.addr, reason = %e, "IPv6 unavailable; not listening on {}", la.addr);
                    continue;
                }
                Err(e) => {
                    return Err(ServerError::Bind {
                        addr: la.addr,
                        reason: bind_reason(&la.addr, &e),
                    })
                }
            };
            let bound = first
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(la.addr);
            sockets[0].push(Listener {
                sock: first,
                addr: bound,
            });
            for w in sockets.iter_mut().skip(1) {
                let s = sys::socket::listener_socket(bound).map_err(|e| ServerError::Bind {
                    addr: bound,
                    reason: bind_reason(&bound, &e),
                })?;
                w.push(Listener {
                    sock: s,
                    addr: bound,
                });
            }
            addrs.push(bound);
        }
        if addrs.is_empty() {
            return Err(ServerError::NoListener);
        }
        let backend = match cfg.backend {
            BackendChoice::Fallback => {
                info!("I/O backend: epoll fallback (forced by --io-backend fallback)");
                Backend::Fallback
            }
            BackendChoice::Uring => {
                uring::probe().map_err(ServerError::UringUnavailable)?;
                info!("I/O backend: io_uring (forced by --io-backend uring)");
                Backend::Uring
            }
            BackendChoice::Auto => match uring::probe() {
                Ok(()) => {
                    info!("I/O backend: io_uring");
                    Backend::Uring
                }
                Err(err) => {
                    warn!("io_uring unavailable ({err}); using the epoll fallback");
                    Backend::Fallback
                }
            },
        };
        let per = tftp::transfer_memory_bound();
        info!(
            per_transfer_bytes = per,
            "memory of transfers: at most {} KiB each, {} MiB for {} transfers",
            per.div_ceil(1024),
            (per * cfg.admission.max_transfers).div_ceil(1 << 20),
            cfg.admission.max_transfers
        );
        Ok(Server {
            shared: Arc::new(Shared {
                store,
                limits: cfg.limits,
                min_rto: cfg.min_rto,
                port_range: cfg.port_range,
                multicast: None,
                admission: admit::Admission::with_ceiling(cfg.admission, cfg.max_transfers_ceiling),
                settings: Some(Arc::new(super::settings::Settings::new(
                    super::settings::Tunables {
                        limits: cfg.limits,
                        min_rto: cfg.min_rto,
                    },
                ))),
                workers,
                fault: cfg.fault,
                metrics: None,
                draining: None,
                links: Arc::new(super::links::Links::new(cfg.rate_limits.iter().copied())),
            }),
            sockets,
            addrs,
            backend,
            forced: cfg.backend == BackendChoice::Uring,
        })
    }

    /// The admission shared by the workers (a reload changes its caps:
    /// [`Admission::reconfigure`](admit::Admission::reconfigure)).
    pub fn admission(&self) -> Arc<admit::Admission> {
        self.shared.admission.clone()
    }

    /// The transfer options the workers take for new requests (a reload replaces them:
    /// [`Settings::replace`](super::settings::Settings::replace)).
    pub fn settings(&self) -> Option<Arc<super::settings::Settings>> {
        self.shared.settings.clone()
    }

    /// The interface controllers the workers share (the multicast service joins them:
    /// [`McService::share_uplink`](mcast::McService::share_uplink)).
    pub(crate) fn links(&self) -> Arc<super::links::Links> {
        self.shared.links.clone()
    }

    /// Hand requests carrying the RFC 2090 `multicast` option to this multicast service. Call
    /// before [`start`](Self::start).
    pub fn set_multicast(&mut self, handle: mcast::McHandle) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.multicast = Some(handle);
        }
    }

    /// Record into `status` (metrics and the status page); call before `start`.
    pub fn set_metrics(&mut self, status: Arc<crate::metrics::Status>) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.metrics = Some(status);
        }
    }

    /// While `flag` is set, new requests are refused (ERROR 0, "server shutting down") and
    /// running transfers go on: the drain at SIGTERM. Call before `start`.
    pub fn set_drain(&mut self, flag: Arc<std::sync::atomic::AtomicBool>) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.draining = Some(flag);
        }
    }

    /// The bound listen addresses (ports resolved), in `--listen` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn workers(&self) -> usize {
        self.sockets.len()
    }

    /// Spawn the workers; returns once every one has set up its backend.
    pub fn start(self, shutdown: Arc<Shutdown>) -> Result<Running, ServerError> {
        let gso = sys::socket::gso_supported();
        if !gso {
            warn!("UDP GSO unavailable; sending one datagram per block");
        }
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<Backend, io::Error>)>();
        let mut handles = Vec::new();
        let n = self.sockets.len();
        for (w, listeners) in self.sockets.into_iter().enumerate() {
            let shared = self.shared.clone();
            let sd = shutdown.clone();
            let ready = ready_tx.clone();
            let backend = self.backend;
            let forced = self.forced;
            let h = std::thread::Builder::new()
                .name(format!("ringboot-w{w}"))
                .spawn(move || worker_main(w, shared, listeners, gso, backend, forced, &sd, ready))
                .map_err(|source| ServerError::Spawn { worker: w, source })?;
            handles.push(h);
        }
        drop(ready_tx);
        let mut running = Running {
            handles: handles.into_iter().map(Some).collect(),
            shutdown,
            backend: self.backend,
        };
        let mut failure = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok((_, Ok(b))) => {
                    if b != running.backend {
                        running.backend = b;
                    }
                }
                Ok((w, Err(source))) => {
                    failure.get_or_insert(ServerError::Worker { worker: w, source });
                }
                Err(_) => break,
            }
        }
        if let Some(f) = failure {
            running.shutdown.trigger();
            let _ = running.join();
            return Err(f);
        }
        Ok(running)
    }
}

#[allow(clippy::too_many_arguments)]
fn worker_main(
    w: usize,
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    gso: bool,
    backend: Backend,
    forced: bool,
    shutdown: &Shutdown,
    ready: mpsc::Sender<(usize, Result<Backend, io::Error>)>,
) -> Result<(), ServerError> {
    let core = Core::new(w, shared, listeners, gso);
    let ring = match backend {
        Backend::Fallback => None,
        Backend::Uring => match uring::new_ring() {
            Ok(r) => Some(r),
            Err(e) if !forced => {
                warn!(
                    worker = w,
                    "io_uring unavailable ({e}); this worker uses the epoll fallback"
                );
                None
            }
            Err(e) => {
                let _ = ready.send((w, Err(e)));
                return Ok(());
            }
        },
    };
    let used = if ring.is_some() {
        Backend::Uring
    } else {
        Backend::Fallback
    };
    let _ = ready.send((w, Ok(used)));
    drop(ready);
    let stopper = shutdown.0.clone();
    let r = match ring {
        Some(ring) => run(
            uring::Ring::new(ring),
            stopper,
            tftp::uring::TftpRing::new(core),
        ),
        None => run(Epoll::new(256), stopper, tftp::epoll::TftpEpoll::new(core)),
    };
    r.map_err(|source| ServerError::Worker { worker: w, source })
}

/// Run one worker: the engine over `reactor` hosting the TFTP service, until the shutdown.
fn run<R: super::Reactor, S: super::Service<R>>(
    reactor: io::Result<R>,
    stopper: Stopper,
    service: S,
) -> io::Result<()> {
    let mut engine = Engine::with_reactor(reactor?, stopper)?;
    engine.add(service)?;
    engine.run(|_| Flow::Continue).map_err(|f| match f {
        Failure::Wait(e) => e,
        e @ Failure::Error { .. } => io::Error::other(e.to_string()),
    })
}

/// Running workers.
pub struct Running {
    /// `None` once joined by [`poll_failure`](Self::poll_failure).
    handles: Vec<Option<JoinHandle<Result<(), ServerError>>>>,
    shutdown: Arc<Shutdown>,
    backend: Backend,
}

impl Running {
    /// The backend the workers run (`Fallback` if any worker had to fall back).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether some worker has stopped (only after a shutdown, or on an error).
    pub fn any_finished(&self) -> bool {
        self.handles
            .iter()
            .any(|h| h.as_ref().is_none_or(|h| h.is_finished()))
    }

    /// The failure of a worker that has stopped although no shutdown was asked: its error, its
    /// panic, or [`ServerError::Stopped`]. `None` while every worker runs.
    pub fn poll_failure(&mut self) -> Option<ServerError> {
        for (w, slot) in self.handles.iter_mut().enumerate() {
            if !slot.as_ref().is_some_and(|h| h.is_finished()) {
                continue;
            }
            let h = slot.take()?;
            return Some(match h.join() {
                Ok(Err(e)) => e,
                Ok(Ok(())) => ServerError::Stopped(w),
                Err(p) => ServerError::Panicked(w, panic_message(&*p)),
            });
        }
        None
    }

    /// Stop every worker and wait for them; the first error, if any.
    pub fn join(self) -> Result<(), ServerError> {
        self.shutdown.trigger();
        let mut first = Ok(());
        for (w, h) in self.handles.into_iter().enumerate() {
            let Some(h) = h else { continue };
            let r = match h.join() {
                Ok(r) => r,
                Err(p) => Err(ServerError::Panicked(w, panic_message(&*p))),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_errors_name_the_fix() {
        let a: SocketAddr = "0.0.0.0:69".parse().unwrap();
        let r = bind_reason(&a, &io::Error::from_raw_os_error(libc::EACCES));
        assert!(r.starts_with("permission denied (port 69 needs root or CAP_NET_BIND_SERVICE"));
        assert!(
            r.contains("setcap") && r.contains("--user") && !r.contains("6969"),
            "{r}"
        );
        let r = bind_reason(&a, &io::Error::from_raw_os_error(libc::EADDRINUSE));
        assert!(r.starts_with("address already in use"));
    }

    #[test]
    fn descriptor_budget_leaves_a_reserve() {
        // systemd's default soft limit, 2 workers, one listen address.
        assert_eq!(fixed_descriptors(2, 1), 72);
        assert_eq!(descriptor_budget(1024, 2, 1), 476);
        let d = AdmissionConfig::for_descriptors(descriptor_budget(1024, 2, 1));
        assert_eq!(d.max_transfers, 476);
        // What the transfers may take leaves at least as much to the rest.
        for nofile in [64u64, 256, 1024, 4096, 65536, 1 << 20] {
            for w in [1usize, 2, 16, 64] {
                let b = descriptor_budget(nofile, w, 2);
                assert!(2 * b + fixed_descriptors(w, 2) <= nofile.max(fixed_descriptors(w, 2)));
            }
        }
        assert_eq!(descriptor_budget(10, 4, 2), 0);
    }
}
