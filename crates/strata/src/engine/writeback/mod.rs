//! Write-back (`Config::write_back`): a data write is answered once it is in the
//! journal (`wb_journal`) and in the file's dirty map here; flusher threads send it to
//! the origin later, in order per file, adjacent writes as one request.
//!
//! Dirty data is never in a tier: the tiers hold the origin's version the dirty bytes
//! sit on (`base`), and a read lays the dirty bytes over it. So nothing dirty can be
//! evicted, culled or dropped (it is not the tiers' to drop), and no tier ever holds
//! bytes the origin does not — a crash leaves the tiers right for the origin as it
//! is, and the journal holds what is not there yet. Each file's dirty ranges are kept
//! in an extent tree with the DIRTY and WRITEBACK bits.
//!
//! A flush holds the version's I/O lock alone, checks that the origin file is still
//! at `base` (else the origin changed under the dirty data: a conflict, see
//! `conflict`), writes the runs, syncs the file at the origin, applies the attributes
//! set while dirty, and takes the origin's new token as the version's (the written runs
//! are cached as a write-through write's are). Only then is the journal told the
//! records are done. A failed flush keeps everything dirty and is retried with a
//! growing pause; its error is reported by `fsync` and `close`, as NFS does.
//!
//! Anything that must see the origin in order with the dirty data — a truncation, a
//! rename, an unlink, a link, xattrs, O_DIRECT, a write that cannot be journaled —
//! first flushes the file (`flush_path`), then goes through. LaterAttrs, mode and owner
//! set on a dirty file wait with its data and are set right after it (`dirty_set_attr`).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use super::wb_journal::{Journal, LaterAttrs, Replayed};
use super::*;
use crate::extent::ExtentTree;
use crate::origin::{NewEntry, SetAttr, SetTime, Timestamp};
use crate::sync::Condvar;

mod flush;

/// Threads sending dirty data to the origin (each flushes one file at a time).
const FLUSHERS: usize = 8;
/// Files dirty at once at most (each may hold an origin file open): writers past it
/// wait, as past the byte limit.
const MAX_DIRTY_FILES: usize = 4096;

pub(super) struct Dirty {
    path: PathBuf,
    st: Mutex<DirtyState>,
    /// Held while the file is being written to the origin: its flushes run in order.
    order: Mutex<()>,
    /// Sent to a flusher and not yet taken up.
    queued: AtomicBool,
}

struct DirtyState {
    /// The origin's token the dirty bytes sit on.
    base: Token,
    /// The file's size with the dirty bytes.
    size: u64,
    /// Dirty bytes by offset, not overlapping.
    data: BTreeMap<u64, Bytes>,
    /// DIRTY over `data`, WRITEBACK over what a flush is sending.
    tree: ExtentTree,
    bytes: u64,
    /// The newest journal record of the file.
    seq: u64,
    /// When the oldest data not yet sent was written.
    since: Option<Instant>,
    /// Wall time of the newest write (the file's mtime while dirty).
    mtime: Timestamp,
    /// Times, mode and owner set while dirty, applied after the data.
    times: Option<LaterAttrs>,
    /// An origin file open for writing (the newest writer's).
    file: Option<Arc<dyn OriginFile>>,
    /// The last flush's error, until a flush succeeds.
    error: Option<i32>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Taken out of the map (clean): a writer that finds this starts a new one.
    removed: bool,
    /// A flush of this data was cut short (an origin error, or a crash found by the
    /// replay) after it may have changed the origin file: the origin may hold part
    /// of it, so the next flush takes the origin's token as it finds it instead of
    /// calling the difference a conflict.
    adopt: bool,
    /// A flush reached the origin but the journal could not record it done: (its
    /// seq, the origin's token after it). Until that is recorded the origin file must
    /// not change through us (a replay would write the flushed records again over
    /// it), so writes, truncations and renames of the file wait for it, or fail.
    unrecorded: Option<(u64, Token)>,
    /// A flush went on without its start in the journal: nothing more of the file
    /// is journaled until a start or a DONE of it is.
    blind: bool,
}

