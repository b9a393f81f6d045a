//! The disk tier on a simulated medium: against a model, and across simulated power
//! cuts at thousands of seeded points (more with STRATA_CRASH_SEEDS=N).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use strata::origin::Token;
use strata::stats::Stats;
use strata::storage::sim::SplitMix;
use strata::storage::{SimStorage, Storage};
use strata::tier::BlockKey;
use strata::tier::disk::{DiskConfig, DiskTier, FillBlock, Thresholds, block_len};

const BS: u64 = 4096;

fn cfg(capacity_blocks: u64, compact_min: u64) -> DiskConfig {
    DiskConfig {
        capacity: capacity_blocks * BS,
        block_size: BS as u32,
        thresholds: Thresholds::OFF,
        compact_min_bytes: compact_min,
    }
}

/// What the origin holds: object `id` has `size` bytes, block `blk` is a function of
/// (id, blk), so any byte the tier serves can be checked.
fn size_of(id: u64) -> u64 {
    let mut r = SplitMix::new(id);
    1 + r.below(12 * BS)
}

fn block_data(id: u64, blk: u64) -> Bytes {
    let len = block_len(size_of(id), BS, blk);
    let mut r = SplitMix::new(id.wrapping_mul(1_000_003) ^ blk);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn token(id: u64) -> Token {
    Token::Stat {
        size: size_of(id),
        mtime_ns: id as i64,
        ctime_ns: 0,
        ino: id,
    }
}

fn path(n: u64) -> Vec<u8> {
    format!("dir/file-{n}").into_bytes()
}

fn nblocks(id: u64) -> u64 {
    size_of(id).div_ceil(BS)
}

fn open(st: &SimStorage, c: DiskConfig) -> DiskTier {
    DiskTier::open(
        Arc::new(st.clone()) as Arc<dyn Storage>,
        c,
        Arc::new(Stats::default()),
    )
    .expect("the tier must open after any crash")
}

/// Every block the tier serves for every object it knows equals the origin's bytes.
/// Returns the blocks it serves.
fn check_all(t: &DiskTier, paths: u64) -> BTreeSet<(u64, u64)> {
    let mut served = BTreeSet::new();
    for p in 0..paths {
        let Some((id, tok)) = t.lookup(&path(p)) else {
            continue;
        };
        assert_eq!(tok, token(id), "token of object {id}");
        let n = nblocks(id);
        for (blk, got) in t.read(id, 0, n).into_iter().enumerate() {
            if let Some(got) = got {
                assert_eq!(got, block_data(id, blk as u64), "object {id} block {blk}");
                served.insert((id, blk as u64));
            }
        }
    }
    served
}

/// One workload run against a medium that loses power at the `cut`-th mutation.
/// Returns the blocks that were acknowledged durable and not removed since.
fn workload(t: &DiskTier, rng: &mut SplitMix, steps: usize, paths: u64) -> BTreeSet<(u64, u64)> {
    workload_pins(t, rng, steps, paths, &mut BTreeMap::new())
}

/// The workload, also pinning and unpinning paths: `pins` says, per path, whether it
/// is pinned after the last pin or unpin the tier acknowledged (a failed one, at a
/// power cut, leaves it unknown: removed from the map).
fn workload_pins(
    t: &DiskTier,
    rng: &mut SplitMix,
    steps: usize,
    paths: u64,
    pins: &mut BTreeMap<Vec<u8>, bool>,
) -> BTreeSet<(u64, u64)> {
    let mut durable: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut current: BTreeMap<u64, u64> = BTreeMap::new(); // path -> id
    for _ in 0..steps {
        let p = rng.below(paths);
        match rng.below(10) {
            0 => {
                // The origin file changed: a new version replaces the old.
                let id = t.allocate_id();
                t.register(id, &path(p), token(id));
                if let Some(old) = current.insert(p, id) {
                    durable.retain(|&(i, _)| i != old);
                }
            }
            1 => {
                if let Some(old) = current.remove(&p) {
                    t.drop_object(old);
                    durable.retain(|&(i, _)| i != old);
                }
            }
            2 if rng.below(3) == 0 => {
                let key = path(p);
                let on = !pins.get(&key).copied().unwrap_or(false);
                let r = if on {
                    t.pin_path(&key)
                } else {
                    t.unpin_path(&key).map(|_| ())
                };
                match r {
                    Ok(()) => pins.insert(key, on),
                    Err(_) => pins.remove(&key).map(|_| on),
                };
            }
            2 => {
                t.maintain();
            }
            _ => {
                let id = *current.entry(p).or_insert_with(|| {
                    let id = t.allocate_id();
                    t.register(id, &path(p), token(id));
                    id
                });
                let n = nblocks(id);
                let first = rng.below(n);
                let count = 1 + rng.below((n - first).min(4));
                let blocks: Vec<FillBlock> = (first..first + count)
                    .map(|blk| FillBlock {
                        key: BlockKey { obj: id, blk },
                        data: block_data(id, blk),
                    })
                    .collect();
                for (b, ok) in blocks.iter().zip(t.write_batch(&blocks)) {
                    if ok {
                        durable.insert((b.key.obj, b.key.blk));
                    }
                }
            }
        }
    }
    durable
}

#[test]
fn model_blocks_survive_clean_reopen() {
    for seed in 0..40 {
        let st = SimStorage::new();
        let mut rng = SplitMix::new(seed);
        let durable = {
            let t = open(&st, cfg(1 << 20, 2048));
            let d = workload(&t, &mut rng, 200, 8);
            let served = check_all(&t, 8);
            assert_eq!(served, d, "seed {seed}: live view differs from the model");
            t.flush().unwrap();
            d
        };
        let t = open(&st, cfg(1 << 20, 2048));
        let served = check_all(&t, 8);
        assert_eq!(
            served, durable,
            "seed {seed}: blocks lost or resurrected by a reopen"
        );
    }
}

#[test]
fn size_limit_is_never_exceeded() {
    let st = SimStorage::new();
    let t = open(&st, cfg(10, 1 << 20));
    let mut rng = SplitMix::new(7);
    workload(&t, &mut rng, 300, 6);
    assert!(t.used_bytes() <= 10 * BS);
    check_all(&t, 6);
    drop(t);
    // A smaller limit on the next open evicts down to it.
    let t = open(&st, cfg(3, 1 << 20));
    assert!(t.used_bytes() <= 3 * BS);
    check_all(&t, 6);
}

fn crash_seeds() -> u64 {
    std::env::var("STRATA_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

/// Blocks served that differ from the origin, counted rather than asserted at once.
fn wrong_bytes(t: &DiskTier, paths: u64) -> (BTreeSet<(u64, u64)>, u64) {
    let mut served = BTreeSet::new();
    let mut wrong = 0u64;
    for p in 0..paths {
        let Some((id, tok)) = t.lookup(&path(p)) else {
            continue;
        };
        if tok != token(id) {
            wrong += 1;
            continue;
        }
        for (blk, got) in t.read(id, 0, nblocks(id)).into_iter().enumerate() {
            if let Some(got) = got {
                let want = block_data(id, blk as u64);
                wrong += got.iter().zip(want.iter()).filter(|(a, b)| a != b).count() as u64;
                wrong += got.len().abs_diff(want.len()) as u64;
                served.insert((id, blk as u64));
            }
        }
    }
    (served, wrong)
}

/// Power is cut at a random mutation of a random workload (fills, new versions,
/// drops, maintenance with eviction, log compaction and free-space culling); the tier
/// recovers by itself, serves only correct bytes, and (in the runs without eviction)
/// keeps every block whose commit was acknowledged. Each recovered tier is then cut
/// again. Long run: STRATA_CRASH_SEEDS=10000.
#[test]
fn power_cut_at_seeded_points() {
    let seeds = crash_seeds();
    let (mut kept, mut acknowledged, mut wrong, mut failed, mut cuts) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut culled, mut evicted, mut pins_checked) = (0u64, 0u64, 0u64);
    for seed in 0..seeds {
        let mut rng = SplitMix::new(seed ^ 0xC0FFEE);
        let st = SimStorage::new();
        // Thirds: no eviction (durability is checked exactly), a small size limit
        // (eviction and frequent compaction), a small filesystem (culling).
        let c = match seed % 3 {
            0 => cfg(1 << 20, 1024),
            1 => cfg(12, 512),
            _ => {
                st.set_capacity(Some(40 * BS));
                let mut c = cfg(1 << 20, 2048);
                c.thresholds = Thresholds {
                    brun: 50.0,
                    bcull: 40.0,
                    bstop: 10.0,
                    frun: 0.0,
                    fcull: 0.0,
                    fstop: 0.0,
                };
                c
            }
        };
        let exact = seed % 3 == 0;
        let stats = Arc::new(Stats::default());
        let mut pins = BTreeMap::new();
        let durable = {
            let t = DiskTier::open(Arc::new(st.clone()), c.clone(), stats.clone()).unwrap();
            st.cut_after(1 + rng.below(400));
            workload_pins(&t, &mut rng, 150, 6, &mut pins)
        };
        culled += stats.disk_culled.load(Ordering::Relaxed);
        evicted += stats.disk_evictions.load(Ordering::Relaxed);
        cuts += 1;
        let after = st.power_cut(seed);
        let t = match DiskTier::open(
            Arc::new(after.clone()),
            c.clone(),
            Arc::new(Stats::default()),
        ) {
            Ok(t) => t,
            Err(e) => {
                failed += 1;
                eprintln!("seed {seed}: recovery failed: {e}");
                continue;
            }
        };
        let (served, w) = wrong_bytes(&t, 6);
        wrong += w;
        // Every acknowledged pin or unpin holds after the cut.
        let now: BTreeSet<Vec<u8>> = t.pins().into_iter().map(|(p, _)| p).collect();
        for (p, on) in &pins {
            assert_eq!(
                now.contains(p),
                *on,
                "seed {seed}: pin of {p:?} not as acknowledged"
            );
            pins_checked += 1;
        }
        if exact {
            let lost: Vec<_> = durable.difference(&served).collect();
            assert!(
                lost.is_empty(),
                "seed {seed}: acknowledged blocks lost: {lost:?}"
            );
            acknowledged += durable.len() as u64;
            kept += durable.intersection(&served).count() as u64;
        }
        // The recovered tier keeps working, and survives a second cut.
        let mut rng2 = SplitMix::new(seed);
        after.cut_after(1 + rng2.below(200));
        workload(&t, &mut rng2, 60, 6);
        drop(t);
        cuts += 1;
        let again = after.power_cut(seed + 1);
        match DiskTier::open(Arc::new(again), c, Arc::new(Stats::default())) {
            Ok(t) => wrong += wrong_bytes(&t, 6).1,
            Err(e) => {
                failed += 1;
                eprintln!("seed {seed}: second recovery failed: {e}");
            }
        }
    }
    println!("power_cut_points = {cuts}");
    println!("power_wrong_bytes = {wrong}");
    println!("power_recoveries_failed = {failed}");
    println!("power_acknowledged_blocks_kept = {kept} of {acknowledged}");
    println!("power_blocks_evicted = {evicted}, culled = {culled}");
    println!("power_pins_checked = {pins_checked}");
    assert!(
        evicted > 0 && culled > 0 && pins_checked > 0,
        "the workloads must evict, cull and pin"
    );
    assert_eq!(wrong, 0, "wrong bytes served after power cuts");
    assert_eq!(failed, 0, "recoveries failed");
    assert_eq!(kept, acknowledged);
}

#[test]
fn damaged_blocks_are_detected_and_dropped() {
    let st = SimStorage::new();
    let t = open(&st, cfg(1 << 20, 1 << 20));
    let mut rng = SplitMix::new(3);
    let durable = workload(&t, &mut rng, 200, 4);
    assert!(!durable.is_empty());
    drop(t);
    // Flip a byte in every data file.
    for f in st.files() {
        if f.starts_with("objects") {
            let mut d = st.read_file(&f).unwrap();
            if !d.is_empty() {
                let i = d.len() / 2;
                d[i] ^= 0x40;
                st.write_file(&f, d).unwrap();
            }
        }
    }
    let t = open(&st, cfg(1 << 20, 1 << 20));
    let served = check_all(&t, 4);
    assert!(
        served.len() < durable.len(),
        "damage must cost blocks, not serve them"
    );
    let report = t.fsck(true);
    assert_eq!(
        report.blocks_bad, 0,
        "check_all already dropped the damaged blocks"
    );
    drop(t);
    let t = open(&st, cfg(1 << 20, 1 << 20));
    assert!(t.fsck(false).is_clean(), "{:?}", t.fsck(false));
}

#[test]
fn unreadable_index_starts_empty_and_reclaims() {
    let st = SimStorage::new();
    {
        let t = open(&st, cfg(1 << 20, 1 << 20));
        let mut rng = SplitMix::new(5);
        workload(&t, &mut rng, 100, 4);
    }
    st.write_file(
        Path::new("index.log"),
        b"garbage that is not an index".to_vec(),
    )
    .unwrap();
    let t = open(&st, cfg(1 << 20, 1 << 20));
    assert!(t.open_report().index_reset);
    assert_eq!(t.blocks(), 0);
    while t.maintain() {}
    let data_files = st
        .files()
        .into_iter()
        .filter(|f| f.starts_with("objects"))
        .count();
    assert_eq!(data_files, 0, "orphaned data must be reclaimed");
}

#[test]
fn block_size_change_is_refused_with_advice() {
    let st = SimStorage::new();
    drop(open(&st, cfg(10, 1 << 20)));
    let mut c = cfg(10, 1 << 20);
    c.block_size = 8192;
    let err = DiskTier::open(Arc::new(st.clone()), c, Arc::new(Stats::default()))
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("--block-size 4096"), "{err}");
}

#[test]
fn second_opener_is_refused() {
    let st = SimStorage::new();
    let _t = open(&st, cfg(10, 1 << 20));
    let err = DiskTier::open(
        Arc::new(st.clone()),
        cfg(10, 1 << 20),
        Arc::new(Stats::default()),
    )
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("in use"), "{err}");
}

