use super::*;
use crate::metrics::registry::Info;
use serde_json::Value;

fn status(t0: Instant) -> Status {
    Status::new(
        Arc::new(Registry::new(Info {
            version: "9.9.9".into(),
            backend: "epoll".into(),
            workers: 2,
        })),
        t0,
    )
}

fn json(s: &Status, now: Instant) -> Value {
    serde_json::from_slice(&s.snapshot(now).to_json()).unwrap()
}

fn view(id: u64, file: &[u8], bytes: u64, started: Instant) -> TransferView<'_> {
    TransferView {
        id,
        client: format!("10.0.0.{id}:2000").parse().unwrap(),
        file,
        bytes_done: bytes,
        size: Some(1 << 20),
        started,
    }
}

#[test]
fn short_text_cuts_in_the_middle_on_char_boundaries() {
    let t = ShortText::<10>::new(b"short");
    assert_eq!(t.as_bytes(), b"short");
    let long = "a/very/long/path/to/boot.wim";
    let t = ShortText::<16>::new(long.as_bytes());
    assert_eq!(t.to_display(), "a/ve…/boot.wim");
    assert!(t.as_bytes().len() <= 16);
    // Multi-byte characters are not split.
    let t = ShortText::<12>::new("ééééééééé".as_bytes());
    let s = t.to_display();
    assert!(!s.contains('\u{fffd}'), "{s}");
    assert!(s.len() <= 12);
    // Control characters never reach the page.
    let t = ShortText::<16>::new(b"a\x1b[2mb\n");
    assert_eq!(t.to_display(), "a\u{fffd}[2mb\u{fffd}");
}

#[test]
fn snapshot_json_shape() {
    let t0 = Instant::now();
    let s = status(t0);
    let w = s.registry().recorder();
    w.transfer_started();
    w.data_sent(4, 2048);
    let mut p = s.transfer_publisher();
    assert!(p.due(t0));
    {
        let mut b = p.begin(t0);
        b.push(&view(1, b"boot/x64/boot.wim", 0, t0));
    }
    assert!(!p.due(t0 + Duration::from_millis(500)));
    let t1 = t0 + Duration::from_secs(1);
    assert!(p.due(t1));
    {
        let mut b = p.begin(t1);
        b.push(&view(1, b"boot/x64/boot.wim", 500_000, t0));
    }
    s.record_dhcp(
        t1,
        &DhcpView {
            message: DhcpType::Offer,
            mode: DhcpMode::Proxy,
            mac: &[0x52, 0x54, 0, 0x12, 0x34, 0x56],
            ip: Some(Ipv4Addr::new(10, 0, 0, 7)),
            arch: Some(7),
            vendor_class: b"PXEClient:Arch:00007:UNDI:003016",
            boot: b"ipxe.efi",
        },
    );
    let mut mc = s.multicast_publisher();
    {
        let mut b = mc.begin(t1);
        b.session(&SessionView {
            id: 3,
            protocol: McProtocol::PxeMtftp,
            file: b"winpe/boot.wim",
            group: "224.0.1.1:1758".parse().unwrap(),
            size: 1000,
            position: 500,
            bytes_sent: 700,
            members: 2,
            started: t0,
        });
        b.member(MemberView {
            addr: "10.0.0.8:2001".parse().unwrap(),
            master: true,
        });
        b.member(MemberView {
            addr: "10.0.0.9:2001".parse().unwrap(),
            master: false,
        });
    }
    s.tick(t0);
    s.tick(t1);

    let v = json(&s, t1 + Duration::from_millis(250));
    assert_eq!(v["server"]["version"], "9.9.9");
    assert_eq!(v["server"]["backend"], "epoll");
    assert_eq!(v["server"]["workers"], 2);
    assert_eq!(v["counters"]["transfers_active"], 1);
    assert_eq!(v["counters"]["bytes_sent"], 2048);
    let tr = &v["transfers"];
    assert_eq!(tr["active"], 1);
    assert_eq!(tr["unlisted"], 0);
    let row = &tr["listed"][0];
    assert_eq!(row["client"], "10.0.0.1:2000");
    assert_eq!(row["file"], "boot/x64/boot.wim");
    assert_eq!(row["bytes"], 500_000);
    assert_eq!(row["size"], 1 << 20);
    // 500,000 bytes over the one second between the two batches.
    assert_eq!(row["rate"], 500_000);
    assert_eq!(row["elapsed_s"], 1.25);
    let d = &v["dhcp"][0];
    assert_eq!(d["message"], "offer");
    assert_eq!(d["mode"], "proxy");
    assert_eq!(d["mac"], "52:54:00:12:34:56");
    assert_eq!(d["ip"], "10.0.0.7");
    assert_eq!(d["arch"], "efi_x64");
    assert_eq!(d["arch_code"], 7);
    assert_eq!(d["vendor_class"], "PXEClient:Arch:00007:UNDI:003016");
    assert_eq!(d["boot"], "ipxe.efi");
    assert_eq!(d["age_s"], 0.25);
    let m = &v["multicast"][0];
    assert_eq!(m["protocol"], "pxe_mtftp");
    assert_eq!(m["group"], "224.0.1.1:1758");
    assert_eq!(m["members"], 2);
    assert_eq!(m["listed"][0]["addr"], "10.0.0.8:2001");
    assert_eq!(m["listed"][0]["master"], true);
    assert_eq!(m["rate"], 700);
    assert_eq!(v["throughput"]["interval_s"], 1);
    assert_eq!(v["throughput"]["tftp"], serde_json::json!([0]));
    assert_eq!(v["throughput"]["active"], serde_json::json!([1]));
    // Every top-level key the page reads.
    for k in [
        "server",
        "counters",
        "transfers",
        "throughput",
        "dhcp",
        "multicast",
    ] {
        assert!(v.get(k).is_some(), "{k}");
    }
}

