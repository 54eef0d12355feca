//! The path jail: opens files and directories below the root, never outside it.
//!
//! - First choice: `openat2(root_fd, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`. Symlinks that
//!   stay below the root are followed; one that leaves it fails with `EXDEV`.
//! - Second chance, on `EXDEV` (absolute symlinks give it even when they point back inside) and on
//!   kernels without `openat2`: canonicalise the path, require it to lie below the canonical root,
//!   and open that symlink-free path one component at a time from `root_fd` with `O_NOFOLLOW`, so a
//!   symlink swapped in meanwhile makes the open fail instead of escaping.
//! - Case-insensitive resolution reads only directories opened through the same jail.
//!
//! Errors are plain `io::Error`s with the kernel's errno; `super` turns them into `LookupError`s.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use libc::c_int;

/// Flags for a file to serve. `O_NONBLOCK` so that opening a FIFO cannot hang a worker.
const FILE_FLAGS: c_int = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
/// Flags for a directory to list.
const DIR_FLAGS: c_int = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECTORY;
/// Flags for the directories walked through by the component-by-component fallback.
const WALK_FLAGS: c_int = libc::O_PATH | libc::O_CLOEXEC | libc::O_DIRECTORY | libc::O_NOFOLLOW;
/// How many directories one case-insensitive resolution may read.
const CI_SCAN_BUDGET: u32 = 64;

pub(crate) struct Jail {
    /// Canonical root path.
    root: PathBuf,
    /// `O_PATH` descriptor of the root; every open starts here.
    root_fd: OwnedFd,
    /// Whether `openat2` works here (probed once).
    openat2: bool,
}

