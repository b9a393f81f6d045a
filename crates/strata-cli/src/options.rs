//! Mount options: from flags and from `-o key=value,...` (fstab, `mount -t fuse.strata`),
//! with flags winning over `-o`, and defaults for the rest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

/// Options of `strata mount`. Every one can also be given as `-o name=value` (with
/// dashes written as underscores: `-o cache_size=10G,allow_other`).
#[derive(Args, Debug, Default, Clone)]
pub struct MountOpts {
    /// Cache directory [default: $XDG_CACHE_HOME/strata/ORIGIN-ID, or
    /// /var/cache/strata/ORIGIN-ID for root]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most space the disk cache uses, e.g. 10G, 512MiB [default: 10GiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// Most memory the RAM cache uses [default: 256MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub ram_size: Option<u64>,
    /// Most memory the compressed RAM tier uses: blocks RAM evicts are kept there
    /// LZ4-compressed if they compress to 75% or less, and move back to RAM on a hit;
    /// 0: none [default: 0]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub compressed_ram_size: Option<u64>,
    /// GPU memory (CUDA device 0) kept as a cache tier below RAM; needs a strata
    /// built with the `cuda` feature. Without a usable GPU the mount runs without
    /// it (and says so) [default: none]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub gpu_memory: Option<u64>,
    /// Most bytes of newly read blocks waiting to be written to the disk cache (memory
    /// beyond --ram-size); past it fills are dropped and offered again later
    /// [default: 64MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub fill_queue: Option<u64>,
    /// Most memory the metadata caches use (attributes, listings, symlink targets,
    /// extended attributes) [default: 64MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub meta_size: Option<u64>,
    /// Unit of caching, a power of two from 4KiB to 16MiB; fixed when a cache
    /// directory is created [default: 16KiB, or the size of the existing cache]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub block_size: Option<u64>,
    /// How long attributes, listings and file versions are trusted before the
    /// origin is asked again, e.g. 1s, 250ms, 0. Given alone, exactly this long: a
    /// change at the origin shows within it. By default trust is adaptive (see
    /// --attr-ttl-max) and this is its shortest [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub attr_ttl: Option<Duration>,
    /// Adaptive trust, as NFS clients do: what the origin has not changed for a long
    /// time is trusted longer, a tenth of how long it had been unchanged, from
    /// --attr-ttl up to this; a change shows within it. The default when --attr-ttl
    /// is not given [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub attr_ttl_max: Option<Duration>,
    /// How long the disk cache gathers newly read blocks before writing them in one
    /// commit (two syncs); a full batch of 8MiB is written at once. 0: write each
    /// read's blocks at once [default: 0]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub commit_interval: Option<Duration>,
    /// Free space (% of the cache filesystem) at which culling stops [default: 10]
    #[arg(long, value_name = "PERCENT")]
    pub brun: Option<f64>,
    /// Free space below which culling starts [default: 7]
    #[arg(long, value_name = "PERCENT")]
    pub bcull: Option<f64>,
    /// Free space below which the cache stops filling [default: 3]
    #[arg(long, value_name = "PERCENT")]
    pub bstop: Option<f64>,
    /// Free files (inodes, %) at which culling stops [default: 10]
    #[arg(long, value_name = "PERCENT")]
    pub frun: Option<f64>,
    /// Free files below which culling starts [default: 7]
    #[arg(long, value_name = "PERCENT")]
    pub fcull: Option<f64>,
    /// Free files below which the cache stops filling [default: 3]
    #[arg(long, value_name = "PERCENT")]
    pub fstop: Option<f64>,
    /// Let users other than the one mounting use the mount (the origin's owners and
    /// modes are still enforced by the kernel)
    #[arg(long)]
    pub allow_other: bool,
    /// Let the kernel read settled, fully cached files straight from the disk cache
    /// (FUSE passthrough): page-cache speed, but those reads skip strata's checksum
    /// check, and an open file keeps the version it was opened with. Safe when the
    /// cache directory's filesystem checksums data itself (btrfs, ZFS)
    #[arg(long)]
    pub passthrough: bool,
    /// Files the origin changed more recently than this are always read through
    /// strata (so open files follow appends), never passed through [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub passthrough_min_age: Option<Duration>,
    /// Longest wait for one origin request; past it the origin counts as unreachable
    /// and what it last confirmed is served from the cache. 0: wait forever
    /// [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub origin_timeout: Option<Duration>,
    /// When a reader opens a directory's files in listing order (tar, cp -r, rsync),
    /// fetch up to this many of the next files ahead, in parallel. 0: off
    /// [default: 32]
    #[arg(long, value_name = "N")]
    pub dir_prefetch: Option<usize>,
    /// Serve FUSE requests from per-CPU io_uring queues (FUSE over io_uring, Linux
    /// 6.14+ with /sys/module/fuse/parameters/enable_uring set to 1): a request is
    /// answered on the CPU that made it. Falls back to /dev/fuse, with a warning, where
    /// the kernel does not offer it
    #[arg(long)]
    pub uring: bool,
    /// Threads serving FUSE requests [default: 16]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// FOR DEMOS AND TESTS: add this latency to every origin request, e.g. 10ms
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub origin_latency: Option<Duration>,
    /// FOR DEMOS AND TESTS: cap origin reads at this many bytes per second, e.g. 50M
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub origin_bandwidth: Option<u64>,
    /// Log level: error, warn, info, debug, trace [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Set by `--read-only` and `-o ro`.
    #[arg(skip)]
    pub read_only: bool,
    /// Write-back: a write is answered once it is durable in the cache directory's
    /// journal, and sent to the origin in the background within --write-back-delay,
    /// on unmount, and at the next mount after a crash. Namespace changes (create,
    /// rename, unlink, ...) still reach the origin before they are answered
    #[arg(long)]
    pub write_back: bool,
    /// How long written data may stay in the cache before it is sent to the origin
    /// (with --write-back) [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub write_back_delay: Option<Duration>,
    /// What fsync waits for with --write-back: `cache` (the data is durable in the
    /// journal) or `origin` (sent to the origin and synced there) [default: cache]
    #[arg(long, value_name = "WHERE", value_parser = parse_fsync_target)]
    pub write_back_fsync: Option<FsyncTarget>,
    /// Most data written but not yet sent to the origin (held in RAM and in the
    /// journal); writers past it wait for the flush [default: 256MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub dirty_limit: Option<u64>,
    /// A shared tier on other machines' memory, after the local disk: memcached or
    /// Redis servers, as memcached://HOST:PORT, redis://HOST:PORT (several,
    /// comma-separated, spread by consistent hashing) or redis+cluster://HOST:PORT
    /// (any node of a Redis Cluster). In -o form: shared_cache=URL, once per server
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub shared_cache: Vec<String>,
    /// What names this origin in the shared tier, the same on every machine that
    /// shares it [default: the origin's absolute path]
    #[arg(long, value_name = "NAME")]
    pub shared_namespace: Option<String>,
    /// A file whose contents authenticate values in the shared tier (a keyed MAC):
    /// machines without it cannot make values the others accept. Without it, anyone
    /// who can write to the cache servers is trusted
    #[arg(long, value_name = "FILE")]
    pub shared_secret_file: Option<PathBuf>,
    /// Deadline of one request to a shared cache server; past it the request is a
    /// miss (and a server that keeps missing it is left alone for a while) [default: 50ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shared_timeout: Option<Duration>,
    /// Options as key=value pairs separated by commas, as in fstab
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub o: Vec<String>,
}

