//! The one timer queue: which key is due next, for drivers that run many machines on one thread.
//!
//! Contract:
//! - [`TimerQueue::arm`] sets a key's deadline, replacing the one it had (logically: the old
//!   entry is not searched for). [`TimerQueue::cancel`] disarms a key. A key is armed at most
//!   once: it has one deadline or none.
//! - [`TimerQueue::next_deadline`] is the earliest deadline of any armed key, exactly (stale
//!   entries on top are cleaned first). [`TimerQueue::pop_expired`] returns a key whose deadline
//!   is at or before `now`, earliest first, and disarms it; the caller handles it and arms it
//!   again if it still needs a timer.
//! - A min-heap with lazy deletion: each entry carries a generation, and an entry whose key was
//!   re-armed or cancelled since is stale and dropped when it surfaces. A deadline that moves
//!   *later* pushes nothing: the key's earlier entry surfaces first and is re-queued at the
//!   current deadline, so a machine that pushes its timer back on every window costs no heap
//!   growth. A deadline that moves earlier pushes one entry.
//! - Bounded by the armed keys: the heap holds at most `2 x armed + 32` entries; past that the
//!   stale ones are compacted away. No clock is read: `now` comes in.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Heap entries allowed beyond twice the armed keys before a compaction.
const SLACK: usize = 32;

#[derive(Clone, Copy, Debug)]
struct Entry<K> {
    at: Instant,
    gen: u64,
    key: K,
}

// A min-heap on (at, gen): the reverse of the natural order, the key takes no part.
impl<K> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.gen) == (other.at, other.gen)
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Entry<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.gen).cmp(&(self.at, self.gen))
    }
}

#[derive(Clone, Copy, Debug)]
struct Armed {
    /// The key's deadline.
    deadline: Instant,
    /// The generation of its live heap entry.
    gen: u64,
    /// When that entry surfaces (at or before `deadline`).
    queued: Instant,
}

/// A timer queue over keys `K` (a transfer's slot, a machine's index). See the module docs.
#[derive(Debug)]
pub struct TimerQueue<K> {
    heap: BinaryHeap<Entry<K>>,
    armed: HashMap<K, Armed>,
    next_gen: u64,
}

impl<K: Copy + Eq + Hash> Default for TimerQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash> TimerQueue<K> {
    pub fn new() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            armed: HashMap::new(),
            next_gen: 0,
        }
    }

    /// Set `key`'s deadline to `at`, replacing any it had.
    pub fn arm(&mut self, key: K, at: Instant) {
        if let Some(a) = self.armed.get_mut(&key) {
            if at >= a.queued {
                // Its entry surfaces first and is re-queued then.
                a.deadline = at;
                return;
            }
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        self.armed.insert(
            key,
            Armed {
                deadline: at,
                gen,
                queued: at,
            },
        );
        self.heap.push(Entry { at, gen, key });
        self.compact();
    }

    /// Disarm `key` (nothing happens if it is not armed).
    pub fn cancel(&mut self, key: K) {
        if self.armed.remove(&key).is_some() {
            self.compact();
        }
    }

    /// `key`'s deadline, if armed.
    pub fn deadline(&self, key: K) -> Option<Instant> {
        self.armed.get(&key).map(|a| a.deadline)
    }

    /// Armed keys.
    pub fn len(&self) -> usize {
        self.armed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }

    /// The earliest deadline of any armed key.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&top) = self.heap.peek() {
            match self.armed.get_mut(&top.key) {
                Some(a) if a.gen == top.gen => {
                    if a.deadline == top.at {
                        return Some(top.at);
                    }
                    // Postponed: re-queue at its deadline.
                    a.queued = a.deadline;
                    let at = a.deadline;
                    self.heap.pop();
                    self.heap.push(Entry { at, ..top });
                }
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// A key whose deadline is at or before `now` (the earliest), now disarmed; `None` when none
    /// is due.
    pub fn pop_expired(&mut self, now: Instant) -> Option<K> {
        let at = self.next_deadline()?;
        if at > now {
            return None;
        }
        let top = self.heap.pop()?;
        self.armed.remove(&top.key);
        Some(top.key)
    }

    /// Heap entries (armed and stale), for tests of the bound.
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.heap.len()
    }

    fn compact(&mut self) {
        if self.heap.len() <= 2 * self.armed.len() + SLACK {
            return;
        }
        let armed = &self.armed;
        self.heap
            .retain(|e| armed.get(&e.key).is_some_and(|a| a.gen == e.gen));
    }
}

