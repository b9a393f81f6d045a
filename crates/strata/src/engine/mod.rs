//! The engine: the read path, coherency, and the background fill and read-ahead work.
//!
//! # Read path
//! A read of (object, offset, length) is split into blocks. Each block is looked up
//! through the tier chain (`tier::tiers::TierChain`): the memory tiers (RAM, then
//! compressed RAM), then among the blocks still being written to disk, then in the
//! disk tier (one vectored read per run). What is left is claimed in the object's extent
//! tree (FETCHING) and fetched from the origin as contiguous runs, one request per run;
//! blocks another reader already fetches are waited for (single flight). The reader
//! gets its bytes as soon as the origin answers; the copies into memory happen at once
//! and the disk fill is queued, bounded, and dropped rather than waited for.
//!
//! # Coherency
//! An object version is (path, token, id). Its token is checked against the origin on
//! open and when it is older than the attribute TTL; a changed token kills the version
//! (its blocks leave every tier) and a new version with a new id takes its place. A
//! fetch is checked against the token of the open origin file after it completes, so
//! bytes read while the file changed are returned but never cached.

mod admission;
mod device_read;
mod fill;
mod guard;
mod meta;
mod meta_log;
mod metadata;
mod object;
mod persist;
mod pin;
mod prefetch;
mod read;
mod settle;
mod shared_fetch;
mod versions;
mod wb_journal;
mod write;
mod writeback;
pub use pin::PinProgress;

pub use device_read::{DeviceLoans, DeviceRead};
pub use object::Object;

use std::ffi::{OsStr, OsString};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustc_hash::FxHashMap;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::extent::bits;
use crate::origin::{Attr, DirEntry, FileKind, FsStats, Origin, OriginFile, Token};
use crate::stats::{self, Stats, StatsSnapshot};
use crate::storage::Storage;
use crate::sync::{Arc, Mutex, RwLock};
use crate::tier::BlockKey;
use crate::tier::chain::MemoryChain;
use crate::tier::disk::writer::{FillJob, FillQueue};
use crate::tier::disk::{DiskConfig, DiskError, DiskTier, LONG_RUN};
use crate::tier::shared::SharedTier;
use crate::tier::tiers::TierChain;
use fill::Dropped;
use guard::{OriginGuard, stale_ok, unreachable};
use meta::TtlMap;
use meta_log::MetaLog;
use metadata::{MetaMaps, last_change};
use object::{Claim, Claimed};

/// Largest read served in one call.
const MAX_READ: usize = 64 << 20;
/// How far from where a sequential reader got to its next read may start.
const SEQ_SLACK: u64 = 2 << 20;
/// Dropped fill runs remembered for a retry; older ones are forgotten.
const MAX_DROPPED_RUNS: usize = crate::config::MAX_DROPPED_RUNS;
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
    pub(crate) fn from_bytes(b: Bytes) -> Self {
        let len = b.len();
        Self {
            parts: vec![b],
            len,
        }
    }

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

/// `parts` as one buffer: the part itself when there is one (no copy).
pub(super) fn join(parts: &[Bytes]) -> Bytes {
    match parts {
        [one] => one.clone(),
        _ => {
            let mut v = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
            for p in parts {
                v.extend_from_slice(p);
            }
            v.freeze()
        }
    }
}

/// An open file of the engine. Reads through it follow the file's current version:
/// when the origin changes, the next read after the TTL sees the new version.
pub struct Handle {
    cur: Mutex<Arc<Object>>,
    ra: Mutex<ReadAhead>,
    /// The origin file opened for writing (a handle opened to write).
    wfile: Option<Arc<dyn OriginFile>>,
    /// O_DIRECT: reads and writes bypass the cache (see [`Engine::set_direct`]).
    direct: std::sync::atomic::AtomicBool,
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
            wfile: None,
            direct: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn writing(obj: Arc<Object>, file: Arc<dyn OriginFile>) -> Self {
        let mut h = Self::new(obj);
        h.wfile = Some(file);
        h
    }

    /// True for a handle opened to write.
    pub fn is_writable(&self) -> bool {
        self.wfile.is_some()
    }

