//! Real firmware against the real binary: QEMU (software emulation) network-boots from ringboot.
//!
//! Contract:
//! - Not root, or no `qemu-system-x86_64` / firmware images: prints "skipped: <why>" and passes.
//!   Under `CI=true` as root every test must run (`.ci/run` installs qemu-system-x86, ipxe-qemu,
//!   ovmf, ipxe and dnsmasq-base): anything missing fails it. A machine whose kernel offers no
//!   usable `/dev/net/tun` (some containers) skips, saying so: that is no install step.
//! - Each test builds its own namespace (`rbfw<pid><n>`, `common::netns`): a bridge `br0` (10.77.0.1/24, no route
//!   out) with a tap device `tap0` for the guest. The test thread enters it (`setns`), so ringboot,
//!   dnsmasq and QEMU all run there; the namespace goes when the test ends (the guard's Drop), the
//!   children die with the test thread.
//! - What boots:
//!   * **BIOS**: SeaBIOS runs the iPXE option ROM of an emulated e1000 (Debian's ipxe-qemu, the
//!     PXE ROM QEMU ships). ringboot is the whole boot service: `--dhcp full`.
//!   * **UEFI**: OVMF with its own virtio-net driver (`romfile=` empty), so the PXE client is
//!     EDK2's PxeBcDxe/Mtftp4 (tsize probe, blksize, windowsize). Addresses come from dnsmasq;
//!     ringboot is a **proxyDHCP** beside it. EDK2 downloads `ipxe.efi` (Debian's ipxe) and starts
//!     it; that iPXE asks again (user class iPXE) and gets the script: a firmware chain as in a
//!     real UEFI classroom.
//!   * **PXE MTFTP**: the same BIOS iPXE fetches a 2 MiB checkpoint script with `mtftp://` from
//!     `--mtftp` (iPXE's default group 239.255.1.1:3001), as docs/winpe.md does for `boot.wim`.
//!   * **A classroom with loss** (issue 11): two such guests (one tap each on the bridge) fetch one
//!     3 MiB script over `mtftp://` at once while nftables (bridge family) drops 2% of the UDP
//!     datagrams toward and from each guest; one session serves both, each checks its copy.
//! - The proof is end to end: the script `boot.ipxe` chains `big.ipxe`, a 96 MiB iPXE script
//!   (past the 65535-block rollover at iPXE's blksize 1432) made of random comment padding and
//!   6000-odd checkpoints, each `iseq ${c} <previous token> || goto bad` then `set c <token>`. A
//!   lost, repeated or misplaced region breaks the chain; only a whole, ordered file reaches the
//!   last line, which asks for `ok-<platform>-<last token>.txt`. The test waits for that request
//!   in ringboot's log (a missing file: refused with ERROR 1, which is fine) and checks that each
//!   download finished `completed`.
//! - Debugging: `RB_CAPTURE=FILE` writes a packet capture of the bridge of the classroom tests.
//! - One test at a time (`one_lab_at_a_time`): emulated guests of several tests starve each
//!   other on a small machine.
//! - Bounded: 300 s per test; the guest is killed when the marker shows. On failure the
//!   guest's console and the server's log are printed.

mod common;

use common::netns::{preflight, sh, Netns};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);
const MARKER_WAIT: Duration = Duration::from_secs(270);
const BIG: usize = 96 << 20;

const QEMU: &str = "qemu-system-x86_64";
const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
const BIOS_NIC_ROM: &str = "/usr/lib/ipxe/qemu/pxe-e1000.rom";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

const PACKAGES: &str = "qemu-system-x86 ipxe-qemu ovmf ipxe dnsmasq-base iproute2";

/// The firmware tests run one at a time: QEMU emulates the guest CPU (TCG), and guests of
/// several tests at once on a small machine starve each other for seconds (a starved iPXE
/// listener answers late; see the classroom test). Held for the whole test; a test that panics
/// poisons nothing that matters.
fn one_lab_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LAB.lock().unwrap_or_else(|e| e.into_inner())
}

