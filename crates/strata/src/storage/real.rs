//! [`Storage`] on a real directory.
//!
//! strata usually runs as root, so its cache directory is a place where a mistake is
//! a hole in the machine. The directory is opened once, without following a symlink,
//! and checked on that descriptor (owner, mode, strata's own marker); every file and
//! directory inside it is then reached from the descriptor with `openat2(RESOLVE_BENEATH
//! | RESOLVE_NO_SYMLINKS)` (or a `*at` call on a parent opened that way), so a symlink
//! planted in it is an error, never a way to make the daemon write elsewhere.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::io::IoSliceMut;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FallocateFlags, FlockOperation, Mode, OFlags, ResolveFlags, SeekFrom};

use super::{Space, Storage, StorageFile};

/// The marker that makes a directory a strata cache: a cache directory tag (backup
/// tools that honour the convention skip the directory) whose second line only
/// strata writes. A non-empty directory without it is never written into.
pub const MARKER: &str = "CACHEDIR.TAG";
const MARKER_TEXT: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n\
# This directory is a strata cache. Do not put other files here;\n\
# `strata fsck DIR` checks it, and it may be deleted whole when no mount uses it.\n";

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

/// A cache directory on a local filesystem. Directories are created 0700 and files
/// 0600: the cache holds copies of files other users may not be allowed to read.
pub struct RealStorage {
    root: PathBuf,
    /// The directory itself, opened without following links and checked.
    dir: OwnedFd,
}

fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

impl RealStorage {
    /// Opens the cache directory `root`, creating it (0700, with missing parents) if
    /// needed. Refused, with a message that says what to do: a symlink, a directory
    /// another user owns or can write to, and a non-empty directory that is not a
    /// strata cache. A new or empty directory gets strata's marker.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        Self::open_with(root.into(), true)
    }

    /// Opens an existing cache directory with the same checks, creating and marking
    /// nothing (for `fsck`, and for reading the block size of a cache before a mount).
    /// A directory that is empty or not a strata cache is refused.
    pub fn open_existing(root: impl Into<PathBuf>) -> io::Result<Self> {
        Self::open_with(root.into(), false)
    }

    fn open_with(root: PathBuf, create: bool) -> io::Result<Self> {
        let shown = root.display().to_string();
        if create {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot create {}: {e}", parent.display()))
                    })?;
            }
            match rustix::fs::mkdir(&root, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!("cannot create cache directory {shown}: {e}"),
                    ));
                }
            }
        }
        let dir = rustix::fs::open(
            &root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => refuse(format!(
                "cache directory {shown} is a symbolic link; strata uses only a real \
                 directory (pass the link's target with --cache-dir)"
            )),
            rustix::io::Errno::NOTDIR => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cache directory {shown} is not a directory"),
            ),
            e => io::Error::new(
                io::Error::from(e).kind(),
                format!("cache directory {shown}: {e}"),
            ),
        })?;
        // Checked on the descriptor: what was checked is what is used.
        let st = rustix::fs::fstat(&dir)?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me {
            return Err(refuse(format!(
                "cache directory {shown} is owned by uid {}, not by you (uid {me}); \
                 refusing to use it (pass a directory of your own with --cache-dir)",
                st.st_uid
            )));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(refuse(format!(
                "cache directory {shown} can be written by other users (mode {:o}): anyone \
                 who can write there could plant files or links for strata to use; pass a \
                 directory only you can write (mkdir -m 700 DIR), or remove the others' \
                 write permission (chmod go-w {shown}) if it holds nothing else",
                st.st_mode & 0o7777
            )));
        }
        let s = Self { root, dir };
        s.check_marker(create)?;
        Ok(s)
    }

    /// Accepts the directory as a strata cache, or refuses it. With `create`, an empty
    /// directory, or one strata made before it wrote markers, is marked.
    fn check_marker(&self, create: bool) -> io::Result<()> {
        let shown = self.root.display();
        let names = self.names(Path::new(""))?;
        let marker = match self.read_head(MARKER, MARKER_TEXT.len() + 1) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let ours = match &marker {
            Some(m) if m == MARKER_TEXT => return Ok(()),
            // Torn by a crash while the marker was the only thing written.
            Some(m) => MARKER_TEXT.starts_with(m) && names.len() == 1,
            None => names.is_empty() || self.is_older_strata_cache(),
        };
        if !ours {
            return Err(refuse(format!(
                "{shown} is not empty and is not a strata cache directory (it has no \
                 {MARKER} written by strata); strata never writes into a directory it did \
                 not make: pass an empty or new directory with --cache-dir"
            )));
        }
        if !create {
            if names.is_empty() {
                return Err(refuse(format!(
                    "{shown} is empty: not a strata cache directory"
                )));
            }
            return Ok(());
        }
        let f = File::from(self.open_at(
            Path::new(MARKER),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
        )?);
        f.write_all_at(MARKER_TEXT, 0)?;
        f.sync_all()?;
        self.sync_dir(Path::new(""))
    }

    /// Every name in a directory of the cache, whatever its bytes.
    fn names(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut out = Vec::new();
        for e in rustix::fs::Dir::new(fd)? {
            let name = e?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// The first `len` bytes (or fewer) of a file of the directory's own.
    fn read_head(&self, name: &str, len: usize) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut out = Vec::with_capacity(len);
        File::from(self.open_at(Path::new(name), OFlags::RDONLY)?)
            .take(len as u64)
            .read_to_end(&mut out)?;
        Ok(out)
    }

    /// A cache made before markers existed: its index log starts with strata's header.
    fn is_older_strata_cache(&self) -> bool {
        let magic = crate::tier::disk::record::MAGIC;
        self.read_head("index.log", 32)
            .is_ok_and(|head| head.windows(magic.len()).any(|w| w == magic))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path that reaches `name` in the cache directory through its descriptor (for
    /// calls that take only a path, such as binding a socket).
    pub fn fd_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd()))
    }

    /// Opens (creating it 0600) a file of the directory's own for appending: a log.
    pub fn open_append(&self, name: &str) -> io::Result<File> {
        Ok(File::from(self.open_at(
            Path::new(name),
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
        )?))
    }

    fn open_at(&self, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let p: &Path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        // openat2 takes a mode only with O_CREAT.
        let mode = if flags.contains(OFlags::CREATE) {
            Mode::from_raw_mode(0o600)
        } else {
            Mode::empty()
        };
        rustix::fs::openat2(&self.dir, p, flags | OFlags::CLOEXEC, mode, RESOLVE).map_err(|e| {
            match e {
                rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} in cache directory {} is (or passes through) a symbolic link; strata \
                     never follows links in its cache directory (remove it)",
                        path.display(),
                        self.root.display()
                    ),
                ),
                e => e.into(),
            }
        })
    }

    /// The parent directory of `path` (opened safely) and its last name.
    fn parent_and_name<'a>(&self, path: &'a Path) -> io::Result<(OwnedFd, &'a OsStr)> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let parent = path.parent().unwrap_or(Path::new(""));
        Ok((
            self.open_at(parent, OFlags::PATH | OFlags::DIRECTORY)?,
            name,
        ))
    }
}

