//! Admission of new unicast transfers: one budget shared by every worker's endpoint.
//!
//! Contract:
//! - `max_transfers` is split between the workers ([`AdmissionConfig::share`]; the shares add up
//!   to it): each worker's endpoint checks its own share before asking here, so the total never exceeds
//!   `max_transfers` (or the number of workers, if that is larger), and a worker whose share is
//!   full can make room among its own transfers (requests are spread over the workers by the
//!   kernel's `SO_REUSEPORT` hash, so a share is a fair slice of the load).
//! - [`Admission::admit`] is asked once per request that would open a transfer socket. It grants a
//!   [`Ticket`] when (1) the client's address holds fewer than `max_per_client` transfers and (2)
//!   the address is within its rate of new transfers (a GCRA token bucket: `client_rate` per
//!   second, bursts of up to `max_per_client`), whichever worker it reaches. Otherwise it says why
//!   ([`OverCap`]); the endpoint refuses with ERROR 0 and [`OverCap::message`].
//! - A [`Ticket`] lives as long as the transfer's socket (the endpoint holds it until the driver
//!   releases the transfer, after closing its descriptor), so the shares bound the descriptors and
//!   memory of all transfers. It can be handed to a new request ([`Admission::reassign`]) when the
//!   endpoint drops a transfer whose client never answered to make room: the total does not
//!   change.
//! - A "client address" is an IPv4 address, or the /64 prefix of an IPv6 address (one host can
//!   own a whole /64).
//! - The per-address table is bounded: at most `ceiling + SOURCE_TABLE_SLACK` entries (the
//!   ceiling of `max_transfers`, see below; allocated as it fills), held
//!   in a map with random hash keys. An entry carries information only while its address has
//!   transfers or a bucket that is not yet full again; when the table is full, entries without
//!   information go first, then (counted in [`Admission::forgotten`]) idle entries with a partly
//!   spent bucket. Entries with transfers are never dropped, and there are at most the ceiling
//!   of them, so an insert always finds room.
//! - [`Admission::reconfigure`] (a SIGHUP reload) changes the caps for every request that
//!   follows (read under the lock, once per request). `max_transfers` may rise up to the
//!   *ceiling* given at start ([`Admission::with_ceiling`]: what the descriptor limit allows;
//!   nothing is preallocated per transfer, the table and the workers' slots grow on demand), and
//!   the workers take their new share ([`Admission::current`] + [`AdmissionConfig::share`]) at
//!   their next request; lowered below its start value it is also enforced here (refused as
//!   [`OverCap::Busy`] while the total is at it), so a worker that has not yet taken its smaller
//!   share cannot exceed it. Running transfers keep their tickets.
//! - No clock is read here: `now` comes in. One mutex guards the state (shared memory, no I/O);
//!   it is taken once per new transfer and once per ended transfer, never per datagram.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Entries of the per-address table beyond `max_transfers`: addresses remembered for their rate
/// after their transfers ended.
pub const SOURCE_TABLE_SLACK: usize = 4096;

/// The limits, from `--max-transfers`, `--max-transfers-per-client`, `--client-rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Transfers at once, all clients together.
    pub max_transfers: usize,
    /// Transfers at once from one client address; also the burst of the rate limit.
    pub max_per_client: usize,
    /// New transfers per second from one client address; 0: no rate limit.
    pub client_rate: u32,
}

impl AdmissionConfig {
    /// Worker `w`'s share of `max_transfers` among `workers` (at least 1; they add up to
    /// `max_transfers` when it is at least `workers`).
    pub fn share(&self, w: usize, workers: usize) -> usize {
        let workers = workers.max(1);
        let base = self.max_transfers / workers;
        let extra = usize::from(w % workers < self.max_transfers % workers);
        (base + extra).max(1)
    }

