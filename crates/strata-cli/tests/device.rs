//! The cache directory on a real, small filesystem (a loop-mounted ext4 image) that
//! fills up, then dies under a live mount (EXT4_IOC_SHUTDOWN: every I/O fails, as on a
//! failing disk). Reads keep working from the origin, fills stop, the stats say why,
//! and after the device comes back nothing in the cache is corrupted.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Mount, drop_page_cache, eventually, pattern};

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_all_correct(t: &Mount, n: u64) {
    for i in 0..n {
        let want = fs::read(t.o(format!("f{i}"))).unwrap();
        let got = fs::read(t.m(format!("f{i}"))).unwrap();
        assert!(got == want, "f{i} differs");
    }
}

/// Makes every I/O on the filesystem at `dir` fail (the ioctl xfstests call godown).
fn shut_down(dir: &Path) {
    let py = format!(
        "import fcntl,os,struct; fd=os.open('{}', os.O_RDONLY); \
         fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 2))",
        dir.display()
    );
    sh("python3", &["-c", &py]);
}

#[test]
fn a_small_cache_filesystem_fills_then_fails_under_a_live_mount() {
    let mut t = Mount::new();
    let img = t.tmp.path().join("cache.img");
    let fsdir = t.tmp.path().join("cachefs");
    fs::create_dir_all(&fsdir).unwrap();
    sh("truncate", &["-s", "64M", img.to_str().unwrap()]);
    sh("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
    sh(
        "mount",
        &["-o", "loop", img.to_str().unwrap(), fsdir.to_str().unwrap()],
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(fsdir.clone());
    t.cache = fsdir.join("cache");

    const N: u64 = 24;
    for i in 0..N {
        fs::write(t.o(format!("f{i}")), pattern(i, 5_000_000)).unwrap();
    }
    // 120 MB of data, a 64 MB cache filesystem: culling and stopping must hold it.
    t.mount(&[
        "--ram-size",
        "1M",
        "--bstop",
        "10",
        "--bcull",
        "20",
        "--brun",
        "30",
    ]);
    for _ in 0..2 {
        read_all_correct(&t, N);
        eventually(Duration::from_secs(30), || {
            t.stat_u64("inflight_fill_bytes") == 0
        });
    }
    let s = t.stats();
    assert!(
        s["disk_culled"].as_u64().unwrap() + s["disk_refused_space"].as_u64().unwrap() > 0,
        "the small filesystem made the tier cull or stop: {s}"
    );
    let st = rustix::fs::statvfs(&fsdir).unwrap();
    let free = st.f_bavail as f64 / st.f_blocks as f64 * 100.0;
    assert!(
        free >= 5.0,
        "the cache filesystem kept free space: {free:.1}%"
    );

    // The device dies under the live mount.
    shut_down(&fsdir);
    drop_page_cache();
    read_all_correct(&t, N);
    drop_page_cache();
    read_all_correct(&t, N);
    let s = t.stats();
    assert!(
        s["disk_read_errors"].as_u64().unwrap() + s["disk_write_errors"].as_u64().unwrap() > 0,
        "the stats say the cache device fails: {s}"
    );
    t.umount();

    // The device comes back: what is cached is intact.
    sh("umount", &[fsdir.to_str().unwrap()]);
    sh(
        "mount",
        &["-o", "loop", img.to_str().unwrap(), fsdir.to_str().unwrap()],
    );
    t.mount(&["--ram-size", "1M"]);
    drop_page_cache();
    read_all_correct(&t, N);
    let s = t.stats();
    assert_eq!(s["checksum_failures"], 0, "nothing corrupted: {s}");
    assert!(
        s["disk_hits"].as_u64().unwrap() > 0,
        "the cache survived: {s}"
    );
    t.umount();
}
