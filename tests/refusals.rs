//! What the server must refuse or survive, driven by the raw client: writes, path escapes, odd
//! names, malformed datagrams, floods, firmware probe patterns and unknown options.

mod common;

use common::*;
use ringboot::proto::tftp::packet::{ErrorCode, Packet};
use std::time::{Duration, Instant};

/// Send `pkt` from a fresh socket and expect an ERROR whose code is in `codes`. Anything that
/// starts a transfer (DATA or OACK) fails the test: the request must not be served.
fn expect_error(srv: &Server, pkt: &[u8], codes: &[u16], what: &str) -> (u16, String) {
    let mut c = RawClient::new(srv.addr());
    match c.request(pkt) {
        Some((Reply::Error { code, message }, _)) => {
            assert!(
                codes.contains(&code),
                "{what}: got ERROR {code} {message:?}, want one of {codes:?}"
            );
            (code, message)
        }
        Some((other, _)) => panic!("{what}: was served ({other:?}) instead of refused"),
        None => panic!("{what}: no reply within 6 s (want ERROR {codes:?})"),
    }
}

/// Send `pkt` and accept an ERROR with a code in `codes`, or silence; never a transfer.
fn expect_error_or_silence(srv: &Server, pkt: &[u8], codes: &[u16], what: &str) {
    let mut c = RawClient::new(srv.addr());
    c.send(pkt);
    let deadline = Instant::now() + Duration::from_millis(400);
    while let Some((r, _)) = c.recv_reply(deadline.saturating_duration_since(Instant::now())) {
        match r {
            Reply::Error { code, .. } if codes.is_empty() || codes.contains(&code) => {}
            other => panic!("{what}: got {other:?}, want ERROR {codes:?} or silence"),
        }
    }
}

/// A normal download still works: the server kept serving.
fn still_serves(srv: &mut Server, name: &str, src: &[u8]) {
    srv.assert_alive();
    let d = raw_get(srv, &DownloadSpec::new(name).blksize(1468));
    assert_same(&format!("{name} after abuse"), &d.data, src);
    srv.assert_alive();
}

#[test]
fn wrq_is_access_violation() {
    bounded(TEST_LIMIT, || {
        let (srv, _) = Server::with_random("exists.bin", 100, &[]);
        for (name, opts) in [
            ("upload.bin", vec![]),
            ("exists.bin", vec![]),
            (
                "upload2.bin",
                vec![("blksize", &b"1468"[..]), ("tsize", b"1000")],
            ),
        ] {
            let pkt = request(
                true,
                name.as_bytes(),
                ringboot::proto::tftp::Mode::Octet,
                &opts,
            );
            expect_error(&srv, &pkt, &[2], &format!("WRQ {name}"));
        }
        assert!(!srv.files.root().join("upload.bin").exists());
        assert_eq!(
            std::fs::read(srv.files.root().join("exists.bin")).unwrap(),
            pattern(100)
        );
    });
}

#[test]
fn missing_file_is_error_1() {
    bounded(TEST_LIMIT, || {
        let srv = Server::start(TestRoot::new(), &[]);
        expect_error(&srv, &rrq(b"nope.bin", &[]), &[1], "missing file");
        expect_error(
            &srv,
            &rrq(b"nope/deeper.bin", &[("tsize", b"0")]),
            &[1],
            "missing file with options",
        );
    });
}

