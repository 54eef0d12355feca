//! End-to-end storms: the real `ringboot-loadtest` binary against real servers on loopback.
//!
//! - ringboot: 200 UEFI machines with 2% loss all complete byte-exact (the issue's headline test, with
//!   a 2 MiB file to keep CI short); a scenario with expected misses completes.
//! - A corrupted verify file is reported as failed with a non-zero exit status.
//! - tftpd-hpa: the same storm (it ignores windowsize, so the UEFI clients fall back to lockstep).
//! - Output: `--json -` writes the JSON alone to standard output (the summary, with each count
//!   beside its own label, goes to standard error); the `--plot` SVG names file, size, server and
//!   date and draws the active machines.
//! - No server: a closed port (ICMP port unreachable) is reported at once, a silent one after
//!   `--silence-limit`, both well before the clients' own 28 s of retries.
//!
//! The ringboot binary is looked up next to this test's own target directory (built by
//! `cargo test --workspace`) or built with `cargo build -p ringboot --bin ringboot`. tftpd-hpa is
//! taken from the PATH, /usr/sbin or `apt-get download` + `dpkg -x`; without it that test is skipped
//! with the reason printed.

mod common;

use common::{content, ringboot_bin, target_dirs};
use ringboot::proto::tftp::packet::{Mode, OptionWriter, Packet};
use serde_json::Value;
use std::ffi::OsStr;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A server process we started; stopped (by its PID) when dropped.
struct Server {
    child: Child,
    /// `IP:PORT` it listens on.
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh listening address: a random 127.x.y.z (so that no other server on this machine, even one
/// bound with SO_REUSEPORT to the same port, shares it) and a port free on it.
fn fresh_addr() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let r = h.finish();
    let ip = format!(
        "127.{}.{}.{}",
        100 + r % 100,
        (r >> 8) & 255,
        1 + (r >> 16) % 254
    );
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    format!("{ip}:{}", s.local_addr().unwrap().port())
}

/// A served tree (world-readable so servers that drop privileges can read it).
fn make_root(files: &[(&str, usize)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("lt-root")
        .tempdir()
        .unwrap();
    for (i, (name, len)) in files.iter().enumerate() {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content(*len, i as u64 + 1)).unwrap();
    }
    chmod_world_readable(dir.path());
    dir
}

fn chmod_world_readable(p: &Path) {
    let _ = Command::new("chmod").arg("-R").arg("a+rX").arg(p).status();
}

/// Wait until the server answers an RRQ (with anything: ERROR 1 for a missing file is fine).
fn wait_ready(addr: &str, child: &mut Child) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 600];
    let n = {
        let w = OptionWriter::request(&mut buf, false, b"lt-ready-probe", Mode::Octet).unwrap();
        w.finish()
    };
    let rrq = buf[..n].to_vec();
    let end = Instant::now() + Duration::from_secs(15);
    let mut rx = [0u8; 2048];
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let _ = sock.send_to(&rrq, addr);
        if let Ok((n, _)) = sock.recv_from(&mut rx) {
            if Packet::parse(&rx[..n]).is_ok() {
                return true;
            }
        }
    }
    false
}

