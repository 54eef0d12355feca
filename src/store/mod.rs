//! The file store: wire filename -> shared file content below one root directory. Beside it,
//! [`dhcp`]: the DHCP responder's lease file.
//!
//! Lookup: [`Store::lookup`] decodes the raw filename (rules in `path.rs`), opens it through the
//! jail (`jail.rs`: `openat2` `RESOLVE_BENEATH`; symlinks may not leave the root) as an `O_PATH`
//! handle, retries a missing path case-insensitively (through per-directory name indexes,
//! `dirindex.rs`), and `fstat`s the handle: anything but a regular file is refused before anything
//! is opened for reading, so a device node, FIFO or socket inside the root is never opened.
//!
//! Octet content is cached per (device, inode) and shared as `Arc<Content>` by every transfer of the
//! file. A cache hit costs the `O_PATH` open and an `fstat`; nothing is opened for reading. Files up
//! to `small_file_limit` are copied with `pread` into an immutable heap snapshot (the allocation is
//! bounded by that limit, whatever the file grows to while read); larger ones are memory-mapped.
//! Userspace never reads mapped bytes (only the kernel does, in `sendmsg`), so a truncated file
//! cannot raise SIGBUS. A file renamed over keeps serving its old bytes to running transfers.
//!
//! netascii is never converted up front: a netascii lookup opens the file for reading, the content
//! keeps that descriptor (one per netascii transfer; not cached), and the sender converts one window
//! at a time into the transfer's own buffer (`engine/send.rs`), reading the source with `pread`,
//! which returns short or fails on a truncated file instead of faulting. The converted length is
//! known only at the end, so no tsize is offered for netascii (as tftpd-hpa does).
//!
//! Descriptors: a heap snapshot holds none; a map holds one only while it holds a read lease (at
//! most a quarter of `RLIMIT_NOFILE`, at most 1,024, see `lease.rs`); a netascii content holds one
//! for its transfer. Eviction (at most [`MAX_ENTRIES`] entries and [`HEAP_BUDGET`] heap bytes,
//! least recently used first, never an entry a transfer holds) closes the descriptors it held.
//!
//! File changes, by deployment (strongest first). The aim in every case: a transfer during which
//! the served bytes really changed ends with an ERROR to the client and is never logged as
//! completed, and an open for writing that writes nothing ends no transfer. Where it falls short
//! is said below.
//! 1. Read lease and inotify (the server owns the files or has `CAP_LEASE`, a local filesystem,
//!    `fs.leases-enable = 1`): an open for writing, `touch`, a backup agent or scanner opening the
//!    file `r+` end no transfer (`touch -m`, which sets the mtime alone, is reported by the kernel
//!    as a modification and counts as a change). A `write` or `truncate` revokes the content
//!    (inotify `IN_MODIFY`): every transfer of it ends with an ERROR, and no window begun after
//!    the writer's call returned is sent (while a writer holds the file, each send reads the
//!    pending events first). A window already in flight during the write may carry new bytes;
//!    its transfer then ends with an ERROR at its next window. Before the window that holds the
//!    last block, the pending events are read and, while a writer holds the file, (size, mtime,
//!    ctime) is compared. Not covered: a write that lands in the microseconds between that check
//!    and the kernel copying the last window.
//! 2. inotify without a lease (not the owner and no `CAP_LEASE`: a WARN at start and once per
//!    file): as 1, except that the revocation waits for the watcher thread to read the event
//!    (typically microseconds after the write), so blocks sent in between may carry new bytes;
//!    the transfer still ends with an ERROR, since the pending events are read before its last
//!    window. Not covered: a write still in progress (its event not queued yet) at that moment.
//! 3. Lease without inotify (inotify refused): an open for writing marks the content suspect;
//!    while the writer holds the file, every send compares (size, mtime, ctime) with the last
//!    known version, so a write, and also a `touch`, ends the transfers; the lease is retried every
//!    second and taken back once the writer has closed the file.
//! 4. Neither (or the watcher thread stopped): (size, mtime, ctime) is compared at each lookup and
//!    before the last window of every transfer, through the kept descriptor or else the path;
//!    a change that moves it ends the transfer with an ERROR before its last block, though earlier
//!    blocks may carry new bytes. A `touch` counts as a change. A file replaced by rename keeps
//!    its old bytes; later changes of that old inode are then not seen.
//!
//! inotify does not see writes through another process's shared writable map, nor changes made
//! by other hosts on a network filesystem: those show only in (size, mtime, ctime), within the
//! filesystem's timestamp granularity and attribute caching. Small files (heap snapshots) never
//! mix: a change is noticed at the next lookup; if the bytes really differ the old snapshot is
//! revoked (its transfers end with an ERROR), after a `touch` it is kept.
//!
//! Refusals are logged at `debug` (the driver logs them at `info` with the peer); change reports go
//! through [`LogLimit`].

