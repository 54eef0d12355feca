//! The real third-party TFTP clients (tftp-hpa, atftp, curl, busybox) run as child processes with
//! a deadline; a missing one skips the test, except under `CI`.

use super::*;

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
