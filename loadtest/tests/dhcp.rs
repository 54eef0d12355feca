//! The `--dhcp` phase end to end, in network namespaces (root only).
//!
//! - full mode: the real `ringboot serve --dhcp full` in a server namespace, the real
//!   `ringboot-loadtest --dhcp full` with 100 machines in a client namespace on a veth pair: all
//!   complete byte-exact, 100 distinct addresses are leased (in the JSON and in the lease file),
//!   and the TFTP server is the one the DHCP answer named.
//! - proxy mode: dnsmasq hands out the addresses, ringboot `--dhcp proxy` the boot file (port 67
//!   proxy OFFER, then the port-4011 ACK); 30 machines complete.
//! - an interface without an IPv4 address (or a missing one) is a usage error (exit 2) that says
//!   what to do, before any machine starts.
//!
//! Not root: prints "skipped: needs root for network namespaces" and passes. Under `CI=true` as
//! root it must run: a missing `ip` or `dnsmasq` fails it. Namespaces and veths carry the PID and a
//! counter, live only inside the namespaces (nothing routes out) and are deleted by the guard's
//! Drop, as is every process started here (by its PID).
//!
//! The ringboot binary: `RINGBOOT_BIN`, else the newest one in the target directories
//! (`common::target_dirs`) when it has the `--dhcp` flags, else one built now
//! (`cargo build -p ringboot --bin ringboot`).

#[path = "../../tests/common/netns.rs"]
mod netns;

mod common;

use common::{content, ringboot_bin};
use netns::{dhcp_flags, preflight, sh, veth};
use serde_json::Value;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn has_dhcp_flags(bin: &Path) -> bool {
    Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--dhcp-range"))
}

/// A [`netns::Lab`] with the load tester's ways to start things in it.
struct Lab(netns::Lab);

impl std::ops::Deref for Lab {
    type Target = netns::Lab;
    fn deref(&self) -> &netns::Lab {
        &self.0
    }
}

impl std::ops::DerefMut for Lab {
    fn deref_mut(&mut self) -> &mut netns::Lab {
        &mut self.0
    }
}

impl Lab {
    fn new() -> Lab {
        Lab(netns::Lab::new("rbl"))
    }

    /// `ip -n <ns> <cmd>`.
    fn ns_ip(&self, ns: &str, cmd: &str) {
        sh(&format!("ip -n {ns} {cmd}"));
    }

    /// Start `args` inside `ns`, output to `<log>.log`; killed with this test.
    fn spawn(&mut self, ns: &str, log: &str, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(args)
            .stdout(File::create(self.path(&format!("{log}.log"))).unwrap())
            .stderr(File::create(self.path(&format!("{log}.err"))).unwrap());
        // SAFETY: prctl in the child before exec: it dies with this test.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.children.push(cmd.spawn().unwrap());
    }

    fn log(&self, name: &str) -> String {
        let mut s = std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default();
        s += &std::fs::read_to_string(self.path(&format!("{name}.err"))).unwrap_or_default();
        s
    }

    /// Wait until `name`'s log says `what`.
    fn wait_log(&mut self, name: &str, what: &str) {
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if self.log(name).contains(what) {
                return;
            }
            if self
                .children
                .iter_mut()
                .any(|c| matches!(c.try_wait(), Ok(Some(_))))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{name} never logged {what:?}:\n{}", self.log(name));
    }

    /// ringboot in `ns` serving `root` on `addr:6969` with `dhcp` flags. The emulated machines
    /// share the client namespace's one address, so the per-address caps are lifted.
    fn ringboot(&mut self, ns: &str, addr: &str, root: &Path, dhcp: &[&str]) {
        let bin = ringboot_bin(has_dhcp_flags);
        let listen = format!("{addr}:6969");
        let mut args = vec![
            bin.to_str().unwrap(),
            "serve",
            "--root",
            root.to_str().unwrap(),
            "--listen",
            &listen,
            "--max-transfers-per-client",
            "1000",
            "--client-rate",
            "0",
        ];
        args.extend_from_slice(dhcp);
        self.spawn(ns, "ringboot", &args);
        self.wait_log("ringboot", "listening on");
    }

