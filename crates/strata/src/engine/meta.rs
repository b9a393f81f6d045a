//! Metadata caching: attributes (and negative lookups), listings, symlink targets and
//! extended attributes, each trusted for the attribute TTL.

use std::ffi::OsString;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::origin::{Attr, DirEntry, FsStats};
use crate::sync::Mutex;

/// What an entry costs in memory, roughly: its heap bytes plus its size inline.
pub(crate) trait Weight {
    fn weight(&self) -> usize;
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

/// A map whose entries expire after a fixed time. Bounded in bytes (as weighed by
/// [`Weight`]): past `max_bytes` it first drops what expired, then everything (a
/// cache may always forget).
pub(crate) struct TtlMap<K, V> {
    ttl: Duration,
    max_bytes: usize,
    map: Mutex<Entries<K, V>>,
}

struct Entries<K, V> {
    map: FxHashMap<K, (Instant, V, usize)>,
    bytes: usize,
}

impl<K: Hash + Eq + Weight, V: Clone + Weight> TtlMap<K, V> {
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self {
            ttl,
            max_bytes: max_bytes.max(4096),
            map: Mutex::new(Entries {
                map: FxHashMap::default(),
                bytes: 0,
            }),
        }
    }

    /// Bytes the entries weigh now.
    pub fn bytes(&self) -> usize {
        self.map.lock().bytes
    }

    pub fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let m = self.map.lock();
        let (at, v, _) = m.map.get(k)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    /// The value while it is trusted, and how long it has been kept.
    pub fn get_aged<Q>(&self, k: &Q) -> Option<(V, Duration)>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let m = self.map.lock();
        let (at, v, _) = m.map.get(k)?;
        let age = at.elapsed();
        (age < self.ttl).then(|| (v.clone(), age))
    }

    /// The value whatever its age (for when the origin cannot be asked).
    pub fn get_stale<Q>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.lock().map.get(k).map(|(_, v, _)| v.clone())
    }

    pub fn insert(&self, k: K, v: V) {
        if self.ttl.is_zero() {
            return;
        }
        let w = k.weight() + v.weight() + SLOT;
        if w > self.max_bytes {
            return;
        }
        let mut m = self.map.lock();
        if let Some((_, _, old)) = m.map.remove(&k) {
            m.bytes -= old;
        }
        if m.bytes + w > self.max_bytes {
            let ttl = self.ttl;
            m.map.retain(|_, (at, _, _)| at.elapsed() < ttl);
            m.bytes = m.map.values().map(|(_, _, w)| w).sum();
            if m.bytes + w > self.max_bytes {
                m.map.clear();
                m.bytes = 0;
            }
        }
        m.bytes += w;
        m.map.insert(k, (Instant::now(), v, w));
    }

    pub fn remove<Q>(&self, k: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut m = self.map.lock();
        if let Some((_, _, w)) = m.map.remove(k) {
            m.bytes -= w;
        }
    }

    /// Drops every entry for which `f` is true.
    pub fn remove_where(&self, f: impl Fn(&K) -> bool) {
        let mut m = self.map.lock();
        m.map.retain(|k, _| !f(k));
        m.bytes = m.map.values().map(|(_, _, w)| w).sum();
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
            .map(|(k, (_, v, _))| k.weight() + v.weight() + SLOT)
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
        // One entry larger than the whole bound is not kept.
        m.insert(PathBuf::from("huge"), Arc::from(vec![0u8; 70 << 10]));
        assert!(m.get(Path::new("huge")).is_none());
        m.remove_where(|k| k.starts_with("dir"));
        assert_eq!(m.bytes(), 0);
    }
}
