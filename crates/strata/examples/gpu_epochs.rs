//! Loads a dataset of files into device memory epoch after epoch, as a training
//! job's data loader would, through strata's device tier; prints each epoch's
//! throughput and where its bytes came from.
//!
//!   cargo run --release --example gpu_epochs -- DATASET_DIR [EPOCHS] [GPU_MIB]
//!   cargo run --release --features cuda --example gpu_epochs -- DATASET_DIR
//!
//! With the `cuda` feature and a GPU it reads into GPU memory; otherwise into the
//! fake device (host memory), which shows the same flow. Set STRATA_EXAMPLE_LATENCY_MS
//! to put a slow link (that many ms per request, 200 MB/s) in front of the dataset.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::device::Device;
use strata::origin::{LocalOrigin, Origin, SlowOrigin};
use strata::{Config, DeviceSetup, Engine};

fn device() -> Arc<dyn Device> {
    #[cfg(feature = "cuda")]
    match strata::device::cuda::CudaDevice::open(0) {
        Ok(d) => return Arc::new(d),
        Err(e) => eprintln!("no GPU ({e}): using the fake device"),
    }
    Arc::new(strata::device::fake::FakeDevice::new(64 << 30))
}

fn files(dir: &Path, out: &mut Vec<(PathBuf, u64)>, root: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_dir() {
            files(&e.path(), out, root)?;
        } else if m.is_file() {
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            out.push((rel, m.len()));
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1) else {
        eprintln!("usage: gpu_epochs DATASET_DIR [EPOCHS] [GPU_MIB]");
        std::process::exit(2);
    };
    let epochs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let gpu_mib: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(4096);
    let root = std::fs::canonicalize(dir)?;
    let mut list = Vec::new();
    files(&root, &mut list, &root)?;
    list.sort();
    let total: u64 = list.iter().map(|f| f.1).sum();
    let dev = device();
    println!(
        "{} files, {:.1} MiB, into {} ({} MiB device tier)",
        list.len(),
        total as f64 / (1 << 20) as f64,
        dev.name(),
        gpu_mib
    );
    let mut origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&root)?);
    if let Ok(ms) = std::env::var("STRATA_EXAMPLE_LATENCY_MS") {
        origin = Arc::new(SlowOrigin::new(
            origin,
            Duration::from_millis(ms.parse()?),
            200 << 20,
        ));
    }
    let cfg = Config {
        block_size: 1 << 20,
        ram_capacity: 64 << 20,
        device: Some(DeviceSetup {
            device: dev.clone(),
            capacity: gpu_mib << 20,
        }),
        ..Config::default()
    };
    let engine = Engine::new(cfg, origin)?;
    let largest = list.iter().map(|f| f.1).max().unwrap_or(0) as usize;
    let buf = dev.alloc(largest.max(1))?;
    for epoch in 1..=epochs {
        let before = engine.stats();
        let t0 = Instant::now();
        let (mut device_bytes, mut host_bytes) = (0, 0);
        for (path, len) in &list {
            let h = engine.open(path)?;
            let r = engine.read_device(&h, 0, &*buf, 0, *len as usize)?;
            device_bytes += r.device_bytes;
            host_bytes += r.host_bytes;
        }
        let secs = t0.elapsed().as_secs_f64();
        let after = engine.stats();
        println!(
            "epoch {epoch}: {:.2} s, {:.0} MB/s; from device memory {:.1} MiB, from the host {:.1} MiB (origin {:.1} MiB, RAM hits {}, device hits {})",
            secs,
            total as f64 / secs / 1e6,
            device_bytes as f64 / (1 << 20) as f64,
            host_bytes as f64 / (1 << 20) as f64,
            (after.origin_bytes - before.origin_bytes) as f64 / (1 << 20) as f64,
            after.ram_hits - before.ram_hits,
            after.device_hits - before.device_hits,
        );
    }
    Ok(())
}
