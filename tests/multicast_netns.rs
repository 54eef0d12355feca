//! Multicast end to end (PXE MTFTP and RFC 2090), in a network namespace that holds only `lo`.
//!
//! Contract:
//! - Not root: prints "skipped: needs root for network namespaces" and passes. Under `CI=true` as
//!   root every test must run: a missing `ip` or `atftp` fails it.
//! - Multicast never leaves the machine: each test creates its own namespace (`rbmc<pid><n>`) with
//!   `lo` up, multicast on, and `224.0.0.0/4` routed to `lo`, and its test thread enters it
//!   (`setns`) before it starts anything, so the server, the load tester and atftp all run there.
//!   The namespace is deleted when the test ends, even on failure (the guard's Drop).
//! - The server is the real `ringboot serve` (uncapped `--multicast-rate 0` and a 50 ms session
//!   timeout, so CI stays quick); the machines are `ringboot-loadtest --multicast` (its binary is
//!   the one next to this test's target directory when it is newer than the sources, else built
//!   into `<target>/mc-loadtest`); interop is atftp, one at a time (it binds the group port
//!   without SO_REUSEADDR).
//! - Byte counts come from the server's `multicast session finished` log lines: the file goes out
//!   about once per session, not once per client.
//! - Tests run one at a time (a lock): on 2 cores, two storms at once would time each other out.
//! - Hostile peers (issue 8, defect 5) are sockets on 127.0.0.1 in the namespace that send their
//!   requests over and over and never acknowledge anything, as spoofed sources behave; the
//!   clients they must not shut out are the load tester's machines (127.1.0.0/16) and a raw
//!   unicast client. Server timeouts in those tests are long (1 s) so that what the hostile peers
//!   hold on the old code they hold for the whole test: each test fails there, not by chance.

mod common;

use common::loadtest::{json_num, loadtest_bin};
use common::netns::{self, is_root, on_path};
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(120);
static SERIAL: Mutex<()> = Mutex::new(());

/// The namespace of one test (deleted on drop), held with the serial lock.
struct Netns {
    _ns: netns::Netns,
    _serial: MutexGuard<'static, ()>,
}

/// Create a namespace with only a multicast-enabled `lo` and move the calling thread into it.
/// `None` (with the reason printed) when the test cannot run here.
fn enter_netns() -> Option<Netns> {
    if !on_path("ip") {
        let msg = "ip not found: install iproute2";
        assert!(!under_ci(), "{msg}");
        println!("skipped: {msg}");
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = netns::Netns::new("mc");
    ns.ip(&["link set lo multicast on", "route add 224.0.0.0/4 dev lo"]);
    ns.enter();
    let ns = Netns {
        _ns: ns,
        _serial: serial,
    };
    Some(ns)
}

/// Run `body` bounded, inside a fresh namespace (or skip).
fn in_netns<F: FnOnce() + Send + 'static>(body: F) {
    if !is_root() {
        println!("skipped: needs root for network namespaces");
        return;
    }
    // Built (if need be) before entering the namespace: cargo may want the network.
    let _ = loadtest_bin("mc-loadtest");
    bounded(LIMIT, move || {
        let Some(_ns) = enter_netns() else { return };
        body();
    });
}

/// [`serve`] over files of pseudo-random bytes: (name, size in bytes).
fn serve_random(files: &[(&str, usize)], extra: &[&str]) -> Server {
    let root = TestRoot::new();
    for &(name, size) in files {
        root.add_random(name, size);
    }
    serve(root, extra)
}

/// Start ringboot with both multicast protocols on, uncapped: [`serve_pool`] over
/// 239.255.42.0/24 with `--multicast-timeout 50`, plus `extra`.
fn serve(files: TestRoot, extra: &[&str]) -> Server {
    let mut args = vec!["--multicast-timeout", "50"];
    args.extend_from_slice(extra);
    serve_pool(files, "239.255.42.0/24", &args)
}

struct Storm {
    json: String,
    ok: bool,
    out: String,
}

impl Storm {
    fn num(&self, key: &str) -> u64 {
        json_num(&self.json, key) as u64
    }

    fn assert_outcome(&self, completed: u64, vanished: u64) {
        let what = format!("{}\n{}", self.out, self.json);
        assert_eq!(self.num("failed"), 0, "{what}");
        assert_eq!(self.num("completed"), completed, "{what}");
        assert_eq!(self.num("vanished"), vanished, "{what}");
        assert!(self.ok, "non-zero exit: {what}");
    }
}

