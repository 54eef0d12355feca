//! The session's rate against a bottleneck: a link of fixed rate with a small tail-drop queue
//! between the session and its members, on virtual time.

use super::*;
use crate::proto::tftp::packet::emit_ack;
use crate::proto::timer::EventQueue;

/// Marks an event as an ACK.
const ACK: u64 = 1 << 63;

/// What the bottleneck and the members did.
#[derive(Debug, Default)]
struct Outcome {
    /// Blocks dropped by the queue (self-inflicted loss), over the whole run and in its second
    /// half.
    drops: u64,
    drops_late: u64,
    /// Blocks through the link in the second half, and that half's length.
    through_late: u64,
    late: Duration,
    done: bool,
    rate: u64,
}

/// One RFC 2090 session to `members` receivers (the first the master, acking its highest
/// contiguous block after every block, as atftp does), through a link of `link` payload bytes
/// per second with room for `queue` blocks, `delay` each way.
fn through_bottleneck(
    ceiling: u64,
    window: u16,
    link: u64,
    queue: usize,
    delay: Duration,
    blocks: u64,
) -> Outcome {
    let blksize = 1428u64;
    let t0 = crate::sim_origin();
    let cfg = SessionConfig {
        window: WindowSize::new(window).unwrap(),
        rate: ceiling,
        min_rate: 1_000_000,
        timeout: Duration::from_millis(200),
        retries: 5,
        ..SessionConfig::new(
            Protocol::Rfc2090,
            BlockSize::new(blksize as u16).unwrap(),
            blksize * blocks - 1,
            "239.255.1.1:3001".parse().unwrap(),
        )
    };
    let master: SocketAddr = "10.0.0.2:5000".parse().unwrap();
    let mut s = Session::new(cfg, t0);
    s.join(t0, master).unwrap();
    let total = s.total_blocks();
    let mut have = vec![false; total as usize + 1];
    let mut contiguous = 0u64;
    // Events: (when, what): a block reaching the member (its index), or an ACK reaching the
    // session (ACK | the index it acknowledges; the OACK is answered with 0).
    let mut events: EventQueue<u64> = EventQueue::new();
    let mut queue_at: VecDeque<Instant> = VecDeque::new(); // departure instants of queued blocks
    let mut link_free = t0;
    let per_block = Duration::from_secs_f64(blksize as f64 / link as f64);
    let mut out = Outcome::default();
    let mut buf = [0u8; 1500];
    let mut now = t0;
    let half = t0 + Duration::from_secs(1);
    let end = t0 + Duration::from_secs(2);
    while now < end && !s.is_over() {
        while let Some(t) = s.poll_transmit(now, &mut buf) {
            match t.payload {
                Payload::Datagram(_) => {
                    // The OACK: the master ACKs 0 (its first gap) a round trip later.
                    events.push(now + 2 * delay, ACK);
                }
                Payload::Blocks { first, count } => {
                    for i in first..first + count as u64 {
                        while queue_at.front().is_some_and(|&d| d <= now) {
                            queue_at.pop_front();
                        }
                        if queue_at.len() >= queue {
                            out.drops += 1;
                            out.drops_late += u64::from(now >= half);
                            continue;
                        }
                        link_free = link_free.max(now) + per_block;
                        queue_at.push_back(link_free);
                        events.push(link_free + delay, i);
                        out.through_late += u64::from(link_free >= half);
                    }
                }
            }
        }
        let next = [s.poll_timeout(), events.next_at()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { break };
        now = next.max(now);
        s.handle_timeout(now);
        while let Some((_, what)) = events.pop_due(now) {
            if what & ACK != 0 {
                let mut ack = [0u8; 4];
                let n = emit_ack(&mut ack, BlockNum::from_index(what & !ACK));
                s.handle_datagram(now, master, &ack[..n]);
                continue;
            }
            let i = what as usize;
            if i < have.len() && !have[i] {
                have[i] = true;
                while (contiguous as usize + 1) < have.len() && have[contiguous as usize + 1] {
                    contiguous += 1;
                }
            }
            // The ACK travels back (no queue that way).
            events.push(now + delay, ACK | contiguous);
        }
    }
    out.late = end.saturating_duration_since(half);
    out.done = contiguous == total || s.is_over();
    out.rate = s.rate();
    out
}

/// A session of `window` through 100 Mbit/s (12.5 MB/s of payload) with a queue of `queue`
/// blocks, 100 µs each way, its ceiling 8x the link; with the share of the link it used in the
/// second half.
fn through_100_mbit(window: u16, queue: usize) -> (Outcome, f64) {
    let link = 12_500_000;
    let o = through_bottleneck(
        100_000_000,
        window,
        link,
        queue,
        Duration::from_micros(100),
        1_000_000,
    );
    let used = o.through_late as f64 * 1428.0 / o.late.as_secs_f64() / link as f64;
    eprintln!("{:.1}% of the link: {o:?}", used * 100.0);
    (o, used)
}

#[test]
fn the_session_converges_under_a_bottleneck_without_loss_of_its_own() {
    // 100 Mbit/s (12.5 MB/s of payload), a queue of 24 blocks, 100 µs each way; the ceiling is
    // 8x the link. The window (16) fits the queue: the master's ACKs clock the stream at the
    // link's rate, and the rate must not fall from what the link carries.
    let (o, used) = through_100_mbit(16, 24);
    assert!(used >= 0.9, "{:.0}% of the link: {o:?}", used * 100.0);
    assert_eq!(o.drops, 0, "{o:?}");
}

/// Where it falls short (docs/benchmarks.md): a window (64) four times the queue (16). The
/// master's ACKs keep 64 blocks in flight, so the queue stays full from the first window: the
/// shortest round trip ever seen already has the queue in it and the delay signal is blind;
/// only persistent loss steps the rate down, and the stream runs ahead of the master's first
/// gap (each ACK frees a block of credit). Measured, not asserted beyond completing.
#[test]
fn a_window_larger_than_the_queue_still_completes() {
    let (o, _) = through_100_mbit(64, 16);
    assert!(o.through_late > 0);
}
