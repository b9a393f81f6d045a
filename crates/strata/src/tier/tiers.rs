//! Every tier in lookup order, as the read path sees them: the memory tiers (RAM,
//! compressed RAM: [`MemoryChain`]), then the tiers below memory, fastest first (the
//! disk, and before it the blocks on their way to it: [`FillQueue::on_way`]), each
//! asked a run of missing blocks at a time. A lookup fills what it finds, promotes
//! short runs from below into memory (`promote`), and tells the caller where blocks
//! came from, for its hints. Invalidation goes to every tier from here.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::chain::MemoryChain;
use super::device::DeviceTier;
use super::disk::DiskTier;
use super::disk::writer::FillQueue;
use super::shared::SharedTier;
use super::{BlockKey, Tier};
use crate::stats::{self, Stats};

pub struct TierChain {
    pub memory: MemoryChain,
    /// Below memory, fastest first. A tier on other machines goes here, before the
    /// disk or after it, as its speed says.
    below: Vec<Arc<dyn Tier>>,
    /// The disk tier's writer queue (its background puts).
    pub fills: FillQueue,
    /// The disk tier (also in `below`), for what only it does: versions registered
    /// with it, pins, passthrough, its writer.
    pub disk: Option<Arc<DiskTier>>,
    /// The shared tier (also in `below`, after the disk), for what only it does:
    /// naming versions, leases, puts after origin fetches.
    pub shared: Option<Arc<SharedTier>>,
    /// The device-memory tier (also in `below`, first), for device reads: loans,
    /// reservations filled device to device.
    pub device: Option<Arc<DeviceTier>>,
    stats: Arc<Stats>,
}

/// Where the blocks of a lookup came from (block numbers), beyond the slots filled.
#[derive(Default)]
pub struct Found {
    /// From memory (with a tier below only: the caller offers them to the disk
    /// again if it lacks them).
    pub memory: Vec<(u64, Bytes)>,
    /// Not in memory (found below or not at all).
    pub memory_missed: Vec<u64>,
    /// From a tier below memory.
    pub below: Vec<u64>,
    /// From a durable tier, checked against their checksums (see [`Tier::durable`]).
    pub durable: Vec<u64>,
    /// Asked of a durable tier, which does not hold them.
    pub durable_absent: Vec<u64>,
    /// Every slot, as one buffer, when one read below supplied them all.
    pub whole: Option<Bytes>,
    /// From the shared tier: other machines' fetches, to be cached here as fetched
    /// ones are.
    pub shared: Vec<u64>,
}

impl TierChain {
    pub fn new(
        memory: MemoryChain,
        fills: FillQueue,
        disk: Option<Arc<DiskTier>>,
        shared: Option<Arc<SharedTier>>,
        device: Option<Arc<DeviceTier>>,
        stats: Arc<Stats>,
    ) -> Self {
        let below = (device.iter().map(|d| d.clone() as Arc<dyn Tier>))
            .chain(disk.iter().map(|d| d.clone() as Arc<dyn Tier>))
            .chain(shared.iter().map(|s| s.clone() as Arc<dyn Tier>))
            .collect();
        Self {
            memory,
            below,
            fills,
            disk,
            shared,
            device,
            stats,
        }
    }

