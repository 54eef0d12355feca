//! DHCP client sockets shared by the namespace tests that speak DHCP themselves
//! (`tests/dhcp_netns.rs`, `tests/hostile_dhcp.rs`; each includes it by `#[path]`).
//!
//! Contract: sockets are bound to one device (inside the test's namespace), may broadcast, and
//! wake at least every 100 ms; a wait for replies ends at its deadline whatever arrives.

#![allow(dead_code)]

use dhcproto::v4::Message;
use ringboot::proto::dhcp::wire;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A UDP socket on `device` bound to `addr` (address reuse, broadcast allowed).
pub fn client_socket(addr: SocketAddrV4, device: &str) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(device.as_bytes())).unwrap();
    s.bind(&SockAddr::from(addr)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// One datagram from `s` (waiting at most its read timeout), if it is a DHCP server reply (op 2).
pub fn recv_reply(s: &Socket) -> Option<Message> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    // SAFETY: recv_from initialized the first n bytes.
    let bytes: Vec<u8> = buf[..n]
        .iter()
        .map(|b| unsafe { b.assume_init() })
        .collect();
    let m = wire::parse_any(&bytes).ok()?;
    (bytes[0] == 2).then_some(m)
}

/// The server replies (op 2) with `xid` that arrive on `s` within `wait`, at most `max` of them.
pub fn replies(s: &Socket, xid: u32, wait: Duration, max: usize) -> Vec<Message> {
    let end = Instant::now() + wait;
    let mut out = vec![];
    while Instant::now() < end && out.len() < max {
        if let Some(m) = recv_reply(s).filter(|m| m.xid() == xid) {
            out.push(m);
        }
    }
    out
}

/// A busybox `udhcpc -s` hook `dir/<name>.sh` that writes its environment to `dir/<name>.env`
/// once a lease is bound; returns (hook, env file). The env file is removed first.
pub fn udhcpc_hook(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.env"));
    let _ = std::fs::remove_file(&out);
    let script = dir.join(format!("{name}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > '{}'\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    let st = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success(), "chmod +x {}", script.display());
    (script, out)
}
