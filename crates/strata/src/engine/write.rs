//! Writes through the cache (write-through): every change goes to the origin first and
//! is answered when the origin took it; then the cache is brought to what that change
//! made of the file, so a read after a write is a hit and nothing older than the write
//! is ever served from any tier.
//!
//! A data write holds its version's I/O lock alone (`Object::io`): no fetch is
//! reading the origin then, so none can cache bytes from before the write after it.
//! Fills of the blocks it changes that are still on their way to the disk land
//! first (it waits for them: FS-Cache's "write to the cache after the read"), then
//! those blocks leave every tier, the written bytes of whole blocks take their place,
//! and the version takes the token the origin reports after the write (`retoken`),
//! so the rest of the cached file stays. If the origin's token before the write was
//! not the version's (someone else changed the file), the version is dropped instead.

use super::*;
use crate::origin::{NewEntry, SetAttr};

const EBADF: i32 = 9;

impl Inner {
    /// EROFS unless this engine may change the origin.
    pub(super) fn check_writable(&self) -> io::Result<()> {
        if self.cfg.read_only || !self.origin.writable() {
            return Err(crate::origin::read_only());
        }
        Ok(())
    }

    /// Runs one change at the origin under the guard (deadline, circuit breaker).
    pub(super) fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Origin) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        self.check_writable()?;
        if self.guard.is_down() {
            stats::inc(&self.stats.origin_unreachable);
            return Err(OriginGuard::down_error());
        }
        let o = self.origin.clone();
        self.guard
            .call(move || f(&*o))
            .inspect_err(|_| stats::inc(&self.stats.write_errors))
    }

    /// What is cached of `path` itself goes: attributes, link target, xattrs, the
    /// listing if a directory.
    pub(super) fn forget_entry(&self, path: &Path) {
        self.attrs.remove(path);
        self.links.remove(path);
        self.dirs.remove(path);
        self.xattr_lists.remove(path);
        self.xattrs.remove_where(|(p, _)| p == path);
    }

    /// A name in `parent` came or went: its listing and attributes (times, links)
    /// go.
    pub(super) fn forget_parent_of(&self, path: &Path) {
        let parent = path.parent().unwrap_or(Path::new(""));
        self.dirs.remove(parent);
        self.attrs.remove(parent);
    }

    /// A name we just made (`a`: its attributes): the parent's cached listing gains
    /// it and the parent's cached times move to now, nlink too for a directory, as
    /// the origin's answer would show (with the daemon's clock for the times). Both
    /// keep the trust they had: the origin is asked again when it ends. With
    /// `default_permissions` the kernel asks for the parent's attributes after each
    /// create; forgetting them cost a round trip per file on a slow origin. A new
    /// directory's listing is known: empty.
    pub(super) fn entry_made(&self, path: &Path, a: &Attr) {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return self.forget_parent_of(path);
        };
        let parent = parent.to_path_buf();
        let now = wall_timestamp();
        let subdir = a.kind == FileKind::Dir;
        self.attrs.update(&parent, |r| {
            if let Ok(p) = r {
                (p.mtime, p.ctime) = (now, now);
                p.nlink += subdir as u32;
            }
        });
        self.dirs.update(&parent, |r| {
            if let Ok(list) = r {
                let v = Arc::make_mut(list);
                v.retain(|e| e.name != name);
                v.push(DirEntry {
                    name: name.to_owned(),
                    kind: a.kind,
                    ino: a.ino,
                });
            }
        });
        if subdir {
            self.dirs
                .insert(path.to_path_buf(), Ok(Arc::new(Vec::new())));
        }
    }

    /// Everything cached at or below `path` goes (a directory renamed or replaced),
    /// the versions of its files included.
    pub(super) fn forget_tree(&self, path: &Path) {
        let below = |p: &Path| p.starts_with(path);
        self.attrs.remove_where(|p| below(p));
        self.dirs.remove_where(|p| below(p));
        self.links.remove_where(|p| below(p));
        self.xattr_lists.remove_where(|p| below(p));
        self.xattrs.remove_where(|(p, _)| below(p));
        let gone: Vec<Arc<Object>> = {
            let mut objs = self.objects.lock();
            let keys: Vec<PathBuf> = objs.keys().filter(|p| below(p)).cloned().collect();
            keys.iter().filter_map(|k| objs.remove(k)).collect()
        };
        for o in gone {
            self.invalidate(&o);
        }
        self.catalog.forget(path);
    }

    /// A change to `path`'s link count or change time reaches every name of its
    /// file: the cached attributes of its other names go (a file with one name has
    /// none; a name not cached is looked up anew anyway).
    /// Returns the entry's kind, if it exists.
    pub(super) fn forget_links(&self, path: &Path) -> Option<FileKind> {
        // Not cached: asked (the other names may be).
        let a = match self.attrs.peek(path) {
            Some((Ok(a), ..)) => Some(a),
            Some((Err(_), ..)) => None,
            None => self.stat_origin_quiet(path).ok(),
        }?;
        if a.kind != FileKind::Dir && a.nlink > 1 {
            let (ino, dev) = (a.ino, a.dev);
            self.attrs
                .remove_where_entry(|_, v| matches!(v, Ok(b) if b.ino == ino && b.dev == dev));
        }
        Some(a.kind)
    }

    /// The attributes of a new entry, as the origin gives them now (cached).
    pub(super) fn fresh_attr(&self, path: &Path) -> io::Result<Attr> {
        self.attrs.remove(path);
        self.stat_origin(path)
    }

    /// Brings the cache to a change of `obj`'s file made through this cache: `post`
    /// is the file after it (its token taken as the version's), `pre` its token just
    /// before; `changed` the byte range whose bytes changed (None: only attributes);
    /// `written` the new bytes of that range when they are known.
    pub(super) fn apply_change(
        &self,
        obj: &Arc<Object>,
        pre: &Token,
        post: Attr,
        changed: Option<Range<u64>>,
        written: Option<&Bytes>,
    ) {
        let path = obj.path.clone();
        if !self.is_ours(obj, pre) {
            // Changed by someone else too, or the kernel reads its cache file
            // directly: the version goes (new opens get a new one).
            self.kill(obj);
            if post.nlink > 0 {
                let _ = self.stat_answered(&path, Ok(post));
            }
            return;
        }
        let whole = self.rewrite(obj, post.token.clone(), changed, written);
        if let Some(s) = &self.tiers.shared {
            s.name(obj.id, &path, &post.token, self.origin.stable_inodes());
        }
        self.catalog.retoken(&path, obj.id, &post.token);
        // A file written through a handle after its name was unlinked names nothing.
        if post.nlink > 0 {
            let _ = self.stat_answered(&path, Ok(post));
        }
        self.cache_whole(obj, whole);
    }

    /// True when the origin's token `pre` (just before a change of ours) is the
    /// version's: nobody else changed the file, and the kernel does not read the
    /// version's cache file directly (passthrough).
    pub(super) fn is_ours(&self, obj: &Object, pre: &Token) -> bool {
        obj.has_token(pre)
            && !obj.is_dead()
            && !self
                .tiers
                .disk
                .as_ref()
                .is_some_and(|d| d.is_pinned(obj.id))
    }

    /// The blocks of `obj` that a change of ours touched leave every tier, and the
    /// version takes `token`. Returns the whole blocks the change supplies (at
    /// their new length), to be cached once the token is recorded.
    pub(super) fn rewrite(
        &self,
        obj: &Arc<Object>,
        token: Token,
        changed: Option<Range<u64>>,
        written: Option<&Bytes>,
    ) -> Vec<(u64, Bytes)> {
        let bs = obj.bs;
        let (old_size, new_size) = (obj.size(), token.size());
        // Blocks whose bytes or length change: those the range touches, and the old
        // and new last blocks when the size moves.
        let mut hit: Vec<u64> = Vec::new();
        if let Some(r) = &changed {
            hit.extend(r.start / bs..r.end.div_ceil(bs));
        }
        if old_size != new_size {
            let (lo, hi) = (old_size.min(new_size), old_size.max(new_size));
            hit.extend(lo / bs..hi.div_ceil(bs).max(lo / bs + 1));
        }
        hit.sort_unstable();
        hit.dedup();
        let mut whole: Vec<(u64, Bytes)> = Vec::new();
        if let (Some(r), Some(data)) = (&changed, written) {
            for &blk in &hit {
                let (s, e) = (blk * bs, ((blk + 1) * bs).min(new_size));
                if s >= r.start && e <= r.end && s < e {
                    whole.push((
                        blk,
                        data.slice((s - r.start) as usize..(e - r.start) as usize),
                    ));
                }
            }
        }
        // Fills of these blocks on their way to the disk land first; then none is
        // served from the queue.
        obj.wait_clear(&hit, bits::FILLING);
        for &blk in &hit {
            self.tiers.fills.forget(&BlockKey { obj: obj.id, blk });
        }
        self.tiers.remove_blocks(obj.id, &hit);
        {
            let mut st = obj.lock();
            for &blk in &hit {
                st.tree
                    .clear(blk * bs..(blk + 1) * bs, bits::CACHED | bits::VERIFIED);
            }
        }
        obj.retoken(token);
        whole
    }

    /// Caches the whole blocks a write supplied, as a fetch would.
    pub(super) fn cache_whole(&self, obj: &Arc<Object>, whole: Vec<(u64, Bytes)>) {
        for run in whole.chunk_by(|a, b| a.0 + 1 == b.0) {
            let first = run[0].0;
            let data: Vec<Bytes> = run.iter().map(|(_, b)| b.clone()).collect();
            self.cache_fetched(obj, first, data);
        }
    }

    /// Writes `data` at `off` through handle `h`.
    pub(super) fn write(&self, h: &Handle, off: u64, data: &[u8]) -> io::Result<usize> {
        let Some(file) = h.wfile.clone() else {
            return Err(io::Error::from_raw_os_error(EBADF));
        };
        self.check_writable()?;
        let obj = h.cur.lock().clone();
        if self.wb.is_some() {
            self.settle(&obj);
            if let Some(r) = self.wb_write(h, &obj, off, data) {
                return r;
            }
            // Through to the origin, after what is dirty of the file.
            self.flush_path(&obj.path)?;
        }
        let bytes = Bytes::copy_from_slice(data);
        let end = off + bytes.len() as u64;
        // Alone on the version from before the write to after the cache follows it.
        let _io = obj.io.write();
        // Not with write-back: its fallbacks to write-through are rare, and its
        // flushes and journal compare tokens of their own (kept simple there).
        if !h.is_direct()
            && self.wb.is_none()
            && let Some(r) = self.write_deferred(&obj, &file, off, &bytes)
        {
            return r;
        }
        self.settle(&obj);
        let b = bytes.clone();
        let r = self.change(move |_| {
            let pre = file.token()?;
            file.write_at(&b, off)?;
            Ok((pre, file.attr()?))
        });
        let (pre, post) = match r {
            Ok(v) => v,
            Err(e) => {
                // The origin may hold part of it: what is cached of the file goes.
                self.kill(&obj);
                return Err(e);
            }
        };
        stats::inc(&self.stats.writes);
        stats::add(&self.stats.write_bytes, bytes.len() as u64);
        // O_DIRECT writes leave nothing cached of what they wrote.
        let keep = (!h.is_direct()).then_some(&bytes);
        self.apply_change(&obj, &pre, post, Some(off..end), keep);
        Ok(bytes.len())
    }

    /// A version whose file may have changed in ways not known: it goes.
    pub(super) fn kill(&self, obj: &Arc<Object>) {
        let stale = {
            let mut objs = self.objects.lock();
            match objs.get(&obj.path) {
                Some(o) if Arc::ptr_eq(o, obj) => objs.remove(&obj.path),
                _ => None,
            }
        };
        self.invalidate(stale.as_ref().unwrap_or(obj));
        self.catalog.forget(&obj.path);
        self.attrs.remove(&obj.path);
    }

    /// Changes attributes; through an open file when `h` is given (ftruncate).
    pub(super) fn set_attr(
        &self,
        path: &Path,
        set: &SetAttr,
        h: Option<&Handle>,
    ) -> io::Result<Attr> {
        self.check_writable()?;
        // The token its writes made is known before attributes change.
        let _ = match h {
            Some(h) => self.settle(&h.cur.lock().clone()),
            None => self.settle_path(path),
        };
        if self.wb.is_some() {
            if let Some(r) = self.dirty_set_attr(path, set) {
                return r;
            }
            self.flush_path(path)?;
        }
        // The version whose bytes or token this may change.
        let obj = match h {
            Some(h) => Some(h.cur.lock().clone()),
            None => self.objects.lock().get(path).cloned(),
        };
        let _io = obj.as_ref().map(|o| o.io.write());
        let file = h.and_then(|h| h.wfile.clone());
        let (p, s) = (path.to_path_buf(), *set);
        let r = self.change(move |o| {
            // Through the open file where there is one (its name may be gone).
            let pre = match &file {
                Some(f) => f.token()?,
                None => o.stat(&p)?.token,
            };
            match (&file, s.size) {
                // The size through the open file (the file may be unlinked, or
                // writable only through this handle), the rest by name.
                (Some(f), Some(size)) => {
                    f.set_len(size)?;
                    let rest = SetAttr { size: None, ..s };
                    if rest != SetAttr::default() {
                        o.set_attr(&p, &rest)?;
                    }
                }
                _ => o.set_attr(&p, &s)?,
            }
            let post = match &file {
                Some(f) => f.attr()?,
                None => o.stat(&p)?,
            };
            Ok((pre, post))
        });
        let (pre, post) = match r {
            Ok(v) => v,
            Err(e) => {
                if let Some(o) = &obj {
                    self.kill(o);
                }
                self.attrs.remove(path);
                return Err(e);
            }
        };
        match &obj {
            Some(o) if post.kind == FileKind::File => {
                let changed = set.size.map(|s| s.min(o.size())..s.max(o.size()));
                self.apply_change(o, &pre, post.clone(), changed, None);
            }
            _ => {
                self.forget_entry(path);
                if post.nlink > 0 {
                    let _ = self.stat_answered(path, Ok(post.clone()));
                }
            }
        }
        Ok(post)
    }

    /// Opens a regular file for writing (and reading).
    pub(super) fn open_write(&self, path: &Path, truncate: bool) -> io::Result<Handle> {
        self.check_writable()?;
        if truncate {
            self.flush_path(path)?;
        }
        // No write to the cached version between the open's attributes and their
        // check against it (which would see our own write as someone else's change).
        let active = self.objects.lock().get(path).cloned();
        let _io = active.as_ref().map(|o| o.io.write());
        let p = path.to_path_buf();
        let (file, attr) = self.change(move |o| {
            let f = o.open_rw(&p, truncate)?;
            let a = f.attr()?;
            Ok((Arc::<dyn OriginFile>::from(f), a))
        })?;
        let _ = self.stat_answered(path, Ok(attr.clone()));
        let obj = self.object_for(path, &attr, self.now_ns())?;
        Ok(Handle::writing(obj, file))
    }

    /// Creates (or, without `exclusive`, opens) a regular file for writing.
    pub(super) fn create(
        &self,
        path: &Path,
        new: &NewEntry,
        exclusive: bool,
    ) -> io::Result<(Attr, Handle)> {
        // As for `open_write`: no write of ours between the attributes and the check.
        let active = self.objects.lock().get(path).cloned();
        let _io = active.as_ref().map(|o| o.io.write());
        let (p, n) = (path.to_path_buf(), *new);
        let (file, attr) = self.change(move |o| {
            let f = o.create(&p, &n, exclusive)?;
            let a = f.attr()?;
            Ok((Arc::<dyn OriginFile>::from(f), a))
        })?;
        self.forget_entry(path);
        let _ = self.stat_answered(path, Ok(attr.clone()));
        self.entry_made(path, &attr);
        let obj = self.object_for(path, &attr, self.now_ns())?;
        Ok((attr, Handle::writing(obj, file)))
    }

    /// Makes a directory, FIFO, socket, device node or symlink (`make` does it at
    /// the origin) and returns its attributes.
    pub(super) fn make(
        &self,
        path: &Path,
        make: impl FnOnce(&dyn Origin) -> io::Result<()> + Send + 'static,
    ) -> io::Result<Attr> {
        self.change(make)?;
        self.forget_entry(path);
        let a = self.fresh_attr(path);
        match &a {
            Ok(a) => self.entry_made(path, a),
            Err(_) => self.forget_parent_of(path),
        }
        a
    }

    /// Removes a name (`dir`: a directory).
    pub(super) fn remove(&self, path: &Path, dir: bool) -> io::Result<()> {
        // Other names, or open handles, may still reach the file's data.
        if !dir {
            self.flush_path(path)?;
        }
        let _ = self.forget_links(path);
        let p = path.to_path_buf();
        self.change(move |o| if dir { o.rmdir(&p) } else { o.unlink(&p) })?;
        self.forget_parent_of(path);
        if dir {
            self.forget_tree(path);
        } else {
            self.forget_entry(path);
            self.forget_object(path);
        }
        self.attrs.insert(path.to_path_buf(), Err(ENOENT));
        Ok(())
    }

    /// Renames (or exchanges) two names.
    pub(super) fn rename(&self, from: &Path, to: &Path, flags: u32) -> io::Result<()> {
        // Dirty data is journaled by path: it reaches the origin under its name.
        self.flush_under(from)?;
        self.flush_under(to)?;
        let kinds = [self.forget_links(from), self.forget_links(to)];
        let (f, t) = (from.to_path_buf(), to.to_path_buf());
        self.change(move |o| o.rename(&f, &t, flags))?;
        for (p, kind) in [from, to].into_iter().zip(kinds) {
            self.forget_parent_of(p);
            match kind {
                // Nothing is cached below a file: no walk over every cached entry.
                Some(k) if k != FileKind::Dir => {
                    self.forget_entry(p);
                    self.forget_object(p);
                }
                None if p == to => {
                    // It did not exist: nothing is cached below it either.
                    self.forget_entry(p);
                    self.forget_object(p);
                }
                _ => self.forget_tree(p),
            }
        }
        if flags & crate::origin::RENAME_EXCHANGE == 0 {
            self.attrs.insert(from.to_path_buf(), Err(ENOENT));
        }
        Ok(())
    }

    /// A hard link `to` of `from`.
    pub(super) fn link(&self, from: &Path, to: &Path) -> io::Result<Attr> {
        self.flush_path(from)?;
        let (f, t) = (from.to_path_buf(), to.to_path_buf());
        self.change(move |o| o.link(&f, &t))?;
        // The file's link count and change time moved: its token too, for every
        // name it had.
        let _ = self.forget_links(from);
        self.attrs.remove(from);
        self.forget_parent_of(to);
        self.forget_entry(to);
        self.fresh_attr(to)
    }

    /// Sets or removes (`value` None) an extended attribute.
    pub(super) fn set_xattr(
        &self,
        path: &Path,
        name: &OsStr,
        value: Option<Vec<u8>>,
        flags: i32,
    ) -> io::Result<()> {
        // Its change time moves: done after the dirty data, so the flush does not
        // take our own change for someone else's.
        self.flush_path(path)?;
        let (p, n) = (path.to_path_buf(), name.to_os_string());
        self.change(move |o| match &value {
            Some(v) => o.set_xattr(&p, &n, v, flags),
            None => o.remove_xattr(&p, &n),
        })?;
        self.xattrs
            .remove_where(|(p, n)| p == path && n.as_os_str() == name);
        self.xattr_lists.remove(path);
        // Its change time moved; the version keeps its bytes (same data).
        self.refresh_token(path);
        Ok(())
    }

    /// After a change of attributes only: the active version takes the new token
    /// and keeps its blocks if nobody else changed the file meanwhile.
    fn refresh_token(&self, path: &Path) {
        self.settle_path(path);
        let obj = self.objects.lock().get(path).cloned();
        let pre = obj.as_ref().map(|o| o.token());
        match (obj, pre, self.stat_origin_quiet(path)) {
            (Some(o), Some(pre), Ok(post)) if post.kind == FileKind::File => {
                let _io = o.io.write();
                self.apply_change(&o, &pre, post, None, None);
            }
            (_, _, r) => {
                self.attrs.remove(path);
                let _ = self.stat_answered(path, r);
            }
        }
    }

    /// The origin's attributes, not yet recorded in the cache.
    fn stat_origin_quiet(&self, path: &Path) -> io::Result<Attr> {
        let (o, p) = (self.origin.clone(), path.to_path_buf());
        stats::inc(&self.stats.revalidations);
        self.guard.call(move || o.stat(&p))
    }

    /// The attributes of the file `h` has open, through the origin file it holds
    /// (its name may be gone: unlinked while open).
    pub(super) fn stat_handle(&self, h: &Handle) -> io::Result<Attr> {
        let obj = h.cur.lock().clone();
        self.settle(&obj);
        let file = h.wfile.clone().or_else(|| obj.file.lock().clone());
        match file {
            Some(f) => self
                .guard
                .call(move || f.attr())
                .map(|a| self.dirty_attr(&obj.path, a)),
            None => Err(io::Error::from_raw_os_error(ESTALE)),
        }
    }

    /// Makes what was written through `h` durable at the origin.
    pub(super) fn fsync(&self, h: &Handle, data_only: bool) -> io::Result<()> {
        if let Some(r) = self.wb_fsync(h) {
            return r;
        }
        let Some(file) = h.wfile.clone() else {
            return Ok(());
        };
        self.guard.call(move || file.sync(data_only))?;
        self.settle(&h.cur.lock().clone());
        Ok(())
    }

    /// On close (FUSE flush): the token of what this handle wrote is asked for,
    /// and a failed write-back of the file reported.
    pub(super) fn close_check(&self, h: &Handle) -> io::Result<()> {
        if h.wfile.is_some() {
            self.settle(&h.cur.lock().clone());
        }
        self.wb_error(h)
    }

    /// fallocate(2) through `h`: the range's bytes (zeroed or punched) and perhaps
    /// the size change.
    pub(super) fn fallocate(&self, h: &Handle, mode: i32, off: u64, len: u64) -> io::Result<()> {
        let Some(file) = h.wfile.clone() else {
            return Err(io::Error::from_raw_os_error(EBADF));
        };
        self.check_writable()?;
        let obj = h.cur.lock().clone();
        self.flush_path(&obj.path)?;
        self.settle(&obj);
        let _io = obj.io.write();
        let r = self.change(move |_| {
            let pre = file.token()?;
            file.allocate(mode, off, len)?;
            Ok((pre, file.attr()?))
        });
        match r {
            Ok((pre, post)) => {
                self.apply_change(&obj, &pre, post, Some(off..off + len), None);
                Ok(())
            }
            Err(e) => {
                if e.raw_os_error() != Some(95) {
                    self.kill(&obj);
                }
                Err(e)
            }
        }
    }
}

