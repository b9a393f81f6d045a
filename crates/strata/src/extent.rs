//! Extent state tree: per object, a map of half-open ranges to state bits.
//!
//! The tree is kept canonical: extents never overlap, no extent has zero bits, and two
//! touching extents never carry the same bits (they are merged). That makes "is all of
//! this range on disk?" and "where does the next run without a fetch in flight start?"
//! a walk over a handful of extents instead of over every block.
//!
//! Positions are plain `u64`s; the engine uses block-aligned byte offsets, the disk
//! index uses block numbers.

use std::collections::BTreeMap;
use std::ops::Range;

/// A set of state bits.
pub type Bits = u32;

/// The state bits the engine uses.
pub mod bits {
    use super::Bits;
    /// Some tier may hold the range (a hint, set when a tier takes a block and cleared
    /// when a lookup finds it nowhere): it bounds what an invalidation flushes. The
    /// tiers themselves are the record of what they hold.
    pub const CACHED: Bits = 1 << 0;
    /// An origin fetch covering the range is in flight; others wait for it.
    pub const FETCHING: Bits = 1 << 2;
    /// A fill of the range into the disk tier is queued or running.
    pub const FILLING: Bits = 1 << 3;
    /// Reserved for write-back caching: the range holds data not yet on the origin.
    pub const DIRTY: Bits = 1 << 4;
    /// Reserved for write-back caching: the range is being written to the origin.
    pub const WRITEBACK: Bits = 1 << 5;
    /// The range is on disk, and its disk copy was checked against its checksums (or
    /// written by this process) since the engine started: it may be served without
    /// the engine (passthrough). Cleared when the disk tier is found not to hold it.
    pub const VERIFIED: Bits = 1 << 6;
}

/// Canonical map of non-overlapping ranges to non-zero state bits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentTree {
    // start -> (end, bits)
    map: BTreeMap<u64, (u64, Bits)>,
}

