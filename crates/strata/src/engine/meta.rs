//! Metadata caching: attributes (and negative lookups), listings, symlink targets and
//! extended attributes, each trusted for the attribute TTL.

use std::hash::Hash;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::sync::Mutex;

/// A map whose entries expire after a fixed time. Bounded: past `max` entries it
/// first drops what expired, then everything (a cache may always forget).
pub(crate) struct TtlMap<K, V> {
    ttl: Duration,
    max: usize,
    map: Mutex<FxHashMap<K, (Instant, V)>>,
}

impl<K: Hash + Eq, V: Clone> TtlMap<K, V> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(16),
            map: Mutex::new(FxHashMap::default()),
        }
    }

    pub fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let m = self.map.lock();
        let (at, v) = m.get(k)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    /// The value whatever its age (for when the origin cannot be asked).
    pub fn get_stale<Q>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.lock().get(k).map(|(_, v)| v.clone())
    }

    pub fn insert(&self, k: K, v: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut m = self.map.lock();
        if m.len() >= self.max {
            let ttl = self.ttl;
            m.retain(|_, (at, _)| at.elapsed() < ttl);
            if m.len() >= self.max {
                m.clear();
            }
        }
        m.insert(k, (Instant::now(), v));
    }

    pub fn remove<Q>(&self, k: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.lock().remove(k);
    }

    /// Drops every entry for which `f` is true.
    pub fn remove_where(&self, f: impl Fn(&K) -> bool) {
        self.map.lock().retain(|k, _| !f(k));
    }
}
