//! The memory tiers in order, fastest first (RAM, then compressed RAM), as one cache:
//! the read path asks the chain, and promotion, demotion and invalidation are the
//! chain's business.
//!
//! - A get looks down the chain. A block found below the top moves up to it (the
//!   tiers below are exclusive: they give it up), and what that evicts moves down.
//! - A put goes to the top. What a tier evicts is offered to the next one down; a
//!   tier that refuses hands it on further; the last one forgets it.
//! - A removal reaches every tier.
//!
//! A block is held in one tier at a time, except for a moment while it moves: a get
//! racing with that move may miss (and the block is read from further down), never
//! get other bytes, since a key's bytes never change (a version's blocks are fixed,
//! and a new version has a new id).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::compressed::CompressedTier;
use super::ram::RamTier;
use super::{BlockKey, Tier};
use crate::stats::Stats;

pub struct MemoryChain {
    tiers: Vec<Box<dyn Tier>>,
    /// Bumped before and after each removal (odd while one is under way), so a move
    /// between tiers that raced with a removal can tell, and undo itself: a block
    /// taken from below just before a version drop reached that tier must not land
    /// in RAM after the drop went by there.
    drops: AtomicU64,
}

impl MemoryChain {
    /// The memory tiers within `budget` bytes: RAM, then (if `compressed` is not
    /// zero) compressed RAM holding up to `compressed` of them. RAM uses whatever
    /// the compressed tier does not, so data that does not compress costs no room.
    /// A block on its way down (evicted from RAM, not yet queued below) is counted
    /// on neither side for that moment: the two may be over by a block per thread.
    pub fn new(budget: u64, compressed: u64, stats: Arc<Stats>) -> Self {
        if compressed == 0 {
            return Self::of(vec![Box::new(RamTier::new(budget, stats))]);
        }
        let below = CompressedTier::new(compressed.min(budget), stats.clone());
        let top = RamTier::sharing(budget, below.used(), stats);
        Self::of(vec![Box::new(top), Box::new(below)])
    }

    /// A chain of the given tiers, fastest first.
    pub fn of(tiers: Vec<Box<dyn Tier>>) -> Self {
        assert!(!tiers.is_empty(), "a chain needs a tier");
        Self {
            tiers,
            drops: AtomicU64::new(0),
        }
    }

    /// Undoes the moves of an operation that began at removal epoch `start` if a
    /// removal ran meanwhile: the blocks it moved are dropped everywhere (a tier may
    /// always forget; a removal may have meant them).
    fn settle_moves(&self, start: u64, moved: &[BlockKey]) {
        if start & 1 == 1 || self.drops.load(Ordering::SeqCst) != start {
            for k in moved {
                for t in &self.tiers {
                    t.remove(k);
                }
            }
        }
    }