/// Run the load tester against `srv` with `args`; downloads are checked against the served tree.
fn storm(srv: &Server, args: &[&str]) -> Storm {
    storm_within(srv, args, 60)
}

/// [`storm`] with machines still running after `deadline_s` seconds failing.
fn storm_within(srv: &Server, args: &[&str], deadline_s: u32) -> Storm {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let mut cmd = Command::new(loadtest_bin("mc-loadtest"));
    cmd.arg("--server")
        .arg(srv.addr().to_string())
        .arg("--verify")
        .arg(srv.files.root())
        .args(["--deadline", &deadline_s.to_string(), "--quiet", "--json"])
        .arg(&json)
        .args(args);
    let run = run_with_timeout(cmd, None, Duration::from_secs(90));
    let out = run.output();
    let json = std::fs::read_to_string(&json)
        .unwrap_or_else(|_| panic!("the load tester wrote no JSON: {out}"));
    println!("{out}");
    Storm {
        json,
        ok: run.status.success(),
        out,
    }
}

/// One `multicast session finished` line.
#[derive(Debug, Default)]
struct SessionLog {
    members: u64,
    done: u64,
    vanished: u64,
    bytes_sent: u64,
    file_bytes: u64,
}

fn field(line: &str, key: &str) -> u64 {
    let pat = format!("{key}=");
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(&pat))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// The finished sessions of `file`, waiting up to 20 s for at least `at_least` of them.
fn sessions(srv: &Server, file: &str, at_least: usize) -> Vec<SessionLog> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<SessionLog> = srv
            .log_lines()
            .iter()
            .filter(|l| {
                l.contains("multicast session finished") && l.contains(&format!("file=\"{file}\" "))
            })
            .map(|l| SessionLog {
                members: field(l, "members"),
                done: field(l, "done"),
                vanished: field(l, "vanished"),
                bytes_sent: field(l, "bytes_sent"),
                file_bytes: field(l, "file_bytes"),
            })
            .collect();
        if found.len() >= at_least || Instant::now() > end {
            println!("{file}: {found:?}");
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const RFC: [&str; 4] = ["--multicast", "rfc2090", "--blksize", "1428"];
const PXE: [&str; 8] = [
    "--multicast",
    "pxe",
    "--mtftp-group",
    "239.255.1.1:3001",
    "--mtftp-port",
    "1759",
    "--mtftp-listen-ms",
    "200",
];
const PXE_FILE: &str = "pxe.bin@239.255.1.1:3001";

/// ringboot serving `big.bin` (`big` random bytes) by RFC 2090 and `pxe.bin` (`pxe` bytes) by
/// PXE MTFTP ([`PXE_FILE`]).
fn serve_both(big: usize, pxe: usize) -> Server {
    serve_random(
        &[("big.bin", big), ("pxe.bin", pxe)],
        &["--mtftp", PXE_FILE],
    )
}

fn with(base: &[&'static str], more: &[&'static str]) -> Vec<&'static str> {
    base.iter().chain(more).copied().collect()
}

#[test]
fn rfc2090_twenty_clients_get_64_mib_byte_exact_and_it_goes_out_about_once() {
    in_netns(|| {
        let srv = serve_random(&[("big.bin", 64 * MIB)], &[]);
        let r = storm(&srv, &with(&RFC, &["--clients", "20", "--file", "big.bin"]));
        r.assert_outcome(20, 0);
        assert_eq!(r.num("bytes"), 20 * 64 * MIB as u64);
        let s = sessions(&srv, "big.bin", 1);
        assert_eq!(s.len(), 1, "one session for all: {s:?}");
        assert_eq!((s[0].members, s[0].done), (20, 20));
        assert_eq!(s[0].file_bytes, 64 * MIB as u64);
        assert!(s[0].bytes_sent * 2 < s[0].file_bytes * 3, "{s:?}");
    });
}

#[test]
fn pxe_mtftp_twenty_clients_get_30_mib_byte_exact_and_it_goes_out_about_once() {
    in_netns(|| {
        let srv = serve_random(&[("pxe.bin", 30 * MIB)], &["--mtftp", PXE_FILE]);
        let r = storm(&srv, &with(&PXE, &["--clients", "20", "--file", "pxe.bin"]));
        r.assert_outcome(20, 0);
        assert_eq!(r.num("bytes"), 20 * 30 * MIB as u64);
        let s = sessions(&srv, "pxe.bin", 1);
        let sent: u64 = s.iter().map(|s| s.bytes_sent).sum();
        assert!(sent * 2 < 30 * MIB as u64 * 3, "{s:?}");
    });
}

