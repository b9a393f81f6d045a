//! Writes through the engine (write-through): every change reaches the origin, reads
//! after it equal the origin's bytes and are hits where the write supplied whole
//! blocks, the rest of a cached file stays cached, and no tier ever serves bytes from
//! before a write, across a restart included.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use strata::origin::{LocalOrigin, NewEntry, Origin, RENAME_NOREPLACE, SetAttr};
use strata::{Config, Engine};

const HOUR: Duration = Duration::from_secs(3600);

fn file_mode() -> NewEntry {
    NewEntry {
        mode: 0o640,
        owner: None,
    }
}

#[test]
fn a_write_reaches_the_origin_and_keeps_the_rest_of_the_file_cached() {
    let s = setup();
    let len = 10 * BS as usize + 100;
    std::fs::write(s.origin.join("f"), pattern(1, len)).unwrap();
    let e = engine(&s, HOUR);
    assert_eq!(read_all(&e, "f"), pattern(1, len));
    let cold = e.stats().origin_requests;

    // Two whole blocks, then a piece of a third.
    let mut want = pattern(1, len);
    let h = e.open_write(Path::new("f"), false).unwrap();
    let new = pattern(2, 2 * BS as usize);
    assert_eq!(e.write(&h, 3 * BS as u64, &new).unwrap(), new.len());
    want[3 * BS as usize..5 * BS as usize].copy_from_slice(&new);
    assert_eq!(e.write(&h, 7 * BS as u64 + 10, b"hello").unwrap(), 5);
    want[7 * BS as usize + 10..7 * BS as usize + 15].copy_from_slice(b"hello");
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), want);

    // Everything but the piece's block is served from the cache.
    assert_eq!(read_all(&e, "f"), want);
    let st = e.stats();
    assert_eq!(st.origin_requests, cold + 1, "{st:?}");
    assert_eq!(st.writes, 2);
    assert_eq!(st.write_bytes, new.len() as u64 + 5);

    // And after a restart, from the disk: no block from before the write.
    assert!(e.wait_fills(Duration::from_secs(30)));
    e.shutdown();
    drop(e);
    let e = engine(&s, HOUR);
    assert_eq!(read_all(&e, "f"), want);
    assert!(e.stats().disk_hits > 0);
}

#[test]
fn writes_past_the_end_and_truncation_move_the_size() {
    let s = setup();
    std::fs::write(s.origin.join("f"), pattern(3, BS as usize + 7)).unwrap();
    let e = engine(&s, HOUR);
    assert_eq!(read_all(&e, "f"), pattern(3, BS as usize + 7));
    let h = e.open_write(Path::new("f"), false).unwrap();
    // A hole, then bytes, past the end.
    let at = 3 * BS as u64 + 5;
    e.write(&h, at, b"tail").unwrap();
    let mut want = pattern(3, BS as usize + 7);
    want.resize(at as usize, 0);
    want.extend_from_slice(b"tail");
    assert_eq!(read_all(&e, "f"), want);
    assert_eq!(e.stat(Path::new("f")).unwrap().size, want.len() as u64);
    // Cut in the middle of the first block, through the handle.
    let set = SetAttr {
        size: Some(100),
        ..SetAttr::default()
    };
    assert_eq!(
        e.set_attr(Path::new("f"), &set, Some(&h)).unwrap().size,
        100
    );
    assert_eq!(read_all(&e, "f"), want[..100]);
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), want[..100]);
    // Grown again by name: zeros.
    let set = SetAttr {
        size: Some(BS as u64 * 2),
        ..SetAttr::default()
    };
    e.set_attr(Path::new("f"), &set, None).unwrap();
    want.truncate(100);
    want.resize(BS as usize * 2, 0);
    assert_eq!(read_all(&e, "f"), want);
}

#[test]
fn a_file_changed_by_someone_else_is_not_taken_for_ours() {
    let s = setup();
    std::fs::write(s.origin.join("f"), pattern(4, 4 * BS as usize)).unwrap();
    let e = engine(&s, HOUR);
    assert_eq!(read_all(&e, "f"), pattern(4, 4 * BS as usize));
    let h = e.open_write(Path::new("f"), false).unwrap();
    // Changed at the origin, not through the cache (the same size).
    std::thread::sleep(Duration::from_millis(10));
    let other = pattern(5, 4 * BS as usize);
    std::fs::write(s.origin.join("f"), &other).unwrap();
    e.write(&h, 0, b"ours").unwrap();
    let mut want = other;
    want[..4].copy_from_slice(b"ours");
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), want);
    // The cached version (someone else's bytes unknown to it) is gone.
    assert_eq!(read_all(&e, "f"), want);
}

