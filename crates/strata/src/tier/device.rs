//! The device-memory tier: blocks kept in a GPU's memory (or the fake device's), in
//! one fixed pool cut into block-sized slots, with an eviction order of its own
//! (S3-FIFO, as the RAM tier).
//!
//! It is a tier like the others: any put may be refused (the device absent, full of
//! loaned blocks, or failing: a failed copy turns the tier off and every later put
//! is refused, every get a miss), and invalidation removes a version's blocks
//! before it returns. Host reads get a block through a copy to pinned memory; the
//! device read path (`Engine::read_device`) copies device to device, and may borrow
//! a block in place ([`Loan`]).
//!
//! **Loans** (the page-refcount rule): a loaned slot is never reused while the loan
//! lasts. Eviction and invalidation take its block out of the index at once (no
//! later get or loan finds it), but the slot's memory, still holding that version's
//! bytes, is only given to another block when the last loan of it ends. So a
//! borrower always reads the bytes of the version it asked for, and nothing is
//! written to a slot anyone holds.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{BlockKey, Refusal, Tier};
use crate::device::{Device, DeviceBuffer, DeviceResult, PinnedBuffer, Stream};
use crate::policy::S3Fifo;
use crate::stats::{self, Stats};
use crate::sync::{Arc, Mutex};

#[derive(Clone, Copy, Default)]
struct Slot {
    idx: u32,
    len: u32,
}

type Order = S3Fifo<BlockKey, Slot, fn(&Slot) -> u64>;

fn one(_: &Slot) -> u64 {
    1
}

struct State {
    order: Order,
    /// The same keys, ordered, to find a version's blocks.
    index: BTreeSet<BlockKey>,
    free: Vec<u32>,
    loans: FxHashMap<u32, u32>,
    /// Out of the index while loaned: freed when the last loan ends.
    doomed: FxHashSet<u32>,
}

impl State {
    /// A slot no longer in the index: free, or doomed while loaned.
    fn release(&mut self, idx: u32) {
        if self.loans.contains_key(&idx) {
            self.doomed.insert(idx);
        } else {
            self.free.push(idx);
        }
    }

    /// An entry the eviction order let go of: out of the index, its slot released.
    fn evicted(&mut self, key: &BlockKey, s: Slot) {
        self.index.remove(key);
        self.release(s.idx);
    }

    fn take(&mut self, key: &BlockKey) -> Option<Slot> {
        let s = self.order.remove(key)?;
        self.index.remove(key);
        self.release(s.idx);
        Some(s)
    }
}

struct Pool {
    mem: Box<dyn DeviceBuffer>,
    st: Mutex<State>,
}

/// Host copies in and out: one stream and one slot of pinned staging, used by one
/// caller at a time.
struct Staging {
    stream: Box<dyn Stream>,
    buf: Box<dyn PinnedBuffer>,
}

pub struct DeviceTier {
    dev: Arc<dyn Device>,
    pool: Arc<Pool>,
    slot: usize,
    slots: usize,
    staging: Mutex<Staging>,
    /// A copy failed: the device is taken for gone.
    failed: AtomicBool,
    stats: Arc<Stats>,
}

