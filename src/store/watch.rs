//! inotify watches on served files: what tells a real change of the bytes from an open for writing.
//!
//! Contract:
//! - One inotify instance per process ([`init`]), non-blocking. Each content that serves bytes
//!   from the file as it is on disk (a map, a netascii source) adds a watch for `IN_MODIFY |
//!   IN_CLOSE_WRITE` on its inode through `/proc/self/fd/N` ([`with_watch`]), before it reads the
//!   file's version, so every later write is reported. Contents of the same inode share the watch
//!   (inotify gives one watch descriptor per inode); the last one dropped removes it.
//! - Events are handled by [`sync`]: the store's watcher thread calls it when the descriptor is
//!   readable, and the store calls it itself where it must know the answer now (before the last
//!   block of a transfer goes out, before a send while a writer holds the file open). The kernel
//!   queues `IN_MODIFY` before the `write` (or `truncate`) that caused it returns, so after a
//!   `sync` every write that completed before it has been seen.
//! - `IN_MODIFY` revokes every content of the inode: its transfers end with an ERROR. `touch`
//!   (`IN_ATTRIB`) and an open for writing closed without a write (`IN_CLOSE_WRITE` alone) change
//!   nothing; `IN_CLOSE_WRITE` lets a content whose lease broke take it again (`lease.rs`). The
//!   kernel reports a `utimensat` that sets the mtime alone (`touch -m`) as `IN_MODIFY`: that one
//!   counts as a change.
//!   `IN_IGNORED` (the inode is gone, or the filesystem unmounted) ends the watch: the content falls
//!   back to the (size, mtime, ctime) check. `IN_Q_OVERFLOW` (events lost) revokes every content
//!   whose lease does not prove it unchanged.
//! - Not seen by inotify: writes through a shared writable `mmap` in another process, and changes
//!   made by other hosts on a network filesystem; there only the (size, mtime, ctime) checks hold.
//! - Bounded: one watch per distinct inode served from disk (at most the cache's entries plus the
//!   contents held by running transfers); a watch the kernel refuses (`max_user_watches`) leaves
//!   that content to the (size, mtime, ctime) check, with a rate-limited warning.
//!
//! Lock order: the lease registry's lock may be held while taking this module's (a content is
//! built under both), never the reverse; nothing is dropped under this lock (a `Content` dropped
//! here would take it again).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use super::jail::ProcFdPath;
use super::{Content, RateLog};

/// What a watch reports.
const MASK: u32 = libc::IN_MODIFY | libc::IN_CLOSE_WRITE;

struct Inotify {
    fd: OwnedFd,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Watch descriptor -> the contents of that inode.
    by_wd: HashMap<i32, Vec<Weak<Content>>>,
}

static INOTIFY: OnceLock<Option<Inotify>> = OnceLock::new();
static REFUSED_LOG: RateLog = RateLog::new();
static OVERFLOW_LOG: RateLog = RateLog::new();

/// Creates the process's inotify instance on the first call; whether there is one.
pub(crate) fn init() -> bool {
    INOTIFY
        .get_or_init(|| {
            // SAFETY: plain syscall; the result is checked.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if fd < 0 {
                let e = io::Error::last_os_error();
                tracing::warn!(
                    error = %e,
                    "inotify unavailable (fs.inotify.max_user_instances?): file changes are \
                     detected by (size, mtime, ctime) only, and a touch counts as a change"
                );
                return None;
            }
            Some(Inotify {
                // SAFETY: a fresh descriptor that nobody else owns.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                state: Mutex::default(),
            })
        })
        .is_some()
}

fn inotify() -> Option<&'static Inotify> {
    INOTIFY.get().and_then(Option::as_ref)
}

/// The descriptor the watcher thread polls.
pub(crate) fn raw_fd() -> Option<RawFd> {
    inotify().map(|i| i.fd.as_raw_fd())
}

/// Whether contents can rely on their watch: the instance exists and the watcher runs.
pub(crate) fn usable() -> bool {
    inotify().is_some() && super::lease::watcher_alive()
}

fn lock(i: &Inotify) -> MutexGuard<'_, State> {
    super::lock(&i.state)
}

