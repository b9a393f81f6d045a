//! Every tier in lookup order, as the read path sees them: the memory tiers (RAM,
//! compressed RAM: [`MemoryChain`]), the blocks on their way to disk
//! ([`FillQueue::on_way`]), then the disk tier, read one run at a time. A lookup
//! fills what it finds, promotes short disk runs into memory (`promote`), counts a
//! hit where each block came from, and tells the caller where each came from, for
//! its hints.

use std::sync::Arc;

use bytes::Bytes;

use super::BlockKey;
use super::chain::MemoryChain;
use super::disk::DiskTier;
use super::disk::writer::FillQueue;
use crate::stats::{self, Stats};

pub struct TierChain {
    pub memory: MemoryChain,
    pub fills: FillQueue,
    pub disk: Option<Arc<DiskTier>>,
    stats: Arc<Stats>,
}

/// Where the blocks of a lookup came from (block numbers), beyond the slots filled.
#[derive(Default)]
pub struct Found {
    /// From memory (with a disk tier only: the caller offers them to it again if it
    /// lacks them).
    pub memory: Vec<(u64, Bytes)>,
    /// Not in memory (found elsewhere or not at all).
    pub memory_missed: Vec<u64>,
    /// Read from the disk tier (checked against their checksums).
    pub disk: Vec<u64>,
    /// Read from the disk tier and put into memory.
    pub promoted: Vec<u64>,
    /// Asked of the disk tier, which does not hold them.
    pub disk_absent: Vec<u64>,
    /// Every slot, as one buffer, when one disk read supplied them all.
    pub whole: Option<Bytes>,
}

impl TierChain {
    pub fn new(
        memory: MemoryChain,
        fills: FillQueue,
        disk: Option<Arc<DiskTier>>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            memory,
            fills,
            disk,
            stats,
        }
    }

    /// Fills the empty slots of `got` (blocks `b0..` of object `obj`) from the tiers,
    /// fastest first. A disk run of blocks is promoted into memory when `promote`
    /// says so of its length.
    pub fn lookup(
        &self,
        obj: u64,
        b0: u64,
        got: &mut [Option<Bytes>],
        promote: impl Fn(usize) -> bool,
    ) -> Found {
        let mut found = Found::default();
        let key = |i: usize| BlockKey {
            obj,
            blk: b0 + i as u64,
        };
        for (i, slot) in got.iter_mut().enumerate() {
            if slot.is_none() {
                match self.memory.get(&key(i)) {
                    Some(b) => {
                        stats::inc(&self.stats.ram_hits);
                        stats::add(&self.stats.ram_hit_bytes, b.len() as u64);
                        if self.disk.is_some() {
                            found.memory.push((b0 + i as u64, b.clone()));
                        }
                        *slot = Some(b);
                    }
                    None => found.memory_missed.push(b0 + i as u64),
                }
            }
        }
        if found.memory_missed.is_empty() {
            return found;
        }
        // Without a disk tier nothing is on its way there.
        let Some(disk) = &self.disk else {
            return found;
        };
        for &blk in &found.memory_missed {
            if let Some(b) = self.fills.on_way(&BlockKey { obj, blk }) {
                stats::inc(&self.stats.inflight_hits);
                got[(blk - b0) as usize] = Some(b);
            }
        }
        // One read per run of missing blocks.
        let mut i = 0;
        while i < got.len() {
            if got[i].is_some() {
                i += 1;
                continue;
            }
            let start = i;
            while i < got.len() && got[i].is_none() {
                i += 1;
            }
            let first = b0 + start as u64;
            let (res, one) = disk.read_whole(obj, first, (i - start) as u64);
            if start == 0 && i == got.len() {
                found.whole = one;
            }
            let promote = promote(i - start);
            for (j, b) in res.into_iter().enumerate() {
                let blk = first + j as u64;
                match b {
                    Some(b) => {
                        stats::inc(&self.stats.disk_hits);
                        stats::add(&self.stats.disk_hit_bytes, b.len() as u64);
                        if promote && self.memory.put(BlockKey { obj, blk }, b.clone()) {
                            stats::inc(&self.stats.promotions);
                            found.promoted.push(blk);
                        }
                        found.disk.push(blk);
                        got[start + j] = Some(b);
                    }
                    None => found.disk_absent.push(blk),
                }
            }
        }
        found
    }
}
