//! Engine configuration.

use std::sync::Arc;
use std::time::Duration;

use crate::storage::Storage;
use crate::tier::disk::Thresholds;

/// Where and how big the disk tier is.
#[derive(Clone)]
pub struct DiskSetup {
    pub storage: Arc<dyn Storage>,
    /// Most bytes of cached blocks.
    pub capacity: u64,
    pub thresholds: Thresholds,
}

/// A device-memory tier: a pool of `capacity` bytes on `device` (a GPU through the
/// `cuda` feature's `CudaDevice`, or the fake device in tests).
#[derive(Clone)]
pub struct DeviceSetup {
    pub device: Arc<dyn crate::device::Device>,
    pub capacity: u64,
}

/// The block size of a new cache. Small enough that a cold random 4 KiB read fetches
/// little more than it asks for (16 KiB takes as long as 4 KiB over a 2 ms link, 64 KiB
/// about 0.4 ms more); sequential reads do not depend on it, since runs of blocks are
/// fetched in requests of up to `max_fetch`.
pub const DEFAULT_BLOCK_SIZE: u32 = 16 * 1024;

#[derive(Clone)]
pub struct Config {
    /// Unit of caching, a power of two from 4 KiB to 16 MiB.
    pub block_size: u32,
    /// Most bytes the memory tiers hold together: RAM (block data plus a fixed charge
    /// per block) and compressed RAM.
    pub ram_capacity: u64,
    /// Most of `ram_capacity` the compressed RAM tier may hold (compressed data plus
    /// a fixed charge per block); 0: none. Blocks RAM evicts go there if they
    /// compress to 75 % or less; RAM uses what it leaves unused.
    pub compressed_ram_capacity: u64,
    /// The disk tier, if any.
    pub disk: Option<DiskSetup>,
    /// How long attributes, listings and tokens are trusted before the origin is asked
    /// again: exactly this long when `attr_ttl_max` is None, at least this long
    /// otherwise.
    pub attr_ttl: Duration,
    /// Adaptive trust, as BSD's and Solaris's NFS clients do it: an answer about
    /// something the origin has not changed for a long time is trusted longer, a tenth
    /// of how long it had been unchanged when the origin gave the answer, within
    /// `attr_ttl ..= attr_ttl_max`. None: every answer is trusted `attr_ttl`.
    pub attr_ttl_max: Option<Duration>,
    /// Most bytes waiting to be written to the disk tier; beyond it fills are dropped.
    pub fill_queue_bytes: u64,
    /// How long the disk writer gathers fills before a group commit (a full 8 MiB
    /// batch commits at once). Each commit costs two syncs; a trickle of small fills
    /// (cold random reads) commits once per read at zero, a few times a second with
    /// an interval, for disks whose syncs are costly. On the development VM neither
    /// measured better (bench/results/2026-11-22-commit-interval). Zero commits
    /// whatever is queued at once.
    pub commit_interval: Duration,
    /// Largest read-ahead window.
    pub readahead_max: u64,
    /// Largest single origin request.
    pub max_fetch: u64,
    /// Threads that run read-ahead fetches (origin requests in parallel); 0 turns
    /// read-ahead off.
    pub prefetch_threads: usize,
    /// Most files fetched ahead of a reader that opens a directory's files in listing
    /// order (tar, cp -r, rsync); 0 turns this off.
    pub dir_prefetch_files: usize,
    /// Of each file fetched ahead that way, the first this many bytes.
    pub dir_prefetch_bytes: u64,
    /// The disk index log is rewritten when larger than this and twice its live size.
    pub compact_min_bytes: u64,
    /// Most memory the metadata caches (attributes, listings, symlink targets,
    /// extended attributes) use, as their entries weigh.
    pub meta_bytes: u64,
    /// A file is handed to the kernel to read directly (passthrough) only if the
    /// origin has not changed it for this long: files being written (logs) stay on
    /// the path that follows their changes.
    pub passthrough_min_age: Duration,
    /// Smaller files are not passed through: setting passthrough up costs more than
    /// reading a small file through strata (and the kernel caches it either way).
    pub passthrough_min_size: u64,
    /// Longest wait for one origin request (None: wait as long as the origin takes).
    /// Past it the request fails with ETIMEDOUT and the origin counts as unreachable:
    /// cached versions are served without asking it until it answers again.
    pub origin_timeout: Option<Duration>,
    /// Threads that carry origin requests when there is a timeout.
    pub origin_threads: usize,
    /// Refuse every change (EROFS), as the mount did before it took writes.
    pub read_only: bool,
    /// Write-back caching of file data (None: write-through). Needs a disk tier: the
    /// journal lives in its cache directory.
    pub write_back: Option<WriteBack>,
    /// A tier on other machines' memory (memcached, Redis), below the disk.
    pub shared: Option<crate::tier::shared::SharedConfig>,
    /// Device memory (a GPU's) as a tier below memory, and the target of
    /// `Engine::read_device`.
    pub device: Option<DeviceSetup>,
}

/// How dirty data is kept and sent to the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteBack {
    /// Dirty data older than this is sent to the origin.
    pub delay: Duration,
    /// `fsync` also sends the file's dirty data to the origin and syncs it there
    /// (otherwise it answers once the data is durable in the journal).
    pub fsync_origin: bool,
    /// Most dirty bytes held at once; writers past it wait for the flushers.
    pub dirty_limit: u64,
}

