//! Tiers: places that hold blocks, fastest first.
//!
//! Every tier may refuse a put and may forget a block at any time; a get returns the
//! latest put or a miss. The engine treats a miss anywhere as "look further down".
//! Every tier implements [`Tier`]. The memory tiers (RAM, compressed RAM) are chained
//! by [`chain::MemoryChain`], which moves blocks between them (one copy of a block in
//! the two); [`tiers::TierChain`] walks that, then the tiers below it (the disk), in
//! order. The disk tier is also written in the background, through its writer queue
//! (`disk::writer`), which batches puts into group commits.

use bytes::Bytes;

pub mod chain;
pub mod compressed;
pub mod contents;
pub mod device;
pub mod disk;
pub mod ram;
pub mod shared;
pub mod tiers;

/// One block of one object version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The object version's id (never reused).
    pub obj: u64,
    /// The block number inside the object.
    pub blk: u64,
}

/// What a tier below RAM takes of a shared budget, as it goes: bytes held (as
/// weighed) and bytes queued for it, kept by that tier and read by the RAM tier.
#[derive(Debug, Default)]
pub struct Usage {
    pub held: std::sync::atomic::AtomicU64,
    pub queued: std::sync::atomic::AtomicU64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.held.load(Relaxed) + self.queued.load(Relaxed)
    }
}

/// Why a tier did not take a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than the whole tier.
    TooLarge,
    /// Would not shrink enough to be worth keeping compressed.
    Incompressible,
    /// Too much is waiting already (a tier that works in the background).
    Busy,
    /// Not a block of an object version the tier knows (a tier that records versions,
    /// the disk, takes blocks only of versions registered with it, at their length).
    Unknown,
    /// No room it may use now: the cache filesystem is near full, its device fails,
    /// or the tier is closed.
    NoRoom,
}

/// A place that holds blocks: RAM, compressed RAM, and later other machines' memory
/// or device memory. What every tier guarantees, and the chain relies on:
///
/// - **Never other bytes.** A get returns the bytes of the latest put of that key, or
///   a miss.
/// - **Any put may be refused**, and a tier may forget any block at any time: the
///   caller still holds the bytes, so a refusal never fails a read.
/// - **Keys are never reused**: an object version's id is new. A put racing with the
///   drop of its version leaves dead weight (evicted in time), never wrong bytes.
/// - **Bounded**: what it holds, as it weighs it, stays within its capacity.
/// - **Invalidation reaches it**: `remove`, `remove_range` and `drop_version` take
///   effect before they return; a get that starts after them misses.
/// - **Nothing in use breaks**: a block handed out stays valid (`Bytes` is shared);
///   a tier lets go of its copy, never of the caller's.
pub trait Tier: Send + Sync {
    /// A short name for statistics (`ram`, `compressed`).
    fn name(&self) -> &'static str;
    /// The block, if held. A tier that hands blocks up (exclusive caching) gives it
    /// up: see [`Tier::exclusive`].
    fn get(&self, key: &BlockKey) -> Option<Bytes>;
    /// Blocks `first..first + n` of one object version, for a tier that reads a run
    /// at once (the disk: one read); with all of them as one buffer when one read
    /// supplied every block (the blocks are slices of it). A tier counts its hits.
    fn get_run(&self, obj: u64, first: u64, n: usize) -> (Vec<Option<Bytes>>, Option<Bytes>) {
        let got = (first..first + n as u64)
            .map(|blk| self.get(&BlockKey { obj, blk }))
            .collect();
        (got, None)
    }
    fn contains(&self, key: &BlockKey) -> bool;
    /// Takes a block, returning the blocks it evicted to make room (for the next tier
    /// down), or refuses it.
    fn put(&self, key: BlockKey, data: Bytes) -> Result<Vec<(BlockKey, Bytes)>, Refusal>;
    /// As `put`, for a block a get just found further down: it is in use, so a tier
    /// with a frequency-aware order keeps it as it would a block hit twice.
    fn put_hot(&self, key: BlockKey, data: Bytes) -> Result<Vec<(BlockKey, Bytes)>, Refusal> {
        self.put(key, data)
    }
    fn remove(&self, key: &BlockKey);
    /// Removes the blocks `first..end` of one object version.
    fn remove_range(&self, obj: u64, first: u64, end: u64);
    /// Removes every block of an object version that dies. `hint` is where its blocks
    /// may be (the engine's "cached" ranges, in blocks); a tier with an index of its
    /// own (the disk) drops the version whole without it.
    fn drop_version(&self, obj: u64, hint: &[std::ops::Range<u64>]) {
        for r in hint {
            self.remove_range(obj, r.start, r.end);
        }
    }
    /// Bytes held, as the tier weighs them against its capacity.
    fn bytes(&self) -> u64;
    /// True when a get removes the block (it moves up the chain, held in one place).
    fn exclusive(&self) -> bool {
        false
    }
    /// True for a tier that keeps blocks across restarts and checks each against a
    /// checksum kept apart from it on every read (the disk): its hits may be served
    /// without the engine (passthrough).
    fn durable(&self) -> bool {
        false
    }
    /// Waits until puts taken so far are in place (a tier that works in the
    /// background); for tests and benchmarks.
    fn settle(&self) {}
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::sync::Mutex;

    /// A tier that refuses whatever its script says (and, as any tier must, lets go
    /// of an older copy of a block it refuses), over a real tier.
    pub(crate) struct Refusing<T> {
        pub(crate) inner: T,
        pub(crate) refuse: Mutex<Vec<bool>>,
    }

    impl<T: Tier> Tier for Refusing<T> {
        fn name(&self) -> &'static str {
            self.inner.name()
        }
        fn get(&self, key: &BlockKey) -> Option<Bytes> {
            self.inner.get(key)
        }
        fn get_run(&self, obj: u64, first: u64, n: usize) -> (Vec<Option<Bytes>>, Option<Bytes>) {
            self.inner.get_run(obj, first, n)
        }
        fn contains(&self, key: &BlockKey) -> bool {
            self.inner.contains(key)
        }
        fn put(&self, key: BlockKey, data: Bytes) -> Result<Vec<(BlockKey, Bytes)>, Refusal> {
            if self.refuse.lock().pop().unwrap_or(false) {
                self.inner.remove(&key);
                return Err(Refusal::TooLarge);
            }
            self.inner.put(key, data)
        }
        fn remove(&self, key: &BlockKey) {
            self.inner.remove(key)
        }
        fn remove_range(&self, obj: u64, first: u64, end: u64) {
            self.inner.remove_range(obj, first, end)
        }
        fn drop_version(&self, obj: u64, hint: &[std::ops::Range<u64>]) {
            self.inner.drop_version(obj, hint)
        }
        fn bytes(&self) -> u64 {
            self.inner.bytes()
        }
        fn exclusive(&self) -> bool {
            self.inner.exclusive()
        }
        fn durable(&self) -> bool {
            self.inner.durable()
        }
        fn settle(&self) {
            self.inner.settle()
        }
    }

    /// Bytes that compress (runs) or not (noise), by seed.
    pub(crate) fn block(seed: u64, len: usize, noisy: bool) -> Bytes {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|i| {
                if noisy {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                } else {
                    (seed as u8).wrapping_add((i / 64) as u8)
                }
            })
            .collect::<Vec<u8>>()
            .into()
    }
}
