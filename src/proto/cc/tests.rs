use super::*;

/// The one real instant the simulations start from (virtual time is offsets from it).
pub(crate) fn epoch() -> Instant {
    crate::sim_origin()
}

fn ack(bytes: u64, rtt: Option<Duration>, gap: bool) -> AckSample {
    AckSample {
        bytes,
        rtt,
        since_last_send: rtt,
        gap,
    }
}

#[test]
fn rates_convert_and_parse() {
    let r: Rate = "400M".parse().unwrap();
    assert_eq!(r.bits_per_sec(), 400_000_000);
    assert_eq!(r.to_string(), "400.0 Mbit/s");
    assert_eq!("2.5G".parse::<Rate>().unwrap().bytes_per_sec(), 312_500_000);
    assert_eq!("100kbit".parse::<Rate>().unwrap().bits_per_sec(), 100_000);
    assert_eq!(
        "1000000000".parse::<Rate>().unwrap().to_string(),
        "1.00 Gbit/s"
    );
    for bad in ["", "fast", "-1M", "0", "1e20", "NaNM"] {
        assert!(bad.parse::<Rate>().is_err(), "{bad}");
    }
    let r = Rate::from_bytes_per_sec(1_000_000);
    assert_eq!(r.time_for(1_000), Duration::from_millis(1));
    assert_eq!(r.bytes_in(Duration::from_millis(3)), 3_000);
    assert_eq!(
        Rate::per(500, Duration::from_millis(1)),
        Some(Rate(500_000))
    );
    assert_eq!(Rate::per(500, Duration::ZERO), None);
    assert_eq!(r.scale(5, 4).bytes_per_sec(), 1_250_000);
    assert_eq!(wire_bytes(4 + 1468, false), 1514);
}

#[test]
fn an_open_link_never_makes_anyone_wait() {
    let t0 = epoch();
    let mut link = LinkCc::new(LinkConfig::default());
    let mut f = FlowCc::new();
    for i in 0..10_000u64 {
        let now = t0 + Duration::from_micros(i * 10);
        assert_eq!(f.poll_send(now, &mut link, 64, 1514), Grant::Send(64));
        f.on_ack(
            now,
            &mut link,
            ack(64 * 1514, Some(Duration::from_micros(50)), false),
        );
    }
    assert_eq!(link.pacing_rate(), None);
    assert_eq!(link.stats().waits, 0);
    assert_eq!(f.stats().waits, 0);
}

#[test]
fn one_flows_losses_do_not_bind_the_link_but_persistent_ones_bind_the_flow() {
    let t0 = epoch();
    let mut link = LinkCc::new(LinkConfig::default());
    let mut f = FlowCc::new();
    let mut g = FlowCc::new();
    let rtt = Duration::from_micros(200);
    let mut now = t0;
    // Another flow is active, clean.
    g.on_ack(now, &mut link, ack(6056, Some(rtt), false));
    // One random loss: nothing changes.
    f.on_ack(now, &mut link, ack(6056, Some(rtt), false));
    f.on_ack(now, &mut link, ack(3028, Some(rtt), true));
    assert_eq!(f.own_rate(), None);
    assert!(!link.is_bound());
    // Losses in most windows: the flow gets its own rate, the link stays open.
    for _ in 0..4 {
        now += rtt;
        g.on_ack(now, &mut link, ack(6056, Some(rtt), false));
        f.on_ack(now, &mut link, ack(3028, Some(rtt), true));
    }
    assert!(!link.is_bound());
    let own = f.own_rate().expect("own rate after persistent loss");
    assert!(own.bytes_per_sec() < 30_280_000, "{own}");
    assert_eq!(f.stats().own_cuts, 1);
    // Clean windows lift it again.
    for _ in 0..40 {
        now += rtt;
        f.on_ack(now, &mut link, ack(6056, Some(rtt), false));
    }
    assert_eq!(f.own_rate(), None);
}

