//! The operations that change the origin (write-through), apart from how their
//! answers travel. With a read-only engine (`--read-only`) each answers EROFS, logged.
//!
//! New entries belong to the user who made them (the daemon, as root, sets the
//! owner it makes them with), and their mode is the one the kernel sends: it has
//! applied the umask already (strata does not ask for FUSE_DONT_MASK).

use std::time::UNIX_EPOCH;

use strata::origin::{NewEntry, SetAttr, SetTime, Timestamp};

use crate::*;

/// A time the kernel sent, as the origin takes it.
pub(crate) fn set_time(t: fuser::TimeOrNow) -> SetTime {
    match t {
        fuser::TimeOrNow::Now => SetTime::Now,
        fuser::TimeOrNow::SpecificTime(st) => SetTime::At(match st.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }),
    }
}

/// An entry made by the user `uid`:`gid`: theirs when the daemon runs as root (only
/// root may give a file away), the daemon's otherwise.
fn new_entry(mode: u32, uid: u32, gid: u32) -> NewEntry {
    NewEntry {
        mode,
        owner: rustix::process::geteuid().is_root().then_some((uid, gid)),
    }
}

impl StrataFs {
    /// An error from the engine; EROFS logged as a refused write.
    pub(crate) fn write_err(
        &self,
        op: &str,
        ino: INodeNo,
        name: Option<&OsStr>,
        e: &io::Error,
    ) -> Errno {
        if e.raw_os_error() == Some(30) {
            return self.refuse_write(op, ino, name);
        }
        errno(e)
    }

    /// The entry made at `path` as the kernel takes it: attributes, generation, TTL.
    fn made(&self, path: &Path, a: &Attr) -> (FileAttr, u64, Duration) {
        let ino = self.ino_of(path, a);
        self.remember(ino, path);
        (
            self.fattr(ino, a),
            self.gen_of(ino),
            self.opts.attr_ttl.min(Duration::from_secs(1)),
        )
    }

    pub(crate) fn do_create(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> Result<(FileAttr, u64, Duration, u64), Errno> {
        let path = self.child(parent, name)?;
        let exclusive = flags & rustix::fs::OFlags::EXCL.bits() as i32 != 0;
        let new = new_entry(mode & 0o7777, uid, gid);
        let (a, h) = self
            .engine
            .create(&path, &new, exclusive)
            .map_err(|e| self.write_err("create", parent, Some(name), &e))?;
        if flags & rustix::fs::OFlags::DIRECT.bits() as i32 != 0 {
            self.engine.set_direct(&h);
        }
        let (attr, generation, ttl) = self.made(&path, &a);
        let fh = self.new_fh();
        let key = (attr.ino.0, generation);
        let mut io = self.io.lock().unwrap_or_else(|e| e.into_inner());
        io.entry(key).or_default().cached += 1;
        self.register_open(fh, Arc::new(h), key, false);
        Ok((attr, generation, ttl, fh))
    }

    pub(crate) fn do_write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let h = self.handle(fh).ok_or(Errno::EBADF)?;
        self.engine
            .write(&h, offset, data)
            .map(|n| n as u32)
            .map_err(|e| errno(&e))
    }

