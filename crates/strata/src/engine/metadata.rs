//! Metadata caching: attributes, listings, symlink targets and extended attributes,
//! asked of the origin through the guard, trusted for the TTL, journaled (see
//! `meta_log`), and served as "last confirmed" while the origin cannot be reached.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::*;

/// Largest listing searched to answer a lookup of a missing name (a linear search).
const LISTING_LOOKUP_MAX: usize = 4096;
/// Largest listing read again, when its trust has just ended, to answer a lookup of
/// a missing name (a few round trips, rather than one per name).
const LISTING_REREAD_MAX: usize = 1024;

/// The journaled metadata maps, before the engine owns them.
pub(super) struct MetaMaps {
    pub(super) attrs: TtlMap<PathBuf, Result<Attr, i32>>,
    pub(super) dirs: TtlMap<PathBuf, Result<Arc<Vec<DirEntry>>, i32>>,
    pub(super) links: TtlMap<PathBuf, Result<Arc<[u8]>, i32>>,
    pub(super) xattrs: TtlMap<XattrKey, Result<Arc<[u8]>, i32>>,
    pub(super) xattr_lists: TtlMap<PathBuf, Result<Arc<Vec<OsString>>, i32>>,
}

impl MetaMaps {
    /// Loads what the journal kept and journals from now on. A journal that cannot
    /// be opened only costs the persistence: warned, and the mount goes on.
    pub(super) fn open_journal(
        &mut self,
        storage: Arc<dyn Storage>,
        origin: &str,
    ) -> Option<Arc<MetaLog>> {
        use meta_log::kind;
        let mut loaded = 0u64;
        let r = MetaLog::open(storage, origin, &mut |mut e| {
            loaded += 1;
            fn apply<K, V>(m: &TtlMap<K, V>, e: &mut meta_log::Entry<'_>)
            where
                K: std::hash::Hash + Eq + meta::Weight + meta_log::Persist,
                V: Clone + meta::Weight + meta_log::Persist,
            {
                let Some(k) = e.take::<K>() else { return };
                if e.forget {
                    m.remove_quiet(&k);
                } else if let Some(v) = e.take::<V>() {
                    m.load(k, v, e.at_ns);
                }
            }
            match e.kind {
                kind::ATTRS => apply(&self.attrs, &mut e),
                kind::DIRS => apply(&self.dirs, &mut e),
                kind::LINKS => apply(&self.links, &mut e),
                kind::XATTRS => apply(&self.xattrs, &mut e),
                kind::XATTR_LISTS => apply(&self.xattr_lists, &mut e),
                _ => {}
            }
        });
        match r {
            Ok(log) => {
                let log = Arc::new(log);
                self.attrs.journal(log.clone(), kind::ATTRS);
                self.dirs.journal(log.clone(), kind::DIRS);
                self.links.journal(log.clone(), kind::LINKS);
                self.xattrs.journal(log.clone(), kind::XATTRS);
                self.xattr_lists.journal(log.clone(), kind::XATTR_LISTS);
                if loaded > 0 {
                    tracing::info!(records = loaded, "metadata journal loaded");
                }
                Some(log)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the metadata journal; metadata is not kept across restarts");
                None
            }
        }
    }
}

/// `Inner::trust`, as a function of the options.
fn trust(min: Duration, max: Option<Duration>, wall: u64, changed: Option<i64>) -> Duration {
    match (max, changed) {
        (Some(max), Some(changed)) => {
            let unchanged = (wall as i64).saturating_sub(changed).max(0) as u64;
            Duration::from_nanos(unchanged / 10).clamp(min, max.max(min))
        }
        _ => min,
    }
}

/// When the origin last changed a file: its mtime or ctime, whichever is later (ns
/// since the epoch).
pub(super) fn last_change(a: &Attr) -> i64 {
    a.mtime.as_nanos().max(a.ctime.as_nanos())
}

/// Results worth remembering: values, and the errors that say "there is none".
pub(super) fn cacheable<T: Clone>(r: &io::Result<T>) -> Option<Result<T, i32>> {
    match r {
        Ok(v) => Some(Ok(v.clone())),
        Err(e) => match e.raw_os_error() {
            // ENODATA, ENOTSUP, ENOENT
            Some(c @ (61 | 95 | 2)) => Some(Err(c)),
            _ => None,
        },
    }
}

impl Inner {
    /// Metadata: fresh from the cache, else from the origin, else (the origin cannot
    /// be asked) whatever the cache last had, however old.
    pub(super) fn meta<K, V>(
        &self,
        map: &TtlMap<K, Result<V, i32>>,
        key: K,
        fetch: impl FnOnce() -> io::Result<V> + Send + 'static,
    ) -> io::Result<V>
    where
        K: std::hash::Hash + Eq + meta::Weight + meta_log::Persist + meta::Basis,
        V: Clone + Send + meta::Weight + meta_log::Persist + 'static,
    {
        self.meta_then(map, key, fetch, |v| v)
    }