mod content;
pub mod dhcp;
mod dirindex;
mod jail;
mod lease;
pub(crate) mod path;
mod watch;

pub use content::Content;
use content::Data;
pub(crate) use content::{Key, Version};
pub use lease::block_lease_signal;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use memmap2::{Advice, MmapOptions};

use crate::proto::ratelog::LogLimit;
use crate::proto::tftp::packet::{ErrorCode, Mode};

/// Cached entries allowed before idle ones are evicted.
pub const MAX_ENTRIES: usize = 1024;
/// Heap bytes (small files) allowed in the cache before idle ones are evicted.
pub const HEAP_BUDGET: usize = 256 << 20;
/// Attempts at copying a file that keeps changing under us.
const READ_ATTEMPTS: usize = 3;

/// How a [`Store`] serves files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Files of at most this many bytes are copied into memory instead of mapped. Default 64 KiB.
    pub small_file_limit: u64,
    /// Retry a missing path with case-insensitive matching of each component. Default true.
    pub case_insensitive: bool,
    /// Take read leases on mapped files: an open for writing is known at once. Default true.
    pub leases: bool,
    /// Watch served files with inotify, to tell a real change from an open for writing or a
    /// touch. Default true.
    pub watch: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            small_file_limit: 64 * 1024,
            case_insensitive: true,
            leases: true,
            watch: true,
        }
    }
}

/// A rate-limited kind of store log line (see [`LogLimit`]).
pub(crate) struct RateLog(Mutex<LogLimit>);

impl RateLog {
    pub(crate) const fn new() -> RateLog {
        RateLog(Mutex::new(LogLimit::new(
            crate::proto::ratelog::DEFAULT_INTERVAL,
        )))
    }

    /// `Some(suppressed)` when a line may be written now.
    pub(crate) fn allow(&self) -> Option<u64> {
        lock(&self.0).allow(Instant::now())
    }
}

static CHANGED_LOG: RateLog = RateLog::new();
static REFUSED_LOG: RateLog = RateLog::new();
static MAPPED_LOG: RateLog = RateLog::new();

/// Kind of a non-regular file, for refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Other => "not a regular file",
        })
    }
}

/// Why a lookup failed. [`LookupError::error_code`] gives the TFTP error to send.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("illegal character in filename")]
    IllegalCharacter,
    #[error("'..' is not allowed in filenames")]
    ParentDirectory,
    #[error("drive letters (like C:) are not allowed in filenames")]
    DrivePrefix,
    #[error("empty filename")]
    EmptyName,
    #[error("mail mode is not supported")]
    MailMode,
    #[error("file not found: {path}")]
    NotFound { path: String },
    #[error("refused: {path} leads outside the served directory")]
    OutsideRoot { path: String },
    #[error("refused: {path} has a symbolic link loop or a forbidden link")]
    SymlinkLoop { path: String },
    #[error("permission denied: {path} (make it readable by the server)")]
    PermissionDenied { path: String },
    #[error("refused: {path} is {kind}, only regular files are served")]
    NotRegularFile { path: String, kind: FileKind },
    #[error("{path} keeps changing while being read; try again when it is written")]
    Busy { path: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl LookupError {
    /// The TFTP error code for this refusal.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            LookupError::NotFound { .. } | LookupError::EmptyName => ErrorCode::FileNotFound,
            LookupError::IllegalCharacter
            | LookupError::ParentDirectory
            | LookupError::DrivePrefix
            | LookupError::OutsideRoot { .. }
            | LookupError::SymlinkLoop { .. }
            | LookupError::PermissionDenied { .. }
            | LookupError::NotRegularFile { .. } => ErrorCode::AccessViolation,
            LookupError::MailMode => ErrorCode::IllegalOperation,
            LookupError::Busy { .. } | LookupError::Io { .. } => ErrorCode::NotDefined,
        }
    }

    fn from_open(e: io::Error, path: &str) -> LookupError {
        let path = path.to_owned();
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => {
                LookupError::NotFound { path }
            }
            Some(libc::EXDEV) => LookupError::OutsideRoot { path },
            Some(libc::ELOOP) => LookupError::SymlinkLoop { path },
            Some(libc::EACCES | libc::EPERM) => LookupError::PermissionDenied { path },
            // The path now names another file than the one checked: it is being replaced.
            Some(libc::ESTALE) => LookupError::Busy { path },
            _ => LookupError::Io { path, source: e },
        }
    }
}

