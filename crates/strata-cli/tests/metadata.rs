//! End to end: what metadata strata serves through a mount and for how long —
//! attributes, listings, symlinks and names within their trust (fixed or adaptive),
//! walks that do not ask the origin, and paths deeper than PATH_MAX.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Mount, compare_tree_with, drop_page_cache, eventually, pattern};

#[test]
fn origin_changes_are_seen_within_the_ttl() {
    let mut t = Mount::new();
    fs::write(t.o("a"), pattern(1, 200_000)).unwrap();
    fs::write(t.o("b"), pattern(2, 1000)).unwrap();
    fs::write(t.o("c"), b"to be deleted").unwrap();
    fs::write(t.o("d"), b"to be renamed").unwrap();
    fs::write(t.o("e"), b"chmod me").unwrap();
    fs::write(t.o("f"), pattern(3, 300_000)).unwrap();
    t.mount(&["--attr-ttl", "200ms"]);
    for n in ["a", "b", "c", "d", "e", "f"] {
        let _ = fs::read(t.m(n)).unwrap();
    }
    // Keep a file open across the change, as a long-running reader would.
    let mut held = fs::File::open(t.m("a")).unwrap();

    // append
    fs::OpenOptions::new()
        .append(true)
        .open(t.o("a"))
        .unwrap()
        .write_all(&pattern(9, 5000))
        .unwrap();
    // truncate
    fs::OpenOptions::new()
        .write(true)
        .open(t.o("b"))
        .unwrap()
        .set_len(10)
        .unwrap();
    // delete
    fs::remove_file(t.o("c")).unwrap();
    // rename
    fs::rename(t.o("d"), t.o("d2")).unwrap();
    // chmod
    fs::set_permissions(t.o("e"), fs::Permissions::from_mode(0o640)).unwrap();
    // replace
    fs::write(t.o("f.tmp"), pattern(4, 12345)).unwrap();
    fs::rename(t.o("f.tmp"), t.o("f")).unwrap();

    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(
        fs::read(t.m("a")).unwrap(),
        fs::read(t.o("a")).unwrap(),
        "append"
    );
    let mut again = Vec::new();
    held.read_to_end(&mut again).unwrap();
    assert_eq!(
        again,
        fs::read(t.o("a")).unwrap(),
        "append, through a file held open"
    );
    assert_eq!(
        fs::read(t.m("b")).unwrap(),
        fs::read(t.o("b")).unwrap(),
        "truncate"
    );
    assert_eq!(fs::metadata(t.m("b")).unwrap().len(), 10);
    assert_eq!(
        fs::metadata(t.m("c")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound,
        "delete"
    );
    assert!(fs::metadata(t.m("d")).is_err(), "rename: old name gone");
    assert_eq!(
        fs::read(t.m("d2")).unwrap(),
        b"to be renamed",
        "rename: new name"
    );
    assert_eq!(
        fs::metadata(t.m("e")).unwrap().mode() & 0o777,
        0o640,
        "chmod"
    );
    assert_eq!(fs::read(t.m("f")).unwrap(), pattern(4, 12345), "replace");
    // Never older data afterwards.
    for _ in 0..5 {
        drop_page_cache();
        assert_eq!(fs::read(t.m("f")).unwrap(), pattern(4, 12345));
        assert_eq!(fs::read(t.m("a")).unwrap(), fs::read(t.o("a")).unwrap());
    }
    // A file open on the mount makes `strata umount` refuse, as umount(8) does.
    let out = Command::new(common::STRATA)
        .arg("umount")
        .arg(&t.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("busy"));
    drop(held);
    t.umount();
}

#[test]
fn warm_metadata_walks_do_not_ask_the_origin() {
    let mut t = Mount::new();
    for d in 0..10 {
        let dir = t.o(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..30 {
            fs::write(dir.join(format!("f{f}")), b"x").unwrap();
        }
        symlink("f0", dir.join("link")).unwrap();
    }
    t.mount(&["--attr-ttl", "60s", "--origin-latency", "5ms"]);
    let walk = |t: &Mount| {
        let out = Command::new("find")
            .arg(&t.mnt)
            .arg("-ls")
            .output()
            .unwrap();
        assert!(out.status.success());
        let out = Command::new("ls").arg("-lR").arg(&t.mnt).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let t0 = std::time::Instant::now();
    let lines = walk(&t);
    let cold = t0.elapsed();
    let asked = t.stat_u64("revalidations");
    assert!(asked >= 300, "cold walk stats every entry: {asked}");
    // The kernel's own caches would hide the engine: drop them, then walk again.
    drop_page_cache();
    let t1 = std::time::Instant::now();
    assert_eq!(walk(&t), lines);
    let warm = t1.elapsed();
    assert_eq!(
        t.stat_u64("revalidations"),
        asked,
        "warm walk asked the origin"
    );
    println!("cold walk {cold:?}, warm walk {warm:?}");
    t.umount();
}

/// sshfs numbers inodes as it meets them and renumbers them once its kernel inodes
/// are forgotten: strata must not take that for a change of the files.
#[test]
fn sshfs_origin_stays_cached_across_remounts_and_forgotten_inodes() {
    let _one = common::sshfs_lock();
    let mut t = Mount::new();
    let data = t.tmp.path().join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::write(data.join("big"), pattern(31, 3_000_000)).unwrap();
    for i in 0..50 {
        fs::write(
            data.join(format!("sub/s{i}")),
            pattern(i, 5000 + i as usize),
        )
        .unwrap();
    }
    let sshfs = common::SshfsOrigin::up(&data, &t.origin);
    t.mount(&["--attr-ttl", "300ms"]);
    compare_tree_with(&t.origin, &t.mnt, false);
    assert!(eventually(Duration::from_secs(20), || t
        .stat_u64("inflight_fill_bytes")
        == 0));
    t.umount();
    drop_page_cache(); // sshfs forgets its inodes and will number them anew
    t.mount(&["--attr-ttl", "300ms"]);
    compare_tree_with(&t.origin, &t.mnt, false);
    let s = t.stats();
    assert_eq!(
        s["origin_requests"], 0,
        "warm reads over sshfs went to the origin: {s}"
    );
    // A change at the origin is still seen.
    fs::write(data.join("sub/s0"), b"changed").unwrap();
    std::thread::sleep(Duration::from_millis(1500)); // sshfs's own attribute cache
    assert!(eventually(Duration::from_secs(25), || fs::read(
        t.m("sub/s0")
    )
    .unwrap()
        == b"changed"));
    t.umount();
    drop(sshfs);
}

/// Opens `rel` below `root` one name at a time, so a path longer than PATH_MAX can be
/// reached (as the kernel walks it through the mount).
fn open_deep(root: &Path, rel: &Path, flags: rustix::fs::OFlags) -> fs::File {
    use rustix::fs::{Mode, OFlags};
    let mut dir = fs::File::open(root).unwrap();
    let names: Vec<_> = rel.components().collect();
    for (i, c) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let f = if last {
            flags
        } else {
            OFlags::RDONLY | OFlags::DIRECTORY
        };
        let mode = Mode::from_raw_mode(0o644);
        dir = fs::File::from(rustix::fs::openat(&dir, c.as_os_str(), f, mode).unwrap());
    }
    dir
}

#[test]
fn a_tree_deeper_than_path_max_reads_byte_for_byte() {
    use rustix::fs::{Mode, OFlags};
    let mut t = Mount::new();
    // 20 nested directories of 250-byte names: about 5,000 bytes of path.
    let mut rel = PathBuf::new();
    for i in 0..20 {
        rel.push(format!("{i:02}{}", "n".repeat(248)));
    }
    let mut dir = fs::File::open(&t.origin).unwrap();
    for c in rel.components() {
        rustix::fs::mkdirat(&dir, c.as_os_str(), Mode::from_raw_mode(0o755)).unwrap();
        dir = fs::File::from(
            rustix::fs::openat(&dir, c.as_os_str(), OFlags::RDONLY, Mode::empty()).unwrap(),
        );
    }
    let data = pattern(77, 700_000);
    let mut f = open_deep(
        &t.origin,
        &rel.join("deep.bin"),
        OFlags::WRONLY | OFlags::CREATE,
    );
    f.write_all(&data).unwrap();
    drop(f);
    assert!(rel.as_os_str().len() > 4096);
    t.mount(&[]);
    for round in 0..2 {
        let mut got = Vec::new();
        open_deep(&t.mnt, &rel.join("deep.bin"), OFlags::RDONLY)
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got.len(), data.len(), "round {round}");
        assert!(got == data, "round {round}: bytes differ");
        let d = open_deep(&t.mnt, &rel, OFlags::RDONLY | OFlags::DIRECTORY);
        let listed: Vec<_> = fs::read_dir(format!("/proc/self/fd/{}", d.as_raw_fd()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(listed, vec![std::ffi::OsString::from("deep.bin")]);
        drop_page_cache();
    }
    assert!(
        t.stat_u64("disk_hits") + t.stat_u64("ram_hits") > 0,
        "the second read is cached"
    );
    t.umount();
}

#[test]
fn a_recreated_symlink_is_seen_within_the_ttl() {
    let mut t = Mount::new();
    std::os::unix::fs::symlink("aaaa", t.o("ln")).unwrap();
    t.mount(&["--attr-ttl", "200ms"]);
    for _ in 0..3 {
        assert_eq!(fs::read_link(t.m("ln")).unwrap(), Path::new("aaaa"));
    }
    // Removed and made again (ext4 hands the new link the freed inode number).
    fs::remove_file(t.o("ln")).unwrap();
    std::os::unix::fs::symlink("bbbbbbbb", t.o("ln")).unwrap();
    std::thread::sleep(Duration::from_millis(350));
    for _ in 0..5 {
        assert_eq!(fs::read_link(t.m("ln")).unwrap(), Path::new("bbbbbbbb"));
        assert_eq!(fs::symlink_metadata(t.m("ln")).unwrap().len(), 8);
    }
    // Changed again with the same length: the target still follows.
    fs::remove_file(t.o("ln")).unwrap();
    std::os::unix::fs::symlink("cccccccc", t.o("ln")).unwrap();
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(fs::read_link(t.m("ln")).unwrap(), Path::new("cccccccc"));
    t.umount();
}

/// SEMANTICS.md, "rename": a file renamed at the origin while open through the mount
/// is another name for strata, whose cache is keyed by origin path; the open handle
/// gets ESTALE (as on NFS for a file replaced), the new name reads the same bytes.
#[test]
fn a_file_renamed_at_the_origin_while_open_reads_under_its_new_name() {
    let mut t = Mount::new();
    let data = pattern(78, 300_000);
    fs::create_dir(t.o("dir")).unwrap();
    fs::write(t.o("dir/f"), &data).unwrap();
    t.mount(&["--attr-ttl", "200ms"]);
    let mut held = fs::File::open(t.m("dir/f")).unwrap();
    let mut head = vec![0u8; 1000];
    held.read_exact(&mut head).unwrap();
    fs::rename(t.o("dir/f"), t.o("dir/g")).unwrap();
    fs::rename(t.o("dir"), t.o("dir2")).unwrap();
    std::thread::sleep(Duration::from_millis(350));
    drop_page_cache();
    let mut rest = Vec::new();
    let e = held.read_to_end(&mut rest).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(116), "ESTALE: {e}");
    assert_eq!(fs::read(t.m("dir2/g")).unwrap(), data);
    drop(held);
    t.umount();
}

/// `--attr-ttl` bounds staleness exactly: the kernel keeps attributes only for what is
/// left of the engine's TTL for them, so the two caches do not stack (a change used
/// to take up to twice the TTL to show).
#[test]
fn an_attribute_change_shows_within_one_ttl_not_two() {
    let mut t = Mount::new();
    fs::write(t.o("f"), b"x").unwrap();
    fs::set_permissions(t.o("f"), fs::Permissions::from_mode(0o644)).unwrap();
    t.mount(&["--attr-ttl", "2s"]);
    let mode = |t: &Mount| fs::metadata(t.m("f")).unwrap().mode() & 0o777;
    let t0 = std::time::Instant::now();
    assert_eq!(mode(&t), 0o644);
    // Half a TTL later the kernel forgets the entry and asks again: strata answers
    // from its cache, 1 s old, and must say it is good for 1 s more, not 2.
    std::thread::sleep(Duration::from_millis(1000));
    common::drop_clean_caches();
    assert_eq!(mode(&t), 0o644);
    std::thread::sleep(Duration::from_millis(200));
    fs::set_permissions(t.o("f"), fs::Permissions::from_mode(0o600)).unwrap();
    // 2.4 s after the first look: both caches expired at 2 s.
    std::thread::sleep(Duration::from_millis(2400).saturating_sub(t0.elapsed()));
    assert_eq!(
        mode(&t),
        0o600,
        "seen {:?} after the first look",
        t0.elapsed()
    );
    t.umount();
}

/// Reading a file whose attributes expired costs one origin request for the lookup and
/// the open together (the open trusts what the lookup just confirmed), not two.
#[test]
fn a_lookup_and_an_open_cost_one_revalidation() {
    let mut t = Mount::new();
    const N: usize = 40;
    for i in 0..N {
        fs::write(t.o(format!("f{i}")), pattern(i as u64, 1000)).unwrap();
    }
    t.mount(&["--attr-ttl", "300ms"]);
    for i in 0..N {
        assert_eq!(
            fs::read(t.m(format!("f{i}"))).unwrap(),
            pattern(i as u64, 1000)
        );
    }
    std::thread::sleep(Duration::from_millis(400));
    let before = t.stat_u64("revalidations");
    for i in 0..N {
        assert_eq!(
            fs::read(t.m(format!("f{i}"))).unwrap(),
            pattern(i as u64, 1000)
        );
    }
    let asked = t.stat_u64("revalidations") - before;
    // Each file once; the root directory may be asked about once more along the way.
    assert!(
        (N as u64..=N as u64 + 2).contains(&asked),
        "{asked} origin requests for {N} files"
    );
    t.umount();
}

/// By default trust adapts (as NFS clients do): an answer about what the origin had
/// not changed for a while is trusted a tenth of that, within `--attr-ttl ..=
/// --attr-ttl-max`. A change shows within the trust its entry had: a fresh file's
/// within the least, an old file's and an old directory's names within the most.
#[test]
fn adaptive_trust_scales_with_how_long_an_entry_was_unchanged() {
    use std::time::Instant;
    let mut t = Mount::new();
    fs::write(t.o("old"), b"x").unwrap();
    fs::create_dir(t.o("dir")).unwrap();
    // 4 s unchanged: a tenth is 400 ms, past the most (300 ms) given below.
    std::thread::sleep(Duration::from_secs(4));
    fs::write(t.o("new"), b"x").unwrap();
    fs::set_permissions(t.o("new"), fs::Permissions::from_mode(0o644)).unwrap();
    t.mount(&["--attr-ttl", "50ms", "--attr-ttl-max", "300ms"]);
    let mode = |t: &Mount, p: &str| fs::metadata(t.m(p)).unwrap().mode() & 0o777;
    let was = mode(&t, "old");
    assert_eq!(mode(&t, "new"), 0o644);
    assert!(!t.m("dir/x").exists());
    let t0 = Instant::now();
    for f in ["old", "new"] {
        fs::set_permissions(t.o(f), fs::Permissions::from_mode(0o600)).unwrap();
    }
    fs::write(t.o("dir/x"), b"y").unwrap();
    assert_ne!(was, 0o600);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(mode(&t, "new"), 0o600, "a fresh file is trusted the least");
    // Only while the test ran on time: a stalled machine may be past 300 ms already.
    if t0.elapsed() < Duration::from_millis(220) {
        assert_eq!(mode(&t, "old"), was, "an old file is trusted longer");
        assert!(
            !t.m("dir/x").exists(),
            "so is an old directory's absent name"
        );
    }
    std::thread::sleep(Duration::from_millis(400).saturating_sub(t0.elapsed()));
    assert_eq!(mode(&t, "old"), 0o600, "seen {:?} after", t0.elapsed());
    assert_eq!(fs::read(t.m("dir/x")).unwrap(), b"y");
    let s = Command::new(common::STRATA)
        .arg("stats")
        .arg(&t.mnt)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&s.stdout);
    assert!(s.contains("attribute TTL 50 ms to 300 ms, adaptive"), "{s}");
    t.umount();
}

/// After a remount a walk is served from the metadata the cache kept: within its
/// trust without asking the origin at all, past it with one request per entry.
#[test]
fn a_walk_after_a_remount_asks_nothing_within_the_trust_and_once_per_entry_past_it() {
    let mut t = Mount::new();
    for d in 0..10 {
        let dir = t.o(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..30 {
            fs::write(dir.join(format!("f{f}")), b"x").unwrap();
        }
    }
    let entries = 10 + 10 * 30;
    let walk = |t: &Mount| {
        drop_page_cache();
        let out = Command::new("find")
            .arg(&t.mnt)
            .arg("-ls")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    t.mount(&["--attr-ttl", "60s"]);
    let lines = walk(&t);
    assert_eq!(lines, entries + 1);
    t.umount();
    t.mount(&["--attr-ttl", "60s"]);
    assert_eq!(walk(&t), lines);
    let s = t.stats();
    assert_eq!(s["revalidations"], 0, "within the trust: {s}");
    assert_eq!(s["origin_requests"], 0, "{s}");
    t.umount();
    // Long enough that the walk itself (slow on a loaded 2-core machine) ends
    // within one trust period, so no entry is asked about twice.
    t.mount(&["--attr-ttl", "2s"]);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(walk(&t), lines);
    let asked = t.stat_u64("revalidations");
    // Each entry once; the root may be asked about once more along the way.
    assert!(
        (entries as u64..=entries as u64 + 2).contains(&asked),
        "past the trust: {asked} requests for {entries} entries"
    );
    t.umount();
}
