//! The status model: what the status page shows, fed cheaply by the services.
//!
//! Contract:
//! - Each TFTP worker holds a [`TransferPublisher`] (from [`Status::transfer_publisher`], once at
//!   start). When [`TransferPublisher::due`] says so (once per [`PUBLISH_INTERVAL`]) it opens a
//!   [`TransferBatch`] and pushes a [`TransferView`] per running transfer; the batch takes the
//!   worker's slot lock once, keeps the first [`ROWS_PER_WORKER`] rows in buffers allocated at
//!   start (no allocation), counts the rest, and works out each row's rate from the previous
//!   batch. A worker with nothing running still publishes (an empty batch), so rows vanish.
//! - The multicast service does the same with a [`McPublisher`] ([`SessionView`] + members).
//! - The DHCP service calls [`Status::record_dhcp`] once per decision: a ring of the last
//!   [`DHCP_RECENT`].
//! - The HTTP service calls [`Status::tick`] once a second (its timer): a per-second sample of
//!   the bytes sent (from the registry's counters) goes into a ring of [`HISTORY_SECONDS`].
//! - A page request calls [`Status::snapshot`] (allocates; bounded: at most
//!   [`TRANSFERS_LISTED`] transfers, [`SESSIONS_LISTED`] sessions of [`MEMBERS_LISTED`] listed
//!   members, every string cut to a fixed length) and [`Snapshot::to_json`].
//!
//! No clock is read here: every call takes `now`. Rows from a publisher that has not published
//! for [`STALE_AFTER`] are left out (a stopped worker does not leave ghosts). Strings from the
//! network (file names, vendor classes, URLs) are kept as bytes, cut in the middle to a fixed
//! length, and shown as lossy UTF-8 with control characters replaced; the page inserts them as
//! text, never as markup.

use super::registry::{DhcpMode, DhcpType, McProtocol, Outcome, Registry, Totals};
use serde::Serialize;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often a publisher publishes.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// Rows of a publisher older than this are left out of a snapshot.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Transfers a worker lists (the rest are counted).
pub const ROWS_PER_WORKER: usize = 64;
/// Transfers a snapshot lists, oldest first (the rest are counted).
pub const TRANSFERS_LISTED: usize = 100;
/// Seconds of throughput history.
pub const HISTORY_SECONDS: usize = 300;
/// DHCP decisions kept.
pub const DHCP_RECENT: usize = 50;
/// Multicast sessions a publisher lists.
pub const SESSIONS_LISTED: usize = 32;
/// Members listed per session (the rest are counted).
pub const MEMBERS_LISTED: usize = 16;
/// Bytes kept of a file name or URL.
pub const NAME_BYTES: usize = 96;
/// Bytes kept of a vendor class.
pub const VENDOR_BYTES: usize = 48;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes from the network, at most `N`, cut in the middle (`…`) when longer: the start and the
/// end of a path say the most. Inline: no allocation.
#[derive(Clone, Copy)]
pub struct ShortText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> std::fmt::Debug for ShortText<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_display())
    }
}

impl<const N: usize> Default for ShortText<N> {
    fn default() -> Self {
        ShortText {
            buf: [0; N],
            len: 0,
        }
    }
}

const ELLIPSIS: &[u8] = "…".as_bytes();

fn is_continuation(b: u8) -> bool {
    b & 0xc0 == 0x80
}

impl<const N: usize> ShortText<N> {
    /// `bytes`, cut in the middle when longer than `N`.
    pub fn new(bytes: &[u8]) -> Self {
        let mut t = ShortText::default();
        if bytes.len() <= N {
            t.buf[..bytes.len()].copy_from_slice(bytes);
            t.len = bytes.len();
            return t;
        }
        let room = N.saturating_sub(ELLIPSIS.len());
        let mut head = room / 3;
        let mut tail_start = bytes.len() - (room - head);
        // Cut on UTF-8 character boundaries where the text is UTF-8.
        while head > 0 && is_continuation(bytes[head]) {
            head -= 1;
        }
        while tail_start < bytes.len() && is_continuation(bytes[tail_start]) {
            tail_start += 1;
        }
        let tail = &bytes[tail_start..];
        t.buf[..head].copy_from_slice(&bytes[..head]);
        let mut at = head;
        if N >= ELLIPSIS.len() {
            t.buf[at..at + ELLIPSIS.len()].copy_from_slice(ELLIPSIS);
            at += ELLIPSIS.len();
        }
        t.buf[at..at + tail.len()].copy_from_slice(tail);
        t.len = at + tail.len();
        t
    }

