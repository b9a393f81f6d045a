//! Tiers: places that hold blocks, fastest first.
//!
//! Every tier may refuse a put and may forget a block at any time; a get returns the
//! latest put or a miss. The engine treats a miss anywhere as "look further down".

pub mod disk;
pub mod ram;

/// One block of one object version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The object version's id (never reused).
    pub obj: u64,
    /// The block number inside the object.
    pub blk: u64,
}
