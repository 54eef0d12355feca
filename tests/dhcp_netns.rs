//! DHCP end to end, in network namespaces (root only).
//!
//! Contract:
//! - Not root: prints "skipped: needs root for network namespaces" and passes. Under `CI=true`
//!   as root every test must run: a missing tool (`ip`, `busybox`, `dnsmasq`) fails it.
//! - Each test builds its own namespaces and veth pairs (names carry the PID and a counter,
//!   addresses are 10.99.X.0/24 inside the namespaces only, nothing routes out) and removes them
//!   when it ends, even on failure (the guard's Drop).
//! - The responder under test is the real `ringboot serve --dhcp ...` when the binary has the
//!   `--dhcp` flags; until then the same `ringboot::dhcp::spawn` runs in-process on a thread
//!   that entered the server namespace (`setns`), so the namespaces and the clients are the same.
//! - full mode: busybox `udhcpc` with the PXE vendor class gets an address from the range and
//!   the boot file; the lease is in the lease file.
//! - proxy mode beside dnsmasq (the network's plain DHCP server): a raw PXE client gets its
//!   address from dnsmasq and its boot file from ringboot, then the port-4011 ACK with
//!   sub-option 71 echoed; a non-PXE client gets no answer from ringboot.
//! - the config path: `ringboot serve --config FILE` with `listen` and a `[dhcp]` table (proxy
//!   mode, a `[[dhcp.rule]]` for efi-x64 with an iPXE script): BIOS gets `boot_file`, UEFI x64
//!   the rule's file (on 67 and on 4011), a chainloaded iPXE the script.

#[path = "common/dhcp.rs"]
mod dhcp;
#[path = "common/netns.rs"]
mod netns;

use dhcp::{client_socket, replies, udhcpc_hook};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use netns::{dhcp_flags, preflight, sh, veth};
use ringboot::dhcp::DhcpConfig;
use ringboot::proto::dhcp::wire::{self, as_ipxe, pxe_boot_request, pxe_discover, ClientArch};
use socket2::{SockAddr, Socket};
use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A [`netns::Lab`] and the in-process responders it started, stopped first on drop.
struct Lab {
    lab: netns::Lab,
    /// In-process responders (each on its own control engine).
    threads: Vec<ringboot::engine::ctl::Ctl>,
}

impl std::ops::Deref for Lab {
    type Target = netns::Lab;
    fn deref(&self) -> &netns::Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for Lab {
    fn deref_mut(&mut self) -> &mut netns::Lab {
        &mut self.lab
    }
}

impl Lab {
    fn new() -> Lab {
        Lab {
            lab: netns::Lab::new("rb"),
            threads: vec![],
        }
    }

