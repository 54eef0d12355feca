//! Which requests the responder takes: per-client and per-segment fairness.
//!
//! Contract:
//! - [`Admission::admit`] is sans-IO: `now` comes in, no clock is read, nothing is allocated
//!   after [`Admission::new`]. It is called once per parsed request, before the decision.
//! - Every client (hardware address) has a token bucket of `client_rate` requests per second
//!   (burst the same): a flood from one MAC is dropped there and costs nobody else anything.
//! - Every segment has two buckets of `segment_rate` requests per second: one for clients the
//!   lease table knows (an offer, a lease, a released address: renewals and the REQUEST after an
//!   OFFER) and one for new clients. A segment is the local link (giaddr 0) or one relay
//!   (giaddr). A flood of new clients from random MACs on one segment therefore neither starves
//!   the clients that already have an address there nor any other segment; inside that segment
//!   a new client still gets in with the chance `segment_rate` / flood rate per try.
//! - Bounded tables, fixed at construction: [`CLIENT_SLOTS`] clients and [`RELAY_SLOTS`] relays,
//!   set-associative, keyed by a randomly seeded hash (an attacker cannot aim at one set). A
//!   client table miss replaces the set's least recently seen client (a single-MAC flood stays
//!   in the table because it is always recent; a random-MAC flood only churns entries whose
//!   buckets were full anyway). A relay that is not in the table is charged to one shared bucket
//!   of [`UNKNOWN_RELAY_RATE`]/s and takes a slot only when one has been idle for
//!   [`RELAY_IDLE`], starting nearly empty: forged giaddr values cannot buy themselves buckets.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Default requests per second from one hardware address (burst the same).
pub const DEFAULT_CLIENT_RATE: u32 = 20;
/// Default requests per second per segment and class (known clients, new clients).
pub const DEFAULT_SEGMENT_RATE: u32 = 1000;
/// Requests per second, in all, from relays that have no slot in the table.
pub const UNKNOWN_RELAY_RATE: u32 = 100;
/// Client slots (sets of [`WAYS`]).
pub const CLIENT_SLOTS: usize = 4096;
/// Relay slots (sets of [`WAYS`]).
pub const RELAY_SLOTS: usize = 64;
/// A relay slot silent this long may be given to another relay.
pub const RELAY_IDLE: Duration = Duration::from_secs(60);
/// Tokens a new relay slot starts with.
const RELAY_START_TOKENS: f64 = 10.0;
const WAYS: usize = 4;

/// Why a request was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its hardware address sends more than `client_rate` per second.
    Client,
    /// Its segment (local link or relay) is over `segment_rate` for its class.
    Segment,
    /// Relays without a slot are over [`UNKNOWN_RELAY_RATE`] together.
    UnknownRelays,
}

impl Refused {
    /// A short name for the drop summary.
    pub fn name(self) -> &'static str {
        match self {
            Refused::Client => "flood_client",
            Refused::Segment => "flood_segment",
            Refused::UnknownRelays => "flood_unknown_relays",
        }
    }
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(now: Instant, burst: u32) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    fn take(&mut self, now: Instant, rate: u32) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * f64::from(rate)).min(f64::from(rate));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot<T> {
    tag: u64,
    used: bool,
    seen: Instant,
    val: T,
}

/// A fixed-size set-associative table.
struct Table<T> {
    slots: Box<[Slot<T>]>,
}

impl<T: Copy> Table<T> {
    fn new(n: usize, now: Instant, init: T) -> Table<T> {
        let n = n.div_ceil(WAYS).max(1) * WAYS;
        Table {
            slots: vec![
                Slot {
                    tag: 0,
                    used: false,
                    seen: now,
                    val: init,
                };
                n
            ]
            .into_boxed_slice(),
        }
    }

    fn set(&mut self, tag: u64) -> &mut [Slot<T>] {
        let sets = self.slots.len() / WAYS;
        let s = ((tag >> 32) as usize) % sets;
        &mut self.slots[s * WAYS..(s + 1) * WAYS]
    }