#[test]
fn rfc2090_clients_joining_at_half_complete() {
    in_netns(|| {
        let srv = serve_random(&[("big.bin", 64 * MIB)], &[]);
        let args = ["--clients", "20", "--file", "big.bin", "--join-late", "0.5"];
        let r = storm(&srv, &with(&RFC, &args));
        r.assert_outcome(20, 0);
        let s = sessions(&srv, "big.bin", 1);
        assert_eq!(s.iter().map(|s| s.done).sum::<u64>(), 20, "{s:?}");
    });
}

#[test]
fn pxe_mtftp_clients_joining_at_half_complete() {
    in_netns(|| {
        let srv = serve_random(&[("pxe.bin", 30 * MIB)], &["--mtftp", PXE_FILE]);
        let args = ["--clients", "20", "--file", "pxe.bin", "--join-late", "0.5"];
        let r = storm(&srv, &with(&PXE, &args));
        r.assert_outcome(20, 0);
        // The late half re-opens for the first half of the file: a second, shorter session.
        let s = sessions(&srv, "pxe.bin", 2);
        let sent: u64 = s.iter().map(|s| s.bytes_sent).sum();
        assert!(sent < 2 * 30 * MIB as u64, "{s:?}");
    });
}

#[test]
fn master_vanishing_mid_stream_does_not_stall_either_protocol() {
    in_netns(|| {
        let srv = serve_both(16 * MIB, 8 * MIB);
        for (proto, file, base) in [("rfc2090", "big.bin", &RFC[..]), ("pxe", "pxe.bin", &PXE)] {
            let args = ["--clients", "20", "--file", file, "--vanish-master"];
            let r = storm(&srv, &with(base, &args));
            r.assert_outcome(19, 1);
            let wall = json_num(&r.json, "wall_seconds");
            assert!(
                wall < 15.0,
                "{proto}: took {wall} s after the master vanished"
            );
            let s = sessions(&srv, file, 1);
            assert_eq!(
                s.iter().map(|s| s.vanished).sum::<u64>(),
                1,
                "{proto}: {s:?}"
            );
        }
    });
}

#[test]
fn five_percent_loss_every_client_completes() {
    in_netns(|| {
        let srv = serve_both(8 * MIB, 2 * MIB);
        let lossy = ["--clients", "20", "--loss", "0.05", "--seed", "5"];
        let r = storm(&srv, &with(&with(&RFC, &lossy), &["--file", "big.bin"]));
        r.assert_outcome(20, 0);
        assert!(json_num(&r.json, "dropped_data") > 0.0);
        // PXE recovers by re-opening after a silence: short timers keep it quick.
        let pxe_timers = [
            "--timeout",
            "0.3",
            "--retries",
            "20",
            "--mtftp-reopen-ms",
            "200",
        ];
        let more: Vec<&str> = lossy
            .iter()
            .chain(&pxe_timers)
            .chain(&["--file", "pxe.bin"])
            .copied()
            .collect();
        let r = storm(&srv, &with(&PXE, &more));
        r.assert_outcome(20, 0);
        assert!(json_num(&r.json, "dropped_data") > 0.0);
    });
}

#[test]
fn atftp_downloads_through_both_protocols() {
    if is_root() && !Client::Atftp.available() {
        return;
    }
    in_netns(|| {
        let files = TestRoot::new();
        let big = files.add_random("big.bin", 3 * MIB + 123);
        let pxe = files.add_random("pxe.bin", 2 * MIB + 45);
        let out_rfc = files.out("rfc.bin");
        let out_pxe = files.out("pxe.bin");
        let srv = serve(files, &["--mtftp", PXE_FILE]);
        let port = srv.port().to_string();
        let mut cmd = Command::new("atftp");
        cmd.args(["--get", "-r", "big.bin", "-l"])
            .arg(&out_rfc)
            .args(["--option", "multicast", "--option", "blksize 1428"])
            .args(["127.0.0.1", &port])
            .stdin(Stdio::null());
        let run = run_with_timeout(cmd, None, Duration::from_secs(30));
        assert!(run.status.success(), "atftp RFC 2090: {}", run.output());
        assert_file_same("atftp RFC 2090", &out_rfc, &big);
        let mut cmd = Command::new("atftp");
        cmd.args(["--mget", "-r", "pxe.bin", "-l"])
            .arg(&out_pxe)
            .args([
                "--mtftp",
                "client-port 3001",
                "--mtftp",
                "mcast-ip 239.255.1.1",
            ])
            .args(["--mtftp", "listen-delay 1", "--mtftp", "timeout-delay 1"])
            .args(["127.0.0.1", "1759"]);
        let run = run_with_timeout(cmd, None, Duration::from_secs(30));
        assert!(run.status.success(), "atftp PXE MTFTP: {}", run.output());
        assert_file_same("atftp PXE MTFTP", &out_pxe, &pxe);
        let s = sessions(&srv, "big.bin", 1);
        assert_eq!(s.iter().map(|s| s.done).sum::<u64>(), 1, "{s:?}");
        assert_eq!(sessions(&srv, "pxe.bin", 1).len(), 1);
    });
}