impl Default for WriteBack {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(5),
            fsync_origin: false,
            dirty_limit: 256 << 20,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            ram_capacity: 256 << 20,
            compressed_ram_capacity: 0,
            disk: None,
            attr_ttl: Duration::from_secs(1),
            attr_ttl_max: None,
            fill_queue_bytes: 64 << 20,
            commit_interval: Duration::ZERO,
            readahead_max: 8 << 20,
            max_fetch: 1 << 20,
            prefetch_threads: 8,
            dir_prefetch_files: 32,
            dir_prefetch_bytes: 1 << 20,
            compact_min_bytes: 16 << 20,
            meta_bytes: 64 << 20,
            passthrough_min_age: Duration::from_secs(60),
            passthrough_min_size: 1 << 20,
            origin_timeout: Some(Duration::from_secs(10)),
            origin_threads: 32,
            read_only: false,
            write_back: None,
            shared: None,
            device: None,
        }
    }
}

/// Memory the disk index takes per cached block, at most (the engine benchmark's
/// `ram_bytes_per_block`: 44 bytes after an open, more while its hash map grows).
pub const INDEX_BYTES_PER_BLOCK: u64 = 64;
/// And per cached file (the benchmark's `ram_bytes_per_small_object`: 523 bytes for
/// one-block files with short paths), for paths of up to about 100 bytes.
pub const INDEX_BYTES_PER_OBJECT: u64 = 640;
/// Files the engine tracks at once beyond those held open (idle ones are forgotten
/// past it; their blocks stay cached).
pub const MAX_ACTIVE_OBJECTS: usize = 1 << 14;
/// Metadata journal appends waiting to be written at most (past it they are
/// dropped: a cache may forget).
pub const META_JOURNAL_BUFFER: u64 = 8 << 20;
/// Runs of blocks whose disk fill was dropped (the writer behind) remembered to be
/// offered again once it is idle; older ones are forgotten past it.
pub const MAX_DROPPED_RUNS: usize = 1 << 16;
/// What one such record costs (its file's path and version), for paths of up to about
/// 100 bytes.
pub const DROPPED_RUN_BYTES: u64 = 256;
/// What one tracked file costs at most (its version, path, extent tree), for paths of
/// up to about 100 bytes and a fragmented tree.
pub const ACTIVE_OBJECT_BYTES: u64 = 1024;

impl Config {
    /// The most memory the engine holds, beyond its code and the buffers of the
    /// threads that call it: block data in RAM (`ram_capacity`, its per-block charge
    /// included), blocks queued for the disk (`fill_queue_bytes`), metadata
    /// (`meta_bytes`), the disk index when the disk tier is full of one-block files
    /// (the worst case: each file costs far more than a block), the files it
    /// tracks, the dropped fills it remembers, the metadata journal's buffers, and the
    /// read-ahead threads' requests in flight (each buffer of
    /// `max_fetch`, and its copy into blocks). Files held open beyond
    /// `MAX_ACTIVE_OBJECTS` cost `ACTIVE_OBJECT_BYTES` each on top.
    pub fn memory_bound(&self) -> u64 {
        let index = self.disk.as_ref().map_or(0, |d| {
            d.capacity / self.block_size as u64 * (INDEX_BYTES_PER_BLOCK + INDEX_BYTES_PER_OBJECT)
        });
        self.ram_capacity
            + self.fill_queue_bytes
            + self.meta_bytes
            + index
            + MAX_ACTIVE_OBJECTS as u64 * ACTIVE_OBJECT_BYTES
            + MAX_DROPPED_RUNS as u64 * DROPPED_RUN_BYTES
            // The metadata journal: appends waiting, and a rewrite of it (about as
            // large as the metadata it holds).
            + self.disk.as_ref().map_or(0, |_| META_JOURNAL_BUFFER + self.meta_bytes)
            + self.prefetch_threads as u64 * 2 * self.max_fetch
            // Dirty data is held in RAM as well as in the journal.
            + self.write_back.map_or(0, |w| w.dirty_limit)
    }

    /// Checks the values; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(4096..=16 << 20).contains(&bs) {
            return Err(format!(
                "block size must be a power of two from 4KiB to 16MiB (got {bs})"
            ));
        }
        if self.commit_interval > Duration::from_secs(60) {
            return Err("the commit interval must be at most 60s".into());
        }
        if let Some(max) = self.attr_ttl_max
            && max < self.attr_ttl
        {
            return Err(format!(
                "the longest attribute trust ({max:?}) must be at least the attribute TTL ({:?})",
                self.attr_ttl
            ));
        }
        if self.compressed_ram_capacity > self.ram_capacity {
            return Err(format!(
                "the compressed RAM tier ({}) is a part of the RAM budget ({}): it cannot be larger",
                self.compressed_ram_capacity, self.ram_capacity
            ));
        }
        if self.fill_queue_bytes < bs as u64 {
            return Err(format!(
                "the fill queue must hold at least one block ({bs} bytes)"
            ));
        }
        if self.max_fetch < bs as u64 {
            return Err("the largest origin request must hold at least one block".into());
        }
        if let Some(w) = &self.write_back {
            if self.disk.is_none() {
                return Err(
                    "write-back needs a cache directory for its journal (no --no-disk)".into(),
                );
            }
            if self.read_only {
                return Err("write-back and read-only exclude each other".into());
            }
            if w.dirty_limit < 1 << 20 {
                return Err(format!(
                    "the dirty limit must be at least 1MiB (got {})",
                    w.dirty_limit
                ));
            }
            if w.delay > Duration::from_secs(3600) {
                return Err("the write-back delay must be at most 1h".into());
            }
        }
        if let Some(d) = &self.disk {
            d.thresholds.validate()?;
            if d.capacity < bs as u64 {
                return Err(format!(
                    "the cache size ({}) must hold at least one block ({bs})",
                    d.capacity
                ));
            }
        }
        Ok(())
    }
}