/// Skip (printing why) or, under CI as root, fail when a program or firmware file is missing.
fn runnable(programs: &[&str], files: &[&str]) -> bool {
    if !preflight(programs, PACKAGES) {
        return false;
    }
    let gone: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !Path::new(f).is_file())
        .collect();
    if !gone.is_empty() {
        let why = format!("missing {} (apt-get install {PACKAGES})", gone.join(", "));
        assert!(!under_ci(), "firmware test cannot run: {why}");
        println!("skipped: {why}");
        return false;
    }
    // Not a package but the kernel's tun device: a container may lack it or forbid it. That is
    // the machine, not a missing install, so it skips (saying so) even under CI.
    if let Err(why) = tun_device() {
        println!("skipped: no usable /dev/net/tun for the guest's tap device: {why}");
        return false;
    }
    true
}

/// `/dev/net/tun` opens for reading and writing (created, as char 10:200, if absent).
fn tun_device() -> Result<(), String> {
    let tun = Path::new("/dev/net/tun");
    if !tun.exists() {
        let _ = std::fs::create_dir_all("/dev/net");
        let made = Command::new("mknod")
            .args(["/dev/net/tun", "c", "10", "200"])
            .status();
        if !made.is_ok_and(|s| s.success()) {
            return Err("absent, and mknod failed".into());
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tun)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// One test's segment: namespace, bridge `br0` = 10.77.0.1/24, tap devices `tap0..` (one per
/// guest) on it; the calling thread moves into it.
fn enter_lab(guests: usize) -> Netns {
    let ns = Netns::new("fw");
    ns.ip(&[
        "link add br0 type bridge",
        "addr add 10.77.0.1/24 dev br0",
        "link set br0 up",
    ]);
    for g in 0..guests {
        ns.ip(&[
            &format!("tuntap add dev tap{g} mode tap"),
            &format!("link set tap{g} master br0"),
            &format!("link set tap{g} up"),
        ]);
    }
    ns.enter();
    ns
}

/// A child process killed (by PID) on drop.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(what: &'static str, mut cmd: Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    Proc { child }
}

/// The boot files: `ipxe.efi`, `boot.ipxe` (the script iPXE gets) and the checkpoint chain
/// `big.ipxe`. Returns the marker file name for `platform` ("pcbios" or "efi").
fn boot_files(files: &TestRoot, platform: &str) -> String {
    let efi = std::fs::read(IPXE_EFI).unwrap();
    files.add("ipxe.efi", efi);
    files.add(
        "boot.ipxe",
        b"#!ipxe\necho ringboot firmware test on ${platform}\n\
          chain tftp://${next-server}/big.ipxe || goto failed\n\
          :failed\nchain tftp://${next-server}/failed-${platform}.txt\n"
            .to_vec(),
    );
    let (script, last) = checkpoint_script(BIG, 0x5eed_0000 ^ platform.len() as u64, "");
    files.add("big.ipxe", script);
    format!("ok-{platform}-{last}.txt")
}

/// An iPXE script of about `size` bytes: a checkpoint every 16 KiB, random comment padding
/// between, and a last line that asks for `ok-${platform}<tag>-<last token>.txt` (`tag` may hold
/// iPXE settings, e.g. the MAC, so that each guest asks for its own). Returns the script and that
/// token.
fn checkpoint_script(size: usize, seed: u64, tag: &str) -> (Vec<u8>, String) {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = b"#!ipxe\nset c start\n".to_vec();
    let mut prev = "start".to_string();
    while out.len() + 20_000 < size {
        let next_check = out.len() + 16 * 1024;
        while out.len() + 82 < next_check {
            let n = (next_check - 82 - out.len()).min(200);
            out.push(b'#');
            for _ in 0..n {
                out.push(HEX[(next() & 15) as usize]);
            }
            out.push(b'\n');
        }
        let token = format!("{:08x}", next() as u32);
        out.extend_from_slice(
            format!("iseq ${{c}} {prev} || goto bad\nset c {token}\n").as_bytes(),
        );
        prev = token;
    }
    out.extend_from_slice(
        format!(
            "iseq ${{c}} {prev} || goto bad\n\
             chain tftp://${{next-server}}/ok-${{platform}}{tag}-{prev}.txt\n\
             exit\n\
             :bad\nchain tftp://${{next-server}}/bad-${{platform}}-${{c}}.txt\n"
        )
        .as_bytes(),
    );
    (out, prev)
}

/// Wait for the marker request; then check every download the guest made finished completed.
fn expect_boot(srv: &Server, marker: &str, console: &Path, downloads: &[&str]) {
    expect_boots(
        srv,
        &[(marker.to_string(), console.to_path_buf())],
        downloads,
    );
}

/// Wait for every guest's marker request (each guest's console beside it, for the failure
/// message); then check every download named finished completed.
fn expect_boots(srv: &Server, guests: &[(String, PathBuf)], downloads: &[&str]) {
    // The markers, or a failure branch of the scripts (stop waiting at once).
    let deadline = std::time::Instant::now() + MARKER_WAIT;
    let missing = loop {
        let lines = srv.log_lines();
        let missing: Vec<&(String, PathBuf)> = guests
            .iter()
            .filter(|(marker, _)| !lines.iter().any(|l| l.contains(marker.as_str())))
            .collect();
        // A guest's `failed-` request may follow its marker (a marker that does not exist):
        // only more of them than markers seen means one failed.
        let failed = lines.iter().filter(|l| asked_for(l, "failed-")).count();
        if missing.is_empty()
            || lines.iter().any(|l| asked_for(l, "bad-"))
            || failed > guests.len() - missing.len()
            || std::time::Instant::now() >= deadline
        {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if let Some((marker, console)) = missing.first() {
        let raw = std::fs::read(console).unwrap_or_default();
        panic!(
            "no request for {marker} within {MARKER_WAIT:?}\n--- guest console (tail) ---\n{}\n\
             --- server log ---\n{}",
            tail(&strip_ansi(&String::from_utf8_lossy(&raw)), 60),
            srv.log_lines().join("\n")
        );
    }
    let lines = srv.log_lines();
    for file in downloads {
        let done = lines
            .iter()
            .find(|l| l.contains("transfer finished") && l.contains(&format!("file=\"{file}\"")));
        let Some(done) = done else {
            panic!("no finished transfer of {file}\n{}", lines.join("\n"));
        };
        assert!(
            done.contains("outcome=\"completed\""),
            "{file}: {done}\n{}",
            lines.join("\n")
        );
        eprintln!("{done}");
    }
    // (`failed-` may follow the marker: the marker file does not exist, so its `chain` fails
    // and boot.ipxe's fallback runs. `bad-` would mean a broken checkpoint chain.)
    assert!(
        !lines.iter().any(|l| asked_for(l, "bad-")),
        "a guest's checkpoint chain broke\n{}",
        lines.join("\n")
    );
}

/// A server log line about a request for a file whose name starts with `prefix`.
fn asked_for(line: &str, prefix: &str) -> bool {
    line.contains(&format!("file={prefix}")) || line.contains(&format!("file=\"{prefix}"))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn qemu_base(console: &Path) -> Command {
    qemu_on(console, "tap0")
}

/// A guest whose NIC is the tap device `tap`.
fn qemu_on(console: &Path, tap: &str) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args([
        "-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none",
    ])
    .args(["-no-reboot", "-serial"])
    .arg(format!("file:{}", console.display()))
    .arg("-netdev")
    .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
    cmd
}

/// BIOS: SeaBIOS + the iPXE PXE ROM of an e1000; ringboot is the DHCP server and TFTP server.
#[test]
fn bios_ipxe_rom_boots_through_full_dhcp_and_a_96_mib_script() {
    if !runnable(&[QEMU, "ip"], &[BIOS_NIC_ROM, IPXE_EFI]) {
        return;
    }
    let _one_at_a_time = one_lab_at_a_time();
    bounded(LIMIT, || {
        let _lab = enter_lab(1);
        let files = TestRoot::new();
        let marker = boot_files(&files, "pcbios");
        let config = files.base().join("ringboot.toml");
        let leases = files.base().join("dhcp.leases");
        std::fs::write(
            &config,
            format!(
                "[dhcp]\nmode = \"full\"\ninterface = \"br0\"\nrange = \"10.77.0.100,10.77.0.150\"\n\
                 lease_file = \"{}\"\nboot_file = \"ipxe.efi\"\nipxe_script = \"boot.ipxe\"\n",
                leases.display()
            ),
        )
        .unwrap();
        let config = config.to_str().unwrap().to_string();
        let srv = Server::start(files, &["--listen", "10.77.0.1:69", "--config", &config]);
        let console = srv.files.base().join("console.log");
        let mut qemu = qemu_base(&console);
        qemu.args(["-boot", "n", "-device"])
            .arg(format!(
                "e1000,netdev=n0,mac=52:54:00:7b:00:01,romfile={BIOS_NIC_ROM}"
            ))
            .arg("-nographic");
        let qlog = srv.files.base().join("qemu.log");
        let guest = spawn("qemu (BIOS)", qemu, &qlog);
        expect_boot(&srv, &marker, &console, &["boot.ipxe", "big.ipxe"]);
        drop(guest);
    });
}

/// UEFI: OVMF's own PXE client beside dnsmasq (addresses), ringboot as proxyDHCP; EDK2 loads
/// ipxe.efi, which gets the script.
#[test]
fn uefi_edk2_pxe_boots_ipxe_efi_through_proxy_dhcp_beside_dnsmasq() {
    if !runnable(&[QEMU, "ip", "dnsmasq"], &[OVMF_CODE, OVMF_VARS, IPXE_EFI]) {
        return;
    }
    let _one_at_a_time = one_lab_at_a_time();
    bounded(LIMIT, || {
        let _lab = enter_lab(1);
        let files = TestRoot::new();
        let marker = boot_files(&files, "efi");
        let base: PathBuf = files.base().to_path_buf();
        let mut dnsmasq = Command::new("dnsmasq");
        dnsmasq
            .args([
                "--no-daemon",
                "--port=0",
                "--interface=br0",
                "--bind-interfaces",
            ])
            .arg("--dhcp-range=10.77.0.50,10.77.0.90,255.255.255.0,1h")
            .arg(format!(
                "--dhcp-leasefile={}",
                base.join("dnsmasq.leases").display()
            ))
            .arg(format!("--pid-file={}", base.join("dnsmasq.pid").display()))
            .arg("--conf-file=/dev/null")
            .arg("--log-dhcp");
        let dhcpd = spawn("dnsmasq", dnsmasq, &base.join("dnsmasq.log"));
        let config = base.join("ringboot.toml");
        std::fs::write(
            &config,
            "[dhcp]\nmode = \"proxy\"\ninterface = \"br0\"\nboot_file = \"ipxe.efi\"\n\
             ipxe_script = \"boot.ipxe\"\n",
        )
        .unwrap();
        let config = config.to_str().unwrap().to_string();
        let srv = Server::start(files, &["--listen", "10.77.0.1:69", "--config", &config]);
        let vars = base.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).unwrap();
        let console = base.join("console.log");
        let mut qemu = qemu_base(&console);
        qemu.arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .args([
                "-device",
                "virtio-net-pci,netdev=n0,mac=52:54:00:7b:00:02,romfile=",
            ]);
        let guest = spawn("qemu (UEFI)", qemu, &base.join("qemu.log"));
        expect_boot(
            &srv,
            &marker,
            &console,
            &["ipxe.efi", "boot.ipxe", "big.ipxe"],
        );
        let console_text = strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&console).unwrap_or_default(),
        ));
        assert!(
            console_text.contains("NBP file downloaded successfully"),
            "EDK2 did not report the NBP download:\n{}",
            tail(&console_text, 40)
        );
        drop(guest);
        drop(dhcpd);
    });
}

