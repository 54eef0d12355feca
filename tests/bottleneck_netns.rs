//! Boot storms through a real bottleneck (issue 10): the real `ringboot serve` in one network
//! namespace, `ringboot-loadtest` machines in another, joined by a veth pair whose server side is
//! shaped with `tc tbf` (100 Mbit/s, a queue of 32 frames), so the queue overflows and the
//! server's loss handling runs on a real kernel path.
//!
//! Contract:
//! - Behaviour only, never timings (the machine is shared): every byte of every machine arrives
//!   (the load tester checks each download against the served file), no machine fails, and the
//!   server logs no failed transfer (a transfer that completed must not be reported failed, e.g.
//!   for an ICMP error after the client left).
//! - Not root: prints "skipped: needs root for network namespaces" and passes. Under `CI=true` as
//!   root a missing `ip` or `tc` fails it.
//! - Bounded: 20 machines x 1 MiB and 10 lockstep machines x 256 KiB through 100 Mbit/s (about
//!   two seconds of link), every wait with a deadline, the whole test under [`bounded`].
//! - Nothing leaves the machine: both namespaces are created by the test (`rbbs<id>`, `rbbc<id>`)
//!   and deleted when it ends, even on failure; the veth pair dies with them.
//! - Tests run one at a time (a lock): two storms at once would share the two cores.
//!
//! It gains its full meaning with the congestion controller in the transfer machine (issue 10,
//! second step); until then it proves the path: namespaces, shaping, the server's resends.

mod common;

use common::loadtest::{json_num, loadtest_bin};
use common::netns::{self, preflight, sh, Netns};
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(180);
static SERIAL: Mutex<()> = Mutex::new(());

/// The two namespaces and the shaped link between them.
struct Link {
    server: Netns,
    client: Netns,
    client_if: String,
}

const SERVER_IP: &str = "10.78.0.1";

fn link(machines: usize) -> Link {
    let server = Netns::new("bs");
    let client = Netns::new("bc");
    let id = netns::unique_id();
    // Interface names: at most 15 bytes.
    let (vs, vc) = (format!("rbbs{id}"), format!("rbbc{id}"));
    sh(&format!("ip link add {vs} type veth peer name {vc}"));
    sh(&format!("ip link set {vs} netns {}", server.name));
    sh(&format!("ip link set {vc} netns {}", client.name));
    server.ip(&[
        &format!("addr add {SERVER_IP}/16 dev {vs}"),
        &format!("link set {vs} up"),
    ]);
    client.ip(&[
        &format!("addr add 10.78.0.2/16 dev {vc}"),
        &format!("link set {vc} up"),
    ]);
    // One address per machine: the server caps transfers per source address.
    for i in 1..=machines {
        client.ip(&[&format!("addr add 10.78.1.{i}/16 dev {vc}")]);
    }
    // 100 Mbit/s, a 32-frame queue, a 32000-byte bucket (loadtest/bottleneck.sh's defaults).
    sh(&format!(
        "ip netns exec {} tc qdisc add dev {vs} root tbf rate 100mbit burst 32000 limit {}",
        server.name,
        32 * 1514
    ));
    Link {
        server,
        client,
        client_if: vc,
    }
}

/// Run one storm from the client namespace (the calling thread must be in it).
fn storm(l: &Link, root: &Path, args: &[&str]) -> String {
    let json = root.parent().unwrap().join("storm.json");
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new(loadtest_bin("bn-loadtest"));
    cmd.args([
        "--server",
        &format!("{SERVER_IP}:69"),
        "--source-ips",
        "10.78.1.0/24",
        "--verify",
        root.to_str().unwrap(),
        "--iface",
        &l.client_if,
        "--json",
        json.to_str().unwrap(),
        "--deadline",
        "90",
        "--quiet",
    ])
    .args(args)
    .stdin(Stdio::null());
    let run = run_with_timeout(cmd, None, Duration::from_secs(120));
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|_| panic!("no report from the load tester:\n{}", run.output()));
    assert!(
        run.status.success(),
        "load tester failed:\n{}\n{text}",
        run.output()
    );
    text
}

#[test]
fn storms_through_a_shaped_link_deliver_every_byte() {
    if !preflight(&["ip", "tc"], "iproute2") {
        return;
    }
    // Built before entering a namespace: cargo may want the network.
    let _ = loadtest_bin("bn-loadtest");
    bounded(LIMIT, || {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let l = link(20);
        let files = TestRoot::new();
        files.add_random("boot.img", 1 << 20);
        files.add_random("ipxe.efi", 256 << 10);
        let root = files.root();
        l.server.enter();
        let srv = Server::start(files, &["--listen", &format!("{SERVER_IP}:69")]);
        l.client.enter();

        let uefi = storm(&l, &root, &["--clients", "20", "--file", "boot.img"]);
        assert_eq!(json_num(&uefi, "completed"), 20.0, "{uefi}");
        assert_eq!(json_num(&uefi, "failed"), 0.0, "{uefi}");
        assert_eq!(json_num(&uefi, "bytes"), 20.0 * (1 << 20) as f64, "{uefi}");

        let ipxe = storm(
            &l,
            &root,
            &["--clients", "10", "--file", "ipxe.efi", "--profile", "ipxe"],
        );
        assert_eq!(json_num(&ipxe, "completed"), 10.0, "{ipxe}");
        assert_eq!(json_num(&ipxe, "failed"), 0.0, "{ipxe}");

        // The server saw the same storms: none of its transfers is logged as failed.
        let failed: Vec<String> = srv
            .log_lines()
            .into_iter()
            .filter(|l| l.contains("transfer failed"))
            .collect();
        assert!(
            failed.is_empty(),
            "completed transfers logged as failed:\n{}",
            failed.join("\n")
        );
        drop(srv);
    });
}
