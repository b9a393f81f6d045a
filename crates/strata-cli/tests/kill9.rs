//! kill -9 under load: readers hammer a mount of a slow origin, the daemon is killed
//! at a random moment, the dead mount is cleared with `umount -l`, strata is mounted
//! again, and every byte of the tree is compared with the origin.
//! Long run: STRATA_KILLS=50 (prints its figures as NAME = VALUE).

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Mount, drop_page_cache, kill, pattern};

const FILES: u64 = 24;

fn size(i: u64) -> usize {
    200_000 + (i as usize * 157_031) % 1_500_000
}

fn kills() -> u64 {
    std::env::var("STRATA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Every byte of every file through the mount; returns the bytes that differ.
fn compare_all(t: &Mount) -> u64 {
    let mut wrong = 0u64;
    for i in 0..FILES {
        let want = pattern(i, size(i));
        let got = fs::read(t.m(format!("f{i}"))).unwrap();
        wrong += got.iter().zip(&want).filter(|(a, b)| a != b).count() as u64;
        wrong += got.len().abs_diff(want.len()) as u64;
    }
    wrong
}

#[test]
fn kill_9_under_load_loses_no_byte_and_keeps_the_cache() {
    let mut t = Mount::new();
    for i in 0..FILES {
        fs::write(t.o(format!("f{i}")), pattern(i, size(i))).unwrap();
    }
    let args = [
        "--origin-latency",
        "2ms",
        "--origin-bandwidth",
        "100M",
        "--ram-size",
        "8M",
    ];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    let (mut wrong_total, mut recoveries) = (0u64, Vec::new());
    let (mut kept_sum, mut kept_n) = (0f64, 0u64);
    let mut blocks_before = 0u64;
    for k in 0..kills() {
        let t0 = Instant::now();
        t.mount(&args);
        recoveries.push(t0.elapsed());
        if k > 0 {
            let now = t.stat_u64("disk_blocks");
            if blocks_before > 0 {
                kept_sum += (now as f64 / blocks_before as f64).min(1.0);
                kept_n += 1;
            }
        }
        // After recovery: every byte of the tree.
        drop_page_cache();
        let w = compare_all(&t);
        assert_eq!(w, 0, "kill {k}: wrong bytes after recovery");
        wrong_total += w;

        // Load, then a kill at a random moment.
        let stop = Arc::new(AtomicBool::new(false));
        let wrong = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..8)
            .map(|r| {
                let (stop, wrong, mnt) = (stop.clone(), wrong.clone(), t.mnt.clone());
                let mut y = (k * 100 + r + 1) * 0x9E37_79B9;
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        y ^= y << 13;
                        y ^= y >> 7;
                        y ^= y << 17;
                        let i = y % FILES;
                        let want = pattern(i, size(i));
                        let off = (y >> 20) as usize % want.len();
                        let len = ((y >> 40) as usize % 300_000).min(want.len() - off);
                        let Ok(f) = fs::File::open(mnt.join(format!("f{i}"))) else {
                            return; // the daemon is gone
                        };
                        let mut buf = vec![0u8; len];
                        match f.read_exact_at(&mut buf, off as u64) {
                            Ok(()) => {
                                let bad =
                                    buf.iter().zip(&want[off..]).filter(|(a, b)| a != b).count();
                                wrong.fetch_add(bad as u64, Ordering::Relaxed);
                            }
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200 + rnd(1500)));
        blocks_before = t.stat_u64("disk_blocks");
        let pid = t.daemon_pid();
        kill(pid, "-9");
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        let w = wrong.load(Ordering::Relaxed);
        assert_eq!(w, 0, "kill {k}: wrong bytes served under load");
        wrong_total += w;
        t.clear_dead(pid);
    }
    // A last recovery and check.
    let t0 = Instant::now();
    t.mount(&args);
    recoveries.push(t0.elapsed());
    drop_page_cache();
    wrong_total += compare_all(&t);
    t.umount();

    recoveries.sort();
    let median = recoveries[recoveries.len() / 2];
    let max = *recoveries.last().unwrap();
    println!("kill9_kills = {}", kills());
    println!("kill9_wrong_bytes = {wrong_total}");
    println!(
        "kill9_cached_blocks_kept = {:.3}",
        if kept_n > 0 {
            kept_sum / kept_n as f64
        } else {
            1.0
        }
    );
    println!("kill9_recovery_ms_median = {}", median.as_millis());
    println!("kill9_recovery_ms_max = {}", max.as_millis());
    assert_eq!(wrong_total, 0);
}

/// What the origin said of one name at some point: absent, or these attributes.
type Said = Option<(u32, u64, i64)>;

fn said(p: &std::path::Path) -> Said {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(p).ok()?;
    Some((
        m.mode(),
        m.size(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    ))
}

fn listing(p: &std::path::Path) -> std::collections::BTreeSet<String> {
    fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The metadata journal under kill -9: the daemon is killed while the origin changes
/// and the mount keeps learning its new answers, then mounted again trusting for an
/// hour whatever it kept. Every attribute and listing it serves must be one the origin
/// gave at some point (the test keeps every one), and a name that never existed is
/// never served. Long run: STRATA_KILLS=50.
#[test]
fn kill_9_keeps_only_metadata_the_origin_gave() {
    use std::collections::{BTreeSet, HashMap};
    use std::os::unix::fs::PermissionsExt;
    let mut t = Mount::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    let names: Vec<String> = (0..4)
        .flat_map(|d| (0..30).map(move |f| format!("d{d}/f{f}")))
        .collect();
    let mut history: HashMap<String, Vec<Said>> = HashMap::new();
    let mut listings: HashMap<String, Vec<BTreeSet<String>>> = HashMap::new();
    for d in 0..4 {
        fs::create_dir(t.o(format!("d{d}"))).unwrap();
    }
    for (i, n) in names.iter().enumerate() {
        if i % 3 != 0 {
            fs::write(t.o(n), pattern(i as u64, 100 + i)).unwrap();
        }
        history.entry(n.clone()).or_default().push(said(&t.o(n)));
    }
    for d in 0..4 {
        let d = format!("d{d}");
        listings
            .entry(d.clone())
            .or_default()
            .push(listing(&t.o(&d)));
    }
    let check = |t: &Mount,
                 history: &HashMap<String, Vec<Said>>,
                 listings: &HashMap<String, Vec<BTreeSet<String>>>,
                 k: u64| {
        for n in &names {
            let got = said(&t.m(n));
            assert!(
                history[n].contains(&got),
                "kill {k}: {n} served as {got:?}, which the origin never said ({:?})",
                history[n]
            );
            let ghost = t.m(format!("{n}.never"));
            assert!(!ghost.exists(), "kill {k}: {ghost:?} was never there");
        }
        // A listing is served as the origin gave it, less the names the origin later
        // said are gone (a readdirplus leaves out an entry whose lookup says ENOENT).
        for (d, seen) in listings {
            let got = listing(&t.m(d));
            let gone = |n: &String| history[&format!("{d}/{n}")].contains(&None);
            assert!(
                seen.iter()
                    .any(|l| got.is_subset(l) && l.difference(&got).all(gone)),
                "kill {k}: listing of {d} {got:?} was never the origin's"
            );
        }
    };
    let (mut asked, mut looked_up) = (0, 0);
    for k in 0..kills() {
        // Trust whatever was kept: what is served now comes from the journal.
        t.mount(&["--attr-ttl", "1h"]);
        check(&t, &history, &listings, k);
        asked += t.stat_u64("revalidations");
        looked_up += 2 * names.len() as u64;
        t.umount();
        // The origin changes; the mount learns each change, journaling as it goes.
        t.mount(&["--attr-ttl", "20ms"]);
        let until = Instant::now() + Duration::from_millis(300 + rnd(1200));
        while Instant::now() < until {
            let i = rnd(names.len() as u64) as usize;
            let n = &names[i];
            let p = t.o(n);
            match rnd(4) {
                0 if p.exists() => fs::remove_file(&p).unwrap(),
                1 if p.exists() => {
                    let mode = 0o400 | (rnd(0o400) as u32 & 0o377);
                    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
                }
                _ => fs::write(&p, pattern(rnd(1000), 50 + rnd(5000) as usize)).unwrap(),
            }
            history.get_mut(n).unwrap().push(said(&p));
            let d = n.split('/').next().unwrap().to_string();
            listings.get_mut(&d).unwrap().push(listing(&t.o(&d)));
            // Through the mount: a lookup, and now and then the listing.
            let _ = said(&t.m(n));
            if rnd(4) == 0 {
                let _ = listing(&t.m(&d));
            }
            std::thread::sleep(Duration::from_millis(rnd(15)));
        }
        t.kill_9();
    }
    t.mount(&["--attr-ttl", "1h"]);
    check(&t, &history, &listings, kills());
    asked += t.stat_u64("revalidations");
    looked_up += 2 * names.len() as u64;
    t.umount();
    // The journal was used, not bypassed: many answers came from it.
    assert!(
        asked < looked_up / 2,
        "{asked} of {looked_up} lookups asked the origin"
    );
}

/// kill -9 while writers rewrite blocks of cached files through the mount and readers
/// read them: after a remount every file reads through the mount exactly as the
/// origin has it (every write that returned is there, and no block the cache held
/// from before a write comes back).
#[test]
fn kill_9_during_writes_leaves_no_block_older_than_the_origin() {
    const N: u64 = 6;
    let len = |i: u64| 300_000 + i as usize * 40_000;
    let mut t = Mount::new();
    for i in 0..N {
        fs::write(t.o(format!("w{i}")), pattern(i, len(i))).unwrap();
    }
    let args = ["--ram-size", "4M"];
    for k in 0..kills() {
        t.mount(&args);
        drop_page_cache();
        for i in 0..N {
            let got = fs::read(t.m(format!("w{i}"))).unwrap();
            assert!(
                got == fs::read(t.o(format!("w{i}"))).unwrap(),
                "kill {k}: w{i} through the mount differs from the origin after recovery"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4u64)
            .map(|r| {
                let (stop, mnt) = (stop.clone(), t.mnt.clone());
                let mut y = (k * 10 + r + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        y ^= y << 13;
                        y ^= y >> 7;
                        y ^= y << 17;
                        let i = y % N;
                        let p = mnt.join(format!("w{i}"));
                        let off = (y >> 24) % 300_000;
                        let res = if r % 2 == 0 {
                            fs::OpenOptions::new().write(true).open(&p).and_then(|f| {
                                f.write_all_at(&pattern(y, 1 + (y >> 44) as usize % 40_000), off)
                            })
                        } else {
                            fs::File::open(&p).and_then(|f| {
                                let mut b = vec![0u8; 50_000];
                                f.read_at(&mut b, off).map(drop)
                            })
                        };
                        if res.is_err() {
                            return; // the daemon is gone
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + k * 400));
        let pid = t.daemon_pid();
        kill(pid, "-9");
        stop.store(true, Ordering::Relaxed);
        t.abort_if_hung(pid);
        for w in workers {
            w.join().unwrap();
        }
        t.clear_dead(pid);
    }
    t.mount(&args);
    drop_page_cache();
    for i in 0..N {
        assert!(
            fs::read(t.m(format!("w{i}"))).unwrap() == fs::read(t.o(format!("w{i}"))).unwrap(),
            "w{i} differs from the origin after the last recovery"
        );
    }
    assert!(t.stat_u64("disk_blocks") > 0);
    t.umount();
}