    /// Defaults sized to `budget` descriptors available for transfer sockets: at most 4,096
    /// transfers, an eighth of them per client (between 1 and 64), 16 new transfers a second per
    /// client.
    pub fn for_descriptors(budget: u64) -> Self {
        let max_transfers = budget.clamp(1, 4096) as usize;
        AdmissionConfig {
            max_transfers,
            max_per_client: (max_transfers / 8).clamp(1, 64),
            client_rate: 16,
        }
    }
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverCap {
    /// The worker's share of `max_transfers` is in use (decided by its endpoint).
    Busy,
    /// The client's address holds `max_per_client` transfers.
    ClientBusy,
    /// The client's address exceeds its rate of new transfers.
    ClientRate,
}

impl OverCap {
    /// The ERROR message the client gets.
    pub fn message(self) -> &'static str {
        match self {
            OverCap::Busy => "server busy: too many transfers, try again later",
            OverCap::ClientBusy => "too many transfers from your address at once",
            OverCap::ClientRate => "too many requests from your address, slow down",
        }
    }

    /// Short word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OverCap::Busy => "server-busy",
            OverCap::ClientBusy => "client-busy",
            OverCap::ClientRate => "client-rate",
        }
    }
}

/// The table key of a client address: IPv4 as a v4-mapped address, IPv6 cut to its /64.
fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(a) & !((1u128 << 64) - 1),
        },
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Transfers this address holds.
    active: u32,
    /// GCRA theoretical arrival time: the bucket is full again at `tat`.
    tat: Instant,
}

/// The limits in force, with the rate limit's derived durations.
#[derive(Clone, Copy, Debug)]
struct Caps {
    cfg: AdmissionConfig,
    /// One new transfer's share of the bucket (1 / rate), and the bucket's depth beyond one.
    interval: Duration,
    tolerance: Duration,
}

impl Caps {
    fn new(cfg: AdmissionConfig) -> Caps {
        let interval = if cfg.client_rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1) / cfg.client_rate
        };
        Caps {
            cfg,
            interval,
            tolerance: interval
                * (cfg.max_per_client.min(u32::MAX as usize) as u32).saturating_sub(1),
        }
    }
}

struct State {
    caps: Caps,
    total: usize,
    table: HashMap<u128, Entry>,
    forgotten: u64,
}

/// The shared admission state. See the module docs.
pub struct Admission {
    /// The limits at start.
    cfg: AdmissionConfig,
    /// The most `max_transfers` a reload may set.
    ceiling: usize,
    state: Mutex<State>,
}

impl Admission {
    /// The admission of `cfg`, whose `max_transfers` a reload may not raise.
    pub fn new(cfg: AdmissionConfig) -> Arc<Admission> {
        Self::with_ceiling(cfg, cfg.max_transfers)
    }

    /// The admission of `cfg`, whose `max_transfers` a reload may raise up to `ceiling` (at
    /// least the start value).
    pub fn with_ceiling(cfg: AdmissionConfig, ceiling: usize) -> Arc<Admission> {
        let cfg = AdmissionConfig {
            max_transfers: cfg.max_transfers.max(1),
            max_per_client: cfg.max_per_client.max(1),
            ..cfg
        };
        let capacity = cfg.max_transfers + SOURCE_TABLE_SLACK;
        Arc::new(Admission {
            cfg,
            ceiling: ceiling.max(cfg.max_transfers),
            state: Mutex::new(State {
                caps: Caps::new(cfg),
                total: 0,
                table: HashMap::with_capacity(capacity),
                forgotten: 0,
            }),
        })
    }

    /// The limits at start.
    pub fn config(&self) -> AdmissionConfig {
        self.cfg
    }

    /// The limits in force (after [`reconfigure`](Self::reconfigure)).
    pub fn current(&self) -> AdmissionConfig {
        self.lock().caps.cfg
    }