    pub(super) fn read_dir(&self, path: &Path) -> io::Result<Arc<Vec<DirEntry>>> {
        let (o, p) = (self.origin.clone(), path.to_path_buf());
        self.meta_then(
            &self.dirs,
            path.to_path_buf(),
            move || o.read_dir(&p).map(Arc::new),
            |list| self.resolve_kinds(path, list),
        )
    }

    /// How long an answer the origin gave at `wall` (wall-clock ns) may be trusted,
    /// given when what it describes last changed there (`changed`, ns since the
    /// epoch, if known): `attr_ttl`, or with adaptive trust a tenth of how long it
    /// had been unchanged, within `attr_ttl ..= attr_ttl_max`. A change the origin's
    /// clock dates after the answer (clocks apart) gets the shortest trust.
    pub(super) fn trust(&self, wall: u64, changed: Option<i64>) -> Duration {
        trust(self.cfg.attr_ttl, self.cfg.attr_ttl_max, wall, changed)
    }

    /// When the origin last changed what `path` names, as far as the cache knows:
    /// its mtime or ctime, whichever is later.
    pub(super) fn changed_at(&self, path: &Path) -> Option<i64> {
        self.cfg.attr_ttl_max?;
        match self.attrs.peek(path)? {
            (Ok(a), _, _) => Some(last_change(&a)),
            _ => None,
        }
    }

    /// How long an attribute answer for `path` given at `wall` may be trusted: `attr`
    /// is the answer, None for "no such file", which is trusted by its directory
    /// (creating the name changes that).
    pub(super) fn attr_trust(&self, path: &Path, attr: Option<&Attr>, wall: u64) -> Duration {
        let changed = match attr {
            Some(a) => Some(last_change(a)),
            None => path.parent().and_then(|d| self.changed_at(d)),
        };
        self.trust(wall, changed)
    }

    /// Attributes (or the error) cached and still trusted, with how much longer.
    pub(super) fn cached_attr(&self, path: &Path) -> Option<(io::Result<Attr>, Duration)> {
        let (r, wall, age) = self.attrs.peek(path)?;
        let trust = self.attr_trust(path, r.as_ref().ok(), wall);
        let left = trust.checked_sub(age).filter(|d| !d.is_zero())?;
        Some((r.map_err(io::Error::from_raw_os_error), left))
    }

    /// "No such entry" known without asking the origin: the parent's listing is
    /// trusted and lacks the name (what a readdir would answer just as well). With
    /// how much longer that holds. Listings past `LISTING_LOOKUP_MAX` entries are not
    /// searched.
    pub(super) fn absent_by_listing(&self, path: &Path) -> Option<Duration> {
        let (parent, name) = (path.parent()?, path.file_name()?);
        let (r, wall, age) = self.dirs.peek(parent)?;
        let list = r.ok()?;
        if list.len() > LISTING_LOOKUP_MAX {
            return None;
        }
        let trust = self.trust(wall, self.changed_at(parent));
        let left = trust.checked_sub(age).filter(|d| !d.is_zero())?;
        (!list.iter().any(|e| e.name == name)).then_some(left)
    }