    /// True for a handle whose reads and writes bypass the cache (O_DIRECT).
    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
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
    /// Every tier in lookup order: memory (RAM, compressed RAM), the blocks on
    /// their way to disk (and the queue they wait in), the disk.
    tiers: TierChain,
    stats: Arc<Stats>,
    objects: Mutex<FxHashMap<PathBuf, Arc<Object>>>,
    /// Which version the cache holds for each path (persisted with the disk tier).
    catalog: Catalog,
    epoch: Instant,
    /// The objects whose fills are queued, by id, with how many jobs: the writer
    /// knows ids only.
    filling_objs: Mutex<FxHashMap<u64, (std::sync::Weak<Object>, u32)>>,
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
    /// Dirty data and its journal, with `Config::write_back`.
    wb: Option<writeback::WriteBack>,
    /// Pinned staging buffers of device reads, kept between reads (pinning is slow).
    stages: Mutex<Vec<Box<dyn crate::device::PinnedBuffer>>>,
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
        let shared = match &cfg.shared {
            Some(sc) => Some(
                SharedTier::open(sc, cfg.block_size as u64, stats.clone())
                    .map_err(EngineError::Config)?,
            ),
            None => None,
        };
        let device = match &cfg.device {
            Some(d) => Some(Arc::new(
                crate::tier::device::DeviceTier::new(
                    d.device.clone(),
                    d.capacity,
                    cfg.block_size as usize,
                    stats.clone(),
                )
                .map_err(|e| {
                    EngineError::Config(format!(
                        "device tier of {} bytes on {}: {e}",
                        d.capacity,
                        d.device.name()
                    ))
                })?,
            )),
            None => None,
        };
        let ttl = cfg.attr_ttl_max.unwrap_or(cfg.attr_ttl);
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
        let catalog = Catalog::new(disk.clone());
        let (wb, replayed) = match (&cfg.write_back, &cfg.disk) {
            (Some(w), Some(d)) => {
                let (wb, found) =
                    writeback::WriteBack::open(*w, d.storage.clone()).map_err(|source| {
                        EngineError::Disk(DiskError::Io {
                            what: "write-back journal".into(),
                            source,
                        })
                    })?;
                (Some(wb), found)
            }
            _ => (None, Default::default()),
        };
        let inner = Arc::new(Inner {
            tiers: TierChain::new(
                MemoryChain::new(cfg.ram_capacity, cfg.compressed_ram_capacity, stats.clone()),
                FillQueue::new(cfg.fill_queue_bytes, cfg.commit_interval, stats.clone()),
                disk,
                shared,
                device,
                stats.clone(),
            ),
            origin,
            stats,
            objects: Mutex::new(FxHashMap::default()),
            catalog,
            epoch: Instant::now(),
            filling_objs: Mutex::new(FxHashMap::default()),
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
            statfs: TtlMap::new(cfg.attr_ttl, 4096),
            meta_log,
            guard: OriginGuard::new(cfg.origin_timeout, cfg.origin_threads)
                .map_err(EngineError::Thread)?,
            stale_warned: AtomicU64::new(0),
            listener: RwLock::new(None),
            wb,
            stages: Mutex::new(Vec::new()),
            cfg,
        });
        let engine = Engine { inner };
        if engine.inner.wb.is_some() {
            // What a crash left dirty reaches the origin before anything is served.
            engine.inner.wb_load(replayed);
            let left = engine.inner.flush_all(Duration::from_secs(10));
            if left > 0 {
                tracing::warn!(
                    files = left,
                    "write-back: journaled data could not be sent to the origin yet; it is served from the journal and retried"
                );
            }
        }
        engine.start_threads().map_err(EngineError::Thread)?;
        Ok(engine)
    }

    fn start_threads(&self) -> io::Result<()> {
        let mut threads = self.inner.threads.lock();
        if self.inner.wb.is_some() {
            self.inner.wb_start(&mut threads)?;
        }
        if let Some(disk) = self.inner.tiers.disk.clone() {
            let rx = self.inner.tiers.fills.open();
            let inner = self.inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("strata-fill".into())
                    .spawn(move || inner.tiers.fills.run(&disk, rx, &*inner))?,
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
        s.meta_bytes = i.journaled_bytes() + i.statfs.bytes() as u64;
        s
    }

    /// Waits (up to 10 s) until the puts to the shared tier queued so far are sent:
    /// for tests and benchmarks that need another machine to find them.
    pub fn settle(&self) {
        if let Some(s) = &self.inner.tiers.shared {
            s.drain(Duration::from_secs(10));
        }
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
        self.inner.tiers.disk.as_deref()
    }

    /// Opens a regular file, at the version the origin confirmed within the TTL (a
    /// lookup just before, or a revalidation a directory scan sent ahead in a batch),
    /// or else as the origin says now. With a TTL of 0 every open asks.
    pub fn open(&self, path: &Path) -> io::Result<Handle> {
        let (attr, confirmed) = self.inner.confirmed_attr(path)?;
        let obj = self.inner.object_for(path, &attr, confirmed)?;
        let h = Handle::new(obj);
        self.inner.note_open(path);
        Ok(h)
    }

    /// Reads up to `len` bytes at `off`. Fewer bytes only at the end of the file.
    pub fn read(&self, h: &Handle, off: u64, len: usize) -> io::Result<ReadBuf> {
        let t0 = Instant::now();
        let len = len.min(MAX_READ);
        let r = if h.is_direct() {
            // The origin must hold what was written through the mount first.
            let path = h.cur.lock().path.clone();
            self.inner
                .flush_path(&path)
                .and_then(|_| self.inner.read_bypass(h, off, len))
        } else if let Some(r) = self.inner.read_dirty(h, off, len) {
            r
        } else {
            self.inner.read(h, off, len)
        };
        stats::add(&self.inner.stats.read_us, t0.elapsed().as_micros() as u64);
        r
    }

    /// Makes `h` bypass the cache both ways (O_DIRECT): reads go to the origin file
    /// as it is now, writes go to the origin and drop what is cached of the range.
    pub fn set_direct(&self, h: &Handle) {
        h.direct.store(true, Ordering::Relaxed);
    }

    /// For a file the disk tier holds whole, every block verified since start: its
    /// data file, for the kernel to read directly (FUSE passthrough), with a pin that
    /// keeps the file whole while it is open. The version is the handle's current one
    /// (checked within the TTL); it stays what the kernel reads until the pin is gone.
    pub fn passthrough(&self, h: &Handle) -> Option<Passthrough> {
        let disk = self.inner.tiers.disk.as_ref()?;
        let obj = self.inner.current(h).ok()?;
        // The disk copy lacks what is dirty.
        if self
            .inner
            .wb
            .as_ref()
            .is_some_and(|wb| wb.get(&obj.path).is_some())
        {
            return None;
        }
        let size = obj.size();
        if size == 0 || size < self.inner.cfg.passthrough_min_size || obj.is_dead() {
            return None;
        }
        if let Token::Stat { mtime_ns, .. } = obj.token() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            let age = now.saturating_sub(mtime_ns);
            if age < self.inner.cfg.passthrough_min_age.as_nanos() as i64 {
                return None;
            }
        }
        let whole = obj.lock().tree.test_all(0..size, bits::VERIFIED);
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
        // Dirty data reaches the origin before the engine goes (what cannot, for want
        // of an origin, stays in the journal for the next start).
        if self.inner.wb.is_some() {
            let left = self.inner.flush_all(Duration::from_secs(30));
            if left > 0 {
                tracing::warn!(
                    files = left,
                    "write-back: dirty files could not be sent to the origin; they stay in the journal and are sent at the next start"
                );
            }
            self.inner.wb_stop();
        }
        self.inner.prefetch_tx.write().take();
        // Puts queued for the shared tier are other machines' hits: sent if the
        // servers answer soon (a few seconds at most).
        if let Some(s) = &self.inner.tiers.shared {
            s.drain(Duration::from_secs(3));
        }
        self.inner.tiers.fills.close();
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *self.inner.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        self.inner.keep_meta(true);
        if let Some(d) = &self.inner.tiers.disk
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

impl Inner {
    /// Bytes the journaled metadata maps weigh now.
    fn journaled_bytes(&self) -> u64 {
        (self.attrs.bytes()
            + self.dirs.bytes()
            + self.links.bytes()
            + self.xattrs.bytes()
            + self.xattr_lists.bytes()) as u64
    }

    /// Nanoseconds since the engine started, never 0 (0 marks "revalidate now").
    fn now_ns(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    fn notify(&self, path: &Path) {
        let l = self.listener.read().clone();
        if let Some(l) = l {
            l(path);
        }
    }
}

/// The daemon's clock as an origin timestamp (times we set or estimate ourselves).
fn wall_timestamp() -> crate::origin::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::origin::Timestamp {
        secs: d.as_secs() as i64,
        nanos: d.subsec_nanos(),
    }
}
