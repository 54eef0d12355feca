//! Any datagram: parse must not panic; a parsed request's options must negotiate and emit an OACK
//! that parses back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringboot::proto::tftp::options::{negotiate, Limits, RequestOptions};
use ringboot::proto::tftp::packet::Packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(Packet::Rrq(r)) | Ok(Packet::Wrq(r)) = Packet::parse(data) {
        let o = RequestOptions::parse(&r.options);
        let n = negotiate(&o, &Limits::default(), None, data.len() as u64);
        let mut buf = [0u8; 512];
        let len = n.emit_oack(&mut buf).expect("OACK fits 512 bytes");
        if len > 0 {
            assert!(matches!(Packet::parse(&buf[..len]), Ok(Packet::Oack(_))));
        }
    }
});
