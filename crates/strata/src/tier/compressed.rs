//! The compressed RAM tier (zswap's and zcache's role): blocks the RAM tier evicts are
//! kept here compressed with LZ4, and handed back up on a hit.
//!
//! It **refuses** a block whose compressed form is more than [`KEEP_RATIO_PCT`] % of
//! its size: keeping it would save little memory for a decompression on every hit
//! (random bytes, media, archives already compressed). It is exclusive with the RAM
//! tier: a hit removes the block here and the chain puts it in RAM, so the two hold
//! each block once and together hold more distinct blocks than RAM alone.
//! Bounded by compressed bytes plus [`ENTRY_OVERHEAD`] per block, under S3-FIFO.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{BlockKey, Refusal, Tier};
use crate::policy::{Refused, S3Fifo};
use crate::stats::{self, Stats};
use crate::sync::Mutex;

/// Bytes charged per block on top of its compressed bytes: the map and queue slots,
/// the boxed buffer's header and its length, rounded up.
pub const ENTRY_OVERHEAD: u64 = 96;

/// A block is kept only if it compresses to at most this share of its size (in %).
/// zswap keeps anything smaller than a page; here a block that saves less than a
/// quarter is refused: with the per-block overhead and an LZ4 decompression on each
/// hit it would hold barely more data than RAM at the cost of a copy.
pub const KEEP_RATIO_PCT: usize = 75;

/// One block, compressed.
#[derive(Default)]
struct Packed {
    data: Box<[u8]>,
}

fn weigh(p: &Packed) -> u64 {
    p.data.len() as u64 + ENTRY_OVERHEAD
}

type Order = S3Fifo<BlockKey, Packed, fn(&Packed) -> u64>;

struct State {
    order: Order,
    /// What the held blocks weigh uncompressed (for the ratio).
    raw: u64,
}

impl State {
    fn take(&mut self, key: &BlockKey) -> Option<Packed> {
        let p = self.order.remove(key)?;
        self.raw -= raw_len(&p);
        Some(p)
    }
}

pub struct CompressedTier {
    /// A hit removes its entry, so even gets take the lock exclusively.
    state: Mutex<State>,
    stats: Arc<Stats>,
    /// Bytes held (as weighed), for the RAM tier that shares a budget with this one.
    used: Arc<AtomicU64>,
    /// Objects whose recent blocks were refused, to refuse the next ones without
    /// compressing them (a media file, an archive): see [`Streaks`].
    streaks: Streaks,
}

/// Refusal streaks by object, in a small table indexed by the object's id (a hint:
/// two objects sharing a slot only cost a compression attempt).
struct Streaks {
    slots: Vec<(AtomicU64, AtomicU64)>,
}

/// After this many refusals in a row an object's blocks are refused untried...
const STREAK: u64 = 8;
/// ...except one in this many, in case a later part of it compresses.
const RETRY_EVERY: u64 = 16;

impl Streaks {
    fn new() -> Self {
        Self {
            slots: (0..1024)
                .map(|_| (AtomicU64::new(u64::MAX), AtomicU64::new(0)))
                .collect(),
        }
    }

