//! Memory tiers benchmark (not a test): `cargo bench -p strata --bench tiers [DIR...]`.
//!
//! The blocks of a real corpus (files under DIR, default /usr/lib, up to
//! STRATA_BENCH_CORPUS_MB, default 768) and of random bytes (the control), at one
//! memory budget (STRATA_BENCH_BUDGET_MB, default 64): RAM alone against RAM and
//! compressed RAM sharing the budget, side by side in one run. Prints NAME = VALUE.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use strata::origin::{LocalOrigin, Origin};
use strata::stats::Stats;
use strata::storage::RealStorage;
use strata::tier::chain::MemoryChain;
use strata::tier::compressed::CompressedTier;
use strata::tier::disk::Thresholds;
use strata::tier::{BlockKey, Tier};
use strata::{Config, DiskSetup, Engine};

const BS: usize = 16 * 1024;

fn env_mb(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        << 20
}

/// Regular files under `root`, in a stable order.
fn files(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            files(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

/// The corpus as 16 KiB blocks (a file's last block is shorter), up to `limit` bytes.
fn corpus(roots: &[PathBuf], limit: u64) -> Vec<Bytes> {
    let mut paths = Vec::new();
    for r in roots {
        files(r, &mut paths);
    }
    let (mut blocks, mut total) = (Vec::new(), 0u64);
    for p in paths {
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        for c in data.chunks(BS) {
            blocks.push(Bytes::copy_from_slice(c));
            total += c.len() as u64;
        }
        if total >= limit {
            break;
        }
    }
    blocks
}

fn random_blocks(n: usize) -> Vec<Bytes> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            let v: Vec<u8> = (0..BS / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect();
            Bytes::from(v)
        })
        .collect()
}

fn key(i: usize) -> BlockKey {
    BlockKey {
        obj: 1,
        blk: i as u64,
    }
}

/// RAM alone, or RAM and compressed RAM splitting the budget (`share` % compressed).
fn chain(budget: u64, share: u64, stats: &Arc<Stats>) -> MemoryChain {
    MemoryChain::new(budget, budget * share / 100, stats.clone())
}

/// Distinct blocks the chain holds after every block was put and read again once,
/// per MiB of budget (only blocks read again are offered to the compressed tier).
fn held_per_mib(blocks: &[Bytes], budget: u64, share: u64) -> f64 {
    let stats = Arc::new(Stats::default());
    let c = chain(budget, share, &stats);
    for (i, b) in blocks.iter().enumerate() {
        c.put(key(i), b.clone());
        c.get(&key(i));
        if i % 64 == 0 {
            c.settle(); // not to outrun the compressing thread, which would refuse
        }
    }
    c.settle();
    let s = stats.snapshot();
    if share > 0 {
        println!(
            "  refused {:.1}% of {} blocks offered, ratio {:.2}",
            100.0 * s.compressed_refusals as f64
                / (s.compressed_refusals + s.compressed_puts).max(1) as f64,
            s.compressed_refusals + s.compressed_puts,
            s.compressed_raw_bytes as f64 / s.compressed_bytes.max(1) as f64
        );
    }
    (s.ram_blocks + s.compressed_blocks) as f64 / (budget >> 20) as f64
}