    /// The bytes kept.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// For display: lossy UTF-8, control characters replaced by U+FFFD.
    pub fn to_display(&self) -> String {
        String::from_utf8_lossy(self.as_bytes())
            .chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect()
    }
}

/// One running unicast transfer, as a worker publishes it.
#[derive(Clone, Copy, Debug)]
pub struct TransferView<'a> {
    /// The transfer's id, unique within the worker while it runs.
    pub id: u64,
    pub client: SocketAddr,
    /// The file name as the client sent it.
    pub file: &'a [u8],
    /// File bytes the client acknowledged.
    pub bytes_done: u64,
    /// The file's size, when known (netascii is not).
    pub size: Option<u64>,
    /// When its request arrived.
    pub started: Instant,
}

/// What a published transfer adds to its [`Row`] (read by the page only).
#[derive(Clone, Copy, Debug)]
pub struct TransferRow {
    client: SocketAddr,
    file: ShortText<NAME_BYTES>,
    size: Option<u64>,
}

/// A published row: an id (with its start, to tell a reused id), the bytes whose rate the page
/// shows, that rate, and what its kind adds (`of`: a [`TransferRow`], a [`SessionRow`]).
#[derive(Clone, Copy, Debug)]
struct Row<R> {
    id: u64,
    started: Instant,
    bytes: u64,
    /// Bytes per second since the previous batch (or since its start).
    rate: u64,
    of: R,
}

/// One publisher's rows: the latest batch, the one before (for the rates), when each was made.
#[derive(Debug)]
struct Slot<R> {
    at: Option<Instant>,
    count: u64,
    rows: Vec<Row<R>>,
    prev: Vec<Row<R>>,
    prev_at: Option<Instant>,
}

impl<R> Slot<R> {
    /// Rows allocated at start: publishing never allocates.
    fn with_capacity(rows: usize) -> Self {
        Slot {
            at: None,
            count: 0,
            rows: Vec::with_capacity(rows),
            prev: Vec::with_capacity(rows),
            prev_at: None,
        }
    }

    /// A new batch: the latest rows become the previous ones.
    fn begin(&mut self) {
        std::mem::swap(&mut self.rows, &mut self.prev);
        self.rows.clear();
        self.prev_at = self.at;
        self.count = 0;
    }

    /// The batch is complete at `now`: each row's rate since the previous batch (or its start).
    fn finish(&mut self, now: Instant) {
        self.rows.sort_unstable_by_key(|r| r.id);
        for r in &mut self.rows {
            let before = self
                .prev
                .binary_search_by_key(&r.id, |p| p.id)
                .ok()
                .map(|i| &self.prev[i])
                .filter(|p| p.started == r.started);
            r.rate = match (before, self.prev_at) {
                (Some(p), Some(at)) if now > at => {
                    per_second(r.bytes.saturating_sub(p.bytes), now - at)
                }
                _ => per_second(r.bytes, since_start(now, r.started)),
            };
        }
        self.at = Some(now);
    }
}

/// A publisher's handle on its board: the rows it publishes (a worker's transfers, the multicast
/// service's sessions) and when its next batch is due (see the module docs).
#[derive(Debug)]
pub struct Publisher<R> {
    board: Arc<Mutex<Slot<R>>>,
    next: Option<Instant>,
}

/// A worker's handle for publishing its transfers.
pub type TransferPublisher = Publisher<TransferRow>;
/// The multicast service's handle for publishing its sessions.
pub type McPublisher = Publisher<SessionRow>;

impl<R> Publisher<R> {
    /// A board of `rows` rows, listed in `boards` (where the page reads it).
    fn new(boards: &Mutex<Vec<Arc<Mutex<Slot<R>>>>>, rows: usize) -> Self {
        let board = Arc::new(Mutex::new(Slot::with_capacity(rows)));
        lock(boards).push(Arc::clone(&board));
        Publisher { board, next: None }
    }

