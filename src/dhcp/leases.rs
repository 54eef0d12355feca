//! Lease state of full mode, and its file.
//!
//! Contract:
//! - [`LeaseState`] is the in-memory table: one record per address, at most one live record per
//!   client. It has no clock: every call takes `now` in Unix seconds. Changes that must survive a
//!   restart (bind, renew, release, decline) set the dirty flag; offers do not (a client must
//!   REQUEST before it may use an address, and that REQUEST is checked against the table).
//! - [`LeaseStore::save`] writes the whole table to a temporary file, fsyncs it, renames it over
//!   the lease file and fsyncs the directory. The driver calls it whenever the state is dirty and
//!   BEFORE it sends the ACK, so a crash never leaves an address promised that the file does not
//!   hold. A few hundred leases make a few kilobytes: rewriting is the simplest correct thing.
//! - [`LeaseStore::load`] reads it back at start; a missing file is an empty table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Who holds a lease: option 61 (client identifier) when sent, else the hardware address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientKey(pub String);

impl ClientKey {
    /// `id-<hex>` from option 61, else `hw-<hex>` of htype and chaddr.
    pub fn new(client_id: Option<&[u8]>, htype: u8, chaddr: &[u8]) -> ClientKey {
        let mut s = String::with_capacity(3 + 2 * (chaddr.len() + 1));
        match client_id {
            Some(id) if !id.is_empty() => {
                s.push_str("id-");
                id.iter().for_each(|b| {
                    let _ = write!(s, "{b:02x}");
                });
            }
            _ => {
                let _ = write!(s, "hw-{htype:02x}");
                chaddr.iter().for_each(|b| {
                    let _ = write!(s, "{b:02x}");
                });
            }
        }
        ClientKey(s)
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
    /// Empty for a declined address.
    pub client: ClientKey,
    /// Unix seconds.
    pub expires: u64,
    pub kind: LeaseKind,
}

impl Lease {
    /// Whether this record keeps the address from anyone but its client at `now`.
    pub fn holds(&self, now: u64) -> bool {
        match self.kind {
            LeaseKind::Offered | LeaseKind::Bound | LeaseKind::Declined => self.expires > now,
            LeaseKind::Released => false,
        }
    }
}

/// The lease table; see the module contract.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseState {
    by_ip: BTreeMap<Ipv4Addr, Lease>,
    dirty: bool,
}

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

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// The client's record (a bound one first, then offered, then released).
    pub fn of_client(&self, client: &ClientKey) -> Option<&Lease> {
        let mut best: Option<&Lease> = None;
        let rank = |k: LeaseKind| match k {
            LeaseKind::Bound => 0,
            LeaseKind::Offered => 1,
            LeaseKind::Released => 2,
            LeaseKind::Declined => 3,
        };
        for l in self.by_ip.values().filter(|l| &l.client == client) {
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

    /// Whether `ip` has no record at all (never handed out, or forgotten).
    pub fn is_unused(&self, ip: Ipv4Addr) -> bool {
        !self.by_ip.contains_key(&ip)
    }

    fn drop_client_records(&mut self, client: &ClientKey, except: Ipv4Addr) {
        let mut persisted_gone = false;
        self.by_ip.retain(|ip, l| {
            let keep = *ip == except || &l.client != client || l.kind == LeaseKind::Declined;
            if !keep && l.kind != LeaseKind::Offered {
                persisted_gone = true;
            }
            keep
        });
        if persisted_gone {
            self.dirty = true;
        }
    }

    /// Hold `ip` for `client` until `until` (an OFFER). Not persisted.
    pub fn offer(&mut self, ip: Ipv4Addr, client: &ClientKey, until: u64) {
        // A bound or released record of this client at this address stays what it is.
        if let Some(l) = self.by_ip.get(&ip) {
            if &l.client == client && l.kind == LeaseKind::Bound {
                return;
            }
        }
        self.by_ip
            .retain(|a, l| !(*a != ip && &l.client == client && l.kind == LeaseKind::Offered));
        let was_persisted = self
            .by_ip
            .get(&ip)
            .is_some_and(|l| l.kind != LeaseKind::Offered);
        self.by_ip.insert(
            ip,
            Lease {
                ip,
                client: client.clone(),
                expires: until,
                kind: LeaseKind::Offered,
            },
        );
        if was_persisted {
            self.dirty = true;
        }
    }

    /// Forget an offer the client turned down (it chose another server).
    pub fn withdraw_offer(&mut self, client: &ClientKey) {
        self.by_ip
            .retain(|_, l| !(&l.client == client && l.kind == LeaseKind::Offered));
    }

    /// Bind `ip` to `client` until `until` (an ACK); the client's other records go.
    pub fn bind(&mut self, ip: Ipv4Addr, client: &ClientKey, until: u64) {
        self.drop_client_records(client, ip);
        self.by_ip.insert(
            ip,
            Lease {
                ip,
                client: client.clone(),
                expires: until,
                kind: LeaseKind::Bound,
            },
        );
        self.dirty = true;
    }

    /// The client gives `ip` back (RELEASE). Returns whether it held it.
    pub fn release(&mut self, ip: Ipv4Addr, client: &ClientKey, now: u64) -> bool {
        match self.by_ip.get_mut(&ip) {
            Some(l) if &l.client == client && l.kind != LeaseKind::Declined => {
                l.kind = LeaseKind::Released;
                l.expires = now;
                self.dirty = true;
                true
            }
            _ => false,
        }
    }

    /// `ip` is in use by someone else (DECLINE): keep it out of the pool until `until`.
    pub fn decline(&mut self, ip: Ipv4Addr, until: u64) {
        self.by_ip.insert(
            ip,
            Lease {
                ip,
                client: ClientKey(String::new()),
                expires: until,
                kind: LeaseKind::Declined,
            },
        );
        self.dirty = true;
    }

    /// Whether a change must be written before the next reply goes out; clears the flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Set the dirty flag again (a save failed: try again next time).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The persisted form: a header line, then `ip client expires kind` per record.
    pub fn to_text(&self) -> String {
        let mut s =
            String::from("# ringboot DHCP leases v1: address client expires(unix s) state\n");
        for l in self.by_ip.values().filter(|l| l.kind != LeaseKind::Offered) {
            let client = if l.client.0.is_empty() {
                "-"
            } else {
                &l.client.0
            };
            let _ = writeln!(s, "{} {} {} {}", l.ip, client, l.expires, l.kind.as_str());
        }
        s
    }

    /// Parse [`LeaseState::to_text`]'s form. Offers in a file are ignored.
    pub fn from_text(text: &str) -> Result<LeaseState, LeaseFileError> {
        let mut st = LeaseState::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || LeaseFileError::Line {
                line: i + 1,
                text: line.to_owned(),
            };
            let f: Vec<&str> = line.split_whitespace().collect();
            let &[ip, client, expires, kind] = &f[..] else {
                return Err(bad());
            };
            let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
            let expires: u64 = expires.parse().map_err(|_| bad())?;
            let kind = LeaseKind::parse(kind).ok_or_else(bad)?;
            if kind == LeaseKind::Offered {
                continue;
            }
            let client = ClientKey(if client == "-" {
                String::new()
            } else {
                client.to_owned()
            });
            st.by_ip.insert(
                ip,
                Lease {
                    ip,
                    client,
                    expires,
                    kind,
                },
            );
        }
        Ok(st)
    }
}