impl Storage for RealStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut flags = OFlags::RDWR;
        if create {
            flags |= OFlags::CREATE;
        }
        let file = File::from(self.open_at(path, flags)?);
        Ok(Arc::new(RealFile { file }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent_and_name(path)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (fdir, fname) = self.parent_and_name(from)?;
        let (tdir, tname) = self.parent_and_name(to)?;
        Ok(rustix::fs::renameat(&fdir, fname, &tdir, tname)?)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut done = PathBuf::new();
        for c in path.components() {
            let (dir, name) = (self.open_at(&done, OFlags::PATH | OFlags::DIRECTORY)?, c);
            match rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            done.push(c);
        }
        // It must be a directory reached without links.
        self.open_at(path, OFlags::PATH | OFlags::DIRECTORY)
            .map(drop)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(rustix::fs::fsync(&fd)?)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        // Names the cache did not write are not UTF-8-safe; skip them.
        Ok(self
            .names(path)?
            .into_iter()
            .filter_map(|n| String::from_utf8(n).ok())
            .collect())
    }

    fn space(&self) -> io::Result<Space> {
        let s = rustix::fs::fstatvfs(self.dir.as_fd())?;
        Ok(Space {
            total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
            avail_bytes: s.f_bavail.saturating_mul(s.f_frsize),
            total_files: s.f_files,
            avail_files: s.f_favail,
        })
    }

    fn open_read_only(&self, path: &Path) -> io::Result<File> {
        Ok(File::from(self.open_at(path, OFlags::RDONLY)?))
    }

    fn lock(&self) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        let f = File::from(self.open_at(Path::new("lock"), OFlags::RDWR | OFlags::CREATE)?);
        match rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut buf = [0u8; 32];
                let n = f.read_at(&mut buf, 0).unwrap_or(0);
                let owner = String::from_utf8_lossy(&buf[..n]);
                let owner = owner.trim();
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "cache directory {} is in use by another strata process{}; \
                         unmount it first or pass a different --cache-dir",
                        self.root.display(),
                        if owner.is_empty() {
                            String::new()
                        } else {
                            format!(" (pid {owner})")
                        }
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        // Record the holder for the message above; the flock is what guards.
        f.set_len(0)?;
        f.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
        Ok(Box::new(f))
    }
}

struct RealFile {
    file: File,
}

impl StorageFile for RealFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.file.read_at(buf, off)
    }

    fn read_new(&self, len: usize, off: u64) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            let at = off + v.len() as u64;
            // `spare_capacity` lets the kernel write the unfilled tail and lengthens
            // `v` by what it wrote.
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut v), at) {
                Ok(0) => break,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(v)
    }

    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], off: u64) -> io::Result<usize> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut done = 0usize;
        // preadv may return short; finish with the generic path if it does.
        let n = rustix::io::preadv(&self.file, &mut slices, off)?;
        done += n;
        if done == want || n == 0 {
            return Ok(done);
        }
        drop(slices);
        let mut skip = done;
        for b in bufs.iter_mut() {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let part = &mut b[skip..];
            skip = 0;
            let n = super::read_full_at(self, part, off + done as u64)?;
            done += n;
            if n < part.len() {
                break;
            }
        }
        Ok(done)
    }

    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.file.write_all_at(buf, off)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            off,
            len,
        )?;
        Ok(())
    }

    fn data_ranges(&self) -> io::Result<Vec<Range<u64>>> {
        let len = self.len()?;
        let mut out = Vec::new();
        let mut pos = 0u64;
        while pos < len {
            let start = match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
                Ok(s) => s,
                Err(rustix::io::Errno::NXIO) => break,
                Err(e) => return Err(e.into()),
            };
            let end = rustix::fs::seek(&self.file, SeekFrom::Hole(start))?;
            if end <= start {
                break;
            }
            out.push(start..end);
            pos = end;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_new_reads_up_to_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let f = RealFile {
            file: File::open(dir.path().join("f")).unwrap(),
        };
        assert_eq!(f.read_new(65_536, 1_000).unwrap(), data[1_000..66_536]);
        assert_eq!(f.read_new(65_536, 50_000).unwrap(), data[50_000..]);
        assert!(f.read_new(4_096, 100_000).unwrap().is_empty());
        assert!(f.read_new(0, 0).unwrap().is_empty());
    }
}
