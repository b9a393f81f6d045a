//! The POSIX filesystem test suite (pjdfstest, its Rust port) through a mount: every
//! test that passes on the origin directory itself passes through the mount
//! (write-through). scripts/prereqs installs it and the user `tests` it switches to.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// The suite's configuration: the two users it switches to, naps longer than the
/// timestamp granularity of ext4's coarse clock.
const CONFIG: &str = r#"
[features]
posix_fallocate = {}

[settings]
naptime = 0.01
allow_remount = false
expected_failures = ["utimensat::y2038"]

[dummy_auth]
entries = [
   ["nobody", "nogroup"],
   ["tests", "tests"],
]
"#;

/// Runs the suite in `dir`; returns the tests that passed and those that failed.
fn run(dir: &Path, config: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new("pjdfstest")
        .arg("-c")
        .arg(config)
        .arg("-p")
        .arg(dir)
        .current_dir(dir)
        .output()
        .expect("pjdfstest (scripts/prereqs --tests installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut ok, mut failed) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.last()) {
            (Some(name), Some("ok")) => {
                ok.insert(name.to_string());
            }
            (Some(name), Some("FAILED")) => {
                failed.insert(name.to_string());
            }
            _ => {}
        }
    }
    assert!(!ok.is_empty(), "pjdfstest ran nothing: {text}");
    (ok, failed)
}

#[test]
fn the_posix_suite_passes_through_the_mount_as_on_the_origin() {
    let mut t = Mount::new();
    for p in [t.tmp.path(), t.origin.as_path(), t.mnt.as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = t.tmp.path().join("pjdfstest.toml");
    fs::write(&config, CONFIG).unwrap();
    let plain = t.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o755)).unwrap();
    let (base, base_failed) = run(&plain, &config);

    t.mount(&["--allow-other"]);
    let (through, failed) = run(&t.mnt, &config);
    t.umount();
    // LINK_MAX is unknown through FUSE (pathconf), so that one test is skipped.
    let missing: Vec<&String> = base
        .difference(&through)
        .filter(|n| n.as_str() != "link::link_count_max")
        .collect();
    assert!(
        missing.is_empty() && failed.is_subset(&base_failed),
        "pass on the origin, not through the mount: {missing:?}; failed: {failed:?}"
    );
    eprintln!(
        "pjdfstest: {} passed through the mount, {} on the origin",
        through.len(),
        base.len()
    );
}
