//! The engine end to end over a local origin: cold, warm and restarted reads equal
//! the origin; coherency after every kind of change; single flight; the concurrency
//! stress test; passthrough pins; origin files open only while handles are.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use strata::Engine;
use strata::origin::{LocalOrigin, Origin, SlowOrigin};

#[test]
fn cold_warm_and_restart_serve_the_origin_bytes() {
    let s = setup();
    let sizes = [
        0usize,
        1,
        100,
        BS as usize,
        BS as usize + 1,
        5 * BS as usize - 3,
        3_000_000,
    ];
    for (i, n) in sizes.iter().enumerate() {
        std::fs::write(s.origin.join(format!("f{i}")), pattern(i as u64, *n)).unwrap();
    }
    {
        let e = engine(&s, Duration::from_secs(60));
        for (i, n) in sizes.iter().enumerate() {
            assert_eq!(
                read_all(&e, &format!("f{i}")),
                pattern(i as u64, *n),
                "cold f{i}"
            );
        }
        let cold = e.stats();
        assert!(cold.origin_bytes >= sizes.iter().sum::<usize>() as u64);
        for (i, n) in sizes.iter().enumerate() {
            assert_eq!(
                read_all(&e, &format!("f{i}")),
                pattern(i as u64, *n),
                "warm f{i}"
            );
        }
        let warm = e.stats();
        assert_eq!(
            warm.origin_requests, cold.origin_requests,
            "warm reads hit the origin"
        );
        assert!(e.wait_fills(Duration::from_secs(10)));
        e.shutdown();
    }
    // A new engine on the same cache directory serves everything from disk.
    let e = engine(&s, Duration::from_secs(60));
    assert_eq!(
        e.disk().unwrap().open_report().blocks,
        e.stats().disk_blocks
    );
    for (i, n) in sizes.iter().enumerate() {
        assert_eq!(
            read_all(&e, &format!("f{i}")),
            pattern(i as u64, *n),
            "restart f{i}"
        );
    }
    let st = e.stats();
    assert_eq!(st.origin_requests, 0, "after a restart: {st:?}");
    assert!(st.disk_hits > 0);
}

#[test]
fn unaligned_reads_match() {
    let s = setup();
    let data = pattern(9, 200_000);
    std::fs::write(s.origin.join("f"), &data).unwrap();
    let e = engine(&s, Duration::from_secs(60));
    let h = e.open(Path::new("f")).unwrap();
    let mut x = 1u64;
    for _ in 0..500 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 33) as usize % 210_000;
        let len = (x >> 13) as usize % 70_000;
        let got = e.read(&h, off as u64, len).unwrap().to_vec();
        let want = &data[off.min(data.len())..(off + len).min(data.len())];
        assert_eq!(got, want, "read {off}+{len}");
    }
}

#[test]
fn origin_changes_are_seen_after_the_ttl() {
    let s = setup();
    let p = s.origin.join("f");
    std::fs::write(&p, pattern(1, 100_000)).unwrap();
    let e = engine(&s, Duration::from_millis(50));
    assert_eq!(read_all(&e, "f"), pattern(1, 100_000));
    let h = e.open(Path::new("f")).unwrap();
    e.read(&h, 0, 10).unwrap();

    // Replace, append, truncate, rewrite in place: each is seen after the TTL, through
    // an open handle and through a new open, never older data after it.
    let steps: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| {
            let tmp = s.origin.join("tmp");
            std::fs::write(&tmp, pattern(2, 120_000)).unwrap();
            std::fs::rename(&tmp, &p).unwrap();
        }),
        Box::new(|| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
            f.write_all(&pattern(3, 5000)).unwrap();
        }),
        Box::new(|| {
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(777).unwrap();
        }),
        Box::new(|| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all_at(b"CHANGED", 10).unwrap();
        }),
    ];
    let mut h = h;
    for (i, step) in steps.iter().enumerate() {
        step();
        std::thread::sleep(Duration::from_millis(60));
        let want = std::fs::read(&p).unwrap();
        assert_eq!(read_all(&e, "f"), want, "new open after step {i}");
        if i == 0 {
            // Replaced by another file: a handle of the old file is stale.
            assert_eq!(e.read(&h, 0, 10).unwrap_err().raw_os_error(), Some(116));
            h = e.open(Path::new("f")).unwrap();
            continue;
        }
        // Changed in place: the open handle sees the new bytes.
        let got = e.read(&h, 0, 1 << 20).unwrap().to_vec();
        assert_eq!(got, want, "open handle after step {i}");
    }
    assert!(e.stats().invalidations >= 4);

    std::fs::remove_file(&p).unwrap();
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(e.stat(Path::new("f")).unwrap_err().raw_os_error(), Some(2));
    assert_eq!(
        e.read(&h, 0, 10).unwrap_err().raw_os_error(),
        Some(116),
        "ESTALE"
    );
}

