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

// ---------------------------------------------------------------------------------------------
// Third-party clients
// ---------------------------------------------------------------------------------------------

/// Whether `program` is on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// The real TFTP clients the suites drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// tftp-hpa's `tftp` (no option support: RFC 1350 only, 512-byte blocks).
    TftpHpa,
    /// `atftp` (blksize, windowsize, tsize).
    Atftp,
    /// `curl` with `tftp://` URLs (blksize, tsize).
    Curl,
    /// `busybox tftp` (blksize).
    Busybox,
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::TftpHpa => "tftp (tftp-hpa)",
            Client::Atftp => "atftp",
            Client::Curl => "curl",
            Client::Busybox => "busybox tftp",
        }
    }

    fn installed(self) -> bool {
        match self {
            Client::TftpHpa => on_path("tftp"),
            Client::Atftp => on_path("atftp"),
            Client::Curl => {
                on_path("curl")
                    && Command::new("curl")
                        .arg("--version")
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).contains("tftp"))
                        .unwrap_or(false)
            }
            Client::Busybox => {
                on_path("busybox")
                    && Command::new("busybox")
                        .arg("--list")
                        .output()
                        .map(|o| {
                            String::from_utf8_lossy(&o.stdout)
                                .lines()
                                .any(|l| l == "tftp")
                        })
                        .unwrap_or(false)
            }
        }
    }

    /// True when the client can be used. When it is missing: prints "skipped" and returns false,
    /// or panics under CI, where every client must be installed.
    pub fn available(self) -> bool {
        if self.installed() {
            return true;
        }
        if under_ci() {
            panic!("{} is not installed (required under CI)", self.name());
        }
        eprintln!("skipped: {} not installed", self.name());
        false
    }
}

/// What to ask a client for.
#[derive(Clone, Debug, Default)]
pub struct GetOpts {
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    /// Ask for tsize (atftp: `tsize 0`).
    pub tsize: bool,
    /// Netascii instead of octet (tftp-hpa only).
    pub netascii: bool,
    /// Send no options at all (curl `--tftp-no-options`).
    pub no_options: bool,
}

impl GetOpts {
    /// For clients that have no windowsize option and speak octet mode only.
    fn assert_octet_without_windowsize(&self, client: &str) {
        assert!(
            self.windowsize.is_none() && !self.netascii,
            "{client}: no windowsize"
        );
    }

    pub fn blksize(n: u16) -> Self {
        GetOpts {
            blksize: Some(n),
            ..Default::default()
        }
    }
}

