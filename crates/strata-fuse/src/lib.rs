//! The strata engine behind a FUSE filesystem: a read-only view of the origin that
//! answers from the engine's caches.
//!
//! Inode numbers are the origin's (folded with the device number for submounts of the
//! origin), so they are stable for the life of the mount and hard links share one.
//! The inode table maps each inode the kernel knows to its current origin path; a
//! lookup refreshes the path (renames at the origin), `forget` drops the entry.
//!
//! Every write operation answers EROFS and logs it (rate limited).

use std::collections::hash_map::Entry;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crossbeam_channel::Sender;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use rustc_hash::FxHashMap;
use strata::origin::{Attr, FileKind};
use strata::{Engine, Handle};

/// Name of the extended attribute of the mount's root that gives the path of the
/// daemon's control socket (used by `strata stats` and `strata umount`). It is not
/// listed by listxattr.
pub const CONTROL_XATTR: &str = "user.strata.control";

/// Extended attribute of the mount's root that gives the daemon's process id (for
/// `strata umount` to wait on when the control socket cannot be reached).
pub const PID_XATTR: &str = "user.strata.pid";

/// Largest read the kernel sends (max_pages × page size).
pub const MAX_READ: u32 = 1 << 20;

/// Origin stats in flight at once for a cold readdirplus.
const LISTING_PARALLELISM: usize = 16;

#[derive(Clone, Debug)]
pub struct FsOptions {
    /// How long the kernel may trust attributes and entries.
    pub attr_ttl: Duration,
    /// Control socket path reported through [`CONTROL_XATTR`].
    pub control: Option<PathBuf>,
    /// Let the kernel read fully cached files straight from the disk cache.
    pub passthrough: bool,
}

/// An open file.
struct OpenFile {
    handle: Arc<Handle>,
    /// The inode and its generation when opened (see `StrataFs::gens`).
    key: (u64, u64),
    passthrough: bool,
}

/// How an inode's open files are read. The kernel allows one mode at a time per
/// inode, and one backing file for all its passthrough opens.
#[derive(Default)]
struct InodeIo {
    /// Opens read through strata and the kernel's page cache of the inode.
    cached: u32,
    /// The backing file (and its pin) shared by the passthrough opens.
    passthrough: Option<(fuser::BackingId, strata::Passthrough, u32)>,
}

struct Node {
    path: PathBuf,
    lookups: u64,
}

#[derive(Default)]
struct Nodes {
    by_ino: FxHashMap<u64, Node>,
    by_path: FxHashMap<PathBuf, u64>,
}

pub struct StrataFs {
    engine: Arc<Engine>,
    opts: FsOptions,
    root_dev: u64,
    root_ino: u64,
    /// The origin's inode numbers are stable: present them. Otherwise strata numbers
    /// paths itself (from `next_ino`), stable while the kernel knows the path.
    stable_inodes: bool,
    next_ino: AtomicU64,
    nodes: Arc<RwLock<Nodes>>,
    files: Mutex<FxHashMap<u64, OpenFile>>,
    /// How each (inode, generation) is read now.
    io: Arc<Mutex<FxHashMap<(u64, u64), InodeIo>>>,
    /// Generations of inode numbers, when not 0. A generation is bumped when a version
    /// the kernel reads by passthrough dies: the kernel then retires that inode and
    /// makes a new one for the next lookup, so new opens cannot share the old backing.
    gens: Arc<Mutex<FxHashMap<u64, u64>>>,
    /// Passthrough was asked for and the kernel agreed (set at INIT).
    passthrough: bool,
    dirs: Mutex<FxHashMap<u64, Arc<Vec<strata::origin::DirEntry>>>>,
    next_fh: AtomicU64,
    erofs_logged: AtomicU64,
}

/// Delivers the engine's invalidations to the kernel: when the engine drops an
/// object, the kernel's page cache of its inode is dropped too; if the kernel reads
/// the inode by passthrough, the inode is retired (see `StrataFs::gens`).
pub struct Invalidator {
    engine: Arc<Engine>,
    nodes: Arc<RwLock<Nodes>>,
    io: Arc<Mutex<FxHashMap<(u64, u64), InodeIo>>>,
    gens: Arc<Mutex<FxHashMap<u64, u64>>>,
}

