//! The receiving (client) side of a TFTP read, as a sans-IO state machine.
//!
//! It behaves like boot firmware, so that tests and the load tester exercise servers the way PXE ROMs,
//! EDK2 and iPXE do (../shared/PROTOCOL-NOTES.md):
//! - RRQ with the configured options; strict OACK validation (EDK2: no option the client did not ask for,
//!   no larger blksize or windowsize, timeout unchanged) answered with ERROR 8 when it fails;
//! - a size probe ([`ClientConfig::probe`]): read tsize from the OACK, then end with ERROR 0 (BIOS ROMs)
//!   or ERROR 8 (EDK2) and report [`Event::ProbeDone`];
//! - ACK after exactly `windowsize` blocks or at the last block; on a block out of order, re-ACK the
//!   last in-order block at once (EDK2); a duplicate in lockstep is re-ACKed (RFC 1350);
//! - block-number rollover past 65535 to 0;
//! - a fixed retransmission timeout and retry count (EDK2: 4 s x 6), resending the last packet.
//!
//! Calling contract as for the server transfer: `handle_datagram`/`handle_timeout`, then drain
//! `poll_transmit`; in-order payload comes back in [`Event::Data`] borrowing the datagram. The driver
//! owns the sockets: it sends the first `poll_transmit` to the server's request port and everything
//! after to the transfer port the first answer came from.

use super::block::BlockNum;
use super::packet::{emit_ack, emit_error, ErrorCode, Mode, OptionWriter, Packet};
use std::time::{Duration, Instant};

/// How a probe ends after reading the OACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeEnd {
    /// ERROR 0 "TFTP Aborted" (BIOS PXE ROMs).
    Error0,
    /// ERROR 8 (EDK2).
    Error8,
}

/// What one client asks for and how it behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub mode: Mode,
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    pub tsize: bool,
    /// RFC 2349 timeout to request, in seconds.
    pub timeout_opt: Option<u8>,
    /// Extra options sent verbatim (to test servers' handling of unknown ones).
    pub extra_options: Vec<(String, String)>,
    /// Reject OACKs that grant what was not asked (EDK2 behaviour).
    pub strict_oack: bool,
    /// Only read the OACK, then end like firmware does.
    pub probe: Option<ProbeEnd>,
    /// Time without an answer before resending the last packet.
    pub retransmit: Duration,
    /// Resends before giving up.
    pub retries: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            mode: Mode::Octet,
            blksize: None,
            windowsize: None,
            tsize: false,
            timeout_opt: None,
            extra_options: Vec::new(),
            strict_oack: true,
            probe: None,
            retransmit: Duration::from_secs(4),
            retries: 6,
        }
    }
}

/// Why a client failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The server sent an ERROR.
    Server { code: ErrorCode, message: String },
    /// The OACK failed validation; ERROR 8 was sent.
    BadOack(&'static str),
    /// No answer within the retry budget.
    TimedOut,
    /// The server sent something that has no place here.
    Protocol(&'static str),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Server { code, message } => write!(f, "server error {code}: {message}"),
            ClientError::BadOack(why) => write!(f, "bad OACK: {why}"),
            ClientError::TimedOut => write!(f, "timed out"),
            ClientError::Protocol(why) => write!(f, "protocol violation: {why}"),
        }
    }
}

/// What a datagram meant to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Nothing for the caller (duplicate, out of order, control packet).
    None,
    /// In-order payload to append at `offset` (the transfer's byte offset).
    Data { offset: u64, data: &'a [u8] },
    /// The last block arrived; the file is complete.
    Finished,
    /// Probe finished: the OACK's tsize, if any.
    ProbeDone { tsize: Option<u64> },
    /// The transfer failed.
    Failed(ClientError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitFirst,
    Receiving,
    /// Complete; keeps re-ACKing the last block if the server resends it (final ACK lost).
    Finished,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    Nothing,
    Request,
    Ack(BlockNum),
    Error(ErrorCode, &'static str),
}

/// The client side of one read.
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    filename: Vec<u8>,
    state: State,
    pending: Out,
    /// The packet to resend on timeout.
    last_sent: Out,
    blksize: usize,
    window: u64,
    /// Next absolute block index expected.
    expected: u64,
    since_ack: u64,
    deadline: Option<Instant>,
    retries_left: u32,
    tsize: Option<u64>,
    /// Counters.
    pub stats: ClientStats,
}

/// Counters a load tester reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub data_received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub acks_sent: u64,
    pub timeouts: u32,
}