fn start_ringboot(root: &Path) -> Server {
    let bin = ringboot_bin(|_| true);
    for _ in 0..3 {
        let addr = fresh_addr();
        let mut child = Command::new(&bin)
            .args(["serve", "--root"])
            .arg(root)
            .args(["--listen", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        if wait_ready(&addr, &mut child) {
            return Server { child, addr };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{} serve did not answer on loopback", bin.display());
}

/// tftpd-hpa's in.tftpd, found or fetched; Err says why not.
fn hpa_bin() -> Result<PathBuf, String> {
    for p in ["/usr/sbin/in.tftpd", "/usr/local/sbin/in.tftpd"] {
        if Path::new(p).exists() && is_hpa(Path::new(p)) {
            return Ok(PathBuf::from(p));
        }
    }
    let dir = target_dirs()[0].join("lt-peers");
    let bin = dir.join("usr/sbin/in.tftpd");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let dl = Command::new("apt-get")
        .args(["download", "tftpd-hpa"])
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("apt-get: {e}"))?;
    if !dl.status.success() {
        return Err(format!(
            "apt-get download tftpd-hpa failed: {}",
            String::from_utf8_lossy(&dl.stderr).trim()
        ));
    }
    let deb = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".deb"))
        .ok_or("no .deb downloaded")?;
    let x = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&dir)
        .status()
        .map_err(|e| format!("dpkg: {e}"))?;
    if !x.success() || !bin.exists() {
        return Err("dpkg -x tftpd-hpa did not give usr/sbin/in.tftpd".into());
    }
    Ok(bin)
}