#[test]
fn lists_are_bounded_and_the_rest_counted() {
    let t0 = Instant::now();
    let s = status(t0);
    let w = s.registry().recorder();
    let mut pubs: Vec<_> = (0..3).map(|_| s.transfer_publisher()).collect();
    for (k, p) in pubs.iter_mut().enumerate() {
        let mut b = p.begin(t0);
        for i in 0..200u64 {
            w.transfer_started();
            let long = vec![b'x'; 1000];
            b.push(&view(i, &long, i, t0 + Duration::from_millis(k as u64)));
        }
    }
    let v = json(&s, t0);
    let tr = &v["transfers"];
    assert_eq!(tr["active"], 600);
    assert_eq!(tr["listed"].as_array().unwrap().len(), TRANSFERS_LISTED);
    assert_eq!(tr["unlisted"], 600 - TRANSFERS_LISTED as u64);
    assert!(tr["listed"][0]["file"].as_str().unwrap().len() <= NAME_BYTES);
    // Oldest first: the first worker's rows (started at t0) come before the second's.
    assert_eq!(
        tr["listed"][ROWS_PER_WORKER]["elapsed_s"],
        serde_json::json!(0.0)
    );

    for i in 0..(DHCP_RECENT as u8 + 10) {
        s.record_dhcp(
            t0,
            &DhcpView {
                message: DhcpType::Ack,
                mode: DhcpMode::Full,
                mac: &[i; 40],
                ip: None,
                arch: None,
                vendor_class: &[b'v'; 400],
                boot: b"",
            },
        );
    }
    let v = json(&s, t0);
    let d = v["dhcp"].as_array().unwrap();
    assert_eq!(d.len(), DHCP_RECENT);
    // Newest first; chaddr cut to 16 bytes.
    assert_eq!(d[0]["mac"].as_str().unwrap().len(), 16 * 3 - 1);
    assert!(d[0]["mac"].as_str().unwrap().starts_with("3b:"));
    assert!(d[0]["vendor_class"].as_str().unwrap().len() <= VENDOR_BYTES);
    assert_eq!(d[0]["arch"], "none");

    let mut mc = s.multicast_publisher();
    {
        let mut b = mc.begin(t0);
        for id in 0..(SESSIONS_LISTED as u64 + 5) {
            b.session(&SessionView {
                id,
                protocol: McProtocol::Rfc2090,
                file: b"f",
                group: "239.1.1.1:1758".parse().unwrap(),
                size: 1,
                position: 0,
                bytes_sent: 0,
                members: 100,
                started: t0,
            });
            for m in 0..100u16 {
                b.member(MemberView {
                    addr: SocketAddr::from(([10, 0, 0, 1], m)),
                    master: m == 0,
                });
            }
        }
    }
    let v = json(&s, t0);
    let m = v["multicast"].as_array().unwrap();
    assert_eq!(m.len(), SESSIONS_LISTED);
    assert_eq!(m[0]["members"], 100);
    assert_eq!(m[0]["listed"].as_array().unwrap().len(), MEMBERS_LISTED);
}

