//! The shared tier's scale proof: a fleet of real mounts (separate processes) and
//! engine instances in this process (the library, each with small local tiers of its
//! own) read one dataset from one slow origin (2 ms a request, bandwidth-capped per
//! reader) through a memcached pool of three servers, in random order and all at once.
//! The origin is read about once for the whole fleet; with a server killed half way
//! the reads stay correct and the origin gives that server's share again.
//!
//! Short form in the suite: 64 MiB, 4 mounts, 16 engines. The long form:
//! `STRATA_FLEET_MIB=1024 STRATA_FLEET_ENGINES=100 STRATA_FLEET_TIMEOUT_MS=1000 cargo
//! test --release -p strata-cli --test fleet -- --nocapture` (also `STRATA_FLEET_MOUNTS`).
//! Each run prints its figures.

mod common;
#[path = "../../strata/tests/common/servers.rs"]
mod servers;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use servers::*;
use strata::origin::{LocalOrigin, Origin, SlowOrigin};
use strata::storage::RealStorage;
use strata::tier::disk::Thresholds;
use strata::{Config, DiskSetup, Engine, SharedConfig};

const FILE: usize = 4 << 20;
const LATENCY: Duration = Duration::from_millis(2);
const BANDWIDTH: u64 = 200 << 20;

/// `--shared-timeout` of every reader: 500 ms, not the default 50 ms. Twenty readers,
/// four servers and FUSE share two cores here: a request that waits for a core past
/// its deadline is a miss, and enough of them open the breakers and send the fleet
/// to the origin (with 50 ms a debug build read it 1.5-2.3x on a slow day, at HEAD
/// as after it). The long form needs 1,000 ms for a hundred readers.
fn timeout() -> Duration {
    Duration::from_millis(env("STRATA_FLEET_TIMEOUT_MS", 500) as u64)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Files of the dataset, with the crc32c of each.
fn dataset(dir: &Path, mib: usize) -> Vec<(String, u32)> {
    (0..(mib << 20) / FILE)
        .map(|i| {
            let name = format!("d{i:04}");
            let data = pattern(i as u64 + 1, FILE);
            std::fs::write(dir.join(&name), &data).unwrap();
            (name, crc32c::crc32c(&data))
        })
        .collect()
}

/// The dataset's files in an order of its own for reader `seed`.
fn order(files: &[(String, u32)], seed: u64) -> Vec<(String, u32)> {
    let mut v = files.to_vec();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn engine(origin: &Path, cache: &Path, urls: Option<&[String]>) -> Engine {
    let local: Arc<dyn Origin> = Arc::new(LocalOrigin::new(origin).unwrap());
    let slow: Arc<dyn Origin> = Arc::new(SlowOrigin::new(local, LATENCY, BANDWIDTH));
    let cfg = Config {
        ram_capacity: 8 << 20,
        fill_queue_bytes: 8 << 20,
        meta_bytes: 1 << 20,
        prefetch_threads: 2,
        origin_threads: 4,
        disk: Some(DiskSetup {
            storage: Arc::new(RealStorage::open(cache).unwrap()),
            capacity: 64 << 20,
            thresholds: Thresholds::OFF,
        }),
        attr_ttl: Duration::from_secs(3600),
        shared: urls.map(|u| {
            let mut c = SharedConfig::new(u.to_vec(), "fleet".into());
            c.timeout = timeout();
            c
        }),
        ..Config::default()
    };
    Engine::new(cfg, slow).unwrap()
}

fn read_engine(e: &Engine, files: &[(String, u32)], done: &AtomicU64) {
    for (name, crc) in files {
        let h = e.open(Path::new(name)).unwrap();
        let mut c = 0u32;
        let mut off = 0u64;
        loop {
            let b = e.read(&h, off, 1 << 20).unwrap();
            if b.is_empty() {
                break;
            }
            let b = b.to_vec();
            c = crc32c::crc32c_append(c, &b);
            off += b.len() as u64;
            done.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        assert_eq!(c, *crc, "{name}: not the origin's bytes");
    }
}

fn read_mount(mnt: &Path, files: &[(String, u32)], done: &AtomicU64) {
    let mut buf = vec![0u8; 1 << 20];
    for (name, crc) in files {
        let mut f = std::fs::File::open(mnt.join(name)).unwrap();
        let mut c = 0u32;
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            c = crc32c::crc32c_append(c, &buf[..n]);
            done.fetch_add(n as u64, Ordering::Relaxed);
        }
        assert_eq!(c, *crc, "{name}: not the origin's bytes through the mount");
    }
}

struct Figures {
    origin_bytes: u64,
    secs: f64,
    shared_hits: u64,
    lease_waits: u64,
    lease_hits: u64,
    errors: u64,
    refused: u64,
}

/// Every reader at once; `half_way` runs when half of all bytes have been read.
fn run(
    origin: &Path,
    files: &[(String, u32)],
    urls: &[String],
    mounts: usize,
    engines: usize,
    half_way: impl FnOnce(),
) -> Figures {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut ms: Vec<Mount> = (0..mounts).map(|_| Mount::new()).collect();
    let (lat, bw) = (format!("{}ms", LATENCY.as_millis()), BANDWIDTH.to_string());
    for m in &mut ms {
        m.origin = origin.to_path_buf();
        m.mount(&[
            "--shared-cache",
            &urls.join(","),
            "--shared-namespace",
            "fleet",
            "--shared-timeout",
            &format!("{}ms", timeout().as_millis()),
            "--origin-latency",
            &lat,
            "--origin-bandwidth",
            &bw,
            "--ram-size",
            "16M",
            "--cache-size",
            "64M",
        ]);
    }
    let es: Vec<Engine> = (0..engines)
        .map(|i| {
            let c = tmp.path().join(format!("e{i}"));
            engine(origin, &c, Some(urls))
        })
        .collect();
    let total = (files.len() * FILE * (mounts + engines)) as u64;
    let done = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|sc| {
        for (i, m) in ms.iter().enumerate() {
            let (f, done, mnt) = (order(files, i as u64), &done, m.mnt.clone());
            sc.spawn(move || read_mount(&mnt, &f, done));
        }
        for (i, e) in es.iter().enumerate() {
            let (f, done) = (order(files, 1000 + i as u64), &done);
            sc.spawn(move || read_engine(e, &f, done));
        }
        while done.load(Ordering::Relaxed) < total / 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        half_way();
    });
    let secs = t.elapsed().as_secs_f64();
    let mut f = Figures {
        origin_bytes: 0,
        secs,
        shared_hits: 0,
        lease_waits: 0,
        lease_hits: 0,
        errors: 0,
        refused: 0,
    };
    for e in &es {
        let s = e.stats();
        f.origin_bytes += s.origin_bytes;
        f.shared_hits += s.shared_hits;
        f.lease_hits += s.shared_lease_hits;
        f.lease_waits += s.shared_lease_waits;
        f.refused += s.shared_refused;
        f.errors += s.shared_errors + s.shared_timeouts;
    }
    for m in &mut ms {
        let s = m.stats();
        let n = |k: &str| s[k].as_u64().unwrap();
        f.origin_bytes += n("origin_bytes");
        f.shared_hits += n("shared_hits");
        f.lease_hits += n("shared_lease_hits");
        f.lease_waits += n("shared_lease_waits");
        f.refused += n("shared_refused");
        f.errors += n("shared_errors") + n("shared_timeouts");
        m.umount();
    }
    f
}

fn single_reader(origin: &Path, files: &[(String, u32)]) -> f64 {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let e = engine(origin, tmp.path(), None);
    let t = Instant::now();
    read_engine(&e, files, &AtomicU64::new(0));
    t.elapsed().as_secs_f64()
}

fn fleet(servers: &mut Servers, kind: &str) {
    let mib = env("STRATA_FLEET_MIB", 64);
    let mounts = env("STRATA_FLEET_MOUNTS", 4);
    let engines = env("STRATA_FLEET_ENGINES", 16);
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let origin: PathBuf = dir.path().join("origin");
    std::fs::create_dir_all(&origin).unwrap();
    let files = dataset(&origin, mib);
    let bytes = (files.len() * FILE) as f64;
    let one = single_reader(&origin, &files);
    let readers = mounts + engines;

    let f = run(&origin, &files, &servers.urls, mounts, engines, || {});
    println!(
        "{kind}: {readers} readers ({mounts} mounts, {engines} engines) of {mib} MiB: origin read {:.2}x the dataset, {:.1} s against {:.1} s for one reader alone ({:.1}x), {} blocks from the shared tier, {} fetches waited for another's, {} answered by its put, {} errors and timeouts, {} puts dropped",
        f.origin_bytes as f64 / bytes,
        f.secs,
        one,
        f.secs / one,
        f.shared_hits,
        f.lease_waits,
        f.lease_hits,
        f.errors,
        f.refused
    );
    // The target is 1.1x (met on a quiet machine); a loaded CI box gets some slack.
    assert!(
        f.origin_bytes as f64 <= 1.5 * bytes,
        "{kind}: the fleet read the origin {:.2}x",
        f.origin_bytes as f64 / bytes
    );

    // Again from scratch (new namespace contents: a new origin directory), a server
    // killed half way.
    let dir2 = tempfile::tempdir_in("/var/tmp").unwrap();
    let origin2 = dir2.path().join("origin");
    std::fs::create_dir_all(&origin2).unwrap();
    let files2 = dataset(&origin2, mib);
    let victim = &mut servers.procs[0];
    let f = run(&origin2, &files2, &servers.urls, mounts, engines, || {
        victim.kill().unwrap();
        victim.wait().unwrap();
    });
    println!(
        "{kind}, a server killed half way: origin read {:.2}x the dataset, {:.1} s, {} shared tier errors and timeouts, every byte right",
        f.origin_bytes as f64 / bytes,
        f.secs,
        f.errors
    );
}

/// One of these tests at a time: each loads both cores, and a fleet starved of CPU
/// misses its deadlines and reads the origin instead (which is what it measures).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_second_mount_reads_everything_from_the_shared_tier() {
    let _alone = alone();
    let servers = memcached(2);
    let mut a = Mount::new();
    let files = dataset(&a.origin, 16);
    let args = ["--shared-cache", &servers.urls.join(",")];
    a.mount(&args);
    read_mount(&a.mnt, &files, &AtomicU64::new(0));
    assert!(a.stat_u64("origin_bytes") >= (files.len() * FILE) as u64);
    // Its puts are sent before it goes.
    a.umount();
    let mut b = Mount::new();
    b.origin = a.origin.clone();
    b.mount(&args);
    read_mount(&b.mnt, &files, &AtomicU64::new(0));
    let s = b.stats();
    assert_eq!(s["origin_bytes"], 0, "{s}");
    assert!(
        s["shared_hits"].as_u64().unwrap() >= (files.len() * FILE / 16384) as u64,
        "{s}"
    );
    let rows = b.stats_reply()["tiers"].clone();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "shared"),
        "{rows}"
    );
    b.umount();
}

#[test]
fn a_fleet_on_memcached_reads_the_origin_about_once() {
    let _alone = alone();
    fleet(&mut memcached(3), "memcached x3");
}

#[test]
fn a_fleet_on_a_redis_cluster_reads_the_origin_about_once() {
    let _alone = alone();
    fleet(&mut redis_cluster(), "Redis Cluster (3 masters)");
}