/// Standard mount options a mount helper or fstab may pass, which strata accepts and
/// ignores (it is always nosuid and nodev; `ro` is taken apart).
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "_netdev",
    "nofail",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "sync",
    "async",
    "dirsync",
    "default_permissions",
];

impl MountOpts {
    /// Folds the `-o` options into the fields that flags did not set.
    pub fn merge_o(&mut self) -> Result<(), String> {
        let list: Vec<String> = self
            .o
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for item in list {
            let (raw, v) = match item.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                None => (item.clone(), None),
            };
            // fstab and systemd pass options of their own (x-systemd.automount, ...).
            if raw.starts_with("x-") || raw == "comment" {
                continue;
            }
            let k = raw.replace('-', "_");
            let need = |v: &Option<String>| -> Result<String, String> {
                v.clone()
                    .ok_or_else(|| format!("option -o {k} needs a value ({k}=...)"))
            };
            let pct = |v: &Option<String>| -> Result<f64, String> {
                need(v)?
                    .parse::<f64>()
                    .map_err(|_| format!("option -o {k}: not a number"))
            };
            match k.as_str() {
                "cache_dir" => {
                    self.cache_dir.get_or_insert(PathBuf::from(need(&v)?));
                }
                "cache_size" => set(&mut self.cache_size, parse_size(&need(&v)?)?),
                "ram_size" => set(&mut self.ram_size, parse_size(&need(&v)?)?),
                "compressed_ram_size" => {
                    set(&mut self.compressed_ram_size, parse_size(&need(&v)?)?)
                }
                "gpu_memory" => set(&mut self.gpu_memory, parse_size(&need(&v)?)?),
                "fill_queue" => set(&mut self.fill_queue, parse_size(&need(&v)?)?),
                "meta_size" => set(&mut self.meta_size, parse_size(&need(&v)?)?),
                "block_size" => set(&mut self.block_size, parse_size(&need(&v)?)?),
                "attr_ttl" => set(&mut self.attr_ttl, parse_duration(&need(&v)?)?),
                "attr_ttl_max" => set(&mut self.attr_ttl_max, parse_duration(&need(&v)?)?),
                "commit_interval" => set(&mut self.commit_interval, parse_duration(&need(&v)?)?),
                "brun" => set(&mut self.brun, pct(&v)?),
                "bcull" => set(&mut self.bcull, pct(&v)?),
                "bstop" => set(&mut self.bstop, pct(&v)?),
                "frun" => set(&mut self.frun, pct(&v)?),
                "fcull" => set(&mut self.fcull, pct(&v)?),
                "fstop" => set(&mut self.fstop, pct(&v)?),
                "allow_other" => self.allow_other = true,
                "passthrough" => self.passthrough = true,
                "uring" => self.uring = true,
                "ro" => self.read_only = true,
                "write_back" => self.write_back = true,
                "write_back_delay" => set(&mut self.write_back_delay, parse_duration(&need(&v)?)?),
                "write_back_fsync" => {
                    set(&mut self.write_back_fsync, parse_fsync_target(&need(&v)?)?)
                }
                "dirty_limit" => set(&mut self.dirty_limit, parse_size(&need(&v)?)?),
                "shared_cache" => self.shared_cache.push(need(&v)?),
                "shared_namespace" => set(&mut self.shared_namespace, need(&v)?),
                "shared_secret_file" => {
                    self.shared_secret_file
                        .get_or_insert(PathBuf::from(need(&v)?));
                }
                "shared_timeout" => set(&mut self.shared_timeout, parse_duration(&need(&v)?)?),
                "threads" => set(
                    &mut self.threads,
                    need(&v)?
                        .parse()
                        .map_err(|_| "option -o threads: not a number".to_string())?,
                ),
                "dir_prefetch" => set(
                    &mut self.dir_prefetch,
                    need(&v)?
                        .parse()
                        .map_err(|_| "option -o dir_prefetch: not a number".to_string())?,
                ),
                "origin_latency" => set(&mut self.origin_latency, parse_duration(&need(&v)?)?),
                "origin_timeout" => set(&mut self.origin_timeout, parse_duration(&need(&v)?)?),
                "passthrough_min_age" => {
                    set(&mut self.passthrough_min_age, parse_duration(&need(&v)?)?)
                }
                "origin_bandwidth" => set(&mut self.origin_bandwidth, parse_size(&need(&v)?)?),
                "log_level" => set(&mut self.log_level, need(&v)?),
                k if IGNORED.contains(&k) => {}
                "subtype" | "fsname" => {}
                other => return Err(format!("unknown mount option -o {other}")),
            }
        }
        self.o.clear();
        Ok(())
    }
}

