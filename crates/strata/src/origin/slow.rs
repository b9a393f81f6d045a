//! A wrapper that makes any origin slow, for tests, benchmarks and demos: every request
//! pays a fixed latency, and the bytes of all reads share one bandwidth cap, as they
//! would on a network link. Concurrent requests overlap their latencies, as requests
//! on a real link do.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Attr, DirEntry, FsStats, Origin, OriginFile, Token};

pub struct SlowOrigin {
    inner: Arc<dyn Origin>,
    link: Arc<Link>,
}

struct Link {
    latency: Duration,
    /// Bytes per second; 0 means unlimited.
    bandwidth: u64,
    /// When the link is next free to carry bytes.
    busy_until: Mutex<Instant>,
}

impl Link {
    fn request(&self) {
        if !self.latency.is_zero() {
            std::thread::sleep(self.latency);
        }
    }

    /// Waits until `bytes` have crossed the link after earlier transfers.
    fn transfer(&self, bytes: usize) {
        if self.bandwidth == 0 || bytes == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bandwidth as f64);
        let done = {
            let mut b = self.busy_until.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*b).max(Instant::now());
            *b = start + cost;
            *b
        };
        let now = Instant::now();
        if done > now {
            std::thread::sleep(done - now);
        }
    }
}

impl SlowOrigin {
    /// `bandwidth` in bytes per second, 0 for unlimited.
    pub fn new(inner: Arc<dyn Origin>, latency: Duration, bandwidth: u64) -> Self {
        Self {
            inner,
            link: Arc::new(Link {
                latency,
                bandwidth,
                busy_until: Mutex::new(Instant::now()),
            }),
        }
    }
}

impl Origin for SlowOrigin {
    fn stat(&self, path: &Path) -> io::Result<Attr> {
        self.link.request();
        self.inner.stat(path)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn OriginFile>> {
        self.link.request();
        Ok(Box::new(SlowFile {
            inner: self.inner.open(path)?,
            link: self.link.clone(),
        }))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.link.request();
        let entries = self.inner.read_dir(path)?;
        // Roughly what a listing costs on the wire.
        let bytes: usize = entries.iter().map(|e| e.name.len() + 32).sum();
        self.link.transfer(bytes);
        Ok(entries)
    }

    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.link.request();
        self.inner.read_link(path)
    }

    fn get_xattr(&self, path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
        self.link.request();
        self.inner.get_xattr(path, name)
    }

    fn list_xattr(&self, path: &Path) -> io::Result<Vec<OsString>> {
        self.link.request();
        self.inner.list_xattr(path)
    }

    fn statfs(&self) -> io::Result<FsStats> {
        self.link.request();
        self.inner.statfs()
    }

    fn stable_inodes(&self) -> bool {
        self.inner.stable_inodes()
    }

    forward_writes!(request, wrap);

    fn describe(&self) -> String {
        format!(
            "{} (slowed: {:?} per request, {})",
            self.inner.describe(),
            self.link.latency,
            if self.link.bandwidth == 0 {
                "unlimited bandwidth".to_string()
            } else {
                format!("{} bytes/s", self.link.bandwidth)
            }
        )
    }
}

impl SlowOrigin {
    /// A round trip before each write call.
    fn request(&self) -> io::Result<()> {
        self.link.request();
        Ok(())
    }

    fn wrap(&self, inner: Box<dyn OriginFile>) -> Box<dyn OriginFile> {
        Box::new(SlowFile {
            inner,
            link: self.link.clone(),
        })
    }
}

struct SlowFile {
    inner: Box<dyn OriginFile>,
    link: Arc<Link>,
}

impl SlowFile {
    /// A round trip and the bytes on the wire.
    fn send(&self, bytes: usize) -> io::Result<()> {
        self.link.request();
        self.link.transfer(bytes);
        Ok(())
    }
}

impl OriginFile for SlowFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.link.request();
        let n = self.inner.read_at(buf, off)?;
        self.link.transfer(n);
        Ok(n)
    }

    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], off: u64) -> io::Result<usize> {
        self.link.request();
        let n = self.inner.read_vectored_at(bufs, off)?;
        self.link.transfer(n);
        Ok(n)
    }

    fn token(&self) -> io::Result<Token> {
        // Like an NFS or sshfs client, the open file's attributes come from the client's
        // attribute cache, not from a round trip per call.
        self.inner.token()
    }

    forward_file_writes!(send);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::LocalOrigin;

    #[test]
    fn adds_latency_and_caps_bandwidth() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), vec![1u8; 200_000]).unwrap();
        let o = SlowOrigin::new(
            Arc::new(LocalOrigin::new(tmp.path()).unwrap()),
            Duration::from_millis(20),
            1_000_000,
        );
        let t = Instant::now();
        let f = o.open(Path::new("f")).unwrap();
        let mut buf = vec![0u8; 200_000];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 200_000);
        let took = t.elapsed();
        // Two requests of 20 ms plus 200 kB at 1 MB/s = 240 ms.
        assert!(took >= Duration::from_millis(235), "{took:?}");
    }
}
