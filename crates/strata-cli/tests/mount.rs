//! End to end: real strata mounts over temporary origins, every byte and attribute
//! compared with the origin.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Mount, drop_page_cache, enable_fuse_uring, eventually, kill, pattern};

const BS: usize = 16 * 1024; // the default block size

/// Builds the varied tree the issue asks for.
fn build_tree(root: &Path, big_mib: usize, small_files: usize) {
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("one byte"), b"x").unwrap();
    for (i, n) in [BS - 1, BS, BS + 1, 3 * BS + 17, 1_000_003]
        .iter()
        .enumerate()
    {
        fs::write(root.join(format!("odd-{i}")), pattern(i as u64, *n)).unwrap();
    }
    // A large file.
    {
        let mut f = fs::File::create(root.join("large.bin")).unwrap();
        for i in 0..big_mib {
            f.write_all(&pattern(1000 + i as u64, 1 << 20)).unwrap();
        }
    }
    // A sparse file: holes with a little data in the middle and at the end.
    {
        let f = fs::File::create(root.join("sparse")).unwrap();
        f.set_len(40 << 20).unwrap();
        let mut f = f;
        f.seek(SeekFrom::Start(20 << 20)).unwrap();
        f.write_all(&pattern(7, 10_000)).unwrap();
        f.seek(SeekFrom::Start((40 << 20) - 5)).unwrap();
        f.write_all(b"tail!").unwrap();
    }
    // Names.
    fs::write(root.join("with space.txt"), b"spaces").unwrap();
    fs::write(root.join("ünïcödé-名前.txt"), b"unicode").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"bad-\xff\xfe-utf8")), b"bytes").unwrap();
    fs::write(root.join("-leading-dash"), b"dash").unwrap();
    // Symlinks: relative, to a directory, dangling, absolute out of the origin,
    // relative out of the origin.
    fs::create_dir(root.join("dir")).unwrap();
    fs::write(root.join("dir/target"), b"target").unwrap();
    symlink("dir/target", root.join("link-rel")).unwrap();
    symlink("dir", root.join("link-dir")).unwrap();
    symlink("does/not/exist", root.join("link-dangling")).unwrap();
    symlink("/etc/hostname", root.join("link-abs-out")).unwrap();
    symlink("../../outside", root.join("link-rel-out")).unwrap();
    // Deep directories.
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep.push(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"deep down").unwrap();
    // Thousands of small files.
    let many = root.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..small_files {
        fs::write(many.join(format!("f{i:05}")), pattern(i as u64, i % 3000)).unwrap();
    }
    // Modes.
    fs::write(root.join("exec.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("private"), b"secret").unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    // A hard link.
    fs::hard_link(root.join("odd-0"), root.join("hardlink-to-odd-0")).unwrap();
    // Settle delayed allocation: st_blocks changes at writeback without a ctime change,
    // and cached attributes may lag it by up to the TTL.
    Command::new("sync").status().unwrap();
}

/// Compares one entry's attributes through the mount with the origin's.
fn same_attrs(o: &Path, m: &Path, rel: &Path, check_ino: bool) {
    let a = fs::symlink_metadata(o).unwrap();
    let b = fs::symlink_metadata(m).unwrap_or_else(|e| panic!("{rel:?} through the mount: {e}"));
    let ctx = format!("{rel:?}");
    assert_eq!(a.file_type(), b.file_type(), "{ctx}: type");
    assert_eq!(a.mode(), b.mode(), "{ctx}: mode");
    assert_eq!(a.uid(), b.uid(), "{ctx}: uid");
    assert_eq!(a.gid(), b.gid(), "{ctx}: gid");
    assert_eq!(a.nlink(), b.nlink(), "{ctx}: nlink");
    assert_eq!(
        (a.mtime(), a.mtime_nsec()),
        (b.mtime(), b.mtime_nsec()),
        "{ctx}: mtime"
    );
    assert_eq!(
        (a.ctime(), a.ctime_nsec()),
        (b.ctime(), b.ctime_nsec()),
        "{ctx}: ctime"
    );
    if check_ino && !rel.as_os_str().is_empty() {
        assert_eq!(a.ino(), b.ino(), "{ctx}: inode number");
    }
    if !a.is_dir() {
        assert_eq!(a.size(), b.size(), "{ctx}: size");
        assert_eq!(a.blocks(), b.blocks(), "{ctx}: blocks");
    }
}

/// Walks the origin and checks every entry, byte and attribute through the mount.
/// Returns the number of files compared.
fn compare_tree(origin: &Path, mnt: &Path) -> usize {
    compare_tree_with(origin, mnt, true)
}

/// As `compare_tree`; `check_ino` is false for origins whose inode numbers strata
/// cannot present (it numbers the files itself then).
fn compare_tree_with(origin: &Path, mnt: &Path, check_ino: bool) -> usize {
    let mut files = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let (o, m) = (origin.join(&rel), mnt.join(&rel));
        same_attrs(&o, &m, &rel, check_ino);
        let meta = fs::symlink_metadata(&o).unwrap();
        if meta.is_dir() {
            let mut a: Vec<_> = fs::read_dir(&o)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            let mut b: Vec<_> = fs::read_dir(&m)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "listing of {rel:?}");
            for name in a {
                stack.push(rel.join(name));
            }
        } else if meta.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&o).unwrap(),
                fs::read_link(&m).unwrap(),
                "{rel:?}"
            );
        } else if meta.is_file() {
            let want = fs::read(&o).unwrap();
            let got = fs::read(&m).unwrap_or_else(|e| panic!("read {rel:?}: {e}"));
            assert!(want == got, "bytes of {rel:?} differ");
            files += 1;
        }
    }
    files
}