// ---------------------------------------------------------------------------------------------
// Hostile segments (issue 8, defect 5): pool exhaustion, silence, spoofed opens, join floods
// ---------------------------------------------------------------------------------------------

/// Start ringboot with the RFC 2090 group pool `groups`, uncapped, plus `extra`.
fn serve_pool(files: TestRoot, groups: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--multicast-groups",
        groups,
        "--multicast-port",
        "1758",
        "--mtftp-port",
        "1759",
        "--multicast-rate",
        "0",
    ];
    args.extend_from_slice(extra);
    Server::start(files, &args)
}

/// Sockets on 127.0.0.1, one per request, each sending its request to `to` every `period` and
/// never acknowledging anything (what a spoofed source looks like to the server). Stopped on drop.
struct Hostile {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Hostile {
    fn start(to: SocketAddr, requests: Vec<Vec<u8>>, period: Duration) -> Hostile {
        // Bound here, on the thread that entered the namespace.
        let socks: Vec<UdpSocket> = requests
            .iter()
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0u64;
            // Bounded: at most 10 minutes whatever happens to the test.
            let end = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                for (s, r) in socks.iter().zip(&requests) {
                    let _ = s.send_to(r, to);
                    sent += 1;
                }
                std::thread::sleep(period);
            }
            sent
        });
        Hostile {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mc_rrq(file: &str, blksize: u16) -> Vec<u8> {
    rrq(
        file.as_bytes(),
        &[
            ("multicast", b""),
            ("blksize", blksize.to_string().as_bytes()),
        ],
    )
}

/// Log lines that are `message` itself (not the summary of suppressed ones).
fn lines_with(srv: &Server, message: &str) -> usize {
    srv.log_lines()
        .iter()
        .filter(|l| l.contains(message) && !l.contains("lines suppressed"))
        .count()
}

#[test]
fn rfc2090_odd_blksizes_share_one_group_and_the_next_client_gets_its_file() {
    // Defect 5: requests with blksizes 600..603 held a /30 pool (one session each) and the next
    // RFC 2090 client got no reply at all. Now they share the file's 512-byte session.
    in_netns(|| {
        let files = TestRoot::new();
        files.add_random("big.bin", 8 * MIB);
        let srv = serve_pool(files, "239.255.42.0/30", &["--multicast-timeout", "1000"]);
        let odd = (600..604).map(|b| mc_rrq("big.bin", b)).collect();
        let _hostile = Hostile::start(srv.addr(), odd, Duration::from_millis(10));
        assert!(srv.wait_for_log("multicast session started", Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(300));
        let r = storm_within(
            &srv,
            &with(&RFC, &["--clients", "1", "--file", "big.bin"]),
            30,
        );
        r.assert_outcome(1, 0);
        // By multicast: its 1428-byte session served it.
        let s = sessions(&srv, "big.bin", 1);
        assert!(s.iter().any(|s| s.done == 1), "{s:?}");
    });
}

#[test]
fn rfc2090_pool_exhausted_the_request_is_served_by_unicast() {
    // Defect 5: with every group in use the request was dropped after the worker handed it over.
    // Now admission says no before the hand-over and the worker serves plain unicast TFTP: the
    // OACK has no `multicast` option (RFC 2090 lets a server ignore it).
    in_netns(|| {
        let files = TestRoot::new();
        files.add_random("held.bin", MIB);
        let want = Arc::new(files.add_random("want.bin", 3 * MIB + 7));
        let srv = serve_pool(files, "239.255.42.9/32", &["--multicast-timeout", "1000"]);
        let _hostile = Hostile::start(
            srv.addr(),
            vec![mc_rrq("held.bin", 1468)],
            Duration::from_millis(10),
        );
        assert!(srv.wait_for_log("multicast session started", Duration::from_secs(10)));
        let spec = DownloadSpec::new("want.bin")
            .option("multicast", "")
            .blksize(1428)
            .tsize()
            .verify(want.clone());
        let d = RawClient::new(srv.addr())
            .download(&spec)
            .unwrap_or_else(|e| panic!("no answer or no file: {e:?}"));
        let oack = d.oack.expect("an OACK");
        assert_eq!(oack_get(&oack, "multicast"), None, "{oack:?}");
        assert_eq!(oack_get(&oack, "blksize"), Some("1428"), "{oack:?}");
        assert_eq!(d.len, want.len() as u64);
        assert!(srv.wait_for_log("RFC 2090 request served by unicast", Duration::from_secs(5)));
        // A real RFC 2090 client takes the unicast answer too.
        if on_path("atftp") {
            let out = srv.files.out("want-atftp.bin");
            let mut cmd = Command::new("atftp");
            cmd.args(["--get", "-r", "want.bin", "-l"])
                .arg(&out)
                .args(["--option", "multicast", "--option", "blksize 1428"])
                .args(["127.0.0.1", &srv.port().to_string()])
                .stdin(Stdio::null());
            let run = run_with_timeout(cmd, None, Duration::from_secs(30));
            assert!(run.status.success(), "atftp: {}", run.output());
            assert_file_same("atftp served by unicast", &out, &want);
        }
    });
}

#[test]
fn rfc2090_join_flood_from_one_address_is_capped() {
    // One address joining from many ports: it holds --multicast-max-per-source (4) memberships;
    // the other requests are answered by unicast, and the joins make one log line, not fifty.
    in_netns(|| {
        let srv = serve_random(&[("big.bin", MIB)], &[]);
        let socks: Vec<UdpSocket> = (0..50)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let req = mc_rrq("big.bin", 1428);
        for s in &socks {
            s.send_to(&req, srv.addr()).unwrap();
        }
        let (mut multicast, mut answered) = (0, 0);
        let mut buf = vec![0u8; 70_000];
        for s in &socks {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                answered += 1;
                if let Reply::Oack(o) = Reply::parse(&buf[..n]) {
                    if oack_get(&o, "multicast").is_some() {
                        multicast += 1;
                    }
                }
            }
        }
        assert_eq!(answered, 50, "every request gets an answer");
        assert!((1..=4).contains(&multicast), "{multicast} multicast OACKs");
        let joined = lines_with(&srv, "multicast member joined");
        assert!(joined <= 2, "{joined} join lines");
    });
}

#[test]
fn pxe_spoofed_open_does_not_keep_a_real_client_from_its_file() {
    // Defect 5: a PXE MTFTP open from a source that never ACKs held the file's session while a
    // real client's open went unanswered. Now the real opener is answered at once (block 1
    // unicast), acknowledges, becomes master and gets the file.
    in_netns(|| {
        let files = TestRoot::new();
        files.add_random("pxe.bin", 4 * MIB);
        let srv = serve_pool(
            files,
            "239.255.42.0/24",
            &["--mtftp", PXE_FILE, "--multicast-timeout", "1000"],
        );
        let mtftp: SocketAddr = "127.0.0.1:1759".parse().unwrap();
        let _spoofer = Hostile::start(mtftp, vec![rrq(b"pxe.bin", &[])], Duration::from_millis(10));
        assert!(srv.wait_for_log("multicast session started", Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(300));
        let args = [
            "--clients",
            "1",
            "--file",
            "pxe.bin",
            "--timeout",
            "0.5",
            "--retries",
            "40",
            "--mtftp-reopen-ms",
            "300",
        ];
        let r = storm_within(&srv, &with(&PXE, &args), 20);
        r.assert_outcome(1, 0);
        assert!(srv
            .log_lines()
            .iter()
            .any(|l| l.contains("multicast master changed") && l.contains("master=127.1.")));
    });
}

// ---------------------------------------------------------------------------------------------
// Running it as a service (issue 12): the MTFTP list reloads, refusals and sessions are seen
// ---------------------------------------------------------------------------------------------

/// `GET path` on the metrics listener the server logged (from this thread's namespace).
fn http_get(srv: &Server, path: &str) -> String {
    common::http::http_get(common::http::metrics_addr(srv), path)
}

/// `/metrics` sample `name` (labels as written), polled until it is at least `want`.
fn metric_reaches(srv: &Server, name: &str, want: f64) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let text = http_get(srv, "/metrics");
        if common::http::sample(&text, name).is_some_and(|v| v >= want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A SIGHUP reload of the MTFTP list: a file added is served over PXE MTFTP by a new session, a
/// file removed is refused to new opens, and the running session is not touched. On the way:
/// multicast refusals by reason in `/metrics`, and the running session (file, protocol, group,
/// members, bytes) in `/status.json`.
#[test]
fn mtftp_list_reload_refusals_and_sessions_on_the_status_page() {
    in_netns(|| {
        let files = TestRoot::new();
        files.add_random("pxe.bin", 2 * MIB);
        files.add_random("new.bin", 200_000);
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("ringboot.toml");
        std::fs::write(&conf, format!("mtftp = [\"{PXE_FILE}\"]\n")).unwrap();
        let c = conf.to_str().unwrap().to_owned();
        let srv = serve_pool(
            files,
            "239.255.42.0/24",
            &[
                "--config",
                &c,
                "--metrics",
                "127.0.0.1:0",
                "--multicast-rate",
                "1",
            ],
        );
        let mtftp: SocketAddr = "127.0.0.1:1759".parse().unwrap();
        // Not in the list yet: refused, and counted.
        let r = RawClient::new(mtftp).request(&rrq(b"new.bin", &[]));
        assert!(format!("{r:?}").contains("no MTFTP for this file"), "{r:?}");
        assert!(metric_reaches(
            &srv,
            "ringboot_multicast_refused_total{reason=\"no_mtftp\"}",
            1.0
        ));
        // RFC 2090 with a block size under 512: served by unicast, counted as block_size.
        let r = RawClient::new(srv.addr()).request(&mc_rrq("new.bin", 256));
        assert!(matches!(r, Some((Reply::Oack(_), _))), "{r:?}");
        assert!(metric_reaches(
            &srv,
            "ringboot_multicast_refused_total{reason=\"block_size\"}",
            1.0
        ));
        // A PXE MTFTP session of pxe.bin at 1 Mbit/s: its opener gets block 1 and acknowledges.
        let mut opener = RawClient::new(mtftp);
        let r = opener.request(&rrq(b"pxe.bin", &[]));
        let Some((Reply::Data { block: 1, .. }, from)) = r else {
            panic!("no block 1: {r:?}");
        };
        opener.send_to(&ack(1), from);
        let end = Instant::now() + Duration::from_secs(10);
        let mut json = String::new();
        while Instant::now() < end {
            json = http_get(&srv, "/status.json");
            if json.contains("\"protocol\":\"pxe_mtftp\"") && json.contains("pxe.bin") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let s = &v["multicast"][0];
        assert_eq!(s["file"], "pxe.bin", "{json}");
        assert_eq!(s["group"], "239.255.1.1:3001", "{json}");
        assert!(s["members"].as_u64() >= Some(1), "{json}");
        assert_eq!(s["size"].as_u64(), Some(2 * MIB as u64), "{json}");
        // Reload: new.bin in, pxe.bin out.
        std::fs::write(&conf, "mtftp = [\"new.bin@239.255.1.2:3002\"]\n").unwrap();
        // SAFETY: a signal to the server we started.
        unsafe { libc::kill(srv.pid() as i32, libc::SIGHUP) };
        assert!(srv.wait_for_log("multicast settings reloaded", Duration::from_secs(10)));
        let logs = srv.log_lines().join("\n");
        assert!(!logs.contains("next restart"), "{logs}");
        let r = RawClient::new(mtftp).request(&rrq(b"pxe.bin", &[]));
        assert!(format!("{r:?}").contains("no MTFTP for this file"), "{r:?}");
        let args = [
            "--multicast",
            "pxe",
            "--mtftp-group",
            "239.255.1.2:3002",
            "--mtftp-port",
            "1759",
            "--mtftp-listen-ms",
            "200",
            "--clients",
            "2",
            "--file",
            "new.bin",
        ];
        storm_within(&srv, &args, 30).assert_outcome(2, 0);
        assert!(!sessions(&srv, "new.bin", 1).is_empty());
    });
}