    /// True when `dir`'s listing is small and its trust ended less than a trust
    /// time ago: a directory being filled or probed, where one listing answers the
    /// lookups of many missing names (each a round trip to the origin otherwise).
    pub(super) fn listing_lapsed(&self, dir: &Path) -> bool {
        let Some((Ok(list), wall, age)) = self.dirs.peek(dir) else {
            return false;
        };
        let trust = self.trust(wall, self.changed_at(dir));
        list.len() <= LISTING_REREAD_MAX && age >= trust && age < trust * 2
    }

    /// How long an attribute answer the origin gave just now may be trusted.
    pub(super) fn fresh_trust(&self, path: &Path, r: &io::Result<Attr>) -> Duration {
        self.attr_trust(path, r.as_ref().ok(), meta_log::wall_ns())
    }

    /// A cached answer (other than attributes) while it is trusted.
    pub(super) fn trusted<K, V>(&self, map: &TtlMap<K, V>, key: &K) -> Option<V>
    where
        K: std::hash::Hash + Eq + meta::Weight + meta_log::Persist + meta::Basis,
        V: Clone + meta::Weight + meta_log::Persist,
    {
        let (v, wall, age) = map.peek(key)?;
        let changed = key.basis().and_then(|p| self.changed_at(p));
        (age < self.trust(wall, changed)).then_some(v)
    }

    pub(super) fn stat_many(
        &self,
        paths: &[PathBuf],
        parallel: usize,
    ) -> Vec<(io::Result<Attr>, Duration)> {
        let mut out: Vec<Option<(io::Result<Attr>, Duration)>> =
            paths.iter().map(|p| self.cached_attr(p)).collect();
        let todo: Vec<usize> = (0..paths.len()).filter(|&i| out[i].is_none()).collect();
        let asked: Vec<&Path> = todo.iter().map(|&i| paths[i].as_path()).collect();
        for (i, r) in todo.iter().zip(self.stat_origin_many(&asked, parallel)) {
            let trust = self.fresh_trust(&paths[*i], &r);
            out[*i] = Some((r, trust));
        }
        out.into_iter()
            .map(|r| r.expect("every entry answered"))
            .collect()
    }

    /// `meta`, with `then` applied on this thread to a fresh answer before it is cached.
    pub(super) fn meta_then<K, V>(
        &self,
        map: &TtlMap<K, Result<V, i32>>,
        key: K,
        fetch: impl FnOnce() -> io::Result<V> + Send + 'static,
        then: impl FnOnce(V) -> V,
    ) -> io::Result<V>
    where
        K: std::hash::Hash + Eq + meta::Weight + meta_log::Persist + meta::Basis,
        V: Clone + Send + meta::Weight + meta_log::Persist + 'static,
    {
        if let Some(r) = self.trusted(map, &key) {
            return r.map_err(io::Error::from_raw_os_error);
        }
        let r = if self.guard.is_down() {
            Err(OriginGuard::down_error())
        } else {
            self.guard.call(fetch)
        };
        match r {
            Err(e) if stale_ok(&e) => match map.get_stale(&key) {
                Some(r) => {
                    self.served_stale(&e);
                    r.map_err(io::Error::from_raw_os_error)
                }
                None => {
                    stats::inc(&self.stats.origin_unreachable);
                    Err(e)
                }
            },
            r => {
                let r = r.map(then);
                if let Some(v) = cacheable(&r) {
                    map.insert(key, v);
                }
                r
            }
        }
    }

