//! The metrics and status listener seen from a test: `GET`, the address the server logged, a
//! sample of `/metrics`.

use super::Server;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` on `addr`; the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The metrics address the server logged.
pub fn metrics_addr(srv: &Server) -> SocketAddr {
    assert!(srv.wait_for_log("status page on http://", Duration::from_secs(10)));
    let line = srv
        .log_lines()
        .into_iter()
        .find(|l| l.contains("status page on http://"))
        .unwrap();
    let at = line.find("metrics on http://").unwrap() + "metrics on http://".len();
    let rest = &line[at..];
    rest[..rest.find('/').unwrap()].parse().unwrap()
}

/// The value of the sample `name` (with its labels as written), if present.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