#[test]
fn stale_publishers_and_ended_transfers_vanish() {
    let t0 = Instant::now();
    let s = status(t0);
    let mut p = s.transfer_publisher();
    {
        let mut b = p.begin(t0);
        b.push(&view(1, b"a", 1, t0));
    }
    assert_eq!(
        json(&s, t0)["transfers"]["listed"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Not published for longer than STALE_AFTER: left out.
    let late = t0 + STALE_AFTER + Duration::from_millis(1);
    assert_eq!(
        json(&s, late)["transfers"]["listed"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // An empty batch clears the rows.
    drop(p.begin(late));
    assert_eq!(
        json(&s, late)["transfers"]["listed"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_reused_id_is_a_new_transfer() {
    let t0 = Instant::now();
    let s = status(t0);
    let mut p = s.transfer_publisher();
    drop({
        let mut b = p.begin(t0);
        b.push(&view(1, b"a", 900_000, t0));
        b
    });
    let t1 = t0 + Duration::from_secs(1);
    let t_new = t0 + Duration::from_millis(500);
    drop({
        let mut b = p.begin(t1);
        b.push(&view(1, b"b", 100_000, t_new));
        b
    });
    // Its rate counts from its own start, not from the old transfer's bytes; a first rate
    // is over at least one publishing interval (here 0.5 s ran: 100,000 B over 1 s).
    assert_eq!(json(&s, t1)["transfers"]["listed"][0]["rate"], 100_000);
    // Started this very instant with a first window out: no absurd rate.
    let t2 = t1 + Duration::from_secs(1);
    drop({
        let mut b = p.begin(t2);
        b.push(&view(2, b"c", 65_536, t2));
        b
    });
    assert_eq!(json(&s, t2)["transfers"]["listed"][0]["rate"], 65_536);
}

#[test]
fn history_spreads_late_ticks_and_is_bounded() {
    let t0 = Instant::now();
    let mut h = History::new();
    h.tick(t0, 0, 0, 0);
    h.tick(t0 + Duration::from_millis(400), 100, 0, 1);
    assert!(h.samples.is_empty(), "under a second: no sample");
    h.tick(t0 + Duration::from_millis(1100), 1000, 10, 2);
    assert_eq!(
        h.samples.back(),
        Some(&Sample {
            tftp: 1000,
            multicast: 10,
            active: 2
        })
    );
    // Three seconds late: three samples of the mean rate.
    h.tick(t0 + Duration::from_millis(4200), 7000, 10, 3);
    assert_eq!(h.samples.len(), 4);
    assert!(h.samples.iter().skip(1).all(|s| s.tftp == 2000));
    // An hour late: the ring holds HISTORY_SECONDS.
    h.tick(t0 + Duration::from_secs(3600), 7000, 10, 0);
    assert_eq!(h.samples.len(), HISTORY_SECONDS);
    for i in 0..10u64 {
        h.tick(t0 + Duration::from_secs(3601 + i), 7000 + i, 10, 0);
    }
    assert_eq!(h.samples.len(), HISTORY_SECONDS);
}

/// A session's rate comes from its previous batch (the same code as a transfer's), its members
/// are listed with the master marked, and it leaves the page with its publisher's next batch.
#[test]
fn multicast_sessions_rate_members_and_end() {
    let t0 = crate::sim_origin();
    let s = status(t0);
    let mut mc = s.multicast_publisher();
    let session = |sent: u64| SessionView {
        id: 7,
        protocol: McProtocol::PxeMtftp,
        file: b"boot.wim",
        group: "239.255.1.1:3001".parse().unwrap(),
        size: 10_000_000,
        position: sent,
        bytes_sent: sent,
        members: 3,
        started: t0,
    };
    for (at, sent) in [(1, 1_000_000), (3, 5_000_000)] {
        let mut b = mc.begin(t0 + Duration::from_secs(at));
        b.session(&session(sent));
        b.member(MemberView {
            addr: "10.0.0.5:2000".parse().unwrap(),
            master: true,
        });
    }
    let v = json(&s, t0 + Duration::from_secs(3));
    let m = &v["multicast"][0];
    assert_eq!(m["rate"], 2_000_000, "{m}");
    assert_eq!(
        (m["file"].as_str(), m["members"].as_u64()),
        (Some("boot.wim"), Some(3))
    );
    assert_eq!(m["listed"][0]["master"], true);
    assert_eq!(m["group"], "239.255.1.1:3001");
    drop(mc.begin(t0 + Duration::from_secs(4)));
    assert_eq!(
        json(&s, t0 + Duration::from_secs(4))["multicast"],
        Value::Array(vec![])
    );
}