    /// Fills in the kinds a listing left unknown, asking the origin for all of them at
    /// once. The answers refresh the attribute cache too, so a readdirplus of the same
    /// directory does not ask again. An entry gone since the listing is left out.
    pub(super) fn resolve_kinds(&self, dir: &Path, list: Arc<Vec<DirEntry>>) -> Arc<Vec<DirEntry>> {
        let unknown: Vec<PathBuf> = list
            .iter()
            .filter(|e| e.kind == FileKind::Unknown)
            .map(|e| dir.join(&e.name))
            .collect();
        if unknown.is_empty() {
            return list;
        }
        let asked: Vec<&Path> = unknown.iter().map(PathBuf::as_path).collect();
        let mut answers = self.stat_origin_many(&asked, LISTING_WIDTH).into_iter();
        let mut out = Vec::with_capacity(list.len());
        for e in list.iter() {
            let mut e = e.clone();
            if e.kind == FileKind::Unknown {
                match answers.next() {
                    Some(Ok(a)) => e.kind = a.kind,
                    Some(Err(err)) if err.raw_os_error() == Some(ENOENT) => continue,
                    // Could not ask: a file is the safe guess (its lookup will tell).
                    _ => e.kind = FileKind::File,
                }
            }
            out.push(e);
        }
        Arc::new(out)
    }

    /// Counts (and now and then logs) an answer given from the cache because the
    /// origin could not be asked.
    pub(super) fn served_stale(&self, e: &io::Error) {
        stats::inc(&self.stats.origin_unreachable);
        stats::inc(&self.stats.stale_served);
        let n = self.stale_warned.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() {
            tracing::warn!(
                error = %e,
                served = n + 1,
                "the origin cannot be reached; serving what the cache last confirmed with it"
            );
        }
    }

    /// Asks the origin for attributes, refreshes the cache, and invalidates the active
    /// object if its token changed.
    pub(super) fn stat_origin(&self, path: &Path) -> io::Result<Attr> {
        let r = if self.guard.is_down() {
            Err(OriginGuard::down_error())
        } else {
            stats::inc(&self.stats.revalidations);
            let (o, p) = (self.origin.clone(), path.to_path_buf());
            self.guard.call(move || o.stat(&p))
        };
        self.stat_answered(path, r)
    }

    /// `stat_origin` for many paths: asked of the origin at once, `width` at a time.
    pub(super) fn stat_origin_many(&self, paths: &[&Path], width: usize) -> Vec<io::Result<Attr>> {
        let answers = if self.guard.is_down() {
            paths
                .iter()
                .map(|_| Err(OriginGuard::down_error()))
                .collect()
        } else {
            stats::add(&self.stats.revalidations, paths.len() as u64);
            let calls = paths
                .iter()
                .map(|p| {
                    let (o, p) = (self.origin.clone(), p.to_path_buf());
                    Box::new(move || o.stat(&p)) as guard::Call<Attr>
                })
                .collect();
            self.guard.call_all(calls, width)
        };
        paths
            .iter()
            .zip(answers)
            .map(|(p, r)| self.stat_answered(p, r))
            .collect()
    }

    /// What the origin said of `path` (or that it could not be asked): the cache is
    /// refreshed, a changed token invalidates the object, an unreachable origin serves
    /// what it last confirmed.
    pub(super) fn stat_answered(&self, path: &Path, r: io::Result<Attr>) -> io::Result<Attr> {
        match r {
            // Unreachable: the version the origin last confirmed stays valid.
            Err(e) if stale_ok(&e) => match self.attrs.get_stale(path) {
                Some(Ok(a)) => {
                    self.served_stale(&e);
                    Ok(a)
                }
                Some(Err(code)) => {
                    self.served_stale(&e);
                    Err(io::Error::from_raw_os_error(code))
                }
                None => {
                    stats::inc(&self.stats.origin_unreachable);
                    Err(e)
                }
            },
            Ok(a) => {
                if a.kind == FileKind::Symlink {
                    self.check_link(path, &a);
                }
                self.attrs.insert(path.to_path_buf(), Ok(a.clone()));
                if a.kind == FileKind::File {
                    self.check_token(path, &a.token);
                } else {
                    self.forget_object(path);
                }
                Ok(a)
            }
            Err(e) => {
                if e.raw_os_error() == Some(ENOENT) {
                    self.attrs.insert(path.to_path_buf(), Err(ENOENT));
                    self.forget_object(path);
                }
                Err(e)
            }
        }
    }