#[test]
fn losses_of_two_flows_bind_the_link_at_what_it_delivered() {
    let t0 = epoch();
    let mut link = LinkCc::new(LinkConfig::default());
    let mut flows: Vec<FlowCc> = (0..4).map(|_| FlowCc::new()).collect();
    let rtt = Duration::from_micros(500);
    // 50 MB/s delivered for 10 ms.
    for k in 0..100u64 {
        let now = t0 + Duration::from_micros(100 * k);
        let f = &mut flows[(k % 4) as usize];
        f.on_ack(now, &mut link, ack(5_000, Some(rtt), false));
    }
    let now = t0 + Duration::from_millis(10);
    flows[0].on_ack(now, &mut link, ack(1514, Some(rtt), true));
    assert!(!link.is_bound());
    flows[1].on_ack(now, &mut link, ack(1514, Some(rtt), true));
    let est = link.estimate().expect("bound");
    let mbs = est.bytes_per_sec() as f64 / 1e6;
    assert!((40.0..=52.0).contains(&mbs), "{est}");
    assert_eq!(link.stats().congestion_events, 1);
    assert!(link.window_hint(now, 1514).is_some());
    // Now the pacer binds: a burst of asks is spread out.
    let mut waited = 0;
    for f in flows.iter_mut() {
        if let Grant::Wait(t) = f.poll_send(now, &mut link, 4, 1514) {
            assert!(t > now);
            waited += 1;
        }
    }
    assert!(waited >= 2, "{waited}");
}

#[test]
fn an_operator_cap_binds_an_open_link() {
    let t0 = epoch();
    let cap = Rate::from_bits_per_sec(100_000_000);
    let mut link = LinkCc::new(LinkConfig {
        cap: Some(cap),
        ..LinkConfig::default()
    });
    assert_eq!(link.pacing_rate(), Some(cap));
    let mut f = FlowCc::new();
    // Send 1 MB as fast as the grants allow: it takes 80 ms at 100 Mbit/s.
    let mut now = t0;
    let mut sent = 0u64;
    while sent < 1_000_000 {
        match f.poll_send(now, &mut link, 16, 1000) {
            Grant::Send(n) => sent += u64::from(n) * 1000,
            Grant::Wait(t) => now = t,
        }
    }
    let took = now - t0;
    assert!(
        took >= Duration::from_millis(78) && took <= Duration::from_millis(81),
        "{took:?}"
    );
}

#[test]
fn a_ceiling_paces_one_flow_alone() {
    let t0 = epoch();
    let mut link = LinkCc::new(LinkConfig::default());
    let mut f = FlowCc::with_ceiling(Rate::from_bytes_per_sec(10_000_000));
    let mut now = t0;
    let mut sent = 0u64;
    while sent < 1_000_000 {
        match f.poll_send(now, &mut link, 64, 1000) {
            Grant::Send(n) => sent += u64::from(n) * 1000,
            Grant::Wait(t) => now = t,
        }
    }
    let took = now - t0;
    assert!(
        took >= Duration::from_millis(98) && took <= Duration::from_millis(100),
        "{took:?}"
    );
    assert!(!link.is_bound());
}

#[test]
fn the_oack_window_shares_what_the_path_held_among_its_flows() {
    let t0 = epoch();
    let mut link = LinkCc::new(LinkConfig::default());
    let mut flows: Vec<FlowCc> = (0..4).map(|_| FlowCc::new()).collect();
    let rtt = Duration::from_micros(500);
    // An open link (never overflowed) grants what is asked.
    assert_eq!(link.oack_window_bytes(t0), None);
    for k in 0..100u64 {
        let now = t0 + Duration::from_micros(100 * k);
        let f = &mut flows[(k % 4) as usize];
        f.on_ack(now, &mut link, ack(5_000, Some(rtt), false));
    }
    assert_eq!(link.oack_window_bytes(t0 + Duration::from_millis(10)), None);
    let now = t0 + Duration::from_millis(10);
    flows[0].on_ack(now, &mut link, ack(1514, Some(rtt), true));
    flows[1].on_ack(now, &mut link, ack(1514, Some(rtt), true));
    assert_eq!(link.stats().congestion_events, 1);
    // The path's overflow is shared by the 4 active flows and the new one.
    let held = u64::from(link.window_hint(now, 1).expect("overflowed"));
    let share = link.oack_window_bytes(now).expect("overflowed");
    assert_eq!(link.active_flows(), 4);
    assert_eq!(share, held / 5);
    assert!(share > 0);
    // Forgotten after HINT_TTL.
    let later = now + HINT_TTL + Duration::from_millis(1);
    assert_eq!(link.oack_window_bytes(later), None);
}