impl DeviceTier {
    /// A pool of `capacity` bytes (rounded down to whole slots of `block_size`) on
    /// `dev`. Fails when the device cannot give it.
    pub fn new(
        dev: Arc<dyn Device>,
        capacity: u64,
        block_size: usize,
        stats: Arc<Stats>,
    ) -> DeviceResult<Self> {
        let slots = (capacity / block_size as u64).min(u32::MAX as u64) as usize;
        let mem = dev.alloc(slots * block_size)?;
        let staging = Staging {
            stream: dev.stream()?,
            buf: dev.alloc_pinned(block_size)?,
        };
        let st = State {
            order: S3Fifo::new(slots as u64, one as fn(&Slot) -> u64),
            index: BTreeSet::new(),
            free: (0..slots as u32).rev().collect(),
            loans: FxHashMap::default(),
            doomed: FxHashSet::default(),
        };
        Ok(Self {
            dev,
            pool: Arc::new(Pool {
                mem,
                st: Mutex::new(st),
            }),
            slot: block_size,
            slots,
            staging: Mutex::new(staging),
            failed: AtomicBool::new(false),
            stats,
        })
    }

    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }

    /// The pool's memory, where loans and reservations point.
    pub fn memory(&self) -> &dyn DeviceBuffer {
        &*self.pool.mem
    }

    /// True while the device works.
    pub fn usable(&self) -> bool {
        !self.failed.load(Ordering::Acquire) && self.slots > 0
    }

    /// A device operation failed: the tier turns itself off (its blocks go).
    pub fn fail(&self, what: &str, e: &crate::device::DeviceError) {
        stats::inc(&self.stats.device_errors);
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, "device tier: {what} failed; the tier is off from now on");
            let mut st = self.pool.st.lock();
            let keys: Vec<BlockKey> = st.index.iter().copied().collect();
            for k in keys {
                st.take(&k);
            }
            self.gauge(&st);
        }
    }

    fn gauge(&self, st: &State) {
        stats::set(&self.stats.device_blocks, st.index.len() as u64);
        stats::set(
            &self.stats.device_bytes,
            (st.index.len() * self.slot) as u64,
        );
    }

    /// Borrows `key`'s block where it lies (see the module's notes on loans).
    pub fn lend(&self, key: &BlockKey) -> Option<Loan> {
        if !self.usable() {
            return None;
        }
        let mut st = self.pool.st.lock();
        let s = *st.order.get(key)?;
        *st.loans.entry(s.idx).or_insert(0) += 1;
        Some(Loan {
            pool: self.pool.clone(),
            idx: s.idx,
            off: s.idx as usize * self.slot,
            len: s.len as usize,
        })
    }

    /// A slot for `key`'s block of `len` bytes, to be filled by the caller's copy
    /// into [`DeviceTier::memory`] at the reservation's offset and then committed.
    /// None: refused (too large, device off, every slot loaned).
    pub fn reserve(&self, key: BlockKey, len: usize) -> Option<Reservation<'_>> {
        if len > self.slot || !self.usable() {
            stats::inc(&self.stats.device_refusals);
            return None;
        }
        let mut st = self.pool.st.lock();
        if st.order.contains(&key) {
            return None;
        }
        while st.free.is_empty() {
            let Some((k, s)) = st.order.evict_one() else {
                break;
            };
            st.evicted(&k, s);
            stats::inc(&self.stats.device_evictions);
        }
        let Some(idx) = st.free.pop() else {
            stats::inc(&self.stats.device_refusals);
            return None;
        };
        Some(Reservation {
            tier: self,
            key,
            idx,
            len,
            done: false,
        })
    }

    fn commit(&self, key: BlockKey, idx: u32, len: usize) {
        let mut st = self.pool.st.lock();
        if !self.usable() || st.order.contains(&key) {
            st.free.push(idx);
            return;
        }
        let slot = Slot {
            idx,
            len: len as u32,
        };
        match st.order.insert(key, slot) {
            Ok(evicted) => {
                st.index.insert(key);
                for (k, s) in evicted {
                    st.evicted(&k, s);
                    stats::inc(&self.stats.device_evictions);
                }
                stats::inc(&self.stats.device_puts);
            }
            Err((_, s)) => st.free.push(s.idx),
        }
        self.gauge(&st);
    }
}

/// A slot being filled; given back unless committed.
pub struct Reservation<'a> {
    tier: &'a DeviceTier,
    key: BlockKey,
    idx: u32,
    len: usize,
    done: bool,
}

impl Reservation<'_> {
    /// Where the block goes in the pool's memory.
    pub fn offset(&self) -> usize {
        self.idx as usize * self.tier.slot
    }

    /// The copy into the slot has completed: the block is found from now on.
    pub fn commit(mut self) {
        self.done = true;
        self.tier.commit(self.key, self.idx, self.len);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.tier.pool.st.lock().free.push(self.idx);
        }
    }
}

/// A block of the device tier lent in place, read-only: `len` bytes at `offset` of
/// the tier's memory. The slot is not reused until every loan of it is dropped.
pub struct Loan {
    pool: Arc<Pool>,
    idx: u32,
    off: usize,
    len: usize,
}

impl Loan {
    pub fn memory(&self) -> &dyn DeviceBuffer {
        &*self.pool.mem
    }
    pub fn offset(&self) -> usize {
        self.off
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let mut st = self.pool.st.lock();
        let n = st.loans.get_mut(&self.idx).expect("a loan is counted");
        *n -= 1;
        if *n == 0 {
            st.loans.remove(&self.idx);
            if st.doomed.remove(&self.idx) {
                st.free.push(self.idx);
            }
        }
    }
}

