//! A sans-IO HTTP/1.1 server connection: bytes in, requests out, responses in, bytes out.
//!
//! Contract: a [`Connection`] is one accepted TCP stream of the metrics/status listener. It holds
//! no socket, reads no clock (every call takes `now`), spawns nothing, and uses one crate,
//! `httparse`, to parse a request head once its blank line has arrived. The driver:
//!
//! 1. on bytes from the socket: [`Connection::handle_bytes`]; on end of stream:
//!    [`Connection::handle_eof`];
//! 2. then, while [`Connection::poll_request`] gives a [`Request`], answers it with
//!    [`Connection::respond`] (at once: the machine waits for it) — or calls
//!    [`Connection::serve`] with a [`Handler`], which does both;
//! 3. while [`Connection::poll_transmit`] gives bytes, writes them and reports how many went with
//!    [`Connection::handle_sent`] (a partial write is fine: the same bytes stay pending), then
//!    goes back to 2 (a pipelined request may be waiting);
//! 4. arms a timer at [`Connection::poll_timeout`] and calls [`Connection::handle_timeout`] when it
//!    fires;
//! 5. closes the socket once [`Connection::is_closed`].
//!
//! What it accepts: `GET` and `HEAD`, HTTP/1.0 and HTTP/1.1 (1.1 needs exactly one `Host`), an
//! origin-form target (`/path?query`) or an absolute-form one, no body (`Content-Length: 0` at
//! most, no `Transfer-Encoding`). Anything else gets one error response with `Connection: close`:
//! 400 (malformed, no `Host`), 405 (another method, with `Allow`), 413 (a body), 431 (a head over
//! [`Limits::max_head`] bytes or [`MAX_HEADERS`] headers), 505 (another version), 408 (the head did
//! not arrive within [`Limits::header_timeout`]).
//!
//! Bounded: one input buffer of at most [`Limits::max_head`] bytes, one response at a time
//! (the next pipelined request is read only when the previous response has gone out), at most
//! [`Limits::max_requests`] per connection, an idle keep-alive connection closed after
//! [`Limits::idle_timeout`], a client that stops reading closed after [`Limits::send_timeout`]
//! without progress, and a client that sends more than `max_head` bytes ahead of its responses
//! closed after the response in progress. How many connections there are is the driver's cap.

use std::borrow::Cow;
use std::time::{Duration, Instant};

/// Most header fields in a request.
pub const MAX_HEADERS: usize = 32;

/// The bounds of one connection (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a request head, and of input buffered ahead of the responses.
    pub max_head: usize,
    /// Time for a request head to arrive, from its first byte (or from the connection's start).
    pub header_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time a response may wait for the client to read any of it.
    pub send_timeout: Duration,
    /// Requests served on one connection; the last gets `Connection: close`.
    pub max_requests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8192,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(30),
            max_requests: 100,
        }
    }
}

/// The methods served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    /// As `GET`, without the body.
    Head,
}

/// One request, for the [`Handler`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The target's path, without the query (as sent: not percent-decoded).
    pub path: String,
}

/// The statuses this server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCode {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    ContentTooLarge,
    HeaderFieldsTooLarge,
    VersionNotSupported,
    ServiceUnavailable,
}

impl StatusCode {
    /// The number.
    pub fn code(self) -> u16 {
        match self {
            StatusCode::Ok => 200,
            StatusCode::BadRequest => 400,
            StatusCode::NotFound => 404,
            StatusCode::MethodNotAllowed => 405,
            StatusCode::RequestTimeout => 408,
            StatusCode::ContentTooLarge => 413,
            StatusCode::HeaderFieldsTooLarge => 431,
            StatusCode::VersionNotSupported => 505,
            StatusCode::ServiceUnavailable => 503,
        }
    }

    /// The reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            StatusCode::Ok => "OK",
            StatusCode::BadRequest => "Bad Request",
            StatusCode::NotFound => "Not Found",
            StatusCode::MethodNotAllowed => "Method Not Allowed",
            StatusCode::RequestTimeout => "Request Timeout",
            StatusCode::ContentTooLarge => "Content Too Large",
            StatusCode::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            StatusCode::VersionNotSupported => "HTTP Version Not Supported",
            StatusCode::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// A response from the [`Handler`]. `Content-Length`, `Connection`, `Cache-Control: no-store`
/// and `X-Content-Type-Options: nosniff` are added by the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: StatusCode,
    pub content_type: &'static str,
    /// More header fields (name, value).
    pub headers: &'static [(&'static str, &'static str)],
    pub body: Cow<'static, [u8]>,
}

