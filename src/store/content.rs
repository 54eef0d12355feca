//! One file's bytes as served ([`Content`]): a heap snapshot, a shared memory map, or (netascii)
//! a descriptor to convert from; its identity ([`Key`]), its [`Version`], and the state the lease
//! and inotify watchers change (revoked, suspect, senders in flight). See the contract of
//! [`super`] for what each kind guarantees.

use super::{jail, lease, watch, CHANGED_LOG};
use memmap2::Mmap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(super) dev: u64,
    pub(super) ino: u64,
}

/// What must not change for content to stay valid: (size, mtime, ctime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    pub(super) size: u64,
    pub(super) mtime_ns: i128,
    pub(super) ctime_ns: i128,
}

impl Version {
    pub(super) fn of(st: &libc::stat) -> Version {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Version {
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
            ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
        }
    }

    pub(crate) fn of_fd(fd: RawFd) -> io::Result<Version> {
        jail::fstat(fd).map(|st| Version::of(&st))
    }
}

pub(super) enum Data {
    /// A snapshot copied at load.
    Heap(Box<[u8]>),
    /// The file as it is on disk, read by the kernel only.
    Map(Mmap),
    /// netascii: the file as it is on disk, converted as it is sent, read with `pread` here.
    Text(File),
}

/// One file's bytes as served: a heap snapshot, a shared memory map, or (netascii) a descriptor to
/// convert from. Send + Sync. See the module docs for what each guarantees.
pub struct Content {
    pub(super) data: Data,
    pub(super) revoked: AtomicBool,
    /// A writer opened the file (its lease broke) and was not seen closing it since.
    pub(super) suspect: AtomicBool,
    /// Sends handed to the kernel and not yet completed (see [`Content::begin_send`]), striped
    /// by thread so that workers serving the same file do not share one cache line.
    pub(super) senders: Senders,
    pub(super) display: String,
    pub(super) key: Key,
    /// The version when loaded.
    pub(super) version: Version,
    /// The last version known to hold the loaded bytes (moves when a writer closes the file
    /// without changing it and the lease is taken again).
    pub(super) baseline: Mutex<Version>,
    /// The descriptor that holds (or waits to take again) the read lease of a map.
    pub(super) lease_fd: Option<File>,
    /// The inotify watch of the inode, if any.
    pub(super) wd: Option<i32>,
    /// The watch ended (the inode was deleted or its filesystem unmounted).
    pub(super) watch_lost: AtomicBool,
    /// A map without a lease descriptor: the jail to stat its path with when no watch stands.
    pub(super) jail: Option<Arc<jail::Jail>>,
}

impl Content {
    /// Bytes of the file as stored (for netascii: before conversion).
    pub fn len(&self) -> u64 {
        match &self.data {
            Data::Heap(b) => b.len() as u64,
            Data::Map(m) => m.len() as u64,
            Data::Text(_) => self.version.size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes a transfer of it sends, when known up front: `None` for netascii, whose converted
    /// length is known only when the sender reaches the end.
    pub fn transfer_len(&self) -> Option<u64> {
        match self.data {
            Data::Text(_) => None,
            _ => Some(self.len()),
        }
    }

    /// True for netascii content: the sender converts it with [`Content::read_source`].
    pub fn is_netascii(&self) -> bool {
        matches!(self.data, Data::Text(_))
    }

    /// The bytes to serve (mmap or heap; empty for netascii). Hand sub-slices of it to the kernel
    /// only (sendmsg iovecs): nothing in userspace may read mapped bytes, so a truncated file can
    /// make sendmsg fail with EFAULT but never raise SIGBUS.
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Heap(b) => b,
            Data::Map(m) => m,
            Data::Text(_) => &[],
        }
    }

