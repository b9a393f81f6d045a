//! The disk writer end to end: fills dropped rather than waited for and offered again
//! once it is idle, a second pass that is warm, commits gathered for the interval,
//! read-ahead held while it is behind, a clean shutdown.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use strata::Engine;
use strata::origin::{LocalOrigin, Origin};
use strata::storage::SimStorage;

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
    let (before, checks) = (st.origin_requests, st.revalidations);
    for i in 0..FILES {
        assert_eq!(read_all(&e, &format!("f{i}")), pattern(i as u64, 3000));
    }
    assert_eq!(e.stats().origin_requests, before, "{:?}", e.stats());
    // Nor for attributes: the second pass is served within the TTL.
    assert_eq!(e.stats().revalidations, checks, "{:?}", e.stats());
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
fn blocks_on_their_way_to_disk_are_served_after_ram_lets_them_go() {
    // A disk whose syncs take long and a RAM tier of a few blocks: a file read
    // twice in a row finds most of its blocks neither in RAM nor on disk yet, but
    // on their way there, and they are served from the writer's queue.
    let s = setup();
    let len = 2 << 20;
    std::fs::write(s.origin.join("f"), pattern(21, len)).unwrap();
    let mut c = config(&s.cache, Duration::from_secs(60));
    c.ram_capacity = 4 * (BS as u64 + 128);
    c.fill_queue_bytes = 8 << 20;
    c.prefetch_threads = 0;
    let sim = SimStorage::new();
    sim.set_sync_delay(Duration::from_millis(300));
    if let Some(d) = &mut c.disk {
        d.storage = Arc::new(sim);
    }
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Engine::new(c, origin).unwrap();
    assert_eq!(read_all(&e, "f"), pattern(21, len));
    let before = e.stats().origin_requests;
    assert_eq!(read_all(&e, "f"), pattern(21, len));
    let st = e.stats();
    assert!(st.inflight_hits > 0, "{st:?}");
    assert_eq!(
        st.origin_requests, before,
        "served without the origin: {st:?}"
    );
}
