//! Lease state of full mode, and the record format of its file.
//!
//! Contract:
//! - [`LeaseState`] is the in-memory table: one record per address, at most one live record per
//!   client, indexed by address and by client. It has no clock: every call takes `now` in Unix
//!   seconds. It is bounded by the pool: records exist only for addresses the decision put in it
//!   (offered, bound, released or declined inside the range) or that the lease file held.
//! - Every change that must survive a restart (bind, renew, release, decline, an offer that
//!   replaces a persisted record) bumps the table's version; offers do not (a client must REQUEST
//!   before it may use an address, and that REQUEST is checked against the table). The driver
//!   saves the table and then calls [`LeaseState::mark_saved`]; [`LeaseState::is_durable`] says
//!   whether a bound record is on disk as it is now. An ACK that confirms a lease leaves only when
//!   its record is durable, so a crash never leaves an address promised that the file does not
//!   hold.
//! - [`ClientKey`] is fixed-size (no allocation per request): option 61 when sent, else the
//!   hardware type and address. A client identifier of up to [`MAX_ID_VERBATIM`] bytes is kept
//!   as it is; a longer one (RFC 3396 lets it reach about 1 KB) is kept as its 128-bit FNV-1a
//!   hash (`ih-` in the file), so a lease-file line is at most about 100 bytes. The hash is not
//!   collision-resistant against a chosen identifier; that gives an attacker nothing that
//!   sending the victim's own identifier (DHCP has no authentication) does not.
//! - The file format is pure text in and out: [`LeaseState::write_text`] (into a reused buffer)
//!   and [`LeaseState::from_text`], which names the first bad line ([`ParseError`]). Reading and
//!   writing the file (spare file, fsync, atomic exchange) is the driver's
//!   (`crate::store::dhcp`).

use super::policy::PoolRange;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

/// Client identifiers (option 61) up to this many bytes are kept verbatim; longer ones hashed.
pub const MAX_ID_VERBATIM: usize = 32;

/// What a [`ClientKey`] is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyKind {
    /// No client (a declined address).
    Nobody,
    /// Hardware type and address (`hw-`).
    Hw,
    /// Option 61 as sent (`id-`).
    Id,
    /// FNV-1a 128 of an option 61 longer than [`MAX_ID_VERBATIM`] (`ih-`).
    IdHash,
}

/// Who holds a lease: option 61 (client identifier) when sent, else the hardware address.
/// Fixed-size and `Copy`; see the module contract.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientKey {
    kind: KeyKind,
    len: u8,
    bytes: [u8; MAX_ID_VERBATIM],
}

