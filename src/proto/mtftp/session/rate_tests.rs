use super::*;

fn ctl(rate: u64, floor: u64) -> (RateCtl, Instant) {
    let now = crate::sim_origin();
    let cfg = SessionConfig {
        rate,
        min_rate: floor,
        ..SessionConfig::new(
            Protocol::Rfc2090,
            BlockSize::DEFAULT,
            1 << 20,
            "239.255.1.1:3001".parse().unwrap(),
        )
    };
    (RateCtl::new(&cfg, now), now)
}

/// One period of 10 ms: ACKs of `bytes` in all, with round trips `rtt`, a loss if `lost`.
fn period(c: &mut RateCtl, now: &mut Instant, bytes: u64, rtt: Duration, lost: bool) -> bool {
    let srtt = Some(Duration::from_millis(10));
    if lost {
        c.on_loss();
    }
    let slow = c.on_ack(*now, bytes / 2, Some(rtt), srtt);
    *now += Duration::from_millis(10);
    slow | c.on_ack(*now, bytes / 2, Some(rtt), srtt)
}

#[test]
fn a_random_loss_now_and_then_keeps_the_rate() {
    let (mut c, mut now) = ctl(10_000_000, 1_000_000);
    c.on_ack(now, 0, None, None);
    for i in 0..200 {
        period(
            &mut c,
            &mut now,
            100_000,
            Duration::from_millis(1),
            i % 4 == 0,
        );
    }
    assert_eq!(c.rate(), 10_000_000);
}

#[test]
fn persistent_loss_steps_down_to_what_gets_through_then_creeps_back() {
    let (mut c, mut now) = ctl(10_000_000, 1_000_000);
    c.on_ack(now, 0, None, None);
    // The master gets 2 MB/s (20 kB per 10 ms) and loses in every period.
    for _ in 0..40 {
        period(&mut c, &mut now, 20_000, Duration::from_millis(1), true);
    }
    assert!(
        c.rate() < 2_000_000 && c.rate() >= 1_000_000,
        "{}",
        c.rate()
    );
    for _ in 0..200 {
        period(&mut c, &mut now, 20_000, Duration::from_millis(1), false);
    }
    assert_eq!(c.rate(), 10_000_000, "back to the ceiling");
}

#[test]
fn a_growing_queue_steps_down_without_loss() {
    let (mut c, mut now) = ctl(10_000_000, 1_000_000);
    c.on_ack(now, 0, Some(Duration::from_millis(1)), None);
    period(&mut c, &mut now, 100_000, Duration::from_millis(1), false);
    let before = c.rate();
    period(&mut c, &mut now, 100_000, Duration::from_millis(8), false);
    assert_eq!(c.rate(), before / 16 * 15);
}

#[test]
fn unpaced_without_a_ceiling_until_trouble() {
    let (mut c, mut now) = ctl(0, 1_000_000);
    assert_eq!(c.rate(), 0);
    c.on_timeout();
    assert!(c.rate() > 0, "paced after a timeout");
    c.on_ack(now, 0, None, None);
    for _ in 0..400 {
        period(&mut c, &mut now, 100_000, Duration::from_millis(1), false);
    }
    assert_eq!(c.rate(), 0, "unpaced again");
}

#[test]
fn a_master_that_cannot_keep_the_floor_strikes_out_and_a_new_master_starts_clean() {
    let (mut c, mut now) = ctl(10_000_000, 5_000_000);
    c.on_ack(now, 0, None, None);
    let mut slow = false;
    for _ in 0..60 {
        slow |= period(&mut c, &mut now, 5_000, Duration::from_millis(1), true);
    }
    assert_eq!(c.rate(), 5_000_000, "held at the floor");
    assert!(slow && c.is_slow());
    c.new_master();
    assert!(!c.is_slow());
}
