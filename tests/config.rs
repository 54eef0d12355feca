//! The config file with the real binary: a file plus flags (the flag wins), a file alone (root
//! and listen from it), and what a bad file or a bad flag prints and the exit code (1 for a
//! configuration that cannot be used, one line per problem with key and line; 2 for a usage
//! error, clap's message).

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// `ringboot serve ARGS` that is expected to stop at once; its output.
fn run(args: &[&str]) -> ClientRun {
    let mut cmd = Command::new(ringboot_bin());
    cmd.arg("serve").args(args).env("NO_COLOR", "1");
    die_with_parent(&mut cmd);
    run_with_timeout(cmd, None, Duration::from_secs(30))
}

/// `ringboot serve args`, which must exit with `code` (1: a problem in the configuration, 2: on
/// the command line).
fn exits(code: i32, args: &[&str]) -> ClientRun {
    let r = run(args);
    assert_eq!(r.status.code(), Some(code), "{}", r.output());
    r
}

/// `r`'s standard error holds `part`.
fn says(r: &ClientRun, part: &str) {
    assert!(r.stderr.contains(part), "{}", r.output());
}

/// `r`'s standard error starts with `start`.
fn starts_saying(r: &ClientRun, start: &str) {
    assert!(r.stderr.starts_with(start), "{}", r.output());
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn file_keys_apply_and_flags_win() {
    bounded(LIMIT, || {
        // The file's keys alone, then with a flag over one of them.
        for (flags, blksize) in [(&[][..], "1024"), (&["--max-blksize", "512"][..], "512")] {
            let files = TestRoot::new();
            let src = files.add_random("f.bin", 40_000);
            let cfg = write(
                files.base(),
                "ringboot.toml",
                "# from the file\nmax_blksize = 1024\nmax_window = 4\n",
            );
            let srv = Server::start(files, &[&["--config", &cfg][..], flags].concat());
            let d = raw_get(
                &srv,
                &DownloadSpec::new("f.bin").blksize(1468).windowsize(16),
            );
            assert_same("f.bin", &d.data, &src);
            let oack = d.oack.expect("OACK");
            assert_eq!(oack_get(&oack, "blksize"), Some(blksize), "{oack:?}");
            assert_eq!(oack_get(&oack, "windowsize"), Some("4"), "{oack:?}");
        }
    });
}

#[test]
fn root_and_listen_from_the_file_alone() {
    bounded(LIMIT, || {
        let files = TestRoot::new();
        let src = files.add_random("boot/pxelinux.0", 3000);
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_udp_port();
            let cfg = write(
                files.base(),
                "alone.toml",
                &format!(
                    "root = {:?}\nlisten = [\"127.0.0.1:{port}\"]\nio_backend = {:?}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n[http]\n",
                    files.root().to_str().unwrap(),
                    backend()
                ),
            );
            let mut cmd = Command::new(ringboot_bin());
            cmd.args(["serve", "--config", &cfg])
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn().expect("start ringboot");
            let lines = Arc::new(Mutex::new(Vec::<String>::new()));
            let l2 = lines.clone();
            let err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    l2.lock().unwrap().push(strip_ansi(&line));
                }
            });
            let deadline = Instant::now() + Duration::from_secs(20);
            let listening = format!("listening on 127.0.0.1:{port}");
            while Instant::now() < deadline
                && !lines.lock().unwrap().iter().any(|l| l.contains(&listening))
                && child.try_wait().ok().flatten().is_none()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let log = lines.lock().unwrap().join("\n");
            if log.contains(&listening) {
                let addr = format!("127.0.0.1:{port}").parse().unwrap();
                let d = RawClient::new(addr)
                    .download(&DownloadSpec::new("boot/pxelinux.0"))
                    .expect("download");
                assert_same("pxelinux.0", &d.data, &src);
                // The reserved table is accepted with a warning; [metrics] starts the listener.
                assert!(
                    log.contains("WARN") && log.contains("[http] table is reserved"),
                    "{log}"
                );
                assert!(log.contains("status page on http://127.0.0.1:"), "{log}");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            last = log;
            if !last.contains("in use") {
                break;
            }
        }
        panic!("ringboot did not start from the config file alone:\n{last}");
    });
}

