//! The systemd unit `dist/ringboot.service` and the example config `dist/ringboot.toml`.
//!
//! - `unit_carries_the_hardening`: the directives the README promises are there with their values
//!   (sandbox, dynamic user, state directory, exactly three capabilities, address families, the
//!   system-call filter with io_uring, restart policy, reload, descriptor limit).
//! - `systemd_analyze_verify_is_clean`: `systemd-analyze verify` prints nothing (an unknown or
//!   misspelt key is only a warning there, so any output fails the test), and the offline
//!   `systemd-analyze security` exposure stays in its "OK" band.
//! - `syscalls_and_socket_families_pass_the_units_filter`: the real binary under `strace -f`
//!   starts, serves a download and a refusal, and stops on SIGTERM, on both I/O backends; every
//!   system call it made is in the unit's `SystemCallFilter=` (expanded by `systemd-analyze
//!   syscall-filter`) and every socket family in `RestrictAddressFamilies=`.
//! - `the_units_capabilities_suffice_unprivileged` (root, in a network namespace): as uid 65534
//!   with no-new-privs and only the unit's capabilities (read from the unit), ringboot binds
//!   TFTP port 69 and full-mode DHCP (67, 68, `SO_BINDTODEVICE`), writes its lease file under
//!   `$STATE_DIRECTORY` and serves a world-readable file; with no capabilities it refuses to
//!   start with the permission error. Under strace (when installed) that run's system calls and
//!   socket families (netlink for the interfaces, the lease file's saves) pass the filter too.
//! - `example_config_starts_the_server`: `dist/ringboot.toml`, with only `root` and `listen`
//!   changed, is accepted and serves.
//! - `deb_assets_exist_and_match_the_unit`: every file `[package.metadata.deb]` packages exists,
//!   and the package puts the binary, unit and config where the unit expects them.
//!
//! Tools: `systemd-analyze` (Debian package `systemd`), `strace`, `setpriv` (util-linux), `curl`,
//! `ip`. A missing one skips its test with a message, except under `CI`, where it fails.

mod common;

use common::netns::{is_root, on_path, sh, Netns};
use common::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const UNIT: &str = include_str!("../dist/ringboot.service");
const EXAMPLE_CONFIG: &str = include_str!("../dist/ringboot.toml");
/// The path ExecStart names (the .deb installs the binary there).
const UNIT_BIN: &str = "/usr/bin/ringboot";

/// `(section, key, value)` of every assignment, in order (comments and blank lines dropped).
fn entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE in the unit: {line:?}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// Every value of `key` in `[Service]`.
fn service(key: &str) -> Vec<String> {
    entries(UNIT)
        .into_iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v)
        .collect()
}

/// The one value of `key` in `[Service]`.
fn one(key: &str) -> String {
    let v = service(key);
    assert_eq!(
        v.len(),
        1,
        "{key}= must appear once in [Service], found {v:?}"
    );
    v.into_iter().next().unwrap()
}