    /// A symlink whose attributes changed may point elsewhere now (a link removed and
    /// made again, often with the same inode number): its cached target goes. Also
    /// when nothing was known of it: the target may have been kept longer than the
    /// attributes.
    pub(super) fn check_link(&self, path: &Path, a: &Attr) {
        let same = matches!(self.attrs.get_stale(path),
            Some(Ok(prev)) if prev.kind == FileKind::Symlink && prev.token == a.token);
        if !same {
            self.links.remove(path);
        }
    }
}

/// Attribute lookups, as the front ends ask them.
impl Engine {
    /// Attributes of an entry: from the cache within the TTL, else from the origin.
    pub fn stat(&self, path: &Path) -> io::Result<Attr> {
        self.stat_ttl(path).0
    }

    /// Attributes (or the error, a negative entry included) and how much longer they
    /// may be trusted: the TTL less the time the answer has been cached. A front end
    /// that caches them itself (the kernel) must trust them no longer than that, or
    /// its TTL stacks on the engine's and a change takes up to twice the TTL to show.
    pub fn stat_ttl(&self, path: &Path) -> (io::Result<Attr>, Duration) {
        let absent = || {
            let left = self.inner.absent_by_listing(path).or_else(|| {
                let parent = path.parent()?;
                self.inner.listing_lapsed(parent).then_some(())?;
                self.read_dir(parent).ok()?;
                self.inner.absent_by_listing(path)
            })?;
            stats::inc(&self.inner.stats.lookups_by_listing);
            Some((Err(io::Error::from_raw_os_error(ENOENT)), left))
        };
        let (r, trust) = self
            .inner
            .cached_attr(path)
            .or_else(absent)
            .unwrap_or_else(|| {
                let r = self.inner.stat_origin(path);
                let trust = self.inner.fresh_trust(path, &r);
                (r, trust)
            });
        (r.map(|a| self.inner.dirty_attr(path, a)), trust)
    }

    /// Attributes of many entries, asking the origin for those not cached with up to
    /// `parallel` requests in flight (a cold `ls -l` over a slow origin), each with how
    /// much longer it may be trusted (as [`Engine::stat_ttl`]).
    pub fn stat_many(
        &self,
        paths: &[PathBuf],
        parallel: usize,
    ) -> Vec<(io::Result<Attr>, Duration)> {
        let mut v = self.inner.stat_many(paths, parallel);
        if self.inner.wb.is_some() {
            for (p, (r, _)) in paths.iter().zip(v.iter_mut()) {
                if let Ok(a) = r {
                    *a = self.inner.dirty_attr(p, a.clone());
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn trust_is_a_tenth_of_the_unchanged_time_within_its_bounds() {
        let (min, max) = (Duration::from_secs(1), Some(Duration::from_secs(60)));
        let now = 1_800_000_000 * S;
        let at = |ago: u64| Some((now - ago * S) as i64);
        let t = |changed| trust(min, max, now, changed);
        assert_eq!(t(at(0)), min, "just changed");
        assert_eq!(t(at(5)), min, "a tenth is below the least");
        assert_eq!(t(at(300)), Duration::from_secs(30));
        assert_eq!(
            t(at(86_400)),
            Duration::from_secs(60),
            "never past the most"
        );
        assert_eq!(t(None), min, "unknown: the least");
        // Dated after the answer (the origin's clock is ahead): the least.
        assert_eq!(t(Some((now + 100 * S) as i64)), min);
        assert_eq!(t(Some(i64::MIN)), Duration::from_secs(60));
        // Fixed trust ignores the age.
        assert_eq!(trust(min, None, now, at(86_400)), min);
        assert_eq!(trust(Duration::ZERO, None, now, at(86_400)), Duration::ZERO);
    }
}
