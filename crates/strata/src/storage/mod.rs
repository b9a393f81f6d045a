//! The file I/O the disk tier needs, behind a trait, so that the same tier code runs
//! on a real directory and on a simulated medium that forgets unsynced writes at a
//! simulated power cut.
//!
//! Durability contract (what the disk tier relies on, and what the simulation
//! enforces): file data reaches the medium at `sync_data`; a name created, removed or
//! renamed reaches it when its directory is synced with `sync_dir`. Anything else may
//! be lost, torn or applied out of order at a crash.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

mod real;
pub mod sim;

pub use real::RealStorage;
pub use sim::SimStorage;

/// Space on the filesystem that holds the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    pub avail_bytes: u64,
    pub total_files: u64,
    pub avail_files: u64,
}

/// A directory on some medium. Paths are relative to its root.
pub trait Storage: Send + Sync {
    /// Opens a file for reading and writing, creating it if `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in a directory durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Names in a directory (files and directories).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn space(&self) -> io::Result<Space>;
    /// Takes the cache's exclusive lock for the life of the returned guard.
    fn lock(&self) -> io::Result<Box<dyn std::any::Any + Send + Sync>>;
    /// A file opened read-only as a real file, for handing it to the kernel (FUSE
    /// passthrough). Unsupported on media that are not real files.
    fn open_read_only(&self, _path: &Path) -> io::Result<std::fs::File> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the cache medium has no real files",
        ))
    }
}

/// An open file of a [`Storage`].
#[allow(clippy::len_without_is_empty)] // a file's length, not a collection's
pub trait StorageFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `off`; a short count means end of file.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// Reads into several buffers, as one contiguous range starting at `off`.
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], mut off: u64) -> io::Result<usize> {
        let mut total = 0;
        for b in bufs.iter_mut() {
            let n = read_full_at(self, b, off)?;
            total += n;
            off += n as u64;
            if n < b.len() {
                break;
            }
        }
        Ok(total)
    }
    /// Reads up to `len` bytes at `off` into a new buffer; it comes back shorter only
    /// at the end of the file. Real storage reads into the buffer unzeroed: a hit
    /// should not pay a memset of bytes the read overwrites at once.
    fn read_new(&self, len: usize, off: u64) -> io::Result<Vec<u8>> {
        let mut v = vec![0; len];
        let n = read_full_at(self, &mut v, off)?;
        v.truncate(n);
        Ok(v)
    }
    /// Writes all of `buf` at `off`.
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// Makes the file's data (and size) durable.
    fn sync_data(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Deallocates a range; it reads back as zeros.
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()>;
    /// The ranges that hold data (everything outside them is a hole).
    fn data_ranges(&self) -> io::Result<Vec<Range<u64>>>;
}

/// Reads until `buf` is full or the end of the file.
pub fn read_full_at<F: StorageFile + ?Sized>(f: &F, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
