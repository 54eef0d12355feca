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
//! - a fixed retransmission timeout and retry count (EDK2: 4 s x 6), resending the last packet;
//! - RFC 1350 transfer IDs: the first answer fixes the server's transfer address; a datagram from
//!   any other address changes nothing and is answered with ERROR 5 (counted in
//!   [`ClientStats::foreign`]).
//!
//! Calling contract (the machine shape of [`crate::proto`]): feed datagrams to
//! [`Client::handle_datagram`] and call [`Client::handle_timeout`] at [`Client::poll_timeout`];
//! after each call drain [`Client::poll_transmit`] (each [`Transmit`] names where it goes: the
//! server's request address first, its transfer address after the first answer) and
//! [`Client::poll_event`] (finished, probe done, failed). In-order payload is the return value of
//! `handle_datagram`, borrowed from the datagram: the driver writes it out or checks it, and
//! nothing is copied.

use super::block::BlockNum;
use super::options::{BlockSize, WindowSize, MAX_BLKSIZE, MIN_BLKSIZE};
use super::packet::{emit_ack, emit_error, ErrorCode, Mode, OptionList, OptionWriter, Packet};
use crate::proto::{Payload, Transmit};
use std::net::SocketAddr;
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
    /// RFC 2348 `blksize` to ask for.
    pub blksize: Option<BlockSize>,
    /// RFC 7440 `windowsize` to ask for.
    pub windowsize: Option<WindowSize>,
    /// RFC 2349 `tsize` to ask for.
    pub tsize: bool,
    /// RFC 2349 `timeout` to ask for (sent in whole seconds, 1 to 255).
    pub timeout_option: Option<Duration>,
    /// Options sent verbatim after the ones above (to test servers' handling of unknown ones,
    /// or of odd spellings).
    pub extra_options: Vec<(String, Vec<u8>)>,
    /// Reject OACKs that grant what was not asked (EDK2 behaviour). A lenient client takes any
    /// valid blksize or windowsize not above what it asked (if it asked).
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
            timeout_option: None,
            extra_options: Vec::new(),
            strict_oack: true,
            probe: None,
            retransmit: Duration::from_secs(4),
            retries: 6,
        }
    }
}

/// Why a client failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server sent an ERROR.
    #[error("server error {code}: {message}")]
    Server { code: ErrorCode, message: String },
    /// The OACK failed validation; ERROR 8 was sent.
    #[error("bad OACK: {0}")]
    BadOack(&'static str),
    /// No answer within the retry budget.
    #[error("timed out")]
    TimedOut,
    /// The server sent something that has no place here.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

/// In-order payload from [`Client::handle_datagram`], borrowed from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data<'a> {
    /// The transfer's byte offset of `bytes`.
    pub offset: u64,
    pub bytes: &'a [u8],
}

/// What the driver must know, from [`Client::poll_event`]. Each is reported once, and ends the
/// client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The last block arrived; the file is complete (the final ACK is still to be sent: drain
    /// `poll_transmit` first).
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
    /// The server's request address.
    server: SocketAddr,
    /// Its transfer address, from the first answer.
    peer: Option<SocketAddr>,
    state: State,
    pending: Out,
    /// A datagram from an unknown transfer ID, to answer with ERROR 5.
    stranger: Option<SocketAddr>,
    event: Option<Event>,
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
    /// In-order DATA blocks taken.
    pub data_received: u64,
    /// DATA blocks received again.
    pub duplicates: u64,
    /// DATA blocks ahead of the expected one.
    pub out_of_order: u64,
    pub acks_sent: u64,
    pub timeouts: u32,
    /// Datagrams from an address other than the transfer's (answered with ERROR 5).
    pub foreign: u64,
}

