//! The engine: the read path, coherency, and the background fill and read-ahead work.
//!
//! # Read path
//! A read of (object, offset, length) is split into blocks. Each block is looked up in
//! the RAM tier, then among the blocks still being written to disk, then in the disk
//! tier (one vectored read per run). What is left is claimed in the object's extent
//! tree (FETCHING) and fetched from the origin as contiguous runs, one request per run;
//! blocks another reader already fetches are waited for (single flight). The reader
//! gets its bytes as soon as the origin answers; the copies into RAM happen at once and
//! the disk fill is queued, bounded, and dropped rather than waited for.
//!
//! # Coherency
//! An object version is (path, token, id). Its token is checked against the origin on
//! open and when it is older than the attribute TTL; a changed token kills the version
//! (its blocks leave every tier) and a new version with a new id takes its place. A
//! fetch is checked against the token of the open origin file after it completes, so
//! bytes read while the file changed are returned but never cached.

mod guard;
mod meta;
mod meta_log;
mod object;
mod pin;
pub use pin::PinProgress;

pub use object::Object;

use std::ffi::{OsStr, OsString};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rustc_hash::FxHashMap;

use crate::config::Config;
use crate::extent::bits;
use crate::origin::{Attr, DirEntry, FileKind, FsStats, Origin, Token};
use crate::stats::{self, Stats, StatsSnapshot};
use crate::storage::Storage;
use crate::sync::{Arc, Mutex, RwLock};
use crate::tier::BlockKey;
use crate::tier::disk::{DiskConfig, DiskError, DiskTier, FillBlock, LONG_RUN};
use crate::tier::ram::RamTier;
use guard::{OriginGuard, stale_ok, unreachable};
use meta::TtlMap;
use meta_log::MetaLog;
use object::{Claim, Claimed};

/// Largest read served in one call.
const MAX_READ: usize = 64 << 20;
/// How far from where a sequential reader got to its next read may start.
const SEQ_SLACK: u64 = 2 << 20;
/// Largest disk commit batch.
const FILL_BATCH_BYTES: u64 = 8 << 20;
/// Dropped fill runs remembered for a retry; older ones are forgotten.
const MAX_DROPPED_RUNS: usize = crate::config::MAX_DROPPED_RUNS;
/// The journaled metadata maps, before the engine owns them.
struct MetaMaps {
    attrs: TtlMap<PathBuf, Result<Attr, i32>>,
    dirs: TtlMap<PathBuf, Result<Arc<Vec<DirEntry>>, i32>>,
    links: TtlMap<PathBuf, Result<Arc<[u8]>, i32>>,
    xattrs: TtlMap<XattrKey, Result<Arc<[u8]>, i32>>,
    xattr_lists: TtlMap<PathBuf, Result<Arc<Vec<OsString>>, i32>>,
}

impl MetaMaps {
    /// Loads what the journal kept and journals from now on. A journal that cannot
    /// be opened only costs the persistence: warned, and the mount goes on.
    fn open_journal(&mut self, storage: Arc<dyn Storage>, origin: &str) -> Option<Arc<MetaLog>> {
        use meta_log::kind;
        let mut loaded = 0u64;
        let r = MetaLog::open(storage, origin, &mut |mut e| {
            loaded += 1;
            fn apply<K, V>(m: &TtlMap<K, V>, e: &mut meta_log::Entry<'_>)
            where
                K: std::hash::Hash + Eq + meta::Weight + meta_log::Persist,
                V: Clone + meta::Weight + meta_log::Persist,
            {
                let Some(k) = e.take::<K>() else { return };
                if e.forget {
                    m.remove_quiet(&k);
                } else if let Some(v) = e.take::<V>() {
                    m.load(k, v, e.at_ns);
                }
            }
            match e.kind {
                kind::ATTRS => apply(&self.attrs, &mut e),
                kind::DIRS => apply(&self.dirs, &mut e),
                kind::LINKS => apply(&self.links, &mut e),
                kind::XATTRS => apply(&self.xattrs, &mut e),
                kind::XATTR_LISTS => apply(&self.xattr_lists, &mut e),
                _ => {}
            }
        });
        match r {
            Ok(log) => {
                let log = Arc::new(log);
                self.attrs.journal(log.clone(), kind::ATTRS);
                self.dirs.journal(log.clone(), kind::DIRS);
                self.links.journal(log.clone(), kind::LINKS);
                self.xattrs.journal(log.clone(), kind::XATTRS);
                self.xattr_lists.journal(log.clone(), kind::XATTR_LISTS);
                if loaded > 0 {
                    tracing::info!(records = loaded, "metadata journal loaded");
                }
                Some(log)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the metadata journal; metadata is not kept across restarts");
                None
            }
        }
    }
}

/// A run of blocks whose fill was dropped, remembered by the object version it
/// belongs to rather than by the object itself: holding each object would keep every
/// one of them (their extent trees, their place in the active table) alive while
/// thousands of small files wait, which is why at most 4,096 were remembered and a
/// second pass over a tree larger than RAM went back to the origin for the rest.
struct Dropped {
    path: PathBuf,
    token: Token,
    id: u64,
    blocks: Range<u64>,
}

/// The metadata journal is rewritten from the live entries only past this size.
const META_LOG_MIN: u64 = 8 << 20;
/// Active objects kept before idle ones are forgotten.
const MAX_ACTIVE: usize = crate::config::MAX_ACTIVE_OBJECTS;
const ENOENT: i32 = 2;
/// Origin requests in flight at once when a listing's entries are asked about.
const LISTING_WIDTH: usize = 16;
const ESTALE: i32 = 116;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("cannot start engine threads: {0}")]
    Thread(io::Error),
}

/// Bytes of one read, as the blocks they came in (no copy).
#[derive(Clone, Debug, Default)]
pub struct ReadBuf {
    parts: Vec<Bytes>,
    len: usize,
}

impl ReadBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The bytes as one slice when they came in one piece.
    pub fn as_single(&self) -> Option<&[u8]> {
        match self.parts.as_slice() {
            [] => Some(&[]),
            [one] => Some(one),
            _ => None,
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for p in &self.parts {
            v.extend_from_slice(p);
        }
        v
    }
}

/// An open file of the engine. Reads through it follow the file's current version:
/// when the origin changes, the next read after the TTL sees the new version.
pub struct Handle {
    cur: Mutex<Arc<Object>>,
    ra: Mutex<ReadAhead>,
}

#[derive(Default)]
struct ReadAhead {
    /// Where a sequential reader would read next.
    next: u64,
    /// Current read-ahead window in bytes (0: not sequential).
    window: u64,
}

impl Handle {
    fn new(obj: Arc<Object>) -> Self {
        obj.handle_opened();
        Self {
            cur: Mutex::new(obj),
            ra: Mutex::new(ReadAhead::default()),
        }
    }

    /// The object version the handle reads now.
    pub fn object(&self) -> Arc<Object> {
        self.cur.lock().clone()
    }

    /// Moves the handle to another version of its file.
    fn switch(&self, to: Arc<Object>) {
        to.handle_opened();
        let old = std::mem::replace(&mut *self.cur.lock(), to);
        old.handle_closed();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.cur.lock().handle_closed();
    }
}

/// A cached file handed to the kernel to read directly (see [`Engine::passthrough`]).
pub struct Passthrough {
    pub file: std::fs::File,
    _pin: crate::tier::disk::Pin,
    object: Arc<Object>,
}

impl Passthrough {
    /// The object version the kernel reads.
    pub fn object(&self) -> &Arc<Object> {
        &self.object
    }
}

/// How gathering the blocks of a read ended.
enum Gathered {
    Complete,
    /// The origin file changed under a fetch: start over on the new version.
    Changed,
}

/// Blocks of one origin request, and whether they were cached (same version).
struct Fetched {
    data: Vec<Bytes>,
    cached: bool,
}

struct FillJob {
    obj: Arc<Object>,
    first: u64,
    blocks: Vec<Bytes>,
}

impl FillJob {
    fn bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.len() as u64).sum()
    }
}

/// Work for the prefetch threads.
enum Prefetch {
    /// Read-ahead: claimed blocks of an object.
    Blocks(Claim),
    /// Blocks of a dropped fill that RAM lost, fetched again (counted in
    /// `dropped_fill_blocks` until their fill is queued).
    Refetch(Claim),
    /// Directory prefetch: the start of a file a reader will probably open soon.
    File(PathBuf),
    /// Listing prefetch: a directory a tree walk will probably list soon; the sender
    /// is dropped when it is done.
    Dir(PathBuf, Sender<()>),
}

/// A listing fetched ahead of a tree walk.
struct ListAhead {
    /// Being fetched (not only queued): the walk waits for it rather than ask too.
    started: bool,
    /// Disconnected when the fetch is over.
    done: Receiver<()>,
}

/// A reader going through a directory's files (or subdirectories) in listing order.
#[derive(Clone, Copy)]
struct DirScan {
    /// Listing index of the entry opened (or listed) last.
    last: usize,
    /// Files to keep fetched ahead (0: not a scan).
    window: usize,
    /// Listing index up to which prefetches were queued.
    until: usize,
}

