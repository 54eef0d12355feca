//! A raw-UDP TFTP client for what no real client can produce: hand-built requests, the core's
//! client machine driven over a blocking socket, and wire helpers.

use super::*;

// ---------------------------------------------------------------------------------------------
// Raw UDP client
// ---------------------------------------------------------------------------------------------

/// Build an RRQ (or WRQ) with options in wire order.
pub fn request(write: bool, name: &[u8], mode: Mode, options: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = vec![
        0u8;
        4 + name.len()
            + 16
            + options
                .iter()
                .map(|(n, v)| n.len() + v.len() + 2)
                .sum::<usize>()
    ];
    let mut w = OptionWriter::request(&mut buf, write, name, mode).expect("buffer sized");
    for (n, v) in options {
        w.option(n, v).expect("buffer sized");
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

/// An RRQ in octet mode.
pub fn rrq(name: &[u8], options: &[(&str, &[u8])]) -> Vec<u8> {
    request(false, name, Mode::Octet, options)
}

pub fn ack(block: u16) -> Vec<u8> {
    let mut b = [0u8; 4];
    emit_ack(&mut b, BlockNum(block));
    b.to_vec()
}

pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut b = vec![0u8; message.len() + 5];
    let n = emit_error(&mut b, code, message);
    b.truncate(n);
    b
}

/// A packet from the server, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Oack(Vec<(String, String)>),
    Data { block: u16, len: usize },
    Ack(u16),
    Error { code: u16, message: String },
    Other(Vec<u8>),
}

impl Reply {
    pub fn parse(b: &[u8]) -> Reply {
        match Packet::parse(b) {
            Ok(Packet::Oack(opts)) => Reply::Oack(
                opts.iter()
                    .map(|(n, v)| {
                        (
                            String::from_utf8_lossy(n).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        )
                    })
                    .collect(),
            ),
            Ok(Packet::Data { block, data }) => Reply::Data {
                block: block.0,
                len: data.len(),
            },
            Ok(Packet::Ack { block, .. }) => Reply::Ack(block.0),
            Ok(Packet::Error { code, message }) => Reply::Error {
                code: code.as_u16(),
                message: String::from_utf8_lossy(message).into_owned(),
            },
            _ => Reply::Other(b.to_vec()),
        }
    }
}

/// Value of option `name` (case-insensitive) in an OACK.
pub fn oack_get<'a>(opts: &'a [(String, String)], name: &str) -> Option<&'a str> {
    opts.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A UDP socket on 127.0.0.1 talking to one server: raw datagrams for what no client would send,
