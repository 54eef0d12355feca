//! A multicast session and a unicast transfer sharing one capped uplink controller, on virtual
//! time (issue 11: multicast inside the server-wide uplink controller).

use super::*;
use crate::proto::cc::{wire_bytes, LinkCc, LinkConfig, Rate};
use crate::proto::tftp::options::{negotiate, Limits, RequestOptions};
use crate::proto::tftp::packet::{emit_ack, OptionList};
use crate::proto::tftp::transfer::{Transfer, TransferConfig};

const BLK: u64 = 1428;
/// One-way delay to every receiver.
const DELAY: Duration = Duration::from_micros(200);

fn unicast(len: u64, now: Instant) -> Transfer {
    let opts = format!("blksize\0{BLK}\0windowsize\016\0tsize\00\0");
    let o = RequestOptions::parse(&OptionList::new_checked(opts.as_bytes()).unwrap());
    Transfer::new(
        TransferConfig {
            peer: SocketAddr::from(([10, 0, 0, 2], 2000)),
            negotiated: negotiate(&o, &Limits::default(), None, len),
            content_len: len,
            max_timeout: Duration::from_secs(1),
            min_rto: Duration::from_millis(2),
            retries: 4,
        },
        now,
    )
}

fn session(len: u64, now: Instant) -> Session {
    let cfg = SessionConfig {
        window: WindowSize::new(16).unwrap(),
        ..SessionConfig::new(
            Protocol::Rfc2090,
            BlockSize::new(BLK as u16).unwrap(),
            len,
            "239.255.1.1:3001".parse().unwrap(),
        )
    };
    Session::new(cfg, now)
}

fn ack(n: u64) -> [u8; 4] {
    let mut b = [0u8; 4];
    emit_ack(&mut b, BlockNum::from_index(n));
    b
}

/// Wire bytes each sent in `[from, until)`: the session (its master ACKs its highest block
/// `DELAY` x 2 after each run) and, when `with_unicast`, a transfer of window 16 (its client
/// ACKs each full window and the OACK), both paced by `link`.
fn run(link: &mut LinkCc, with_unicast: bool, from: Duration, until: Duration) -> (u64, u64) {
    let t0 = crate::sim_origin();
    let len = BLK * 60_000;
    let master = SocketAddr::from(([10, 0, 0, 3], 3000));
    let mut s = session(len, t0);
    s.join(t0, master).unwrap();
    let mut t = with_unicast.then(|| unicast(len, t0));
    // ACKs in flight: (when, to the session?, block).
    let mut acks: Vec<(Instant, bool, u64)> = vec![(t0 + DELAY * 2, true, 0)];
    let (mut expected, mut since) = (1u64, 0u64);
    let (mut mc, mut uc) = (0u64, 0u64);
    let wire = wire_bytes(4 + BLK as usize, false);
    let mut buf = [0u8; 600];
    let mut now = t0;
    let step = Duration::from_micros(20);
    while now < t0 + until {
        acks.sort_by_key(|a| a.0);
        while acks.first().is_some_and(|a| a.0 <= now) {
            let (_, to_session, n) = acks.remove(0);
            match (to_session, t.as_mut()) {
                (true, _) => s.handle_datagram(now, master, &ack(n)),
                (false, Some(t)) => t.handle_datagram(now, &ack(n)),
                (false, None) => {}
            }
        }
        if s.poll_timeout().is_some_and(|d| d <= now) {
            s.handle_timeout(now);
        }
        let counted = now >= t0 + from;
        while let Some(tx) = s.poll_transmit_paced(now, &mut buf, link) {
            if let Payload::Blocks { first, count } = tx.payload {
                mc += u64::from(count) * wire * u64::from(counted);
                acks.push((now + DELAY * 2, true, first + u64::from(count) - 1));
            }
        }
        if let Some(t) = t.as_mut() {
            if t.poll_timeout().is_some_and(|d| d <= now) {
                t.handle_timeout(now);
            }
            while let Some(tx) = t.poll_transmit_paced(now, &mut buf, link) {
                match tx.payload {
                    Payload::Datagram(_) if buf[1] == 6 => acks.push((now + DELAY * 2, false, 0)),
                    Payload::Blocks { first, count } => {
                        uc += u64::from(count) * wire * u64::from(counted);
                        for i in first..first + u64::from(count) {
                            if i == expected {
                                expected += 1;
                                since += 1;
                                if since == 16 {
                                    since = 0;
                                    acks.push((now + DELAY * 2, false, i));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        now += step;
    }
    (mc, uc)
}

#[test]
fn multicast_session_and_unicast_transfer_share_a_capped_link() {
    // 80 Mbit/s operator cap on the uplink (10 MB/s of wire bytes); the session's own ceiling
    // is none (`--multicast-rate 0`). Measured over 0.5-1.5 s of virtual time.
    let cap = Rate::from_bits_per_sec(80_000_000);
    let link = || {
        LinkCc::new(LinkConfig {
            cap: Some(cap),
            ..LinkConfig::default()
        })
    };
    let secs = 1.0;
    let (from, until) = (Duration::from_millis(500), Duration::from_millis(1500));
    // Alone, the session fills the cap and no more.
    let (mc, _) = run(&mut link(), false, from, until);
    let share = mc as f64 / secs / cap.bytes_per_sec() as f64;
    assert!(
        (0.85..=1.05).contains(&share),
        "session alone: {share:.2} of the cap"
    );
    // With a unicast transfer beside it, each gets about half, and together the cap.
    let (mc, uc) = run(&mut link(), true, from, until);
    let total = (mc + uc) as f64 / secs / cap.bytes_per_sec() as f64;
    let mc_share = mc as f64 / (mc + uc) as f64;
    assert!(
        (0.85..=1.05).contains(&total),
        "together: {total:.2} of the cap"
    );
    assert!(
        (0.35..=0.65).contains(&mc_share),
        "multicast {mc} and unicast {uc} wire bytes: not a fair share ({mc_share:.2})"
    );
}
