//! The catalog: which object version the cache holds for each origin path, as an id
//! and the origin's token for that version. Ids are handed out here and never reused
//! (with a disk tier, never in the cache directory's life), so a block key (id,
//! block) names the same bytes for as long as any tier holds it.
//!
//! With a disk tier the catalog is kept with the disk's index and persisted in its
//! log (an `Object` record names a version before any of its blocks; a `Drop` record
//! ends it), so it survives restarts and crashes with the blocks it names. Without
//! one it is a map in memory, bounded: a version it lets go of leaves its blocks in
//! RAM as dead weight, evicted in time.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use crate::origin::Token;
use crate::sync::Mutex;
use crate::tier::disk::DiskTier;

/// Versions the in-memory catalog keeps, at most; past it, half are let go.
const MAX_IN_MEMORY: usize = 1 << 18;

/// Path -> (id, token), without a disk tier.
type Versions = FxHashMap<Box<[u8]>, (u64, Token)>;

pub struct Catalog {
    disk: Option<Arc<DiskTier>>,
    memory: Mutex<Versions>,
    ids: AtomicU64,
}

fn key(path: &Path) -> &[u8] {
    path.as_os_str().as_encoded_bytes()
}

impl Catalog {
    pub fn new(disk: Option<Arc<DiskTier>>) -> Self {
        Self {
            disk,
            memory: Mutex::new(FxHashMap::default()),
            ids: AtomicU64::new(1),
        }
    }

    /// The version cached for `path`, if any: its id and token.
    pub fn lookup(&self, path: &Path) -> Option<(u64, Token)> {
        match &self.disk {
            Some(d) => d.lookup(key(path)),
            None => self.memory.lock().get(key(path)).cloned(),
        }
    }

    /// The id of `path`'s version `token`: the one the catalog holds (true), or a
    /// new one, recorded in place of any other version of the path (false).
    pub fn version(&self, path: &Path, token: &Token) -> (u64, bool) {
        if let Some((id, t)) = self.lookup(path)
            && &t == token
        {
            return (id, true);
        }
        match &self.disk {
            Some(d) => {
                let id = d.allocate_id();
                d.register(id, key(path), token.clone());
                (id, false)
            }
            None => {
                let id = self.ids.fetch_add(1, Ordering::Relaxed);
                let mut m = self.memory.lock();
                if m.len() >= MAX_IN_MEMORY {
                    let mut n = 0;
                    m.retain(|_, _| {
                        n += 1;
                        n % 2 == 0
                    });
                }
                m.insert(key(path).into(), (id, token.clone()));
                (id, false)
            }
        }
    }

    /// The version `id` of `path` is now the origin file at `token` (a write through
    /// the cache brought its blocks there).
    pub fn retoken(&self, path: &Path, id: u64, token: &Token) {
        match &self.disk {
            Some(d) => d.retoken(id, token.clone()),
            None => {
                if let Some(v) = self.memory.lock().get_mut(key(path))
                    && v.0 == id
                {
                    v.1 = token.clone();
                }
            }
        }
    }

    /// An id never handed out before, for a version no path names (a file unlinked
    /// while open).
    pub fn fresh_id(&self) -> u64 {
        match &self.disk {
            Some(d) => d.allocate_id(),
            None => self.ids.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// True while `id` with `token` is the version the catalog holds for `path`.
    pub fn holds(&self, path: &Path, id: u64, token: &Token) -> bool {
        self.lookup(path)
            .is_some_and(|(i, t)| i == id && &t == token)
    }

    /// Forgets the version held for `path` unless it is `token`; its blocks leave
    /// the disk. Returns the id forgotten.
    pub fn drop_unless(&self, path: &Path, token: &Token) -> Option<u64> {
        let (id, t) = self.lookup(path)?;
        if &t == token {
            return None;
        }
        self.drop_id(path, id);
        Some(id)
    }

    /// Forgets the version held for `path` (the origin no longer has a file there).
    /// Returns the id forgotten.
    pub fn forget(&self, path: &Path) -> Option<u64> {
        let (id, _) = self.lookup(path)?;
        self.drop_id(path, id);
        Some(id)
    }

    fn drop_id(&self, path: &Path, id: u64) {
        match &self.disk {
            Some(d) => d.drop_object(id),
            None => {
                let mut m = self.memory.lock();
                if m.get(key(path)).is_some_and(|(i, _)| *i == id) {
                    m.remove(key(path));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimStorage;
    use crate::tier::disk::{DiskConfig, Thresholds};

    fn token(m: i64) -> Token {
        Token::Stat {
            size: 10,
            mtime_ns: m,
            ctime_ns: 0,
            ino: 1,
        }
    }

    fn both() -> Vec<Catalog> {
        let disk = DiskTier::open(
            Arc::new(SimStorage::new()),
            DiskConfig {
                capacity: 1 << 20,
                block_size: 4096,
                thresholds: Thresholds::OFF,
                compact_min_bytes: 1 << 20,
            },
            Arc::new(crate::stats::Stats::default()),
        )
        .unwrap();
        vec![Catalog::new(Some(Arc::new(disk))), Catalog::new(None)]
    }

    #[test]
    fn a_version_keeps_its_id_and_a_new_one_never_reuses_one() {
        for c in both() {
            let p = Path::new("a/b");
            let (id, known) = c.version(p, &token(1));
            assert!(!known);
            assert_eq!(c.version(p, &token(1)), (id, true));
            assert!(c.holds(p, id, &token(1)));
            let (id2, known) = c.version(p, &token(2));
            assert!(!known && id2 != id);
            assert!(!c.holds(p, id, &token(1)));
            assert_eq!(c.drop_unless(p, &token(2)), None);
            assert_eq!(c.drop_unless(p, &token(3)), Some(id2));
            assert_eq!(c.lookup(p), None);
            let (id3, _) = c.version(p, &token(2));
            assert!(id3 != id2 && id3 != id);
            assert_eq!(c.forget(p), Some(id3));
            assert_eq!(c.forget(p), None);
        }
    }
}
