//! Pins (`strata pin`, as CVMFS's pin or JuiceFS's warmup): files and trees fetched
//! into the disk tier and kept out of its eviction and culling until unpinned. A pin
//! names a path; the disk tier logs it and skips every file at or below it when it
//! makes room, so a version fetched later (the file changed at the origin) is kept
//! too, once read.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::origin::FileKind;

use super::Engine;

/// How far a pin has got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Largest read a pin makes at once.
const CHUNK: usize = 4 << 20;
/// A pin gives up waiting for the disk writer when nothing has moved for this long.
const STALL: Duration = Duration::from_secs(60);

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl Engine {
    /// Pins `path` (relative to the origin; empty: all of it): fetches every regular
    /// file at or below it into the disk tier and keeps them there. Refused, before
    /// anything is pinned, when the files do not fit in the disk tier beside what
    /// other pins keep. Symlinks are not followed. `progress` hears of every file.
    pub fn pin(
        &self,
        path: &Path,
        progress: &mut dyn FnMut(&PinProgress),
    ) -> io::Result<PinProgress> {
        let disk = self
            .inner
            .tiers
            .disk
            .clone()
            .ok_or_else(|| other("this cache has no disk tier to pin files in".into()))?;
        let files = self.files_below(path)?;
        let bs = self.inner.cfg.block_size as u64;
        let need: u64 = files.iter().map(|(_, size)| size.div_ceil(bs) * bs).sum();
        let key = path.as_os_str().as_encoded_bytes();
        let capacity = disk.capacity();
        let others = disk.pinned_bytes_except(key);
        if need > capacity.saturating_sub(others) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "/{} does not fit: it needs {need} bytes of cache, and the cache holds \
                     {capacity} ({others} of them kept by other pins); raise --cache-size \
                     or pin less",
                    path.display()
                ),
            ));
        }
        disk.pin_path(key)?;
        let mut p = PinProgress {
            files_total: files.len() as u64,
            bytes_total: files.iter().map(|(_, s)| *s).sum(),
            ..Default::default()
        };
        progress(&p);
        let mut placed = Vec::with_capacity(files.len());
        for (file, size) in &files {
            match self.fetch_whole(file, *size, &mut p, progress) {
                Ok(id) => placed.push((file, id, size.div_ceil(bs))),
                // Gone or changed since the walk: it is pinned by path all the same,
                // and cached when next read.
                Err(e) if matches!(e.raw_os_error(), Some(2) | Some(116)) => {}
                Err(e) => return Err(e),
            }
            p.files_done += 1;
            progress(&p);
        }
        self.wait_for_fills()?;
        let missing: Vec<&&PathBuf> = placed
            .iter()
            .filter(|(_, id, blocks)| !disk.contains_all(*id, 0..*blocks))
            .map(|(f, _, _)| f)
            .collect();
        if let Some(first) = missing.first() {
            return Err(other(format!(
                "{} of {} files could not be written to the disk cache (is its filesystem \
                 full? see disk_state in strata stats), /{} among them; the pin stays and \
                 they are cached when next read",
                missing.len(),
                files.len(),
                first.display()
            )));
        }
        Ok(p)
    }

    /// Removes the pin of `path`; false if there was none. Its files stay cached, in
    /// the eviction order like any others.
    pub fn unpin(&self, path: &Path) -> io::Result<bool> {
        let disk = self
            .inner
            .tiers
            .disk
            .as_ref()
            .ok_or_else(|| other("this cache has no disk tier".into()))?;
        disk.unpin_path(path.as_os_str().as_encoded_bytes())
    }

    /// The pins, each with the bytes of cached blocks it keeps.
    pub fn pins(&self) -> Vec<(PathBuf, u64)> {
        let Some(disk) = self.inner.tiers.disk.as_ref() else {
            return Vec::new();
        };
        disk.pins()
            .into_iter()
            .map(|(p, bytes)| {
                use std::os::unix::ffi::OsStringExt;
                (PathBuf::from(std::ffi::OsString::from_vec(p)), bytes)
            })
            .collect()
    }

    /// Regular files at or below `path`, with their sizes, without following
    /// symlinks.
    fn files_below(&self, path: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
        let mut out = Vec::new();
        let mut todo = vec![path.to_path_buf()];
        while let Some(p) = todo.pop() {
            let a = self.stat(&p)?;
            match a.kind {
                FileKind::File => out.push((p, a.size)),
                FileKind::Dir => {
                    let list = self.read_dir(&p)?;
                    // Reversed onto the stack: files come out in listing order.
                    for e in list.iter().rev() {
                        todo.push(p.join(&e.name));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Reads a whole file through the engine, so that every block it lacks is fetched
    /// and queued for the disk, waiting for room in the fill queue rather than having
    /// fills dropped. Returns the object id of the version read.
    fn fetch_whole(
        &self,
        path: &Path,
        size: u64,
        p: &mut PinProgress,
        progress: &mut dyn FnMut(&PinProgress),
    ) -> io::Result<u64> {
        let h = self.open(path)?;
        let mut off = 0;
        while off < size {
            self.wait_for_room(CHUNK as u64);
            let got = self.read(&h, off, CHUNK)?;
            if got.is_empty() {
                break; // shorter than it was
            }
            off += got.len() as u64;
            p.bytes_done += got.len() as u64;
            progress(p);
        }
        Ok(h.cur.lock().id())
    }

    /// Waits (a little at a time) until the fill queue has `bytes` of room, or is
    /// empty.
    fn wait_for_room(&self, bytes: u64) {
        let i = &self.inner;
        let t = Instant::now();
        while i.fill_room() < bytes.min(i.cfg.fill_queue_bytes)
            && i.stats.inflight_fill_bytes.load(Ordering::Relaxed) > 0
            && t.elapsed() < STALL
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the disk writer has written what is queued and what was dropped
    /// meanwhile; fails if nothing moves for a long time.
    fn wait_for_fills(&self) -> io::Result<()> {
        let s = &self.inner.stats;
        let pending = || {
            s.inflight_fill_bytes.load(Ordering::Relaxed)
                + s.dropped_fill_blocks.load(Ordering::Relaxed)
        };
        let mut last = (pending(), s.fills_done.load(Ordering::Relaxed));
        let mut since = Instant::now();
        while pending() > 0 {
            std::thread::sleep(Duration::from_millis(20));
            let now = (pending(), s.fills_done.load(Ordering::Relaxed));
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() > STALL {
                return Err(other(
                    "the disk cache stopped taking blocks (see disk_state in strata stats)".into(),
                ));
            }
        }
        Ok(())
    }
}
