//! Helpers shared by the engine's end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::origin::{LocalOrigin, Origin};
use strata::storage::RealStorage;
use strata::tier::disk::Thresholds;
use strata::{Config, DiskSetup, Engine};

pub const BS: u32 = 16 * 1024;

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub struct Setup {
    pub _tmp: tempfile::TempDir,
    pub origin: PathBuf,
    pub cache: PathBuf,
}

pub fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let origin = tmp.path().join("origin");
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&origin).unwrap();
    Setup {
        _tmp: tmp,
        origin,
        cache,
    }
}

pub fn config(cache: &Path, ttl: Duration) -> Config {
    Config {
        block_size: BS,
        ram_capacity: 4 << 20,
        disk: Some(DiskSetup {
            storage: Arc::new(RealStorage::open(cache).unwrap()),
            capacity: 64 << 20,
            thresholds: Thresholds::OFF,
        }),
        attr_ttl: ttl,
        ..Config::default()
    }
}

pub fn engine(s: &Setup, ttl: Duration) -> Engine {
    let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&s.origin).unwrap());
    Engine::new(config(&s.cache, ttl), origin).unwrap()
}

pub fn read_all(e: &Engine, path: &str) -> Vec<u8> {
    let h = e.open(Path::new(path)).unwrap();
    let mut out = Vec::new();
    loop {
        let b = e.read(&h, out.len() as u64, 100_000).unwrap();
        if b.is_empty() {
            return out;
        }
        out.extend_from_slice(&b.to_vec());
    }
}

/// Polls `done` every 10 ms until it holds or `timeout` passes; the caller asserts.
pub fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() && t.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(10));
    }
}