    /// The most `max_transfers` a reload may set.
    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// Apply `next` to the requests that follow (see the module docs); returns the limits now
    /// in force (`max_transfers` at most the ceiling).
    pub fn reconfigure(&self, next: AdmissionConfig) -> AdmissionConfig {
        let cfg = AdmissionConfig {
            max_transfers: next.max_transfers.clamp(1, self.ceiling),
            max_per_client: next.max_per_client.max(1),
            client_rate: next.client_rate,
        };
        self.lock().caps = Caps::new(cfg);
        cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent counters (every update is
        // a single step), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Transfers admitted and not yet released.
    pub fn total(&self) -> usize {
        self.lock().total
    }

    /// Addresses whose partly spent rate bucket was dropped because the table was full.
    pub fn forgotten(&self) -> u64 {
        self.lock().forgotten
    }

    /// Entries in the per-address table (at most `ceiling + SOURCE_TABLE_SLACK`).
    pub fn tracked(&self) -> usize {
        self.lock().table.len()
    }

    /// Check the per-address limits for `k` at `now`; on success the entry's new bucket time.
    fn check_client(&self, st: &mut State, k: u128, now: Instant) -> Result<Instant, OverCap> {
        // Entries with transfers are at most the ceiling (whatever the reloads did): room is
        // always found.
        let capacity = self.ceiling + SOURCE_TABLE_SLACK;
        if !st.table.contains_key(&k) && st.table.len() >= capacity {
            // Entries whose bucket is full and that hold nothing carry no information.
            st.table.retain(|_, e| e.active > 0 || e.tat > now);
            if st.table.len() >= capacity {
                let before = st.table.len();
                st.table.retain(|_, e| e.active > 0);
                st.forgotten += (before - st.table.len()) as u64;
            }
        }
        let caps = st.caps;
        let e = st.table.entry(k).or_insert(Entry {
            active: 0,
            tat: now,
        });
        if e.active as usize >= caps.cfg.max_per_client {
            return Err(OverCap::ClientBusy);
        }
        if caps.interval.is_zero() {
            return Ok(now);
        }
        let tat = e.tat.max(now);
        if tat.saturating_duration_since(now) > caps.tolerance {
            return Err(OverCap::ClientRate);
        }
        Ok(tat + caps.interval)
    }

    /// Whether `ip` is within its own limits at `now` (nothing is counted).
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), OverCap> {
        let mut st = self.lock();
        self.check_client(&mut st, key(ip), now).map(|_| ())
    }

    /// Admit one new transfer from `ip` at `now`. See the module docs.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, OverCap> {
        let k = key(ip);
        let mut st = self.lock();
        // Only after a reload lowered it: the shares alone keep the total within the start cap.
        if st.caps.cfg.max_transfers < self.cfg.max_transfers
            && st.total >= st.caps.cfg.max_transfers
        {
            return Err(OverCap::Busy);
        }
        let tat = self.check_client(&mut st, k, now)?;
        st.total += 1;
        if let Some(e) = st.table.get_mut(&k) {
            e.active += 1;
            e.tat = tat;
        }
        Ok(Ticket {
            adm: self.clone(),
            key: k,
        })
    }

    /// Hand `ticket` (of a transfer being dropped) to a new request from `ip`, if that address is
    /// within its own limits; the total stays the same. On refusal the ticket comes back.
    pub fn reassign(
        &self,
        mut ticket: Ticket,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Ticket, (Ticket, OverCap)> {
        let k = key(ip);
        let mut st = self.lock();
        // The ticket's own place does not count against the new address (it may be the same).
        if let Some(old) = st.table.get_mut(&ticket.key) {
            old.active = old.active.saturating_sub(1);
        }
        match self.check_client(&mut st, k, now) {
            Ok(tat) => {
                if let Some(e) = st.table.get_mut(&k) {
                    e.active += 1;
                    e.tat = tat;
                }
                ticket.key = k;
                Ok(ticket)
            }
            Err(r) => {
                st.table
                    .entry(ticket.key)
                    .or_insert(Entry {
                        active: 0,
                        tat: now,
                    })
                    .active += 1;
                Err((ticket, r))
            }
        }
    }

    fn release(&self, k: u128) {
        let mut st = self.lock();
        st.total = st.total.saturating_sub(1);
        if let Some(e) = st.table.get_mut(&k) {
            e.active = e.active.saturating_sub(1);
        }
    }
}

/// One admitted transfer; releases its place when dropped.
pub struct Ticket {
    adm: Arc<Admission>,
    key: u128,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.adm.release(self.key);
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload changes the per-address caps for the next request, lowers the global cap, and
    /// cannot raise it above its ceiling (here the start value); tickets already held stay valid.
    #[test]
    fn reconfigure_applies_to_the_next_request() {
        let a = adm(10, 1, 0);
        let now = crate::sim_origin();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t1 = a.admit(ip, now).unwrap();
        assert_eq!(a.admit(ip, now).unwrap_err(), OverCap::ClientBusy);
        let c = a.reconfigure(AdmissionConfig {
            max_transfers: 2,
            max_per_client: 5,
            client_rate: 0,
        });
        assert_eq!(c.max_transfers, 2);
        assert_eq!(a.current(), c);
        assert_eq!(
            a.config().max_transfers,
            10,
            "the start limits stay visible"
        );
        let t2 = a.admit(ip, now).unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(a.admit(other, now).unwrap_err(), OverCap::Busy);
        drop(t2);
        let _t3 = a.admit(other, now).unwrap();
        let c = a.reconfigure(AdmissionConfig {
            max_transfers: 1000,
            max_per_client: 5,
            client_rate: 0,
        });
        assert_eq!(
            c.max_transfers, 10,
            "not above the start value (the ceiling)"
        );
        drop(t1);
        assert_eq!(a.total(), 1);
    }