    /// The slot of `tag`, if present.
    fn find(&mut self, tag: u64) -> Option<&mut Slot<T>> {
        self.set(tag).iter_mut().find(|s| s.used && s.tag == tag)
    }

    /// A slot to take over for `tag`: an empty one, else the least recently seen one if it was
    /// seen at or before `idle_before`.
    fn victim(&mut self, tag: u64, idle_before: Instant) -> Option<&mut Slot<T>> {
        let set = self.set(tag);
        let i = set
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| (s.used, s.seen))
            .map(|(i, _)| i)?;
        let s = &mut set[i];
        (!s.used || s.seen <= idle_before).then_some(s)
    }

    fn used(&self) -> usize {
        self.slots.iter().filter(|s| s.used).count()
    }
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    known: Bucket,
    new: Bucket,
}

impl Segment {
    fn new(now: Instant, burst: u32, start: f64) -> Segment {
        let mut b = Bucket::full(now, burst);
        b.tokens = b.tokens.min(start);
        Segment { known: b, new: b }
    }
}

/// Per-client and per-segment admission; see the module contract.
pub struct Admission {
    client_rate: u32,
    segment_rate: u32,
    hasher: RandomState,
    clients: Table<Bucket>,
    relays: Table<Segment>,
    local: Segment,
    unknown_relays: Bucket,
}

impl Admission {
    /// Rates are clamped to at least 1 per second.
    pub fn new(client_rate: u32, segment_rate: u32, now: Instant) -> Admission {
        let client_rate = client_rate.max(1);
        let segment_rate = segment_rate.max(1);
        Admission {
            client_rate,
            segment_rate,
            hasher: RandomState::new(),
            clients: Table::new(CLIENT_SLOTS, now, Bucket::full(now, client_rate)),
            relays: Table::new(RELAY_SLOTS, now, Segment::new(now, segment_rate, 0.0)),
            local: Segment::new(now, segment_rate, f64::INFINITY),
            unknown_relays: Bucket::full(now, UNKNOWN_RELAY_RATE),
        }
    }

    /// Whether to take a request from hardware address `chaddr` (with `htype`) through relay
    /// `giaddr` (unspecified: the local link); `known`: the lease table knows the client.
    /// [`Admission::admit_client`] then [`Admission::admit_segment`].
    pub fn admit(
        &mut self,
        now: Instant,
        htype: u8,
        chaddr: &[u8],
        giaddr: Ipv4Addr,
        known: bool,
    ) -> Result<(), Refused> {
        self.admit_client(now, htype, chaddr)?;
        self.admit_segment(now, giaddr, known)
    }

    /// The per-client half of [`Admission::admit`]: it needs only the fixed header, so the
    /// driver calls it before decoding the options (a flood from one MAC costs a hash).
    pub fn admit_client(&mut self, now: Instant, htype: u8, chaddr: &[u8]) -> Result<(), Refused> {
        let tag = self.hasher.hash_one((htype, chaddr)) | 1;
        let rate = self.client_rate;
        let slot = match self.clients.find(tag) {
            Some(s) => s,
            None => {
                // The least recently seen client of the set makes room (always possible).
                let s = self
                    .clients
                    .victim(tag, now)
                    .expect("a set has at least one slot");
                *s = Slot {
                    tag,
                    used: true,
                    seen: now,
                    val: Bucket::full(now, rate),
                };
                s
            }
        };
        slot.seen = now;
        if slot.val.take(now, rate) {
            Ok(())
        } else {
            Err(Refused::Client)
        }
    }