struct CacheEntry {
    content: Arc<Content>,
    last_used: u64,
    /// The version last confirmed for this content (a touch moves it without a reload).
    seen: Version,
}

#[derive(Default)]
struct CacheMap {
    entries: HashMap<Key, CacheEntry>,
    tick: u64,
}

/// What the cache knows of a file.
enum Probe {
    /// Cached and valid at this version.
    Hit(Arc<Content>),
    /// Cached, but seen at another version (or revoked): check before use.
    Stale(Arc<Content>),
    Miss,
}

/// `m`'s guard, a poisoned lock taken anyway (as every lock of the store is): a panic in one
/// transfer must not stop the others from being served.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The content cache. Lock order: this lock, then the lease registry's, then the inotify state's.
#[derive(Default)]
pub(crate) struct Cache {
    map: Mutex<CacheMap>,
}

impl Cache {
    fn get(&self, key: Key, version: Version) -> Probe {
        let mut m = lock(&self.map);
        m.tick += 1;
        let tick = m.tick;
        let Some(entry) = m.entries.get_mut(&key) else {
            return Probe::Miss;
        };
        entry.last_used = tick;
        if entry.seen == version && !entry.content.is_revoked() {
            Probe::Hit(entry.content.clone())
        } else {
            Probe::Stale(entry.content.clone())
        }
    }

    /// `content` is still valid at `version`.
    fn confirm(&self, content: &Arc<Content>, version: Version) {
        let mut m = lock(&self.map);
        if let Some(e) = m.entries.get_mut(&content.key) {
            if Arc::ptr_eq(&e.content, content) {
                e.seen = version;
            }
        }
    }

    /// Caches `content` unless a valid one got there first; returns the one to use.
    fn insert(&self, content: Arc<Content>) -> Arc<Content> {
        let mut m = lock(&self.map);
        m.tick += 1;
        let tick = m.tick;
        let key = content.key;
        if let Some(e) = m.entries.get_mut(&key) {
            if e.seen == content.version && !e.content.is_revoked() {
                e.last_used = tick;
                return e.content.clone();
            }
        }
        // The same path now names another inode (renamed over): the old content only lives on in
        // the transfers that still hold it. Dropped after the lock is released.
        let mut gone = Vec::new();
        m.entries.retain(|k, e| {
            let keep = !(*k != key && e.content.display == content.display);
            if !keep {
                gone.push(e.content.clone());
            }
            keep
        });
        let old = m.entries.insert(
            key,
            CacheEntry {
                content: content.clone(),
                last_used: tick,
                seen: content.version,
            },
        );
        gone.extend(old.map(|e| e.content));
        gone.extend(evict(&mut m, MAX_ENTRIES, HEAP_BUDGET));
        drop(m);
        drop(gone);
        content
    }

    /// Drops `content` from the cache if it is the cached one.
    fn remove_exact(&self, content: &Arc<Content>) {
        let mut m = lock(&self.map);
        let gone = if m
            .entries
            .get(&content.key)
            .is_some_and(|e| Arc::ptr_eq(&e.content, content))
        {
            m.entries.remove(&content.key)
        } else {
            None
        };
        drop(m);
        drop(gone);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.map).entries.len()
    }
}

