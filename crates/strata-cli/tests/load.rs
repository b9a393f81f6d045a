//! Load: 64 concurrent readers over thousands of files, with a RAM limit far below the
//! data size: no deadlock, no error, every byte checked, and the daemon's resident
//! memory within the RAM limit plus a stated fixed overhead.
//! Long run: STRATA_LOAD_SECS=180 (prints its figures as NAME = VALUE).

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mount, pattern};

const FILES: u64 = 3000;
const READERS: u64 = 64;
const RAM_LIMIT: u64 = 16 << 20;
/// What the daemon may use beyond the RAM tier's limit: its threads and their
/// buffers (16 FUSE threads with 1 MiB request buffers, 32 origin and 8 read-ahead
/// threads), the disk fill queue (64 MiB), the index and metadata caches.
const FIXED_OVERHEAD: u64 = 160 << 20;

fn size(i: u64) -> usize {
    1 + (i as usize * 48_271) % 110_000
}

fn secs() -> u64 {
    std::env::var("STRATA_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn rss(pid: i32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[test]
fn sixty_four_readers_over_thousands_of_files() {
    let mut t = Mount::new();
    for i in 0..FILES {
        let d = t.o(format!("d{}", i % 30));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i}")), pattern(i, size(i))).unwrap();
    }
    let total: u64 = (0..FILES).map(|i| size(i) as u64).sum();
    assert!(total > 8 * RAM_LIMIT, "the data must dwarf the RAM limit");
    t.mount(&[
        "--ram-size",
        "16M",
        "--cache-size",
        "64M",
        "--attr-ttl",
        "2s",
    ]);
    let pid = t.daemon_pid();
    let idle_rss = rss(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let (served, wrong, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (stop, served, wrong, errors, lat, mnt) = (
                stop.clone(),
                served.clone(),
                wrong.clone(),
                errors.clone(),
                latencies.clone(),
                t.mnt.clone(),
            );
            std::thread::spawn(move || {
                let mut y = (r + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    y ^= y << 13;
                    y ^= y >> 7;
                    y ^= y << 17;
                    // Skewed: a tenth of the files get most of the reads.
                    let i = if y % 4 != 0 {
                        (y >> 8) % (FILES / 10)
                    } else {
                        (y >> 8) % FILES
                    };
                    let want = pattern(i, size(i));
                    let off = (y >> 24) as usize % want.len();
                    let len = ((y >> 44) as usize % 65_536).min(want.len() - off);
                    let path = mnt.join(format!("d{}/f{i}", i % 30));
                    let t0 = Instant::now();
                    let res = fs::File::open(&path).and_then(|f| {
                        let mut buf = vec![0u8; len];
                        f.read_exact_at(&mut buf, off as u64).map(|_| buf)
                    });
                    mine.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    match res {
                        Ok(buf) => {
                            let bad = buf.iter().zip(&want[off..]).filter(|(a, b)| a != b).count();
                            wrong.fetch_add(bad as u64, Ordering::Relaxed);
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut peak = idle_rss;
    let mut last = 0;
    while t0.elapsed() < Duration::from_secs(secs()) {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss(pid));
        // Progress, or it is a deadlock.
        if t0.elapsed().as_secs() > last + 5 {
            last = t0.elapsed().as_secs();
            let before = served.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(1));
            assert!(
                served.load(Ordering::Relaxed) > before,
                "no progress: deadlock?"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    let s = t.stats();
    println!("load_seconds = {}", secs());
    println!("load_readers = {READERS}");
    println!(
        "load_files = {FILES}, data = {} MiB, ram limit = {} MiB",
        total >> 20,
        RAM_LIMIT >> 20
    );
    println!("load_requests_served = {}", served.load(Ordering::Relaxed));
    println!("load_errors = {}", errors.load(Ordering::Relaxed));
    println!("load_wrong_bytes = {}", wrong.load(Ordering::Relaxed));
    println!("load_latency_us_p50 = {}", p(0.50));
    println!("load_latency_us_p99 = {}", p(0.99));
    println!("load_peak_rss_mib = {:.1}", peak as f64 / 1048576.0);
    println!("load_idle_rss_mib = {:.1}", idle_rss as f64 / 1048576.0);
    println!(
        "load_rss_limit_mib = {} (RAM limit {} + fixed overhead {})",
        (RAM_LIMIT + FIXED_OVERHEAD) >> 20,
        RAM_LIMIT >> 20,
        FIXED_OVERHEAD >> 20
    );
    println!("load_ram_tier_peak_bytes_now = {}", s["ram_bytes"]);
    assert_eq!(errors.load(Ordering::Relaxed), 0, "errors under load");
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong bytes under load");
    assert!(s["ram_bytes"].as_u64().unwrap() <= RAM_LIMIT);
    assert!(
        peak <= RAM_LIMIT + FIXED_OVERHEAD,
        "peak RSS {} MiB over the RAM limit plus the fixed overhead",
        peak >> 20
    );
    t.umount();
}