/// Output of an external command.
#[derive(Debug)]
pub struct ClientRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ClientRun {
    pub fn output(&self) -> String {
        format!(
            "status {}; stdout: {:?}; stderr: {:?}",
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// Run `cmd` (with `stdin` fed to it) and kill it by PID if it outlives `limit`.
pub fn run_with_timeout(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> ClientRun {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let collect = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for client") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            );
            panic!("{what} hung for {limit:?} and was killed; stdout: {o:?}; stderr: {e:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    ClientRun {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// Percent-encode a TFTP filename for a `tftp://` URL path (keeps `/`).
fn url_path(remote: &str) -> String {
    let mut s = String::new();
    for b in remote.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Download `remote` from the server on 127.0.0.1:`port` into `local` with `client`.
/// `Err` carries the client's output when it reported a failure.
pub fn client_get(
    client: Client,
    port: u16,
    remote: &str,
    local: &Path,
    opts: &GetOpts,
) -> Result<ClientRun, String> {
    let _ = std::fs::remove_file(local);
    let local_s = local.to_str().expect("utf-8 path");
    let port_s = port.to_string();
    let run = match client {
        Client::TftpHpa => {
            assert!(
                opts.blksize.is_none() && opts.windowsize.is_none() && !opts.tsize,
                "tftp-hpa's client sends no options"
            );
            let mut cmd = Command::new("tftp");
            let mode = if opts.netascii { "ascii" } else { "binary" };
            cmd.args([
                "-m",
                mode,
                "127.0.0.1",
                &port_s,
                "-c",
                "get",
                remote,
                local_s,
            ]);
            run_with_timeout(cmd, None, CLIENT_LIMIT)
        }
        Client::Atftp => {
            assert!(!opts.netascii, "atftp: octet only in these tests");
            let mut cmd = Command::new("atftp");
            cmd.args(["--get", "-r", remote, "-l", local_s]);
            if let Some(b) = opts.blksize {
                cmd.args(["--option", &format!("blksize {b}")]);
            }
            if let Some(w) = opts.windowsize {
                cmd.args(["--option", &format!("windowsize {w}")]);
            }
            if opts.tsize {
                cmd.args(["--option", "tsize 0"]);
            }
            cmd.args(["127.0.0.1", &port_s]);
            run_with_timeout(cmd, None, CLIENT_LIMIT)
        }
        Client::Curl => {
            opts.assert_octet_without_windowsize("curl");
            let mut cmd = Command::new("curl");
            cmd.args(["-s", "-S", "--max-time", "40", "-o", local_s]);
            if opts.no_options {
                cmd.arg("--tftp-no-options");
            }
            if let Some(b) = opts.blksize {
                cmd.args(["--tftp-blksize", &b.to_string()]);
            }
            cmd.arg(format!("tftp://127.0.0.1:{port}/{}", url_path(remote)));
            run_with_timeout(cmd, None, CLIENT_LIMIT)
        }
        Client::Busybox => {
            opts.assert_octet_without_windowsize("busybox");
            let mut cmd = Command::new("busybox");
            cmd.args(["tftp", "-g", "-r", remote, "-l", local_s]);
            if let Some(b) = opts.blksize {
                cmd.args(["-b", &b.to_string()]);
            }
            cmd.args(["127.0.0.1", &port_s]);
            run_with_timeout(cmd, None, CLIENT_LIMIT)
        }
    };
    // tftp-hpa exits 0 even when the transfer failed: look at what it printed.
    let text = format!("{}{}", run.stdout, run.stderr);
    let reported = text.contains("Error code") || text.contains("timed out");
    if !run.status.success() || reported {
        return Err(format!("{} failed: {}", client.name(), run.output()));
    }
    Ok(run)
}

/// Download with `client` and assert the result equals `want`.
pub fn check_get(client: Client, srv: &Server, remote: &str, opts: &GetOpts, want: &[u8]) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let local = srv.files.out(&format!("dl-{n}"));
    let what = format!("{} get {remote:?} {opts:?}", client.name());
    match client_get(client, srv.port(), remote, &local, opts) {
        Ok(_) => assert_file_same(&what, &local, want),
        Err(e) => panic!("{what}: {e}"),
    }
    let _ = std::fs::remove_file(&local);
}

// ---------------------------------------------------------------------------------------------
// Raw UDP client
// ---------------------------------------------------------------------------------------------

/// Build an RRQ (or WRQ) with options in wire order.
pub fn request(write: bool, name: &[u8], mode: Mode, options: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = vec![
        0u8;
        4 + name.len()
            + 16
            + options
                .iter()
                .map(|(n, v)| n.len() + v.len() + 2)
                .sum::<usize>()
    ];
    let mut w = OptionWriter::request(&mut buf, write, name, mode).expect("buffer sized");
    for (n, v) in options {
        w.option(n, v).expect("buffer sized");
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

/// An RRQ in octet mode.
pub fn rrq(name: &[u8], options: &[(&str, &[u8])]) -> Vec<u8> {
    request(false, name, Mode::Octet, options)
}

pub fn ack(block: u16) -> Vec<u8> {
    let mut b = [0u8; 4];
    emit_ack(&mut b, BlockNum(block));
    b.to_vec()
}

pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut b = vec![0u8; message.len() + 5];
    let n = emit_error(&mut b, code, message);
    b.truncate(n);
    b
}

/// A packet from the server, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Oack(Vec<(String, String)>),
    Data { block: u16, len: usize },
    Ack(u16),
    Error { code: u16, message: String },
    Other(Vec<u8>),
}

impl Reply {
    pub fn parse(b: &[u8]) -> Reply {
        match Packet::parse(b) {
            Ok(Packet::Oack(opts)) => Reply::Oack(
                opts.iter()
                    .map(|(n, v)| {
                        (
                            String::from_utf8_lossy(n).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        )
                    })
                    .collect(),
            ),
            Ok(Packet::Data { block, data }) => Reply::Data {
                block: block.0,
                len: data.len(),
            },
            Ok(Packet::Ack { block, .. }) => Reply::Ack(block.0),
            Ok(Packet::Error { code, message }) => Reply::Error {
                code: code.as_u16(),
                message: String::from_utf8_lossy(message).into_owned(),
            },
            _ => Reply::Other(b.to_vec()),
        }
    }
}

/// Value of option `name` (case-insensitive) in an OACK.
pub fn oack_get<'a>(opts: &'a [(String, String)], name: &str) -> Option<&'a str> {
    opts.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A UDP socket on 127.0.0.1 talking to one server: raw datagrams for what no client would send,
/// and whole downloads driven by the core's client machine ([`RawClient::download`]).
pub struct RawClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn new(server: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client socket");
        RawClient {
            sock,
            server,
            buf: vec![0u8; 65536 + 64],
        }
    }

    /// Send to the server's listening address.
    pub fn send(&self, pkt: &[u8]) {
        self.sock.send_to(pkt, self.server).expect("send to server");
    }

    pub fn send_to(&self, pkt: &[u8], to: SocketAddr) {
        self.sock.send_to(pkt, to).expect("send");
    }

    /// The next datagram within `limit`, or `None`.
    pub fn recv(&mut self, limit: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        self.recv_ref(limit).map(|(b, a)| (b.to_vec(), a))
    }

    fn recv_ref(&mut self, limit: Duration) -> Option<(&[u8], SocketAddr)> {
        let limit = limit.max(Duration::from_millis(1));
        self.sock.set_read_timeout(Some(limit)).unwrap();
        match self.sock.recv_from(&mut self.buf) {
            Ok((n, from)) => Some((&self.buf[..n], from)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// The next datagram, parsed.
    pub fn recv_reply(&mut self, limit: Duration) -> Option<(Reply, SocketAddr)> {
        self.recv_ref(limit).map(|(b, a)| (Reply::parse(b), a))
    }

    /// Send `pkt` to the server and return its first reply (resending twice on silence).
    pub fn request(&mut self, pkt: &[u8]) -> Option<(Reply, SocketAddr)> {
        for _ in 0..3 {
            self.send(pkt);
            if let Some(r) = self.recv_reply(Duration::from_secs(2)) {
                return Some(r);
            }
        }
        None
    }

    /// Run a whole download with the core's firmware-like client machine
    /// ([`ringboot::proto::tftp::client::Client`]: the EDK2 ACK policy, ACK after every
    /// `windowsize` in-order blocks and at the end, re-ACK the last in-order block at once when a
    /// block arrives out of order, resend the last packet after 1 s of silence, 8 times) over
    /// this socket. The options are sent verbatim, the OACK is taken leniently (any valid value
    /// not above what was asked), and every datagram is also observed here for the counters.
    pub fn download(&mut self, spec: &DownloadSpec) -> Result<Download, Failure> {
        let cfg = ClientConfig {
            mode: spec.mode,
            extra_options: spec.options.clone(),
            strict_oack: false,
            retransmit: Duration::from_secs(1),
            retries: 8,
            ..ClientConfig::default()
        };
        let t0 = Instant::now();
        let deadline = t0 + spec.limit;
        let mut c = TftpClient::new(self.server, &spec.name, cfg, t0);
        let mut d = Download::default();
        let mut tx = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            while let Some((dest, n)) = c.poll_transmit(now, &mut tx).and_then(Transmit::datagram) {
                self.sock.send_to(&tx[..n], dest).expect("send");
                if spec.dup_acks && tx[..2] == [0, 4] {
                    self.sock.send_to(&tx[..n], dest).expect("send");
                }
            }
            match c.poll_event() {
                None => {}
                Some(ClientEvent::Finished) => break,
                Some(ClientEvent::Failed(ClientError::Server { code, message })) => {
                    let code = code.as_u16();
                    return Err(Failure::Error { code, message });
                }
                Some(ClientEvent::Failed(ClientError::TimedOut)) => {
                    let what = match c.peer() {
                        None => "no reply to RRQ".to_string(),
                        Some(_) => {
                            format!("server silent after {} blocks ({} bytes)", d.blocks, d.len)
                        }
                    };
                    return Err(Failure::Timeout(what));
                }
                Some(e) => return Err(Failure::Protocol(format!("{e:?}"))),
            }
            if now > deadline {
                return Err(Failure::Timeout(format!(
                    "download not finished within {:?}: {} bytes",
                    spec.limit, d.len
                )));
            }
            let wait = c
                .poll_timeout()
                .unwrap_or(deadline)
                .min(deadline)
                .saturating_duration_since(now);
            let Some((bytes, from)) = self.recv_ref(wait) else {
                c.handle_timeout(Instant::now());
                continue;
            };
            if c.peer().is_none_or(|p| p == from) {
                match Packet::parse(bytes) {
                    Ok(Packet::Data { block, .. }) => {
                        d.data_packets += 1;
                        d.wrapped |= block.0 == 0;
                    }
                    Ok(Packet::Oack(o)) if d.oack.is_none() => {
                        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                        d.oack = Some(o.iter().map(|(n, v)| (text(n), text(v))).collect());
                    }
                    _ => {}
                }
            }
            if let Some(data) = c.handle_datagram(Instant::now(), from, bytes) {
                if let Some(src) = &spec.verify {
                    let off = data.offset as usize;
                    let end = off + data.bytes.len();
                    if end > src.len() || src[off..end] != *data.bytes {
                        return Err(Failure::Protocol(format!(
                            "block at offset {off} differs from the source"
                        )));
                    }
                } else {
                    d.data.extend_from_slice(data.bytes);
                }
                d.len += data.bytes.len() as u64;
            }
            d.blocks = c.stats.data_received;
        }
        d.blocks = c.stats.data_received;
        d.duplicates = c.stats.duplicates;
        d.stray = c.stats.foreign;
        d.acks_sent = c.stats.acks_sent;
        d.blksize = c.blksize();
        d.window = c.window() as u16;
        d.tid = c.peer();
        if let Some(src) = &spec.verify {
            if d.len != src.len() as u64 {
                return Err(Failure::Protocol(format!(
                    "got {} bytes, source has {}",
                    d.len,
                    src.len()
                )));
            }
        }
        Ok(d)
    }
}

/// One download for [`RawClient::download`].
#[derive(Clone, Debug)]
pub struct DownloadSpec {
    pub name: Vec<u8>,
    pub mode: Mode,
    pub options: Vec<(String, Vec<u8>)>,
    /// Send every ACK twice (sorcerer's apprentice test).
    pub dup_acks: bool,
    /// Compare each block with this source instead of keeping the data.
    pub verify: Option<Arc<Vec<u8>>>,
    pub limit: Duration,
}

impl DownloadSpec {
    pub fn new(name: impl AsRef<[u8]>) -> Self {
        DownloadSpec {
            name: name.as_ref().to_vec(),
            mode: Mode::Octet,
            options: Vec::new(),
            dup_acks: false,
            verify: None,
            limit: Duration::from_secs(50),
        }
    }

    pub fn option(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.options
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn blksize(self, n: u16) -> Self {
        self.option("blksize", n.to_string())
    }

    pub fn windowsize(self, n: u16) -> Self {
        self.option("windowsize", n.to_string())
    }

    pub fn tsize(self) -> Self {
        self.option("tsize", "0")
    }

    pub fn netascii(mut self) -> Self {
        self.mode = Mode::Netascii;
        self
    }

    pub fn dup_acks(mut self) -> Self {
        self.dup_acks = true;
        self
    }

    pub fn verify(mut self, src: Arc<Vec<u8>>) -> Self {
        self.verify = Some(src);
        self
    }
}

/// What a raw download saw.
#[derive(Clone, Debug, Default)]
pub struct Download {
    /// The bytes received (empty when verifying on the fly).
    pub data: Vec<u8>,
    pub len: u64,
    /// The OACK's options, if the server sent one.
    pub oack: Option<Vec<(String, String)>>,
    pub blksize: usize,
    pub window: u16,
    /// Every DATA datagram from the transfer's TID, duplicates included.
    pub data_packets: u64,
    /// Distinct in-order blocks accepted.
    pub blocks: u64,
    /// DATA datagrams for blocks already received.
    pub duplicates: u64,
    /// Datagrams from another address than the transfer's TID.
    pub stray: u64,
    pub acks_sent: u64,
    /// A DATA block numbered 0 arrived (rollover after 65535).
    pub wrapped: bool,
    pub tid: Option<SocketAddr>,
}

/// Why a raw download failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server sent ERROR.
    Error {
        code: u16,
        message: String,
    },
    Timeout(String),
    Protocol(String),
}

/// One fresh-socket raw download from `srv`; panics with context on failure.
pub fn raw_get(srv: &Server, spec: &DownloadSpec) -> Download {
    RawClient::new(srv.addr())
        .download(spec)
        .unwrap_or_else(|e| {
            panic!(
                "raw download of {:?} failed: {e:?}",
                String::from_utf8_lossy(&spec.name)
            )
        })
}

/// Netascii encoding as the server documents it (`ringboot::proto::tftp::netascii`): LF -> CR LF, a
/// CR LF already in the file stays CR LF, any other CR -> CR NUL. Written independently here so
/// the test does not check the server's code against itself.
pub fn netascii_encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() + src.len() / 16);
    let mut i = 0;
    while i < src.len() {
        match (src[i], src.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            (b'\r', _) => out.extend_from_slice(b"\r\0"),
            (b'\n', _) => out.extend_from_slice(b"\r\n"),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    out
}