    /// Whether a batch is due at `now` (once per [`PUBLISH_INTERVAL`]).
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|n| now >= n)
    }

    /// When the next batch is due (for the caller's timer), `None`: now.
    pub fn next_due(&self) -> Option<Instant> {
        self.next
    }

    /// The board, its latest rows made the previous ones, for a batch started at `now`.
    fn slot(&mut self, now: Instant) -> MutexGuard<'_, Slot<R>> {
        self.next = Some(now + PUBLISH_INTERVAL);
        let mut slot = lock(&self.board);
        slot.begin();
        slot
    }
}

impl Publisher<TransferRow> {
    /// Start a batch at `now`: push every running transfer, then drop the batch.
    pub fn begin(&mut self, now: Instant) -> TransferBatch<'_> {
        TransferBatch {
            slot: self.slot(now),
            now,
        }
    }
}

/// An open batch of a worker's transfers; publishing completes when it is dropped.
pub struct TransferBatch<'a> {
    slot: MutexGuard<'a, Slot<TransferRow>>,
    now: Instant,
}

impl TransferBatch<'_> {
    /// One running transfer.
    pub fn push(&mut self, t: &TransferView<'_>) {
        self.slot.count += 1;
        if self.slot.rows.len() < ROWS_PER_WORKER {
            self.slot.rows.push(Row {
                id: t.id,
                started: t.started,
                bytes: t.bytes_done,
                rate: 0,
                of: TransferRow {
                    client: t.client,
                    file: ShortText::new(t.file),
                    size: t.size,
                },
            });
        }
    }
}

fn per_second(bytes: u64, over: Duration) -> u64 {
    let us = over.as_micros().max(1);
    (u128::from(bytes) * 1_000_000 / us).min(u128::from(u64::MAX)) as u64
}

impl Drop for TransferBatch<'_> {
    fn drop(&mut self) {
        self.slot.finish(self.now);
    }
}

/// The time a row without a previous batch has been running, for its first rate: at least one
/// [`PUBLISH_INTERVAL`], so that a transfer that started a moment ago (a first window out, no
/// time passed) does not show an absurd rate.
fn since_start(now: Instant, started: Instant) -> Duration {
    now.saturating_duration_since(started).max(PUBLISH_INTERVAL)
}

/// One multicast session, as the multicast service publishes it.
#[derive(Clone, Copy, Debug)]
pub struct SessionView<'a> {
    /// The session's id, unique while it runs.
    pub id: u64,
    pub protocol: McProtocol,
    pub file: &'a [u8],
    /// The group and port the session sends to.
    pub group: SocketAddr,
    /// The file's size.
    pub size: u64,
    /// Bytes of the file the stream has reached in its current pass.
    pub position: u64,
    /// Bytes sent to the group since the session started, resends included.
    pub bytes_sent: u64,
    /// Members now (all of them; only [`MEMBERS_LISTED`] are listed).
    pub members: usize,
    pub started: Instant,
}

/// A member of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemberView {
    pub addr: SocketAddr,
    /// The member that acknowledges for the group now.
    pub master: bool,
}

/// A multicast session as published (read by the page only).
/// What a published multicast session adds to its [`Row`] (read by the page only).
#[derive(Clone, Copy, Debug)]
pub struct SessionRow {
    protocol: McProtocol,
    file: ShortText<NAME_BYTES>,
    group: SocketAddr,
    size: u64,
    position: u64,
    member_count: usize,
    members: [Option<MemberView>; MEMBERS_LISTED],
}

impl Publisher<SessionRow> {
    /// Start a batch at `now`: push every session (each followed by its members).
    pub fn begin(&mut self, now: Instant) -> McBatch<'_> {
        McBatch {
            slot: self.slot(now),
            now,
            listing: false,
        }
    }
}

/// An open batch of multicast sessions; publishing completes when it is dropped.
pub struct McBatch<'a> {
    slot: MutexGuard<'a, Slot<SessionRow>>,
    now: Instant,
    /// Whether the last session pushed is listed (its members go to it).
    listing: bool,
}