/// iPXE's PXE MTFTP client (`mtftp://`, as docs/winpe.md uses for `boot.wim`) against
/// `--mtftp`: the iPXE ROM of the BIOS test fetches a 2 MiB checkpoint script on iPXE's default
/// group 239.255.1.1:3001 and runs it. It must come by multicast (one PXE MTFTP session, the
/// guest its master), not by iPXE's fallback to plain TFTP.
#[test]
fn bios_ipxe_fetches_by_pxe_mtftp_from_the_multicast_service() {
    classroom(1, 0, 2 << 20, &[]);
}

/// The classroom recipe of docs/winpe.md with loss (issue 11): two iPXE guests boot at once and
/// fetch one 3 MiB checkpoint script over `mtftp://`, while the bridge drops 2% of the UDP
/// datagrams toward each guest (nftables, bridge family: every guest loses its own) and 2% of
/// those from them, DHCP spared. Each guest checks what it received (the checkpoint chain) and
/// asks for its own marker; the server log shows one session that served both. The session is
/// held to 2 Mbit/s so that it is still running when the slower guest opens (TCG guests boot a
/// few seconds apart): the late one joins it as a listener and is asked for the start in turn.
#[test]
fn two_bios_ipxe_guests_share_one_pxe_mtftp_session_through_a_lossy_bridge() {
    classroom(2, 20, 3 << 20, &["--multicast-rate", "2"]);
}