#[test]
fn path_escapes_are_access_violations() {
    bounded(TEST_LIMIT, || {
        let root = TestRoot::new();
        let secret = b"SECRET: outside the root\n";
        // base/x and base/etc/passwd sit just outside base/root.
        let outside = root.add_outside("x", secret);
        root.add_outside("etc/passwd", secret);
        root.add_random("a/inside.bin", 10);
        std::os::unix::fs::symlink(&outside, root.root().join("link-out")).unwrap();
        std::os::unix::fs::symlink(root.base(), root.root().join("dir-out")).unwrap();
        let srv = Server::start(root, &[]);
        for name in ["../x", "/../etc/passwd", "a/../../x", "link-out"] {
            expect_error(&srv, &rrq(name.as_bytes(), &[]), &[2], name);
            expect_error(
                &srv,
                &rrq(name.as_bytes(), &[("tsize", b"0")]),
                &[2],
                &format!("{name} with tsize"),
            );
        }
        // Spellings of the same escapes: refused, as "not found" or "access violation".
        for name in [
            "..\\x",
            "a\\..\\..\\x",
            "./../x",
            "a/./../../x",
            "dir-out/x",
            "//../x",
        ] {
            expect_error(&srv, &rrq(name.as_bytes(), &[]), &[1, 2], name);
        }
    });
}

#[test]
fn odd_names_are_refused() {
    bounded(TEST_LIMIT, || {
        let (srv, _) = Server::with_random("a.bin", 1000, &[]);
        // A NUL inside the name ends the filename on the wire: "a.bin" then mode "junk".
        let mut pkt = vec![0, 1];
        pkt.extend_from_slice(b"a.bin\0junk\0octet\0");
        expect_error(&srv, &pkt, &[1, 2, 4], "NUL inside name");
        for name in [
            &b"a\x01.bin"[..],
            b"boot\x1b[2J.bin",
            b"a\nb.bin",
            b"a\x7f.bin",
        ] {
            expect_error(
                &srv,
                &rrq(name, &[]),
                &[1, 2],
                &format!("control char {name:?}"),
            );
        }
        expect_error(&srv, &rrq(b"", &[]), &[1, 2, 4], "empty name");
        // Names from the network reach the log escaped: no raw control characters, no forged line.
        std::thread::sleep(Duration::from_millis(200));
        for line in srv.log_lines() {
            assert!(
                !line.contains(['\u{1}', '\u{7f}']) && !line.starts_with("b.bin"),
                "raw control character from a request name in the log: {line:?}"
            );
        }
    });
}

/// Some old PXE ROMs append 0xFF to the filename.
#[test]
fn trailing_ff_is_ignored() {
    bounded(TEST_LIMIT, || {
        let (srv, src) = Server::with_random("pxelinux.0", 42_000, &[]);
        let d = raw_get(&srv, &DownloadSpec::new(b"pxelinux.0\xff"));
        assert_same("pxelinux.0 + 0xFF", &d.data, &src);
        let d = raw_get(
            &srv,
            &DownloadSpec::new(b"pxelinux.0\xff").tsize().blksize(1456),
        );
        assert_same("pxelinux.0 + 0xFF with options", &d.data, &src);
    });
}

#[test]
fn directory_is_not_served() {
    bounded(TEST_LIMIT, || {
        let (srv, _) = Server::with_random("boot/inside.bin", 100, &[]);
        for name in ["boot", "boot/", "/", "", "."] {
            let what = format!("directory {name:?}");
            expect_error(&srv, &rrq(name.as_bytes(), &[]), &[0, 1, 2, 4], &what);
        }
    });
}

/// Malformed datagrams get ERROR 4 or nothing, and the server keeps serving.
#[test]
fn malformed_packets_then_still_serves() {
    bounded(TEST_LIMIT, || {
        let (mut srv, src) = Server::with_random("ok.bin", 200_000, &[]);
        let cases: [(&str, &[u8]); 3] = [
            ("1 byte", &[0x01]),
            ("unknown opcode", &[0x00, 0x09, b'x', 0]),
            ("RRQ without mode", b"\x00\x01ok.bin\x00"),
        ];
        for (what, pkt) in cases {
            expect_error_or_silence(&srv, pkt, &[4], what);
        }
        // Others: any ERROR or silence, never a transfer.
        let others: [(&str, &[u8]); 8] = [
            ("empty datagram", &[]),
            ("opcode only", &[0x00, 0x01]),
            ("RRQ unterminated name", b"\x00\x01ok.bin"),
            ("RRQ unknown mode", b"\x00\x01ok.bin\x00bogus\x00"),
            ("stray ACK", &[0x00, 0x04, 0x00, 0x01]),
            ("stray DATA", &[0x00, 0x03, 0x00, 0x01, 1, 2, 3]),
            ("short ERROR", &[0x00, 0x05]),
            ("stray OACK", b"\x00\x06blksize\x001468\x00"),
        ];
        for (what, pkt) in others {
            expect_error_or_silence(&srv, pkt, &[], what);
        }
        // A truncated option list: refused, or served with the option ignored.
        let mut c = RawClient::new(srv.addr());
        if let Some((r, _)) = c.request(b"\x00\x01ok.bin\x00octet\x00blksize\x00") {
            assert!(
                matches!(r, Reply::Error { .. } | Reply::Data { block: 1, .. }),
                "RRQ with an option without value: got {r:?}"
            );
        }
        still_serves(&mut srv, "ok.bin", &src);
    });
}