enum Notice {
    Inode(u64),
    Entry(u64, std::ffi::OsString),
}

impl Invalidator {
    /// Starts delivering. Notifications go out from their own thread: sending one
    /// from a request handler can deadlock against the kernel.
    pub fn connect(self, notifier: fuser::Notifier) -> io::Result<()> {
        let (tx, rx) = crossbeam_channel::unbounded::<Notice>();
        std::thread::Builder::new()
            .name("strata-inval".into())
            .spawn(move || {
                for n in rx {
                    // ENOENT: the kernel no longer knows it; nothing to drop.
                    let _ = match n {
                        Notice::Inode(ino) => notifier.inval_inode(INodeNo(ino), 0, 0),
                        Notice::Entry(parent, name) => notifier.inval_entry(INodeNo(parent), &name),
                    };
                }
            })?;
        let Invalidator {
            engine,
            nodes,
            io,
            gens,
        } = self;
        let tx: Mutex<Sender<Notice>> = Mutex::new(tx);
        engine.set_invalidation_listener(move |path| {
            let (ino, parent) = {
                let n = nodes.read().unwrap_or_else(|e| e.into_inner());
                let parent = path
                    .parent()
                    .and_then(|p| n.by_path.get(p).copied())
                    .unwrap_or(1);
                (n.by_path.get(path).copied(), parent)
            };
            let Some(ino) = ino else { return };
            let tx = tx.lock().unwrap_or_else(|e| e.into_inner());
            let _ = tx.send(Notice::Inode(ino));
            let mut g = gens.lock().unwrap_or_else(|e| e.into_inner());
            let cur = g.get(&ino).copied().unwrap_or(0);
            let in_passthrough = io
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(ino, cur))
                .is_some_and(|st| st.passthrough.is_some());
            if in_passthrough {
                g.insert(ino, cur + 1);
                if let Some(name) = path.file_name() {
                    let _ = tx.send(Notice::Entry(parent, name.to_os_string()));
                }
            }
        });
        Ok(())
    }
}

