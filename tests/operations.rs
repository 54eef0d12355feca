//! Running ringboot as a service (issue 12): the metrics listener after a transfer, log lines
//! without colour and with one vocabulary, `ringboot check` exit codes, the privilege drop,
//! SIGHUP that does not kill and reloads (transfer options, caps above the start value), SIGTERM
//! that lets a transfer finish (its resent request a duplicate, not a refusal).

mod common;

use common::http::{http_get, metrics_addr, sample};
use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// Transfers ended, every outcome.
fn ended(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("ringboot_tftp_transfers_ended_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_after_a_transfer() {
    let files = TestRoot::new();
    let want = files.add_random("boot/boot.wim", 300_000);
    let srv = Server::start(files, &["--metrics", "127.0.0.1:0"]);
    let m = metrics_addr(&srv);
    let d = RawClient::new(srv.addr())
        .download(&DownloadSpec::new("boot/boot.wim").blksize(1428))
        .expect("download");
    assert_same("boot.wim", &d.data, &want);
    let _ = RawClient::new(srv.addr()).request(&rrq(b"missing.bin", &[]));
    // The worker records the end when the last ACK is in: wait for the counters.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = http_get(m, "/metrics");
        if ended(&text) >= 1.0
            && sample(
                &text,
                "ringboot_tftp_requests_refused_total{reason=\"not_found\"}",
            ) == Some(1.0)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (name, at_least) in [
        ("ringboot_tftp_transfers_started_total", 1.0),
        (
            "ringboot_tftp_requests_refused_total{reason=\"not_found\"}",
            1.0,
        ),
        ("ringboot_tftp_sent_bytes_total", 300_000.0),
        ("ringboot_tftp_blocks_sent_total", 211.0),
    ] {
        let v = sample(&text, name).unwrap_or_else(|| panic!("no {name}\n{text}"));
        assert!(v >= at_least, "{name} = {v}, want >= {at_least}\n{text}");
    }
    assert_eq!(
        sample(&text, "ringboot_tftp_transfers_active"),
        Some(0.0),
        "{text}"
    );
    // The client may close its port before the server has the last ACK (then `aborted`).
    assert!(ended(&text) >= 1.0, "{text}");
    let completed = "ringboot_tftp_transfers_ended_total{outcome=\"completed\"}";
    if sample(&text, completed) == Some(1.0) {
        for name in [
            "ringboot_tftp_transfer_duration_seconds_count",
            "ringboot_tftp_transfer_throughput_bytes_per_second_count",
        ] {
            assert_eq!(sample(&text, name), Some(1.0), "{name}\n{text}");
        }
    }
    assert!(text.contains("# TYPE ringboot_tftp_transfers_started_total counter"));
    let info = text
        .lines()
        .find(|l| l.starts_with("ringboot_info{"))
        .unwrap();
    assert!(
        info.contains(&format!(
            "backend=\"{}\"",
            srv.log_lines()
                .iter()
                .find(|l| l.contains("listening on"))
                .and_then(|l| l.split("backend=").nth(1))
                .map(|b| b.split(',').next().unwrap().to_owned())
                .unwrap()
        )),
        "{info}"
    );
    assert!(http_get(m, "/").contains("<html"));
    let json: serde_json::Value = serde_json::from_str(&http_get(m, "/status.json")).unwrap();
    assert!(json.is_object(), "{json}");
}

#[test]
fn log_lines_have_no_colour_and_one_vocabulary() {
    let files = TestRoot::new();
    let want = files.add_random("Boot/x64/boot.wim", 100_000);
    // A pipe, and NO_COLOR unset: still no colour.
    let srv = Server::start_with(files, &[], &|c| {
        c.env_remove("NO_COLOR");
    });
    // The client's port stays open a moment: a last block resent before the final ACK is in
    // must not find it closed (the transfer would end `aborted`).
    let mut client = RawClient::new(srv.addr());
    let d = client
        .download(&DownloadSpec::new("boot\\x64\\BOOT.WIM").tsize())
        .expect("download");
    std::thread::sleep(Duration::from_millis(300));
    drop(client);
    assert_same("boot.wim", &d.data, &want);
    let _ = RawClient::new(srv.addr()).request(&rrq(b"boot\\x64\\missing.com", &[]));
    // tftp-hpa answers a refusal with an ERROR to the listening port: not a warning.
    RawClient::new(srv.addr()).send(&error_packet(
        ringboot::proto::tftp::packet::ErrorCode::NotDefined,
        "",
    ));
    assert!(srv.wait_for_log("transfer finished", Duration::from_secs(10)));
    assert!(srv.wait_for_log("request refused", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    let log = srv.log_lines().join("\n");
    assert!(!log.contains('\x1b'), "ANSI escape in a piped log:\n{log}");
    let started = srv
        .log_lines()
        .into_iter()
        .find(|l| l.contains("transfer started"))
        .unwrap_or_else(|| panic!("no INFO transfer started line\n{log}"));
    assert!(started.contains(" INFO "), "{started}");
    assert!(started.contains("file=\"Boot/x64/boot.wim\""), "{started}");
    let ended = srv
        .log_lines()
        .into_iter()
        .find(|l| l.contains("transfer finished"))
        .unwrap();
    for field in [
        "file=\"Boot/x64/boot.wim\"",
        "bytes=100000",
        "duration_ms=",
        "throughput_bps=",
        "resent=",
        "timeouts=",
        "outcome=\"completed\"",
        "client=",
    ] {
        assert!(ended.contains(field), "{field} missing: {ended}");
    }
    let refused = srv
        .log_lines()
        .into_iter()
        .find(|l| l.contains("request refused"))
        .unwrap();
    assert!(refused.contains("reason="), "{refused}");
    for leak in ["Some(", "None", "PxeMtftp", "error="] {
        assert!(!log.contains(leak), "{leak} in the log:\n{log}");
    }
    assert!(
        !log.contains("malformed"),
        "a client's ERROR is normal:\n{log}"
    );
}

fn check(args: &[&str]) -> (bool, String) {
    let out = Command::new(ringboot_bin())
        .arg("check")
        .args(args)
        .output()
        .expect("run ringboot check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "exit code {:?}: {text}",
        out.status
    );
    (out.status.success(), text)
}

#[test]
fn check_exit_codes_and_one_line_per_problem() {
    let files = TestRoot::new();
    files.add("Boot/PXELINUX.0", b"x".to_vec());
    let root = files.root();
    let root = root.to_str().unwrap();
    // `check` of a proxy DHCP set-up over `root` whose boot file (and more) is `rest`.
    let check_proxy = |rest: &[&str]| {
        let mut args = vec!["--root", root, "--dhcp", "proxy", "--boot-file"];
        args.extend_from_slice(rest);
        check(&args)
    };
    let (ok, text) = check_proxy(&["boot/pxelinux.0"]);
    assert!(ok, "found case-insensitively: {text}");
    let (ok, text) = check_proxy(&["nothere.0"]);
    assert!(!ok, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("error:") && l.contains("nothere.0")),
        "{text}"
    );
    let (ok, text) = check(&[
        "--root",
        root,
        "--dhcp",
        "full",
        "--dhcp-range",
        "10.9.0.10,10.9.0.20",
        "--boot-file",
        "boot/pxelinux.0",
    ]);
    assert!(!ok && text.contains("explicit interface"), "{text}");
    let (ok, text) = check(&["--root", root, "--boot-file", "boot/pxelinux.0"]);
    assert!(
        ok && text
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains("--boot-file")),
        "ignored flags named: {text}"
    );
    let (ok, text) = check(&["--root", root, "--mtftp", "gone.wim@239.255.1.1:3001"]);
    assert!(!ok && text.contains("gone.wim"), "{text}");
    let (ok, text) = check(&["--root", root, "--user", "no-such-user-rb"]);
    assert!(!ok && text.contains("no such user"), "{text}");
    let (ok, text) = check(&["--root", "/nonexistent-ringboot-root"]);
    assert!(!ok, "{text}");
    // Two problems, two lines.
    let (ok, text) = check_proxy(&["a.0", "--mtftp", "b.wim@239.255.1.1:3001"]);
    assert!(
        !ok && text.lines().filter(|l| l.starts_with("error:")).count() == 2,
        "{text}"
    );
}

#[test]
fn drops_root_and_still_serves() {
    // SAFETY: a plain getter.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: not root");
        return;
    }
    let files = TestRoot::new();
    let want = files.add_random("boot.wim", 200_000);
    // The files must be readable by nobody.
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(files.base())
        .status()
        .unwrap();
    let srv = Server::start(files, &["--user", "nobody"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.split_whitespace().skip(1).all(|u| u != "0"), "{uid}");
    let caps = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(
        caps.ends_with("0000000000000000"),
        "no capability left without DHCP: {caps}"
    );
    let d = RawClient::new(srv.addr())
        .download(&DownloadSpec::new("boot.wim"))
        .expect("download as nobody");
    assert_same("boot.wim", &d.data, &want);
}

/// A server started with `--config` naming a file that holds `text`, and `extra` flags; the
/// directory of the file (delete on drop) and its path, for [`reload_with`].
fn start_with_config(
    files: TestRoot,
    text: &str,
    extra: &[&str],
) -> (Server, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ringboot.toml");
    std::fs::write(&conf, text).unwrap();
    let mut args = vec!["--config", conf.to_str().unwrap()];
    args.extend_from_slice(extra);
    let srv = Server::start(files, &args);
    (srv, dir, conf)
}

/// Write `text` to the config file `conf`, send SIGHUP, wait for the reload; the log so far.
fn reload_with(srv: &Server, conf: &std::path::Path, text: &str) -> String {
    std::fs::write(conf, text).unwrap();
    // SAFETY: a signal to the server we started.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGHUP) };
    assert!(srv.wait_for_log("configuration reloaded", Duration::from_secs(10)));
    srv.log_lines().join("\n")
}

/// A SIGHUP reload applies new transfer caps (per client address, rate, global) without a
/// restart: one INFO line with the caps now in force, no restart warning for them.
#[test]
fn sighup_applies_new_transfer_caps() {
    let files = TestRoot::new();
    let want = files.add_random("boot.wim", 10_000);
    let (srv, _dir, conf) = start_with_config(
        files,
        "max_transfers = 100\nmax_transfers_per_client = 4\nclient_rate = 0\n",
        &[],
    );
    let logs = reload_with(
        &srv,
        &conf,
        "max_transfers = 50\nmax_transfers_per_client = 2\nclient_rate = 7\n",
    );
    assert!(
        logs.contains("50 at once, 2 per client address, 7 new per second per address"),
        "{logs}"
    );
    assert!(!logs.contains("next restart"), "{logs}");
    let d = RawClient::new(srv.addr())
        .download(&DownloadSpec::new("boot.wim"))
        .expect("download after the reload");
    assert_same("boot.wim", &d.data, &want);
}

#[test]
fn sighup_does_not_kill_and_sigterm_exits_0() {
    let files = TestRoot::new();
    let want = files.add_random("boot.wim", 100_000);
    let mut srv = Server::start(files, &[]);
    // SAFETY: signals to the server we started.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGHUP) };
    assert!(srv.wait_for_log("configuration reloaded", Duration::from_secs(10)));
    srv.assert_alive();
    let d = RawClient::new(srv.addr())
        .download(&DownloadSpec::new("boot.wim"))
        .expect("download");
    assert_same("boot.wim", &d.data, &want);
    unsafe { libc::kill(srv.pid() as i32, libc::SIGTERM) };
    let st = srv
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", srv.log_lines().join("\n"));
}

#[test]
fn sigterm_lets_a_running_transfer_finish() {
    let files = TestRoot::new();
    let want = files.add_random("big.bin", 300 * 512);
    let mut srv = Server::start(files, &["--drain-timeout", "30"]);
    // A lockstep download that stops at block 50 until the server drains.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock.send_to(&rrq(b"big.bin", &[]), srv.addr()).unwrap();
    let (mut got, mut next, mut paused) = (Vec::new(), 1u16, false);
    let mut buf = [0u8; 1024];
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        assert!(n >= 4 && buf[1] == 3, "not DATA: {:?}", &buf[..n.min(40)]);
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if block == next {
            got.extend_from_slice(&buf[4..n]);
            next += 1;
        }
        if block == 50 && !paused {
            paused = true;
            // SAFETY: a signal to the server we started.
            unsafe { libc::kill(srv.pid() as i32, libc::SIGTERM) };
            assert!(srv.wait_for_log("refusing new requests", Duration::from_secs(10)));
            // A new request is refused while the running one goes on.
            let r = RawClient::new(srv.addr()).request(&rrq(b"big.bin", &[]));
            let text = format!("{r:?}");
            assert!(text.contains("shutting down"), "{text}");
            // The running transfer's request again (a client that resends it): the duplicate
            // it is, never an ERROR (the loop takes nothing but DATA).
            sock.send_to(&rrq(b"big.bin", &[]), srv.addr()).unwrap();
        }
        sock.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
        if block + 1 == next && n < 4 + 512 {
            break;
        }
    }
    assert_same("big.bin", &got, &want);
    let st = srv
        .wait_exit(Duration::from_secs(20))
        .expect("exits once drained");
    assert_eq!(st.code(), Some(0));
    assert!(srv
        .log_lines()
        .iter()
        .any(|l| l.contains("every transfer finished")));
}

