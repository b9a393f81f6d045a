//! The compressed RAM tier (zswap's and zcache's role): blocks the RAM tier evicts are
//! kept here compressed with LZ4, and handed back up on a hit.
//!
//! It **refuses** a block whose compressed form is more than [`KEEP_RATIO_PCT`] % of
//! its size: keeping it would save little memory for a decompression on every hit
//! (random bytes, media, archives already compressed). It is exclusive with the RAM
//! tier: a hit removes the block here and the chain puts it in RAM, so the two hold
//! each block once and together hold more distinct blocks than RAM alone.
//! Bounded by compressed bytes plus [`ENTRY_OVERHEAD`] per block, under S3-FIFO.
//! Blocks of the same contents share their compressed bytes (see [`contents`]).
//!
//! Blocks are compressed on a thread of the tier's own, not on the reader's: a put
//! queues the block (up to [`PENDING_BYTES`]; past that the tier is busy and refuses)
//! and returns. A queued block is served from the queue on a hit. A removal reaches
//! the queue and the block being compressed, so a dropped version never comes back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::contents::{self, Contents};
use super::{BlockKey, Refusal, Tier, Usage};
use crate::policy::{Refused, S3Fifo, Tagged};
use crate::stats::{self, Stats};
use crate::sync::{Condvar, Mutex};

/// Bytes charged per block on top of its compressed bytes: the map and queue slots,
/// the boxed buffer's header and its length, rounded up.
pub const ENTRY_OVERHEAD: u64 = 96;

/// A block is kept only if it compresses to at most this share of its size (in %).
/// zswap keeps anything smaller than a page; here a block that saves less than a
/// quarter is refused: with the per-block overhead and an LZ4 decompression on each
/// hit it would hold barely more data than RAM at the cost of a copy.
pub const KEEP_RATIO_PCT: usize = 75;

/// Most bytes of blocks waiting to be compressed (and an eighth of the tier's size at
/// most: they count against the budget it shares with RAM); past it puts are refused
/// (busy).
pub const PENDING_BYTES: u64 = 2 << 20;

/// One block, compressed (LZ4 with its length first), perhaps shared with blocks of
/// the same contents.
type Packed = contents::Held<Bytes>;

fn weigh(p: &Packed) -> u64 {
    p.data.len() as u64 + ENTRY_OVERHEAD
}

type Order = S3Fifo<BlockKey, Packed, fn(&Packed) -> u64>;

struct State {
    order: Order,
    /// Blocks of the same contents compress to the same bytes: they share them.
    contents: Contents<Bytes>,
    /// The tier's size; the order's capacity is this plus the bytes shared.
    base: u64,
    /// What the held blocks weigh uncompressed (for the ratio).
    raw: u64,
}

impl State {
    fn take(&mut self, key: &BlockKey) -> Option<Packed> {
        let p = self.order.remove(key)?;
        self.contents.release(&p);
        self.raw -= raw_len(&p);
        Some(p)
    }

    /// Keeps `p`, evicting to make room; returns what it evicted.
    fn keep(&mut self, key: BlockKey, p: Bytes) -> Result<Vec<Tagged<BlockKey, Packed>>, Refusal> {
        let raw = raw_len_of(&p);
        let held = self.contents.share(p);
        let mut evicted = Vec::new();
        match self.order.insert_tagged(key, held, false) {
            Ok(out) => {
                for e in &out {
                    self.contents.release(&e.1);
                }
                evicted.extend(out);
            }
            Err((Refused::TooLarge, h)) => {
                self.contents.release(&h);
                return Err(Refusal::TooLarge);
            }
        }
        // Sharings begun or ended move the room.
        contents::fit(&mut self.order, &mut self.contents, self.base, &mut evicted);
        self.raw += raw;
        for e in &evicted {
            self.raw -= raw_len(&e.1);
        }
        Ok(evicted)
    }

    /// The bytes really held: every entry's weight less the bytes shared.
    fn held(&self) -> u64 {
        self.order.weight() - self.contents.saved
    }
}

/// Blocks waiting for the compressing thread, and the one it is working on.
#[derive(Default)]
struct Pending {
    queue: VecDeque<(BlockKey, Bytes)>,
    bytes: u64,
    /// The block being compressed, and whether it was removed meanwhile.
    working: Option<(BlockKey, bool)>,
    closed: bool,
}

impl Pending {
    /// Drops queued copies of the keys `f` matches; the one being compressed is
    /// marked dead. Returns a queued block of them, if any (for a hit).
    fn drop_where(&mut self, f: impl Fn(&BlockKey) -> bool) -> Option<Bytes> {
        let mut found = None;
        let mut bytes = self.bytes;
        self.queue.retain(|(k, b)| {
            if f(k) {
                bytes -= b.len() as u64;
                found = Some(b.clone());
                false
            } else {
                true
            }
        });
        self.bytes = bytes;
        if let Some((k, dead)) = &mut self.working
            && f(k)
        {
            *dead = true;
        }
        found
    }
}

