//! Engine statistics: relaxed atomic counters, cheap to bump on the read path and to
//! read while running. Field names are stable: `strata stats --json` prints them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

macro_rules! stats {
    ($($(#[$kind:ident])? $name:ident : $doc:literal,)*) => {
        /// Live counters and gauges.
        #[derive(Default, Debug)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
        #[serde(default)]
        pub struct StatsSnapshot {
            $(#[doc = $doc] pub $name: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl StatsSnapshot {
            /// Every field as (name, value, description), in a stable order.
            pub fn fields(&self) -> Vec<(&'static str, u64, &'static str)> {
                vec![$((stringify!($name), self.$name, $doc),)*]
            }
        }
    };
}

stats! {
    reads: "read requests served by the engine",
    read_bytes: "bytes returned to readers",
    ram_hits: "blocks served from the RAM tier",
    ram_hit_bytes: "bytes served from the RAM tier",
    disk_hits: "blocks served from the disk tier",
    disk_hit_bytes: "bytes served from the disk tier",
    inflight_hits: "blocks served from a fill still in flight",
    misses: "blocks missing from every tier and fetched from the origin",
    fetch_waits: "times a reader waited for another reader's fetch of the same range",
    origin_requests: "read requests sent to the origin",
    origin_bytes: "bytes read from the origin",
    read_us: "microseconds spent answering reads, in all",
    fuse_read_us: "microseconds the mount's read handlers took, in all: read_us plus joining the blocks and handing the reply to the kernel (with --uring: copying it into the queue's buffer)",
    origin_wait_us: "microseconds readers waited for origin read requests (hand-off to an origin thread included)",
    origin_read_us: "microseconds the origin took to answer those requests",
    origin_errors: "origin reads that failed",
    origin_changed: "origin reads that saw the file change under them (not cached)",
    origin_unreachable: "origin requests that failed because it could not be reached (timeout, connection lost)",
    stale_served: "answers given from the cache because the origin could not be asked",
    readahead_requests: "origin requests issued by read-ahead",
    readahead_bytes: "bytes fetched by read-ahead",
    readahead_held: "read-ahead blocks (or files ahead) not fetched because the disk writer was behind",
    dir_prefetches: "files fetched ahead because a directory's files were being read in listing order",
    list_prefetches: "directory listings fetched ahead of a tree walk (find, du, ls -R)",
    fills_queued: "blocks queued for the disk tier",
    fills_done: "blocks committed to the disk tier",
    fills_dropped: "fills dropped because the fill queue was full",
    fills_refetched: "blocks of dropped fills fetched again from the origin once the disk writer was idle (RAM no longer held them)",
    fill_errors: "fills that failed on a cache device error",
    promotions: "blocks copied from the disk tier to the RAM tier",
    passthrough_opens: "opens of fully cached files the kernel then reads directly from the disk tier",
    fuse_uring_requests: "FUSE requests answered from the io_uring queues (--uring) rather than /dev/fuse",
    ram_puts: "blocks the RAM tier took",
    ram_refusals: "puts the RAM tier refused",
    compressed_hits: "blocks served from the compressed RAM tier (also counted in ram_hits: both are memory)",
    compressed_hit_bytes: "bytes served from the compressed RAM tier",
    compressed_puts: "blocks the compressed RAM tier took (evicted from RAM)",
    compressed_refusals: "blocks the compressed RAM tier refused (did not compress to 75% or less)",
    compressed_evictions: "blocks evicted from the compressed RAM tier (forgotten)",
    disk_refusals: "fills the disk tier refused (stopped, object gone)",
    disk_refused_space: "fills refused because free space was below the stop threshold",
    ram_evictions: "blocks evicted from the RAM tier",
    disk_evictions: "blocks evicted from the disk tier to respect its size limit",
    disk_culled: "blocks culled from the disk tier because free space ran low",
    checksum_failures: "disk blocks whose checksum did not match (dropped and refetched)",
    disk_read_errors: "disk tier reads that failed (served from the origin instead)",
    disk_write_errors: "disk tier writes or syncs that failed",
    invalidations: "object versions invalidated because the origin changed",
    writes: "writes through the cache, answered once the origin took them",
    write_bytes: "bytes written through the cache",
    write_errors: "changes the origin refused or could not be asked to make",
    writes_back: "writes answered once in the write-back journal (--write-back); also counted in writes",
    wb_flushes: "files whose dirty data was written to the origin (write-back)",
    wb_flushed_bytes: "dirty bytes written to the origin (write-back)",
    wb_flush_errors: "write-backs the origin refused or could not be asked to make (kept dirty and retried)",
    wb_conflicts: "files the origin changed under dirty data (the local bytes were saved beside it as a conflict copy)",
    wb_fallbacks: "writes made write-through in write-back mode (journal full or failing, dirty limit not draining, O_DIRECT)",
    wb_throttled: "writes that waited for dirty data to drain below --dirty-limit",
    journal_replays: "files whose journaled dirty data was found at startup and sent to the origin",
    shared_hits: "blocks served from the shared tier (memcached, Redis)",
    shared_hit_bytes: "bytes served from the shared tier",
    shared_misses: "blocks asked of the shared tier that it did not have (or whose server did not answer in time)",
    shared_puts: "blocks stored in the shared tier",
    shared_put_bytes: "bytes stored in the shared tier (with their framing)",
    shared_refused: "puts to the shared tier dropped: its queue was full or the server's breaker open",
    shared_errors: "shared tier requests that failed (refused, reset, unreachable)",
    shared_timeouts: "shared tier requests that got no answer within --shared-timeout",
    shared_verify_failures: "shared tier values that failed their check (damaged, under another key, or without the secret's MAC): taken for misses and dropped",
    shared_lease_waits: "fetches that waited for another machine fetching the same blocks (its lease in the shared tier)",
    shared_lease_hits: "of those, fetches answered by the other machine's put rather than the origin",
    device_hits: "blocks served from the device-memory tier (GPU), to device reads or the host",
    device_hit_bytes: "bytes served from the device-memory tier",
    device_puts: "blocks stored in the device-memory tier",
    device_refusals: "blocks the device-memory tier refused (too large, device off, every slot on loan)",
    device_evictions: "blocks evicted from the device-memory tier",
    device_errors: "device operations that failed (the tier turns itself off at the first)",
    device_loans: "blocks lent in place from the device-memory tier (Engine::lend_device)",
    revalidations: "coherency checks against the origin",
    lookups_by_listing: "lookups of missing names answered from the parent's trusted listing, without asking the origin",
    index_commits: "group commits of the disk index",
    index_compactions: "rewrites of the disk index log",
    index_records_dropped: "damaged or inconsistent index records skipped at startup",
    scrubbed_bytes: "bytes of stray cache data reclaimed by the scrubber",
    #[gauge] ram_bytes: "bytes held by the RAM tier",
    #[gauge] ram_blocks: "blocks held by the RAM tier",
    #[gauge] ram_shared_bytes: "bytes the RAM tier does not hold twice because blocks with the same contents share one buffer",
    #[gauge] compressed_shared_bytes: "bytes the compressed RAM tier does not hold twice because blocks with the same contents share their compressed bytes",
    #[gauge] compressed_bytes: "bytes held by the compressed RAM tier (compressed, with its per-block overhead)",
    #[gauge] compressed_blocks: "blocks held by the compressed RAM tier",
    #[gauge] compressed_raw_bytes: "bytes the compressed RAM tier's blocks hold uncompressed",
    #[gauge] device_bytes: "bytes held by the device-memory tier (whole slots)",
    #[gauge] device_blocks: "blocks held by the device-memory tier",
    #[gauge] disk_bytes: "bytes held by the disk tier (whole blocks)",
    #[gauge] disk_blocks: "blocks held by the disk tier",
    #[gauge] disk_objects: "objects known to the disk tier",
    #[gauge] disk_state: "disk tier filling state: 0 normal, 1 culling, 2 stopped (low space), 3 failed (device errors)",
    #[gauge] inflight_fill_bytes: "bytes queued for or being written to the disk tier",
    #[gauge] inflight_fill_peak: "the most bytes ever queued for the disk tier at once (at most the fill queue's size)",
    #[gauge] meta_bytes: "bytes the metadata caches hold (attributes, listings, symlink targets, extended attributes)",
    #[gauge] dropped_fill_blocks: "blocks of dropped fills waiting for the disk writer to be idle, to be offered again",
    #[gauge] dirty_bytes: "bytes written through the mount not yet on the origin (write-back)",
    #[gauge] dirty_files: "files holding dirty data (write-back)",
    #[gauge] active_objects: "objects the engine is tracking",
}

/// Adds `n` to a counter.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Adds one to a counter.
#[inline]
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Takes `n` from a gauge.
#[inline]
pub fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Relaxed);
}

/// Sets a gauge.
#[inline]
pub fn set(c: &AtomicU64, v: u64) {
    c.store(v, Relaxed);
}

/// One tier's figures, as `strata stats` prints them (a row each; `tiers` in JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TierRow {
    pub name: String,
    pub hits: u64,
    pub hit_bytes: u64,
    pub puts: u64,
    pub refusals: u64,
    pub evictions: u64,
    pub blocks: u64,
    /// Bytes held, as the tier weighs them against its size.
    pub bytes: u64,
    /// Compressed RAM only: what its blocks hold uncompressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_bytes: Option<u64>,
    /// The memory tiers: bytes not held twice because identical blocks share a buffer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_bytes: Option<u64>,
}