/// and whole downloads driven by the core's client machine ([`RawClient::download`]).
pub struct RawClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn new(server: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client socket");
        RawClient {
            sock,
            server,
            buf: vec![0u8; 65536 + 64],
        }
    }

    /// Send to the server's listening address.
    pub fn send(&self, pkt: &[u8]) {
        self.sock.send_to(pkt, self.server).expect("send to server");
    }

    pub fn send_to(&self, pkt: &[u8], to: SocketAddr) {
        self.sock.send_to(pkt, to).expect("send");
    }

    /// The next datagram within `limit`, or `None`.
    pub fn recv(&mut self, limit: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        self.recv_ref(limit).map(|(b, a)| (b.to_vec(), a))
    }

    fn recv_ref(&mut self, limit: Duration) -> Option<(&[u8], SocketAddr)> {
        let limit = limit.max(Duration::from_millis(1));
        self.sock.set_read_timeout(Some(limit)).unwrap();
        match self.sock.recv_from(&mut self.buf) {
            Ok((n, from)) => Some((&self.buf[..n], from)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// The next datagram, parsed.
    pub fn recv_reply(&mut self, limit: Duration) -> Option<(Reply, SocketAddr)> {
        self.recv_ref(limit).map(|(b, a)| (Reply::parse(b), a))
    }

    /// Send `pkt` to the server and return its first reply (resending twice on silence).
    pub fn request(&mut self, pkt: &[u8]) -> Option<(Reply, SocketAddr)> {
        for _ in 0..3 {
            self.send(pkt);
            if let Some(r) = self.recv_reply(Duration::from_secs(2)) {
                return Some(r);
            }
        }
        None
    }

    /// Run a whole download with the core's firmware-like client machine
    /// ([`ringboot::proto::tftp::client::Client`]: the EDK2 ACK policy, ACK after every
    /// `windowsize` in-order blocks and at the end, re-ACK the last in-order block at once when a
    /// block arrives out of order, resend the last packet after 1 s of silence, 8 times) over
    /// this socket. The options are sent verbatim, the OACK is taken leniently (any valid value
    /// not above what was asked), and every datagram is also observed here for the counters.
    pub fn download(&mut self, spec: &DownloadSpec) -> Result<Download, Failure> {
        let cfg = ClientConfig {
            mode: spec.mode,
            extra_options: spec.options.clone(),
            strict_oack: false,
            retransmit: Duration::from_secs(1),
            retries: 8,
            ..ClientConfig::default()
        };
        let t0 = Instant::now();
        let deadline = t0 + spec.limit;
        let mut c = TftpClient::new(self.server, &spec.name, cfg, t0);
        let mut d = Download::default();
        let mut tx = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            while let Some((dest, n)) = c.poll_transmit(now, &mut tx).and_then(Transmit::datagram) {
                self.sock.send_to(&tx[..n], dest).expect("send");
                if spec.dup_acks && tx[..2] == [0, 4] {
                    self.sock.send_to(&tx[..n], dest).expect("send");
                }
            }
            match c.poll_event() {
                None => {}
                Some(ClientEvent::Finished) => break,
                Some(ClientEvent::Failed(ClientError::Server { code, message })) => {
                    let code = code.as_u16();
                    return Err(Failure::Error { code, message });
                }
                Some(ClientEvent::Failed(ClientError::TimedOut)) => {
                    let what = match c.peer() {
                        None => "no reply to RRQ".to_string(),
                        Some(_) => {
                            format!("server silent after {} blocks ({} bytes)", d.blocks, d.len)
                        }
                    };
                    return Err(Failure::Timeout(what));
                }
                Some(e) => return Err(Failure::Protocol(format!("{e:?}"))),
            }
            if now > deadline {
                return Err(Failure::Timeout(format!(
                    "download not finished within {:?}: {} bytes",
                    spec.limit, d.len
                )));
            }
            let wait = c
                .poll_timeout()
                .unwrap_or(deadline)
                .min(deadline)
                .saturating_duration_since(now);
            let Some((bytes, from)) = self.recv_ref(wait) else {
                c.handle_timeout(Instant::now());
                continue;
            };
            if c.peer().is_none_or(|p| p == from) {
                match Packet::parse(bytes) {
                    Ok(Packet::Data { block, .. }) => {
                        d.data_packets += 1;
                        d.wrapped |= block.0 == 0;
                    }
                    Ok(Packet::Oack(o)) if d.oack.is_none() => {
                        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                        d.oack = Some(o.iter().map(|(n, v)| (text(n), text(v))).collect());
                    }
                    _ => {}
                }
            }
            if let Some(data) = c.handle_datagram(Instant::now(), from, bytes) {
                if let Some(src) = &spec.verify {
                    let off = data.offset as usize;
                    let end = off + data.bytes.len();
                    if end > src.len() || src[off..end] != *data.bytes {
                        return Err(Failure::Protocol(format!(
                            "block at offset {off} differs from the source"
                        )));
                    }
                } else {
                    d.data.extend_from_slice(data.bytes);
                }
                d.len += data.bytes.len() as u64;
            }
            d.blocks = c.stats.data_received;
        }
        d.blocks = c.stats.data_received;
        d.duplicates = c.stats.duplicates;
        d.stray = c.stats.foreign;
        d.acks_sent = c.stats.acks_sent;
        d.blksize = c.blksize();
        d.window = c.window() as u16;
        d.tid = c.peer();
        if let Some(src) = &spec.verify {
            if d.len != src.len() as u64 {
                return Err(Failure::Protocol(format!(
                    "got {} bytes, source has {}",
                    d.len,
                    src.len()
                )));
            }
        }
        Ok(d)
    }
}

/// One download for [`RawClient::download`].
#[derive(Clone, Debug)]
pub struct DownloadSpec {
    pub name: Vec<u8>,
    pub mode: Mode,
    pub options: Vec<(String, Vec<u8>)>,
    /// Send every ACK twice (sorcerer's apprentice test).
    pub dup_acks: bool,
    /// Compare each block with this source instead of keeping the data.
    pub verify: Option<Arc<Vec<u8>>>,
    pub limit: Duration,
}

impl DownloadSpec {
    pub fn new(name: impl AsRef<[u8]>) -> Self {
        DownloadSpec {
            name: name.as_ref().to_vec(),
            mode: Mode::Octet,
            options: Vec::new(),
            dup_acks: false,
            verify: None,
            limit: Duration::from_secs(50),
        }
    }

    pub fn option(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.options
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn blksize(self, n: u16) -> Self {
        self.option("blksize", n.to_string())
    }

    pub fn windowsize(self, n: u16) -> Self {
        self.option("windowsize", n.to_string())
    }

    pub fn tsize(self) -> Self {
        self.option("tsize", "0")
    }

    pub fn netascii(mut self) -> Self {
        self.mode = Mode::Netascii;
        self
    }

    pub fn dup_acks(mut self) -> Self {
        self.dup_acks = true;
        self
    }

    pub fn verify(mut self, src: Arc<Vec<u8>>) -> Self {
        self.verify = Some(src);
        self
    }
}

/// What a raw download saw.
#[derive(Clone, Debug, Default)]
pub struct Download {
    /// The bytes received (empty when verifying on the fly).
    pub data: Vec<u8>,
    pub len: u64,
    /// The OACK's options, if the server sent one.
    pub oack: Option<Vec<(String, String)>>,
    pub blksize: usize,
    pub window: u16,
    /// Every DATA datagram from the transfer's TID, duplicates included.
    pub data_packets: u64,
    /// Distinct in-order blocks accepted.
    pub blocks: u64,
    /// DATA datagrams for blocks already received.
    pub duplicates: u64,
    /// Datagrams from another address than the transfer's TID.
    pub stray: u64,
    pub acks_sent: u64,
    /// A DATA block numbered 0 arrived (rollover after 65535).
    pub wrapped: bool,
    pub tid: Option<SocketAddr>,
}

/// Why a raw download failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server sent ERROR.
    Error {
        code: u16,
        message: String,
    },
    Timeout(String),
    Protocol(String),
}

/// One fresh-socket raw download from `srv`; panics with context on failure.
pub fn raw_get(srv: &Server, spec: &DownloadSpec) -> Download {
    RawClient::new(srv.addr())
        .download(spec)
        .unwrap_or_else(|e| {
            panic!(
                "raw download of {:?} failed: {e:?}",
                String::from_utf8_lossy(&spec.name)
            )
        })
}

/// Netascii encoding as the server documents it (`ringboot::proto::tftp::netascii`): LF -> CR LF, a
/// CR LF already in the file stays CR LF, any other CR -> CR NUL. Written independently here so
/// the test does not check the server's code against itself.
pub fn netascii_encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() + src.len() / 16);
    let mut i = 0;
    while i < src.len() {
        match (src[i], src.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            (b'\r', _) => out.extend_from_slice(b"\r\0"),
            (b'\n', _) => out.extend_from_slice(b"\r\n"),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    out
}