impl Response {
    /// A short plain-text response: the status line's words and a newline.
    pub fn plain(status: StatusCode) -> Response {
        let body = match status {
            StatusCode::Ok => "OK\n",
            StatusCode::BadRequest => "400 Bad Request\n",
            StatusCode::NotFound => "404 Not Found\n",
            StatusCode::MethodNotAllowed => "405 Method Not Allowed: GET and HEAD only\n",
            StatusCode::RequestTimeout => "408 Request Timeout\n",
            StatusCode::ContentTooLarge => "413 Content Too Large: requests have no body\n",
            StatusCode::HeaderFieldsTooLarge => "431 Request Header Fields Too Large\n",
            StatusCode::VersionNotSupported => "505 HTTP Version Not Supported\n",
            StatusCode::ServiceUnavailable => "503 Service Unavailable\n",
        };
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: if status == StatusCode::MethodNotAllowed {
                &[("Allow", "GET, HEAD")]
            } else {
                &[]
            },
            body: Cow::Borrowed(body.as_bytes()),
        }
    }
}

/// What answers requests (the status site, a test's stub).
pub trait Handler {
    /// The response to `req` at `now`.
    fn respond(&mut self, now: Instant, req: &Request) -> Response;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Reading,
    /// A request was parsed; waiting for [`Connection::respond`].
    Handling,
    /// A response is going out.
    Writing,
    /// Done: the driver closes the socket.
    Closed,
}

/// One HTTP connection (see the module docs).
#[derive(Debug)]
pub struct Connection {
    limits: Limits,
    phase: Phase,
    input: Vec<u8>,
    /// Bytes of `input` already searched for the end of the head.
    scanned: usize,
    /// Input was dropped (more than `max_head` ahead): close after the response in progress.
    overflowed: bool,
    /// The peer ended its half of the stream.
    eof: bool,
    request: Option<Request>,
    /// Whether the request being answered is `HEAD`.
    head_only: bool,
    /// Whether the connection closes after the response being answered.
    close_after: bool,
    output: Vec<u8>,
    sent: usize,
    served: u32,
    deadline: Option<Instant>,
}

impl Connection {
    /// A connection accepted at `now`.
    pub fn new(now: Instant, limits: Limits) -> Self {
        Connection {
            limits,
            phase: Phase::Reading,
            input: Vec::with_capacity(limits.max_head.min(16 * 1024)),
            scanned: 0,
            overflowed: false,
            eof: false,
            request: None,
            head_only: false,
            close_after: false,
            output: Vec::new(),
            sent: 0,
            served: 0,
            deadline: Some(now + limits.header_timeout),
        }
    }

