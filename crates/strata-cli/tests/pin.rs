//! `strata pin`: pinned trees stay in the disk cache through eviction and remounts,
//! go once unpinned, and a pin larger than the cache is refused.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Mount, drop_page_cache, pattern};

fn strata(args: &[&str], path: &Path) -> std::process::Output {
    Command::new(common::STRATA)
        .args(args)
        .arg(path)
        .output()
        .unwrap()
}

/// Reads every file of `dir` and checks its bytes (seeded by name).
fn read_all(t: &Mount, dir: &str, files: &[(String, u64, usize)]) {
    for (name, seed, len) in files.iter().filter(|f| f.0.starts_with(dir)) {
        assert!(
            fs::read(t.m(name)).unwrap() == pattern(*seed, *len),
            "{name}"
        );
    }
}

#[test]
fn pinned_trees_stay_cached_through_eviction_and_remounts() {
    let mut t = Mount::new();
    let mut files = Vec::new();
    fs::create_dir_all(t.o("keep/sub")).unwrap();
    fs::create_dir_all(t.o("other")).unwrap();
    for i in 0..3u64 {
        files.push((format!("keep/f{i}"), i, 2_000_000));
    }
    files.push(("keep/sub/s".to_string(), 9, 300_000));
    for i in 0..10u64 {
        files.push((format!("other/g{i}"), 100 + i, 3_000_000));
    }
    for (name, seed, len) in &files {
        fs::write(t.o(name), pattern(*seed, *len)).unwrap();
    }
    let args = ["--cache-size", "16M", "--ram-size", "1M"];
    t.mount(&args);
    let out = strata(&["pin"], &t.m("keep"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flood = |t: &Mount| {
        // Twice the cache size of other files.
        read_all(t, "other", &files);
        drop_page_cache();
        read_all(t, "other", &files);
        drop_page_cache();
    };
    flood(&t);
    assert!(t.stat_u64("disk_evictions") > 0, "the flood must evict");
    let before = t.stat_u64("origin_requests");
    read_all(&t, "keep", &files);
    assert_eq!(
        t.stat_u64("origin_requests"),
        before,
        "pinned files were evicted"
    );

    // After a remount the pin is still there, and still holds.
    t.umount();
    t.mount(&args);
    let out = strata(&["pin", "--list"], &t.mnt);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("/keep"), "{listed}");
    flood(&t);
    let before = t.stat_u64("origin_requests");
    read_all(&t, "keep", &files);
    assert_eq!(
        t.stat_u64("origin_requests"),
        before,
        "pin lost at the remount"
    );

    // Unpinned, they are evicted like anything else.
    let out = strata(&["unpin"], &t.m("keep"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !strata(&["unpin"], &t.m("keep")).status.success(),
        "not pinned any more"
    );
    flood(&t);
    let before = t.stat_u64("origin_requests");
    read_all(&t, "keep", &files);
    assert!(
        t.stat_u64("origin_requests") > before,
        "unpinned files stayed"
    );

    // A pin that cannot fit is refused, and pins nothing.
    let out = strata(&["pin"], &t.mnt);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not fit") && err.contains("--cache-size"),
        "{err}"
    );
    let out = strata(&["pin", "--list"], &t.mnt);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    // Outside a strata mount: a clear error.
    let out = strata(&["pin"], &t.origin);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in a strata mount"));
    t.umount();
}
