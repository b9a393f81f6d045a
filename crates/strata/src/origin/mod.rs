//! Origins: the slow media strata caches, and the source of truth.
//!
//! An origin names files by relative paths (any bytes but `/` and NUL in a name; no
//! `.` or `..` components) and gives each file a coherency [`Token`]: what must be
//! unchanged for cached bytes to still be the file's bytes. A local directory uses
//! (size, mtime, ctime, inode); HTTP and S3 origins will use (size, ETag).

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path};
use std::sync::Arc;

/// The write methods of an origin that wraps another (`inner`): each calls
/// `self.$pre()?` first (a delay, an injected fault), and files it opens are wrapped
/// with `self.$wrap(file)`.
macro_rules! forward_writes {
    ($pre:ident, $wrap:ident) => {
        fn writable(&self) -> bool {
            self.inner.writable()
        }
        fn open_rw(&self, path: &Path, truncate: bool) -> io::Result<Box<dyn OriginFile>> {
            self.$pre()?;
            Ok(self.$wrap(self.inner.open_rw(path, truncate)?))
        }
        fn create(
            &self,
            path: &Path,
            new: &super::NewEntry,
            exclusive: bool,
        ) -> io::Result<Box<dyn OriginFile>> {
            self.$pre()?;
            Ok(self.$wrap(self.inner.create(path, new, exclusive)?))
        }
        fn mkdir(&self, path: &Path, new: &super::NewEntry) -> io::Result<()> {
            self.$pre()?;
            self.inner.mkdir(path, new)
        }
        fn mknod(&self, path: &Path, new: &super::NewEntry, rdev: u64) -> io::Result<()> {
            self.$pre()?;
            self.inner.mknod(path, new, rdev)
        }
        fn symlink(&self, target: &OsStr, path: &Path, new: &super::NewEntry) -> io::Result<()> {
            self.$pre()?;
            self.inner.symlink(target, path, new)
        }
        fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.$pre()?;
            self.inner.link(from, to)
        }
        fn unlink(&self, path: &Path) -> io::Result<()> {
            self.$pre()?;
            self.inner.unlink(path)
        }
        fn rmdir(&self, path: &Path) -> io::Result<()> {
            self.$pre()?;
            self.inner.rmdir(path)
        }
        fn rename(&self, from: &Path, to: &Path, flags: u32) -> io::Result<()> {
            self.$pre()?;
            self.inner.rename(from, to, flags)
        }
        fn set_attr(&self, path: &Path, set: &super::SetAttr) -> io::Result<()> {
            self.$pre()?;
            self.inner.set_attr(path, set)
        }
        fn set_xattr(&self, path: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
            self.$pre()?;
            self.inner.set_xattr(path, name, value, flags)
        }
        fn remove_xattr(&self, path: &Path, name: &OsStr) -> io::Result<()> {
            self.$pre()?;
            self.inner.remove_xattr(path, name)
        }
    };
}

/// The write methods of a file that wraps another (`inner`): `self.$pre(bytes)?`
/// first, with the bytes a call sends.
macro_rules! forward_file_writes {
    ($pre:ident) => {
        fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
            self.$pre(buf.len())?;
            self.inner.write_at(buf, off)
        }
        fn sync(&self, data_only: bool) -> io::Result<()> {
            self.$pre(0)?;
            self.inner.sync(data_only)
        }
        fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
            self.$pre(0)?;
            self.inner.allocate(mode, off, len)
        }
        fn set_len(&self, size: u64) -> io::Result<()> {
            self.$pre(0)?;
            self.inner.set_len(size)
        }
        fn attr(&self) -> io::Result<Attr> {
            self.inner.attr()
        }
    };
}

mod fault;
mod local;
mod local_write;
mod slow;

pub use fault::{FaultOrigin, Faults};
pub use local::{LocalOrigin, MountEntry, mount_table};
pub use slow::SlowOrigin;