/// The space-separated words of every `key=` line, together.
fn words(key: &str) -> BTreeSet<String> {
    service(key)
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Whether `tool` is installed; prints why a test skips, and fails under CI instead.
fn have(tool: &str, package: &str) -> bool {
    if on_path(tool) {
        return true;
    }
    let msg = format!("{tool} not found: apt-get install {package}");
    assert!(!under_ci(), "{msg}");
    println!("skipped: {msg}");
    false
}

#[test]
fn unit_carries_the_hardening() {
    for (key, want) in [
        ("Type", "exec"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "ringboot"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallErrorNumber", "EPERM"),
        ("Restart", "on-failure"),
        // Exit 2 is a usage or configuration error: restarting cannot fix it.
        ("RestartPreventExitStatus", "2"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        (
            "ExecStart",
            "/usr/bin/ringboot serve --config /etc/ringboot.toml",
        ),
    ] {
        assert_eq!(one(key), want, "{key}=");
    }
    // Exactly these capabilities, granted and bounded alike.
    let caps = set(&["CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_LEASE"]);
    assert_eq!(words("AmbientCapabilities"), caps);
    assert_eq!(words("CapabilityBoundingSet"), caps);
    assert_eq!(
        words("RestrictAddressFamilies"),
        set(&["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"])
    );
    // An allow list (no '~'), with io_uring named explicitly.
    let filter = words("SystemCallFilter");
    assert!(filter.iter().all(|w| !w.starts_with('~')), "{filter:?}");
    for w in [
        "@system-service",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ] {
        assert!(
            filter.contains(w),
            "SystemCallFilter= lacks {w}: {filter:?}"
        );
    }
    // The default cap of 4096 transfers needs about 2 x 4096 descriptors plus the fixed ones.
    let nofile: u64 = one("LimitNOFILE")
        .parse()
        .expect("LimitNOFILE= is a number");
    assert!(nofile >= 16384, "LimitNOFILE={nofile}");
    // No account to create, no writable path but the state directory.
    for absent in [
        "User",
        "Group",
        "ReadWritePaths",
        "PrivateUsers",
        "PrivateNetwork",
    ] {
        assert!(service(absent).is_empty(), "{absent}= should not be set");
    }
    let install: Vec<_> = entries(UNIT)
        .into_iter()
        .filter(|(s, _, _)| s == "Install")
        .collect();
    assert!(
        install
            .iter()
            .any(|(_, k, v)| k == "WantedBy" && v == "multi-user.target"),
        "{install:?}"
    );
}

/// The unit with ExecStart's binary replaced by the one under test, in `dir`.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    assert!(UNIT.contains(UNIT_BIN), "ExecStart names {UNIT_BIN}");
    let p = dir.join("ringboot.service");
    std::fs::write(&p, UNIT.replace(UNIT_BIN, ringboot_bin())).unwrap();
    p
}

#[test]
fn systemd_analyze_verify_is_clean() {
    if !have("systemd-analyze", "systemd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{text}",
        out.status
    );

    // The exposure score (0 best, 10 worst). Older systemd has no --offline: nothing to check.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.contains("Overall exposure level")) else {
        println!(
            "systemd-analyze security --offline not supported here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    };
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    println!("{}", line.trim());
    assert!(score <= 3.0, "exposure {score} (want the OK band): {line}");
}

// ---------------------------------------------------------------------------------------------
// Running the real binary
// ---------------------------------------------------------------------------------------------

/// A started process whose stdout and stderr lines are collected.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for r in [out, err] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(strip_ansi(&l));
                }
            });
        }
        Proc { child, lines }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Wait for a line containing `needle`, or the exit of the process; false on exit or timeout.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                // Let the readers take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.contains(needle));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sigterm(pid: u32) {
    // SAFETY: kill(2) on a PID this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

/// Download `name` with curl (a `\\` in it is sent as it is); the bytes, or None when curl fails.
fn curl_get(server: &str, name: &str, blksize: Option<u16>) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "30", "-o"]).arg(&out);
    if let Some(b) = blksize {
        cmd.args(["--tftp-blksize", &b.to_string()]);
    }
    cmd.arg(format!("tftp://{server}/{}", name.replace('\\', "%5C")));
    let run = run_with_timeout(cmd, None, CLIENT_LIMIT);
    if !run.status.success() {
        return None;
    }
    std::fs::read(&out).ok()
}

/// The root of a test tree that uid 65534 can read (tempdirs are 0700).
fn world_readable(files: &TestRoot) {
    let mut p = Some(files.root());
    while let Some(d) = p {
        if d == Path::new("/") || d == std::env::temp_dir() {
            break;
        }
        sh(&format!("chmod a+rX '{}'", d.display()));
        p = d.parent().map(Path::to_path_buf);
    }
    sh(&format!("chmod -R a+rX '{}'", files.root().display()));
}