    /// netascii: reads source bytes at `offset` with `pread` (a truncated file reads short, never
    /// faults). Heap content is copied; a map is never read here (`Unsupported`).
    pub(crate) fn read_source(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match &self.data {
            Data::Text(f) => loop {
                match f.read_at(buf, offset) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => return r,
                }
            },
            Data::Heap(b) => {
                let from = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let n = buf.len().min(b.len() - from);
                buf[..n].copy_from_slice(&b[from..from + n]);
                Ok(n)
            }
            Data::Map(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }

    /// True once the file was found changed: running transfers should end with an error.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Path relative to the root, as found on disk, for logs.
    pub fn display_path(&self) -> &str {
        &self.display
    }

    /// A send of these bytes starts: false (and nothing to end) once the content is revoked.
    /// Pair each `true` with [`Content::end_send`] when the kernel has copied the bytes (the
    /// send call returned, or its io_uring completion arrived). While a writer holds the file
    /// (its lease broke), the pending change reports are read first. With the lease break
    /// (`suspect_and_drain`) this is a Dekker handshake (both sides SeqCst): either the sender
    /// sees the writer and checks, or the watcher sees the send and waits for it before the writer
    /// may touch the file.
    pub fn begin_send(&self) -> bool {
        self.senders.add(1);
        if self.suspect.load(Ordering::SeqCst) {
            self.recheck();
        }
        if self.revoked.load(Ordering::SeqCst) {
            self.senders.add(u32::MAX);
            return false;
        }
        true
    }

    /// The send started by a successful [`Content::begin_send`] is over.
    pub fn end_send(&self) {
        self.senders.add(u32::MAX);
    }

    /// Whether the bytes are still the ones loaded. Call it before sending the window that holds
    /// a transfer's last block: false means the file changed (the content is revoked) and the
    /// transfer must end with an ERROR rather than complete. What it can see depends on the
    /// deployment (module docs): nothing to do under an unbroken lease; the pending inotify events
    /// (plus (size, mtime, ctime) while a writer holds the file) with a watch; otherwise
    /// (size, mtime, ctime) of the descriptor or of the path.
    pub fn verify_unchanged(&self) -> bool {
        if self.is_revoked() {
            return false;
        }
        if matches!(self.data, Data::Heap(_)) || self.lease_proves_unchanged() {
            return true;
        }
        if self.watched() {
            watch::sync();
            if self.is_revoked() {
                return false;
            }
            if !self.suspect.load(Ordering::SeqCst) {
                return true;
            }
        }
        match self.stat_now() {
            Some(now) if now != self.baseline() => {
                self.revoke_changed("changed on disk while being served");
                false
            }
            _ => true,
        }
    }

    /// While suspect (a writer holds the file): the check each send makes first.
    pub(super) fn recheck(&self) {
        if self.watched() {
            watch::sync();
        } else if let Some(now) = self.stat_now() {
            if now != self.baseline() {
                self.revoke_changed("changed on disk while being served");
            }
        }
    }

    /// (size, mtime, ctime) now: from the descriptor kept (lease, netascii), else from the path
    /// if it still names the same inode. `None` when it cannot be known (the path now names
    /// another file: the old inode was replaced, not modified, as far as a stat can tell).
    pub(super) fn stat_now(&self) -> Option<Version> {
        if let Some(fd) = self.fd() {
            return Version::of_fd(fd).ok();
        }
        let jail = self.jail.as_ref()?;
        let h = jail.open_path(&self.display).ok()?;
        let st = jail::fstat(h.as_raw_fd()).ok()?;
        (st.st_dev == self.key.dev && st.st_ino == self.key.ino).then(|| Version::of(&st))
    }

    pub(super) fn fd(&self) -> Option<RawFd> {
        match &self.data {
            Data::Text(f) => Some(f.as_raw_fd()),
            _ => self.lease_fd.as_ref().map(|f| f.as_raw_fd()),
        }
    }

    /// The descriptor whose lease this content holds or waits to take again.
    pub(crate) fn lease_fd(&self) -> Option<RawFd> {
        self.lease_fd.as_ref().map(|f| f.as_raw_fd())
    }

    /// A read lease stands (no writer since the baseline): the bytes are unchanged.
    pub(crate) fn lease_proves_unchanged(&self) -> bool {
        self.lease_fd.is_some() && !self.suspect.load(Ordering::SeqCst) && lease::watcher_alive()
    }

    /// Whether inotify watches this inode for us.
    pub(crate) fn watched(&self) -> bool {
        self.wd.is_some() && !self.watch_lost.load(Ordering::SeqCst) && watch::usable()
    }

    pub(crate) fn watch_ended(&self) {
        self.watch_lost.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::SeqCst)
    }