struct Shared {
    /// A hit removes its entry, so even gets take the lock exclusively.
    state: Mutex<State>,
    pending: Mutex<Pending>,
    wake: Condvar,
    stats: Arc<Stats>,
    /// Most bytes queued: see [`PENDING_BYTES`].
    max_pending: u64,
    /// Bytes held and queued, for the RAM tier that shares a budget with this one.
    used: Arc<Usage>,
    /// Objects whose recent blocks were refused, to refuse the next ones without
    /// compressing them (a media file, an archive): see [`Streaks`].
    streaks: Streaks,
}

pub struct CompressedTier {
    shared: Arc<Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// Compresses on the caller's thread (no worker): for model checking.
    inline: bool,
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
        let shared = Self::shared(capacity, stats);
        let s = shared.clone();
        let worker = std::thread::Builder::new()
            .name("strata-compress".into())
            .spawn(move || s.work())
            .map_err(|e| {
                // Without its thread the tier refuses every put (it never fills).
                tracing::warn!(error = %e, "cannot start the compressing thread; compressed RAM stays empty");
                shared.pending.lock().closed = true;
            })
            .ok();
        Self {
            shared,
            worker,
            inline: false,
        }
    }

    /// A tier that compresses on the caller's thread (for model checking, where
    /// threads are the checker's).
    pub fn inline(capacity: u64, stats: Arc<Stats>) -> Self {
        Self {
            shared: Self::shared(capacity, stats),
            worker: None,
            inline: true,
        }
    }

    fn shared(capacity: u64, stats: Arc<Stats>) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                order: S3Fifo::new(capacity, weigh as fn(&Packed) -> u64),
                contents: Contents::default(),
                base: capacity,
                raw: 0,
            }),
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            stats,
            max_pending: PENDING_BYTES.min(capacity / 8),
            used: Arc::new(Usage::default()),
            streaks: Streaks::new(),
        })
    }

    /// The bytes held and queued, kept up to date.
    pub fn used(&self) -> Arc<Usage> {
        self.shared.used.clone()
    }
}

