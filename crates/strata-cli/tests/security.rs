//! Security: a private cache directory and control socket, refused when another user
//! owns them; names that cannot escape the origin; symlinks shown, not followed.

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

#[test]
fn the_cache_directory_and_control_socket_are_private() {
    let mut t = Mount::new();
    fs::write(t.o("f"), pattern(1, 300_000)).unwrap();
    // A cache directory left open to others is closed again.
    fs::create_dir_all(&t.cache).unwrap();
    fs::set_permissions(&t.cache, fs::Permissions::from_mode(0o777)).unwrap();
    t.mount(&[]);
    assert_eq!(fs::read(t.m("f")).unwrap(), pattern(1, 300_000));
    assert!(common::eventually(
        std::time::Duration::from_secs(10),
        || { t.stat_u64("inflight_fill_bytes") == 0 }
    ));
    assert_eq!(mode(&t.cache), 0o700, "cache directory");
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