fn errno(e: &io::Error) -> Errno {
    match e.raw_os_error() {
        Some(c) => Errno::from_i32(c),
        None => Errno::EIO,
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        // Unknown never leaves the engine; a file is the safe guess.
        FileKind::File | FileKind::Unknown => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// A name from the kernel must be one path component.
fn valid_name(name: &OsStr) -> Result<(), Errno> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::ENOENT);
    }
    if b.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl StrataFs {
    /// Builds the filesystem. Fails if the origin's root cannot be read.
    pub fn new(engine: Arc<Engine>, opts: FsOptions) -> io::Result<Self> {
        let root = engine.stat(Path::new(""))?;
        if root.kind != FileKind::Dir {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the origin is not a directory",
            ));
        }
        let mut nodes = Nodes::default();
        nodes.by_ino.insert(
            1,
            Node {
                path: PathBuf::new(),
                lookups: 1,
            },
        );
        nodes.by_path.insert(PathBuf::new(), 1);
        let stable_inodes = engine.origin().stable_inodes();
        Ok(Self {
            engine,
            opts,
            root_dev: root.dev,
            root_ino: root.ino,
            stable_inodes,
            next_ino: AtomicU64::new(2),
            nodes: Arc::new(RwLock::new(nodes)),
            files: Mutex::new(FxHashMap::default()),
            io: Arc::new(Mutex::new(FxHashMap::default())),
            gens: Arc::new(Mutex::new(FxHashMap::default())),
            passthrough: false,
            dirs: Mutex::new(FxHashMap::default()),
            next_fh: AtomicU64::new(1),
            erofs_logged: AtomicU64::new(0),
        })
    }

    /// The part that forwards invalidations; connect it once the session exists.
    pub fn invalidator(&self) -> Invalidator {
        Invalidator {
            engine: self.engine.clone(),
            nodes: self.nodes.clone(),
            io: self.io.clone(),
            gens: self.gens.clone(),
        }
    }

    fn gen_of(&self, ino: u64) -> u64 {
        self.gens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .copied()
            .unwrap_or(0)
    }

    fn read_nodes(&self) -> std::sync::RwLockReadGuard<'_, Nodes> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_nodes(&self) -> std::sync::RwLockWriteGuard<'_, Nodes> {
        self.nodes.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The inode number the mount presents for an origin entry.
    fn ino_of(&self, path: &Path, a: &Attr) -> u64 {
        if path.as_os_str().is_empty() {
            return 1;
        }
        if !self.stable_inodes {
            if let Some(&ino) = self.read_nodes().by_path.get(path) {
                return ino;
            }
            return self.next_ino.fetch_add(1, Ordering::Relaxed);
        }
        if a.dev == self.root_dev && a.ino != 1 && a.ino != self.root_ino && a.ino < (1 << 63) {
            return a.ino;
        }
        // Another filesystem inside the origin, or a number taken by the root: fold
        // the device in, out of the range of plain numbers.
        let mut h = a.dev.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ a.ino;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h | (1 << 63)
    }

    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.read_nodes()
            .by_ino
            .get(&ino.0)
            .map(|n| n.path.clone())
            .ok_or(Errno::ESTALE)
    }

    fn fattr(&self, ino: u64, a: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.blocks,
            atime: a.atime.to_system_time(),
            mtime: a.mtime.to_system_time(),
            ctime: a.ctime.to_system_time(),
            crtime: SystemTime::UNIX_EPOCH,
            kind: file_type(a.kind),
            perm: (a.perm & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev as u32,
            blksize: a.blksize.max(512),
            flags: 0,
        }
    }

    /// Records that the kernel looked `path` up once more.
    fn remember(&self, ino: u64, path: &Path) {
        let mut n = self.write_nodes();
        match n.by_ino.entry(ino) {
            Entry::Occupied(mut o) => {
                let node = o.get_mut();
                node.lookups += 1;
                if node.path != path {
                    // Renamed (or another hard link): follow the latest name.
                    let old = std::mem::replace(&mut node.path, path.to_path_buf());
                    if n.by_path.get(&old) == Some(&ino) {
                        n.by_path.remove(&old);
                    }
                    n.by_path.insert(path.to_path_buf(), ino);
                }
            }
            Entry::Vacant(v) => {
                v.insert(Node {
                    path: path.to_path_buf(),
                    lookups: 1,
                });
                n.by_path.insert(path.to_path_buf(), ino);
            }
        }
    }

    /// Attributes of the entry behind an inode, checking it is still the same file.
    fn attr_of(&self, ino: INodeNo) -> Result<(PathBuf, Attr), Errno> {
        let path = self.path_of(ino)?;
        let a = self.engine.stat(&path).map_err(|e| {
            if e.raw_os_error() == Some(2) && ino.0 != 1 {
                Errno::ESTALE
            } else {
                errno(&e)
            }
        })?;
        if self.ino_of(&path, &a) != ino.0 {
            // Another file has the name now; the kernel will look it up again.
            return Err(Errno::ESTALE);
        }
        Ok((path, a))
    }

    /// Answers a write operation on `ino` (and `name` in it, for directory
    /// operations) with EROFS, logging it (the first ten, then sparsely).
    fn refuse_write(&self, op: &str, ino: INodeNo, name: Option<&OsStr>) -> Errno {
        let n = self.erofs_logged.fetch_add(1, Ordering::Relaxed);
        if n < 10 || n.is_power_of_two() {
            let mut path = Path::new("/").join(self.path_of(ino).unwrap_or_default());
            if let Some(name) = name {
                path.push(name);
            }
            tracing::warn!(
                op,
                path = %path.display(),
                "write refused: strata mounts are read-only (EROFS){}",
                if n >= 10 { " (further refusals are logged sparsely)" } else { "" }
            );
        }
        Errno::EROFS
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        valid_name(name)?;
        let mut p = self.path_of(parent)?;
        p.push(name);
        Ok(p)
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }
}