/// A lockstep download (window 1) driven by hand: `start` sends the request and takes the first
/// DATA (after acknowledging the OACK); `step` acknowledges the last block and takes the next.
struct Lockstep {
    sock: std::net::UdpSocket,
    tid: Option<SocketAddr>,
    got: Vec<u8>,
    next: u16,
    blksize: usize,
    done: bool,
}

impl Lockstep {
    fn start(server: SocketAddr, name: &[u8], blksize: u16) -> Lockstep {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let b = blksize.to_string();
        sock.send_to(&rrq(name, &[("blksize", b.as_bytes())]), server)
            .unwrap();
        let mut l = Lockstep {
            sock,
            tid: None,
            got: Vec::new(),
            next: 1,
            blksize: 512,
            done: false,
        };
        let mut buf = [0u8; 2048];
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            let Ok((n, from)) = l.sock.recv_from(&mut buf) else {
                continue;
            };
            match Reply::parse(&buf[..n]) {
                Reply::Oack(opts) => {
                    l.blksize = oack_get(&opts, "blksize").unwrap().parse().unwrap();
                    l.tid = Some(from);
                    l.sock.send_to(&ack(0), from).unwrap();
                }
                Reply::Data { .. } => {
                    l.take(&buf[..n], from);
                    return l;
                }
                r => panic!("{r:?}"),
            }
        }
        panic!("no first block");
    }

    fn take(&mut self, d: &[u8], from: SocketAddr) {
        let block = u16::from_be_bytes([d[2], d[3]]);
        if block == self.next {
            self.got.extend_from_slice(&d[4..]);
            self.next += 1;
            self.tid = Some(from);
            self.done = d.len() - 4 < self.blksize;
        }
    }

    /// Acknowledge what was taken and take the next block; false once the last was taken.
    fn step(&mut self) -> bool {
        let tid = self.tid.unwrap();
        self.sock.send_to(&ack(self.next - 1), tid).unwrap();
        if self.done {
            return false;
        }
        let mut buf = [0u8; 2048];
        let end = Instant::now() + Duration::from_secs(10);
        let want = self.next;
        while Instant::now() < end && self.next == want {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(buf[1], 3, "not DATA: {:?}", Reply::parse(&buf[..n]));
                    assert!(n - 4 <= self.blksize, "a block larger than negotiated");
                    self.take(&buf[..n], from);
                }
                Err(_) => {
                    self.sock.send_to(&ack(self.next - 1), tid).unwrap();
                }
            }
        }
        assert_ne!(self.next, want, "block {want} never came");
        true
    }
}