/// A file opened at most this many entries after the last one still continues a
/// scan (the reader skipped a few: excluded, or opened elsewhere).
const SCAN_SLACK: usize = 4;
/// Directories whose scans are remembered.
const MAX_SCANS: usize = 1024;
/// Subdirectories a tree walk gets listed ahead of it, at most.
const LIST_AHEAD: usize = 8;
/// Entries of a prefetched listing whose attributes are asked for too: what one
/// readdirplus reply holds, so a huge directory costs no more than that.
const LIST_AHEAD_ATTRS: usize = 256;

type Listener = Arc<dyn Fn(&Path) + Send + Sync>;
type XattrKey = (PathBuf, OsString);

struct Inner {
    cfg: Config,
    origin: Arc<dyn Origin>,
    ram: RamTier,
    disk: Option<Arc<DiskTier>>,
    stats: Arc<Stats>,
    objects: Mutex<FxHashMap<PathBuf, Arc<Object>>>,
    ids: AtomicU64,
    epoch: Instant,
    fill_tx: RwLock<Option<Sender<FillJob>>>,
    /// Runs whose fill was dropped (queue full), offered again from RAM once the
    /// writer is idle: a block read once over a busy machine still gets to disk.
    dropped: Mutex<std::collections::VecDeque<Dropped>>,
    prefetch_tx: RwLock<Option<Sender<Prefetch>>>,
    dir_scans: Mutex<FxHashMap<PathBuf, DirScan>>,
    /// Scans of directories' subdirectories (tree walks), by parent.
    list_scans: Mutex<FxHashMap<PathBuf, DirScan>>,
    /// Listings queued or being fetched ahead, so none is asked for twice.
    lists_ahead: Mutex<FxHashMap<PathBuf, ListAhead>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    attrs: TtlMap<PathBuf, Result<Attr, i32>>,
    dirs: TtlMap<PathBuf, Result<Arc<Vec<DirEntry>>, i32>>,
    links: TtlMap<PathBuf, Result<Arc<[u8]>, i32>>,
    xattrs: TtlMap<XattrKey, Result<Arc<[u8]>, i32>>,
    xattr_lists: TtlMap<PathBuf, Result<Arc<Vec<OsString>>, i32>>,
    statfs: TtlMap<(), Result<FsStats, i32>>,
    guard: OriginGuard,
    stale_warned: AtomicU64,
    listener: RwLock<Option<Listener>>,
    /// Where confirmed metadata is kept across restarts (with a disk tier).
    meta_log: Option<Arc<MetaLog>>,
}

