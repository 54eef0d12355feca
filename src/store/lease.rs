//! Read leases on mapped files, so an in-place rewrite ends the transfers that serve the file.
//!
//! A mapped file's descriptor takes `F_SETLEASE F_RDLCK` with `F_SETSIG` = [`lease_signal`].
//! When anyone opens the file for writing or truncates it, the kernel holds that writer back and
//! sends the signal with `si_fd` naming our descriptor. One watcher thread (started by the first
//! store that uses leases) receives it, marks the `Content` revoked, waits until the sends of it
//! already handed to the kernel are over (`Content::begin_send`, at most 1 s), releases the lease
//! and drops the content from its store's cache: no transfer ever gets new bytes, and the writer
//! goes on within microseconds instead of waiting `lease-break-time` (45 s).
//!
//! Delivery: [`block_lease_signal`] blocks the signal in `main` before any thread exists, so every
//! thread inherits the mask and the watcher's `signalfd` gets it. Where some thread did not block
//! it (test harnesses, embedders), a handler installed here forwards `si_fd` through a pipe to the
//! same watcher, so the default action (terminate) never runs. If the kernel's realtime-signal
//! queue is full it sends `SIGIO` instead: that is caught the same way (unless someone else already
//! handles `SIGIO`) and makes the watcher check every lease. If any of this cannot be set up, no
//! lease is taken and only the (size, mtime) check remains.
//!
//! Lock order: a store's cache lock may be held while taking [`REGISTRY`]'s (a `Content` dropped
//! under the cache lock unregisters itself), never the other way round.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use libc::c_int;

use super::{Cache, Content, LookupError};

/// `F_SETSIG` from `<asm-generic/fcntl.h>` (not exported by the libc crate for Linux).
const F_SETSIG: c_int = 10;

/// The realtime signal that reports lease breaks.
pub(crate) fn lease_signal() -> c_int {
    libc::SIGRTMIN() + 3
}

struct Entry {
    content: Weak<Content>,
    cache: Weak<Cache>,
}

/// Leased descriptor -> the content it maps.
static REGISTRY: Mutex<BTreeMap<RawFd, Entry>> = Mutex::new(BTreeMap::new());
/// Whether the watcher runs (decided once).
static ACTIVE: OnceLock<bool> = OnceLock::new();
/// Write end of the handler's pipe, or -1.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

fn registry() -> MutexGuard<'static, BTreeMap<RawFd, Entry>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
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

/// Starts the watcher on the first call; whether leases can be used.
pub(crate) fn ensure_watcher() -> bool {
    *ACTIVE.get_or_init(|| match start_watcher() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "file leases unavailable; in-place rewrites are noticed at the next lookup only"
            );
            false
        }
    })
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