/// A SIGHUP reload changes the transfer options and raises `max_transfers` above its start
/// value for new requests, while a paused running transfer goes on with what it negotiated.
#[test]
fn sighup_changes_blksize_and_raises_max_transfers_for_new_requests_only() {
    let files = TestRoot::new();
    let want = files.add_random("boot.wim", 40 * 1428 + 77);
    let (srv, _dir, conf) = start_with_config(
        files,
        "max_blksize = 1428\nmax_transfers = 1\nmax_transfers_per_client = 8\nclient_rate = 0\n",
        &["--workers", "1"],
    );
    // A running transfer, paused after its first block, holds the one place.
    let mut running = Lockstep::start(srv.addr(), b"boot.wim", 1428);
    assert_eq!(running.blksize, 1428);
    let r = RawClient::new(srv.addr()).request(&rrq(b"boot.wim", &[]));
    assert!(format!("{r:?}").contains("too many transfers"), "{r:?}");
    let logs = reload_with(
        &srv,
        &conf,
        "max_blksize = 512\nmax_window = 2\nmax_transfers = 4\nmax_transfers_per_client = 8\nclient_rate = 0\n",
    );
    assert!(!logs.contains("next restart"), "{logs}");
    assert!(logs.contains("4 at once"), "{logs}");
    assert!(logs.contains("transfer options for new requests"), "{logs}");
    // A new request now gets a place, and at most the new block size and window.
    let d = RawClient::new(srv.addr())
        .download(&DownloadSpec::new("boot.wim").blksize(1428).windowsize(8))
        .expect("download after the reload");
    assert_same("boot.wim", &d.data, &want);
    assert_eq!((d.blksize, d.window), (512, 2));
    // The paused transfer goes on with its own block size, byte for byte.
    while running.step() {}
    assert_eq!(running.blksize, 1428);
    assert_same("boot.wim (running)", &running.got, &want);
}

