//! Integration-test harness: start the real `ringboot` binary, drive it with real third-party
//! clients (tftp-hpa, atftp, curl, busybox) and with a raw-UDP TFTP client for what no client can
//! produce.
//!
//! Contract:
//! - Every test body runs under [`bounded`]: it fails instead of hanging. Every child process (the
//!   server, a client) is killed by its own PID when its guard drops, gets SIGKILL if the test
//!   process dies (`PR_SET_PDEATHSIG`), and every network wait has a deadline.
//! - [`Server::start`] picks a free loopback port, waits for the `listening on` line, and keeps
//!   draining stdout and stderr into a buffer that tests can search ([`Server::log_lines`]).
//! - The I/O backend comes from `RINGBOOT_TEST_BACKEND` (`uring` when unset), so CI runs the same
//!   suites once per backend.
//! - A missing third-party client skips the test with a message, except under `CI`, where it fails.
//! - Test files hold deterministic pseudo-random bytes ([`pattern`]); downloads are compared by
//!   SHA-256 against the source bytes.

#![allow(dead_code)]

pub mod http;
pub mod loadtest;
pub mod netns;
pub mod special;

mod clients;
mod raw;
// Not every suite uses every part of the harness.
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use raw::*;

use ringboot::proto::tftp::client::{
    Client as TftpClient, ClientConfig, ClientError, Event as ClientEvent,
};
use ringboot::proto::tftp::packet::{emit_ack, emit_error, ErrorCode, Mode, OptionWriter, Packet};
use ringboot::proto::tftp::BlockNum;
use ringboot::proto::Transmit;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The limit for one whole test.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);
/// How long the server may take to print `listening on`.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);
/// How long one external client may run.
pub const CLIENT_LIMIT: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------------------------
// Bounding tests and child processes
// ---------------------------------------------------------------------------------------------

/// Run a test body on its own thread and fail the test if it runs longer than `limit`.
/// A panic in the body is re-raised here with its original payload.
pub fn bounded<F: FnOnce() + Send + 'static>(limit: Duration, body: F) {
    let (tx, rx) = mpsc::channel();
    let name = thread::current().name().unwrap_or("test").to_string();
    let handle = thread::Builder::new()
        .name(name)
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let _ = tx.send(r);
        })
        .expect("spawn test thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => {
            let _ = handle.join();
        }
        Ok(Err(payload)) => std::panic::resume_unwind(payload),
        Err(_) => panic!("test did not finish within {limit:?} (hung transfer or client?)"),
    }
}

/// Make a child die with us: SIGKILL when the thread that spawned it exits (the test thread, or
/// the whole test process if it is killed).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The I/O backend the server under test uses: `RINGBOOT_TEST_BACKEND`, default `uring`.
pub fn backend() -> String {
    match std::env::var("RINGBOOT_TEST_BACKEND") {
        Ok(b) if !b.is_empty() => b,
        _ => "uring".to_string(),
    }
}

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn under_ci() -> bool {
    netns::ci()
}

// ---------------------------------------------------------------------------------------------
// Test content
// ---------------------------------------------------------------------------------------------

/// `size` deterministic pseudo-random bytes (the crate's one generator, seeded by the size).
pub fn pattern(size: usize) -> Vec<u8> {
    let mut rng = ringboot::proto::rng::Rng::from_seed(size as u64);
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(size);
    out
}

pub fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Assert that `got` is byte-identical to `want`, comparing SHA-256 (with sizes in the message).
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    let (g, w) = (sha256(got), sha256(want));
    if g != w {
        let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: content differs: got {} bytes sha256 {g}, want {} bytes sha256 {w}; \
             first differing byte at {first_diff:?}",
            got.len(),
            want.len()
        );
    }
}

/// Assert that the file at `path` is byte-identical to `want`.
pub fn assert_file_same(what: &str, path: &Path, want: &[u8]) {
    let got = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{what}: cannot read downloaded {}: {e}", path.display()));
    assert_same(what, &got, want);
}

/// A temporary tree: `base/root` is what the server serves; `base` itself holds files "outside"
/// the root for path-escape tests; `base/out` receives downloads.
pub struct TestRoot {
    base: tempfile::TempDir,
}

