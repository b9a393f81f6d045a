//! The operations, apart from how their answers travel: the fuser session
//! (/dev/fuse, `session.rs`) and the io_uring queues (`uring.rs`) both call these.

use crate::*;

/// What a getxattr or listxattr answers: the size asked for (a size of 0), or the
/// value itself.
pub(crate) enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

pub(crate) fn xattr_answer(v: Vec<u8>, size: u32) -> Result<Xattr, Errno> {
    if size == 0 {
        Ok(Xattr::Size(v.len() as u32))
    } else if v.len() > size as usize {
        Err(Errno::ERANGE)
    } else {
        Ok(Xattr::Data(v))
    }
}

// The operations, apart from how their answers travel: the fuser session (/dev/fuse)
// and the io_uring queues (`uring`) both call these.
impl StrataFs {
    pub(crate) fn negotiate(&self, config: &mut KernelConfig) {
        let _ = config.set_max_readahead(MAX_READ);
        let _ = config.set_max_write(MAX_READ);
        let _ = config.set_max_background(64);
        // No FUSE_CACHE_SYMLINKS: the kernel would keep a target in its page cache
        // and never ask again, and an invalidation sent when strata sees the link
        // change races with the lookup that saw it. Each readlink is a round trip
        // answered from the engine's cache (TTL), which drops a target whose link's
        // attributes changed.
        let wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        let _ = config.add_capabilities(wanted & config.capabilities());
        let mut passthrough = false;
        if self.opts.passthrough && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
            // Backing files are the cache's own files on a local filesystem: one level.
            passthrough = config.set_max_stack_depth(1).is_ok()
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
        }
        self.passthrough.store(passthrough, Ordering::Relaxed);
        let uring = self.opts.uring
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok();
        if self.opts.uring && !uring {
            tracing::warn!(
                "the kernel does not offer FUSE over io_uring (is /sys/module/fuse/parameters/enable_uring 1?): requests go through /dev/fuse"
            );
        }
        self.uring.decide(uring);
        tracing::debug!(passthrough, uring, "FUSE session initialized");
    }

    /// The entry's attributes, its generation, and how long the kernel may keep them
    /// (what is left of the engine's TTL for them, so the two do not stack).
    pub(crate) fn do_lookup(
        &self,
        parent: INodeNo,
        name: &OsStr,
    ) -> Result<(FileAttr, u64, Duration), Errno> {
        let path = self.child(parent, name)?;
        match self.engine.stat_ttl(&path) {
            (Ok(a), ttl) => {
                let ino = self.ino_of(&path, &a);
                self.remember(ino, &path);
                Ok((self.fattr(ino, &a), self.gen_of(ino), ttl))
            }
            // A negative entry (inode 0) the kernel may cache for what is left of the TTL.
            (Err(e), ttl) if e.raw_os_error() == Some(2) => Ok((negative_entry(), 0, ttl)),
            (Err(e), _) => Err(errno(&e)),
        }
    }

    pub(crate) fn do_forget(&self, ino: INodeNo, nlookup: u64) {
        if ino.0 == 1 {
            return;
        }
        let mut n = self.write_nodes();
        if let Some(node) = n.by_ino.get_mut(&ino.0) {
            node.lookups = node.lookups.saturating_sub(nlookup);
            if node.lookups == 0 {
                let node = n.by_ino.remove(&ino.0).expect("present");
                if n.by_path.get(&node.path) == Some(&ino.0) {
                    n.by_path.remove(&node.path);
                }
            }
        }
    }

    /// Attributes of an inode; through the open file `fh` when its name is gone
    /// (fstat of a file unlinked while open).
    pub(crate) fn do_getattr(
        &self,
        ino: INodeNo,
        fh: Option<u64>,
    ) -> Result<(FileAttr, Duration), Errno> {
        match self.attr_of(ino) {
            Err(Errno::ESTALE) => {
                // fstat comes without the file handle: any open file of the inode.
                let h = fh
                    .and_then(|fh| self.handle(fh))
                    .or_else(|| self.open_handle_of(ino.0))
                    .ok_or(Errno::ESTALE)?;
                let a = self.engine.stat_handle(&h).map_err(|e| errno(&e))?;
                Ok((self.fattr(ino.0, &a), Duration::ZERO))
            }
            r => r.map(|(_, a, ttl)| (self.fattr(ino.0, &a), ttl)),
        }
    }

    pub(crate) fn do_readlink(&self, ino: INodeNo) -> Result<Arc<[u8]>, Errno> {
        let path = self.path_of(ino)?;
        self.engine.read_link(&path).map_err(|e| errno(&e))
    }

    /// The part of an open common to every way of reading: refuses writing, opens
    /// the engine's handle and checks it is still this inode's file.
    pub(crate) fn open_handle(
        &self,
        ino: INodeNo,
        flags: i32,
    ) -> Result<(Arc<Handle>, u64), Errno> {
        let write = flags & rustix::fs::OFlags::ACCMODE.bits() as i32
            != rustix::fs::OFlags::RDONLY.bits() as i32;
        let truncate = flags & libc_o_trunc() != 0;
        let path = self.path_of(ino)?;
        let h = if write || truncate {
            self.engine
                .open_write(&path, truncate)
                .map_err(|e| self.write_err("open for writing", ino, None, &e))?
        } else {
            self.engine.open(&path).map_err(|e| errno(&e))?
        };
        if flags & rustix::fs::OFlags::DIRECT.bits() as i32 != 0 {
            self.engine.set_direct(&h);
        }
        let h = Arc::new(h);
        // The open just refreshed the attributes: is it still this inode's file?
        let same = self
            .engine
            .stat(&path)
            .is_ok_and(|a| self.ino_of(&path, &a) == ino.0);
        if !same {
            return Err(Errno::ESTALE);
        }
        Ok((h, self.new_fh()))
    }

    /// Registers an open file that reads through strata (and the kernel's page
    /// cache); the kernel must hear of it after this: a read may follow at once.
    pub(crate) fn register_open(
        &self,
        fh: u64,
        h: Arc<Handle>,
        key: (u64, u64),
        passthrough: bool,
    ) {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(
            fh,
            OpenFile {
                handle: h,
                key,
                passthrough,
            },
        );
    }

    /// Opens `ino`; returns the file handle, and the backing id when the kernel is
    /// to read it by passthrough. The id stays registered until this open's release.
    pub(crate) fn do_open(&self, ino: INodeNo, flags: i32) -> Result<(u64, Option<u32>), Errno> {
        let (h, fh) = self.open_handle(ino, flags)?;
        let key = (ino.0, self.gen_of(ino.0));
        let dev = self
            .device
            .get()
            .filter(|_| self.passthrough.load(Ordering::Relaxed));
        let mut pt_candidate = None;
        // Never for writing (the kernel would write the cache's file, not the
        // origin), nor for O_DIRECT (which bypasses the cache).
        if dev.is_some() && !h.is_writable() && !h.is_direct() {
            let join = {
                let io = self.io.lock().unwrap_or_else(|e| e.into_inner());
                io.get(&key).map(|s| (s.cached, s.passthrough.is_some()))
            };
            if !matches!(join, Some((c, false)) if c > 0) {
                // Asked outside the lock: it may consult the origin.
                pt_candidate = self.engine.passthrough(&h);
            }
        }
        let mut io = self.io.lock().unwrap_or_else(|e| e.into_inner());
        let st = io.entry(key).or_default();
        if st.passthrough.is_some() && h.is_writable() {
            // The kernel reads this inode from the cache's file: it takes no open
            // in the other mode until those close.
            return Err(Errno::EBUSY);
        }
        if let Some((backing, _, opens)) = &mut st.passthrough {
            // Every passthrough open of an inode must share its backing file.
            *opens += 1;
            let id = backing.id;
            self.register_open(fh, h, key, true);
            return Ok((fh, Some(id)));
        }
        if let (Some(dev), Some(pt), 0) = (dev, pt_candidate, st.cached) {
            match Backing::open(dev, &pt.file) {
                Ok(backing) => {
                    let id = backing.id;
                    st.passthrough = Some((backing, pt, 1));
                    self.register_open(fh, h, key, true);
                    return Ok((fh, Some(id)));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "passthrough refused; reading through strata")
                }
            }
        }
        st.cached += 1;
        self.register_open(fh, h, key, false);
        Ok((fh, None))
    }

    pub(crate) fn do_read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadBuf, Errno> {
        let h = self.handle(fh).ok_or(Errno::EBADF)?;
        self.engine
            .read(&h, offset, size as usize)
            .map_err(|e| errno(&e))
    }

    /// Counts a read handler's time from `t0` (`fuse_read_us`: the engine's part
    /// is `read_us`, the rest is the mount's own).
    pub(crate) fn note_read_time(&self, t0: Instant) {
        let us = t0.elapsed().as_micros() as u64;
        strata::stats::add(&self.engine.counters().fuse_read_us, us);
    }

    pub(crate) fn do_release(&self, fh: u64) {
        let f = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
        let Some(f) = f else { return };
        let mut io = self.io.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = io.get_mut(&f.key) {
            if f.passthrough {
                if let Some((_, _, opens)) = &mut st.passthrough {
                    *opens -= 1;
                    if *opens == 0 {
                        // Closes the backing id and unpins the cached object.
                        st.passthrough = None;
                    }
                }
            } else {
                st.cached = st.cached.saturating_sub(1);
            }
            if st.cached == 0 && st.passthrough.is_none() {
                io.remove(&f.key);
            }
        }
    }

    pub(crate) fn do_opendir(&self, ino: INodeNo) -> Result<u64, Errno> {
        let path = self.path_of(ino)?;
        // A snapshot of the listing per open directory keeps offsets stable.
        let list = self.engine.read_dir(&path).map_err(|e| errno(&e))?;
        let fh = self.new_fh();
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, list);
        Ok(fh)
    }

    /// Lists an open directory from `offset` on into `add` (inode, next offset, type,
    /// name) until it says the reply is full.
    pub(crate) fn do_readdir(
        &self,
        ino: INodeNo,
        fh: u64,
        offset: u64,
        add: &mut dyn FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> Result<(), Errno> {
        let list = self.dir(fh).ok_or(Errno::EBADF)?;
        let parent = self.parent_ino(ino);
        for i in offset as usize..list.len() + 2 {
            let full = match i {
                0 => add(ino.0, 1, FileType::Directory, OsStr::new(".")),
                1 => add(parent, 2, FileType::Directory, OsStr::new("..")),
                _ => {
                    let e = &list[i - 2];
                    let known = (!self.stable_inodes)
                        .then(|| {
                            let p = self.path_of(ino).ok()?.join(&e.name);
                            self.read_nodes().by_path.get(&p).copied()
                        })
                        .flatten();
                    let d_ino = known.unwrap_or(if e.ino == 0 { u64::MAX } else { e.ino });
                    add(d_ino, i as u64 + 1, file_type(e.kind), &e.name)
                }
            };
            if full {
                break;
            }
        }
        Ok(())
    }

    /// Lists an open directory with attributes from `offset` on into `add` (next
    /// offset, name, attributes, generation) until it says the reply is full. The
    /// kernel holds a reference for each entry it got, "." and ".." apart.
    pub(crate) fn do_readdirplus(
        &self,
        ino: INodeNo,
        fh: u64,
        offset: u64,
        add: &mut dyn FnMut(u64, &OsStr, &FileAttr, u64, Duration) -> bool,
    ) -> Result<(), Errno> {
        let list = self.dir(fh).ok_or(Errno::EBADF)?;
        let dir_path = self.path_of(ino)?;
        let start = offset as usize;
        // Attributes of the next entries, asked of the origin in parallel when cold.
        let batch_end = (start.max(2) + 256).min(list.len() + 2);
        let paths: Vec<PathBuf> = (start.max(2)..batch_end)
            .map(|i| dir_path.join(&list[i - 2].name))
            .collect();
        let attrs = self.engine.stat_many(&paths, LISTING_PARALLELISM);
        for i in start..batch_end {
            let full = match i {
                0 | 1 => {
                    let (name, e_ino, p) = if i == 0 {
                        (".", ino.0, dir_path.clone())
                    } else {
                        let parent = self.parent_ino(ino);
                        let pp = self.path_of(INodeNo(parent)).unwrap_or_default();
                        ("..", parent, pp)
                    };
                    match self.engine.stat_ttl(&p) {
                        (Ok(a), ttl) => add(
                            i as u64 + 1,
                            OsStr::new(name),
                            &self.fattr(e_ino, &a),
                            0,
                            ttl,
                        ),
                        (Err(_), _) => false,
                    }
                }
                _ => {
                    let k = i - start.max(2);
                    let e = &list[i - 2];
                    match &attrs[k] {
                        (Ok(a), ttl) => {
                            let e_ino = self.ino_of(&paths[k], a);
                            let attr = self.fattr(e_ino, a);
                            let full = add(i as u64 + 1, &e.name, &attr, self.gen_of(e_ino), *ttl);
                            if !full {
                                self.remember(e_ino, &paths[k]);
                            }
                            full
                        }
                        // Vanished since the listing: leave it out.
                        (Err(_), _) => false,
                    }
                }
            };
            if full {
                break;
            }
        }
        Ok(())
    }

    pub(crate) fn do_releasedir(&self, fh: u64) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
    }

    pub(crate) fn do_statfs(&self) -> Result<strata::origin::FsStats, Errno> {
        self.engine.statfs().map_err(|e| errno(&e))
    }

    pub(crate) fn do_getxattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
    ) -> Result<Xattr, Errno> {
        let value = if ino.0 == 1 && name == CONTROL_XATTR {
            match &self.opts.control {
                Some(p) => p.as_os_str().as_bytes().to_vec(),
                None => return Err(Errno::from_i32(61)), // ENODATA
            }
        } else if ino.0 == 1 && name == PID_XATTR {
            std::process::id().to_string().into_bytes()
        } else {
            let p = self.path_of(ino)?;
            self.engine
                .get_xattr(&p, name)
                .map_err(|e| errno(&e))?
                .to_vec()
        };
        xattr_answer(value, size)
    }

    pub(crate) fn do_listxattr(&self, ino: INodeNo, size: u32) -> Result<Xattr, Errno> {
        let p = self.path_of(ino)?;
        let names = self.engine.list_xattr(&p).map_err(|e| errno(&e))?;
        let mut buf = Vec::new();
        for n in names.iter() {
            buf.extend_from_slice(n.as_bytes());
            buf.push(0);
        }
        xattr_answer(buf, size)
    }

    pub(crate) fn do_access(&self, ino: INodeNo, mask: i32) -> Result<(), Errno> {
        if mask & AccessFlags::W_OK.bits() != 0 {
            return Err(self.refuse_write("access for writing", ino, None));
        }
        self.attr_of(ino).map(|_| ())
    }
}