impl Client {
    /// A client that will request `filename` (bytes exactly as sent on the wire).
    pub fn new(filename: &[u8], cfg: ClientConfig, now: Instant) -> Self {
        let _ = now;
        Client {
            retries_left: cfg.retries,
            cfg,
            filename: filename.to_vec(),
            state: State::AwaitFirst,
            pending: Out::Request,
            last_sent: Out::Request,
            blksize: 512,
            window: 1,
            expected: 1,
            since_ack: 0,
            deadline: None,
            tsize: None,
            stats: ClientStats::default(),
        }
    }

    /// Negotiated block size (512 until an OACK says otherwise).
    pub fn blksize(&self) -> usize {
        self.blksize
    }

    /// Negotiated window size.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The tsize the server reported, if any.
    pub fn tsize(&self) -> Option<u64> {
        self.tsize
    }

    /// True once the transfer is finished or failed.
    pub fn is_over(&self) -> bool {
        matches!(self.state, State::Finished | State::Failed)
    }

    /// True once the file arrived whole.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// When to call [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitFirst | State::Receiving => self.deadline,
            _ => None,
        }
    }

    /// Build the next datagram into `buf` (>= 600 bytes); returns its length.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let out = std::mem::replace(&mut self.pending, Out::Nothing);
        let len = match out {
            Out::Nothing => return None,
            Out::Request => self.write_request(buf)?,
            Out::Ack(b) => {
                self.stats.acks_sent += 1;
                emit_ack(buf, b)
            }
            Out::Error(code, msg) => emit_error(buf, code, msg),
        };
        if matches!(self.state, State::AwaitFirst | State::Receiving) {
            self.last_sent = out;
            self.deadline = Some(now + self.cfg.retransmit);
        }
        Some(len)
    }

    fn write_request(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = OptionWriter::request(buf, false, &self.filename, self.cfg.mode).ok()?;
        if self.cfg.tsize {
            w.option("tsize", b"0").ok()?;
        }
        if let Some(b) = self.cfg.blksize {
            w.option_u64("blksize", b as u64).ok()?;
        }
        if let Some(t) = self.cfg.timeout_opt {
            w.option_u64("timeout", t as u64).ok()?;
        }
        if let Some(ws) = self.cfg.windowsize {
            w.option_u64("windowsize", ws as u64).ok()?;
        }
        for (n, v) in &self.cfg.extra_options {
            w.option(n, v.as_bytes()).ok()?;
        }
        Some(w.finish())
    }

    /// Call when the instant from [`poll_timeout`](Self::poll_timeout) has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Event<'static> {
        match self.poll_timeout() {
            Some(d) if now >= d => {}
            _ => return Event::None,
        }
        self.stats.timeouts += 1;
        if self.retries_left == 0 {
            self.state = State::Failed;
            return Event::Failed(ClientError::TimedOut);
        }
        self.retries_left -= 1;
        self.pending = match self.state {
            // Tell the sender where we are: it resumes after the last block we hold.
            State::Receiving => Out::Ack(BlockNum::from_index(self.expected - 1)),
            _ => self.last_sent,
        };
        Event::None
    }

    fn fail(
        &mut self,
        why: ClientError,
        send: Option<(ErrorCode, &'static str)>,
    ) -> Event<'static> {
        self.state = State::Failed;
        self.pending = match send {
            Some((c, m)) => Out::Error(c, m),
            None => Out::Nothing,
        };
        Event::Failed(why)
    }

    /// Feed one datagram from the server.
    pub fn handle_datagram<'a>(&mut self, datagram: &'a [u8], now: Instant) -> Event<'a> {
        let pkt = match Packet::parse(datagram) {
            Ok(p) => p,
            Err(_) => return Event::None,
        };
        match (self.state, pkt) {
            (State::Failed, _) => Event::None,
            (_, Packet::Error { code, message }) => {
                if self.state == State::Finished {
                    return Event::None;
                }
                let message = String::from_utf8_lossy(message).into_owned();
                self.fail(ClientError::Server { code, message }, None)
            }
            (State::AwaitFirst, Packet::Oack(opts)) => self.handle_oack(&opts),
            (State::AwaitFirst, Packet::Data { block, data }) if self.cfg.probe.is_none() => {
                // The server ignored our options: plain RFC 1350.
                self.blksize = 512;
                self.window = 1;
                self.state = State::Receiving;
                self.handle_data(block, data, now)
            }
            (State::AwaitFirst, Packet::Data { .. }) => {
                // A probe that got data: the server ignores options, so there is no tsize.
                self.state = State::Finished;
                self.pending = Out::Error(ErrorCode::OptionNegotiation, "no OACK");
                Event::ProbeDone { tsize: None }
            }
            (State::Receiving, Packet::Data { block, data }) => self.handle_data(block, data, now),
            (State::Finished, Packet::Data { block, .. }) => {
                // Our final ACK was lost: acknowledge again.
                if block == BlockNum::from_index(self.expected - 1) {
                    self.pending = Out::Ack(block);
                }
                Event::None
            }
            (State::Receiving, Packet::Oack(_)) => {
                // Our ACK 0 was lost and the OACK came again.
                if self.expected == 1 {
                    self.pending = Out::Ack(BlockNum::ZERO);
                }
                Event::None
            }
            (State::Finished, _) => Event::None,
            _ => self.fail(
                ClientError::Protocol("unexpected packet"),
                Some((ErrorCode::IllegalOperation, "unexpected packet")),
            ),
        }
    }

    fn handle_oack(&mut self, opts: &super::packet::OptionList<'_>) -> Event<'static> {
        let num = |v: &[u8]| -> Option<u64> { std::str::from_utf8(v).ok()?.parse::<u64>().ok() };
        for (name, value) in opts.iter() {
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            let strict = self.cfg.strict_oack;
            if is("blksize") {
                match (num(value), self.cfg.blksize) {
                    (Some(v), Some(asked)) if (8..=asked as u64).contains(&v) => {
                        self.blksize = v as usize
                    }
                    _ => return self.bad_oack("blksize not acceptable"),
                }
            } else if is("windowsize") {
                match (num(value), self.cfg.windowsize) {
                    (Some(v), Some(asked)) if (1..=asked as u64).contains(&v) => self.window = v,
                    _ => return self.bad_oack("windowsize not acceptable"),
                }
            } else if is("tsize") {
                match num(value) {
                    Some(v) if self.cfg.tsize => self.tsize = Some(v),
                    _ if strict => return self.bad_oack("tsize not asked or not a number"),
                    _ => {}
                }
            } else if is("timeout") {
                match (num(value), self.cfg.timeout_opt) {
                    (Some(v), Some(asked)) if v == asked as u64 => {}
                    _ if strict => return self.bad_oack("timeout changed or not asked"),
                    _ => {}
                }
            } else if strict {
                return self.bad_oack("option not asked for");
            }
        }
        if let Some(end) = self.cfg.probe {
            self.state = State::Finished;
            self.pending = match end {
                ProbeEnd::Error0 => Out::Error(ErrorCode::NotDefined, "TFTP Aborted"),
                ProbeEnd::Error8 => Out::Error(ErrorCode::OptionNegotiation, "probe done"),
            };
            return Event::ProbeDone { tsize: self.tsize };
        }
        self.state = State::Receiving;
        self.retries_left = self.cfg.retries;
        self.pending = Out::Ack(BlockNum::ZERO);
        Event::None
    }

    fn bad_oack(&mut self, why: &'static str) -> Event<'static> {
        self.fail(
            ClientError::BadOack(why),
            Some((ErrorCode::OptionNegotiation, why)),
        )
    }

    fn handle_data<'a>(&mut self, block: BlockNum, data: &'a [u8], now: Instant) -> Event<'a> {
        let expected = BlockNum::from_index(self.expected);
        if block != expected {
            if expected.is_after(block) {
                self.stats.duplicates += 1;
            } else {
                self.stats.out_of_order += 1;
            }
            // Duplicate in lockstep: our ACK was lost, re-ACK. Gap or duplicate in a window: re-ACK
            // the last block received in order, at once (EDK2), so the sender resumes after it.
            self.since_ack = 0;
            self.pending = Out::Ack(expected.prev());
            return Event::None;
        }
        if data.len() > self.blksize {
            return self.fail(
                ClientError::Protocol("block larger than blksize"),
                Some((ErrorCode::IllegalOperation, "block larger than blksize")),
            );
        }
        self.stats.data_received += 1;
        self.retries_left = self.cfg.retries;
        let offset = (self.expected - 1) * self.blksize as u64;
        self.expected += 1;
        self.since_ack += 1;
        if data.len() < self.blksize {
            self.state = State::Finished;
            self.pending = Out::Ack(block);
            // The caller appends `data`, then sees the transfer is over via is_finished().
            return Event::Data { offset, data };
        }
        if self.since_ack >= self.window {
            self.since_ack = 0;
            self.pending = Out::Ack(block);
        } else {
            // Waiting for the rest of the window: the timer runs from the last block received.
            self.deadline = Some(now + self.cfg.retransmit);
        }
        Event::Data { offset, data }
    }
}
