//! Readiness: the one `epoll` wrapper, and the descriptors that make things pollable (`eventfd`
//! for wake-ups, `signalfd` for signals).
//!
//! Contract:
//! - This is the only file of ringboot (and of its load tester) that calls `epoll_wait`: every
//!   thread that waits on descriptors waits through [`Poller::wait`]. (The io_uring workers wait
//!   in the ring instead.)
//! - A wait interrupted by a signal (`EINTR`) returns no events, never an error.
//! - Tokens are the caller's `u64`s, returned as given; nothing here allocates after
//!   [`Events::with_capacity`].
//! - [`timeout_ms`] rounds a deadline up to the next millisecond: waking early only spins.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// Ready events of one wait, a caller-owned buffer reused across waits.
pub struct Events {
    buf: Vec<libc::epoll_event>,
    len: usize,
}

/// One ready descriptor: its token and what it is ready for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub token: u64,
    pub readable: bool,
    /// `EPOLLERR`: an error is queued on the socket (read it with `MSG_ERRQUEUE` or `SO_ERROR`).
    pub error: bool,
    pub hangup: bool,
}

impl Events {
    /// Room for `n` events per wait (at least one).
    pub fn with_capacity(n: usize) -> Self {
        Events {
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; n.max(1)],
            len: 0,
        }
    }

    /// The events of the last wait.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }

    /// Event `i` of the last wait.
    pub fn get(&self, i: usize) -> Option<Event> {
        self.buf[..self.len].get(i).map(|e| {
            let bits = e.events;
            Event {
                token: e.u64,
                readable: bits & libc::EPOLLIN as u32 != 0,
                error: bits & libc::EPOLLERR as u32 != 0,
                hangup: bits & libc::EPOLLHUP as u32 != 0,
            }
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An epoll instance: descriptors registered for input under a token.
pub struct Poller {
    ep: OwnedFd,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before being owned.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(Poller {
            ep: unsafe { OwnedFd::from_raw_fd(ep) },
        })
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: a valid epoll descriptor and a live event struct.
        let r = unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Watch `fd` for input (level-triggered); its events carry `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token)
    }

    /// Stop watching `fd` (closing it does so too).
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0)
    }

    /// Wait at most `timeout_ms` (-1: no limit, 0: do not block) for ready descriptors; fills
    /// `events` and returns how many. `EINTR` counts as a wait that saw nothing.
    pub fn wait(&self, events: &mut Events, timeout_ms: i32) -> io::Result<usize> {
        events.len = 0;
        // SAFETY: the buffer is live and as long as the length given.
        let n = unsafe {
            libc::epoll_wait(
                self.ep.as_raw_fd(),
                events.buf.as_mut_ptr(),
                events.buf.len().min(i32::MAX as usize) as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(0);
            }
            return Err(e);
        }
        events.len = n as usize;
        Ok(events.len)
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.ep.as_raw_fd()
    }
}

/// Milliseconds from `now` to `deadline`, rounded up, for [`Poller::wait`]; -1 without one.
pub fn timeout_ms(deadline: Option<Instant>, now: Instant) -> i32 {
    match deadline {
        None => -1,
        Some(t) => {
            let d = t.saturating_duration_since(now);
            d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
        }
    }
}

/// A nonblocking eventfd: a counter other threads bump to wake a waiter.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before being owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Make the descriptor readable (wakes every poller watching it).
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to our eventfd. A full counter (EAGAIN)
        // leaves it readable, which is all a wake-up needs.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reset the counter; whether it had been notified.
    pub fn drain(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live local.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        n == 8 && v > 0
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A set of signals.
fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block `signals` in the calling thread (threads spawned later inherit the mask), so that they
/// are delivered to a [`SignalFd`] only.
pub fn block_signals(signals: &[i32]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: `set` is initialised.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// One signal read from a [`SignalFd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigInfo {
    pub signo: i32,
    /// The descriptor the signal is about (`F_SETSIG` lease breaks), else 0.
    pub fd: i32,
}

/// A nonblocking signalfd for a set of (blocked) signals.
pub struct SignalFd(OwnedFd);

impl SignalFd {
    pub fn new(signals: &[i32]) -> io::Result<Self> {
        let set = sigset(signals);
        // SAFETY: a valid set; the result is checked before being owned.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(SignalFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The next pending signal, `None` when there is none.
    pub fn read(&self) -> Option<SigInfo> {
        // SAFETY: signalfd_siginfo is plain data; read fills one whole record or fails.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        // SAFETY: reads into a live local of the given size.
        let n = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                std::mem::size_of::<libc::signalfd_siginfo>(),
            )
        };
        (n as usize == std::mem::size_of::<libc::signalfd_siginfo>()).then_some(SigInfo {
            signo: info.ssi_signo as i32,
            fd: info.ssi_fd,
        })
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn eventfd_wakes_a_poller_with_its_token() {
        let p = Poller::new().unwrap();
        let e = EventFd::new().unwrap();
        p.add(e.as_raw_fd(), 42).unwrap();
        let mut ev = Events::with_capacity(4);
        assert_eq!(p.wait(&mut ev, 0).unwrap(), 0);
        e.notify();
        assert_eq!(p.wait(&mut ev, 1000).unwrap(), 1);
        let got: Vec<Event> = ev.iter().collect();
        assert_eq!(got[0].token, 42);
        assert!(got[0].readable);
        assert!(e.drain());
        assert!(!e.drain());
        assert_eq!(p.wait(&mut ev, 0).unwrap(), 0);
        p.delete(e.as_raw_fd()).unwrap();
        e.notify();
        assert_eq!(p.wait(&mut ev, 0).unwrap(), 0);
    }

    #[test]
    fn timeouts_round_up() {
        let now = Instant::now();
        assert_eq!(timeout_ms(None, now), -1);
        assert_eq!(timeout_ms(Some(now), now), 0);
        assert_eq!(timeout_ms(Some(now + Duration::from_micros(1)), now), 1);
        assert_eq!(timeout_ms(Some(now + Duration::from_millis(5)), now), 5);
        assert_eq!(timeout_ms(Some(now), now + Duration::from_millis(5)), 0);
    }
}
