//! Write-back through the engine: a write is answered from the journal, reads and
//! attributes show it at once, the origin gets it within the delay (adjacent writes
//! as one), at shutdown, or at the next start after a crash; a failing origin keeps
//! it dirty, reports the error on fsync and gets it once it recovers; an origin
//! changed under dirty data keeps its version and the local bytes go to a conflict
//! copy, but a flush cut part way (at the origin, or by a power cut) is sent again,
//! not taken for one; a flush the journal cannot record holds its file back until
//! it can. Seeded power cuts of the cache directory never lose a byte acknowledged by
//! fsync (2,000 seeds; long run: STRATA_CRASH_SEEDS=20000).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use strata::config::WriteBack;
use strata::origin::{FaultOrigin, Faults, LocalOrigin, NewEntry, Origin, SetAttr, SetTime};
use strata::storage::SimStorage;
use strata::storage::sim::SplitMix;
use strata::tier::disk::Thresholds;
use strata::{Config, DiskSetup, Engine};

const HOUR: Duration = Duration::from_secs(3600);

fn new_file() -> NewEntry {
    NewEntry {
        mode: 0o644,
        owner: None,
    }
}

fn wb_config(s: &Setup, delay: Duration) -> Config {
    Config {
        write_back: Some(WriteBack {
            delay,
            ..WriteBack::default()
        }),
        ..config(&s.cache, Duration::from_secs(1))
    }
}

fn wb_engine(s: &Setup, delay: Duration) -> Engine {
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    Engine::new(wb_config(s, delay), origin).unwrap()
}

#[test]
fn a_write_is_served_at_once_and_reaches_the_origin_within_the_delay() {
    let s = setup();
    let len = 5 * BS as usize + 77;
    std::fs::write(s.origin.join("f"), pattern(1, len)).unwrap();
    let e = wb_engine(&s, Duration::from_millis(300));
    assert_eq!(read_all(&e, "f"), pattern(1, len));

    let h = e.open_write(Path::new("f"), false).unwrap();
    let mut want = pattern(1, len);
    // Three adjacent writes and one past the end (the file grows, with a hole).
    for (i, off) in [100u64, 1100, 2100].into_iter().enumerate() {
        let d = pattern(10 + i as u64, 1000);
        assert_eq!(e.write(&h, off, &d).unwrap(), 1000);
        want[off as usize..off as usize + 1000].copy_from_slice(&d);
    }
    let tail = pattern(20, 3000);
    e.write(&h, len as u64 + 500, &tail).unwrap();
    want.resize(len + 500, 0);
    want.extend_from_slice(&tail);

    // Not at the origin yet; served with the dirty bytes, at the dirty size.
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), pattern(1, len));
    assert_eq!(read_all(&e, "f"), want);
    assert_eq!(e.stat(Path::new("f")).unwrap().size, want.len() as u64);
    let st = e.stats();
    assert_eq!(st.writes_back, 4, "{st:?}");
    assert_eq!(st.dirty_bytes, 6000);
    assert_eq!(st.dirty_files, 1);

    wait_for(Duration::from_secs(10), || e.dirty().1 == 0);
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), want);
    let st = e.stats();
    assert_eq!((st.dirty_bytes, st.dirty_files), (0, 0), "{st:?}");
    assert_eq!(st.wb_flushes, 1, "one flush for the file: {st:?}");
    assert_eq!(st.wb_flushed_bytes, 6000);
    // The version follows the origin: the rest stays cached, reads are right.
    assert_eq!(read_all(&e, "f"), want);
    assert_eq!(e.stat(Path::new("f")).unwrap().size, want.len() as u64);
}

