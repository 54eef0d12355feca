//! The file store: wire filename -> shared, immutable file content below one root directory.
//!
//! Contract: [`Store::lookup`] decodes the raw filename (rules in `path.rs`), opens it through
//! the jail (`jail.rs`: `openat2` `RESOLVE_BENEATH`; symlinks may not leave the root), retries a
//! missing path case-insensitively, refuses anything but regular files, and returns an
//! `Arc<Content>` shared by every transfer of that file. Content is cached per (device, inode,
//! mode) and revalidated by (size, mtime) on each lookup: a changed file gets new content and the
//! old one is revoked; a file renamed over keeps serving its old bytes to running transfers. Files
//! above `small_file_limit` are memory-mapped and hold a read lease (`lease.rs`) that revokes them
//! the moment someone rewrites them in place; small files and netascii conversions are copied with
//! `pread`. Userspace never reads mapped bytes (only the kernel does, in `sendmsg`), so a truncated
//! file cannot raise SIGBUS. Refusals are logged at `debug` (the driver logs them at `info` with
//! the peer).

mod jail;
mod lease;
pub(crate) mod path;

pub use lease::block_lease_signal;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::{Advice, Mmap, MmapOptions};

use crate::proto::netascii::to_netascii;
use crate::proto::packet::{ErrorCode, Mode};

/// Cached entries allowed before idle ones are evicted.
const MAX_ENTRIES: usize = 1024;
/// Heap bytes (small files, netascii) allowed in the cache before idle ones are evicted.
const HEAP_BUDGET: usize = 256 << 20;
/// Attempts at copying a file that keeps changing under us.
const READ_ATTEMPTS: usize = 3;

/// How a [`Store`] serves files.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Files of at most this many bytes are copied into memory instead of mapped. Default 64 KiB.
    pub small_file_limit: u64,
    /// Retry a missing path with case-insensitive matching of each component. Default true.
    pub case_insensitive: bool,
    /// Take read leases on mapped files to notice in-place rewrites at once. Default true.
    pub leases: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            small_file_limit: 64 * 1024,
            case_insensitive: true,
            leases: true,
        }
    }
}

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
            _ => LookupError::Io { path, source: e },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Octet,
    Netascii,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    dev: u64,
    ino: u64,
    kind: Kind,
}

/// What must not change for cached content to stay valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    size: u64,
    mtime_ns: i128,
}

