//! A local directory as an origin: what an NFS, SMB or sshfs mount or a mounted optical
//! disc is to strata.
//!
//! Every path is resolved by the kernel with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from a descriptor of the origin's root, so strata itself never
//! follows a symlink and never leaves the origin, even if the origin changes under it
//! (a directory swapped for a symlink between two calls). Symlinks are reported as
//! symlinks; the kernel resolves them on the mount side like any other symlink.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::{
    Attr, DirEntry, FileKind, FsStats, NewEntry, Origin, OriginFile, SetAttr, Timestamp, Token,
    check_relative,
};

pub struct LocalOrigin {
    root: OwnedFd,
    root_path: PathBuf,
    stable_inodes: bool,
}

/// statfs magic of FUSE filesystems (sshfs, rclone, s3fs, ...): their inode numbers
/// are made up per lookup and change once the kernel forgets an inode.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Longest path handed to one openat2 (PATH_MAX is 4096 with the terminating NUL).
const PIECE: usize = 4000;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

impl LocalOrigin {
    /// Opens the origin directory. Fails with a clear error when it is missing or not
    /// a directory.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root_path: PathBuf = root.into();
        let root = rustix::fs::open(
            &root_path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot open origin directory {}: {e}", root_path.display()),
            )
        })?;
        // From the mount table, which asks the origin nothing (a hung origin would
        // hang a statfs); the filesystem itself only if the table cannot be read.
        let fuse = match fuse_mount(&root_path) {
            Some(fuse) => fuse,
            None => rustix::fs::fstatfs(&root).is_ok_and(|s| s.f_type == FUSE_SUPER_MAGIC),
        };
        Ok(Self {
            root,
            root_path,
            stable_inodes: !fuse,
        })
    }

    /// Attributes, with the inode left out of the token where inodes are unstable.
    fn attr(&self, m: &std::fs::Metadata) -> Attr {
        let mut a = attr_of(m);
        if !self.stable_inodes {
            forget_ino(&mut a.token);
        }
        a
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Opens `path` below the root. An empty path is the root itself. A path longer
    /// than the kernel takes in one call (PATH_MAX) is resolved a piece at a time,
    /// each piece beneath the directory the one before opened, so depth is bounded
    /// only by the length of each name.
    fn open_at(&self, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        check_relative(path)?;
        let mut rest = path.as_os_str().as_bytes();
        if rest.is_empty() {
            rest = b".";
        }
        let mut dir: Option<OwnedFd> = None;
        while rest.len() > PIECE {
            // Cut at the last separator that keeps the piece short enough; a name
            // longer than that cannot exist (names are at most 255 bytes).
            let cut = rest[..=PIECE]
                .iter()
                .rposition(|&b| b == b'/')
                .filter(|&c| c > 0)
                .ok_or_else(|| {
                    io::Error::from_raw_os_error(rustix::io::Errno::NAMETOOLONG.raw_os_error())
                })?;
            let next = rustix::fs::openat2(
                dir.as_ref().unwrap_or(&self.root),
                OsStr::from_bytes(&rest[..cut]),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )?;
            dir = Some(next);
            rest = &rest[cut + 1..];
        }
        Ok(rustix::fs::openat2(
            dir.as_ref().unwrap_or(&self.root),
            OsStr::from_bytes(rest),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?)
    }

    /// Opens `path` below the root with `flags` (never following a link).
    pub(super) fn open_entry(&self, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        self.open_at(path, flags | OFlags::NOFOLLOW)
    }

    /// An `O_PATH` descriptor of the entry itself, symlink or not.
    fn open_path(&self, path: &Path) -> io::Result<OwnedFd> {
        self.open_at(path, OFlags::PATH | OFlags::NOFOLLOW)
    }

    /// The parent directory (safely opened) and the last name, for calls that take a
    /// name relative to a directory.
    pub(super) fn parent_and_name<'a>(&self, path: &'a Path) -> io::Result<(OwnedFd, &'a OsStr)> {
        check_relative(path)?;
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => Ok((
                self.open_at(parent, OFlags::PATH | OFlags::DIRECTORY)?,
                name,
            )),
            _ => Ok((
                self.open_at(Path::new(""), OFlags::PATH | OFlags::DIRECTORY)?,
                OsStr::new("."),
            )),
        }
    }
}

/// One line of /proc/self/mountinfo: a mounted filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Its device number, "major:minor".
    pub dev: String,
    pub mountpoint: PathBuf,
    /// As /proc/mounts shows it: `ext4`, `fuse.sshfs`, `fuse.strata`, ...
    pub fstype: String,
}

