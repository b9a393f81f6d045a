//! Writes through the cache change an object version's bytes in place: the blocks a
//! write changed leave the disk tier (`forget_blocks`), the version takes the
//! origin's new token (`retoken`), and the written blocks are filled anew. Across
//! power cuts at seeded points the recovered tier serves, for the token it comes back
//! with, only the bytes the file had at that token: never a block from before a write
//! under the token from after it. Long run: STRATA_CRASH_SEEDS=10000.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use strata::origin::Token;
use strata::stats::Stats;
use strata::storage::SimStorage;
use strata::storage::sim::SplitMix;
use strata::tier::BlockKey;
use strata::tier::disk::{DiskConfig, DiskTier, FillBlock, Thresholds, block_len};

const BS: u64 = 4096;
const PATHS: u64 = 4;
const BLOCKS: u64 = 8;

fn size() -> u64 {
    BLOCKS * BS - 100
}

/// The file's token after its `g`-th write.
fn token(id: u64, g: u64) -> Token {
    Token::Stat {
        size: size(),
        mtime_ns: g as i64,
        ctime_ns: g as i64,
        ino: id,
    }
}

/// Block `blk` as the `g`-th write of object `id` left it.
fn data(id: u64, g: u64, blk: u64) -> Bytes {
    let mut r = SplitMix::new(id.wrapping_mul(1_000_003) ^ (g << 20) ^ blk);
    let len = block_len(size(), BS, blk);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn path(p: u64) -> Vec<u8> {
    format!("f{p}").into_bytes()
}

/// Per object: for each generation, which write last set each block.
type History = BTreeMap<u64, Vec<[u64; BLOCKS as usize]>>;

fn workload(t: &DiskTier, rng: &mut SplitMix, steps: usize, hist: &mut History) {
    let mut current: BTreeMap<u64, u64> = BTreeMap::new(); // path -> id
    for _ in 0..steps {
        let p = rng.below(PATHS);
        let id = *current.entry(p).or_insert_with(|| {
            let id = t.allocate_id();
            t.register(id, &path(p), token(id, 0));
            hist.insert(id, vec![[0; BLOCKS as usize]]);
            id
        });
        let gens = hist.get_mut(&id).expect("known");
        let g = (gens.len() - 1) as u64;
        let first = rng.below(BLOCKS);
        let n = 1 + rng.below((BLOCKS - first).min(3));
        match rng.below(3) {
            // A write through the cache: its blocks go, the token moves, the new
            // bytes are filled.
            0 => {
                t.forget_blocks(id, first..first + n);
                let mut next = *gens.last().expect("one");
                for b in first..first + n {
                    next[b as usize] = g + 1;
                }
                gens.push(next);
                t.retoken(id, token(id, g + 1));
                // Not all of them (a fill may be dropped): the others are only gone.
                let fills: Vec<FillBlock> = (first..first + n)
                    .filter(|_| rng.below(2) == 0)
                    .map(|blk| FillBlock {
                        key: BlockKey { obj: id, blk },
                        data: data(id, g + 1, blk),
                    })
                    .collect();
                t.write_batch(&fills);
            }
            // Fills of the current bytes.
            _ => {
                let now = gens.last().expect("one");
                let fills: Vec<FillBlock> = (first..first + n)
                    .map(|blk| FillBlock {
                        key: BlockKey { obj: id, blk },
                        data: data(id, now[blk as usize], blk),
                    })
                    .collect();
                t.write_batch(&fills);
            }
        }
    }
}

/// Bytes served that are not the file's at the token the tier has.
fn wrong(t: &DiskTier, hist: &History) -> (u64, u64) {
    let (mut wrong, mut served) = (0, 0);
    for p in 0..PATHS {
        let Some((id, tok)) = t.lookup(&path(p)) else {
            continue;
        };
        let Token::Stat { mtime_ns: g, .. } = tok else {
            panic!("a stat token")
        };
        let gens = &hist[&id];
        let Some(at) = gens.get(g as usize) else {
            wrong += 1; // a token never given
            continue;
        };
        for (blk, got) in t.read(id, 0, BLOCKS).into_iter().enumerate() {
            if let Some(got) = got {
                served += 1;
                if got != data(id, at[blk], blk as u64) {
                    wrong += 1;
                }
            }
        }
    }
    (wrong, served)
}

#[test]
fn power_cuts_during_writes_through_never_serve_older_bytes() {
    let seeds: u64 = std::env::var("STRATA_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let cfg = DiskConfig {
        capacity: 1 << 30,
        block_size: BS as u32,
        thresholds: Thresholds::OFF,
        compact_min_bytes: 2048,
    };
    let (mut bad, mut served, mut failed) = (0u64, 0u64, 0u64);
    for seed in 0..seeds {
        let mut rng = SplitMix::new(seed ^ 0x5EED);
        let st = SimStorage::new();
        let mut hist = History::new();
        {
            let t = DiskTier::open(
                Arc::new(st.clone()),
                cfg.clone(),
                Arc::new(Stats::default()),
            )
            .unwrap();
            st.cut_after(1 + rng.below(300));
            workload(&t, &mut rng, 120, &mut hist);
            // Without a cut, what it serves now is right too.
            let (w, _) = wrong(&t, &hist);
            assert_eq!(w, 0, "seed {seed}: wrong bytes before any cut");
        }
        let after = st.power_cut(seed);
        match DiskTier::open(Arc::new(after), cfg.clone(), Arc::new(Stats::default())) {
            Ok(t) => {
                let (w, s) = wrong(&t, &hist);
                bad += w;
                served += s;
            }
            Err(e) => {
                failed += 1;
                eprintln!("seed {seed}: recovery failed: {e}");
            }
        }
    }
    println!("rewrite_power_cuts = {seeds}, blocks served after them = {served}");
    assert_eq!(failed, 0, "recoveries failed");
    assert_eq!(bad, 0, "blocks of another write served after power cuts");
    assert!(served > 0, "the cuts must leave something to check");
}
