//! Metadata caching: attributes (and negative lookups), listings, symlink targets and
//! extended attributes, each kept with when the origin gave it. How long an answer is
//! trusted is the engine's choice (`Inner::trusted`); a map only keeps entries no
//! longer than the longest trust.

use std::ffi::OsString;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::meta_log::{self, MetaLog, Persist, wall_ns};
use crate::origin::{Attr, DirEntry, FsStats};
use crate::sync::Mutex;

/// What an entry costs in memory, roughly: its heap bytes plus its size inline.
pub(crate) trait Weight {
    fn weight(&self) -> usize;
}

/// The path whose attributes say how long an answer keyed by this may be trusted:
/// a listing or an extended attribute changes its entry's ctime.
pub(crate) trait Basis {
    fn basis(&self) -> Option<&std::path::Path>;
}

impl Basis for PathBuf {
    fn basis(&self) -> Option<&std::path::Path> {
        Some(self)
    }
}

impl Basis for (PathBuf, OsString) {
    fn basis(&self) -> Option<&std::path::Path> {
        Some(&self.0)
    }
}

/// File system statistics change all the time: trusted for the shortest time.
impl Basis for () {
    fn basis(&self) -> Option<&std::path::Path> {
        None
    }
}

/// A hash map slot and its expiry, beyond the key's and value's own bytes.
const SLOT: usize = 48;

impl Weight for PathBuf {
    fn weight(&self) -> usize {
        std::mem::size_of::<PathBuf>() + self.as_os_str().len()
    }
}

impl Weight for OsString {
    fn weight(&self) -> usize {
        std::mem::size_of::<OsString>() + self.len()
    }
}

impl Weight for () {
    fn weight(&self) -> usize {
        0
    }
}

impl<A: Weight, B: Weight> Weight for (A, B) {
    fn weight(&self) -> usize {
        self.0.weight() + self.1.weight()
    }
}

impl<T: Weight> Weight for Result<T, i32> {
    fn weight(&self) -> usize {
        match self {
            Ok(v) => v.weight(),
            Err(_) => 8,
        }
    }
}

impl Weight for Attr {
    fn weight(&self) -> usize {
        std::mem::size_of::<Attr>()
    }
}

impl Weight for FsStats {
    fn weight(&self) -> usize {
        std::mem::size_of::<FsStats>()
    }
}

impl Weight for Arc<[u8]> {
    fn weight(&self) -> usize {
        16 + self.len()
    }
}

impl Weight for Arc<Vec<DirEntry>> {
    fn weight(&self) -> usize {
        self.iter()
            .map(|e| std::mem::size_of::<DirEntry>() + e.name.len())
            .sum::<usize>()
            + 40
    }
}

impl Weight for Arc<Vec<OsString>> {
    fn weight(&self) -> usize {
        self.iter().map(Weight::weight).sum::<usize>() + 40
    }
}

/// A map of answers with when they were given. Bounded in bytes (as weighed by
/// [`Weight`]): past `max_bytes` it first drops what is older than `ttl` (the
/// longest any answer is trusted), then the older half (a cache may always forget).
pub(crate) struct TtlMap<K, V> {
    ttl: Duration,
    max_bytes: usize,
    map: Mutex<Entries<K, V>>,
    journal: Option<Journal>,
}

struct Entries<K, V> {
    map: FxHashMap<K, Slot<V>>,
    bytes: usize,
}

struct Slot<V> {
    /// When the origin gave it; None: before this process's clock began (an answer
    /// journaled before a reboot), long expired.
    at: Option<Instant>,
    /// The same, as wall-clock ns, for the journal.
    wall: u64,
    v: V,
    w: usize,
}

impl<V> Slot<V> {
    fn age(&self) -> Duration {
        self.at.map_or(Duration::MAX, |at| at.elapsed())
    }
}

/// A map's journal: where its answers are kept across restarts, under which kind.
struct Journal {
    log: Arc<MetaLog>,
    kind: u8,
}