impl Dirty {
    /// Nothing dirty yet, over the origin file at `base`.
    fn new(path: PathBuf, base: Token, seq: u64) -> Dirty {
        Dirty {
            path,
            st: Mutex::new(DirtyState {
                size: base.size(),
                base,
                data: BTreeMap::new(),
                tree: ExtentTree::new(),
                bytes: 0,
                seq,
                since: None,
                mtime: wall_timestamp(),
                times: None,
                file: None,
                error: None,
                failures: 0,
                retry_at: None,
                removed: false,
                adopt: false,
                unrecorded: None,
                blind: false,
            }),
            order: Mutex::new(()),
            queued: AtomicBool::new(false),
        }
    }
}

impl DirtyState {
    fn is_clean(&self) -> bool {
        self.data.is_empty() && self.times.is_none() && self.unrecorded.is_none()
    }

    /// Nothing more of the file may be journaled now (`unrecorded`, `blind`): a
    /// change goes through `flush_path`, which waits for the journal or fails.
    fn journal_held(&self) -> bool {
        self.unrecorded.is_some() || self.blind
    }

    /// Puts `data` at `off`, over whatever was dirty there.
    fn put(&mut self, off: u64, data: Bytes) -> i64 {
        let end = off + data.len() as u64;
        let mut delta = data.len() as i64;
        // Entries overlapping [off, end): cut to what lies outside it.
        let over: Vec<u64> = self
            .data
            .range(..end)
            .rev()
            .take_while(|(s, b)| **s + b.len() as u64 > off)
            .map(|(s, _)| *s)
            .collect();
        for s in over {
            let b = self.data.remove(&s).unwrap_or_default();
            delta -= b.len() as i64;
            let e = s + b.len() as u64;
            if s < off {
                let left = b.slice(..(off - s) as usize);
                delta += left.len() as i64;
                self.data.insert(s, left);
            }
            if e > end {
                let right = b.slice((end - s) as usize..);
                delta += right.len() as i64;
                self.data.insert(end, right);
            }
        }
        self.data.insert(off, data);
        self.tree.set(off..end, bits::DIRTY);
        self.size = self.size.max(end);
        self.bytes = (self.bytes as i64 + delta) as u64;
        delta
    }

    /// Dirty bytes overlapping `range`, copied over `buf` (which starts at
    /// `range.start`).
    fn overlay(&self, range: Range<u64>, buf: &mut [u8]) {
        if !self.tree.test_any(range.clone(), bits::DIRTY) {
            return;
        }
        let first = self
            .data
            .range(..=range.start)
            .next_back()
            .map_or(range.start, |(s, _)| *s);
        for (&s, b) in self.data.range(first..range.end) {
            let e = s + b.len() as u64;
            let (lo, hi) = (s.max(range.start), e.min(range.end));
            if lo < hi {
                buf[(lo - range.start) as usize..(hi - range.start) as usize]
                    .copy_from_slice(&b[(lo - s) as usize..(hi - s) as usize]);
            }
        }
    }
}

/// The write-back state of an engine.
pub(super) struct WriteBack {
    cfg: crate::config::WriteBack,
    journal: Journal,
    files: Mutex<FxHashMap<PathBuf, Arc<Dirty>>>,
    /// Wakes the scheduler; true once it should stop.
    sched: Mutex<SchedState>,
    sched_cv: Condvar,
    /// Signalled whenever a flush ends (room for writers, progress for `flush_all`).
    done_cv: Condvar,
    done_lock: Mutex<u64>,
    queue: Mutex<Option<Sender<Arc<Dirty>>>>,
    /// Nothing is sent to the origin any more (`Engine::abandon`: as a crash).
    abandoned: AtomicBool,
}

#[derive(Default)]
struct SchedState {
    stop: bool,
    /// Flush everything now (past the limits, or asked to).
    urgent: bool,
}

impl WriteBack {
    /// Opens the journal; what it still holds comes back to be flushed.
    pub(super) fn open(
        cfg: crate::config::WriteBack,
        storage: Arc<dyn Storage>,
    ) -> io::Result<(WriteBack, BTreeMap<PathBuf, Replayed>)> {
        let (journal, found) = Journal::open(storage)?;
        Ok((
            WriteBack {
                cfg,
                journal,
                files: Mutex::new(FxHashMap::default()),
                sched: Mutex::new(SchedState::default()),
                sched_cv: Condvar::new(),
                done_cv: Condvar::new(),
                done_lock: Mutex::new(0),
                queue: Mutex::new(None),
                abandoned: AtomicBool::new(false),
            },
            found,
        ))
    }

