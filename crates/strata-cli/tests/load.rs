//! Load: 64 concurrent readers over thousands of small files and three 64 MiB files
//! (read from start to end, 1 MiB at a time), with a RAM limit far below the data
//! size: no deadlock, no error, every byte checked, and the daemon's resident memory
//! within the bound the README states.
//! Long run: STRATA_LOAD_SECS=180 (prints its figures as NAME = VALUE);
//! STRATA_LOAD_RAM=64M for another RAM size, STRATA_LOAD_FILES=20000 for more files.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mount, pattern};

/// Small files (STRATA_LOAD_FILES for more).
fn files() -> u64 {
    std::env::var("STRATA_LOAD_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}
const READERS: u64 = 64;
/// Of them, these read the big files sequentially.
const SEQ_READERS: u64 = 6;
const BIG_FILES: u64 = 3;
const BIG_SIZE: usize = 64 << 20;

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
    let files = files();
    for i in 0..files {
        let d = t.o(format!("d{}", i % 30));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i}")), pattern(i, size(i))).unwrap();
    }
    for b in 0..BIG_FILES {
        fs::write(t.o(format!("big{b}")), pattern(1_000_000 + b, BIG_SIZE)).unwrap();
    }
    let ram = std::env::var("STRATA_LOAD_RAM").unwrap_or_else(|_| "16M".into());
    let total: u64 = (0..files).map(|i| size(i) as u64).sum::<u64>() + BIG_FILES * BIG_SIZE as u64;
    t.mount(&[
        "--ram-size",
        &ram,
        "--cache-size",
        "128M",
        "--attr-ttl",
        "2s",
    ]);
    let reply = t.stats_reply();
    let ram_limit = reply["ram_capacity"].as_u64().unwrap();
    let bound = reply["memory_bound"].as_u64().unwrap();
    assert!(total > 4 * ram_limit, "the data must dwarf the RAM limit");
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
                if r < SEQ_READERS {
                    // A sequential reader: whole big files, 1 MiB at a time, one
                    // after another, checking every byte.
                    let mut b = r % BIG_FILES;
                    while !stop.load(Ordering::Relaxed) {
                        let want = pattern(1_000_000 + b, BIG_SIZE);
                        let f = fs::File::open(mnt.join(format!("big{b}")));
                        let mut off = 0;
                        while off < BIG_SIZE && !stop.load(Ordering::Relaxed) {
                            let t0 = Instant::now();
                            let mut buf = vec![0u8; 1 << 20];
                            match f.as_ref().map(|f| f.read_exact_at(&mut buf, off as u64)) {
                                Ok(Ok(())) => {
                                    let bad = buf.iter().zip(&want[off..]).filter(|(a, b)| a != b);
                                    wrong.fetch_add(bad.count() as u64, Ordering::Relaxed);
                                    served.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            mine.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            off += 1 << 20;
                        }
                        b = (b + 1) % BIG_FILES;
                    }
                    lat.lock().unwrap().extend(mine);
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    y ^= y << 13;
                    y ^= y >> 7;
                    y ^= y << 17;
                    // Skewed: a tenth of the files get most of the reads.
                    let i = if y % 4 != 0 {
                        (y >> 8) % (files / 10).max(1)
                    } else {
                        (y >> 8) % files
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
        "load_files = {files} + {BIG_FILES} of {} MiB, data = {} MiB, ram limit = {} MiB",
        BIG_SIZE >> 20,
        total >> 20,
        ram_limit >> 20
    );
    println!("load_requests_served = {}", served.load(Ordering::Relaxed));
    println!("load_errors = {}", errors.load(Ordering::Relaxed));
    println!("load_wrong_bytes = {}", wrong.load(Ordering::Relaxed));
    println!("load_latency_us_p50 = {}", p(0.50));
    println!("load_latency_us_p99 = {}", p(0.99));
    println!("load_peak_rss_mib = {:.1}", peak as f64 / 1048576.0);
    println!("load_idle_rss_mib = {:.1}", idle_rss as f64 / 1048576.0);
    println!(
        "load_memory_bound_mib = {} (RAM limit {}; strata stats memory_bound)",
        bound >> 20,
        ram_limit >> 20,
    );
    println!("load_ram_tier_bytes_now = {}", s["ram_bytes"]);
    println!("load_fill_queue_peak = {}", s["inflight_fill_peak"]);
    println!("load_meta_bytes = {}", s["meta_bytes"]);
    assert_eq!(errors.load(Ordering::Relaxed), 0, "errors under load");
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong bytes under load");
    assert!(s["ram_bytes"].as_u64().unwrap() <= ram_limit);
    assert!(
        peak <= bound,
        "peak RSS {} MiB over the stated bound of {} MiB",
        peak >> 20,
        bound >> 20
    );
    t.umount();
}