#[test]
fn varied_tree_cold_warm_and_after_remount() {
    let mut t = Mount::new();
    build_tree(&t.origin, 256, 3000);
    t.mount(&["--attr-ttl", "30s"]);

    // Cold.
    let n = compare_tree(&t.origin, &t.mnt);
    assert!(n > 3000);
    // A local origin outruns the disk writer, which drops fills rather than block
    // readers; another pass once it is idle caches what was dropped.
    let idle = |t: &Mount| {
        eventually(Duration::from_secs(60), || {
            t.stat_u64("inflight_fill_bytes") == 0
        })
    };
    assert!(idle(&t));
    // A fill dropped in a pass and evicted from RAM before the writer could retry it
    // is fetched again by the next pass; on a loaded machine that can take a few.
    let mut cold = t.stats();
    for _ in 0..5 {
        drop_page_cache();
        compare_tree(&t.origin, &t.mnt);
        assert!(idle(&t));
        let before = cold["origin_requests"].clone();
        cold = t.stats();
        if cold["origin_requests"] == before {
            break;
        }
    }
    assert!(cold["origin_bytes"].as_u64().unwrap() >= 256 << 20);

    // Warm, the kernel's page cache dropped: served by the engine, no origin reads.
    drop_page_cache();
    compare_tree(&t.origin, &t.mnt);
    let warm = t.stats();
    assert_eq!(
        warm["origin_requests"], cold["origin_requests"],
        "warm reads went to the origin: {warm}"
    );
    assert!(warm["ram_hits"].as_u64().unwrap() + warm["disk_hits"].as_u64().unwrap() > 0);

    // Unmount (waits for fills and the index commit), mount again: still cached.
    t.umount();
    drop_page_cache();
    t.mount(&["--attr-ttl", "30s"]);
    compare_tree(&t.origin, &t.mnt);
    let after = t.stats();
    assert_eq!(after["origin_requests"], 0, "after a remount: {after}");
    assert!(after["disk_hits"].as_u64().unwrap() > 0);
    // The read handlers' time holds the engine's.
    let (fuse_us, engine_us) = (after["fuse_read_us"].as_u64(), after["read_us"].as_u64());
    assert!(engine_us.unwrap() > 0 && fuse_us >= engine_us, "{after}");
    t.umount();
}

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
fn many_concurrent_readers_get_correct_bytes() {
    let mut t = Mount::new();
    let files: Vec<Vec<u8>> = (0..6)
        .map(|i| pattern(50 + i, 3_000_000 + i as usize * 77_777))
        .collect();
    for (i, d) in files.iter().enumerate() {
        fs::write(t.o(format!("f{i}")), d).unwrap();
    }
    t.mount(&["--ram-size", "4M"]);
    let files = Arc::new(files);
    let threads: Vec<_> = (0..24)
        .map(|k| {
            let files = files.clone();
            let mnt = t.mnt.clone();
            std::thread::spawn(move || {
                let mut x = k as u64 * 7919 + 1;
                for _ in 0..60 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (x >> 60) as usize % files.len();
                    let data = &files[i];
                    let off = (x >> 20) as usize % data.len();
                    let len = ((x >> 8) as usize % 400_000).min(data.len() - off);
                    let mut f = fs::File::open(mnt.join(format!("f{i}"))).unwrap();
                    f.seek(SeekFrom::Start(off as u64)).unwrap();
                    let mut buf = vec![0u8; len];
                    f.read_exact(&mut buf).unwrap();
                    assert!(buf == data[off..off + len], "f{i} at {off}+{len}");
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    t.umount();
}

/// Runs `cat` as an unprivileged user (nobody) and returns its stderr on failure.
fn cat_as_nobody(path: &Path) -> Result<Vec<u8>, String> {
    let out = Command::new("cat")
        .arg(path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_kernel_enforces_origin_permissions_for_every_user() {
    let mut t = Mount::new();
    // Reachable by others: the temp dir is 0700.
    fs::set_permissions(t.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&t.origin, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&t.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(t.o("public"), b"everyone").unwrap();
    fs::write(t.o("secret"), b"root only").unwrap();
    fs::set_permissions(t.o("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(t.o("unreadable"), b"nobody").unwrap();
    fs::set_permissions(t.o("unreadable"), fs::Permissions::from_mode(0o000)).unwrap();
    t.mount(&["--allow-other"]);
    // Root reads the secret: now it is cached.
    assert_eq!(fs::read(t.m("secret")).unwrap(), b"root only");
    assert_eq!(cat_as_nobody(&t.m("public")).unwrap(), b"everyone");
    let e = cat_as_nobody(&t.m("secret")).unwrap_err();
    assert!(e.contains("Permission denied"), "{e}");
    let e = cat_as_nobody(&t.m("unreadable")).unwrap_err();
    assert!(e.contains("Permission denied"), "{e}");
    // Writes are refused with EROFS (the mount is ro: by the kernel).
    let e = fs::write(t.m("public"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(30), "EROFS");
    let e = fs::write(t.m("new-file"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(30), "EROFS");
    t.umount();
}

#[test]
fn mount_errors_are_clear_and_nonzero() {
    let t = Mount::new();
    let out = Command::new(common::STRATA)
        .args(["mount", "/definitely/not/here"])
        .arg(&t.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/definitely/not/here"));

    let out = t.try_mount(&["--cache-size", "lots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots"));

    let out = t.try_mount(&["-o", "bogus_option=1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_option"));

    let out = t.try_mount(&["--commit-interval", "5m"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("commit interval"));

    // Busy mountpoint, and a cache directory already in use.
    let mut first = Mount::new();
    first.mount(&[]);
    let out = Command::new(common::STRATA)
        .arg("mount")
        .arg(&first.origin)
        .arg(&first.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("busy"),
        "{:?}",
        out
    );
    let out = Command::new(common::STRATA)
        .arg("mount")
        .arg(&t.origin)
        .arg(&t.mnt)
        .arg("--cache-dir")
        .arg(&first.cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{:?}",
        out
    );
    // fsck refuses while mounted, with its own status (8), not damage's (1, 4).
    let out = Command::new(common::STRATA)
        .arg("fsck")
        .arg(&first.cache)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    // So does it for what is not a cache directory.
    for not_cache in [t.origin.as_path(), Path::new("/definitely/not/here")] {
        let out = Command::new(common::STRATA)
            .arg("fsck")
            .arg(not_cache)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(8), "{not_cache:?}");
    }
    first.umount();
    let out = Command::new(common::STRATA)
        .arg("fsck")
        .arg(&first.cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_cache_directory_keeps_the_block_size_it_was_created_with() {
    let mut t = Mount::new();
    let data = pattern(5, 3 * 65536 + 100);
    fs::write(t.o("f"), &data).unwrap();
    t.mount(&[]);
    assert_eq!(t.stats_reply()["block_size"], BS as u64);
    t.umount();
    fs::remove_dir_all(&t.cache).unwrap();

    // Made with 64 KiB blocks, mounted again without saying: still 64 KiB, and what it
    // cached is served from it.
    t.mount(&["--block-size", "64K", "--attr-ttl", "60s"]);
    assert_eq!(fs::read(t.m("f")).unwrap(), data);
    assert_eq!(t.stats_reply()["block_size"], 65536);
    t.umount();
    t.mount(&["--attr-ttl", "60s"]);
    assert_eq!(t.stats_reply()["block_size"], 65536);
    drop_page_cache();
    assert_eq!(fs::read(t.m("f")).unwrap(), data);
    assert_eq!(t.stat_u64("origin_requests"), 0, "{}", t.stats());
    t.umount();

    // Asking for another size is refused, with the size that works in the message.
    let out = t.try_mount(&["--block-size", "16K"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--block-size 65536"), "{err}");
}

#[test]
fn fstab_style_invocation_and_kill_9_recovery() {
    let mut t = Mount::new();
    fs::write(t.o("data"), pattern(11, 2_000_000)).unwrap();
    // `mount -t fuse.strata ORIGIN MNT -o ...` runs the mount.fuse3 helper (from
    // fuse3, which scripts/prereqs installs), which runs `strata ORIGIN MNT -o ...`.
    let bin_dir = Path::new(common::STRATA).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("mount.fuse3")
        .env("PATH", path)
        .arg(&t.origin)
        .arg(&t.mnt)
        .args(["-t", "strata", "-o"])
        .arg(format!(
            "rw,nodev,cache_dir={},attr_ttl=5s,ram_size=32M",
            t.cache.display()
        ))
        .output()
        .expect("mount.fuse3 (package fuse3; scripts/prereqs installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.mounted = true;
    assert_eq!(fs::read(t.m("data")).unwrap(), pattern(11, 2_000_000));
    assert!(eventually(Duration::from_secs(10), || t
        .stat_u64("disk_blocks")
        > 0));
    std::thread::sleep(Duration::from_millis(300)); // let the commit land
    // kill -9 the daemon, clear the dead mount, mount again: it recovers by itself.
    let pid = t.daemon_pid();
    kill(pid, "-9");
    assert!(eventually(Duration::from_secs(5), || !Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
    Command::new("umount")
        .arg("-l")
        .arg(&t.mnt)
        .status()
        .unwrap();
    t.mounted = false;
    t.mount(&[]);
    drop_page_cache();
    assert_eq!(fs::read(t.m("data")).unwrap(), pattern(11, 2_000_000));
    let s = t.stats();
    assert!(
        s["disk_hits"].as_u64().unwrap() > 0,
        "blocks committed before the kill are kept: {s}"
    );
    t.umount();
}

#[test]
fn foreground_mount_unmounts_cleanly_on_sigterm() {
    let t = Mount::new();
    fs::write(t.o("f"), pattern(21, 300_000)).unwrap();
    let mut child = Command::new(common::STRATA)
        .arg("mount")
        .arg("-f")
        .arg(&t.origin)
        .arg(&t.mnt)
        .arg("--cache-dir")
        .arg(&t.cache)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || fs::read(t.m("f")).is_ok()),
        "the foreground mount did not come up"
    );
    assert_eq!(fs::read(t.m("f")).unwrap(), pattern(21, 300_000));
    kill(child.id(), "-TERM");
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "exit {status}: {err}");
    assert!(err.contains("clean shutdown"), "{err}");
    assert!(fs::read(t.m("f")).is_err(), "still mounted after SIGTERM");
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

fn age(path: &Path, secs: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(secs);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

/// Fully cached, settled files are read by the kernel straight from the disk cache.
/// A version change must still reach new opens; a handle of the old version then
/// fails rather than pass old bytes off as new.
#[test]
fn passthrough_serves_settled_files_and_new_opens_still_see_changes() {
    if !common::kernel_has_passthrough() {
        return;
    }
    let mut t = Mount::new();
    let old = pattern(41, 1_500_000);
    fs::write(t.o("settled"), &old).unwrap();
    age(&t.o("settled"), 3600);
    fs::write(t.o("fresh"), pattern(42, 300_000)).unwrap();
    t.mount(&["--attr-ttl", "200ms", "--passthrough"]);
    // The first read goes through strata and verifies every block.
    assert_eq!(fs::read(t.m("settled")).unwrap(), old);
    assert_eq!(fs::read(t.m("fresh")).unwrap(), pattern(42, 300_000));
    assert!(eventually(Duration::from_secs(10), || t
        .stat_u64("inflight_fill_bytes")
        == 0));
    let reads_before = t.stat_u64("reads");
    drop_page_cache();
    assert_eq!(fs::read(t.m("settled")).unwrap(), old);
    assert_eq!(fs::read(t.m("fresh")).unwrap(), pattern(42, 300_000));
    let s = t.stats();
    assert_eq!(s["passthrough_opens"], 1, "only the settled file: {s}");
    assert!(
        s["reads"].as_u64().unwrap() > reads_before,
        "the fresh file is read through strata"
    );

    // Hold the settled file open (passthrough), change it in place at the origin.
    let mut held = fs::File::open(t.m("settled")).unwrap();
    let mut head = vec![0u8; 1000];
    held.read_exact(&mut head).unwrap();
    assert_eq!(head, old[..1000]);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(t.o("settled"))
            .unwrap();
        f.write_all_at(b"CHANGED IN PLACE", 0).unwrap();
    }
    let new = fs::read(t.o("settled")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        eventually(Duration::from_secs(5), || fs::read(t.m("settled"))
            .is_ok_and(|b| b == new)),
        "a new open must see the new version"
    );
    // The old handle reads no bytes of either version as if current: it is retired.
    let mut rest = Vec::new();
    match held.read_to_end(&mut rest) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(5), "{e}"),
        Ok(_) => assert_eq!(
            rest,
            old[1000..],
            "an old handle reads its own version only"
        ),
    }
    drop(held);
    t.umount();
}

/// The io_uring queues answer opens of settled, fully cached files with a backing
/// file, as the /dev/fuse session does: the kernel then reads them itself.
#[test]
fn uring_queues_hand_settled_files_to_the_kernel_by_passthrough() {
    if !common::kernel_has_passthrough() {
        return;
    }
    if !enable_fuse_uring() {
        eprintln!("skipped: this kernel has no FUSE over io_uring");
        return;
    }
    let mut t = Mount::new();
    let old = pattern(43, 1_200_000);
    fs::write(t.o("settled"), &old).unwrap();
    age(&t.o("settled"), 3600);
    t.mount(&["--uring", "--passthrough"]);
    assert_eq!(fs::read(t.m("settled")).unwrap(), old);
    assert!(eventually(Duration::from_secs(10), || t
        .stat_u64("inflight_fill_bytes")
        == 0));
    drop_page_cache();
    let reads_before = t.stat_u64("reads");
    // Two opens at once share one backing file.
    let a = fs::File::open(t.m("settled")).unwrap();
    let b = fs::File::open(t.m("settled")).unwrap();
    let mut got = Vec::new();
    for mut f in [a, b] {
        got.clear();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(got, old);
    }
    let s = t.stats();
    assert_eq!(s["passthrough_opens"], 2, "{s}");
    assert_eq!(
        s["reads"].as_u64().unwrap(),
        reads_before,
        "the kernel read it, not strata"
    );
    assert!(s["fuse_uring_requests"].as_u64().unwrap() > 0, "{s}");
    // Released (its backing id closed) and opened again: passthrough again, same bytes.
    assert_eq!(fs::read(t.m("settled")).unwrap(), old);
    assert_eq!(t.stats()["passthrough_opens"], 3);
    t.umount();
}

/// FUSE over io_uring: every request after INIT answered from the per-CPU queues,
/// with the same bytes, attributes and errors as through /dev/fuse.
#[test]
fn uring_queues_answer_with_the_same_bytes_attributes_and_errors() {
    if !enable_fuse_uring() {
        eprintln!("skipped: this kernel has no FUSE over io_uring");
        return;
    }
    let mut t = Mount::new();
    build_tree(&t.origin, 8, 300);
    t.mount(&["--uring", "--attr-ttl", "30s"]);
    let before = t.stat_u64("fuse_uring_requests");
    assert!(compare_tree(&t.origin, &t.mnt) > 300);
    // Reads at odd offsets and lengths, across block edges and past the end.
    let want = fs::read(t.o("large.bin")).unwrap();
    let mut f = fs::File::open(t.m("large.bin")).unwrap();
    for (off, len) in [
        (0, 1),
        (BS - 3, 7),
        (5 * BS + 1, 3 * BS),
        (want.len() - 10, 100),
    ] {
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(off as u64)).unwrap();
        let n = f.read(&mut buf).unwrap();
        let end = (off + len).min(want.len());
        assert_eq!(&buf[..n], &want[off..end], "read of {len} at {off}");
    }
    drop(f);
    // Errors as POSIX has them through any strata mount.
    let e = fs::metadata(t.m("no such file")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(2), "ENOENT");
    let e = fs::read_link(t.m("empty")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(22), "EINVAL: not a symlink");
    for e in [
        fs::write(t.m("new-file"), b"x").unwrap_err(),
        fs::OpenOptions::new()
            .write(true)
            .open(t.m("one byte"))
            .unwrap_err(),
        fs::create_dir(t.m("new-dir")).unwrap_err(),
        fs::remove_file(t.m("empty")).unwrap_err(),
        fs::rename(t.m("empty"), t.m("moved")).unwrap_err(),
        fs::set_permissions(t.m("empty"), fs::Permissions::from_mode(0o600)).unwrap_err(),
    ] {
        assert_eq!(e.raw_os_error(), Some(30), "EROFS: {e}");
    }
    let st = rustix::fs::statvfs(&t.mnt).unwrap();
    let so = rustix::fs::statvfs(&t.origin).unwrap();
    assert_eq!(
        (st.f_blocks, st.f_bsize),
        (so.f_blocks, so.f_bsize),
        "statfs"
    );
    let s = t.stats();
    let (fuse_us, engine_us) = (s["fuse_read_us"].as_u64(), s["read_us"].as_u64());
    assert!(engine_us.unwrap() > 0 && fuse_us >= engine_us, "{s}");
    // `strata stats` itself asks the mount's root for an extended attribute.
    let after = t.stat_u64("fuse_uring_requests");
    assert!(
        after > before + 300,
        "the queues answered {} requests",
        after - before
    );
    t.umount();
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

/// Expected events leave no warnings in the log: a mount, files opened by Python
/// (which asks each one isatty, an ioctl), an unmount. And `--read-only`, which
/// strata mounts are, is accepted.
#[test]
fn expected_events_log_no_warnings() {
    let mut t = Mount::new();
    fs::write(t.o("a.txt"), b"some text\n").unwrap();
    t.mount(&["--read-only"]);
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys\nfor p in sys.argv[1:]:\n    open(p).read()\n    open(p, 'rb').read()")
        .arg(t.m("a.txt"))
        .arg(t.m("a.txt"))
        .output()
        .expect("python3 (scripts/prereqs --tests installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.umount();
    let log = fs::read_to_string(t.cache.join("strata.log")).unwrap();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(noisy.is_empty(), "{noisy:#?}");
    // A mistyped flag is not answered with a hint at an internal one.
    let out = t.try_mount(&["--read-onyl"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--read-only") && !err.contains("ready"),
        "{err}"
    );
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
