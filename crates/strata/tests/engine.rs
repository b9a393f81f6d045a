//! The engine end to end over a real local origin and a real disk tier.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strata::origin::{LocalOrigin, Origin, SlowOrigin};
use strata::storage::{RealStorage, SimStorage};
use strata::tier::disk::Thresholds;
use strata::{Config, DiskSetup, Engine};

const BS: u32 = 16 * 1024;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Setup {
    _tmp: tempfile::TempDir,
    origin: PathBuf,
    cache: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let origin = tmp.path().join("origin");
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&origin).unwrap();
    Setup {
        _tmp: tmp,
        origin,
        cache,
    }
}

fn config(cache: &Path, ttl: Duration) -> Config {
    Config {
        block_size: BS,
        ram_capacity: 4 << 20,
        disk: Some(DiskSetup {
            storage: Arc::new(RealStorage::open(cache).unwrap()),
            capacity: 64 << 20,
            thresholds: Thresholds::OFF,
        }),
        attr_ttl: ttl,
        ..Config::default()
    }
}

fn engine(s: &Setup, ttl: Duration) -> Engine {
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    Engine::new(config(&s.cache, ttl), origin).unwrap()
}

fn read_all(e: &Engine, path: &str) -> Vec<u8> {
    let h = e.open(Path::new(path)).unwrap();
    let mut out = Vec::new();
    loop {
        let b = e.read(&h, out.len() as u64, 100_000).unwrap();
        if b.is_empty() {
            return out;
        }
        out.extend_from_slice(&b.to_vec());
    }
}

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
fn a_slow_disk_queue_drops_fills_instead_of_blocking_readers() {
    let s = setup();
    std::fs::write(s.origin.join("f"), pattern(5, 4 << 20)).unwrap();
    let mut c = config(&s.cache, Duration::from_secs(60));
    c.fill_queue_bytes = BS as u64; // room for one block in flight
    c.ram_capacity = 1 << 20;
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Engine::new(c, origin).unwrap();
    assert_eq!(read_all(&e, "f"), pattern(5, 4 << 20));
    let st = e.stats();
    assert!(st.fills_dropped > 0, "{st:?}");
    assert_eq!(
        read_all(&e, "f"),
        pattern(5, 4 << 20),
        "reads still correct"
    );
}

#[test]
fn dropped_fills_reach_the_disk_once_the_writer_is_idle() {
    let s = setup();
    let len = 4 << 20;
    std::fs::write(s.origin.join("f"), pattern(7, len)).unwrap();
    let mut c = config(&s.cache, Duration::from_secs(60));
    c.fill_queue_bytes = BS as u64 * 2;
    c.ram_capacity = 16 << 20; // every block stays in RAM
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Engine::new(c, origin).unwrap();
    assert_eq!(read_all(&e, "f"), pattern(7, len));
    assert!(e.stats().fills_dropped > 0, "{:?}", e.stats());
    let blocks = (len / BS as usize) as u64;
    wait_for(Duration::from_secs(20), || e.stats().disk_blocks >= blocks);
    let st = e.stats();
    assert_eq!(st.disk_blocks, blocks, "{st:?}");
    assert_eq!(read_all(&e, "f"), pattern(7, len));
}

#[test]
fn dropped_fills_evicted_from_ram_are_fetched_again_once_the_writer_is_idle() {
    // A file four times RAM read while the disk writer is behind: most dropped fills
    // leave RAM before the writer is idle, so the origin is asked for them again.
    let s = setup();
    let len = 4 << 20;
    std::fs::write(s.origin.join("f"), pattern(12, len)).unwrap();
    let mut c = config(&s.cache, Duration::from_secs(60));
    c.fill_queue_bytes = BS as u64 * 2;
    c.ram_capacity = 1 << 20;
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Engine::new(c, origin).unwrap();
    assert_eq!(read_all(&e, "f"), pattern(12, len));
    assert!(e.stats().fills_dropped > 0, "{:?}", e.stats());
    let blocks = (len / BS as usize) as u64;
    wait_for(Duration::from_secs(30), || {
        let st = e.stats();
        st.disk_blocks >= blocks && st.dropped_fill_blocks == 0 && st.inflight_fill_bytes == 0
    });
    let st = e.stats();
    assert_eq!(st.disk_blocks, blocks, "{st:?}");
    assert!(st.fills_refetched > 0, "{st:?}");
    assert_eq!(st.dropped_fill_blocks, 0, "{st:?}");
    // The whole file is on disk now: reading it again asks the origin nothing.
    let before = st.origin_requests;
    assert_eq!(read_all(&e, "f"), pattern(12, len));
    assert_eq!(e.stats().origin_requests, before, "{:?}", e.stats());
}