impl Client {
    /// A client that will request `filename` (bytes exactly as sent on the wire) from the
    /// server's request address `server`.
    pub fn new(server: SocketAddr, filename: &[u8], cfg: ClientConfig, now: Instant) -> Self {
        let _ = now;
        Client {
            retries_left: cfg.retries,
            cfg,
            filename: filename.to_vec(),
            server,
            peer: None,
            state: State::AwaitFirst,
            pending: Out::Request,
            stranger: None,
            event: None,
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

    /// The server's transfer address, once it answered.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// True once the transfer is finished or failed.
    pub fn is_over(&self) -> bool {
        matches!(self.state, State::Finished | State::Failed)
    }

    /// True once the file arrived whole (or the probe ended).
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

    /// What the driver must know (see [`Event`]).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.event.take()
    }

    /// Build the next datagram into `buf` (>= 600 bytes, or room for the request's options).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(to) = self.stranger.take() {
            let len = emit_error(buf, ErrorCode::UnknownTid, "unknown transfer ID");
            return Some(Transmit {
                dest: to,
                payload: Payload::Datagram(len),
            });
        }
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
        let dest = match out {
            Out::Request => self.server,
            _ => self.peer.unwrap_or(self.server),
        };
        Some(Transmit {
            dest,
            payload: Payload::Datagram(len),
        })
    }

    fn write_request(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = OptionWriter::request(buf, false, &self.filename, self.cfg.mode).ok()?;
        if self.cfg.tsize {
            w.option("tsize", b"0").ok()?;
        }
        if let Some(b) = self.cfg.blksize {
            w.option_u64("blksize", b.get() as u64).ok()?;
        }
        if let Some(t) = self.cfg.timeout_option {
            w.option_u64("timeout", t.as_secs()).ok()?;
        }
        if let Some(ws) = self.cfg.windowsize {
            w.option_u64("windowsize", ws.get() as u64).ok()?;
        }
        for (n, v) in &self.cfg.extra_options {
            w.option(n, v).ok()?;
        }
        Some(w.finish())
    }

    /// Call when the instant from [`poll_timeout`](Self::poll_timeout) has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.poll_timeout() {
            Some(d) if now >= d => {}
            _ => return,
        }
        self.stats.timeouts += 1;
        if self.retries_left == 0 {
            self.state = State::Failed;
            self.event = Some(Event::Failed(ClientError::TimedOut));
            return;
        }
        self.retries_left -= 1;
        self.pending = match self.state {
            // Tell the sender where we are: it resumes after the last block we hold.
            State::Receiving => Out::Ack(BlockNum::from_index(self.expected - 1)),
            _ => self.last_sent,
        };
    }

    fn fail(&mut self, why: ClientError, send: Option<(ErrorCode, &'static str)>) {
        self.state = State::Failed;
        self.pending = match send {
            Some((c, m)) => Out::Error(c, m),
            None => Out::Nothing,
        };
        self.event = Some(Event::Failed(why));
    }

    fn finish(&mut self, event: Event, then: Out) {
        self.state = State::Finished;
        self.pending = then;
        self.event = Some(event);
    }

    /// Feed one datagram that arrived from `from`. Returns the in-order payload it carried, if
    /// any.
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &'a [u8],
    ) -> Option<Data<'a>> {
        match self.peer {
            None if self.state == State::AwaitFirst => self.peer = Some(from),
            Some(p) if p != from => {
                // RFC 1350: another transfer ID gets ERROR 5 and changes nothing.
                self.stats.foreign += 1;
                self.stranger = Some(from);
                return None;
            }
            _ => {}
        }
        let pkt = Packet::parse(datagram).ok()?;
        match (self.state, pkt) {
            (State::Failed, _) => None,
            (_, Packet::Error { code, message }) => {
                if self.state != State::Finished {
                    let message = String::from_utf8_lossy(message).into_owned();
                    self.fail(ClientError::Server { code, message }, None);
                }
                None
            }
            (State::AwaitFirst, Packet::Oack(opts)) => {
                self.handle_oack(&opts);
                None
            }
            (State::AwaitFirst, Packet::Data { block, data }) if self.cfg.probe.is_none() => {
                // The server ignored our options: plain RFC 1350.
                self.blksize = 512;
                self.window = 1;
                self.state = State::Receiving;
                self.handle_data(block, data, now)
            }
            (State::AwaitFirst, Packet::Data { .. }) => {
                // A probe that got data: the server ignores options, so there is no tsize.
                self.finish(
                    Event::ProbeDone { tsize: None },
                    Out::Error(ErrorCode::OptionNegotiation, "no OACK"),
                );
                None
            }
            (State::Receiving, Packet::Data { block, data }) => self.handle_data(block, data, now),
            (State::Finished, Packet::Data { block, .. }) => {
                // Our final ACK was lost: acknowledge again.
                if block == BlockNum::from_index(self.expected - 1) {
                    self.pending = Out::Ack(block);
                }
                None
            }
            (State::Receiving, Packet::Oack(_)) => {
                // Our ACK 0 was lost and the OACK came again.
                if self.expected == 1 {
                    self.pending = Out::Ack(BlockNum::ZERO);
                }
                None
            }
            (State::Finished, _) => None,
            _ => {
                self.fail(
                    ClientError::Protocol("unexpected packet"),
                    Some((ErrorCode::IllegalOperation, "unexpected packet")),
                );
                None
            }
        }
    }

    fn handle_oack(&mut self, opts: &OptionList<'_>) {
        let num = |v: &[u8]| -> Option<u64> { std::str::from_utf8(v).ok()?.parse::<u64>().ok() };
        let strict = self.cfg.strict_oack;
        for (name, value) in opts.iter() {
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("blksize") {
                let asked = self.cfg.blksize.map(|b| b.get() as u64);
                let most = match asked {
                    Some(a) => a,
                    None if !strict => MAX_BLKSIZE as u64,
                    None => 0,
                };
                match num(value) {
                    Some(v) if (MIN_BLKSIZE as u64..=most).contains(&v) => {
                        self.blksize = v as usize
                    }
                    _ => return self.bad_oack("blksize not acceptable"),
                }
            } else if is("windowsize") {
                let asked = self.cfg.windowsize.map(|w| w.get() as u64);
                let most = match asked {
                    Some(a) => a,
                    None if !strict => u16::MAX as u64,
                    None => 0,
                };
                match num(value) {
                    Some(v) if (1..=most).contains(&v) => self.window = v,
                    _ => return self.bad_oack("windowsize not acceptable"),
                }
            } else if is("tsize") {
                match num(value) {
                    Some(v) if self.cfg.tsize => self.tsize = Some(v),
                    _ if strict => return self.bad_oack("tsize not asked or not a number"),
                    _ => {}
                }
            } else if is("timeout") {
                let asked = self.cfg.timeout_option.map(|t| t.as_secs());
                match num(value) {
                    Some(v) if Some(v) == asked => {}
                    _ if strict => return self.bad_oack("timeout changed or not asked"),
                    _ => {}
                }
            } else if strict {
                return self.bad_oack("option not asked for");
            }
        }
        if let Some(end) = self.cfg.probe {
            let error = match end {
                ProbeEnd::Error0 => Out::Error(ErrorCode::NotDefined, "TFTP Aborted"),
                ProbeEnd::Error8 => Out::Error(ErrorCode::OptionNegotiation, "probe done"),
            };
            return self.finish(Event::ProbeDone { tsize: self.tsize }, error);
        }
        self.state = State::Receiving;
        self.retries_left = self.cfg.retries;
        self.pending = Out::Ack(BlockNum::ZERO);
    }

    fn bad_oack(&mut self, why: &'static str) {
        self.fail(
            ClientError::BadOack(why),
            Some((ErrorCode::OptionNegotiation, why)),
        )
    }

    fn handle_data<'a>(
        &mut self,
        block: BlockNum,
        data: &'a [u8],
        now: Instant,
    ) -> Option<Data<'a>> {
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
            return None;
        }
        if data.len() > self.blksize {
            self.fail(
                ClientError::Protocol("block larger than blksize"),
                Some((ErrorCode::IllegalOperation, "block larger than blksize")),
            );
            return None;
        }
        self.stats.data_received += 1;
        self.retries_left = self.cfg.retries;
        let offset = (self.expected - 1) * self.blksize as u64;
        self.expected += 1;
        self.since_ack += 1;
        if data.len() < self.blksize {
            self.finish(Event::Finished, Out::Ack(block));
        } else if self.since_ack >= self.window {
            self.since_ack = 0;
            self.pending = Out::Ack(block);
        } else {
            // Waiting for the rest of the window: the timer runs from the last block received.
            self.deadline = Some(now + self.cfg.retransmit);
        }
        Some(Data {
            offset,
            bytes: data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sim::addr;

    fn next(c: &mut Client, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        c.poll_transmit(now, buf)
            .map(|t| t.datagram().expect("a datagram"))
    }

    #[test]
    fn requests_go_to_the_server_and_the_rest_to_its_transfer_id() {
        let now = crate::sim_origin();
        let (server, tid, stranger) = (addr(1, 69), addr(1, 50_000), addr(1, 50_001));
        let cfg = ClientConfig {
            blksize: BlockSize::new(8),
            ..ClientConfig::default()
        };
        let mut c = Client::new(server, b"f", cfg, now);
        let mut buf = [0u8; 600];
        let (to, n) = next(&mut c, now, &mut buf).unwrap();
        assert_eq!(to, server);
        assert!(matches!(Packet::parse(&buf[..n]), Ok(Packet::Rrq(_))));
        assert_eq!(
            c.handle_datagram(now, tid, b"\x00\x06blksize\x008\x00"),
            None
        );
        assert_eq!(c.peer(), Some(tid));
        assert_eq!(next(&mut c, now, &mut buf), Some((tid, 4)));
        // Another transfer ID: ERROR 5 to it, nothing else changes.
        assert_eq!(
            c.handle_datagram(now, stranger, b"\x00\x03\x00\x01abcdefgh"),
            None
        );
        let (to, n) = next(&mut c, now, &mut buf).unwrap();
        assert_eq!(to, stranger);
        assert_eq!(&buf[..4], b"\x00\x05\x00\x05");
        assert!(n > 5);
        assert_eq!(c.stats.foreign, 1);
        let d = c
            .handle_datagram(now, tid, b"\x00\x03\x00\x01abcdefgh")
            .unwrap();
        assert_eq!((d.offset, d.bytes), (0, &b"abcdefgh"[..]));
        assert_eq!(c.poll_event(), None);
        let d = c.handle_datagram(now, tid, b"\x00\x03\x00\x02xy").unwrap();
        assert_eq!((d.offset, d.bytes), (8, &b"xy"[..]));
        assert_eq!(c.poll_event(), Some(Event::Finished));
        assert_eq!(next(&mut c, now, &mut buf), Some((tid, 4)));
        assert_eq!(&buf[..4], b"\x00\x04\x00\x02");
        assert!(c.is_finished() && c.poll_timeout().is_none());
    }

    #[test]
    fn strict_and_lenient_oack_checks() {
        let now = crate::sim_origin();
        let (server, tid) = (addr(1, 69), addr(1, 50_000));
        let strict = ClientConfig {
            blksize: BlockSize::new(1468),
            ..ClientConfig::default()
        };
        let mut c = Client::new(server, b"f", strict.clone(), now);
        c.handle_datagram(now, tid, b"\x00\x06blksize\x001500\x00");
        assert_eq!(
            c.poll_event(),
            Some(Event::Failed(ClientError::BadOack(
                "blksize not acceptable"
            )))
        );
        let mut buf = [0u8; 600];
        assert_eq!(next(&mut c, now, &mut buf).map(|x| x.0), Some(tid));
        assert_eq!(&buf[..4], b"\x00\x05\x00\x08", "ERROR 8 to the server");
        let mut c = Client::new(server, b"f", strict, now);
        c.handle_datagram(now, tid, b"\x00\x06windowsize\x004\x00");
        assert!(
            matches!(c.poll_event(), Some(Event::Failed(_))),
            "not asked"
        );
        // A lenient client takes a valid grant it did not ask for in typed form (raw options).
        let lenient = ClientConfig {
            strict_oack: false,
            extra_options: vec![("BlkSize".into(), b"1024".to_vec())],
            ..ClientConfig::default()
        };
        let mut c = Client::new(server, b"f", lenient, now);
        next(&mut c, now, &mut buf);
        c.handle_datagram(now, tid, b"\x00\x06blksize\x001024\x00windowsize\x002\x00");
        assert_eq!(c.poll_event(), None);
        assert_eq!((c.blksize(), c.window()), (1024, 2));
    }

    #[test]
    fn silence_resends_then_fails() {
        let t0 = crate::sim_origin();
        let cfg = ClientConfig {
            retransmit: Duration::from_secs(1),
            retries: 2,
            ..ClientConfig::default()
        };
        let mut c = Client::new(addr(1, 69), b"f", cfg, t0);
        let mut buf = [0u8; 600];
        let mut sent = 0;
        while let Some(d) = c.poll_timeout().or(Some(t0)) {
            while next(&mut c, d, &mut buf).is_some() {
                sent += 1;
            }
            if c.is_over() {
                break;
            }
            c.handle_timeout(d);
        }
        assert_eq!(sent, 3, "the request and two resends");
        assert_eq!(c.poll_event(), Some(Event::Failed(ClientError::TimedOut)));
        assert_eq!(c.stats.timeouts, 3);
    }
}