impl McBatch<'_> {
    /// One session; its members follow with [`McBatch::member`].
    pub fn session(&mut self, s: &SessionView<'_>) {
        self.slot.count += 1;
        self.listing = self.slot.rows.len() < SESSIONS_LISTED;
        if self.listing {
            self.slot.rows.push(Row {
                id: s.id,
                started: s.started,
                bytes: s.bytes_sent,
                rate: 0,
                of: SessionRow {
                    protocol: s.protocol,
                    file: ShortText::new(s.file),
                    group: s.group,
                    size: s.size,
                    position: s.position,
                    member_count: s.members,
                    members: [None; MEMBERS_LISTED],
                },
            });
        }
    }

    /// A member of the session pushed last (beyond [`MEMBERS_LISTED`] it is only counted by
    /// [`SessionView::members`]).
    pub fn member(&mut self, m: MemberView) {
        if !self.listing {
            return;
        }
        if let Some(row) = self.slot.rows.last_mut() {
            if let Some(free) = row.of.members.iter_mut().find(|x| x.is_none()) {
                *free = Some(m);
            }
        }
    }
}

impl Drop for McBatch<'_> {
    fn drop(&mut self) {
        self.slot.finish(self.now);
    }
}

/// One DHCP decision, as the DHCP service records it.
#[derive(Clone, Copy, Debug)]
pub struct DhcpView<'a> {
    /// The reply sent (OFFER, ACK, NAK).
    pub message: DhcpType,
    pub mode: DhcpMode,
    /// The client's hardware address (chaddr, up to 16 bytes).
    pub mac: &'a [u8],
    /// The address handed out (full mode) or the client's (proxy), if any.
    pub ip: Option<Ipv4Addr>,
    /// Option 93, if the client sent it.
    pub arch: Option<u16>,
    /// Option 60, if the client sent it.
    pub vendor_class: &'a [u8],
    /// The boot file or URL handed out (empty: none).
    pub boot: &'a [u8],
}

#[derive(Clone, Copy, Debug)]
struct DhcpRow {
    at: Instant,
    message: DhcpType,
    mode: DhcpMode,
    mac: [u8; 16],
    mac_len: u8,
    ip: Option<Ipv4Addr>,
    arch: Option<u16>,
    vendor: ShortText<VENDOR_BYTES>,
    boot: ShortText<NAME_BYTES>,
}

/// Per-second samples of what was sent, the newest last.
#[derive(Debug)]
struct History {
    last: Option<(Instant, u64, u64)>,
    samples: VecDeque<Sample>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sample {
    tftp: u64,
    multicast: u64,
    active: u64,
}

impl History {
    fn new() -> Self {
        History {
            last: None,
            samples: VecDeque::with_capacity(HISTORY_SECONDS),
        }
    }

    /// Counters read at `now`. Whole seconds since the last sample become samples of the mean
    /// rate over them (a late tick spreads its bytes; more than the ring holds is cut).
    fn tick(&mut self, now: Instant, tftp: u64, multicast: u64, active: u64) {
        let Some((at, t0, m0)) = self.last else {
            self.last = Some((now, tftp, multicast));
            return;
        };
        let secs = now.saturating_duration_since(at).as_secs();
        if secs == 0 {
            return;
        }
        let sample = Sample {
            tftp: tftp.saturating_sub(t0) / secs,
            multicast: multicast.saturating_sub(m0) / secs,
            active,
        };
        for _ in 0..secs.min(HISTORY_SECONDS as u64) {
            if self.samples.len() == HISTORY_SECONDS {
                self.samples.pop_front();
            }
            self.samples.push_back(sample);
        }
        self.last = Some((at + Duration::from_secs(secs), tftp, multicast));
    }
}

/// The state behind the status page. Share it as an `Arc`; see the module docs.
#[derive(Debug)]
pub struct Status {
    registry: Arc<Registry>,
    started: Instant,
    transfers: Mutex<Vec<Arc<Mutex<Slot<TransferRow>>>>>,
    sessions: Mutex<Vec<Arc<Mutex<Slot<SessionRow>>>>>,
    dhcp: Mutex<VecDeque<DhcpRow>>,
    history: Mutex<History>,
}

impl Status {
    /// The status of a server that started at `started`, counting into `registry`.
    pub fn new(registry: Arc<Registry>, started: Instant) -> Self {
        Status {
            registry,
            started,
            transfers: Mutex::new(Vec::new()),
            sessions: Mutex::new(Vec::new()),
            dhcp: Mutex::new(VecDeque::with_capacity(DHCP_RECENT)),
            history: Mutex::new(History::new()),
        }
    }