/// The lease file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LeaseFileError {
    #[error("lease file line {line} is not `address client expires state`: {text:?} (fix or delete the line)")]
    Line { line: usize, text: String },
    #[error("lease file {path}: {source} (check the directory exists and is writable, or set lease_file)")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The lease file on disk.
#[derive(Clone, Debug)]
pub struct LeaseStore {
    path: PathBuf,
}

impl LeaseStore {
    pub fn new(path: impl Into<PathBuf>) -> LeaseStore {
        LeaseStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> LeaseFileError {
        LeaseFileError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Read the table; a missing file is an empty table. Creates the directory if needed and
    /// checks it is writable by saving once.
    pub fn load(&self) -> Result<LeaseState, LeaseFileError> {
        let st = match fs::read_to_string(&self.path) {
            Ok(text) => LeaseState::from_text(&text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => LeaseState::default(),
            Err(e) => return Err(self.io(e)),
        };
        self.save(&st)?;
        Ok(st)
    }

    /// Write temp, fsync, rename, fsync the directory.
    pub fn save(&self, st: &LeaseState) -> Result<(), LeaseFileError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(|e| self.io(e))?;
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let mut f = fs::File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(st.to_text().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| self.io(e))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ClientKey {
        ClientKey::new(None, 1, &[0x52, 0x54, 0, 0, 0, n])
    }
    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    #[test]
    fn keys() {
        assert_eq!(key(1).0, "hw-01525400000001");
        assert_eq!(ClientKey::new(Some(&[1, 2]), 1, &[9]).0, "id-0102");
        assert_eq!(ClientKey::new(Some(&[]), 1, &[9]).0, "hw-0109");
    }

    #[test]
    fn offer_bind_release_decline() {
        let mut st = LeaseState::new();
        st.offer(ip(10), &key(1), 160);
        assert!(!st.take_dirty(), "offers are not persisted");
        assert!(!st.is_free_for(ip(10), &key(2), 100));
        assert!(st.is_free_for(ip(10), &key(1), 100));
        assert!(st.is_free_for(ip(10), &key(2), 160), "offer expired");
        st.bind(ip(10), &key(1), 3700);
        assert!(st.take_dirty());
        assert_eq!(st.of_client(&key(1)).unwrap().kind, LeaseKind::Bound);
        assert!(!st.is_free_for(ip(10), &key(2), 200));
        assert!(st.release(ip(10), &key(1), 300));
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
        st.bind(ip(12), &key(1), 5000);
        assert!(st.get(ip(10)).is_none());
    }

    #[test]
    fn text_round_trip_and_errors() {
        let mut st = LeaseState::new();
        st.bind(ip(10), &key(1), 3700);
        st.decline(ip(11), 1000);
        st.offer(ip(12), &key(3), 100);
        let text = st.to_text();
        assert!(!text.contains("offered"));
        let back = LeaseState::from_text(&text).unwrap();
        assert_eq!(back.get(ip(10)), st.get(ip(10)));
        assert_eq!(back.get(ip(11)), st.get(ip(11)));
        assert!(back.get(ip(12)).is_none());
        assert!(matches!(
            LeaseState::from_text("10.0.0.1 x\n"),
            Err(LeaseFileError::Line { line: 1, .. })
        ));
    }

    #[test]
    fn store_save_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path().join("sub/dhcp.leases"));
        let mut st = store.load().unwrap();
        assert!(st.is_empty());
        st.bind(ip(10), &key(1), 3700);
        store.save(&st).unwrap();
        let back = store.load().unwrap();
        assert_eq!(back.get(ip(10)).unwrap().client, key(1));
        assert!(!dir.path().join("sub/dhcp.leases.tmp").exists());
    }
}