    /// The load tester in `ns`; returns its output and JSON report.
    fn loadtest(&self, ns: &str, args: &[&str]) -> (Output, Value) {
        let json = self.path("report.json");
        let out = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ringboot-loadtest")])
            .args(args)
            .arg("--json")
            .arg(&json)
            .args(["--deadline", "40"])
            .output()
            .unwrap();
        let rep = std::fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        (out, rep)
    }
}

fn served_root(lab: &Lab) -> PathBuf {
    let root = lab.path("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("pxelinux.0"), content(64 * 1024, 4)).unwrap();
    root
}

fn explain(out: &Output, lab: &Lab) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}\nringboot:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        lab.log("ringboot")
    )
}

/// The flags of a storm of `clients` machines that get their addresses by `mode` DHCP through
/// `iface`, then fetch pxelinux.0; `more` after them.
fn dhcp_storm<'a>(
    mode: &'a str,
    iface: &'a str,
    clients: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let storm = [
        "--dhcp",
        mode,
        "--dhcp-interface",
        iface,
        "--clients",
        clients,
        "--file",
        "pxelinux.0",
    ];
    [&storm[..], more].concat()
}

#[test]
fn full_mode_storm_of_100_machines_completes() {
    if !preflight(&["ip"], "iproute2 dnsmasq-base") {
        return;
    }
    let mut lab = Lab::new();
    let x = 10 + std::process::id() % 200;
    let (s, c, si, ci) = lab.server_and_client();
    let server = format!("10.99.{x}.1");
    sh(&format!("ip -n {s} addr add {server}/24 dev {si}"));
    // The machines' TFTP traffic leaves from the client namespace's one address.
    sh(&format!("ip -n {c} addr add 10.99.{x}.2/24 dev {ci}"));
    let root = served_root(&lab);
    let leases = lab.path("dhcp.leases");
    let range = format!("10.99.{x}.100,10.99.{x}.250");
    lab.ringboot(
        &s,
        &server,
        &root,
        &[
            &dhcp_flags("full", &si)[..],
            &["--dhcp-range", &range],
            &["--dhcp-lease-file", leases.to_str().unwrap()],
        ]
        .concat(),
    );

    let t = Instant::now();
    let tftp = format!("{server}:6969");
    let (out, rep) = lab.loadtest(
        &c,
        &dhcp_storm(
            "full",
            &ci,
            "100",
            &["--server", &tftp, "--verify", root.to_str().unwrap()],
        ),
    );
    println!(
        "{}({:.1} s)",
        String::from_utf8_lossy(&out.stdout),
        t.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "{}", explain(&out, &lab));
    assert_eq!(rep["completed"], 100, "{}", explain(&out, &lab));
    assert_eq!(rep["dhcp"]["leased"], 100);
    assert_eq!(rep["dhcp"]["distinct_addresses"], 100);
    assert_eq!(rep["dhcp"]["tftp_servers"], serde_json::json!([server]));
    assert_eq!(rep["dhcp_ms"]["count"], 100);
    assert!(rep["dhcp_ms"]["p99"].as_f64().unwrap() <= rep["duration_ms"]["max"].as_f64().unwrap());

    // The lease file: 100 bound leases, 100 distinct addresses in the range, one per machine MAC.
    let text = std::fs::read_to_string(&leases).unwrap();
    let bound: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"bound")).then(|| (f[0], f[1]))
        })
        .collect();
    let addrs: std::collections::BTreeSet<&str> = bound.iter().map(|b| b.0).collect();
    let macs: std::collections::BTreeSet<&str> = bound.iter().map(|b| b.1).collect();
    assert_eq!(
        (bound.len(), addrs.len(), macs.len()),
        (100, 100, 100),
        "{text}"
    );
    for a in &addrs {
        let last: u32 = a.rsplit('.').next().unwrap().parse().unwrap();
        assert!(
            a.starts_with(&format!("10.99.{x}.")) && (100..=250).contains(&last),
            "{a}"
        );
    }
    assert!(
        macs.contains("hw-01525400000063"),
        "machine 99's MAC: {text}"
    );
}