/// Over either limit, evicts least recently used entries nobody else holds, down to 3/4 of it.
/// Returns them, to be dropped (closing any descriptor) after the lock is released.
fn evict(m: &mut CacheMap, max_entries: usize, heap_budget: usize) -> Vec<Arc<Content>> {
    let mut heap: usize = m.entries.values().map(|e| e.content.heap_len()).sum();
    let mut gone = Vec::new();
    if m.entries.len() <= max_entries && heap <= heap_budget {
        return gone;
    }
    let mut idle: Vec<(u64, Key)> = m
        .entries
        .iter()
        .filter(|(_, e)| Arc::strong_count(&e.content) == 1)
        .map(|(k, e)| (e.last_used, *k))
        .collect();
    idle.sort_unstable_by_key(|(t, _)| *t);
    for (_, k) in idle {
        if m.entries.len() <= max_entries * 3 / 4 && heap <= heap_budget / 4 * 3 {
            break;
        }
        if let Some(e) = m.entries.remove(&k) {
            heap -= e.content.heap_len();
            gone.push(e.content);
        }
    }
    gone
}

/// Serves the regular files below one root directory. Share it as `Arc<Store>`.
pub struct Store {
    root: PathBuf,
    jail: Arc<jail::Jail>,
    opts: StoreOptions,
    /// Leases are taken (asked for, the watcher runs, the root's filesystem takes them).
    leases: bool,
    /// Files are watched with inotify.
    watch: bool,
    cache: Cache,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("opts", &self.opts)
            .field("leases_active", &self.leases)
            .field("watch_active", &self.watch)
            .field("cached", &lock(&self.cache.map).entries.len())
            .finish()
    }
}