impl Jail {
    /// `root` must already be canonical.
    pub(crate) fn new(root: &Path) -> io::Result<Jail> {
        let c = cstring(root.as_os_str())?;
        // SAFETY: `c` is a valid NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let root_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let openat2 = match openat2(root_fd.as_raw_fd(), c".", libc::O_PATH | libc::O_CLOEXEC) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(
                    error = %e,
                    "openat2 unavailable; using the canonicalise-and-walk jail"
                );
                false
            }
        };
        Ok(Jail {
            root: root.to_path_buf(),
            root_fd,
            openat2,
        })
    }

    #[cfg(test)]
    pub(crate) fn force_fallback(&mut self) {
        self.openat2 = false;
    }

    /// Opens `rel` (components joined with `/`, none `..`) read-only for serving.
    pub(crate) fn open_file(&self, rel: &str) -> io::Result<OwnedFd> {
        self.open_beneath(rel, FILE_FLAGS)
    }

    /// Opens directory `rel` (`""` is the root) for listing.
    pub(crate) fn open_dir(&self, rel: &str) -> io::Result<OwnedFd> {
        self.open_beneath(rel, DIR_FLAGS)
    }

    fn open_beneath(&self, rel: &str, flags: c_int) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { "." } else { rel };
        if self.openat2 {
            let c = cstring(OsStr::new(rel))?;
            match openat2(self.root_fd.as_raw_fd(), &c, flags) {
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => self.open_canonical(rel, flags),
                r => r,
            }
        } else {
            self.open_canonical(rel, flags)
        }
    }

    /// The second chance: canonicalise, check the prefix, walk with `O_NOFOLLOW`.
    fn open_canonical(&self, rel: &str, flags: c_int) -> io::Result<OwnedFd> {
        let canon = std::fs::canonicalize(self.root.join(rel))?;
        let below = canon
            .strip_prefix(&self.root)
            .map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))?;
        let mut names = Vec::new();
        for c in below.components() {
            match c {
                Component::Normal(n) => names.push(n),
                _ => return Err(io::Error::from_raw_os_error(libc::EXDEV)),
            }
        }
        let Some((last, dirs)) = names.split_last() else {
            return openat(self.root_fd.as_raw_fd(), OsStr::new("."), flags);
        };
        let mut cur: Option<OwnedFd> = None;
        for name in dirs {
            let dir = cur
                .as_ref()
                .map_or(self.root_fd.as_raw_fd(), |f| f.as_raw_fd());
            cur = Some(openat(dir, name, WALK_FLAGS)?);
        }
        let dir = cur
            .as_ref()
            .map_or(self.root_fd.as_raw_fd(), |f| f.as_raw_fd());
        openat(dir, last, flags | libc::O_NOFOLLOW)
    }

    /// Finds an existing path matching `components` case-insensitively, one directory at a time.
    /// An exact name is tried before other matches (then in byte order); a dead end backtracks.
    pub(crate) fn resolve_case_insensitive(&self, components: &[String]) -> Option<String> {
        let mut budget = CI_SCAN_BUDGET;
        let mut prefix = Vec::with_capacity(components.len());
        self.ci_search(components, &mut prefix, &mut budget)
    }

    fn ci_search(
        &self,
        rest: &[String],
        prefix: &mut Vec<String>,
        budget: &mut u32,
    ) -> Option<String> {
        let Some((want, tail)) = rest.split_first() else {
            return Some(prefix.join("/"));
        };
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        let dir = self.open_dir(&prefix.join("/")).ok()?;
        let names = list_dir(dir).ok()?;
        let lower = want.to_lowercase();
        let mut candidates: Vec<String> = names
            .into_iter()
            .filter(|n| n == want || n.to_lowercase() == lower)
            .collect();
        candidates.sort_by(|a, b| (a != want).cmp(&(b != want)).then_with(|| a.cmp(b)));
        for name in candidates {
            prefix.push(name);
            if let Some(found) = self.ci_search(tail, prefix, budget) {
                return Some(found);
            }
            prefix.pop();
        }
        None
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn openat2(dir: RawFd, path: &CStr, flags: c_int) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain old data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` lives across the call; the size matches.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: the kernel returned a fresh descriptor that nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn openat(dir: RawFd, name: &OsStr, flags: c_int) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    loop {
        // SAFETY: `c` is NUL-terminated; the result is checked.
        let fd = unsafe { libc::openat(dir, c.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: a fresh descriptor that nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The UTF-8 names in a directory, without `.` and `..`. Others cannot match a wire name.
fn list_dir(dir: OwnedFd) -> io::Result<Vec<String>> {
    let raw = dir.into_raw_fd();
    // SAFETY: `raw` is an open directory descriptor; fdopendir takes ownership of it on success.
    let d = unsafe { libc::fdopendir(raw) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so we still own `raw`.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: `d` is a valid DIR* used by this thread only; the entry is read before the next
        // readdir call.
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated inside the entry.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if let Ok(s) = name.to_str() {
            if s != "." && s != ".." {
                names.push(s.to_owned());
            }
        }
    }
    // SAFETY: `d` is valid and closed exactly once (this also closes `raw`).
    unsafe { libc::closedir(d) };
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;

    fn jails(root: &Path) -> Vec<Jail> {
        let root = fs::canonicalize(root).unwrap();
        let a = Jail::new(&root).unwrap();
        let mut b = Jail::new(&root).unwrap();
        b.force_fallback();
        vec![a, b]
    }

    fn read(fd: OwnedFd) -> String {
        let mut s = String::new();
        fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    fn errno(r: io::Result<OwnedFd>) -> i32 {
        r.map(|_| ()).unwrap_err().raw_os_error().unwrap()
    }

    #[test]
    fn openat2_is_probed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Jail::new(&fs::canonicalize(dir.path()).unwrap()).unwrap();
        // Informational: both paths are tested below either way.
        eprintln!("openat2 available: {}", j.openat2);
    }

    #[test]
    fn symlinks_inside_are_followed_outside_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir_all(root.join("images")).unwrap();
        fs::write(root.join("images/a.efi"), "A").unwrap();
        fs::write(outer.path().join("secret"), "S").unwrap();
        std::os::unix::fs::symlink("images/a.efi", root.join("rel-in")).unwrap();
        std::os::unix::fs::symlink(root.join("images/a.efi"), root.join("abs-in")).unwrap();
        std::os::unix::fs::symlink("images", root.join("dirlink")).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("rel-out")).unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("abs-out")).unwrap();
        std::os::unix::fs::symlink("/", root.join("slash")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root", root.join("magic")).unwrap();
        for j in jails(&root) {
            assert_eq!(read(j.open_file("images/a.efi").unwrap()), "A");
            assert_eq!(read(j.open_file("rel-in").unwrap()), "A");
            assert_eq!(read(j.open_file("abs-in").unwrap()), "A");
            assert_eq!(read(j.open_file("dirlink/a.efi").unwrap()), "A");
            assert_eq!(errno(j.open_file("rel-out")), libc::EXDEV);
            assert_eq!(errno(j.open_file("abs-out")), libc::EXDEV);
            assert!(j.open_file("slash/etc/passwd").is_err());
            assert!(j.open_file("magic/etc/passwd").is_err());
            assert_eq!(errno(j.open_file("missing")), libc::ENOENT);
        }
    }

    #[test]
    fn case_insensitive_both_ways_and_exact_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(root.join("boot/bcd"), "lower").unwrap();
        fs::create_dir_all(root.join("Boot")).unwrap(); // a dead end for BOOT/BCD: backtrack
        fs::create_dir_all(root.join("EFI/Microsoft")).unwrap();
        fs::write(root.join("EFI/Microsoft/BOOTMGFW.EFI"), "upper").unwrap();
        fs::write(root.join("Same"), "1").unwrap();
        fs::write(root.join("same"), "2").unwrap();
        let v = |s: &str| s.split('/').map(str::to_owned).collect::<Vec<_>>();
        for j in jails(root) {
            assert_eq!(
                j.resolve_case_insensitive(&v("Boot/BCD")).as_deref(),
                Some("boot/bcd")
            );
            assert_eq!(
                j.resolve_case_insensitive(&v("efi/microsoft/bootmgfw.efi"))
                    .as_deref(),
                Some("EFI/Microsoft/BOOTMGFW.EFI")
            );
            assert_eq!(
                j.resolve_case_insensitive(&v("same")).as_deref(),
                Some("same")
            );
            assert_eq!(
                j.resolve_case_insensitive(&v("Same")).as_deref(),
                Some("Same")
            );
            assert_eq!(
                j.resolve_case_insensitive(&v("SAME")).as_deref(),
                Some("Same")
            );
            assert_eq!(j.resolve_case_insensitive(&v("nothing/here")), None);
        }
    }
}
