//! Admission: which blocks go where, in one place. The rules the engine applies
//! are here; the tiers' own refusals are listed for the whole picture.
//!
//! | what | admitted when | where |
//! | --- | --- | --- |
//! | a fill (blocks for the disk tier) | the fill queue has room; else dropped, remembered, offered again when the writer is idle | `FillQueue::queue`, `Inner::queue_fill` |
//! | read-ahead of a file | as many blocks as the fill queue has room for | [`Inner::readahead_room`] |
//! | files ahead of a directory scan | the fill queue at least half empty | [`Inner::dir_prefetch_admitted`] |
//! | a disk hit into RAM (promotion) | runs of at most `LONG_RUN` blocks | [`promotes`] |
//! | a RAM hit back to the disk (refill) | not on disk and not on its way | `Inner::refill` |
//! | a block RAM evicts, into compressed RAM | read again since it came in (it leaves RAM's main queue) | `RamTier::put_evicting` |
//! | a block into compressed RAM | compresses to 75 % or less; its object's blocks are not refused in a row; the compressing queue has room | `CompressedTier::put` |
//! | a block into the disk tier | its object is known, it fits above the stop threshold, the device is not failing | `DiskTier::write_batch` |
//!
//! Fetching ahead of a disk writer that is behind would only see the fills dropped,
//! and the blocks lost once RAM evicts them: the reader's own fetches always go out,
//! what is fetched ahead waits for room.

use super::*;

/// Whether a run of `len` blocks read from the disk tier goes into RAM. A long run
/// is left to the kernel's page cache: its blocks are slices of one buffer, which
/// the RAM tier would keep alive whole.
pub(super) fn promotes(len: usize) -> bool {
    len <= LONG_RUN
}

impl Inner {
    /// How many blocks of `bs` bytes read-ahead may fetch now.
    pub(super) fn readahead_room(&self, bs: u64) -> u64 {
        self.fill_room() / bs
    }

    /// Whether a directory scan may fetch files ahead now.
    pub(super) fn dir_prefetch_admitted(&self) -> bool {
        self.fill_room() >= self.cfg.fill_queue_bytes / 2
    }
}
