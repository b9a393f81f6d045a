//! `strata mount`: checks, the background daemon, and the mounted session.
//!
//! Without `--foreground` the command starts itself again as a daemon (in its own
//! session, logging to CACHE_DIR/strata.log) and waits on a pipe until the daemon says
//! the mount is live, or why it is not. So the exit status tells the truth.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use strata::origin::{LocalOrigin, Origin, SlowOrigin};
use strata::storage::RealStorage;
use strata::tier::disk::{DiskTier, Thresholds};
use strata::{Config, DiskSetup, Engine};
use strata_fuse::{FsOptions, FuseFs, StrataFs, UringQueues};

use crate::control;
use crate::options::{MountOpts, default_cache_dir};

/// Everything a mount needs, checked.
pub struct Plan {
    pub origin: PathBuf,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub config: Config,
    pub allow_other: bool,
    pub passthrough: bool,
    pub uring: bool,
    pub threads: usize,
    pub latency: Option<Duration>,
    pub bandwidth: Option<u64>,
    pub log_level: String,
}

/// File descriptor number the daemon reports readiness on.
const READY_FD: i32 = 3;

pub fn plan(origin: &Path, mountpoint: &Path, mut o: MountOpts) -> Result<Plan, String> {
    o.merge_o()?;
    let origin =
        std::fs::canonicalize(origin).map_err(|e| format!("origin {}: {e}", origin.display()))?;
    if !origin.is_dir() {
        return Err(format!("origin {} is not a directory", origin.display()));
    }
    let mountpoint = std::fs::canonicalize(mountpoint)
        .map_err(|e| format!("mountpoint {}: {e}", mountpoint.display()))?;
    if !mountpoint.is_dir() {
        return Err(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        ));
    }
    if let Some(fstype) = mounted_at(&mountpoint) {
        return Err(format!(
            "mountpoint {} is busy: a {fstype} filesystem is already mounted there \
             (unmount it first)",
            mountpoint.display()
        ));
    }
    if mountpoint.starts_with(&origin) {
        return Err(format!(
            "mountpoint {} is inside the origin {}: that would make the origin contain itself",
            mountpoint.display(),
            origin.display()
        ));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse ({e}): is the fuse module loaded?"))?;
    let cache_dir = o
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&origin));
    let thresholds = Thresholds {
        brun: o.brun.unwrap_or(10.0),
        bcull: o.bcull.unwrap_or(7.0),
        bstop: o.bstop.unwrap_or(3.0),
        frun: o.frun.unwrap_or(10.0),
        fcull: o.fcull.unwrap_or(7.0),
        fstop: o.fstop.unwrap_or(3.0),
    };
    // A cache directory keeps the block size it was created with; only an explicit
    // --block-size that differs is refused (by the disk tier, with the fix in the message).
    let block_size = o.block_size.unwrap_or_else(|| {
        DiskTier::probe_block_size(&RealStorage::new(&cache_dir))
            .unwrap_or(strata::config::DEFAULT_BLOCK_SIZE) as u64
    });
    if block_size > u32::MAX as u64 {
        return Err("block size is too large".into());
    }
    let config = Config {
        block_size: block_size as u32,
        ram_capacity: o.ram_size.unwrap_or(256 << 20),
        disk: Some(DiskSetup {
            storage: Arc::new(RealStorage::new(&cache_dir)),
            capacity: o.cache_size.unwrap_or(10 << 30),
            thresholds,
        }),
        attr_ttl: o.attr_ttl.unwrap_or(Duration::from_secs(1)),
        commit_interval: o.commit_interval.unwrap_or(Duration::ZERO),
        passthrough_min_age: o.passthrough_min_age.unwrap_or(Duration::from_secs(60)),
        dir_prefetch_files: o.dir_prefetch.unwrap_or(32),
        origin_timeout: match o.origin_timeout {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => Some(Duration::from_secs(10)),
        },
        ..Config::default()
    };
    config.validate()?;
    if config.dir_prefetch_files > 1024 {
        return Err("--dir-prefetch must be at most 1024 files".into());
    }
    let threads = o.threads.unwrap_or(16);
    if threads == 0 || threads > 1024 {
        return Err("--threads must be between 1 and 1024".into());
    }
    let log_level = o.log_level.clone().unwrap_or_else(|| "info".into());
    if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
        return Err(format!("unknown log level {log_level:?}"));
    }
    Ok(Plan {
        origin,
        mountpoint,
        cache_dir,
        config,
        allow_other: o.allow_other,
        passthrough: o.passthrough,
        uring: o.uring,
        threads,
        latency: o.origin_latency,
        bandwidth: o.origin_bandwidth,
        log_level,
    })
}

