//! Dropping root after binding (`--user`, `--group`).
//!
//! Contract: [`drop_to`] switches the whole process (every thread: glibc applies `setresuid`
//! to all of them) to the named user and group, with the supplementary groups cleared. The
//! capabilities in `keep` stay in the calling thread's permitted and effective sets (through
//! `PR_SET_KEEPCAPS` and `capset`); every other thread ends with none, which is all they need:
//! their sockets are bound already. Called once at start, after every socket is bound. Refuses
//! (and changes nothing) when the user or group does not exist, or when the process is not root
//! and asks to become someone else.

use std::ffi::CString;
use std::io;

/// Linux capability numbers (linux/capability.h) that the server may keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// Bind ports below 1024 (a DHCP or TFTP socket opened again).
    NetBindService = 10,
    /// `SO_BINDTODEVICE` and raw sockets.
    NetRaw = 13,
}

/// Who the process became.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub uid: u32,
    pub gid: u32,
}

/// Why the switch was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("--user {0:?}: no such user")]
    NoUser(String),
    #[error("--group {0:?}: no such group")]
    NoGroup(String),
    #[error("--user {user:?}: only root can switch to another user (running as uid {uid}); start as root, or drop --user")]
    NotRoot { user: String, uid: u32 },
    #[error("switching to {what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn sys(what: &'static str, r: libc::c_int) -> Result<(), PrivError> {
    if r == 0 {
        Ok(())
    } else {
        Err(PrivError::Sys {
            what,
            source: io::Error::last_os_error(),
        })
    }
}

/// A reentrant NSS lookup's signature (`getpwnam_r`, `getgrnam_r`): name, entry, buffer for its
/// strings, the buffer's length, where the found entry is put.
type NssLookup<T> = unsafe extern "C" fn(
    *const libc::c_char,
    *mut T,
    *mut libc::c_char,
    libc::size_t,
    *mut *mut T,
) -> libc::c_int;

/// The entry for `name` found by `lookup`, or `None` (no such entry, or an error); `read` takes
/// what it needs from it while the buffer its strings point into lives. `T` is the C struct
/// `lookup` fills (`passwd`, `group`), for which all zero bytes are a valid value.
fn nss_entry<T, R>(name: &CString, lookup: NssLookup<T>, read: impl FnOnce(&T) -> R) -> Option<R> {
    // SAFETY: `T` is a plain C struct of integers and pointers (see above).
    let mut entry: T = unsafe { std::mem::zeroed() };
    let mut out: *mut T = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `entry`'s strings.
    let r = unsafe {
        lookup(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    (r == 0 && !out.is_null()).then(|| read(&entry))
}

/// The uid and primary gid of `user` (a name, or a number).
pub fn lookup_user(user: &str) -> Result<(u32, u32), PrivError> {
    let name = CString::new(user).map_err(|_| PrivError::NoUser(user.into()))?;
    if let Some(ids) = nss_entry(&name, libc::getpwnam_r, |pw| (pw.pw_uid, pw.pw_gid)) {
        return Ok(ids);
    }
    match user.parse::<u32>() {
        Ok(uid) => Ok((uid, uid)),
        Err(_) => Err(PrivError::NoUser(user.into())),
    }
}

/// The gid of `group` (a name, or a number).
pub fn lookup_group(group: &str) -> Result<u32, PrivError> {
    let name = CString::new(group).map_err(|_| PrivError::NoGroup(group.into()))?;
    if let Some(gid) = nss_entry(&name, libc::getgrnam_r, |gr| gr.gr_gid) {
        return Ok(gid);
    }
    group
        .parse::<u32>()
        .map_err(|_| PrivError::NoGroup(group.into()))
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Set the calling thread's permitted and effective capabilities to `keep` (no inheritable).
fn set_caps(keep: &[Cap]) -> Result<(), PrivError> {
    let mut bits = 0u32;
    for c in keep {
        bits |= 1 << (*c as u32);
    }
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: bits,
            permitted: bits,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: a version 3 header and two data blocks, as capset(2) asks.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    sys("the kept capabilities (capset)", r as libc::c_int)
}

/// Switch the process to `user` (and `group`, default the user's primary group), keeping `keep`
/// in the calling thread. See the module docs.
pub fn drop_to(user: &str, group: Option<&str>, keep: &[Cap]) -> Result<Dropped, PrivError> {
    let (uid, user_gid) = lookup_user(user)?;
    let gid = match group {
        Some(g) => lookup_group(g)?,
        None => user_gid,
    };
    // SAFETY: plain getters.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 {
        if euid == uid && egid == gid {
            return Ok(Dropped { uid, gid });
        }
        return Err(PrivError::NotRoot {
            user: user.into(),
            uid: euid,
        });
    }
    // SAFETY: each call takes plain values or a valid one-element array.
    unsafe {
        if !keep.is_empty() {
            sys(
                "keep capabilities (prctl)",
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
            )?;
        }
        sys("supplementary groups (setgroups)", libc::setgroups(1, &gid))?;
        sys("the group (setresgid)", libc::setresgid(gid, gid, gid))?;
        sys("the user (setresuid)", libc::setresuid(uid, uid, uid))?;
        if !keep.is_empty() {
            set_caps(keep)?;
            sys(
                "keep capabilities (prctl)",
                libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
            )?;
        }
        // Dumpable again would expose memory to the new user's ptrace; it stays as the kernel set it.
    }
    Ok(Dropped { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(lookup_user("root").unwrap(), (0, 0));
        assert!(matches!(
            lookup_user("no-such-user-x"),
            Err(PrivError::NoUser(_))
        ));
        assert_eq!(lookup_group("root").unwrap(), 0);
        assert!(matches!(
            lookup_group("no-such-group-x"),
            Err(PrivError::NoGroup(_))
        ));
        assert_eq!(lookup_user("4242").unwrap(), (4242, 4242));
    }
}
