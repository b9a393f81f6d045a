//! Tiers: places that hold blocks, fastest first.
//!
//! Every tier may refuse a put and may forget a block at any time; a get returns the
//! latest put or a miss. The engine treats a miss anywhere as "look further down".
//! The memory tiers implement [`Tier`] and are chained by [`chain::MemoryChain`]; the
//! disk tier keeps its own interface (a writer queue and a crash-safe index) for now.

use bytes::Bytes;

pub mod chain;
pub mod compressed;
pub mod disk;
pub mod ram;
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
pub trait Tier: Send + Sync {
    /// A short name for statistics (`ram`, `compressed`).
    fn name(&self) -> &'static str;
    /// The block, if held. A tier that hands blocks up (exclusive caching) gives it
    /// up: see [`Tier::exclusive`].
    fn get(&self, key: &BlockKey) -> Option<Bytes>;
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
    /// Bytes held, as the tier weighs them against its capacity.
    fn bytes(&self) -> u64;
    /// True when a get removes the block (it moves up the chain, held in one place).
    fn exclusive(&self) -> bool {
        false
    }
    /// Waits until puts taken so far are in place (a tier that works in the
    /// background); for tests and benchmarks.
    fn settle(&self) {}
}
