//! The disk tier as a link of the tier chain: the [`Tier`] interface over the index
//! and the data files. The engine puts blocks through the writer queue (group
//! commits); `put` here is the same commit for one block, synchronous.

use super::*;
use crate::tier::{Refusal, Tier};

impl DiskTier {
    /// Forgets blocks of an object version now; the writer logs their removal and
    /// punches their holes.
    pub fn forget_blocks(&self, id: u64, blocks: Range<u64>) {
        let mut dropped = Vec::new();
        {
            let mut idx = self.index.write();
            let Some((slot, o)) = idx.obj(id) else {
                return;
            };
            // No further than the version's last block: `blocks` may be open-ended.
            let last = o.token.size().div_ceil(self.bs);
            for blk in blocks.start..blocks.end.min(last) {
                if idx.remove_block(slot, blk) {
                    dropped.push((id, blk));
                }
            }
        }
        if !dropped.is_empty() {
            self.pending.lock().dels.extend(dropped);
            self.update_gauges();
        }
    }
}

impl Tier for DiskTier {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.get_run(key.obj, key.blk, 1).0.pop().flatten()
    }

    fn get_run(&self, obj: u64, first: u64, n: usize) -> (Vec<Option<Bytes>>, Option<Bytes>) {
        let (got, whole) = self.read_whole(obj, first, n as u64);
        for b in got.iter().flatten() {
            stats::inc(&self.stats.disk_hits);
            stats::add(&self.stats.disk_hit_bytes, b.len() as u64);
        }
        (got, whole)
    }

    fn contains(&self, key: &BlockKey) -> bool {
        self.contains_all(key.obj, key.blk..key.blk + 1)
    }

    /// One group commit of one block: its data synced, then its record.
    fn put(&self, key: BlockKey, data: Bytes) -> Result<Vec<(BlockKey, Bytes)>, Refusal> {
        let known = {
            let idx = self.index.read();
            idx.obj(key.obj)
                .is_some_and(|(_, o)| data.len() == block_len(o.token.size(), self.bs, key.blk))
        };
        if !known || data.is_empty() {
            stats::inc(&self.stats.disk_refusals);
            return Err(Refusal::Unknown);
        }
        if self.contains(&key) {
            // A put replaces (the writer's fills keep what is there: the same bytes).
            // The commit logs the removal before the new record, and leaves the hole
            // unpunched: the block is live again.
            self.forget_blocks(key.obj, key.blk..key.blk + 1);
        }
        if self.write_batch(&[FillBlock { key, data }])[0] {
            // What it evicted is on the origin: nothing goes further down.
            Ok(Vec::new())
        } else {
            Err(Refusal::NoRoom)
        }
    }

    fn remove(&self, key: &BlockKey) {
        self.forget_blocks(key.obj, key.blk..key.blk + 1);
    }

    fn remove_range(&self, obj: u64, first: u64, end: u64) {
        self.forget_blocks(obj, first..end);
    }

    fn drop_version(&self, obj: u64, _hint: &[Range<u64>]) {
        self.drop_object(obj);
    }

    fn bytes(&self) -> u64 {
        self.used_bytes()
    }

    fn durable(&self) -> bool {
        true
    }
}
