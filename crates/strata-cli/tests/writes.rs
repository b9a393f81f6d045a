//! Writes through a mount (write-through): each change is at the origin when the
//! call returns, reads through the mount equal the origin byte for byte, a random
//! mix of operations (with the origin also changed from outside) matches a model,
//! and `--read-only` refuses every change.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn same_tree(a: &Path, b: &Path) {
    let list = |d: &Path| {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(a), list(b), "listing of {}", a.display());
    for name in list(a) {
        let (pa, pb) = (a.join(&name), b.join(&name));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{name}");
        assert_eq!(ma.mode(), mb.mode(), "mode of {name}");
        if ma.is_dir() {
            same_tree(&pa, &pb);
        } else if ma.is_file() {
            assert_eq!(
                fs::read(&pa).unwrap(),
                fs::read(&pb).unwrap(),
                "bytes of {name}"
            );
        } else if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
        }
    }
}

#[test]
fn every_kind_of_change_reaches_the_origin() {
    let mut t = Mount::new();
    fs::write(t.o("old"), pattern(1, 300_000)).unwrap();
    t.mount(&["--attr-ttl", "30s"]);
    // Cached first, so the writes below must bring the cache along.
    assert_eq!(fs::read(t.m("old")).unwrap(), pattern(1, 300_000));

    // Overwrite in the middle, append, read back through the same handle.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.m("old"))
        .unwrap();
    f.seek(SeekFrom::Start(50_000)).unwrap();
    f.write_all(&pattern(2, 40_000)).unwrap();
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"appended").unwrap();
    f.sync_all().unwrap();
    let mut want = pattern(1, 300_000);
    want[50_000..90_000].copy_from_slice(&pattern(2, 40_000));
    want.extend_from_slice(b"appended");
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back, want);
    drop(f);
    assert_eq!(fs::read(t.o("old")).unwrap(), want);
    drop_page_cache();
    assert_eq!(fs::read(t.m("old")).unwrap(), want);

    // New files, O_TRUNC, truncate, directories, links, renames, modes, times.
    fs::write(t.m("new"), b"fresh").unwrap();
    fs::write(t.m("old"), b"short now").unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(t.m("new"))
        .unwrap()
        .set_len(2)
        .unwrap();
    fs::create_dir(t.m("dir")).unwrap();
    fs::create_dir(t.m("dir/sub")).unwrap();
    fs::write(t.m("dir/sub/deep"), b"deep").unwrap();
    std::os::unix::fs::symlink("../old", t.m("dir/link")).unwrap();
    fs::hard_link(t.m("new"), t.m("dir/hard")).unwrap();
    fs::rename(t.m("dir/sub"), t.m("dir/moved")).unwrap();
    fs::set_permissions(t.m("new"), fs::Permissions::from_mode(0o600)).unwrap();
    let ts = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(t.m("new"))
        .unwrap()
        .set_modified(ts)
        .unwrap();
    Command::new("mkfifo")
        .arg(t.m("dir/fifo"))
        .status()
        .unwrap();
    assert_eq!(fs::read(t.m("dir/moved/deep")).unwrap(), b"deep");
    assert!(fs::metadata(t.m("dir/sub")).is_err());
    assert_eq!(fs::metadata(t.m("new")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(t.o("new")).unwrap().modified().unwrap(),
        ts,
        "mtime at the origin"
    );
    same_tree(&t.mnt, &t.origin);

    // xattrs.
    rustix::fs::setxattr(
        t.m("new").as_path(),
        "user.note",
        b"hello",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(t.o("new").as_path(), "user.note", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"hello");
    let n = rustix::fs::getxattr(t.m("new").as_path(), "user.note", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"hello");
    rustix::fs::removexattr(t.m("new").as_path(), "user.note").unwrap();
    assert!(rustix::fs::getxattr(t.o("new").as_path(), "user.note", &mut buf[..]).is_err());

    // Removals.
    fs::remove_file(t.m("dir/hard")).unwrap();
    fs::remove_file(t.m("dir/link")).unwrap();
    fs::remove_file(t.m("dir/fifo")).unwrap();
    fs::remove_dir_all(t.m("dir")).unwrap();
    assert!(!t.o("dir").exists());
    same_tree(&t.mnt, &t.origin);
    let s = t.stats();
    assert!(s["writes"].as_u64().unwrap() > 0, "{s}");
    t.umount();
}

#[test]
fn shared_writable_mappings_reach_the_origin() {
    let mut t = Mount::new();
    fs::write(t.o("m"), vec![b'a'; 3 * 4096]).unwrap();
    t.mount(&[]);
    // A shared mapping written through, then synced (msync via the shell's dd is
    // not a mapping: python's mmap is).
    let script = format!(
        "import mmap\nf=open('{}','r+b')\nm=mmap.mmap(f.fileno(),0)\nm[4096:4101]=b'HELLO'\nm.flush()\nm.close()\nf.close()\n",
        t.m("m").display()
    );
    let ok = Command::new("python3").args(["-c", &script]).status();
    if !ok.is_ok_and(|s| s.success()) {
        eprintln!("skipped: python3 not available");
        t.umount();
        return;
    }
    let mut want = vec![b'a'; 3 * 4096];
    want[4096..4101].copy_from_slice(b"HELLO");
    assert_eq!(fs::read(t.o("m")).unwrap(), want);
    drop_page_cache();
    assert_eq!(fs::read(t.m("m")).unwrap(), want);
    t.umount();
}

#[test]
fn random_operations_match_a_model_and_the_origin() {
    // fsx in small: writes, truncates, reads across a few files, with the origin
    // changed from outside now and then; after each step every file read through
    // the mount equals the model, and the model equals the origin.
    let mut t = Mount::new();
    const FILES: usize = 4;
    let mut model: Vec<Vec<u8>> = (0..FILES).map(|i| pattern(i as u64, 50_000)).collect();
    for (i, m) in model.iter().enumerate() {
        fs::write(t.o(format!("f{i}")), m).unwrap();
    }
    // A short TTL, so that changes from outside show within the test.
    t.mount(&["--attr-ttl", "50ms"]);
    let steps: u64 = std::env::var("STRATA_FSX_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    for step in 0..steps {
        let i = rnd(FILES as u64) as usize;
        let name = format!("f{i}");
        match rnd(10) {
            0..=4 => {
                let off = rnd(120_000) as usize;
                let len = 1 + rnd(40_000) as usize;
                let data = pattern(step + 100, len);
                let mut f = fs::OpenOptions::new().write(true).open(t.m(&name)).unwrap();
                f.seek(SeekFrom::Start(off as u64)).unwrap();
                f.write_all(&data).unwrap();
                let m = &mut model[i];
                if m.len() < off + len {
                    m.resize(off + len, 0);
                }
                m[off..off + len].copy_from_slice(&data);
            }
            5 => {
                let len = rnd(120_000);
                fs::OpenOptions::new()
                    .write(true)
                    .open(t.m(&name))
                    .unwrap()
                    .set_len(len)
                    .unwrap();
                model[i].resize(len as usize, 0);
            }
            6 => {
                // From outside: the origin changes behind the mount.
                let data = pattern(step + 7000, 1 + rnd(60_000) as usize);
                fs::write(t.o(&name), &data).unwrap();
                model[i] = data;
                // Within the trust time the mount may still show the old version.
                std::thread::sleep(Duration::from_millis(120));
            }
            _ => {}
        }
        let got = fs::read(t.m(&name)).unwrap();
        assert!(
            got == model[i],
            "step {step}: f{i} through the mount differs from the model"
        );
        assert_eq!(
            fs::read(t.o(&name)).unwrap(),
            model[i],
            "step {step}: origin"
        );
    }
    drop_page_cache();
    for (i, m) in model.iter().enumerate() {
        assert_eq!(&fs::read(t.m(format!("f{i}"))).unwrap(), m);
    }
    t.umount();
}

#[test]
fn a_read_only_mount_refuses_every_change() {
    let mut t = Mount::new();
    fs::write(t.o("f"), b"x").unwrap();
    t.mount(&["--read-only"]);
    for e in [
        fs::write(t.m("new"), b"x").unwrap_err(),
        fs::OpenOptions::new()
            .write(true)
            .open(t.m("f"))
            .unwrap_err(),
        fs::create_dir(t.m("d")).unwrap_err(),
        fs::remove_file(t.m("f")).unwrap_err(),
        fs::rename(t.m("f"), t.m("g")).unwrap_err(),
        fs::set_permissions(t.m("f"), fs::Permissions::from_mode(0o600)).unwrap_err(),
    ] {
        assert_eq!(e.raw_os_error(), Some(30), "EROFS: {e}");
    }
    assert_eq!(fs::read(t.o("f")).unwrap(), b"x");
    t.umount();
}

#[test]
fn o_direct_bypasses_the_cache_both_ways() {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    #[repr(align(4096))]
    struct Page([u8; 8192]);
    let mut t = Mount::new();
    fs::write(t.o("d"), pattern(1, 8192)).unwrap();
    t.mount(&["--attr-ttl", "1h"]);
    // Cached, and trusted for an hour.
    assert_eq!(fs::read(t.m("d")).unwrap(), pattern(1, 8192));
    // Changed behind the mount: a cached read still sees the old bytes, an
    // O_DIRECT read the origin's.
    fs::write(t.o("d"), pattern(2, 8192)).unwrap();
    let direct = rustix::fs::OFlags::DIRECT.bits() as i32;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(direct)
        .open(t.m("d"))
        .unwrap();
    let mut buf = Box::new(Page([0; 8192]));
    assert_eq!(f.read_at(&mut buf.0, 0).unwrap(), 8192);
    assert_eq!(buf.0.to_vec(), pattern(2, 8192));
    // An O_DIRECT write reaches the origin; cached reads see it after.
    buf.0.copy_from_slice(&pattern(3, 8192));
    f.write_all_at(&buf.0, 0).unwrap();
    drop(f);
    assert_eq!(fs::read(t.o("d")).unwrap(), pattern(3, 8192));
    drop_page_cache();
    assert_eq!(fs::read(t.m("d")).unwrap(), pattern(3, 8192));
    t.umount();
}

#[test]
fn the_origins_refusals_reach_the_writer() {
    use std::os::unix::fs::FileExt;
    let mut t = Mount::new();
    // A full origin: a small tmpfs.
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs"])
        .arg(&t.origin)
        .status()
        .unwrap();
    assert!(ok.success());
    fs::create_dir(t.origin.join("ro")).unwrap();
    t.mount(&[]);
    let f = fs::File::create(t.m("big")).unwrap();
    let err = (0..64)
        .find_map(|i| f.write_all_at(&[7u8; 65536], i * 65536).err())
        .expect("a 4 MiB write into a 256 KiB origin fails");
    assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
    drop(f);
    // What the origin holds is what reads through the mount give.
    drop_page_cache();
    assert_eq!(fs::read(t.m("big")).unwrap(), fs::read(t.o("big")).unwrap());
    fs::remove_file(t.m("big")).unwrap();
    // A directory of the origin mounted read-only: EROFS from the origin.
    let ro = t.o("ro");
    assert!(
        Command::new("mount")
            .arg("--bind")
            .arg(&ro)
            .arg(&ro)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&ro)
            .status()
            .unwrap()
            .success()
    );
    let err = fs::write(t.m("ro/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS: {err}");
    let s = t.stats();
    assert!(s["write_errors"].as_u64().unwrap() >= 2, "{s}");
    t.umount();
    let _ = Command::new("umount").arg(&ro).status();
    let _ = Command::new("umount").arg(&t.origin).status();
}