    /// Bytes read from the stream.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if self.phase == Phase::Closed || bytes.is_empty() {
            return;
        }
        if self.overflowed {
            return;
        }
        let room = self.limits.max_head.saturating_sub(self.input.len());
        if bytes.len() > room {
            self.overflowed = true;
            if self.phase == Phase::Reading {
                // Keep what fits: a whole head in it is answered (then close), else 431.
                self.input.extend_from_slice(&bytes[..room]);
            } else {
                // Far ahead of the responses: bytes are lost, close after this response.
                self.close_after = true;
            }
        } else {
            if self.phase == Phase::Reading && self.input.is_empty() && self.served > 0 {
                // The first byte of a kept-alive request: the head timer starts.
                self.deadline = Some(now + self.limits.header_timeout);
            }
            self.input.extend_from_slice(bytes);
        }
        self.advance(now);
    }

    /// The peer ended its half of the stream (a read of 0 bytes).
    pub fn handle_eof(&mut self, now: Instant) {
        self.eof = true;
        match self.phase {
            Phase::Reading => {
                self.advance(now);
                if self.phase == Phase::Reading {
                    // No whole request will come: nothing to answer.
                    self.close();
                }
            }
            Phase::Handling | Phase::Writing => {}
            Phase::Closed => {}
        }
    }

    /// The next request to answer with [`Connection::respond`]; one at a time.
    pub fn poll_request(&mut self) -> Option<Request> {
        if self.phase == Phase::Handling {
            self.request.take()
        } else {
            None
        }
    }

    /// The response to the request [`Connection::poll_request`] gave.
    pub fn respond(&mut self, now: Instant, response: Response) {
        if self.phase != Phase::Handling {
            return;
        }
        self.start_response(now, response);
    }

    /// Answer every request that is waiting with `handler` (steps 2 of the module docs).
    pub fn serve(&mut self, now: Instant, handler: &mut impl Handler) {
        while let Some(req) = self.poll_request() {
            let resp = handler.respond(now, &req);
            self.respond(now, resp);
        }
    }

    /// The bytes to write next, if any. They stay the same until [`Connection::handle_sent`].
    pub fn poll_transmit(&self) -> Option<&[u8]> {
        (self.phase == Phase::Writing && self.sent < self.output.len())
            .then(|| &self.output[self.sent..])
    }

    /// `n` bytes of [`Connection::poll_transmit`] were written.
    pub fn handle_sent(&mut self, now: Instant, n: usize) {
        if self.phase != Phase::Writing || n == 0 {
            return;
        }
        self.sent = (self.sent + n).min(self.output.len());
        self.deadline = Some(now + self.limits.send_timeout);
        if self.sent < self.output.len() {
            return;
        }
        self.output.clear();
        self.sent = 0;
        if self.close_after {
            self.close();
            return;
        }
        self.phase = Phase::Reading;
        self.deadline = Some(if self.input.is_empty() {
            now + self.limits.idle_timeout
        } else {
            now + self.limits.header_timeout
        });
        self.advance(now);
        if self.phase == Phase::Reading && self.eof {
            self.close();
        }
    }

    /// When [`Connection::handle_timeout`] is due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            None
        } else {
            self.deadline
        }
    }

    /// The timer of [`Connection::poll_timeout`] fired.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.phase {
            Phase::Reading if !self.input.is_empty() => {
                self.fail(now, StatusCode::RequestTimeout);
                // The 408 gets its own send window.
            }
            Phase::Reading | Phase::Writing => self.close(),
            // The handler answers at once; a driver that does not is not waited for.
            Phase::Handling => self.close(),
            Phase::Closed => {}
        }
    }

    /// Whether the connection is done: the driver closes the socket.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Requests parsed on this connection.
    pub fn served(&self) -> u32 {
        self.served
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.deadline = None;
        self.input = Vec::new();
        self.output = Vec::new();
        self.request = None;
    }

    /// An error response, then close.
    fn fail(&mut self, now: Instant, status: StatusCode) {
        self.input.clear();
        self.scanned = 0;
        self.request = None;
        self.head_only = false;
        self.close_after = true;
        self.overflowed = true; // read nothing more
        self.start_response(now, Response::plain(status));
    }

    fn start_response(&mut self, now: Instant, r: Response) {
        use std::io::Write as _;
        let close = self.close_after || self.overflowed;
        let out = &mut self.output;
        out.clear();
        self.sent = 0;
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
            r.status.code(),
            r.status.reason(),
            r.content_type,
            r.body.len()
        );
        for (name, value) in r.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        let _ = write!(
            out,
            "Connection: {}\r\n\r\n",
            if close { "close" } else { "keep-alive" }
        );
        if !self.head_only {
            out.extend_from_slice(&r.body);
        }
        self.close_after = close;
        self.phase = Phase::Writing;
        self.deadline = Some(now + self.limits.send_timeout);
    }

    /// Parse the next request if one is complete and nothing is in progress.
    fn advance(&mut self, now: Instant) {
        if self.phase != Phase::Reading {
            return;
        }
        // Empty lines before a request line are ignored (RFC 9112 section 2.2).
        let blank = self
            .input
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            self.input.drain(..blank);
            self.scanned = 0;
        }
        let Some(end) = self.find_end() else {
            if self.input.len() >= self.limits.max_head {
                self.fail(now, StatusCode::HeaderFieldsTooLarge);
            } else if self.overflowed {
                // Bytes were dropped: what is left is no request.
                self.close();
            }
            return;
        };
        let parsed = self.parse(end);
        self.input.drain(..end);
        self.scanned = 0;
        match parsed {
            Ok((req, keep_alive)) => {
                self.served += 1;
                self.head_only = req.method == Method::Head;
                self.close_after = !keep_alive
                    || self.served >= self.limits.max_requests
                    || self.eof
                    || self.overflowed;
                self.request = Some(req);
                self.phase = Phase::Handling;
            }
            Err(status) => self.fail(now, status),
        }
    }

    /// The length of the head (through its blank line), if it has arrived. Scans each byte once.
    fn find_end(&mut self) -> Option<usize> {
        let buf = &self.input;
        let from = self.scanned.saturating_sub(3);
        for i in from..buf.len() {
            if buf[i] == b'\n' {
                if i >= 1 && buf[i - 1] == b'\n' {
                    return Some(i + 1);
                }
                if i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n' {
                    return Some(i + 1);
                }
            }
        }
        self.scanned = buf.len();
        None
    }

    /// The request in `input[..end]` and whether the connection may stay open after it.
    fn parse(&self, end: usize) -> Result<(Request, bool), StatusCode> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.input[..end]) {
            Ok(httparse::Status::Complete(n)) if n == end => {}
            Ok(_) => return Err(StatusCode::BadRequest),
            Err(httparse::Error::TooManyHeaders) => return Err(StatusCode::HeaderFieldsTooLarge),
            Err(httparse::Error::Version) => return Err(StatusCode::VersionNotSupported),
            Err(_) => return Err(StatusCode::BadRequest),
        }
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return Err(StatusCode::BadRequest);
        };
        let method = match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            _ => return Err(StatusCode::MethodNotAllowed),
        };
        let mut host = 0;
        let mut keep_alive = version == 1;
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                host += 1;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(StatusCode::ContentTooLarge);
            } else if name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value).map_err(|_| StatusCode::BadRequest)?;
                match v.trim().parse::<u64>() {
                    Ok(0) => {}
                    Ok(_) => return Err(StatusCode::ContentTooLarge),
                    Err(_) => return Err(StatusCode::BadRequest),
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let t = token.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                        keep_alive = true;
                    }
                }
            }
        }
        if version == 1 && host != 1 || host > 1 {
            return Err(StatusCode::BadRequest);
        }
        let path = origin_path(target).ok_or(StatusCode::BadRequest)?;
        Ok((
            Request {
                method,
                path: path.to_owned(),
            },
            keep_alive,
        ))
    }
}