/// The cache engine. Cheap to share behind an `Arc`; every method may be called from
/// many threads at once.
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts an engine over `origin`. With a disk tier, opening replays its index:
    /// everything whose record was durable is served again.
    pub fn new(cfg: Config, origin: Arc<dyn Origin>) -> Result<Self, EngineError> {
        cfg.validate().map_err(EngineError::Config)?;
        let stats = Arc::new(Stats::default());
        let disk = match &cfg.disk {
            Some(d) => Some(Arc::new(DiskTier::open(
                d.storage.clone(),
                DiskConfig {
                    capacity: d.capacity,
                    block_size: cfg.block_size,
                    thresholds: d.thresholds,
                    compact_min_bytes: cfg.compact_min_bytes,
                },
                stats.clone(),
            )?)),
            None => None,
        };
        let ttl = cfg.attr_ttl;
        let max = cfg.meta_bytes as usize;
        // Shares of the metadata budget; they add up to it.
        let mut maps = MetaMaps {
            attrs: TtlMap::new(ttl, max / 2),
            dirs: TtlMap::new(ttl, max / 4),
            links: TtlMap::new(ttl, max / 16),
            xattrs: TtlMap::new(ttl, max / 8),
            xattr_lists: TtlMap::new(ttl, max / 16),
        };
        let meta_log = match &cfg.disk {
            Some(d) => maps.open_journal(d.storage.clone(), &origin.describe()),
            None => None,
        };
        let inner = Arc::new(Inner {
            ram: RamTier::new(cfg.ram_capacity, stats.clone()),
            origin,
            disk,
            stats,
            objects: Mutex::new(FxHashMap::default()),
            ids: AtomicU64::new(1),
            epoch: Instant::now(),
            fill_tx: RwLock::new(None),
            dropped: Mutex::new(Default::default()),
            prefetch_tx: RwLock::new(None),
            dir_scans: Mutex::new(FxHashMap::default()),
            list_scans: Mutex::new(FxHashMap::default()),
            lists_ahead: Mutex::new(Default::default()),
            threads: Mutex::new(Vec::new()),
            attrs: maps.attrs,
            dirs: maps.dirs,
            links: maps.links,
            xattrs: maps.xattrs,
            xattr_lists: maps.xattr_lists,
            statfs: TtlMap::new(ttl, 4096),
            meta_log,
            guard: OriginGuard::new(cfg.origin_timeout, cfg.origin_threads)
                .map_err(EngineError::Thread)?,
            stale_warned: AtomicU64::new(0),
            listener: RwLock::new(None),
            cfg,
        });
        let engine = Engine { inner };
        engine.start_threads().map_err(EngineError::Thread)?;
        Ok(engine)
    }

    fn start_threads(&self) -> io::Result<()> {
        let mut threads = self.inner.threads.lock();
        if let Some(disk) = self.inner.disk.clone() {
            let (tx, rx) = crossbeam_channel::unbounded();
            *self.inner.fill_tx.write() = Some(tx);
            let inner = self.inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("strata-fill".into())
                    .spawn(move || inner.fill_loop(&disk, rx))?,
            );
        }
        if self.inner.cfg.prefetch_threads == 0 {
            return Ok(());
        }
        let (tx, rx) = crossbeam_channel::bounded::<Prefetch>(self.inner.cfg.prefetch_threads * 4);
        *self.inner.prefetch_tx.write() = Some(tx);
        for n in 0..self.inner.cfg.prefetch_threads {
            let inner = self.inner.clone();
            let rx = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("strata-ra-{n}"))
                    .spawn(move || {
                        for job in rx {
                            match job {
                                Prefetch::Blocks(claim) => {
                                    let obj = claim.obj.clone();
                                    let _ = inner.fetch(&obj, claim, true);
                                }
                                Prefetch::Refetch(claim) => {
                                    let obj = claim.obj.clone();
                                    let n = claim.blocks.end - claim.blocks.start;
                                    let _ = inner.fetch(&obj, claim, true);
                                    inner
                                        .stats
                                        .dropped_fill_blocks
                                        .fetch_sub(n, Ordering::Relaxed);
                                }
                                Prefetch::File(path) => inner.prefetch_file(&path),
                                Prefetch::Dir(path, done) => {
                                    inner.prefetch_dir(&path);
                                    drop(done);
                                }
                            }
                        }
                    })?,
            );
        }
        Ok(())
    }

    /// Calls `f` with the path of every object version that gets invalidated (for
    /// example to drop the kernel's page cache of it).
    pub fn set_invalidation_listener(&self, f: impl Fn(&Path) + Send + Sync + 'static) {
        *self.inner.listener.write() = Some(Arc::new(f));
    }

    pub fn stats(&self) -> StatsSnapshot {
        let i = &self.inner;
        let mut s = i.stats.snapshot();
        s.active_objects = i.objects.lock().len() as u64;
        s.meta_bytes = (i.attrs.bytes()
            + i.dirs.bytes()
            + i.links.bytes()
            + i.xattrs.bytes()
            + i.xattr_lists.bytes()
            + i.statfs.bytes()) as u64;
        s
    }

    /// The live counters, for a front end's own (see `fuse_uring_requests`).
    pub fn counters(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    pub fn origin(&self) -> &Arc<dyn Origin> {
        &self.inner.origin
    }

    pub fn disk(&self) -> Option<&DiskTier> {
        self.inner.disk.as_deref()
    }

    /// Opens a regular file, at the version the origin confirmed within the TTL (a
    /// lookup just before, or a revalidation a directory scan sent ahead in a batch),
    /// or else as the origin says now. With a TTL of 0 every open asks.
    pub fn open(&self, path: &Path) -> io::Result<Handle> {
        let attr = match self.inner.attrs.get(path) {
            Some(Ok(a)) => a,
            _ => self.inner.stat_origin(path)?,
        };
        let obj = self.inner.object_for(path, &attr)?;
        let h = Handle::new(obj);
        self.inner.note_open(path);
        Ok(h)
    }

    /// Reads up to `len` bytes at `off`. Fewer bytes only at the end of the file.
    pub fn read(&self, h: &Handle, off: u64, len: usize) -> io::Result<ReadBuf> {
        let t0 = Instant::now();
        let r = self.inner.read(h, off, len.min(MAX_READ));
        stats::add(&self.inner.stats.read_us, t0.elapsed().as_micros() as u64);
        r
    }

    /// For a file the disk tier holds whole, every block verified since start: its
    /// data file, for the kernel to read directly (FUSE passthrough), with a pin that
    /// keeps the file whole while it is open. The version is the handle's current one
    /// (checked within the TTL); it stays what the kernel reads until the pin is gone.
    pub fn passthrough(&self, h: &Handle) -> Option<Passthrough> {
        let disk = self.inner.disk.as_ref()?;
        let obj = self.inner.current(h).ok()?;
        let size = obj.size();
        if size == 0 || size < self.inner.cfg.passthrough_min_size || obj.is_dead() {
            return None;
        }
        if let Token::Stat { mtime_ns, .. } = obj.token() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            let age = now.saturating_sub(*mtime_ns);
            if age < self.inner.cfg.passthrough_min_age.as_nanos() as i64 {
                return None;
            }
        }
        let whole = obj
            .lock()
            .tree
            .test_all(0..size, bits::DISK | bits::VERIFIED);
        if !whole {
            return None;
        }
        let pin = disk.pin(obj.id)?;
        // Checked under the pin: nothing can be evicted from here on.
        if !disk.contains_all(obj.id, 0..obj.blocks()) {
            return None;
        }
        let file = disk.backing_file(&pin).ok()?;
        stats::inc(&self.inner.stats.passthrough_opens);
        Some(Passthrough {
            file,
            _pin: pin,
            object: obj,
        })
    }

    /// Attributes of an entry: from the cache within the TTL, else from the origin.
    pub fn stat(&self, path: &Path) -> io::Result<Attr> {
        self.stat_ttl(path).0
    }

    /// Attributes (or the error, a negative entry included) and how much longer they
    /// may be trusted: the TTL less the time the answer has been cached. A front end
    /// that caches them itself (the kernel) must trust them no longer than that, or
    /// its TTL stacks on the engine's and a change takes up to twice the TTL to show.
    pub fn stat_ttl(&self, path: &Path) -> (io::Result<Attr>, Duration) {
        let ttl = self.inner.cfg.attr_ttl;
        match self.inner.attrs.get_aged(path) {
            Some((Ok(a), age)) => (Ok(a), ttl.saturating_sub(age)),
            Some((Err(e), age)) => (
                Err(io::Error::from_raw_os_error(e)),
                ttl.saturating_sub(age),
            ),
            None => (self.inner.stat_origin(path), ttl),
        }
    }

    /// Attributes of many entries, asking the origin for those not cached with up to
    /// `parallel` requests in flight (a cold `ls -l` over a slow origin), each with how
    /// much longer it may be trusted (as [`Engine::stat_ttl`]).
    pub fn stat_many(
        &self,
        paths: &[PathBuf],
        parallel: usize,
    ) -> Vec<(io::Result<Attr>, Duration)> {
        self.inner.stat_many(paths, parallel)
    }

    /// A directory listing: from the cache within the TTL, else from the origin.
    pub fn read_dir(&self, path: &Path) -> io::Result<Arc<Vec<DirEntry>>> {
        // Caught up with a listing on its way ahead: wait for it instead of asking twice.
        let ahead = {
            let m = self.inner.lists_ahead.lock();
            m.get(path).filter(|a| a.started).map(|a| a.done.clone())
        };
        if let Some(done) = ahead {
            let limit = self
                .inner
                .cfg
                .origin_timeout
                .unwrap_or(Duration::from_secs(10));
            let _ = done.recv_timeout(limit);
        }
        let list = self.inner.read_dir(path)?;
        self.inner.note_list(path);
        Ok(list)
    }

    pub fn read_link(&self, path: &Path) -> io::Result<Arc<[u8]>> {
        let (o, p) = (self.inner.origin.clone(), path.to_path_buf());
        self.inner
            .meta(&self.inner.links, path.to_path_buf(), move || {
                o.read_link(&p).map(Arc::from)
            })
    }

    pub fn get_xattr(&self, path: &Path, name: &OsStr) -> io::Result<Arc<[u8]>> {
        let (o, p, n) = (
            self.inner.origin.clone(),
            path.to_path_buf(),
            name.to_os_string(),
        );
        let key = (path.to_path_buf(), name.to_os_string());
        self.inner.meta(&self.inner.xattrs, key, move || {
            o.get_xattr(&p, &n).map(Arc::from)
        })
    }

    pub fn list_xattr(&self, path: &Path) -> io::Result<Arc<Vec<OsString>>> {
        let (o, p) = (self.inner.origin.clone(), path.to_path_buf());
        self.inner
            .meta(&self.inner.xattr_lists, path.to_path_buf(), move || {
                o.list_xattr(&p).map(Arc::new)
            })
    }

    pub fn statfs(&self) -> io::Result<FsStats> {
        let o = self.inner.origin.clone();
        self.inner.meta(&self.inner.statfs, (), move || o.statfs())
    }

    /// Forgets cached metadata of a path (the next call asks the origin).
    pub fn forget_meta(&self, path: &Path) {
        self.inner.attrs.remove(path);
        self.inner.dirs.remove(path);
        self.inner.links.remove(path);
        self.inner.xattr_lists.remove(path);
        self.inner.xattrs.remove_where(|(p, _)| p == path);
    }

    /// Waits until the disk fill queue is empty (or the timeout passes). For tests
    /// and for a clean unmount.
    pub fn wait_fills(&self, timeout: Duration) -> bool {
        let t = Instant::now();
        while self.inner.stats.inflight_fill_bytes.load(Ordering::Relaxed) > 0 {
            if t.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Stops the background threads: read-ahead is abandoned, queued fills are
    /// finished, the disk index is committed and the cache directory released (another
    /// process may open it right away). Also done on drop.
    pub fn shutdown(&self) {
        self.inner.prefetch_tx.write().take();
        self.inner.fill_tx.write().take();
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *self.inner.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        self.inner.keep_meta(true);
        if let Some(d) = &self.inner.disk
            && let Err(e) = d.close()
        {
            tracing::warn!(error = %e, "could not commit the cache index at shutdown");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Results worth remembering: values, and the errors that say "there is none".
fn cacheable<T: Clone>(r: &io::Result<T>) -> Option<Result<T, i32>> {
    match r {
        Ok(v) => Some(Ok(v.clone())),
        Err(e) => match e.raw_os_error() {
            // ENODATA, ENOTSUP, ENOENT
            Some(c @ (61 | 95 | 2)) => Some(Err(c)),
            _ => None,
        },
    }
}

impl Inner {
    /// Nanoseconds since the engine started, never 0 (0 marks "revalidate now").
    fn now_ns(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// Metadata: fresh from the cache, else from the origin, else (the origin cannot
    /// be asked) whatever the cache last had, however old.
    fn meta<K, V>(
        &self,
        map: &TtlMap<K, Result<V, i32>>,
        key: K,
        fetch: impl FnOnce() -> io::Result<V> + Send + 'static,
    ) -> io::Result<V>
    where
        K: std::hash::Hash + Eq + meta::Weight + meta_log::Persist,
        V: Clone + Send + meta::Weight + meta_log::Persist + 'static,
    {
        self.meta_then(map, key, fetch, |v| v)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Arc<Vec<DirEntry>>> {
        let (o, p) = (self.origin.clone(), path.to_path_buf());
        self.meta_then(
            &self.dirs,
            path.to_path_buf(),
            move || o.read_dir(&p).map(Arc::new),
            |list| self.resolve_kinds(path, list),
        )
    }

    fn stat_many(&self, paths: &[PathBuf], parallel: usize) -> Vec<(io::Result<Attr>, Duration)> {
        let ttl = self.cfg.attr_ttl;
        let mut out: Vec<Option<(io::Result<Attr>, Duration)>> = paths
            .iter()
            .map(|p| match self.attrs.get_aged(p.as_path()) {
                Some((Ok(a), age)) => Some((Ok(a), ttl.saturating_sub(age))),
                Some((Err(e), age)) => Some((
                    Err(io::Error::from_raw_os_error(e)),
                    ttl.saturating_sub(age),
                )),
                None => None,
            })
            .collect();
        let todo: Vec<usize> = (0..paths.len()).filter(|&i| out[i].is_none()).collect();
        let asked: Vec<&Path> = todo.iter().map(|&i| paths[i].as_path()).collect();
        for (i, r) in todo.iter().zip(self.stat_origin_many(&asked, parallel)) {
            out[*i] = Some((r, self.cfg.attr_ttl));
        }
        out.into_iter()
            .map(|r| r.expect("every entry answered"))
            .collect()
    }

    /// `meta`, with `then` applied on this thread to a fresh answer before it is cached.
    fn meta_then<K, V>(
        &self,
        map: &TtlMap<K, Result<V, i32>>,
        key: K,
        fetch: impl FnOnce() -> io::Result<V> + Send + 'static,
        then: impl FnOnce(V) -> V,
    ) -> io::Result<V>
    where
        K: std::hash::Hash + Eq + meta::Weight + meta_log::Persist,
        V: Clone + Send + meta::Weight + meta_log::Persist + 'static,
    {
        if let Some(r) = map.get(&key) {
            return r.map_err(io::Error::from_raw_os_error);
        }
        let r = if self.guard.is_down() {
            Err(OriginGuard::down_error())
        } else {
            self.guard.call(fetch)
        };
        match r {
            Err(e) if stale_ok(&e) => match map.get_stale(&key) {
                Some(r) => {
                    self.served_stale(&e);
                    r.map_err(io::Error::from_raw_os_error)
                }
                None => {
                    stats::inc(&self.stats.origin_unreachable);
                    Err(e)
                }
            },
            r => {
                let r = r.map(then);
                if let Some(v) = cacheable(&r) {
                    map.insert(key, v);
                }
                r
            }
        }
    }

    /// Fills in the kinds a listing left unknown, asking the origin for all of them at
    /// once. The answers refresh the attribute cache too, so a readdirplus of the same
    /// directory does not ask again. An entry gone since the listing is left out.
    fn resolve_kinds(&self, dir: &Path, list: Arc<Vec<DirEntry>>) -> Arc<Vec<DirEntry>> {
        let unknown: Vec<PathBuf> = list
            .iter()
            .filter(|e| e.kind == FileKind::Unknown)
            .map(|e| dir.join(&e.name))
            .collect();
        if unknown.is_empty() {
            return list;
        }
        let asked: Vec<&Path> = unknown.iter().map(PathBuf::as_path).collect();
        let mut answers = self.stat_origin_many(&asked, LISTING_WIDTH).into_iter();
        let mut out = Vec::with_capacity(list.len());
        for e in list.iter() {
            let mut e = e.clone();
            if e.kind == FileKind::Unknown {
                match answers.next() {
                    Some(Ok(a)) => e.kind = a.kind,
                    Some(Err(err)) if err.raw_os_error() == Some(ENOENT) => continue,
                    // Could not ask: a file is the safe guess (its lookup will tell).
                    _ => e.kind = FileKind::File,
                }
            }
            out.push(e);
        }
        Arc::new(out)
    }

    /// Counts (and now and then logs) an answer given from the cache because the
    /// origin could not be asked.
    fn served_stale(&self, e: &io::Error) {
        stats::inc(&self.stats.origin_unreachable);
        stats::inc(&self.stats.stale_served);
        let n = self.stale_warned.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() {
            tracing::warn!(
                error = %e,
                served = n + 1,
                "the origin cannot be reached; serving what the cache last confirmed with it"
            );
        }
    }

    fn notify(&self, path: &Path) {
        let l = self.listener.read().clone();
        if let Some(l) = l {
            l(path);
        }
    }

    /// Asks the origin for attributes, refreshes the cache, and invalidates the active
    /// object if its token changed.
    fn stat_origin(&self, path: &Path) -> io::Result<Attr> {
        let r = if self.guard.is_down() {
            Err(OriginGuard::down_error())
        } else {
            stats::inc(&self.stats.revalidations);
            let (o, p) = (self.origin.clone(), path.to_path_buf());
            self.guard.call(move || o.stat(&p))
        };
        self.stat_answered(path, r)
    }

    /// `stat_origin` for many paths: asked of the origin at once, `width` at a time.
    fn stat_origin_many(&self, paths: &[&Path], width: usize) -> Vec<io::Result<Attr>> {
        let answers = if self.guard.is_down() {
            paths
                .iter()
                .map(|_| Err(OriginGuard::down_error()))
                .collect()
        } else {
            stats::add(&self.stats.revalidations, paths.len() as u64);
            let calls = paths
                .iter()
                .map(|p| {
                    let (o, p) = (self.origin.clone(), p.to_path_buf());
                    Box::new(move || o.stat(&p)) as guard::Call<Attr>
                })
                .collect();
            self.guard.call_all(calls, width)
        };
        paths
            .iter()
            .zip(answers)
            .map(|(p, r)| self.stat_answered(p, r))
            .collect()
    }

    /// What the origin said of `path` (or that it could not be asked): the cache is
    /// refreshed, a changed token invalidates the object, an unreachable origin serves
    /// what it last confirmed.
    fn stat_answered(&self, path: &Path, r: io::Result<Attr>) -> io::Result<Attr> {
        match r {
            // Unreachable: the version the origin last confirmed stays valid.
            Err(e) if stale_ok(&e) => match self.attrs.get_stale(path) {
                Some(Ok(a)) => {
                    self.served_stale(&e);
                    Ok(a)
                }
                Some(Err(code)) => {
                    self.served_stale(&e);
                    Err(io::Error::from_raw_os_error(code))
                }
                None => {
                    stats::inc(&self.stats.origin_unreachable);
                    Err(e)
                }
            },
            Ok(a) => {
                if a.kind == FileKind::Symlink {
                    self.check_link(path, &a);
                }
                self.attrs.insert(path.to_path_buf(), Ok(a.clone()));
                if a.kind == FileKind::File {
                    self.check_token(path, &a.token);
                } else {
                    self.forget_object(path);
                }
                Ok(a)
            }
            Err(e) => {
                if e.raw_os_error() == Some(ENOENT) {
                    self.attrs.insert(path.to_path_buf(), Err(ENOENT));
                    self.forget_object(path);
                }
                Err(e)
            }
        }
    }

    /// A symlink whose attributes changed may point elsewhere now (a link removed and
    /// made again, often with the same inode number): its cached target goes. Also
    /// when nothing was known of it: the target may have been kept longer than the
    /// attributes.
    fn check_link(&self, path: &Path, a: &Attr) {
        let same = matches!(self.attrs.get_stale(path),
            Some(Ok(prev)) if prev.kind == FileKind::Symlink && prev.token == a.token);
        if !same {
            self.links.remove(path);
        }
    }

    /// Invalidates what is cached for `path` if it is not of version `token`.
    fn check_token(&self, path: &Path, token: &Token) {
        let stale = {
            let mut objs = self.objects.lock();
            match objs.get(path) {
                Some(o) if &o.token != token => objs.remove(path),
                _ => None,
            }
        };
        if let Some(o) = stale {
            self.invalidate(&o);
        } else if let Some(d) = &self.disk {
            // Not active: a cached version on disk that is no longer current goes.
            if let Some((id, t)) = d.lookup(path.as_os_str().as_encoded_bytes())
                && &t != token
            {
                d.drop_object(id);
                stats::inc(&self.stats.invalidations);
            }
        }
    }

    /// The path no longer names a regular file at the origin.
    fn forget_object(&self, path: &Path) {
        let gone = self.objects.lock().remove(path);
        if let Some(o) = gone {
            self.invalidate(&o);
        } else if let Some(d) = &self.disk
            && d.lookup(path.as_os_str().as_encoded_bytes()).is_some()
        {
            d.drop_path(path.as_os_str().as_encoded_bytes());
            stats::inc(&self.stats.invalidations);
        }
    }

    /// Kills an object version: its blocks leave every tier. Reads in progress on it
    /// finish with the bytes of that version.
    fn invalidate(&self, o: &Arc<Object>) {
        if o.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        stats::inc(&self.stats.invalidations);
        let ram_runs: Vec<Range<u64>> = {
            let st = o.lock();
            st.tree
                .iter()
                .filter(|(_, b)| b & bits::RAM != 0)
                .map(|(r, _)| r)
                .collect()
        };
        for r in ram_runs {
            self.ram
                .remove_range(o.id, r.start / o.bs, r.end.div_ceil(o.bs));
        }
        if let Some(d) = &self.disk {
            d.drop_object(o.id);
        }
        *o.file.lock() = None;
        self.notify(&o.path);
    }

    /// A new object version, with the blocks the disk tier holds of it.
    fn new_object(
        &self,
        path: &Path,
        id: u64,
        token: Token,
        on_disk: Vec<Range<u64>>,
        validated_ns: u64,
    ) -> Arc<Object> {
        let o = Arc::new(Object::new(
            path.to_path_buf(),
            id,
            token,
            self.cfg.block_size as u64,
            validated_ns,
        ));
        {
            let mut st = o.lock();
            for r in on_disk {
                st.tree.set(o.bytes_of(r), bits::DISK);
            }
        }
        o
    }

    /// The live object version for `path` with the token in `attr`, creating it (and
    /// invalidating an older one) if needed.
    fn object_for(&self, path: &Path, attr: &Attr) -> io::Result<Arc<Object>> {
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(io::Error::from_raw_os_error(21)), // EISDIR
            _ => return Err(io::Error::from_raw_os_error(22)),             // EINVAL
        }
        let now = self.now_ns();
        let mut objs = self.objects.lock();
        if let Some(o) = objs.get(path) {
            if o.token == attr.token && !o.is_dead() {
                o.validated_ns.store(now, Ordering::Release);
                return Ok(o.clone());
            }
            let old = objs.remove(path).expect("present");
            drop(objs);
            self.invalidate(&old);
            objs = self.objects.lock();
            if let Some(o) = objs.get(path) {
                // Someone else made the new version meanwhile.
                if o.token == attr.token && !o.is_dead() {
                    return Ok(o.clone());
                }
            }
        }
        let key = path.as_os_str().as_encoded_bytes();
        let (id, on_disk) = match &self.disk {
            Some(d) => match d.lookup(key) {
                Some((id, t)) if t == attr.token => (id, d.present(id)),
                _ => {
                    let id = d.allocate_id();
                    d.register(id, key, attr.token.clone());
                    (id, Vec::new())
                }
            },
            None => (self.ids.fetch_add(1, Ordering::Relaxed), Vec::new()),
        };
        let o = self.new_object(path, id, attr.token.clone(), on_disk, now);
        if objs.len() >= MAX_ACTIVE {
            // Forget idle versions nobody holds; their blocks stay in the tiers.
            objs.retain(|_, o| Arc::strong_count(o) > 1);
        }
        objs.insert(path.to_path_buf(), o.clone());
        Ok(o)
    }

    /// The handle's object, revalidated with the origin if its TTL has passed.
    fn current(&self, h: &Handle) -> io::Result<Arc<Object>> {
        let obj = h.cur.lock().clone();
        // 0 means "ask the origin now" (a fetch saw the file change).
        let validated = obj.validated_ns.load(Ordering::Acquire);
        let age = self.now_ns().saturating_sub(validated);
        if !obj.is_dead() && validated != 0 && age < self.cfg.attr_ttl.as_nanos() as u64 {
            return Ok(obj);
        }
        let attr = match self.stat_origin(&obj.path) {
            // An open handle stays with its file: if another file now has its name
            // (replaced by rename), the handle is stale, as on NFS.
            Ok(a) if a.kind == FileKind::File && a.same_file(&obj.token) => a,
            Ok(_) => return Err(io::Error::from_raw_os_error(ESTALE)),
            Err(e) if e.raw_os_error() == Some(ENOENT) => {
                return Err(io::Error::from_raw_os_error(ESTALE));
            }
            Err(e) => return Err(e),
        };
        let fresh = self.object_for(&obj.path, &attr)?;
        h.switch(fresh.clone());
        Ok(fresh)
    }

    fn read(&self, h: &Handle, off: u64, len: usize) -> io::Result<ReadBuf> {
        stats::inc(&self.stats.reads);
        // A fetch that sees the file change makes the read start over on the new
        // version, so one read never mixes two versions. If the file keeps changing,
        // the last try reads the range from the origin in one request, uncached.
        for attempt in 0..3 {
            let obj = self.current(h)?;
            let size = obj.size();
            if len == 0 || off >= size {
                return Ok(ReadBuf::default());
            }
            let end = (off + len as u64).min(size);
            if attempt == 2 {
                return self.read_direct(&obj, off, end);
            }
            let ra = if attempt == 0 {
                self.plan_readahead(h, &obj, off, end)
            } else {
                None
            };
            let b0 = off / obj.bs;
            let mut got: Vec<Option<Bytes>> = vec![None; (end.div_ceil(obj.bs) - b0) as usize];
            let mut whole = None;
            let gathered = self.gather(&obj, b0, &mut got, &mut whole)?;
            // Read-ahead goes out after the reader's own fetch: on an origin with
            // one connection (sshfs) its bytes would otherwise arrive first.
            if let Some(ra) = ra {
                self.start_readahead(&obj, ra);
            }
            match gathered {
                Gathered::Complete => return Ok(self.assemble(&obj, off, end, got, whole)),
                Gathered::Changed => continue,
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Counts a reader's wait for an origin request that began at `t0` and the part
    /// of it the origin itself took.
    fn note_origin_time(&self, t0: Instant, took: Duration) {
        stats::add(&self.stats.origin_wait_us, t0.elapsed().as_micros() as u64);
        stats::add(&self.stats.origin_read_us, took.as_micros() as u64);
    }

    /// Reads a range straight from a freshly opened origin file, uncached.
    fn read_direct(&self, obj: &Object, off: u64, end: u64) -> io::Result<ReadBuf> {
        if self.guard.is_down() {
            stats::inc(&self.stats.origin_unreachable);
            return Err(OriginGuard::down_error());
        }
        let (o, p) = (self.origin.clone(), obj.path.clone());
        let len = (end - off) as usize;
        stats::inc(&self.stats.origin_requests);
        let t0 = Instant::now();
        let (buf, took) = self
            .guard
            .call(move || {
                let t1 = Instant::now();
                let file = o.open(&p)?;
                let mut buf = BytesMut::zeroed(len);
                let n = crate::origin::read_vectored_by(&mut [&mut buf[..]], off, |b, at| {
                    file.read_at(b, at)
                })?;
                buf.truncate(n);
                Ok((buf, t1.elapsed()))
            })
            .inspect_err(|_| stats::inc(&self.stats.origin_errors))?;
        self.note_origin_time(t0, took);
        let n = buf.len();
        stats::add(&self.stats.origin_bytes, n as u64);
        stats::add(&self.stats.read_bytes, n as u64);
        Ok(ReadBuf {
            len: n,
            parts: vec![buf.freeze()],
        })
    }

    /// Joins the blocks of a read, stopping at the first gap or short block (the
    /// file shrank). Blocks that came as one buffer go out as one slice of it (a
    /// reply in one piece: no copy to join them).
    fn assemble(
        &self,
        obj: &Object,
        off: u64,
        end: u64,
        got: Vec<Option<Bytes>>,
        whole: Option<Bytes>,
    ) -> ReadBuf {
        let bs = obj.bs;
        let b0 = off / bs;
        if let Some(w) = whole {
            let start = (off - b0 * bs) as usize;
            let stop = ((end - b0 * bs) as usize).min(w.len());
            let len = stop.saturating_sub(start);
            stats::add(&self.stats.read_bytes, len as u64);
            return ReadBuf {
                parts: if len > 0 {
                    vec![w.slice(start..stop)]
                } else {
                    Vec::new()
                },
                len,
            };
        }

        let mut buf = ReadBuf::default();
        let mut pos = off;
        for (i, b) in got.into_iter().enumerate() {
            let blk = b0 + i as u64;
            let Some(b) = b else { break };
            let start = (pos - blk * bs) as usize;
            let stop = ((end - blk * bs) as usize).min(b.len());
            if start >= stop {
                break;
            }
            buf.len += stop - start;
            pos += (stop - start) as u64;
            let full = b.len() == obj.block_len(blk);
            buf.parts.push(b.slice(start..stop));
            if !full {
                break;
            }
        }
        stats::add(&self.stats.read_bytes, buf.len as u64);
        buf
    }

    /// Fills `got` (blocks b0.. of `obj`) from the tiers and, for what is missing,
    /// from the origin, with one fetch in flight per block. `whole` gets all of
    /// `got` as one buffer when a single disk read supplied every block.
    fn gather(
        &self,
        obj: &Arc<Object>,
        b0: u64,
        got: &mut [Option<Bytes>],
        whole: &mut Option<Bytes>,
    ) -> io::Result<Gathered> {
        let mut round = 0;
        loop {
            round += 1;
            let key = |i: usize| BlockKey {
                obj: obj.id,
                blk: b0 + i as u64,
            };
            // RAM.
            let mut ram_missed: Vec<u64> = Vec::new();
            let mut ram_hit: Vec<(u64, Bytes)> = Vec::new();
            for (i, slot) in got.iter_mut().enumerate() {
                if slot.is_none() {
                    match self.ram.get(&key(i)) {
                        Some(b) => {
                            stats::inc(&self.stats.ram_hits);
                            stats::add(&self.stats.ram_hit_bytes, b.len() as u64);
                            if self.disk.is_some() {
                                ram_hit.push((b0 + i as u64, b.clone()));
                            }
                            *slot = Some(b);
                        }
                        None => ram_missed.push(b0 + i as u64),
                    }
                }
            }
            if !ram_hit.is_empty() {
                self.refill(obj, ram_hit);
            }
            if ram_missed.is_empty() {
                return Ok(Gathered::Complete);
            }
            // Blocks on their way to disk.
            {
                let mut st = obj.lock();
                for &blk in &ram_missed {
                    let i = (blk - b0) as usize;
                    if let Some(b) = st.filling.get(&blk) {
                        stats::inc(&self.stats.inflight_hits);
                        got[i] = Some(b.clone());
                    }
                    // The RAM hint was stale (evicted).
                    st.tree.clear(obj.bytes_of(blk..blk + 1), bits::RAM);
                }
            }
            // Disk, one read per run of missing blocks.
            if let Some(disk) = &self.disk {
                let mut i = 0;
                while i < got.len() {
                    if got[i].is_some() {
                        i += 1;
                        continue;
                    }
                    let start = i;
                    while i < got.len() && got[i].is_none() {
                        i += 1;
                    }
                    let first = b0 + start as u64;
                    let (res, one) = disk.read_whole(obj.id, first, (i - start) as u64);
                    if start == 0 && i == got.len() {
                        *whole = one;
                    }
                    // A long run is left to the kernel's page cache, not promoted:
                    // its blocks are slices of one buffer, which the RAM tier would
                    // keep alive whole.
                    let promote = i - start <= LONG_RUN;
                    let mut promoted = Vec::new();
                    let mut absent = Vec::new();
                    for (j, b) in res.into_iter().enumerate() {
                        let blk = first + j as u64;
                        match b {
                            Some(b) => {
                                stats::inc(&self.stats.disk_hits);
                                stats::add(&self.stats.disk_hit_bytes, b.len() as u64);
                                if promote && self.ram.put(BlockKey { obj: obj.id, blk }, b.clone())
                                {
                                    stats::inc(&self.stats.promotions);
                                    promoted.push(blk);
                                }
                                got[start + j] = Some(b);
                            }
                            None => absent.push(blk),
                        }
                    }
                    let mut st = obj.lock();
                    for blk in promoted {
                        st.tree.set(obj.bytes_of(blk..blk + 1), bits::RAM);
                    }
                    for (j, b) in got[start..i].iter().enumerate() {
                        if b.is_some() {
                            let blk = first + j as u64;
                            st.tree
                                .set(obj.bytes_of(blk..blk + 1), bits::DISK | bits::VERIFIED);
                        }
                    }
                    for blk in absent {
                        st.tree.clear(obj.bytes_of(blk..blk + 1), bits::DISK);
                    }
                }
            }
            let missing: Vec<u64> = got
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_none())
                .map(|(i, _)| b0 + i as u64)
                .collect();
            if missing.is_empty() {
                return Ok(Gathered::Complete);
            }
            // Origin: claim what nobody fetches, wait for the rest.
            let Claimed {
                mine: claims,
                theirs,
                arrived,
            } = if round > 3 {
                // Others keep losing these blocks (a tiny RAM tier, failing fetches):
                // stop waiting and fetch them ourselves, uncoordinated.
                Claimed {
                    mine: Vec::new(),
                    theirs: missing.clone(),
                    arrived: Vec::new(),
                }
            } else {
                let mut st = obj.lock();
                obj.claim(&mut st, &missing, |blk| {
                    self.ram.contains(&BlockKey { obj: obj.id, blk })
                })
            };
            for claim in claims {
                for c in self.split(claim) {
                    let first = c.blocks.start;
                    stats::add(&self.stats.misses, c.blocks.end - c.blocks.start);
                    let count = (c.blocks.end - c.blocks.start) as usize;
                    let Fetched { data, cached } = self.fetch(obj, c, false)?;
                    if !cached {
                        return Ok(Gathered::Changed);
                    }
                    let short = data.len() < count
                        || data
                            .iter()
                            .enumerate()
                            .any(|(j, b)| b.len() != obj.block_len(first + j as u64));
                    for (j, b) in data.into_iter().enumerate() {
                        got[(first - b0) as usize + j] = Some(b);
                    }
                    if short {
                        // The file is shorter than its token said: what follows is
                        // past its end now.
                        return Ok(Gathered::Complete);
                    }
                }
            }
            if theirs.is_empty() {
                if arrived.is_empty() {
                    return Ok(Gathered::Complete);
                }
                continue;
            }
            if round > 3 {
                let first = theirs[0];
                let last = *theirs.last().expect("non-empty");
                let (data, same) = self.read_origin(obj, first..last + 1, false)?;
                if !same {
                    return Ok(Gathered::Changed);
                }
                for (j, b) in data.into_iter().enumerate() {
                    let i = (first - b0) as usize + j;
                    if got[i].is_none() {
                        got[i] = Some(b);
                    }
                }
                return Ok(Gathered::Complete);
            }
            stats::inc(&self.stats.fetch_waits);
            obj.wait_clear(&theirs, bits::FETCHING);
        }
    }

    /// Splits a claim into runs of at most `max_fetch` bytes.
    fn split(&self, claim: Claim) -> Vec<Claim> {
        let per = (self.cfg.max_fetch / claim.obj.bs).max(1);
        if claim.blocks.end - claim.blocks.start <= per {
            return vec![claim];
        }
        let mut out = Vec::new();
        let mut s = claim.blocks.start;
        while s < claim.blocks.end {
            let e = (s + per).min(claim.blocks.end);
            out.push(Claim {
                obj: claim.obj.clone(),
                blocks: s..e,
            });
            s = e;
        }
        // The parts now hold the FETCHING marks; the emptied whole clears nothing.
        let mut whole = claim;
        whole.blocks = whole.blocks.start..whole.blocks.start;
        out
    }

    /// Fetches a claimed run from the origin in one request, caches it unless the file
    /// changed meanwhile, and returns the blocks (possibly fewer or shorter at EOF).
    fn fetch(&self, obj: &Arc<Object>, claim: Claim, readahead: bool) -> io::Result<Fetched> {
        let blocks = claim.blocks.clone();
        let (data, cached) = self.read_origin(obj, blocks.clone(), readahead)?;
        if !cached {
            return Ok(Fetched { data, cached });
        }
        let mut in_ram = Vec::new();
        for (j, b) in data.iter().enumerate() {
            let blk = blocks.start + j as u64;
            if self.ram.put(BlockKey { obj: obj.id, blk }, b.clone()) {
                in_ram.push(blk);
            }
        }
        let fill = self.disk.is_some() && !obj.is_dead();
        {
            let mut st = obj.lock();
            for &blk in &in_ram {
                st.tree.set(obj.bytes_of(blk..blk + 1), bits::RAM);
            }
            if fill {
                for (j, b) in data.iter().enumerate() {
                    st.filling.insert(blocks.start + j as u64, b.clone());
                }
                st.tree.set(obj.bytes_of(blocks.clone()), bits::FILLING);
            }
        }
        if fill {
            self.queue_fill(FillJob {
                obj: obj.clone(),
                first: blocks.start,
                blocks: data.clone(),
            });
        }
        // Waiters wake now and find the blocks in RAM or among those filling.
        drop(claim);
        Ok(Fetched { data, cached })
    }

    /// One origin request for a block run. Returns the blocks read (the last may be
    /// short, some may be missing at EOF) and whether they are of the object's version
    /// and complete, so that they may be cached.
    fn read_origin(
        &self,
        obj: &Arc<Object>,
        blocks: Range<u64>,
        readahead: bool,
    ) -> io::Result<(Vec<Bytes>, bool)> {
        if self.guard.is_down() {
            stats::inc(&self.stats.origin_unreachable);
            return Err(OriginGuard::down_error());
        }
        let file = obj
            .origin_file(|| {
                let (o, p) = (self.origin.clone(), obj.path.clone());
                self.guard.call(move || o.open(&p))
            })
            .inspect_err(|e| {
                stats::inc(&self.stats.origin_errors);
                if unreachable(e) {
                    stats::inc(&self.stats.origin_unreachable);
                }
                // Probably gone or replaced: make the next read ask the origin.
                obj.validated_ns.store(0, Ordering::Release);
            })
            .map_err(|e| {
                if e.raw_os_error() == Some(ENOENT) {
                    // The handle's file is gone from the origin.
                    io::Error::from_raw_os_error(ESTALE)
                } else {
                    e
                }
            })?;
        let bufs: Vec<BytesMut> = blocks
            .clone()
            .map(|b| BytesMut::zeroed(obj.block_len(b)))
            .collect();
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        stats::inc(&self.stats.origin_requests);
        if readahead {
            stats::inc(&self.stats.readahead_requests);
        }
        let off = blocks.start * obj.bs;
        // The buffers travel to the worker and back: a read abandoned at its deadline
        // still has somewhere to write.
        let t0 = Instant::now();
        let (bufs, n, token, took) = self
            .guard
            .call(move || {
                let t1 = Instant::now();
                let mut bufs = bufs;
                let n = {
                    let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                    file.read_vectored_at(&mut slices, off)?
                };
                let token = if n == want { file.token().ok() } else { None };
                Ok((bufs, n, token, t1.elapsed()))
            })
            .inspect_err(|e| {
                stats::inc(&self.stats.origin_errors);
                if unreachable(e) {
                    stats::inc(&self.stats.origin_unreachable);
                }
            })?;
        stats::add(&self.stats.origin_bytes, n as u64);
        if readahead {
            stats::add(&self.stats.readahead_bytes, n as u64);
        } else {
            self.note_origin_time(t0, took);
        }
        let same = n == want && token.as_ref() == Some(&obj.token);
        if !same {
            stats::inc(&self.stats.origin_changed);
            obj.validated_ns.store(0, Ordering::Release);
        }
        // Cut the buffers down to what was read.
        let mut left = n;
        let mut out = Vec::with_capacity(bufs.len());
        for mut b in bufs {
            if left == 0 {
                break;
            }
            let take = b.len().min(left);
            b.truncate(take);
            left -= take;
            out.push(b.freeze());
        }
        Ok((out, same))
    }

    /// Offers the disk tier blocks found in RAM that it does not hold and that are
    /// not on their way (their first fill was dropped because the queue was full).
    fn refill(&self, obj: &Arc<Object>, hits: Vec<(u64, Bytes)>) {
        if obj.is_dead() {
            return;
        }
        let mut runs: Vec<FillJob> = Vec::new();
        {
            let mut st = obj.lock();
            for (blk, b) in hits {
                let r = obj.bytes_of(blk..blk + 1);
                if st.tree.test_any(r.clone(), bits::DISK | bits::FILLING) {
                    continue;
                }
                st.tree.set(r, bits::FILLING);
                st.filling.insert(blk, b.clone());
                match runs.last_mut() {
                    Some(j) if j.first + j.blocks.len() as u64 == blk => j.blocks.push(b),
                    _ => runs.push(FillJob {
                        obj: obj.clone(),
                        first: blk,
                        blocks: vec![b],
                    }),
                }
            }
        }
        for job in runs {
            self.queue_fill(job);
        }
    }

    fn queue_fill(&self, job: FillJob) {
        let bytes = job.bytes();
        let n = job.blocks.len() as u64;
        let inflight = &self.stats.inflight_fill_bytes;
        let tx = self.fill_tx.read().clone();
        let queued = match tx {
            Some(tx) if inflight.load(Ordering::Relaxed) + bytes <= self.cfg.fill_queue_bytes => {
                let now = inflight.fetch_add(bytes, Ordering::Relaxed) + bytes;
                self.stats
                    .inflight_fill_peak
                    .fetch_max(now, Ordering::Relaxed);
                match tx.send(job) {
                    Ok(()) => None,
                    Err(e) => {
                        inflight.fetch_sub(bytes, Ordering::Relaxed);
                        Some(e.into_inner())
                    }
                }
            }
            _ => Some(job),
        };
        match queued {
            None => stats::add(&self.stats.fills_queued, n),
            Some(job) => {
                stats::add(&self.stats.fills_dropped, n);
                self.fill_finished(&job, &vec![false; job.blocks.len()]);
                let mut d = self.dropped.lock();
                if d.len() >= MAX_DROPPED_RUNS
                    && let Some(old) = d.pop_front()
                {
                    self.stats
                        .dropped_fill_blocks
                        .fetch_sub(old.blocks.end - old.blocks.start, Ordering::Relaxed);
                }
                let o = &job.obj;
                match d.back_mut() {
                    // The next run of the same version: one record.
                    Some(last) if last.id == o.id && last.blocks.end == job.first => {
                        last.blocks.end = job.first + n;
                    }
                    _ => d.push_back(Dropped {
                        path: o.path.clone(),
                        token: o.token.clone(),
                        id: o.id,
                        blocks: job.first..job.first + n,
                    }),
                }
                stats::add(&self.stats.dropped_fill_blocks, n);
            }
        }
    }

    /// Bytes the fill queue can still take; unbounded without a disk tier.
    fn fill_room(&self) -> u64 {
        if self.disk.is_none() {
            return u64::MAX;
        }
        let inflight = self.stats.inflight_fill_bytes.load(Ordering::Relaxed);
        self.cfg.fill_queue_bytes.saturating_sub(inflight)
    }

    /// Clears the FILLING state of a job's blocks; marks those stored as on disk.
    fn fill_finished(&self, job: &FillJob, done: &[bool]) {
        let o = &job.obj;
        let mut st = o.lock();
        for (j, ok) in done.iter().enumerate() {
            let blk = job.first + j as u64;
            st.filling.remove(&blk);
            let r = o.bytes_of(blk..blk + 1);
            st.tree.clear(r.clone(), bits::FILLING);
            if *ok {
                // Written by us from bytes checked against the origin's token.
                st.tree.set(r, bits::DISK | bits::VERIFIED);
            }
        }
    }

    /// The disk writer: batches queued fills into group commits; when idle, lets the
    /// disk tier do its upkeep.
    fn fill_loop(&self, disk: &DiskTier, rx: Receiver<FillJob>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(job) => {
                    let deadline = Instant::now() + self.cfg.commit_interval;
                    let mut batch = vec![job];
                    let mut bytes = batch[0].bytes();
                    let mut closed = false;
                    while bytes < FILL_BATCH_BYTES {
                        let wait = deadline.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(wait) {
                            Ok(j) => {
                                bytes += j.bytes();
                                batch.push(j);
                            }
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    self.commit(disk, batch);
                    self.keep_meta(false);
                    if closed {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.keep_meta(false);
                    self.retry_dropped();
                    while disk.maintain() && rx.is_empty() {}
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Writes the metadata journal (once a second, or `now`), and rewrites it from
    /// the live entries when it is mostly history.
    fn keep_meta(&self, now: bool) {
        let Some(log) = &self.meta_log else { return };
        let every = if now {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        };
        if let Err(e) = log.flush(every) {
            tracing::debug!(error = %e, "cannot write the metadata journal");
            return;
        }
        let live = (self.attrs.bytes()
            + self.dirs.bytes()
            + self.links.bytes()
            + self.xattrs.bytes()
            + self.xattr_lists.bytes()) as u64;
        if log.len() > (4 * live).max(META_LOG_MIN) {
            let mut out = Vec::new();
            self.attrs.records(&mut out);
            self.dirs.records(&mut out);
            self.links.records(&mut out);
            self.xattrs.records(&mut out);
            self.xattr_lists.records(&mut out);
            if let Err(e) = log.rewrite(out) {
                tracing::debug!(error = %e, "cannot rewrite the metadata journal");
            }
        }
    }

    /// The object a dropped run belongs to, if that version is still the one cached:
    /// the active one, or (forgotten since) made again from the disk index, where it
    /// was registered when first read. Never confirmed with the origin here: a fetch
    /// checks the origin file's token before anything is cached.
    fn revive(&self, run: &Dropped) -> Option<Arc<Object>> {
        let mut objs = self.objects.lock();
        if let Some(o) = objs.get(&run.path) {
            return (o.id == run.id && !o.is_dead()).then(|| o.clone());
        }
        let d = self.disk.as_ref()?;
        let key = run.path.as_os_str().as_encoded_bytes();
        match d.lookup(key) {
            Some((id, t)) if id == run.id && t == run.token => {}
            _ => return None,
        }
        // validated 0: whoever opens it asks the origin first.
        let o = self.new_object(&run.path, run.id, run.token.clone(), d.present(run.id), 0);
        if objs.len() >= MAX_ACTIVE {
            objs.retain(|_, o| Arc::strong_count(o) > 1);
        }
        objs.insert(run.path.clone(), o.clone());
        Some(o)
    }

    /// Offers the disk again the runs whose fill was dropped, as much as the queue
    /// takes, in pieces that fit it: the blocks still in RAM from there, the others
    /// (evicted meanwhile: a file larger than RAM read while the writer was behind)
    /// fetched again from the origin. One read of a file then caches all of it.
    fn retry_dropped(&self) {
        let per = (self.cfg.fill_queue_bytes / self.cfg.block_size as u64).max(1);
        let pending = &self.stats.dropped_fill_blocks;
        loop {
            let Some(run) = self.dropped.lock().pop_front() else {
                return;
            };
            let (start, end) = (run.blocks.start, run.blocks.end);
            let blocks = run.blocks.clone();
            let Some(obj) = self.revive(&run) else {
                // That version is gone (changed at the origin, or evicted).
                pending.fetch_sub(end - start, Ordering::Relaxed);
                continue;
            };
            // The run stays counted in `pending` until what replaces it (queued
            // fills, refetches, the part put back) is counted, so the gauge never
            // reads 0 while something is still on its way.
            let put_back = |from: u64| {
                if from < end {
                    self.dropped.lock().push_front(Dropped {
                        blocks: from..end,
                        path: run.path.clone(),
                        token: run.token.clone(),
                        ..run
                    });
                }
                pending.fetch_sub(from.min(end) - start, Ordering::Relaxed);
            };
            if obj.is_dead() {
                put_back(end);
                continue;
            }
            let hits: Vec<(u64, Bytes)> = blocks
                .filter_map(|blk| {
                    let key = BlockKey { obj: obj.id, blk };
                    self.ram.get(&key).map(|b| (blk, b))
                })
                .collect();
            for part in hits.chunks(per as usize) {
                let bytes: u64 = part.iter().map(|(_, b)| b.len() as u64).sum();
                if self.fill_room() < bytes {
                    // The queue is full again: the run waits for the next idle
                    // moment whole (what went out is skipped then; what RAM lost
                    // is still to be fetched).
                    put_back(start);
                    return;
                }
                self.refill(&obj, part.to_vec());
            }
            // What RAM no longer holds: the blocks just offered are FILLING now,
            // so only those go to the origin.
            match self.refetch(&obj, start..end) {
                // The prefetch queue or the fill queue is full: the rest waits for
                // the next idle moment, after these fills are written.
                Some(at) => {
                    put_back(at);
                    return;
                }
                None => put_back(end),
            }
        }
    }

    /// Fetches the blocks of a range that no tier holds and nobody fetches, by the
    /// read-ahead threads, as far as the fill queue has room for them. Returns where
    /// it stopped, if before the end.
    fn refetch(&self, obj: &Arc<Object>, blocks: Range<u64>) -> Option<u64> {
        let Some(tx) = self.prefetch_tx.read().clone() else {
            return None; // no read-ahead threads: left to the next reader
        };
        let mut room = self.fill_room() / obj.bs;
        let claims = self.claim_uncached(obj, blocks);
        // Dropping a claim (the one refused, and the rest) releases its blocks.
        for mut c in claims.into_iter().flat_map(|c| self.split(c)) {
            let at = c.blocks.start;
            let n = (c.blocks.end - at).min(room);
            if n == 0 {
                return Some(at);
            }
            let stop = (c.keep_first(n) > 0).then_some(at + n);
            // Counted before the send: the worker takes it off when done.
            stats::add(&self.stats.dropped_fill_blocks, n);
            if tx.try_send(Prefetch::Refetch(c)).is_err() {
                self.stats
                    .dropped_fill_blocks
                    .fetch_sub(n, Ordering::Relaxed);
                return Some(at);
            }
            stats::add(&self.stats.fills_refetched, n);
            if stop.is_some() {
                return stop;
            }
            room -= n;
        }
        None
    }

    fn commit(&self, disk: &DiskTier, batch: Vec<FillJob>) {
        let mut fills = Vec::new();
        for job in &batch {
            if job.obj.is_dead() {
                continue;
            }
            for (j, b) in job.blocks.iter().enumerate() {
                fills.push(FillBlock {
                    key: BlockKey {
                        obj: job.obj.id,
                        blk: job.first + j as u64,
                    },
                    data: b.clone(),
                });
            }
        }
        let done = disk.write_batch(&fills);
        let mut k = 0;
        for job in &batch {
            let n = job.blocks.len();
            if job.obj.is_dead() {
                self.fill_finished(job, &vec![false; n]);
            } else {
                self.fill_finished(job, &done[k..k + n]);
                k += n;
            }
            self.stats
                .inflight_fill_bytes
                .fetch_sub(job.bytes(), Ordering::Relaxed);
        }
    }

    /// Sequential detection per handle: a read that starts near where the reading
    /// got to grows the window (doubling up to the maximum); any other read resets it.
    /// Near, not exactly: the kernel sends a sequential reader's requests several at
    /// a time, and they reach us on different threads in any order.
    fn plan_readahead(&self, h: &Handle, obj: &Object, off: u64, end: u64) -> Option<Range<u64>> {
        if self.cfg.readahead_max == 0 || self.cfg.prefetch_threads == 0 {
            return None;
        }
        let mut ra = h.ra.lock();
        let sequential = off <= ra.next + SEQ_SLACK && off + SEQ_SLACK >= ra.next;
        if !sequential {
            ra.next = end;
            ra.window = 0;
            return None;
        }
        ra.next = ra.next.max(end);
        ra.window = if ra.window == 0 {
            ((end - off) * 2).max(2 * obj.bs)
        } else {
            ra.window * 2
        }
        .min(self.cfg.readahead_max);
        let first = ra.next.div_ceil(obj.bs);
        let last = (ra.next + ra.window).min(obj.size()).div_ceil(obj.bs);
        (first < last).then_some(first..last)
    }

    /// Claims the blocks of a read-ahead window that are not cached or in flight and
    /// queues their fetches. A full queue drops them (and their claims).
    fn start_readahead(&self, obj: &Arc<Object>, blocks: Range<u64>) {
        // What the disk tier holds of the window is left to the kernel's own
        // read-ahead of the cache file (one open file per object, so it sees the
        // reader's pattern): asking for it with WILLNEED halved warm sequential reads,
        // as that reads into one-page folios and out of step with the reader.
        let mut claims = self.claim_uncached(obj, blocks);
        // Fetching ahead of a disk writer that is behind would only see the fills
        // dropped, and the blocks lost once RAM evicts them: fetch as much as the fill
        // queue has room for; the reader's own fetches still go out.
        let mut room = self.fill_room() / obj.bs;
        let mut held = 0;
        for c in &mut claims {
            let keep = (c.blocks.end - c.blocks.start).min(room);
            room -= keep;
            held += c.keep_first(keep);
        }
        if held > 0 {
            stats::add(&self.stats.readahead_held, held);
            claims.retain(|c| !c.blocks.is_empty());
        }
        if claims.is_empty() {
            return;
        }
        let tx = self.prefetch_tx.read().clone();
        let Some(tx) = tx else { return };
        for claim in claims {
            for c in self.split(claim) {
                match tx.try_send(Prefetch::Blocks(c)) {
                    Ok(()) => {}
                    // Dropping the claim releases its blocks.
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
                }
            }
        }
    }

    /// Claims the blocks of a range that no tier holds and nobody fetches, under one
    /// lock of the object.
    fn claim_uncached(&self, obj: &Arc<Object>, blocks: Range<u64>) -> Vec<Claim> {
        let mut st = obj.lock();
        let busy = bits::FETCHING | bits::FILLING | bits::DISK;
        let mut todo: Vec<u64> = Vec::new();
        for b in blocks {
            let r = obj.bytes_of(b..b + 1);
            if !st.tree.test_any(r, busy)
                && !self.ram.contains(&BlockKey {
                    obj: obj.id,
                    blk: b,
                })
            {
                todo.push(b);
            }
        }
        if todo.is_empty() {
            return Vec::new();
        }
        obj.claim(&mut st, &todo, |_| false).mine
    }

    /// Directory prefetch: a reader that opens a directory's files one after another
    /// in listing order (tar, cp -r, rsync) pays a few origin round trips per small
    /// file. Seeing that, fetch the next files ahead, several at once, with a window
    /// that doubles while the scan goes on, as read-ahead does within a file.
    fn note_open(&self, path: &Path) {
        let max = self.cfg.dir_prefetch_files;
        if max == 0 || self.cfg.prefetch_threads == 0 {
            return;
        }
        let Some((dir, ahead)) = self.advance_scan(&self.dir_scans, path, FileKind::File, max)
        else {
            return;
        };
        if self.fill_room() < self.cfg.fill_queue_bytes / 2 {
            // The disk writer is behind (see `start_readahead`).
            stats::add(&self.stats.readahead_held, ahead.len() as u64);
            return;
        }
        let tx = self.prefetch_tx.read().clone();
        let Some(tx) = tx else { return };
        for name in ahead {
            if tx.try_send(Prefetch::File(dir.join(name))).is_err() {
                // Busy: the files left out are fetched when the reader opens them.
                break;
            }
        }
    }

    /// A tree walk (`find`, `du`, `ls -R`) lists a directory's subdirectories one after
    /// the other in listing order: once it goes through them that way, the next ones
    /// are listed ahead of it, their entries' attributes too, with a window that
    /// doubles up to `LIST_AHEAD`. Off with directory prefetch.
    fn note_list(&self, path: &Path) {
        if self.cfg.dir_prefetch_files == 0 || self.cfg.prefetch_threads == 0 {
            return;
        }
        let Some((parent, ahead)) =
            self.advance_scan(&self.list_scans, path, FileKind::Dir, LIST_AHEAD)
        else {
            return;
        };
        let tx = self.prefetch_tx.read().clone();
        let Some(tx) = tx else { return };
        for name in ahead {
            let dir = parent.join(name);
            if self.dirs.get(&dir).is_some() {
                continue;
            }
            let (tx_done, done) = crossbeam_channel::bounded(0);
            {
                let mut m = self.lists_ahead.lock();
                if m.contains_key(&dir) {
                    continue; // on its way
                }
                m.insert(
                    dir.clone(),
                    ListAhead {
                        started: false,
                        done,
                    },
                );
            }
            if tx.try_send(Prefetch::Dir(dir.clone(), tx_done)).is_err() {
                // Busy: the walk lists the rest itself.
                self.lists_ahead.lock().remove(&dir);
                break;
            }
        }
    }

    /// Moves the scan of `path`'s parent on to `path`, an entry of kind `kind` in the
    /// parent's cached listing. Returns the parent and the names of the next entries
    /// of that kind to fetch ahead, if the reader is scanning and some are due.
    fn advance_scan(
        &self,
        scans: &Mutex<FxHashMap<PathBuf, DirScan>>,
        path: &Path,
        kind: FileKind,
        max: usize,
    ) -> Option<(PathBuf, Vec<OsString>)> {
        let (dir, name) = (path.parent()?, path.file_name()?);
        // Only a directory the reader listed: that is what a scan does first.
        let Some(Ok(list)) = self.dirs.get_stale(dir) else {
            return None;
        };
        let (from, to) = {
            let mut scans = scans.lock();
            let prev = scans.get(dir).copied();
            let hint = prev.map_or(0, |s| s.last + 1);
            let i = find_entry(&list, name, hint)?;
            let continues = match prev {
                Some(s) => i > s.last && i <= s.last + SCAN_SLACK,
                // The first entry of its kind starts a scan.
                None => list[..i].iter().all(|e| e.kind != kind),
            };
            let scan = if continues {
                let w = prev.map_or(0, |s| s.window);
                DirScan {
                    last: i,
                    window: if w == 0 { 4 } else { w * 2 }.min(max),
                    until: prev.map_or(0, |s| s.until).max(i + 1),
                }
            } else {
                DirScan {
                    last: i,
                    window: 0,
                    until: i + 1,
                }
            };
            // The window counts entries of the kind scanned, not all entries.
            let mut to = scan.until.max(i + 1);
            let mut n = list[i + 1..to.min(list.len())]
                .iter()
                .filter(|e| e.kind == kind)
                .count();
            while to < list.len() && n < scan.window {
                if list[to].kind == kind {
                    n += 1;
                }
                to += 1;
            }
            let to = to.max(scan.until);
            if scans.len() >= MAX_SCANS && prev.is_none() {
                scans.clear();
            }
            scans.insert(dir.to_path_buf(), DirScan { until: to, ..scan });
            (scan.until, to)
        };
        let ahead: Vec<OsString> = list[from.min(to)..to.min(list.len())]
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.name.clone())
            .collect();
        (!ahead.is_empty()).then(|| (dir.to_path_buf(), ahead))
    }

    /// Lists a directory a tree walk will probably reach, with its first entries'
    /// attributes, unless that is cached already.
    fn prefetch_dir(&self, dir: &Path) {
        if let Some(a) = self.lists_ahead.lock().get_mut(dir) {
            a.started = true;
        }
        if self.dirs.get(dir).is_none() {
            stats::inc(&self.stats.list_prefetches);
        }
        if let Ok(list) = self.read_dir(dir) {
            let paths: Vec<PathBuf> = list
                .iter()
                .take(LIST_AHEAD_ATTRS)
                .map(|e| dir.join(&e.name))
                .collect();
            self.stat_many(&paths, LISTING_WIDTH);
        }
        self.lists_ahead.lock().remove(dir);
    }

    /// Fetches the start of a file a directory scan will probably reach, unless it is
    /// cached already.
    fn prefetch_file(&self, path: &Path) {
        let attr = match self.attrs.get(path) {
            Some(Ok(a)) => a,
            Some(Err(_)) => return,
            None => match self.stat_origin(path) {
                Ok(a) => a,
                Err(_) => return,
            },
        };
        if attr.kind != FileKind::File || attr.token.size() == 0 {
            return;
        }
        let Ok(obj) = self.object_for(path, &attr) else {
            return;
        };
        let end = obj.size().min(self.cfg.dir_prefetch_bytes.max(1));
        let claims = self.claim_uncached(&obj, 0..end.div_ceil(obj.bs));
        if claims.is_empty() {
            return;
        }
        stats::inc(&self.stats.dir_prefetches);
        for claim in claims {
            for c in self.split(claim) {
                if self.fetch(&obj, c, true).is_err() {
                    return;
                }
            }
        }
    }
}

/// Index of `name` in a listing, looked for first at `hint` and just after it.
fn find_entry(list: &[DirEntry], name: &OsStr, hint: usize) -> Option<usize> {
    (hint..(hint + SCAN_SLACK).min(list.len()))
        .find(|&i| list[i].name == name)
        .or_else(|| list.iter().position(|e| e.name == name))
}