    /// The registry the counters come from.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// A publisher for one worker's transfers (once per worker, at start).
    pub fn transfer_publisher(&self) -> TransferPublisher {
        Publisher::new(&self.transfers, ROWS_PER_WORKER)
    }

    /// A publisher for the multicast service's sessions (once, at start).
    pub fn multicast_publisher(&self) -> McPublisher {
        Publisher::new(&self.sessions, SESSIONS_LISTED)
    }

    /// One DHCP decision at `now` (the oldest of [`DHCP_RECENT`] is forgotten).
    pub fn record_dhcp(&self, now: Instant, d: &DhcpView<'_>) {
        let mut mac = [0u8; 16];
        let mac_len = d.mac.len().min(16);
        mac[..mac_len].copy_from_slice(&d.mac[..mac_len]);
        let row = DhcpRow {
            at: now,
            message: d.message,
            mode: d.mode,
            mac,
            mac_len: mac_len as u8,
            ip: d.ip,
            arch: d.arch,
            vendor: ShortText::new(d.vendor_class),
            boot: ShortText::new(d.boot),
        };
        let mut ring = lock(&self.dhcp);
        if ring.len() == DHCP_RECENT {
            ring.pop_front();
        }
        ring.push_back(row);
    }

    /// Take a throughput sample: call once a second (the HTTP service's timer).
    pub fn tick(&self, now: Instant) {
        let t = self.registry.totals();
        lock(&self.history).tick(now, t.bytes_sent, t.multicast_bytes(), t.active());
    }

    /// What the page shows, at `now` (see the module docs for the bounds).
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let totals = self.registry.totals();
        let info = self.registry.info();
        let fresh = |at: Option<Instant>| {
            at.is_some_and(|a| now.saturating_duration_since(a) <= STALE_AFTER)
        };

        let mut listed: Vec<(Instant, usize, Row<TransferRow>)> = Vec::new();
        let mut published = 0u64;
        let boards: Vec<Arc<Mutex<Slot<TransferRow>>>> = lock(&self.transfers).clone();
        for (w, b) in boards.iter().enumerate() {
            let slot = lock(b);
            if fresh(slot.at) {
                published += slot.count;
                listed.extend(slot.rows.iter().map(|r| (r.started, w, *r)));
            }
        }
        listed.sort_by_key(|(started, w, r)| (*started, *w, r.id));
        listed.truncate(TRANSFERS_LISTED);
        let active = totals.active();
        let transfers = TransfersJson {
            active,
            unlisted: published.saturating_sub(listed.len() as u64),
            listed: listed
                .iter()
                .map(|(_, _, r)| TransferJson {
                    client: r.of.client.to_string(),
                    file: r.of.file.to_display(),
                    bytes: r.bytes,
                    size: r.of.size,
                    rate: r.rate,
                    elapsed_s: secs(now.saturating_duration_since(r.started)),
                })
                .collect(),
        };

        let mut multicast = Vec::new();
        let boards: Vec<Arc<Mutex<Slot<SessionRow>>>> = lock(&self.sessions).clone();
        for b in &boards {
            let slot = lock(b);
            if !fresh(slot.at) {
                continue;
            }
            for r in &slot.rows {
                multicast.push(SessionJson {
                    protocol: r.of.protocol.as_str(),
                    file: r.of.file.to_display(),
                    group: r.of.group.to_string(),
                    size: r.of.size,
                    position: r.of.position,
                    bytes_sent: r.bytes,
                    rate: r.rate,
                    members: r.of.member_count,
                    listed: r.of.members.iter().flatten().copied().collect(),
                    elapsed_s: secs(now.saturating_duration_since(r.started)),
                });
            }
        }

        let dhcp = lock(&self.dhcp)
            .iter()
            .rev()
            .map(|d| DhcpJson {
                age_s: secs(now.saturating_duration_since(d.at)),
                message: d.message.as_str(),
                mode: d.mode.as_str(),
                mac: mac_text(&d.mac[..usize::from(d.mac_len)]),
                ip: d.ip.map(|ip| ip.to_string()),
                arch: super::registry::ArchClass::from_option93(d.arch).as_str(),
                arch_code: d.arch,
                vendor_class: d.vendor.to_display(),
                boot: d.boot.to_display(),
            })
            .collect();