/// Events of a simulation in time order, ties in the order pushed, on the one [`TimerQueue`]
/// (each event a key of its own): what the virtual-time tests schedule (a block reaching a
/// receiver, an ACK reaching the server) without a heap of their own.
#[derive(Debug)]
pub struct EventQueue<E> {
    timers: TimerQueue<u64>,
    events: HashMap<u64, E>,
    seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            timers: TimerQueue::new(),
            events: HashMap::new(),
            seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedule `event` at `at`.
    pub fn push(&mut self, at: Instant, event: E) {
        let key = self.seq;
        self.seq += 1;
        self.events.insert(key, event);
        self.timers.arm(key, at);
    }

    /// When the earliest event is due.
    pub fn next_at(&mut self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The earliest event and its instant, whenever it is due.
    pub fn pop(&mut self) -> Option<(Instant, E)> {
        let at = self.timers.next_deadline()?;
        self.pop_due(at)
    }

    /// The earliest event due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, E)> {
        let at = self.timers.next_deadline()?;
        let key = self.timers.pop_expired(now)?;
        Some((at, self.events.remove(&key)?))
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// Any instant serves as the origin of these tests' virtual time.
    fn origin() -> Instant {
        crate::sim_origin()
    }

    #[test]
    fn earliest_first_and_rearm_replaces() {
        let t0 = origin();
        let mut q = TimerQueue::new();
        q.arm(1u32, at(t0, 30));
        q.arm(2, at(t0, 10));
        q.arm(3, at(t0, 20));
        assert_eq!(q.next_deadline(), Some(at(t0, 10)));
        // Later: no new entry; earlier: one.
        q.arm(2, at(t0, 40));
        assert_eq!(q.next_deadline(), Some(at(t0, 20)));
        q.arm(1, at(t0, 5));
        assert_eq!(q.next_deadline(), Some(at(t0, 5)));
        assert_eq!(q.pop_expired(at(t0, 4)), None);
        assert_eq!(q.pop_expired(at(t0, 25)), Some(1));
        assert_eq!(q.pop_expired(at(t0, 25)), Some(3));
        assert_eq!(q.pop_expired(at(t0, 25)), None);
        assert_eq!(q.deadline(2), Some(at(t0, 40)));
        q.cancel(2);
        assert_eq!(q.next_deadline(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn pushing_a_deadline_back_on_every_step_does_not_grow_the_heap() {
        let t0 = origin();
        let mut q = TimerQueue::new();
        for i in 0..10_000u64 {
            q.arm(7u8, at(t0, 100 + i));
        }
        assert_eq!(q.entries(), 1);
        assert_eq!(q.next_deadline(), Some(at(t0, 10_099)));
    }

    #[test]
    fn stale_entries_are_compacted() {
        let t0 = origin();
        let mut q = TimerQueue::new();
        // Moving earlier each time pushes an entry; cancelling leaves one behind.
        for i in 0..10_000u64 {
            q.arm(i % 3, at(t0, 1_000_000 - i));
            if i % 5 == 0 {
                q.cancel((i + 1) % 3);
            }
            assert!(q.entries() <= 2 * q.len() + SLACK, "{}", q.entries());
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Arm(u8, u16),
        Cancel(u8),
        Pop(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..16, any::<u16>()).prop_map(|(k, t)| Op::Arm(k, t)),
            (0u8..16).prop_map(Op::Cancel),
            any::<u16>().prop_map(Op::Pop),
        ]
    }

    proptest! {
        /// The queue agrees with a plain map of deadlines under any sequence of operations.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(op(), 0..300)) {
            let t0 = origin();
            let mut q = TimerQueue::new();
            let mut model: BTreeMap<u8, u16> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Arm(k, t) => {
                        q.arm(k, at(t0, t as u64));
                        model.insert(k, t);
                    }
                    Op::Cancel(k) => {
                        q.cancel(k);
                        model.remove(&k);
                    }
                    Op::Pop(now) => {
                        let min = model.values().min().copied();
                        match q.pop_expired(at(t0, now as u64)) {
                            Some(k) => {
                                let t = model.remove(&k).expect("popped an unarmed key");
                                prop_assert!(t <= now);
                                prop_assert_eq!(Some(t), min, "not the earliest");
                            }
                            None => prop_assert!(min.is_none_or(|m| m > now)),
                        }
                    }
                }
                let min = model.values().min().map(|&t| at(t0, t as u64));
                prop_assert_eq!(q.next_deadline(), min);
                prop_assert_eq!(q.len(), model.len());
                prop_assert!(q.entries() <= 2 * q.len() + SLACK);
            }
        }
    }

    #[test]
    fn event_queue_pops_in_time_order_ties_in_push_order() {
        let t0 = crate::sim_origin();
        let ms = Duration::from_millis;
        let mut q = EventQueue::new();
        q.push(t0 + ms(5), "c");
        q.push(t0 + ms(1), "a");
        q.push(t0 + ms(5), "d");
        q.push(t0 + ms(1), "b");
        assert_eq!(q.next_at(), Some(t0 + ms(1)));
        assert_eq!(q.pop_due(t0), None);
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
        assert!(q.is_empty());
    }
}
