//! The disk tier: a persistent, crash-safe block cache in a directory.
//!
//! # Layout
//! ```text
//! CACHE_DIR/lock                 flock'ed by the one process using the directory
//! CACHE_DIR/index.log            the index: records of record.rs, appended in group commits
//! CACHE_DIR/objects/XX/ID        one sparse data file per object version; block n at n × block size
//! ```
//! One sparse file per object version keeps a fully cached object usable as a backing
//! file for FUSE passthrough later.
//!
//! # Crash safety
//! A block's data is written and synced before the record that names it is appended
//! and synced (group commit: one data sync per file and one log sync per batch). The
//! record carries the block's crc32c, checked on every read, so a block whose data was
//! lost or damaged is a miss, never a wrong byte. Object ids are never reused, so data
//! at a given (id, block) place can only ever be that block of that object version.
//! Removals are logged before the hole is punched or the file removed; space left
//! behind by a crash (written but never recorded) is reclaimed by the scrubber.
//!
//! # Concurrency
//! Lookups take the index's shared lock; one writer at a time (the engine's fill
//! thread) appends to the log. Readers that find damage remove the block from the
//! index at once and leave the logging to the writer.

pub(crate) mod record;

pub use record::{DecodeError, Record, decode as decode_record, encode as encode_record};

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;

use super::BlockKey;
use crate::extent::ExtentTree;
use crate::origin::Token;
use crate::policy::{S3Fifo, Weigh};
use crate::stats::{self, Stats};
use crate::storage::{Space, Storage, StorageFile};
use crate::sync::{Mutex, RwLock};

/// Runs of more blocks than this are read into one buffer and not promoted to RAM:
/// a buffer per block costs fresh pages and a copy into the reply. With the default
/// 16 KiB blocks, at 16 (256 KiB) warm random 128 KiB reads trailed catfs; at 4
/// (64 KiB) they ran 1.20 x faster, p99 342 against 510 us
/// (bench/results/2026-12-02-synced/level-field-rand128k-one-piece.log).
pub const LONG_RUN: usize = 4;

const LOG: &str = "index.log";
const LOG_TMP: &str = "index.log.tmp";
const OBJECTS: &str = "objects";
const PRESENT: u32 = 1;
/// Open data files kept around.
const MAX_OPEN_FILES: usize = 1024;
/// How long a free-space reading is trusted.
const SPACE_TTL: Duration = Duration::from_secs(1);
/// After this many failed batches in a row, stop filling for a while.
const FAIL_LIMIT: u32 = 3;
const FAIL_BACKOFF: Duration = Duration::from_secs(30);

/// Free-space thresholds, in percent of the cache filesystem, as cachefilesd's
/// brun/bcull/bstop (bytes) and frun/fcull/fstop (files).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub brun: f64,
    pub bcull: f64,
    pub bstop: f64,
    pub frun: f64,
    pub fcull: f64,
    pub fstop: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            brun: 10.0,
            bcull: 7.0,
            bstop: 3.0,
            frun: 10.0,
            fcull: 7.0,
            fstop: 3.0,
        }
    }
}

impl Thresholds {
    /// Never cull or stop for free space (tools and tests that manage space alone).
    pub const OFF: Thresholds = Thresholds {
        brun: 0.0,
        bcull: 0.0,
        bstop: 0.0,
        frun: 0.0,
        fcull: 0.0,
        fstop: 0.0,
    };

    pub fn validate(&self) -> Result<(), String> {
        let ok = |run: f64, cull: f64, stop: f64| {
            (0.0..100.0).contains(&stop) && stop <= cull && cull <= run && run < 100.0
        };
        if !ok(self.brun, self.bcull, self.bstop) {
            return Err(format!(
                "free-space thresholds must satisfy 0 <= bstop <= bcull <= brun < 100 \
                 (got brun={} bcull={} bstop={})",
                self.brun, self.bcull, self.bstop
            ));
        }
        if !ok(self.frun, self.fcull, self.fstop) {
            return Err(format!(
                "free-file thresholds must satisfy 0 <= fstop <= fcull <= frun < 100 \
                 (got frun={} fcull={} fstop={})",
                self.frun, self.fcull, self.fstop
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// Most bytes of blocks the tier holds (counted in whole blocks).
    pub capacity: u64,
    pub block_size: u32,
    pub thresholds: Thresholds,
    /// The log is rewritten when it is larger than this and twice its live size.
    pub compact_min_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{0}")]
    Locked(String),
    #[error(
        "cache directory was created with block size {found}, not {configured}; \
         pass --block-size {found} or use an empty cache directory"
    )]
    BlockSizeMismatch { found: u32, configured: u32 },
    #[error("cache directory: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
    let what = what.into();
    move |source| DiskError::Io { what, source }
}

/// What opening the tier found.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    pub objects: u64,
    pub blocks: u64,
    /// The index was unreadable and was started anew.
    pub index_reset: bool,
    /// Bytes of torn or damaged log tail dropped.
    pub log_tail_dropped: u64,
    pub records_dropped: u64,
    pub took: Duration,
}

/// A block to store.
#[derive(Clone, Debug)]
pub struct FillBlock {
    pub key: BlockKey,
    pub data: Bytes,
}

/// Filling state of the tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FillState {
    Normal = 0,
    Culling = 1,
    Stopped = 2,
    Failed = 3,
}

/// What `fsck` found (and, with repair, mended).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FsckReport {
    pub objects: u64,
    pub blocks_checked: u64,
    pub blocks_bad: u64,
    pub missing_files: u64,
    pub orphan_files: u64,
    pub stray_bytes: u64,
    pub log_tail_dropped: u64,
    pub records_dropped: u64,
    pub index_reset: bool,
    pub repaired: bool,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.blocks_bad == 0
            && self.missing_files == 0
            && self.orphan_files == 0
            && self.stray_bytes == 0
            && self.log_tail_dropped == 0
            && self.records_dropped == 0
            && !self.index_reset
    }
}

struct BlockWeight(u64);

impl Weigh<u32> for BlockWeight {
    fn weigh(&self, _: &u32) -> u64 {
        self.0
    }
}

struct Obj {
    id: u64,
    path: Arc<[u8]>,
    token: Token,
    /// Blocks on disk (block numbers).
    present: ExtentTree,
    /// Its Object record is in the log.
    persisted: bool,
}

/// The in-RAM index. Blocks are keyed by (slot << 32 | block) to keep an entry at 16
/// bytes; a slot is an object's place in `slots`, reused after the object is dropped
/// (its blocks become tombstones first, so nothing stale survives the reuse).
struct Index {
    slots: Vec<Option<Obj>>,
    free: Vec<u32>,
    by_id: FxHashMap<u64, u32>,
    by_path: FxHashMap<Arc<[u8]>, u32>,
    blocks: S3Fifo<u64, u32, BlockWeight>,
    next_id: u64,
    bs: u64,
    /// Objects whose data file the kernel reads directly: never evicted or punched.
    pinned: FxHashMap<u64, u32>,
    /// Paths pinned by the user (`strata pin`): files at or below them are never
    /// evicted or culled. Logged (Pin, Unpin), so they survive restarts.
    user_pins: std::collections::BTreeSet<Vec<u8>>,
}

/// True if `path` is `pin` or below it (the empty pin is the whole origin).
fn is_below(path: &[u8], pin: &[u8]) -> bool {
    pin.is_empty()
        || (path.starts_with(pin) && (path.len() == pin.len() || path[pin.len()] == b'/'))
}

fn key(slot: u32, blk: u64) -> Option<u64> {
    (blk <= u32::MAX as u64).then_some(((slot as u64) << 32) | blk)
}