/// A tier on a simulated 400-block filesystem with free-space thresholds (percent of it)
/// for bytes only.
fn tier_on_400_blocks(brun: f64, bcull: f64, bstop: f64) -> (SimStorage, DiskTier, Arc<Stats>) {
    let st = SimStorage::new();
    st.set_capacity(Some(400 * BS));
    let mut c = cfg(1 << 20, 1 << 30);
    c.thresholds = Thresholds {
        brun,
        bcull,
        bstop,
        frun: 0.0,
        fcull: 0.0,
        fstop: 0.0,
    };
    let stats = Arc::new(Stats::default());
    let t = DiskTier::open(Arc::new(st.clone()) as Arc<dyn Storage>, c, stats.clone()).unwrap();
    (st, t, stats)
}

/// Writes blocks 0..n of object `id` (each filled with its id); how many were taken.
fn fill(t: &DiskTier, id: u64, n: u64) -> u64 {
    let blocks: Vec<FillBlock> = (0..n)
        .map(|blk| FillBlock {
            key: BlockKey { obj: id, blk },
            data: Bytes::from(vec![id as u8; BS as usize]),
        })
        .collect();
    t.write_batch(&blocks).into_iter().filter(|&ok| ok).count() as u64
}

/// The token of a 1,000-block object.
fn big(id: u64) -> Token {
    Token::Stat {
        size: 1000 * BS,
        mtime_ns: 0,
        ctime_ns: 0,
        ino: id,
    }
}