/// Errors that say "the origin could not be asked", as opposed to "the origin
/// answered: no". ETIMEDOUT is also what a call past its deadline gets. These trip
/// the engine's circuit breaker. EIO does not: one damaged file must not make every
/// file unreadable.
pub fn unreachable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            100 // ENETDOWN
                | 101 // ENETUNREACH
                | 103 // ECONNABORTED
                | 104 // ECONNRESET
                | 107 // ENOTCONN
                | 108 // ESHUTDOWN
                | 110 // ETIMEDOUT
                | 111 // ECONNREFUSED
                | 112 // EHOSTDOWN
                | 113 // EHOSTUNREACH
        )
    )
}

/// What must stay the same for cached data of a file to stay valid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Token {
    /// From `stat`: any write, truncation or replacement changes one of these.
    Stat {
        size: u64,
        mtime_ns: i64,
        ctime_ns: i64,
        ino: u64,
    },
    /// From an HTTP or S3 response.
    Etag { size: u64, etag: Arc<str> },
}

impl Token {
    pub fn size(&self) -> u64 {
        match self {
            Token::Stat { size, .. } | Token::Etag { size, .. } => *size,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    /// Only in an origin's directory listing: the origin did not say (sshfs fills no
    /// `d_type`). The engine asks before it hands the listing out.
    Unknown,
}

/// A point in time as seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn as_nanos(&self) -> i64 {
        self.secs
            .saturating_mul(1_000_000_000)
            .saturating_add(self.nanos as i64)
    }

    pub fn to_system_time(self) -> std::time::SystemTime {
        use std::time::{Duration, UNIX_EPOCH};
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::new(self.secs.unsigned_abs(), 0) + Duration::new(0, self.nanos)
        }
    }
}

/// Attributes of an origin entry, as `lstat` gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits, including setuid, setgid and sticky (not the type bits).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// The origin's own inode number (not the one the mount presents).
    pub ino: u64,
    /// The origin's device number (entries on submounts of the origin differ).
    pub dev: u64,
    pub token: Token,
}

impl Attr {
    /// True when `other` is the same file (not just the same path): same inode for
    /// origins that have inodes; for others (ETag) a path is its file.
    pub fn same_file(&self, other: &Token) -> bool {
        match (&self.token, other) {
            (Token::Stat { ino: a, .. }, Token::Stat { ino: b, .. }) => a == b,
            _ => true,
        }
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: FileKind,
    /// The origin's inode number of the entry (0 if unknown).
    pub ino: u64,
}

/// Space on the origin's filesystem, as `statfs` gives it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A slow medium of files.
pub trait Origin: Send + Sync {
    /// Attributes of an entry, never following a symlink in the last component.
    fn stat(&self, path: &Path) -> io::Result<Attr>;
    /// Opens a regular file for reading.
    fn open(&self, path: &Path) -> io::Result<Box<dyn OriginFile>>;
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn get_xattr(&self, path: &Path, name: &std::ffi::OsStr) -> io::Result<Vec<u8>>;
    fn list_xattr(&self, path: &Path) -> io::Result<Vec<OsString>>;
    fn statfs(&self) -> io::Result<FsStats>;
    /// A short human description for logs ("local directory /srv/data").
    fn describe(&self) -> String;
    /// Whether inode numbers stay the same for a file for as long as it exists. When
    /// they do not (FUSE filesystems such as sshfs number inodes as they meet them),
    /// tokens leave them out and a path is a file's identity.
    fn stable_inodes(&self) -> bool {
        true
    }

    // Writes. An origin that takes none (HTTP, S3) keeps these defaults: EROFS.