    /// The per-segment half of [`Admission::admit`], for a request its client's bucket took.
    pub fn admit_segment(
        &mut self,
        now: Instant,
        giaddr: Ipv4Addr,
        known: bool,
    ) -> Result<(), Refused> {
        let seg_rate = self.segment_rate;
        let seg = if giaddr.is_unspecified() {
            &mut self.local
        } else {
            let tag = self.hasher.hash_one(u32::from(giaddr)) | 1;
            match self.relays.find(tag) {
                Some(s) => {
                    s.seen = now;
                    &mut s.val
                }
                None => {
                    if !self.unknown_relays.take(now, UNKNOWN_RELAY_RATE) {
                        return Err(Refused::UnknownRelays);
                    }
                    let idle_before = now.checked_sub(RELAY_IDLE).unwrap_or(now);
                    if let Some(s) = self.relays.victim(tag, idle_before) {
                        *s = Slot {
                            tag,
                            used: true,
                            seen: now,
                            val: Segment::new(now, seg_rate, RELAY_START_TOKENS),
                        };
                    }
                    // This request came in through the shared bucket.
                    return Ok(());
                }
            }
        };
        let b = if known { &mut seg.known } else { &mut seg.new };
        if b.take(now, seg_rate) {
            Ok(())
        } else {
            Err(Refused::Segment)
        }
    }

