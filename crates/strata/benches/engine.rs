//! Engine benchmark (not a test): `cargo bench -p strata --bench engine`.
//!
//! Every figure is a ratio of two measurements taken side by side in this run, or a
//! count; absolute times are printed for context only. Set STRATA_BENCH_MB to change
//! the file size (default 256).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata::origin::{LocalOrigin, Origin, SlowOrigin};
use strata::stats::Stats;
use strata::storage::{RealStorage, Storage};
use strata::tier::BlockKey;
use strata::tier::disk::{DiskConfig, DiskTier, Thresholds};
use strata::tier::ram::RamTier;
use strata::{Config, DiskSetup, Engine};

/// Counts live heap bytes, to measure what the disk index needs per block.
struct Counting;

static HEAP: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HEAP.fetch_add(l.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HEAP.fetch_sub(l.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        HEAP.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const READ: usize = 1 << 20;
const BS: u32 = 64 * 1024;

fn drop_page_cache() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn engine_over(origin: Arc<dyn Origin>, cache: &Path, ram: u64) -> Engine {
    let cfg = Config {
        block_size: BS,
        ram_capacity: ram,
        disk: Some(DiskSetup {
            storage: Arc::new(RealStorage::open(cache).unwrap()),
            capacity: 8 << 30,
            thresholds: Thresholds::default(),
        }),
        attr_ttl: Duration::from_secs(3600),
        ..Config::default()
    };
    Engine::new(cfg, origin).expect("engine")
}

/// Reads a whole file through the engine in READ-sized requests, copying into a user
/// buffer as a FUSE reply would. Returns bytes read.
fn read_engine(e: &Engine, name: &str) -> u64 {
    let h = e.open(Path::new(name)).expect("open");
    let mut user = vec![0u8; READ];
    let mut off = 0u64;
    loop {
        let b = e.read(&h, off, READ).expect("read");
        if b.is_empty() {
            return off;
        }
        let mut at = 0;
        for p in b.parts() {
            user[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        off += b.len() as u64;
    }
}

fn read_origin_direct(o: &dyn Origin, name: &str) -> u64 {
    let f = o.open(Path::new(name)).expect("open");
    let mut buf = vec![0u8; READ];
    let mut off = 0u64;
    loop {
        let n = f.read_at(&mut buf, off).expect("read");
        if n == 0 {
            return off;
        }
        off += n as u64;
    }
}

fn read_local(path: &Path) -> u64 {
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; READ];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

struct Row {
    name: &'static str,
    what: String,
    value: String,
}

fn main() {
    let mb: u64 = std::env::var("STRATA_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let tmp = tempfile::tempdir_in(std::env::var("STRATA_BENCH_DIR").unwrap_or("/var/tmp".into()))
        .expect("tempdir");
    let origin_dir = tmp.path().join("origin");
    std::fs::create_dir_all(&origin_dir).unwrap();
    let file = origin_dir.join("big");
    {
        let mut x = 0x1234_5678_9abc_def0u64;
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut f = std::fs::File::create(&file).unwrap();
        for _ in 0..mb {
            std::io::Write::write_all(&mut f, &chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let bytes = mb << 20;
    let mut rows: Vec<Row> = Vec::new();
    let local: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&origin_dir).unwrap());

    // 1. Cold read of a slow origin: direct vs through the engine.
    let slow_mb = mb.min(128);
    let slow = || -> Arc<dyn Origin> {
        Arc::new(SlowOrigin::new(
            local.clone(),
            Duration::from_millis(2),
            200 << 20,
        ))
    };
    let slow_file = origin_dir.join("slow");
    std::fs::write(
        &slow_file,
        &std::fs::read(&file).unwrap()[..(slow_mb << 20) as usize],
    )
    .unwrap();
    let t = Instant::now();
    let n = read_origin_direct(&*slow(), "slow");
    let direct = t.elapsed();
    assert_eq!(n, slow_mb << 20);
    let cache1 = tmp.path().join("cache-cold");
    let e = engine_over(slow(), &cache1, 256 << 20);
    let t = Instant::now();
    let n = read_engine(&e, "slow");
    let cold = t.elapsed();
    assert_eq!(n, slow_mb << 20);
    e.wait_fills(Duration::from_secs(60));
    drop(e);
    let cold_ratio = direct.as_secs_f64() / cold.as_secs_f64();
    rows.push(Row {
        name: "cold_vs_slow_origin",
        what: format!(
            "cold read of a slow origin (2 ms, 200 MiB/s), {slow_mb} MiB, 1 MiB reads: \
             engine {:.0} MiB/s vs direct {:.0} MiB/s",
            mib_s(n, cold),
            mib_s(n, direct)
        ),
        value: format!("{cold_ratio:.2}"),
    });

    // 2. Disk-tier hits with the page cache dropped vs a plain local read.
    let cache2 = tmp.path().join("cache-disk");
    {
        // A local origin outruns the disk writer, which drops fills rather than block
        // readers; read until every block is on disk.
        let e = engine_over(local.clone(), &cache2, 256 << 20);
        let want = bytes.div_ceil(BS as u64);
        for _ in 0..50 {
            read_engine(&e, "big");
            e.wait_fills(Duration::from_secs(120));
            if e.stats().disk_blocks >= want {
                break;
            }
        }
        assert_eq!(
            e.stats().disk_blocks,
            want,
            "could not get the file on disk"
        );
    }
    let dropped = drop_page_cache();
    let t = Instant::now();
    read_local(&file);
    let plain = t.elapsed();
    // A RAM tier of one block: every read is a disk-tier hit.
    let e = engine_over(local.clone(), &cache2, BS as u64 + 256);
    drop_page_cache();
    let t = Instant::now();
    let n = read_engine(&e, "big");
    let disk = t.elapsed();
    let st = e.stats();
    assert_eq!(n, bytes);
    assert_eq!(st.origin_requests, 0, "disk hits expected: {st:?}");
    drop(e);
    let disk_ratio = plain.as_secs_f64() / disk.as_secs_f64();
    rows.push(Row {
        name: "disk_hit_vs_local_read",
        what: format!(
            "disk-tier hits{} ({mb} MiB): engine {:.0} MiB/s vs plain read {:.0} MiB/s",
            if dropped {
                ", page cache dropped"
            } else {
                " (page cache NOT dropped: not root?)"
            },
            mib_s(n, disk),
            mib_s(n, plain)
        ),
        value: format!("{disk_ratio:.2}"),
    });

    // 3. RAM-tier hits.
    let ram_mb = mb.min(512);
    let e = engine_over(
        local.clone(),
        &tmp.path().join("cache-ram"),
        (ram_mb + 64) << 20,
    );
    let h = e.open(Path::new("big")).unwrap();
    let mut user = vec![0u8; READ];
    for pass in 0..2 {
        let t = Instant::now();
        let mut off = 0u64;
        while off < ram_mb << 20 {
            let b = e.read(&h, off, READ).unwrap();
            let mut at = 0;
            for p in b.parts() {
                user[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            off += b.len() as u64;
        }
        if pass == 1 {
            let gbs = off as f64 / 1e9 / t.elapsed().as_secs_f64();
            rows.push(Row {
                name: "ram_hit_gb_s",
                what: format!("RAM-tier hits, 1 MiB reads copied to a user buffer ({ram_mb} MiB)"),
                value: format!("{gbs:.2}"),
            });
        }
    }
    drop(e);

    // 4. Policy: the RAM tier's S3-FIFO against LRU on a skewed trace.
    for (name, scan) in [
        ("s3fifo_vs_lru_zipf", false),
        ("s3fifo_vs_lru_zipf_scan", true),
    ] {
        let (s3, lru) = policy_hit_ratios(scan);
        rows.push(Row {
            name,
            what: format!(
                "hit ratio, Zipf(0.9) over 100k blocks, cache = 10%{}: S3-FIFO {:.3} vs LRU {:.3}",
                if scan {
                    ", with a one-pass scan every 50k requests"
                } else {
                    ""
                },
                s3,
                lru
            ),
            value: format!("{:.3}", s3 / lru),
        });
    }

    // 5. Opening a cache of 1,000,000 blocks.
    let (open_ms, heap_per_block, rss_per_block) =
        open_index(&tmp.path().join("cache-million"), 1000, 1000);
    rows.push(Row {
        name: "open_1m_blocks_ms",
        what: "time to open a disk tier holding 1,000,000 blocks".into(),
        value: format!("{open_ms:.0}"),
    });
    rows.push(Row {
        name: "ram_bytes_per_block",
        what: format!(
            "heap bytes per cached block after that open (RSS delta: {rss_per_block:.1})"
        ),
        value: format!("{heap_per_block:.1}"),
    });
    // 6. The same for small files: 200,000 objects of one block each.
    let (_, heap_per_object, rss_per_object) =
        open_index(&tmp.path().join("cache-small"), 200_000, 1);
    rows.push(Row {
        name: "ram_bytes_per_small_object",
        what: format!(
            "heap bytes per cached one-block file after opening 200,000 of them (RSS delta: {rss_per_object:.1})"
        ),
        value: format!("{heap_per_object:.1}"),
    });

    println!();
    println!("| figure | what | value |");
    println!("|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} |", r.name, r.what, r.value);
    }
    println!();
    for r in &rows {
        println!("{} = {}", r.name, r.value);
    }
}

/// Hit ratios of the RAM tier (S3-FIFO) and of an LRU of the same size on one trace.
fn policy_hit_ratios(scan: bool) -> (f64, f64) {
    const KEYS: usize = 100_000;
    const REQS: usize = 2_000_000;
    let cap_entries = KEYS / 10;
    // Zipf by inverse CDF.
    let weights: Vec<f64> = (1..=KEYS).map(|k| 1.0 / (k as f64).powf(0.9)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(KEYS);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    // Keys are shuffled so that popularity is not the key order.
    let mut trace = Vec::with_capacity(REQS + REQS / 10);
    let mut scan_at = 0u64;
    for i in 0..REQS {
        let u = next();
        let k = cdf.partition_point(|&c| c < u).min(KEYS - 1) as u64;
        trace.push(k.wrapping_mul(0x9E37_79B9) % (KEYS as u64 * 7));
        if scan && i % 50_000 == 0 {
            for _ in 0..cap_entries / 2 {
                scan_at += 1;
                trace.push(1_000_000_000 + scan_at);
            }
        }
    }
    let value = Bytes::from_static(&[0u8; 64]);
    let weight = 64 + strata::tier::ram::ENTRY_OVERHEAD;
    let ram = RamTier::new(cap_entries as u64 * weight, Arc::new(Stats::default()));
    let mut lru = lru::LruCache::new(std::num::NonZeroUsize::new(cap_entries).unwrap());
    let (mut h1, mut h2) = (0u64, 0u64);
    for &k in &trace {
        let key = BlockKey { obj: 1, blk: k };
        if ram.get(&key).is_some() {
            h1 += 1;
        } else {
            ram.put(key, value.clone());
        }
        if lru.get(&k).is_some() {
            h2 += 1;
        } else {
            lru.put(k, ());
        }
    }
    (
        h1 as f64 / trace.len() as f64,
        h2 as f64 / trace.len() as f64,
    )
}

/// Writes an index of 1,000,000 blocks, then measures opening it.
/// Opens a disk tier of `objects` files of `per` blocks each; returns the time (ms)
/// and the heap and RSS it took per block.
fn open_index(dir: &PathBuf, objects: u64, per: u64) -> (f64, f64, f64) {
    let cfg = DiskConfig {
        capacity: 1 << 50,
        block_size: BS,
        thresholds: Thresholds::OFF,
        compact_min_bytes: 1 << 40,
    };
    let storage = || -> Arc<dyn Storage> { Arc::new(RealStorage::open(dir).unwrap()) };
    {
        let t = DiskTier::open(storage(), cfg.clone(), Arc::new(Stats::default())).unwrap();
        t.bench_populate_index(objects, per).unwrap();
    }
    let heap0 = HEAP.load(Ordering::Relaxed);
    let rss0 = rss_bytes();
    let t0 = Instant::now();
    let t = DiskTier::open(storage(), cfg, Arc::new(Stats::default())).unwrap();
    let took = t0.elapsed();
    let blocks = objects * per;
    assert_eq!(t.blocks(), blocks);
    let heap = (HEAP.load(Ordering::Relaxed) - heap0) as f64 / blocks as f64;
    let rss = (rss_bytes() as f64 - rss0 as f64) / blocks as f64;
    drop(t);
    (took.as_secs_f64() * 1000.0, heap, rss)
}