impl Default for TestRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl TestRoot {
    pub fn new() -> Self {
        let base = tempfile::Builder::new()
            .prefix("ringboot-it-")
            .tempdir()
            .expect("create tempdir");
        std::fs::create_dir(base.path().join("root")).expect("create root");
        std::fs::create_dir(base.path().join("out")).expect("create out");
        TestRoot { base }
    }

    /// The directory the server serves.
    pub fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    /// The parent of the root (outside what is served).
    pub fn base(&self) -> &Path {
        self.base.path()
    }

    /// A fresh path for a download.
    pub fn out(&self, name: &str) -> PathBuf {
        self.base.path().join("out").join(name)
    }

    /// Write `bytes` at `rel` under the root (creating directories); returns the bytes.
    pub fn add(&self, rel: &str, bytes: Vec<u8>) -> Vec<u8> {
        let p = self.root().join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("create dirs");
        }
        std::fs::write(&p, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        bytes
    }

    /// Write `size` pattern bytes at `rel` under the root; returns them.
    pub fn add_random(&self, rel: &str, size: usize) -> Vec<u8> {
        self.add(rel, pattern(size))
    }

    /// Write `bytes` at `rel` relative to the base (outside the root).
    pub fn add_outside(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.base.path().join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("create dirs");
        }
        std::fs::write(&p, bytes).expect("write outside file");
        p
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// Path of the binary under test: `RINGBOOT_TEST_BIN` when set (to show that a regression test
/// fails on an older build), else the one cargo built.
pub fn ringboot_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var("RINGBOOT_TEST_BIN") {
        Ok(p) if !p.is_empty() => p,
        _ => env!("CARGO_BIN_EXE_ringboot").to_owned(),
    })
}

/// A free UDP port on 127.0.0.1 (bound and released; the server start retries on a race).
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind probe socket");
    s.local_addr().expect("local_addr").port()
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    listening: bool,
    /// Number of output streams (stdout, stderr) that reached EOF.
    closed: u8,
}

type SharedLog = Arc<(Mutex<LogState>, Condvar)>;

/// Remove ANSI escape sequences (colours) so log lines can be matched as text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            it.next();
            for c in it.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The level of a tracing log line (`"WARN"`, `"ERROR"`, ...) in text or JSON format.
pub fn log_level(line: &str) -> Option<&'static str> {
    const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];
    let t = line.trim_start();
    if t.starts_with('{') {
        let i = t.find("\"level\":\"")? + 9;
        let rest = &t[i..];
        let lvl = &rest[..rest.find('"')?];
        return LEVELS.iter().copied().find(|l| *l == lvl);
    }
    // Text format: `2024-01-01T00:00:00.000000Z  WARN target: message`; the level is among the
    // first tokens (timestamps may be disabled).
    t.split_whitespace()
        .take(3)
        .find_map(|tok| LEVELS.iter().copied().find(|l| *l == tok))
}

fn drain<R: Read + Send + 'static>(r: R, log: SharedLog) {
    thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                    let (m, cv) = &*log;
                    let mut st = m.lock().unwrap();
                    if line.contains("listening on") {
                        st.listening = true;
                    }
                    st.lines.push(line);
                    cv.notify_all();
                }
            }
        }
        let (m, cv) = &*log;
        m.lock().unwrap().closed += 1;
        cv.notify_all();
    });
}

/// A running `ringboot serve`, killed (by its PID) on drop. Owns its [`TestRoot`].
pub struct Server {
    child: Child,
    addr: SocketAddr,
    log: SharedLog,
    pub files: TestRoot,
    pub args: Vec<String>,
}

impl Server {
    /// Start `ringboot serve --root <root> --listen 127.0.0.1:<free port> --io-backend <backend>`
    /// plus `extra`, and wait for `listening on`.
    pub fn start(files: TestRoot, extra: &[&str]) -> Server {
        Self::start_with(files, extra, &|_| {})
    }

