//! The DHCP responder on a hostile segment, with the real binary in network namespaces (root
//! only; see tests/common/netns.rs for the skip rules).
//!
//! Contract:
//! - Each test builds a server namespace and a client namespace joined by a veth pair
//!   (10.98.X.0/24 or 10.97.0.0/16 inside the namespaces only, nothing routes out), starts
//!   `ringboot serve --dhcp ...` there (the binary of `RINGBOOT_TEST_BIN` when set, so a test can
//!   be shown to fail on an older build) and removes everything when it ends (Drop guards).
//! - Forged and flooding clients are plain UDP sockets in the client namespace: the hardware
//!   address a DHCP server keys on is the `chaddr` field inside the datagram.
//! - Floods are bounded in count and time; waits are generous; nothing asserts a duration.
//!   Defects covered (issue 8): a forged DECLINE (4), a DISCOVER flood from random MACs on a small
//!   pool and a flood from one MAC (11), per-packet log lines (10), the lease file under
//!   descriptor exhaustion (2). `dhcp_ack_throughput` (ignored) measures ACKs per second.

mod common;
#[path = "common/dhcp.rs"]
mod dhcp;

use common::netns::{dhcp_flags, preflight, sh, unique_id, veth, Netns};
use common::{die_with_parent, ringboot_bin};
use dhcp::{client_socket, recv_reply, replies, udhcpc_hook};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use ringboot::proto::dhcp::wire::{
    self, as_ipxe, client_message, pxe_discover, pxe_request, ClientArch,
};
use socket2::{SockAddr, Socket};
use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server namespace and a client namespace on one veth pair, and the server process.
struct Segment {
    s: Netns,
    c: Netns,
    si: String,
    ci: String,
    server: Ipv4Addr,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Segment {
    /// `10.98.X.1/24` on the server side (`prefix` 16: `10.97.0.1/16`).
    fn new(prefix: u8) -> Segment {
        let s = Netns::new("hs");
        let c = Netns::new("hc");
        let id = unique_id();
        let (si, ci) = (format!("rhs{id}"), format!("rhc{id}"));
        veth(&s.name, &si, &c.name, &ci);
        let server = if prefix == 16 {
            Ipv4Addr::new(10, 97, 0, 1)
        } else {
            Ipv4Addr::new(10, 98, 10 + (std::process::id() % 200) as u8, 1)
        };
        sh(&format!(
            "ip -n {} addr add {server}/{prefix} dev {si}",
            s.name
        ));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        for f in ["pxelinux.0", "ipxe.efi"] {
            std::fs::write(dir.path().join("root").join(f), vec![7u8; 300_000]).unwrap();
        }
        Segment {
            s,
            c,
            si,
            ci,
            server,
            dir,
            child: None,
        }
    }

    /// A /24 segment with the server in full mode, pool `.100` to `.<last>`.
    fn full(last: u8) -> Segment {
        let mut seg = Segment::new(24);
        let range = format!("{},{}", seg.addr(100), seg.addr(last));
        seg.start_full(&range, None);
        seg
    }

    /// An address of the segment's /24 (or /16) with last octet `n`.
    fn addr(&self, n: u8) -> Ipv4Addr {
        let o = self.server.octets();
        Ipv4Addr::new(o[0], o[1], o[2], n)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Start `ringboot serve` in the server namespace with `args` (after `--root`, `--listen`),
    /// under `prlimit --nofile=N:N` when `nofile` is given; wait for `listening on`.
    fn start(&mut self, args: &[&str], nofile: Option<u32>) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.s.name]);
        if let Some(n) = nofile {
            cmd.arg("prlimit")
                .arg(format!("--nofile={n}:{n}"))
                .arg("--");
        }
        let mut all: Vec<OsString> = vec![
            ringboot_bin().into(),
            "serve".into(),
            "--root".into(),
            self.path("root").into(),
            "--listen".into(),
            format!("{}:69", self.server).into(),
            "--workers".into(),
            "1".into(),
        ];
        all.extend(args.iter().map(OsString::from));
        cmd.args(&all)
            .env("STATE_DIRECTORY", self.path("state"))
            .env("NO_COLOR", "1")
            .stdout(File::create(self.path("out.log")).unwrap())
            .stderr(File::create(self.path("err.log")).unwrap());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end && !self.logs().contains("listening on") {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("ringboot serve exited ({st}):\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(self.logs().contains("listening on"), "{}", self.logs());
        self.child = Some(child);
    }

    /// Full mode on the segment's interface with `range`.
    fn start_full(&mut self, range: &str, nofile: Option<u32>) {
        let si = self.si.clone();
        self.start(
            &[&dhcp_flags("full", &si)[..], &["--dhcp-range", range]].concat(),
            nofile,
        );
    }

    fn logs(&self) -> String {
        let mut s = std::fs::read_to_string(self.path("out.log")).unwrap_or_default();
        s += &std::fs::read_to_string(self.path("err.log")).unwrap_or_default();
        s
    }

    fn lines_with(&self, needle: &str) -> usize {
        self.logs().lines().filter(|l| l.contains(needle)).count()
    }

    fn leases(&self) -> String {
        std::fs::read_to_string(self.path("state").join("dhcp.leases")).unwrap_or_default()
    }

    /// The lease file's line for `ip`, if any.
    fn lease_of(&self, ip: Ipv4Addr) -> Option<String> {
        let pfx = format!("{ip} ");
        self.leases()
            .lines()
            .find(|l| l.starts_with(&pfx))
            .map(str::to_owned)
    }

    /// Run `f` on a thread inside the client namespace.
    fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn_in_client(f).join().unwrap()
    }