#[test]
fn shutdown_sends_everything_and_times_set_while_dirty_stick() {
    let s = setup();
    let e = wb_engine(&s, HOUR);
    let mut want = Vec::new();
    for i in 0..20u64 {
        let p = format!("f{i}");
        let (_, h) = e.create(Path::new(&p), &new_file(), true).unwrap();
        let d = pattern(i, 1000 + i as usize * 500);
        e.write(&h, 0, &d).unwrap();
        want.push((p, d));
    }
    // tar sets the times after the data: kept and set after it at the origin.
    let t = strata::origin::Timestamp {
        secs: 1_000_000_000,
        nanos: 0,
    };
    let set = SetAttr {
        atime: Some(SetTime::At(t)),
        mtime: Some(SetTime::At(t)),
        ..Default::default()
    };
    let a = e.set_attr(Path::new("f3"), &set, None).unwrap();
    assert_eq!(a.mtime.secs, t.secs);
    assert_eq!(a.size, want[3].1.len() as u64);
    for (p, _) in &want {
        assert_eq!(std::fs::read(s.origin.join(p)).unwrap(), b"", "{p} before");
    }
    drop(e);
    for (p, d) in &want {
        assert_eq!(&std::fs::read(s.origin.join(p)).unwrap(), d, "{p} after");
    }
    let m = std::fs::metadata(s.origin.join("f3")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.mtime(), t.secs);
}

#[test]
fn namespace_changes_and_truncation_follow_the_dirty_data() {
    let s = setup();
    let e = wb_engine(&s, HOUR);
    let (_, h) = e.create(Path::new("a"), &new_file(), true).unwrap();
    e.write(&h, 0, b"hello world").unwrap();
    // A rename sends the data first: the origin has it under the new name.
    e.rename(Path::new("a"), Path::new("b"), 0).unwrap();
    assert_eq!(std::fs::read(s.origin.join("b")).unwrap(), b"hello world");
    // A truncation after dirty data: the origin sees both, in order.
    let h = e.open_write(Path::new("b"), false).unwrap();
    e.write(&h, 20, b"tail").unwrap();
    let set = SetAttr {
        size: Some(5),
        ..Default::default()
    };
    e.set_attr(Path::new("b"), &set, Some(&h)).unwrap();
    assert_eq!(std::fs::read(s.origin.join("b")).unwrap(), b"hello");
    assert_eq!(read_all(&e, "b"), b"hello");
    e.write(&h, 5, b"!").unwrap();
    e.unlink(Path::new("b")).unwrap();
    assert!(!s.origin.join("b").exists());
    assert_eq!(e.dirty(), (0, 0));
}

#[test]
fn a_failing_origin_keeps_the_data_dirty_reports_it_and_gets_it_later() {
    let s = setup();
    std::fs::write(s.origin.join("f"), b"0123456789").unwrap();
    let faults = Faults::new();
    let origin: Arc<dyn Origin> = Arc::new(FaultOrigin::new(
        Arc::new(LocalOrigin::new(&s.origin).unwrap()),
        faults.clone(),
    ));
    let e = Engine::new(wb_config(&s, Duration::from_millis(50)), origin).unwrap();
    let h = e.open_write(Path::new("f"), false).unwrap();
    faults.fail_reads(Some(28)); // ENOSPC at the origin
    e.write(&h, 2, b"ab").unwrap();
    wait_for(Duration::from_secs(10), || e.stats().wb_flush_errors > 0);
    assert!(e.stats().wb_flush_errors > 0);
    // Reported on fsync and close, as NFS does; the data stays served.
    assert_eq!(e.fsync(&h, false).unwrap_err().raw_os_error(), Some(28));
    assert_eq!(e.close_check(&h).unwrap_err().raw_os_error(), Some(28));
    assert_eq!(e.dirty(), (2, 1));
    faults.fail_reads(None);
    assert_eq!(read_all(&e, "f"), b"01ab456789");
    wait_for(Duration::from_secs(40), || e.dirty().1 == 0);
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), b"01ab456789");
    e.fsync(&h, false).unwrap();
    e.close_check(&h).unwrap();
}

