//! `strata mount`: checks, the background daemon, and the mounted session.
//!
//! Without `--foreground` the command starts itself again as a daemon (in its own
//! session, logging to CACHE_DIR/strata.log) and waits on a pipe until the daemon says
//! the mount is live, or why it is not. So the exit status tells the truth.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use rustix::mount::UnmountFlags;
use strata::origin::{LocalOrigin, Origin, SlowOrigin};
use strata::storage::{RealStorage, Storage};
use strata::tier::disk::{DiskTier, Thresholds};
use strata::{Config, DiskSetup, Engine};
use strata_fuse::{FsOptions, FuseFs, StrataFs, UringQueues};

use crate::control;
use crate::options::{MountOpts, default_cache_dir};

/// Everything a mount needs, checked.
pub struct Plan {
    pub origin: PathBuf,
    /// The origin answered when the mount was planned (else it mounts offline).
    pub origin_up: bool,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    /// The cache directory, opened and checked (see `RealStorage::open`).
    pub cache: Arc<RealStorage>,
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
/// How the daemon learns that it has one: an environment variable, not a flag, so
/// that `strata mount --help` and clap's suggestions show only what users pass.
const READY_ENV: &str = "STRATA_READY_FD";

/// The readiness descriptor this process was started with, if it is the daemon.
pub fn ready_fd() -> Option<i32> {
    let fd = std::env::var(READY_ENV).ok()?.parse().ok()?;
    // Not passed on to anything this process starts.
    // SAFETY: read once at start, before any other thread exists.
    unsafe { std::env::remove_var(READY_ENV) };
    Some(fd)
}

/// The write-back settings, None without --write-back (its other options then are a
/// mistake worth saying).
fn write_back(o: &MountOpts) -> Result<Option<strata::WriteBack>, String> {
    if !o.write_back {
        if o.write_back_delay.is_some() || o.write_back_fsync.is_some() || o.dirty_limit.is_some() {
            return Err(
                "--write-back-delay, --write-back-fsync and --dirty-limit need --write-back".into(),
            );
        }
        return Ok(None);
    }
    let d = strata::WriteBack::default();
    Ok(Some(strata::WriteBack {
        delay: o.write_back_delay.unwrap_or(d.delay),
        fsync_origin: o.write_back_fsync == Some(crate::options::FsyncTarget::Origin),
        dirty_limit: o.dirty_limit.unwrap_or(d.dirty_limit),
    }))
}

/// The device-memory tier, None without --gpu-memory (or without a usable GPU:
/// the mount goes on without it, with a warning).
fn gpu(o: &MountOpts) -> Result<Option<strata::DeviceSetup>, String> {
    let Some(capacity) = o.gpu_memory.filter(|&c| c > 0) else {
        return Ok(None);
    };
    #[cfg(feature = "cuda")]
    match strata::device::cuda::CudaDevice::open(0) {
        Ok(d) => Ok(Some(strata::DeviceSetup {
            device: std::sync::Arc::new(d),
            capacity,
        })),
        Err(e) => {
            tracing::warn!(error = %e, "--gpu-memory: no usable GPU; running without the device tier");
            Ok(None)
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = capacity;
        Err("--gpu-memory needs a strata built with the cuda feature (cargo build --release --features cuda)".into())
    }
}

/// The shared tier's settings, None without --shared-cache.
fn shared(o: &MountOpts, origin: &Path) -> Result<Option<strata::SharedConfig>, String> {
    if o.shared_cache.is_empty() {
        if o.shared_namespace.is_some()
            || o.shared_secret_file.is_some()
            || o.shared_timeout.is_some()
        {
            return Err(
                "--shared-namespace, --shared-secret-file and --shared-timeout need --shared-cache"
                    .into(),
            );
        }
        return Ok(None);
    }
    let namespace = match &o.shared_namespace {
        Some(n) if n.is_empty() => return Err("--shared-namespace must not be empty".into()),
        Some(n) => n.clone(),
        None => format!("dir:{}", origin.display()),
    };
    let mut c = strata::SharedConfig::new(o.shared_cache.clone(), namespace);
    if let Some(f) = &o.shared_secret_file {
        let secret = std::fs::read(f)
            .map_err(|e| format!("cannot read the shared secret file {}: {e}", f.display()))?;
        if secret.iter().all(u8::is_ascii_whitespace) {
            return Err(format!("the shared secret file {} is empty", f.display()));
        }
        c.secret = Some(secret);
    }
    if let Some(t) = o.shared_timeout {
        if t.is_zero() {
            return Err("--shared-timeout must be more than 0".into());
        }
        c.timeout = t;
    }
    Ok(Some(c))
}

/// The adaptive trust's ceiling from the options: `--attr-ttl` given alone is the
/// strict knob (fixed trust, None); otherwise trust adapts, up to `--attr-ttl-max`
/// or 60 s.
fn trust_ceiling(ttl: Option<Duration>, max: Option<Duration>) -> Option<Duration> {
    match (ttl, max) {
        (_, Some(max)) => Some(max),
        (Some(_), None) => None,
        (None, None) => Some(Duration::from_secs(60)),
    }
}

pub fn plan(origin: &Path, mountpoint: &Path, mut o: MountOpts) -> Result<Plan, String> {
    o.merge_o()?;
    let wait = match o.origin_timeout {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(Duration::from_secs(10)),
    };
    let (origin, origin_up) = resolve_origin(origin, wait)?;
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
    // Checked before anything is written into it (owner, mode, strata's marker).
    let cache = Arc::new(RealStorage::open(&cache_dir).map_err(|e| e.to_string())?);
    // A cache directory keeps the block size it was created with; only an explicit
    // --block-size that differs is refused (by the disk tier, with the fix in the message).
    let block_size = o.block_size.unwrap_or_else(|| {
        DiskTier::probe_block_size(&*cache).unwrap_or(strata::config::DEFAULT_BLOCK_SIZE) as u64
    });
    if block_size > u32::MAX as u64 {
        return Err("block size is too large".into());
    }
    let config = Config {
        block_size: block_size as u32,
        ram_capacity: o.ram_size.unwrap_or(256 << 20),
        compressed_ram_capacity: o.compressed_ram_size.unwrap_or(0),
        fill_queue_bytes: o.fill_queue.unwrap_or(64 << 20),
        meta_bytes: o.meta_size.unwrap_or(64 << 20),
        disk: Some(DiskSetup {
            storage: cache.clone(),
            capacity: o.cache_size.unwrap_or(10 << 30),
            thresholds,
        }),
        attr_ttl: o.attr_ttl.unwrap_or(Duration::from_secs(1)),
        attr_ttl_max: trust_ceiling(o.attr_ttl, o.attr_ttl_max),
        commit_interval: o.commit_interval.unwrap_or(Duration::ZERO),
        passthrough_min_age: o.passthrough_min_age.unwrap_or(Duration::from_secs(60)),
        dir_prefetch_files: o.dir_prefetch.unwrap_or(32),
        origin_timeout: match o.origin_timeout {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => Some(Duration::from_secs(10)),
        },
        read_only: o.read_only,
        write_back: write_back(&o)?,
        shared: shared(&o, &origin)?,
        device: gpu(&o)?,
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
        origin_up,
        mountpoint,
        cache_dir,
        cache,
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

/// The origin's canonical path, and whether it answered. An origin that does not
/// answer within `wait`, or answers with a connection error or EIO (a frozen or dead
/// network filesystem), is not fatal: the mount comes up offline and serves what it
/// confirmed before. Its path is then its parent's canonical path and its name.
fn resolve_origin(origin: &Path, wait: Option<Duration>) -> Result<(PathBuf, bool), String> {
    let asked = origin.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    // On its own thread: a hung filesystem holds it, not the mount.
    let spawned = std::thread::Builder::new()
        .name("strata-origin-check".into())
        .spawn(move || {
            let r = std::fs::canonicalize(&asked).and_then(|p| {
                let dir = std::fs::metadata(&p)?.is_dir();
                Ok((p, dir))
            });
            let _ = tx.send(r);
        });
    let answer = match (spawned, wait) {
        (Err(e), _) => return Err(format!("cannot start a thread: {e}")),
        (Ok(_), Some(w)) => rx.recv_timeout(w).ok(),
        (Ok(_), None) => rx.recv().ok(),
    };
    match answer {
        Some(Ok((p, true))) => Ok((p, true)),
        Some(Ok((p, false))) => Err(format!("origin {} is not a directory", p.display())),
        // EIO too: what a network filesystem whose server died answers (sshfs).
        Some(Err(e)) if !strata::origin::unreachable(&e) && e.raw_os_error() != Some(5) => {
            Err(format!("origin {}: {e}", origin.display()))
        }
        _ => Ok((canonical_parent(origin), false)),
    }
}

/// `p` made absolute with its parent's canonical path and its own name, without
/// asking `p` itself (a hung or dead filesystem mounted there would not answer).
pub fn canonical_parent(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// The filesystem type mounted exactly at `path`, if any.
fn mounted_at(path: &Path) -> Option<String> {
    mount_entry(path).map(|(_, fstype)| fstype)
}

/// The device number ("major:minor") and type of the filesystem mounted at `path`,
/// from /proc/self/mountinfo (no request to the filesystem itself).
pub fn mount_entry(path: &Path) -> Option<(String, String)> {
    mount_at(&strata::origin::mount_table()?, path)
}

/// In a mount table, the filesystem mounted at `path`: the last one mounted there is
/// the one in use.
pub fn mount_at(table: &[strata::origin::MountEntry], path: &Path) -> Option<(String, String)> {
    table
        .iter()
        .rev()
        .find(|m| m.mountpoint == path)
        .map(|m| (m.dev.clone(), m.fstype.clone()))
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

/// The mount's filesystem type is `fuse.` and this; `strata umount` unmounts nothing
/// else.
pub const FS_SUBTYPE: &str = "strata";
/// The type as /proc/mounts shows it.
pub const FS_TYPE: &str = "fuse.strata";

/// Mounts a FUSE filesystem of type fuse.strata, read-only, at the plan's mountpoint
/// and returns its /dev/fuse descriptor; None when this user may not mount (fuser's
/// fusermount3 path then does it). fuser's own mount code always says plain "fuse".
fn mount_fuse(plan: &Plan) -> Result<Option<OwnedFd>, String> {
    use rustix::fs::{Mode, OFlags};
    use rustix::mount::MountFlags;
    let dev = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("cannot open /dev/fuse ({e}): is the fuse module loaded?"))?;
    let root = rustix::fs::stat(&plan.mountpoint)
        .map_err(|e| format!("mountpoint {}: {e}", plan.mountpoint.display()))?;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        root.st_mode & 0o170000,
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    if plan.allow_other {
        data.push_str(",allow_other");
    }
    let data = std::ffi::CString::new(data).map_err(|e| e.to_string())?;
    match rustix::mount::mount(
        plan.origin.as_os_str(),
        &plan.mountpoint,
        FS_TYPE,
        if plan.config.read_only {
            MountFlags::NODEV | MountFlags::NOSUID | MountFlags::RDONLY
        } else {
            MountFlags::NODEV | MountFlags::NOSUID
        },
        data.as_c_str(),
    ) {
        Ok(()) => Ok(Some(dev)),
        Err(rustix::io::Errno::PERM) => Ok(None),
        Err(e) => Err(format!(
            "cannot mount at {}: {e}",
            plan.mountpoint.display()
        )),
    }
}

/// Runs `strata mount` in the background: starts the daemon and waits for its word.
pub fn spawn_daemon(plan: &Plan, argv: &[String]) -> Result<(), String> {
    let log_path = plan.cache_dir.join(LOG);
    rotate(&plan.cache);
    let log = plan
        .cache
        .open_append(LOG)
        .map_err(|e| format!("cannot open log {}: {e}", log_path.display()))?;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(argv)
        .arg("--foreground")
        .env(READY_ENV, READY_FD.to_string())
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
            if let Ok(f) = plan.cache.open(Path::new(LOG), false) {
                let mut b = vec![0u8; f.len().unwrap_or(0).min(64 << 10) as usize];
                let from = f.len().unwrap_or(0) - b.len() as u64;
                let n = strata::storage::read_full_at(&*f, &mut b, from).unwrap_or(0);
                tail = String::from_utf8_lossy(&b[..n]).into_owned();
            }
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            Err(format!(
                "the daemon exited before the mount was live ({status}); last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        }
    }
}

/// The daemon's log, in the cache directory.
const LOG: &str = "strata.log";

fn rotate(cache: &RealStorage) {
    let big = cache
        .open(Path::new(LOG), false)
        .and_then(|f| f.len())
        .is_ok_and(|n| n > 16 << 20);
    if big {
        let _ = cache.rename(Path::new(LOG), Path::new("strata.log.1"));
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
        use rustix::mount::unmount;
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
    note_origin(&plan.cache, &plan.origin);
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
    let socket = plan.cache_dir.join(control::SOCKET);
    let listener = control::bind(&plan.cache, &socket)?;
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
        .map_err(|e| {
            if plan.origin_up {
                format!("cannot read the origin's root: {e}")
            } else {
                format!(
                    "the origin {} cannot be reached ({e}) and this cache directory holds \
                     nothing of it: mount it once while it answers",
                    plan.origin.display()
                )
            }
        })?,
    );
    let invalidator = fs.invalidator();
    let mut cfg = fuser::Config::default();
    // allow_other comes from the session's ACL.
    cfg.acl = if plan.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(plan.threads);
    cfg.clone_fd = true;
    let mut session = match mount_fuse(&plan) {
        Ok(Some(dev)) => {
            fuser::Session::from_fd(FuseFs(fs.clone()), dev, cfg.acl, cfg).map_err(|e| {
                let _ = rustix::mount::unmount(&plan.mountpoint, UnmountFlags::DETACH);
                format!(
                    "cannot start the FUSE session at {}: {e}",
                    plan.mountpoint.display()
                )
            })?
        }
        // Not allowed to mount (not root): fuser goes through fusermount3, which
        // also makes it fuse.strata.
        Ok(None) => {
            cfg.mount_options = vec![
                MountOption::FSName(plan.origin.to_string_lossy().into_owned()),
                MountOption::Subtype(FS_SUBTYPE.into()),
                MountOption::DefaultPermissions,
                MountOption::NoDev,
                MountOption::NoSuid,
                if plan.config.read_only {
                    MountOption::RO
                } else {
                    MountOption::RW
                },
            ];
            fuser::Session::new(FuseFs(fs.clone()), &plan.mountpoint, &cfg)
                .map_err(|e| format!("cannot mount at {}: {e}", plan.mountpoint.display()))?
        }
        Err(e) => return Err(e),
    };
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
    // The fuser threads, and with --uring the queue threads, each serve reads.
    let request_threads = plan.threads + queues.threads();
    control::serve(
        listener,
        engine.clone(),
        shutdown.clone(),
        &plan,
        request_threads,
    );
    tracing::info!(
        origin = %plan.origin.display(),
        mountpoint = %plan.mountpoint.display(),
        "mounted"
    );
    if !plan.origin_up {
        tracing::warn!(
            origin = %plan.origin.display(),
            "the origin did not answer at mount time: serving what it confirmed before \
             (checked again once it answers)"
        );
    }
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
    let _ = plan.cache.remove_file(Path::new(control::SOCKET));
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
fn note_origin(cache: &RealStorage, origin: &Path) {
    let now = format!("{}\n", origin.to_string_lossy());
    let Ok(f) = cache.open(Path::new("origin"), true) else {
        return;
    };
    let mut old = vec![0u8; 8192];
    let n = strata::storage::read_full_at(&*f, &mut old, 0).unwrap_or(0);
    let old = String::from_utf8_lossy(&old[..n]);
    if old == now {
        return;
    }
    if !old.is_empty() {
        tracing::warn!(
            previous = old.trim_end(),
            "this cache directory served another origin; its entries will be revalidated and replaced"
        );
    }
    let _ = f
        .set_len(0)
        .and_then(|()| f.write_all_at(now.as_bytes(), 0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_ttl_alone_fixes_the_trust_and_otherwise_it_adapts() {
        let s = Duration::from_secs;
        assert_eq!(trust_ceiling(None, None), Some(s(60)), "the default adapts");
        assert_eq!(
            trust_ceiling(Some(s(2)), None),
            None,
            "--attr-ttl alone: fixed"
        );
        assert_eq!(trust_ceiling(Some(s(2)), Some(s(30))), Some(s(30)));
        assert_eq!(trust_ceiling(None, Some(s(10))), Some(s(10)));
    }
}