/// Every system call a group of `systemd-analyze syscall-filter` stands for, nested groups
/// expanded.
fn expand_filter(item: &str, out: &mut BTreeSet<String>, seen: &mut BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_string());
        return;
    }
    if !seen.insert(item.to_string()) {
        return;
    }
    let o = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", item])
        .output()
        .unwrap();
    assert!(o.status.success(), "systemd-analyze syscall-filter {item}");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    for line in text.lines().skip(1) {
        let w = line.trim();
        if w.is_empty() || w.starts_with('#') {
            continue;
        }
        expand_filter(w, out, seen);
    }
}

/// System call names and socket families in an `strace -f` log.
fn traced(log: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut calls, mut families) = (BTreeSet::new(), BTreeSet::new());
    for line in log.lines() {
        // "<pid> name(args) = r", "<pid> <... name resumed>...", "<pid> +++ exited ...".
        let rest = line
            .trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        let name: String = if let Some(r) = rest.strip_prefix("<... ") {
            r.chars().take_while(|c| *c != ' ').collect()
        } else {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        if name.is_empty() || !rest[name.len().min(rest.len())..].starts_with(['(', ' ']) {
            continue;
        }
        if let Some(a) = rest.strip_prefix("socket(") {
            families.insert(a.split([',', ')']).next().unwrap_or("").to_string());
        }
        calls.insert(name);
    }
    (calls, families)
}

/// Every system call and socket family in the `strace -f` log at `trace` is allowed by the
/// unit's `SystemCallFilter=` and `RestrictAddressFamilies=`. Returns the calls.
fn check_trace(trace: &Path, what: &str) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for w in words("SystemCallFilter") {
        expand_filter(&w, &mut allowed, &mut seen);
    }
    assert!(allowed.contains("io_uring_setup") && allowed.contains("recvmmsg"));
    let log = std::fs::read_to_string(trace).unwrap();
    let (calls, fams) = traced(&log);
    assert!(calls.contains("bind"), "{what}: parsed no calls");
    let denied: Vec<_> = calls.difference(&allowed).collect();
    assert!(
        denied.is_empty(),
        "{what}: system calls outside the unit's SystemCallFilter: {denied:?}"
    );
    let families = words("RestrictAddressFamilies");
    let bad: Vec<_> = fams.difference(&families).collect();
    assert!(
        bad.is_empty(),
        "{what}: socket families outside RestrictAddressFamilies: {bad:?}"
    );
    println!(
        "{what}: {} distinct system calls, families {fams:?}: all allowed",
        calls.len()
    );
    calls
}

#[test]
fn syscalls_and_socket_families_pass_the_units_filter() {
    if !have("strace", "strace") || !have("systemd-analyze", "systemd") || !have("curl", "curl") {
        return;
    }
    bounded(Duration::from_secs(120), || {
        let files = TestRoot::new();
        let want = files.add_random("boot/big.img", 1 << 20);
        for backend in ["uring", "fallback"] {
            let dir = tempfile::tempdir().unwrap();
            let trace = dir.path().join("trace");
            // A free port, retried if someone takes it between the probe and the bind.
            let (mut p, port) = (0..3)
                .find_map(|_| {
                    let port = free_udp_port();
                    let mut cmd = Command::new("strace");
                    cmd.args(["-f", "-qq", "-o"])
                        .arg(&trace)
                        .arg("--")
                        .arg(ringboot_bin())
                        .args(["serve", "--root"])
                        .arg(files.root())
                        .args(["--listen", &format!("127.0.0.1:{port}")])
                        .args(["--io-backend", backend, "--workers", "2"]);
                    let mut p = Proc::spawn(cmd);
                    if p.wait_for("listening on", Duration::from_secs(30)) {
                        return Some((p, port));
                    }
                    let text = p.text();
                    assert!(
                        text.contains("in use"),
                        "{backend}: no `listening on`:\n{text}"
                    );
                    None
                })
                .expect("a free port in 3 attempts");
            let server = format!("127.0.0.1:{port}");
            let got = curl_get(&server, "BOOT\\big.img", Some(1468)).expect("curl download");
            assert_same(backend, &got, &want);
            assert!(curl_get(&server, "missing.efi", None).is_none());
            // strace's child is ringboot.
            let strace_pid = p.child.id();
            let children =
                std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
                    .unwrap();
            let pid: u32 = children
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .expect("ringboot runs under strace");
            sigterm(pid);
            let st = p.wait_exit(Duration::from_secs(30));
            assert!(
                st.is_some_and(|s| s.success()),
                "{backend}: exit {st:?}\n{}",
                p.text()
            );
            let calls = check_trace(&trace, backend);
            if backend == "uring" && p.text().contains("backend=uring") {
                assert!(calls.contains("io_uring_setup"), "{calls:?}");
            }
        }
    });
}

