//! `strata`: mount a cache in front of a slow directory, and look after it.

mod control;
mod mount;
mod options;
mod pin;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use strata::storage::{RealStorage, Storage};
use strata::tier::disk::{DiskConfig, DiskTier, Thresholds};

use options::MountOpts;

/// Prints a line to stdout; a closed pipe (`strata stats | head`) ends the command
/// quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "A cache for slow storage: mount a directory (NFS, SMB, sshfs, ...) through RAM and local-disk caches",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Cmd {
    /// Mount ORIGIN (a directory) at MOUNTPOINT, read-only, through the caches.
    ///
    /// Returns once the mount is live (status 0) or with a message saying why it is
    /// not. Also usable from fstab or `mount -t fuse.strata ORIGIN MOUNTPOINT -o ...`.
    Mount {
        /// The directory to cache (e.g. an NFS, SMB or sshfs mount)
        origin: PathBuf,
        /// Where the cached view appears
        mountpoint: PathBuf,
        /// Stay in the foreground, log to stderr, unmount on SIGINT/SIGTERM
        #[arg(short, long)]
        foreground: bool,
        /// Mount read-only: every change answers EROFS (-o ro). Without it changes
        /// go through to the origin (write-through)
        #[arg(short, long)]
        read_only: bool,
        #[command(flatten)]
        opts: MountOpts,
    },
    /// Show the statistics of a live mount.
    Stats {
        mountpoint: PathBuf,
        /// Print JSON (stable field names) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Check every cached block against its checksum and every record against the data.
    ///
    /// Exit status: 0 clean, 1 damage found and repaired, 4 damage found and left,
    /// 8 refused (a mount uses the directory, it is not a strata cache, or it cannot
    /// be read), 2 bad arguments.
    Fsck {
        cache_dir: PathBuf,
        /// Drop what is damaged and reclaim what is stray
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Unmount cleanly: waits until pending fills are done and the index is committed.
    Umount { mountpoint: PathBuf },
    /// Fetch files and trees (paths inside a strata mount) into the disk cache and keep
    /// them there: never evicted or culled until `strata unpin`. Pinned bytes count
    /// against the cache size; a pin that does not fit is refused.
    Pin {
        /// Files or directories inside a strata mount (with --list: the mounts)
        #[arg(required_unless_present = "list")]
        paths: Vec<PathBuf>,
        /// List the pins of the mounts the paths are in (default: the current directory's)
        #[arg(long)]
        list: bool,
    },
    /// Remove pins made by `strata pin`; the files stay cached, evictable again.
    Unpin {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// glibc's malloc gives each thread that allocates at once an arena of its own, up to
/// eight per CPU, and keeps what is freed in each: with strata's threads handing
/// blocks to each other that held a third more memory (bench: the load test's peak
/// RSS, 145 against 111 MiB with two arenas) for no measured gain in speed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_ARENA_MAX: i32 = -8;
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        mallopt(M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let argv = normalize_args(std::env::args().collect());
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli, &argv[1..]) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("strata: {msg}");
            ExitCode::from(1)
        }
    }
}