/// DHCP messages the proxy does not answer are counted by reason: a client that is not PXE
/// (`not_pxe`) and a datagram that does not parse (`malformed`). In a namespace of its own
/// (`lo` only), so port 67 is nobody else's.
#[test]
fn dhcp_ignored_by_reason_in_the_metrics() {
    use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType};
    if !common::netns::preflight(&["ip"], "iproute2") {
        return;
    }
    bounded(Duration::from_secs(60), || {
        let ns = common::netns::Netns::new("op");
        ns.enter();
        let files = TestRoot::new();
        files.add("pxelinux.0", vec![1; 100]);
        let args = [
            "--dhcp",
            "proxy",
            "--dhcp-interface",
            "lo",
            "--boot-file",
            "pxelinux.0",
            "--metrics",
            "127.0.0.1:0",
        ];
        let srv = Server::start(files, &args);
        let m = metrics_addr(&srv);
        let mut plain = Message::new_with_id(
            0x1234_5678,
            [0; 4].into(),
            [0; 4].into(),
            [0; 4].into(),
            [0; 4].into(),
            &[2, 0, 0, 0, 0, 1],
        );
        plain
            .set_htype(HType::Eth)
            .set_flags(Flags::default().set_broadcast());
        plain
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to: SocketAddr = "127.0.0.1:67".parse().unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        let want = [
            "ringboot_dhcp_ignored_total{reason=\"not_pxe\"}",
            "ringboot_dhcp_ignored_total{reason=\"malformed\"}",
        ];
        let mut text = String::new();
        while Instant::now() < end {
            sock.send_to(&ringboot::proto::dhcp::wire::encode(&plain), to)
                .unwrap();
            sock.send_to(&[1, 1, 6, 0, 9, 9], to).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            text = http_get(m, "/metrics");
            if want
                .iter()
                .all(|n| sample(&text, n).is_some_and(|v| v >= 1.0))
            {
                break;
            }
        }
        for n in want {
            assert!(sample(&text, n).is_some_and(|v| v >= 1.0), "{n}\n{text}");
        }
    });
}

/// `/metrics` counts a running transfer's bytes as it goes (not only at its end), and the time
/// to first block once the client acknowledged block 1.
#[test]
fn bytes_sent_grow_during_a_transfer() {
    let files = TestRoot::new();
    let want = files.add_random("big.bin", 200 * 512);
    let srv = Server::start(files, &["--metrics", "127.0.0.1:0"]);
    let m = metrics_addr(&srv);
    let mut running = Lockstep::start(srv.addr(), b"big.bin", 512);
    for _ in 0..40 {
        assert!(running.step());
    }
    let end = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < end {
        text = http_get(m, "/metrics");
        if sample(&text, "ringboot_tftp_sent_bytes_total").is_some_and(|v| v >= 40.0 * 512.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sample(&text, "ringboot_tftp_transfers_active"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "ringboot_tftp_sent_bytes_total").is_some_and(|v| v >= 40.0 * 512.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ringboot_tftp_first_block_seconds_count"),
        Some(1.0),
        "{text}"
    );
    while running.step() {}
    assert_same("big.bin", &running.got, &want);
}
