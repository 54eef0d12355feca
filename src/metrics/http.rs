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
mod tests;