    /// A thread inside the client namespace, running until it returns.
    fn spawn_in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let name = self.c.name.clone();
        std::thread::spawn(move || {
            enter(&name);
            f()
        })
    }

    /// Start [`flood_discovers`] on a thread in the client namespace.
    fn flood(&self, per_sec: u64, max: u64, same_mac: bool) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (ci, st, sn) = (self.ci.clone(), stop.clone(), sent.clone());
        let thread =
            self.spawn_in_client(move || flood_discovers(ci, per_sec, max, same_mac, st, sn));
        Flood { stop, sent, thread }
    }

    /// `got` is an address whose lease is bound; without one, panic with `missing` and the end
    /// of the server's log.
    fn assert_bound(&self, got: Option<Ipv4Addr>, missing: &str) {
        let ip = got.unwrap_or_else(|| panic!("{missing}\n{}", self.log_tail(30)));
        assert!(self.lease_of(ip).is_some_and(|l| l.ends_with(" bound")));
    }

    /// The last `n` lines of the server's log, for a failure message.
    fn log_tail(&self, n: usize) -> String {
        let logs = self.logs();
        let mut tail: Vec<&str> = logs.lines().rev().take(n).collect();
        tail.reverse();
        tail.join("\n")
    }

    /// The client interface's MAC address.
    fn client_mac(&self) -> [u8; 6] {
        let out = Command::new("ip")
            .args(["-n", &self.c.name, "link", "show", &self.ci])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("link/ether");
        let mut mac = [0u8; 6];
        for (m, h) in mac.iter_mut().zip(hex.split(':')) {
            *m = u8::from_str_radix(h, 16).unwrap();
        }
        mac
    }

    /// busybox udhcpc in the client namespace; the address it got, if any.
    fn udhcpc(&self, tries: u32) -> Option<Ipv4Addr> {
        let (script, out) = udhcpc_hook(self.dir.path(), "udhcpc");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.c.name,
            "busybox",
            "udhcpc",
            "-i",
            &self.ci,
        ])
        .args([
            "-q",
            "-n",
            "-t",
            &tries.to_string(),
            "-T",
            "1",
            "-A",
            "1",
            "-s",
        ])
        .arg(&script)
        .args(["-V", "PXEClient:Arch:00000:UNDI:002001"]);
        die_with_parent(&mut cmd);
        let o = cmd.output().unwrap();
        println!(
            "udhcpc: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let env = std::fs::read_to_string(&out).unwrap_or_default();
        env.lines()
            .find_map(|l| l.strip_prefix("ip="))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Move the calling thread (only) into network namespace `name`.
fn enter(name: &str) {
    let f = File::open(format!("/var/run/netns/{name}")).unwrap();
    // SAFETY: setns on this thread only, with a descriptor of a network namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// A UDP socket on `device` in the calling thread's namespace, bound to `0.0.0.0:port`.
fn udp_on(device: &str, port: u16) -> Socket {
    let s = client_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port), device);
    s.set_send_buffer_size(4 << 20).unwrap();
    s
}

const BCAST67: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);

