//! Security: a private cache directory and control socket, refused when another user
//! owns them or can write to them; links planted in a cache directory never followed;
//! a directory that is not a strata cache never written into; `strata umount` only
//! for strata mounts; names that cannot escape the origin; symlinks shown, not
//! followed.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use common::{Mount, pattern};

fn mode(p: &std::path::Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o777
}

#[test]
fn a_cache_directory_of_another_user_is_refused() {
    let t = Mount::new();
    fs::create_dir_all(&t.cache).unwrap();
    rustix::fs::chown(
        &t.cache,
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .unwrap();
    let out = t.try_mount(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("owned by uid 65534"), "{err}");
}

/// Files a local user could point links at: each must keep its bytes.
fn victims(t: &Mount) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = t.tmp.path().join("victims");
    fs::create_dir_all(&dir).unwrap();
    ["passwd", "index", "log", "origin", "lock", "object", "sock"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = dir.join(n);
            let bytes = pattern(100 + i as u64, 4000);
            fs::write(&p, &bytes).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Plants links to the victims where strata keeps its own files.
fn plant(cache: &std::path::Path, v: &[(std::path::PathBuf, Vec<u8>)]) {
    fs::create_dir_all(cache.join("objects/01")).unwrap();
    let names = [
        "CACHEDIR.TAG",
        "index.log",
        "strata.log",
        "origin",
        "lock",
        "objects/01/0000000000000001",
        "control.sock",
    ];
    for (name, (target, _)) in names.iter().zip(v) {
        symlink(target, cache.join(name)).unwrap();
    }
}

fn unchanged(v: &[(std::path::PathBuf, Vec<u8>)]) {
    for (p, bytes) in v {
        assert_eq!(
            &fs::read(p).unwrap(),
            bytes,
            "{p:?} was written through a planted link"
        );
    }
}

#[test]
fn a_cache_directory_others_can_write_is_refused_and_left_as_it_is() {
    let t = Mount::new();
    fs::write(t.o("f"), pattern(1, 300_000)).unwrap();
    let v = victims(&t);
    // A sticky, world-writable directory (as /var/tmp/x or /dev/shm/x), where
    // another user planted links before root mounts.
    fs::create_dir_all(&t.cache).unwrap();
    plant(&t.cache, &v);
    fs::set_permissions(&t.cache, fs::Permissions::from_mode(0o1777)).unwrap();
    let out = t.try_mount(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("can be written by other users"), "{err}");
    assert!(err.contains("chmod go-w"), "says what to do: {err}");
    unchanged(&v);
    assert_eq!(
        fs::symlink_metadata(&t.cache).unwrap().mode() & 0o7777,
        0o1777,
        "the mode of a directory strata did not make is never changed"
    );
    // Group-writable is refused too.
    fs::set_permissions(&t.cache, fs::Permissions::from_mode(0o770)).unwrap();
    assert!(!t.try_mount(&[]).status.success());
    unchanged(&v);
}

#[test]
fn links_planted_in_a_cache_directory_are_never_followed() {
    let mut t = Mount::new();
    fs::write(t.o("f"), pattern(1, 300_000)).unwrap();
    let v = victims(&t);
    // A real cache, private to root, then links planted in it (as by someone who
    // could write there once): every one is refused or ignored, never followed.
    t.mount(&[]);
    assert_eq!(fs::read(t.m("f")).unwrap(), pattern(1, 300_000));
    t.umount();
    for name in ["index.log", "strata.log", "origin", "lock", "control.sock"] {
        let _ = fs::remove_file(t.cache.join(name));
    }
    fs::remove_file(t.cache.join("CACHEDIR.TAG")).unwrap();
    let _ = fs::remove_dir_all(t.cache.join("objects"));
    plant(&t.cache, &v);
    let out = t.try_mount(&[]);
    assert!(
        !out.status.success(),
        "a cache directory with links where its files belong"
    );
    unchanged(&v);
    // With its own marker back, the links at its index are refused by name.
    fs::remove_file(t.cache.join("CACHEDIR.TAG")).unwrap();
    fs::write(t.cache.join("CACHEDIR.TAG"), marker()).unwrap();
    let out = t.try_mount(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symbolic link"), "{err}");
    unchanged(&v);
    // Only the object file's link left: the mount works, reads are right, and the
    // link is not written through.
    for name in ["index.log", "strata.log", "origin", "lock", "control.sock"] {
        fs::remove_file(t.cache.join(name)).unwrap();
    }
    t.mount(&[]);
    for _ in 0..3 {
        assert_eq!(fs::read(t.m("f")).unwrap(), pattern(1, 300_000));
        common::drop_page_cache();
    }
    t.umount();
    unchanged(&v);
}

/// strata's marker, as a mount writes it.
fn marker() -> Vec<u8> {
    let t = Mount::new();
    let mut t = t;
    t.mount(&[]);
    t.umount();
    fs::read(t.cache.join("CACHEDIR.TAG")).unwrap()
}

#[test]
fn a_directory_that_is_not_a_strata_cache_is_never_written_into() {
    let t = Mount::new();
    fs::write(t.o("f"), pattern(1, 300_000)).unwrap();
    fs::create_dir_all(&t.cache).unwrap();
    fs::set_permissions(&t.cache, fs::Permissions::from_mode(0o700)).unwrap();
    let mine = [
        ("origin", pattern(7, 100)),
        ("index.log", pattern(8, 100)),
        ("lock", pattern(9, 100)),
        ("notes.txt", pattern(10, 100)),
    ];
    for (n, b) in &mine {
        fs::write(t.cache.join(n), b).unwrap();
    }
    let out = t.try_mount(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a strata cache directory"), "{err}");
    for (n, b) in &mine {
        assert_eq!(&fs::read(t.cache.join(n)).unwrap(), b, "{n}");
    }
    let names: Vec<_> = fs::read_dir(&t.cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), mine.len(), "nothing added: {names:?}");
    // fsck refuses it too, with its own status.
    let out = std::process::Command::new(common::STRATA)
        .arg("fsck")
        .arg(&t.cache)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn strata_umount_unmounts_only_strata_mounts() {
    let mut t = Mount::new();
    let tm = t.tmp.path().join("tmpfs");
    fs::create_dir_all(&tm).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&tm)
        .status()
        .unwrap();
    assert!(ok.success());
    fs::write(tm.join("keep"), b"tmpfs data").unwrap();
    let umount = |p: &std::path::Path| {
        std::process::Command::new(common::STRATA)
            .arg("umount")
            .arg(p)
            .output()
            .unwrap()
    };
    let out = umount(&tm);
    let kept = fs::read(tm.join("keep"));
    let _ = std::process::Command::new("umount").arg(&tm).status();
    assert_eq!(kept.unwrap(), b"tmpfs data", "the tmpfs is still mounted");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a strata mount") && err.contains("tmpfs"),
        "{err}"
    );
    // A strata mount shows as fuse.strata; read-only with --read-only.
    for ro in [false, true] {
        t.mount(if ro { &["--read-only"][..] } else { &[] });
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(t.mnt.to_str().unwrap()))
            .expect("the mount in mountinfo")
            .to_string();
        assert!(line.contains(" - fuse.strata "), "{line}");
        let flags = line.split(' ').nth(5).unwrap().to_string();
        let want = if ro { "ro" } else { "rw" };
        assert!(flags.split(',').any(|o| o == want), "{line}");
        t.umount();
    }
    // A second umount: "not mounted".
    let out = umount(&t.mnt);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not mounted"), "{err}");
}

#[test]
fn the_cache_directory_and_control_socket_are_private() {
    let mut t = Mount::new();
    fs::write(t.o("f"), pattern(1, 300_000)).unwrap();
    // A cache directory readable by others is used as it is (its files are 0600).
    fs::create_dir_all(&t.cache).unwrap();
    fs::set_permissions(&t.cache, fs::Permissions::from_mode(0o755)).unwrap();
    t.mount(&[]);
    assert_eq!(fs::read(t.m("f")).unwrap(), pattern(1, 300_000));
    assert!(common::eventually(
        std::time::Duration::from_secs(10),
        || { t.stat_u64("inflight_fill_bytes") == 0 }
    ));
    assert_eq!(
        mode(&t.cache),
        0o755,
        "a directory strata did not make keeps its mode"
    );
    assert_eq!(mode(&t.cache.join("control.sock")), 0o600, "control socket");
    assert_eq!(mode(&t.cache.join("index.log")), 0o600, "index");
    assert_eq!(mode(&t.cache.join("strata.log")), 0o600, "log");
    let mut data_files = 0;
    for d in fs::read_dir(t.cache.join("objects")).unwrap() {
        let d = d.unwrap().path();
        assert_eq!(mode(&d), 0o700, "{d:?}");
        for f in fs::read_dir(&d).unwrap() {
            assert_eq!(mode(&f.unwrap().path()), 0o600);
            data_files += 1;
        }
    }
    assert!(data_files > 0);
    t.umount();
}

#[test]
fn names_of_any_bytes_stay_inside_the_origin() {
    let mut t = Mount::new();
    let outside = t.tmp.path().join("outside-secret");
    fs::write(&outside, b"must not be served by strata").unwrap();
    let names: Vec<&[u8]> = vec![
        b"...",
        b"..\x01",
        b"line\nbreak",
        b"tab\there",
        b"\x7fdel",
        b"bad-\xff-utf8",
        b" leading space",
        b"-dash",
        b"\x1b[31mansi",
    ];
    for (i, n) in names.iter().enumerate() {
        fs::write(t.o(OsStr::from_bytes(n)), pattern(i as u64, 1000 + i)).unwrap();
    }
    symlink("../outside-secret", t.o("up")).unwrap();
    symlink(&outside, t.o("abs")).unwrap();
    fs::create_dir(t.o("d")).unwrap();
    symlink("..", t.o("d/parent")).unwrap();
    t.mount(&[]);
    for (i, n) in names.iter().enumerate() {
        let got = fs::read(t.m(OsStr::from_bytes(n))).unwrap();
        assert_eq!(
            got,
            pattern(i as u64, 1000 + i),
            "{:?}",
            OsStr::from_bytes(n)
        );
    }
    let mut listed: Vec<Vec<u8>> = fs::read_dir(&t.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    listed.sort();
    let mut want: Vec<Vec<u8>> = fs::read_dir(&t.origin)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    want.sort();
    assert_eq!(listed, want);
    // Symlinks are shown as they are; strata never follows them itself.
    assert_eq!(
        fs::read_link(t.m("up")).unwrap(),
        std::path::Path::new("../outside-secret")
    );
    assert_eq!(fs::read_link(t.m("abs")).unwrap(), outside);
    assert!(
        fs::symlink_metadata(t.m("d/parent"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // No origin read ever returned the outside file's bytes: every byte strata read
    // came from files inside the origin.
    let s = t.stats();
    let inside: u64 = names.iter().enumerate().map(|(i, _)| 1000 + i as u64).sum();
    assert_eq!(s["origin_bytes"].as_u64().unwrap(), inside, "{s}");
    t.umount();
}