/// `mount.fuse3` runs `strata ORIGIN MOUNTPOINT -o OPTIONS`: treat a first argument
/// that is not a subcommand as `mount`.
fn normalize_args(mut argv: Vec<String>) -> Vec<String> {
    const CMDS: &[&str] = &["mount", "stats", "fsck", "umount", "pin", "unpin", "help"];
    if let Some(first) = argv.get(1) {
        if !first.starts_with('-') && !CMDS.contains(&first.as_str()) {
            argv.insert(1, "mount".into());
        }
    }
    argv
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},fuser=warn")));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // The log may sit on a cache filesystem that fails: a line that cannot be
        // written is lost, never a reason for a thread to panic.
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli, args: &[String]) -> Result<ExitCode, String> {
    match cli.cmd {
        Cmd::Mount {
            origin,
            mountpoint,
            foreground,
            read_only,
            mut opts,
        } => {
            opts.read_only |= read_only;
            let plan = mount::plan(&origin, &mountpoint, opts)?;
            if foreground {
                init_logging(&plan.log_level);
                mount::run_foreground(plan, mount::ready_fd())?;
            } else {
                mount::spawn_daemon(&plan, args)?;
                if !plan.origin_up {
                    eprintln!(
                        "strata: warning: the origin {} did not answer; mounted offline, \
                         serving what it confirmed before (checked again once it answers)",
                        plan.origin.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats { mountpoint, json } => {
            let line = control::request(&mountpoint, "stats", Duration::from_secs(10))?;
            if json {
                out!("{line}");
                return Ok(ExitCode::SUCCESS);
            }
            let r: control::StatsReply = serde_json::from_str(&line)
                .map_err(|e| format!("bad answer from the daemon: {e}"))?;
            print_stats(&r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fsck {
            cache_dir,
            repair,
            json,
        } => fsck(&cache_dir, repair, json),
        Cmd::Umount { mountpoint } => umount(&mountpoint),
        Cmd::Pin { paths, list: true } => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                paths
            };
            for p in paths {
                let (mnt, _) = pin::in_mount(&p)?;
                let line = control::request(&mnt, "pins", Duration::from_secs(10))?;
                let pins: Vec<serde_json::Value> = serde_json::from_str(&line)
                    .map_err(|e| format!("bad answer from the daemon: {e}"))?;
                for v in pins {
                    out!(
                        "{}{}  {}",
                        mnt.display(),
                        v["path"].as_str().unwrap_or("?"),
                        human(v["bytes"].as_u64().unwrap_or(0))
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pin { paths, list: false } => {
            for p in paths {
                pin::pin(&p)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Unpin { paths } => {
            for p in paths {
                pin::unpin(&p)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_stats(r: &control::StatsReply) {
    out!("origin      {}", r.origin);
    out!("mountpoint  {}", r.mountpoint);
    out!("cache dir   {}", r.cache_dir);
    let ttl = match r.attr_ttl_max_ms {
        0 => format!("{} ms", r.attr_ttl_ms),
        max => format!("{} ms to {} ms, adaptive", r.attr_ttl_ms, max),
    };
    let ram = match r.compressed_ram_capacity {
        0 => human(r.ram_capacity),
        c => format!("{} (compressed up to {})", human(r.ram_capacity), human(c)),
    };
    out!(
        "block size  {}   RAM tier {ram}   disk tier {}   attribute TTL {ttl}",
        human(r.block_size),
        human(r.disk_capacity),
    );
    out!(
        "memory      at most {} (now: RAM tiers {}, fill queue {}, metadata {})",
        human(r.memory_bound),
        human(r.stats.ram_bytes + r.stats.compressed_bytes),
        human(r.stats.inflight_fill_bytes),
        human(r.stats.meta_bytes)
    );
    let s = &r.stats;
    let blocks = s.ram_hits + s.disk_hits + s.inflight_hits + s.misses;
    if blocks > 0 {
        out!(
            "hit ratio   {:.1}% of blocks (RAM {:.1}%, disk {:.1}%), origin {} in {} requests",
            100.0 * (blocks - s.misses) as f64 / blocks as f64,
            100.0 * s.ram_hits as f64 / blocks as f64,
            100.0 * s.disk_hits as f64 / blocks as f64,
            human(s.origin_bytes),
            s.origin_requests
        );
    }
    if !r.tiers.is_empty() {
        out!();
        out!(
            "{:<11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "tier",
            "hits",
            "hit bytes",
            "puts",
            "refusals",
            "evictions",
            "blocks",
            "held"
        );
        for t in &r.tiers {
            let mut line = format!(
                "{:<11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                t.name,
                t.hits,
                human(t.hit_bytes),
                t.puts,
                t.refusals,
                t.evictions,
                t.blocks,
                human(t.bytes)
            );
            if let Some(shared) = t.shared_bytes.filter(|&b| b > 0) {
                line += &format!("  ({} more held in shared buffers)", human(shared));
            }
            if let Some(raw) = t.raw_bytes
                && t.bytes > 0
            {
                line += &format!(
                    "  ({} uncompressed, {:.2}x)",
                    human(raw),
                    raw as f64 / t.bytes as f64
                );
            }
            out!("{line}");
        }
        out!();
    }
    let waited = s.origin_requests.saturating_sub(s.readahead_requests);
    if s.reads > 0 {
        let per_read = |us: u64| us as f64 / s.reads as f64;
        let mut line = format!(
            "read time   {:.0} us per read in the engine",
            per_read(s.read_us)
        );
        if s.fuse_read_us > 0 {
            // The handler's time beyond the engine's is joining blocks and the reply.
            line += &format!(
                ", {:.0} us in the mount's handler",
                per_read(s.fuse_read_us)
            );
        }
        if waited > 0 {
            // The wait beyond the origin's own time is strata's hand-off to an origin
            // thread; the read beyond the wait is its own work and waiting for others.
            line += &format!(
                "; per origin request a reader waited {:.0} us, the origin took {:.0} us",
                s.origin_wait_us as f64 / waited as f64,
                s.origin_read_us as f64 / waited as f64
            );
        }
        out!("{line}");
    }
    out!();
    for (name, value, what) in s.fields() {
        out!("{name:<24} {value:>16}  {what}");
    }
}

pub(crate) fn human(n: u64) -> String {
    const U: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// fsck's status when it refuses to check (in use, not a strata cache, unreadable): as
/// fsck(8)'s "operational error", so scripts can tell it from damage.
const FSCK_REFUSED: u8 = 8;

fn fsck(dir: &Path, repair: bool, json: bool) -> Result<ExitCode, String> {
    match fsck_checked(dir, repair, json) {
        Ok(code) => Ok(code),
        Err(msg) => {
            eprintln!("strata: {msg}");
            Ok(ExitCode::from(FSCK_REFUSED))
        }
    }
}

fn fsck_checked(dir: &Path, repair: bool, json: bool) -> Result<ExitCode, String> {
    let storage: Arc<dyn Storage> =
        Arc::new(RealStorage::open_existing(dir).map_err(|e| e.to_string())?);
    let Some(bs) = DiskTier::probe_block_size(&*storage) else {
        return Err(format!(
            "{} has no readable cache index (not a strata cache directory, or its index is \
             destroyed: mounting it starts an empty cache and reclaims the old data)",
            dir.display()
        ));
    };
    let tier = DiskTier::open(
        storage,
        DiskConfig {
            capacity: u64::MAX / 2,
            block_size: bs,
            thresholds: Thresholds::OFF,
            compact_min_bytes: u64::MAX,
        },
        Arc::new(strata::stats::Stats::default()),
    )
    .map_err(|e| e.to_string())?;
    let report = tier.fsck(repair);
    if json {
        out!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        out!("objects            {}", report.objects);
        out!("blocks checked     {}", report.blocks_checked);
        out!("blocks damaged     {}", report.blocks_bad);
        out!("missing data files {}", report.missing_files);
        out!("orphan data files  {}", report.orphan_files);
        out!("stray bytes        {}", report.stray_bytes);
        out!("index tail dropped {} bytes", report.log_tail_dropped);
        out!("records dropped    {}", report.records_dropped);
        out!("index reset        {}", report.index_reset);
        out!(
            "result             {}",
            if report.is_clean() {
                "clean"
            } else if repair {
                "damage found and repaired"
            } else {
                "damage found (run with --repair to drop it)"
            }
        );
    }
    Ok(ExitCode::from(if report.is_clean() {
        0
    } else if repair {
        1
    } else {
        4
    }))
}

fn umount(mountpoint: &Path) -> Result<ExitCode, String> {
    // Only strata mounts: the fallback below would unmount anything.
    let path = mount_path(mountpoint);
    match mount::mount_entry(&path) {
        None => return Err(format!("{} is not mounted", mountpoint.display())),
        Some((_, fstype)) if fstype != mount::FS_TYPE => {
            return Err(format!(
                "{} is not a strata mount (a {fstype} filesystem is mounted there); \
                 use umount(8) for it",
                mountpoint.display()
            ));
        }
        Some(_) => {}
    }
    // Asked first: once unmounted, the mountpoint no longer leads to the daemon.
    let pid = daemon_pid(mountpoint);
    match control::request(mountpoint, "shutdown", Duration::from_secs(600)) {
        Ok(a) if a == "ok" => {
            // Everything is committed; returning once the process is gone means its
            // cache directory is released too (its filesystem can be unmounted).
            wait_gone(pid);
            Ok(ExitCode::SUCCESS)
        }
        Ok(a) if a == "busy" => Err(format!(
            "{} is busy: files are open on it (close them, or use umount -l)",
            mountpoint.display()
        )),
        Ok(a) => Err(format!("the daemon answered {a:?}")),
        Err(why) => {
            // The control socket cannot be reached (its directory may be on a failed
            // cache device): unmount directly, then wait for the daemon to finish.
            rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::empty()).map_err(
                |e| {
                    format!(
                        "{why}; unmounting directly failed too ({e}){}",
                        if e == rustix::io::Errno::BUSY {
                            ": files are open on it (close them, or use umount -l)"
                        } else {
                            ""
                        }
                    )
                },
            )?;
            wait_gone(pid);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A mountpoint as /proc/self/mountinfo names it: resolved like any path, or, when the
/// mount does not answer (its daemon died: ENOTCONN), from its parent alone.
fn mount_path(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| mount::canonical_parent(p))
}

/// The pid of the daemon serving a mount, which it publishes as an xattr of the root.
fn daemon_pid(mountpoint: &Path) -> Option<u32> {
    let mut buf = [0u8; 32];
    rustix::fs::getxattr(mountpoint, strata_fuse::PID_XATTR, &mut buf[..])
        .ok()
        .and_then(|n| std::str::from_utf8(&buf[..n]).ok()?.parse::<u32>().ok())
}

/// Waits (at most 10 minutes) for a process to exit. A zombie has exited: its parent
/// (a shell or test running `strata mount -f`) may not reap it before we return. But
/// the main thread turns zombie before the others are gone, and until the last one is,
/// the process still holds its files (the cache directory's filesystem stays busy).
fn wait_gone(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let alive = || {
        let leader_alive = std::fs::read_to_string(&stat).is_ok_and(|s| {
            // "pid (comm) S ...": the state follows the last ')'.
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        });
        leader_alive || std::fs::read_dir(&tasks).is_ok_and(|d| d.count() > 1)
    };
    let t = std::time::Instant::now();
    while alive() && t.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(20));
    }
}