    pub(super) fn get(&self, path: &Path) -> Option<Arc<Dirty>> {
        let files = self.files.lock();
        if files.is_empty() {
            return None;
        }
        files.get(path).cloned()
    }

    fn kick(&self, urgent: bool) {
        let mut s = self.sched.lock();
        s.urgent |= urgent;
        self.sched_cv.notify_all();
    }

    fn flush_ended(&self) {
        *self.done_lock.lock() += 1;
        self.done_cv.notify_all();
    }

    /// Waits up to `d` for a flush to end.
    fn wait_flush(&self, d: Duration) {
        let g = self.done_lock.lock();
        let _g = self.done_cv.wait_timeout(g, d);
    }
}

impl Inner {
    fn wb(&self) -> &WriteBack {
        self.wb.as_ref().expect("write-back is on")
    }

    /// Loads what the journal held at startup as dirty files.
    pub(super) fn wb_load(&self, found: BTreeMap<PathBuf, Replayed>) {
        let wb = self.wb();
        let mut files = wb.files.lock();
        for (path, r) in found {
            let Some(base) = r.base else { continue };
            let d = Dirty::new(path.clone(), base, r.seq);
            let bytes = {
                let mut st = d.st.lock();
                for (_, off, data) in r.writes {
                    st.put(off, data);
                }
                st.times = r.times.map(|t| t.1);
                st.adopt = r.flushing;
                st.since = Some(Instant::now());
                st.bytes
            };
            stats::inc(&self.stats.journal_replays);
            stats::add(&self.stats.dirty_bytes, bytes);
            stats::inc(&self.stats.dirty_files);
            tracing::info!(path = %path.display(), bytes, "write-back journal: dirty data found at startup, sending it to the origin");
            files.insert(path, Arc::new(d));
        }
    }