/// Hit ratio of a skewed workload (80 % of reads go to 20 % of the blocks, the rest
/// uniform; data 3 × the budget or more): a miss puts the block, as a read does.
fn skewed_hit_ratio(blocks: &[Bytes], budget: u64, share: u64) -> (f64, f64) {
    let stats = Arc::new(Stats::default());
    let c = chain(budget, share, &stats);
    let n = blocks.len();
    let hot = (n / 5).max(1);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let reads = n * 8;
    let (mut hits, mut counted) = (0u64, 0u64);
    let t0 = Instant::now();
    for r in 0..reads {
        let i = if rnd() % 10 < 8 {
            (rnd() as usize) % hot
        } else {
            (rnd() as usize) % n
        };
        // The first pass warms up; the rest is measured.
        let measure = r >= n * 2;
        match c.get(&key(i)) {
            Some(_) => hits += measure as u64,
            None => {
                c.put(key(i), blocks[i].clone());
            }
        }
        counted += measure as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    (hits as f64 / counted as f64, reads as f64 / secs)
}

/// Hits served by the compressed tier alone: bytes per second and mean latency.
fn compressed_hit_speed(blocks: &[Bytes]) -> (f64, f64) {
    let stats = Arc::new(Stats::default());
    let t = CompressedTier::new(1 << 40, stats);
    let mut kept = Vec::new();
    for (i, b) in blocks.iter().enumerate().take(20_000) {
        if t.put(key(i), b.clone()).is_ok() {
            kept.push(i);
        }
        t.settle(); // compressed, not served from the queue
    }
    let mut bytes = 0u64;
    let t0 = Instant::now();
    for &i in &kept {
        // A hit gives the block up (it moves to RAM); put back outside the clock
        // would cost a compression, so each block is read once.
        if let Some(b) = t.get(&key(i)) {
            bytes += b.len() as u64;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    (bytes as f64 / secs, secs / kept.len().max(1) as f64)
}

/// Puts and gets of blocks through a chain: blocks per second.
fn churn(blocks: &[Bytes], budget: u64, share: u64) -> f64 {
    let stats = Arc::new(Stats::default());
    let c = chain(budget, share, &stats);
    let t0 = Instant::now();
    let mut n = 0u64;
    for round in 0..2 {
        for (i, b) in blocks.iter().enumerate() {
            if round == 0 || c.get(&key(i)).is_none() {
                c.put(key(i), b.clone());
            }
            n += 1;
        }
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// Reads `name` through an engine (RAM budget `budget`, `share` % of it compressed,
/// a disk tier below) three times; returns the third pass's MiB/s and its memory hits.
fn engine_second_pass(dir: &Path, name: &str, budget: u64, share: u64) -> (f64, u64) {
    let cache = dir.join(format!("cache-{name}-{share}"));
    std::fs::create_dir_all(&cache).unwrap();
    let cfg = Config {
        ram_capacity: budget,
        compressed_ram_capacity: budget * share / 100,
        disk: Some(DiskSetup {
            storage: Arc::new(RealStorage::open(&cache).unwrap()),
            capacity: 8 << 30,
            thresholds: Thresholds::default(),
        }),
        attr_ttl: std::time::Duration::from_secs(3600),
        ..Config::default()
    };
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(dir.join("origin")).unwrap());
    let e = Engine::new(cfg, origin).unwrap();
    let read = |e: &Engine| {
        let h = e.open(Path::new(name)).unwrap();
        let (mut off, mut user) = (0u64, vec![0u8; 128 << 10]);
        loop {
            let b = e.read(&h, off, user.len()).unwrap();
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
    };
    read(&e);
    e.wait_fills(std::time::Duration::from_secs(120));
    // A second pass reads the blocks again (the ones worth keeping below); the third
    // is measured.
    read(&e);
    let before = e.stats();
    let t0 = Instant::now();
    let n = read(&e);
    let secs = t0.elapsed().as_secs_f64();
    let after = e.stats();
    drop(e);
    let _ = std::fs::remove_dir_all(&cache);
    (
        n as f64 / (1 << 20) as f64 / secs,
        after.ram_hits - before.ram_hits,
    )
}

/// Bytes a RAM tier large enough for the whole tree does not hold twice.
fn dedup_saving(root: &Path) -> (u64, u64, u64) {
    let blocks = corpus(&[root.to_path_buf()], u64::MAX);
    let total: u64 = blocks.iter().map(|b| b.len() as u64).sum();
    let stats = Arc::new(Stats::default());
    let t = strata::tier::ram::RamTier::new(total * 2 + (1 << 30), stats.clone());
    let t0 = Instant::now();
    for (i, b) in blocks.iter().enumerate() {
        t.put(key(i), b.clone());
    }
    let ns = t0.elapsed().as_nanos() as u64 / blocks.len().max(1) as u64;
    (total, stats.snapshot().ram_shared_bytes, ns)
}

fn main() {
    let roots: Vec<PathBuf> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .collect();
    let roots = if roots.is_empty() {
        vec![PathBuf::from("/usr/lib")]
    } else {
        roots
    };
    let budget = env_mb("STRATA_BENCH_BUDGET_MB", 64);
    if std::env::var("STRATA_BENCH_ONLY").as_deref() == Ok("refusals") {
        refusal_cost(budget);
        return;
    }
    let limit = env_mb("STRATA_BENCH_CORPUS_MB", 768);
    let real = corpus(&roots, limit);
    let bytes: u64 = real.iter().map(|b| b.len() as u64).sum();
    println!(
        "corpus = {roots:?}, {} blocks, {} MiB",
        real.len(),
        bytes >> 20
    );
    let random = random_blocks(real.len().min((budget as usize * 3) / BS));
    println!("budget_mib = {}", budget >> 20);
    for (name, blocks) in [("real", &real), ("random", &random)] {
        let alone = held_per_mib(blocks, budget, 0);
        println!("{name}_blocks_per_mib_ram_alone = {alone:.1}");
        for share in [25, 50, 75, 90] {
            let both = held_per_mib(blocks, budget, share);
            println!(
                "{name}_blocks_per_mib_compressed_{share}pct = {both:.1} ({:.2}x)",
                both / alone
            );
        }
        let window = &blocks[..blocks.len().min(3 * budget as usize / BS)];
        let ratios: Vec<String> = [0, 25, 50, 75]
            .iter()
            .map(|&share| format!("{share}% {:.3}", skewed_hit_ratio(window, budget, share).0))
            .collect();
        println!(
            "{name}_skewed_hit_ratio (by compressed share of the budget) = {}",
            ratios.join(", ")
        );
    }
    let (rate, lat) = compressed_hit_speed(&real);
    println!(
        "compressed_hit = {:.2} GB/s on one core, {:.1} us per 16 KiB block",
        rate / 1e9,
        lat * 1e6
    );
    // Through the engine: a file 1.5 × the budget, read three times (the later passes
    // from memory and the disk tier), random bytes and the real corpus.
    let dir = tempfile_dir();
    std::fs::create_dir_all(dir.join("origin")).unwrap();
    let n = (3 * budget as usize / 2) / BS;
    for (name, blocks) in [("random", &random_blocks(n)), ("real", &real)] {
        let data: Vec<u8> = blocks
            .iter()
            .take(n)
            .flat_map(|b| b.iter().copied())
            .collect();
        std::fs::write(dir.join("origin").join(name), &data).unwrap();
        for share in [0, 25, 50] {
            let mut runs: Vec<(f64, u64)> = (0..3)
                .map(|_| engine_second_pass(&dir, name, budget, share))
                .collect();
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (rate, hits) = runs[1];
            println!(
                "engine_{name}_third_pass_{share}pct = {rate:.0} MiB/s (median of 3), {hits} memory hits of {n} blocks"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let dedup_dirs = std::env::var("STRATA_BENCH_DEDUP_DIRS").unwrap_or_else(|_| "/usr/lib".into());
    for d in dedup_dirs.split(':').filter(|d| !d.is_empty()) {
        let (total, saved, ns) = dedup_saving(Path::new(d));
        println!(
            "dedup {d} = {} of {} MiB shared ({:.1}%), {ns} ns per put",
            saved >> 20,
            total >> 20,
            100.0 * saved as f64 / total.max(1) as f64
        );
    }
    let w = &random[..random.len().min(2 * budget as usize / BS)];
    let plain = churn(w, budget / 2, 0);
    let with = churn(w, budget / 2, 50);
    println!(
        "random_churn = ram alone {plain:.0} blocks/s, with compressed tier {with:.0} blocks/s ({:.2}x)",
        with / plain
    );
}

/// The cost of refusals, measured as quietly as this machine allows: the engine's
/// third pass over random bytes with 0, 25 and 50 % of the budget compressed,
/// interleaved round by round in turn (STRATA_BENCH_ROUNDS, default 15) so that drift in the
/// machine's speed falls on every share alike.
fn refusal_cost(budget: u64) {
    let rounds: usize = std::env::var("STRATA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dir = tempfile_dir();
    std::fs::create_dir_all(dir.join("origin")).unwrap();
    let n = (3 * budget as usize / 2) / BS;
    let data: Vec<u8> = random_blocks(n).iter().flat_map(|b| b.to_vec()).collect();
    std::fs::write(dir.join("origin").join("random"), &data).unwrap();
    let shares = [0u64, 25, 50];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); shares.len()];
    for r in 0..rounds {
        // Each share goes first in turn: no share always follows the same one.
        let mut row = [0.0; 3];
        for i in 0..shares.len() {
            let k = (r + i) % shares.len();
            row[k] = engine_second_pass(&dir, "random", budget, shares[k]).0;
        }
        for (k, v) in row.into_iter().enumerate() {
            rates[k].push(v);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (k, &share) in shares.iter().enumerate() {
        let v = &rates[k];
        // Each round's rate against RAM alone in the same round, then the median.
        let ratio = median(v.iter().zip(&rates[0]).map(|(a, b)| a / b).collect());
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        println!(
            "refusals_random_third_pass_{share}pct = {:.0} MiB/s (median of {rounds}, \
             range {lo:.0}..{hi:.0}), {ratio:.3}x of RAM alone (median of per-round ratios)",
            median(v.clone()),
        );
    }
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("strata-tiers-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