/// The mounts of this process's namespace, in the order they were mounted, read from
/// /proc/self/mountinfo: nothing is asked of the filesystems themselves (a hung one
/// would hang a stat). None if the table cannot be read.
pub fn mount_table() -> Option<Vec<MountEntry>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    Some(
        info.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                let sep = f.iter().position(|x| *x == "-")?;
                Some(MountEntry {
                    dev: f.get(2)?.to_string(),
                    mountpoint: PathBuf::from(unescape_mountinfo(f.get(4)?)),
                    fstype: f.get(sep + 1)?.to_string(),
                })
            })
            .collect(),
    )
}

/// Whether the filesystem holding `path` is a FUSE one (sshfs, rclone, s3fs, ...):
/// the mount with the longest mountpoint above `path` (the last mounted there).
fn fuse_mount(path: &Path) -> Option<bool> {
    let table = mount_table()?;
    let m = table
        .iter()
        .filter(|m| path.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.components().count())?;
    let t = m.fstype.as_str();
    Some(t == "fuse" || t == "fuseblk" || t.starts_with("fuse."))
}

/// A path from /proc/self/mountinfo, which escapes space, tab, newline and backslash
/// as octal.
fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

fn forget_ino(t: &mut Token) {
    if let Token::Stat { ino, .. } = t {
        *ino = 0;
    }
}

/// The token of an open file, asking only for the fields a token holds. On a FUSE
/// origin (sshfs) a stat that asks for the access time, as `File::metadata` does,
/// cannot be answered from the kernel's attribute cache after a read (reads mark the
/// access time stale), so it cost a round trip to the origin's daemon on every
/// block fetched.
fn token_of_fd(file: &File) -> io::Result<Token> {
    use rustix::fs::{AtFlags, StatxFlags};
    let want = StatxFlags::SIZE | StatxFlags::MTIME | StatxFlags::CTIME | StatxFlags::INO;
    match rustix::fs::statx(file, c"", AtFlags::EMPTY_PATH, want) {
        Ok(st) if StatxFlags::from_bits_retain(st.stx_mask).contains(want) => {
            let ns =
                |t: rustix::fs::StatxTimestamp| timestamp(t.tv_sec, t.tv_nsec.into()).as_nanos();
            Ok(Token::Stat {
                size: st.stx_size,
                mtime_ns: ns(st.stx_mtime),
                ctime_ns: ns(st.stx_ctime),
                ino: st.stx_ino,
            })
        }
        // A filesystem that cannot say all of it (or no statx): the full stat.
        _ => Ok(attr_of(&file.metadata()?).token),
    }
}

/// A timestamp from seconds and nanoseconds as stat reports them.
fn timestamp(secs: i64, nanos: i64) -> Timestamp {
    Timestamp {
        secs,
        nanos: nanos.clamp(0, 999_999_999) as u32,
    }
}

