//! A multicast session (PXE MTFTP or RFC 2090) driven as the server's driver drives it, by four
//! members and a stranger sending arbitrary datagrams (and well-formed ACKs and ERRORs with
//! arbitrary block numbers), joins, and arbitrary time steps. Invariants:
//! - never panics;
//! - DATA stays inside the file (1 <= first, first + count - 1 <= total blocks, byte range within
//!   the content), unicast DATA goes only to the master; control datagrams are RFC 2090 OACKs to
//!   members that joined, never to the group;
//! - poll_timeout is sane: none once over, and after the driver has served a due timer and
//!   drained poll_transmit it lies in the future (no busy loop) and not absurdly far;
//! - the session sends at most one window of blocks per event that may open one (join, member
//!   datagram, timer): no amplification beyond the configured window.
#![no_main]
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use ringboot::proto::mtftp::session::{Session, SessionConfig};
use ringboot::proto::mtftp::Protocol;
use ringboot::proto::tftp::options::{BlockSize, WindowSize};
use ringboot::proto::{Payload, Transmit};
use ringboot::proto::tftp::packet::{emit_ack, emit_error, ErrorCode, Packet};
use ringboot::proto::tftp::BlockNum;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn member(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2 + i], 2000 + u16::from(i)))
}

fn run(u: &mut Unstructured) -> Result<()> {
    let protocol = if u.arbitrary()? {
        Protocol::PxeMtftp
    } else {
        Protocol::Rfc2090
    };
    let blksize: u16 = match protocol {
        Protocol::PxeMtftp => 512,
        Protocol::Rfc2090 => u.int_in_range(8..=65464)?,
    };
    let content_len = match u.int_in_range(0..=3u8)? {
        0 => u64::from(u.arbitrary::<u16>()?),
        1 => u64::from(u.arbitrary::<u32>()?) >> 8,
        2 => u64::from(u.arbitrary::<u32>()?),
        // Past 65535 blocks even at the largest block size (numbers wrap).
        _ => u64::from(u.arbitrary::<u32>()?) << 12,
    };
    let cfg = SessionConfig {
        protocol,
        blksize: BlockSize::new(blksize).expect("in range"),
        content_len,
        group: "239.255.1.1:3001".parse().unwrap(),
        window: WindowSize::new(u.int_in_range(1..=64)?).expect("in range"),
        rate: match u.int_in_range(0..=2u8)? {
            0 => 0,
            1 => u64::from(u.int_in_range(1..=u32::MAX)?),
            _ => 100_000_000,
        },
        timeout: Duration::from_millis(u.int_in_range(1..=2000)?),
        retries: u.int_in_range(0..=6)?,
        tsize_in_oack: u.arbitrary()?,
        max_members: u.int_in_range(1..=300)?,
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = Session::new(cfg, now);
    let total = s.total_blocks();
    assert_eq!(total, content_len / u64::from(blksize) + 1);
    let per_block = if cfg.rate > 0 {
        Duration::from_secs_f64(f64::from(blksize) / cfg.rate as f64)
    } else {
        Duration::ZERO
    };
    let far = cfg.timeout * 64 + per_block + Duration::from_millis(2);
    let mut joined = Vec::new();
    // Everyone who asked to join (a PXE opener told "busy" is remembered and may be asked later).
    let mut asked: Vec<SocketAddr> = Vec::new();
    // Events that may open a window of blocks, and the blocks that went to the group.
    let mut openers = 1u64;
    let mut buf = [0u8; 1024];
    let mut steps = 0;
    while !u.is_empty() && steps < 512 {
        steps += 1;
        let who: u8 = u.int_in_range(0..=4)?;
        let from = member(who);
        match u.int_in_range(0..=6u8)? {
            0 => {
                if !asked.contains(&from) {
                    asked.push(from);
                }
                if s.join(now, from).is_ok() && !joined.contains(&from) {
                    joined.push(from);
                }
                openers += 1;
            }
            1 => {
                // The master's ACKs name real blocks: near its position, or anywhere.
                let block = BlockNum(u.arbitrary()?);
                let n = emit_ack(&mut buf, block);
                let d = buf[..n].to_vec();
                s.handle_datagram(now, from, &d);
                openers += 1;
            }
            2 => {
                let d = BlockNum::from_index(total);
                let n = emit_ack(&mut buf, d);
                let d = buf[..n].to_vec();
                s.handle_datagram(now, from, &d);
                openers += 1;
            }
            3 => {
                let n = emit_error(&mut buf, ErrorCode::NotDefined, "bye");
                let d = buf[..n].to_vec();
                s.handle_datagram(now, from, &d);
                openers += 1;
            }
            4 => {
                let len = u.int_in_range(0..=40)?;
                let d = u.bytes(len)?;
                s.handle_datagram(now, from, d);
                openers += 1;
            }
            _ => {
                now += Duration::from_micros(
                    u64::from(u.arbitrary::<u16>()?) << u.int_in_range(0..=6)?,
                );
            }
        }
        if s.poll_timeout().is_some_and(|t| t <= now) {
            s.handle_timeout(now);
            openers += 1;
        }
        let mut sent = 0u64;
        while let Some(tx) = s.poll_transmit(now, &mut buf) {
            sent += 1;
            assert!(sent < 100_000, "poll_transmit never ends");
            let Transmit { dest, payload } = tx;
            match payload {
                Payload::Blocks { first, count } => {
                    assert!(count >= 1 && first >= 1, "{first} x {count}");
                    let last = first + u64::from(count) - 1;
                    assert!(last <= total, "blocks {first}..={last} of {total}");
                    let (off, _) = s.block_range(first);
                    let (loff, llen) = s.block_range(last);
                    assert!(off <= loff && loff + llen as u64 <= content_len);
                    if dest != cfg.group {
                        let m = dest;
                        // PXE MTFTP: block 1 goes unicast to an opener (the master, one of the
                        // bounded candidates, or a remembered listener asked in turn).
                        assert!(asked.contains(&m), "unicast DATA to {m}, who never opened");
                        assert_eq!((first, count), (1, 1), "only block 1 goes unicast");
                    }
                }
                Payload::Datagram(len) => {
                    assert_ne!(dest, cfg.group, "control datagram to the group");
                    let m = dest;
                    assert!(joined.contains(&m), "OACK to {m}, who never joined");
                    assert!(len > 0 && len <= buf.len());
                    match Packet::parse(&buf[..len]) {
                        Ok(Packet::Oack(o)) => assert!(o.get("multicast").is_some()),
                        // A member the session refuses or ends is told so.
                        Ok(Packet::Error { .. }) => {}
                        other => panic!("not an OACK or ERROR: {other:?}"),
                    }
                }
            }
        }
        let st = s.stats();
        assert!(
            st.blocks_sent <= openers * u64::from(cfg.window.get()),
            "{} blocks for {openers} events with window {}",
            st.blocks_sent,
            cfg.window.get()
        );
        match s.poll_timeout() {
            None => {}
            Some(t) => {
                assert!(!s.is_over(), "a timer after the end");
                assert!(t > now, "timer due after it was served: busy loop");
                assert!(t <= now + far, "timer {:?} ahead", t - now);
            }
        }
        if s.is_over() {
            assert_eq!(s.poll_transmit(now, &mut buf), None);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