#[test]
fn an_origin_changed_under_dirty_data_keeps_its_version_and_a_conflict_copy_the_rest() {
    let s = setup();
    std::fs::write(s.origin.join("f"), b"original").unwrap();
    let e = wb_engine(&s, HOUR);
    let h = e.open_write(Path::new("f"), false).unwrap();
    e.write(&h, 0, b"LOCAL").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(s.origin.join("f"), b"changed elsewhere").unwrap();
    assert_eq!(e.flush_dirty(Duration::from_secs(5)), 0);
    assert_eq!(
        std::fs::read(s.origin.join("f")).unwrap(),
        b"changed elsewhere"
    );
    let copies: Vec<_> = std::fs::read_dir(&s.origin)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("f.strata-conflict-"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    // The local bytes at their offsets, at the local size.
    let copy = std::fs::read(s.origin.join(&copies[0])).unwrap();
    assert_eq!(copy, b"LOCAL\0\0\0");
    assert_eq!(e.stats().wb_conflicts, 1);
    assert_eq!(read_all(&e, "f"), b"changed elsewhere");
}

/// A flush that fails after part of it reached the origin (the connection lost
/// between two runs) leaves the origin file changed by our own bytes: the retry
/// sends it all again rather than calling it a conflict.
#[test]
fn a_flush_cut_part_way_is_sent_again_not_taken_for_a_conflict() {
    let s = setup();
    std::fs::write(s.origin.join("f"), pattern(3, 100_000)).unwrap();
    let faults = Faults::new();
    let origin: Arc<dyn Origin> = Arc::new(FaultOrigin::new(
        Arc::new(LocalOrigin::new(&s.origin).unwrap()),
        faults.clone(),
    ));
    let e = Engine::new(wb_config(&s, HOUR), origin).unwrap();
    let h = e.open_write(Path::new("f"), false).unwrap();
    let mut want = pattern(3, 100_000);
    // Two runs apart: two origin writes.
    for (off, seed) in [(10usize, 4u64), (60_000, 5)] {
        let d = pattern(seed, 3000);
        e.write(&h, off as u64, &d).unwrap();
        want[off..off + d.len()].copy_from_slice(&d);
    }
    faults.fail_writes_after(Some((1, 104))); // ECONNRESET after the first run
    assert_eq!(e.flush_dirty(Duration::from_millis(300)), 1);
    assert!(e.stats().wb_flush_errors > 0);
    assert_ne!(
        std::fs::read(s.origin.join("f")).unwrap(),
        pattern(3, 100_000)
    );
    faults.fail_writes_after(None);
    assert_eq!(e.flush_dirty(Duration::from_secs(40)), 0);
    assert_eq!(e.stats().wb_conflicts, 0);
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), want);
    assert_eq!(read_all(&e, "f"), want);
    assert_eq!(std::fs::read_dir(&s.origin).unwrap().count(), 1);
}

/// A power cut after a flush reached the origin but before the journal heard it
/// was done: the replay finds the flush's start recorded and writes the records
/// again, with no conflict copy once that start was durable.
#[test]
fn a_power_cut_during_a_flush_replays_it_without_a_conflict() {
    for cut in 1..=8u64 {
        let s = setup();
        let st = SimStorage::new();
        let cfg = |st: &SimStorage| Config {
            disk: Some(DiskSetup {
                storage: Arc::new(st.clone()),
                capacity: 16 << 20,
                thresholds: Thresholds::OFF,
            }),
            ..wb_config(&s, HOUR)
        };
        let want = pattern(cut, 20_000);
        {
            let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
            let e = Engine::new(cfg(&st), origin).unwrap();
            let h = e.create(Path::new("f"), &new_file(), true).unwrap().1;
            e.write(&h, 0, &want).unwrap();
            e.fsync(&h, false).unwrap();
            st.cut_after(cut);
            e.flush_dirty(Duration::from_secs(5));
            e.abandon();
        }
        let after = st.power_cut(cut);
        let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
        let e = Engine::new(cfg(&after), origin).unwrap();
        assert_eq!(e.dirty().1, 0, "cut {cut}");
        assert_eq!(
            std::fs::read(s.origin.join("f")).unwrap(),
            want,
            "cut {cut}"
        );
        let copies: Vec<_> = std::fs::read_dir(&s.origin)
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "f")
            .collect();
        // Cuts 1 and 2 fall on the append and the sync of the flush's start: a
        // dead journal does not stop the flush (the data must reach the origin),
        // and the replay then keeps a conflict copy of bytes the origin has.
        if cut <= 2 {
            assert!(copies.len() <= 1, "cut {cut}: {copies:?}");
            for c in &copies {
                assert_eq!(std::fs::read(s.origin.join(c)).unwrap(), want);
            }
        } else {
            assert!(copies.is_empty(), "cut {cut}: {copies:?}");
            assert_eq!(e.stats().wb_conflicts, 0, "cut {cut}");
        }
        assert_eq!(read_all(&e, "f"), want, "cut {cut}");
    }
}

