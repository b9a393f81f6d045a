//! Helpers for tests that mount real strata filesystems (root and /dev/fuse needed).

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// A temporary origin, mountpoint and cache directory, unmounted on drop.
pub struct Mount {
    pub tmp: tempfile::TempDir,
    pub origin: PathBuf,
    pub mnt: PathBuf,
    pub cache: PathBuf,
    pub mounted: bool,
}

impl Mount {
    pub fn new() -> Mount {
        let tmp = tempfile::Builder::new()
            .prefix("strata-e2e")
            .tempdir_in(std::env::var("STRATA_TEST_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
        let origin = tmp.path().join("origin");
        let mnt = tmp.path().join("mnt");
        let cache = tmp.path().join("cache");
        std::fs::create_dir_all(&origin).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        Mount {
            tmp,
            origin,
            mnt,
            cache,
            mounted: false,
        }
    }

    /// Mounts with extra arguments; panics with the command's message on failure.
    pub fn mount(&mut self, extra: &[&str]) {
        let out = self.try_mount(extra);
        assert!(
            out.status.success(),
            "strata mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = true;
    }

    /// Mounts with extra arguments, and those of STRATA_TEST_MOUNT_ARGS (scripts/test
    /// runs the mount tests again with `--uring` that way).
    pub fn try_mount(&self, extra: &[&str]) -> std::process::Output {
        let env = std::env::var("STRATA_TEST_MOUNT_ARGS").unwrap_or_default();
        let more: Vec<&str> = env
            .split_whitespace()
            .filter(|a| !extra.contains(a))
            .collect();
        if more.contains(&"--uring") {
            enable_fuse_uring();
        }
        Command::new(STRATA)
            .arg("mount")
            .arg(&self.origin)
            .arg(&self.mnt)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(extra)
            .args(more)
            .output()
            .unwrap()
    }

    pub fn umount(&mut self) {
        if !self.mounted {
            return;
        }
        // Tests run in parallel threads, and a child another test spawns holds a copy
        // of this thread's descriptors from its fork to its exec: a file just closed
        // here can keep the mount busy for that moment.
        let umount = || {
            Command::new(STRATA)
                .arg("umount")
                .arg(&self.mnt)
                .output()
                .unwrap()
        };
        let mut out = umount();
        for _ in 0..50 {
            if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("busy") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            out = umount();
        }
        assert!(
            out.status.success(),
            "strata umount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = false;
    }

    /// The daemon's statistics.
    pub fn stats(&self) -> serde_json::Value {
        self.stats_reply()["stats"].clone()
    }

    /// The whole `stats --json` answer: the settings (block size...) and the statistics.
    pub fn stats_reply(&self) -> serde_json::Value {
        let out = Command::new(STRATA)
            .args(["stats", "--json"])
            .arg(&self.mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn stat_u64(&self, name: &str) -> u64 {
        self.stats()[name].as_u64().unwrap()
    }

    /// kill -9 the daemon, then clear the dead mount (see [`Mount::clear_dead`]).
    pub fn kill_9(&mut self) {
        let pid = self.daemon_pid();
        kill(pid, "-9");
        self.clear_dead(pid);
    }

    /// Aborts the mount's FUSE connection if the killed daemon `pid` lingers: a
    /// thread of it stuck in a kernel page-cache invalidation waits for a read only
    /// the dead daemon could answer, and nothing else ends that (FUSE's known
    /// notification deadlock; the kernel's fusectl abort is the way out).
    pub fn abort_if_hung(&self, pid: i32) {
        let gone = || !Path::new(&format!("/proc/{pid}")).exists();
        if eventually(Duration::from_secs(3), gone) {
            return;
        }
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
            .status();
        let dev = std::fs::metadata(&self.mnt).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.dev() & 0xff | (m.dev() >> 12) & !0xff
        });
        if let Ok(minor) = dev {
            let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
        }
    }

    /// Waits for a killed daemon `pid` to be gone and clears its dead mount with
    /// `umount -l`, so that strata can be mounted there again.
    pub fn clear_dead(&mut self, pid: i32) {
        assert!(
            eventually(Duration::from_secs(10), || !Path::new(&format!(
                "/proc/{pid}"
            ))
            .exists()),
            "the daemon {pid} outlived kill -9"
        );
        Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status()
            .unwrap();
        self.mounted = false;
    }

    /// The pid of the mount's daemon, from the cache directory's lock file.
    pub fn daemon_pid(&self) -> i32 {
        std::fs::read_to_string(self.cache.join("lock"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn o(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.origin.join(rel)
    }

    pub fn m(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new(STRATA)
                .arg("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
    }
}

/// Sends a signal (`-9`, `-TERM`, ...) to a process.
pub fn kill(pid: impl std::fmt::Display, sig: &str) {
    Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .unwrap();
}

pub fn drop_page_cache() {
    let _ = Command::new("sync").status();
    drop_clean_caches();
}

/// Drops clean caches without `sync`, which would wait on a hung filesystem.
pub fn drop_clean_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Waits until `f` holds or the timeout passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Deterministic bytes for test files.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A directory served over ssh from a network namespace and mounted with sshfs
/// (bench/slow-origin.sh, no added delay). One at a time: see `sshfs_lock`.
pub struct SshfsOrigin {
    mnt: PathBuf,
}

fn slow_origin_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/slow-origin.sh")
}

impl SshfsOrigin {
    pub fn up(data: &Path, mnt: &Path) -> SshfsOrigin {
        let out = Command::new(slow_origin_script())
            .arg("up")
            .arg(data)
            .arg(mnt)
            .arg("0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sshfs origin: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        SshfsOrigin {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl SshfsOrigin {
    /// Sends a signal to every process serving the origin (its sshd): STOP freezes
    /// it (a hung origin), KILL takes it away, CONT resumes it.
    pub fn signal(&self, sig: &str) {
        let out = Command::new("ip")
            .args(["netns", "pids", "strata-origin"])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid)
                .status();
        }
    }
}

impl Drop for SshfsOrigin {
    fn drop(&mut self) {
        // Never leave a frozen server behind: its mount would hang whoever touches it.
        self.signal("CONT");
        let _ = Command::new(slow_origin_script())
            .arg("down")
            .arg(&self.mnt)
            .status();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// The sshfs origin uses one network namespace: tests that need it take turns.
pub fn sshfs_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Turns FUSE over io_uring on in the kernel (off by default); false where the kernel
/// does not have it.
pub fn enable_fuse_uring() -> bool {
    let param = Path::new("/sys/module/fuse/parameters/enable_uring");
    param.exists() && std::fs::write(param, "1").is_ok()
}

/// Whether the running kernel is at least `major.minor` (FUSE passthrough needs 6.9).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// Skips a passthrough test (saying so) where the kernel cannot do it.
#[must_use]
pub fn kernel_has_passthrough() -> bool {
    let ok = kernel_at_least(6, 9);
    if !ok {
        eprintln!("skipped: FUSE passthrough needs Linux 6.9 or later");
    }
    ok
}

/// Compares one entry's attributes through the mount with the origin's.
pub fn same_attrs(o: &Path, m: &Path, rel: &Path, check_ino: bool) {
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
pub fn compare_tree(origin: &Path, mnt: &Path) -> usize {
    compare_tree_with(origin, mnt, true)
}

/// As `compare_tree`; `check_ino` is false for origins whose inode numbers strata
/// cannot present (it numbers the files itself then).
pub fn compare_tree_with(origin: &Path, mnt: &Path, check_ino: bool) -> usize {
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
