use super::*;
use std::collections::BTreeMap;

/// A small parser of the Prometheus text format (0.0.4): `# TYPE` lines and samples, with
/// label values unescaped. Returns (types by family, value by `name{labels}` as written
/// back in a canonical form). Panics on anything it does not understand: the test wants
/// the encoder strict.
fn parse(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a text");
            assert!(!help.is_empty());
            assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}"
            );
            assert!(helped.contains(name), "TYPE before HELP for {name}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice for {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value {v}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let mut labels = Vec::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert!(
                        key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "label name {key}"
                    );
                    assert_eq!(chars.next(), Some('"'));
                    let mut val = String::new();
                    loop {
                        match chars.next().expect("label value closes") {
                            '\\' => match chars.next() {
                                Some('n') => val.push('\n'),
                                Some(c) => val.push(c),
                                None => panic!("dangling escape"),
                            },
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    labels.push((key, val));
                    match chars.next() {
                        Some(',') | None => {}
                        Some(c) => panic!("after a label: {c}"),
                    }
                }
                (name, labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before TYPE: {name}");
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        assert!(samples.insert(key, value).is_none(), "sample twice: {line}");
    }
    (types, samples)
}

fn encoded(r: &Registry) -> (BTreeMap<String, String>, BTreeMap<String, f64>, String) {
    let mut out = String::new();
    r.encode(&mut out);
    let (t, s) = parse(&out);
    (t, s, out)
}

/// The samples of histogram `name`: these cumulative buckets (`le`, count), its count where
/// given, and its sum (to 1e-9).
fn histogram(
    s: &BTreeMap<String, f64>,
    name: &str,
    buckets: &[(&str, f64)],
    count: Option<f64>,
    sum: f64,
) {
    for (le, n) in buckets {
        assert_eq!(
            s[&format!("{name}_bucket{{le={le}}}")],
            *n,
            "{name} le={le}"
        );
    }
    if let Some(count) = count {
        assert_eq!(s[&format!("{name}_count")], count, "{name}");
    }
    assert!((s[&format!("{name}_sum")] - sum).abs() < 1e-9, "{name}");
}

#[test]
fn known_values_encode_and_parse_back() {
    let r = Registry::new(Info {
        version: "1.2.3".into(),
        backend: "io_uring".into(),
        workers: 2,
    });
    let w0 = r.recorder();
    let w1 = r.recorder();
    let ctl = r.recorder();
    for _ in 0..3 {
        w0.transfer_started();
    }
    w1.transfer_started();
    w0.transfer_ended(Outcome::Completed, Duration::from_millis(200), 1_000_000);
    w1.transfer_ended(Outcome::Probe, Duration::from_millis(1), 0);
    w0.first_block(Duration::from_millis(3));
    w1.first_block(Duration::from_micros(2_500));
    w0.data_sent(10, 5120);
    w1.data_sent(2, 1024);
    w1.blocks_resent(1);
    w0.timeout();
    w0.refused(RefuseReason::NotFound);
    w1.refused(RefuseReason::NotFound);
    w1.refused(RefuseReason::ClientRate);
    ctl.dhcp_message(DhcpType::Discover, DhcpMode::Proxy, ArchClass::EfiX64);
    ctl.dhcp_message(DhcpType::Offer, DhcpMode::Proxy, ArchClass::EfiX64);
    ctl.dhcp_message(
        DhcpType::Discover,
        DhcpMode::Proxy,
        ArchClass::from_option93(Some(9)),
    );
    ctl.dhcp_ignored(DhcpIgnored::NotPxe);
    ctl.set_leases(3, 97);
    ctl.set_multicast(McProtocol::Rfc2090, 1, 4);
    ctl.multicast_sent(McProtocol::Rfc2090, 4096);
    ctl.multicast_refused(McRefusal::PoolFull);

    let (types, s, text) = encoded(&r);
    assert_eq!(types["ringboot_tftp_transfers_ended_total"], "counter");
    assert_eq!(types["ringboot_tftp_transfers_active"], "gauge");
    assert_eq!(types["ringboot_tftp_first_block_seconds"], "histogram");
    // Counters and gauges: (sample, value).
    for (sample, want) in [
        (
            "ringboot_info{version=1.2.3,backend=io_uring,workers=2}",
            1.0,
        ),
        ("ringboot_tftp_transfers_started_total", 4.0),
        ("ringboot_tftp_transfers_active", 2.0),
        (
            "ringboot_tftp_transfers_ended_total{outcome=completed}",
            1.0,
        ),
        ("ringboot_tftp_transfers_ended_total{outcome=probe}", 1.0),
        ("ringboot_tftp_transfers_ended_total{outcome=timeout}", 0.0),
        (
            "ringboot_tftp_requests_refused_total{reason=not_found}",
            2.0,
        ),
        (
            "ringboot_tftp_requests_refused_total{reason=client_rate}",
            1.0,
        ),
        ("ringboot_tftp_sent_bytes_total", 6144.0),
        ("ringboot_tftp_blocks_sent_total", 12.0),
        ("ringboot_tftp_blocks_resent_total", 1.0),
        ("ringboot_tftp_timeouts_total", 1.0),
        // DHCP: combinations seen only; 9 counts as efi_x64.
        (
            "ringboot_dhcp_messages_total{type=discover,mode=proxy,arch=efi_x64}",
            2.0,
        ),
        (
            "ringboot_dhcp_messages_total{type=offer,mode=proxy,arch=efi_x64}",
            1.0,
        ),
        ("ringboot_dhcp_ignored_total{reason=not_pxe}", 1.0),
        ("ringboot_dhcp_leases{state=in_use}", 3.0),
        ("ringboot_dhcp_leases{state=free}", 97.0),
        ("ringboot_multicast_sessions{protocol=rfc2090}", 1.0),
        ("ringboot_multicast_sessions{protocol=pxe_mtftp}", 0.0),
        ("ringboot_multicast_members{protocol=rfc2090}", 4.0),
        (
            "ringboot_multicast_sent_bytes_total{protocol=rfc2090}",
            4096.0,
        ),
        ("ringboot_multicast_refused_total{reason=pool_full}", 1.0),
    ] {
        assert_eq!(s[sample], want, "{sample}");
    }
    assert_eq!(
        s.keys()
            .filter(|k| k.starts_with("ringboot_dhcp_messages_total"))
            .count(),
        2
    );
    // Duration: one completed transfer of 200 ms (the probe is not observed).
    histogram(
        &s,
        "ringboot_tftp_transfer_duration_seconds",
        &[("0.1", 0.0), ("0.25", 1.0), ("+Inf", 1.0)],
        Some(1.0),
        0.2,
    );
    // First block: 3 ms and 2.5 ms (the bound is inclusive: le means <=).
    histogram(
        &s,
        "ringboot_tftp_first_block_seconds",
        &[("0.001", 0.0), ("0.0025", 1.0), ("0.005", 2.0)],
        Some(2.0),
        0.0055,
    );
    // Throughput: 1,000,000 bytes in 0.2 s = 5,000,000 B/s.
    histogram(
        &s,
        "ringboot_tftp_transfer_throughput_bytes_per_second",
        &[("1250000", 0.0), ("6250000", 1.0)],
        None,
        5_000_000.0,
    );
    // Exact lines, as a scraper sees them.
    for line in [
        "# TYPE ringboot_tftp_transfers_ended_total counter",
        "ringboot_tftp_transfers_ended_total{outcome=\"completed\"} 1",
        "ringboot_tftp_transfer_duration_seconds_bucket{le=\"0.25\"} 1",
        "ringboot_tftp_transfer_duration_seconds_bucket{le=\"+Inf\"} 1",
        "ringboot_tftp_first_block_seconds_bucket{le=\"0.0025\"} 1",
        "ringboot_info{version=\"1.2.3\",backend=\"io_uring\",workers=\"2\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing line {line}");
    }
    assert!(text.ends_with('\n'));
}