    /// Fills the empty slots of `got` (blocks `b0..` of object `obj`) from the tiers,
    /// fastest first. A run of blocks from below is promoted into memory when
    /// `promote` says so of its length.
    pub fn lookup(
        &self,
        obj: u64,
        b0: u64,
        got: &mut [Option<Bytes>],
        promote: impl Fn(usize) -> bool,
    ) -> Found {
        let mut found = Found::default();
        let below = !self.below.is_empty();
        for (i, slot) in got.iter_mut().enumerate() {
            if slot.is_none() {
                let key = BlockKey {
                    obj,
                    blk: b0 + i as u64,
                };
                match self.memory.get(&key) {
                    Some(b) => {
                        stats::inc(&self.stats.ram_hits);
                        stats::add(&self.stats.ram_hit_bytes, b.len() as u64);
                        if below {
                            found.memory.push((key.blk, b.clone()));
                        }
                        *slot = Some(b);
                    }
                    None => found.memory_missed.push(key.blk),
                }
            }
        }
        if found.memory_missed.is_empty() || !below {
            return found;
        }
        if self.disk.is_some() {
            for &blk in &found.memory_missed {
                if let Some(b) = self.fills.on_way(&BlockKey { obj, blk }) {
                    stats::inc(&self.stats.inflight_hits);
                    got[(blk - b0) as usize] = Some(b);
                }
            }
        }
        for tier in &self.below {
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
                let (res, one) = tier.get_run(obj, first, i - start);
                if start == 0 && i == got.len() {
                    found.whole = one;
                }
                let promote = promote(i - start);
                for (j, b) in res.into_iter().enumerate() {
                    let blk = first + j as u64;
                    match b {
                        Some(b) => {
                            if promote && self.memory.put(BlockKey { obj, blk }, b.clone()) {
                                stats::inc(&self.stats.promotions);
                            }
                            found.below.push(blk);
                            if tier.durable() {
                                found.durable.push(blk);
                            } else {
                                found.shared.push(blk);
                            }
                            got[start + j] = Some(b);
                        }
                        None if tier.durable() => found.durable_absent.push(blk),
                        None => {}
                    }
                }
            }
        }
        found
    }

    /// Stores blocks `first..` of `obj` fetched from the origin in memory; returns
    /// those memory took. (The disk gets them through its writer queue, which the
    /// caller fills, as it tracks fills in its extent trees.)
    pub fn store(&self, obj: u64, first: u64, blocks: &[Bytes]) -> Vec<u64> {
        let mut taken = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let blk = first + j as u64;
            if self.memory.put(BlockKey { obj, blk }, b.clone()) {
                taken.push(blk);
            }
        }
        taken
    }

    /// Removes blocks of `obj` from every tier (their bytes changed).
    pub fn remove_blocks(&self, obj: u64, blocks: &[u64]) {
        for &blk in blocks {
            let key = BlockKey { obj, blk };
            self.memory.remove(&key);
            for t in &self.below {
                t.remove(&key);
            }
        }
    }

    /// True when some tier lies below memory.
    pub fn has_below(&self) -> bool {
        !self.below.is_empty()
    }

    /// True when some tier holds the block (memory, on its way to disk, or below):
    /// for a block the caller's hint says may be cached.
    pub fn holds(&self, key: &BlockKey) -> bool {
        self.memory.contains(key)
            || self.fills.holds(key)
            || self.below.iter().any(|t| t.contains(key))
    }

    /// An object version died: every tier lets go of its blocks. `cached` are the
    /// block ranges the engine's hint says some tier may hold.
    pub fn drop_version(&self, obj: u64, cached: &[Range<u64>]) {
        for r in cached {
            self.memory.remove_range(obj, r.start, r.end);
        }
        for t in &self.below {
            t.drop_version(obj, cached);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::Token;
    use crate::storage::{SimStorage, Storage};
    use crate::sync::Mutex;
    use crate::tier::compressed::CompressedTier;
    use crate::tier::disk::{DiskConfig, Thresholds};
    use crate::tier::ram::RamTier;
    use crate::tier::testing::{self, Refusing};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const BS: u64 = 4096;
    const BLOCKS: u64 = 6;

    fn token(id: u64) -> Token {
        Token::Stat {
            size: BLOCKS * BS,
            mtime_ns: id as i64,
            ctime_ns: 0,
            ino: id,
        }
    }

    fn block(seed: u64, noisy: bool) -> Bytes {
        testing::block(seed, BS as usize, noisy)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The whole chain (RAM, compressed RAM, a real disk tier on a simulated
        /// medium) against a model, with refusals injected at every tier: a lookup
        /// returns the latest put of each block or a miss, never older data; after a
        /// version drop no tier returns any of its blocks.
        #[test]
        fn lookups_return_the_latest_put_or_a_miss(
            ops in proptest::collection::vec((0usize..3, 0u64..BLOCKS, 0u8..7, any::<bool>()), 1..200),
            r0 in proptest::collection::vec(any::<bool>(), 0..200),
            r1 in proptest::collection::vec(any::<bool>(), 0..200),
            r2 in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let stats = Arc::new(Stats::default());
            let memory = MemoryChain::of(vec![
                Box::new(Refusing { inner: RamTier::new(3 * BS, stats.clone()), refuse: Mutex::new(r0) }),
                Box::new(Refusing { inner: CompressedTier::inline(2 * BS, stats.clone()), refuse: Mutex::new(r1) }),
            ]);
            let storage: Arc<dyn Storage> = Arc::new(SimStorage::new());
            let cfg = DiskConfig {
                capacity: 8 * BS,
                block_size: BS as u32,
                thresholds: Thresholds::OFF,
                compact_min_bytes: 1 << 20,
            };
            let disk = DiskTier::open(storage, cfg, stats.clone()).unwrap();
            // Each file's current version; a dropped version's id is never used again.
            let mut ids = [0u64; 3];
            for (f, id) in ids.iter_mut().enumerate() {
                *id = disk.allocate_id();
                disk.register(*id, format!("f{f}").as_bytes(), token(*id));
            }
            let disk = Arc::new(Refusing { inner: disk, refuse: Mutex::new(r2) });
            let chain = TierChain {
                memory,
                below: vec![disk.clone() as Arc<dyn Tier>],
                fills: FillQueue::new(0, Duration::ZERO, stats.clone()),
                disk: None,
                shared: None,
                device: None,
                stats,
            };
            let mut latest: BTreeMap<BlockKey, Bytes> = BTreeMap::new();
            for (n, (f, blk, op, noisy)) in ops.into_iter().enumerate() {
                let key = BlockKey { obj: ids[f], blk };
                match op {
                    0 | 1 => {
                        let data = block(n as u64, noisy);
                        let up = chain.memory.put(key, data.clone());
                        let down = disk.put(key, data.clone()).is_ok();
                        if up || down {
                            latest.insert(key, data);
                        } else {
                            latest.remove(&key);
                        }
                    }
                    2 => {
                        chain.memory.remove(&key);
                        disk.remove(&key);
                        latest.remove(&key);
                    }
                    3 => {
                        let old = ids[f];
                        chain.drop_version(old, std::slice::from_ref(&(0..BLOCKS)));
                        latest.retain(|k, _| k.obj != old);
                        let mut got = vec![None; BLOCKS as usize];
                        chain.lookup(old, 0, &mut got, |_| true);
                        prop_assert!(got.iter().all(Option::is_none), "a dropped version served");
                        // A new version of the same file.
                        ids[f] = disk.inner.allocate_id();
                        disk.inner.register(ids[f], format!("f{f}").as_bytes(), token(ids[f]));
                    }
                    _ => {
                        let len = (BLOCKS - blk).min(1 + n as u64 % 3) as usize;
                        let mut got = vec![None; len];
                        let found = chain.lookup(ids[f], blk, &mut got, |run| run <= 2);
                        for (i, g) in got.iter().enumerate() {
                            let k = BlockKey { obj: ids[f], blk: blk + i as u64 };
                            if let Some(g) = g {
                                prop_assert_eq!(Some(g), latest.get(&k), "block {:?}", k);
                            }
                        }
                        for b in &found.durable {
                            prop_assert!(got[(b - blk) as usize].is_some());
                        }
                    }
                }
                prop_assert!(chain.memory.bytes() <= 5 * BS);
                prop_assert!(disk.bytes() <= 8 * BS);
            }
        }
    }
}
