use super::*;

struct Echo;

impl Handler for Echo {
    fn respond(&mut self, _now: Instant, req: &Request) -> Response {
        match req.path.as_str() {
            "/big" => Response {
                status: StatusCode::Ok,
                content_type: "text/plain",
                headers: &[],
                body: Cow::Owned(vec![b'x'; 100_000]),
            },
            p => Response {
                status: StatusCode::Ok,
                content_type: "text/plain",
                headers: &[],
                body: Cow::Owned(format!("path={p}").into_bytes()),
            },
        }
    }
}

/// Feed `input` in chunks of `chunk`, serving and draining everything; returns all output.
fn run(conn: &mut Connection, now: Instant, input: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        conn.handle_bytes(now, piece);
        drain(conn, now, &mut out, usize::MAX);
    }
    out
}

/// A new connection with the default limits, the instant it opened and those limits.
fn fresh() -> (Instant, Limits, Connection) {
    let now = Instant::now();
    let limits = Limits::default();
    (now, limits, Connection::new(now, limits))
}

/// The responses `conn` sends at `now` to a reader that takes everything.
fn answers(conn: &mut Connection, now: Instant) -> Vec<Parsed> {
    let mut out = Vec::new();
    drain(conn, now, &mut out, usize::MAX);
    responses(&out)
}

fn drain(conn: &mut Connection, now: Instant, out: &mut Vec<u8>, max_write: usize) {
    loop {
        conn.serve(now, &mut Echo);
        let Some(bytes) = conn.poll_transmit() else {
            break;
        };
        let n = bytes.len().min(max_write);
        out.extend_from_slice(&bytes[..n]);
        conn.handle_sent(now, n);
    }
}

/// One parsed response: (status, headers with lowercased names, body).
type Parsed = (u16, Vec<(String, String)>, Vec<u8>);

