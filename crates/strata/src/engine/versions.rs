//! The version table: the object version cached for each path, made from the
//! attributes the origin confirmed (with the blocks the disk tier still holds of it),
//! and invalidated everywhere (RAM tiers, disk, the kernel's page cache) when the
//! origin's token changes.

use super::*;

impl Inner {
    /// Invalidates what is cached for `path` if it is not of version `token`.
    pub(super) fn check_token(&self, path: &Path, token: &Token) {
        let settled = self.settle_path(path);
        let token = match &settled {
            Some((estimate, post)) if token == estimate => &post.token,
            _ => token,
        };
        let stale = {
            let mut objs = self.objects.lock();
            match objs.get(path) {
                Some(o) if !o.has_token(token) => objs.remove(path),
                _ => None,
            }
        };
        if let Some(o) = stale {
            self.invalidate(&o);
        } else if self.catalog.drop_unless(path, token).is_some() {
            // Not active: a cached version that is no longer current goes.
            stats::inc(&self.stats.invalidations);
        }
    }

    /// The path no longer names a regular file at the origin.
    pub(super) fn forget_object(&self, path: &Path) {
        let gone = self.objects.lock().remove(path);
        if let Some(o) = gone {
            self.invalidate(&o);
        } else if self.catalog.forget(path).is_some() {
            stats::inc(&self.stats.invalidations);
        }
    }

    /// Kills an object version: its blocks leave every tier. Reads in progress on it
    /// finish with the bytes of that version.
    pub(super) fn invalidate(&self, o: &Arc<Object>) {
        if o.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        stats::inc(&self.stats.invalidations);
        let cached: Vec<Range<u64>> = {
            let st = o.lock();
            st.tree
                .iter()
                .filter(|(_, b)| b & bits::CACHED != 0)
                .map(|(r, _)| r.start / o.bs..r.end.div_ceil(o.bs))
                .collect()
        };
        self.tiers.drop_version(o.id, &cached);
        *o.file.lock() = None;
        self.notify(&o.path);
    }

    /// A file's attributes as confirmed within the TTL, or as the origin says now, and
    /// when the origin gave them (ns since the engine started).
    pub(super) fn confirmed_attr(&self, path: &Path) -> io::Result<(Attr, u64)> {
        let now = self.now_ns();
        match self.attrs.peek(path) {
            Some((Ok(a), wall, age)) if age < self.attr_trust(path, Some(&a), wall) => {
                Ok((a, now.saturating_sub(age.as_nanos() as u64)))
            }
            _ => Ok((self.stat_origin(path)?, now)),
        }
    }

    /// A new object version, with the blocks the disk tier holds of it marked as
    /// cached (not verified: they are checked when first read).
    pub(super) fn new_object(
        &self,
        path: &Path,
        id: u64,
        token: Token,
        on_disk: Vec<Range<u64>>,
        validated_ns: u64,
    ) -> Arc<Object> {
        if let Some(s) = &self.tiers.shared {
            s.name(id, path, &token, self.origin.stable_inodes());
        }
        let o = Arc::new(Object::new(
            path.to_path_buf(),
            id,
            token,
            self.cfg.block_size as u64,
            validated_ns,
        ));
        {
            let mut st = o.lock();
            for r in on_disk {
                st.tree.set(o.bytes_of(r), bits::CACHED);
            }
        }
        o
    }

    /// The live object version for `path` with the token in `attr`, creating it (and
    /// invalidating an older one) if needed.
    ///
    /// `confirmed` is when the origin gave `attr` (ns since the engine started): the
    /// version's TTL runs from then, not from now.
    pub(super) fn object_for(
        &self,
        path: &Path,
        attr: &Attr,
        confirmed: u64,
    ) -> io::Result<Arc<Object>> {
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(io::Error::from_raw_os_error(21)), // EISDIR
            _ => return Err(io::Error::from_raw_os_error(22)),             // EINVAL
        }
        // Attributes that were the estimate of writes settled just now are the
        // origin's answer to the settle.
        let settled = self.settle_path(path);
        let attr = match &settled {
            Some((estimate, post)) if attr.token == *estimate => post,
            _ => attr,
        };
        let now = confirmed.max(1);
        // The trust of this confirmation. A later one of the same version is trusted
        // at least as long (the file was unchanged longer), so the larger is kept; a
        // reader that sees the new time with the old trust is only more careful.
        let wall = meta_log::wall_ns().saturating_sub(self.now_ns().saturating_sub(now));
        let trust = self.trust(wall, Some(last_change(attr))).as_nanos() as u64;
        let mut objs = self.objects.lock();
        if let Some(o) = objs.get(path) {
            if o.has_token(&attr.token) && !o.is_dead() {
                // 0 stays 0 on a version a fetch saw change: the origin is asked
                // again. A version never confirmed (revived) is confirmed now.
                // (Read in the update: a fetch marks it before it stores the 0.)
                let _ = o
                    .validated_ns
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                        (v != 0 || !o.suspect.load(Ordering::Acquire)).then_some(v.max(now))
                    });
                o.trust_ns.fetch_max(trust, Ordering::AcqRel);
                return Ok(o.clone());
            }
            let old = objs.remove(path).expect("present");
            drop(objs);
            self.invalidate(&old);
            objs = self.objects.lock();
            if let Some(o) = objs.get(path) {
                // Someone else made the new version meanwhile.
                if o.has_token(&attr.token) && !o.is_dead() {
                    return Ok(o.clone());
                }
            }
        }
        let (id, known) = self.catalog.version(path, &attr.token);
        let on_disk = match &self.tiers.disk {
            Some(d) if known => d.present(id),
            _ => Vec::new(),
        };
        let o = self.new_object(path, id, attr.token.clone(), on_disk, now);
        o.trust_ns.store(trust, Ordering::Release);
        if objs.len() >= MAX_ACTIVE {
            // Forget idle versions nobody holds; their blocks stay in the tiers.
            objs.retain(|_, o| Arc::strong_count(o) > 1 || o.is_unsettled());
        }
        objs.insert(path.to_path_buf(), o.clone());
        Ok(o)
    }
}
