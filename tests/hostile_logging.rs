//! Logging must never stall the hot path (issue 8, defect 10): with stderr on a pipe that nobody
//! reads, a flood of requests that each log lines fills the pipe; downloads must go on (the log
//! writer drops and counts lines instead of blocking a worker), and once the pipe is drained the
//! server says that lines were dropped.
//!
//! The flood is made of complete transfers of a tiny file from many loopback source addresses
//! (each logs "transfer started" at debug and "transfer finished" at info: per-transfer lines,
//! not per-datagram ones that a rate limit would fold) plus requests for missing files and
//! retransmitted requests (per-datagram lines at debug/trace, rate-limited or not). `-vv` turns
//! all of them on.

mod common;

use common::*;
use ringboot::proto::tftp::packet::Packet;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The pipe's capacity: one page, so an old build blocks after a few lines.
const PIPE_BYTES: i32 = 4096;
/// Complete tiny transfers in the flood: two or three lines each, over the writer's 16,384-line
/// buffer even if every per-datagram line is rate-limited.
const FLOOD_TRANSFERS: u64 = 10_000;
/// Requests for missing files sent without waiting (one or two lines each, unless rate-limited).
const FLOOD_MISSES: u64 = 20_000;
/// How long the flood may run at most.
const FLOOD_LIMIT: Duration = Duration::from_secs(90);

/// A server whose stderr is a pipe we stop reading after `listening on`.
struct HeldServer {
    child: Child,
    addr: SocketAddr,
    /// The read end, not read while held (lines already buffered stay in the reader).
    stderr: Option<BufReader<ChildStderr>>,
    /// Everything read from stderr (startup lines now, the rest once drained).
    lines: Arc<Mutex<Vec<String>>>,
}

