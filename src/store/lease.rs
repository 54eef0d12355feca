//! Read leases on mapped files, and the store's watcher thread.
//!
//! Leases. A mapped file's descriptor takes `F_SETLEASE F_RDLCK` with `F_SETSIG` =
//! [`lease_signal`]. While the lease stands, nobody has the file open for writing: the content is
//! unchanged, whatever its mtime says, and checking it costs nothing. When anyone opens the file for
//! writing or truncates it, the kernel holds that writer back and sends the signal. An open for
//! writing is not a change (`touch`, a backup agent or a scanner opening `r+`), so the watcher does
//! not revoke: it marks the content *suspect* (a writer may be active), waits until the sends of it
//! already handed to the kernel are over (`Content::begin_send`, at most 1 s; later sends check for
//! a change first), and releases the lease so the writer goes on within microseconds instead of
//! waiting `lease-break-time` (45 s). A real change is then seen by inotify (`watch.rs`:
//! `IN_MODIFY` revokes) or, without inotify, by the (size, mtime, ctime) check of each send while
//! suspect. When the writer closes (`IN_CLOSE_WRITE`, or a retry every second without inotify) the
//! lease is taken again and the content is no longer suspect.
//!
//! Budget: a lease needs the file's descriptor for as long as the content lives; at most
//! [`set_budget`] descriptors (a quarter of `RLIMIT_NOFILE` at start, at most 1,024) hold leases,
//! further files are mapped without one and their descriptor is closed at once. A lease refused
//! (not the file's owner and no `CAP_LEASE`, a filesystem without leases) is reported at WARN once
//! per file (up to [`WARNED_FILES`] files are remembered; further lines are only rate-limited).
//!
//! Delivery: [`block_lease_signal`] blocks the signal in `main` before any thread exists, so every
//! thread inherits the mask and the watcher's `signalfd` gets it. Where some thread did not block
//! it (test harnesses, embedders), a handler installed here forwards `si_fd` through a pipe to the
//! same watcher, so the default action (terminate) never runs. If the kernel's realtime-signal
//! queue is full it sends `SIGIO` instead: that is caught the same way (unless someone else already
//! handles `SIGIO`) and makes the watcher check every lease.
//!
//! The watcher thread (one per process, started by the first store) waits on the signals, the
//! handler's pipe and the inotify descriptor. If it ever stops (an error, a panic), it logs an
//! ERROR, releases every lease, and leases and inotify are reported unavailable from then on: every
//! content falls back to the (size, mtime, ctime) check (it is not restarted).
//!
//! Lock order: a store's cache lock, then [`REGISTRY`]'s, then the inotify state's (`watch.rs`);
//! never the reverse. Nothing is dropped under the registry lock.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use libc::c_int;

use super::{Content, RateLog};
use crate::engine::{Engine, Flow, Io, Service};

/// `F_SETSIG` from `<asm-generic/fcntl.h>` (not exported by the libc crate for Linux).
const F_SETSIG: c_int = 10;
/// Files whose refused lease was reported, remembered to report each once.
pub(crate) const WARNED_FILES: usize = 4096;
/// How long a lease break waits for sends in progress before it lets the writer go on.
const SEND_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The realtime signal that reports lease breaks.
pub(crate) fn lease_signal() -> c_int {
    libc::SIGRTMIN() + 3
}

/// Leased (or lease-broken) descriptor -> the content it maps.
static REGISTRY: Mutex<BTreeMap<RawFd, Weak<Content>>> = Mutex::new(BTreeMap::new());
/// What the watcher serves (decided once).
static STARTED: OnceLock<Started> = OnceLock::new();
/// The watcher thread runs.
static ALIVE: AtomicBool = AtomicBool::new(false);
/// Write end of the handler's pipe, or -1.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// Descriptors holding a lease (or waiting to take it again), and the most allowed.
static HELD: AtomicUsize = AtomicUsize::new(0);
static BUDGET: AtomicUsize = AtomicUsize::new(1024);
/// Some lease broke on a content without inotify: retry taking it every second.
static RETRY: AtomicBool = AtomicBool::new(false);
/// Files whose refused lease was reported.
static WARNED: Mutex<Option<HashSet<(u64, u64)>>> = Mutex::new(None);
static REFUSED_LOG: RateLog = RateLog::new();

#[derive(Clone, Copy, Debug)]
struct Started {
    leases: bool,
    inotify: bool,
}

