//! Per-directory lowercase name indexes for the case-insensitive fallback, shared by every worker.
//!
//! Contract: a [`DirIndex`] maps the lowercase form of each UTF-8 name in one directory to the
//! names that have it (in byte order). [`DirIndexCache`] keeps indexes keyed by the directory's
//! (device, inode) and valid only while its mtime is the one read when the index was built: a
//! name added, removed or renamed changes the directory's mtime, so the next miss rebuilds the
//! index. An index built while the directory's mtime is less than [`RACY`] old is used once and
//! not kept, since a change in the same timestamp tick would not show. Bounded: at most
//! [`MAX_DIRS`] directories and [`BUDGET`] bytes (estimated) in all, least recently used evicted
//! first; a directory whose index alone exceeds half the budget is never kept (it is read on each
//! miss, as without the cache). The names come from the served tree, not from the network; the
//! network only chooses which directories are looked at, within the jail.

use super::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Most directories indexed at once.
pub(crate) const MAX_DIRS: usize = 256;
/// Most bytes (estimated) all kept indexes may take.
pub(crate) const BUDGET: usize = 32 << 20;
/// A directory modified more recently than this is not indexed for later use.
pub(crate) const RACY: Duration = Duration::from_secs(2);
/// Estimated fixed cost of one name in an index (hash slot, boxes, allocator).
const PER_NAME: usize = 64;

/// The lowercase index of one directory.
#[derive(Debug, Default)]
pub(crate) struct DirIndex {
    by_lower: HashMap<Box<str>, Box<[Box<str>]>>,
    bytes: usize,
}

impl DirIndex {
    /// Indexes `names` (the directory's UTF-8 names, without `.` and `..`).
    pub(crate) fn build(names: Vec<String>) -> DirIndex {
        let mut groups: HashMap<Box<str>, Vec<Box<str>>> = HashMap::with_capacity(names.len());
        let mut bytes = 0;
        for n in names {
            let lower = n.to_lowercase();
            bytes += PER_NAME + n.len() + lower.len();
            groups
                .entry(lower.into_boxed_str())
                .or_default()
                .push(n.into_boxed_str());
        }
        let by_lower = groups
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_unstable();
                (k, v.into_boxed_slice())
            })
            .collect();
        DirIndex { by_lower, bytes }
    }

    /// The names that match `want` case-insensitively: `want` itself first when it exists, then
    /// the others in byte order.
    pub(crate) fn candidates(&self, want: &str) -> Vec<String> {
        let Some(names) = self.by_lower.get(want.to_lowercase().as_str()) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(names.len());
        if names.iter().any(|n| &**n == want) {
            out.push(want.to_owned());
        }
        out.extend(
            names
                .iter()
                .filter(|n| &***n != want)
                .map(|n| n.to_string()),
        );
        out
    }

    /// Estimated heap bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A directory's identity and version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DirKey {
    pub dev: u64,
    pub ino: u64,
}

struct Entry {
    mtime_ns: i128,
    index: Arc<DirIndex>,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<DirKey, Entry>,
    bytes: usize,
    tick: u64,
}

/// The shared cache of directory indexes. See the module docs.
#[derive(Default)]
pub(crate) struct DirIndexCache {
    inner: Mutex<Inner>,
}

impl DirIndexCache {
    /// The index of directory `key` if one was built at this `mtime_ns`.
    pub(crate) fn get(&self, key: DirKey, mtime_ns: i128) -> Option<Arc<DirIndex>> {
        let mut m = lock(&self.inner);
        m.tick += 1;
        let tick = m.tick;
        let e = m.map.get_mut(&key)?;
        if e.mtime_ns == mtime_ns {
            e.last_used = tick;
            return Some(e.index.clone());
        }
        let old = m.map.remove(&key);
        if let Some(old) = &old {
            m.bytes -= old.index.bytes();
        }
        None
    }

    /// Keeps `index` for directory `key` at `mtime_ns`, unless the directory changed too
    /// recently (at `now`) to trust its mtime or the index is too large.
    pub(crate) fn insert(
        &self,
        key: DirKey,
        mtime_ns: i128,
        index: Arc<DirIndex>,
        now: SystemTime,
    ) -> bool {
        let now_ns = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        if now_ns - mtime_ns < RACY.as_nanos() as i128 || index.bytes() > BUDGET / 2 {
            return false;
        }
        let mut m = lock(&self.inner);
        m.tick += 1;
        let tick = m.tick;
        let bytes = index.bytes();
        if let Some(old) = m.map.insert(
            key,
            Entry {
                mtime_ns,
                index,
                last_used: tick,
            },
        ) {
            m.bytes -= old.index.bytes();
        }
        m.bytes += bytes;
        while m.map.len() > MAX_DIRS || m.bytes > BUDGET {
            let Some(victim) = m
                .map
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(e) = m.map.remove(&victim) {
                m.bytes -= e.index.bytes();
            }
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_name_first_then_byte_order() {
        let i = DirIndex::build(names(&["same", "Same", "SAME", "other", "Über"]));
        assert_eq!(i.candidates("Same"), ["Same", "SAME", "same"]);
        assert_eq!(i.candidates("sAmE"), ["SAME", "Same", "same"]);
        assert_eq!(i.candidates("same"), ["same", "SAME", "Same"]);
        assert_eq!(i.candidates("über"), ["Über"]);
        assert!(i.candidates("missing").is_empty());
    }

    #[test]
    fn kept_by_mtime_and_bounded() {
        let c = DirIndexCache::default();
        let now = SystemTime::now();
        let old = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128
            - 10_000_000_000;
        let k = DirKey { dev: 1, ino: 2 };
        let idx = Arc::new(DirIndex::build(names(&["a"])));
        assert!(c.insert(k, old, idx.clone(), now));
        assert!(c.get(k, old).is_some());
        // Another mtime: a name was added or removed; the index is dropped.
        assert!(c.get(k, old + 1).is_none());
        assert!(c.get(k, old).is_none());
        // A directory modified just now is not kept.
        let racy = old + 9_500_000_000;
        assert!(!c.insert(k, racy, idx.clone(), now));
        assert!(c.get(k, racy).is_none());
        // At most MAX_DIRS directories, the least recently used go first.
        for ino in 0..(MAX_DIRS as u64 + 10) {
            c.insert(DirKey { dev: 9, ino }, old, idx.clone(), now);
            if ino == MAX_DIRS as u64 - 6 {
                // Touch directory 0 so that it survives.
                assert!(c.get(DirKey { dev: 9, ino: 0 }, old).is_some());
            }
        }
        assert_eq!(c.len(), MAX_DIRS);
        assert!(c.get(DirKey { dev: 9, ino: 0 }, old).is_some());
        assert!(c.get(DirKey { dev: 9, ino: 1 }, old).is_none());
        // An index too large for the budget is never kept.
        let huge: Vec<String> = (0..(BUDGET / 2 / PER_NAME + 1))
            .map(|i| format!("{i}"))
            .collect();
        let huge = Arc::new(DirIndex::build(huge));
        assert!(!c.insert(DirKey { dev: 7, ino: 7 }, old, huge, now));
    }
}
