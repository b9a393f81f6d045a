//! S3-FIFO eviction (Yang et al., SOSP 2023): a small FIFO that filters one-hit
//! wonders, a main FIFO with reinsertion for what was used again, and a ghost FIFO of
//! recently evicted keys that sends a returning key straight to the main queue.
//!
//! One `S3Fifo` is one eviction order across every object of a tier. A hit only bumps
//! an atomic counter, so lookups can run under a shared lock; inserts, removals and
//! evictions need the exclusive one.
//!
//! Removal leaves a tombstone in the map instead of searching the queues: every key
//! has at most one queue entry, a tombstone is dropped when its queue entry reaches
//! the head, and re-inserting a tombstoned key revives it in place. When tombstones
//! outnumber live entries the queues are compacted.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU8, Ordering};

use rustc_hash::{FxBuildHasher, FxHashMap};

const MAX_FREQ: u8 = 3;
const IN_MAIN: u8 = 1;
const TOMBSTONE: u8 = 2;

struct Entry<V> {
    value: V,
    freq: AtomicU8,
    flags: u8,
}

/// Weighs a value in the units of the capacity (bytes for the RAM tier).
pub trait Weigh<V>: Send + Sync {
    fn weigh(&self, v: &V) -> u64;
}

impl<V, F: Fn(&V) -> u64 + Send + Sync> Weigh<V> for F {
    fn weigh(&self, v: &V) -> u64 {
        self(v)
    }
}

/// Why an insert was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The value alone weighs more than the whole capacity.
    TooLarge,
}

/// An evicted entry, and whether it was used again after it came in.
pub type Tagged<K, V> = (K, V, bool);

pub struct S3Fifo<K, V, W> {
    map: FxHashMap<K, Entry<V>>,
    small: VecDeque<K>,
    main: VecDeque<K>,
    ghost: Ghost,
    small_weight: u64,
    main_weight: u64,
    live: usize,
    capacity: u64,
    weigh: W,
}