/// With the cache filesystem filling up, the tier culls between the cull and run
/// thresholds and stops filling below the stop threshold.
#[test]
fn free_space_thresholds_cull_and_stop() {
    let (st, t, stats) = tier_on_400_blocks(50.0, 40.0, 20.0);
    // 250 blocks: 62% used, 38% free: below cull, above stop.
    t.register(1, b"a", big(1));
    assert_eq!(fill(&t, 1, 250), 250);
    t.maintain();
    let used_after_cull = t.blocks();
    assert!(
        used_after_cull <= 200,
        "culled to the run threshold: {used_after_cull}"
    );
    assert!(stats.disk_culled.load(Ordering::Relaxed) >= 50);
    // Something else fills the filesystem: below stop, fills are refused.
    let hog = st.open(Path::new("hog"), true).unwrap();
    hog.write_all_at(&vec![1u8; (340 * BS - t.blocks() * BS) as usize], 0)
        .unwrap();
    t.register(2, b"b", big(2));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // the space reading expires
    assert_eq!(fill(&t, 2, 10), 0, "must refuse below the stop threshold");
    assert!(stats.disk_refused_space.load(Ordering::Relaxed) >= 10);
    // Space comes back: filling resumes.
    st.remove_file(Path::new("hog")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    t.maintain();
    assert_eq!(fill(&t, 2, 10), 10);
}

/// Pinned paths (`strata pin`) keep their blocks through culling and eviction, and
/// across a restart; unpinned, they go like any others.
#[test]
fn pinned_paths_survive_culling_eviction_and_restart() {
    let (st, t, stats) = tier_on_400_blocks(50.0, 40.0, 20.0);
    t.pin_path(b"keep").unwrap();
    t.register(1, b"keep/a", big(1));
    t.register(2, b"keeper", big(2)); // not below "keep": a name that only starts so
    assert_eq!(fill(&t, 1, 100), 100);
    assert_eq!(fill(&t, 2, 150), 150);
    // 250 of 400 blocks used: culled towards the run threshold, never the pinned ones.
    t.maintain();
    assert!(stats.disk_culled.load(Ordering::Relaxed) >= 50);
    assert!(t.contains_all(1, 0..100), "pinned blocks were culled");
    assert!(!t.contains_all(2, 0..150));
    assert_eq!(t.pins(), vec![(b"keep".to_vec(), 100 * BS)]);
    assert_eq!(t.pinned_bytes_except(b"other"), 100 * BS);
    assert_eq!(t.pinned_bytes_except(b"keep"), 0);
    // Pins are in the log: a restart keeps them.
    t.close().unwrap();
    drop(t);
    let t = DiskTier::open(
        Arc::new(st.clone()) as Arc<dyn Storage>,
        cfg(1 << 20, 1 << 30),
        Arc::new(Stats::default()),
    )
    .unwrap();
    assert_eq!(t.pins().len(), 1);
    // Eviction (a size limit below what is cached) skips them too.
    drop(t);
    let small = DiskTier::open(
        Arc::new(st.clone()) as Arc<dyn Storage>,
        cfg(120, 1 << 30),
        Arc::new(Stats::default()),
    )
    .unwrap();
    small.register(3, b"other", big(3));
    assert!(fill(&small, 3, 60) > 0);
    assert!(small.contains_all(1, 0..100), "pinned blocks were evicted");
    // Unpinned: they are evicted like any others.
    assert!(small.unpin_path(b"keep").unwrap());
    assert!(!small.unpin_path(b"keep").unwrap());
    assert_eq!(fill(&small, 3, 120), 120);
    assert!(!small.contains_all(1, 0..100));
}

/// One fill batch larger than the room above the stop threshold is cut to fit: the
/// filesystem never goes below it, however much arrives at once.
#[test]
fn one_batch_never_fills_past_the_stop_threshold() {
    let (st, t, stats) = tier_on_400_blocks(0.0, 0.0, 20.0);
    t.register(
        1,
        b"a",
        Token::Stat {
            size: 1000 * BS,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 1,
        },
    );
    let blocks: Vec<FillBlock> = (0..380)
        .map(|blk| FillBlock {
            key: BlockKey { obj: 1, blk },
            data: Bytes::from(vec![7u8; BS as usize]),
        })
        .collect();
    let written = t.write_batch(&blocks).into_iter().filter(|&ok| ok).count() as u64;
    let space = st.space().unwrap();
    assert!(
        space.avail_bytes * 100 >= space.total_bytes * 20,
        "free space stayed above the stop threshold: {space:?}"
    );
    assert!((300..=320).contains(&written), "wrote {written} of 380");
    assert_eq!(
        stats.disk_refused_space.load(Ordering::Relaxed),
        380 - written
    );
}
