//! The lease file of full mode on disk: the I/O half of [`crate::proto::dhcp::leases`].
//!
//! Contract:
//! - [`LeaseStore::save`] writes the whole table (a few kilobytes per hundred leases, its text
//!   form from [`LeaseState::write_text`]) and needs no new descriptor in the steady state: the
//!   store opens the state directory once and keeps two files open, the lease file and its spare
//!   `<name>.tmp`. A save writes the spare, fsyncs it, swaps the two names atomically
//!   (`renameat2(RENAME_EXCHANGE)`) and fsyncs the directory; the spare then holds the previous
//!   generation. Where the filesystem cannot exchange names, the spare is renamed over the lease
//!   file and a new spare is opened after the save (a descriptor that is not needed for the ACK
//!   in flight). A spare that someone renamed or replaced is noticed (device and inode checked)
//!   and a fresh temporary file is written instead.
//! - [`LeaseStore::load`] reads the file back at start (a missing file is an empty table) and
//!   saves once, which checks that the directory is writable and opens the descriptors.

use crate::proto::dhcp::leases::{LeaseState, ParseError};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The lease file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LeaseFileError {
    /// A line of the file is not a record.
    #[error(transparent)]
    Line(#[from] ParseError),
    #[error("lease file {path}: {source} (check the directory exists and is writable, or set lease_file)")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl LeaseFileError {
    /// The process (EMFILE) or the system (ENFILE) is out of file descriptors.
    pub fn is_out_of_descriptors(&self) -> bool {
        matches!(self, LeaseFileError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)))
    }
}