/// 10,000 garbage datagrams, then a normal download succeeds.
#[test]
fn garbage_flood_then_still_serves() {
    bounded(TEST_LIMIT, || {
        let (mut srv, src) = Server::with_random("ok.bin", 500_000, &[]);
        let noise = pattern(10_000 * 8 + 1_000_000);
        let socks: Vec<_> = (0..4).map(|_| RawClient::new(srv.addr())).collect();
        let mut off = 0;
        for i in 0..10_000usize {
            let len = (noise[i * 8] as usize * 3) % 700;
            let mut pkt = noise[off..off + len].to_vec();
            off = (off + len) % 900_000;
            // Mostly unknown opcodes and truncated requests, some valid-looking headers.
            if i % 5 == 0 && pkt.len() >= 2 {
                pkt[0] = 0;
                pkt[1] = (i % 7) as u8;
            }
            let _ = socks[i % 4].sock.send_to(&pkt, srv.addr());
        }
        let t = Instant::now();
        still_serves(&mut srv, "ok.bin", &src);
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "download after the flood took {:?}",
            t.elapsed()
        );
    });
}

/// BIOS PXE ROM: RRQ `tsize 0` -> OACK -> ERROR 0 "TFTP Aborted" -> new RRQ `blksize 1456`.
#[test]
fn bios_probe_then_download() {
    bounded(TEST_LIMIT, || {
        let (srv, src) = Server::with_random("pxelinux.0", 26_759, &[]);

        let mut probe = RawClient::new(srv.addr());
        let (reply, tid) = probe
            .request(&rrq(b"pxelinux.0", &[("tsize", b"0")]))
            .expect("reply to the tsize probe");
        let Reply::Oack(oack) = reply else {
            panic!("tsize probe: want OACK, got {reply:?}");
        };
        assert_eq!(
            oack,
            vec![("tsize".to_string(), src.len().to_string())],
            "the OACK must hold exactly the asked tsize"
        );
        probe.send_to(&error_packet(ErrorCode::NotDefined, "TFTP Aborted"), tid);
        // The aborted transfer is over: no more OACKs or DATA for the probe's port.
        if let Some((r, from)) = probe.recv_reply(Duration::from_millis(1500)) {
            panic!("after the probe's ERROR 0 the server still sent {r:?} from {from}");
        }

        let d = raw_get(&srv, &DownloadSpec::new("pxelinux.0").blksize(1456));
        assert_same("BIOS download", &d.data, &src);
        assert_eq!(
            d.oack.as_deref().and_then(|o| oack_get(o, "blksize")),
            Some("1456")
        );
        no_warnings(&srv, "BIOS probe");
    });
}

