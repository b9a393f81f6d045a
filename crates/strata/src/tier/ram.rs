//! The RAM tier: immutable, reference-counted block buffers under one S3-FIFO order.
//!
//! A hit takes the shared lock and bumps an atomic counter, so concurrent hits do not
//! serialize. Each entry is charged its length plus a fixed per-entry overhead, so the
//! configured limit bounds the memory really used.
//!
//! **Deduplication**: blocks with the same contents share one buffer (see
//! [`contents`]).

use std::sync::Arc;

use bytes::Bytes;

use super::contents::{self, Contents};
use super::{BlockKey, Refusal, Tier, Usage};
use crate::policy::{Refused, S3Fifo, Tagged};
use crate::stats::{self, Stats};
use crate::sync::RwLock;

/// Bytes charged per entry on top of its data: the map slot, queue slot and the
/// buffer's header, rounded up.
pub const ENTRY_OVERHEAD: u64 = 128;

fn weigh(h: &Held) -> u64 {
    h.data.len() as u64 + ENTRY_OVERHEAD
}

type Held = contents::Held<Bytes>;
type Order = S3Fifo<BlockKey, Held, fn(&Held) -> u64>;

struct State {
    order: Order,
    contents: Contents<Bytes>,
}

impl State {
    fn fit(&mut self, base: u64, evicted: &mut Vec<Tagged<BlockKey, Held>>) {
        contents::fit(&mut self.order, &mut self.contents, base, evicted);
    }

    /// The bytes really held: every entry's weight less the bytes shared.
    fn held(&self) -> u64 {
        self.order.weight() - self.contents.saved
    }
}

pub struct RamTier {
    state: RwLock<State>,
    stats: Arc<Stats>,
    capacity: u64,
    /// A budget shared with the tier below (compressed RAM), which reports what it
    /// takes of it here: RAM may use whatever part that tier does not, so a tier
    /// that refuses everything (incompressible data) costs RAM no room.
    used_below: Option<Arc<Usage>>,
}

impl RamTier {
    pub fn new(capacity: u64, stats: Arc<Stats>) -> Self {
        Self {
            state: RwLock::new(State {
                order: S3Fifo::new(capacity, weigh as fn(&Held) -> u64),
                contents: Contents::default(),
            }),
            stats,
            capacity,
            used_below: None,
        }
    }

    /// A RAM tier whose budget `total` is shared with a tier below that reports the
    /// bytes it holds in `used_below`: RAM holds at most `total` less those.
    pub fn sharing(total: u64, used_below: Arc<Usage>, stats: Arc<Stats>) -> Self {
        let mut t = Self::new(total, stats);
        t.used_below = Some(used_below);
        t
    }

    /// RAM's own share of its budget now.
    fn base(&self) -> u64 {
        let below = self.used_below.as_ref().map_or(0, |u| u.total());
        self.capacity.saturating_sub(below)
    }

    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.state.read().order.get(key).map(|h| h.data.clone())
    }

    pub fn contains(&self, key: &BlockKey) -> bool {
        self.state.read().order.contains(key)
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
        if data.len() as u64 + ENTRY_OVERHEAD > self.capacity {
            stats::inc(&self.stats.ram_refusals);
            return Err(Refusal::TooLarge);
        }
        let base = self.base();
        let mut st = self.state.write();
        // A new version of the key replaces the old one (its sharing ends).
        if let Some(old) = st.order.remove(&key) {
            st.contents.release(&old);
        }
        let held = st.contents.share(data);
        let mut evicted = Vec::new();
        // What the tier below took since the last put comes off RAM's room first.
        st.fit(base, &mut evicted);
        let r = st.order.insert_tagged(key, held, hot);
        if let Ok(out) = &r {
            for e in out {
                st.contents.release(&e.1);
            }
        }
        let r = r.map(|out| {
            evicted.extend(out);
            // Sharings that evictions ended shrink the room again.
            st.fit(base, &mut evicted);
        });
        self.gauges(&st);
        drop(st);
        match r {
            Ok(()) => {
                stats::inc(&self.stats.ram_puts);
                stats::add(&self.stats.ram_evictions, evicted.len() as u64);
                // Only blocks read again since they came in are worth keeping below:
                // a scan's blocks, read once, would only cost a compression each.
                Ok(evicted
                    .into_iter()
                    .filter(|e| e.2)
                    .map(|(k, h, _)| (k, h.data))
                    .collect())
            }
            Err((Refused::TooLarge, h)) => {
                // Only reached if the budget shrank to nothing meanwhile.
                self.state.write().contents.release(&h);
                stats::inc(&self.stats.ram_refusals);
                Err(Refusal::TooLarge)
            }
        }
    }

    pub fn remove(&self, key: &BlockKey) {
        let mut st = self.state.write();
        let v = st.order.remove(key);
        if let Some(h) = &v {
            st.contents.release(h);
        }
        self.gauges(&st);
        drop(st);
        drop(v);
    }

    /// Removes the blocks `first..end` of one object version.
    pub fn remove_range(&self, obj: u64, first: u64, end: u64) {
        let mut removed = Vec::new();
        let mut st = self.state.write();
        for blk in first..end {
            if let Some(h) = st.order.remove(&BlockKey { obj, blk }) {
                st.contents.release(&h);
                removed.push(h);
            }
        }
        self.gauges(&st);
        drop(st);
        drop(removed);
    }

    /// The bytes really held (shared buffers counted once).
    pub fn bytes(&self) -> u64 {
        self.state.read().held()
    }

    fn gauges(&self, st: &State) {
        stats::set(&self.stats.ram_bytes, st.held());
        stats::set(&self.stats.ram_blocks, st.order.len() as u64);
        stats::set(&self.stats.ram_shared_bytes, st.contents.saved);
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

    #[test]
    fn identical_blocks_share_one_buffer_and_make_room() {
        let stats = Arc::new(Stats::default());
        // Room for about ten 16 KiB blocks held apart.
        let t = RamTier::new(10 * (16384 + ENTRY_OVERHEAD), stats.clone());
        let zero = Bytes::from(vec![0u8; 16384]);
        for blk in 0..100 {
            assert!(t.put(BlockKey { obj: 1, blk }, Bytes::from(vec![0u8; 16384])));
        }
        for blk in 0..100 {
            assert_eq!(
                t.get(&BlockKey { obj: 1, blk }).as_ref(),
                Some(&zero),
                "{blk}"
            );
        }
        let s = stats.snapshot();
        assert_eq!(s.ram_blocks, 100);
        assert_eq!(s.ram_shared_bytes, 99 * 16384);
        assert_eq!(t.bytes(), 16384 + 100 * ENTRY_OVERHEAD);
        // Distinct blocks push them out, and the sharing ends with them.
        for blk in 0..40 {
            t.put(
                BlockKey { obj: 2, blk },
                Bytes::from(vec![blk as u8 + 1; 16384]),
            );
            assert!(t.bytes() <= 10 * (16384 + ENTRY_OVERHEAD));
        }
        t.remove_range(1, 0, 100);
        t.remove_range(2, 0, 40);
        assert_eq!(t.bytes(), 0);
        assert_eq!(stats.snapshot().ram_shared_bytes, 0);
    }
}