impl Tier for DeviceTier {
    fn name(&self) -> &'static str {
        "device"
    }

    fn get(&self, key: &BlockKey) -> Option<Bytes> {
        let loan = self.lend(key)?;
        let mut sg = self.staging.lock();
        let Staging { stream, buf } = &mut *sg;
        let r = stream
            .copy_d2h(loan.memory(), loan.off, buf.as_mut(), 0, loan.len)
            .and_then(|_| stream.synchronize());
        if let Err(e) = r {
            drop(sg);
            drop(loan);
            self.fail("a copy to the host", &e);
            return None;
        }
        let b = Bytes::copy_from_slice(&buf.as_slice()[..loan.len]);
        stats::inc(&self.stats.device_hits);
        stats::add(&self.stats.device_hit_bytes, b.len() as u64);
        Some(b)
    }

    fn contains(&self, key: &BlockKey) -> bool {
        self.pool.st.lock().order.contains(key)
    }

    fn put(&self, key: BlockKey, data: Bytes) -> Result<Vec<(BlockKey, Bytes)>, Refusal> {
        // A version's block never changes: one copy is enough.
        if self.usable() && self.contains(&key) {
            return Ok(Vec::new());
        }
        let Some(res) = self.reserve(key, data.len()) else {
            return Err(if data.len() > self.slot {
                Refusal::TooLarge
            } else {
                Refusal::NoRoom
            });
        };
        let mut sg = self.staging.lock();
        let Staging { stream, buf } = &mut *sg;
        buf.as_mut_slice()[..data.len()].copy_from_slice(&data);
        let r = stream
            .copy_h2d(buf.as_ref(), 0, &*self.pool.mem, res.offset(), data.len())
            .and_then(|_| stream.synchronize());
        drop(sg);
        match r {
            Ok(()) => {
                res.commit();
                Ok(Vec::new())
            }
            Err(e) => {
                drop(res);
                self.fail("a copy to the device", &e);
                Err(Refusal::NoRoom)
            }
        }
    }

    fn remove(&self, key: &BlockKey) {
        let mut st = self.pool.st.lock();
        st.take(key);
        self.gauge(&st);
    }

    fn remove_range(&self, obj: u64, first: u64, end: u64) {
        let mut st = self.pool.st.lock();
        let keys: Vec<BlockKey> = st
            .index
            .range(BlockKey { obj, blk: first }..BlockKey { obj, blk: end })
            .copied()
            .collect();
        for k in keys {
            st.take(&k);
        }
        self.gauge(&st);
    }

    fn drop_version(&self, obj: u64, _hint: &[std::ops::Range<u64>]) {
        self.remove_range(obj, 0, u64::MAX);
    }

    fn bytes(&self) -> u64 {
        (self.pool.st.lock().index.len() * self.slot) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::fake::FakeDevice;
    use crate::device::read_back;

    fn tier(slots: u64, dev: &FakeDevice) -> DeviceTier {
        DeviceTier::new(
            Arc::new(dev.clone()),
            slots * 16,
            16,
            Arc::new(Stats::default()),
        )
        .unwrap()
    }

    fn key(obj: u64, blk: u64) -> BlockKey {
        BlockKey { obj, blk }
    }

    #[test]
    fn blocks_come_back_as_put_and_versions_drop_whole() {
        let dev = FakeDevice::new(1 << 20);
        let t = tier(8, &dev);
        for b in 0..4 {
            t.put(key(1, b), Bytes::from(vec![b as u8; 16])).unwrap();
        }
        t.put(key(2, 0), Bytes::from_static(b"short")).unwrap();
        assert_eq!(t.get(&key(1, 2)).unwrap(), vec![2u8; 16]);
        assert_eq!(t.get(&key(2, 0)).unwrap(), &b"short"[..]);
        t.drop_version(1, &[]);
        assert!((0..4).all(|b| t.get(&key(1, b)).is_none()));
        assert!(t.get(&key(2, 0)).is_some());
        assert!(matches!(
            t.put(key(3, 0), Bytes::from(vec![0; 17])),
            Err(Refusal::TooLarge)
        ));
    }

    #[test]
    fn a_full_pool_evicts_and_never_exceeds_its_slots() {
        let dev = FakeDevice::new(1 << 20);
        let t = tier(4, &dev);
        for b in 0..20 {
            t.put(key(1, b), Bytes::from(vec![b as u8; 16])).unwrap();
            assert!(t.bytes() <= 4 * 16);
        }
        let held: Vec<u64> = (0..20).filter(|&b| t.contains(&key(1, b))).collect();
        assert_eq!(held.len(), 4);
        for b in held {
            assert_eq!(t.get(&key(1, b)).unwrap(), vec![b as u8; 16]);
        }
    }

    #[test]
    fn a_loaned_slot_keeps_its_bytes_until_the_loan_ends() {
        let dev = FakeDevice::new(1 << 20);
        let t = tier(1, &dev);
        t.put(key(1, 0), Bytes::from(vec![7u8; 16])).unwrap();
        let loan = t.lend(&key(1, 0)).unwrap();
        // Invalidated while loaned: no longer found, and its slot is not reused.
        t.drop_version(1, &[]);
        assert!(t.get(&key(1, 0)).is_none());
        assert!(t.put(key(2, 0), Bytes::from(vec![9u8; 16])).is_err());
        let seen = read_back(&dev, loan.memory(), loan.offset(), loan.len()).unwrap();
        assert_eq!(seen, vec![7u8; 16]);
        drop(loan);
        t.put(key(2, 0), Bytes::from(vec![9u8; 16])).unwrap();
        assert_eq!(t.get(&key(2, 0)).unwrap(), vec![9u8; 16]);
    }

    #[test]
    fn a_failing_device_turns_the_tier_off() {
        let dev = FakeDevice::new(1 << 20);
        let t = tier(4, &dev);
        t.put(key(1, 0), Bytes::from(vec![1u8; 16])).unwrap();
        dev.set_failing(true);
        assert!(t.put(key(1, 1), Bytes::from(vec![1u8; 16])).is_err());
        assert!(t.get(&key(1, 0)).is_none());
        dev.set_failing(false);
        assert!(t.get(&key(1, 0)).is_none(), "the tier stays off");
        assert_eq!(t.bytes(), 0);
    }

    #[test]
    fn a_pool_larger_than_the_device_is_refused() {
        let dev = FakeDevice::new(64);
        assert!(DeviceTier::new(Arc::new(dev), 1024, 16, Arc::new(Stats::default())).is_err());
    }
}