/// EDK2: RRQ `tsize 0 blksize 1468 windowsize 4` -> OACK -> ERROR 8 -> new RRQ from a new port
/// without tsize, windowed, ACKs only after 4 blocks.
#[test]
fn uefi_probe_then_windowed_download() {
    bounded(TEST_LIMIT, || {
        let (srv, src) = Server::with_random("efi/grubx64.efi", 2_538_000, &[]);
        let name = b"efi/grubx64.efi";

        let mut probe = RawClient::new(srv.addr());
        let asked: [(&str, &[u8]); 3] =
            [("tsize", b"0"), ("blksize", b"1468"), ("windowsize", b"4")];
        let (reply, tid) = probe
            .request(&rrq(name, &asked))
            .expect("reply to the probe");
        let Reply::Oack(oack) = reply else {
            panic!("UEFI probe: want OACK, got {reply:?}");
        };
        check_edk2_oack(&oack, &asked);
        assert_eq!(
            oack_get(&oack, "tsize"),
            Some(src.len().to_string().as_str()),
            "EDK2 needs tsize in the OACK: {oack:?}"
        );
        probe.send_to(
            &error_packet(ErrorCode::OptionNegotiation, "User aborted"),
            tid,
        );
        if let Some((r, from)) = probe.recv_reply(Duration::from_millis(1500)) {
            panic!("after the probe's ERROR 8 the server still sent {r:?} from {from}");
        }

        let spec = DownloadSpec::new(name).blksize(1468).windowsize(4);
        let d = raw_get(&srv, &spec);
        assert_same("UEFI download", &d.data, &src);
        let oack = d.oack.clone().expect("OACK for blksize+windowsize");
        check_edk2_oack(&oack, &[("blksize", b"1468"), ("windowsize", b"4")]);
        no_warnings(&srv, "UEFI probe");
    });
}

/// What EDK2 accepts: only options it asked for, none larger than asked.
fn check_edk2_oack(oack: &[(String, String)], asked: &[(&str, &[u8])]) {
    for (n, v) in oack {
        let Some((_, want)) = asked.iter().find(|(a, _)| a.eq_ignore_ascii_case(n)) else {
            panic!("OACK grants {n}={v} which was not asked for: {oack:?}");
        };
        if n.eq_ignore_ascii_case("blksize") || n.eq_ignore_ascii_case("windowsize") {
            let got: u32 = v.parse().expect("numeric");
            let want: u32 = std::str::from_utf8(want).unwrap().parse().unwrap();
            assert!(
                (1..=want).contains(&got),
                "OACK grants {n}={got}, more than the {want} asked: {oack:?}"
            );
        }
    }
}

/// A probe that ends with ERROR after the OACK is normal: no WARN or ERROR log line.
fn no_warnings(srv: &Server, what: &str) {
    std::thread::sleep(Duration::from_millis(300));
    let w = srv.warnings();
    assert!(
        w.is_empty(),
        "{what}: server logged warnings/errors: {w:#?}"
    );
}

/// An OACK never contains an option the client did not send, nor an unsupported one.
#[test]
fn unknown_options_are_not_acknowledged() {
    bounded(TEST_LIMIT, || {
        let (srv, src) = Server::with_random("f.bin", 30_000, &[]);

        let d = raw_get(
            &srv,
            &DownloadSpec::new("f.bin")
                .blksize(1468)
                .option("foo", "bar"),
        );
        assert_same("blksize+foo", &d.data, &src);
        assert_eq!(
            d.oack,
            Some(vec![("blksize".to_string(), "1468".to_string())]),
            "only blksize may be acknowledged"
        );

        // Only unknown options: DATA straight away, or an OACK without them.
        for (n, v) in [("foo", "bar"), ("multicast", ""), ("msftwindow", "31416")] {
            let d = raw_get(&srv, &DownloadSpec::new("f.bin").option(n, v));
            assert_same(&format!("only {n}"), &d.data, &src);
            if let Some(oack) = &d.oack {
                assert!(
                    oack_get(oack, n).is_none(),
                    "OACK acknowledged {n}: {oack:?}"
                );
                assert!(
                    oack.is_empty(),
                    "OACK grants options not asked for: {oack:?}"
                );
            }
        }

        // Option names are case-insensitive (RFC 2347).
        let d = raw_get(&srv, &DownloadSpec::new("f.bin").option("BlkSize", "1024"));
        assert_same("BlkSize", &d.data, &src);
        let oack = d.oack.clone().expect("OACK for BlkSize");
        assert_eq!(oack_get(&oack, "blksize"), Some("1024"), "{oack:?}");

        // RFC 2349 timeout: either not acknowledged or echoed unchanged (EDK2 rejects a change).
        let d = raw_get(
            &srv,
            &DownloadSpec::new("f.bin")
                .option("timeout", "3")
                .blksize(1468),
        );
        assert_same("timeout", &d.data, &src);
        let oack = d.oack.clone().expect("OACK for blksize");
        if let Some(t) = oack_get(&oack, "timeout") {
            assert_eq!(t, "3", "timeout changed in the OACK: {oack:?}");
        }
    });
}