impl HeldServer {
    fn start(files: &TestRoot, extra: &[&str]) -> HeldServer {
        for _attempt in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
            let mut cmd = Command::new(ringboot_bin());
            cmd.args(["serve", "--root"])
                .arg(files.root())
                .args(["--listen", &addr.to_string(), "--io-backend", &backend()])
                .args(extra)
                .env("NO_COLOR", "1")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn().expect("start ringboot");
            let stderr = child.stderr.take().unwrap();
            // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own.
            let r = unsafe { libc::fcntl(stderr.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
            assert!(
                r >= PIPE_BYTES,
                "F_SETPIPE_SZ: {}",
                std::io::Error::last_os_error()
            );
            // Read up to `listening on` on a helper thread (bounded), then hand the reader back.
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut seen = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => {
                            let _ = tx.send((None, seen));
                            return;
                        }
                        Ok(_) => {
                            seen.push(line.trim_end().to_owned());
                            if line.contains("listening on") {
                                let _ = tx.send((Some(r), seen));
                                return;
                            }
                        }
                    }
                }
            });
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok((Some(reader), seen)) => {
                    return HeldServer {
                        child,
                        addr,
                        stderr: Some(reader),
                        lines: Arc::new(Mutex::new(seen)),
                    }
                }
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let seen = other.map(|(_, s)| s).unwrap_or_default().join("\n");
                    if seen.contains("in use") || seen.contains("os error 98") {
                        continue;
                    }
                    panic!("ringboot did not start:\n{seen}");
                }
            }
        }
        panic!("no free port in 5 attempts");
    }

    /// Bytes waiting in the stderr pipe.
    fn pipe_bytes(&self) -> i32 {
        let fd = self.stderr.as_ref().expect("held").get_ref().as_raw_fd();
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        assert_eq!(r, 0, "FIONREAD: {}", std::io::Error::last_os_error());
        n
    }

    /// Start reading stderr for good.
    fn drain(&mut self) {
        let mut r = self.stderr.take().expect("held");
        let lines = self.lines.clone();
        thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => lines.lock().unwrap().push(line.trim_end().to_owned()),
                }
            }
        });
    }

    fn wait_for_line(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return Some(l.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn tail(&self, n: usize) -> String {
        let l = self.lines.lock().unwrap();
        l[l.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for HeldServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP socket on loopback address number `n` of 127.2.0.0/16 (a source per flood transfer, as
/// on a busy segment: per-source limits do not cut the flood short).
fn source_socket(n: u64) -> UdpSocket {
    let n = n % 62_500;
    let ip = Ipv4Addr::new(127, 2, (n / 250) as u8, (n % 250) as u8 + 1);
    let s = UdpSocket::bind((ip, 0)).expect("bind a loopback source");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

#[derive(Default)]
struct FloodCount {
    transfers: AtomicU64,
    no_answer: AtomicU64,
    misses: AtomicU64,
}

/// Tiny transfers, one after another from fresh sockets: RRQ, DATA 1, ACK 1 (and the RRQ once
/// more before it, as a client that retransmits: a `duplicate request` trace line).
fn flood_transfers(
    server: SocketAddr,
    stop: Arc<AtomicBool>,
    n0: u64,
    step: u64,
    count: Arc<FloodCount>,
) {
    let rrq = rrq(b"tiny", &[]);
    let end = Instant::now() + FLOOD_LIMIT;
    let mut buf = [0u8; 1024];
    let mut n = n0;
    while !stop.load(Ordering::Relaxed)
        && Instant::now() < end
        && count.transfers.load(Ordering::Relaxed) < FLOOD_TRANSFERS
    {
        n += step;
        let s = source_socket(n);
        s.send_to(&rrq, server).expect("send RRQ");
        s.send_to(&rrq, server).expect("send RRQ");
        let got = loop {
            match s.recv_from(&mut buf) {
                Ok((len, from)) => match Packet::parse(&buf[..len]) {
                    Ok(Packet::Data { block, .. }) if block.0 == 1 => break Some(from),
                    _ => continue,
                },
                Err(_) => break None,
            }
        };
        match got {
            Some(tid) => {
                let _ = s.send_to(&ack(1), tid);
                count.transfers.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                count.no_answer.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Requests for files that do not exist, sent without waiting for the ERROR.
fn flood_misses(server: SocketAddr, stop: Arc<AtomicBool>, count: Arc<FloodCount>) {
    let socks: Vec<UdpSocket> = (0..16).map(|i| source_socket(100 + i)).collect();
    let end = Instant::now() + FLOOD_LIMIT;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end && i < FLOOD_MISSES {
        let name = format!("missing-{i}.bin");
        let _ = socks[(i % 16) as usize].send_to(&rrq(name.as_bytes(), &[]), server);
        i += 1;
        count.misses.store(i, Ordering::Relaxed);
        if i % 64 == 0 {
            // Keep the listening socket's receive buffer from overflowing: lines, not drops.
            thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn a_log_pipe_nobody_reads_does_not_stall_downloads() {
    bounded(Duration::from_secs(240), || {
        let files = TestRoot::new();
        files.add("tiny", pattern(8));
        let big = Arc::new(files.add_random("big.bin", 4 << 20));
        let mut srv = HeldServer::start(&files, &["--workers", "1", "-vv"]);
        let server = srv.addr;

        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(FloodCount::default());
        let mut flood = Vec::new();
        for t in 0..4 {
            let (stop, count) = (stop.clone(), count.clone());
            flood.push(thread::spawn(move || {
                flood_transfers(server, stop, t, 4, count)
            }));
        }
        {
            let (stop, count) = (stop.clone(), count.clone());
            flood.push(thread::spawn(move || flood_misses(server, stop, count)));
        }

        // The pipe fills up (nobody reads it).
        let deadline = Instant::now() + Duration::from_secs(30);
        while srv.pipe_bytes() < PIPE_BYTES - 512 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let queued = srv.pipe_bytes();
        assert!(
            queued >= PIPE_BYTES - 512,
            "the flood did not fill the log pipe ({queued} bytes queued)"
        );

        // A real download while the pipe is full and the flood goes on.
        let t = Instant::now();
        let got = RawClient::new(server).download(
            &DownloadSpec::new("big.bin")
                .blksize(1428)
                .windowsize(8)
                .verify(big.clone()),
        );
        let took = t.elapsed();
        let queued_after = srv.pipe_bytes();
        if got.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        // The flood runs to its end (bounded) so that the writer's buffer overflows too.
        for f in flood {
            f.join().expect("flood thread");
        }
        let (transfers, no_answer, misses) = (
            count.transfers.load(Ordering::Relaxed),
            count.no_answer.load(Ordering::Relaxed),
            count.misses.load(Ordering::Relaxed),
        );
        eprintln!(
            "flood: {transfers} tiny transfers ({no_answer} unanswered), {misses} misses; \
             download {:?} in {took:?}; pipe {queued} bytes before, {queued_after} after",
            got.as_ref().map(|d| d.len)
        );
        if let Err(e) = &got {
            panic!(
                "4 MiB download failed while the log pipe was full ({e:?}): logging blocks \
                 the worker (flood: {transfers} transfers, {no_answer} unanswered, {misses} misses)"
            );
        }
        assert!(
            queued_after >= PIPE_BYTES - 512,
            "the pipe was drained during the download ({queued_after} bytes): test invalid"
        );

        // Now read the pipe: the writer catches up and reports what it dropped.
        srv.drain();
        let warned = srv.wait_for_line("lines were dropped", Duration::from_secs(30));
        eprintln!("after draining: {warned:?}");
        assert!(
            warned.is_some(),
            "no `lines were dropped` warning after the pipe was drained \
             ({transfers} transfers, {misses} misses); last lines:\n{}",
            srv.tail(20)
        );
        // Every flood transfer is accounted for: its `transfer finished` line was written, or
        // counted among the dropped lines.
        let lines = srv.lines.lock().unwrap().clone();
        let finished = lines
            .iter()
            .filter(|l| l.contains("transfer finished") && l.contains("\"tiny\""))
            .count() as u64;
        let field = |l: &str, key: &str| -> Option<u64> {
            let v = l.split(key).nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        };
        let reports: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("lines were dropped"))
            .collect();
        // The reports themselves go through the full buffer: the first to get through must
        // carry the total since start (older builds only gave the count since the previous,
        // possibly dropped, report).
        let total = reports
            .iter()
            .filter_map(|l| field(l, " total="))
            .max()
            .unwrap_or(0);
        eprintln!("{finished} `transfer finished` lines seen; {total} lines reported dropped");
        assert!(
            finished + total >= transfers,
            "{transfers} flood transfers but only {finished} `transfer finished` lines written \
             and {total} lines reported dropped: the drop count understates; reports:\n{}",
            reports
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        // And the server still serves.
        raw_get_addr(server, "tiny");
        assert!(
            srv.child.try_wait().expect("try_wait").is_none(),
            "server exited"
        );
    });
}

fn raw_get_addr(server: SocketAddr, name: &str) {
    RawClient::new(server)
        .download(&DownloadSpec::new(name))
        .unwrap_or_else(|e| panic!("download of {name} after the flood failed: {e:?}"));
}
