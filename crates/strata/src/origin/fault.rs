//! An origin wrapper that injects faults, for tests: errors on metadata or reads, an
//! origin that hangs until released, and a hook that runs right after a read (to
//! change the file "during" the read, deterministically).

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use super::{Attr, DirEntry, FileKind, FsStats, Origin, OriginFile, Token};

type Hook = Box<dyn Fn() + Send + Sync>;

/// Switches shared by a [`FaultOrigin`] and the test driving it.
#[derive(Default)]
pub struct Faults {
    state: Mutex<State>,
    released: Condvar,
}

#[derive(Default)]
struct State {
    /// Every metadata request (stat, open, listing, ...) fails with this errno.
    meta_errno: Option<i32>,
    /// Every read fails with this errno.
    read_errno: Option<i32>,
    /// Every request blocks until this is cleared.
    hang: bool,
    after_read: Option<Arc<Hook>>,
    /// Listings say nothing of their entries' kinds, as sshfs's do.
    hide_kinds: bool,
    /// Data writes (and syncs) left to succeed before they fail with the errno.
    writes_left: Option<(u32, i32)>,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fail_metadata(&self, errno: Option<i32>) {
        self.st().meta_errno = errno;
    }

    pub fn fail_reads(&self, errno: Option<i32>) {
        self.st().read_errno = errno;
    }

    /// Lets `n` more file writes or syncs through, then fails each with `errno`
    /// (a connection lost part way through a flush); None lifts it.
    pub fn fail_writes_after(&self, n: Option<(u32, i32)>) {
        self.st().writes_left = n;
    }

    /// Makes every request block (true) until set back (false).
    pub fn hang(&self, on: bool) {
        self.st().hang = on;
        if !on {
            self.released.notify_all();
        }
    }

    /// Makes listings leave every entry's kind unknown (true), as sshfs does.
    pub fn hide_kinds(&self, on: bool) {
        self.st().hide_kinds = on;
    }

    /// Runs `f` after every successful read, before the reader gets the bytes.
    pub fn after_read(&self, f: Option<Hook>) {
        self.st().after_read = f.map(Arc::new);
    }

    fn wait(&self) {
        let mut st = self.st();
        while st.hang {
            st = self.released.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn meta(&self) -> io::Result<()> {
        self.wait();
        match self.st().meta_errno {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }

    fn read(&self) -> io::Result<()> {
        self.wait();
        match self.st().read_errno {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }

    fn after(&self) {
        let hook = self.st().after_read.clone();
        if let Some(h) = hook {
            h();
        }
    }
}

pub struct FaultOrigin {
    inner: Arc<dyn Origin>,
    faults: Arc<Faults>,
}

impl FaultOrigin {
    pub fn new(inner: Arc<dyn Origin>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }
}

impl Origin for FaultOrigin {
    fn stat(&self, path: &Path) -> io::Result<Attr> {
        self.faults.meta()?;
        self.inner.stat(path)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn OriginFile>> {
        self.faults.meta()?;
        Ok(Box::new(FaultFile {
            inner: self.inner.open(path)?,
            faults: self.faults.clone(),
        }))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.faults.meta()?;
        let mut list = self.inner.read_dir(path)?;
        if self.faults.st().hide_kinds {
            for e in &mut list {
                e.kind = FileKind::Unknown;
            }
        }
        Ok(list)
    }

    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.faults.meta()?;
        self.inner.read_link(path)
    }

    fn get_xattr(&self, path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
        self.faults.meta()?;
        self.inner.get_xattr(path, name)
    }

    fn list_xattr(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.faults.meta()?;
        self.inner.list_xattr(path)
    }

    fn statfs(&self) -> io::Result<FsStats> {
        self.faults.meta()?;
        self.inner.statfs()
    }

    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }

    fn stable_inodes(&self) -> bool {
        self.inner.stable_inodes()
    }

    forward_writes!(meta_fault, wrap);
}

impl FaultOrigin {
    fn meta_fault(&self) -> io::Result<()> {
        self.faults.meta()
    }

    fn wrap(&self, inner: Box<dyn OriginFile>) -> Box<dyn OriginFile> {
        Box::new(FaultFile {
            inner,
            faults: self.faults.clone(),
        })
    }
}

struct FaultFile {
    inner: Box<dyn OriginFile>,
    faults: Arc<Faults>,
}

impl FaultFile {
    fn write_fault(&self, _bytes: usize) -> io::Result<()> {
        self.faults.read()?;
        match &mut self.faults.st().writes_left {
            Some((0, e)) => Err(io::Error::from_raw_os_error(*e)),
            Some((n, _)) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl OriginFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.faults.read()?;
        let n = self.inner.read_at(buf, off)?;
        self.faults.after();
        Ok(n)
    }

    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], off: u64) -> io::Result<usize> {
        self.faults.read()?;
        let n = self.inner.read_vectored_at(bufs, off)?;
        self.faults.after();
        Ok(n)
    }

    fn token(&self) -> io::Result<Token> {
        self.inner.token()
    }

    forward_file_writes!(write_fault);
}