/// An administrator copies a new image over the one being served (`cp new.wim boot.wim` truncates
/// and rewrites the mapped file in place). The server must not crash (no SIGBUS), the writer must
/// not wait out the kernel's 45 s lease-break time, the running transfer must end with an ERROR
/// rather than deliver a mix of old and new bytes, new downloads get the new content, and other
/// transfers go on.
#[test]
fn file_overwritten_in_place_while_served() {
    bounded(TEST_LIMIT, || {
        let files = TestRoot::new();
        let old = files.add_random("boot.wim", 8 << 20);
        let other = files.add_random("other.bin", 1 << 20);
        let path = files.root().join("boot.wim");
        let mut srv = Server::start(files, &[]);

        // A plain RFC 1350 transfer, driven by hand: take the first blocks, then pause.
        let mut c = RawClient::new(srv.addr());
        let (first, tid) = c.request(&rrq(b"boot.wim", &[])).expect("block 1");
        let Reply::Data { block: 1, .. } = first else {
            panic!("expected DATA 1, got {first:?}")
        };
        for b in 1..=20u16 {
            c.send_to(&ack(b), tid);
            let (r, _) = c.recv_reply(Duration::from_secs(2)).expect("next block");
            assert!(
                matches!(r, Reply::Data { block, .. } if block == b + 1),
                "{r:?}"
            );
        }

        // Overwrite in place, as cp does (O_TRUNC, then write).
        let new = pattern(3 << 20)
            .iter()
            .map(|b| b ^ 0x5a)
            .collect::<Vec<u8>>();
        let t = Instant::now();
        std::fs::write(&path, &new).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the writer waited {:?}: the lease was not released",
            t.elapsed()
        );

        // The running transfer ends with an ERROR within a few more exchanges; every DATA it got
        // before that carries the old bytes.
        let mut block = 21u16;
        let mut ended = None;
        for _ in 0..50 {
            c.send_to(&ack(block), tid);
            let Some((raw, _)) = c.recv(Duration::from_secs(2)) else {
                continue;
            };
            match Packet::parse(&raw) {
                Ok(Packet::Data { block: b, data }) if b.0 == block + 1 => {
                    let off = block as usize * 512;
                    assert_eq!(
                        data,
                        &old[off..off + data.len()],
                        "block {b}: mixed content"
                    );
                    block = b.0;
                }
                // A retransmission of the block we hold (the server's timer ran while we paused).
                Ok(Packet::Data { block: b, .. }) if b.0 == block => {}
                Ok(Packet::Error { code, message }) => {
                    ended = Some((code.as_u16(), String::from_utf8_lossy(message).into_owned()));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let (code, message) = ended.expect("the running transfer was not ended with an ERROR");
        assert_eq!(code, 0, "{message}");

        srv.assert_alive();
        let d = raw_get(&srv, &DownloadSpec::new("boot.wim").blksize(1468));
        assert_same("boot.wim after the overwrite", &d.data, &new);
        let d = raw_get(&srv, &DownloadSpec::new("other.bin").blksize(1468));
        assert_same("other.bin", &d.data, &other);
        srv.assert_alive();
        assert!(
            srv.log_lines()
                .iter()
                .any(|l| l.contains("modified in place") || l.contains("changed on the server")),
            "no log line about the change:\n{}",
            srv.log_lines().join("\n")
        );
    });
}
