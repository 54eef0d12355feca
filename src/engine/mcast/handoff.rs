//! The hand-off of RFC 2090 requests from the unicast workers to the multicast service: the
//! admission they share (groups, sessions, memberships: bounded tables) and the channel with its
//! eventfd wake-up (see the contract of [`super`]).

use super::{GroupPool, McConfig, McJoin, MAX_GROUPS};
use crate::proto::mtftp::session::blksize_bucket;
use crate::proto::ratelog::LogLimit;
use crate::sys::poll::EventFd;
use crossbeam::channel::{Sender, TrySendError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tracing::{info, warn};

/// Client addresses remembered as too slow for multicast (the oldest forgotten first).
pub const SLOW_REMEMBERED: usize = 1024;

/// Why [`McHandle::submit`] did not hand a request over (the worker then serves it by unicast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// RFC 2090 is not enabled (`--multicast-groups` unset; PXE MTFTP only).
    Disabled,
    /// The block size granted is under the smallest bucket (512).
    BlockSize,
    /// Every group of the pool is in use.
    PoolFull,
    /// The file's session has `--multicast-max-members` members.
    SessionFull,
    /// The client's address is in `--multicast-max-per-source` sessions already.
    SourceCap,
    /// The hand-over channel is full or the service is gone.
    Saturated,
    /// The file's session has started and its block numbers wrap (more than 65535 blocks): a
    /// joiner could not tell which wrap it hears (RFC 2090 carries no position).
    Late,
    /// The client was sent away from a session as too slow (`--multicast-slow-receivers
    /// unicast`); its next request goes to unicast.
    Slow,
}

impl Refusal {
    pub(super) const ALL: [Refusal; 8] = [
        Refusal::Disabled,
        Refusal::BlockSize,
        Refusal::PoolFull,
        Refusal::SessionFull,
        Refusal::SourceCap,
        Refusal::Saturated,
        Refusal::Late,
        Refusal::Slow,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Refusal::Disabled => "RFC 2090 multicast is not enabled",
            Refusal::BlockSize => "block size under 512",
            Refusal::PoolFull => "no free multicast group in the pool",
            Refusal::SessionFull => "the file's multicast session is full",
            Refusal::SourceCap => "client address at its multicast session limit",
            Refusal::Saturated => "multicast service saturated",
            Refusal::Late => "the file's multicast session started and its block numbers wrap",
            Refusal::Slow => "the client was too slow for a multicast session",
        }
    }
}

/// A reservation made by [`Admission::admit`], honoured by the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ticket {
    pub(super) slot: u32,
    /// Generation of the slot's entry (a slot is reused by later sessions).
    pub(super) gen: u64,
    /// The session's block size.
    pub(super) bucket: u16,
    /// A new membership counted against the caps (false: the client is already a member; a
    /// resent request, answered again by the session).
    pub(super) counted: bool,
}

#[derive(Debug)]
pub(super) struct Entry {
    /// The file (its `Content` address; some `Arc` of it is alive while the entry is: a request in
    /// the channel, or the running session).
    pub(super) content: usize,
    pub(super) bucket: u16,
    pub(super) gen: u64,
    /// Memberships counted: reserved or joined, not yet gone.
    pub(super) refs: u32,
    /// The session takes no new member ([`Refusal::Late`]); members' resent requests still go to it.
    pub(super) closed: bool,
}

/// RFC 2090 admission: groups, sessions and memberships, shared by the workers (deciding) and the
/// service (giving back). Sans-IO; every table is bounded (see the module docs).
#[derive(Debug)]
pub(super) struct Admission {
    pub(super) pool: Option<GroupPool>,
    pub(super) slots: Vec<Option<Entry>>,
    /// Free slots, least recently freed first.
    pub(super) free: VecDeque<u32>,
    pub(super) by_key: HashMap<(usize, u16), u32>,
    pub(super) memberships: HashSet<(SocketAddr, u32)>,
    pub(super) per_source: HashMap<IpAddr, u32>,
    pub(super) max_members: u32,
    pub(super) max_per_source: u32,
    pub(super) next_gen: u64,
    /// One limiter per refusal reason (indexed like [`Refusal::ALL`]).
    pub(super) logs: [LogLimit; 8],
    /// Settings of a reload, for the service to take ([`McHandle::reload`]).
    pub(super) reload: Option<Box<McConfig>>,
    /// Addresses sent away from a session as too slow, oldest first (at most [`SLOW_REMEMBERED`]):
    /// their next request is served by unicast.
    pub(super) slow: VecDeque<IpAddr>,
}

