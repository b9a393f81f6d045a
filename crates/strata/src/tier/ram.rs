//! The RAM tier: immutable, reference-counted block buffers under one S3-FIFO order.
//!
//! A hit takes the shared lock and bumps an atomic counter, so concurrent hits do not
//! serialize. Each entry is charged its length plus a fixed per-entry overhead, so the
//! configured limit bounds the memory really used.

use std::sync::Arc;

use bytes::Bytes;

use super::{BlockKey, Refusal, Tier, Usage};
use crate::policy::{Refused, S3Fifo};
use crate::stats::{self, Stats};
use crate::sync::RwLock;

/// Bytes charged per entry on top of its data: the map slot, queue slot and the
/// buffer's header, rounded up.
pub const ENTRY_OVERHEAD: u64 = 128;

fn weigh(b: &Bytes) -> u64 {
    b.len() as u64 + ENTRY_OVERHEAD
}

type Order = S3Fifo<BlockKey, Bytes, fn(&Bytes) -> u64>;

pub struct RamTier {
    order: RwLock<Order>,
    stats: Arc<Stats>,
    shared: Option<Shared>,
}

/// A budget shared with the tier below (compressed RAM): RAM may use whatever part of
/// it that tier does not, so a tier that refuses everything (incompressible data)
/// costs RAM no room.
struct Shared {
    total: u64,
    used_below: Arc<Usage>,
}

impl RamTier {
    pub fn new(capacity: u64, stats: Arc<Stats>) -> Self {
        Self {
            order: RwLock::new(S3Fifo::new(capacity, weigh as fn(&Bytes) -> u64)),
            stats,
            shared: None,
        }
    }

    /// A RAM tier whose budget `total` is shared with a tier below that reports the
    /// bytes it holds in `used_below`: RAM holds at most `total` less those.
    pub fn sharing(total: u64, used_below: Arc<Usage>, stats: Arc<Stats>) -> Self {
        let mut t = Self::new(total, stats);
        t.shared = Some(Shared { total, used_below });
        t
    }

    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.order.read().get(key).cloned()
    }

    pub fn contains(&self, key: &BlockKey) -> bool {
        self.order.read().contains(key)
    }

    /// Offers a block. Returns false when refused (larger than the whole tier).
    pub fn put(&self, key: BlockKey, data: Bytes) -> bool {
        // The evicted buffers are freed here, outside the lock.
        self.put_evicting(key, data, false).is_ok()
    }

    /// Offers a block; returns what it evicted to make room. `hot`: see
    /// [`Tier::put_hot`].
    pub fn put_evicting(
        &self,
        key: BlockKey,
        data: Bytes,
        hot: bool,
    ) -> Result<Vec<(BlockKey, Bytes)>, Refusal> {
        let mut o = self.order.write();
        // What the tier below took since the last put comes off RAM's share.
        let mut shrunk = Vec::new();
        if let Some(s) = &self.shared {
            let cap = s.total.saturating_sub(s.used_below.total());
            if cap != o.capacity() {
                shrunk = o.set_capacity(cap);
            }
        }
        let r = o.insert_tagged(key, data, hot);
        let (w, n) = (o.weight(), o.len());
        drop(o);
        self.gauges(w, n);
        match r {
            Ok(mut evicted) => {
                evicted.append(&mut shrunk);
                stats::inc(&self.stats.ram_puts);
                stats::add(&self.stats.ram_evictions, evicted.len() as u64);
                // Only blocks read again since they came in are worth keeping below:
                // a scan's blocks, read once, would only cost a compression each.
                Ok(evicted
                    .into_iter()
                    .filter(|e| e.2)
                    .map(|(k, v, _)| (k, v))
                    .collect())
            }
            Err((Refused::TooLarge, _)) => {
                stats::inc(&self.stats.ram_refusals);
                Err(Refusal::TooLarge)
            }
        }
    }

    pub fn remove(&self, key: &BlockKey) {
        let mut o = self.order.write();
        let v = o.remove(key);
        let (w, n) = (o.weight(), o.len());
        drop(o);
        drop(v);
        self.gauges(w, n);
    }

    /// Removes the blocks `first..end` of one object version.
    pub fn remove_range(&self, obj: u64, first: u64, end: u64) {
        let mut removed = Vec::new();
        let mut o = self.order.write();
        for blk in first..end {
            if let Some(v) = o.remove(&BlockKey { obj, blk }) {
                removed.push(v);
            }
        }
        let (w, n) = (o.weight(), o.len());
        drop(o);
        drop(removed);
        self.gauges(w, n);
    }

    pub fn bytes(&self) -> u64 {
        self.order.read().weight()
    }

    fn gauges(&self, weight: u64, len: usize) {
        stats::set(&self.stats.ram_bytes, weight);
        stats::set(&self.stats.ram_blocks, len as u64);
    }
}

impl Tier for RamTier {
    fn name(&self) -> &'static str {
        "ram"
    }
    fn get(&self, key: &BlockKey) -> Option<Bytes> {
        RamTier::get(self, key)
    }
    fn contains(&self, key: &BlockKey) -> bool {
        RamTier::contains(self, key)
    }
    fn put(&self, key: BlockKey, data: Bytes) -> Result<Vec<(BlockKey, Bytes)>, Refusal> {
        self.put_evicting(key, data, false)
    }
    fn put_hot(&self, key: BlockKey, data: Bytes) -> Result<Vec<(BlockKey, Bytes)>, Refusal> {
        self.put_evicting(key, data, true)
    }
    fn remove(&self, key: &BlockKey) {
        RamTier::remove(self, key)
    }
    fn remove_range(&self, obj: u64, first: u64, end: u64) {
        RamTier::remove_range(self, obj, first, end)
    }
    fn bytes(&self) -> u64 {
        RamTier::bytes(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// A get returns the latest put or a miss, never older data; the tier never
        /// holds more than its capacity.
        #[test]
        fn latest_put_or_miss(ops in proptest::collection::vec(
            (0u64..4, 0u64..8, 0u8..4, 0usize..3000), 1..200)) {
            let stats = Arc::new(Stats::default());
            let t = RamTier::new(16_384, stats.clone());
            let mut latest: BTreeMap<BlockKey, Bytes> = BTreeMap::new();
            for (obj, blk, op, len) in ops {
                let key = BlockKey { obj, blk };
                match op {
                    0 | 1 => {
                        let data = Bytes::from(vec![(obj * 8 + blk) as u8 ^ len as u8; len]);
                        if t.put(key, data.clone()) {
                            latest.insert(key, data);
                        }
                    }
                    2 => { t.remove(&key); latest.remove(&key); }
                    _ => {
                        if let Some(got) = t.get(&key) {
                            prop_assert_eq!(Some(&got), latest.get(&key));
                        }
                    }
                }
                prop_assert!(t.bytes() <= 16_384);
            }
        }
    }
}