    /// A handle some open file of inode `ino` holds.
    pub(crate) fn open_handle_of(&self, ino: u64) -> Option<Arc<Handle>> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|f| f.key.0 == ino)
            .map(|f| f.handle.clone())
    }

    pub(crate) fn handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .map(|f| f.handle.clone())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        fh: Option<u64>,
    ) -> Result<(FileAttr, Duration), Errno> {
        let path = self.path_of(ino)?;
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        let h = fh
            .and_then(|fh| self.handle(fh))
            .filter(|h| h.is_writable());
        let a = self
            .engine
            .set_attr(&path, &set, h.as_deref())
            .map_err(|e| self.write_err("setattr", ino, None, &e))?;
        Ok((
            self.fattr(ino.0, &a),
            self.opts.attr_ttl.min(Duration::from_secs(1)),
        ))
    }

    pub(crate) fn do_mknod(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(FileAttr, u64, Duration), Errno> {
        let path = self.child(parent, name)?;
        let new = new_entry(mode, uid, gid);
        let a = self
            .engine
            .mknod(&path, &new, rdev as u64)
            .map_err(|e| self.write_err("mknod", parent, Some(name), &e))?;
        Ok(self.made(&path, &a))
    }

    pub(crate) fn do_mkdir(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(FileAttr, u64, Duration), Errno> {
        let path = self.child(parent, name)?;
        let new = new_entry(mode & 0o7777, uid, gid);
        let a = self
            .engine
            .mkdir(&path, &new)
            .map_err(|e| self.write_err("mkdir", parent, Some(name), &e))?;
        Ok(self.made(&path, &a))
    }

    pub(crate) fn do_symlink(
        &self,
        parent: INodeNo,
        name: &OsStr,
        target: &OsStr,
        uid: u32,
        gid: u32,
    ) -> Result<(FileAttr, u64, Duration), Errno> {
        let path = self.child(parent, name)?;
        let new = new_entry(0o777, uid, gid);
        let a = self
            .engine
            .symlink(target, &path, &new)
            .map_err(|e| self.write_err("symlink", parent, Some(name), &e))?;
        Ok(self.made(&path, &a))
    }

    pub(crate) fn do_link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
    ) -> Result<(FileAttr, u64, Duration), Errno> {
        let from = self.path_of(ino)?;
        let to = self.child(newparent, newname)?;
        let a = self
            .engine
            .link(&from, &to)
            .map_err(|e| self.write_err("link", newparent, Some(newname), &e))?;
        Ok(self.made(&to, &a))
    }

    pub(crate) fn do_remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child(parent, name)?;
        let r = if dir {
            self.engine.rmdir(&path)
        } else {
            self.engine.unlink(&path)
        };
        r.map_err(|e| self.write_err(if dir { "rmdir" } else { "unlink" }, parent, Some(name), &e))
    }

    pub(crate) fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        self.engine
            .rename(&from, &to, flags)
            .map_err(|e| self.write_err("rename", parent, Some(name), &e))?;
        // The inodes the kernel knows by these names (and below them) follow.
        let exchange = flags & strata::origin::RENAME_EXCHANGE != 0;
        let mut n = self.write_nodes();
        // (Joining an empty rest would add a trailing slash: "f/" is no file.)
        let under = |base: &Path, rest: &Path| {
            if rest.as_os_str().is_empty() {
                base.to_path_buf()
            } else {
                base.join(rest)
            }
        };
        let moved = |p: &Path| -> Option<PathBuf> {
            if let Ok(rest) = p.strip_prefix(&from) {
                Some(under(&to, rest))
            } else if exchange && let Ok(rest) = p.strip_prefix(&to) {
                Some(under(&from, rest))
            } else {
                None
            }
        };
        let mut renamed: Vec<(u64, PathBuf, PathBuf)> = Vec::new();
        for (&ino, node) in n.by_ino.iter() {
            if let Some(new) = moved(&node.path) {
                renamed.push((ino, node.path.clone(), new));
            }
        }
        for (ino, old, _) in &renamed {
            if n.by_path.get(old) == Some(ino) {
                n.by_path.remove(old);
            }
        }
        if !exchange {
            // What the target name was is gone from it.
            let gone: Vec<PathBuf> = n
                .by_path
                .keys()
                .filter(|p| p.starts_with(&to))
                .cloned()
                .collect();
            for p in gone {
                n.by_path.remove(&p);
            }
        }
        for (ino, _, new) in renamed {
            if let Some(node) = n.by_ino.get_mut(&ino) {
                node.path = new.clone();
            }
            n.by_path.insert(new, ino);
        }
        Ok(())
    }

    pub(crate) fn do_fsync(&self, fh: u64, datasync: bool) -> Result<(), Errno> {
        match self.handle(fh) {
            Some(h) => self.engine.fsync(&h, datasync).map_err(|e| errno(&e)),
            None => Err(Errno::EBADF),
        }
    }

    /// close(2): reports a failed write-back of the file, as NFS does; waits for
    /// nothing.
    pub(crate) fn do_flush(&self, fh: u64) -> Result<(), Errno> {
        match self.handle(fh) {
            Some(h) => self.engine.close_check(&h).map_err(|e| errno(&e)),
            None => Ok(()),
        }
    }

    pub(crate) fn do_fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let h = self.handle(fh).ok_or(Errno::EBADF)?;
        self.engine
            .fallocate(&h, mode, offset, length)
            .map_err(|e| errno(&e))
    }

    pub(crate) fn do_setxattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        if ino.0 == 1 && (name == CONTROL_XATTR || name == PID_XATTR) {
            return Err(Errno::EPERM);
        }
        let path = self.path_of(ino)?;
        self.engine
            .set_xattr(&path, name, value, flags)
            .map_err(|e| self.write_err("setxattr", ino, None, &e))
    }

    pub(crate) fn do_removexattr(&self, ino: INodeNo, name: &OsStr) -> Result<(), Errno> {
        if ino.0 == 1 && (name == CONTROL_XATTR || name == PID_XATTR) {
            return Err(Errno::EPERM);
        }
        let path = self.path_of(ino)?;
        self.engine
            .remove_xattr(&path, name)
            .map_err(|e| self.write_err("removexattr", ino, None, &e))
    }
}