fn registry() -> MutexGuard<'static, BTreeMap<RawFd, Weak<Content>>> {
    super::lock(&REGISTRY)
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, lease_signal());
        libc::sigaddset(&mut set, libc::SIGIO);
        set
    }
}

/// Blocks the lease signal (and `SIGIO`, its overflow fallback) in the calling thread. Call it at
/// the start of `main`, before any thread is spawned, so that every later thread inherits the mask.
/// Harmless when leases end up unused.
pub fn block_lease_signal() {
    let set = signal_set();
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        let e = io::Error::from_raw_os_error(r);
        tracing::debug!(error = %e, "could not block the lease signal");
    }
}

/// Starts the watcher on the first call. Returns whether leases and inotify can be used.
pub(crate) fn ensure_watcher() -> (bool, bool) {
    let s = STARTED.get_or_init(|| {
        let inotify = super::watch::init();
        let signals = match setup_signals() {
            Ok(fds) => Some(fds),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "file leases unavailable: a file opened for writing is noticed by inotify, or \
                     by (size, mtime, ctime) only"
                );
                None
            }
        };
        if signals.is_none() && !inotify {
            return Started {
                leases: false,
                inotify: false,
            };
        }
        ALIVE.store(true, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("ringboot-watch".into())
            .spawn(move || {
                let set = signal_set();
                // SAFETY: blocks the signals in this thread only.
                unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
                let _guard = WatcherGuard;
                watch_loop(signals);
            });
        match spawned {
            Ok(_) => Started {
                leases: signals.is_some(),
                inotify,
            },
            Err(e) => {
                ALIVE.store(false, Ordering::SeqCst);
                tracing::warn!(error = %e, "cannot start the file watcher thread: file changes \
                    are detected by (size, mtime, ctime) only");
                Started {
                    leases: false,
                    inotify: false,
                }
            }
        }
    });
    (s.leases && watcher_alive(), s.inotify && watcher_alive())
}

/// Whether the watcher thread runs (leases and watches can be relied on).
pub(crate) fn watcher_alive() -> bool {
    ALIVE.load(Ordering::SeqCst)
}

/// Whether new contents may take leases.
fn leases_usable() -> bool {
    STARTED.get().is_some_and(|s| s.leases) && watcher_alive()
}

/// Sets how many descriptors may hold leases: a quarter of the soft `RLIMIT_NOFILE`, at most 1,024.
pub(crate) fn set_budget() {
    // SAFETY: rlimit is plain data filled by the kernel.
    let soft = unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur
        } else {
            1024
        }
    };
    let budget = usize::try_from(soft / 4).unwrap_or(usize::MAX).min(1024);
    BUDGET.store(budget, Ordering::Relaxed);
}

/// Stops the watcher's work for good when its thread ends, however it ends.
struct WatcherGuard;

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        ALIVE.store(false, Ordering::SeqCst);
        tracing::error!(
            "the file watcher thread stopped: leases and inotify are no longer used; file changes \
             are detected by (size, mtime, ctime) only, and a touch now counts as a change"
        );
        let reg = registry();
        for &fd in reg.keys() {
            // SAFETY: `fd` is open: its Content unregisters it (under this lock) before closing it.
            unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        }
    }
}

/// `siginfo_t` as laid out for `SIGPOLL`-style signals (`_sigpoll`: band, fd).
#[repr(C)]
struct SigInfoPoll {
    signo: c_int,
    errno: c_int,
    code: c_int,
    band: libc::c_long,
    fd: c_int,
}

