use super::*;
use crate::proto::tftp::client::{ClientConfig, Event};
use crate::proto::tftp::options::{negotiate, Limits, RequestOptions};
use crate::proto::tftp::options::{BlockSize, WindowSize};
use crate::proto::tftp::packet::{emit_ack, OptionList};
use proptest::prelude::*;

fn cfg(opts: &[u8], len: u64) -> TransferConfig {
    let o = RequestOptions::parse(&OptionList::new_checked(opts).unwrap());
    TransferConfig {
        peer: "10.0.0.2:2000".parse().unwrap(),
        negotiated: negotiate(&o, &Limits::default(), None, len),
        content_len: len,
        max_timeout: Duration::from_secs(3),
        min_rto: Duration::from_millis(2),
        retries: 6,
    }
}

fn ack(t: &mut Transfer, b: u16, now: Instant) {
    let mut buf = [0u8; 4];
    emit_ack(&mut buf, BlockNum(b));
    t.handle_datagram(now, &buf);
}

/// Every transmit at `now` (all to the client).
fn drain(t: &mut Transfer, now: Instant) -> Vec<Payload> {
    let mut buf = [0u8; 512];
    let peer = t.peer();
    std::iter::from_fn(|| t.poll_transmit(now, &mut buf))
        .inspect(|x| assert_eq!(x.dest, peer))
        .map(|x| x.payload)
        .collect()
}

#[test]
fn lockstep_rfc1350_with_final_empty_block() {
    let now = crate::sim_origin();
    let mut t = Transfer::new(cfg(b"", 1024), now);
    assert_eq!(t.total_blocks(), 3);
    assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 1, count: 1 }]);
    ack(&mut t, 1, now);
    assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 2, count: 1 }]);
    ack(&mut t, 2, now);
    assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 3, count: 1 }]);
    assert_eq!(t.block_range(3), (1024, 0));
    ack(&mut t, 3, now);
    assert_eq!(t.outcome(), Some(Outcome::Completed));
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn duplicate_ack_never_retransmits() {
    let now = crate::sim_origin();
    let mut t = Transfer::new(cfg(b"", 5000), now);
    drain(&mut t, now);
    ack(&mut t, 1, now);
    assert_eq!(drain(&mut t, now).len(), 1);
    ack(&mut t, 1, now);
    ack(&mut t, 1, now);
    assert!(drain(&mut t, now).is_empty());
    assert_eq!(t.stats().blocks_sent, 2);
}

#[test]
fn oack_then_windows_and_partial_ack_resumes() {
    let now = crate::sim_origin();
    let mut t = Transfer::new(
        cfg(
            b"blksize\x001000\x00windowsize\x004\x00tsize\x000\x00",
            10_000,
        ),
        now,
    );
    let mut buf = [0u8; 512];
    let Some(Payload::Datagram(n)) = t.poll_transmit(now, &mut buf).map(|x| x.payload) else {
        panic!()
    };
    assert_eq!(
        &buf[..n],
        b"\x00\x06blksize\x001000\x00tsize\x0010000\x00windowsize\x004\x00"
    );
    ack(&mut t, 0, now);
    assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 1, count: 4 }]);
    // Block 3 lost: the client ACKs 2, the server resumes at 3 at once.
    ack(&mut t, 2, now);
    assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 3, count: 4 }]);
    assert_eq!(t.stats().blocks_resent, 2);
    ack(&mut t, 6, now);
    assert_eq!(drain(&mut t, now), [Payload::Blocks { first: 7, count: 4 }]);
    ack(&mut t, 10, now);
    assert_eq!(
        drain(&mut t, now),
        [Payload::Blocks {
            first: 11,
            count: 1
        }]
    );
    assert_eq!(t.block_range(11), (10_000, 0));
    ack(&mut t, 11, now);
    assert_eq!(t.outcome(), Some(Outcome::Completed));
}

