//! The strata engine behind a FUSE filesystem: a read-only view of the origin that
//! answers from the engine's caches.
//!
//! Inode numbers are the origin's (folded with the device number for submounts of the
//! origin), so they are stable for the life of the mount and hard links share one.
//! The inode table maps each inode the kernel knows to its current origin path; a
//! lookup refreshes the path (renames at the origin), `forget` drops the entry.
//!
//! Changes go through to the origin (write-through, `write_ops.rs`); with a read-only
//! engine every one answers EROFS and is logged (rate limited).

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

mod backing;
mod invalidate;
mod ops;
mod session;
mod uring;
mod uring_change;
mod write_ops;

use backing::Backing;
pub use invalidate::Invalidator;
pub(crate) use ops::Xattr;
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
                "write refused: this strata mount is read-only (EROFS){}",
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

impl StrataFs {
    /// How the kernel is to treat an open file that reads through strata: its page
    /// cache kept, or (O_DIRECT) no page cache at all.
    pub(crate) fn open_flags(&self, fh: u64) -> FopenFlags {
        let direct = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .is_some_and(|f| f.handle.is_direct());
        if direct {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH
        } else {
            cached_open_flags()
        }
    }
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
