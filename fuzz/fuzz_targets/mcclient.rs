//! A multicast client (RFC 2090 or PXE MTFTP) fed a server's stream: well-formed OACKs and DATA
//! blocks of a known file in any order, repeated, from the group or unicast, mixed (when the input
//! says so) with arbitrary datagrams and forged OACKs, and arbitrary time steps. Invariants:
//! - never panics, and what it sends parses (an ACK, or the RRQ/open);
//! - with an honest server: every block it delivers lies inside the file, carries the file's bytes
//!   at that offset, is delivered once, and a finished client has delivered the whole file;
//! - with a hostile one: delivered offsets never overflow and no block exceeds the block size.
#![no_main]
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use ringboot::proto::mtftp::client::{Arrival, Data, McClient, McClientConfig, McEvent};
use ringboot::proto::tftp::packet::{data_header, OptionWriter, Packet};
use ringboot::proto::tftp::{BlockNum, BlockSize};
use ringboot::proto::Payload;
use std::net::SocketAddr;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn byte_at(offset: u64) -> u8 {
    (offset.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn oack(buf: &mut [u8], blksize: Option<u64>, tsize: Option<u64>, mc: &[u8]) -> usize {
    let mut w = OptionWriter::oack(buf).unwrap();
    w.option("multicast", mc).unwrap();
    if let Some(b) = blksize {
        w.option_u64("blksize", b).unwrap();
    }
    if let Some(t) = tsize {
        w.option_u64("tsize", t).unwrap();
    }
    w.finish()
}

fn run(u: &mut Unstructured) -> Result<()> {
    let pxe: bool = u.arbitrary()?;
    let blksize: u16 = if pxe { 512 } else { u.int_in_range(8..=1468)? };
    let asked = !pxe && blksize != 512 || u.arbitrary()?;
    let cfg = McClientConfig {
        blksize: asked.then(|| BlockSize::new(blksize).expect("in range")),
        tsize: u.arbitrary()?,
        timeout: Duration::from_millis(u.int_in_range(1..=1000)?),
        retries: u.int_in_range(0..=8)?,
        listen_timeout: Duration::from_millis(u.int_in_range(0..=1000)?),
        reopen_delay: Duration::from_millis(u.int_in_range(0..=1000)?),
    };
    // The honest server's file: at most 40000 blocks, so numbers place it exactly.
    let len: u64 = u.int_in_range(0..=40_000 * u64::from(blksize))?;
    let total = len / u64::from(blksize) + 1;
    let hostile: bool = u.arbitrary()?;
    let t0 = Instant::now();
    let mut now = t0;
    let server: SocketAddr = "127.0.0.1:69".parse().unwrap();
    let mut c = if pxe {
        McClient::pxe(server, b"pxelinux.0", cfg.clone(), now)
    } else {
        McClient::rfc2090(server, b"pxelinux.0", cfg.clone(), now)
    };
    let mut delivered: HashSet<u64> = HashSet::new();
    let mut bytes = 0u64;
    // The honest server's last block sent, and whether the client can know the file's length.
    let mut last_sent = 1u64;
    let mut len_known = false;
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let mut steps = 0;
    while !u.is_empty() && steps < 1024 {
        steps += 1;
        let op = u.int_in_range(0..=if hostile { 5 } else { 3u8 })?;
        let unicast: bool = u.arbitrary()?;
        let n = match op {
            0 => {
                let master: bool = u.arbitrary()?;
                let mc: &[u8] = if master {
                    b"239.255.1.1,3001,1"
                } else {
                    b"239.255.1.1,3001,0"
                };
                let tsize = cfg.tsize.then_some(len);
                len_known |= tsize.is_some() && unicast && !pxe;
                oack(&mut buf, cfg.blksize.map(|b| b.get() as u64), tsize, mc)
            }
            1 => {
                // Mostly the next blocks in order, sometimes anywhere in the file: anywhere only
                // once the client can know the length (before, a jump of half the number space is
                // ambiguous, and the contract places it near the last block).
                let index = if u.arbitrary::<u8>()? < 200 {
                    (last_sent + u64::from(u.int_in_range(0..=3u8)?)).clamp(1, total)
                } else if len_known {
                    u.int_in_range(1..=total)?
                } else {
                    u.int_in_range(
                        last_sent.saturating_sub(32767).max(1)..=(last_sent + 32767).min(total),
                    )?
                };
                last_sent = index;
                if index == total {
                    len_known = true;
                }
                let off = (index - 1) * u64::from(blksize);
                let l = (len - off).min(u64::from(blksize)) as usize;
                buf[..4].copy_from_slice(&data_header(BlockNum::from_index(index)));
                for (i, b) in buf[4..4 + l].iter_mut().enumerate() {
                    *b = byte_at(off + i as u64);
                }
                4 + l
            }
            2 | 3 => {
                now += Duration::from_micros(
                    u64::from(u.arbitrary::<u16>()?) << u.int_in_range(0..=8)?,
                );
                c.handle_timeout(now);
                0
            }
            4 => {
                let l = u.int_in_range(0..=600)?;
                let d = u.bytes(l)?;
                buf[..l].copy_from_slice(d);
                l
            }
            _ => {
                let b = u.arbitrary::<u64>()?;
                let t = u.arbitrary::<u64>()?;
                let l = u.int_in_range(0..=40)?;
                let mc = u.bytes(l)?.to_vec();
                oack(
                    &mut buf,
                    u.arbitrary::<bool>()?.then_some(b),
                    u.arbitrary::<bool>()?.then_some(t),
                    &mc,
                )
            }
        };
        if n > 0 {
            let arrival = if unicast {
                Arrival::Unicast
            } else {
                Arrival::Group
            };
            let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
            match c.handle_datagram(now, from, arrival, &buf[..n]) {
                Some(Data {
                    offset,
                    bytes: data,
                }) => {
                    let end = offset
                        .checked_add(data.len() as u64)
                        .expect("offset overflow");
                    if !hostile {
                        assert!(end <= len, "block at {offset}+{} past {len}", data.len());
                        assert_eq!(offset % u64::from(blksize), 0);
                        assert!(data.len() <= usize::from(blksize));
                        for (i, b) in data.iter().enumerate() {
                            assert_eq!(
                                *b,
                                byte_at(offset + i as u64),
                                "byte {}",
                                offset + i as u64
                            );
                        }
                        assert!(delivered.insert(offset), "offset {offset} delivered twice");
                        bytes += data.len() as u64;
                    }
                }
                None => {}
            }
        }
        if !hostile && c.is_finished() {
            assert_eq!(bytes, len, "finished with {bytes} of {len} bytes");
            assert_eq!(delivered.len() as u64, total);
        }
        while let Some(e) = c.poll_event() {
            if let McEvent::Finished = e {
                assert!(hostile || c.is_finished());
            }
        }
        let mut sends = 0;
        while let Some(t) = c.poll_transmit(now, &mut out) {
            let Payload::Datagram(l) = t.payload else {
                panic!("a client sends datagrams only")
            };
            sends += 1;
            assert!(sends < 4, "poll_transmit never ends");
            assert!(l <= out.len());
            match Packet::parse(&out[..l]) {
                Ok(Packet::Ack { .. } | Packet::Rrq(_)) => {}
                other => panic!("client sent {other:?}"),
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