#[test]
fn proxy_mode_beside_dnsmasq_goes_through_port_4011() {
    if !preflight(&["ip", "dnsmasq"], "iproute2 dnsmasq-base") {
        return;
    }
    let mut lab = Lab::new();
    let x = 10 + std::process::id() % 200;
    let id = lab.id.clone();
    let (s, d, c) = (lab.ns("s"), lab.ns("d"), lab.ns("c"));
    // One segment: a bridge in the server namespace; dnsmasq and the machines on veths.
    sh(&format!("ip -n {s} link add rblbr type bridge"));
    sh(&format!("ip -n {s} link set rblbr up"));
    let server = format!("10.99.{x}.1");
    sh(&format!("ip -n {s} addr add {server}/24 dev rblbr"));
    let (sd, dd, sc, cc) = (
        format!("rblsd{id}"),
        format!("rbldd{id}"),
        format!("rblsc{id}"),
        format!("rblcc{id}"),
    );
    veth(&s, &sd, &d, &dd);
    veth(&s, &sc, &c, &cc);
    sh(&format!("ip -n {s} link set {sd} master rblbr"));
    sh(&format!("ip -n {s} link set {sc} master rblbr"));
    sh(&format!("ip -n {d} addr add 10.99.{x}.2/24 dev {dd}"));
    sh(&format!("ip -n {c} addr add 10.99.{x}.3/24 dev {cc}"));
    let dns_range = format!("--dhcp-range=10.99.{x}.50,10.99.{x}.200,255.255.255.0,1h");
    let dns_if = format!("--interface={dd}");
    let dns_leases = format!("--dhcp-leasefile={}", lab.path("dnsmasq.leases").display());
    lab.spawn(
        &d,
        "dnsmasq",
        &[
            "dnsmasq",
            "--no-daemon",
            "--port=0",
            "--conf-file=/dev/null",
            &dns_range,
            &dns_if,
            "--bind-interfaces",
            "--no-ping",
            "--user=root",
            "--group=root",
            "--pid-file=",
            &dns_leases,
            "--log-dhcp",
            "--log-facility=-",
        ],
    );
    lab.wait_log("dnsmasq", "DHCP, IP range");
    let root = served_root(&lab);
    lab.ringboot(&s, &server, &root, &dhcp_flags("proxy", "rblbr"));
    let tftp = format!("{server}:6969");
    let (out, rep) = lab.loadtest(
        &c,
        &dhcp_storm(
            "proxy",
            &cc,
            "30",
            &[
                "--server",
                &tftp,
                "--profile",
                "bios",
                "--verify",
                root.to_str().unwrap(),
            ],
        ),
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let why = format!("{}\ndnsmasq:\n{}", explain(&out, &lab), lab.log("dnsmasq"));
    assert!(out.status.success(), "{why}");
    assert_eq!(rep["completed"], 30, "{why}");
    assert_eq!(rep["dhcp"]["leased"], 30, "{why}");
    assert_eq!(rep["dhcp"]["distinct_addresses"], 30, "{why}");
    assert_eq!(rep["dhcp"]["tftp_servers"], serde_json::json!([server]));
    // The addresses are dnsmasq's.
    let dns = std::fs::read_to_string(lab.path("dnsmasq.leases")).unwrap_or_default();
    assert_eq!(dns.lines().count(), 30, "{dns}");
}

#[test]
fn interface_without_an_address_is_a_clear_usage_error() {
    if !preflight(&["ip"], "iproute2") {
        return;
    }
    let mut lab = Lab::new();
    let c = lab.ns("n");
    let (a, b) = (format!("rbna{}", lab.id), format!("rbnb{}", lab.id));
    veth(&c, &a, &c, &b);
    for iface in [a.as_str(), "rbl-missing0"] {
        let (out, _) = lab.loadtest(&c, &dhcp_storm("full", iface, "2", &["--no-verify"]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{iface}: {err}");
        let want = if iface == a {
            "has no IPv4 address"
        } else {
            "no such interface"
        };
        assert!(err.contains(want), "{iface}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // With an address the same command gets past the check (no DHCP server answers here: the
    // machines fail with a DHCP reason, not a usage error).
    lab.ns_ip(&c, &format!("addr add 10.99.0.2/24 dev {a}"));
    let (out, rep) = lab.loadtest(
        &c,
        &dhcp_storm(
            "full",
            &a,
            "2",
            &["--dhcp-tries", "1", "--dhcp-timeout", "0.5", "--no-verify"],
        ),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rep["failed"], 2, "{rep:#}");
}