extern "C" fn on_signal(sig: c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Async-signal-safe only: an atomic load and write(2); errno is preserved.
    // SAFETY: errno location is thread-local and always valid; `info` is provided by the kernel for
    // an SA_SIGINFO handler and, for F_SETSIG signals, has the _sigpoll layout.
    unsafe {
        let saved = *libc::__errno_location();
        let fd: c_int = if sig == libc::SIGIO || info.is_null() {
            -1
        } else {
            (*(info as *const SigInfoPoll)).fd
        };
        let w = PIPE_WRITE.load(Ordering::Relaxed);
        if w >= 0 {
            libc::write(
                w,
                &fd as *const c_int as *const libc::c_void,
                std::mem::size_of::<c_int>(),
            );
        }
        *libc::__errno_location() = saved;
    }
}

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The signalfd and the read end of the handler's pipe.
fn setup_signals() -> io::Result<(RawFd, RawFd)> {
    let mut pipe = [-1; 2];
    // SAFETY: `pipe` has room for two descriptors.
    cvt(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    let set = signal_set();
    // SAFETY: `set` is initialised; a new signalfd is returned or an error.
    let sfd = match cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })
    {
        Ok(fd) => fd,
        Err(e) => {
            // SAFETY: both pipe ends are ours and unused.
            unsafe { libc::close(pipe[0]) };
            unsafe { libc::close(pipe[1]) };
            return Err(e);
        }
    };
    PIPE_WRITE.store(pipe[1], Ordering::Relaxed);
    install_handler(lease_signal(), true)?;
    // SIGIO only if nobody else handles it.
    install_handler(libc::SIGIO, false)?;
    Ok((sfd, pipe[0]))
}