/// Split concatenated responses.
fn responses(mut raw: &[u8]) -> Vec<Parsed> {
    let mut v = Vec::new();
    while !raw.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = r.parse(raw).unwrap() else {
            panic!("partial response")
        };
        let hs: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        let len: usize = hs
            .iter()
            .find(|(k, _)| k == "content-length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        let code = r.code.unwrap();
        // A HEAD response (the last in these tests) has no body.
        let body_len = len.min(raw.len() - n);
        v.push((code, hs, raw[n..n + body_len].to_vec()));
        raw = &raw[n + body_len..];
    }
    v
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

const GET: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn a_get_is_answered_and_kept_alive() {
    let now = Instant::now();
    let mut c = Connection::new(now, Limits::default());
    let out = run(&mut c, now, GET, usize::MAX);
    let r = responses(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 200);
    assert_eq!(r[0].2, b"path=/metrics");
    assert_eq!(header(&r[0].1, "connection"), Some("keep-alive"));
    assert_eq!(header(&r[0].1, "cache-control"), Some("no-store"));
    assert!(!c.is_closed());
    // Idle now: the keep-alive timer.
    assert_eq!(c.poll_timeout(), Some(now + Limits::default().idle_timeout));
    c.handle_timeout(now + Limits::default().idle_timeout);
    assert!(c.is_closed());
}

#[test]
fn byte_by_byte_is_the_same_as_at_once() {
    let now = Instant::now();
    let input = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let mut whole = Connection::new(now, Limits::default());
    let a = run(&mut whole, now, input, usize::MAX);
    for chunk in [1, 2, 3, 7] {
        let mut c = Connection::new(now, Limits::default());
        assert_eq!(run(&mut c, now, input, chunk), a, "chunk {chunk}");
        assert!(c.is_closed());
    }
    assert!(whole.is_closed());
    let text = String::from_utf8(a).unwrap();
    // The HEAD response has the GET's length and no body.
    assert!(text.ends_with("Content-Length: 7\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"), "{text}");
    assert!(text.contains("path=/a"));
}

#[test]
fn pipelined_requests_are_answered_in_order_one_at_a_time() {
    let now = Instant::now();
    let mut c = Connection::new(now, Limits::default());
    let mut input = Vec::new();
    for p in ["/1", "/2", "/3"] {
        input.extend_from_slice(format!("GET {p} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
    }
    c.handle_bytes(now, &input);
    // One request at a time: the second waits for the first response to go out.
    let r1 = c.poll_request().unwrap();
    assert_eq!(r1.path, "/1");
    assert!(c.poll_request().is_none());
    c.respond(now, Echo.respond(now, &r1));
    assert!(c.poll_request().is_none());
    let mut out = Vec::new();
    // Slow reader: three bytes per write.
    drain(&mut c, now, &mut out, 3);
    let r = responses(&out);
    let bodies: Vec<&[u8]> = r.iter().map(|x| x.2.as_slice()).collect();
    assert_eq!(bodies, [&b"path=/1"[..], b"path=/2", b"path=/3"]);
    assert_eq!(c.served(), 3);
}

#[test]
fn malformed_requests_get_400_and_close() {
    let now = Instant::now();
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\n\r\n",                       // no Host
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", // two Hosts
        b"GET x HTTP/1.1\r\nHost: a\r\n\r\n",             // not a path
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", // no colon
        b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let mut c = Connection::new(now, Limits::default());
        let out = run(&mut c, now, bad, usize::MAX);
        let r = responses(&out);
        assert_eq!(r.len(), 1, "{}", bad.escape_ascii());
        assert_eq!(r[0].0, 400, "{}", bad.escape_ascii());
        assert_eq!(header(&r[0].1, "connection"), Some("close"));
        assert!(c.is_closed());
    }
}

#[test]
fn other_methods_versions_and_bodies() {
    let now = Instant::now();
    for (req, code) in [
        (
            &b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"[..],
            405,
        ),
        (b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            413,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            413,
        ),
    ] {
        let mut c = Connection::new(now, Limits::default());
        let out = run(&mut c, now, req, usize::MAX);
        let r = responses(&out);
        assert_eq!(r.len(), 1, "{}", req.escape_ascii());
        assert_eq!(r[0].0, code, "{}", req.escape_ascii());
        if code == 405 {
            assert_eq!(header(&r[0].1, "allow"), Some("GET, HEAD"));
        }
        assert!(c.is_closed());
    }
    // Content-Length: 0 is no body.
    let mut c = Connection::new(now, Limits::default());
    let out = run(
        &mut c,
        now,
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        usize::MAX,
    );
    assert_eq!(responses(&out)[0].0, 200);
}

#[test]
fn oversized_heads_get_431_at_the_limit() {
    let now = Instant::now();
    let limits = Limits::default();
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Fill: ".to_vec();
    big.resize(limits.max_head * 3, b'a');
    for chunk in [1, 100, usize::MAX] {
        let mut c = Connection::new(now, limits);
        let out = run(&mut c, now, &big, chunk);
        let r = responses(&out);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 431);
        assert!(c.is_closed());
    }
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut c = Connection::new(now, limits);
    let r = responses(&run(&mut c, now, &many, usize::MAX));
    assert_eq!(r[0].0, 431);
}

#[test]
fn http10_closes_unless_asked_and_close_is_honoured() {
    // (request, the response's Connection header, whether the connection is closed after it)
    for (request, connection, closed) in [
        (&b"GET / HTTP/1.0\r\n\r\n"[..], "close", true),
        (
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            "keep-alive",
            false,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n",
            "close",
            true,
        ),
    ] {
        let (now, _, mut c) = fresh();
        let r = responses(&run(&mut c, now, request, usize::MAX));
        assert_eq!(
            header(&r[0].1, "connection"),
            Some(connection),
            "{request:?}"
        );
        assert_eq!(c.is_closed(), closed, "{request:?}");
    }
}

#[test]
fn the_request_cap_closes_after_the_last() {
    let now = Instant::now();
    let limits = Limits {
        max_requests: 2,
        ..Limits::default()
    };
    let mut c = Connection::new(now, limits);
    let mut input = Vec::new();
    for _ in 0..3 {
        input.extend_from_slice(GET);
    }
    let r = responses(&run(&mut c, now, &input, usize::MAX));
    assert_eq!(r.len(), 2);
    assert_eq!(header(&r[1].1, "connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn slow_heads_get_408_and_silent_ones_are_closed() {
    // Nothing at all: closed without a word.
    let (t0, limits, mut c) = fresh();
    assert_eq!(c.poll_timeout(), Some(t0 + limits.header_timeout));
    c.handle_timeout(t0 + limits.header_timeout - Duration::from_millis(1));
    assert!(!c.is_closed());
    c.handle_timeout(t0 + limits.header_timeout);
    assert!(c.is_closed());
    assert!(c.poll_transmit().is_none());
    // Part of a head, then silence (slowloris): 408, then closed.
    let mut c = Connection::new(t0, limits);
    c.handle_bytes(t0, b"GET / HTTP/1.1\r\nHo");
    let late = t0 + limits.header_timeout;
    c.handle_timeout(late);
    assert_eq!(answers(&mut c, late)[0].0, 408);
    assert!(c.is_closed());
    // Dribbling a byte at a time does not move the head deadline.
    let mut c = Connection::new(t0, limits);
    for (i, b) in b"GET / HTTP/1.1\r\nX: ".iter().enumerate() {
        c.handle_bytes(t0 + Duration::from_millis(500 * i as u64), &[*b]);
    }
    assert_eq!(c.poll_timeout(), Some(t0 + limits.header_timeout));
}

#[test]
fn a_reader_that_stops_is_closed() {
    let (t0, limits, mut c) = fresh();
    c.handle_bytes(t0, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    c.serve(t0, &mut Echo);
    let n = 1000;
    assert!(c.poll_transmit().unwrap().len() > n);
    c.handle_sent(t0, n);
    let t1 = t0 + Duration::from_secs(1);
    c.handle_sent(t1, n);
    assert_eq!(c.poll_timeout(), Some(t1 + limits.send_timeout));
    c.handle_timeout(t1 + limits.send_timeout);
    assert!(c.is_closed());
}

#[test]
fn eof_mid_request_closes_and_after_a_request_still_answers() {
    let now = Instant::now();
    let mut c = Connection::new(now, Limits::default());
    c.handle_bytes(now, b"GET / HT");
    c.handle_eof(now);
    assert!(c.is_closed());
    // A whole request then end of stream (a half-close): answered, then closed.
    let mut c = Connection::new(now, Limits::default());
    c.handle_bytes(now, GET);
    c.handle_eof(now);
    let r = answers(&mut c, now);
    assert_eq!(r[0].0, 200);
    assert!(c.is_closed());
}

#[test]
fn input_far_ahead_of_the_responses_closes_after_the_current_one() {
    let (now, limits, mut c) = fresh();
    c.handle_bytes(now, GET);
    c.serve(now, &mut Echo);
    // While the response waits to be written, the client sends more than the buffer holds.
    let flood = GET.repeat(limits.max_head / GET.len() + 10);
    c.handle_bytes(now, &flood);
    assert_eq!(answers(&mut c, now).len(), 1);
    assert!(c.is_closed());
    // Arriving before the first response is built, the flood makes it say close.
    let mut c = Connection::new(now, limits);
    let mut input = GET.to_vec();
    input.extend_from_slice(&flood);
    c.handle_bytes(now, &input);
    let r = answers(&mut c, now);
    assert_eq!(r.len(), 1);
    assert_eq!(header(&r[0].1, "connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn leading_blank_lines_and_bare_newlines_are_accepted() {
    let now = Instant::now();
    let mut c = Connection::new(now, Limits::default());
    let r = responses(&run(
        &mut c,
        now,
        b"\r\n\r\nGET /x HTTP/1.1\nHost: a\n\n",
        1,
    ));
    assert_eq!(r[0].0, 200);
    assert_eq!(r[0].2, b"path=/x");
}

#[test]
fn absolute_form_targets() {
    assert_eq!(origin_path("/a?b"), Some("/a"));
    assert_eq!(origin_path("http://h:1/metrics?x"), Some("/metrics"));
    assert_eq!(origin_path("HTTPS://h"), Some("/"));
    assert_eq!(origin_path("ftp://h/"), None);
    assert_eq!(origin_path("*"), None);
}

proptest::proptest! {
    /// Any bytes in any chunking: no panic, output bounded, and the connection ends up
    /// answered or waiting, never stuck with bytes it will not send.
    #[test]
    fn arbitrary_input_never_panics(
        input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
        chunk in 1usize..64,
    ) {
        let now = Instant::now();
        let mut c = Connection::new(now, Limits { max_head: 512, ..Limits::default() });
        let out = run(&mut c, now, &input, chunk);
        proptest::prop_assert!(out.len() <= 64 * 1024 * 8);
        proptest::prop_assert!(c.poll_transmit().is_none());
        c.handle_timeout(now + Duration::from_secs(60));
        proptest::prop_assert!(c.is_closed() || c.poll_transmit().is_some());
    }
}