pub(crate) fn attr_of(m: &std::fs::Metadata) -> Attr {
    let ft = m.file_type();
    let kind = if ft.is_file() {
        FileKind::File
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_socket() {
        FileKind::Socket
    } else if ft.is_char_device() {
        FileKind::CharDevice
    } else {
        FileKind::BlockDevice
    };
    let mtime = timestamp(m.mtime(), m.mtime_nsec());
    let ctime = timestamp(m.ctime(), m.ctime_nsec());
    Attr {
        kind,
        size: m.size(),
        perm: m.mode() & 0o7777,
        nlink: m.nlink().min(u32::MAX as u64) as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev(),
        blocks: m.blocks(),
        blksize: m.blksize().min(u32::MAX as u64) as u32,
        atime: timestamp(m.atime(), m.atime_nsec()),
        mtime,
        ctime,
        ino: m.ino(),
        dev: m.dev(),
        token: Token::Stat {
            size: m.size(),
            mtime_ns: mtime.as_nanos(),
            ctime_ns: ctime.as_nanos(),
            ino: m.ino(),
        },
    }
}

fn kind_of(t: rustix::fs::FileType) -> FileKind {
    use rustix::fs::FileType as T;
    match t {
        T::RegularFile => FileKind::File,
        T::Directory => FileKind::Dir,
        T::Symlink => FileKind::Symlink,
        T::Fifo => FileKind::Fifo,
        T::Socket => FileKind::Socket,
        T::CharacterDevice => FileKind::CharDevice,
        T::BlockDevice => FileKind::BlockDevice,
        T::Unknown => FileKind::Unknown,
    }
}

/// Path of a name inside an open directory, through /proc, so that `l*xattr` calls
/// resolve the directory by descriptor and do not follow the name if it is a symlink.
pub(super) fn proc_path(dir: &OwnedFd, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

impl Origin for LocalOrigin {
    fn stat(&self, path: &Path) -> io::Result<Attr> {
        let fd = self.open_path(path)?;
        Ok(self.attr(&File::from(fd).metadata()?))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn OriginFile>> {
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::NOFOLLOW)?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::ISDIR.raw_os_error(),
            ));
        }
        Ok(Box::new(LocalFile {
            file,
            stable_inodes: self.stable_inodes,
        }))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut out = Vec::new();
        let dir = rustix::fs::Dir::new(fd)?;
        for e in dir {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsString::from_vec(name.to_vec());
            out.push(DirEntry {
                name,
                kind: kind_of(e.file_type()),
                ino: e.ino(),
            });
        }
        Ok(out)
    }

    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        let fd = self.open_path(path)?;
        let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
        Ok(target.into_bytes())
    }

    fn get_xattr(&self, path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
        let (dir, last) = self.parent_and_name(path)?;
        let p = proc_path(&dir, last);
        let mut size = rustix::fs::lgetxattr_query(&p, name)?;
        loop {
            let mut buf = vec![0u8; size];
            match rustix::fs::lgetxattr(&p, name, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                // The value grew between the two calls; ask again.
                Err(rustix::io::Errno::RANGE) => size = rustix::fs::lgetxattr_query(&p, name)?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn list_xattr(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let (dir, last) = self.parent_and_name(path)?;
        let p = proc_path(&dir, last);
        let mut size = rustix::fs::llistxattr_query(&p)?;
        let buf = loop {
            let mut buf = vec![0u8; size];
            match rustix::fs::llistxattr(&p, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    break buf;
                }
                Err(rustix::io::Errno::RANGE) => size = rustix::fs::llistxattr_query(&p)?,
                Err(e) => return Err(e.into()),
            }
        };
        Ok(buf
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| OsStr::from_bytes(n).to_owned())
            .collect())
    }

    fn statfs(&self) -> io::Result<FsStats> {
        let s = rustix::fs::fstatvfs(self.root.as_fd())?;
        Ok(FsStats {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root_path.display())
    }

    fn stable_inodes(&self) -> bool {
        self.stable_inodes
    }

    fn writable(&self) -> bool {
        true
    }
    fn open_rw(&self, path: &Path, truncate: bool) -> io::Result<Box<dyn OriginFile>> {
        self.do_open_rw(path, truncate)
    }
    fn create(
        &self,
        path: &Path,
        new: &NewEntry,
        exclusive: bool,
    ) -> io::Result<Box<dyn OriginFile>> {
        self.do_create(path, new, exclusive)
    }
    fn mkdir(&self, path: &Path, new: &NewEntry) -> io::Result<()> {
        self.do_mkdir(path, new)
    }
    fn mknod(&self, path: &Path, new: &NewEntry, rdev: u64) -> io::Result<()> {
        self.do_mknod(path, new, rdev)
    }
    fn symlink(&self, target: &OsStr, path: &Path, new: &NewEntry) -> io::Result<()> {
        self.do_symlink(target, path, new)
    }
    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.do_link(from, to)
    }
    fn unlink(&self, path: &Path) -> io::Result<()> {
        self.do_remove(path, false)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        self.do_remove(path, true)
    }
    fn rename(&self, from: &Path, to: &Path, flags: u32) -> io::Result<()> {
        self.do_rename(from, to, flags)
    }
    fn set_attr(&self, path: &Path, set: &SetAttr) -> io::Result<()> {
        self.do_set_attr(path, set)
    }
    fn set_xattr(&self, path: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        self.do_set_xattr(path, name, value, flags)
    }
    fn remove_xattr(&self, path: &Path, name: &OsStr) -> io::Result<()> {
        self.do_remove_xattr(path, name)
    }
}

pub(super) struct LocalFile {
    file: File,
    stable_inodes: bool,
}

impl LocalFile {
    pub(super) fn new(file: File, stable_inodes: bool) -> Self {
        Self {
            file,
            stable_inodes,
        }
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }
}