fn unkey(k: u64) -> (u32, u64) {
    ((k >> 32) as u32, k & 0xffff_ffff)
}

impl Index {
    fn new(bs: u64) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            by_id: FxHashMap::default(),
            by_path: FxHashMap::default(),
            blocks: S3Fifo::new(u64::MAX, BlockWeight(bs)),
            next_id: 1,
            bs,
            pinned: FxHashMap::default(),
            user_pins: Default::default(),
        }
    }

    fn user_pinned(&self, path: &[u8]) -> bool {
        !self.user_pins.is_empty() && self.user_pins.iter().any(|p| is_below(path, p))
    }

    fn obj(&self, id: u64) -> Option<(u32, &Obj)> {
        let s = *self.by_id.get(&id)?;
        self.slots[s as usize].as_ref().map(|o| (s, o))
    }

    fn add_object(&mut self, id: u64, path: Arc<[u8]>, token: Token, persisted: bool) -> u32 {
        if let Some(&s) = self.by_id.get(&id) {
            let o = self.slots[s as usize].as_mut().expect("live slot");
            o.token = token;
            o.persisted |= persisted;
            return s;
        }
        if let Some(&old) = self.by_path.get(&path) {
            let old_id = self.slots[old as usize].as_ref().expect("live slot").id;
            self.remove_object(old_id);
        }
        let obj = Obj {
            id,
            path: path.clone(),
            token,
            present: ExtentTree::new(),
            persisted,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(obj);
                s
            }
            None => {
                self.slots.push(Some(obj));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id, s);
        self.by_path.insert(path, s);
        self.next_id = self.next_id.max(id + 1);
        s
    }

    /// Forgets an object and all its blocks. Returns it.
    fn remove_object(&mut self, id: u64) -> Option<Obj> {
        let s = self.by_id.remove(&id)?;
        let o = self.slots[s as usize].take().expect("live slot");
        if self.by_path.get(&o.path) == Some(&s) {
            self.by_path.remove(&o.path);
        }
        for (r, _) in o.present.iter() {
            for blk in r {
                if let Some(k) = key(s, blk) {
                    self.blocks.remove(&k);
                }
            }
        }
        self.free.push(s);
        Some(o)
    }

    /// Removes one block; true if it was there.
    fn remove_block(&mut self, slot: u32, blk: u64) -> bool {
        let Some(k) = key(slot, blk) else {
            return false;
        };
        if self.blocks.remove(&k).is_some() {
            if let Some(o) = self.slots[slot as usize].as_mut() {
                o.present.clear(blk..blk + 1, PRESENT);
            }
            true
        } else {
            false
        }
    }

    /// Evicts one block by policy; returns its (id, block). Blocks of pinned objects
    /// go back to the queue.
    fn evict_one(&mut self) -> Option<(u64, u64)> {
        let mut skipped = Vec::new();
        let found = loop {
            let Some((k, crc)) = self.blocks.evict_one() else {
                break None;
            };
            let (slot, blk) = unkey(k);
            let Some(o) = self.slots[slot as usize].as_ref() else {
                continue;
            };
            let pins = &self.user_pins;
            if self.pinned.contains_key(&o.id)
                || (!pins.is_empty() && pins.iter().any(|p| is_below(&o.path, p)))
            {
                skipped.push((k, crc));
                if skipped.len() > self.blocks.len() {
                    break None;
                }
                continue;
            }
            let o = self.slots[slot as usize].as_mut().expect("looked up above");
            o.present.clear(blk..blk + 1, PRESENT);
            break Some((o.id, blk));
        };
        for (k, crc) in skipped {
            self.blocks.insert_loaded(k, crc);
        }
        found
    }
}

/// Data files kept open. Files are opened, created and removed only under this lock,
/// so a file being removed can never be reopened and cached behind the remover's back.
struct FileCache {
    open: FxHashMap<u64, Arc<dyn StorageFile>>,
}

/// Work left for the writer by other threads.
#[derive(Default)]
struct Pending {
    /// Objects dropped from the index whose Drop record and file removal are due.
    drops: Vec<(u64, bool)>,
    /// Blocks dropped from the index (damage found by readers) whose Del record and
    /// hole are due.
    dels: Vec<(u64, u64)>,
}

struct Writer {
    log: Arc<dyn StorageFile>,
    log_len: u64,
    buf: Vec<u8>,
    space: Option<(Instant, Space)>,
    culling: bool,
    failures: u32,
    failed_until: Option<Instant>,
    /// Object subdirectories the scrubber still has to visit.
    scrub_todo: Vec<u32>,
    /// Data files whose names may not be durable yet: their directory needs a sync.
    dirty_dirs: Vec<PathBuf>,
}

pub struct DiskTier {
    storage: Arc<dyn Storage>,
    /// The directory's lock; released by `close`, after which nothing is written.
    lock: Mutex<Option<Box<dyn std::any::Any + Send + Sync>>>,
    cfg: DiskConfig,
    bs: u64,
    index: RwLock<Index>,
    files: Mutex<FileCache>,
    pending: Mutex<Pending>,
    writer: Mutex<Writer>,
    stats: Arc<Stats>,
    state: AtomicU8,
    ids: AtomicU64,
    report: OpenReport,
}

fn object_path(id: u64) -> PathBuf {
    PathBuf::from(format!("{OBJECTS}/{:02x}/{id:016x}", id & 0xff))
}

fn subdir(n: u32) -> PathBuf {
    PathBuf::from(format!("{OBJECTS}/{n:02x}"))
}

/// Length of block `blk` of an object of `size` bytes.
pub fn block_len(size: u64, bs: u64, blk: u64) -> usize {
    size.saturating_sub(blk.saturating_mul(bs)).min(bs) as usize
}