    /// `root/` with each of `files` (its own name as content) and an empty `state/`; the root.
    fn served(&self, files: &[&str]) -> PathBuf {
        let root = self.path("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(self.path("state")).unwrap();
        for f in files {
            std::fs::write(root.join(f), f).unwrap();
        }
        root
    }

    /// Start the responder in `ns`: the real binary if it has the flags, else in-process.
    fn start_ringboot(
        &mut self,
        ns: &str,
        mode: &str,
        iface: &str,
        range: Option<&str>,
        addr: Ipv4Addr,
    ) {
        let root = self.path("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("pxelinux.0"), b"not really pxelinux").unwrap();
        let state = self.path("state");
        std::fs::create_dir_all(&state).unwrap();
        if binary_has_dhcp_flags() {
            let mut args: Vec<OsString> = vec!["--root".into(), root.into()];
            let listen = format!("{addr}:6969");
            for a in ["--listen", &listen]
                .into_iter()
                .chain(dhcp_flags(mode, iface))
            {
                args.push(a.into());
            }
            if let Some(r) = range {
                args.extend(["--dhcp-range".into(), r.into()]);
            }
            println!("testing the real binary: ringboot serve --dhcp {mode}");
            self.spawn_real(ns, &args);
            return;
        } else {
            println!("ringboot has no --dhcp flags yet: running ringboot::dhcp::spawn in-process in {ns}");
            let (mode, iface, range) =
                (mode.to_owned(), iface.to_owned(), range.map(str::to_owned));
            let lease = state.join("dhcp.leases");
            let h = in_netns(ns, move || {
                let cfg = DhcpConfig {
                    mode: mode.parse().unwrap(),
                    interface: Some(iface),
                    boot_file: Some("pxelinux.0".into()),
                    range: range.map(|r| r.parse().unwrap()),
                    lease_file: Some(lease),
                    ..DhcpConfig::default()
                };
                // spawn fills the address and mask from the interface.
                ringboot::dhcp::spawn(cfg).expect("spawn")
            });
            self.threads.push(h);
        }
        // Give the sockets a moment to bind.
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Start the real binary (`serve` and `args`) in `ns` and wait until it listens (the DHCP
    /// responder starts before TFTP). A restart right after a kill may find the old process's
    /// sockets not yet released (io_uring tears its ring down asynchronously) and ringboot
    /// refuses a port in use: it is tried again for up to 5 s.
    fn spawn_real(&mut self, ns: &str, args: &[OsString]) {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ringboot"), "serve"])
                .args(args)
                .env("STATE_DIRECTORY", self.path("state"))
                .stdout(File::create(self.path("ringboot.log")).unwrap())
                .stderr(File::create(self.path("ringboot.err")).unwrap());
            // SAFETY: prctl in the child before exec; kills it if this test dies.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().unwrap();
            let ready = Instant::now() + Duration::from_secs(15);
            let mut exited = false;
            while Instant::now() < ready && !self.logs().contains("listening on") {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let logs = self.logs();
            if !exited && logs.contains("listening on") {
                self.children.push(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            if !(exited && logs.contains("address already in use") && Instant::now() < end) {
                panic!("ringboot serve did not start:\n{logs}");
            }
            println!("the killed server's port is not free yet; starting again");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Start the responder in `ns` from a config file (`--config`); `--root` stays on the
    /// command line.
    fn start_ringboot_config(&mut self, ns: &str, config: &str) {
        let root = self.path("root");
        let path = self.path("ringboot.toml");
        std::fs::write(&path, config).unwrap();
        if binary_has_dhcp_flags() {
            println!("testing the real binary: ringboot serve --config (a [dhcp] table)");
            let args = ["--root".into(), root.into(), "--config".into(), path.into()];
            self.spawn_real(ns, &args);
        } else {
            println!("ringboot has no --config [dhcp] yet: running ringboot::dhcp::spawn in-process in {ns}");
            let text = config.to_owned();
            let h = in_netns(ns, move || {
                let cfg = DhcpConfig::from_toml_document(&text).expect("config");
                ringboot::dhcp::spawn(cfg).expect("spawn")
            });
            self.threads.push(h);
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn leases(&self) -> String {
        std::fs::read_to_string(self.path("state").join("dhcp.leases")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut s = std::fs::read_to_string(self.path("ringboot.log")).unwrap_or_default();
        s += &std::fs::read_to_string(self.path("ringboot.err")).unwrap_or_default();
        s
    }
}

impl Drop for Lab {
    /// The responders first; then the lab's processes and namespaces (its own drop).
    fn drop(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn binary_has_dhcp_flags() -> bool {
    Command::new(env!("CARGO_BIN_EXE_ringboot"))
        .args(["serve", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--dhcp-range"))
}

/// Run `f` on a thread that entered network namespace `ns` (threads it starts stay there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with an fd of a network namespace.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// A UDP socket in the calling thread's namespace, bound to `addr`, on `device`.
/// Send `msg` to `to` and collect the replies with its xid for `wait`.
fn exchange(s: &Socket, msg: &Message, to: SocketAddrV4, wait: Duration) -> Vec<Message> {
    s.send_to(&wire::encode(msg), &SockAddr::from(to)).unwrap();
    replies(s, msg.xid(), wait, usize::MAX)
}

/// `<net>.1/24` on the server end `si` (in `s`) and `<net>.2/24` on the client end `ci` (in `c`).
fn addresses(s: &str, si: &str, c: &str, ci: &str, net: [u8; 3]) -> (Ipv4Addr, Ipv4Addr) {
    let server = Ipv4Addr::new(net[0], net[1], net[2], 1);
    let client = Ipv4Addr::new(net[0], net[1], net[2], 2);
    sh(&format!("ip -n {s} addr add {server}/24 dev {si}"));
    sh(&format!("ip -n {c} addr add {client}/24 dev {ci}"));
    (server, client)
}

/// The first answer to an EFI x64 boot-server REQUEST (with sub-option 71) that a client with
/// address `client`, on `iface` in namespace `ns`, sends from port 4011 to `server`:4011.
fn boot_server_ack(
    ns: &str,
    iface: &str,
    (client, server): (Ipv4Addr, Ipv4Addr),
    mac: [u8; 6],
    xid: u32,
    wait: Duration,
) -> Option<Message> {
    let iface = iface.to_owned();
    in_netns(ns, move || {
        let sock = client_socket(SocketAddrV4::new(client, 4011), &iface);
        let r = pxe_boot_request(mac, ClientArch::EFI_X64, xid, client, Some((0, 0)));
        exchange(&sock, &r, SocketAddrV4::new(server, 4011), wait)
    })
    .into_iter()
    .next()
}

fn server_id(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    }
}

fn file_of(m: &Message) -> String {
    m.fname()
        .map(|f| String::from_utf8_lossy(f).trim_end_matches('\0').to_owned())
        .unwrap_or_default()
}

fn vendor(m: &Message) -> Vec<u8> {
    match m.opts().get(OptionCode::VendorExtensions) {
        Some(DhcpOption::VendorExtensions(v)) => v.clone(),
        _ => vec![],
    }
}

fn udhcpc(ns: &str, iface: &str, script_dir: &Path, vendor_class: Option<&str>) -> String {
    let (script, out) = udhcpc_hook(script_dir, &format!("udhcpc-{iface}"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "busybox", "udhcpc", "-i", iface])
        .args(["-O", "bootfile", "-q", "-n", "-t", "6", "-T", "1", "-s"])
        .arg(&script);
    if let Some(v) = vendor_class {
        cmd.args(["-V", v]);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "udhcpc failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read_to_string(&out).unwrap_or_default()
}

fn env_var(env: &str, key: &str) -> Option<String> {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

#[test]
fn full_mode_gives_udhcpc_an_address_and_the_boot_file() {
    if !preflight(&["ip", "busybox"], "busybox dnsmasq-base iproute2") {
        return;
    }
    let mut lab = Lab::new();
    let x = 10 + (std::process::id() % 100) as u8;
    let (s, c, si, ci) = lab.server_and_client();
    let server = Ipv4Addr::new(10, 99, x, 1);
    sh(&format!("ip -n {s} addr add {server}/24 dev {si}"));
    let range = format!("10.99.{x}.100,10.99.{x}.150");
    lab.start_ringboot(&s, "full", &si, Some(&range), server);

    let env = udhcpc(
        &c,
        &ci,
        lab.dir.path(),
        Some("PXEClient:Arch:00000:UNDI:002001"),
    );
    let ip: Ipv4Addr = env_var(&env, "ip")
        .unwrap_or_else(|| panic!("no lease: {env}\n{}", lab.logs()))
        .parse()
        .unwrap();
    assert!(
        (100..=150).contains(&ip.octets()[3]) && ip.octets()[2] == x,
        "{ip}"
    );
    assert_eq!(
        env_var(&env, "boot_file").as_deref(),
        Some("pxelinux.0"),
        "{env}"
    );
    assert_eq!(
        env_var(&env, "bootfile").as_deref(),
        Some("pxelinux.0"),
        "{env}"
    );
    assert_eq!(env_var(&env, "siaddr"), Some(server.to_string()), "{env}");
    assert_eq!(
        env_var(&env, "subnet").as_deref(),
        Some("255.255.255.0"),
        "{env}"
    );
    assert!(
        lab.leases().contains(&ip.to_string()),
        "lease persisted: {}",
        lab.leases()
    );

    // A second machine (non-PXE) gets another address and no boot file.
    let c2 = lab.ns("d");
    let c2i = format!("rbd{}", lab.id);
    let s2i = format!("rbt{}", lab.id);
    // Put both server-side ends on a bridge so the server sees both clients.
    sh(&format!("ip -n {s} link add rbbr type bridge"));
    sh(&format!("ip -n {s} link set rbbr up"));
    sh(&format!("ip -n {s} addr del {server}/24 dev {si}"));
    sh(&format!("ip -n {s} link set {si} master rbbr"));
    sh(&format!("ip -n {s} addr add {server}/24 dev rbbr"));
    veth(&s, &s2i, &c2, &c2i);
    sh(&format!("ip -n {s} link set {s2i} master rbbr"));
    lab_restart_on_bridge(&mut lab, &s, server, &range);
    let env2 = udhcpc(&c2, &c2i, lab.dir.path(), None);
    let ip2: Ipv4Addr = env_var(&env2, "ip")
        .unwrap_or_else(|| panic!("no lease: {env2}\n{}", lab.logs()))
        .parse()
        .unwrap();
    assert_ne!(ip2, ip, "no double allocation across a restart");
    assert_eq!(env_var(&env2, "boot_file"), None, "{env2}");
}

/// Stop the responder and start it again on the bridge (a restart: leases come from the file).
fn lab_restart_on_bridge(lab: &mut Lab, s: &str, server: Ipv4Addr, range: &str) {
    for t in lab.threads.drain(..) {
        t.join().unwrap().unwrap();
    }
    for mut c in lab.children.drain(..) {
        let _ = c.kill();
        let _ = c.wait();
    }
    lab.start_ringboot(s, "full", "rbbr", Some(range), server);
}

#[test]
fn proxy_mode_beside_dnsmasq() {
    if !preflight(&["ip", "dnsmasq"], "busybox dnsmasq-base iproute2") {
        return;
    }
    let mut lab = Lab::new();
    let x = 110 + (std::process::id() % 100) as u8;
    let (s, d, c) = (lab.ns("s"), lab.ns("d"), lab.ns("c"));
    let id = lab.id.clone();
    // The segment: a bridge in the server namespace, dnsmasq and the client on veths.
    sh(&format!("ip -n {s} link add rbbr type bridge"));
    sh(&format!("ip -n {s} link set rbbr up"));
    let server = Ipv4Addr::new(10, 99, x, 1);
    sh(&format!("ip -n {s} addr add {server}/24 dev rbbr"));
    let (sd, dd) = (format!("rbsd{id}"), format!("rbdd{id}"));
    let (sc, cc) = (format!("rbsc{id}"), format!("rbcc{id}"));
    veth(&s, &sd, &d, &dd);
    veth(&s, &sc, &c, &cc);
    sh(&format!("ip -n {s} link set {sd} master rbbr"));
    sh(&format!("ip -n {s} link set {sc} master rbbr"));
    let dhcp = Ipv4Addr::new(10, 99, x, 2);
    sh(&format!("ip -n {d} addr add {dhcp}/24 dev {dd}"));

    let mut dns = Command::new("ip");
    dns.args([
        "netns",
        "exec",
        &d,
        "dnsmasq",
        "--no-daemon",
        "--port=0",
        "--conf-file=/dev/null",
    ])
    .arg(format!(
        "--dhcp-range=10.99.{x}.50,10.99.{x}.60,255.255.255.0,1h"
    ))
    .arg(format!("--interface={dd}"))
    .args([
        "--bind-interfaces",
        "--no-ping",
        "--user=root",
        "--group=root",
        "--pid-file=",
    ])
    .arg(format!(
        "--dhcp-leasefile={}",
        lab.path("dnsmasq.leases").display()
    ))
    .stdout(Stdio::null())
    .stderr(File::create(lab.path("dnsmasq.err")).unwrap());
    // SAFETY: prctl in the child before exec.
    unsafe {
        dns.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    lab.children.push(dns.spawn().unwrap());
    lab.start_ringboot(&s, "proxy", "rbbr", None, server);

    let mac = [
        0x52,
        0x54,
        0x00,
        0xab,
        0xcd,
        (std::process::id() & 0xff) as u8,
    ];
    let cc2 = cc.clone();
    let (offers, plain) = in_netns(&c, move || {
        let sock = client_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68), &cc2);
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        // dnsmasq may take a moment to start: retry the PXE DISCOVER until both answer.
        let mut offers = vec![];
        for attempt in 0..5u32 {
            let d = pxe_discover(mac, ClientArch::EFI_X64, 0x5000 + attempt);
            offers = exchange(&sock, &d, bcast, Duration::from_secs(2));
            if offers.len() >= 2 {
                break;
            }
        }
        let mut plain = pxe_discover(mac, ClientArch::BIOS, 0x6000);
        plain.opts_mut().remove(OptionCode::ClassIdentifier);
        plain
            .opts_mut()
            .remove(OptionCode::ClientSystemArchitecture);
        let plain = exchange(&sock, &plain, bcast, Duration::from_secs(2));
        (offers, plain)
    });
    let from = |sid: Ipv4Addr, v: &[Message]| v.iter().find(|m| server_id(m) == Some(sid)).cloned();
    let dns_offer = from(dhcp, &offers).unwrap_or_else(|| {
        panic!(
            "no offer from dnsmasq: {offers:?}\n{}",
            std::fs::read_to_string(lab.path("dnsmasq.err")).unwrap_or_default()
        )
    });
    let proxy = from(server, &offers)
        .unwrap_or_else(|| panic!("no proxy offer from ringboot: {offers:?}\n{}", lab.logs()));
    let addr = dns_offer.yiaddr();
    assert_eq!(addr.octets()[..3], [10, 99, x]);
    assert!((50..=60).contains(&addr.octets()[3]));
    assert_eq!(proxy.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        proxy.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "a proxy never offers an address"
    );
    assert_eq!(proxy.siaddr(), server);
    assert_eq!(file_of(&proxy), "pxelinux.0");
    assert!(proxy.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(proxy.opts().get(OptionCode::SubnetMask).is_none());
    assert!(proxy.opts().get(OptionCode::Router).is_none());
    assert_eq!(
        proxy.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(wire::find_sub_option(&vendor(&proxy), 6), Some(&[8u8][..]));
    // The non-PXE client: dnsmasq answers, ringboot does not.
    assert!(
        from(dhcp, &plain).is_some(),
        "dnsmasq answers a plain client: {plain:?}"
    );
    assert!(
        from(server, &plain).is_none(),
        "ringboot must not answer a non-PXE client"
    );

    // The client takes dnsmasq's address and asks ringboot's boot server on port 4011 from 4011.
    sh(&format!("ip -n {c} addr add {addr}/24 dev {cc}"));
    let ack = boot_server_ack(&c, &cc, (addr, server), mac, 0x7000, Duration::from_secs(2))
        .unwrap_or_else(|| panic!("no port-4011 ACK\n{}", lab.logs()));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(file_of(&ack), "pxelinux.0");
    assert_eq!(
        vendor(&ack),
        [71, 4, 0, 0, 0, 0, 255],
        "sub-option 71 echoed"
    );
}

#[test]
fn proxy_mode_from_a_config_file_with_rules_for_efi_x64_and_ipxe() {
    if !preflight(&["ip"], "busybox dnsmasq-base iproute2") {
        return;
    }
    let mut lab = Lab::new();
    let x = 60 + (std::process::id() % 50) as u8;
    let (s, c, si, ci) = lab.server_and_client();
    let (server, client) = addresses(&s, &si, &c, &ci, [10, 99, x]);
    lab.served(&["pxelinux.0", "ipxe.efi"]);
    let script = format!("http://{server}/boot.ipxe");
    lab.start_ringboot_config(
        &s,
        &format!(
            r#"# Top-level keys are the serve flags; DHCP lives in its own table.
listen = ["{server}:6969"]

[dhcp]
mode = "proxy"
interface = "{si}"
boot_file = "pxelinux.0"

[[dhcp.rule]]
arch = ["efi-x64"]
boot_file = "ipxe.efi"
ipxe_script = "{script}"
"#
        ),
    );
    if binary_has_dhcp_flags() {
        assert!(
            lab.logs().contains(&format!("listening on {server}:6969")),
            "listen from the config file: {}",
            lab.logs()
        );
    }

    let mac = [
        0x52,
        0x54,
        0x00,
        0xcf,
        0x9e,
        (std::process::id() & 0xff) as u8,
    ];
    let ci2 = ci.clone();
    let offers = in_netns(&c, move || {
        let sock = client_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68), &ci2);
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let ask = |m: Message| {
            exchange(&sock, &m, bcast, Duration::from_millis(700))
                .into_iter()
                .find(|o| server_id(o) == Some(server))
        };
        [
            ask(pxe_discover(mac, ClientArch::BIOS, 0x8001)),
            ask(pxe_discover(mac, ClientArch::EFI_X64, 0x8002)),
            ask(as_ipxe(pxe_discover(mac, ClientArch::EFI_X64, 0x8003))),
        ]
    });
    let [bios, efi, ipxe] =
        offers.map(|o| o.unwrap_or_else(|| panic!("no proxy offer\n{}", lab.logs())));
    for o in [&bios, &efi, &ipxe] {
        assert_eq!(o.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(o.yiaddr(), Ipv4Addr::UNSPECIFIED, "proxy: no address");
        assert_eq!(o.siaddr(), server);
    }
    assert_eq!(file_of(&bios), "pxelinux.0", "no rule for BIOS: boot_file");
    assert_eq!(file_of(&efi), "ipxe.efi", "the efi-x64 rule");
    assert_eq!(
        file_of(&ipxe),
        script,
        "iPXE gets its script, not ipxe.efi again"
    );

    // UEFI asks the boot server on 4011 and gets the rule's file too.
    let wait = Duration::from_millis(700);
    let ack = boot_server_ack(&c, &ci, (client, server), mac, 0x8004, wait)
        .unwrap_or_else(|| panic!("no port-4011 ACK\n{}", lab.logs()));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(file_of(&ack), "ipxe.efi");
    assert_eq!(vendor(&ack), [71, 4, 0, 0, 0, 0, 255]);
}

/// SIGHUP (issue 12): a reload changes a boot rule while a transfer continues byte-exact; a
/// reload with an invalid file is refused and the running configuration stays.
#[test]
fn sighup_changes_a_boot_rule_while_a_transfer_continues() {
    if !preflight(&["ip"], "busybox dnsmasq-base iproute2") || !binary_has_dhcp_flags() {
        return;
    }
    let mut lab = Lab::new();
    let x = 110 + (std::process::id() % 50) as u8;
    let (s, c, si, ci) = lab.server_and_client();
    let (server, _) = addresses(&s, &si, &c, &ci, [10, 98, x]);
    let root = lab.served(&["pxelinux.0", "ipxe.efi", "shim.efi"]);
    let big: Vec<u8> = (0..600 * 512u32).map(|i| (i * 7 + i / 511) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    let config = |efi: &str| {
        format!(
            "listen = [\"{server}:6969\"]\n[dhcp]\nmode = \"proxy\"\ninterface = \"{si}\"\n\
             boot_file = \"pxelinux.0\"\n[[dhcp.rule]]\narch = [\"efi-x64\"]\nboot_file = \"{efi}\"\n"
        )
    };
    lab.start_ringboot_config(&s, &config("ipxe.efi"));
    let pid = lab.children[0].id() as i32;
    let mac = [
        0x52,
        0x54,
        0x00,
        0xcf,
        0x9f,
        (std::process::id() & 0xff) as u8,
    ];
    let ask = |lab: &Lab, xid: u32| -> String {
        let ci = ci.clone();
        let o = in_netns(&c, move || {
            let sock = client_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68), &ci);
            let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
            exchange(
                &sock,
                &pxe_discover(mac, ClientArch::EFI_X64, xid),
                bcast,
                Duration::from_millis(700),
            )
            .into_iter()
            .find(|o| server_id(o) == Some(server))
        });
        file_of(&o.unwrap_or_else(|| panic!("no proxy offer\n{}", lab.logs())))
    };
    assert_eq!(ask(&lab, 0x9001), "ipxe.efi");

    // A lockstep download that stops after block 100 until told to go on.
    let (at100_tx, at100_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let path = format!("/var/run/netns/{c}");
    let to = SocketAddrV4::new(server, 6969);
    let download = std::thread::spawn(move || -> Vec<u8> {
        let fd = File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with an fd of a network namespace.
        assert_eq!(
            unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut rrq = vec![0, 1];
        rrq.extend_from_slice(b"big.bin\0octet\0");
        sock.send_to(&rrq, to).unwrap();
        let (mut out, mut next, mut peer, mut paused) = (Vec::new(), 1u16, None, false);
        let mut buf = [0u8; 1024];
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if n < 4 || buf[1] != 3 {
                panic!("not DATA: {:?}", &buf[..n.min(40)]);
            }
            let block = u16::from_be_bytes([buf[2], buf[3]]);
            peer.get_or_insert(from);
            if block == next {
                out.extend_from_slice(&buf[4..n]);
                next = next.wrapping_add(1);
            }
            if block == 100 && !paused {
                paused = true;
                at100_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            }
            let ack = [0, 4, buf[2], buf[3]];
            sock.send_to(&ack, peer.unwrap()).unwrap();
            if block == next.wrapping_sub(1) && n < 4 + 512 {
                break;
            }
        }
        out
    });
    at100_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("block 100");

    // The rule changes; the transfer waits in the middle meanwhile.
    std::fs::write(lab.path("ringboot.toml"), config("shim.efi")).unwrap();
    // SAFETY: a signal to the server we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let until = Instant::now() + Duration::from_secs(10);
    while !lab.logs().contains("configuration reloaded") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        lab.logs().contains("configuration reloaded"),
        "{}",
        lab.logs()
    );
    assert_eq!(ask(&lab, 0x9002), "shim.efi", "the new rule after SIGHUP");

    // An invalid file (a boot file that is not under the root): refused, the old one stays.
    std::fs::write(lab.path("ringboot.toml"), config("nothere.efi")).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let until = Instant::now() + Duration::from_secs(10);
    while !lab.logs().contains("reload refused") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = lab.logs();
    assert!(
        logs.contains("reload refused") && logs.contains("nothere.efi"),
        "{logs}"
    );
    assert_eq!(
        ask(&lab, 0x9003),
        "shim.efi",
        "the running configuration stays"
    );

    go_tx.send(()).unwrap();
    let got = download.join().unwrap();
    assert!(
        got == big,
        "the transfer across both reloads is byte-exact ({} of {} bytes)",
        got.len(),
        big.len()
    );
    assert!(
        lab.children[0].try_wait().unwrap().is_none(),
        "still running\n{}",
        lab.logs()
    );
}