/// Changes through the cache (write-through). Each is answered once the origin made
/// it; EROFS with `Config::read_only` or an origin that takes no writes.
impl Engine {
    /// True when changes go through to the origin.
    pub fn writable(&self) -> bool {
        self.inner.check_writable().is_ok()
    }

    /// Opens a regular file to write (and read), cut to 0 bytes with `truncate`.
    pub fn open_write(&self, path: &Path, truncate: bool) -> io::Result<Handle> {
        self.inner.open_write(path, truncate)
    }

    /// Creates a regular file (or opens the one there, without `exclusive`) to write.
    pub fn create(
        &self,
        path: &Path,
        new: &NewEntry,
        exclusive: bool,
    ) -> io::Result<(Attr, Handle)> {
        self.inner.create(path, new, exclusive)
    }

    /// Writes `data` at `off`; the cache then holds those bytes (whole blocks).
    pub fn write(&self, h: &Handle, off: u64, data: &[u8]) -> io::Result<usize> {
        self.inner.write(h, off, data)
    }

    /// Changes attributes (mode, owner, size, times); the size through `h` if given.
    pub fn set_attr(&self, path: &Path, set: &SetAttr, h: Option<&Handle>) -> io::Result<Attr> {
        self.inner.set_attr(path, set, h)
    }