#[test]
fn timeout_resends_from_after_last_ack_then_gives_up() {
    let t0 = crate::sim_origin();
    let mut t = Transfer::new(cfg(b"windowsize\x008\x00", 100_000), t0);
    drain(&mut t, t0); // OACK
    ack(&mut t, 0, t0 + Duration::from_millis(1));
    drain(&mut t, t0);
    ack(&mut t, 8, t0 + Duration::from_millis(2));
    drain(&mut t, t0);
    let d = t.poll_timeout().unwrap();
    // Retransmit timer adapted to the ~1 ms round trip: a few ms, not seconds.
    assert!(d - t0 < Duration::from_millis(50), "{:?}", d - t0);
    t.handle_timeout(d);
    // First expiry: a tail-loss probe (the window's last block); the next: the whole window.
    assert_eq!(
        drain(&mut t, d),
        [Payload::Blocks {
            first: 16,
            count: 1
        }]
    );
    let d = t.poll_timeout().unwrap();
    t.handle_timeout(d);
    assert_eq!(drain(&mut t, d), [Payload::Blocks { first: 9, count: 8 }]);
    let mut now = d;
    while let Some(d) = t.poll_timeout() {
        now = d;
        t.handle_timeout(now);
        drain(&mut t, now);
    }
    assert_eq!(t.outcome(), Some(Outcome::TimedOut));
    // Gave up only after retries x ceiling of silence.
    assert!(now - t0 >= Duration::from_secs(18));
}

#[test]
fn duplicate_request_resends_oack_within_the_pre_ack_budget_only() {
    let t0 = crate::sim_origin();
    let mut t = Transfer::new(cfg(b"tsize\x000\x00", 10), t0);
    assert_eq!(drain(&mut t, t0).len(), 1);
    t.handle_duplicate_request(t0);
    assert!(drain(&mut t, t0).is_empty(), "just sent: nothing");
    // Half the timeout (1 s) later, a repeated request is an early timer expiry.
    let later = t0 + Duration::from_millis(500);
    t.handle_duplicate_request(later);
    assert!(matches!(drain(&mut t, later)[..], [Payload::Datagram(_)]));
    // The timer backed off (2 s): a repeat 0.5 s later is too early.
    let later = later + Duration::from_millis(500);
    t.handle_duplicate_request(later);
    assert!(drain(&mut t, later).is_empty());
    let later = later + Duration::from_millis(600);
    t.handle_duplicate_request(later);
    assert!(matches!(drain(&mut t, later)[..], [Payload::Datagram(_)]));
    // Budget spent: repeats draw nothing, and the timer drops the transfer quietly.
    for i in 0..100 {
        t.handle_duplicate_request(later + Duration::from_secs(i));
        assert!(drain(&mut t, later + Duration::from_secs(i)).is_empty());
    }
    let d = t.poll_timeout().unwrap();
    t.handle_timeout(d);
    assert!(
        drain(&mut t, d).is_empty(),
        "no ERROR to an unverified address"
    );
    assert_eq!(t.outcome(), Some(Outcome::Unanswered));
}

#[test]
fn duplicate_request_after_the_first_ack_draws_nothing() {
    let t0 = crate::sim_origin();
    let mut t = Transfer::new(cfg(b"tsize\x000\x00", 10), t0);
    drain(&mut t, t0);
    ack(&mut t, 0, t0);
    assert_eq!(drain(&mut t, t0), [Payload::Blocks { first: 1, count: 1 }]);
    assert!(t.is_verified());
    t.handle_duplicate_request(t0 + Duration::from_secs(5));
    assert!(drain(&mut t, t0).is_empty());
}

/// A client that never answers: the first response goes out 1 + PRE_ACK_RESENDS times with
/// backoff, then the transfer ends without an ERROR, with or without an OACK, whatever the
/// timeout and retry settings.
#[test]
fn unanswered_first_response_is_bounded_and_quiet() {
    for (opts, timeout) in [
        (&b""[..], 3u64),
        (b"blksize\x001468\x00windowsize\x0064\x00tsize\x000\x00", 3),
        (b"", 1),
        (b"timeout\x00255\x00", 255),
    ] {
        let t0 = crate::sim_origin();
        let mut c = cfg(opts, 1 << 20);
        c.max_timeout = Duration::from_secs(timeout);
        c.retries = 1000;
        let mut t = Transfer::new(c, t0);
        let mut sends = drain(&mut t, t0).len();
        let mut last = t0;
        let mut gaps = Vec::new();
        while let Some(d) = t.poll_timeout() {
            t.handle_timeout(d);
            let tx = drain(&mut t, d);
            for x in &tx {
                match x {
                    Payload::Datagram(_) => {}
                    Payload::Blocks { first, count } => assert_eq!((*first, *count), (1, 1)),
                }
            }
            if !tx.is_empty() {
                gaps.push(d - last);
                last = d;
            }
            sends += tx.len();
        }
        assert_eq!(sends, 1 + PRE_ACK_RESENDS as usize, "{opts:?}");
        assert_eq!(t.outcome(), Some(Outcome::Unanswered));
        // Backoff: each wait at least as long as the one before.
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
        assert!(last - t0 <= Duration::from_secs(1 + 2 + 4));
    }
}