impl Version {
    fn of(m: &std::fs::Metadata) -> Version {
        Version {
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

enum Data {
    Heap(Box<[u8]>),
    Map(Mmap),
}

/// One file's bytes as served: a shared memory map or a heap copy. Send + Sync.
pub struct Content {
    data: Data,
    revoked: AtomicBool,
    /// Sends handed to the kernel and not yet completed (see [`Content::begin_send`]).
    senders: AtomicU32,
    display: String,
    key: Key,
    version: Version,
    /// Mapped files keep their descriptor, and its lease, while the content lives.
    file: Option<File>,
    leased: bool,
}

impl Content {
    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The bytes to serve (mmap or heap). Hand sub-slices of it to the kernel only (sendmsg
    /// iovecs): nothing in userspace may read mapped bytes, so a truncated file can make sendmsg
    /// fail with EFAULT but never raise SIGBUS.
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Heap(b) => b,
            Data::Map(m) => m,
        }
    }

    /// True once the file was found changed or being written in place: running transfers should
    /// end with an error.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Path relative to the root, as found on disk, for logs.
    pub fn display_path(&self) -> &str {
        &self.display
    }

    /// A send of these bytes starts: false (and nothing to end) once the content is revoked.
    /// Pair each `true` with [`Content::end_send`] when the kernel has copied the bytes (the
    /// send call returned, or its io_uring completion arrived). With [`Content::revoke`] this
    /// is a Dekker handshake (both sides SeqCst): either the sender sees the revocation, or the
    /// revoker sees the send and waits for it before the writer may touch the file.
    pub fn begin_send(&self) -> bool {
        self.senders.fetch_add(1, Ordering::SeqCst);
        if self.revoked.load(Ordering::SeqCst) {
            self.senders.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The send started by a successful [`Content::begin_send`] is over.
    pub fn end_send(&self) {
        self.senders.fetch_sub(1, Ordering::SeqCst);
    }

    fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
    }

    /// Revoke, then wait until every send that began before is over (at most `limit`): only then
    /// may an in-place writer change the bytes. True when drained in time.
    fn revoke_and_drain(&self, limit: std::time::Duration) -> bool {
        self.revoke();
        let deadline = std::time::Instant::now() + limit;
        while self.senders.load(Ordering::SeqCst) != 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        true
    }

    fn heap_len(&self) -> usize {
        match &self.data {
            Data::Heap(b) => b.len(),
            Data::Map(_) => 0,
        }
    }

    fn heap(bytes: Vec<u8>, key: Key, version: Version, display: String) -> Content {
        Content {
            data: Data::Heap(bytes.into_boxed_slice()),
            revoked: AtomicBool::new(false),
            senders: AtomicU32::new(0),
            display,
            key,
            version,
            file: None,
            leased: false,
        }
    }
}

impl Drop for Content {
    fn drop(&mut self) {
        if self.leased {
            if let Some(f) = &self.file {
                lease::unregister(f.as_raw_fd(), self);
            }
        }
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Content")
            .field("path", &self.display)
            .field("len", &self.len())
            .field("mapped", &matches!(self.data, Data::Map(_)))
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

struct CacheEntry {
    content: Arc<Content>,
    last_used: u64,
}

#[derive(Default)]
struct CacheMap {
    entries: HashMap<Key, CacheEntry>,
    tick: u64,
}

/// The mapping cache. Lock order: this lock, then the lease registry's; never the reverse.
#[derive(Default)]
pub(crate) struct Cache {
    map: Mutex<CacheMap>,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, CacheMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached content for `key` if still valid; revokes and drops it if the file changed.
    fn get(&self, key: Key, version: Version) -> Option<Arc<Content>> {
        let mut m = self.lock();
        m.tick += 1;
        let tick = m.tick;
        let entry = m.entries.get_mut(&key)?;
        let c = &entry.content;
        if c.version == version && !c.is_revoked() {
            entry.last_used = tick;
            return Some(c.clone());
        }
        if !c.is_revoked() {
            c.revoke();
            if Arc::strong_count(c) > 1 {
                tracing::info!(
                    file = %c.display,
                    "changed on disk while being served; running transfers of it are ended"
                );
            } else {
                tracing::debug!(file = %c.display, "changed on disk; reloading");
            }
        }
        let old = m.entries.remove(&key);
        drop(m);
        drop(old);
        None
    }

    /// Caches `content` unless an equal one got there first; returns the one to use.
    fn insert(&self, content: Arc<Content>) -> Arc<Content> {
        let mut m = self.lock();
        m.tick += 1;
        let tick = m.tick;
        let key = content.key;
        if let Some(e) = m.entries.get_mut(&key) {
            if e.content.version == content.version && !e.content.is_revoked() {
                e.last_used = tick;
                return e.content.clone();
            }
        }
        // The same path now names another inode (renamed over): the old content only lives on in
        // the transfers that still hold it.
        m.entries.retain(|k, e| {
            !(k.kind == key.kind && *k != key && e.content.display == content.display)
        });
        m.entries.insert(
            key,
            CacheEntry {
                content: content.clone(),
                last_used: tick,
            },
        );
        evict(&mut m, MAX_ENTRIES, HEAP_BUDGET);
        content
    }

    /// Drops `content` from the cache if it is the cached one (lease broken).
    pub(crate) fn remove_exact(&self, content: &Arc<Content>) {
        let mut m = self.lock();
        if m.entries
            .get(&content.key)
            .is_some_and(|e| Arc::ptr_eq(&e.content, content))
        {
            m.entries.remove(&content.key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// Over either limit, evicts least recently used entries nobody else holds, down to 3/4 of it.
fn evict(m: &mut CacheMap, max_entries: usize, heap_budget: usize) {
    let mut heap: usize = m.entries.values().map(|e| e.content.heap_len()).sum();
    if m.entries.len() <= max_entries && heap <= heap_budget {
        return;
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
        }
    }
}

/// Serves the regular files below one root directory. Share it as `Arc<Store>`.
pub struct Store {
    root: PathBuf,
    jail: jail::Jail,
    opts: StoreOptions,
    leases: bool,
    cache: Arc<Cache>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("opts", &self.opts)
            .field("leases_active", &self.leases)
            .field("cached", &self.cache.lock().entries.len())
            .finish()
    }
}

impl Store {
    /// Opens the store on `root`, an existing directory (canonicalised here). With leases on, the
    /// first store starts the lease watcher thread.
    pub fn new(root: &Path, opts: StoreOptions) -> io::Result<Arc<Store>> {
        let canon = std::fs::canonicalize(root)
            .map_err(|e| io::Error::new(e.kind(), format!("TFTP root {}: {e}", root.display())))?;
        if !canon.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TFTP root {} is not a directory", root.display()),
            ));
        }
        let jail = jail::Jail::new(&canon)?;
        let leases = opts.leases && lease::ensure_watcher();
        Ok(Arc::new(Store {
            root: canon,
            jail,
            opts,
            leases,
            cache: Arc::default(),
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
            let name = filename.escape_ascii();
            tracing::debug!(filename = %name, mode = mode.as_str(), error = %e, "lookup refused");
        }
        result
    }

    fn lookup_inner(&self, filename: &[u8], mode: Mode) -> Result<Arc<Content>, LookupError> {
        let kind = match mode {
            Mode::Octet => Kind::Octet,
            Mode::Netascii => Kind::Netascii,
            Mode::Mail => return Err(LookupError::MailMode),
        };
        let rel = path::decode(filename)?;
        let (file, display) = self.open(&rel)?;
        let meta = file.metadata().map_err(|e| LookupError::Io {
            path: display.clone(),
            source: e,
        })?;
        check_regular(&meta, &display)?;
        let key = Key {
            dev: meta.dev(),
            ino: meta.ino(),
            kind,
        };
        if let Some(c) = self.cache.get(key, Version::of(&meta)) {
            return Ok(c);
        }
        let content = self.load(file, &meta, key, display)?;
        Ok(self.cache.insert(content))
    }

    /// Opens the exact path, or on ENOENT its case-insensitive match, through the jail.
    fn open(&self, rel: &path::RelPath) -> Result<(File, String), LookupError> {
        let exact = rel.joined();
        match self.jail.open_file(&exact) {
            Ok(fd) => Ok((File::from(fd), exact)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && self.opts.case_insensitive => {
                match self.jail.resolve_case_insensitive(rel.components()) {
                    Some(found) if found != exact => match self.jail.open_file(&found) {
                        Ok(fd) => Ok((File::from(fd), found)),
                        Err(e) => Err(LookupError::from_open(e, &found)),
                    },
                    _ => Err(LookupError::NotFound { path: exact }),
                }
            }
            Err(e) => Err(LookupError::from_open(e, &exact)),
        }
    }

    fn load(
        &self,
        file: File,
        meta: &std::fs::Metadata,
        key: Key,
        display: String,
    ) -> Result<Arc<Content>, LookupError> {
        match key.kind {
            Kind::Netascii => {
                let (raw, version) = read_stable(&file, meta, &display)?;
                let mut out = Vec::new();
                to_netascii(&raw, &mut out);
                Ok(Arc::new(Content::heap(out, key, version, display)))
            }
            Kind::Octet if meta.size() <= self.opts.small_file_limit => {
                let (raw, version) = read_stable(&file, meta, &display)?;
                Ok(Arc::new(Content::heap(raw, key, version, display)))
            }
            Kind::Octet => {
                let fd = file.as_raw_fd();
                let make = move |leased: bool| map_file(file, key, display, leased);
                if self.leases {
                    lease::with_lease(fd, &self.cache, make)
                } else {
                    make(false)
                }
            }
        }
    }
}

/// Maps `file`. Its size and mtime are read here, after any lease was taken, so a later writer
/// always breaks the lease.
fn map_file(file: File, key: Key, name: String, leased: bool) -> Result<Arc<Content>, LookupError> {
    let io_err = |source: io::Error| LookupError::Io {
        path: name.clone(),
        source,
    };
    let meta = file.metadata().map_err(io_err)?;
    let version = Version::of(&meta);
    let data = if version.size == 0 {
        Data::Heap(Box::default())
    } else {
        let len = usize::try_from(version.size)
            .map_err(|_| io_err(io::Error::other("file too large to map on this platform")))?;
        // SAFETY: the map is only ever read by the kernel (sendmsg), see `Content::bytes`; a
        // truncation then gives EFAULT rather than SIGBUS in this process.
        let map = unsafe { MmapOptions::new().len(len).map(&file) }.map_err(io_err)?;
        if let Err(e) = map.advise(Advice::Sequential) {
            tracing::debug!(file = %name, error = %e, "madvise(SEQUENTIAL) failed");
        }
        Data::Map(map)
    };
    tracing::debug!(file = %name, size = version.size, leased, "mapped");
    Ok(Arc::new(Content {
        data,
        revoked: AtomicBool::new(false),
        senders: AtomicU32::new(0),
        display: name,
        key,
        version,
        file: Some(file),
        leased,
    }))
}

/// Copies the whole file with `pread`, retrying while its size or mtime changes underneath.
fn read_stable(
    file: &File,
    meta: &std::fs::Metadata,
    display: &str,
) -> Result<(Vec<u8>, Version), LookupError> {
    let io_err = |source: io::Error| LookupError::Io {
        path: display.to_owned(),
        source,
    };
    let mut version = Version::of(meta);
    for _ in 0..READ_ATTEMPTS {
        let len = usize::try_from(version.size)
            .map_err(|_| io_err(io::Error::other("file too large")))?;
        let mut buf = vec![0u8; len];
        let complete = match file.read_exact_at(&mut buf, 0) {
            Ok(()) => file.read_at(&mut [0u8; 1], version.size).map_err(io_err)? == 0,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(io_err(e)),
        };
        let after = Version::of(&file.metadata().map_err(io_err)?);
        if complete && after == version {
            return Ok((buf, version));
        }
        version = after;
    }
    Err(LookupError::Busy {
        path: display.to_owned(),
    })
}

fn check_regular(meta: &std::fs::Metadata, display: &str) -> Result<(), LookupError> {
    let t = meta.file_type();
    if t.is_file() {
        return Ok(());
    }
    let kind = if t.is_dir() {
        FileKind::Directory
    } else if t.is_fifo() {
        FileKind::Fifo
    } else if t.is_socket() {
        FileKind::Socket
    } else if t.is_char_device() {
        FileKind::CharDevice
    } else if t.is_block_device() {
        FileKind::BlockDevice
    } else {
        FileKind::Other
    };
    Err(LookupError::NotRegularFile {
        path: display.to_owned(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn opts(small_file_limit: u64, leases: bool) -> StoreOptions {
        StoreOptions {
            small_file_limit,
            leases,
            ..StoreOptions::default()
        }
    }

    fn code(store: &Store, name: &[u8]) -> ErrorCode {
        store.lookup(name, Mode::Octet).unwrap_err().error_code()
    }

    #[test]
    fn store_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
        check::<Content>();
        check::<Arc<Content>>();
    }

    #[test]
    fn new_requires_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), "x").unwrap();
        assert!(Store::new(&dir.path().join("f"), StoreOptions::default()).is_err());
        assert!(Store::new(&dir.path().join("missing"), StoreOptions::default()).is_err());
        let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.root(), fs::canonicalize(dir.path()).unwrap());
    }

    #[test]
    fn serves_small_and_mapped_files_shared() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("small"), "hello").unwrap();
        fs::create_dir(dir.path().join("img")).unwrap();
        fs::write(dir.path().join("img/big"), vec![7u8; 10_000]).unwrap();
        let s = Store::new(dir.path(), opts(16, true)).unwrap();
        let a = s.lookup(b"small", Mode::Octet).unwrap();
        assert_eq!(a.bytes(), b"hello");
        assert!(matches!(a.data, Data::Heap(_)));
        let b = s.lookup(b"/img/big", Mode::Octet).unwrap();
        assert!(matches!(b.data, Data::Map(_)));
        assert_eq!(b.len(), 10_000);
        assert!(b.bytes().iter().all(|&x| x == 7));
        assert_eq!(b.display_path(), "img/big");
        assert!(Arc::ptr_eq(&a, &s.lookup(b"small", Mode::Octet).unwrap()));
        assert!(Arc::ptr_eq(
            &b,
            &s.lookup(b"\\img\\\\big", Mode::Octet).unwrap()
        ));
        assert!(!a.is_revoked() && !b.is_revoked());
    }

    /// The lease-break handshake: a revocation waits for sends already begun, and no send
    /// begins after it.
    #[test]
    fn revocation_waits_for_sends_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), vec![1u8; 4096]).unwrap();
        let s = Store::new(dir.path(), opts(16, true)).unwrap();
        let c = s.lookup(b"f", Mode::Octet).unwrap();
        assert!(c.begin_send());
        assert!(c.begin_send());
        assert!(!c.revoke_and_drain(std::time::Duration::from_millis(5)));
        assert!(c.is_revoked());
        assert!(!c.begin_send(), "no send begins after the revocation");
        c.end_send();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            c2.end_send();
        });
        assert!(c.revoke_and_drain(std::time::Duration::from_secs(5)));
        t.join().unwrap();
        assert_eq!(c.senders.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn empty_files_are_empty_content() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("empty"), "").unwrap();
        for limit in [0, 64 * 1024] {
            let s = Store::new(dir.path(), opts(limit, true)).unwrap();
            let c = s.lookup(b"empty", Mode::Octet).unwrap();
            assert!(c.is_empty());
            assert_eq!(c.len(), 0);
            assert!(s.lookup(b"empty", Mode::Netascii).unwrap().is_empty());
        }
    }

    #[test]
    fn hostile_names_are_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(outer.path().join("x"), "secret").unwrap();
        fs::write(root.join("pxelinux.0"), "pxe").unwrap();
        let s = Store::new(&root, StoreOptions::default()).unwrap();
        for name in [
            &b"../x"[..],
            b"/../x",
            b"a/../../x",
            b"..\\x",
            b"../etc/passwd",
        ] {
            assert_eq!(code(&s, name), ErrorCode::AccessViolation, "{name:?}");
        }
        for name in [
            &b"C:\\x"[..],
            b"pxelinux.0\0",
            b"pxe\x01linux.0",
            b"\x7f",
            b"pxelinux.0\xfe",
        ] {
            assert_eq!(code(&s, name), ErrorCode::AccessViolation, "{name:?}");
        }
        assert_eq!(code(&s, b""), ErrorCode::FileNotFound);
        assert_eq!(code(&s, b"nope"), ErrorCode::FileNotFound);
        assert_eq!(
            s.lookup(b"pxelinux.0\xff", Mode::Octet).unwrap().bytes(),
            b"pxe"
        );
        assert_eq!(
            s.lookup(b"/pxelinux.0", Mode::Octet).unwrap().bytes(),
            b"pxe"
        );
        let e = s.lookup(b"a\0b", Mode::Octet).unwrap_err();
        assert_eq!(e.to_string(), "illegal character in filename");
    }

    #[test]
    fn symlinks_inside_served_outside_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir_all(root.join("images")).unwrap();
        fs::write(root.join("images/k"), "kernel").unwrap();
        fs::write(outer.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink("images/k", root.join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("out")).unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("abs-out")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let s = Store::new(&root, StoreOptions::default()).unwrap();
        let c = s.lookup(b"vmlinuz", Mode::Octet).unwrap();
        assert_eq!(c.bytes(), b"kernel");
        assert!(Arc::ptr_eq(
            &c,
            &s.lookup(b"images/k", Mode::Octet).unwrap()
        ));
        for name in [&b"out"[..], b"abs-out", b"etc/passwd", b"loop"] {
            let e = s.lookup(name, Mode::Octet).unwrap_err();
            assert_eq!(e.error_code(), ErrorCode::AccessViolation, "{name:?}: {e}");
        }
    }

    #[test]
    fn only_regular_files_are_served() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        let fifo =
            std::ffi::CString::new(dir.path().join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let _sock = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
        let t = Instant::now();
        for (name, kind) in [("d", FileKind::Directory), ("fifo", FileKind::Fifo)] {
            match s.lookup(name.as_bytes(), Mode::Octet) {
                Err(e @ LookupError::NotRegularFile { .. }) => {
                    assert!(matches!(e, LookupError::NotRegularFile { kind: k, .. } if k == kind));
                    assert_eq!(e.error_code(), ErrorCode::AccessViolation);
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // A socket cannot be opened at all (ENXIO): refused either way.
        assert!(s.lookup(b"sock", Mode::Octet).is_err());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "opening a FIFO must not block"
        );
        assert_eq!(code(&s, b"/"), ErrorCode::FileNotFound);
    }

    #[test]
    fn case_insensitive_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("boot")).unwrap();
        fs::write(dir.path().join("boot/bcd"), "bcd").unwrap();
        fs::create_dir(dir.path().join("EFI")).unwrap();
        fs::write(dir.path().join("EFI/BOOTX64.EFI"), "efi").unwrap();
        fs::write(dir.path().join("exact"), "lower").unwrap();
        fs::write(dir.path().join("EXACT"), "upper").unwrap();
        let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
        let c = s.lookup(b"\\Boot\\BCD", Mode::Octet).unwrap();
        assert_eq!((c.bytes(), c.display_path()), (&b"bcd"[..], "boot/bcd"));
        let c = s.lookup(b"/efi/bootx64.efi", Mode::Octet).unwrap();
        assert_eq!(
            (c.bytes(), c.display_path()),
            (&b"efi"[..], "EFI/BOOTX64.EFI")
        );
        assert_eq!(s.lookup(b"exact", Mode::Octet).unwrap().bytes(), b"lower");
        assert_eq!(s.lookup(b"EXACT", Mode::Octet).unwrap().bytes(), b"upper");
        let strict = Store::new(
            dir.path(),
            StoreOptions {
                case_insensitive: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(code(&strict, b"\\Boot\\BCD"), ErrorCode::FileNotFound);
        assert_eq!(
            code(&s, b"boot/../EFI/BOOTX64.EFI"),
            ErrorCode::AccessViolation
        );
    }

    #[test]
    fn rename_over_gives_new_content_old_arc_keeps_old_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot.wim");
        fs::write(&p, vec![b'a'; 4096]).unwrap();
        let s = Store::new(dir.path(), opts(16, true)).unwrap();
        let old = s.lookup(b"boot.wim", Mode::Octet).unwrap();
        fs::write(dir.path().join("tmp"), vec![b'b'; 5000]).unwrap();
        fs::rename(dir.path().join("tmp"), &p).unwrap();
        let new = s.lookup(b"boot.wim", Mode::Octet).unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(!old.is_revoked(), "a renamed-over file is not modified");
        assert!(old.bytes().len() == 4096 && old.bytes().iter().all(|&x| x == b'a'));
        assert!(new.bytes().len() == 5000 && new.bytes().iter().all(|&x| x == b'b'));
        assert_eq!(
            s.cache.len(),
            1,
            "the replaced inode's entry is dropped from the cache"
        );
    }

    #[test]
    fn in_place_change_revokes_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for limit in [1 << 20, 16] {
            fs::write(&p, vec![b'x'; 100]).unwrap();
            let s = Store::new(dir.path(), opts(limit, false)).unwrap();
            let old = s.lookup(b"f", Mode::Octet).unwrap();
            let old_na = s.lookup(b"f", Mode::Netascii).unwrap();
            // Grow, same inode (never shrink a mapped file in a test that might read it).
            fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .unwrap()
                .write_all(b"yy")
                .unwrap();
            assert!(!old.is_revoked(), "noticed at the next lookup");
            let new = s.lookup(b"f", Mode::Octet).unwrap();
            assert!(old.is_revoked());
            assert!(!new.is_revoked());
            assert_eq!(new.len(), 102);
            let new_na = s.lookup(b"f", Mode::Netascii).unwrap();
            assert!(old_na.is_revoked() && !new_na.is_revoked());
            fs::remove_file(&p).unwrap();
        }
    }

    #[test]
    fn netascii_and_mail_modes() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("t.cfg"), "a\nb\r\nc\r").unwrap();
        let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
        let n = s.lookup(b"t.cfg", Mode::Netascii).unwrap();
        assert_eq!(n.bytes(), b"a\r\nb\r\nc\r\0");
        assert_eq!(n.len(), 9);
        let o = s.lookup(b"t.cfg", Mode::Octet).unwrap();
        assert_eq!(o.bytes(), b"a\nb\r\nc\r");
        assert!(Arc::ptr_eq(
            &n,
            &s.lookup(b"T.CFG", Mode::Netascii).unwrap()
        ));
        let e = s.lookup(b"t.cfg", Mode::Mail).unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::IllegalOperation);
        assert_eq!(e.to_string(), "mail mode is not supported");
        // Big files are converted from a pread copy too.
        fs::write(dir.path().join("big"), "x\n".repeat(50_000)).unwrap();
        let s = Store::new(dir.path(), opts(16, true)).unwrap();
        assert_eq!(
            s.lookup(b"big", Mode::Netascii).unwrap().bytes(),
            "x\r\n".repeat(50_000).as_bytes()
        );
    }

    #[test]
    fn error_codes() {
        let p = || "p".to_owned();
        let cases = [
            (LookupError::IllegalCharacter, ErrorCode::AccessViolation),
            (LookupError::ParentDirectory, ErrorCode::AccessViolation),
            (LookupError::DrivePrefix, ErrorCode::AccessViolation),
            (LookupError::EmptyName, ErrorCode::FileNotFound),
            (LookupError::MailMode, ErrorCode::IllegalOperation),
            (LookupError::NotFound { path: p() }, ErrorCode::FileNotFound),
            (
                LookupError::OutsideRoot { path: p() },
                ErrorCode::AccessViolation,
            ),
            (
                LookupError::SymlinkLoop { path: p() },
                ErrorCode::AccessViolation,
            ),
            (
                LookupError::PermissionDenied { path: p() },
                ErrorCode::AccessViolation,
            ),
            (
                LookupError::NotRegularFile {
                    path: p(),
                    kind: FileKind::Directory,
                },
                ErrorCode::AccessViolation,
            ),
            (LookupError::Busy { path: p() }, ErrorCode::NotDefined),
            (
                LookupError::Io {
                    path: p(),
                    source: io::Error::other("x"),
                },
                ErrorCode::NotDefined,
            ),
        ];
        for (e, c) in cases {
            assert_eq!(e.error_code(), c, "{e}");
        }
        let from =
            |errno| LookupError::from_open(io::Error::from_raw_os_error(errno), "p").error_code();
        assert_eq!(from(libc::EACCES), ErrorCode::AccessViolation);
        assert_eq!(from(libc::EPERM), ErrorCode::AccessViolation);
        assert_eq!(from(libc::EXDEV), ErrorCode::AccessViolation);
        assert_eq!(from(libc::ENOTDIR), ErrorCode::FileNotFound);
        assert_eq!(from(libc::EIO), ErrorCode::NotDefined);
    }

    #[test]
    fn eviction_keeps_held_entries() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            fs::write(dir.path().join(format!("f{i}")), format!("{i}")).unwrap();
        }
        let s = Store::new(dir.path(), StoreOptions::default()).unwrap();
        let held: Vec<_> = (0..3)
            .map(|i| s.lookup(format!("f{i}").as_bytes(), Mode::Octet).unwrap())
            .collect();
        for i in 3..10 {
            s.lookup(format!("f{i}").as_bytes(), Mode::Octet).unwrap();
        }
        assert_eq!(s.cache.len(), 10);
        evict(&mut s.cache.lock(), 4, usize::MAX);
        assert_eq!(s.cache.len(), 3);
        for c in &held {
            assert!(Arc::ptr_eq(
                c,
                &s.lookup(c.display_path().as_bytes(), Mode::Octet).unwrap()
            ));
        }
        evict(&mut s.cache.lock(), usize::MAX, 0);
        assert_eq!(
            s.cache.len(),
            3,
            "held entries survive even over the heap budget"
        );
    }

    /// A rewrite in place (`cp new old`) of a mapped file: the lease break revokes the content and
    /// releases the writer at once. The lease signal is blocked in this thread only; other harness
    /// threads leave it unblocked, where the handler installed by the watcher forwards it, so the
    /// timing assertion holds either way. Where leases cannot be taken (filesystem without lease
    /// support, not the owner) the test falls back to asserting the (size, mtime) check.
    #[test]
    fn in_place_rewrite_breaks_the_lease() {
        block_lease_signal();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot.wim");
        fs::write(&p, vec![b'a'; 65_536]).unwrap();
        let s = Store::new(dir.path(), opts(16, true)).unwrap();
        let old = s.lookup(b"boot.wim", Mode::Octet).unwrap();
        let fd = old.file.as_ref().unwrap().as_raw_fd();
        let leased = old.leased;
        if leased {
            assert!(lease::is_registered(fd));
        } else {
            eprintln!("no lease on this filesystem; checking the (size, mtime) fallback only");
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let writer_path = p.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut f = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&writer_path)
                .unwrap();
            f.write_all(b"new contents").unwrap();
            drop(f);
            tx.send(t.elapsed()).unwrap();
        });
        let took = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("writer finished");
        if leased {
            assert!(took < Duration::from_secs(5), "writer held back {took:?}");
            let deadline = Instant::now() + Duration::from_secs(5);
            while !old.is_revoked() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(
                old.is_revoked(),
                "lease break revokes before the next lookup"
            );
            assert!(
                !lease::is_registered(fd),
                "the broken lease is unregistered"
            );
        }
        // Never read `old.bytes()` here: the file was truncated under the map.
        let new = s.lookup(b"boot.wim", Mode::Octet).unwrap();
        assert!(old.is_revoked());
        assert!(!Arc::ptr_eq(&old, &new));
        assert_eq!(new.bytes(), b"new contents");
    }
}
