//! Running as a service: logging set-up, the pre-flight checks, the privilege drop, the lease
//! lock. I/O at start (and at reload); nothing here is on a request's path.

pub mod check;
pub mod privileges;
pub mod reload;

use crate::config::{LogConfig, LogFormat};
use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload as filter_reload, EnvFilter, Layer, Registry};

/// Colour only for a person at a terminal: stderr is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>).
pub fn use_colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Whether stderr is the journal's stream (systemd sets `JOURNAL_STREAM=DEV:INODE` of it): then
/// lines carry no timestamp (the journal adds its own) and no colour.
pub fn under_journald() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat of descriptor 2 into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstat(2, &mut st) };
    r == 0 && st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// The filter of a log level (`-v` count), unless `RUST_LOG` says otherwise.
pub fn filter(verbose: u8) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => {
            EnvFilter::try_new(&s).map_err(|e| format!("bad RUST_LOG {s:?}: {e}"))
        }
        _ => Ok(EnvFilter::new(match verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        })),
    }
}

/// Changes the log level of a running process (SIGHUP).
pub type LevelHandle = filter_reload::Handle<EnvFilter, Registry>;

/// Install the global subscriber writing to `writer`: the format of `log`, colour as
/// [`use_colour`] says, no timestamps [`under_journald`]. Returns the level handle.
pub fn init_logging<W>(log: &LogConfig, writer: W) -> Result<LevelHandle, String>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, handle) = filter_reload::Layer::new(filter(log.verbose)?);
    let ansi = use_colour();
    let journal = under_journald();
    let fmt: Box<dyn Layer<_> + Send + Sync> = match (log.format, journal) {
        (LogFormat::Json, _) => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
        (LogFormat::Text, true) => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .without_time()
            .with_writer(writer)
            .boxed(),
        (LogFormat::Text, false) => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(handle)
}

/// The lock file beside a lease file.
pub fn lease_lock_path(lease: &Path) -> PathBuf {
    let mut p = lease.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Take the lease file's lock (`flock` on `LEASE.lock`, held while the returned file is open):
/// one instance per lease file. An error names the other instance's lock.
pub fn lock_leases(lease: &Path) -> Result<File, String> {
    let path = lease_lock_path(lease);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open the lease lock {}: {e}", path.display()))?;
    // SAFETY: a valid descriptor.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            format!(
                "the lease file {} is in use by another ringboot (its lock {} is held): stop it, or give this one another --dhcp-lease-file",
                lease.display(),
                path.display()
            )
        } else {
            format!("cannot lock {}: {e}", path.display())
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_file_is_locked_once() {
        let d = tempfile::tempdir().unwrap();
        let lease = d.path().join("dhcp.leases");
        let a = lock_leases(&lease).unwrap();
        let e = lock_leases(&lease).unwrap_err();
        assert!(e.contains("in use by another ringboot"), "{e}");
        drop(a);
        lock_leases(&lease).unwrap();
    }
}