impl DiskTier {
    /// Opens (or creates) the tier, replaying its index. Damage in the index never
    /// fails the open: a torn or damaged tail is cut off, an unreadable index is
    /// started anew (the scrubber then reclaims the orphaned data).
    pub fn open(
        storage: Arc<dyn Storage>,
        cfg: DiskConfig,
        stats: Arc<Stats>,
    ) -> Result<Self, DiskError> {
        let t0 = Instant::now();
        if !cfg.block_size.is_power_of_two() || cfg.block_size < 4096 {
            return Err(DiskError::Io {
                what: format!(
                    "block size {} is not a power of two >= 4096",
                    cfg.block_size
                ),
                source: io::ErrorKind::InvalidInput.into(),
            });
        }
        storage
            .create_dir_all(Path::new(""))
            .map_err(io_err("create cache directory"))?;
        let lock = storage.lock().map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                DiskError::Locked(e.to_string())
            } else {
                DiskError::Io {
                    what: "lock cache directory".into(),
                    source: e,
                }
            }
        })?;
        let bs = cfg.block_size as u64;
        let mut made_dirs = false;
        let existing: Vec<String> = storage.list_dir(Path::new(OBJECTS)).unwrap_or_default();
        if existing.len() < 256 {
            for n in 0..256u32 {
                storage
                    .create_dir_all(&subdir(n))
                    .map_err(io_err("create object directories"))?;
            }
            made_dirs = true;
        }
        if made_dirs {
            storage
                .sync_dir(Path::new(OBJECTS))
                .and_then(|_| storage.sync_dir(Path::new("")))
                .map_err(io_err("sync cache directory"))?;
        }
        // A compaction that did not finish leaves its temporary file behind.
        let _ = storage.remove_file(Path::new(LOG_TMP));

        let log = storage
            .open(Path::new(LOG), true)
            .map_err(io_err("open index log"))?;
        let len = log.len().map_err(io_err("read index log"))?;
        let mut bytes = vec![0u8; len as usize];
        let got =
            crate::storage::read_full_at(&*log, &mut bytes, 0).map_err(io_err("read index log"))?;
        bytes.truncate(got);

        let mut index = Index::new(bs);
        let mut report = OpenReport::default();
        if bytes.is_empty() && has_data_files(&*storage) {
            // The index is gone but data is here: a reset, not a new cache.
            tracing::warn!(
                "cache index is missing; starting with an empty cache \
                 (its data files will be reclaimed in the background)"
            );
            report.index_reset = true;
        }
        let valid_end = match replay(&bytes, cfg.block_size, &mut index, &mut report)? {
            Some(end) => end,
            None => {
                tracing::warn!(
                    "cache index is unreadable; starting with an empty cache \
                     (its data files will be reclaimed in the background)"
                );
                report.index_reset = true;
                0
            }
        };
        report.log_tail_dropped = bytes.len() as u64 - valid_end;
        drop(bytes);
        let mut log_len = valid_end;
        if valid_end == 0 || report.log_tail_dropped > 0 {
            if report.log_tail_dropped > 0 && !report.index_reset {
                tracing::warn!(
                    bytes = report.log_tail_dropped,
                    "cache index had a torn or damaged tail (an interrupted commit); cut it off"
                );
            }
            log.set_len(valid_end)
                .map_err(io_err("truncate index log"))?;
            if valid_end == 0 {
                let mut b = Vec::new();
                record::encode(
                    &Record::Header {
                        version: record::VERSION,
                        block_size: cfg.block_size,
                    },
                    &mut b,
                );
                log.write_all_at(&b, 0).map_err(io_err("write index log"))?;
                log_len = b.len() as u64;
            }
            log.sync_data().map_err(io_err("sync index log"))?;
            storage
                .sync_dir(Path::new(""))
                .map_err(io_err("sync cache directory"))?;
        }
        index.blocks.compact();
        stats::add(&stats.index_records_dropped, report.records_dropped);
        report.objects = index.by_id.len() as u64;
        report.blocks = index.blocks.len() as u64;

        let capacity = (cfg.capacity / bs) * bs;
        let ids = index.next_id;
        let tier = DiskTier {
            storage,
            lock: Mutex::new(Some(lock)),
            bs,
            index: RwLock::new(index),
            files: Mutex::new(FileCache {
                open: FxHashMap::default(),
            }),
            pending: Mutex::new(Pending::default()),
            writer: Mutex::new(Writer {
                log,
                log_len,
                buf: Vec::new(),
                space: None,
                culling: false,
                failures: 0,
                failed_until: None,
                scrub_todo: (0..256).rev().collect(),
                dirty_dirs: Vec::new(),
            }),
            stats,
            state: AtomicU8::new(FillState::Normal as u8),
            ids: AtomicU64::new(ids),
            report: OpenReport::default(),
            cfg,
        };
        // A smaller limit than last time: evict down to it now, what no pin keeps
        // first; the limit is hard, so pins larger than it lose blocks too.
        let victims: Vec<(u64, u64)> = {
            let mut idx = tier.index.write();
            let mut victims = Vec::new();
            while idx.blocks.weight() > capacity {
                match idx.evict_one() {
                    Some(v) => victims.push(v),
                    None => break,
                }
            }
            let evicted = idx.blocks.set_capacity(capacity);
            if !evicted.is_empty() {
                tracing::warn!(
                    blocks = evicted.len(),
                    "pinned files exceed the cache size: some of their blocks were dropped \
                     (raise --cache-size or unpin)"
                );
            }
            evicted
                .into_iter()
                .filter_map(|(k, _, _)| {
                    let (slot, blk) = unkey(k);
                    let o = idx.slots[slot as usize].as_mut()?;
                    o.present.clear(blk..blk + 1, PRESENT);
                    Some((o.id, blk))
                })
                .chain(victims)
                .collect()
        };
        if !victims.is_empty() {
            stats::add(&tier.stats.disk_evictions, victims.len() as u64);
            let mut w = tier.writer.lock();
            tier.retire(&mut w, &victims, &[])
                .map_err(io_err("evict down to the size limit"))?;
        }
        tier.update_gauges();
        report.took = t0.elapsed();
        Ok(DiskTier { report, ..tier })
    }

    /// The block size a cache directory was created with (None: no readable index).
    pub fn probe_block_size(storage: &dyn Storage) -> Option<u32> {
        let log = storage.open(Path::new(LOG), false).ok()?;
        let mut head = vec![0u8; 64];
        let n = crate::storage::read_full_at(&*log, &mut head, 0).ok()?;
        match record::decode(&head[..n]) {
            Ok((Record::Header { block_size, .. }, _)) => Some(block_size),
            _ => None,
        }
    }

    /// What the last open found.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    pub fn block_size(&self) -> u64 {
        self.bs
    }

    pub fn fill_state(&self) -> FillState {
        match self.state.load(Ordering::Relaxed) {
            1 => FillState::Culling,
            2 => FillState::Stopped,
            3 => FillState::Failed,
            _ => FillState::Normal,
        }
    }

    fn set_state(&self, s: FillState) {
        self.state.store(s as u8, Ordering::Relaxed);
        stats::set(&self.stats.disk_state, s as u64);
    }

    /// A fresh object id, never handed out before by this cache directory.
    pub fn allocate_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// The object the cache holds for `path`, if any: its id and token.
    pub fn lookup(&self, path: &[u8]) -> Option<(u64, Token)> {
        let idx = self.index.read();
        let s = *idx.by_path.get(path)?;
        let o = idx.slots[s as usize].as_ref()?;
        Some((o.id, o.token.clone()))
    }

    /// Makes an object version known so that fills for it are accepted. Any other
    /// version of the same path is dropped.
    pub fn register(&self, id: u64, path: &[u8], token: Token) {
        let mut idx = self.index.write();
        if let Some(&s) = idx.by_path.get(path) {
            let other = idx.slots[s as usize].as_ref().map(|o| o.id);
            if let Some(other) = other.filter(|&o| o != id) {
                let persisted = idx.remove_object(other).is_some_and(|o| o.persisted);
                self.pending.lock().drops.push((other, persisted));
            }
        }
        idx.add_object(id, Arc::from(path), token, false);
        drop(idx);
        self.update_gauges();
    }

    /// Forgets an object version now; its data is removed by the writer.
    pub fn drop_object(&self, id: u64) {
        let removed = self.index.write().remove_object(id);
        if let Some(o) = removed {
            self.pending.lock().drops.push((id, o.persisted));
            self.update_gauges();
        }
    }

    /// Forgets the object cached for a path (the origin no longer has it).
    pub fn drop_path(&self, path: &[u8]) {
        if let Some((id, _)) = self.lookup(path) {
            self.drop_object(id);
        }
    }

    /// Keeps an object's data file exactly as it is (no eviction, culling or punched
    /// holes) until the returned pin is dropped. None if the object is not cached.
    pub fn pin(self: &Arc<Self>, id: u64) -> Option<Pin> {
        let mut idx = self.index.write();
        idx.obj(id)?;
        *idx.pinned.entry(id).or_insert(0) += 1;
        Some(Pin {
            tier: self.clone(),
            id,
        })
    }

    /// The data file of a fully cached object, opened read-only for the kernel to read
    /// directly (FUSE passthrough). The caller holds a pin on the object.
    pub fn backing_file(&self, _pin: &Pin) -> io::Result<std::fs::File> {
        self.storage.open_read_only(&object_path(_pin.id))
    }

    /// Pins `path` (relative to the origin; empty: all of it): files at or below it are
    /// kept out of eviction and culling from now on, across restarts. Durable when it
    /// returns.
    pub fn pin_path(&self, path: &[u8]) -> io::Result<()> {
        self.set_pin(path, true)
    }

    /// Removes a pin made by [`DiskTier::pin_path`]; false if there was none.
    pub fn unpin_path(&self, path: &[u8]) -> io::Result<bool> {
        if !self.index.read().user_pins.contains(path) {
            return Ok(false);
        }
        self.set_pin(path, false).map(|()| true)
    }

    fn set_pin(&self, path: &[u8], on: bool) -> io::Result<()> {
        let mut w = self.writer.lock();
        if self.is_closed() {
            return Err(io::Error::other("the disk cache is closed"));
        }
        let path = path.to_vec();
        let rec = if on {
            Record::Pin { path: path.clone() }
        } else {
            Record::Unpin { path: path.clone() }
        };
        // Logged first: the index only says what the log would say after a crash.
        self.append(&mut w, &[rec])?;
        let mut idx = self.index.write();
        if on {
            idx.user_pins.insert(path);
        } else {
            idx.user_pins.remove(&path);
        }
        Ok(())
    }

    /// The user's pins, each with the bytes of cached blocks at or below it.
    pub fn pins(&self) -> Vec<(Vec<u8>, u64)> {
        let idx = self.index.read();
        idx.user_pins
            .iter()
            .map(|p| (p.clone(), self.cached_bytes(&idx, |path| is_below(path, p))))
            .collect()
    }

    /// Bytes of cached blocks kept by pins, other than those at or below `except`.
    pub fn pinned_bytes_except(&self, except: &[u8]) -> u64 {
        let idx = self.index.read();
        self.cached_bytes(&idx, |path| {
            idx.user_pinned(path) && !is_below(path, except)
        })
    }

    /// Bytes of cached blocks of the objects whose path `which` takes.
    fn cached_bytes(&self, idx: &Index, which: impl Fn(&[u8]) -> bool) -> u64 {
        let blocks: u64 = idx
            .slots
            .iter()
            .flatten()
            .filter(|o| which(&o.path))
            .map(|o| o.present.iter().map(|(r, _)| r.end - r.start).sum::<u64>())
            .sum();
        blocks * self.bs
    }

    /// The most bytes of blocks the tier holds.
    pub fn capacity(&self) -> u64 {
        self.index.read().blocks.capacity()
    }

    /// Block ranges of an object that are on disk.
    pub fn present(&self, id: u64) -> Vec<Range<u64>> {
        let idx = self.index.read();
        match idx.obj(id) {
            Some((_, o)) => o.present.iter().map(|(r, _)| r).collect(),
            None => Vec::new(),
        }
    }

    /// True if every block of `blocks` is on disk.
    pub fn contains_all(&self, id: u64, blocks: Range<u64>) -> bool {
        let idx = self.index.read();
        idx.obj(id)
            .is_some_and(|(_, o)| o.present.test_all(blocks, PRESENT))
    }

    /// Reads blocks `first..first + count` of an object. Each is returned only if it
    /// is on disk and its checksum matches; damage is counted and dropped.
    pub fn read(&self, id: u64, first: u64, count: u64) -> Vec<Option<Bytes>> {
        self.read_whole(id, first, count).0
    }

    /// As `read`; when the range is one run longer than `LONG_RUN` blocks and every
    /// block checked out, also all of it as one buffer (the blocks are slices of it).
    pub fn read_whole(
        &self,
        id: u64,
        first: u64,
        count: u64,
    ) -> (Vec<Option<Bytes>>, Option<Bytes>) {
        let mut out: Vec<Option<Bytes>> = vec![None; count as usize];
        let (size, crcs) = {
            let idx = self.index.read();
            let Some((slot, o)) = idx.obj(id) else {
                return (out, None);
            };
            let crcs: Vec<Option<u32>> = (first..first + count)
                .map(|b| key(slot, b).and_then(|k| idx.blocks.get(&k).copied()))
                .collect();
            (o.token.size(), crcs)
        };
        let mut i = 0usize;
        let mut whole = None;
        while i < crcs.len() {
            if crcs[i].is_none() {
                i += 1;
                continue;
            }
            let start = i;
            while i < crcs.len() && crcs[i].is_some() {
                i += 1;
            }
            let one = self.read_run(id, first, size, &crcs, start..i, &mut out);
            if start == 0 && i == crcs.len() {
                whole = one;
            }
        }
        (out, whole)
    }

    /// Reads one run of blocks that the index holds. A run longer than `LONG_RUN`
    /// goes into one buffer, returned whole if every block checked out; a shorter
    /// one into a buffer per block (the RAM tier keeps those: a slice would keep
    /// its whole run alive). One buffer, a lone block's included, is read unzeroed.
    fn read_run(
        &self,
        id: u64,
        first: u64,
        size: u64,
        crcs: &[Option<u32>],
        run: Range<usize>,
        out: &mut [Option<Bytes>],
    ) -> Option<Bytes> {
        let lens: Vec<usize> = run
            .clone()
            .map(|i| block_len(size, self.bs, first + i as u64))
            .collect();
        let at = (first + run.start as u64) * self.bs;
        let (pieces, one, read) = if run.len() > LONG_RUN || run.len() == 1 {
            // One buffer, read unzeroed; a short read (the file was cut) leaves the
            // blocks past its end short, and they fail the check below.
            let total = lens.iter().sum();
            let (buf, read) = match self.file(id, false).and_then(|f| f.read_new(total, at)) {
                Ok(v) => {
                    let n = v.len();
                    (Bytes::from(v), Ok(n))
                }
                Err(e) => (Bytes::new(), Err(e)),
            };
            let n = buf.len();
            let mut o = 0;
            let pieces: Vec<Bytes> = lens
                .iter()
                .map(|&l| {
                    o += l;
                    buf.slice((o - l).min(n)..o.min(n))
                })
                .collect();
            (pieces, (run.len() > LONG_RUN).then_some(buf), read)
        } else {
            let mut bufs: Vec<BytesMut> = lens.iter().map(|&l| BytesMut::zeroed(l)).collect();
            let read = self.file(id, false).and_then(|f| {
                let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                f.read_vectored_at(&mut slices, at)
            });
            (bufs.into_iter().map(BytesMut::freeze).collect(), None, read)
        };
        let got = match read {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    stats::inc(&self.stats.disk_read_errors);
                    tracing::debug!(id, error = %e, "disk tier read failed");
                    return None;
                }
                0
            }
        };
        let mut offset = 0usize;
        let mut bad = Vec::new();
        for (j, piece) in pieces.into_iter().enumerate() {
            let i = run.start + j;
            let len = lens[j];
            let complete = offset + len <= got;
            offset += len;
            let want = crcs[i].expect("run of present blocks");
            if complete && crc32c::crc32c(&piece) == want {
                out[i] = Some(piece);
            } else {
                bad.push((first + i as u64, want));
            }
        }
        if !bad.is_empty() {
            self.drop_damaged(id, &bad);
            return None;
        }
        one
    }

    /// Drops blocks that failed their check, unless they left the index meanwhile
    /// (evicted or replaced while we read: a race, not damage).
    fn drop_damaged(&self, id: u64, bad: &[(u64, u32)]) {
        let mut dropped = Vec::new();
        {
            let mut idx = self.index.write();
            let Some(&slot) = idx.by_id.get(&id) else {
                return;
            };
            for &(blk, crc) in bad {
                let same = key(slot, blk).and_then(|k| idx.blocks.peek(&k).copied()) == Some(crc);
                if same && idx.remove_block(slot, blk) {
                    dropped.push((id, blk));
                }
            }
        }
        if !dropped.is_empty() {
            stats::add(&self.stats.checksum_failures, dropped.len() as u64);
            tracing::warn!(
                id,
                blocks = dropped.len(),
                "cache blocks failed their checksum; dropped and refetching from the origin"
            );
            self.pending.lock().dels.extend(dropped);
            self.update_gauges();
        }
    }

    fn file(&self, id: u64, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        self.open_file(id, create).map(|(f, _)| f)
    }

    /// Opens an object's data file; with `create`, makes it if missing and says so
    /// (its directory then needs a sync before records may name it).
    fn open_file(&self, id: u64, create: bool) -> io::Result<(Arc<dyn StorageFile>, bool)> {
        let mut fc = self.files.lock();
        if let Some(f) = fc.open.get(&id) {
            return Ok((f.clone(), false));
        }
        let path = object_path(id);
        let (f, created) = match self.storage.open(&path, false) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                (self.storage.open(&path, true)?, true)
            }
            Err(e) => return Err(e),
        };
        if fc.open.len() >= MAX_OPEN_FILES
            && let Some(&k) = fc.open.keys().next()
        {
            fc.open.remove(&k);
        }
        fc.open.insert(id, f.clone());
        Ok((f, created))
    }

    fn remove_file(&self, id: u64) {
        let mut fc = self.files.lock();
        fc.open.remove(&id);
        match self.storage.remove_file(&object_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!(id, error = %e, "could not remove cache file"),
        }
    }

    /// Stores blocks: writes and syncs their data, then logs them in one commit.
    /// Returns, per block, whether it is now on disk. Blocks of unknown objects and
    /// blocks that do not fit (tier stopped, device failing) are refused.
    pub fn write_batch(&self, blocks: &[FillBlock]) -> Vec<bool> {
        let mut done = vec![false; blocks.len()];
        let mut w = self.writer.lock();
        if self.is_closed() {
            stats::add(&self.stats.disk_refusals, blocks.len() as u64);
            return done;
        }
        if !self.may_fill(&mut w) {
            stats::add(&self.stats.disk_refusals, blocks.len() as u64);
            if self.fill_state() == FillState::Stopped {
                stats::add(&self.stats.disk_refused_space, blocks.len() as u64);
            }
            return done;
        }

        // 1. Decide what to write and make room for it.
        let mut accepted: Vec<usize> = Vec::new();
        let mut victims: Vec<(u64, u64)> = Vec::new();
        {
            let mut idx = self.index.write();
            let mut seen = std::collections::HashSet::new();
            for (i, b) in blocks.iter().enumerate() {
                let Some((slot, o)) = idx.obj(b.key.obj) else {
                    stats::inc(&self.stats.disk_refusals);
                    continue;
                };
                let Some(k) = key(slot, b.key.blk) else {
                    stats::inc(&self.stats.disk_refusals);
                    continue;
                };
                if b.data.len() != block_len(o.token.size(), self.bs, b.key.blk)
                    || b.data.is_empty()
                {
                    stats::inc(&self.stats.disk_refusals);
                    continue;
                }
                if idx.blocks.contains(&k) {
                    done[i] = true;
                    continue;
                }
                if seen.insert(k) {
                    accepted.push(i);
                }
            }
            // A batch (up to 8 MiB) must not carry the filesystem past the stop
            // threshold: take only what fits above it in the current estimate.
            if let Some((_, s)) = &w.space {
                let floor = (s.total_bytes as f64 * self.cfg.thresholds.bstop / 100.0) as u64;
                let room = (s.avail_bytes.saturating_sub(floor) / self.bs) as usize;
                if accepted.len() > room {
                    let over = (accepted.len() - room) as u64;
                    stats::add(&self.stats.disk_refusals, over);
                    stats::add(&self.stats.disk_refused_space, over);
                    accepted.truncate(room);
                }
            }
            let cap = idx
                .blocks
                .capacity()
                .min((self.cfg.capacity / self.bs) * self.bs);
            while !accepted.is_empty()
                && idx.blocks.weight() + accepted.len() as u64 * self.bs > cap
            {
                match idx.evict_one() {
                    Some(v) => victims.push(v),
                    None => {
                        // Nothing left to evict: the batch is larger than the tier.
                        let keep = (cap.saturating_sub(idx.blocks.weight()) / self.bs) as usize;
                        stats::add(&self.stats.disk_refusals, (accepted.len() - keep) as u64);
                        accepted.truncate(keep);
                        break;
                    }
                }
            }
        }
        stats::add(&self.stats.disk_evictions, victims.len() as u64);

        // 2. Write the data, 3. make it durable.
        let mut ok: Vec<usize> = Vec::new();
        let mut by_obj: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for &i in &accepted {
            by_obj.entry(blocks[i].key.obj).or_default().push(i);
        }
        let mut errors = 0u32;
        let mut new_files = 0u64;
        for (&id, idxs) in &by_obj {
            let res = self.open_file(id, true).and_then(|(f, created)| {
                if created {
                    new_files += 1;
                    w.dirty_dirs
                        .push(object_path(id).parent().expect("has parent").to_path_buf());
                }
                for &i in idxs {
                    let b = &blocks[i];
                    f.write_all_at(&b.data, b.key.blk * self.bs)?;
                }
                f.sync_data()
            });
            match res {
                Ok(()) => ok.extend_from_slice(idxs),
                Err(e) => {
                    errors += 1;
                    self.note_write_error(&mut w, &e);
                }
            }
        }
        // Keep the free-space reading current between statvfs calls, so a burst of
        // fills crosses the thresholds when it happens, not a second later.
        let written = ok.len() as u64 * self.bs;
        if let Some((_, sp)) = &mut w.space {
            sp.avail_bytes = sp.avail_bytes.saturating_sub(written);
            sp.avail_files = sp.avail_files.saturating_sub(new_files);
        }
        self.check_space(&mut w, false);
        w.dirty_dirs.sort();
        w.dirty_dirs.dedup();
        let dir_sync: io::Result<()> = w
            .dirty_dirs
            .iter()
            .try_for_each(|d| self.storage.sync_dir(d));
        if let Err(e) = dir_sync {
            self.note_write_error(&mut w, &e);
            ok.clear();
            errors += 1;
        } else {
            w.dirty_dirs.clear();
        }

        // 4. One log commit for the whole batch.
        let (drops, dels) = {
            let mut p = self.pending.lock();
            (std::mem::take(&mut p.drops), std::mem::take(&mut p.dels))
        };
        let mut recs: Vec<Record> = Vec::new();
        push_removals(&mut recs, &drops, &dels, &victims);
        {
            let idx = self.index.read();
            let mut objs_done = std::collections::HashSet::new();
            let mut run: Option<(u64, u64, Vec<u32>)> = None;
            let mut sorted = ok.clone();
            sorted.sort_by_key(|&i| blocks[i].key);
            for &i in &sorted {
                let b = &blocks[i];
                let Some((_, o)) = idx.obj(b.key.obj) else {
                    continue;
                };
                if !o.persisted && objs_done.insert(o.id) {
                    recs.push(Record::Object {
                        id: o.id,
                        token: o.token.clone(),
                        path: o.path.to_vec(),
                    });
                }
                let crc = crc32c::crc32c(&b.data);
                match &mut run {
                    Some((id, first, crcs))
                        if *id == b.key.obj
                            && *first + crcs.len() as u64 == b.key.blk
                            && crcs.len() < record::MAX_RUN =>
                    {
                        crcs.push(crc)
                    }
                    _ => {
                        if let Some((id, first, crcs)) = run.take() {
                            recs.push(Record::Add { id, first, crcs });
                        }
                        run = Some((b.key.obj, b.key.blk, vec![crc]));
                    }
                }
            }
            if let Some((id, first, crcs)) = run.take() {
                recs.push(Record::Add { id, first, crcs });
            }
        }
        if let Err(e) = self.append(&mut w, &recs) {
            self.note_write_error(&mut w, &e);
            // Nothing of this batch is known to be durable; removals are retried.
            let mut p = self.pending.lock();
            p.drops.extend(drops);
            p.dels.extend(dels);
            p.dels.extend(victims);
            return done;
        }
        stats::inc(&self.stats.index_commits);

        // 5. Publish the new blocks.
        {
            let mut idx = self.index.write();
            let mut extra = Vec::new();
            for &i in &ok {
                let b = &blocks[i];
                let Some(&slot) = idx.by_id.get(&b.key.obj) else {
                    continue; // dropped meanwhile; its Drop record follows in the log
                };
                let k = key(slot, b.key.blk).expect("checked in step 1");
                if let Ok(ev) = idx.blocks.insert(k, crc32c::crc32c(&b.data)) {
                    for (ek, _) in ev {
                        let (s, blk) = unkey(ek);
                        if let Some(o) = idx.slots[s as usize].as_mut() {
                            o.present.clear(blk..blk + 1, PRESENT);
                            extra.push((o.id, blk));
                        }
                    }
                }
                let o = idx.slots[slot as usize].as_mut().expect("live slot");
                o.present.set(b.key.blk..b.key.blk + 1, PRESENT);
                o.persisted = true;
                done[i] = true;
            }
            if !extra.is_empty() {
                self.pending.lock().dels.extend(extra);
            }
        }
        if errors == 0 {
            w.failures = 0;
        }
        stats::add(
            &self.stats.fills_done,
            ok.iter().filter(|&&i| done[i]).count() as u64,
        );

        // 6. Reclaim the space of what was removed, now that its records are durable.
        self.reclaim(&drops, &dels, &victims);
        self.update_gauges();
        done
    }

    /// Checks the fill state before a batch.
    fn may_fill(&self, w: &mut Writer) -> bool {
        if let Some(until) = w.failed_until {
            if Instant::now() < until {
                return false;
            }
            w.failed_until = None;
            w.failures = 0;
            self.set_state(FillState::Normal);
        }
        self.check_space(w, false);
        self.fill_state() != FillState::Stopped
    }

    fn note_write_error(&self, w: &mut Writer, e: &io::Error) {
        stats::inc(&self.stats.disk_write_errors);
        if e.raw_os_error() == Some(28) {
            // ENOSPC: the filesystem is fuller than our thresholds knew; look again.
            self.check_space(w, true);
            if self.fill_state() != FillState::Stopped {
                self.set_state(FillState::Stopped);
            }
            tracing::warn!("cache filesystem is full; filling stopped until space is freed");
            return;
        }
        w.failures += 1;
        if w.failures >= FAIL_LIMIT && w.failed_until.is_none() {
            w.failed_until = Some(Instant::now() + FAIL_BACKOFF);
            self.set_state(FillState::Failed);
            tracing::error!(
                error = %e,
                "cache device keeps failing writes; filling paused for {FAIL_BACKOFF:?} \
                 (reads are served from the origin and what is already cached)"
            );
        } else {
            tracing::warn!(error = %e, "cache device write failed");
        }
    }

    /// Reads free space (at most once a second unless forced) and sets the state.
    fn check_space(&self, w: &mut Writer, force: bool) {
        let fresh = w
            .space
            .is_some_and(|(at, _)| !force && at.elapsed() < SPACE_TTL);
        if !fresh {
            match self.storage.space() {
                Ok(s) => w.space = Some((Instant::now(), s)),
                Err(e) => {
                    tracing::debug!(error = %e, "statvfs of the cache directory failed");
                    return;
                }
            }
        }
        let Some((_, s)) = w.space else { return };
        let t = &self.cfg.thresholds;
        let pct = |avail: u64, total: u64| {
            if total == 0 {
                100.0
            } else {
                avail as f64 * 100.0 / total as f64
            }
        };
        let b = pct(s.avail_bytes, s.total_bytes);
        let f = pct(s.avail_files, s.total_files);
        if b < t.bcull || f < t.fcull {
            w.culling = true;
        } else if b >= t.brun && f >= t.frun {
            w.culling = false;
        }
        let state = if w.failed_until.is_some() {
            FillState::Failed
        } else if b < t.bstop || f < t.fstop {
            FillState::Stopped
        } else if w.culling {
            FillState::Culling
        } else {
            FillState::Normal
        };
        if state != self.fill_state() {
            tracing::info!(
                ?state,
                free_bytes_pct = format!("{b:.1}"),
                free_files_pct = format!("{f:.1}"),
                "disk tier fill state changed"
            );
        }
        self.set_state(state);
    }

    /// Background upkeep, called by the writer thread when idle: logs and reclaims
    /// what readers dropped, culls when free space is low, rewrites a bloated log and
    /// scrubs one object directory. Returns true if more work is waiting.
    pub fn maintain(&self) -> bool {
        let mut w = self.writer.lock();
        if self.is_closed() {
            return false;
        }
        let mut more = false;
        if let Err(e) = self.flush_pending(&mut w) {
            self.note_write_error(&mut w, &e);
        }
        self.check_space(&mut w, false);
        if w.culling {
            more |= self.cull(&mut w);
        }
        if let Err(e) = self.maybe_compact(&mut w) {
            tracing::warn!(error = %e, "could not rewrite the cache index");
        }
        if let Some(n) = w.scrub_todo.pop() {
            self.scrub_dir(n, false, &mut FsckReport::default());
            more |= !w.scrub_todo.is_empty();
        }
        self.update_gauges();
        more
    }

    /// Logs and reclaims removals other threads queued.
    fn flush_pending(&self, w: &mut Writer) -> io::Result<()> {
        let (drops, dels) = {
            let mut p = self.pending.lock();
            (std::mem::take(&mut p.drops), std::mem::take(&mut p.dels))
        };
        if drops.is_empty() && dels.is_empty() {
            return Ok(());
        }
        let mut recs = Vec::new();
        push_removals(&mut recs, &drops, &dels, &[]);
        if let Err(e) = self.append(w, &recs) {
            let mut p = self.pending.lock();
            p.drops.extend(drops);
            p.dels.extend(dels);
            return Err(e);
        }
        self.reclaim(&drops, &dels, &[]);
        Ok(())
    }

    /// Evicts toward the free-space run threshold. True if it should run again.
    fn cull(&self, w: &mut Writer) -> bool {
        let Some((_, s)) = w.space else { return false };
        let t = &self.cfg.thresholds;
        let want_bytes = ((t.brun / 100.0) * s.total_bytes as f64) as u64;
        let short = want_bytes.saturating_sub(s.avail_bytes);
        let mut n = short.div_ceil(self.bs).clamp(1, 4096);
        let want_files = ((t.frun / 100.0) * s.total_files as f64) as u64;
        if s.avail_files < want_files {
            n = n.max(256);
        }
        let victims: Vec<(u64, u64)> = {
            let mut idx = self.index.write();
            (0..n).map_while(|_| idx.evict_one()).collect()
        };
        if victims.is_empty() {
            return false;
        }
        stats::add(&self.stats.disk_culled, victims.len() as u64);
        if let Err(e) = self.retire(w, &victims, &[]) {
            self.note_write_error(w, &e);
            return false;
        }
        self.check_space(w, true);
        w.culling
    }

    /// Logs the removal of blocks and reclaims their space.
    fn retire(
        &self,
        w: &mut Writer,
        victims: &[(u64, u64)],
        drops: &[(u64, bool)],
    ) -> io::Result<()> {
        let mut recs = Vec::new();
        push_removals(&mut recs, drops, &[], victims);
        self.append(w, &recs)?;
        self.reclaim(drops, &[], victims);
        Ok(())
    }

    /// Punches the holes of removed blocks and removes files of dropped or emptied
    /// objects. Runs after the records saying so are durable. A pinned object's file
    /// is left whole (the kernel may be reading it); the scrubber tidies it later.
    fn reclaim(&self, drops: &[(u64, bool)], dels: &[(u64, u64)], victims: &[(u64, u64)]) {
        for &(id, _) in drops {
            self.remove_file(id);
        }
        let mut touched: Vec<u64> = Vec::new();
        for &(id, blk) in dels.iter().chain(victims) {
            // The block may have been stored again since; then its data is live.
            let live = {
                let idx = self.index.read();
                if idx.pinned.contains_key(&id) {
                    continue;
                }
                match idx.obj(id) {
                    Some((_, o)) => o.present.test_any(blk..blk + 1, PRESENT),
                    None => {
                        // The object is gone; its file goes with its Drop.
                        continue;
                    }
                }
            };
            if live {
                continue;
            }
            if let Ok(f) = self.file(id, false) {
                let _ = f.punch_hole(blk * self.bs, self.bs);
            }
            touched.push(id);
        }
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            let empty = self
                .index
                .read()
                .obj(id)
                .is_some_and(|(_, o)| o.present.is_empty());
            if empty {
                // An object with nothing cached keeps its record but not its file, so
                // culling frees inodes too.
                self.remove_file(id);
            }
        }
    }

    /// Appends records and makes them durable.
    fn append(&self, w: &mut Writer, recs: &[Record]) -> io::Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        w.buf.clear();
        for r in recs {
            record::encode(r, &mut w.buf);
        }
        let at = w.log_len;
        w.log.write_all_at(&w.buf, at)?;
        w.log.sync_data()?;
        w.log_len += w.buf.len() as u64;
        Ok(())
    }

    /// Rewrites the log from the index when most of it is history.
    fn maybe_compact(&self, w: &mut Writer) -> io::Result<()> {
        let live_estimate = {
            let idx = self.index.read();
            idx.blocks.len() as u64 * 8 + idx.by_id.len() as u64 * 96 + 64
        };
        if w.log_len < self.cfg.compact_min_bytes || w.log_len < 2 * live_estimate {
            return Ok(());
        }
        self.compact(w)
    }

    fn compact(&self, w: &mut Writer) -> io::Result<()> {
        // Removals still pending are part of the history being rewritten.
        self.flush_pending(w)?;
        let mut buf = Vec::new();
        {
            let idx = self.index.read();
            record::encode(
                &Record::Header {
                    version: record::VERSION,
                    block_size: self.cfg.block_size,
                },
                &mut buf,
            );
            record::encode(
                &Record::NextId {
                    next: self.ids.load(Ordering::Relaxed),
                },
                &mut buf,
            );
            for path in &idx.user_pins {
                record::encode(&Record::Pin { path: path.clone() }, &mut buf);
            }
            for o in idx.slots.iter().flatten() {
                if o.persisted {
                    record::encode(
                        &Record::Object {
                            id: o.id,
                            token: o.token.clone(),
                            path: o.path.to_vec(),
                        },
                        &mut buf,
                    );
                }
            }
            // Blocks in eviction order, so the order survives a restart.
            let mut run: Option<(u64, u64, Vec<u32>)> = None;
            for (k, &crc) in idx.blocks.keys_in_order() {
                let (slot, blk) = unkey(k);
                let Some(o) = idx.slots[slot as usize].as_ref() else {
                    continue;
                };
                match &mut run {
                    Some((id, first, crcs))
                        if *id == o.id
                            && *first + crcs.len() as u64 == blk
                            && crcs.len() < record::MAX_RUN =>
                    {
                        crcs.push(crc)
                    }
                    _ => {
                        if let Some((id, first, crcs)) = run.take() {
                            record::encode(&Record::Add { id, first, crcs }, &mut buf);
                        }
                        run = Some((o.id, blk, vec![crc]));
                    }
                }
            }
            if let Some((id, first, crcs)) = run.take() {
                record::encode(&Record::Add { id, first, crcs }, &mut buf);
            }
        }
        let tmp = self.storage.open(Path::new(LOG_TMP), true)?;
        tmp.set_len(0)?;
        tmp.write_all_at(&buf, 0)?;
        tmp.sync_data()?;
        self.storage.rename(Path::new(LOG_TMP), Path::new(LOG))?;
        // The new log must be the durable one before anything is appended to it.
        self.storage.sync_dir(Path::new(""))?;
        w.log = tmp;
        w.log_len = buf.len() as u64;
        stats::inc(&self.stats.index_compactions);
        Ok(())
    }

    /// Removes data files of unknown objects and punches data no record names.
    fn scrub_dir(&self, n: u32, repair_only_report: bool, report: &mut FsckReport) {
        let dir = subdir(n);
        let Ok(names) = self.storage.list_dir(&dir) else {
            return;
        };
        for name in names {
            let Ok(id) = u64::from_str_radix(&name, 16) else {
                continue;
            };
            if name.len() != 16 || (id & 0xff) as u32 != n {
                continue;
            }
            let present: Option<ExtentTree> = {
                let idx = self.index.read();
                if idx.pinned.contains_key(&id) {
                    continue; // the kernel reads this file directly right now
                }
                idx.obj(id).map(|(_, o)| o.present.clone())
            };
            let Some(present) = present else {
                let pending_drop = self.pending.lock().drops.iter().any(|&(d, _)| d == id);
                if pending_drop {
                    continue;
                }
                report.orphan_files += 1;
                if !repair_only_report {
                    let len = self.file(id, false).and_then(|f| f.len()).unwrap_or(0);
                    self.remove_file(id);
                    stats::add(&self.stats.scrubbed_bytes, len);
                }
                continue;
            };
            let Ok(f) = self.file(id, false) else {
                continue;
            };
            let Ok(ranges) = f.data_ranges() else {
                continue;
            };
            for r in ranges {
                let first = r.start / self.bs;
                let end = r.end.div_ceil(self.bs);
                for blk in first..end {
                    if present.test_any(blk..blk + 1, PRESENT) {
                        continue;
                    }
                    let s = (blk * self.bs).max(r.start);
                    let e = ((blk + 1) * self.bs).min(r.end);
                    report.stray_bytes += e - s;
                    if !repair_only_report {
                        let _ = f.punch_hole(blk * self.bs, self.bs);
                        stats::add(&self.stats.scrubbed_bytes, e - s);
                    }
                }
            }
        }
    }

    /// Checks every block against its checksum and every file against the index.
    /// With `repair`, drops what is damaged and reclaims what is stray.
    pub fn fsck(&self, repair: bool) -> FsckReport {
        let mut report = FsckReport {
            log_tail_dropped: self.report.log_tail_dropped,
            records_dropped: self.report.records_dropped,
            index_reset: self.report.index_reset,
            repaired: repair,
            ..FsckReport::default()
        };
        let objects: Vec<(u64, Vec<Range<u64>>)> = {
            let idx = self.index.read();
            idx.slots
                .iter()
                .flatten()
                .map(|o| (o.id, o.present.iter().map(|(r, _)| r).collect()))
                .collect()
        };
        report.objects = objects.len() as u64;
        let before = self.stats.checksum_failures.load(Ordering::Relaxed);
        for (id, ranges) in objects {
            if !ranges.is_empty() && self.storage.open(&object_path(id), false).is_err() {
                report.missing_files += 1;
            }
            for r in ranges {
                let mut blk = r.start;
                while blk < r.end {
                    let n = (r.end - blk).min(256);
                    // `read` verifies and drops what is damaged from the index.
                    let got = self.read(id, blk, n);
                    report.blocks_checked += n;
                    report.blocks_bad += got.iter().filter(|b| b.is_none()).count() as u64;
                    blk += n;
                }
            }
        }
        debug_assert!(self.stats.checksum_failures.load(Ordering::Relaxed) >= before);
        for n in 0..256 {
            self.scrub_dir(n, !repair, &mut report);
        }
        let mut w = self.writer.lock();
        if repair {
            if let Err(e) = self
                .flush_pending(&mut w)
                .and_then(|_| self.compact(&mut w))
            {
                tracing::error!(error = %e, "could not write the repaired index");
            }
        } else {
            // Without repair, damaged blocks are only reported; put nothing on disk.
            let mut p = self.pending.lock();
            p.dels.clear();
        }
        report
    }

    /// Makes everything pending durable (at unmount).
    pub fn flush(&self) -> io::Result<()> {
        let mut w = self.writer.lock();
        self.flush_pending(&mut w)
    }

    /// Makes everything pending durable and releases the directory's lock, so another
    /// process may open it at once. The tier writes nothing afterwards.
    pub fn close(&self) -> io::Result<()> {
        let mut w = self.writer.lock();
        let r = self.flush_pending(&mut w);
        w.failed_until = Some(Instant::now() + Duration::from_secs(u32::MAX as u64));
        self.lock.lock().take();
        r
    }

    fn is_closed(&self) -> bool {
        self.lock.lock().is_none()
    }

    pub fn used_bytes(&self) -> u64 {
        self.index.read().blocks.weight()
    }

    pub fn blocks(&self) -> u64 {
        self.index.read().blocks.len() as u64
    }

    fn update_gauges(&self) {
        let (w, n, objs) = {
            let idx = self.index.read();
            (idx.blocks.weight(), idx.blocks.len(), idx.by_id.len())
        };
        stats::set(&self.stats.disk_bytes, w);
        stats::set(&self.stats.disk_blocks, n as u64);
        stats::set(&self.stats.disk_objects, objs as u64);
    }

    /// Writes an index of `objects` × `blocks_per_object` blocks straight into the log
    /// without data, to measure how fast a large index opens (benchmark only; the
    /// blocks read back as damaged).
    #[doc(hidden)]
    pub fn bench_populate_index(&self, objects: u64, blocks_per_object: u64) -> io::Result<()> {
        let mut w = self.writer.lock();
        let mut recs = Vec::new();
        for _ in 0..objects {
            let id = self.allocate_id();
            let path = format!("bench/{id}").into_bytes();
            recs.push(Record::Object {
                id,
                token: Token::Stat {
                    size: blocks_per_object * self.bs,
                    mtime_ns: 0,
                    ctime_ns: 0,
                    ino: id,
                },
                path,
            });
            let mut first = 0;
            while first < blocks_per_object {
                let n = (blocks_per_object - first).min(record::MAX_RUN as u64);
                recs.push(Record::Add {
                    id,
                    first,
                    crcs: (0..n).map(|i| i as u32).collect(),
                });
                first += n;
            }
            if recs.len() > 1024 {
                self.append(&mut w, &recs)?;
                recs.clear();
            }
        }
        self.append(&mut w, &recs)
    }
}