#[test]
fn every_family_has_help_and_type_and_the_table_lists_them() {
    let r = Registry::new(Info::default());
    let (types, _, _) = encoded(&r);
    let docs = include_str!("../mod.rs");
    for name in types.keys() {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is missing from the table in metrics/mod.rs"
        );
    }
}

#[test]
fn info_label_values_are_escaped() {
    let r = Registry::new(Info {
        version: "a\"b\\c\nd".into(),
        backend: "epoll".into(),
        workers: 1,
    });
    let (_, s, _) = encoded(&r);
    assert_eq!(
        s["ringboot_info{version=a\"b\\c\nd,backend=epoll,workers=1}"],
        1.0
    );
}

#[test]
fn histograms_cover_every_value() {
    let r = Registry::new(Info::default());
    let w = r.recorder();
    w.first_block(Duration::ZERO);
    w.first_block(Duration::from_secs(3600));
    w.transfer_ended(Outcome::Completed, Duration::ZERO, u64::MAX);
    let t = r.totals();
    assert_eq!(t.first_block.counts[0], 1);
    assert_eq!(t.first_block.counts[FIRST_BLOCK_BUCKETS.bounds.len()], 1);
    assert_eq!(t.first_block.count(), 2);
    assert_eq!(t.throughput.counts[THROUGHPUT_BUCKETS.bounds.len()], 1);
    for b in [&DURATION_BUCKETS, &FIRST_BLOCK_BUCKETS, &THROUGHPUT_BUCKETS] {
        assert!(b.bounds.len() <= MAX_BUCKETS);
        assert!(b.bounds.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn shards_are_summed_across_threads_and_gauges_cleared_on_drop() {
    let r = Arc::new(Registry::new(Info::default()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let w = r.recorder();
                for _ in 0..10_000 {
                    w.transfer_started();
                    w.data_sent(1, 512);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let t = r.totals();
    assert_eq!(t.started, 40_000);
    assert_eq!(t.bytes_sent, 40_000 * 512);
    let ctl = r.recorder();
    ctl.set_leases(5, 5);
    assert_eq!(r.totals().leases_in_use, 5);
    drop(ctl);
    let again = r.recorder();
    again.set_leases(6, 4);
    assert_eq!(r.totals().leases_in_use, 6);
    assert_eq!(r.totals().leases_free, 4);
}

#[test]
fn shard_layout() {
    assert_eq!(std::mem::align_of::<Shard>(), 128);
    // The size the module docs state.
    assert_eq!(std::mem::size_of::<Shard>(), 2432);
}

#[test]
fn arch_classes() {
    assert_eq!(ArchClass::from_option93(None), ArchClass::None);
    assert_eq!(ArchClass::from_option93(Some(0)), ArchClass::Bios);
    assert_eq!(ArchClass::from_option93(Some(7)), ArchClass::EfiX64);
    assert_eq!(ArchClass::from_option93(Some(11)), ArchClass::EfiArm64);
    assert_eq!(ArchClass::from_option93(Some(16)), ArchClass::HttpX64);
    assert_eq!(ArchClass::from_option93(Some(4242)), ArchClass::Other);
}