    /// [`start`](Self::start) over a root holding one file, `name`, of `size` patterned bytes:
    /// the server and the file's bytes.
    pub fn with_random(name: &str, size: usize, extra: &[&str]) -> (Server, Vec<u8>) {
        let root = TestRoot::new();
        let bytes = root.add_random(name, size);
        (Server::start(root, extra), bytes)
    }

    /// [`start`](Self::start), with `prepare` applied to the command first (a `pre_exec` that
    /// lowers `RLIMIT_NOFILE`, say).
    pub fn start_with(files: TestRoot, extra: &[&str], prepare: &dyn Fn(&mut Command)) -> Server {
        let mut last_log = Vec::new();
        for _attempt in 0..5 {
            let port = free_udp_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut args: Vec<String> = vec![
                "serve".into(),
                "--root".into(),
                files.root().to_str().expect("utf-8 tempdir").into(),
                "--listen".into(),
                addr.to_string(),
                "--io-backend".into(),
                backend(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut cmd = Command::new(ringboot_bin());
            cmd.args(&args)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            die_with_parent(&mut cmd);
            prepare(&mut cmd);
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", ringboot_bin()));
            let log: SharedLog = Arc::new((Mutex::new(LogState::default()), Condvar::new()));
            drain(child.stdout.take().unwrap(), log.clone());
            drain(child.stderr.take().unwrap(), log.clone());

            let deadline = Instant::now() + STARTUP_LIMIT;
            let (listening, lines) = {
                let (m, cv) = &*log;
                let mut st = m.lock().unwrap();
                while !st.listening && st.closed < 2 && Instant::now() < deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    st = cv
                        .wait_timeout(st, left.min(Duration::from_millis(100)))
                        .unwrap()
                        .0;
                }
                (st.listening, st.lines.clone())
            };
            if listening {
                // When the server names its backend, it must be the one asked for: CI's second
                // run must really exercise the fallback.
                let want = format!("backend={}", backend());
                if let Some(l) = lines.iter().find(|l| l.contains("listening on")) {
                    if l.contains("backend=") && !l.contains(&want) {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("asked for --io-backend {}, server says: {l}", backend());
                    }
                }
                return Server {
                    child,
                    addr,
                    log,
                    files,
                    args,
                };
            }
            let _ = child.kill();
            let status = child.wait();
            let text = lines.join("\n");
            if text.contains("in use")
                || text.contains("EADDRINUSE")
                || text.contains("os error 98")
            {
                last_log = lines;
                continue; // lost the port to someone else: pick another one
            }
            panic!(
                "ringboot did not print `listening on` within {STARTUP_LIMIT:?} \
                 (exit: {status:?}); args: {args:?}\n--- server output ---\n{text}"
            );
        }
        panic!(
            "ringboot could not bind a free port in 5 attempts\n{}",
            last_log.join("\n")
        );
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every line the server wrote so far (ANSI colours removed).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().lines.clone()
    }

    /// Log lines at WARN or ERROR level.
    pub fn warnings(&self) -> Vec<String> {
        self.log_lines()
            .into_iter()
            .filter(|l| matches!(log_level(l), Some("WARN" | "ERROR")))
            .collect()
    }

    /// Wait until a log line contains `needle` (true) or `limit` passes (false).
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (m, cv) = &*self.log;
        let mut st = m.lock().unwrap();
        loop {
            if st.lines.iter().any(|l| l.contains(needle)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait up to `limit` for the server to exit on its own; its status, or `None`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the output threads collect the last lines.
                let (m, cv) = &*self.log;
                let mut g = m.lock().unwrap();
                while g.closed < 2 && Instant::now() < deadline {
                    g = cv.wait_timeout(g, Duration::from_millis(50)).unwrap().0;
                }
                return Some(st);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Panic unless the server process is still running.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "ringboot exited unexpectedly ({status})\n--- server output ---\n{}",
                self.log_lines().join("\n")
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let lines = self.log_lines();
            let skip = lines.len().saturating_sub(80);
            eprintln!(
                "--- ringboot {:?} output (last {} of {} lines) ---\n{}\n--- end ---",
                self.args,
                lines.len() - skip,
                lines.len(),
                lines[skip..].join("\n")
            );
        }
    }
}
