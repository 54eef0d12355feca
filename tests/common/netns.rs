//! Network-namespace plumbing shared by the namespace tests of both crates (`tests/` includes it
//! through `common`, `loadtest/tests/dhcp.rs` by `#[path]`). Only std, libc and tempfile.
//!
//! Contract:
//! - [`preflight`]: false with "skipped: <why>" printed when not root or a tool is missing; under
//!   `CI=true` as root a missing tool panics instead (CI installs them all).
//! - [`Netns::new`] creates a namespace with `lo` up and deletes it on drop, also when the test
//!   panics. Names carry the PID and a counter ([`unique_id`]), so parallel tests and parallel
//!   test binaries never collide.
//! - [`Lab`]: the namespaces, processes and scratch folder of one test; on drop the processes
//!   are killed (by PID) and waited for, then the namespaces deleted.
//! - [`add_netns`] and [`veth`] for tests that keep their own list of namespaces.
//! - [`dhcp_flags`]: the `ringboot serve` flags with which every DHCP lab starts the responder.
//! - [`Netns::enter`] moves the calling thread (only) into the namespace: processes it spawns
//!   afterwards start there.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True under CI (`CI` set to anything but empty, `0` or `false`).
pub fn ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => false,
    }
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Whether a namespace test can run here; prints why not. `install` names the packages.
pub fn preflight(tools: &[&str], install: &str) -> bool {
    if !is_root() {
        println!("skipped: needs root for network namespaces");
        return false;
    }
    let gone: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if gone.is_empty() {
        return true;
    }
    let msg = format!("{} not found: apt-get install {install}", gone.join(", "));
    assert!(!ci(), "{msg}");
    println!("skipped: {msg}");
    false
}

/// Run a shell command; panic with its stderr if it fails.
pub fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PID (last five digits) and a per-process counter: unique among concurrent tests.
pub fn unique_id() -> String {
    format!(
        "{}{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Add namespace `name` with `lo` up; deleting it is the caller's ([`Netns`] does it on drop).
pub fn add_netns(name: &str) {
    sh(&format!("ip netns add {name}"));
    sh(&format!("ip -n {name} link set lo up"));
}

/// A veth pair: `a` in namespace `ns_a`, `b` in `ns_b`, both up.
pub fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str) {
    sh(&format!(
        "ip -n {ns_a} link add {a} type veth peer name {b} netns {ns_b}"
    ));
    sh(&format!("ip -n {ns_a} link set {a} up"));
    sh(&format!("ip -n {ns_b} link set {b} up"));
}

/// `--dhcp MODE --dhcp-interface IFACE --boot-file pxelinux.0`: the responder of a DHCP lab.
pub fn dhcp_flags<'a>(mode: &'a str, iface: &'a str) -> [&'a str; 6] {
    [
        "--dhcp",
        mode,
        "--dhcp-interface",
        iface,
        "--boot-file",
        "pxelinux.0",
    ]
}

/// A namespace with `lo` up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `rb<role><unique id>` (interface-name limits do not apply to namespace names).
    pub fn new(role: &str) -> Netns {
        let ns = Netns {
            name: format!("rb{role}{}", unique_id()),
        };
        add_netns(&ns.name);
        ns
    }

    /// `ip -n <name> <args>` for each line of `cmds`.
    pub fn ip(&self, cmds: &[&str]) {
        for c in cmds {
            sh(&format!("ip -n {} {c}", self.name));
        }
    }

    /// Move the calling thread into this namespace.
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.name)).unwrap();
        // SAFETY: setns on this thread only, with an fd of a network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Namespaces and processes of one test, removed on drop.
pub struct Lab {
    /// Unique among concurrent tests ([`unique_id`]); names of namespaces and interfaces carry it.
    pub id: String,
    /// Namespace names are `<prefix><role><id>`.
    prefix: String,
    namespaces: Vec<String>,
    /// Processes to kill (by PID) and wait for when the lab goes.
    pub children: Vec<Child>,
    /// Scratch folder (files served, logs, lease files).
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new(prefix: &str) -> Lab {
        Lab {
            id: unique_id(),
            prefix: prefix.to_owned(),
            namespaces: vec![],
            children: vec![],
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A new namespace `<prefix><role><id>` with `lo` up, deleted with the lab.
    pub fn ns(&mut self, role: &str) -> String {
        let name = format!("{}{role}{}", self.prefix, self.id);
        self.namespaces.push(name.clone());
        add_netns(&name);
        name
    }

    /// A server namespace `<prefix>s<id>` and a client namespace `<prefix>c<id>`, joined by a
    /// veth pair whose ends have the same names as their namespaces: `(s, c, s_end, c_end)`.
    pub fn server_and_client(&mut self) -> (String, String, String, String) {
        let (s, c) = (self.ns("s"), self.ns("c"));
        let (si, ci) = (
            format!("{}s{}", self.prefix, self.id),
            format!("{}c{}", self.prefix, self.id),
        );
        veth(&s, &si, &c, &ci);
        (s, c, si, ci)
    }

    /// `name` in the scratch folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