        let history = lock(&self.history);
        let throughput = ThroughputJson {
            interval_s: 1,
            tftp: history.samples.iter().map(|s| s.tftp).collect(),
            multicast: history.samples.iter().map(|s| s.multicast).collect(),
            active: history.samples.iter().map(|s| s.active).collect(),
        };
        drop(history);

        Snapshot {
            server: ServerJson {
                version: info.version,
                backend: info.backend,
                workers: info.workers,
                uptime_s: now.saturating_duration_since(self.started).as_secs(),
            },
            counters: CountersJson::from(&totals),
            transfers,
            throughput,
            dhcp,
            multicast,
        }
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

fn mac_text(mac: &[u8]) -> String {
    let mut s = String::with_capacity(mac.len() * 3);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// What `/status.json` holds (field by field in the JSON; the page reads these names).
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub server: ServerJson,
    pub counters: CountersJson,
    pub transfers: TransfersJson,
    pub throughput: ThroughputJson,
    /// Newest first.
    pub dhcp: Vec<DhcpJson>,
    pub multicast: Vec<SessionJson>,
}

impl Snapshot {
    /// The JSON of `/status.json`.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerJson {
    pub version: String,
    pub backend: String,
    pub workers: usize,
    pub uptime_s: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CountersJson {
    pub transfers_active: u64,
    pub transfers_started: u64,
    pub transfers_completed: u64,
    /// Ended otherwise than completed or probe.
    pub transfers_failed: u64,
    pub probes: u64,
    pub requests_refused: u64,
    pub bytes_sent: u64,
    pub blocks_sent: u64,
    pub blocks_resent: u64,
    pub timeouts: u64,
    pub dhcp_messages: u64,
    pub dhcp_ignored: u64,
    pub leases_in_use: u64,
    pub leases_free: u64,
    pub multicast_sessions: u64,
    pub multicast_members: u64,
    pub multicast_bytes: u64,
}

impl From<&Totals> for CountersJson {
    fn from(t: &Totals) -> Self {
        let completed = t.ended(Outcome::Completed);
        let probes = t.ended(Outcome::Probe);
        CountersJson {
            transfers_active: t.active(),
            transfers_started: t.started,
            transfers_completed: completed,
            transfers_failed: t.ended_all().saturating_sub(completed + probes),
            probes,
            requests_refused: t.refused.iter().sum(),
            bytes_sent: t.bytes_sent,
            blocks_sent: t.blocks_sent,
            blocks_resent: t.blocks_resent,
            timeouts: t.timeouts,
            dhcp_messages: t.dhcp.iter().sum(),
            dhcp_ignored: t.dhcp_ignored.iter().sum(),
            leases_in_use: t.leases_in_use,
            leases_free: t.leases_free,
            multicast_sessions: t.mc_sessions.iter().sum(),
            multicast_members: t.mc_members.iter().sum(),
            multicast_bytes: t.multicast_bytes(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TransfersJson {
    /// Running now (from the counters).
    pub active: u64,
    /// Oldest first, at most [`TRANSFERS_LISTED`].
    pub listed: Vec<TransferJson>,
    /// Published by the workers but not listed (over the bounds). Transfers that started since
    /// their worker's last batch are in `active` but in neither.
    pub unlisted: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TransferJson {
    pub client: String,
    pub file: String,
    pub bytes: u64,
    pub size: Option<u64>,
    /// Bytes per second over the last publishing interval.
    pub rate: u64,
    pub elapsed_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ThroughputJson {
    /// Seconds per sample.
    pub interval_s: u64,
    /// Bytes per second sent by unicast transfers, oldest first.
    pub tftp: Vec<u64>,
    /// Bytes per second sent to multicast groups.
    pub multicast: Vec<u64>,
    /// Unicast transfers running at each sample.
    pub active: Vec<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DhcpJson {
    pub age_s: f64,
    pub message: &'static str,
    pub mode: &'static str,
    pub mac: String,
    pub ip: Option<String>,
    pub arch: &'static str,
    pub arch_code: Option<u16>,
    pub vendor_class: String,
    pub boot: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SessionJson {
    pub protocol: &'static str,
    pub file: String,
    pub group: String,
    pub size: u64,
    pub position: u64,
    pub bytes_sent: u64,
    pub rate: u64,
    pub members: usize,
    pub listed: Vec<MemberView>,
    pub elapsed_s: f64,
}

#[cfg(test)]
mod tests;
