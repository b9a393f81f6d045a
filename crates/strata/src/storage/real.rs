//! [`Storage`] on a real directory.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::io::IoSliceMut;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FallocateFlags, FlockOperation, SeekFrom};

use super::{Space, Storage, StorageFile};

/// A cache directory on a local filesystem. Directories are created 0700 and files
/// 0600: the cache holds copies of files other users may not be allowed to read.
pub struct RealStorage {
    root: PathBuf,
}

impl RealStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, p: &Path) -> PathBuf {
        self.root.join(p)
    }
}

impl Storage for RealStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o600)
            .open(self.path(path))?;
        Ok(Arc::new(RealFile { file }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(self.path(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.path(path))
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(self.path(path))?.sync_all()
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.path(path))? {
            let e = e?;
            // Names the cache did not write are not UTF-8-safe; skip them.
            if let Ok(name) = e.file_name().into_string() {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn space(&self) -> io::Result<Space> {
        let s = rustix::fs::statvfs(&self.root)?;
        Ok(Space {
            total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
            avail_bytes: s.f_bavail.saturating_mul(s.f_frsize),
            total_files: s.f_files,
            avail_files: s.f_favail,
        })
    }

    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        Some(self.path(path))
    }

    fn lock(&self) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.path(Path::new("lock")))?;
        match rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let owner = fs::read_to_string(self.path(Path::new("lock"))).unwrap_or_default();
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