impl ExtentTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of extents (a measure of fragmentation and memory use).
    pub fn extent_count(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sets `bits` on every position of `range`.
    pub fn set(&mut self, range: Range<u64>, bits: Bits) {
        self.update(range, |b| b | bits);
    }

    /// Clears `bits` on every position of `range`.
    pub fn clear(&mut self, range: Range<u64>, bits: Bits) {
        self.update(range, |b| b & !bits);
    }

    /// Clears `bits` everywhere.
    pub fn clear_all(&mut self, bits: Bits) {
        self.update(0..u64::MAX, |b| b & !bits);
    }

    /// The bits at one position.
    pub fn bits_at(&self, pos: u64) -> Bits {
        match self.map.range(..=pos).next_back() {
            Some((_, &(end, b))) if end > pos => b,
            _ => 0,
        }
    }

    /// True when every position of `range` has all of `bits`. An empty range is true.
    pub fn test_all(&self, range: Range<u64>, bits: Bits) -> bool {
        self.runs(range).all(|(_, b)| b & bits == bits)
    }

    /// True when some position of `range` has any of `bits`.
    pub fn test_any(&self, range: Range<u64>, bits: Bits) -> bool {
        self.runs(range).any(|(_, b)| b & bits != 0)
    }

    /// The first maximal run inside `range` where at least one of `bits` is set,
    /// clipped to `range`.
    pub fn find_set(&self, range: Range<u64>, bits: Bits) -> Option<Range<u64>> {
        self.find_run(range, |b| b & bits != 0)
    }

    /// The first maximal run inside `range` where none of `bits` is set, clipped to
    /// `range`.
    pub fn find_clear(&self, range: Range<u64>, bits: Bits) -> Option<Range<u64>> {
        self.find_run(range, |b| b & bits == 0)
    }

    fn find_run(&self, range: Range<u64>, pred: impl Fn(Bits) -> bool) -> Option<Range<u64>> {
        let mut found: Option<Range<u64>> = None;
        for (r, b) in self.runs(range) {
            if pred(b) {
                match &mut found {
                    Some(f) => f.end = r.end,
                    None => found = Some(r),
                }
            } else if found.is_some() {
                break;
            }
        }
        found
    }

    /// Walks `range` as consecutive pieces with their bits; gaps appear with bits 0.
    /// The pieces cover `range` exactly.
    pub fn runs(&self, range: Range<u64>) -> Runs<'_> {
        let start_key = match self.map.range(..=range.start).next_back() {
            Some((&s, &(e, _))) if e > range.start => s,
            _ => range.start,
        };
        Runs {
            iter: self.map.range(start_key..),
            pos: range.start,
            end: range.end,
            pending: None,
        }
    }

    /// All extents with their bits, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Range<u64>, Bits)> + '_ {
        self.map.iter().map(|(&s, &(e, b))| (s..e, b))
    }

    /// Applies `f` to the bits of every position in `range`, then restores the
    /// canonical form around it.
    fn update(&mut self, range: Range<u64>, f: impl Fn(Bits) -> Bits) {
        if range.start >= range.end {
            return;
        }
        // Most updates on the read path change nothing (a hit marks blocks it found
        // marked): the canonical form then stands, and the rebuild's allocations
        // and map edits are skipped.
        if self.runs(range.clone()).all(|(_, b)| f(b) == b) {
            return;
        }
        // Take out every extent that overlaps or touches the range, so that merging
        // with equal neighbours happens in the same pass.
        // The only extent that can touch from the left is the last one starting before.
        let first = match self.map.range(..range.start).next_back() {
            Some((&s, &(e, _))) if e >= range.start => s,
            _ => range.start,
        };
        let keys: Vec<u64> = self.map.range(first..=range.end).map(|(&s, _)| s).collect();
        let mut old: Vec<(u64, u64, Bits)> = Vec::with_capacity(keys.len());
        for k in keys {
            let (e, b) = self.map.remove(&k).expect("key just listed");
            old.push((k, e, b));
        }

        // Rebuild the window as consecutive pieces, each with its new bits.
        let win_start = old.first().map_or(range.start, |o| o.0.min(range.start));
        let win_end = old.last().map_or(range.end, |o| o.1.max(range.end));
        let mut points: Vec<u64> = Vec::with_capacity(old.len() * 2 + 2);
        points.push(range.start);
        points.push(range.end);
        for &(s, e, _) in &old {
            points.push(s);
            points.push(e);
        }
        points.sort_unstable();
        points.dedup();

        let mut out: Vec<(u64, u64, Bits)> = Vec::new();
        let mut idx = 0; // into `old`, which is sorted and non-overlapping
        for w in points.windows(2) {
            let (s, e) = (w[0], w[1]);
            if s < win_start || e > win_end {
                continue;
            }
            while idx < old.len() && old[idx].1 <= s {
                idx += 1;
            }
            let cur = match old.get(idx) {
                Some(&(os, oe, b)) if os <= s && e <= oe => b,
                _ => 0,
            };
            let new = if s >= range.start && e <= range.end {
                f(cur)
            } else {
                cur
            };
            if new == 0 {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 == s && last.2 == new => last.1 = e,
                _ => out.push((s, e, new)),
            }
        }
        for (s, e, b) in out {
            self.map.insert(s, (e, b));
        }
    }
}

/// Iterator returned by [`ExtentTree::runs`].
pub struct Runs<'a> {
    iter: std::collections::btree_map::Range<'a, u64, (u64, Bits)>,
    pos: u64,
    end: u64,
    pending: Option<(u64, u64, Bits)>,
}