/// A cache disk that fails while a flush is under way: the data reaches the origin,
/// but until the journal can record that, the file takes no change through the
/// engine (a later replay would write the old records over it); once the disk
/// works again the next fsync records it, and all is as without the failure.
#[test]
fn a_flush_the_journal_cannot_record_holds_the_file_back_until_it_can() {
    let s = setup();
    let st = SimStorage::new();
    let cfg = Config {
        disk: Some(DiskSetup {
            storage: Arc::new(st.clone()),
            capacity: 16 << 20,
            thresholds: Thresholds::OFF,
        }),
        ..wb_config(&s, HOUR)
    };
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Engine::new(cfg, origin).unwrap();
    let h = e.create(Path::new("f"), &new_file(), true).unwrap().1;
    e.write(&h, 0, b"first").unwrap();
    e.fsync(&h, false).unwrap();
    st.set_fail_writes(true);
    let t0 = std::time::Instant::now();
    assert_eq!(e.flush_dirty(Duration::from_secs(20)), 1);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), b"first");
    assert_eq!(
        e.write(&h, 5, b"-second").unwrap_err().raw_os_error(),
        Some(5)
    );
    assert!(e.fsync(&h, false).is_err());
    assert!(e.unlink(Path::new("f")).is_err());
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), b"first");
    st.set_fail_writes(false);
    e.fsync(&h, false).unwrap();
    e.write(&h, 5, b"-second").unwrap();
    assert_eq!(e.flush_dirty(Duration::from_secs(20)), 0);
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), b"first-second");
    assert_eq!(e.stats().wb_conflicts, 0);
    assert_eq!(std::fs::read_dir(&s.origin).unwrap().count(), 1);
    e.unlink(Path::new("f")).unwrap();
}

#[test]
fn dirty_data_past_the_limit_slows_writers_and_loses_nothing() {
    let s = setup();
    let mut cfg = wb_config(&s, HOUR);
    cfg.write_back = Some(WriteBack {
        delay: HOUR,
        fsync_origin: false,
        dirty_limit: 1 << 20,
    });
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Engine::new(cfg, origin).unwrap();
    let (_, h) = e.create(Path::new("big"), &new_file(), true).unwrap();
    let want = pattern(7, 8 << 20);
    for (i, c) in want.chunks(128 << 10).enumerate() {
        e.write(&h, (i * (128 << 10)) as u64, c).unwrap();
        assert!(e.dirty().0 <= 1 << 20, "dirty past the limit");
    }
    assert!(e.stats().wb_throttled > 0);
    assert_eq!(read_all(&e, "big"), want);
    drop(e);
    assert_eq!(std::fs::read(s.origin.join("big")).unwrap(), want);
}