#[test]
fn a_second_pass_over_many_small_files_is_warm_after_dropped_fills() {
    // More small files than the engine used to remember dropped fills for (4,096),
    // each one block, read while the disk writer is behind and RAM far too small to
    // keep them: once the writer is idle every one reaches the disk (fetched again
    // from the origin where RAM let it go), and a second pass asks the origin nothing.
    let s = setup();
    const FILES: usize = 5_000;
    for i in 0..FILES {
        std::fs::write(s.origin.join(format!("f{i}")), pattern(i as u64, 3000)).unwrap();
    }
    let mut c = config(&s.cache, Duration::from_secs(600));
    c.fill_queue_bytes = BS as u64 * 16;
    c.ram_capacity = 1 << 20;
    // A slow disk (every sync 2 ms), so that the writer falls behind whatever the
    // machine's load.
    let sim = SimStorage::new();
    sim.set_sync_delay(Duration::from_millis(2));
    if let Some(d) = &mut c.disk {
        d.capacity = 256 << 20; // room for every file's block
        d.storage = Arc::new(sim);
    }
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Engine::new(c, origin).unwrap();
    for i in 0..FILES {
        assert_eq!(read_all(&e, &format!("f{i}")), pattern(i as u64, 3000));
    }
    assert!(e.stats().fills_dropped > 4096, "{:?}", e.stats());
    wait_for(Duration::from_secs(120), || {
        let st = e.stats();
        st.disk_blocks >= FILES as u64 && st.dropped_fill_blocks == 0 && st.inflight_fill_bytes == 0
    });
    let st = e.stats();
    assert_eq!(st.disk_blocks, FILES as u64, "{st:?}");
    let before = st.origin_requests;
    for i in 0..FILES {
        assert_eq!(read_all(&e, &format!("f{i}")), pattern(i as u64, 3000));
    }
    assert_eq!(e.stats().origin_requests, before, "{:?}", e.stats());
}

#[test]
fn shutdown_ends_while_dropped_fills_wait() {
    // The disk writer offers dropped fills again while it is idle; a shutdown in the
    // middle of that (the fill queue closed, every fill dropped again) must end.
    for round in 0..3 {
        let s = setup();
        for i in 0..800 {
            std::fs::write(s.origin.join(format!("f{i}")), pattern(i as u64, 3000)).unwrap();
        }
        let mut c = config(&s.cache, Duration::from_secs(600));
        c.fill_queue_bytes = BS as u64 * 2;
        c.ram_capacity = 64 << 20; // the dropped blocks stay in RAM, offered from there
        let sim = SimStorage::new();
        sim.set_sync_delay(Duration::from_millis(2));
        if let Some(d) = &mut c.disk {
            d.storage = Arc::new(sim);
        }
        let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
        let e = Engine::new(c, origin).unwrap();
        for i in 0..800 {
            read_all(&e, &format!("f{i}"));
        }
        std::thread::sleep(Duration::from_millis(150 * round));
        let t = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            e.shutdown();
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(60)).is_ok(),
            "round {round}: shutdown still running after {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn long_disk_reads_go_out_in_one_piece_and_skip_the_ram_tier() {
    let s = setup();
    let len = 64 * BS as usize + 1000; // a short last block
    let want = pattern(13, len);
    std::fs::write(s.origin.join("f"), &want).unwrap();
    {
        let first = engine(&s, Duration::from_secs(60));
        assert_eq!(read_all(&first, "f"), want);
        assert!(first.wait_fills(Duration::from_secs(20)));
    }
    // A fresh engine: empty RAM, everything on disk.
    let e = engine(&s, Duration::from_secs(60));
    let h = e.open(Path::new("f")).unwrap();
    // A sequential reader's 1 MiB read, not block-aligned, to past the end.
    let off = 40 * BS as u64 + 123;
    let got = e.read(&h, off, 1 << 20).unwrap();
    assert_eq!(got.parts().len(), 1, "one piece");
    assert_eq!(got.to_vec(), want[off as usize..]);
    // A random reader's 128 KiB (8 blocks of 16 KiB) goes in one piece too.
    let got = e.read(&h, 20 * BS as u64, 8 * BS as usize).unwrap();
    assert_eq!(got.parts().len(), 1, "one piece");
    assert_eq!(got.to_vec(), want[20 * BS as usize..28 * BS as usize]);
    let st = e.stats();
    assert_eq!(st.origin_requests, 0, "{st:?}");
    assert_eq!(st.promotions, 0, "a long run stays out of RAM: {st:?}");
    // A short read is still promoted, and served from RAM the next time.
    let got = e.read(&h, 3 * BS as u64, 2 * BS as usize).unwrap();
    assert_eq!(got.to_vec(), want[3 * BS as usize..5 * BS as usize]);
    assert_eq!(e.stats().promotions, 2, "{:?}", e.stats());
    let got = e.read(&h, 3 * BS as u64, 2 * BS as usize).unwrap();
    assert_eq!(got.to_vec(), want[3 * BS as usize..5 * BS as usize]);
    assert_eq!(e.stats().ram_hits, 2, "{:?}", e.stats());
}