    pub fn mkdir(&self, path: &Path, new: &NewEntry) -> io::Result<Attr> {
        let (p, n) = (path.to_path_buf(), *new);
        self.inner.make(path, move |o| o.mkdir(&p, &n))
    }

    /// A FIFO, socket or device node (`new.mode` has the type bits).
    pub fn mknod(&self, path: &Path, new: &NewEntry, rdev: u64) -> io::Result<Attr> {
        let (p, n) = (path.to_path_buf(), *new);
        self.inner.make(path, move |o| o.mknod(&p, &n, rdev))
    }

    pub fn symlink(&self, target: &OsStr, path: &Path, new: &NewEntry) -> io::Result<Attr> {
        let (t, p, n) = (target.to_os_string(), path.to_path_buf(), *new);
        self.inner.make(path, move |o| o.symlink(&t, &p, &n))
    }

    pub fn link(&self, from: &Path, to: &Path) -> io::Result<Attr> {
        self.inner.link(from, to)
    }

    pub fn unlink(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path, false)
    }

    pub fn rmdir(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path, true)
    }

    /// `flags` as renameat2: [`crate::origin::RENAME_NOREPLACE`],
    /// [`crate::origin::RENAME_EXCHANGE`].
    pub fn rename(&self, from: &Path, to: &Path, flags: u32) -> io::Result<()> {
        self.inner.rename(from, to, flags)
    }

    pub fn set_xattr(&self, path: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        self.inner
            .set_xattr(path, name, Some(value.to_vec()), flags)
    }

    pub fn remove_xattr(&self, path: &Path, name: &OsStr) -> io::Result<()> {
        self.inner.set_xattr(path, name, None, 0)
    }

    /// The attributes of the file `h` has open, asked through it (for fstat of a
    /// file whose name is gone).
    pub fn stat_handle(&self, h: &Handle) -> io::Result<Attr> {
        self.inner.stat_handle(h)
    }

    /// Makes what was written through `h` durable: at the origin, or with write-back
    /// in the journal (at the origin with `fsync_origin`). A failed write-back of
    /// the file is reported here.
    pub fn fsync(&self, h: &Handle, data_only: bool) -> io::Result<()> {
        self.inner.fsync(h, data_only)
    }

    /// On close (FUSE flush): the error of a failed write-back of the file, if any,
    /// as NFS reports one on close. Nothing is waited for.
    pub fn close_check(&self, h: &Handle) -> io::Result<()> {
        self.inner.close_check(h)
    }

    /// Sends every file's dirty data to the origin now (write-back); returns how
    /// many files are still dirty after trying for up to `patience` without
    /// progress.
    pub fn flush_dirty(&self, patience: std::time::Duration) -> usize {
        self.inner.flush_all(patience)
    }

    /// Stops without sending dirty data to the origin, as a crash or `kill -9`
    /// would: it stays in the journal for the next start (crash tests).
    pub fn abandon(self) {
        self.inner.wb_abandon();
    }

    /// Bytes and files dirty now (write-back).
    pub fn dirty(&self) -> (u64, usize) {
        self.inner.dirty_now()
    }

    pub fn fallocate(&self, h: &Handle, mode: i32, off: u64, len: u64) -> io::Result<()> {
        self.inner.fallocate(h, mode, off, len)
    }
}
