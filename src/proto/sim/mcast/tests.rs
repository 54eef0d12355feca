use super::*;
use crate::proto::sim::{addr, Link, Sim};
use crate::proto::tftp::options::{BlockSize, WindowSize};
use std::time::Duration;

/// PXE MTFTP, a file of 70 000 blocks (numbers wrap): a listener that starts hearing the stream
/// late (block ~20 000) gets the rest across the wrap, then the beginning as repairs when it is
/// asked to be master, byte-exact. (A listener that starts hearing past block 32 767 of a
/// wrapping file cannot place what it hears, in this model or in iPXE: see the session's docs.)
#[test]
fn pxe_listener_starting_late_gets_the_rest_across_the_wrap_and_the_beginning() {
    let len = 512 * 70_000 + 9;
    let content: Vec<u8> = (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 17) as u8)
        .collect();
    let group: SocketAddr = "239.255.1.1:3001".parse().unwrap();
    let server_at = addr(1, 1759);
    let scfg = SessionConfig {
        window: WindowSize::new(16).unwrap(),
        rate: 100_000_000,
        timeout: Duration::from_millis(20),
        retries: 3,
        ..SessionConfig::new(
            Protocol::PxeMtftp,
            BlockSize::new(512).unwrap(),
            len as u64,
            group,
        )
    };
    let mut server = McServer::new(server_at, scfg, content.clone());
    let ccfg = McClientConfig {
        timeout: Duration::from_millis(200),
        retries: 20,
        listen_timeout: Duration::from_millis(50),
        reopen_delay: Duration::from_millis(100),
        ..Default::default()
    };
    let t0 = crate::sim_origin();
    let member = |i: u16, start| {
        McMember::new(
            addr(2, 2000 + i),
            Protocol::PxeMtftp,
            server_at,
            b"f",
            ccfg.clone(),
            Some(group),
            len,
            start,
        )
    };
    let mut first = member(0, t0);
    let mut net = Sim::new(t0, 7, Link::PERFECT);
    let mut at = t0;
    while server.stats().blocks_sent < 20_000 {
        at += Duration::from_millis(1);
        net.run(&mut [&mut server, &mut first], at);
        assert!(
            at < t0 + Duration::from_secs(60),
            "the stream did not start"
        );
    }
    let mut late = member(1, at);
    net.run(
        &mut [&mut server, &mut first, &mut late],
        t0 + Duration::from_secs(300),
    );
    for (name, m) in [("first", &first), ("late", &late)] {
        assert!(m.failures.is_empty(), "{name}: {:?}", m.failures);
        assert!(m.is_finished(), "{name} unfinished");
        assert!(m.file == content, "{name}: content differs");
    }
    let st = server.stats();
    assert!(st.bytes_sent < len as u64 + len as u64 / 2, "{st:?}");
}