/// True if any object directory holds a file.
fn has_data_files(storage: &dyn Storage) -> bool {
    (0..256u32).any(|n| storage.list_dir(&subdir(n)).is_ok_and(|f| !f.is_empty()))
}

fn push_removals(
    recs: &mut Vec<Record>,
    drops: &[(u64, bool)],
    dels: &[(u64, u64)],
    victims: &[(u64, u64)],
) {
    for &(id, persisted) in drops {
        if persisted {
            recs.push(Record::Drop { id });
        }
    }
    let mut all: Vec<(u64, u64)> = dels.iter().chain(victims).copied().collect();
    all.sort_unstable();
    all.dedup();
    let mut i = 0;
    while i < all.len() {
        let (id, first) = all[i];
        let mut count = 1;
        while i + (count as usize) < all.len() && all[i + count as usize] == (id, first + count) {
            count += 1;
        }
        recs.push(Record::Del { id, first, count });
        i += count as usize;
    }
}

/// Replays a log into `index`. Returns the end of the valid prefix, or None if the
/// log does not even start with a valid header.
fn replay(
    bytes: &[u8],
    block_size: u32,
    index: &mut Index,
    report: &mut OpenReport,
) -> Result<Option<u64>, DiskError> {
    if bytes.is_empty() {
        return Ok(Some(0));
    }
    let mut off = match record::decode(bytes) {
        Ok((
            Record::Header {
                version,
                block_size: bsz,
            },
            n,
        )) => {
            if version != record::VERSION {
                tracing::warn!(version, "cache index has an unknown format version");
                return Ok(None);
            }
            if bsz != block_size {
                return Err(DiskError::BlockSizeMismatch {
                    found: bsz,
                    configured: block_size,
                });
            }
            n
        }
        _ => return Ok(None),
    };
    // Size the tables once: count the blocks first.
    let mut blocks = 0usize;
    let mut o = off;
    while let Ok((r, n)) = record::decode(&bytes[o..]) {
        if let Record::Add { crcs, .. } = &r {
            blocks += crcs.len();
        }
        o += n;
    }
    index.blocks.reserve(blocks);

    loop {
        let (rec, n) = match record::decode(&bytes[off..]) {
            Ok(x) => x,
            Err(DecodeError::Incomplete) if off == bytes.len() => break,
            Err(_) => break,
        };
        off += n;
        match rec {
            Record::Header { .. } => report.records_dropped += 1,
            Record::Object { id, token, path } => {
                index.add_object(id, Arc::from(path), token, true);
            }
            Record::Add { id, first, crcs } => {
                let Some(&slot) = index.by_id.get(&id) else {
                    report.records_dropped += 1;
                    continue;
                };
                let size = index.slots[slot as usize]
                    .as_ref()
                    .expect("live")
                    .token
                    .size();
                let mut end = first;
                for (i, crc) in crcs.into_iter().enumerate() {
                    let blk = first + i as u64;
                    // A block past the object's end cannot be valid.
                    let Some(k) = key(slot, blk).filter(|_| blk.saturating_mul(index.bs) < size)
                    else {
                        report.records_dropped += 1;
                        break;
                    };
                    index.blocks.insert_loaded(k, crc);
                    end = blk + 1;
                }
                if end > first {
                    index.slots[slot as usize]
                        .as_mut()
                        .expect("live")
                        .present
                        .set(first..end, PRESENT);
                }
            }
            Record::Del { id, first, count } => {
                let Some(&slot) = index.by_id.get(&id) else {
                    continue;
                };
                let present: Vec<Range<u64>> = index.slots[slot as usize]
                    .as_ref()
                    .expect("live")
                    .present
                    .runs(first..first.saturating_add(count))
                    .filter(|(_, b)| *b != 0)
                    .map(|(r, _)| r)
                    .collect();
                for r in present {
                    for blk in r {
                        index.remove_block(slot, blk);
                    }
                }
            }
            Record::Drop { id } => {
                index.remove_object(id);
                index.next_id = index.next_id.max(id + 1);
            }
            Record::NextId { next } => index.next_id = index.next_id.max(next),
            Record::Pin { path } => {
                index.user_pins.insert(path);
            }
            Record::Unpin { path } => {
                index.user_pins.remove(&path);
            }
        }
    }
    Ok(Some(off as u64))
}

/// Keeps an object's data file whole while the kernel reads it directly.
pub struct Pin {
    tier: Arc<DiskTier>,
    id: u64,
}

impl Pin {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut idx = self.tier.index.write();
        if let Some(n) = idx.pinned.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                idx.pinned.remove(&self.id);
            }
        }
    }
}
