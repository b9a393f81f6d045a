//! Deduplication for the memory tiers: blocks with the same contents (identical
//! files, zero-filled runs, shared headers) share one buffer. A put looks a hash of a
//! sample of its bytes up in a content index and compares the whole bytes of any
//! match; a hash match alone never shares (a collision only costs the comparison,
//! and the block is then held apart). A tier weighs each entry whole in its order
//! and adds the bytes shared to the order's capacity ([`fit`]), so what it really
//! holds (weight less shared bytes) stays within its limit, and sharing buys room
//! for more blocks.

use std::hash::Hash;

use rustc_hash::FxHashMap;

use crate::policy::{S3Fifo, Tagged, Weigh};

/// Words sampled across a block for its content hash.
const SAMPLES: usize = 64;

/// A hash of a block's length and of 64 words spread evenly across it: 50 times
/// cheaper than hashing 16 KiB, and blocks that agree on all of them but differ
/// elsewhere are told apart by the comparison that follows.
pub fn sample_hash(b: &[u8]) -> u32 {
    let mut h = (b.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let words = b.len() / 8;
    let step = (words / SAMPLES).max(1);
    let mut i = 0;
    while i < words {
        let w = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
        i += step;
    }
    for &x in &b[words * 8..] {
        h = (h.rotate_left(5) ^ x as u64).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }
    (h >> 32) as u32
}

/// One block as held: its buffer (perhaps shared) and its content hash.
#[derive(Clone, Default)]
pub struct Held<B> {
    pub data: B,
    hash: u32,
    /// In the content index (false: another block with this hash but other bytes
    /// was there first).
    indexed: bool,
}

/// The content index: one buffer per distinct contents, and how many entries use it.
pub struct Contents<B> {
    by_hash: FxHashMap<u32, (B, u32)>,
    /// Bytes not held twice thanks to sharing: the sum over buffers of (users - 1)
    /// times their length.
    pub saved: u64,
}

impl<B> Default for Contents<B> {
    fn default() -> Self {
        Self {
            by_hash: FxHashMap::default(),
            saved: 0,
        }
    }
}

impl<B: Clone + AsRef<[u8]>> Contents<B> {
    /// The buffer to hold `data` in: a shared one with the same bytes, or its own.
    pub fn share(&mut self, data: B) -> Held<B> {
        self.share_as(sample_hash(data.as_ref()), data)
    }

    fn share_as(&mut self, hash: u32, data: B) -> Held<B> {
        match self.by_hash.get_mut(&hash) {
            Some((b, users)) if b.as_ref() == data.as_ref() => {
                *users += 1;
                self.saved += b.as_ref().len() as u64;
                Held {
                    data: b.clone(),
                    hash,
                    indexed: true,
                }
            }
            Some(_) => Held {
                data,
                hash,
                indexed: false,
            },
            None => {
                self.by_hash.insert(hash, (data.clone(), 1));
                Held {
                    data,
                    hash,
                    indexed: true,
                }
            }
        }
    }

    /// An entry that used `h` is gone.
    pub fn release(&mut self, h: &Held<B>) {
        if !h.indexed {
            return;
        }
        if let Some((b, users)) = self.by_hash.get_mut(&h.hash) {
            if *users > 1 {
                *users -= 1;
                self.saved -= b.as_ref().len() as u64;
            } else {
                self.by_hash.remove(&h.hash);
            }
        }
    }
}

/// Brings `order`'s capacity to `base` plus the bytes shared, evicting as needed
/// (each eviction may end a sharing, so this repeats until it holds).
pub fn fit<K, B, W>(
    order: &mut S3Fifo<K, Held<B>, W>,
    contents: &mut Contents<B>,
    base: u64,
    evicted: &mut Vec<Tagged<K, Held<B>>>,
) where
    K: Hash + Eq + Copy,
    B: Clone + Default + AsRef<[u8]>,
    W: Weigh<Held<B>>,
{
    loop {
        let cap = base + contents.saved;
        if cap == order.capacity() && order.weight() <= cap {
            return;
        }
        let out = order.set_capacity(cap);
        if out.is_empty() {
            return;
        }
        for e in &out {
            contents.release(&e.1);
        }
        evicted.extend(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_hash_match_with_other_bytes_is_never_shared() {
        let mut c = Contents::default();
        let a = c.share_as(7, Bytes::from_static(b"aaaa"));
        let b = c.share_as(7, Bytes::from_static(b"bbbb"));
        assert_eq!(&b.data[..], b"bbbb");
        assert!(a.indexed && !b.indexed);
        assert_eq!(c.saved, 0);
        let a2 = c.share_as(7, Bytes::from_static(b"aaaa"));
        assert_eq!(c.saved, 4);
        c.release(&b);
        c.release(&a2);
        c.release(&a);
        assert!(c.by_hash.is_empty());
        assert_eq!(c.saved, 0);
    }
}