    /// Starts the scheduler and the flushers.
    pub(super) fn wb_start(self: &Arc<Self>, threads: &mut Vec<JoinHandle<()>>) -> io::Result<()> {
        let (tx, rx) = crossbeam_channel::unbounded::<Arc<Dirty>>();
        *self.wb().queue.lock() = Some(tx);
        for n in 0..FLUSHERS {
            let (inner, rx) = (self.clone(), rx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("strata-wb-{n}"))
                    .spawn(move || {
                        for d in rx {
                            d.queued.store(false, Ordering::Release);
                            let _ = inner.flush_file(&d);
                        }
                    })?,
            );
        }
        let inner = self.clone();
        threads.push(
            std::thread::Builder::new()
                .name("strata-wb".into())
                .spawn(move || inner.wb_schedule())?,
        );
        Ok(())
    }

    /// Sends files whose dirty data is due to the flushers, until stopped.
    fn wb_schedule(&self) {
        let wb = self.wb();
        let tick = (wb.cfg.delay / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        loop {
            let urgent = {
                let mut s = wb.sched.lock();
                if !s.stop && !s.urgent {
                    s = wb.sched_cv.wait_timeout(s, tick);
                }
                if s.stop {
                    return;
                }
                std::mem::take(&mut s.urgent)
            };
            let over = self.stats.dirty_bytes.load(Ordering::Relaxed) > wb.cfg.dirty_limit / 2;
            let now = Instant::now();
            let due: Vec<Arc<Dirty>> = wb
                .files
                .lock()
                .values()
                .filter(|d| {
                    let st = d.st.lock();
                    let waited = st.since.is_some_and(|t| now >= t + wb.cfg.delay)
                        || (st.since.is_none() && st.times.is_some())
                        || st.unrecorded.is_some();
                    (urgent || over || waited)
                        && !st.is_clean()
                        && st.retry_at.is_none_or(|t| now >= t)
                })
                .cloned()
                .collect();
            let tx = wb.queue.lock().clone();
            let Some(tx) = tx else { return };
            for d in due {
                if !d.queued.swap(true, Ordering::AcqRel) && tx.send(d).is_err() {
                    return;
                }
            }
        }
    }

    /// Writes `data` at `off` through `h` into the journal and the dirty map. None:
    /// the write must go through to the origin instead (after the file's dirty data).
    pub(super) fn wb_write(
        &self,
        h: &Handle,
        obj: &Arc<Object>,
        off: u64,
        data: &[u8],
    ) -> Option<io::Result<usize>> {
        let wb = self.wb.as_ref()?;
        let pinned = self
            .tiers
            .disk
            .as_ref()
            .is_some_and(|d| d.is_pinned(obj.id));
        if h.is_direct() || obj.is_dead() || obj.detached.load(Ordering::Acquire) || pinned {
            return None;
        }
        let len = data.len() as u64;
        if !self.wb_room(wb, len) {
            stats::inc(&self.stats.wb_fallbacks);
            return None;
        }
        let bytes = Bytes::copy_from_slice(data);
        loop {
            let d = {
                let mut files = wb.files.lock();
                let fresh = files.get(&obj.path).is_none();
                let d = files
                    .entry(obj.path.clone())
                    .or_insert_with(|| Arc::new(Dirty::new(obj.path.clone(), obj.token(), 0)));
                if fresh {
                    stats::inc(&self.stats.dirty_files);
                }
                d.clone()
            };
            let mut st = d.st.lock();
            if st.removed {
                continue;
            }
            if st.journal_held() {
                return None;
            }
            // The origin changed under the dirty data (a conflict the flusher will
            // settle): this write waits for that, then goes through.
            if !obj.has_token(&st.base) {
                return None;
            }
            let seq = match wb.journal.write(&obj.path, &st.base, off, &bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "write-back journal append failed: writing through to the origin");
                    stats::inc(&self.stats.wb_fallbacks);
                    return None;
                }
            };
            st.seq = seq;
            let delta = st.put(off, bytes.clone());
            st.since.get_or_insert_with(Instant::now);
            st.mtime = wall_timestamp();
            if let Some(f) = &h.wfile {
                st.file = Some(f.clone());
            }
            if delta >= 0 {
                stats::add(&self.stats.dirty_bytes, delta as u64);
            } else {
                stats::sub(&self.stats.dirty_bytes, (-delta) as u64);
            }
            stats::inc(&self.stats.writes);
            stats::inc(&self.stats.writes_back);
            stats::add(&self.stats.write_bytes, len);
            return Some(Ok(data.len()));
        }
    }

    /// Waits while the dirty data is over its limits; false if it does not drain
    /// (the flushers keep failing): the write then goes through.
    fn wb_room(&self, wb: &WriteBack, len: u64) -> bool {
        let full = || {
            self.stats.dirty_bytes.load(Ordering::Relaxed) + len > wb.cfg.dirty_limit
                || wb.files.lock().len() >= MAX_DIRTY_FILES
        };
        if !full() {
            return true;
        }
        stats::inc(&self.stats.wb_throttled);
        let limit = self.cfg.origin_timeout.unwrap_or(Duration::from_secs(30)) * 3;
        let t0 = Instant::now();
        while full() {
            if t0.elapsed() > limit {
                return false;
            }
            wb.kick(true);
            wb.wait_flush(Duration::from_millis(100));
        }
        true
    }

    /// From now on nothing dirty is sent to the origin: what a crash would leave.
    pub(super) fn wb_abandon(&self) {
        if let Some(wb) = &self.wb {
            wb.abandoned.store(true, Ordering::Release);
            self.wb_stop();
        }
    }

    /// Stops the scheduler and the flushers (after `flush_all`).
    pub(super) fn wb_stop(&self) {
        if let Some(wb) = &self.wb {
            wb.sched.lock().stop = true;
            wb.sched_cv.notify_all();
            wb.queue.lock().take();
        }
    }

    /// A read of a file with dirty data: the origin's version with the dirty bytes
    /// over it, up to the dirty size. None: nothing dirty there.
    pub(super) fn read_dirty(
        &self,
        h: &Handle,
        off: u64,
        len: usize,
    ) -> Option<io::Result<ReadBuf>> {
        let wb = self.wb.as_ref()?;
        let d = wb.get(&h.cur.lock().path)?;
        let (base, size) = {
            let st = d.st.lock();
            (st.base.clone(), st.size)
        };
        if off >= size || len == 0 {
            return Some(Ok(ReadBuf::default()));
        }
        let end = (off + len as u64).min(size);
        let under = match self.read(h, off, (end - off) as usize) {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        // The origin changed under the dirty data: its version is what is served (it
        // stays; the dirty bytes go to a conflict copy).
        if !h.cur.lock().has_token(&base) {
            return Some(Ok(under));
        }
        let mut buf = vec![0u8; (end - off) as usize];
        let mut at = 0;
        for p in under.parts() {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        let st = d.st.lock();
        if st.base != base {
            // Flushed meanwhile: the origin has the bytes now.
            drop(st);
            return Some(self.read(h, off, len));
        }
        st.overlay(off..end, &mut buf);
        Some(Ok(ReadBuf::from_bytes(Bytes::from(buf))))
    }

    /// Attributes with what is dirty of the file: its size and modification time.
    pub(super) fn dirty_attr(&self, path: &Path, a: Attr) -> Attr {
        let Some(d) = self.wb.as_ref().and_then(|wb| wb.get(path)) else {
            return a;
        };
        let st = d.st.lock();
        if a.token != st.base || a.kind != FileKind::File {
            return a;
        }
        let mut a = a;
        a.size = a.size.max(st.size);
        a.blocks = a.blocks.max(st.size.div_ceil(512));
        if st.since.is_some() {
            a.mtime = st.mtime;
            a.ctime = st.mtime;
        }
        if let Some(t) = st.times {
            a.mtime = t.mtime.unwrap_or(a.mtime);
            a.atime = t.atime.unwrap_or(a.atime);
            a.perm = t.mode.map_or(a.perm, |m| m & 0o7777);
            a.uid = t.uid.unwrap_or(a.uid);
            a.gid = t.gid.unwrap_or(a.gid);
        }
        a
    }

    /// LaterAttrs, mode or owner set on a dirty file (no truncation): kept with its data
    /// and set at the origin after it (tar sets them right after the data). None:
    /// not dirty, it goes through.
    pub(super) fn dirty_set_attr(&self, path: &Path, set: &SetAttr) -> Option<io::Result<Attr>> {
        if set.size.is_some() {
            return None;
        }
        let wb = self.wb.as_ref()?;
        let d = wb.get(path)?;
        let resolve = |t: SetTime| match t {
            SetTime::Now => wall_timestamp(),
            SetTime::At(t) => t,
        };
        let later = LaterAttrs {
            atime: set.atime.map(resolve),
            mtime: set.mtime.map(resolve),
            mode: set.mode,
            uid: set.uid,
            gid: set.gid,
        };
        {
            let mut st = d.st.lock();
            if st.removed || st.is_clean() || st.journal_held() {
                return None;
            }
            let all = st.times.unwrap_or_default().then(later);
            let seq = match wb.journal.times(path, &st.base, all) {
                Ok(s) => s,
                Err(_) => return None,
            };
            st.seq = seq;
            st.times = Some(all);
        }
        let a = match self.attrs.peek(path) {
            Some((Ok(a), ..)) => Ok(a),
            _ => self.stat_origin(path),
        };
        Some(a.map(|a| self.dirty_attr(path, a)))
    }

    /// The error of a failed write-back of `h`'s file, for `fsync` and `close` to
    /// report (until a flush succeeds).
    pub(super) fn wb_error(&self, h: &Handle) -> io::Result<()> {
        let path = h.cur.lock().path.clone();
        match self.wb.as_ref().and_then(|wb| wb.get(&path)) {
            Some(d) => match d.st.lock().error {
                Some(e) => Err(io::Error::from_raw_os_error(e)),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// fsync in write-back mode: the file's dirty data durable in the journal (or
    /// at the origin with `fsync_origin`). None: nothing dirty, the origin file is
    /// synced as in write-through.
    pub(super) fn wb_fsync(&self, h: &Handle) -> Option<io::Result<()>> {
        let wb = self.wb.as_ref()?;
        let path = h.cur.lock().path.clone();
        let d = wb.get(&path)?;
        // A flush the journal could not record: this asks again at once.
        if d.st.lock().unrecorded.is_some() {
            let _ = self.flush_file(&d);
        }
        if let Err(e) = self.wb_error(h) {
            return Some(Err(e));
        }
        if wb.cfg.fsync_origin {
            return Some(self.flush_file(&d));
        }
        Some(wb.journal.sync())
    }

    /// Dirty bytes and files now (for tests).
    pub(super) fn dirty_now(&self) -> (u64, usize) {
        match &self.wb {
            Some(wb) => (
                self.stats.dirty_bytes.load(Ordering::Relaxed),
                wb.files.lock().len(),
            ),
            None => (0, 0),
        }
    }
}