#[test]
fn a_cache_file_cut_short_under_a_read_is_refetched_not_served() {
    let s = setup();
    let len = 32 * BS as usize;
    let want = pattern(14, len);
    std::fs::write(s.origin.join("f"), &want).unwrap();
    {
        let first = engine(&s, Duration::from_secs(60));
        assert_eq!(read_all(&first, "f"), want);
        assert!(first.wait_fills(Duration::from_secs(20)));
    }
    // The one data file, cut in the middle of block 10.
    let mut files = Vec::new();
    for d in std::fs::read_dir(s.cache.join("objects")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    assert_eq!(files.len(), 1, "{files:?}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap();
    f.set_len(10 * BS as u64 + 100).unwrap();
    let e = engine(&s, Duration::from_secs(60));
    let h = e.open(Path::new("f")).unwrap();
    // A long run across the cut, a lone block past it, a short run before it.
    for (off, n) in [(4 * BS, 12 * BS), (20 * BS, 100), (BS + 7, 2 * BS)] {
        let got = e.read(&h, off as u64, n as usize).unwrap().to_vec();
        assert_eq!(got, want[off as usize..(off + n) as usize]);
    }
    let st = e.stats();
    assert!(st.checksum_failures >= 2, "{st:?}");
    assert!(st.origin_requests >= 2, "{st:?}");
}

#[test]
fn fills_gathered_for_the_commit_interval_share_one_commit_and_survive_shutdown() {
    let s = setup();
    let n = 8u64;
    let want = pattern(11, (n * BS as u64) as usize);
    std::fs::write(s.origin.join("f"), &want).unwrap();
    let mut c = config(&s.cache, Duration::from_secs(60));
    // Longer than any test machine needs for the reads below, so they land in one batch.
    c.commit_interval = Duration::from_secs(10);
    c.prefetch_threads = 0; // one fill per read
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let first = Engine::new(c, origin).unwrap();
    let h = first.open(Path::new("f")).unwrap();
    let before = first.stats().index_commits;
    for i in [5, 1, 7, 3, 0, 6, 2, 4] {
        let off = i * BS as u64;
        let got = first.read(&h, off, BS as usize).unwrap().to_vec();
        assert_eq!(got, want[off as usize..(off + BS as u64) as usize]);
    }
    std::thread::sleep(Duration::from_millis(200));
    let st = first.stats();
    assert_eq!(st.index_commits, before, "still gathering: {st:?}");
    assert_eq!(st.fills_done, 0, "{st:?}");
    // Shutdown does not sit out the interval: the gathered fills commit at once.
    drop(h);
    let t = Instant::now();
    first.shutdown();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let st = first.stats();
    assert_eq!(st.fills_done, n, "{st:?}");
    assert_eq!(st.index_commits - before, 1, "one batch: {st:?}");
    let second = engine(&s, Duration::from_secs(60));
    assert_eq!(read_all(&second, "f"), want);
    assert_eq!(second.stats().origin_requests, 0, "{:?}", second.stats());
}

#[test]
fn read_ahead_waits_while_the_disk_writer_is_behind() {
    let s = setup();
    std::fs::write(s.origin.join("a"), pattern(8, 8 * BS as usize)).unwrap();
    std::fs::write(s.origin.join("b"), pattern(9, 64 * BS as usize)).unwrap();
    let medium = SimStorage::new();
    let mut c = config(&s.cache, Duration::from_secs(60));
    c.disk.as_mut().unwrap().storage = Arc::new(medium.clone());
    c.fill_queue_bytes = 8 * BS as u64;
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Engine::new(c, origin).unwrap();
    // A slow device: "a" fills the queue and stays there while its commit syncs.
    medium.set_sync_delay(Duration::from_secs(3));
    assert_eq!(read_all(&e, "a"), pattern(8, 8 * BS as usize));
    let before = e.stats().readahead_requests;
    let h = e.open(Path::new("b")).unwrap();
    let want = pattern(9, 64 * BS as usize);
    let got = e.read(&h, 0, BS as usize).unwrap().to_vec();
    assert_eq!(got, want[..BS as usize]);
    std::thread::sleep(Duration::from_millis(200)); // a read-ahead would be out by now
    let st = e.stats();
    assert!(st.inflight_fill_bytes > 0, "still behind: {st:?}");
    assert_eq!(st.readahead_requests, before, "{st:?}");
    assert!(st.readahead_held > 0, "{st:?}");
    // Once the writer has caught up, read-ahead goes out again.
    medium.set_sync_delay(Duration::ZERO);
    assert!(e.wait_fills(Duration::from_secs(20)));
    let got = e.read(&h, BS as u64, BS as usize).unwrap().to_vec();
    assert_eq!(got, want[BS as usize..2 * BS as usize]);
    wait_for(Duration::from_secs(10), || {
        e.stats().readahead_requests != before
    });
    assert!(e.stats().readahead_requests > before, "{:?}", e.stats());
    assert_eq!(read_all(&e, "b"), want);
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

/// Polls `done` every 10 ms until it holds or `timeout` passes; the caller asserts.
fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() && t.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(10));
    }
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

#[test]
fn files_read_in_listing_order_are_fetched_ahead() {
    let s = setup();
    let dir = s.origin.join("src");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..48u64 {
        std::fs::write(
            dir.join(format!("f{i:02}")),
            pattern(i, 1000 + i as usize * 37),
        )
        .unwrap();
    }
    let local: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let slow: Arc<dyn Origin> = Arc::new(SlowOrigin::new(local, Duration::from_millis(10), 0));
    let ttl = Duration::from_millis(300);
    let e = Engine::new(config(&s.cache, ttl), slow).unwrap();
    let list = e.read_dir(Path::new("src")).unwrap();
    let files: Vec<String> = list
        .iter()
        .filter(|d| d.kind == strata::origin::FileKind::File)
        .map(|d| d.name.to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 48);
    // One file changes after the scan began: its prefetched version is not served
    // once the TTL since it was confirmed has passed.
    let changed = &files[30];
    for (k, f) in files.iter().enumerate() {
        if k == 5 {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::write(dir.join(changed), b"new content, another size").unwrap();
        }
        if k == 30 {
            std::thread::sleep(ttl);
        }
        let want = std::fs::read(dir.join(f)).unwrap();
        assert_eq!(read_all(&e, &format!("src/{f}")), want, "{f}");
    }
    let st = e.stats();
    assert!(st.dir_prefetches >= 20, "{st:?}");
    assert!(
        st.ram_hits >= 20,
        "prefetched files were served from RAM: {st:?}"
    );
    assert!(st.invalidations >= 1, "{st:?}");

    // Files opened in no particular order are not a scan.
    let e2 = Engine::new(
        config(&s.cache.join("2"), Duration::from_secs(60)),
        Arc::new(LocalOrigin::new(&s.origin).unwrap()),
    )
    .unwrap();
    e2.read_dir(Path::new("src")).unwrap();
    for f in files.iter().rev() {
        let want = std::fs::read(dir.join(f)).unwrap();
        assert_eq!(read_all(&e2, &format!("src/{f}")), want, "{f}");
    }
    assert_eq!(e2.stats().dir_prefetches, 0);
}

/// Counts the listings (by directory) and attribute requests (by path) asked of the
/// origin it wraps.
struct CountingOrigin {
    inner: Arc<dyn Origin>,
    listings: Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>>,
    stated: Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>>,
}

impl Origin for CountingOrigin {
    fn stat(&self, path: &Path) -> std::io::Result<strata::origin::Attr> {
        let r = self.inner.stat(path);
        *self
            .stated
            .lock()
            .unwrap()
            .entry(path.to_path_buf())
            .or_default() += 1;
        r
    }
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn strata::origin::OriginFile>> {
        self.inner.open(path)
    }
    fn read_dir(&self, path: &Path) -> std::io::Result<Vec<strata::origin::DirEntry>> {
        *self
            .listings
            .lock()
            .unwrap()
            .entry(path.to_path_buf())
            .or_default() += 1;
        self.inner.read_dir(path)
    }
    fn read_link(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.inner.read_link(path)
    }
    fn get_xattr(&self, path: &Path, name: &std::ffi::OsStr) -> std::io::Result<Vec<u8>> {
        self.inner.get_xattr(path, name)
    }
    fn list_xattr(&self, path: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
        self.inner.list_xattr(path)
    }
    fn statfs(&self) -> std::io::Result<strata::origin::FsStats> {
        self.inner.statfs()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[test]
fn subdirectories_listed_in_order_are_listed_ahead() {
    let s = setup();
    let top = s.origin.join("tree");
    for d in 0..20 {
        let sub = top.join(format!("d{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..3 {
            std::fs::write(sub.join(format!("f{f}")), b"x").unwrap();
        }
        // Files among the directories do not count in the window.
        std::fs::write(top.join(format!("d{d:02}.txt")), b"y").unwrap();
    }
    let listings = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let listed = |d: &str| -> u64 {
        listings
            .lock()
            .unwrap()
            .get(Path::new(d))
            .copied()
            .unwrap_or(0)
    };
    let wait_listed = |d: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while listed(d) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let stated = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let origin: Arc<dyn Origin> = Arc::new(CountingOrigin {
        inner: Arc::new(LocalOrigin::new(&s.origin).unwrap()),
        listings: listings.clone(),
        stated: stated.clone(),
    });
    let e = Engine::new(config(&s.cache, Duration::from_secs(60)), origin).unwrap();
    let mut subdirs: Vec<String> = e
        .read_dir(Path::new("tree"))
        .unwrap()
        .iter()
        .filter(|d| d.kind == strata::origin::FileKind::Dir)
        .map(|d| format!("tree/{}", d.name.to_string_lossy()))
        .collect();
    assert_eq!(subdirs.len(), 20);
    let stat_all = |d: &str| {
        for f in e.read_dir(Path::new(d)).unwrap().iter() {
            assert_eq!(e.stat(&Path::new(d).join(&f.name)).unwrap().size, 1);
        }
    };
    // The walk enters the first subdirectory: the next ones are listed ahead, with
    // their entries' attributes.
    stat_all(&subdirs[0]);
    // Counted per file of these directories: the walk's own steps list further
    // directories ahead meanwhile, whose requests a global count would include.
    let files: Vec<PathBuf> = subdirs[1..5]
        .iter()
        .flat_map(|d| (0..3).map(move |f| Path::new(d).join(format!("f{f}"))))
        .collect();
    let asked = || -> Vec<u64> {
        let st = stated.lock().unwrap();
        files
            .iter()
            .map(|f| st.get(f).copied().unwrap_or(0))
            .collect()
    };
    for d in &subdirs[1..5] {
        wait_listed(d);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while asked().contains(&0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    // The attributes are cached just after the origin answers.
    std::thread::sleep(Duration::from_millis(100));
    let before = asked();
    for d in &subdirs[1..5] {
        stat_all(d);
    }
    assert_eq!(asked(), before, "attributes came ahead");
    // And so on to the end, each directory listed once: ahead, never again.
    for d in &subdirs[5..] {
        wait_listed(d);
        stat_all(d);
    }
    for d in &subdirs {
        assert_eq!(listed(d), 1, "{d}");
    }
    assert!(e.stats().list_prefetches >= 19, "{:?}", e.stats());

    // Directories listed in no particular order are not a walk.
    subdirs.reverse();
    let e2 = Engine::new(
        config(&s.cache.join("2"), Duration::from_secs(60)),
        Arc::new(LocalOrigin::new(&s.origin).unwrap()),
    )
    .unwrap();
    e2.read_dir(Path::new("tree")).unwrap();
    for d in &subdirs {
        e2.read_dir(Path::new(d)).unwrap();
    }
    assert_eq!(e2.stats().list_prefetches, 0);
}