impl Store {
    /// Opens the store on `root`, an existing directory (canonicalised here). With leases or
    /// watches on, the first store starts the watcher thread; each store probes whether its root
    /// takes read leases and says at WARN when it does not.
    pub fn new(root: &Path, opts: StoreOptions) -> io::Result<Arc<Store>> {
        let canon = std::fs::canonicalize(root)
            .map_err(|e| io::Error::new(e.kind(), format!("TFTP root {}: {e}", root.display())))?;
        if !canon.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TFTP root {} is not a directory", root.display()),
            ));
        }
        let jail = Arc::new(jail::Jail::new(&canon)?);
        let (leases_ok, inotify_ok) = if opts.leases || opts.watch {
            lease::ensure_watcher()
        } else {
            (false, false)
        };
        let watch = opts.watch && inotify_ok && jail.has_proc_fd();
        if opts.watch && inotify_ok && !jail.has_proc_fd() {
            tracing::warn!(
                "/proc is not mounted: served files are not watched; their changes are detected \
                 by (size, mtime, ctime) only"
            );
        }
        let leases = opts.leases && leases_ok && lease::probe(&canon, lease_sample(&jail, &canon));
        lease::set_budget();
        Ok(Arc::new(Store {
            root: canon,
            jail,
            opts,
            leases,
            watch,
            cache: Cache::default(),
        }))
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a filename exactly as it came off the wire and returns shared content.
    pub fn lookup(&self, filename: &[u8], mode: Mode) -> Result<Arc<Content>, LookupError> {
        let result = self.lookup_inner(filename, mode);
        if let Err(e) = &result {
            if tracing::enabled!(tracing::Level::DEBUG) {
                if let Some(n) = REFUSED_LOG.allow() {
                    let name = filename.escape_ascii();
                    tracing::debug!(filename = %name, mode = mode.as_str(), error = %e, suppressed = n, "lookup refused");
                }
            }
        }
        result
    }

    fn lookup_inner(&self, filename: &[u8], mode: Mode) -> Result<Arc<Content>, LookupError> {
        let netascii = match mode {
            Mode::Octet => false,
            Mode::Netascii => true,
            Mode::Mail => return Err(LookupError::MailMode),
        };
        let rel = path::decode(filename)?;
        let (handle, display) = self.open(&rel)?;
        let st = jail::fstat(handle.as_raw_fd()).map_err(|e| LookupError::Io {
            path: display.clone().into_owned(),
            source: e,
        })?;
        check_regular(st.st_mode, &display)?;
        let key = Key {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let version = Version::of(&st);
        if netascii {
            return self.load_text(&handle, key, display.into_owned());
        }
        match self.cache.get(key, version) {
            Probe::Hit(c) => return Ok(c),
            Probe::Stale(c) => {
                if self.still_valid(&c, &handle, version)? {
                    self.cache.confirm(&c, version);
                    return Ok(c);
                }
                c.revoke_changed("changed on disk while being served");
                self.cache.remove_exact(&c);
            }
            Probe::Miss => {}
        }
        let content = self.load(&handle, key, version, display.into_owned())?;
        Ok(self.cache.insert(content))
    }

    /// A cached content seen at another (size, mtime, ctime): is it still the file's bytes?
    /// Heap snapshots are compared with the file; a map is valid when its lease stood all along,
    /// or (watched) when no write was reported: a touch or an open for writing is not a change.
    fn still_valid(
        &self,
        c: &Arc<Content>,
        handle: &OwnedFd,
        now: Version,
    ) -> Result<bool, LookupError> {
        if c.is_revoked() || now.size != c.version.size {
            return Ok(false);
        }
        match &c.data {
            Data::Heap(old) => {
                let file = self.reopen(handle, &c.display, c.key)?;
                match read_stable(&file, now, self.opts.small_file_limit, &c.display)? {
                    Stable::Read(bytes, _) => Ok(bytes.as_slice() == &old[..]),
                    Stable::Grew => Ok(false),
                }
            }
            _ if c.lease_proves_unchanged() => Ok(true),
            _ if c.watched() => {
                watch::sync();
                Ok(!c.is_revoked() && (!c.is_suspect() || c.stat_now() == Some(c.baseline())))
            }
            _ => Ok(false),
        }
    }

    /// Opens the exact path, or on ENOENT its case-insensitive match, through the jail, as an
    /// `O_PATH` handle. The name it was found by borrows `rel` when exact: a lookup that hits the
    /// cache allocates nothing.
    fn open<'r>(
        &self,
        rel: &'r path::RelPath,
    ) -> Result<(OwnedFd, std::borrow::Cow<'r, str>), LookupError> {
        let exact = rel.as_str();
        match self.jail.open_rel(rel) {
            Ok(fd) => Ok((fd, exact.into())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && self.opts.case_insensitive => {
                let parts: Vec<&str> = rel.components().collect();
                match self.jail.resolve_case_insensitive(&parts) {
                    Some(found) if found != exact => match self.jail.open_path(&found) {
                        Ok(fd) => Ok((fd, found.into())),
                        Err(e) => Err(LookupError::from_open(e, &found)),
                    },
                    _ => Err(LookupError::NotFound {
                        path: exact.to_owned(),
                    }),
                }
            }
            Err(e) => Err(LookupError::from_open(e, exact)),
        }
    }

    /// Opens the checked regular file of `handle` for reading.
    fn reopen(&self, handle: &OwnedFd, display: &str, key: Key) -> Result<File, LookupError> {
        self.jail
            .reopen_read(handle, display, (key.dev, key.ino))
            .map(File::from)
            .map_err(|e| LookupError::from_open(e, display))
    }

    fn load(
        &self,
        handle: &OwnedFd,
        key: Key,
        version: Version,
        display: String,
    ) -> Result<Arc<Content>, LookupError> {
        let file = self.reopen(handle, &display, key)?;
        if version.size <= self.opts.small_file_limit {
            match read_stable(&file, version, self.opts.small_file_limit, &display)? {
                Stable::Read(bytes, version) => {
                    return Ok(Arc::new(Content::new(
                        Data::Heap(bytes.into_boxed_slice()),
                        key,
                        version,
                        display,
                    )));
                }
                // It grew past the limit while read: map it instead.
                Stable::Grew => {}
            }
        }
        self.map(file, key, display)
    }

    /// Maps `file`, with a lease and a watch where possible. Its version is read after both are in
    /// place, so a later writer always breaks the lease and is always reported.
    fn map(&self, file: File, key: Key, name: String) -> Result<Arc<Content>, LookupError> {
        let fd = file.as_raw_fd();
        let id = (key.dev, key.ino);
        let shown = name.clone();
        let jail = &self.jail;
        let watch_on = self.watch;
        // Dropped last, once no lock is held (see `watch::with_watch`).
        let mut deferred = Vec::new();
        let deferred_ref = &mut deferred;
        let made = lease::with_lease(fd, id, &shown, self.leases, move |state| {
            watch::with_watch(fd, watch_on, deferred_ref, move |wd| {
                let io_err = |source: io::Error| LookupError::Io {
                    path: name.clone(),
                    source,
                };
                let version = Version::of_fd(fd).map_err(io_err)?;
                let data = if version.size == 0 {
                    Data::Heap(Box::default())
                } else {
                    let len = usize::try_from(version.size).map_err(|_| {
                        io_err(io::Error::other("file too large to map on this platform"))
                    })?;
                    // SAFETY: the map is only ever read by the kernel (sendmsg), see
                    // `Content::bytes`; a truncation then gives EFAULT rather than SIGBUS here.
                    let map = unsafe { MmapOptions::new().len(len).map(&file) }.map_err(io_err)?;
                    if let Err(e) = map.advise(Advice::Sequential) {
                        tracing::debug!(file = %name, error = %e, "madvise(SEQUENTIAL) failed");
                    }
                    Data::Map(map)
                };
                let leased = state != lease::LeaseState::None;
                if tracing::enabled!(tracing::Level::DEBUG) {
                    if let Some(n) = MAPPED_LOG.allow() {
                        tracing::debug!(
                            file = %name,
                            size = version.size,
                            lease = ?state,
                            watched = wd.is_some(),
                            suppressed = n,
                            "mapped"
                        );
                    }
                }
                let mut c = Content::new(data, key, version, name);
                c.suspect = AtomicBool::new(state == lease::LeaseState::WriterOpen);
                c.wd = wd;
                // Without a descriptor, the (size, mtime, ctime) fallback stats the path (used when
                // there is no watch, or the watch or the watcher is gone).
                c.jail = (!leased).then(|| jail.clone());
                // The descriptor stays only to hold the lease; otherwise it closes here.
                c.lease_fd = leased.then_some(file);
                Ok(Arc::new(c))
            })
        });
        drop(deferred);
        made
    }

    /// netascii content: its own descriptor, watched where possible, converted as it is sent.
    fn load_text(
        &self,
        handle: &OwnedFd,
        key: Key,
        display: String,
    ) -> Result<Arc<Content>, LookupError> {
        let file = self.reopen(handle, &display, key)?;
        let fd = file.as_raw_fd();
        let mut deferred = Vec::new();
        let made = watch::with_watch(fd, self.watch, &mut deferred, |wd| {
            let version = Version::of_fd(fd).map_err(|source| LookupError::Io {
                path: display.clone(),
                source,
            })?;
            let mut c = Content::new(Data::Text(file), key, version, display);
            c.wd = wd;
            Ok(Arc::new(c))
        });
        drop(deferred);
        made
    }
}