impl fuser::Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_readahead(MAX_READ);
        let _ = config.set_max_write(MAX_READ);
        let _ = config.set_max_background(64);
        let wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        let _ = config.add_capabilities(wanted & config.capabilities());
        if self.opts.passthrough && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
            // Backing files are the cache's own files on a local filesystem: one level.
            if config.set_max_stack_depth(1).is_ok()
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            {
                self.passthrough = true;
            }
        }
        tracing::debug!(passthrough = self.passthrough, "FUSE session initialized");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.engine.stat(&path) {
            Ok(a) => {
                let ino = self.ino_of(&path, &a);
                self.remember(ino, &path);
                let generation = Generation(self.gen_of(ino));
                reply.entry(&self.opts.attr_ttl, &self.fattr(ino, &a), generation);
            }
            Err(e) if e.raw_os_error() == Some(2) => {
                // A negative entry (inode 0) the kernel may cache for the TTL.
                reply.entry(&self.opts.attr_ttl, &negative_entry(), Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
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

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino) {
            Ok((_, a)) => reply.attr(&self.opts.attr_ttl, &self.fattr(ino.0, &a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.engine.read_link(&path) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc_o_trunc() != 0 {
            return reply.error(self.refuse_write("open for writing", ino, None));
        }
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let h = match self.engine.open(&path) {
            Ok(h) => Arc::new(h),
            Err(e) => return reply.error(errno(&e)),
        };
        // The open just refreshed the attributes: is it still this inode's file?
        let same = self
            .engine
            .stat(&path)
            .is_ok_and(|a| self.ino_of(&path, &a) == ino.0);
        if !same {
            return reply.error(Errno::ESTALE);
        }
        let fh = self.new_fh();
        let key = (ino.0, self.gen_of(ino.0));
        let mut pt_candidate = None;
        if self.passthrough {
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
        // The file is known before the kernel hears of it: a read may follow at once.
        let register = |passthrough: bool| {
            self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(
                fh,
                OpenFile {
                    handle: h.clone(),
                    key,
                    passthrough,
                },
            );
        };
        if let Some((backing, _, opens)) = &mut st.passthrough {
            // Every passthrough open of an inode must share its backing file.
            *opens += 1;
            register(true);
            reply_pt(reply, fh, backing);
        } else if let (Some(pt), 0) = (pt_candidate, st.cached) {
            match reply.open_backing(&pt.file) {
                Ok(backing) => {
                    st.passthrough = Some((backing, pt, 1));
                    register(true);
                    let (backing, _, _) = st.passthrough.as_ref().expect("just set");
                    reply_pt(reply, fh, backing);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "passthrough refused; reading through strata");
                    st.cached += 1;
                    register(false);
                    reply.opened(
                        FileHandle(fh),
                        FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
                    );
                }
            }
        } else {
            st.cached += 1;
            register(false);
            // Keep the kernel's page cache across opens; the engine drops it through
            // the notifier when the object changes.
            reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            );
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let h = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .map(|f| f.handle.clone());
        let Some(h) = h else {
            return reply.error(Errno::EBADF);
        };
        match self.engine.read(&h, offset, size as usize) {
            Ok(b) => match b.as_single() {
                Some(one) => reply.data(one),
                None => reply.data(&b.to_vec()),
            },
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so there is nothing to flush.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let f = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        if let Some(f) = f {
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
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        // A snapshot of the listing per open directory keeps offsets stable.
        match self.engine.read_dir(&path) {
            Ok(list) => {
                let fh = self.new_fh();
                self.dirs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fh, list);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(list) = self.dir(fh) else {
            return reply.error(Errno::EBADF);
        };
        let parent = self.parent_ino(ino);
        for i in offset as usize..list.len() + 2 {
            let full = match i {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(INodeNo(parent), 2, FileType::Directory, ".."),
                _ => {
                    let e = &list[i - 2];
                    let known = (!self.stable_inodes)
                        .then(|| {
                            let p = self.path_of(ino).ok()?.join(&e.name);
                            self.read_nodes().by_path.get(&p).copied()
                        })
                        .flatten();
                    let d_ino = known.unwrap_or(if e.ino == 0 { u64::MAX } else { e.ino });
                    reply.add(INodeNo(d_ino), i as u64 + 1, file_type(e.kind), &e.name)
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(list) = self.dir(fh) else {
            return reply.error(Errno::EBADF);
        };
        let dir_path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let ttl = self.opts.attr_ttl;
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
                    // The kernel takes no reference for "." and "..".
                    let (name, e_ino, p) = if i == 0 {
                        (".", ino.0, dir_path.clone())
                    } else {
                        let parent = self.parent_ino(ino);
                        let pp = self.path_of(INodeNo(parent)).unwrap_or_default();
                        ("..", parent, pp)
                    };
                    match self.engine.stat(&p) {
                        Ok(a) => reply.add(
                            INodeNo(e_ino),
                            i as u64 + 1,
                            name,
                            &ttl,
                            &self.fattr(e_ino, &a),
                            Generation(0),
                        ),
                        Err(_) => false,
                    }
                }
                _ => {
                    let k = i - start.max(2);
                    let e = &list[i - 2];
                    match &attrs[k] {
                        Ok(a) => {
                            let e_ino = self.ino_of(&paths[k], a);
                            let full = reply.add(
                                INodeNo(e_ino),
                                i as u64 + 1,
                                &e.name,
                                &ttl,
                                &self.fattr(e_ino, a),
                                Generation(self.gen_of(e_ino)),
                            );
                            if !full {
                                // The kernel holds a reference for each entry it got.
                                self.remember(e_ino, &paths[k]);
                            }
                            full
                        }
                        // Vanished since the listing: leave it out.
                        Err(_) => false,
                    }
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.engine.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value: Result<Vec<u8>, Errno> = if ino.0 == 1 && name == CONTROL_XATTR {
            match &self.opts.control {
                Some(p) => Ok(p.as_os_str().as_bytes().to_vec()),
                None => Err(Errno::from_i32(61)), // ENODATA
            }
        } else if ino.0 == 1 && name == PID_XATTR {
            Ok(std::process::id().to_string().into_bytes())
        } else {
            self.path_of(ino).and_then(|p| {
                self.engine
                    .get_xattr(&p, name)
                    .map(|v| v.to_vec())
                    .map_err(|e| errno(&e))
            })
        };
        match value {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = match self
            .path_of(ino)
            .and_then(|p| self.engine.list_xattr(&p).map_err(|e| errno(&e)))
        {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let mut buf = Vec::new();
        for n in names.iter() {
            buf.extend_from_slice(n.as_bytes());
            buf.push(0);
        }
        if size == 0 {
            reply.size(buf.len() as u32);
        } else if buf.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&buf);
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(self.refuse_write("access for writing", ino, None));
        }
        match self.attr_of(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    // Everything that would change the origin is refused.

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(self.refuse_write("setattr", ino, None));
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_write("mknod", parent, Some(name)));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_write("mkdir", parent, Some(name)));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse_write("unlink", parent, Some(name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse_write("rmdir", parent, Some(name)));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_write("symlink", parent, Some(link_name)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse_write("rename", parent, Some(name)));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_write("link", newparent, Some(newname)));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(self.refuse_write("write", ino, None));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(self.refuse_write("create", parent, Some(name)));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse_write("setxattr", ino, None));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse_write("removexattr", ino, None));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse_write("fallocate", ino, None));
    }
}

impl StrataFs {
    fn dir(&self, fh: FileHandle) -> Option<Arc<Vec<strata::origin::DirEntry>>> {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
    }

    fn parent_ino(&self, ino: INodeNo) -> u64 {
        if ino.0 == 1 {
            return 1;
        }
        let n = self.read_nodes();
        let parent_path = n
            .by_ino
            .get(&ino.0)
            .and_then(|node| node.path.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        n.by_path.get(&parent_path).copied().unwrap_or(1)
    }

    /// Paths the kernel currently knows, for tests and diagnostics.
    pub fn known_inodes(&self) -> usize {
        self.read_nodes().by_ino.len()
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

fn libc_o_trunc() -> i32 {
    rustix::fs::OFlags::TRUNC.bits() as i32
}

fn reply_pt(reply: ReplyOpen, fh: u64, backing: &fuser::BackingId) {
    reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, backing);
}

fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