impl<K, V, W> S3Fifo<K, V, W>
where
    K: Copy + Eq + Hash,
    V: Default,
    W: Weigh<V>,
{
    pub fn new(capacity: u64, weigh: W) -> Self {
        Self {
            map: FxHashMap::default(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: Ghost::default(),
            small_weight: 0,
            main_weight: 0,
            live: 0,
            capacity,
            weigh,
        }
    }

    /// Reserves room for `n` more entries (used when loading a large index).
    pub fn reserve(&mut self, n: usize) {
        self.map.reserve(n);
        self.main.reserve(n);
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Total weight of live entries.
    pub fn weight(&self) -> u64 {
        self.small_weight + self.main_weight
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Looks up a key and counts the access.
    pub fn get(&self, k: &K) -> Option<&V> {
        let e = self.map.get(k)?;
        if e.flags & TOMBSTONE != 0 {
            return None;
        }
        // A racy increment is fine: the counter is a hint capped at MAX_FREQ.
        let f = e.freq.load(Ordering::Relaxed);
        if f < MAX_FREQ {
            e.freq.store(f + 1, Ordering::Relaxed);
        }
        Some(&e.value)
    }

    /// Looks up a key without counting an access.
    pub fn peek(&self, k: &K) -> Option<&V> {
        self.map
            .get(k)
            .filter(|e| e.flags & TOMBSTONE == 0)
            .map(|e| &e.value)
    }

    pub fn contains(&self, k: &K) -> bool {
        self.peek(k).is_some()
    }

    /// Inserts or replaces a value. Returns what had to be evicted to make room.
    pub fn insert(&mut self, k: K, v: V) -> Result<Vec<(K, V)>, (Refused, V)> {
        self.insert_as(k, v, false)
            .map(|e| e.into_iter().map(|(k, v, _)| (k, v)).collect())
    }

    /// Inserts or replaces a value; returns what had to be evicted, each tagged as
    /// by [`S3Fifo::evict_one_tagged`]. `hot`: a value known to be in use again (a
    /// block coming back up from a tier below, which lost its frequency on the way)
    /// goes straight into the main queue, as a ghost hit would.
    pub fn insert_tagged(
        &mut self,
        k: K,
        v: V,
        hot: bool,
    ) -> Result<Vec<Tagged<K, V>>, (Refused, V)> {
        self.insert_as(k, v, hot)
    }

    fn insert_as(&mut self, k: K, v: V, hot: bool) -> Result<Vec<Tagged<K, V>>, (Refused, V)> {
        let w = self.weigh.weigh(&v);
        if w > self.capacity {
            return Err((Refused::TooLarge, v));
        }
        if let Some(e) = self.map.get_mut(&k) {
            if e.flags & TOMBSTONE == 0 {
                // Replace in place; the key keeps its position and frequency.
                let old_w = self.weigh.weigh(&e.value);
                e.value = v;
                if e.flags & IN_MAIN != 0 {
                    self.main_weight = self.main_weight - old_w + w;
                } else {
                    self.small_weight = self.small_weight - old_w + w;
                }
            } else {
                // Revive a tombstone where its queue entry already stands.
                e.value = v;
                e.flags &= !TOMBSTONE;
                e.freq.store(0, Ordering::Relaxed);
                if e.flags & IN_MAIN != 0 {
                    self.main_weight += w;
                } else {
                    self.small_weight += w;
                }
                self.live += 1;
            }
        } else {
            let fp = self.fingerprint(&k);
            let to_main = self.ghost.take(fp) || hot;
            let flags = if to_main { IN_MAIN } else { 0 };
            self.map.insert(
                k,
                Entry {
                    value: v,
                    freq: AtomicU8::new(0),
                    flags,
                },
            );
            if to_main {
                self.main.push_back(k);
                self.main_weight += w;
            } else {
                self.small.push_back(k);
                self.small_weight += w;
            }
            self.live += 1;
        }
        let mut evicted = Vec::new();
        while self.weight() > self.capacity {
            match self.evict_one_tagged() {
                Some(kv) => evicted.push(kv),
                None => break,
            }
        }
        Ok(evicted)
    }

    /// Inserts straight into the main queue without evicting (used when replaying a
    /// persisted index, in its recorded order).
    pub fn insert_loaded(&mut self, k: K, v: V) {
        let w = self.weigh.weigh(&v);
        if let Some(e) = self.map.get_mut(&k) {
            let was_live = e.flags & TOMBSTONE == 0;
            let old_w = if was_live {
                self.weigh.weigh(&e.value)
            } else {
                0
            };
            e.value = v;
            e.flags &= !TOMBSTONE;
            if e.flags & IN_MAIN != 0 {
                self.main_weight = self.main_weight - old_w + w;
            } else {
                self.small_weight = self.small_weight - old_w + w;
            }
            if !was_live {
                self.live += 1;
            }
            return;
        }
        self.map.insert(
            k,
            Entry {
                value: v,
                freq: AtomicU8::new(0),
                flags: IN_MAIN,
            },
        );
        self.main.push_back(k);
        self.main_weight += w;
        self.live += 1;
    }

    /// Removes a key; returns its value if it was live.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let e = self.map.get_mut(k)?;
        if e.flags & TOMBSTONE != 0 {
            return None;
        }
        let v = std::mem::take(&mut e.value);
        e.flags |= TOMBSTONE;
        let w = self.weigh.weigh(&v);
        if e.flags & IN_MAIN != 0 {
            self.main_weight -= w;
        } else {
            self.small_weight -= w;
        }
        self.live -= 1;
        if self.map.len() > 1024 && self.map.len() > 2 * self.live {
            self.compact();
        }
        Some(v)
    }

    /// Changes the capacity; returns what had to be evicted, tagged as by
    /// [`S3Fifo::evict_one_tagged`].
    pub fn set_capacity(&mut self, capacity: u64) -> Vec<(K, V, bool)> {
        self.capacity = capacity;
        let mut evicted = Vec::new();
        while self.weight() > self.capacity {
            match self.evict_one_tagged() {
                Some(kv) => evicted.push(kv),
                None => break,
            }
        }
        evicted
    }

    /// Evicts the next victim of the policy.
    pub fn evict_one(&mut self) -> Option<(K, V)> {
        self.evict_one_tagged().map(|(k, v, _)| (k, v))
    }

    /// Evicts the next victim; true with it when it was used again after it came in
    /// (it leaves from the main queue), false for a one-hit wonder (from the small
    /// queue, never read again).
    pub fn evict_one_tagged(&mut self) -> Option<(K, V, bool)> {
        loop {
            if self.live == 0 {
                // Only tombstones may be left: clear them out.
                self.compact();
                return None;
            }
            let small_target = self.capacity / 10;
            let from_small = !self.small.is_empty()
                && (self.small_weight >= small_target.max(1) || self.main.is_empty());
            let r = if from_small {
                self.evict_small().map(|(k, v)| (k, v, false))
            } else {
                self.evict_main().map(|(k, v)| (k, v, true))
            };
            if let Some(kv) = r {
                return Some(kv);
            }
        }
    }

    /// One step from the small queue: either evicts, or promotes to main (None).
    fn evict_small(&mut self) -> Option<(K, V)> {
        let k = self.small.pop_front()?;
        let e = self.map.get_mut(&k).expect("queued key is in the map");
        if e.flags & TOMBSTONE != 0 {
            self.map.remove(&k);
            return None;
        }
        let w = self.weigh.weigh(&e.value);
        if e.freq.load(Ordering::Relaxed) > 0 {
            e.freq.store(0, Ordering::Relaxed);
            e.flags |= IN_MAIN;
            self.small_weight -= w;
            self.main_weight += w;
            self.main.push_back(k);
            return None;
        }
        let e = self.map.remove(&k).expect("present");
        self.small_weight -= w;
        self.live -= 1;
        let fp = self.fingerprint(&k);
        // The ghost remembers about as many keys as the main queue holds.
        self.ghost.push(fp, self.main.len().max(16));
        Some((k, e.value))
    }

    /// One step from the main queue: either evicts, or reinserts with a lower count.
    fn evict_main(&mut self) -> Option<(K, V)> {
        let k = self.main.pop_front()?;
        let e = self.map.get_mut(&k).expect("queued key is in the map");
        if e.flags & TOMBSTONE != 0 {
            self.map.remove(&k);
            return None;
        }
        let f = e.freq.load(Ordering::Relaxed);
        if f > 0 {
            e.freq.store(f - 1, Ordering::Relaxed);
            self.main.push_back(k);
            return None;
        }
        let e = self.map.remove(&k).expect("present");
        self.main_weight -= self.weigh.weigh(&e.value);
        self.live -= 1;
        Some((k, e.value))
    }

    /// Drops every tombstone from the map and the queues.
    pub fn compact(&mut self) {
        let map = &mut self.map;
        let keep = |k: &K| map.get(k).is_some_and(|e| e.flags & TOMBSTONE == 0);
        self.small.retain(keep);
        let map = &mut self.map;
        let keep = |k: &K| map.get(k).is_some_and(|e| e.flags & TOMBSTONE == 0);
        self.main.retain(keep);
        self.map.retain(|_, e| e.flags & TOMBSTONE == 0);
        self.map.shrink_to_fit();
    }

    /// Live keys from the next victim to the most recently inserted (small queue,
    /// then main queue). Used to persist the order.
    pub fn keys_in_order(&self) -> impl Iterator<Item = (K, &V)> + '_ {
        self.main
            .iter()
            .chain(self.small.iter())
            .filter_map(move |k| self.peek(k).map(|v| (*k, v)))
    }

    fn fingerprint(&self, k: &K) -> u64 {
        FxBuildHasher.hash_one(k)
    }
}

/// A bounded FIFO of fingerprints of recently evicted keys.
#[derive(Default)]
struct Ghost {
    fifo: VecDeque<u64>,
    set: FxHashMap<u64, u32>,
}

impl Ghost {
    fn push(&mut self, fp: u64, cap: usize) {
        self.fifo.push_back(fp);
        *self.set.entry(fp).or_insert(0) += 1;
        while self.fifo.len() > cap {
            let old = self.fifo.pop_front().expect("non-empty");
            if let Some(c) = self.set.get_mut(&old) {
                *c -= 1;
                if *c == 0 {
                    self.set.remove(&old);
                }
            }
        }
    }

    /// True if the fingerprint was in the ghost; it stays queued but stops counting.
    fn take(&mut self, fp: u64) -> bool {
        self.set.remove(&fp).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    type Cache = S3Fifo<u32, u64, fn(&u64) -> u64>;

    fn weigh(v: &u64) -> u64 {
        *v % 7 + 1
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u64),
        Get(u32),
        Remove(u32),
        Evict,
        Capacity(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..40, any::<u64>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => (0u32..40).prop_map(Op::Get),
            2 => (0u32..40).prop_map(Op::Remove),
            1 => Just(Op::Evict),
            1 => (0u64..60).prop_map(Op::Capacity),
        ]
    }

    proptest! {
        /// Whatever the policy picks, the cache holds exactly the model's entries minus
        /// what it reported as evicted, never more than its capacity, and a get returns
        /// the latest insert or nothing.
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 1..300)) {
            let mut c: Cache = S3Fifo::new(30, weigh as fn(&u64) -> u64);
            let mut model: BTreeMap<u32, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => match c.insert(k, v) {
                        Ok(ev) => {
                            model.insert(k, v);
                            for (ek, evv) in ev {
                                prop_assert_eq!(model.remove(&ek), Some(evv));
                            }
                        }
                        Err((Refused::TooLarge, _)) => prop_assert!(weigh(&v) > c.capacity()),
                    },
                    Op::Get(k) => prop_assert_eq!(c.get(&k).copied(), model.get(&k).copied()),
                    Op::Remove(k) => prop_assert_eq!(c.remove(&k), model.remove(&k)),
                    Op::Evict => {
                        if let Some((k, v)) = c.evict_one() {
                            prop_assert_eq!(model.remove(&k), Some(v));
                        } else {
                            prop_assert!(model.is_empty());
                        }
                    }
                    Op::Capacity(cap) => {
                        for (k, v, _) in c.set_capacity(cap) {
                            prop_assert_eq!(model.remove(&k), Some(v));
                        }
                    }
                }
                prop_assert!(c.weight() <= c.capacity());
                prop_assert_eq!(c.len(), model.len());
                prop_assert_eq!(c.weight(), model.values().map(weigh).sum::<u64>());
                let mut listed: Vec<u32> = c.keys_in_order().map(|(k, _)| k).collect();
                listed.sort_unstable();
                prop_assert_eq!(listed, model.keys().copied().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn frequently_used_key_survives_a_scan() {
        let mut c: S3Fifo<u32, u64, _> = S3Fifo::new(100, |_: &u64| 1);
        for _ in 0..3 {
            c.insert(0, 0).unwrap();
            c.get(&0);
        }
        for k in 1..1000 {
            c.insert(k, 0).unwrap();
            c.get(&0);
        }
        assert!(c.contains(&0), "a hot key must survive a one-pass scan");
    }

    #[test]
    fn tombstones_are_compacted() {
        let mut c: S3Fifo<u32, u64, _> = S3Fifo::new(1 << 40, |_: &u64| 1);
        for k in 0..10_000 {
            c.insert(k, 1).unwrap();
        }
        for k in 0..9_999 {
            c.remove(&k);
        }
        assert!(c.map.len() < 5_000, "tombstones kept: {}", c.map.len());
        assert_eq!(c.len(), 1);
        assert_eq!(c.evict_one(), Some((9_999, 1)));
        assert_eq!(c.evict_one(), None);
    }
}