/// Where an fsync's data must be with --write-back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncTarget {
    Cache,
    Origin,
}

pub fn parse_fsync_target(s: &str) -> Result<FsyncTarget, String> {
    match s {
        "cache" => Ok(FsyncTarget::Cache),
        "origin" => Ok(FsyncTarget::Origin),
        _ => Err(format!("expected cache or origin, not {s:?}")),
    }
}

fn set<T>(slot: &mut Option<T>, v: T) {
    slot.get_or_insert(v);
}

/// Parses sizes: `4096`, `64K`, `10G`, `512MiB`, `1.5GiB`, `100MB`. K, M, G, T and
/// KiB.. are powers of 1024; KB, MB, GB, TB are powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 10G, 512MiB, 4096)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => {
            return Err(format!(
                "{s:?}: unknown size unit {unit:?} (use K, M, G, T, KiB, MB, ...)"
            ));
        }
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

/// Parses durations: `1s`, `250ms`, `2m`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration (try 1s, 250ms): {e}"))
}

/// Default cache directory for an origin: one per origin under the user's cache.
pub fn default_cache_dir(origin: &Path) -> PathBuf {
    let base = if rustix::process::geteuid().is_root() {
        PathBuf::from("/var/cache/strata")
    } else if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        PathBuf::from(x).join("strata")
    } else if let Some(h) = std::env::var_os("HOME") {
        PathBuf::from(h).join(".cache/strata")
    } else {
        PathBuf::from("/tmp/strata-cache")
    };
    base.join(origin_id(origin))
}