    fn slot(&self, obj: u64) -> &(AtomicU64, AtomicU64) {
        &self.slots[(obj.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize]
    }

    /// True when a block of `obj` should be refused without trying it.
    fn skip(&self, obj: u64) -> bool {
        let (o, n) = self.slot(obj);
        if o.load(Ordering::Relaxed) != obj || n.load(Ordering::Relaxed) < STREAK {
            return false;
        }
        let skipped = n.fetch_add(1, Ordering::Relaxed) + 1 - STREAK;
        !skipped.is_multiple_of(RETRY_EVERY)
    }

    fn note(&self, obj: u64, refused: bool) {
        let (o, n) = self.slot(obj);
        if o.swap(obj, Ordering::Relaxed) != obj || !refused {
            n.store(refused as u64, Ordering::Relaxed);
        } else {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl CompressedTier {
    pub fn new(capacity: u64, stats: Arc<Stats>) -> Self {
        Self {
            state: Mutex::new(State {
                order: S3Fifo::new(capacity, weigh as fn(&Packed) -> u64),
                raw: 0,
            }),
            stats,
            used: Arc::new(AtomicU64::new(0)),
            streaks: Streaks::new(),
        }
    }

    /// The bytes held, kept up to date.
    pub fn used(&self) -> Arc<AtomicU64> {
        self.used.clone()
    }

    /// Compresses a block, or says it does not compress well enough to keep.
    fn pack(data: &[u8]) -> Result<Packed, Refusal> {
        let packed = lz4_flex::block::compress_prepend_size(data);
        if packed.len() * 100 > data.len() * KEEP_RATIO_PCT {
            return Err(Refusal::Incompressible);
        }
        Ok(Packed {
            data: packed.into_boxed_slice(),
        })
    }

    fn gauges(&self, st: &State) {
        self.used.store(st.order.weight(), Ordering::Relaxed);
        stats::set(&self.stats.compressed_bytes, st.order.weight());
        stats::set(&self.stats.compressed_blocks, st.order.len() as u64);
        stats::set(&self.stats.compressed_raw_bytes, st.raw);
    }
}

impl Tier for CompressedTier {
    fn name(&self) -> &'static str {
        "compressed"
    }

    fn get(&self, key: &BlockKey) -> Option<Bytes> {
        let packed = {
            let mut st = self.state.lock();
            let p = st.take(key)?;
            self.gauges(&st);
            p
        };
        match lz4_flex::block::decompress_size_prepended(&packed.data) {
            Ok(v) => {
                stats::inc(&self.stats.compressed_hits);
                stats::add(&self.stats.compressed_hit_bytes, v.len() as u64);
                Some(Bytes::from(v))
            }
            // Only memory damage could cause this: a miss, never other bytes.
            Err(_) => None,
        }
    }

    fn contains(&self, key: &BlockKey) -> bool {
        self.state.lock().order.contains(key)
    }

    fn put(&self, key: BlockKey, data: Bytes) -> Result<Vec<(BlockKey, Bytes)>, Refusal> {
        // Compressed outside the lock, unless its object's blocks keep failing to.
        let packed = if self.streaks.skip(key.obj) {
            Err(Refusal::Incompressible)
        } else {
            let p = Self::pack(&data);
            self.streaks.note(key.obj, p.is_err());
            p
        };
        let mut st = self.state.lock();
        // An older copy of the key must not outlive this put, taken or not.
        st.take(&key);
        let r = match packed {
            Ok(p) => st
                .order
                .insert(key, p)
                .map_err(|(Refused::TooLarge, _)| Refusal::TooLarge),
            Err(r) => Err(r),
        };
        let evicted = match r {
            Ok(evicted) => {
                st.raw += data.len() as u64;
                for (_, p) in &evicted {
                    st.raw -= raw_len(p);
                }
                Ok(evicted)
            }
            Err(r) => Err(r),
        };
        self.gauges(&st);
        drop(st);
        match evicted {
            Ok(evicted) => {
                stats::inc(&self.stats.compressed_puts);
                stats::add(&self.stats.compressed_evictions, evicted.len() as u64);
                // The last tier in memory: what it evicts is forgotten (freed here,
                // outside the lock).
                Ok(Vec::new())
            }
            Err(r) => {
                stats::inc(&self.stats.compressed_refusals);
                Err(r)
            }
        }
    }

    fn remove(&self, key: &BlockKey) {
        let mut st = self.state.lock();
        if st.take(key).is_some() {
            self.gauges(&st);
        }
    }

    fn remove_range(&self, obj: u64, first: u64, end: u64) {
        let mut st = self.state.lock();
        for blk in first..end {
            st.take(&BlockKey { obj, blk });
        }
        self.gauges(&st);
    }

    fn bytes(&self) -> u64 {
        self.state.lock().order.weight()
    }

    fn exclusive(&self) -> bool {
        true
    }
}

/// The uncompressed length LZ4's size prefix records.
fn raw_len(p: &Packed) -> u64 {
    p.data
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
}