fn start_watcher() -> io::Result<()> {
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
    let read_end = pipe[0];
    std::thread::Builder::new()
        .name("ringboot-lease".into())
        .spawn(move || {
            let set = signal_set();
            // SAFETY: blocks the signals in this thread only.
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
            watch(sfd, read_end)
        })?;
    Ok(())
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

fn watch(sfd: RawFd, pipe: RawFd) {
    let mut pfd = [
        libc::pollfd {
            fd: sfd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: pipe,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `pfd` holds two valid entries.
        let r = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::warn!(error = %e, "lease watcher stopped");
                return;
            }
            continue;
        }
        let mut fds = Vec::new();
        loop {
            // SAFETY: signalfd_siginfo is plain data; read fills whole records.
            let mut info: [libc::signalfd_siginfo; 8] = unsafe { std::mem::zeroed() };
            let n =
                unsafe { libc::read(sfd, info.as_mut_ptr().cast(), std::mem::size_of_val(&info)) };
            if n <= 0 {
                break;
            }
            let count = n as usize / std::mem::size_of::<libc::signalfd_siginfo>();
            for i in &info[..count] {
                fds.push(if i.ssi_signo == libc::SIGIO as u32 {
                    -1
                } else {
                    i.ssi_fd
                });
            }
        }
        loop {
            let mut buf = [0u8; 256];
            // SAFETY: reads into a local buffer.
            let n = unsafe { libc::read(pipe, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            // Each write is 4 bytes, below PIPE_BUF, so records are never split.
            for c in buf[..n as usize].chunks_exact(4) {
                fds.push(c_int::from_ne_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        for fd in fds {
            handle_break(fd);
        }
    }
}

/// How long a lease break waits for sends in progress before it lets the writer go on.
const SEND_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A lease on `fd` (or, for -1, on any descriptor) is being broken.
fn handle_break(fd: RawFd) {
    let broken: Vec<(RawFd, Arc<Content>, Weak<Cache>)> = {
        let mut reg = registry();
        let fds: Vec<RawFd> = if fd < 0 {
            reg.keys().copied().collect()
        } else {
            vec![fd]
        };
        let mut out = Vec::new();
        for fd in fds {
            if !reg.contains_key(&fd) {
                continue;
            }
            // A break in progress reports the type being downgraded to; an intact read lease means
            // this signal is stale (its descriptor was closed and the number reused).
            // SAFETY: `fd` is open: its Content unregisters it (under this lock) before closing it.
            if unsafe { libc::fcntl(fd, libc::F_GETLEASE) } == libc::F_RDLCK {
                continue;
            }
            let Some(entry) = reg.remove(&fd) else {
                continue;
            };
            // If the Content is being dropped its descriptor is about to close, which releases the
            // lease anyway.
            if let Some(content) = entry.content.upgrade() {
                out.push((fd, content, entry.cache));
            }
        }
        out
    };
    for (fd, content, cache) in broken {
        // Revoke first and let the sends already handed to the kernel finish, then release the
        // lease: the writer cannot truncate or write before that, so no client ever gets a block
        // of new bytes in an old transfer.
        if !content.revoke_and_drain(SEND_DRAIN_LIMIT) {
            tracing::debug!(file = %content.display_path(), "sends still running after the drain limit");
        }
        // SAFETY: `fd` is open: the Arc keeps its Content, which owns the descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        tracing::warn!(
            file = %content.display_path(),
            "modified in place while being served; running transfers of it are ended"
        );
        if let Some(cache) = cache.upgrade() {
            cache.remove_exact(&content);
        }
    }
}

/// Takes a read lease on `fd` if the watcher runs, then builds the content with `make(leased)`
/// while the registry is locked, so that a break cannot be handled before the entry exists.
pub(crate) fn with_lease(
    fd: RawFd,
    cache: &Arc<Cache>,
    make: impl FnOnce(bool) -> Result<Arc<Content>, LookupError>,
) -> Result<Arc<Content>, LookupError> {
    if !ACTIVE.get().copied().unwrap_or(false) {
        return make(false);
    }
    let mut reg = registry();
    // SAFETY: `fd` is an open descriptor owned by the caller for the whole call.
    let leased = unsafe {
        libc::fcntl(fd, F_SETSIG, lease_signal()) == 0
            && libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0
    };
    if !leased {
        let e = io::Error::last_os_error();
        tracing::debug!(error = %e, "no read lease (not owner, no CAP_LEASE, or open for writing)");
    }
    let content = make(leased)?;
    if leased {
        reg.insert(
            fd,
            Entry {
                content: Arc::downgrade(&content),
                cache: Arc::downgrade(cache),
            },
        );
    }
    Ok(content)
}

/// Called by `Content::drop` before its descriptor closes.
pub(crate) fn unregister(fd: RawFd, content: *const Content) {
    let mut reg = registry();
    if reg
        .get(&fd)
        .is_some_and(|e| std::ptr::eq(e.content.as_ptr(), content))
    {
        reg.remove(&fd);
    }
}

#[cfg(test)]
pub(crate) fn is_registered(fd: RawFd) -> bool {
    registry().contains_key(&fd)
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
}
