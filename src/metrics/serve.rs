//! The metrics/status listener's driver: an engine [`Service`] hosted by the control engine
//! (`ringboot-ctl`, as `CtlService::Http`), over std::net sockets registered on the engine's
//! poller (level triggered, input only).
//!
//! Contract: [`HttpService::bind`] binds the TCP listener (so a bad `--metrics` fails at start);
//! the engine then drives it. Everything network-facing is bounded: at most [`MAX_CONNECTIONS`]
//! connections (one more is accepted and closed at once), each a sans-IO [`http::Connection`]
//! with its default [`http::Limits`] (head size, header/idle/send timeouts, requests per
//! connection), reads of at most [`READ_CHUNK`] bytes a wake-up, at most [`ACCEPT_BUDGET`]
//! accepts a wake-up. Each connection's deadline is an engine timer; a connection whose socket
//! buffer is full is retried every [`SEND_RETRY`] (the poller watches input only); after the
//! peer's end of input the connection is no longer watched (level triggering would spin). An
//! accept error other than "none waiting" (out of descriptors) pauses the listener for
//! [`ACCEPT_PAUSE`]. A 1 s timer ticks the status model. Nothing here sleeps or has a thread.

use super::http::{self, Connection};
use super::{Site, Status};
use crate::engine::{Io, Service};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections served at once; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// Bytes read from one connection per wake-up.
pub const READ_CHUNK: usize = 4096;
/// Connections accepted per wake-up (the rest wait for the next one).
pub const ACCEPT_BUDGET: usize = 64;
/// How soon a connection whose send buffer was full is tried again.
pub const SEND_RETRY: Duration = Duration::from_millis(10);
/// How long the listener rests after an accept error (out of descriptors).
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How often the status model is ticked.
pub const TICK: Duration = Duration::from_secs(1);

/// Poller subs and timer keys: 0 is the listener (and the tick), 1 the listener's pause,
/// `CONN_BASE + i` connection slot `i`.
const SUB_LISTENER: u32 = 0;
const KEY_TICK: u64 = 0;
const KEY_RESUME: u64 = 1;
const CONN_BASE: u32 = 2;

struct Conn {
    stream: TcpStream,
    machine: Connection,
    /// The peer ended its input: the stream is no longer watched.
    eof: bool,
}

/// The metrics/status HTTP listener as a service of the control engine.
pub struct HttpService {
    listener: TcpListener,
    local: SocketAddr,
    status: Arc<Status>,
    site: Site,
    conns: Vec<Option<Conn>>,
    buf: Box<[u8]>,
}