#[test]
fn a_bad_file_names_each_key_and_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let cfg = write(
        dir.path(),
        "bad.toml",
        &format!(
            "root = {:?}\nallow_fragmentation = \"yes\"\nmax_blksize = \"1468\"\ntimeout = 300\nmax_blksiz = 1\n\n[dhcp]\nmode = \"proxy\"\nlease_time = true\n",
            root.to_str().unwrap()
        ),
    );
    let r = exits(1, &["--config", &cfg]);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("ringboot: {cfg}:2:23: allow_fragmentation: invalid type: string \"yes\", expected a boolean"),
            format!("ringboot: {cfg}:3:15: max_blksize: invalid type: string \"1468\", expected an integer in 8..=65464"),
            format!("ringboot: {cfg}:4:11: timeout: invalid value: integer `300`, expected a duration in 1s..=255s (an integer counts in s; or a string such as \"200ms\", \"3s\", \"5m\", \"1h\")"),
            format!("ringboot: {cfg}:5:1: max_blksiz: unknown key `max_blksiz`; did you mean `max_blksize`?"),
            format!("ringboot: {cfg}:9:14: dhcp.lease_time: invalid type: boolean `true`, expected a duration (an integer counts in s; or a string such as \"200ms\", \"3s\", \"5m\", \"1h\")"),
        ],
        "{}",
        r.output()
    );
    assert!(!r.stderr.contains("listening on"));
}

#[test]
fn a_syntax_error_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "syntax.toml",
        "root = \"/srv\"\nlisten = [\"0.0.0.0:69\"\nmax_blksize = 1468\n",
    );
    let r = exits(1, &["--config", &cfg]);
    starts_saying(&r, &format!("ringboot: {cfg}:"));
}

#[test]
fn whole_config_problems_are_listed_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    // No root at all.
    let cfg = write(dir.path(), "noroot.toml", "max_blksize = 1468\n");
    let r = exits(1, &["--config", &cfg]);
    assert_eq!(
        r.stderr.trim(),
        "ringboot: no directory to serve: give --root DIR or the config key `root`"
    );
    // Every DHCP mistake at once, before any socket is opened.
    let cfg = write(
        dir.path(),
        "dhcp.toml",
        "[dhcp]\nmode = \"proxy\"\nclient_rate = 0\n",
    );
    let r = exits(1, &["--config", &cfg, "--root", root]);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.output());
    assert!(
        lines[0].contains("proxy DHCP mode needs a boot file"),
        "{}",
        r.output()
    );
    assert!(lines[1].contains("[dhcp] client_rate"), "{}", r.output());
    // A file that cannot be read.
    let r = exits(
        1,
        &["--config", "/nonexistent/ringboot.toml", "--root", root],
    );
    starts_saying(
        &r,
        "ringboot: cannot read the config file /nonexistent/ringboot.toml: ",
    );
}

#[test]
fn command_line_errors_keep_clap_format_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let cfg = write(dir.path(), "ok.toml", "max_blksize = 1468\n");
    let r = exits(
        2,
        &["--config", &cfg, "--root", root, "--max-blksize", "70000"],
    );
    says(
        &r,
        "error: invalid value '70000' for '--max-blksize <N>': 70000 is not in 8..=65464",
    );
    let r = exits(2, &["--root", root, "--allow-fragmentation", "yes"]);
    says(&r, "--allow-fragmentation");
    let r = exits(2, &["--root", root, "--listen", "127.0.0.1"]);
    says(&r, "127.0.0.1:69");
    let r = exits(2, &[]);
    says(&r, "--root <DIR>");
}