/// The path of a request target: origin-form `/p?q` or absolute-form `http://host/p?q`.
fn origin_path(target: &str) -> Option<&str> {
    let rest = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..8).map(str::to_ascii_lowercase);
        let after = match lower.as_deref() {
            Some(l) if l.starts_with("http://") => &target[7..],
            Some("https://") => &target[8..],
            _ => return None,
        };
        match after.find('/') {
            Some(i) => &after[i..],
            None => "/",
        }
    };
    let path = rest.split(['?', '#']).next().unwrap_or("/");
    Some(path)
}

#[cfg(test)]
mod tests {
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
        let now = Instant::now();
        let mut c = Connection::new(now, Limits::default());
        let r = responses(&run(&mut c, now, b"GET / HTTP/1.0\r\n\r\n", usize::MAX));
        assert_eq!(header(&r[0].1, "connection"), Some("close"));
        assert!(c.is_closed());
        let mut c = Connection::new(now, Limits::default());
        let r = responses(&run(
            &mut c,
            now,
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            usize::MAX,
        ));
        assert_eq!(header(&r[0].1, "connection"), Some("keep-alive"));
        assert!(!c.is_closed());
        let mut c = Connection::new(now, Limits::default());
        let r = responses(&run(
            &mut c,
            now,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n",
            usize::MAX,
        ));
        assert_eq!(header(&r[0].1, "connection"), Some("close"));
        assert!(c.is_closed());
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
        let t0 = Instant::now();
        let limits = Limits::default();
        // Nothing at all: closed without a word.
        let mut c = Connection::new(t0, limits);
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
        let mut out = Vec::new();
        drain(&mut c, late, &mut out, usize::MAX);
        assert_eq!(responses(&out)[0].0, 408);
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
        let t0 = Instant::now();
        let limits = Limits::default();
        let mut c = Connection::new(t0, limits);
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
        let mut out = Vec::new();
        drain(&mut c, now, &mut out, usize::MAX);
        let r = responses(&out);
        assert_eq!(r[0].0, 200);
        assert!(c.is_closed());
    }

    #[test]
    fn input_far_ahead_of_the_responses_closes_after_the_current_one() {
        let now = Instant::now();
        let limits = Limits::default();
        let mut c = Connection::new(now, limits);
        c.handle_bytes(now, GET);
        c.serve(now, &mut Echo);
        // While the response waits to be written, the client sends more than the buffer holds.
        let flood = GET.repeat(limits.max_head / GET.len() + 10);
        c.handle_bytes(now, &flood);
        let mut out = Vec::new();
        drain(&mut c, now, &mut out, usize::MAX);
        assert_eq!(responses(&out).len(), 1);
        assert!(c.is_closed());
        // Arriving before the first response is built, the flood makes it say close.
        let mut c = Connection::new(now, limits);
        let mut input = GET.to_vec();
        input.extend_from_slice(&flood);
        c.handle_bytes(now, &input);
        let mut out = Vec::new();
        drain(&mut c, now, &mut out, usize::MAX);
        let r = responses(&out);
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
}