/// The lease file on disk and the descriptors kept for saving it; see the module contract.
#[derive(Debug)]
pub struct LeaseStore {
    path: PathBuf,
    dir_path: PathBuf,
    name: CString,
    tmp: CString,
    /// The state directory, opened once.
    dir: Option<OwnedFd>,
    /// The inode named `name` (the lease file).
    live: Option<OwnedFd>,
    /// An inode named `tmp`, written by the next save.
    spare: Option<OwnedFd>,
    /// `RENAME_EXCHANGE` works here (cleared when the filesystem refuses it).
    exchange: bool,
    /// Files opened for saves (see [`LeaseStore::files_opened`]).
    opened: u64,
    text: String,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn file_id(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: fstat fills a zeroed stat for a descriptor we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok((st.st_dev, st.st_ino))
}

fn name_id(dir: RawFd, name: &CString) -> io::Result<(u64, u64)> {
    // SAFETY: fstatat with a live directory descriptor, a NUL-terminated name and a zeroed stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok((st.st_dev, st.st_ino))
}

fn open_at(dir: RawFd, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: openat with a live directory descriptor and a NUL-terminated name.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags, 0o644 as libc::c_uint) })?;
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Replace the whole content of `fd` with `data` and fsync it.
fn write_whole(fd: RawFd, data: &[u8]) -> io::Result<()> {
    let mut off = 0usize;
    while off < data.len() {
        // SAFETY: pwrite from a live slice to a descriptor we own.
        let n = unsafe {
            libc::pwrite(
                fd,
                data[off..].as_ptr() as *const libc::c_void,
                data.len() - off,
                off as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        off += n as usize;
    }
    // SAFETY: plain syscalls on a descriptor we own.
    cvt(unsafe { libc::ftruncate(fd, data.len() as libc::off_t) })?;
    cvt(unsafe { libc::fsync(fd) })?;
    Ok(())
}

impl LeaseStore {
    pub fn new(path: impl Into<PathBuf>) -> LeaseStore {
        let path: PathBuf = path.into();
        let dir_path = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file = path.file_name().unwrap_or_default().as_bytes().to_vec();
        let mut tmp = file.clone();
        tmp.extend_from_slice(b".tmp");
        LeaseStore {
            name: CString::new(file).unwrap_or_default(),
            tmp: CString::new(tmp).unwrap_or_default(),
            path,
            dir_path,
            dir: None,
            live: None,
            spare: None,
            exchange: true,
            opened: 0,
            text: String::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Files opened for saves so far: 2 after [`LeaseStore::load`] (the lease file and its
    /// spare) and no more where names can be exchanged; one more per save where they cannot
    /// (the next spare), and whenever a spare was lost.
    pub fn files_opened(&self) -> u64 {
        self.opened
    }

    fn io(&self, source: io::Error) -> LeaseFileError {
        LeaseFileError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Read the table; a missing file is an empty table. Creates the directory if needed,
    /// checks it is writable by saving once, and keeps the descriptors for later saves.
    pub fn load(&mut self) -> Result<LeaseState, LeaseFileError> {
        let mut st = match fs::read_to_string(&self.path) {
            Ok(text) => LeaseState::from_text(&text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => LeaseState::default(),
            Err(e) => return Err(self.io(e)),
        };
        self.save(&st)?;
        let v = st.version();
        st.mark_saved(v);
        Ok(st)
    }

    /// Save `st` when it is dirty and mark it saved. See [`LeaseStore::save`].
    pub fn commit(&mut self, st: &mut LeaseState) -> Result<(), LeaseFileError> {
        if st.is_dirty() {
            let v = st.version();
            self.save(st)?;
            st.mark_saved(v);
        }
        Ok(())
    }

    /// Write the whole table durably (see the module contract). On error nothing on disk
    /// changed that the lease file shows.
    pub fn save(&mut self, st: &LeaseState) -> Result<(), LeaseFileError> {
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        st.write_text(&mut text);
        let r = self.write(text.as_bytes());
        self.text = text;
        r.map_err(|e| self.io(e))
    }

    fn dir_fd(&mut self) -> io::Result<RawFd> {
        if let Some(d) = &self.dir {
            return Ok(d.as_raw_fd());
        }
        fs::create_dir_all(&self.dir_path)?;
        let p = CString::new(self.dir_path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: open with a NUL-terminated path.
        let fd = cvt(unsafe {
            libc::open(
                p.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd was just returned by open and is owned by nobody else.
        let d = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = d.as_raw_fd();
        self.dir = Some(d);
        Ok(raw)
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let dir = self.dir_fd()?;
        // The held spare, if it is still the file named `tmp`.
        let spare = self
            .spare
            .take()
            .filter(|f| matches!((file_id(f.as_raw_fd()), name_id(dir, &self.tmp)), (Ok(a), Ok(b)) if a == b));
        let file = match spare {
            Some(f) => f,
            None => {
                self.opened += 1;
                open_at(dir, &self.tmp, libc::O_CREAT | libc::O_TRUNC)?
            }
        };
        write_whole(file.as_raw_fd(), data)?;
        if self.exchange && self.live.is_some() {
            // SAFETY: renameat2 with a live directory descriptor and NUL-terminated names.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    dir,
                    self.tmp.as_ptr(),
                    dir,
                    self.name.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            if rc == 0 {
                // SAFETY: fsync of the directory descriptor we own.
                cvt(unsafe { libc::fsync(dir) })?;
                // The old lease file is the spare now, named `tmp`.
                self.spare = self.live.take();
                self.live = Some(file);
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // The filesystem cannot exchange names: rename from now on.
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => self.exchange = false,
                // No lease file (removed behind our back): rename.
                Some(libc::ENOENT) => {}
                _ => {
                    self.spare = Some(file);
                    return Err(e);
                }
            }
        }
        // SAFETY: renameat with a live directory descriptor and NUL-terminated names.
        cvt(unsafe { libc::renameat(dir, self.tmp.as_ptr(), dir, self.name.as_ptr()) })?;
        // SAFETY: fsync of the directory descriptor we own.
        cvt(unsafe { libc::fsync(dir) })?;
        self.live = Some(file);
        // A spare for the next save, opened after this one is durable (best effort: without it
        // the next save opens its file itself).
        self.opened += 1;
        self.spare = open_at(dir, &self.tmp, libc::O_CREAT | libc::O_TRUNC).ok();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dhcp::leases::fixtures::{ip, key};

    #[test]
    fn store_save_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LeaseStore::new(dir.path().join("sub/dhcp.leases"));
        let mut st = store.load().unwrap();
        assert!(st.is_empty());
        st.bind(ip(10), &key(1), 100, 3700);
        store.commit(&mut st).unwrap();
        assert!(st.is_durable(ip(10)));
        let back = LeaseStore::new(dir.path().join("sub/dhcp.leases"))
            .load()
            .unwrap();
        assert_eq!(back.get(ip(10)).unwrap().client, key(1));
    }

    /// After the first save, a save opens nothing: it writes the held spare and exchanges the
    /// names (on filesystems that can; tmpfs and ext4 can).
    #[test]
    fn saves_reuse_held_descriptors_and_notice_a_replaced_spare() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dhcp.leases");
        let mut store = LeaseStore::new(&path);
        let mut st = store.load().unwrap();
        assert_eq!(store.files_opened(), 2);
        for n in 0..50u8 {
            st.bind(ip(n), &key(n), 100, 3700 + u64::from(n));
            store.commit(&mut st).unwrap();
            let on_disk = fs::read_to_string(&path).unwrap();
            assert_eq!(on_disk, st.to_text(), "save {n}");
        }
        if store.exchange {
            assert_eq!(
                store.files_opened(),
                2,
                "no file opened after the first save"
            );
        }
        // Someone replaces the spare: the next save writes a fresh temporary file instead of
        // renaming the stranger's file over the leases.
        let tmp = dir.path().join("dhcp.leases.tmp");
        fs::remove_file(&tmp).unwrap();
        fs::write(&tmp, "not ours\n").unwrap();
        st.bind(ip(60), &key(60), 100, 9999);
        store.commit(&mut st).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), st.to_text());
        // The lease file removed behind our back: the next save writes it again.
        fs::remove_file(&path).unwrap();
        st.bind(ip(61), &key(61), 100, 9999);
        store.commit(&mut st).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), st.to_text());
        let back = LeaseStore::new(&path).load().unwrap();
        assert_eq!(back.len(), st.len());
    }

    #[test]
    fn a_bad_line_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dhcp.leases");
        fs::write(&path, "# header\n10.0.0.1 hw-0152 5 bound\n10.0.0.2 x\n").unwrap();
        let e = LeaseStore::new(&path).load().unwrap_err();
        assert!(
            matches!(&e, LeaseFileError::Line(ParseError { line: 3, .. })),
            "{e:?}"
        );
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(!e.is_out_of_descriptors());
    }
}
