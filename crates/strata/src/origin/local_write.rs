//! Writes to a local directory origin. Every call names the entry by a directory
//! opened beneath the root without following links (`parent_and_name`) and one name in
//! it, and never follows a symlink in that name: a program writing through the mount
//! can change nothing outside the origin, and a link planted at the origin is changed
//! as a link, not followed.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};
use rustix::io::Errno;

use super::local::{LocalFile, LocalOrigin};
use super::{NewEntry, Origin, OriginFile, RENAME_EXCHANGE, RENAME_NOREPLACE, SetAttr, SetTime};

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Sets the permission bits of the entry `fd` (an O_PATH descriptor, not of a
/// symlink) names, through its /proc link: chmod has no descriptor form for O_PATH.
fn chmod_fd(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::chmod(p.as_str(), Mode::from_raw_mode(mode & 0o7777)).map_err(errno)
}

fn chown_fd(fd: &OwnedFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    rustix::fs::chownat(
        fd,
        "",
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
        AtFlags::EMPTY_PATH,
    )
    .map_err(errno)
}

fn timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
        Some(SetTime::At(ts)) => Timespec {
            tv_sec: ts.secs,
            tv_nsec: ts.nanos as _,
        },
    }
}

impl LocalOrigin {
    /// A new entry's exact permissions (the daemon's umask left out) and owner. The
    /// group stays the one the kernel chose when the directory is setgid.
    fn settle_new(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        new: &NewEntry,
        chmod: bool,
    ) -> io::Result<()> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        // Only what differs is changed: on a network origin each call is a round
        // trip.
        let st = rustix::fs::fstat(&fd).map_err(errno)?;
        let mut cleared = false;
        if let Some((uid, gid)) = new.owner {
            // The directory is asked only when the group differs (a round trip).
            let setgid = || {
                rustix::fs::fstat(dir)
                    .map(|st| st.st_mode & 0o2000 != 0)
                    .unwrap_or(false)
            };
            let gid = (st.st_gid != gid && !setgid()).then_some(gid);
            let uid = (st.st_uid != uid).then_some(uid);
            if uid.is_some() || gid.is_some() {
                chown_fd(&fd, uid, gid)?;
                cleared = true;
            }
        }
        // After a chown, which clears setuid and setgid bits.
        if chmod && (cleared || st.st_mode & 0o7777 != new.mode & 0o7777) {
            chmod_fd(&fd, new.mode)?;
        }
        Ok(())
    }

    pub(super) fn do_open_rw(
        &self,
        path: &Path,
        truncate: bool,
    ) -> io::Result<Box<dyn OriginFile>> {
        let mut flags = OFlags::RDWR | OFlags::NOFOLLOW;
        if truncate {
            flags |= OFlags::TRUNC;
        }
        let fd = self.open_entry(path, flags)?;
        self.file_of(File::from(fd))
    }

    pub(super) fn do_create(
        &self,
        path: &Path,
        new: &NewEntry,
        exclusive: bool,
    ) -> io::Result<Box<dyn OriginFile>> {
        let (dir, name) = self.parent_and_name(path)?;
        let base = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(new.mode & 0o7777);
        match rustix::fs::openat(&dir, name, base | OFlags::CREATE | OFlags::EXCL, mode) {
            Ok(fd) => {
                self.settle_new(&dir, name, new, true)?;
                self.file_of(File::from(fd))
            }
            Err(Errno::EXIST) if !exclusive => {
                let fd = rustix::fs::openat(&dir, name, base, Mode::empty()).map_err(errno)?;
                self.file_of(File::from(fd))
            }
            Err(e) => Err(errno(e)),
        }
    }

    pub(super) fn do_mkdir(&self, path: &Path, new: &NewEntry) -> io::Result<()> {
        let (dir, name) = self.parent_and_name(path)?;
        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(new.mode & 0o7777)).map_err(errno)?;
        self.settle_new(&dir, name, new, true)
    }

    pub(super) fn do_mknod(&self, path: &Path, new: &NewEntry, rdev: u64) -> io::Result<()> {
        let (dir, name) = self.parent_and_name(path)?;
        let kind = rustix::fs::FileType::from_raw_mode(new.mode);
        rustix::fs::mknodat(
            &dir,
            name,
            kind,
            Mode::from_raw_mode(new.mode & 0o7777),
            rdev as _,
        )
        .map_err(errno)?;
        self.settle_new(&dir, name, new, true)
    }

    pub(super) fn do_symlink(&self, target: &OsStr, path: &Path, new: &NewEntry) -> io::Result<()> {
        let (dir, name) = self.parent_and_name(path)?;
        rustix::fs::symlinkat(target, &dir, name).map_err(errno)?;
        self.settle_new(&dir, name, new, false)
    }

    pub(super) fn do_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (fdir, fname) = self.parent_and_name(from)?;
        let (tdir, tname) = self.parent_and_name(to)?;
        rustix::fs::linkat(&fdir, fname, &tdir, tname, AtFlags::empty()).map_err(errno)
    }

    pub(super) fn do_remove(&self, path: &Path, dir_too: bool) -> io::Result<()> {
        let (dir, name) = self.parent_and_name(path)?;
        let flags = if dir_too {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&dir, name, flags).map_err(errno)
    }

    pub(super) fn do_rename(&self, from: &Path, to: &Path, flags: u32) -> io::Result<()> {
        let (fdir, fname) = self.parent_and_name(from)?;
        let (tdir, tname) = self.parent_and_name(to)?;
        let mut f = rustix::fs::RenameFlags::empty();
        if flags & RENAME_NOREPLACE != 0 {
            f |= rustix::fs::RenameFlags::NOREPLACE;
        }
        if flags & RENAME_EXCHANGE != 0 {
            f |= rustix::fs::RenameFlags::EXCHANGE;
        }
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(errno(Errno::INVAL));
        }
        rustix::fs::renameat_with(&fdir, fname, &tdir, tname, f).map_err(errno)
    }

    pub(super) fn do_set_attr(&self, path: &Path, set: &SetAttr) -> io::Result<()> {
        let (dir, name) = self.parent_and_name(path)?;
        let entry = rustix::fs::openat(
            &dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let is_link = rustix::fs::fstat(&entry)
            .map(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
            })
            .map_err(errno)?;
        if set.uid.is_some() || set.gid.is_some() {
            chown_fd(&entry, set.uid, set.gid)?;
        }
        if let Some(mode) = set.mode {
            if is_link {
                return Err(errno(Errno::OPNOTSUPP));
            }
            chmod_fd(&entry, mode)?;
        }
        if let Some(size) = set.size {
            if is_link {
                return Err(errno(Errno::INVAL));
            }
            let fd = rustix::fs::openat(
                &dir,
                name,
                OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?;
            rustix::fs::ftruncate(&fd, size).map_err(errno)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(set.atime),
                last_modification: timespec(set.mtime),
            };
            rustix::fs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
        }
        Ok(())
    }

    pub(super) fn do_set_xattr(
        &self,
        path: &Path,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        let (dir, last) = self.parent_and_name(path)?;
        let p = super::local::proc_path(&dir, last);
        let f = rustix::fs::XattrFlags::from_bits_retain(flags as _);
        rustix::fs::lsetxattr(&p, name, value, f).map_err(errno)
    }

    pub(super) fn do_remove_xattr(&self, path: &Path, name: &OsStr) -> io::Result<()> {
        let (dir, last) = self.parent_and_name(path)?;
        let p = super::local::proc_path(&dir, last);
        rustix::fs::lremovexattr(&p, name).map_err(errno)
    }

    fn file_of(&self, file: File) -> io::Result<Box<dyn OriginFile>> {
        if !file.metadata()?.is_file() {
            return Err(errno(Errno::ISDIR));
        }
        Ok(Box::new(LocalFile::new(file, self.stable_inodes())))
    }
}

impl LocalFile {
    pub(super) fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self.file(), buf, off)
    }

    pub(super) fn sync_to(&self, data_only: bool) -> io::Result<()> {
        if data_only {
            self.file().sync_data()
        } else {
            self.file().sync_all()
        }
    }

    pub(super) fn fallocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        rustix::fs::fallocate(
            self.file().as_fd(),
            rustix::fs::FallocateFlags::from_bits_retain(mode as _),
            off,
            len,
        )
        .map_err(errno)
    }
}