/// FNV-1a, 128 bits (stable across builds and restarts).
fn fnv1a_128(data: &[u8]) -> [u8; 16] {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for b in data {
        h ^= u128::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h.to_be_bytes()
}

impl ClientKey {
    /// The key of a declined address.
    pub const NOBODY: ClientKey = ClientKey {
        kind: KeyKind::Nobody,
        len: 0,
        bytes: [0; MAX_ID_VERBATIM],
    };

    fn from_parts(kind: KeyKind, data: &[u8]) -> ClientKey {
        let mut k = ClientKey {
            kind,
            len: 0,
            bytes: [0; MAX_ID_VERBATIM],
        };
        let n = data.len().min(MAX_ID_VERBATIM);
        k.bytes[..n].copy_from_slice(&data[..n]);
        k.len = n as u8;
        k
    }

    /// The key of option 61 `client_id` when given and not empty, else of `htype` and `chaddr`.
    pub fn new(client_id: Option<&[u8]>, htype: u8, chaddr: &[u8]) -> ClientKey {
        match client_id {
            Some(id) if !id.is_empty() => ClientKey::from_id(id),
            _ => {
                let mut hw = [0u8; MAX_ID_VERBATIM];
                let n = chaddr.len().min(MAX_ID_VERBATIM - 1);
                hw[0] = htype;
                hw[1..=n].copy_from_slice(&chaddr[..n]);
                ClientKey::from_parts(KeyKind::Hw, &hw[..=n])
            }
        }
    }

    fn from_id(id: &[u8]) -> ClientKey {
        if id.len() <= MAX_ID_VERBATIM {
            ClientKey::from_parts(KeyKind::Id, id)
        } else {
            ClientKey::from_parts(KeyKind::IdHash, &fnv1a_128(id))
        }
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The stored bytes (hardware type + address, the identifier, or its hash).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn is_nobody(&self) -> bool {
        self.kind == KeyKind::Nobody
    }

    /// Parse the file form (`hw-<hex>`, `id-<hex>`, `ih-<hex>`, `-`). An `id-` longer than
    /// [`MAX_ID_VERBATIM`] bytes (written by an older version) becomes its `ih-` form.
    pub fn parse(s: &str) -> Option<ClientKey> {
        if s == "-" {
            return Some(ClientKey::NOBODY);
        }
        let (prefix, hex) = s.split_at_checked(3)?;
        // An older version wrote ids of any length a datagram can carry.
        if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 2 * super::wire::MAX_LEN {
            return None;
        }
        let mut bytes = Vec::with_capacity(hex.len() / 2);
        for pair in hex.as_bytes().chunks(2) {
            let p = std::str::from_utf8(pair).ok()?;
            bytes.push(u8::from_str_radix(p, 16).ok()?);
        }
        match prefix {
            "hw-" if bytes.len() <= MAX_ID_VERBATIM => {
                Some(ClientKey::from_parts(KeyKind::Hw, &bytes))
            }
            "id-" => Some(ClientKey::from_id(&bytes)),
            "ih-" if bytes.len() == 16 => Some(ClientKey::from_parts(KeyKind::IdHash, &bytes)),
            _ => None,
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            KeyKind::Nobody => return f.write_str("-"),
            KeyKind::Hw => "hw-",
            KeyKind::Id => "id-",
            KeyKind::IdHash => "ih-",
        };
        f.write_str(prefix)?;
        for b in self.bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a record means (RFC 2131 section 4.3 states, server side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseKind {
    /// OFFERed, held for the client until `expires`; not persisted.
    Offered,
    /// ACKed until `expires`.
    Bound,
    /// Given back (RELEASE) or expired: free, but preferred for the same client.
    Released,
    /// DECLINEd (in use by someone we don't know): out of the pool until `expires`.
    Declined,
}

impl LeaseKind {
    fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Offered => "offered",
            LeaseKind::Bound => "bound",
            LeaseKind::Released => "released",
            LeaseKind::Declined => "declined",
        }
    }
    fn parse(s: &str) -> Option<LeaseKind> {
        Some(match s {
            "bound" => LeaseKind::Bound,
            "released" => LeaseKind::Released,
            "declined" => LeaseKind::Declined,
            "offered" => LeaseKind::Offered,
            _ => return None,
        })
    }
}

/// One address's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// [`ClientKey::NOBODY`] for a declined address.
    pub client: ClientKey,
    /// Unix seconds.
    pub expires: u64,
    pub kind: LeaseKind,
    /// Unix seconds when offered or bound (0 for records read from the file).
    pub since: u64,
    /// An offer made while the pool was nearly full: another client may be offered the same
    /// address when none is free, and the first REQUEST for it wins (RFC 2131 section 4.3.1: the
    /// server need not reserve an offered address).
    pub soft: bool,
    /// The table's version when this record last changed in a way the file must show.
    changed: u64,
    /// Order of offers (not persisted): the oldest soft offer is reclaimed first.
    seq: u64,
}

impl Lease {
    /// Offers made before this one have a lower number (0 for other records).
    pub fn offer_seq(&self) -> u64 {
        self.seq
    }

    /// Whether this record keeps the address from anyone but its client at `now`.
    pub fn holds(&self, now: u64) -> bool {
        match self.kind {
            LeaseKind::Offered | LeaseKind::Bound | LeaseKind::Declined => self.expires > now,
            LeaseKind::Released => false,
        }
    }
}

/// The lease table; see the module contract.
#[derive(Clone, Debug, Default)]
pub struct LeaseState {
    by_ip: BTreeMap<Ipv4Addr, Lease>,
    /// (client, address) of every record that has a client.
    by_client: BTreeSet<(ClientKey, Ipv4Addr)>,
    /// Bumped by every change the file must show.
    version: u64,
    /// The version the last successful save wrote.
    saved: u64,
    /// Offers made so far (numbers [`Lease::offer_seq`]).
    offers: u64,
}

impl PartialEq for LeaseState {
    fn eq(&self, other: &Self) -> bool {
        self.by_ip == other.by_ip
    }
}

impl Eq for LeaseState {}

impl LeaseState {
    pub fn new() -> LeaseState {
        LeaseState::default()
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    /// The records inside `range`, lowest address first.
    pub fn in_range(&self, range: PoolRange) -> impl Iterator<Item = &Lease> {
        self.by_ip.range(range.start..=range.end).map(|(_, l)| l)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    fn client_ips<'a>(&'a self, client: &ClientKey) -> impl Iterator<Item = Ipv4Addr> + 'a {
        let lo = (*client, Ipv4Addr::UNSPECIFIED);
        let hi = (*client, Ipv4Addr::BROADCAST);
        self.by_client.range(lo..=hi).map(|(_, ip)| *ip)
    }

    /// Whether `client` has any record (an offer, a lease, a released address).
    pub fn knows(&self, client: &ClientKey) -> bool {
        !client.is_nobody() && self.client_ips(client).next().is_some()
    }

    /// The client's record (a bound one first, then offered, then released).
    pub fn of_client(&self, client: &ClientKey) -> Option<&Lease> {
        let rank = |k: LeaseKind| match k {
            LeaseKind::Bound => 0,
            LeaseKind::Offered => 1,
            LeaseKind::Released => 2,
            LeaseKind::Declined => 3,
        };
        let mut best: Option<&Lease> = None;
        for l in self.client_ips(client).filter_map(|ip| self.by_ip.get(&ip)) {
            if !matches!(best, Some(b) if rank(l.kind) >= rank(b.kind)) {
                best = Some(l);
            }
        }
        best.filter(|l| l.kind != LeaseKind::Declined)
    }

    /// Whether `client` may have `ip` at `now`: no record, its own record, or a record that
    /// no longer holds the address.
    pub fn is_free_for(&self, ip: Ipv4Addr, client: &ClientKey, now: u64) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(l) if l.kind == LeaseKind::Declined => l.expires <= now,
            Some(l) => &l.client == client || !l.holds(now),
        }
    }

    /// Whether a REQUEST from `client` may bind `ip` at `now`: [`LeaseState::is_free_for`], or
    /// a soft offer to another client (first REQUEST wins).
    pub fn may_bind(&self, ip: Ipv4Addr, client: &ClientKey, now: u64) -> bool {
        self.is_free_for(ip, client, now)
            || self
                .by_ip
                .get(&ip)
                .is_some_and(|l| l.kind == LeaseKind::Offered && l.soft)
    }

    /// Whether `ip` has no record at all (never handed out, or forgotten).
    pub fn is_unused(&self, ip: Ipv4Addr) -> bool {
        !self.by_ip.contains_key(&ip)
    }

    /// Whether the bound record of `ip` is on disk as it is now (see the module contract).
    pub fn is_durable(&self, ip: Ipv4Addr) -> bool {
        self.by_ip
            .get(&ip)
            .is_some_and(|l| l.kind == LeaseKind::Bound && l.changed <= self.saved)
    }

    /// The table's version: bumped by every change the file must show.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A save of the table at `version` succeeded.
    pub fn mark_saved(&mut self, version: u64) {
        self.saved = self.saved.max(version.min(self.version));
    }

    /// Whether a change must be written before the next lease-confirming reply goes out.
    pub fn is_dirty(&self) -> bool {
        self.version > self.saved
    }

    /// [`LeaseState::is_dirty`], then count the table as saved (for tests and callers that
    /// write it themselves).
    pub fn take_dirty(&mut self) -> bool {
        let d = self.is_dirty();
        self.saved = self.version;
        d
    }

    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn remove(&mut self, ip: Ipv4Addr) -> Option<Lease> {
        let old = self.by_ip.remove(&ip)?;
        if !old.client.is_nobody() {
            self.by_client.remove(&(old.client, ip));
        }
        Some(old)
    }

    /// Insert `l`, replacing the address's record; `persisted` bumps the version.
    fn put(&mut self, mut l: Lease, persisted: bool) {
        let old_persisted = self
            .remove(l.ip)
            .is_some_and(|o| o.kind != LeaseKind::Offered);
        if persisted || old_persisted {
            l.changed = self.bump();
        }
        if !l.client.is_nobody() {
            self.by_client.insert((l.client, l.ip));
        }
        self.by_ip.insert(l.ip, l);
    }

    /// Remove `client`'s records other than at `except` (declined ones have no client).
    fn drop_client_records(&mut self, client: &ClientKey, except: Ipv4Addr) {
        let ips: Vec<Ipv4Addr> = self.client_ips(client).filter(|ip| *ip != except).collect();
        for ip in ips {
            if let Some(old) = self.remove(ip) {
                if old.kind != LeaseKind::Offered {
                    self.bump();
                }
            }
        }
    }

    /// Hold `ip` for `client` from `now` until `until` (an OFFER; `soft`: see [`Lease::soft`]).
    /// The client's other offers go. Not persisted.
    pub fn offer(&mut self, ip: Ipv4Addr, client: &ClientKey, now: u64, until: u64, soft: bool) {
        // A bound record of this client at this address stays what it is.
        if let Some(l) = self.by_ip.get(&ip) {
            if &l.client == client && l.kind == LeaseKind::Bound {
                return;
            }
        }
        let other_offers: Vec<Ipv4Addr> = self
            .client_ips(client)
            .filter(|a| *a != ip && self.by_ip[a].kind == LeaseKind::Offered)
            .collect();
        for a in other_offers {
            self.remove(a);
        }
        self.offers += 1;
        self.put(
            Lease {
                ip,
                client: *client,
                expires: until,
                kind: LeaseKind::Offered,
                since: now,
                soft,
                changed: 0,
                seq: self.offers,
            },
            false,
        );
    }

    /// Forget an offer the client turned down (it chose another server).
    pub fn withdraw_offer(&mut self, client: &ClientKey) {
        let offers: Vec<Ipv4Addr> = self
            .client_ips(client)
            .filter(|a| self.by_ip[a].kind == LeaseKind::Offered)
            .collect();
        for a in offers {
            self.remove(a);
        }
    }

    /// Bind `ip` to `client` from `now` until `until` (an ACK); the client's other records go.
    pub fn bind(&mut self, ip: Ipv4Addr, client: &ClientKey, now: u64, until: u64) {
        self.drop_client_records(client, ip);
        self.put(
            Lease {
                ip,
                client: *client,
                expires: until,
                kind: LeaseKind::Bound,
                since: now,
                soft: false,
                changed: 0,
                seq: 0,
            },
            true,
        );
    }

    /// The client gives `ip` back (RELEASE). Returns whether it held it.
    pub fn release(&mut self, ip: Ipv4Addr, client: &ClientKey, now: u64) -> bool {
        let v = self.version + 1;
        match self.by_ip.get_mut(&ip) {
            Some(l) if &l.client == client && l.kind != LeaseKind::Declined => {
                l.kind = LeaseKind::Released;
                l.expires = now;
                l.changed = v;
                self.version = v;
                true
            }
            _ => false,
        }
    }

    /// `ip` is in use by someone else (DECLINE): keep it out of the pool until `until`. The
    /// caller checks that the DECLINE comes from the address's holder.
    pub fn decline(&mut self, ip: Ipv4Addr, until: u64) {
        self.put(
            Lease {
                ip,
                client: ClientKey::NOBODY,
                expires: until,
                kind: LeaseKind::Declined,
                since: 0,
                soft: false,
                changed: 0,
                seq: 0,
            },
            true,
        );
    }

    /// The persisted form: a header line, then `ip client expires kind` per record.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        self.write_text(&mut s);
        s
    }

    /// [`LeaseState::to_text`] into a reused buffer.
    pub fn write_text(&self, s: &mut String) {
        s.push_str("# ringboot DHCP leases v1: address client expires(unix s) state\n");
        for l in self.by_ip.values().filter(|l| l.kind != LeaseKind::Offered) {
            let _ = writeln!(s, "{} {} {} {}", l.ip, l.client, l.expires, l.kind.as_str());
        }
    }

    /// Parse [`LeaseState::to_text`]'s form. Offers in a file are ignored.
    pub fn from_text(text: &str) -> Result<LeaseState, ParseError> {
        let mut st = LeaseState::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || ParseError {
                line: i + 1,
                text: line.chars().take(200).collect(),
            };
            let mut f = line.split_whitespace();
            let (Some(ip), Some(client), Some(expires), Some(kind), None) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                return Err(bad());
            };
            let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
            let expires: u64 = expires.parse().map_err(|_| bad())?;
            let kind = LeaseKind::parse(kind).ok_or_else(bad)?;
            if kind == LeaseKind::Offered {
                continue;
            }
            let client = ClientKey::parse(client).ok_or_else(bad)?;
            st.put(
                Lease {
                    ip,
                    client,
                    expires,
                    kind,
                    since: 0,
                    soft: false,
                    changed: 0,
                    seq: 0,
                },
                false,
            );
        }
        st.version = 0;
        st.saved = 0;
        Ok(st)
    }
}