/// `setpriv` flags for uid/gid 65534, no-new-privs, and exactly `caps` (e.g. `+net_raw,...`;
/// empty for none).
fn unprivileged(caps: &str) -> Vec<String> {
    let set = if caps.is_empty() {
        "-all".to_string()
    } else {
        format!("-all,{caps}")
    };
    vec![
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        "--no-new-privs".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--".into(),
    ]
}

#[test]
fn the_units_capabilities_suffice_unprivileged() {
    if !is_root() {
        println!("skipped: needs root (network namespace, setpriv)");
        return;
    }
    if !have("setpriv", "util-linux") || !have("ip", "iproute2") || !have("curl", "curl") {
        return;
    }
    bounded(Duration::from_secs(120), || {
        // The unit's capabilities, as setpriv spells them.
        let caps: Vec<String> = words("AmbientCapabilities")
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
            .collect();
        let ns = Netns::new("svc");
        let id = ns.name.trim_start_matches("rbsvc").to_string();
        let (a, b) = (format!("rbs{id}a"), format!("rbs{id}b"));
        ns.ip(&[
            &format!("link add {a} type veth peer name {b}"),
            &format!("addr add 10.77.0.1/24 dev {a}"),
            &format!("link set {a} up"),
            &format!("link set {b} up"),
        ]);
        ns.enter();

        let files = TestRoot::new();
        let want = files.add_random("pxelinux.0", 100_000);
        world_readable(&files);
        // StateDirectory=: a directory the service user owns, named by $STATE_DIRECTORY.
        let state = tempfile::tempdir().unwrap();
        sh(&format!("chown 65534:65534 '{}'", state.path().display()));
        let root = files.root();
        // The run with the unit's capabilities is traced when strace and systemd-analyze are
        // here: the DHCP path (interfaces by netlink, the lease file) must pass the filter too.
        let trace = state.path().join("trace");
        let tracing = on_path("strace") && on_path("systemd-analyze");
        let serve = |caps: &str| {
            let mut cmd = if tracing && !caps.is_empty() {
                let mut c = Command::new("strace");
                c.args(["-f", "-qq", "-o"])
                    .arg(&trace)
                    .args(["--", "setpriv"]);
                c
            } else {
                Command::new("setpriv")
            };
            cmd.args(unprivileged(caps))
                .arg(ringboot_bin())
                .args(["serve", "--root"])
                .arg(&root)
                .args(["--listen", "0.0.0.0:69", "--dhcp", "full"])
                .args(["--dhcp-interface", &a, "--boot-file", "pxelinux.0"])
                .args(["--dhcp-range", "10.77.0.100,10.77.0.120"])
                .env("STATE_DIRECTORY", state.path());
            Proc::spawn(cmd)
        };

        // Without capabilities: a clear refusal, not a half-started server.
        let mut p = serve("");
        let st = p.wait_exit(Duration::from_secs(30));
        assert!(
            st.is_some_and(|s| !s.success()),
            "started without capabilities: {st:?}\n{}",
            p.text()
        );
        assert!(
            p.text().contains("CAP_NET_BIND_SERVICE"),
            "the refusal names the capability:\n{}",
            p.text()
        );
        drop(p);

        // With the unit's capabilities: TFTP on 69, DHCP on 67/68 bound to the interface.
        let mut p = serve(&caps.join(","));
        assert!(
            p.wait_for("listening on", Duration::from_secs(30)),
            "with {caps:?}:\n{}",
            p.text()
        );
        assert!(
            p.wait_for("DHCP responder listening", Duration::from_secs(30)),
            "{}",
            p.text()
        );
        let leases = state.path().join("dhcp.leases");
        assert!(
            p.text().contains(&leases.display().to_string()),
            "the lease file is under $STATE_DIRECTORY:\n{}",
            p.text()
        );
        // CAP_LEASE: read leases on files the service user does not own, hence no warning.
        assert!(
            !p.text().contains("CAP_LEASE"),
            "with CAP_LEASE no lease warning:\n{}",
            p.text()
        );
        let got = curl_get("127.0.0.1:69", "pxelinux.0", None).expect("download as uid 65534");
        assert_same("pxelinux.0", &got, &want);
        // Under strace the child is strace: signal ringboot itself (setpriv execs it).
        let pid = if tracing {
            let s = p.child.id();
            std::fs::read_to_string(format!("/proc/{s}/task/{s}/children"))
                .unwrap()
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .expect("ringboot runs under strace")
        } else {
            p.child.id()
        };
        sigterm(pid);
        let st = p.wait_exit(Duration::from_secs(30));
        assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", p.text());
        if tracing {
            let calls = check_trace(&trace, "unprivileged, full-mode DHCP");
            assert!(calls.contains("setsockopt"), "{calls:?}");
        }
    });
}

