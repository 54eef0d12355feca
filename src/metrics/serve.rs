//! The metrics/status listener's driver: one thread, `ringboot-http`, with std::net.
//!
//! Contract: [`spawn`] binds a TCP listener and runs it on its own thread until the stop flag is
//! set. Everything network-facing is bounded: at most [`MAX_CONNECTIONS`] connections (one more
//! is accepted and closed at once), each a sans-IO [`http::Connection`] with its default
//! [`http::Limits`] (head size, header/idle/send timeouts, requests per connection), reads of at
//! most [`READ_CHUNK`] bytes a turn. Sockets are nonblocking; when a turn did nothing the
//! thread sleeps [`IDLE_SLEEP`] (a scrape waits at most that long). It also ticks the status
//! model once a second. The engine will host this listener on its control thread later: this
//! file is the only one that changes then.

use super::http::{self, Connection};
use super::{Site, Status};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connections served at once; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// Bytes read from one connection per turn.
pub const READ_CHUNK: usize = 4096;
/// How long the thread sleeps after a turn with nothing to do.
pub const IDLE_SLEEP: Duration = Duration::from_millis(20);

/// Bind `addr` and serve `status` on thread `ringboot-http` until `stop` is set. Returns the
/// bound address (port 0 resolved) and the thread.
pub fn spawn(
    addr: SocketAddr,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let thread = std::thread::Builder::new()
        .name("ringboot-http".into())
        .spawn(move || run(listener, status, &stop))?;
    Ok((local, thread))
}

struct Conn {
    stream: TcpStream,
    machine: Connection,
}

fn run(listener: TcpListener, status: Arc<Status>, stop: &AtomicBool) {
    let mut site = Site::new(status.clone());
    let mut conns: Vec<Conn> = Vec::with_capacity(MAX_CONNECTIONS);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut next_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut busy = false;
        if now >= next_tick {
            status.tick(now);
            next_tick = now + Duration::from_secs(1);
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    busy = true;
                    if conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    conns.push(Conn {
                        stream,
                        machine: Connection::new(now, http::Limits::default()),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors or a connection reset before accept: try again next turn.
                Err(_) => break,
            }
        }
        for c in &mut conns {
            busy |= turn(c, now, &mut site, &mut buf);
        }
        conns.retain(|c| !c.machine.is_closed());
        if !busy {
            std::thread::sleep(IDLE_SLEEP);
        }
    }
}

/// Read, answer and write what one connection allows now; whether anything happened.
fn turn(c: &mut Conn, now: Instant, site: &mut Site, buf: &mut [u8]) -> bool {
    let mut busy = false;
    match c.stream.read(buf) {
        Ok(0) => c.machine.handle_eof(now),
        Ok(n) => {
            busy = true;
            c.machine.handle_bytes(now, &buf[..n]);
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) => {}
        Err(_) => c.machine.handle_eof(now),
    }
    loop {
        c.machine.serve(now, site);
        let Some(out) = c.machine.poll_transmit() else {
            break;
        };
        match c.stream.write(out) {
            Ok(0) => break,
            Ok(n) => {
                busy = true;
                c.machine.handle_sent(now, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
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
    busy
}