#[test]
fn names_made_and_removed_through_the_cache_are_seen_at_once() {
    let s = setup();
    std::fs::create_dir(s.origin.join("d")).unwrap();
    let e = engine(&s, HOUR);
    let names = |e: &Engine, d: &str| {
        let mut v: Vec<String> = e
            .read_dir(Path::new(d))
            .unwrap()
            .iter()
            .map(|x| x.name.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Cached as empty, and "d/f" cached as absent.
    assert!(names(&e, "d").is_empty());
    assert!(e.stat(Path::new("d/f")).is_err());

    let (a, h) = e.create(Path::new("d/f"), &file_mode(), true).unwrap();
    assert_eq!(a.perm, 0o640);
    e.write(&h, 0, b"abc").unwrap();
    drop(h);
    assert_eq!(names(&e, "d"), ["f"]);
    assert_eq!(e.stat(Path::new("d/f")).unwrap().size, 3);
    assert_eq!(read_all(&e, "d/f"), b"abc");
    assert_eq!(
        e.create(Path::new("d/f"), &file_mode(), true)
            .err()
            .unwrap()
            .raw_os_error(),
        Some(17)
    );

    e.mkdir(
        Path::new("d/sub"),
        &NewEntry {
            mode: 0o750,
            owner: None,
        },
    )
    .unwrap();
    e.symlink("f".as_ref(), Path::new("d/ln"), &NewEntry::default())
        .unwrap();
    e.link(Path::new("d/f"), Path::new("d/hard")).unwrap();
    assert_eq!(names(&e, "d"), ["f", "hard", "ln", "sub"]);
    assert_eq!(e.read_link(Path::new("d/ln")).unwrap().as_ref(), b"f");
    assert_eq!(e.stat(Path::new("d/f")).unwrap().nlink, 2);
    assert_eq!(
        std::fs::metadata(s.origin.join("d/sub")).unwrap().mode() & 0o7777,
        0o750
    );

    e.rename(Path::new("d/f"), Path::new("d/sub/g"), 0).unwrap();
    assert!(e.stat(Path::new("d/f")).is_err());
    assert_eq!(read_all(&e, "d/sub/g"), b"abc");
    assert_eq!(
        e.rename(Path::new("d/hard"), Path::new("d/ln"), RENAME_NOREPLACE)
            .err()
            .unwrap()
            .raw_os_error(),
        Some(17)
    );
    // A directory renamed: nothing is served under its old name.
    e.rename(Path::new("d/sub"), Path::new("d/moved"), 0)
        .unwrap();
    assert!(e.stat(Path::new("d/sub/g")).is_err());
    assert_eq!(read_all(&e, "d/moved/g"), b"abc");

    e.unlink(Path::new("d/hard")).unwrap();
    e.unlink(Path::new("d/ln")).unwrap();
    e.unlink(Path::new("d/moved/g")).unwrap();
    e.rmdir(Path::new("d/moved")).unwrap();
    assert!(names(&e, "d").is_empty());
    assert_eq!(
        e.rmdir(Path::new("d/none")).err().unwrap().raw_os_error(),
        Some(2)
    );
    assert!(
        std::fs::read_dir(s.origin.join("d"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn missing_names_in_a_listed_directory_ask_nobody_until_its_trust_ends() {
    let s = setup();
    let ttl = Duration::from_millis(400);
    let e = engine(&s, ttl);
    let dir = NewEntry {
        mode: 0o755,
        owner: None,
    };
    e.mkdir(Path::new("new"), &dir).unwrap();
    let made = e.stat(Path::new("new")).unwrap();
    // A directory just made is known empty: a tar filling it asks the origin
    // nothing before each create.
    let before = e.stats();
    for i in 0..20 {
        let r = e.stat(Path::new(&format!("new/f{i}")));
        assert_eq!(r.err().unwrap().raw_os_error(), Some(2));
    }
    let after = e.stats();
    assert_eq!(after.revalidations, before.revalidations, "{after:?}");
    assert_eq!(after.lookups_by_listing - before.lookups_by_listing, 20);

    // Names made through the cache are in the listing at once; the parent's times
    // moved with them.
    std::thread::sleep(Duration::from_millis(20));
    drop(e.create(Path::new("new/f0"), &file_mode(), true).unwrap());
    e.mkdir(Path::new("new/sub"), &dir).unwrap();
    assert_eq!(e.stat(Path::new("new/f0")).unwrap().size, 0);
    let mut names: Vec<String> = e
        .read_dir(Path::new("new"))
        .unwrap()
        .iter()
        .map(|x| x.name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["f0", "sub"]);
    let now = e.stat(Path::new("new")).unwrap();
    assert!(now.mtime > made.mtime && now.ctime > made.ctime, "{now:?}");
    assert_eq!(now.nlink, made.nlink + 1);
    assert_eq!(
        e.stat(Path::new("new/sub/x")).err().unwrap().raw_os_error(),
        Some(2)
    );

    // A name made at the origin by someone else is seen once the listing's trust
    // ends, as a readdir would show it.
    std::fs::write(s.origin.join("new/outside"), b"x").unwrap();
    std::thread::sleep(ttl + Duration::from_millis(50));
    assert_eq!(e.stat(Path::new("new/outside")).unwrap().size, 1);
    std::fs::write(s.origin.join("new/later"), b"yz").unwrap();
    std::thread::sleep(ttl * 3);
    assert_eq!(e.stat(Path::new("new/later")).unwrap().size, 2);
}

#[test]
fn attributes_and_xattrs_change_and_the_cached_bytes_stay() {
    let s = setup();
    std::fs::write(s.origin.join("f"), pattern(6, 3 * BS as usize)).unwrap();
    let e = engine(&s, HOUR);
    assert_eq!(read_all(&e, "f"), pattern(6, 3 * BS as usize));
    let cold = e.stats().origin_requests;
    let set = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(e.set_attr(Path::new("f"), &set, None).unwrap().perm, 0o600);
    e.set_xattr(Path::new("f"), "user.k".as_ref(), b"v", 0)
        .unwrap();
    assert_eq!(
        e.get_xattr(Path::new("f"), "user.k".as_ref())
            .unwrap()
            .as_ref(),
        b"v"
    );
    e.remove_xattr(Path::new("f"), "user.k".as_ref()).unwrap();
    assert!(e.get_xattr(Path::new("f"), "user.k".as_ref()).is_err());
    // Still the same bytes, from the cache.
    assert_eq!(read_all(&e, "f"), pattern(6, 3 * BS as usize));
    assert_eq!(e.stats().origin_requests, cold);
}

#[test]
fn a_read_only_engine_refuses_every_change() {
    let s = setup();
    std::fs::write(s.origin.join("f"), b"x").unwrap();
    let cfg = Config {
        read_only: true,
        ..config(&s.cache, HOUR)
    };
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Engine::new(cfg, origin).unwrap();
    assert!(!e.writable());
    let erofs = |r: std::io::Result<()>| r.err().unwrap().raw_os_error();
    assert_eq!(
        erofs(e.open_write(Path::new("f"), false).map(drop)),
        Some(30)
    );
    assert_eq!(erofs(e.unlink(Path::new("f"))), Some(30));
    assert_eq!(
        erofs(e.mkdir(Path::new("d"), &file_mode()).map(drop)),
        Some(30)
    );
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), b"x");
}

#[test]
fn writes_racing_reads_never_leave_older_bytes_in_any_tier() {
    // One writer rewrites blocks with new generations while readers read the file
    // over and over (fetching, filling the disk, refilling it from RAM). Each block
    // read must be one the writer wrote at some point; once it stops, every read,
    // and every read after a restart (from the disk), is the origin's last bytes.
    let s = setup();
    const BLOCKS: u64 = 24;
    let bs = BS as usize;
    fn block(blk: u64, g: u64) -> Vec<u8> {
        pattern(blk * 1000 + g, BS as usize)
    }
    let mut init = Vec::new();
    for b in 0..BLOCKS {
        init.extend_from_slice(&block(b, 0));
    }
    std::fs::write(s.origin.join("f"), &init).unwrap();
    let mut cfg = config(&s.cache, HOUR);
    cfg.ram_capacity = 8 * BS as u64; // RAM evicts: reads go to disk and origin
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    let e = Arc::new(Engine::new(cfg, origin).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (e, stop) = (e.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Whole blocks per call: a block is one version's bytes (two
                    // calls may see two versions, as reading the origin would).
                    let h = e.open(Path::new("f")).unwrap();
                    for b in 0..BLOCKS {
                        let got = e.read(&h, b * BS as u64, bs).unwrap().to_vec();
                        let ok = (0..200).any(|n| got == block(b, n));
                        assert!(ok, "block {b} holds bytes the writer never wrote");
                    }
                }
            })
        })
        .collect();
    let h = e.open_write(Path::new("f"), false).unwrap();
    let mut x = 7u64;
    for g in 1..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x % BLOCKS;
        e.write(&h, b * BS as u64, &block(b, g)).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let want = std::fs::read(s.origin.join("f")).unwrap();
    assert_eq!(read_all(&e, "f"), want);
    assert!(e.wait_fills(Duration::from_secs(30)));
    drop(h);
    e.shutdown();
    drop(e);
    let e = engine(&s, HOUR);
    assert_eq!(read_all(&e, "f"), want);
}

/// A run of writes through one handle asks the origin for the file's token once,
/// when the handle is closed, not after every write; the version keeps what the
/// writes cached, and the attributes after the close are the origin's.
#[test]
fn a_run_of_writes_asks_for_the_token_once_and_keeps_its_blocks() {
    let s = setup();
    let e = engine(&s, HOUR);
    let (_, h) = e.create(Path::new("f"), &file_mode(), true).unwrap();
    let asked = e.stats().revalidations;
    let want = pattern(5, 64 * BS as usize + 300);
    for (i, c) in want.chunks(BS as usize).enumerate() {
        e.write(&h, (i * BS as usize) as u64, c).unwrap();
    }
    // While the run lasts the size is the writes' own.
    assert_eq!(e.stat(Path::new("f")).unwrap().size, want.len() as u64);
    assert_eq!(
        e.stats().revalidations,
        asked,
        "a write asked for the token"
    );
    e.close_check(&h).unwrap();
    assert_eq!(e.stats().revalidations, asked + 1);
    assert_eq!(std::fs::read(s.origin.join("f")).unwrap(), want);
    // Every whole block is served from the cache, the short last one too.
    let requests = e.stats().origin_requests;
    assert_eq!(read_all(&e, "f"), want);
    assert_eq!(e.stats().origin_requests, requests);
    let m = std::fs::metadata(s.origin.join("f")).unwrap();
    let a = e.stat(Path::new("f")).unwrap();
    assert_eq!(
        (a.mtime.secs, a.mtime.nanos as i64),
        (m.mtime(), m.mtime_nsec())
    );
    drop(h);
    // And the version's token is the origin's: a restart finds its blocks.
    assert!(e.wait_fills(Duration::from_secs(30)));
    e.shutdown();
    drop(e);
    let e = engine(&s, HOUR);
    assert_eq!(read_all(&e, "f"), want);
    assert_eq!(e.stats().origin_bytes, 0);
}

/// Someone else changes the size of a file between two writes of a run: when the
/// run is settled the version is not taken for ours, and reads give the origin's
/// bytes, theirs included.
#[test]
fn a_change_by_someone_else_inside_a_run_of_writes_is_caught() {
    let s = setup();
    std::fs::write(s.origin.join("f"), pattern(6, 4 * BS as usize)).unwrap();
    let e = engine(&s, HOUR);
    assert_eq!(read_all(&e, "f"), pattern(6, 4 * BS as usize));
    let h = e.open_write(Path::new("f"), false).unwrap();
    e.write(&h, 0, &pattern(7, BS as usize)).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(s.origin.join("f"))
            .unwrap();
        f.write_all(b"theirs").unwrap();
    }
    e.write(&h, 2 * BS as u64, &pattern(8, BS as usize))
        .unwrap();
    e.close_check(&h).unwrap();
    drop(h);
    let at_origin = std::fs::read(s.origin.join("f")).unwrap();
    assert!(at_origin.ends_with(b"theirs"));
    assert_eq!(read_all(&e, "f"), at_origin);
}

/// A change of attributes right after a run of writes (tar's utimes, chown, chmod)
/// settles the run first: the blocks stay, and the attributes are the origin's.
#[test]
fn a_change_of_attributes_after_a_run_of_writes_settles_it_first() {
    let s = setup();
    let e = engine(&s, HOUR);
    let (_, h) = e.create(Path::new("f"), &file_mode(), true).unwrap();
    let data = pattern(9, 3 * BS as usize);
    e.write(&h, 0, &data).unwrap();
    let asked = e.stats().revalidations;
    let set = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let a = e.set_attr(Path::new("f"), &set, Some(&h)).unwrap();
    e.close_check(&h).unwrap();
    assert_eq!(
        e.stats().revalidations,
        asked + 1,
        "the run was settled once"
    );
    let m = std::fs::metadata(s.origin.join("f")).unwrap();
    assert_eq!(
        (a.mtime.secs, a.mtime.nanos as i64),
        (m.mtime(), m.mtime_nsec())
    );
    assert_eq!(a.perm & 0o777, 0o600);
    let requests = e.stats().origin_requests;
    assert_eq!(read_all(&e, "f"), data);
    assert_eq!(
        e.stats().origin_requests,
        requests,
        "the written blocks went"
    );
}