/// A regular file at the top of the root, opened for reading, to probe leases with.
fn lease_sample(jail: &jail::Jail, root: &Path) -> Option<(File, String)> {
    for entry in std::fs::read_dir(root).ok()?.take(256).flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(h) = jail.open_path(&name) else {
            continue;
        };
        let Ok(st) = jail::fstat(h.as_raw_fd()) else {
            continue;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        if let Ok(fd) = jail.reopen_read(&h, &name, (st.st_dev, st.st_ino)) {
            return Some((File::from(fd), name));
        }
    }
    None
}

/// What [`read_stable`] found.
enum Stable {
    /// The whole file, unchanged while read.
    Read(Vec<u8>, Version),
    /// The file is now above the limit: map it instead.
    Grew,
}

/// Copies the whole file with `pread`, retrying while its (size, mtime, ctime) changes
/// underneath. Never allocates more than `limit` bytes: a file that grew past it is `Grew`.
fn read_stable(
    file: &File,
    version: Version,
    limit: u64,
    display: &str,
) -> Result<Stable, LookupError> {
    let io_err = |source: io::Error| LookupError::Io {
        path: display.to_owned(),
        source,
    };
    let mut version = version;
    for _ in 0..READ_ATTEMPTS {
        if version.size > limit {
            return Ok(Stable::Grew);
        }
        let len = usize::try_from(version.size)
            .map_err(|_| io_err(io::Error::other("file too large")))?;
        let mut buf = vec![0u8; len];
        let complete = match file.read_exact_at(&mut buf, 0) {
            Ok(()) => file.read_at(&mut [0u8; 1], version.size).map_err(io_err)? == 0,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(io_err(e)),
        };
        let after = Version::of_fd(file.as_raw_fd()).map_err(io_err)?;
        if complete && after == version {
            return Ok(Stable::Read(buf, version));
        }
        version = after;
    }
    Err(LookupError::Busy {
        path: display.to_owned(),
    })
}

fn check_regular(mode: libc::mode_t, display: &str) -> Result<(), LookupError> {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFREG => return Ok(()),
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        _ => FileKind::Other,
    };
    Err(LookupError::NotRegularFile {
        path: display.to_owned(),
        kind,
    })
}

#[cfg(test)]
mod tests;