impl Admission {
    pub(super) fn new(pool: Option<GroupPool>, max_members: usize, max_per_source: usize) -> Self {
        let n = pool.map_or(0, |p| p.len.min(MAX_GROUPS));
        Admission {
            pool,
            slots: (0..n).map(|_| None).collect(),
            free: (0..n).collect(),
            by_key: HashMap::new(),
            memberships: HashSet::new(),
            per_source: HashMap::new(),
            max_members: max_members.clamp(1, u32::MAX as usize) as u32,
            max_per_source: max_per_source.clamp(1, u32::MAX as usize) as u32,
            next_gen: 0,
            logs: Default::default(),
            reload: None,
            slow: VecDeque::new(),
        }
    }

    /// Reserve a place for `client` in the session of (`content`, bucket of `granted`).
    pub(super) fn admit(
        &mut self,
        client: SocketAddr,
        content: usize,
        granted: u16,
    ) -> Result<Ticket, Refusal> {
        if self.pool.is_none() {
            return Err(Refusal::Disabled);
        }
        let bucket = blksize_bucket(granted).ok_or(Refusal::BlockSize)?;
        if let Some(i) = self.slow.iter().position(|&a| a == client.ip()) {
            self.slow.remove(i);
            return Err(Refusal::Slow);
        }
        let source_full = self
            .per_source
            .get(&client.ip())
            .is_some_and(|&n| n >= self.max_per_source);
        let slot = match self.by_key.get(&(content, bucket)) {
            Some(&slot) => {
                let e = self.slots[slot as usize].as_ref().expect("keyed slot");
                if self.memberships.contains(&(client, slot)) {
                    return Ok(Ticket {
                        slot,
                        gen: e.gen,
                        bucket,
                        counted: false,
                    });
                }
                if e.closed {
                    return Err(Refusal::Late);
                }
                if e.refs >= self.max_members {
                    return Err(Refusal::SessionFull);
                }
                if source_full {
                    return Err(Refusal::SourceCap);
                }
                slot
            }
            None => {
                if source_full {
                    return Err(Refusal::SourceCap);
                }
                let slot = self.free.pop_front().ok_or(Refusal::PoolFull)?;
                self.next_gen += 1;
                self.slots[slot as usize] = Some(Entry {
                    content,
                    bucket,
                    gen: self.next_gen,
                    refs: 0,
                    closed: false,
                });
                self.by_key.insert((content, bucket), slot);
                slot
            }
        };
        let e = self.slots[slot as usize].as_mut().expect("slot in use");
        e.refs += 1;
        self.memberships.insert((client, slot));
        *self.per_source.entry(client.ip()).or_insert(0) += 1;
        Ok(Ticket {
            slot,
            gen: e.gen,
            bucket,
            counted: true,
        })
    }

    pub(super) fn entry(&mut self, slot: u32, gen: u64) -> Option<&mut Entry> {
        self.slots
            .get_mut(slot as usize)?
            .as_mut()
            .filter(|e| e.gen == gen)
    }

    /// True while the reservation's session exists (some membership is counted).
    pub(super) fn is_live(&mut self, slot: u32, gen: u64) -> bool {
        self.entry(slot, gen).is_some()
    }

