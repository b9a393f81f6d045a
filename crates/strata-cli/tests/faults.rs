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

/// Waits for a child with a time limit; kills it past the limit. Its status and
/// stderr, or None if it was killed.
fn wait_limited(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Some((status, err));
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
    let r = match wait_limited(&mut child, limit) {
        Some((status, _)) if status.success() => Ok(fs::read(&out_path).unwrap()),
        Some((_, err)) => Err(err),
        None => Err("timed out".into()),
    };
    let _ = fs::remove_file(&out_path);
    (r, t.elapsed())
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

/// Runs `strata mount` with a time limit: a mount that hangs on its origin fails the
/// test instead of hanging it.
fn mount_within(t: &mut Mount, args: &[&str], limit: Duration) {
    let mut child = Command::new(common::STRATA)
        .arg("mount")
        .arg(&t.origin)
        .arg(&t.mnt)
        .arg("--cache-dir")
        .arg(&t.cache)
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    match wait_limited(&mut child, limit) {
        Some((status, err)) => {
            t.mounted = status.success();
            assert!(status.success(), "strata mount failed: {err}");
        }
        None => panic!("strata mount still hung on its origin after {limit:?}"),
    }
}

/// The daemon's log says the origin could not be reached (at mount time, or at the
/// first request that needed it, when the kernel still had the origin's root cached).
fn log_says_unreachable(t: &Mount) -> bool {
    let log = fs::read_to_string(t.cache.join("strata.log")).unwrap_or_default();
    log.contains("did not answer at mount time") || log.contains("the origin cannot be reached")
}

/// A mount made while the origin hangs, or after it died, comes up offline and serves
/// what it confirmed before, and nothing else; once the origin answers again it is
/// checked again.
#[test]
fn a_mount_comes_up_offline_when_the_origin_hangs_or_is_gone() {
    let _one = common::sshfs_lock();
    let mut t = Mount::new();
    let data = t.tmp.path().join("data");
    fs::create_dir_all(data.join("dir")).unwrap();
    fs::write(data.join("dir/cached"), pattern(1, 2_000_000)).unwrap();
    fs::write(data.join("dir/uncached"), pattern(2, 100_000)).unwrap();
    fs::write(data.join("top"), b"top v1").unwrap();
    let sshfs = common::SshfsOrigin::up(&data, &t.origin);
    let args = ["--attr-ttl", "200ms", "--origin-timeout", "1s"];
    t.mount(&args);
    assert_eq!(fs::read(t.m("dir/cached")).unwrap(), pattern(1, 2_000_000));
    assert_eq!(fs::read_dir(t.m("dir")).unwrap().count(), 2);
    assert_eq!(fs::read(t.m("top")).unwrap(), b"top v1");
    assert!(eventually(Duration::from_secs(20), || t
        .stat_u64("inflight_fill_bytes")
        == 0));
    t.umount();

    let check_offline = |t: &Mount| {
        let (r, took) = timed_read(&t.m("dir/cached"), Duration::from_secs(20));
        assert_eq!(r.unwrap(), pattern(1, 2_000_000), "cached data, offline");
        assert!(took < Duration::from_secs(10), "{took:?}");
        let out = Command::new("ls").arg(t.m("dir")).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
        let (r, _) = timed_read(&t.m("dir/uncached"), Duration::from_secs(20));
        assert!(r.is_err(), "never cached: not invented");
        assert!(t.stat_u64("stale_served") > 0);
        assert!(log_says_unreachable(t), "a warning in the log");
    };

    // Hung: sshd frozen, sshfs's own caches dropped.
    sshfs.signal("STOP");
    std::thread::sleep(Duration::from_millis(300));
    drop_clean_caches();
    mount_within(&mut t, &args, Duration::from_secs(30));
    check_offline(&t);
    // It answers again: checked again, and a change there is seen.
    fs::write(data.join("top"), b"top v2, longer").unwrap();
    sshfs.signal("CONT");
    assert!(
        eventually(Duration::from_secs(40), || fs::read(t.m("top"))
            .is_ok_and(|b| b == b"top v2, longer")),
        "the origin is checked again once it answers"
    );
    t.umount();

    // Gone: sshd killed.
    sshfs.signal("KILL");
    std::thread::sleep(Duration::from_millis(300));
    drop_clean_caches();
    mount_within(&mut t, &args, Duration::from_secs(30));
    check_offline(&t);
    t.umount();
    drop(sshfs);
}