impl StatsSnapshot {
    /// The tiers, fastest first: RAM, compressed RAM (when it has been used or
    /// holds anything), disk, the shared tier (when there is one: it holds nothing
    /// here, so its blocks and bytes are what this machine put there).
    pub fn tiers(&self, compressed: bool, shared: bool) -> Vec<TierRow> {
        let mut rows = vec![TierRow {
            name: "ram".into(),
            hits: self.ram_hits - self.compressed_hits.min(self.ram_hits),
            hit_bytes: self.ram_hit_bytes - self.compressed_hit_bytes.min(self.ram_hit_bytes),
            puts: self.ram_puts,
            refusals: self.ram_refusals,
            evictions: self.ram_evictions,
            blocks: self.ram_blocks,
            bytes: self.ram_bytes,
            raw_bytes: None,
            shared_bytes: Some(self.ram_shared_bytes),
        }];
        if compressed {
            rows.push(TierRow {
                name: "compressed".into(),
                hits: self.compressed_hits,
                hit_bytes: self.compressed_hit_bytes,
                puts: self.compressed_puts,
                refusals: self.compressed_refusals,
                evictions: self.compressed_evictions,
                blocks: self.compressed_blocks,
                bytes: self.compressed_bytes,
                raw_bytes: Some(self.compressed_raw_bytes),
                shared_bytes: Some(self.compressed_shared_bytes),
            });
        }
        // The device-memory tier, where one was configured and used.
        if self.device_puts + self.device_blocks + self.device_refusals + self.device_errors > 0 {
            rows.push(TierRow {
                name: "device".into(),
                hits: self.device_hits,
                hit_bytes: self.device_hit_bytes,
                puts: self.device_puts,
                refusals: self.device_refusals,
                evictions: self.device_evictions,
                blocks: self.device_blocks,
                bytes: self.device_bytes,
                raw_bytes: None,
                shared_bytes: None,
            });
        }
        rows.push(TierRow {
            name: "disk".into(),
            hits: self.disk_hits,
            hit_bytes: self.disk_hit_bytes,
            puts: self.fills_done,
            refusals: self.disk_refusals,
            evictions: self.disk_evictions + self.disk_culled,
            blocks: self.disk_blocks,
            bytes: self.disk_bytes,
            raw_bytes: None,
            shared_bytes: None,
        });
        if shared {
            rows.push(TierRow {
                name: "shared".into(),
                hits: self.shared_hits,
                hit_bytes: self.shared_hit_bytes,
                puts: self.shared_puts,
                refusals: self.shared_refused,
                evictions: 0,
                blocks: self.shared_puts,
                bytes: self.shared_put_bytes,
                raw_bytes: None,
                shared_bytes: None,
            });
        }
        rows
    }
}