    #[test]
    fn reconfigure_raises_up_to_the_ceiling() {
        let t0 = crate::sim_origin();
        let a = Admission::with_ceiling(
            AdmissionConfig {
                max_transfers: 1,
                max_per_client: 8,
                client_rate: 0,
            },
            3,
        );
        let _t1 = a.admit(ip("10.0.0.1"), t0).unwrap();
        let c = a.reconfigure(AdmissionConfig {
            max_transfers: 100,
            max_per_client: 8,
            client_rate: 0,
        });
        assert_eq!(c.max_transfers, 3, "clamped to the ceiling");
        assert_eq!(a.current().share(0, 1), 3, "the worker's share follows");
        let _t2 = a.admit(ip("10.0.0.1"), t0).unwrap();
        let _t3 = a.admit(ip("10.0.0.2"), t0).unwrap();
        assert_eq!(a.total(), 3);
    }

    fn adm(max: usize, per: usize, rate: u32) -> Arc<Admission> {
        Admission::new(AdmissionConfig {
            max_transfers: max,
            max_per_client: per,
            client_rate: rate,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_client_cap_and_total() {
        let a = adm(5, 3, 0);
        let t0 = crate::sim_origin();
        let mut held: Vec<Ticket> = (0..3)
            .map(|_| a.admit(ip("10.0.0.1"), t0).unwrap())
            .collect();
        assert_eq!(
            a.admit(ip("10.0.0.1"), t0).unwrap_err(),
            OverCap::ClientBusy
        );
        held.push(a.admit(ip("10.0.0.2"), t0).unwrap());
        held.push(a.admit(ip("10.0.0.3"), t0).unwrap());
        assert_eq!(a.total(), 5);
        held.pop();
        assert_eq!(a.total(), 4);
        drop(held);
        assert_eq!(a.total(), 0);
    }

    #[test]
    fn shares_add_up() {
        for max in [1usize, 2, 7, 92, 4096] {
            for workers in [1usize, 2, 3, 16] {
                let c = AdmissionConfig {
                    max_transfers: max,
                    max_per_client: 1,
                    client_rate: 0,
                };
                let sum: usize = (0..workers).map(|w| c.share(w, workers)).sum();
                assert_eq!(sum, max.max(workers), "{max} over {workers}");
            }
        }
    }

    #[test]
    fn ipv6_addresses_of_one_64_are_one_client() {
        let a = adm(100, 2, 0);
        let t0 = crate::sim_origin();
        let _x = a.admit(ip("2001:db8::1"), t0).unwrap();
        let _y = a.admit(ip("2001:db8::ffff:2"), t0).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8::3"), t0).unwrap_err(),
            OverCap::ClientBusy
        );
        assert!(a.admit(ip("2001:db8:0:1::1"), t0).is_ok());
        // A v4-mapped address is the IPv4 client.
        let _z = a.admit(ip("192.0.2.1"), t0).unwrap();
        let _w = a.admit(ip("::ffff:192.0.2.1"), t0).unwrap();
        assert_eq!(
            a.admit(ip("192.0.2.1"), t0).unwrap_err(),
            OverCap::ClientBusy
        );
    }

    #[test]
    fn rate_is_a_token_bucket() {
        // 10 per second, bursts of 4.
        let a = adm(1000, 4, 10);
        let t0 = crate::sim_origin();
        let c = ip("10.0.0.9");
        let mut ok = 0;
        for _ in 0..20 {
            if let Ok(t) = a.admit(c, t0) {
                ok += 1;
                drop(t);
            }
        }
        assert_eq!(ok, 4, "the burst");
        assert_eq!(a.admit(c, t0).unwrap_err(), OverCap::ClientRate);
        // Over 10 s at 1 request a ms: about 10 a second get through.
        let mut ok = 0;
        for ms in 1..=10_000u64 {
            if a.admit(c, t0 + Duration::from_millis(ms)).is_ok() {
                ok += 1;
            }
        }
        assert!((99..=101).contains(&ok), "{ok}");
        // Another address is not affected.
        assert!(a.admit(ip("10.0.0.10"), t0).is_ok());
    }

    #[test]
    fn reassign_moves_a_ticket_between_clients() {
        let a = adm(1, 1, 0);
        let t0 = crate::sim_origin();
        let t = a.admit(ip("10.0.0.1"), t0).unwrap();
        let t = a.reassign(t, ip("10.0.0.2"), t0).unwrap();
        assert_eq!(a.total(), 1);
        // 10.0.0.1 holds nothing now; 10.0.0.2 holds its one, which it may pass on to itself.
        let t = a.reassign(t, ip("10.0.0.2"), t0).unwrap();
        assert_eq!(a.total(), 1);
        let b = Admission::new(AdmissionConfig {
            max_transfers: 2,
            max_per_client: 1,
            client_rate: 0,
        });
        let x = b.admit(ip("10.0.0.1"), t0).unwrap();
        let _y = b.admit(ip("10.0.0.2"), t0).unwrap();
        let (x, r) = b.reassign(x, ip("10.0.0.2"), t0).unwrap_err();
        assert_eq!(r, OverCap::ClientBusy);
        // Refused: 10.0.0.1 still holds it.
        assert_eq!(
            b.admit(ip("10.0.0.1"), t0).unwrap_err(),
            OverCap::ClientBusy
        );
        drop(x);
        assert!(b.admit(ip("10.0.0.1"), t0).is_ok());
        drop(t);
        assert_eq!(a.total(), 0);
        assert!(a.admit(ip("10.0.0.1"), t0).is_ok());
    }

    #[test]
    fn table_is_bounded_under_a_flood_of_addresses() {
        let a = adm(16, 2, 1);
        let t0 = crate::sim_origin();
        let held: Vec<Ticket> = (0..8)
            .map(|i| a.admit(IpAddr::from([10, 1, 0, i / 2]), t0).unwrap())
            .collect();
        for i in 0..50_000u32 {
            let now = t0 + Duration::from_micros(i as u64);
            // Each address spends part of its bucket, so its entry carries information.
            let r = a.admit(IpAddr::from((0x0b00_0000 + i).to_be_bytes()), now);
            assert!(r.is_ok());
            assert!(a.tracked() <= 16 + SOURCE_TABLE_SLACK);
        }
        assert!(a.forgotten() > 0);
        // The addresses holding transfers were kept.
        assert_eq!(
            a.admit(IpAddr::from([10, 1, 0, 0]), t0).unwrap_err(),
            OverCap::ClientBusy
        );
        assert_eq!(a.total(), 8);
        drop(held);
        assert_eq!(a.total(), 0);
    }

    #[test]
    fn defaults_follow_the_descriptor_budget() {
        let d = AdmissionConfig::for_descriptors(100_000);
        assert_eq!((d.max_transfers, d.max_per_client), (4096, 64));
        let d = AdmissionConfig::for_descriptors(91);
        assert_eq!((d.max_transfers, d.max_per_client), (91, 11));
        let d = AdmissionConfig::for_descriptors(0);
        assert_eq!((d.max_transfers, d.max_per_client), (1, 1));
    }
}