/// `guests` BIOS iPXE guests fetch a checkpoint script of about `size` bytes by PXE MTFTP,
/// with `loss_per_mille` of the UDP datagrams (not DHCP) dropped in each direction on the bridge.
fn classroom(guests: usize, loss_per_mille: u32, size: usize, server_args: &[&str]) {
    if !runnable(&[QEMU, "ip", "nft"], &[BIOS_NIC_ROM]) {
        return;
    }
    let server_args: Vec<String> = server_args.iter().map(|a| a.to_string()).collect();
    let _one_at_a_time = one_lab_at_a_time();
    bounded(LIMIT, move || {
        let lab = enter_lab(guests);
        // The session sends to the group; the namespace has no default route.
        lab.ip(&["route add 224.0.0.0/4 dev br0"]);
        if loss_per_mille > 0 {
            lossy_bridge(&lab, loss_per_mille);
        }
        let files = TestRoot::new();
        files.add(
            "boot.ipxe",
            b"#!ipxe\nchain mtftp://${next-server}/mc.ipxe || goto failed\nexit\n\
              :failed\nchain tftp://${next-server}/failed-${platform}.txt\n"
                .to_vec(),
        );
        // Each guest's marker names its MAC, so every guest proves its own copy.
        let (script, last) = checkpoint_script(size, 0x6d74_6674, "-${mac:hexhyp}");
        files.add("mc.ipxe", script);
        // The markers exist (a script that only says so), so each guest's request is a
        // transfer of its own in the log, not a refusal (those lines are rate-limited).
        let markers: Vec<String> = (0..guests)
            .map(|g| format!("ok-pcbios-52-54-00-7b-01-{g:02x}-{last}.txt"))
            .collect();
        for m in &markers {
            files.add(m, b"#!ipxe\necho checkpoint chain complete\n".to_vec());
        }
        // Handed out but never fetched (the NIC ROM is iPXE already); it must exist under the
        // root for the start-up check.
        files.add("undionly.kpxe", b"not fetched".to_vec());
        let config = files.base().join("ringboot.toml");
        std::fs::write(
            &config,
            format!(
                "[dhcp]\nmode = \"full\"\ninterface = \"br0\"\nrange = \"10.77.0.100,10.77.0.150\"\n\
                 lease_file = \"{}\"\nboot_file = \"undionly.kpxe\"\nipxe_script = \"boot.ipxe\"\n",
                files.base().join("dhcp.leases").display()
            ),
        )
        .unwrap();
        let config = config.to_str().unwrap().to_string();
        let mut args = vec![
            "--listen",
            "10.77.0.1:69",
            "--config",
            &config,
            "--mtftp",
            "mc.ipxe@239.255.1.1:3001",
            "--multicast-interface",
            "10.77.0.1",
        ];
        args.extend(server_args.iter().map(String::as_str));
        let srv = Server::start(files, &args);
        let _cap = std::env::var("RB_CAPTURE").ok().map(|f| {
            let mut c = Command::new("tcpdump");
            let f = format!("{f}.{guests}");
            c.args(["-i", "br0", "-n", "-s", "96", "-w", &f]);
            spawn("tcpdump", c, Path::new("/tmp/tcpdump.log"))
        });
        let mut running = Vec::new();
        let mut expected = Vec::new();
        for (g, marker) in markers.iter().enumerate() {
            let console = srv.files.base().join(format!("console{g}.log"));
            let mut qemu = qemu_on(&console, &format!("tap{g}"));
            qemu.args(["-boot", "n", "-device"])
                .arg(format!(
                    "e1000,netdev=n0,mac=52:54:00:7b:01:{g:02x},romfile={BIOS_NIC_ROM}"
                ))
                .arg("-nographic");
            let log = srv.files.base().join(format!("qemu{g}.log"));
            running.push(spawn("qemu (BIOS, MTFTP)", qemu, &log));
            expected.push((marker.clone(), console));
        }
        expect_boots(&srv, &expected, &["boot.ipxe"]);
        drop(running);
        let lines = srv.log_lines();
        let of_file = |what: &str| -> Vec<&String> {
            lines
                .iter()
                .filter(|l| l.contains(what) && l.contains("mc.ipxe"))
                .collect()
        };
        let started = of_file("multicast session started");
        assert_eq!(
            started.len(),
            1,
            "the guests were not served by one session:\n{}",
            lines.join("\n")
        );
        let done = format!("done={guests}");
        assert!(
            of_file("multicast session finished")
                .iter()
                .any(|l| l.contains(&done)),
            "no PXE MTFTP session of mc.ipxe that completed {guests} guest(s):\n{}",
            lines.join("\n")
        );
        assert!(
            of_file("transfer finished").is_empty(),
            "iPXE fell back to plain TFTP:\n{}",
            lines.join("\n")
        );
        for line in of_file("multicast session finished") {
            eprintln!("{line}");
        }
        if loss_per_mille > 0 {
            let dropped = dropped_on_bridge(&lab);
            eprintln!("dropped on the bridge (to guests, from guests): {dropped:?}");
            assert!(
                dropped.0 > 0,
                "the bridge dropped nothing toward the guests"
            );
        }
    });
}