#[test]
fn probe_and_client_error() {
    let now = crate::sim_origin();
    let mut t = Transfer::new(cfg(b"tsize\x000\x00", 10), now);
    drain(&mut t, now);
    t.handle_datagram(now, b"\x00\x05\x00\x00TFTP Aborted\x00");
    assert_eq!(
        t.outcome(),
        Some(Outcome::ProbeEnded(ErrorCode::NotDefined))
    );
    assert!(drain(&mut t, now).is_empty());
}

#[test]
fn abort_sends_error() {
    let now = crate::sim_origin();
    let mut t = Transfer::new(cfg(b"", 10_000), now);
    drain(&mut t, now);
    t.abort(ErrorCode::NotDefined, "file changed");
    let mut buf = [0u8; 512];
    let Some(Payload::Datagram(n)) = t.poll_transmit(now, &mut buf).map(|x| x.payload) else {
        panic!()
    };
    assert_eq!(&buf[..n], b"\x00\x05\x00\x00file changed\x00");
    assert_eq!(t.outcome(), Some(Outcome::Aborted(ErrorCode::NotDefined)));
}

#[test]
fn rollover_past_65535() {
    // blksize 8: 65536 full blocks + a final empty one.
    let len = 65536 * 8;
    let now = crate::sim_origin();
    let mut t = Transfer::new(cfg(b"blksize\x008\x00windowsize\x0064\x00", len), now);
    drain(&mut t, now);
    ack(&mut t, 0, now);
    let mut last = 0u64;
    loop {
        let tx = drain(&mut t, now);
        let [Payload::Blocks { first, count }] = tx[..] else {
            break;
        };
        assert_eq!(first, last + 1);
        last = first + count as u64 - 1;
        ack(&mut t, BlockNum::from_index(last).0, now);
    }
    assert_eq!(last, 65537);
    assert_eq!(t.outcome(), Some(Outcome::Completed));
}

/// Drives a transfer of unknown length the way the worker does for netascii: each run of blocks
/// is "encoded" from a content of `len` bytes, and the first short block found is reported
/// with `set_last_block`. Returns the indices of the blocks sent, in order.
fn run_unknown_length(len: u64, opts: &[u8]) -> (Transfer, Vec<u64>) {
    let now = crate::sim_origin();
    let mut c = cfg(opts, 0);
    c.content_len = LENGTH_UNKNOWN;
    let mut t = Transfer::new(c, now);
    let blksize = t.negotiated().blksize.bytes() as u64;
    let mut sent = Vec::new();
    let mut buf = [0u8; 512];
    for _ in 0..1_000_000 {
        let Some(Transmit { payload: tx, .. }) = t.poll_transmit(now, &mut buf) else {
            break;
        };
        match tx {
            Payload::Datagram(_) => ack(&mut t, 0, now),
            Payload::Blocks { first, count } => {
                let mut last = first + count as u64 - 1;
                for i in first..=last {
                    let block_len = len.saturating_sub((i - 1) * blksize).min(blksize);
                    if block_len < blksize {
                        t.set_last_block(i, len);
                        last = i;
                        break;
                    }
                }
                sent.extend(first..=last);
                ack(&mut t, BlockNum::from_index(last).0, now);
            }
        }
    }
    (t, sent)
}

#[test]
fn unknown_length_learns_its_last_block() {
    // 20 bytes in blocks of 8, window 4: blocks 1-3 go out, the run's 4th is never sent.
    let (t, sent) = run_unknown_length(20, b"blksize\x008\x00windowsize\x004\x00");
    assert_eq!(sent, [1, 2, 3]);
    assert_eq!(t.outcome(), Some(Outcome::Completed));
    assert_eq!(t.total_blocks(), 3);
    assert_eq!(t.stats().blocks_sent, 3);
    assert_eq!(t.stats().blocks_resent, 0);
    assert_eq!(t.stats().bytes_acked, 20);
    // An exact multiple of blksize ends with an empty block, found in the next run.
    let (t, sent) = run_unknown_length(16, b"blksize\x008\x00windowsize\x002\x00");
    assert_eq!(sent, [1, 2, 3]);
    assert_eq!(t.outcome(), Some(Outcome::Completed));
    assert_eq!(t.stats().bytes_acked, 16);
    // The empty file: one empty block, lockstep, no OACK.
    let (t, sent) = run_unknown_length(0, b"");
    assert_eq!(sent, [1]);
    assert_eq!(t.outcome(), Some(Outcome::Completed));
    assert_eq!(t.stats().bytes_acked, 0);
}