    /// Whether the origin takes writes at all.
    fn writable(&self) -> bool {
        false
    }
    /// Opens a regular file for reading and writing, cut to length 0 with `truncate`.
    fn open_rw(&self, path: &Path, truncate: bool) -> io::Result<Box<dyn OriginFile>> {
        let _ = (path, truncate);
        Err(read_only())
    }
    /// Creates a regular file (or, without `exclusive`, opens the one there) for
    /// reading and writing, with permissions `mode` exactly and owned by `owner`.
    fn create(
        &self,
        path: &Path,
        new: &NewEntry,
        exclusive: bool,
    ) -> io::Result<Box<dyn OriginFile>> {
        let _ = (path, new, exclusive);
        Err(read_only())
    }
    fn mkdir(&self, path: &Path, new: &NewEntry) -> io::Result<()> {
        let _ = (path, new);
        Err(read_only())
    }
    /// A FIFO, socket or device node (`new.mode` holds the type bits).
    fn mknod(&self, path: &Path, new: &NewEntry, rdev: u64) -> io::Result<()> {
        let _ = (path, new, rdev);
        Err(read_only())
    }
    fn symlink(&self, target: &std::ffi::OsStr, path: &Path, new: &NewEntry) -> io::Result<()> {
        let _ = (target, path, new);
        Err(read_only())
    }
    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let _ = (from, to);
        Err(read_only())
    }
    fn unlink(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Err(read_only())
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Err(read_only())
    }
    /// `flags`: 0, [`RENAME_NOREPLACE`] or [`RENAME_EXCHANGE`] (as renameat2).
    fn rename(&self, from: &Path, to: &Path, flags: u32) -> io::Result<()> {
        let _ = (from, to, flags);
        Err(read_only())
    }
    /// Changes what `set` names, in the order mode, owner, size, times.
    fn set_attr(&self, path: &Path, set: &SetAttr) -> io::Result<()> {
        let _ = (path, set);
        Err(read_only())
    }
    fn set_xattr(
        &self,
        path: &Path,
        name: &std::ffi::OsStr,
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        let _ = (path, name, value, flags);
        Err(read_only())
    }
    fn remove_xattr(&self, path: &Path, name: &std::ffi::OsStr) -> io::Result<()> {
        let _ = (path, name);
        Err(read_only())
    }
}

/// renameat2's flags.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// EROFS: what an origin that takes no writes answers.
pub fn read_only() -> io::Error {
    io::Error::from_raw_os_error(30)
}

/// How a new entry is made: its permission bits (with type bits for `mknod`), and
/// whose it is (None: the daemon's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewEntry {
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
}

/// A time to set: now, or a given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(Timestamp),
}

/// What a `setattr` changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// An open origin file.
pub trait OriginFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `off`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// Reads one contiguous range into several buffers (one request to the origin).
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], off: u64) -> io::Result<usize> {
        read_vectored_by(bufs, off, |b, o| self.read_at(b, o))
    }
    /// The token of the file as it is now, to check that a read saw one version.
    fn token(&self) -> io::Result<Token>;
    /// Writes all of `buf` at `off` (a file opened for writing).
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let _ = (buf, off);
        Err(read_only())
    }
    /// Makes what was written durable at the origin (its data only, with `data_only`).
    fn sync(&self, data_only: bool) -> io::Result<()> {
        let _ = data_only;
        Ok(())
    }
    /// As fallocate(2).
    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        let _ = (mode, off, len);
        Err(io::Error::from_raw_os_error(95)) // EOPNOTSUPP
    }
    /// Sets the file's length (truncate through an open file).
    fn set_len(&self, size: u64) -> io::Result<()> {
        let _ = size;
        Err(read_only())
    }
    /// The file's attributes now.
    fn attr(&self) -> io::Result<Attr> {
        Err(io::Error::from_raw_os_error(95))
    }
}

/// Fills `bufs` from `off` on with repeated calls of `read_at` until they are full or
/// the end of the file is reached. Returns the bytes read.
pub fn read_vectored_by(
    bufs: &mut [&mut [u8]],
    mut off: u64,
    mut read_at: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut total = 0;
    for b in bufs.iter_mut() {
        let mut done = 0;
        while done < b.len() {
            match read_at(&mut b[done..], off + done as u64) {
                Ok(0) => return Ok(total + done),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        total += done;
        off += done as u64;
    }
    Ok(total)
}

/// Checks that a path is relative and made only of normal components, so that no
/// name can walk out of the origin ("..", absolute paths) or alias another (".").
pub fn check_relative(path: &Path) -> io::Result<()> {
    for c in path.components() {
        match c {
            Component::Normal(_) => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("path {path:?} is not a plain relative path"),
                ));
            }
        }
    }
    Ok(())
}