/// The filesystem type mounted exactly at `path`, if any.
fn mounted_at(path: &Path) -> Option<String> {
    mount_entry(path).map(|(_, fstype)| fstype)
}

/// The device number ("major:minor") and type of the filesystem mounted at `path`,
/// from /proc/self/mountinfo (no request to the filesystem itself).
fn mount_entry(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() > sep + 1 && unescape(f[4]) == path.as_os_str().to_string_lossy() {
            // The last one mounted there is the one in use.
            found = Some((f[2].to_string(), f[sep + 1].to_string()));
        }
    }
    found
}

/// The kernel caps a FUSE mount's read-ahead at its device's read_ahead_kb (128 KiB by
/// default) whatever INIT asked; raise it so sequential reads arrive in 1 MiB requests.
fn tune_readahead(mountpoint: &Path) {
    let Some((dev, _)) = mount_entry(mountpoint) else {
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let kb = strata_fuse::MAX_READ / 1024;
    if let Err(e) = std::fs::write(&knob, kb.to_string()) {
        tracing::debug!(error = %e, knob, "cannot raise the mount's read-ahead");
    }
}

/// Mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates the cache directory 0700 and refuses one that another user owns.
pub fn prepare_cache_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create cache directory {}: {e}", dir.display()))?;
    let m = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cache directory {}: {e}", dir.display()))?;
    if !m.is_dir() {
        return Err(format!(
            "cache directory {} is not a directory",
            dir.display()
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != me {
        return Err(format!(
            "cache directory {} is owned by uid {}, not by you (uid {me}); refusing to use it",
            dir.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), "cache directory was open to other users; setting it to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict cache directory {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Runs `strata mount` in the background: starts the daemon and waits for its word.
pub fn spawn_daemon(plan: &Plan, argv: &[String]) -> Result<(), String> {
    prepare_cache_dir(&plan.cache_dir)?;
    let log_path = plan.cache_dir.join("strata.log");
    rotate(&log_path);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| format!("cannot open log {}: {e}", log_path.display()))?;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(argv)
        .arg("--foreground")
        .arg("--ready-fd")
        .arg(READY_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let wfd = w.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, setsid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let src = std::os::fd::BorrowedFd::borrow_raw(wfd);
            let mut dst = OwnedFd::from_raw_fd(READY_FD);
            let r = rustix::io::dup2(src, &mut dst);
            std::mem::forget(dst);
            r?;
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    drop(w);
    let mut line = String::new();
    let mut reader = BufReader::new(File::from(r));
    let _ = reader.read_line(&mut line);
    match line.trim_end() {
        "OK" => Ok(()),
        l if l.starts_with("ERR ") => {
            let _ = child.wait();
            Err(l[4..].to_string())
        }
        _ => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let mut tail = String::new();
            if let Ok(mut f) = File::open(&log_path) {
                let _ = f.read_to_string(&mut tail);
            }
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            Err(format!(
                "the daemon exited before the mount was live ({status}); last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        }
    }
}

fn rotate(log: &Path) {
    if std::fs::metadata(log).is_ok_and(|m| m.len() > 16 << 20) {
        let _ = std::fs::rename(log, log.with_extension("log.1"));
    }
}

/// Reports readiness (or the reason for failing) to the waiting parent.
struct Ready(Option<File>);

impl Ready {
    fn from_fd(fd: Option<i32>) -> Self {
        // SAFETY: the fd was set up by our parent for us alone.
        Ready(fd.map(|fd| unsafe { File::from_raw_fd(fd) }))
    }
    fn ok(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(b"OK\n");
        }
    }
    fn fail(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(format!("ERR {}\n", msg.replace('\n', " ")).as_bytes());
        }
    }
}

/// Unmounts on request (signal, `strata umount`) and answers the `strata umount`
/// clients once the engine has shut down.
pub struct Shutdown {
    unmounter: Mutex<Option<fuser::SessionUnmounter>>,
    mountpoint: PathBuf,
    /// Clients of `shutdown` waiting for the end; answered by the main thread.
    waiters: Mutex<Vec<UnixStream>>,
}

/// What an unmount request came to.
pub enum Unmounted {
    Yes,
    /// Files are open on the mount; nothing was done.
    Busy,
}

impl Shutdown {
    /// Unmounts. With `lazy`, a busy mount is detached and the session ends when its
    /// last user is gone (for signals); without, a busy mount stays as it is.
    pub fn request(&self, why: &str, lazy: bool) -> Unmounted {
        use rustix::mount::{UnmountFlags, unmount};
        let mut guard = self.unmounter.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Unmounted::Yes;
        }
        tracing::info!("unmounting {} ({why})", self.mountpoint.display());
        let r = match unmount(&self.mountpoint, UnmountFlags::empty()) {
            Err(rustix::io::Errno::BUSY) if lazy => {
                tracing::warn!("mount is busy; detaching it lazily");
                unmount(&self.mountpoint, UnmountFlags::DETACH)
            }
            Err(rustix::io::Errno::BUSY) => {
                tracing::warn!("cannot unmount: files are open on the mount");
                return Unmounted::Busy;
            }
            Err(rustix::io::Errno::PERM) => {
                // Not root: fuser goes through fusermount3.
                let mut u = guard.take().expect("checked");
                return match u.unmount() {
                    Ok(()) => Unmounted::Yes,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot unmount");
                        Unmounted::Busy
                    }
                };
            }
            r => r,
        };
        if let Err(e) = r {
            // EINVAL: somebody unmounted it already; the session is ending anyway.
            tracing::debug!(error = %e, "unmount");
        }
        guard.take();
        Unmounted::Yes
    }

    /// Unmounts for a `strata umount` client, who is answered `ok` by the main thread
    /// once everything is committed. Returns false (client not queued) if the mount
    /// is busy.
    pub fn unmount_and_answer(&self, client: UnixStream) -> bool {
        // Held across the unmount, so that the client is queued before the session
        // can end, and a busy answer takes back exactly this client.
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.push(client);
        match self.request("strata umount", false) {
            Unmounted::Yes => true,
            Unmounted::Busy => {
                waiters.pop();
                false
            }
        }
    }

    fn finish(&self) {
        for mut c in self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = writeln!(c, "ok");
        }
    }
}

/// Runs the mount in this process until it is unmounted.
pub fn run_foreground(plan: Plan, ready_fd: Option<i32>) -> Result<(), String> {
    let mut ready = Ready::from_fd(ready_fd);
    let r = serve(plan, &mut ready);
    if let Err(e) = &r {
        ready.fail(e);
    }
    r
}

fn serve(plan: Plan, ready: &mut Ready) -> Result<(), String> {
    prepare_cache_dir(&plan.cache_dir)?;
    raise_fd_limit();
    let local: Arc<dyn Origin> =
        Arc::new(LocalOrigin::new(&plan.origin).map_err(|e| e.to_string())?);
    let origin: Arc<dyn Origin> = match (plan.latency, plan.bandwidth) {
        (None, None) => local,
        (l, b) => Arc::new(SlowOrigin::new(
            local,
            l.unwrap_or_default(),
            b.unwrap_or(0),
        )),
    };
    note_origin(&plan.cache_dir, &plan.origin);
    let engine = Arc::new(Engine::new(plan.config.clone(), origin).map_err(|e| e.to_string())?);
    if let Some(d) = engine.disk() {
        let r = d.open_report();
        tracing::info!(
            cache = %plan.cache_dir.display(),
            objects = r.objects,
            blocks = r.blocks,
            took_ms = r.took.as_millis() as u64,
            "disk cache opened"
        );
    }
    let socket = plan.cache_dir.join("control.sock");
    let listener = control::bind(&socket)?;
    let fs = Arc::new(
        StrataFs::new(
            engine.clone(),
            FsOptions {
                attr_ttl: plan.config.attr_ttl,
                control: Some(socket.clone()),
                passthrough: plan.passthrough,
                uring: plan.uring,
                allow_other: plan.allow_other,
            },
        )
        .map_err(|e| format!("cannot read the origin's root: {e}"))?,
    );
    let invalidator = fs.invalidator();
    let options = vec![
        MountOption::FSName(plan.origin.to_string_lossy().into_owned()),
        MountOption::Subtype("strata".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // allow_other comes from the session's ACL below.
    let mut cfg = fuser::Config::default();
    cfg.mount_options = options;
    cfg.acl = if plan.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(plan.threads);
    cfg.clone_fd = true;
    let mut session = fuser::Session::new(FuseFs(fs.clone()), &plan.mountpoint, &cfg)
        .map_err(|e| format!("cannot mount at {}: {e}", plan.mountpoint.display()))?;
    // Passthrough's backing files are registered on the session's own /dev/fuse file.
    fs.attach_device(session.as_fd())
        .map_err(|e| format!("cannot keep the FUSE device: {e}"))?;
    // They wait for INIT, which `run` answers, and serve from then on.
    let queues = UringQueues::start(fs.clone(), session.as_fd(), plan.threads)
        .map_err(|e| format!("cannot start the io_uring queues: {e}"))?;
    tracing::debug!(threads = queues.threads(), "io_uring queue threads started");
    tune_readahead(&plan.mountpoint);
    invalidator
        .connect(session.notifier())
        .map_err(|e| format!("cannot start the invalidation thread: {e}"))?;
    let shutdown = Arc::new(Shutdown {
        unmounter: Mutex::new(Some(session.unmount_callable())),
        mountpoint: plan.mountpoint.clone(),
        waiters: Mutex::new(Vec::new()),
    });
    start_signal_thread(shutdown.clone())?;
    control::serve(listener, engine.clone(), shutdown.clone(), &plan);
    tracing::info!(
        origin = %plan.origin.display(),
        mountpoint = %plan.mountpoint.display(),
        "mounted"
    );
    ready.ok();
    let r = session.run();
    // Queue threads still waiting for an INIT that never came end now; the others
    // finish what they hold before the engine shuts down.
    fs.stop_uring();
    if !queues.wait_ended(Duration::from_secs(5)) {
        tracing::warn!("io_uring queue threads still busy after the session ended");
    }
    tracing::info!("session ended; finishing fills and committing the cache index");
    engine.shutdown();
    let _ = std::fs::remove_file(&socket);
    shutdown.finish();
    tracing::info!("clean shutdown");
    r.map_err(|e| format!("FUSE session failed: {e}"))
}

fn start_signal_thread(shutdown: Arc<Shutdown>) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("strata-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let why = match sig {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                shutdown.request(why, true);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// Every cached object keeps its origin file open: allow as many files as permitted.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if let Some(max) = l.maximum {
        if l.current.is_none_or(|c| c < max) {
            l.current = Some(max);
            let _ = setrlimit(Resource::Nofile, l);
        }
    }
}

/// Records which origin a cache directory serves; a change is worth a log line (the
/// coherency tokens keep wrong bytes out either way).
fn note_origin(cache_dir: &Path, origin: &Path) {
    let f = cache_dir.join("origin");
    let now = origin.to_string_lossy();
    match std::fs::read_to_string(&f) {
        Ok(old) if old.trim_end() == now => {}
        Ok(old) => {
            tracing::warn!(
                previous = old.trim_end(),
                "this cache directory served another origin; its entries will be revalidated and replaced"
            );
            let _ = std::fs::write(&f, format!("{now}\n"));
        }
        Err(_) => {
            let _ = std::fs::write(&f, format!("{now}\n"));
        }
    }
}