#[test]
fn unknown_length_rolls_over_past_65535() {
    let len = 65536 * 8 + 3;
    let (t, sent) = run_unknown_length(len, b"blksize\x008\x00windowsize\x0064\x00");
    assert_eq!(sent.len(), 65537);
    assert_eq!(sent.last(), Some(&65537));
    assert_eq!(t.outcome(), Some(Outcome::Completed));
    assert_eq!(t.stats().bytes_acked, len);
}

#[test]
fn last_block_is_resent_alone_after_a_timeout() {
    let t0 = crate::sim_origin();
    let mut c = cfg(b"blksize\x008\x00windowsize\x008\x00", 0);
    c.content_len = LENGTH_UNKNOWN;
    let mut t = Transfer::new(c, t0);
    drain(&mut t, t0); // OACK
    ack(&mut t, 0, t0);
    assert_eq!(drain(&mut t, t0), [Payload::Blocks { first: 1, count: 8 }]);
    // The encoder ends at block 5 (36 bytes); a wrong length is ignored.
    t.set_last_block(5, 100);
    assert_eq!(t.total_blocks(), LENGTH_UNKNOWN);
    t.set_last_block(5, 36);
    assert_eq!(t.total_blocks(), 5);
    assert_eq!(t.stats().blocks_sent, 5);
    // Once known, the length is fixed.
    t.set_last_block(4, 30);
    assert_eq!(t.total_blocks(), 5);
    ack(&mut t, 3, t0);
    assert_eq!(drain(&mut t, t0), [Payload::Blocks { first: 4, count: 2 }]);
    let d = t.poll_timeout().unwrap();
    t.handle_timeout(d);
    assert_eq!(drain(&mut t, d), [Payload::Blocks { first: 5, count: 1 }]);
    ack(&mut t, 5, d);
    assert_eq!(t.outcome(), Some(Outcome::Completed));
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A window-4 download of 100 blocks on a 1 ms path, up to the probe of block 8 (the ACK of
/// window 5-8 is late). Returns the transfer, the probe's instant and the window's send instant.
fn probed_transfer(t0: Instant) -> (Transfer, Instant, Instant) {
    let mut t = Transfer::new(cfg(b"windowsize\x004\x00", 51_000), t0);
    drain(&mut t, t0); // OACK
    ack(&mut t, 0, t0 + ms(1));
    drain(&mut t, t0 + ms(1));
    ack(&mut t, 4, t0 + ms(2));
    let sent = t0 + ms(2);
    assert_eq!(
        drain(&mut t, sent),
        [Payload::Blocks { first: 5, count: 4 }]
    );
    let d = t.poll_timeout().unwrap();
    assert!(d - sent < ms(10), "{:?}", d - sent);
    t.handle_timeout(d);
    assert_eq!(drain(&mut t, d), [Payload::Blocks { first: 8, count: 1 }]);
    (t, d, sent)
}

#[test]
fn a_spurious_probe_is_detected_and_stretches_the_timers() {
    // The client had block 8 all along (its ACK was 30 ms late: a CPU-starved client or
    // server): the late ACK, then the client's re-ACK of the probe's duplicate.
    let t0 = crate::sim_origin();
    let (mut t, d, sent) = probed_transfer(t0);
    let pto_before = d - sent;
    let late = sent + ms(30);
    ack(&mut t, 8, late);
    assert_eq!(
        drain(&mut t, late),
        [Payload::Blocks { first: 9, count: 4 }]
    );
    ack(&mut t, 8, late); // re-ACK of the duplicate
    assert!(
        drain(&mut t, late).is_empty(),
        "a duplicate ACK draws no data"
    );
    assert_eq!(
        (t.stats().probes_spurious, t.stats().probes_genuine),
        (1, 0)
    );
    // The timers now cover the late round trip, with a margin: the next windows are not probed
    // when the client is that slow again.
    let now = late + ms(1);
    ack(&mut t, 12, now);
    drain(&mut t, now);
    let pto = t.poll_timeout().unwrap() - now;
    assert!(pto >= ms(30) * 5 / 4, "{pto:?}");
    assert!(pto > pto_before * 4, "{pto:?} vs {pto_before:?}");
    let timeouts = t.stats().timeouts;
    ack(&mut t, 16, now + ms(30));
    assert_eq!(t.stats().timeouts, timeouts);
}

#[test]
fn a_needed_probe_counts_as_genuine_and_keeps_the_timers() {
    // Block 8 was lost: the probe fills it, the client ACKs 8 once, then the next window.
    let t0 = crate::sim_origin();
    let (mut t, d, sent) = probed_transfer(t0);
    let pto_before = d - sent;
    let now = d + ms(1);
    ack(&mut t, 8, now);
    drain(&mut t, now);
    ack(&mut t, 12, now + ms(1));
    assert_eq!(
        (t.stats().probes_spurious, t.stats().probes_genuine),
        (0, 1)
    );
    drain(&mut t, now + ms(1));
    let pto = t.poll_timeout().unwrap() - (now + ms(1));
    assert!(pto <= pto_before * 2, "{pto:?} vs {pto_before:?}");
}

/// A windowed download of 10 blocks (window 4) whose client acknowledged up to block 8 and was
/// sent blocks 9 and 10: every block has gone out.
fn all_sent_transfer(t0: Instant) -> Transfer {
    let mut t = Transfer::new(cfg(b"windowsize\x004\x00", 5000), t0);
    assert_eq!(t.total_blocks(), 10);
    drain(&mut t, t0); // OACK
    ack(&mut t, 0, t0);
    assert_eq!(drain(&mut t, t0), [Payload::Blocks { first: 1, count: 4 }]);
    ack(&mut t, 4, t0);
    assert_eq!(drain(&mut t, t0), [Payload::Blocks { first: 5, count: 4 }]);
    assert!(!t.all_sent());
    ack(&mut t, 8, t0);
    assert_eq!(drain(&mut t, t0), [Payload::Blocks { first: 9, count: 2 }]);
    assert!(t.all_sent());
    t
}

#[test]
fn final_ack_lost_and_client_gone_ends_unconfirmed_not_failed() {
    // The client had every block, sent its final ACK (lost) and left: the server's probe and
    // resends meet silence. That is a completed download whose last ACK was not seen.
    let t0 = crate::sim_origin();
    let mut t = all_sent_transfer(t0);
    let mut sent = Vec::new();
    while let Some(d) = t.poll_timeout() {
        t.handle_timeout(d);
        sent.extend(drain(&mut t, d));
    }
    assert_eq!(t.outcome(), Some(Outcome::Unconfirmed));
    assert_eq!(
        t.poll_event(),
        Some(super::Event::Ended(Outcome::Unconfirmed))
    );
    assert_eq!(t.outcome().unwrap().as_str(), "completed-unconfirmed");
    // Only DATA went out (the probe, then resends of the tail), no ERROR to a client that left.
    assert!(!sent.is_empty());
    assert!(
        sent.iter()
            .all(|p| matches!(p, Payload::Blocks { first: 9 | 10, .. })),
        "{sent:?}"
    );
    assert!(t.stats().timeouts > 0);
    assert_eq!(t.stats().bytes_acked, 8 * 512);
}

#[test]
fn port_unreachable_after_the_tail_probe_ends_unconfirmed() {
    // The flake this fixes: the tail probe resent block 10 after the client had its file and
    // left; the ICMP port unreachable it drew was logged as a failed transfer.
    let t0 = crate::sim_origin();
    let mut t = all_sent_transfer(t0);
    let d = t.poll_timeout().unwrap();
    t.handle_timeout(d);
    assert_eq!(
        drain(&mut t, d),
        [Payload::Blocks {
            first: 10,
            count: 1
        }]
    );
    t.peer_unreachable("client port unreachable");
    assert!(drain(&mut t, d).is_empty(), "no ERROR to a gone client");
    assert_eq!(t.outcome(), Some(Outcome::Unconfirmed));
    assert_eq!(t.poll_timeout(), None);
    // Later news changes nothing.
    ack(&mut t, 10, d);
    t.abort(ErrorCode::NotDefined, "x");
    assert_eq!(t.outcome(), Some(Outcome::Unconfirmed));
}

#[test]
fn port_unreachable_before_every_block_was_sent_is_a_failure() {
    let t0 = crate::sim_origin();
    let mut t = Transfer::new(cfg(b"windowsize\x004\x00", 5000), t0);
    drain(&mut t, t0); // OACK
    ack(&mut t, 0, t0);
    drain(&mut t, t0);
    ack(&mut t, 4, t0);
    drain(&mut t, t0); // blocks 5-8 of 10
    t.peer_unreachable("client port unreachable");
    assert!(matches!(drain(&mut t, t0)[..], [Payload::Datagram(_)]));
    assert_eq!(t.outcome(), Some(Outcome::Aborted(ErrorCode::NotDefined)));
    // A client that goes silent with blocks left to send still times out.
    let mut t = Transfer::new(cfg(b"windowsize\x004\x00", 5000), t0);
    drain(&mut t, t0);
    ack(&mut t, 0, t0);
    drain(&mut t, t0);
    while let Some(d) = t.poll_timeout() {
        t.handle_timeout(d);
        drain(&mut t, d);
    }
    assert_eq!(t.outcome(), Some(Outcome::TimedOut));
}

/// The server (an endpoint and its transfers) and a firmware-like client over a seeded lossy
/// link on virtual time, with loss, duplication and reordering in both directions. The
/// client must always end with the exact content; the request goes through the endpoint, so
/// negotiation is the server's own.
fn simulate(seed: u64, len: u64, ccfg: ClientConfig, loss: f64, dup: f64, reorder: f64) {
    use crate::proto::sim::{addr, Link, Node, Ran, Sim, TftpClient, TftpServer};
    use crate::proto::tftp::admit::{Admission, AdmissionConfig};
    use crate::proto::tftp::endpoint::{Endpoint, EndpointConfig};
    let content: Vec<u8> = (0..len).map(|i| (i * 31 + i / 7) as u8).collect();
    let t0 = crate::sim_origin();
    let limits = Limits {
        retries: 40,
        ..Limits::default()
    };
    let cfg = EndpointConfig {
        limits,
        min_rto: Duration::from_millis(2),
        share: 4,
    };
    let adm = Admission::new(AdmissionConfig {
        max_transfers: 4,
        max_per_client: 4,
        client_rate: 0,
    });
    let mut server = TftpServer::new(Endpoint::new(cfg, adm), addr(1, 69));
    server.add_file(b"f", content.clone());
    let mut client = TftpClient::one(addr(2, 2000), server.addr, b"f", ccfg, t0);
    let mut net = Sim::new(t0, seed, Link::lan(loss, dup, reorder));
    let ran = net.run(
        &mut [&mut server, &mut client as &mut dyn Node],
        t0 + Duration::from_secs(86_400),
    );
    assert_eq!(ran, Ran::Quiet);
    assert!(
        client.is_done(),
        "client did not finish: {:?}",
        client.events
    );
    assert_eq!(
        client.last_event(),
        Some(&Event::Finished),
        "{:?}",
        client.events
    );
    assert_eq!(client.received.len() as u64, len);
    assert!(client.received == content, "content differs");
    // The transfer that served the file completed, or ended unconfirmed when the client's last
    // ACK was lost and the client left (never a failure: the client has its file); any before it
    // was dropped unanswered (the client never heard its first reply, and asked again).
    let (last, before) = server.ended.split_last().expect("a transfer");
    assert!(
        matches!(
            last.outcome,
            Some(Outcome::Completed | Outcome::Unconfirmed)
        ),
        "{last:?}"
    );
    assert!(
        before
            .iter()
            .all(|e| e.outcome == Some(Outcome::Unanswered)),
        "{before:?}"
    );
    assert_eq!(server.live(), 0);
    assert_eq!(
        server.endpoint.held(),
        0,
        "every place under the caps given back"
    );
}

fn client_cfg(blksize: Option<u16>, window: Option<u16>) -> ClientConfig {
    // As patient as firmware (EDK2: 4 s x 6), in finer steps.
    ClientConfig {
        blksize: blksize.and_then(BlockSize::new),
        windowsize: window.and_then(WindowSize::new),
        tsize: true,
        retransmit: Duration::from_millis(200),
        retries: 120,
        ..ClientConfig::default()
    }
}

#[test]
fn sim_clean_windowed() {
    simulate(1, 100_000, client_cfg(Some(1468), Some(16)), 0.0, 0.0, 0.0);
}

#[test]
fn sim_rollover_under_loss() {
    // 70,000 blocks of 8 bytes: past the 65535 wrap, with 5% loss, duplication and reordering.
    let mut c = client_cfg(Some(8), Some(16));
    c.tsize = false;
    simulate(7, 70_000 * 8 + 3, c, 0.05, 0.02, 0.02);
}

#[test]
fn sim_heavy_loss_lockstep() {
    let mut c = client_cfg(None, None);
    c.tsize = false;
    simulate(11, 30_000, c, 0.3, 0.05, 0.05);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn sim_lossy_link_delivers_exact_file(
        seed in any::<u64>(),
        len in 0u64..40_000,
        bs_i in 0usize..4,
        win_i in 0usize..4,
        loss in 0u32..150,
        dup in 0u32..100,
        reorder in 0u32..100,
    ) {
        let bs = [None, Some(8u16), Some(512), Some(1468)][bs_i];
        let win = [None, Some(1u16), Some(4), Some(16)][win_i];
        let (loss, dup, reorder) = (loss as f64 / 1000.0, dup as f64 / 1000.0, reorder as f64 / 1000.0);
        simulate(seed, len, client_cfg(bs, win), loss, dup, reorder);
    }
}

/// A lockstep download (windowsize 1, as iPXE and BIOS clients ask) through a FIFO queue that
/// never drops but whose delay wanders between 1 ms and `peak_ms` (the other flows of a shaped
/// link filling and draining it), on virtual time. The client ACKs each new block and re-ACKs a
/// duplicate, as firmware does. Returns the transfer's stats.
fn lockstep_through_a_growing_queue(seed: u64, blocks: u64, peak_ms: u64) -> TransferStats {
    let t0 = crate::sim_origin();
    let mut rng = seed;
    let mut t = Transfer::new(cfg(b"", blocks * 512 - 1), t0);
    // The queue's delay now: a slow wave up to `peak_ms` plus a few ms of jitter.
    let mut delay_at = |now: Instant| -> Duration {
        let ms_in = (now - t0).as_millis() as u64;
        let phase = ms_in % 4000;
        let wave = if phase < 2000 { phase } else { 4000 - phase } * peak_ms / 2000;
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ms(1 + wave) + Duration::from_micros((rng >> 33) % 4000)
    };
    // ACKs on their way back, in FIFO order: (arrival, block).
    let mut acks: std::collections::VecDeque<(Instant, u16)> = Default::default();
    let mut last_arrival = t0;
    let mut client_has = 0u64;
    let mut now = t0;
    let mut steps = 0;
    while t.outcome().is_none() {
        steps += 1;
        assert!(steps < 10_000_000, "bounded");
        let mut buf = [0u8; 512];
        while let Some(x) = t.poll_transmit(now, &mut buf) {
            let (first, count) = match x.payload {
                Payload::Blocks { first, count } => (first, count),
                _ => continue,
            };
            for b in first..first + count as u64 {
                // The block and its ACK cross the queue; FIFO, so never before the previous one.
                let arrival = (now + delay_at(now)).max(last_arrival);
                last_arrival = arrival;
                if b == client_has + 1 {
                    client_has = b;
                }
                acks.push_back((arrival, client_has as u16));
            }
        }
        let timer = t.poll_timeout();
        match (acks.front().copied(), timer) {
            (Some((a, b)), None) => {
                acks.pop_front();
                now = now.max(a);
                ack(&mut t, b, now);
            }
            (Some((a, b)), Some(d)) if a <= d => {
                acks.pop_front();
                now = now.max(a);
                ack(&mut t, b, now);
            }
            (_, Some(d)) => {
                now = now.max(d);
                t.handle_timeout(now);
            }
            (None, None) => break,
        }
    }
    assert_eq!(t.outcome(), Some(Outcome::Completed));
    t.stats()
}

#[test]
fn lockstep_through_a_lossless_queue_resends_almost_nothing() {
    for seed in 1..4 {
        let s = lockstep_through_a_growing_queue(seed, 3000, 40);
        // Nothing is lost, so no probe was needed (a re-ACK of an earlier probe's duplicate,
        // crossing a later probe, once read as a loss).
        assert_eq!(s.probes_genuine, 0, "{s:?}");
        assert!(
            s.blocks_resent * 1000 <= s.blocks_sent,
            "no loss, yet {} of {} blocks resent: {s:?}",
            s.blocks_resent,
            s.blocks_sent
        );
    }
}