impl Iterator for Runs<'_> {
    type Item = (Range<u64>, Bits);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let next = match self.pending.take() {
            Some(p) => Some(p),
            None => self.iter.next().map(|(&s, &(e, b))| (s, e, b)),
        };
        match next {
            Some((s, e, b)) if s <= self.pos => {
                let stop = e.min(self.end);
                let r = self.pos..stop;
                self.pos = stop;
                Some((r, b))
            }
            Some((s, e, b)) => {
                // A gap before the next extent.
                let stop = s.min(self.end);
                let r = self.pos..stop;
                self.pos = stop;
                self.pending = Some((s, e, b));
                Some((r, 0))
            }
            None => {
                let r = self.pos..self.end;
                self.pos = self.end;
                Some((r, 0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNIVERSE: u64 = 64;

    /// Reference model: the bits of every position, one by one.
    #[derive(Default)]
    struct Model {
        pos: BTreeMap<u64, Bits>,
    }

    impl Model {
        fn update(&mut self, r: Range<u64>, f: impl Fn(Bits) -> Bits) {
            for p in r {
                let b = f(self.pos.get(&p).copied().unwrap_or(0));
                if b == 0 {
                    self.pos.remove(&p);
                } else {
                    self.pos.insert(p, b);
                }
            }
        }
        fn get(&self, p: u64) -> Bits {
            self.pos.get(&p).copied().unwrap_or(0)
        }
        fn find(&self, r: Range<u64>, pred: impl Fn(Bits) -> bool) -> Option<Range<u64>> {
            let mut found: Option<Range<u64>> = None;
            for p in r {
                if pred(self.get(p)) {
                    match &mut found {
                        Some(f) => f.end = p + 1,
                        None => found = Some(p..p + 1),
                    }
                } else if found.is_some() {
                    break;
                }
            }
            found
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(Range<u64>, Bits),
        Clear(Range<u64>, Bits),
    }

    fn range() -> impl Strategy<Value = Range<u64>> {
        (0..UNIVERSE, 0..UNIVERSE).prop_map(|(a, b)| a.min(b)..a.max(b) + 1)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (range(), 1u32..16).prop_map(|(r, b)| Op::Set(r, b)),
            (range(), 1u32..16).prop_map(|(r, b)| Op::Clear(r, b)),
        ]
    }

    fn check_canonical(t: &ExtentTree) {
        let mut prev: Option<(u64, Bits)> = None;
        for (r, b) in t.iter() {
            assert!(r.start < r.end, "empty extent {r:?}");
            assert_ne!(b, 0, "zero-bit extent {r:?}");
            if let Some((pe, pb)) = prev {
                assert!(pe <= r.start, "overlap at {r:?}");
                assert!(!(pe == r.start && pb == b), "unmerged neighbours at {r:?}");
            }
            prev = Some((r.end, b));
        }
    }

    proptest! {
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 1..40),
                         queries in proptest::collection::vec((range(), 1u32..16), 1..10)) {
            let mut t = ExtentTree::new();
            let mut m = Model::default();
            for op in &ops {
                match op.clone() {
                    Op::Set(r, b) => { t.set(r.clone(), b); m.update(r, |x| x | b); }
                    Op::Clear(r, b) => { t.clear(r.clone(), b); m.update(r, |x| x & !b); }
                }
                check_canonical(&t);
            }
            for p in 0..UNIVERSE + 2 {
                prop_assert_eq!(t.bits_at(p), m.get(p), "bits at {}", p);
            }
            for (r, b) in queries {
                prop_assert_eq!(t.test_all(r.clone(), b), r.clone().all(|p| m.get(p) & b == b));
                prop_assert_eq!(t.test_any(r.clone(), b), r.clone().any(|p| m.get(p) & b != 0));
                prop_assert_eq!(t.find_set(r.clone(), b), m.find(r.clone(), |x| x & b != 0));
                prop_assert_eq!(t.find_clear(r.clone(), b), m.find(r.clone(), |x| x & b == 0));
                // runs() covers the range exactly with the model's bits.
                let mut pos = r.start;
                for (piece, bits) in t.runs(r.clone()) {
                    prop_assert_eq!(piece.start, pos);
                    for p in piece.clone() { prop_assert_eq!(m.get(p), bits); }
                    pos = piece.end;
                }
                prop_assert_eq!(pos, r.end);
            }
        }
    }

    #[test]
    fn merges_neighbours() {
        let mut t = ExtentTree::new();
        t.set(0..10, bits::CACHED);
        t.set(10..20, bits::CACHED);
        assert_eq!(t.extent_count(), 1);
        t.set(5..15, bits::FETCHING);
        assert_eq!(t.extent_count(), 3);
        t.clear(0..100, bits::FETCHING);
        assert_eq!(t.extent_count(), 1);
        assert!(t.test_all(0..20, bits::CACHED));
        assert!(!t.test_all(0..21, bits::CACHED));
    }

    #[test]
    fn huge_ranges() {
        let mut t = ExtentTree::new();
        t.set(u64::MAX - 10..u64::MAX, bits::VERIFIED);
        assert_eq!(t.bits_at(u64::MAX - 1), bits::VERIFIED);
        t.clear_all(bits::VERIFIED);
        assert!(t.is_empty());
    }
}
