//! The in-memory index: objects by id and by path, their blocks under one S3-FIFO
//! order, and the paths users pinned.

use super::*;

pub(super) struct BlockWeight(pub(super) u64);

impl Weigh<u32> for BlockWeight {
    fn weigh(&self, _: &u32) -> u64 {
        self.0
    }
}

pub(super) struct Obj {
    pub(super) id: u64,
    pub(super) path: Arc<[u8]>,
    pub(super) token: Token,
    /// Blocks on disk (block numbers).
    pub(super) present: ExtentTree,
    /// Its Object record is in the log.
    pub(super) persisted: bool,
    /// Its token changed since (a write through the cache): the next commit that
    /// names its blocks logs it again first.
    pub(super) retokened: bool,
}

/// The in-RAM index. Blocks are keyed by (slot << 32 | block) to keep an entry at 16
/// bytes; a slot is an object's place in `slots`, reused after the object is dropped
/// (its blocks become tombstones first, so nothing stale survives the reuse).
pub(super) struct Index {
    pub(super) slots: Vec<Option<Obj>>,
    pub(super) free: Vec<u32>,
    pub(super) by_id: FxHashMap<u64, u32>,
    pub(super) by_path: FxHashMap<Arc<[u8]>, u32>,
    pub(super) blocks: S3Fifo<u64, u32, BlockWeight>,
    pub(super) next_id: u64,
    pub(super) bs: u64,
    /// Objects whose data file the kernel reads directly: never evicted or punched.
    pub(super) pinned: FxHashMap<u64, u32>,
    /// Paths pinned by the user (`strata pin`): files at or below them are never
    /// evicted or culled. Logged (Pin, Unpin), so they survive restarts.
    pub(super) user_pins: std::collections::BTreeSet<Vec<u8>>,
}

/// True if `path` is `pin` or below it (the empty pin is the whole origin).
pub(super) fn is_below(path: &[u8], pin: &[u8]) -> bool {
    pin.is_empty()
        || (path.starts_with(pin) && (path.len() == pin.len() || path[pin.len()] == b'/'))
}

pub(super) fn key(slot: u32, blk: u64) -> Option<u64> {
    (blk <= u32::MAX as u64).then_some(((slot as u64) << 32) | blk)
}

pub(super) fn unkey(k: u64) -> (u32, u64) {
    ((k >> 32) as u32, k & 0xffff_ffff)
}

impl Index {
    pub(super) fn new(bs: u64) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            by_id: FxHashMap::default(),
            by_path: FxHashMap::default(),
            blocks: S3Fifo::new(u64::MAX, BlockWeight(bs)),
            next_id: 1,
            bs,
            pinned: FxHashMap::default(),
            user_pins: Default::default(),
        }
    }

    pub(super) fn user_pinned(&self, path: &[u8]) -> bool {
        !self.user_pins.is_empty() && self.user_pins.iter().any(|p| is_below(path, p))
    }

    pub(super) fn obj(&self, id: u64) -> Option<(u32, &Obj)> {
        let s = *self.by_id.get(&id)?;
        self.slots[s as usize].as_ref().map(|o| (s, o))
    }

    pub(super) fn add_object(
        &mut self,
        id: u64,
        path: Arc<[u8]>,
        token: Token,
        persisted: bool,
    ) -> u32 {
        if let Some(&s) = self.by_id.get(&id) {
            let o = self.slots[s as usize].as_mut().expect("live slot");
            o.token = token;
            o.persisted |= persisted;
            return s;
        }
        if let Some(&old) = self.by_path.get(&path) {
            let old_id = self.slots[old as usize].as_ref().expect("live slot").id;
            self.remove_object(old_id);
        }
        let obj = Obj {
            id,
            path: path.clone(),
            token,
            present: ExtentTree::new(),
            persisted,
            retokened: false,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(obj);
                s
            }
            None => {
                self.slots.push(Some(obj));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id, s);
        self.by_path.insert(path, s);
        self.next_id = self.next_id.max(id + 1);
        s
    }

    /// Forgets an object and all its blocks. Returns it.
    pub(super) fn remove_object(&mut self, id: u64) -> Option<Obj> {
        let s = self.by_id.remove(&id)?;
        let o = self.slots[s as usize].take().expect("live slot");
        if self.by_path.get(&o.path) == Some(&s) {
            self.by_path.remove(&o.path);
        }
        for (r, _) in o.present.iter() {
            for blk in r {
                if let Some(k) = key(s, blk) {
                    self.blocks.remove(&k);
                }
            }
        }
        self.free.push(s);
        Some(o)
    }

    /// Removes one block; true if it was there.
    pub(super) fn remove_block(&mut self, slot: u32, blk: u64) -> bool {
        let Some(k) = key(slot, blk) else {
            return false;
        };
        if self.blocks.remove(&k).is_some() {
            if let Some(o) = self.slots[slot as usize].as_mut() {
                o.present.clear(blk..blk + 1, PRESENT);
            }
            true
        } else {
            false
        }
    }

    /// Evicts one block by policy; returns its (id, block). Blocks of pinned objects
    /// go back to the queue.
    pub(super) fn evict_one(&mut self) -> Option<(u64, u64)> {
        let mut skipped = Vec::new();
        let found = loop {
            let Some((k, crc)) = self.blocks.evict_one() else {
                break None;
            };
            let (slot, blk) = unkey(k);
            let Some(o) = self.slots[slot as usize].as_ref() else {
                continue;
            };
            let pins = &self.user_pins;
            if self.pinned.contains_key(&o.id)
                || (!pins.is_empty() && pins.iter().any(|p| is_below(&o.path, p)))
            {
                skipped.push((k, crc));
                if skipped.len() > self.blocks.len() {
                    break None;
                }
                continue;
            }
            let o = self.slots[slot as usize].as_mut().expect("looked up above");
            o.present.clear(blk..blk + 1, PRESENT);
            break Some((o.id, blk));
        };
        for (k, crc) in skipped {
            self.blocks.insert_loaded(k, crc);
        }
        found
    }
}