/// A lease-file line that is not a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("lease file line {line} is not `address client expires state`: {text:?} (fix or delete the line)")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    /// The line, cut at 200 characters.
    pub text: String,
}

/// Clients and addresses for the tests of the lease table and of its file.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::ClientKey;
    use std::net::Ipv4Addr;

    /// Client `n`: hardware address 52:54:00:00:00:n.
    pub(crate) fn key(n: u8) -> ClientKey {
        ClientKey::new(None, 1, &[0x52, 0x54, 0, 0, 0, n])
    }

    /// 10.0.0.n.
    pub(crate) fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{ip, key};
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key(1).to_string(), "hw-01525400000001");
        assert_eq!(
            ClientKey::new(Some(&[1, 2]), 1, &[9]).to_string(),
            "id-0102"
        );
        assert_eq!(ClientKey::new(Some(&[]), 1, &[9]).to_string(), "hw-0109");
        for k in [
            key(1),
            ClientKey::new(Some(&[1, 2]), 1, &[9]),
            ClientKey::NOBODY,
        ] {
            assert_eq!(ClientKey::parse(&k.to_string()), Some(k));
        }
        for bad in ["", "hw-", "hw-0", "xx-01", "hw-zz", "ih-0102"] {
            assert_eq!(ClientKey::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn long_client_ids_are_bounded_and_stable() {
        let id32 = [7u8; MAX_ID_VERBATIM];
        let k = ClientKey::new(Some(&id32), 1, &[9]);
        assert_eq!(k.kind(), KeyKind::Id);
        assert_eq!(k.bytes(), &id32);
        let long: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        let h = ClientKey::new(Some(&long), 1, &[9]);
        assert_eq!(h.kind(), KeyKind::IdHash);
        assert_eq!(h.bytes().len(), 16);
        assert_eq!(h, ClientKey::new(Some(&long), 1, &[1, 2, 3]), "stable");
        let mut other = long.clone();
        other[1000] ^= 1;
        assert_ne!(h, ClientKey::new(Some(&other), 1, &[9]));
        // Stable across versions: a fixed value.
        assert_eq!(
            ClientKey::new(Some(&[0xab; 40]), 1, &[]).to_string(),
            format!("ih-{}", {
                let mut s = String::new();
                for b in fnv1a_128(&[0xab; 40]) {
                    let _ = write!(s, "{b:02x}");
                }
                s
            })
        );
        assert_eq!(
            fnv1a_128(b""),
            0x6c62_272e_07bb_0142_62b8_2175_6295_c58du128.to_be_bytes()
        );
        assert_eq!(
            fnv1a_128(b"a"),
            0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964u128.to_be_bytes(),
            "the published FNV-1a 128 test vector"
        );
        // A line of a 1 KB id is short; an old file's long `id-` is read as its hash.
        let mut st = LeaseState::new();
        st.bind(ip(10), &h, 0, 3700);
        let text = st.to_text();
        assert!(text.lines().all(|l| l.len() < 120), "{text}");
        let mut old_hex = String::from("id-");
        for b in &long {
            let _ = write!(old_hex, "{b:02x}");
        }
        let back = LeaseState::from_text(&format!("10.0.0.10 {old_hex} 3700 bound\n")).unwrap();
        assert_eq!(back.get(ip(10)).unwrap().client, h);
        assert!(back.knows(&h));
    }

    #[test]
    fn offer_bind_release_decline() {
        let mut st = LeaseState::new();
        st.offer(ip(10), &key(1), 100, 160, false);
        assert!(!st.take_dirty(), "offers are not persisted");
        assert!(st.knows(&key(1)));
        assert!(!st.is_free_for(ip(10), &key(2), 100));
        assert!(
            !st.may_bind(ip(10), &key(2), 100),
            "a firm offer is reserved"
        );
        assert!(st.is_free_for(ip(10), &key(1), 100));
        assert!(st.is_free_for(ip(10), &key(2), 160), "offer expired");
        st.bind(ip(10), &key(1), 100, 3700);
        assert!(st.is_dirty());
        assert!(!st.is_durable(ip(10)));
        let v = st.version();
        st.mark_saved(v);
        assert!(st.is_durable(ip(10)));
        assert!(!st.is_dirty());
        assert_eq!(st.of_client(&key(1)).unwrap().kind, LeaseKind::Bound);
        assert!(!st.is_free_for(ip(10), &key(2), 200));
        assert!(!st.may_bind(ip(10), &key(2), 200));
        assert!(st.release(ip(10), &key(1), 300));
        assert!(st.is_dirty());
        assert!(!st.release(ip(10), &key(2), 300));
        assert!(st.is_free_for(ip(10), &key(2), 301));
        assert_eq!(
            st.of_client(&key(1)).unwrap().ip,
            ip(10),
            "released: still preferred"
        );
        st.decline(ip(11), 1000);
        assert!(!st.is_free_for(ip(11), &key(1), 999));
        assert!(st.is_free_for(ip(11), &key(1), 1000));
        // Binding elsewhere drops the old record.
        st.bind(ip(12), &key(1), 400, 5000);
        assert!(st.get(ip(10)).is_none());
        assert_eq!(st.of_client(&key(1)).unwrap().ip, ip(12));
        // An offer to another client replaces the declined record only when asked to.
        st.offer(ip(13), &key(2), 400, 410, true);
        st.offer(ip(14), &key(2), 400, 410, true);
        assert!(st.get(ip(13)).is_none(), "one offer per client");
        assert!(
            st.may_bind(ip(14), &key(3), 405),
            "a soft offer: first REQUEST wins"
        );
        st.withdraw_offer(&key(2));
        assert!(!st.knows(&key(2)));
        assert!(st.get(ip(14)).is_none());
    }

    #[test]
    fn text_round_trip_and_errors() {
        let mut st = LeaseState::new();
        st.bind(ip(10), &key(1), 100, 3700);
        st.decline(ip(11), 1000);
        st.offer(ip(12), &key(3), 50, 100, false);
        let text = st.to_text();
        assert!(!text.contains("offered"));
        let back = LeaseState::from_text(&text).unwrap();
        for n in [10, 11] {
            let (a, b) = (back.get(ip(n)).unwrap(), st.get(ip(n)).unwrap());
            assert_eq!((a.client, a.expires, a.kind), (b.client, b.expires, b.kind));
        }
        assert!(back.get(ip(12)).is_none());
        assert!(back.is_durable(ip(10)), "what the file holds is durable");
        assert!(!back.is_dirty());
        assert!(matches!(
            LeaseState::from_text("10.0.0.1 x\n"),
            Err(ParseError { line: 1, .. })
        ));
        assert!(matches!(
            LeaseState::from_text("10.0.0.1 hw-zz 5 bound\n"),
            Err(ParseError { line: 1, .. })
        ));
    }
}