#[test]
fn unreadable_origin_file_gives_the_origin_error() {
    let s = setup();
    std::fs::create_dir(s.origin.join("dir")).unwrap();
    let e = engine(&s, Duration::from_secs(1));
    assert_eq!(
        e.open(Path::new("missing")).err().unwrap().raw_os_error(),
        Some(2)
    );
    assert_eq!(
        e.open(Path::new("dir")).err().unwrap().raw_os_error(),
        Some(21)
    );
}

#[test]
fn concurrent_readers_of_a_cold_block_share_one_fetch() {
    let s = setup();
    std::fs::write(s.origin.join("f"), pattern(4, BS as usize * 4)).unwrap();
    let local: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let slow: Arc<dyn Origin> = Arc::new(SlowOrigin::new(local, Duration::from_millis(100), 0));
    let mut c = config(&s.cache, Duration::from_secs(60));
    c.prefetch_threads = 0;
    let e = Arc::new(Engine::new(c, slow).unwrap());
    let h = Arc::new(e.open(Path::new("f")).unwrap());
    let want = pattern(4, BS as usize * 4);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (e, h, want) = (e.clone(), h.clone(), want.clone());
            std::thread::spawn(move || {
                let got = e.read(&h, 0, BS as usize * 4).unwrap().to_vec();
                assert_eq!(got, want);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = e.stats();
    assert_eq!(st.origin_requests, 1, "{st:?}");
    assert!(st.fetch_waits >= 1);
}

#[test]
fn cold_read_is_answered_at_origin_speed() {
    // The reader must not wait for the disk fill: a read of a slow origin costs about
    // one origin request.
    let s = setup();
    std::fs::write(s.origin.join("f"), pattern(6, BS as usize)).unwrap();
    let local: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let slow: Arc<dyn Origin> = Arc::new(SlowOrigin::new(local, Duration::from_millis(30), 0));
    let e = Engine::new(config(&s.cache, Duration::from_secs(60)), slow).unwrap();
    let h = e.open(Path::new("f")).unwrap();
    let t = Instant::now();
    assert_eq!(
        e.read(&h, 0, BS as usize).unwrap().to_vec(),
        pattern(6, BS as usize)
    );
    let took = t.elapsed();
    // open (1 request) + read (1 request); generous bound for a loaded machine.
    assert!(took < Duration::from_millis(30 * 2 + 200), "{took:?}");
    // Where the read's time went: the origin's 30 ms, within the reader's wait for it,
    // within the read.
    let st = e.stats();
    assert!(st.origin_read_us >= 30_000, "{st:?}");
    assert!(st.origin_wait_us >= st.origin_read_us, "{st:?}");
    assert!(st.read_us >= st.origin_wait_us, "{st:?}");
    assert!(st.read_us <= took.as_micros() as u64, "{st:?} {took:?}");
    // A cached read adds to the read time only.
    e.read(&h, 0, BS as usize).unwrap();
    let warm = e.stats();
    assert_eq!(warm.origin_wait_us, st.origin_wait_us);
    assert_eq!(warm.origin_read_us, st.origin_read_us);
    assert!(
        warm.reads == st.reads + 1 && warm.read_us >= st.read_us,
        "{warm:?}"
    );
}

/// Content of version `v` of file `f`: every 8-byte word says (file, version, index),
/// so a reader can tell which version any bytes belong to.
fn versioned(f: u64, v: u64) -> Vec<u8> {
    let words = 2000 + (f * 7919 + v * 104_729) % 30_000;
    let mut out = Vec::with_capacity(words as usize * 8);
    for i in 0..words {
        out.extend_from_slice(&((f << 48) | (v << 32) | i).to_le_bytes());
    }
    out
}

fn check_versioned(f: u64, off: u64, asked: usize, got: &[u8]) -> u64 {
    // Find the first whole word to learn the version, then check every byte.
    let first_word = off.div_ceil(8) * 8;
    let at = (first_word - off) as usize;
    assert!(got.len() >= at + 8, "read too short to check");
    let w = u64::from_le_bytes(got[at..at + 8].try_into().unwrap());
    assert_eq!(w >> 48, f, "bytes of another file");
    let v = (w >> 32) & 0xffff;
    let want = versioned(f, v);
    let end = off as usize + got.len();
    assert!(end <= want.len(), "read past the end of version {v}");
    assert_eq!(
        got,
        &want[off as usize..end],
        "file {f}: bytes not of one version"
    );
    if got.len() < asked {
        assert_eq!(
            end,
            want.len(),
            "file {f}: a short read must end at version {v}'s end"
        );
    }
    v
}

/// Many threads read overlapping ranges of many files while the files are replaced
/// and their metadata revalidated; every byte returned must belong to one version of
/// the file, and reads never go back to an older version than one already seen
/// through the same handle after its TTL.
#[test]
fn stress_readers_while_the_origin_changes() {
    let s = setup();
    const FILES: u64 = 12;
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..FILES).map(|_| AtomicU64::new(0)).collect());
    for f in 0..FILES {
        std::fs::write(s.origin.join(format!("f{f}")), versioned(f, 0)).unwrap();
    }
    let mut c = config(&s.cache, Duration::from_millis(5));
    c.ram_capacity = 2 << 20; // far below the data: constant eviction
    c.disk.as_mut().unwrap().capacity = 1 << 20;
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Arc::new(Engine::new(c, origin).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));

    let writer = {
        let (stop, versions, dir) = (stop.clone(), versions.clone(), s.origin.clone());
        std::thread::spawn(move || {
            let mut x = 7u64;
            while !stop.load(Ordering::Relaxed) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                let f = (x >> 33) % FILES;
                let v = versions[f as usize].load(Ordering::Relaxed) + 1;
                let tmp = dir.join(format!("tmp{f}"));
                std::fs::write(&tmp, versioned(f, v)).unwrap();
                std::fs::rename(&tmp, dir.join(format!("f{f}"))).unwrap();
                versions[f as usize].store(v, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let readers: Vec<_> = (0..12)
        .map(|t| {
            let (e, stop, reads) = (e.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut x = t as u64 + 100;
                while !stop.load(Ordering::Relaxed) {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let f = (x >> 40) % FILES;
                    let path = format!("f{f}");
                    let mut h = e.open(Path::new(&path)).unwrap();
                    for _ in 0..8 {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let off = (x >> 20) % 200_000;
                        let len = 16 + (x >> 44) as usize % 100_000;
                        let got = match e.read(&h, off, len) {
                            Ok(b) => b.to_vec(),
                            // The file was replaced under the open handle: reopen.
                            Err(err) if err.raw_os_error() == Some(116) => {
                                h = e.open(Path::new(&path)).unwrap();
                                continue;
                            }
                            Err(err) => panic!("read failed: {err}"),
                        };
                        reads.fetch_add(1, Ordering::Relaxed);
                        if got.len() >= 16 {
                            check_versioned(f, off, len, &got);
                        }
                        if x.is_multiple_of(5) {
                            let _ = e.stat(Path::new(&path));
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    // Once the origin is quiet and the TTL has passed, every file reads as its last
    // version, exactly.
    std::thread::sleep(Duration::from_millis(20));
    for f in 0..FILES {
        let v = versions[f as usize].load(Ordering::Relaxed);
        assert_eq!(
            read_all(&e, &format!("f{f}")),
            versioned(f, v),
            "final f{f}"
        );
    }
    let st = e.stats();
    println!(
        "reads = {}, invalidations = {}",
        reads.load(Ordering::Relaxed),
        st.invalidations
    );
    assert!(st.invalidations > 10, "{st:?}");
}

#[test]
fn shutdown_releases_the_cache_directory_at_once() {
    let s = setup();
    std::fs::write(s.origin.join("f"), pattern(8, 100_000)).unwrap();
    let first = engine(&s, Duration::from_secs(60));
    assert_eq!(read_all(&first, "f"), pattern(8, 100_000));
    first.shutdown();
    // The first engine still exists (a daemon's threads may hold it until exit), but
    // its cache directory is free and everything it stored is there.
    let second = engine(&s, Duration::from_secs(60));
    assert_eq!(read_all(&second, "f"), pattern(8, 100_000));
    assert_eq!(second.stats().origin_requests, 0);
    drop(first);
}

#[test]
fn passthrough_only_for_verified_whole_files_and_pinned_against_eviction() {
    use std::io::Read;
    let s = setup();
    let want = pattern(12, 5 * BS as usize + 100);
    std::fs::write(s.origin.join("f"), &want).unwrap();
    for i in 0..8 {
        std::fs::write(
            s.origin.join(format!("other{i}")),
            pattern(100 + i, 4 * BS as usize),
        )
        .unwrap();
    }
    let mut c = config(&s.cache, Duration::from_secs(60));
    c.disk.as_mut().unwrap().capacity = 8 * BS as u64; // room for f and a little more
    c.ram_capacity = BS as u64 * 2;
    c.passthrough_min_age = Duration::ZERO; // the test's files are brand new
    c.passthrough_min_size = 0;
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Engine::new(c, origin).unwrap();
    let h = e.open(Path::new("f")).unwrap();
    assert!(e.passthrough(&h).is_none(), "nothing cached yet");
    e.read(&h, 0, BS as usize).unwrap();
    assert!(e.wait_fills(Duration::from_secs(10)));
    assert!(
        e.passthrough(&h).is_none(),
        "only part of the file is cached"
    );
    assert_eq!(read_all(&e, "f"), want);
    assert!(e.wait_fills(Duration::from_secs(10)));
    let pt = e.passthrough(&h).expect("whole and verified: passthrough");
    // Other files push the disk tier past its size: the pinned file stays whole.
    for i in 0..8 {
        read_all(&e, &format!("other{i}"));
        e.wait_fills(Duration::from_secs(10));
    }
    assert!(e.stats().disk_evictions > 0);
    let mut got = Vec::new();
    (&pt.file).read_to_end(&mut got).unwrap();
    assert_eq!(
        got, want,
        "the kernel would read exactly the origin's bytes"
    );
    drop(pt);
    assert_eq!(e.stats().passthrough_opens, 1);
}

/// Descriptors this process holds on files below `dir`.
fn open_files_below(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir) && p != dir)
        .count()
}

/// Descriptors below `dir` once fetches in flight have had up to 10 s to finish.
fn open_files_settled(dir: &Path) -> usize {
    wait_for(Duration::from_secs(10), || open_files_below(dir) == 0);
    open_files_below(dir)
}

#[test]
fn origin_files_stay_open_only_while_handles_are_open() {
    let s = setup();
    for i in 0..40u64 {
        std::fs::write(
            s.origin.join(format!("f{i}")),
            pattern(i, 3 * BS as usize + 7),
        )
        .unwrap();
    }
    let e = engine(&s, Duration::from_secs(60));
    let h = e.open(Path::new("f0")).unwrap();
    assert_eq!(e.read(&h, 0, 10).unwrap().to_vec(), pattern(0, 10));
    assert_eq!(open_files_below(&s.origin), 1, "kept for the open handle");
    let h2 = e.open(Path::new("f0")).unwrap();
    drop(h);
    assert_eq!(open_files_below(&s.origin), 1, "another handle is open");
    drop(h2);
    // A read-ahead of f0's later blocks may still hold its own reference; without
    // handles nothing else keeps the file, so it closes once that fetch ends.
    assert_eq!(
        open_files_settled(&s.origin),
        0,
        "closed with the last handle"
    );
    for i in 0..40u64 {
        assert_eq!(
            read_all(&e, &format!("f{i}")),
            pattern(i, 3 * BS as usize + 7)
        );
    }
    // Read-ahead fetches still running hold their file until they finish.
    assert_eq!(
        open_files_settled(&s.origin),
        0,
        "40 files read, none left open"
    );
}