/// A readable, unique name for an origin path: its last components and a hash.
pub fn origin_id(origin: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    origin.hash(&mut h);
    let tail: String = origin
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(
        "{}-{:08x}",
        if tail.is_empty() { "root" } else { &tail },
        h.finish() as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn o_options_fill_what_flags_left() {
        let mut m = MountOpts {
            ram_size: Some(1),
            o: vec!["rw,cache_size=2G,ram_size=5M,allow_other,x-systemd.automount".into()],
            ..Default::default()
        };
        m.o.push("dir_prefetch=0,commit_interval=250ms".into());
        m.o.push("compressed_ram_size=64M,attr_ttl_max=30s".into());
        m.merge_o().unwrap();
        assert_eq!(m.compressed_ram_size, Some(64 << 20));
        assert_eq!(m.attr_ttl_max, Some(Duration::from_secs(30)));
        assert_eq!(m.cache_size, Some(2 << 30));
        assert_eq!(m.commit_interval, Some(Duration::from_millis(250)));
        assert_eq!(m.dir_prefetch, Some(0));
        assert_eq!(m.ram_size, Some(1), "a flag wins over -o");
        assert!(m.allow_other);
        let mut bad = MountOpts {
            o: vec!["cache_size=lots".into()],
            ..Default::default()
        };
        assert!(bad.merge_o().is_err());
        let mut bad_n = MountOpts {
            o: vec!["dir_prefetch=many".into()],
            ..Default::default()
        };
        assert!(bad_n.merge_o().unwrap_err().contains("dir_prefetch"));
        let mut unknown = MountOpts {
            o: vec!["frobnicate".into()],
            ..Default::default()
        };
        assert!(unknown.merge_o().unwrap_err().contains("frobnicate"));
    }
}