    /// `client`'s membership of the session in `slot` is over (or its reservation unused). Frees
    /// the group with the last one. Idempotent.
    pub(super) fn release(&mut self, slot: u32, gen: u64, client: SocketAddr) {
        if self.entry(slot, gen).is_none() || !self.memberships.remove(&(client, slot)) {
            return;
        }
        if let Some(n) = self.per_source.get_mut(&client.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&client.ip());
            }
        }
        let e = self.entry(slot, gen).expect("checked");
        e.refs -= 1;
        if e.refs == 0 {
            let key = (e.content, e.bucket);
            self.slots[slot as usize] = None;
            self.by_key.remove(&key);
            self.free.push_back(slot);
        }
    }

    /// `client` was sent away from a session as too slow: its next request goes to unicast.
    pub(super) fn mark_slow(&mut self, client: IpAddr) {
        if !self.slow.contains(&client) {
            if self.slow.len() >= SLOW_REMEMBERED {
                self.slow.pop_front();
            }
            self.slow.push_back(client);
        }
    }

    /// The session in `slot` takes no new member from now on ([`Refusal::Late`]).
    pub(super) fn close(&mut self, slot: u32, gen: u64) {
        if let Some(e) = self.entry(slot, gen) {
            e.closed = true;
        }
    }

    /// A resent request whose membership had ended meanwhile joined the session again: count it
    /// (no cap: it held this place a moment ago). False when the session is gone.
    pub(super) fn adopt(&mut self, slot: u32, gen: u64, client: SocketAddr) -> bool {
        if self.entry(slot, gen).is_none() {
            return false;
        }
        if !self.memberships.insert((client, slot)) {
            return true;
        }
        self.entry(slot, gen).expect("checked").refs += 1;
        *self.per_source.entry(client.ip()).or_insert(0) += 1;
        true
    }

    pub(super) fn group(&self, slot: u32) -> Option<Ipv4Addr> {
        self.pool.map(|p| p.nth(slot))
    }

    /// Groups in use.
    pub(super) fn groups_in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub(super) fn log_refusal(&mut self, r: Refusal, j: &McJoin, now: Instant) {
        let i = Refusal::ALL.iter().position(|&x| x == r).expect("listed");
        let Some(suppressed) = self.logs[i].allow(now) else {
            return;
        };
        let (client, file, reason) = (j.client, j.content.display_path(), r.as_str());
        match r {
            Refusal::PoolFull | Refusal::Saturated => {
                warn!(%client, file, reason, suppressed, "RFC 2090 request served by unicast")
            }
            _ => info!(%client, file, reason, suppressed, "RFC 2090 request served by unicast"),
        }
    }

    pub(super) fn flush_logs(&mut self, now: Instant) {
        for (i, l) in self.logs.iter_mut().enumerate() {
            if let Some(n) = l.flush(now) {
                info!(
                    reason = Refusal::ALL[i].as_str(),
                    suppressed = n,
                    "RFC 2090 requests served by unicast (lines suppressed)"
                );
            }
        }
    }
}

pub(super) fn lock(m: &Mutex<Admission>) -> MutexGuard<'_, Admission> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request on its way to the service, with its reservation.
pub(super) struct Handoff {
    pub(super) join: McJoin,
    pub(super) ticket: Ticket,
}

/// Where workers send RFC 2090 requests.
#[derive(Clone)]
pub struct McHandle {
    pub(super) tx: Sender<Handoff>,
    pub(super) wake: Arc<EventFd>,
    pub(super) admission: Arc<Mutex<Admission>>,
}

impl McHandle {
    /// Offer an RFC 2090 request. `Ok`: it is admitted and handed over; the service answers it
    /// (OACK, or an ERROR if it then cannot place it). `Err`: nothing was taken and the caller
    /// serves it as plain unicast TFTP (why is logged here, rate-limited). See the module docs.
    pub fn submit(&self, j: McJoin, now: Instant) -> Result<(), Refusal> {
        let id = Arc::as_ptr(&j.content) as usize;
        let ticket = {
            let mut a = lock(&self.admission);
            match a.admit(j.client, id, j.blksize.get()) {
                Ok(t) => t,
                Err(r) => {
                    a.log_refusal(r, &j, now);
                    return Err(r);
                }
            }
        };
        match self.tx.try_send(Handoff { join: j, ticket }) {
            Ok(()) => {
                self.wake.notify();
                Ok(())
            }
            Err(TrySendError::Full(h) | TrySendError::Disconnected(h)) => {
                let mut a = lock(&self.admission);
                if h.ticket.counted {
                    a.release(h.ticket.slot, h.ticket.gen, h.join.client);
                }
                a.log_refusal(Refusal::Saturated, &h.join, now);
                Err(Refusal::Saturated)
            }
        }
    }
}