impl OriginFile for LocalFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.file.read_at(buf, off)
    }

    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], off: u64) -> io::Result<usize> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let n = {
            let mut slices: Vec<io::IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
            rustix::io::preadv(&self.file, &mut slices, off)?
        };
        if n == want || n == 0 {
            return Ok(n);
        }
        // Short: finish the rest one buffer at a time.
        let mut skipped = 0;
        let mut rest: Vec<&mut [u8]> = Vec::new();
        for b in bufs.iter_mut() {
            let len = b.len();
            if skipped + len <= n {
                skipped += len;
                continue;
            }
            let from = n.saturating_sub(skipped);
            skipped += len;
            rest.push(&mut b[from..]);
        }
        let more = super::read_vectored_by(&mut rest, off + n as u64, |b, o| self.read_at(b, o))?;
        Ok(n + more)
    }

    fn token(&self) -> io::Result<Token> {
        let mut t = token_of_fd(&self.file)?;
        if !self.stable_inodes {
            forget_ino(&mut t);
        }
        Ok(t)
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.write_all_at(buf, off)
    }

    fn sync(&self, data_only: bool) -> io::Result<()> {
        self.sync_to(data_only)
    }

    fn allocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        self.fallocate(mode, off, len)
    }

    fn set_len(&self, size: u64) -> io::Result<()> {
        self.file.set_len(size)
    }

    fn attr(&self) -> io::Result<Attr> {
        let mut a = attr_of(&self.file.metadata()?);
        if !self.stable_inodes {
            forget_ino(&mut a.token);
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_narrow_token_stat_matches_the_full_one() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"some bytes").unwrap();
        let f = File::open(&p).unwrap();
        let full = attr_of(&f.metadata().unwrap()).token;
        assert_eq!(token_of_fd(&f).unwrap(), full);
        // A change shows in both.
        std::fs::write(&p, b"other bytes, longer").unwrap();
        let after = token_of_fd(&f).unwrap();
        assert_ne!(after, full);
        assert_eq!(after, attr_of(&f.metadata().unwrap()).token);
    }

    #[test]
    fn reads_and_refuses_to_escape() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("origin");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"hello").unwrap();
        std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
        symlink("../secret", root.join("up")).unwrap();
        symlink(tmp.path(), root.join("dirlink")).unwrap();
        let o = LocalOrigin::new(&root).unwrap();

        let f = o.open(Path::new("d/f")).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(o.stat(Path::new("d/f")).unwrap().size, 5);

        // Symlinks are seen as symlinks and never followed by strata itself.
        assert_eq!(o.stat(Path::new("up")).unwrap().kind, FileKind::Symlink);
        assert_eq!(o.read_link(Path::new("up")).unwrap(), b"../secret");
        assert!(o.open(Path::new("up")).is_err());
        assert!(o.open(Path::new("dirlink/secret")).is_err());
        assert!(o.stat(Path::new("dirlink/secret")).is_err());
        // Dot-dot and absolute paths are refused before reaching the kernel.
        assert!(o.open(Path::new("../secret")).is_err());
        assert!(o.stat(Path::new("/etc/passwd")).is_err());
        assert!(o.read_dir(Path::new("d/..")).is_err());

        let mut names: Vec<_> = o
            .read_dir(Path::new(""))
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.kind))
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                ("d".into(), FileKind::Dir),
                ("dirlink".into(), FileKind::Symlink),
                ("up".into(), FileKind::Symlink)
            ]
        );
    }

    #[test]
    fn paths_longer_than_path_max_are_resolved_in_pieces() {
        let tmp = tempfile::tempdir().unwrap();
        let name = "d".repeat(250);
        let mut rel = PathBuf::new();
        for i in 0..20 {
            rel.push(format!("{i:02}{name}"));
        }
        // Made here through a chain of directory descriptors, as the kernel would
        // refuse the whole path at once.
        let mut dir = File::open(tmp.path()).unwrap();
        for c in rel.components() {
            rustix::fs::mkdirat(&dir, c.as_os_str(), Mode::from_raw_mode(0o755)).unwrap();
            dir = File::from(
                rustix::fs::openat(&dir, c.as_os_str(), OFlags::RDONLY, Mode::empty()).unwrap(),
            );
        }
        let f = rustix::fs::openat(
            &dir,
            "f",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, b"deep bytes").unwrap();
        assert!(rel.as_os_str().len() > 5000);
        let o = LocalOrigin::new(tmp.path()).unwrap();
        let p = rel.join("f");
        assert_eq!(o.stat(&p).unwrap().size, 10);
        let file = o.open(&p).unwrap();
        let mut buf = [0u8; 32];
        assert_eq!(file.read_at(&mut buf, 0).unwrap(), 10);
        assert_eq!(&buf[..10], b"deep bytes");
        assert_eq!(o.read_dir(&rel).unwrap().len(), 1);
        // Still beneath the root: dot-dot is refused, and a symlink on the way is not followed.
        assert!(o.stat(&rel.join("..").join("f")).is_err());
        symlink(tmp.path(), tmp.path().join("up")).unwrap();
        assert!(o.stat(&Path::new("up").join(&rel).join("f")).is_err());
    }

    #[test]
    fn vectored_read_matches_plain_read() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(tmp.path().join("f"), &data).unwrap();
        let o = LocalOrigin::new(tmp.path()).unwrap();
        let f = o.open(Path::new("f")).unwrap();
        let (mut a, mut b, mut c) = (vec![0u8; 4096], vec![0u8; 4096], vec![0u8; 4096]);
        let n = f
            .read_vectored_at(&mut [&mut a[..], &mut b[..], &mut c[..]], 100)
            .unwrap();
        assert_eq!(n, 9_900);
        let mut all = a;
        all.extend_from_slice(&b);
        all.extend_from_slice(&c[..9_900 - 8192]);
        assert_eq!(&all[..], &data[100..]);
    }
}
