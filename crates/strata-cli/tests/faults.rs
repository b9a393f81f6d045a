//! Origin faults through real mounts: an sshfs origin whose server freezes (hangs) or
//! dies (vanishes), permission changes, and a directory replaced by a file.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mount, drop_clean_caches, eventually, pattern};

/// Reads a file in a child process with a time limit: a hung read must not hang the
/// test. Returns the bytes or the error text, and how long it took.
fn timed_read(path: &Path, limit: Duration) -> (Result<Vec<u8>, String>, Duration) {
    let t = Instant::now();
    // Output to a file: a pipe would fill and stall the reader.
    let out_path = std::env::temp_dir().join(format!("strata-faults-{}", std::process::id()));
    let out = fs::File::create(&out_path).unwrap();
    let mut child = Command::new("cat")
        .arg(path)
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let r = if status.success() {
                Ok(fs::read(&out_path).unwrap())
            } else {
                Err(err)
            };
            let _ = fs::remove_file(&out_path);
            return (r, t.elapsed());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(&out_path);
            return (Err("timed out".into()), t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_hung_or_vanished_sshfs_origin_still_serves_what_is_cached() {
    let _one = common::sshfs_lock();
    let mut t = Mount::new();
    let data = t.tmp.path().join("data");
    fs::create_dir_all(data.join("dir")).unwrap();
    fs::write(data.join("dir/cached"), pattern(1, 2_000_000)).unwrap();
    fs::write(data.join("dir/uncached"), pattern(2, 100_000)).unwrap();
    let sshfs = common::SshfsOrigin::up(&data, &t.origin);
    t.mount(&["--attr-ttl", "200ms", "--origin-timeout", "1s"]);
    assert_eq!(fs::read(t.m("dir/cached")).unwrap(), pattern(1, 2_000_000));
    assert_eq!(fs::read_dir(t.m("dir")).unwrap().count(), 2);
    assert!(eventually(Duration::from_secs(20), || t
        .stat_u64("inflight_fill_bytes")
        == 0));

    // The origin hangs: sshd frozen, the connection open but silent.
    sshfs.signal("STOP");
    std::thread::sleep(Duration::from_millis(300)); // past the TTL
    drop_clean_caches();
    let (r, took) = timed_read(&t.m("dir/cached"), Duration::from_secs(20));
    assert_eq!(
        r.unwrap(),
        pattern(1, 2_000_000),
        "cached data while the origin hangs"
    );
    assert!(
        took < Duration::from_secs(5),
        "served after the origin timeout: {took:?}"
    );
    let (r, took) = timed_read(&t.m("dir/uncached"), Duration::from_secs(20));
    assert!(r.is_err(), "uncached data cannot be served");
    assert!(
        took < Duration::from_secs(5),
        "an error, not a hang: {took:?}"
    );
    let out = Command::new("ls").arg(t.m("dir")).output().unwrap();
    assert!(
        out.status.success(),
        "a listing seen before stays available"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let s = t.stats();
    assert!(s["stale_served"].as_u64().unwrap() > 0, "{s}");

    // The origin vanishes: sshd killed.
    sshfs.signal("CONT");
    sshfs.signal("KILL");
    std::thread::sleep(Duration::from_millis(300));
    drop_clean_caches();
    let (r, took) = timed_read(&t.m("dir/cached"), Duration::from_secs(30));
    assert_eq!(
        r.unwrap(),
        pattern(1, 2_000_000),
        "cached data with the origin gone"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (r, _) = timed_read(&t.m("dir/uncached"), Duration::from_secs(30));
    assert!(r.is_err());
    t.umount();
    drop(sshfs);
}

#[test]
fn permission_changes_and_a_directory_replaced_by_a_file() {
    let mut t = Mount::new();
    fs::set_permissions(t.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&t.origin, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&t.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(t.o("doc"), b"readable for now").unwrap();
    fs::create_dir(t.o("d")).unwrap();
    fs::write(t.o("d/inner"), b"inside").unwrap();
    t.mount(&["--attr-ttl", "200ms", "--allow-other"]);
    let cat_nobody = |p: &Path| {
        Command::new("cat")
            .arg(p)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    assert!(cat_nobody(&t.m("doc")).status.success());
    assert_eq!(fs::read(t.m("d/inner")).unwrap(), b"inside");

    // Permissions taken away at the origin: enforced through the mount once the TTL
    // has passed, although the data is cached.
    fs::set_permissions(t.o("doc"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(eventually(Duration::from_secs(3), || !cat_nobody(
        &t.m("doc")
    )
    .status
    .success()));
    let out = cat_nobody(&t.m("doc"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));

    // A directory replaced by a file.
    fs::remove_dir_all(t.o("d")).unwrap();
    fs::write(t.o("d"), b"now a file").unwrap();
    assert!(eventually(Duration::from_secs(3), || {
        fs::read(t.m("d")).is_ok_and(|b| b == b"now a file")
    }));
    let e = fs::read(t.m("d/inner")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(20), "ENOTDIR: {e}");
    t.umount();
}