    /// Client and relay slots in use (bounded by [`CLIENT_SLOTS`] and [`RELAY_SLOTS`]).
    pub fn slots_used(&self) -> (usize, usize) {
        (self.clients.used(), self.relays.used())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> [u8; 6] {
        let b = n.to_be_bytes();
        [0x52, 0x54, b[0], b[1], b[2], b[3]]
    }

    const RELAY_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
    const RELAY_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
    const LOCAL: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

    /// Step `secs` seconds of virtual time in `per_sec` ticks; `f(now, i)` per tick.
    fn run(t0: Instant, secs: u64, per_sec: u64, mut f: impl FnMut(Instant, u64)) {
        for i in 0..secs * per_sec {
            f(t0 + Duration::from_micros(i * 1_000_000 / per_sec), i);
        }
    }

    #[test]
    fn one_mac_flooding_is_held_to_its_rate_and_starves_nobody() {
        let t0 = crate::sim_origin();
        let mut a = Admission::new(20, 1000, t0);
        let (mut flood_ok, mut other_ok, mut other_sent) = (0, 0, 0);
        // 10,000 requests/s from one MAC for 5 s; another client asks twice a second.
        run(t0, 5, 10_000, |now, i| {
            if a.admit(now, 1, &mac(1), LOCAL, false).is_ok() {
                flood_ok += 1;
            }
            if i % 5_000 == 0 {
                other_sent += 1;
                if a.admit(now, 1, &mac(2), LOCAL, false).is_ok() {
                    other_ok += 1;
                }
            }
        });
        assert!(flood_ok <= 20 + 5 * 20 + 1, "{flood_ok}");
        assert_eq!(other_ok, other_sent, "the other client is never refused");
    }

    #[test]
    fn random_macs_flooding_a_segment_spare_known_clients_and_other_segments() {
        let t0 = crate::sim_origin();
        let mut a = Admission::new(20, 1000, t0);
        let mut flood_ok = 0u64;
        let (mut known_ok, mut relayed_ok, mut asked) = (0, 0, 0);
        // 5,000 new MACs per second on the local link for 10 s.
        run(t0, 10, 5_000, |now, i| {
            if a.admit(now, 1, &mac(1000 + i as u32), LOCAL, false).is_ok() {
                flood_ok += 1;
            }
            if i % 1_000 == 0 {
                asked += 1;
                // A client with a lease renews on the flooded segment...
                known_ok += u32::from(a.admit(now, 1, &mac(1), LOCAL, true).is_ok());
                // ...and a new client behind a relay boots.
                relayed_ok += u32::from(a.admit(now, 1, &mac(2), RELAY_A, false).is_ok());
            }
        });
        assert!(flood_ok <= 1000 + 10 * 1000 + 1, "{flood_ok}");
        assert!(
            flood_ok >= 10 * 1000 - 10,
            "the segment still takes its rate: {flood_ok}"
        );
        assert_eq!(known_ok, asked, "known clients have their own budget");
        // The relay's first request goes through the shared bucket, later ones through its own
        // slot (which starts nearly empty and fills at the segment rate).
        assert_eq!(relayed_ok, asked, "another segment is not touched");
        let (clients, relays) = a.slots_used();
        assert!(clients <= CLIENT_SLOTS && relays <= RELAY_SLOTS);
    }

    #[test]
    fn a_flooding_relay_does_not_starve_another_relay_or_the_local_link() {
        let t0 = crate::sim_origin();
        let mut a = Admission::new(20, 1000, t0);
        // Both relays are known before the flood.
        assert!(a.admit(t0, 1, &mac(1), RELAY_A, false).is_ok());
        assert!(a.admit(t0, 1, &mac(2), RELAY_B, false).is_ok());
        let t1 = t0 + Duration::from_secs(1);
        let (mut a_ok, mut b_ok, mut l_ok, mut asked) = (0u64, 0, 0, 0);
        run(t1, 10, 20_000, |now, i| {
            a_ok += u64::from(
                a.admit(now, 1, &mac(100 + i as u32), RELAY_A, false)
                    .is_ok(),
            );
            if i % 2_000 == 0 {
                asked += 1;
                b_ok += u32::from(
                    a.admit(now, 1, &mac(3 + (i / 2000) as u32), RELAY_B, false)
                        .is_ok(),
                );
                l_ok += u32::from(
                    a.admit(now, 1, &mac(50 + (i / 2000) as u32), LOCAL, false)
                        .is_ok(),
                );
            }
        });
        assert!(a_ok <= 1000 * 11 + 1, "{a_ok}");
        assert_eq!(b_ok, asked);
        assert_eq!(l_ok, asked);
    }

    #[test]
    fn forged_relay_addresses_share_one_small_bucket_and_cannot_evict_live_relays() {
        let t0 = crate::sim_origin();
        let mut a = Admission::new(20, 1000, t0);
        assert!(a.admit(t0, 1, &mac(1), RELAY_B, false).is_ok());
        let t1 = t0 + Duration::from_secs(1);
        let (mut forged_ok, mut b_ok, mut asked) = (0u64, 0, 0);
        run(t1, 10, 10_000, |now, i| {
            let g = Ipv4Addr::from(0x0a80_0000 + i as u32);
            forged_ok += u64::from(a.admit(now, 1, &mac(10_000 + i as u32), g, false).is_ok());
            if i % 1_000 == 0 {
                asked += 1;
                b_ok += u32::from(
                    a.admit(now, 1, &mac(2 + (i / 1000) as u32), RELAY_B, false)
                        .is_ok(),
                );
            }
        });
        // The shared bucket, plus what the forged relays that got a slot could do with their
        // start tokens (each forged address is used once here).
        assert!(forged_ok <= 100 * 11 + 1, "{forged_ok}");
        assert_eq!(b_ok, asked, "a live relay keeps its slot");
        assert!(a.slots_used().1 <= RELAY_SLOTS);
    }

    #[test]
    fn client_table_is_bounded_and_a_flooder_stays_in_it() {
        let t0 = crate::sim_origin();
        let mut a = Admission::new(20, 1_000_000, t0);
        let mut flood_ok = 0;
        // 100,000 distinct MACs interleaved with one MAC at 1,000/s, for 10 s.
        run(t0, 10, 10_000, |now, i| {
            let _ = a.admit(now, 1, &mac(5_000_000 + i as u32), LOCAL, false);
            if i % 10 == 0 && a.admit(now, 1, &mac(7), LOCAL, false).is_ok() {
                flood_ok += 1;
            }
        });
        assert!(a.slots_used().0 <= CLIENT_SLOTS);
        assert!(flood_ok <= 20 + 10 * 20 + 1, "{flood_ok}");
    }
}