impl Drop for CompressedTier {
    fn drop(&mut self) {
        self.shared.pending.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Shared {
    /// The compressing thread: takes queued blocks one by one until closed.
    fn work(&self) {
        loop {
            let (key, data) = {
                let mut p = self.pending.lock();
                loop {
                    if let Some((k, b)) = p.queue.pop_front() {
                        p.bytes -= b.len() as u64;
                        self.used.queued.store(p.bytes, Ordering::Relaxed);
                        p.working = Some((k, false));
                        break (k, b);
                    }
                    if p.closed {
                        return;
                    }
                    p = self.wake.wait(p);
                }
            };
            self.place(key, data, true);
        }
    }

    /// Compresses a block and keeps it (or refuses it). `queued`: it came from the
    /// queue, and is dropped if a removal marked it meanwhile.
    fn place(&self, key: BlockKey, data: Bytes, queued: bool) {
        let packed = pack(&data);
        self.streaks.note(key.obj, packed.is_err());
        // Held from before the "removed meanwhile?" check to after the insert, so
        // a removal either marks it dead first or removes it after.
        let mut st = self.state.lock();
        if queued {
            let dead = {
                let mut p = self.pending.lock();
                let dead = p.working.take().is_some_and(|(_, dead)| dead);
                if p.queue.is_empty() {
                    self.wake.notify_all(); // for `settle`
                }
                dead
            };
            if dead {
                return;
            }
        }
        let r = packed.and_then(|p| st.keep(key, p));
        self.gauges(&st);
        drop(st);
        match r {
            Ok(evicted) => {
                stats::inc(&self.stats.compressed_puts);
                // The last tier in memory: what it evicts is forgotten (freed here,
                // outside the lock).
                stats::add(&self.stats.compressed_evictions, evicted.len() as u64);
            }
            Err(_) => stats::inc(&self.stats.compressed_refusals),
        }
    }

    fn gauges(&self, st: &State) {
        self.used.held.store(st.held(), Ordering::Relaxed);
        stats::set(&self.stats.compressed_bytes, st.held());
        stats::set(&self.stats.compressed_shared_bytes, st.contents.saved);
        stats::set(&self.stats.compressed_blocks, st.order.len() as u64);
        stats::set(&self.stats.compressed_raw_bytes, st.raw);
    }

    fn remove_where(&self, f: impl Fn(&BlockKey) -> bool, keys: impl Iterator<Item = BlockKey>) {
        {
            let mut p = self.pending.lock();
            p.drop_where(&f);
            self.used.queued.store(p.bytes, Ordering::Relaxed);
        }
        let mut st = self.state.lock();
        for k in keys {
            st.take(&k);
        }
        self.gauges(&st);
    }
}

/// Compresses a block, or says it does not compress well enough to keep.
fn pack(data: &[u8]) -> Result<Bytes, Refusal> {
    let packed = lz4_flex::block::compress_prepend_size(data);
    if packed.len() * 100 > data.len() * KEEP_RATIO_PCT {
        return Err(Refusal::Incompressible);
    }
    Ok(Bytes::from(packed))
}

impl Tier for CompressedTier {
    fn name(&self) -> &'static str {
        "compressed"
    }

    fn get(&self, key: &BlockKey) -> Option<Bytes> {
        let s = &self.shared;
        let packed = {
            let mut st = s.state.lock();
            let p = st.take(key);
            if p.is_some() {
                s.gauges(&st);
            }
            p
        };
        let got = match packed {
            Some(p) => lz4_flex::block::decompress_size_prepended(&p.data)
                .ok()
                .map(Bytes::from),
            // Still waiting to be compressed: served from the queue.
            None => {
                let mut p = s.pending.lock();
                let b = p.drop_where(|k| k == key);
                s.used.queued.store(p.bytes, Ordering::Relaxed);
                b
            }
        };
        // A failed decompression could only be memory damage: a miss, never other
        // bytes.
        let b = got?;
        stats::inc(&s.stats.compressed_hits);
        stats::add(&s.stats.compressed_hit_bytes, b.len() as u64);
        Some(b)
    }

    fn contains(&self, key: &BlockKey) -> bool {
        let s = &self.shared;
        s.state.lock().order.contains(key) || s.pending.lock().queue.iter().any(|(k, _)| k == key)
    }

    fn put(&self, key: BlockKey, data: Bytes) -> Result<Vec<(BlockKey, Bytes)>, Refusal> {
        let s = &self.shared;
        // An older copy of the key must not outlive this put, taken or not.
        self.remove(&key);
        let refused = |r| {
            stats::inc(&s.stats.compressed_refusals);
            Err(r)
        };
        if s.streaks.skip(key.obj) {
            return refused(Refusal::Incompressible);
        }
        if self.inline {
            s.place(key, data, false);
            return Ok(Vec::new());
        }
        let mut p = s.pending.lock();
        if p.closed || p.bytes + data.len() as u64 > s.max_pending {
            drop(p);
            return refused(Refusal::Busy);
        }
        p.bytes += data.len() as u64;
        s.used.queued.store(p.bytes, Ordering::Relaxed);
        p.queue.push_back((key, data));
        drop(p);
        s.wake.notify_all();
        Ok(Vec::new())
    }

    fn remove(&self, key: &BlockKey) {
        self.shared
            .remove_where(|k| k == key, std::iter::once(*key));
    }

    fn remove_range(&self, obj: u64, first: u64, end: u64) {
        self.shared.remove_where(
            |k| k.obj == obj && (first..end).contains(&k.blk),
            (first..end).map(|blk| BlockKey { obj, blk }),
        );
    }

    fn bytes(&self) -> u64 {
        self.shared.state.lock().held()
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn settle(&self) {
        let s = &self.shared;
        let mut p = s.pending.lock();
        while !p.closed && (!p.queue.is_empty() || p.working.is_some()) {
            p = s.wake.wait(p);
        }
    }
}

/// The uncompressed length LZ4's size prefix records.
fn raw_len(p: &Packed) -> u64 {
    raw_len_of(&p.data)
}

fn raw_len_of(data: &[u8]) -> u64 {
    data.get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(seed: u8) -> Bytes {
        (0..16384u32)
            .map(|i| seed.wrapping_add((i / 100) as u8))
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn identical_blocks_share_their_compressed_bytes() {
        let stats = Arc::new(Stats::default());
        let t = CompressedTier::inline(1 << 20, stats.clone());
        let (a, b) = (text(1), text(2));
        for i in 0..10 {
            t.put(BlockKey { obj: i, blk: 0 }, a.clone()).unwrap();
        }
        t.put(BlockKey { obj: 99, blk: 0 }, b.clone()).unwrap();
        let one = t.shared.state.lock().order.weight() / 11;
        let s = stats.snapshot();
        assert!(s.compressed_shared_bytes > 0);
        // Ten copies of `a` cost about one.
        assert!(
            t.bytes() < 3 * one + 2 * ENTRY_OVERHEAD * 10,
            "{}",
            t.bytes()
        );
        assert_eq!(s.compressed_raw_bytes, 11 * 16384);
        assert_eq!(t.get(&BlockKey { obj: 99, blk: 0 }), Some(b));
        for i in 0..10 {
            assert_eq!(t.get(&BlockKey { obj: i, blk: 0 }), Some(a.clone()));
        }
        // Every sharing ended with its users.
        let s = stats.snapshot();
        assert_eq!((s.compressed_shared_bytes, s.compressed_bytes), (0, 0));
        assert_eq!(s.compressed_blocks, 0);
    }
}