    pub(crate) fn baseline(&self) -> Version {
        *super::lock(&self.baseline)
    }

    /// The lease was taken again after the writers closed the file unchanged (`now` is its
    /// version, a touch included).
    pub(crate) fn relet(&self, now: Version) {
        *super::lock(&self.baseline) = now;
        self.suspect.store(false, Ordering::SeqCst);
    }

    /// The lease broke: mark suspect, then wait until every send that began before is over (at
    /// most `limit`): only then may the writer go on. True when drained in time.
    pub(crate) fn suspect_and_drain(&self, limit: std::time::Duration) -> bool {
        self.suspect.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        while self.senders.total() != 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        true
    }

    pub(super) fn revoke(&self) -> bool {
        !self.revoked.swap(true, Ordering::SeqCst)
    }

    /// The bytes changed on disk: revoke, and say so (rate-limited) the first time.
    pub(crate) fn revoke_changed(&self, what: &str) {
        if !self.revoke() {
            return;
        }
        if let Some(n) = CHANGED_LOG.allow() {
            tracing::warn!(
                file = %self.display,
                suppressed = n,
                "{what}; running transfers of it are ended"
            );
        }
    }

    pub(super) fn heap_len(&self) -> usize {
        match &self.data {
            Data::Heap(b) => b.len(),
            _ => 0,
        }
    }

    pub(super) fn new(data: Data, key: Key, version: Version, display: String) -> Content {
        Content {
            data,
            revoked: AtomicBool::new(false),
            suspect: AtomicBool::new(false),
            senders: Senders::default(),
            display,
            key,
            version,
            baseline: Mutex::new(version),
            lease_fd: None,
            wd: None,
            watch_lost: AtomicBool::new(false),
            jail: None,
        }
    }
}

impl Drop for Content {
    fn drop(&mut self) {
        if let Some(f) = &self.lease_fd {
            lease::unregister(f.as_raw_fd(), self);
        }
        if let Some(wd) = self.wd {
            watch::unregister(wd, self);
        }
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Content")
            .field("path", &self.display)
            .field("len", &self.len())
            .field(
                "data",
                &match self.data {
                    Data::Heap(_) => "heap",
                    Data::Map(_) => "map",
                    Data::Text(_) => "netascii",
                },
            )
            .field("revoked", &self.is_revoked())
            .field("suspect", &self.is_suspect())
            .field("leased", &self.lease_fd.is_some())
            .field("watched", &self.wd.is_some())
            .finish()
    }
}

/// Stripes of the in-flight send count (one per thread, round robin; more threads share).
const SENDER_STRIPES: usize = 8;

/// A cache line (two, against the adjacent-line prefetcher) of its own per stripe.
#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU32);

/// The count of sends in flight, striped by thread: a worker's begin/end touch only its stripe.
/// The total is the wrapping sum of the stripes, so an end counted on another thread's stripe
/// (a send completed elsewhere) still balances. Every access is SeqCst: with the `suspect` flag
/// this keeps the Dekker handshake of [`Content::begin_send`] (a sender's increment is ordered
/// before its read of `suspect`, the drain's read of every stripe after its write of it).
#[derive(Default)]
pub(super) struct Senders([Stripe; SENDER_STRIPES]);

impl Senders {
    fn stripe() -> usize {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SENDER_STRIPES;
        }
        STRIPE.with(|s| *s)
    }

    /// Add `n` (wrapping: `u32::MAX` subtracts one) to this thread's stripe.
    fn add(&self, n: u32) {
        self.0[Self::stripe()].0.fetch_add(n, Ordering::SeqCst);
    }

    /// Sends in flight across every thread.
    pub(super) fn total(&self) -> u32 {
        self.0
            .iter()
            .fold(0u32, |t, s| t.wrapping_add(s.0.load(Ordering::SeqCst)))
    }
}