impl<K: Hash + Eq + Weight + Persist, V: Clone + Weight + Persist> TtlMap<K, V> {
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self {
            ttl,
            max_bytes: max_bytes.max(4096),
            map: Mutex::new(Entries {
                map: FxHashMap::default(),
                bytes: 0,
            }),
            journal: None,
        }
    }

    /// Journals every answer the map takes (and forgets) from now on.
    pub fn journal(&mut self, log: Arc<MetaLog>, kind: u8) {
        self.journal = Some(Journal { log, kind });
    }

    /// Bytes the entries weigh now.
    pub fn bytes(&self) -> usize {
        self.map.lock().bytes
    }

    /// The value whatever its age, when the origin gave it (wall-clock ns) and how
    /// long ago that was (`Duration::MAX` before this boot).
    pub fn peek<Q>(&self, k: &Q) -> Option<(V, u64, Duration)>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let m = self.map.lock();
        let e = m.map.get(k)?;
        Some((e.v.clone(), e.wall, e.age()))
    }

    /// The value whatever its age (for when the origin cannot be asked).
    pub fn get_stale<Q>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.lock().map.get(k).map(|e| e.v.clone())
    }

    /// What the origin just said of `k`.
    pub fn insert(&self, k: K, v: V) {
        if self.ttl.is_zero() {
            return;
        }
        let wall = wall_ns();
        if let Some(j) = &self.journal {
            j.log.put(j.kind, wall, &k, &v);
        }
        self.place(k, v, Some(Instant::now()), wall);
    }

    /// What the journal says the origin said of `k` at `wall`.
    pub fn load(&self, k: K, v: V, wall: u64) {
        self.place(k, v, meta_log::instant_of(wall), wall);
    }

    fn place(&self, k: K, v: V, at: Option<Instant>, wall: u64) {
        let w = k.weight() + v.weight() + SLOT;
        if w > self.max_bytes {
            return;
        }
        let mut m = self.map.lock();
        if let Some(old) = m.map.remove(&k) {
            m.bytes -= old.w;
        }
        if m.bytes + w > self.max_bytes {
            let ttl = self.ttl;
            m.map.retain(|_, e| e.age() < ttl);
            m.bytes = m.map.values().map(|e| e.w).sum();
            while m.bytes + w > self.max_bytes && !m.map.is_empty() {
                // Still full of trusted answers: the older half goes (first in, first
                // out by when the origin gave them), so a walk larger than the budget
                // keeps its recent half rather than nothing.
                let mut walls: Vec<u64> = m.map.values().map(|e| e.wall).collect();
                let mid = walls.len() / 2;
                let cut = *walls.select_nth_unstable(mid).1;
                m.map.retain(|_, e| e.wall > cut);
                m.bytes = m.map.values().map(|e| e.w).sum();
            }
        }
        m.bytes += w;
        m.map.insert(k, Slot { at, wall, v, w });
    }

    /// Changes an entry in place, keeping when the origin gave it, so it is trusted
    /// no longer than before: a change of our own that the origin's answer would
    /// show. False if there is no entry.
    pub fn update(&self, k: &K, f: impl FnOnce(&mut V)) -> bool {
        let (v, wall) = {
            let mut m = self.map.lock();
            let Some(e) = m.map.get_mut(k) else {
                return false;
            };
            f(&mut e.v);
            let w = k.weight() + e.v.weight() + SLOT;
            let old = std::mem::replace(&mut e.w, w);
            let (v, wall) = (e.v.clone(), e.wall);
            m.bytes = m.bytes - old + w;
            (v, wall)
        };
        if let Some(j) = &self.journal {
            j.log.put(j.kind, wall, k, &v);
        }
        true
    }

    pub fn remove<Q>(&self, k: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut m = self.map.lock();
        if let Some((k, e)) = m.map.remove_entry(k) {
            m.bytes -= e.w;
            if let Some(j) = &self.journal {
                j.log.forget(j.kind, &k);
            }
        }
    }

    /// Drops an entry without journaling it (replaying the journal).
    pub fn remove_quiet(&self, k: &K) {
        let mut m = self.map.lock();
        if let Some(e) = m.map.remove(k) {
            m.bytes -= e.w;
        }
    }

    /// Drops every entry for which `f` is true.
    pub fn remove_where(&self, f: impl Fn(&K) -> bool) {
        self.remove_where_entry(|k, _| f(k))
    }

    /// Drops every entry for which `f` (of its key and value) is true.
    pub fn remove_where_entry(&self, f: impl Fn(&K, &V) -> bool) {
        let mut m = self.map.lock();
        let journal = &self.journal;
        m.map.retain(|k, e| {
            let go = f(k, &e.v);
            if go && let Some(j) = journal {
                j.log.forget(j.kind, k);
            }
            !go
        });
        m.bytes = m.map.values().map(|e| e.w).sum();
    }

    /// Every entry as a journal record (for rewriting the journal).
    pub fn records(&self, out: &mut Vec<u8>) {
        if let Some(j) = &self.journal {
            for (k, e) in self.map.lock().map.iter() {
                MetaLog::encode(out, j.kind, e.wall, k, &e.v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn weigh_all(m: &TtlMap<PathBuf, Arc<[u8]>>) -> usize {
        let e = m.map.lock();
        e.map
            .iter()
            .map(|(k, s)| k.weight() + s.v.weight() + SLOT)
            .sum()
    }

    #[test]
    fn stays_within_its_bytes_and_counts_them_exactly() {
        let m: TtlMap<PathBuf, Arc<[u8]>> = TtlMap::new(Duration::from_secs(60), 64 << 10);
        let mut x = 7u64;
        for i in 0..5_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = PathBuf::from(format!("dir/{}", x % 700));
            match i % 5 {
                0 => m.remove(&key),
                _ => m.insert(key, Arc::from(vec![1u8; (x % 3000) as usize])),
            }
            assert!(m.bytes() <= 64 << 10, "over its bound after {i}");
            assert_eq!(m.bytes(), weigh_all(&m), "miscounted after {i}");
        }
        // Full of trusted answers, it forgets the oldest and keeps the newest.
        let m2: TtlMap<PathBuf, Arc<[u8]>> = TtlMap::new(Duration::from_secs(60), 64 << 10);
        for i in 0..2_000 {
            m2.insert(PathBuf::from(format!("w/{i}")), Arc::from(vec![0u8; 100]));
        }
        assert!(m2.peek(Path::new("w/0")).is_none());
        assert!(m2.peek(Path::new("w/1999")).is_some());
        assert!(
            m2.peek(Path::new("w/1900")).is_some(),
            "the recent part stays"
        );
        // One entry larger than the whole bound is not kept.
        m.insert(PathBuf::from("huge"), Arc::from(vec![0u8; 70 << 10]));
        assert!(m.peek(Path::new("huge")).is_none());
        m.remove_where(|k| k.starts_with("dir"));
        assert_eq!(m.bytes(), 0);
    }
}