/// Runs writes and fsyncs over a few files with the cache directory on a simulated
/// medium that dies at a seeded point; then the medium loses what was not synced
/// (torn at random), and a new engine starts over it and the same origin.
#[test]
fn power_cuts_never_lose_a_byte_acknowledged_by_fsync() {
    let seeds: u64 = std::env::var("STRATA_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    const FILES: u64 = 3;
    const SIZE: usize = 40_000;
    let (mut recovered_bytes, mut replays) = (0u64, 0u64);
    let first: u64 = std::env::var("STRATA_CRASH_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..seeds {
        let s = setup();
        let mut rng = SplitMix::new(seed ^ 0xB0B);
        let st = SimStorage::new();
        let cfg = |st: &SimStorage| Config {
            block_size: BS,
            ram_capacity: 4 << 20,
            prefetch_threads: 0,
            disk: Some(DiskSetup {
                storage: Arc::new(st.clone()),
                capacity: 16 << 20,
                thresholds: Thresholds::OFF,
            }),
            write_back: Some(WriteBack {
                delay: HOUR,
                ..WriteBack::default()
            }),
            ..Config::default()
        };
        // Per file: every state it went through, and the index of the newest one an
        // fsync acknowledged.
        let mut states: Vec<Vec<Vec<u8>>> = vec![vec![Vec::new()]; FILES as usize];
        let mut acked = vec![0usize; FILES as usize];
        {
            let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
            let e = Engine::new(cfg(&st), origin).unwrap();
            let hs: Vec<_> = (0..FILES)
                .map(|f| {
                    e.create(Path::new(&format!("f{f}")), &new_file(), true)
                        .unwrap()
                        .1
                })
                .collect();
            st.cut_after(1 + rng.below(60));
            for step in 0..40u64 {
                let f = rng.below(FILES) as usize;
                match rng.below(10) {
                    0 => {
                        if e.fsync(&hs[f], false).is_ok() {
                            acked[f] = states[f].len() - 1;
                        }
                    }
                    1 => {
                        let t = std::time::Instant::now();
                        let _ = e.flush_dirty(Duration::from_secs(5));
                        if t.elapsed() > Duration::from_millis(40) {
                            eprintln!(
                                "SLOW seed {seed} step {step} {:?} dirty {:?}",
                                t.elapsed(),
                                e.dirty()
                            );
                        }
                    }
                    _ => {
                        let off = rng.below(SIZE as u64);
                        let len = 1 + rng.below(6000) as usize;
                        let d = pattern(seed * 1000 + step, len);
                        if e.write(&hs[f], off, &d).is_ok() {
                            let mut next = states[f].last().unwrap().clone();
                            let end = off as usize + len;
                            if next.len() < end {
                                next.resize(end, 0);
                            }
                            next[off as usize..end].copy_from_slice(&d);
                            states[f].push(next);
                        }
                    }
                }
            }
            e.abandon();
        }
        let after = st.power_cut(seed);
        let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
        // Attributes the metadata journal lost to the cut come back as they were
        // before, trusted for the rest of their TTL (as without write-back): the
        // check is on the data, so every open asks.
        let mut c = cfg(&after);
        c.attr_ttl = Duration::ZERO;
        let e = Engine::new(c, origin).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(e.dirty().1, 0, "seed {seed}: the replay left files dirty");
        replays += e.stats().journal_replays;
        for f in 0..FILES as usize {
            let name = format!("f{f}");
            let got = std::fs::read(s.origin.join(&name)).unwrap();
            let at = states[f].iter().rposition(|s| *s == got);
            assert!(
                at.is_some_and(|i| i >= acked[f]),
                "seed {seed}: {name} is at state {at:?}, fsync acknowledged {}; after the replay: {} conflicts, {} files replayed; the origin holds {:?}",
                acked[f],
                e.stats().wb_conflicts,
                e.stats().journal_replays,
                std::fs::read_dir(&s.origin)
                    .unwrap()
                    .map(|d| d.unwrap().file_name())
                    .collect::<Vec<_>>()
            );
            // And what the cache serves is the origin's.
            let served = read_all(&e, &name);
            assert!(
                served == got,
                "seed {seed}: {name} served {} bytes unlike the origin's {}",
                served.len(),
                got.len()
            );
            recovered_bytes += got.len() as u64;
        }
    }
    println!(
        "writeback_power_cuts = {seeds}, files replayed = {replays}, bytes checked = {recovered_bytes}"
    );
    // The cuts must leave journaled data to replay, or the test checks nothing.
    assert!(
        replays > (seeds - first) / 4,
        "only {replays} files replayed"
    );
}
