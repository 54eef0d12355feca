use super::*;

/// Sends `n` datagrams to `to` at start, counts what arrives.
struct Pinger {
    at: SocketAddr,
    to: SocketAddr,
    left: u32,
    got: Vec<(Instant, u32)>,
}

impl Node for Pinger {
    fn receives(&self, a: SocketAddr) -> bool {
        a == self.at
    }
    fn handle_datagram(&mut self, now: Instant, _: SocketAddr, _: SocketAddr, d: &[u8]) {
        self.got
            .push((now, u32::from_be_bytes(d[..4].try_into().unwrap())));
    }
    fn poll_transmit(
        &mut self,
        _: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, SocketAddr, usize)> {
        self.left = self.left.checked_sub(1)?;
        buf[..4].copy_from_slice(&self.left.to_be_bytes());
        Some((self.at, self.to, 4))
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _: Instant) {}
}

/// `a` sends `n` datagrams to `b`.
fn pair(n: u32) -> (Pinger, Pinger) {
    let pinger = |at, to, left| Pinger {
        at,
        to,
        left,
        got: Vec::new(),
    };
    (
        pinger(addr(1, 1), addr(2, 1), n),
        pinger(addr(2, 1), addr(1, 1), 0),
    )
}

fn ping(seed: u64, link: Link) -> (Vec<(Instant, u32)>, SimStats) {
    let t0 = crate::sim_origin();
    let (mut a, mut b) = pair(10_000);
    let mut net = Sim::new(t0, seed, link);
    assert_eq!(
        net.run(&mut [&mut a, &mut b], t0 + Duration::from_secs(1)),
        Ran::Quiet
    );
    (b.got, net.stats)
}

#[test]
fn the_link_is_seeded_and_does_what_it_says() {
    let link = Link::lan(0.1, 0.05, 0.05);
    let (got, st) = ping(7, link);
    assert_eq!(ping(7, link).0, got, "the same seed, the same run");
    assert_ne!(ping(8, link).0, got);
    assert_eq!(st.sent, 10_000);
    assert_eq!(st.delivered as usize, got.len());
    assert_eq!(st.delivered + st.lost, 10_000 + st.duplicated);
    assert!((800..1_200).contains(&st.lost), "{st:?}");
    assert!((350..650).contains(&st.duplicated), "{st:?}");
    // Delay: 100 µs, or 400 µs more for a reordered one.
    let t0 = crate::sim_origin();
    let late = got
        .iter()
        .filter(|(t, _)| *t - t0 > Duration::from_micros(100))
        .count();
    assert!(late > 0 && late < got.len() / 5);
    let order: Vec<u32> = got.iter().map(|g| g.1).collect();
    assert!(order.windows(2).any(|w| w[0] < w[1]), "some reordered");
    let (clean, st) = ping(7, Link::PERFECT);
    assert_eq!(clean.len(), 10_000);
    assert_eq!((st.lost, st.duplicated, st.reordered), (0, 0, 0));
}

#[test]
fn deterministic_drops_and_time_bounds() {
    let t0 = crate::sim_origin();
    let (mut a, mut b) = pair(5);
    let mut net = Sim::new(t0, 1, Link::lan(0.0, 0.0, 0.0));
    net.drop_next(b.at, 2);
    // Time stops at the bound while datagrams are still in flight.
    let bound = t0 + Duration::from_micros(50);
    assert_eq!(net.run(&mut [&mut a, &mut b], bound), Ran::Until);
    assert_eq!(net.now(), bound);
    assert_eq!(
        net.run(&mut [&mut a, &mut b], t0 + Duration::from_secs(1)),
        Ran::Quiet
    );
    let got: Vec<u32> = b.got.iter().map(|g| g.1).collect();
    assert_eq!(got, [2, 1, 0], "the first two dropped");
}