/// atftpd's package also ships an in.tftpd; tell them apart by tftpd-hpa's -V banner.
fn is_hpa(p: &Path) -> bool {
    Command::new(p)
        .arg("-V")
        .output()
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            t.contains("tftp-hpa")
        })
        .unwrap_or(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn start_hpa(root: &Path) -> Result<Server, String> {
    if !is_root() {
        return Err("tftpd-hpa needs root for --secure (chroot)".into());
    }
    let bin = hpa_bin()?;
    for _ in 0..3 {
        let addr = fresh_addr();
        // -T: 20 ms retransmission (default 1 s) so that 2% loss in lockstep stays quick.
        let mut child = Command::new(&bin)
            .args(["-L", "-s", "-u", "root", "-T", "20000", "-a"])
            .arg(&addr)
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        if wait_ready(&addr, &mut child) {
            return Ok(Server { child, addr });
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    Err("tftpd-hpa did not answer on loopback".into())
}

struct Run {
    out: Output,
    json: Value,
}

/// `--server ADDR --clients N --file FILE --profile P`, then `more`: the storm most tests run.
fn storm(addr: &str, clients: u32, file: &str, profile: &str, more: &[&str]) -> Vec<String> {
    let n = clients.to_string();
    [
        "--server",
        addr,
        "--clients",
        &n,
        "--file",
        file,
        "--profile",
        profile,
    ]
    .iter()
    .chain(more)
    .map(|a| a.to_string())
    .collect()
}

/// Run the load tester with `args` (`--server` among them) and a JSON report; read it.
fn loadtest<S: AsRef<OsStr>>(args: &[S]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringboot-loadtest"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "no JSON written; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    println!("{}", String::from_utf8_lossy(&out.stdout));
    Run {
        out,
        json: serde_json::from_str(&text).unwrap(),
    }
}

fn assert_all_complete(r: &Run, clients: u64, bytes_each: u64) {
    let j = &r.json;
    assert_eq!(j["clients"], clients, "{j:#}");
    assert_eq!(
        j["completed"], clients,
        "failures: {:#}",
        j["failure_examples"]
    );
    assert_eq!(j["failed"], 0);
    assert_eq!(j["bytes"], clients * bytes_each);
    assert!(r.out.status.success(), "exit status {:?}", r.out.status);
    for k in ["wall_seconds", "throughput_bps", "loadtest_cpu_seconds"] {
        assert!(j[k].is_number(), "{k} missing");
    }
    for k in ["p50", "p90", "p99", "max"] {
        assert!(
            j["duration_ms"][k].as_f64().unwrap() > 0.0,
            "duration_ms.{k}"
        );
    }
}

const MIB2: usize = 2 << 20;

/// 200 uefi machines fetch `images/boot.img` (2 MiB, in `root`) from `addr` with 2 % loss; every
/// one must complete byte-exact.
fn uefi_200_with_2_percent_loss(addr: &str, root: &Path, deadline: &str) -> Run {
    let rootp = root.to_str().unwrap();
    let more = [
        "--loss",
        "0.02",
        "--verify",
        rootp,
        "--deadline",
        deadline,
        "--quiet",
    ];
    let r = loadtest(&storm(addr, 200, "images/boot.img", "uefi", &more));
    assert_all_complete(&r, 200, MIB2 as u64);
    r
}

#[test]
fn ringboot_200_uefi_clients_with_2_percent_loss_complete_byte_exact() {
    let root = make_root(&[("images/boot.img", MIB2)]);
    let srv = start_ringboot(root.path());
    let r = uefi_200_with_2_percent_loss(&srv.addr, root.path(), "40");
    assert!(r.json["impairments"]["dropped_data"].as_u64().unwrap() > 0);
}

#[test]
fn ringboot_pxelinux_scenario_with_expected_misses() {
    let root = make_root(&[
        ("pxelinux.0", 42_000),
        ("ldlinux.c32", 120_000),
        ("pxelinux.cfg/default", 300),
        ("vmlinuz", 300_000),
        ("initrd.img", 500_000),
    ]);
    let srv = start_ringboot(root.path());
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/pxelinux.toml");
    let r = loadtest(&[
        "--server",
        &srv.addr,
        "--clients",
        "20",
        "--scenario",
        scenario.to_str().unwrap(),
        "--verify",
        root.path().to_str().unwrap(),
        "--deadline",
        "30",
        "--quiet",
        "--loss",
        "0.01",
    ]);
    let per_machine = 42_000 + 120_000 + 300 + 300_000 + 500_000;
    assert_all_complete(&r, 20, per_machine);
    assert_eq!(r.json["expected_misses"], 20 * 10);
}

#[test]
fn corrupted_verify_file_is_reported_failed_with_nonzero_exit() {
    let root = make_root(&[("boot.img", 300_000)]);
    let bad = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(root.path().join("boot.img")).unwrap();
    bytes[123_456] ^= 0x5a;
    std::fs::write(bad.path().join("boot.img"), &bytes).unwrap();
    let srv = start_ringboot(root.path());
    let badp = bad.path().to_str().unwrap();
    let more = ["--verify", badp, "--deadline", "20", "--quiet"];
    let r = loadtest(&storm(&srv.addr, 5, "boot.img", "ipxe", &more));
    assert_eq!(r.out.status.code(), Some(1));
    assert_eq!(r.json["completed"], 0);
    assert_eq!(r.json["failed"], 5);
    assert_eq!(r.json["failures"]["verify-mismatch"], 5);
    // A manifest with the wrong digest fails the same way.
    let manifest = bad.path().join("SHA256SUMS");
    std::fs::write(&manifest, format!("{}  boot.img\n", "00".repeat(32))).unwrap();
    let more = [
        "--manifest",
        manifest.to_str().unwrap(),
        "--deadline",
        "20",
        "--quiet",
    ];
    let r = loadtest(&storm(&srv.addr, 3, "boot.img", "bios", &more));
    assert_eq!(r.out.status.code(), Some(1));
    assert_eq!(r.json["failures"]["sha256-mismatch"], 3);
}

#[test]
fn vanishing_clients_are_counted_apart_and_do_not_fail_the_run() {
    let root = make_root(&[("boot.img", 1 << 20)]);
    let srv = start_ringboot(root.path());
    let r = loadtest(&storm(
        &srv.addr,
        30,
        "boot.img",
        "uefi",
        &[
            "--vanish",
            "0.3",
            "--seed",
            "7",
            "--verify",
            root.path().to_str().unwrap(),
            "--deadline",
            "30",
            "--quiet",
            "--dup",
            "0.01",
            "--reorder",
            "0.01",
            "--ack-loss",
            "0.01",
        ],
    ));
    let j = &r.json;
    let vanished = j["vanished"].as_u64().unwrap();
    assert!(vanished > 0 && vanished < 30, "{j:#}");
    assert_eq!(
        j["completed"].as_u64().unwrap() + vanished,
        30,
        "{:#}",
        j["failure_examples"]
    );
    assert!(r.out.status.success());
}

#[test]
fn tftpd_hpa_200_uefi_clients_with_2_percent_loss() {
    let root = make_root(&[("images/boot.img", MIB2)]);
    let srv = match start_hpa(root.path()) {
        Ok(s) => s,
        Err(why) => {
            println!("SKIPPED tftpd_hpa storm: {why}");
            return;
        }
    };
    uefi_200_with_2_percent_loss(&srv.addr, root.path(), "50");
}

/// Run the load tester with `args` in a fresh working directory; returns its output and the
/// time it took.
fn loadtest_raw<S: AsRef<OsStr>>(args: &[S], cwd: &Path) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ringboot-loadtest"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (out, t.elapsed())
}

#[test]
fn json_to_stdout_summary_wording_and_plot() {
    let root = make_root(&[("boot/winpe.wim", 200_000)]);
    let srv = start_ringboot(root.path());
    let cwd = tempfile::tempdir().unwrap();
    let plot = cwd.path().join("storm.svg");
    let (out, _) = loadtest_raw(
        &storm(
            &srv.addr,
            4,
            "boot/winpe.wim",
            "uefi",
            &[
                "--verify",
                root.path().to_str().unwrap(),
                "--deadline",
                "30",
                "--json",
                "-",
                "--plot",
                plot.to_str().unwrap(),
            ],
        ),
        cwd.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `--json -`: standard output is the JSON document alone; no file named '-'.
    let j: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    assert!(
        !cwd.path().join("-").exists(),
        "a file named '-' was written"
    );
    assert_eq!(j["completed"], 4, "{j:#}");
    for key in ["clients", "completed", "failed", "vanished", "started_at"] {
        assert!(j.get(key).is_some(), "JSON key {key}");
    }
    // The summary went to standard error, each count beside its own label.
    assert!(
        stderr.contains("machines: 4 | completed 4 | failed 0 | vanished 0"),
        "{stderr}"
    );
    assert!(out.status.success());
    // The plot names the run and draws the active machines.
    let svg = std::fs::read_to_string(&plot).unwrap();
    let title = format!("4 × uefi 'boot/winpe.wim' (195.3 KiB) → {}", srv.addr);
    assert!(svg.contains(&title), "title {title:?} missing:\n{svg}");
    let date = &j["started_at"].as_str().unwrap()[..10];
    assert!(svg.contains(date), "date {date} missing");
    assert!(svg.contains(r#"id="active-machines""#));
    assert!(svg.contains(r#"id="throughput""#));
    assert!(svg.contains("machines active (right)"));
}

#[test]
fn absent_server_is_reported_at_once_from_icmp_port_unreachable() {
    // A port nothing listens on: bound, then released.
    let addr = fresh_addr();
    let cwd = tempfile::tempdir().unwrap();
    let more = ["--no-verify", "--json", "-"];
    let (out, took) = loadtest_raw(&storm(&addr, 5, "boot.wim", "uefi", &more), cwd.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(j["failures"]["unreachable"], 5, "{j:#}");
    assert!(stderr.contains(&format!("no server at {addr}")), "{stderr}");
    // The uefi profile alone would retry for 4 s x 6 = 28 s; the ICMP error ends it at once
    // (the bound is generous for a loaded machine).
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn silent_server_is_reported_after_the_silence_limit() {
    // Something holds the port and never answers (a firewall dropping, say).
    let hole = UdpSocket::bind(fresh_addr()).unwrap();
    let addr = hole.local_addr().unwrap().to_string();
    let cwd = tempfile::tempdir().unwrap();
    let more = ["--no-verify", "--silence-limit", "2", "--json", "-"];
    let (out, took) = loadtest_raw(&storm(&addr, 3, "boot.wim", "uefi", &more), cwd.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(j["failures"]["no-server"], 3, "{j:#}");
    assert!(
        stderr.contains(&format!("stopped early: no answer from {addr}")),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    drop(hole);
}