fn install_handler(sig: c_int, replace: bool) -> io::Result<()> {
    // SAFETY: sigaction structs are plain data, initialised here; the handler is async-signal-safe.
    unsafe {
        if !replace {
            let mut old: libc::sigaction = std::mem::zeroed();
            cvt(libc::sigaction(sig, std::ptr::null(), &mut old))?;
            if old.sa_sigaction != libc::SIG_DFL {
                return Ok(());
            }
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        cvt(libc::sigaction(sig, &sa, std::ptr::null_mut()))?;
    }
    Ok(())
}

/// The watcher as a service of its own engine (thread `ringboot-watch`): the signalfd of lease
/// breaks, the read end of the handler's pipe, the inotify descriptor; a retry every second while
/// some broken lease waits to be taken again without inotify.
struct FileWatcher {
    sfd: RawFd,
    pipe: RawFd,
    /// Descriptors whose lease broke, gathered per wake-up (reused).
    fds: Vec<RawFd>,
}

const SUB_SIGNALS: u32 = 0;
const SUB_PIPE: u32 = 1;
const SUB_INOTIFY: u32 = 2;
/// The retry timer.
const RETRY_TIMER: u64 = 0;

impl FileWatcher {
    fn read_signals(&mut self) {
        loop {
            // SAFETY: signalfd_siginfo is plain data; read fills whole records.
            let mut info: [libc::signalfd_siginfo; 8] = unsafe { std::mem::zeroed() };
            // SAFETY: reads into a local buffer of the given size.
            let n = unsafe {
                libc::read(
                    self.sfd,
                    info.as_mut_ptr().cast(),
                    std::mem::size_of_val(&info),
                )
            };
            if n <= 0 {
                break;
            }
            let count = n as usize / std::mem::size_of::<libc::signalfd_siginfo>();
            for i in &info[..count] {
                self.fds.push(if i.ssi_signo == libc::SIGIO as u32 {
                    -1
                } else {
                    i.ssi_fd
                });
            }
        }
    }

    fn read_pipe(&mut self) {
        loop {
            let mut buf = [0u8; 256];
            // SAFETY: reads into a local buffer.
            let n = unsafe { libc::read(self.pipe, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            // Each write is 4 bytes, below PIPE_BUF, so records are never split.
            for c in buf[..n as usize].chunks_exact(4) {
                self.fds
                    .push(c_int::from_ne_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
    }

    fn retry(&mut self, io: &mut Io<'_>, now: std::time::Instant) {
        if RETRY.load(Ordering::SeqCst) {
            retry_relets();
            io.arm(RETRY_TIMER, now + std::time::Duration::from_secs(1));
        }
    }
}

impl Service for FileWatcher {
    fn name(&self) -> &'static str {
        "file watcher"
    }

    fn start(&mut self, io: &mut Io<'_>, _now: std::time::Instant) -> io::Result<()> {
        if self.sfd >= 0 {
            io.watch(self.sfd, SUB_SIGNALS)?;
        }
        if self.pipe >= 0 {
            io.watch(self.pipe, SUB_PIPE)?;
        }
        if let Some(fd) = super::watch::raw_fd() {
            io.watch(fd, SUB_INOTIFY)?;
        }
        Ok(())
    }

    fn on_readable(
        &mut self,
        io: &mut Io<'_>,
        sub: u32,
        now: std::time::Instant,
    ) -> io::Result<()> {
        match sub {
            SUB_INOTIFY => super::watch::sync(),
            SUB_SIGNALS => self.read_signals(),
            _ => self.read_pipe(),
        }
        let mut fds = std::mem::take(&mut self.fds);
        for fd in fds.drain(..) {
            #[cfg(test)]
            if fd == STOP_FOR_TEST {
                return Err(io::Error::other("stopped for a test"));
            }
            handle_break(fd);
        }
        self.fds = fds;
        self.retry(io, now);
        Ok(())
    }

    fn on_timer(&mut self, io: &mut Io<'_>, _key: u64, now: std::time::Instant) -> io::Result<()> {
        self.retry(io, now);
        Ok(())
    }

    fn shutdown(&mut self, _now: std::time::Instant) {}
}

fn watch_loop(signals: Option<(RawFd, RawFd)>) {
    let (sfd, pipe) = signals.unwrap_or((-1, -1));
    let watcher = FileWatcher {
        sfd,
        pipe,
        fds: Vec::new(),
    };
    let run = Engine::new().and_then(|mut e| {
        e.add(watcher)?;
        Ok(e)
    });
    match run {
        Ok(mut engine) => {
            if let Err(e) = engine.run(|_| Flow::Continue) {
                tracing::debug!("the file watcher's engine ended: {e}");
            }
        }
        Err(e) => tracing::error!(error = %e, "the file watcher cannot wait for events"),
    }
}

/// A lease on `fd` (or, for -1, on any descriptor) is being broken: someone opens the file for
/// writing or truncates it. See the module docs: suspect, drain, release; no revocation.
fn handle_break(fd: RawFd) {
    let broken: Vec<(RawFd, Arc<Content>)> = {
        let reg = registry();
        let fds: Vec<RawFd> = if fd < 0 {
            reg.keys().copied().collect()
        } else {
            vec![fd]
        };
        let mut out = Vec::new();
        for fd in fds {
            let Some(content) = reg.get(&fd).and_then(Weak::upgrade) else {
                continue;
            };
            // A break in progress reports the type being downgraded to; an intact read lease means
            // this signal is stale (its descriptor was closed and the number reused).
            // SAFETY: `fd` is open: its Content unregisters it (under this lock) before closing it.
            if unsafe { libc::fcntl(fd, libc::F_GETLEASE) } == libc::F_RDLCK {
                continue;
            }
            out.push((fd, content));
        }
        out
    };
    for (fd, content) in broken {
        // Already suspect: the lease was released before (a repeated or catch-all signal).
        if !content.is_suspect() {
            if !content.suspect_and_drain(SEND_DRAIN_LIMIT) {
                tracing::debug!(file = %content.display_path(), "sends still running after the drain limit");
            }
            tracing::debug!(
                file = %content.display_path(),
                "opened for writing while being served; transfers go on unless the content changes"
            );
        }
        // SAFETY: `fd` is open: the Arc keeps its Content, which owns the descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        if !content.watched() {
            RETRY.store(true, Ordering::SeqCst);
        }
    }
}

/// Takes the lease of a suspect content again if no writer has the file open any more. Without
/// inotify, a content whose (size, mtime, ctime) moved meanwhile is revoked instead.
pub(crate) fn try_relet(content: &Content) {
    let Some(fd) = content.lease_fd() else {
        return;
    };
    if !content.is_suspect() || !leases_usable() {
        return;
    }
    // SAFETY: `fd` is owned by `content`, alive for the call.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
        return; // EAGAIN: a writer still has it open
    }
    match super::Version::of_fd(fd) {
        Ok(now) if content.watched() || now == content.baseline() => content.relet(now),
        _ => {
            content.revoke_changed("modified in place while being served");
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        }
    }
}

/// Without inotify: retry taking the lease of every suspect content.
fn retry_relets() {
    let suspects: Vec<Arc<Content>> = registry()
        .values()
        .filter_map(Weak::upgrade)
        .filter(|c| c.is_suspect() && !c.is_revoked())
        .collect();
    let mut still = false;
    for c in &suspects {
        if !c.watched() {
            try_relet(c);
            still |= c.is_suspect() && !c.is_revoked();
        }
    }
    RETRY.store(still, Ordering::SeqCst);
    drop(suspects);
}

/// The outcome of [`with_lease`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// A read lease is held on the descriptor: keep it open.
    Held,
    /// Someone has the file open for writing right now: no lease yet; keep the descriptor and take
    /// the lease when the writer closes (the content starts suspect).
    WriterOpen,
    /// No lease (not wanted, over budget, or refused): close the descriptor once mapped.
    None,
}

/// Takes a read lease on `fd` (the file `id`, shown as `display`) if `wanted` and possible, then
/// builds the content with `make(state)` while the registry is locked, so that a break cannot be
/// handled before the entry exists.
pub(crate) fn with_lease<E>(
    fd: RawFd,
    id: (u64, u64),
    name: &str,
    wanted: bool,
    make: impl FnOnce(LeaseState) -> Result<Arc<Content>, E>,
) -> Result<Arc<Content>, E> {
    if !wanted || !leases_usable() {
        return make(LeaseState::None);
    }
    if HELD.fetch_add(1, Ordering::SeqCst) >= BUDGET.load(Ordering::Relaxed) {
        HELD.fetch_sub(1, Ordering::SeqCst);
        tracing::trace!(file = name, "lease budget spent; mapped without a lease");
        return make(LeaseState::None);
    }
    let mut reg = registry();
    // SAFETY: `fd` is an open descriptor owned by the caller for the whole call.
    let state = unsafe {
        if libc::fcntl(fd, F_SETSIG, lease_signal()) != 0 {
            Err(io::Error::last_os_error())
        } else if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0 {
            Ok(LeaseState::Held)
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                Ok(LeaseState::WriterOpen)
            } else {
                Err(e)
            }
        }
    };
    let state = state.unwrap_or_else(|e| {
        warn_refused(id, name, &e);
        LeaseState::None
    });
    if state == LeaseState::None {
        HELD.fetch_sub(1, Ordering::SeqCst);
    }
    let content = make(state);
    match &content {
        Ok(c) if state != LeaseState::None => {
            reg.insert(fd, Arc::downgrade(c));
            if state == LeaseState::WriterOpen && !c.watched() {
                RETRY.store(true, Ordering::SeqCst);
            }
        }
        Err(_) if state != LeaseState::None => {
            HELD.fetch_sub(1, Ordering::SeqCst);
        }
        _ => {}
    }
    content
}

/// A lease was refused for file `id`: WARN once per file (and at most once a second).
fn warn_refused(id: (u64, u64), name: &str, e: &io::Error) {
    let first = {
        let mut w = super::lock(&WARNED);
        let set = w.get_or_insert_with(HashSet::new);
        if set.contains(&id) {
            false
        } else {
            if set.len() < WARNED_FILES {
                set.insert(id);
            }
            true
        }
    };
    if !first {
        return;
    }
    if let Some(n) = REFUSED_LOG.allow() {
        tracing::warn!(
            file = name,
            error = %e,
            suppressed = n,
            "no read lease on this file (the server is not its owner and lacks CAP_LEASE, or \
             its filesystem has no leases): an in-place rewrite is detected by inotify, or by \
             (size, mtime, ctime) only"
        );
    }
}

/// Whether a lease can be taken on files below the root: `fs.leases-enable`, then one regular
/// file of the root as a sample (`sample` opens it for reading). Logs a WARN when not.
pub(crate) fn probe(root: &std::path::Path, sample: Option<(std::fs::File, String)>) -> bool {
    if std::fs::read_to_string("/proc/sys/fs/leases-enable").is_ok_and(|s| s.trim() == "0") {
        tracing::warn!(
            root = %root.display(),
            "fs.leases-enable is 0: no read leases; in-place rewrites are detected by inotify, or \
             by (size, mtime, ctime) only"
        );
        return false;
    }
    let Some((file, name)) = sample else {
        tracing::debug!(root = %root.display(), "no file to probe read leases with");
        return true;
    };
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open for the call; the lease is released at once.
    let r = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    if r == 0 {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return true;
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => true,
        Some(libc::EACCES | libc::EPERM) => {
            tracing::warn!(
                root = %root.display(),
                sample = name,
                error = %e,
                "read leases refused on files the server does not own (no CAP_LEASE): such files \
                 are watched by inotify, or checked by (size, mtime, ctime) only"
            );
            true
        }
        _ => {
            tracing::warn!(
                root = %root.display(),
                sample = name,
                error = %e,
                "the filesystem of the root has no read leases: in-place rewrites are detected by \
                 inotify, or by (size, mtime, ctime) only"
            );
            false
        }
    }
}

/// Called by `Content::drop` before its descriptor closes.
pub(crate) fn unregister(fd: RawFd, content: *const Content) {
    let mut reg = registry();
    if reg
        .get(&fd)
        .is_some_and(|w| std::ptr::eq(w.as_ptr(), content))
    {
        reg.remove(&fd);
        HELD.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
pub(crate) fn is_registered(fd: RawFd) -> bool {
    registry().contains_key(&fd)
}

/// Written to the handler's pipe by a test: the watcher loop returns, as on a fatal error.
#[cfg(test)]
const STOP_FOR_TEST: c_int = -2;

#[cfg(test)]
pub(crate) fn stop_watcher_for_test() {
    let w = PIPE_WRITE.load(Ordering::Relaxed);
    assert!(w >= 0, "the watcher has no pipe");
    // SAFETY: writes 4 bytes from a local to our own pipe.
    unsafe {
        libc::write(
            w,
            &STOP_FOR_TEST as *const c_int as *const libc::c_void,
            std::mem::size_of::<c_int>(),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siginfo_poll_layout_matches_the_kernel() {
        // si_fd follows si_band, which follows the 3-int header padded to the union's alignment.
        let header = 3 * std::mem::size_of::<c_int>();
        let align = std::mem::align_of::<usize>();
        let band = header.div_ceil(align) * align;
        assert_eq!(
            std::mem::offset_of!(SigInfoPoll, fd),
            band + std::mem::size_of::<libc::c_long>()
        );
    }

    #[test]
    fn lease_signal_is_a_realtime_signal() {
        assert!(lease_signal() > libc::SIGRTMIN() && lease_signal() <= libc::SIGRTMAX());
    }

    #[test]
    fn stale_and_unknown_descriptors_are_ignored() {
        // Neither registered nor leased: nothing happens, nothing panics.
        handle_break(-1);
        handle_break(i32::MAX - 1);
    }

    /// The watcher thread stopping is never silent: an ERROR, every lease released, and from then
    /// on leases and watches count as unavailable, so the (size, mtime, ctime) check takes over.
    /// Run in a child process (the state is process-wide).
    #[test]
    fn a_stopped_watcher_is_reported_and_the_stat_check_takes_over() {
        const CHILD: &str = "RINGBOOT_WATCHER_STOP_CHILD";
        if std::env::var_os(CHILD).is_some() {
            return stopped_watcher_child();
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::lease::tests::a_stopped_watcher_is_reported_and_the_stat_check_takes_over",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed:\n{text}");
        assert!(
            text.contains("ERROR") && text.contains("the file watcher thread stopped"),
            "no ERROR line:\n{text}"
        );
    }

    fn stopped_watcher_child() {
        use crate::proto::tftp::packet::Mode;
        use crate::store::{Store, StoreOptions};
        use std::io::Write;
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
        block_lease_signal();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![b'a'; 4096]).unwrap();
        let opts = StoreOptions {
            small_file_limit: 16,
            ..StoreOptions::default()
        };
        let s = Store::new(dir.path(), opts.clone()).unwrap();
        let c = s.lookup(b"img", Mode::Octet).unwrap();
        let leased = c.lease_fd();
        stop_watcher_for_test();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while watcher_alive() {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if let Some(fd) = leased {
            // SAFETY: `fd` is owned by `c`, alive here.
            assert_eq!(unsafe { libc::fcntl(fd, libc::F_GETLEASE) }, libc::F_UNLCK);
        }
        assert!(!c.lease_proves_unchanged() && !c.watched());
        assert!(c.verify_unchanged());
        // A change is now seen by (size, mtime, ctime).
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"b")
            .unwrap();
        assert!(!c.verify_unchanged());
        // New contents take neither lease nor watch.
        let s2 = Store::new(dir.path(), opts).unwrap();
        let c2 = s2.lookup(b"img", Mode::Octet).unwrap();
        assert!(c2.lease_fd().is_none() && !c2.watched());
    }

    #[test]
    fn a_refused_lease_is_reported_once_per_file() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        warn_refused((u64::MAX, 1), "a", &e);
        warn_refused((u64::MAX, 1), "a", &e);
        let w = WARNED.lock().unwrap();
        assert!(w.as_ref().unwrap().contains(&(u64::MAX, 1)));
        assert!(w.as_ref().unwrap().len() <= WARNED_FILES);
    }
}
