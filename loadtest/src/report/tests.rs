use super::*;

#[test]
fn hgrm_has_the_classic_shape() {
    let mut h = hist();
    for v in 1..=1000u64 {
        h.record(v * 1000).unwrap();
    }
    let t = hgrm(&h);
    assert!(t.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(t.contains("#[Max     ="));
    let last = t.lines().rfind(|l| !l.starts_with('#')).unwrap();
    assert!(last.contains("1.000000000000"), "{last}");
    assert!(last.contains("1000"), "{last}");
}

#[test]
fn machines_line_is_unambiguous() {
    let r = sample_report();
    assert_eq!(
        r.machines_line(),
        "  machines: 2 | completed 0 | failed 2 | vanished 0\n"
    );
    assert!(r
        .table()
        .contains("machines: 2 | completed 0 | failed 2 | vanished 0"));
    let j = serde_json::to_value(&r).unwrap();
    for key in ["clients", "completed", "failed", "vanished"] {
        assert!(j.get(key).is_some(), "JSON key {key}");
    }
}

#[test]
fn the_run_is_named_by_top_level_keys_and_one_phrase() {
    let r = sample_report();
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["server"], "127.0.0.1:6969");
    assert_eq!(j["profile"], "uefi");
    assert_eq!(j["file"], "boot.wim");
    assert!(j["scenario"].is_null() && j.get("run").is_none());
    assert_eq!(r.run.what(None), "uefi 'boot.wim'");
    assert_eq!(r.run.what(Some("1 MiB")), "uefi 'boot.wim' (1 MiB)");
    let scenario = Run {
        scenario: Some("winpe".into()),
        ..r.run.clone()
    };
    assert_eq!(scenario.what(None), "scenario winpe");
    assert_eq!(
        scenario.what(Some("1 MiB")),
        "scenario winpe (1 MiB per machine)"
    );
    let bare = Run {
        file: None,
        ..r.run
    };
    assert_eq!(bare.what(Some("1 MiB")), "uefi");
}

fn sample(t: f64, bytes: u64, active: u64) -> Sample {
    Sample { t, bytes, active }
}

#[test]
fn series_merge_the_last_partial_interval() {
    // 1 MB per 250 ms, then a final reading 10 ms later with 100 kB more: 80 Mbit/s over the
    // last 10 ms would be a spike; merged, the last interval is 260 ms at the same rate.
    let s = [
        sample(0.0, 0, 0),
        sample(0.25, 1_000_000, 5),
        sample(0.5, 2_000_000, 5),
        sample(0.51, 2_040_000, 0),
    ];
    let (rate, active) = series(&s);
    assert_eq!(rate.len(), 2);
    assert_eq!(rate[0], [0.25, 32e6]);
    assert_eq!(rate[1][0], 0.51);
    assert!(
        (rate[1][1] - 1_040_000.0 * 8.0 / 0.26).abs() < 1.0,
        "{rate:?}"
    );
    assert_eq!(active, vec![[0.0, 0.0], [0.25, 5.0], [0.51, 0.0]]);
    // A full last interval is kept; a lone reading gives nothing to plot.
    assert_eq!(series(&[sample(0.0, 0, 0), sample(0.2, 10, 1)]).0.len(), 1);
    assert!(series(&[sample(0.0, 0, 0)]).0.is_empty());
}

#[test]
fn dates() {
    let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_798_761_599), "2026-12-31T23:59:59Z");
}

/// Two machines that failed and an empty storm of 0.5 s.
pub(crate) fn sample_report() -> Report {
    use crate::drive::Counters;
    let failed = |index| MachineResult {
        index,
        outcome: Outcome::Failed {
            reason: "timeout".into(),
            detail: "boot.wim: timed out".into(),
        },
        started: Some(Duration::ZERO),
        ended: Duration::from_millis(500),
        first_data: None,
        bytes: 0,
        counters: Counters::default(),
        dhcp: None,
    };
    build(
        &[failed(0), failed(1)],
        &[sample(0.0, 0, 0), sample(0.25, 0, 2), sample(0.5, 0, 0)],
        Meta {
            run: Run {
                server: "127.0.0.1:6969".into(),
                profile: "uefi".into(),
                file: Some("boot.wim".into()),
                scenario: None,
            },
            threads: 1,
            seed: 1,
            cpu_seconds: 0.01,
            elapsed: 0.5,
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_599),
        },
    )
}

#[test]
fn jain_of_equal_and_skewed_rates() {
    assert_eq!(jain([5.0, 5.0, 5.0, 5.0]), 1.0);
    assert!((jain([1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    assert_eq!(jain(std::iter::empty()), 1.0);
}

#[test]
fn iface_delta_and_ratio() {
    let before = IfaceCounters {
        rx_bytes: 1000,
        rx_packets: 10,
        ..Default::default()
    };
    let after = IfaceCounters {
        rx_bytes: 1_081_000,
        rx_packets: 750,
        tx_bytes: 9000,
        ..Default::default()
    };
    let d = iface_delta("veth0", before, after, 1_000_000);
    assert_eq!(d.rx_bytes, 1_080_000);
    assert_eq!(d.rx_packets, 740);
    assert_eq!(d.tx_bytes, 9000);
    assert!((d.rx_wire_per_file_byte - 1.08).abs() < 1e-12);
    assert!(read_iface("no-such-interface-here").is_err());
    let dev = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1234      10    0    2    0     0          0         0     5678      20    0    0    0     0       0          0
rbbc1: 99 1 0 0 0 0 0 0 77 3 0 0 0 0 0 0
";
    let lo = parse_net_dev(dev, "lo").unwrap();
    assert_eq!((lo.rx_bytes, lo.rx_packets, lo.rx_dropped), (1234, 10, 2));
    assert_eq!((lo.tx_bytes, lo.tx_packets), (5678, 20));
    assert_eq!(parse_net_dev(dev, "rbbc1").unwrap().tx_packets, 3);
    assert!(parse_net_dev(dev, "rbbc").is_none());
}
