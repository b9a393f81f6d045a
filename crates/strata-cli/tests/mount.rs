//! End to end: real strata mounts over temporary origins, every byte and attribute
//! compared with the origin.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Mount, compare_tree, drop_page_cache, enable_fuse_uring, eventually, kill, pattern};

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
    // Writes by someone the origin's permissions do not let write are refused by
    // the kernel; the origin is unchanged.
    let as_nobody = |cmd: &str| {
        let out = Command::new("sh")
            .args(["-c", cmd])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let refused = |e: &str| e.contains("Permission denied");
    let (ok, err) = as_nobody(&format!("echo x > '{}'", t.m("public").display()));
    assert!(!ok && refused(&err), "{err}");
    let (ok, err) = as_nobody(&format!("echo x > '{}'", t.m("new-file").display()));
    assert!(!ok && refused(&err), "{err}");
    assert_eq!(fs::read(t.o("public")).unwrap(), b"everyone");
    assert!(!t.o("new-file").exists());
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
    t.kill_9();
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
    // Changes answered by the queues reach the origin.
    fs::write(t.m("new-file"), b"x").unwrap();
    fs::create_dir(t.m("new-dir")).unwrap();
    fs::rename(t.m("new-file"), t.m("new-dir/moved")).unwrap();
    fs::set_permissions(t.m("new-dir/moved"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::read(t.o("new-dir/moved")).unwrap(), b"x");
    assert_eq!(
        fs::metadata(t.o("new-dir/moved"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    fs::remove_file(t.m("new-dir/moved")).unwrap();
    fs::remove_dir(t.m("new-dir")).unwrap();
    assert!(!t.o("new-dir").exists());
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