impl HttpService {
    /// Bind `addr` (nonblocking) to serve `status`.
    pub fn bind(addr: SocketAddr, status: Arc<Status>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        Ok(HttpService {
            listener,
            local,
            site: Site::new(status.clone()),
            status,
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn accept(&mut self, io: &mut Io<'_>, now: Instant) -> io::Result<()> {
        for _ in 0..ACCEPT_BUDGET {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let Some(i) = self.conns.iter().position(Option::is_none) else {
                        drop(stream);
                        continue;
                    };
                    if stream.set_nonblocking(true).is_err()
                        || io.watch(stream.as_raw_fd(), CONN_BASE + i as u32).is_err()
                    {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.conns[i] = Some(Conn {
                        stream,
                        machine: Connection::new(now, http::Limits::default()),
                        eof: false,
                    });
                    self.drive(io, i, now, false);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Out of descriptors, or a connection reset before accept: rest a while (the
                // listener stays readable, and level triggering would spin).
                Err(_) => {
                    io.unwatch(self.listener.as_raw_fd());
                    io.arm(KEY_RESUME, now + ACCEPT_PAUSE);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Read (when `read`), answer and write what connection `i` allows now, then arm its timer
    /// or drop it.
    fn drive(&mut self, io: &mut Io<'_>, i: usize, now: Instant, read: bool) {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        if read && !c.eof {
            match c.stream.read(&mut self.buf) {
                Ok(0) => c.eof = true,
                Ok(n) => c.machine.handle_bytes(now, &self.buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => c.eof = true,
            }
            if c.eof {
                io.unwatch(c.stream.as_raw_fd());
                c.machine.handle_eof(now);
            }
        }
        let mut blocked = false;
        loop {
            c.machine.serve(now, &mut self.site);
            let Some(out) = c.machine.poll_transmit() else {
                break;
            };
            match c.stream.write(out) {
                Ok(0) => {
                    blocked = true;
                    break;
                }
                Ok(n) => c.machine.handle_sent(now, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(_) => {
                    c.machine.handle_eof(now);
                    c.machine.handle_timeout(now + Duration::from_secs(3600));
                    break;
                }
            }
        }
        if c.machine.poll_timeout().is_some_and(|t| now >= t) {
            c.machine.handle_timeout(now);
        }
        let key = (CONN_BASE as usize + i) as u64;
        if c.machine.is_closed() {
            if !c.eof {
                io.unwatch(c.stream.as_raw_fd());
            }
            io.cancel(key);
            self.conns[i] = None;
            return;
        }
        let retry = blocked.then(|| now + SEND_RETRY);
        match (c.machine.poll_timeout(), retry) {
            (Some(t), Some(r)) => io.arm(key, t.min(r)),
            (Some(t), None) | (None, Some(t)) => io.arm(key, t),
            (None, None) => io.cancel(key),
        }
    }
}

impl Service for HttpService {
    fn name(&self) -> &'static str {
        "metrics listener"
    }

    fn start(&mut self, io: &mut Io<'_>, now: Instant) -> io::Result<()> {
        io.watch(self.listener.as_raw_fd(), SUB_LISTENER)?;
        self.status.tick(now);
        io.arm(KEY_TICK, now + TICK);
        Ok(())
    }

    fn on_readable(&mut self, io: &mut Io<'_>, sub: u32, now: Instant) -> io::Result<()> {
        match sub.checked_sub(CONN_BASE) {
            None => self.accept(io, now),
            Some(i) => {
                self.drive(io, i as usize, now, true);
                Ok(())
            }
        }
    }

    fn on_timer(&mut self, io: &mut Io<'_>, key: u64, now: Instant) -> io::Result<()> {
        match key {
            KEY_TICK => {
                self.status.tick(now);
                io.arm(KEY_TICK, now + TICK);
            }
            KEY_RESUME => {
                io.watch(self.listener.as_raw_fd(), SUB_LISTENER)?;
            }
            k => self.drive(io, (k - CONN_BASE as u64) as usize, now, false),
        }
        Ok(())
    }

    fn shutdown(&mut self, _now: Instant) {
        self.conns.iter_mut().for_each(|c| *c = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::metrics::{Info, Registry};

    fn status() -> Arc<Status> {
        let registry = Arc::new(Registry::new(Info {
            version: "0.1.0".into(),
            backend: "epoll".into(),
            workers: 1,
        }));
        Arc::new(Status::new(registry, Instant::now()))
    }

    /// The service on an engine thread; its address and the engine's stopper and thread.
    fn start() -> (
        SocketAddr,
        crate::engine::Stopper,
        std::thread::JoinHandle<()>,
    ) {
        let svc = HttpService::bind("127.0.0.1:0".parse().unwrap(), status()).unwrap();
        let addr = svc.local_addr();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let mut engine: Engine<HttpService> = Engine::new().unwrap();
            engine.add(svc).unwrap();
            tx.send(engine.stopper()).unwrap();
            engine.run(|_| crate::engine::Flow::Continue).unwrap();
        });
        (addr, rx.recv().unwrap(), t)
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// Requests on one kept-alive connection are answered, large bodies included, and the
    /// connection closes when the client ends its input.
    #[test]
    fn serves_requests_on_the_engine() {
        let (addr, stop, t) = start();
        let mut s = connect(addr);
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("ringboot_info"), "{text}");
        stop.stop();
        t.join().unwrap();
    }

    /// Past [`MAX_CONNECTIONS`] open connections, one more is closed at once; the others are
    /// still served.
    #[test]
    fn connections_are_capped() {
        let (addr, stop, t) = start();
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(addr)).collect();
        // Accepted in order after the held ones, so the extra one finds every slot taken. It
        // is closed before the header timeout (10 s) could have closed it.
        let mut extra = connect(addr);
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        let r = extra.read(&mut b);
        assert!(
            matches!(&r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
            "a connection past the cap was not closed: {r:?}"
        );
        let mut s = &held[0];
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        stop.stop();
        t.join().unwrap();
    }
}