/// Builds a content with `make(wd)` while a watch on the file open as `fd` stands (`wd` is `None`
/// when `wanted` is false or no watch could be added) and registers it under the watch, all under
/// the state lock: an event of the new watch is never handled before the content is registered,
/// and events queued before it (older writes) are handled first, so they never reach it.
///
/// Contents reached while handling those older events are pushed to `deferred`: the caller drops
/// them once it holds no lock (one may be the last reference, and dropping a `Content` takes the
/// lease registry's lock and this module's).
pub(crate) fn with_watch<E>(
    fd: RawFd,
    wanted: bool,
    deferred: &mut Vec<Arc<Content>>,
    make: impl FnOnce(Option<i32>) -> Result<Arc<Content>, E>,
) -> Result<Arc<Content>, E> {
    let Some(ino) = inotify().filter(|_| wanted && usable()) else {
        return make(None);
    };
    let result = {
        let mut st = lock(ino);
        drain(ino, &mut st, deferred);
        let path = ProcFdPath::new(fd);
        // SAFETY: the path is NUL-terminated; the result is checked.
        let wd =
            unsafe { libc::inotify_add_watch(ino.fd.as_raw_fd(), path.as_cstr().as_ptr(), MASK) };
        let wd = if wd < 0 {
            let e = io::Error::last_os_error();
            if let Some(n) = REFUSED_LOG.allow() {
                tracing::warn!(
                    error = %e,
                    suppressed = n,
                    "cannot watch a served file (fs.inotify.max_user_watches?): its changes are \
                     detected by (size, mtime, ctime) only"
                );
            }
            None
        } else {
            Some(wd)
        };
        let made = make(wd);
        if let Some(wd) = wd {
            let list = st.by_wd.entry(wd).or_default();
            match &made {
                Ok(c) => list.push(Arc::downgrade(c)),
                Err(_) if list.is_empty() => {
                    st.by_wd.remove(&wd);
                    // SAFETY: removes a watch of our own instance.
                    unsafe { libc::inotify_rm_watch(ino.fd.as_raw_fd(), wd) };
                }
                Err(_) => {}
            }
        }
        made
    };
    result
}

/// Called by `Content::drop`: forget `content` under `wd`, and remove the watch with the last one.
pub(crate) fn unregister(wd: i32, content: *const Content) {
    let Some(ino) = inotify() else {
        return;
    };
    let mut st = lock(ino);
    let Some(list) = st.by_wd.get_mut(&wd) else {
        return;
    };
    list.retain(|w| !std::ptr::eq(w.as_ptr(), content) && w.strong_count() > 0);
    if list.is_empty() {
        st.by_wd.remove(&wd);
        // SAFETY: removes a watch of our own instance (EINVAL if the kernel already did).
        unsafe { libc::inotify_rm_watch(ino.fd.as_raw_fd(), wd) };
    }
}

/// Handles every event queued so far. See the module docs.
pub(crate) fn sync() {
    let Some(ino) = inotify() else {
        return;
    };
    let mut dropped = Vec::new();
    {
        let mut st = lock(ino);
        drain(ino, &mut st, &mut dropped);
    }
    drop(dropped);
}

/// Reads and applies queued events. Contents upgraded here are pushed to `keep` so that they are
/// dropped only after the lock is released.
fn drain(ino: &Inotify, st: &mut State, keep: &mut Vec<Arc<Content>>) {
    // inotify_event is 4-byte aligned; a name never follows our file watches, but size for one.
    let mut buf = [0u32; 1024];
    loop {
        // SAFETY: reads into a local buffer of the given size.
        let n = unsafe {
            libc::read(
                ino.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                std::mem::size_of_val(&buf),
            )
        };
        if n <= 0 {
            return;
        }
        // SAFETY: `buf` is plain data; view the `n` bytes read as bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut off = 0;
        while off + header <= bytes.len() {
            let field = |i: usize| {
                let b = &bytes[off + 4 * i..off + 4 * i + 4];
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
            };
            let (wd, mask, len) = (field(0) as i32, field(1), field(3) as usize);
            apply(st, wd, mask, keep);
            off += header + len;
        }
    }
}

fn contents(st: &State, wd: i32, keep: &mut Vec<Arc<Content>>) -> usize {
    let before = keep.len();
    if let Some(list) = st.by_wd.get(&wd) {
        keep.extend(list.iter().filter_map(Weak::upgrade));
    }
    before
}

fn apply(st: &mut State, wd: i32, mask: u32, keep: &mut Vec<Arc<Content>>) {
    if mask & libc::IN_Q_OVERFLOW != 0 {
        if let Some(n) = OVERFLOW_LOG.allow() {
            tracing::warn!(
                suppressed = n,
                "inotify queue overflowed: served files whose lease does not prove them \
                 unchanged are reloaded, and their running transfers end"
            );
        }
        let from = keep.len();
        for list in st.by_wd.values() {
            keep.extend(list.iter().filter_map(Weak::upgrade));
        }
        for c in &keep[from..] {
            if !c.lease_proves_unchanged() {
                c.revoke_changed("modified in place (inotify events lost)");
            }
        }
        return;
    }
    if mask & libc::IN_MODIFY != 0 {
        let from = contents(st, wd, keep);
        for c in &keep[from..] {
            c.revoke_changed("modified in place while being served");
        }
    }
    if mask & libc::IN_CLOSE_WRITE != 0 {
        let from = contents(st, wd, keep);
        for c in &keep[from..] {
            super::lease::try_relet(c);
        }
    }
    if mask & libc::IN_IGNORED != 0 {
        let from = contents(st, wd, keep);
        for c in &keep[from..] {
            c.watch_ended();
        }
        st.by_wd.remove(&wd);
    }
}
