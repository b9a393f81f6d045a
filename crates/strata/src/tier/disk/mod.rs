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

mod index;
mod read;
pub(crate) mod record;
mod replay;
mod scrub;
mod space;
mod tier;
mod write;
pub mod writer;

use index::*;
use replay::push_removals;

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

    /// The version `id` is now the origin file at `token` (a write through the cache
    /// brought its blocks there first). Logged with its next blocks, after the
    /// removals of the blocks the write changed; a crash before that leaves the old
    /// token, which the origin no longer matches, and the version is dropped.
    pub fn retoken(&self, id: u64, token: Token) {
        let mut idx = self.index.write();
        if let Some(&s) = idx.by_id.get(&id)
            && let Some(o) = idx.slots[s as usize].as_mut()
        {
            o.token = token;
            o.retokened = true;
        }
    }

    /// True while the kernel reads the version's data file directly (passthrough).
    pub fn is_pinned(&self, id: u64) -> bool {
        self.index.read().pinned.contains_key(&id)
    }

    /// Forgets an object version now; its data is removed by the writer.
    pub fn drop_object(&self, id: u64) {
        let removed = self.index.write().remove_object(id);
        if let Some(o) = removed {
            self.pending.lock().drops.push((id, o.persisted));
            self.update_gauges();
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
