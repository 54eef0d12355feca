use super::*;

/// A controller and its virtual clock.
struct T {
    c: RateCtl,
    now: Instant,
    index: u64,
}

fn ctl(rate: u64, floor: u64) -> T {
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
    let mut c = RateCtl::new(&cfg, now);
    c.on_ack(now, 0, None);
    T { c, now, index: 0 }
}

impl T {
    /// One period: 10 blocks timed one after the other with round trip `rtt`, 1 ms apart, each
    /// after a loss if `lost`.
    /// True if the master came out slow.
    fn period(&mut self, rtt: Duration, lost: bool) -> bool {
        let srtt = Some(Duration::from_millis(10));
        let mut slow = false;
        for _ in 0..10 {
            if lost {
                self.c.on_loss(self.index + 1);
            }
            self.index += 1;
            self.c.on_send(self.now, self.index);
            self.now += rtt;
            slow |= self.c.on_ack(self.now, self.index, srtt);
            self.now += Duration::from_millis(1);
        }
        slow
    }
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_random_loss_now_and_then_keeps_the_rate() {
    let mut t = ctl(10_000_000, 1_000_000);
    for i in 0..200 {
        t.period(MS / 2, i % 4 == 0);
    }
    assert_eq!(t.c.rate(), 10_000_000);
}

#[test]
fn persistent_loss_steps_down_then_the_rate_creeps_back() {
    let mut t = ctl(10_000_000, 1_000_000);
    for _ in 0..40 {
        t.period(MS / 2, true);
    }
    let low = t.c.rate();
    assert!((1_000_000..7_000_000).contains(&low), "{low}");
    for _ in 0..200 {
        t.period(MS / 2, false);
    }
    assert_eq!(t.c.rate(), 10_000_000, "back to the ceiling");
}

#[test]
fn a_standing_queue_steps_down_without_loss() {
    let mut t = ctl(10_000_000, 1_000_000);
    t.period(MS / 2, false);
    let before = t.c.rate();
    t.period(MS * 8, false);
    assert!(t.c.rate() < before, "{} {before}", t.c.rate());
}

#[test]
fn a_loss_with_a_queue_is_the_sessions_own_cut_at_once_and_the_target_learned() {
    let mut t = ctl(10_000_000, 1_000_000);
    t.period(MS / 2, false);
    let before = t.c.rate();
    // 1 ms of queue, then the loss: one period is enough.
    t.period(MS / 2 + MS, true);
    assert!(t.c.rate() <= before / 8 * 7, "{} {before}", t.c.rate());
    assert_eq!(t.c.target, MS / 2, "half the queue seen");
}

#[test]
fn unpaced_without_a_ceiling_until_trouble() {
    let mut t = ctl(0, 1_000_000);
    assert_eq!(t.c.rate(), 0);
    for _ in 0..10 {
        t.period(MS / 2, true);
    }
    assert!(t.c.rate() > 0, "paced after persistent loss");
    for _ in 0..400 {
        t.period(MS / 2, false);
    }
    assert_eq!(t.c.rate(), 0, "unpaced again");
}

#[test]
fn a_master_that_cannot_keep_the_floor_strikes_out_and_a_new_master_starts_clean() {
    let mut t = ctl(10_000_000, 5_000_000);
    let mut slow = false;
    for _ in 0..60 {
        slow |= t.period(MS / 2, true);
    }
    assert!(
        t.c.rate() <= 5_000_000 / 16 * 17,
        "near the floor: {}",
        t.c.rate()
    );
    assert!(slow && t.c.is_slow());
    t.c.new_master();
    assert!(!t.c.is_slow());
}
