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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use rustc_hash::FxHashMap;
use strata::origin::{Attr, FileKind};
use strata::{Engine, Handle, ReadBuf};

mod uring;
pub use uring::UringQueues;

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
    /// Serve requests from per-CPU io_uring queues (FUSE over io_uring) when the
    /// kernel offers it; /dev/fuse otherwise.
    pub uring: bool,
    /// Users other than the mounting one may use the mount; otherwise requests from
    /// them are refused (as the fuser session refuses them).
    pub allow_other: bool,
}

/// The filesystem as the fuser session holds it: it shares the [`StrataFs`] with the
/// io_uring queues.
pub struct FuseFs(pub Arc<StrataFs>);

impl std::ops::Deref for FuseFs {
    type Target = StrataFs;
    fn deref(&self) -> &StrataFs {
        &self.0
    }
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
    passthrough: Option<(Backing, strata::Passthrough, u32)>,
}

/// A backing file registered with the kernel for passthrough. Registered on the
/// session's /dev/fuse file itself rather than through fuser's reply, so that the
/// io_uring queues, which answer opens without fuser, can hand it out too.
struct Backing {
    dev: Arc<OwnedFd>,
    id: u32,
}

/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const BACKING_CLOSE: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<u32>(229, 2);

impl Backing {
    fn open(dev: &Arc<OwnedFd>, file: &std::fs::File) -> io::Result<Self> {
        let id = fuser::BackingId::create_raw(dev.as_fd(), file)?;
        Ok(Backing {
            dev: dev.clone(),
            id,
        })
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: the opcode is the kernel's, and it reads a u32 backing id.
        let close = unsafe { rustix::ioctl::Setter::<BACKING_CLOSE, u32>::new(self.id) };
        // SAFETY: `dev` is the /dev/fuse file the id was registered on.
        if let Err(e) = unsafe { rustix::ioctl::ioctl(self.dev.as_fd(), close) } {
            // After unmount the connection is gone, and with it the id.
            tracing::debug!(error = %e, id = self.id, "closing a passthrough backing id");
        }
    }
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
    passthrough: AtomicBool,
    /// The session's /dev/fuse file, on which backing files are registered.
    device: OnceLock<Arc<OwnedFd>>,
    /// Whether the kernel agreed to FUSE over io_uring, once INIT is answered.
    pub(crate) uring: uring::Gate,
    /// The user who mounted (see `FsOptions::allow_other`).
    pub(crate) owner: u32,
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
            passthrough: AtomicBool::new(false),
            device: OnceLock::new(),
            uring: uring::Gate::default(),
            owner: rustix::process::getuid().as_raw(),
            dirs: Mutex::new(FxHashMap::default()),
            next_fh: AtomicU64::new(1),
            erofs_logged: AtomicU64::new(0),
        })
    }

    /// Gives the session's /dev/fuse file, needed for passthrough; call it before the
    /// session answers INIT. Without it, opens read through strata.
    pub fn attach_device(&self, dev: BorrowedFd<'_>) -> io::Result<()> {
        let dev = dev.try_clone_to_owned()?;
        let _ = self.device.set(Arc::new(dev));
        Ok(())
    }

    /// Lets io_uring queue threads that still wait for INIT end.
    pub fn stop_uring(&self) {
        self.uring.close();
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

    /// Attributes of the entry behind an inode, checking it is still the same file, and
    /// how long the kernel may keep them.
    fn attr_of(&self, ino: INodeNo) -> Result<(PathBuf, Attr, Duration), Errno> {
        let path = self.path_of(ino)?;
        let (r, ttl) = self.engine.stat_ttl(&path);
        let a = r.map_err(|e| {
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
        Ok((path, a, ttl))
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

/// What a getxattr or listxattr answers: the size asked for (a size of 0), or the
/// value itself.
pub(crate) enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

fn xattr_answer(v: Vec<u8>, size: u32) -> Result<Xattr, Errno> {
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
    fn negotiate(&self, config: &mut KernelConfig) {
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

    fn do_forget(&self, ino: INodeNo, nlookup: u64) {
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

    pub(crate) fn do_getattr(&self, ino: INodeNo) -> Result<(FileAttr, Duration), Errno> {
        self.attr_of(ino)
            .map(|(_, a, ttl)| (self.fattr(ino.0, &a), ttl))
    }

    pub(crate) fn do_readlink(&self, ino: INodeNo) -> Result<Arc<[u8]>, Errno> {
        let path = self.path_of(ino)?;
        self.engine.read_link(&path).map_err(|e| errno(&e))
    }

    /// The part of an open common to every way of reading: refuses writing, opens
    /// the engine's handle and checks it is still this inode's file.
    fn open_handle(&self, ino: INodeNo, flags: i32) -> Result<(Arc<Handle>, u64), Errno> {
        let write = flags & rustix::fs::OFlags::ACCMODE.bits() as i32
            != rustix::fs::OFlags::RDONLY.bits() as i32;
        if write || flags & libc_o_trunc() != 0 {
            return Err(self.refuse_write("open for writing", ino, None));
        }
        let path = self.path_of(ino)?;
        let h = Arc::new(self.engine.open(&path).map_err(|e| errno(&e))?);
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
    fn register_open(&self, fh: u64, h: Arc<Handle>, key: (u64, u64), passthrough: bool) {
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
        if dev.is_some() {
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
        let h = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .map(|f| f.handle.clone())
            .ok_or(Errno::EBADF)?;
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

impl fuser::Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.0.negotiate(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent, name) {
            Ok((attr, generation, ttl)) => reply.entry(&ttl, &attr, Generation(generation)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.do_forget(ino, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.do_getattr(ino) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.do_readlink(ino) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags.0) {
            Ok((fh, None)) => reply.opened(FileHandle(fh), cached_open_flags()),
            Ok((fh, Some(id))) => {
                // SAFETY: `id` is registered on this session's /dev/fuse and stays so
                // until this open is released; fuser must not close it (`into_raw`).
                let backing = unsafe { reply.wrap_backing(id) };
                reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &backing);
                let _ = backing.into_raw();
            }
            Err(e) => reply.error(e),
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
        let t0 = Instant::now();
        match self.do_read(fh.0, offset, size) {
            Ok(b) => match b.as_single() {
                Some(one) => reply.data(one),
                None => reply.data(&b.to_vec()),
            },
            Err(e) => reply.error(e),
        }
        self.note_read_time(t0);
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
        self.do_release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
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
        let r = self.do_readdir(ino, fh.0, offset, &mut |ino, off, kind, name| {
            reply.add(INodeNo(ino), off, kind, name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self.do_readdirplus(
            ino,
            fh.0,
            offset,
            &mut |off, name, attr, generation, ttl| {
                reply.add(attr.ino, off, name, &ttl, attr, Generation(generation))
            },
        );
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.do_releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.do_statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.do_getxattr(ino, name, size) {
            Ok(Xattr::Size(n)) => reply.size(n),
            Ok(Xattr::Data(v)) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.do_listxattr(ino, size) {
            Ok(Xattr::Size(n)) => reply.size(n),
            Ok(Xattr::Data(v)) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    /// No ioctls: ENOTTY, as a plain file answers (isatty, which Python asks of every
    /// file it opens), without fuser's "not implemented" warning for each.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.do_access(ino, mask.bits()) {
            Ok(()) => reply.ok(),
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
    fn dir(&self, fh: u64) -> Option<Arc<Vec<strata::origin::DirEntry>>> {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
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

/// Keep the kernel's page cache across opens; the engine drops it through the
/// notifier when the object changes.
fn cached_open_flags() -> FopenFlags {
    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
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