    /// The block from the first tier that holds it; from below the top, it moves up.
    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        let start = self.drops.load(Ordering::SeqCst);
        for (i, t) in self.tiers.iter().enumerate() {
            if let Some(b) = t.get(key) {
                if i > 0 {
                    if !t.exclusive() {
                        t.remove(key);
                    }
                    let mut moved = vec![*key];
                    self.offer(0, *key, b.clone(), true, &mut moved);
                    self.settle_moves(start, &moved);
                }
                return Some(b);
            }
        }
        None
    }

    pub fn contains(&self, key: &BlockKey) -> bool {
        self.tiers.iter().any(|t| t.contains(key))
    }

    /// Puts a block at the top. False when no tier took it.
    pub fn put(&self, key: BlockKey, data: Bytes) -> bool {
        let start = self.drops.load(Ordering::SeqCst);
        // Held in one place: a copy further down goes.
        for t in &self.tiers[1..] {
            t.remove(&key);
        }
        let mut moved = Vec::new();
        let taken = self.offer(0, key, data, false, &mut moved);
        if !moved.is_empty() {
            self.settle_moves(start, &moved);
        }
        taken
    }

    /// Offers a block to tier `from`, then down the chain until one takes it; what
    /// the taker evicts is offered further down. False when none took it. `hot`: a
    /// block coming back up (see [`Tier::put_hot`]).
    /// Blocks moved down are added to `moved`.
    fn offer(
        &self,
        from: usize,
        key: BlockKey,
        data: Bytes,
        hot: bool,
        moved: &mut Vec<BlockKey>,
    ) -> bool {
        for i in from..self.tiers.len() {
            let t = &self.tiers[i];
            let r = if hot {
                t.put_hot(key, data.clone())
            } else {
                t.put(key, data.clone())
            };
            if let Ok(evicted) = r {
                for (k, b) in evicted {
                    moved.push(k);
                    self.offer(i + 1, k, b, false, moved);
                }
                return true;
            }
        }
        false
    }

    pub fn remove(&self, key: &BlockKey) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        for t in &self.tiers {
            t.remove(key);
        }
        self.drops.fetch_add(1, Ordering::SeqCst);
    }

    /// Removes the blocks `first..end` of one object version from every tier.
    pub fn remove_range(&self, obj: u64, first: u64, end: u64) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        for t in &self.tiers {
            t.remove_range(obj, first, end);
        }
        self.drops.fetch_add(1, Ordering::SeqCst);
    }

    /// Bytes the tiers hold, as each weighs them.
    pub fn bytes(&self) -> u64 {
        self.tiers.iter().map(|t| t.bytes()).sum()
    }

    /// Waits until every tier's puts so far are in place.
    pub fn settle(&self) {
        for t in &self.tiers {
            t.settle();
        }
    }

    /// The tiers' names, fastest first.
    pub fn names(&self) -> Vec<&'static str> {
        self.tiers.iter().map(|t| t.name()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Mutex;
    use crate::tier::testing::{Refusing, block};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Against a model: a get returns the latest put of that block or a miss,
        /// never older data; after a version drop no tier returns any of its blocks;
        /// every tier stays within its capacity; a block is in one tier at a time.
        #[test]
        fn latest_put_or_miss_through_refusals(
            ops in proptest::collection::vec((0u64..3, 0u64..10, 0u8..6, any::<bool>()), 1..300),
            refusals in proptest::collection::vec(any::<bool>(), 0..300),
            refusals2 in proptest::collection::vec(any::<bool>(), 0..300),
        ) {
            let stats = Arc::new(Stats::default());
            let chain = MemoryChain::of(vec![
                Box::new(Refusing { inner: RamTier::new(8 * 1024, stats.clone()), refuse: Mutex::new(refusals) }),
                Box::new(Refusing { inner: CompressedTier::new(6 * 1024, stats.clone()), refuse: Mutex::new(refusals2) }),
            ]);
            let mut latest: BTreeMap<BlockKey, Bytes> = BTreeMap::new();
            for (n, (obj, blk, op, noisy)) in ops.into_iter().enumerate() {
                let key = BlockKey { obj, blk };
                match op {
                    0 | 1 => {
                        let data = block(n as u64, 1024, noisy);
                        if chain.put(key, data.clone()) {
                            latest.insert(key, data);
                        } else {
                            latest.remove(&key);
                        }
                    }
                    2 => { chain.remove(&key); latest.remove(&key); }
                    3 => {
                        chain.remove_range(obj, 0, 10);
                        latest.retain(|k, _| k.obj != obj);
                        for b in 0..10 {
                            let k = BlockKey { obj, blk: b };
                            prop_assert!(chain.get(&k).is_none());
                        }
                    }
                    _ => {
                        let a = chain.get(&key);
                        if let Some(got) = &a {
                            prop_assert_eq!(Some(got), latest.get(&key));
                        }
                        // get-get: a second get without a put gives the same bytes or a miss.
                        if let Some(again) = chain.get(&key) {
                            prop_assert_eq!(Some(&again), a.as_ref());
                        }
                    }
                }
                prop_assert!(chain.tiers[0].bytes() <= 8 * 1024);
                prop_assert!(chain.tiers[1].bytes() <= 6 * 1024);
                for k in latest.keys() {
                    prop_assert!(!(chain.tiers[0].contains(k) && chain.tiers[1].contains(k)), "{:?} twice", k);
                }
            }
        }
    }

    #[test]
    fn put_put_get_returns_the_second() {
        let stats = Arc::new(Stats::default());
        let chain = MemoryChain::new(4096 + (1 << 20), 1 << 20, stats);
        let k = BlockKey { obj: 1, blk: 0 };
        assert!(chain.put(k, block(1, 1024, false)));
        // Pushed down to the compressed tier by others, then put again.
        for b in 1..8 {
            chain.put(BlockKey { obj: 2, blk: b }, block(b, 1024, false));
        }
        assert!(chain.put(k, block(2, 1024, false)));
        assert_eq!(chain.get(&k).unwrap(), block(2, 1024, false));
    }

    #[test]
    fn evicted_blocks_move_down_and_come_back_up() {
        let stats = Arc::new(Stats::default());
        let chain = MemoryChain::new(128 << 10, 64 << 10, stats.clone());
        for b in 0..200 {
            let k = BlockKey { obj: 1, blk: b };
            assert!(chain.put(k, block(b, 1024, false)));
            assert!(chain.get(&k).is_some());
            // The compressing thread keeps up (else it refuses: busy).
            chain.settle();
        }
        // RAM holds what the budget leaves; the rest (read again since they came in)
        // went down, compressed, and all come back.
        for b in 0..200 {
            assert_eq!(
                chain.get(&BlockKey { obj: 1, blk: b }).unwrap(),
                block(b, 1024, false)
            );
            chain.settle();
        }
        chain.settle();
        let s = stats.snapshot();
        assert!(s.compressed_hits >= 100, "{s:?}");
        assert!(s.ram_bytes + s.compressed_bytes <= (128 << 10) + 1200);
        // Noise is refused below and forgotten, never served wrong.
        for b in 0..200 {
            let k = BlockKey { obj: 3, blk: b };
            chain.put(k, block(b + 1000, 1024, true));
            chain.get(&k);
        }
        chain.settle();
        let s = stats.snapshot();
        assert!(s.compressed_refusals >= 100, "{s:?}");
        // A scan (blocks read once) is not offered below at all.
        for b in 0..200 {
            chain.put(BlockKey { obj: 4, blk: b }, block(b, 1024, false));
        }
        for b in 0..200 {
            assert!(!chain.tiers[1].contains(&BlockKey { obj: 4, blk: b }));
        }
    }
}