#[test]
fn example_config_starts_the_server() {
    if !have("curl", "curl") {
        return;
    }
    bounded(Duration::from_secs(60), || {
        let files = TestRoot::new();
        let want = files.add_random("ipxe.efi", 3000);
        let port = free_udp_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("ringboot.toml");
        let text = EXAMPLE_CONFIG
            .replace(
                "root = \"/srv/tftp\"",
                &format!("root = \"{}\"", files.root().display()),
            )
            .replace(
                "# listen = [\"0.0.0.0:69\"]",
                &format!("listen = [\"127.0.0.1:{port}\"]"),
            );
        assert_ne!(text, EXAMPLE_CONFIG, "the example names root and listen");
        std::fs::write(&conf, text).unwrap();
        let mut cmd = Command::new(ringboot_bin());
        cmd.args(["serve", "--config"]).arg(&conf);
        let mut p = Proc::spawn(cmd);
        assert!(
            p.wait_for("listening on", Duration::from_secs(30)),
            "{}",
            p.text()
        );
        let got = curl_get(&format!("127.0.0.1:{port}"), "ipxe.efi", None).expect("download");
        assert_same("ipxe.efi", &got, &want);
    });
}

#[test]
fn deb_assets_exist_and_match_the_unit() {
    let manifest: toml::Table = include_str!("../Cargo.toml").parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"]
        .as_array()
        .expect("[package.metadata.deb] assets");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dests = Vec::new();
    for a in assets {
        let a = a.as_array().unwrap();
        let (src, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        dests.push(dest.to_string());
        if src.starts_with("target/") {
            continue; // built by `cargo deb`
        }
        if let Some(dir) = src.strip_suffix("/*.md") {
            let n = std::fs::read_dir(root.join(dir))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "md"))
                })
                .count();
            assert!(n > 0, "{src} matches nothing");
        } else {
            assert!(root.join(src).is_file(), "deb asset {src} is missing");
        }
    }
    // The unit starts the binary where the package puts it, with the config it installs.
    assert!(dests.iter().any(|d| d == "usr/bin/"), "{dests:?}");
    assert!(UNIT_BIN.starts_with("/usr/bin/"));
    assert!(dests.iter().any(|d| d == "etc/ringboot.toml"));
    assert!(dests
        .iter()
        .any(|d| d == "lib/systemd/system/ringboot.service"));
    let conf = deb["conf-files"].as_array().unwrap();
    assert!(conf
        .iter()
        .any(|c| c.as_str() == Some("/etc/ringboot.toml")));
}