/// Drop `per_mille` of the UDP datagrams (DHCP spared) that the bridge delivers to each guest
/// (its output hook runs once per port, so each guest loses its own) and of those it takes in
/// from them. A drop on the bridge is loss on the wire: the sender's `sendmsg` still succeeds.
fn lossy_bridge(lab: &Netns, per_mille: u32) {
    let rules = format!(
        "table bridge loss {{\n\
         chain out {{ type filter hook output priority 0; policy accept;\n\
           ip protocol udp udp sport != 67 numgen random mod 1000 < {per_mille} counter drop; }}\n\
         chain in {{ type filter hook input priority 0; policy accept;\n\
           ip protocol udp udp dport != 67 numgen random mod 1000 < {per_mille} counter drop; }}\n\
         }}\n"
    );
    let file = std::env::temp_dir().join(format!("{}.nft", lab.name));
    std::fs::write(&file, rules).unwrap();
    sh(&format!(
        "ip netns exec {} nft -f {}",
        lab.name,
        file.display()
    ));
    let _ = std::fs::remove_file(file);
}

/// The datagrams [`lossy_bridge`] dropped: (toward the guests, from the guests).
fn dropped_on_bridge(lab: &Netns) -> (u64, u64) {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &lab.name, "nft", "list", "table", "bridge", "loss",
        ])
        .output()
        .expect("nft list");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts = text.lines().filter_map(|l| {
        let rest = l.split("counter packets ").nth(1)?;
        rest.split_whitespace().next()?.parse::<u64>().ok()
    });
    (counts.next().unwrap_or(0), counts.next().unwrap_or(0))
}