fn send(s: &Socket, m: &Message, to: SocketAddrV4) {
    // A full send buffer is a lost packet, like on a real segment.
    let _ = s.send_to(&wire::encode(m), &SockAddr::from(to));
}

fn mac_n(prefix: u8, n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, prefix, b[0], b[1], b[2], b[3]]
}

fn decline(mac: [u8; 6], client_id: Option<&[u8]>, ip: Ipv4Addr, server: Ipv4Addr) -> Message {
    let mut m = client_message(MessageType::Decline, mac, 0xdec1);
    m.set_flags(Flags::default());
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    if let Some(id) = client_id {
        m.opts_mut()
            .insert(DhcpOption::ClientIdentifier(id.to_vec()));
    }
    m
}

/// Wait up to `limit` for `cond`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// Defect 4: a DECLINE from another client must not evict the holder; the holder's own does.
#[test]
fn forged_decline_does_not_evict_the_holder() {
    if !preflight(&["ip", "busybox"], "busybox iproute2") {
        return;
    }
    let seg = Segment::full(150);
    let ip = seg
        .udhcpc(6)
        .unwrap_or_else(|| panic!("udhcpc got no lease\n{}", seg.logs()));
    let mac = seg.client_mac();
    let mut id = vec![1u8];
    id.extend_from_slice(&mac);
    let mut key = String::from("id-");
    for b in &id {
        key += &format!("{b:02x}");
    }
    let line = seg.lease_of(ip).expect("lease persisted");
    assert!(line.contains(&key) && line.ends_with(" bound"), "{line}");

    // Forged: another MAC, and the holder's MAC without the holder's client id.
    let (ci, server) = (seg.ci.clone(), seg.server);
    seg.in_client(move || {
        let s = udp_on(&ci, 0);
        for _ in 0..3 {
            send(
                &s,
                &decline([0x02, 0xee, 0, 0, 0, 1], None, ip, server),
                BCAST67,
            );
            send(&s, &decline(mac, None, ip, server), BCAST67);
            send(
                &s,
                &decline([0x02, 0xee, 0, 0, 0, 2], Some(&[1, 2, 3]), ip, server),
                BCAST67,
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let evicted = eventually(Duration::from_secs(2), || {
        seg.lease_of(ip).is_some_and(|l| l.ends_with(" declined"))
    });
    assert!(
        !evicted,
        "a forged DECLINE took {ip} from its holder: {:?}\n{}",
        seg.lease_of(ip),
        seg.logs()
    );
    assert!(seg.lease_of(ip).unwrap().contains(&key));
    assert!(
        seg.logs().contains("ignored a DHCPDECLINE"),
        "the forged DECLINE is logged: {}",
        seg.logs()
    );

    // The holder itself (same MAC and client id) declines: out of the pool.
    let ci = seg.ci.clone();
    seg.in_client(move || {
        let s = udp_on(&ci, 0);
        send(&s, &decline(mac, Some(&id), ip, server), BCAST67);
    });
    assert!(
        eventually(Duration::from_secs(5), || seg
            .lease_of(ip)
            .is_some_and(|l| l.ends_with(" declined"))),
        "the holder's DECLINE is taken: {:?}\n{}",
        seg.lease_of(ip),
        seg.logs()
    );
}

/// A running [`flood_discovers`]: how many it sent so far; stopped and joined by [`Flood::stop`].
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Flood {
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

/// Send DISCOVERs from fresh random-looking MACs at about `per_sec` until `stop`, at most
/// `max` of them; returns how many were sent.
fn flood_discovers(
    ci: String,
    per_sec: u64,
    max: u64,
    same_mac: bool,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) {
    let s = udp_on(&ci, 0);
    let start = Instant::now();
    let mut n = 0u64;
    let seed = std::process::id();
    while n < max && !stop.load(Ordering::Relaxed) {
        // Pace in slices of 10 ms.
        let due = start.elapsed().as_micros() as u64 * per_sec / 1_000_000;
        if n >= due {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let id = if same_mac {
            1
        } else {
            (n as u32).wrapping_mul(2_654_435_761) ^ seed
        };
        let mut d = client_message(
            MessageType::Discover,
            mac_n(0xf1, id),
            n as u32 ^ 0x5a5a_0000,
        );
        d.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
        ]));
        send(&s, &d, BCAST67);
        n += 1;
        sent.store(n, Ordering::Relaxed);
    }
}

/// Defect 11 (c): DISCOVERs from random MACs fill an 11-address pool; a real client still gets
/// an address while they go on.
#[test]
fn udhcpc_gets_a_lease_during_a_discover_flood_from_random_macs() {
    if !preflight(&["ip", "busybox"], "busybox iproute2") {
        return;
    }
    let seg = Segment::full(110);
    // 300 DISCOVERs a second, under the default segment rate: this is about the pool, not
    // about the rate limit. At most 30 s.
    let flood = seg.flood(300, 9_000, false);
    // The pool is full of the flood's offers before the real client asks.
    assert!(eventually(Duration::from_secs(10), || flood.sent() > 300));
    let got = seg.udhcpc(8);
    let flood_sent = flood.sent();
    flood.stop();
    println!("flood: {flood_sent} DISCOVERs sent while udhcpc ran");
    seg.assert_bound(got, "udhcpc got no address during the flood");
    assert!(
        seg.lines_with("is full") <= 20,
        "pool-full lines are rate-limited: {}",
        seg.lines_with("is full")
    );
}

/// Defect 11 (d): one MAC sending 60,000 requests a second does not shut out other clients:
/// three machines each get an address while it floods, and 30 DISCOVERs from other MACs are
/// answered.
#[test]
fn other_clients_get_leases_while_one_mac_floods() {
    if !preflight(&["ip"], "iproute2") {
        return;
    }
    let seg = Segment::full(150);
    let flood = seg.flood(60_000, 1_500_000, true);
    assert!(eventually(Duration::from_secs(10), || flood.sent() > 60_000));
    let t0 = Instant::now();
    let before = flood.sent();
    let ci = seg.ci.clone();
    let (leases, answered) = seg.in_client(move || {
        let s = udp_on(&ci, 68);
        let leases: Vec<Option<Ipv4Addr>> = (0..3u32)
            .map(|n| dora(&s, mac_n(0x44, n), 0x4400 + 0x10 * n))
            .collect();
        let mut answered = 0;
        for i in 0..30u32 {
            let d = pxe_discover(mac_n(0x33, i), ClientArch::BIOS, 0x9900 + i);
            send(&s, &d, BCAST67);
            answered += replies(&s, 0x9900 + i, Duration::from_millis(300), 1).len();
        }
        (leases, answered)
    });
    let rate = (flood.sent() - before) as f64 / t0.elapsed().as_secs_f64();
    flood.stop();
    println!("flood from one MAC: {rate:.0} requests/s; leases {leases:?}; {answered}/30 DISCOVERs answered");
    for l in seg.logs().lines().filter(|l| l.contains("dropped DHCP")) {
        println!("server: {l}");
    }
    for (n, &l) in leases.iter().enumerate() {
        seg.assert_bound(
            l,
            &format!("client {n} got no address while one MAC flooded"),
        );
    }
    assert!(
        answered >= 20,
        "{answered}/30 DISCOVERs answered during the flood"
    );
    assert!(
        seg.lines_with("dropped DHCP datagrams") <= 5,
        "the drop summary is rate-limited:\n{}",
        seg.logs()
    );
}

/// DISCOVER then REQUEST from `mac` (a socket on port 68 in the client namespace); the ACKed
/// address.
fn dora(s: &Socket, mac: [u8; 6], xid: u32) -> Option<Ipv4Addr> {
    for attempt in 0..4 {
        let d = pxe_discover(mac, ClientArch::BIOS, xid + attempt);
        send(s, &d, BCAST67);
        let Some(offer) = replies(s, xid + attempt, Duration::from_secs(1), 1).pop() else {
            continue;
        };
        if offer.opts().msg_type() != Some(MessageType::Offer) {
            continue;
        }
        let r = pxe_request(&offer, mac, ClientArch::BIOS, xid + attempt);
        send(s, &r, BCAST67);
        if let Some(ack) = replies(s, xid + attempt, Duration::from_secs(2), 1).pop() {
            if ack.opts().msg_type() == Some(MessageType::Ack) {
                return Some(ack.yiaddr());
            }
        }
    }
    None
}

/// Defect 10: 2,000 requests on a full pool, 2,000 forged BOOTREPLYs from random server ids and
/// 2,000 iPXE loop requests give a handful of lines.
#[test]
fn floods_of_log_worthy_packets_give_a_handful_of_lines() {
    if !preflight(&["ip"], "iproute2") {
        return;
    }
    let seg = Segment::full(101);
    let ci = seg.ci.clone();
    let bound = seg.in_client(move || {
        let s = udp_on(&ci, 68);
        let a = dora(&s, mac_n(0xa0, 1), 0x1000);
        let b = dora(&s, mac_n(0xa0, 2), 0x2000);
        // The pool is bound: 2,000 DISCOVERs from other MACs, within about two seconds.
        for n in 0..2000u32 {
            send(
                &s,
                &pxe_discover(mac_n(0xb0, n), ClientArch::BIOS, n),
                BCAST67,
            );
            if n % 100 == 99 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // 2,000 OFFERs from random other servers, to ports 68 and 67.
        for n in 0..2000u32 {
            let mut o = client_message(MessageType::Offer, mac_n(0xc0, n), n);
            o.set_opcode(dhcproto::v4::Opcode::BootReply);
            o.set_yiaddr(Ipv4Addr::new(10, 200, (n >> 8) as u8, n as u8));
            o.opts_mut()
                .insert(DhcpOption::ServerIdentifier(Ipv4Addr::from(
                    0x0a64_0000 + n,
                )));
            let to = if n % 2 == 0 {
                SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
            } else {
                BCAST67
            };
            send(&s, &o, to);
            if n % 100 == 99 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        (a, b)
    });
    assert!(
        bound.0.is_some() && bound.1.is_some(),
        "{bound:?}\n{}",
        seg.logs()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let full = seg.lines_with("is full");
    let others = seg.lines_with("another DHCP server");
    println!("full-pool lines: {full}; other-server lines: {others}");
    assert!(full >= 1, "the full pool is reported\n{}", seg.logs());
    assert!(full <= 10, "{full} full-pool lines for 2,000 requests");
    assert!(others >= 1, "other servers are reported\n{}", seg.logs());
    assert!(
        others <= 10,
        "{others} other-server lines for 2,000 forged replies"
    );

    // Proxy mode: an iPXE that would get the iPXE binary again.
    let mut seg = Segment::new(24);
    let si = seg.si.clone();
    seg.start(
        &[
            "--dhcp",
            "proxy",
            "--dhcp-interface",
            &si,
            "--boot-file",
            "ipxe.efi",
        ],
        None,
    );
    let ci = seg.ci.clone();
    seg.in_client(move || {
        let s = udp_on(&ci, 0);
        for n in 0..2000u32 {
            send(
                &s,
                &as_ipxe(pxe_discover(mac_n(0xd0, n), ClientArch::EFI_X64, n)),
                BCAST67,
            );
            if n % 100 == 99 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let loops = seg.lines_with("boot loop");
    println!("iPXE loop lines: {loops}");
    assert!(loops >= 1, "the loop is reported\n{}", seg.logs());
    assert!(loops <= 10, "{loops} iPXE-loop lines for 2,000 requests");
}

/// Defect 2 (DHCP part): with the descriptors exhausted by TFTP transfers that never ACK, the
/// responder still saves its leases and ACKs.
#[test]
fn leases_are_saved_and_acked_while_tftp_exhausts_descriptors() {
    if !preflight(&["ip", "prlimit"], "iproute2 util-linux") {
        return;
    }
    let mut seg = Segment::new(24);
    let client_ip = seg.addr(2);
    sh(&format!(
        "ip -n {} addr add {client_ip}/24 dev {}",
        seg.c.name, seg.ci
    ));
    let range = format!("{},{}", seg.addr(100), seg.addr(150));
    seg.start_full(&range, Some(64));
    let (ci, server) = (seg.ci.clone(), seg.server);
    let (acked, tftp_errors) = seg.in_client(move || {
        // 120 read requests from 120 ports, never acknowledged: each holds a transfer socket.
        let mut socks = vec![];
        let mut errors = 0;
        for _ in 0..120 {
            let u = UdpSocket::bind(SocketAddrV4::new(client_ip, 0)).unwrap();
            u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let _ = u.send_to(b"\x00\x01pxelinux.0\x00octet\x00", (server, 69));
            socks.push(u);
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut buf = [0u8; 1600];
        for u in &socks {
            if let Ok(n) = u.recv(&mut buf) {
                if n > 4 && buf[1] == 5 {
                    errors += 1;
                    if errors == 1 {
                        println!("TFTP: {}", String::from_utf8_lossy(&buf[4..n]));
                    }
                }
            }
        }
        // Now three clients want leases.
        let s = udp_on(&ci, 68);
        let acked: Vec<Option<Ipv4Addr>> = (0..3u32)
            .map(|n| dora(&s, mac_n(0xe0, n), 0x3000 + 0x100 * n))
            .collect();
        drop(socks);
        (acked, errors)
    });
    println!("TFTP errors while the transfers held descriptors: {tftp_errors}");
    for (n, a) in acked.iter().enumerate() {
        let ip = a.unwrap_or_else(|| panic!("client {n} got no ACK\n{}", seg.logs()));
        assert!(
            seg.lease_of(ip).is_some_and(|l| l.ends_with(" bound")),
            "ACKed lease {ip} is in the file"
        );
    }
}

/// ACKs per second the responder sustains (report, not asserted): 4,000 (or
/// `RINGBOOT_BENCH_REQUESTS`) REQUESTs for distinct
/// addresses from distinct MACs, 64 outstanding, each resent after 2 s without its ACK. Run with `--ignored --nocapture`, once per
/// build (`RINGBOOT_TEST_BIN=/work/baseline/ringboot` for the one before group commit).
#[test]
#[ignore]
fn dhcp_ack_throughput() {
    if !preflight(&["ip"], "iproute2") {
        return;
    }
    let mut seg = Segment::new(16);
    let si = seg.si.clone();
    let config = seg.path("bench.toml");
    // Lift the admission limits where the build knows them (the old one has only its fixed
    // 2,000/s in all): this measures the lease file, not the limiter.
    std::fs::write(
        &config,
        format!(
            "[dhcp]\nmode = \"full\"\ninterface = \"{si}\"\nboot_file = \"pxelinux.0\"\nrange = \"10.97.1.0,10.97.200.255\"\nclient_rate = 100\nsegment_rate = 1000000\n"
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap().to_owned();
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        seg.start(&["--config", &cfg], None)
    }));
    if started.is_err() {
        println!("this build has no client_rate/segment_rate keys: using its defaults");
        std::fs::write(
            &config,
            format!(
                "[dhcp]\nmode = \"full\"\ninterface = \"{si}\"\nboot_file = \"pxelinux.0\"\nrange = \"10.97.1.0,10.97.200.255\"\n"
            ),
        )
        .unwrap();
        seg.start(&["--config", &cfg], None);
    }
    let ci = seg.ci.clone();
    let (acks, secs) = seg.in_client(move || {
        let s = udp_on(&ci, 68);
        s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        s.set_recv_buffer_size(4 << 20).unwrap();
        let total: u32 = std::env::var("RINGBOOT_BENCH_REQUESTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4000)
            .clamp(1, 50_000);
        let window = 64usize;
        let request = |n: u32| {
            // INIT-REBOOT style REQUEST for a distinct free address: one bind each.
            let ip = Ipv4Addr::new(10, 97, 1 + (n / 250) as u8, (n % 250) as u8 + 1);
            let mut r = client_message(MessageType::Request, mac_n(0x77, n), 0x7700_0000 + n);
            r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
            r
        };
        let mut acked = vec![false; total as usize];
        let mut outstanding: Vec<(u32, Instant)> = Vec::with_capacity(window);
        let (mut next, mut acks) = (0u32, 0u32);
        let t0 = Instant::now();
        while acks < total && t0.elapsed() < Duration::from_secs(120) {
            while outstanding.len() < window && next < total {
                send(&s, &request(next), BCAST67);
                outstanding.push((next, Instant::now()));
                next += 1;
            }
            if let Some(m) = recv_reply(&s) {
                let i = m.xid().wrapping_sub(0x7700_0000);
                if i < total && m.opts().msg_type() == Some(MessageType::Ack) && !acked[i as usize]
                {
                    acked[i as usize] = true;
                    acks += 1;
                    outstanding.retain(|(x, _)| *x != i);
                }
            }
            // A request (or its ACK) lost: send it again, like a client.
            for (n, at) in outstanding.iter_mut() {
                if at.elapsed() > Duration::from_secs(2) {
                    send(&s, &request(*n), BCAST67);
                    *at = Instant::now();
                }
            }
        }
        (acks, t0.elapsed().as_secs_f64())
    });
    let lines = seg.leases().lines().count();
    println!(
        "DHCP ACKs: {acks} in {secs:.2} s = {:.0} ACKs/s ({} lease-file lines) [{}]",
        f64::from(acks) / secs,
        lines,
        ringboot_bin()
    );
    assert!(Path::new(&seg.path("state")).exists());
}
