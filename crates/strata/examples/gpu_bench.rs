//! Issue 31's benchmark, as ratios measured side by side in one run:
//!
//! 1. device-tier hits (`Engine::read_device` of a file the device tier holds)
//!    against the device's own device-to-device copy of the same bytes;
//! 2. host-tier hits into device memory (the file in RAM, the device tier too small
//!    to hold it) against a pinned host-to-device copy of the same bytes;
//! 3. a dataset read into device memory for 3 epochs over a slow origin (2 ms per
//!    request, 200 MB/s), through strata against plain reads of the origin into
//!    pinned memory and a copy to the device (what a data loader does).
//!
//!   cargo run --release --features cuda -p strata --example gpu_bench -- [MIB]
//!
//! Without the `cuda` feature or a GPU it runs on the fake device (host memory):
//! that checks the flow, and its figures say nothing about a GPU.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::device::{Device, DeviceBuffer};
use strata::origin::{LocalOrigin, Origin, SlowOrigin};
use strata::{Config, DeviceSetup, Engine};

const BLOCK: u32 = 1 << 20;
const TRIES: usize = 5;

fn device() -> Arc<dyn Device> {
    #[cfg(feature = "cuda")]
    match strata::device::cuda::CudaDevice::open(0) {
        Ok(d) => return Arc::new(d),
        Err(e) => eprintln!("no GPU ({e}): the fake device"),
    }
    Arc::new(strata::device::fake::FakeDevice::new(64 << 30))
}

/// The best of `TRIES` runs of `f`, in seconds.
fn best(
    mut f: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut b = f64::MAX;
    for _ in 0..TRIES {
        let t0 = Instant::now();
        f()?;
        b = b.min(t0.elapsed().as_secs_f64());
    }
    Ok(b)
}

fn engine(
    origin: Arc<dyn Origin>,
    dev: &Arc<dyn Device>,
    ram: u64,
    gpu: u64,
) -> Result<Engine, Box<dyn std::error::Error>> {
    Ok(Engine::new(
        Config {
            block_size: BLOCK,
            ram_capacity: ram,
            device: Some(DeviceSetup {
                device: dev.clone(),
                capacity: gpu,
            }),
            ..Config::default()
        },
        origin,
    )?)
}

fn read_whole(
    e: &Engine,
    path: &str,
    dst: &dyn DeviceBuffer,
    len: usize,
) -> Result<strata::DeviceRead, Box<dyn std::error::Error>> {
    let h = e.open(Path::new(path))?;
    Ok(e.read_device(&h, 0, dst, 0, len)?)
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1024);
    let len = mib << 20;
    let dev = device();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    std::fs::write(dir.join("big"), &data)?;
    let local: Arc<dyn Origin> = Arc::new(LocalOrigin::new(&dir)?);
    println!(
        "# gpu_bench on {} ({mib} MiB, {} KiB blocks, best of {TRIES})\n",
        dev.name(),
        BLOCK >> 10
    );
    println!("| what | strata | baseline | strata / baseline |");
    println!("| --- | --- | --- | --- |");

    // 1. Device-tier hits against the device's own copy.
    let dst = dev.alloc(len)?;
    let src = dev.alloc(len)?;
    let stream = dev.stream()?;
    let raw = best(|| {
        stream.copy_d2d(&*src, 0, &*dst, 0, len)?;
        stream.synchronize()?;
        Ok(())
    })?;
    let e = engine(local.clone(), &dev, 64 << 20, len as u64 + (64 << 20))?;
    read_whole(&e, "big", &*dst, len)?;
    let tier = best(|| {
        let r = read_whole(&e, "big", &*dst, len)?;
        assert_eq!(r.device_bytes, len as u64, "not all from the device tier");
        Ok(())
    })?;
    println!(
        "| device-tier hits vs device memcpy | {:.1} GB/s | {:.1} GB/s | {:.2} |",
        gbps(len, tier),
        gbps(len, raw),
        raw / tier
    );
    drop(e);

    // 2. Host-tier (RAM) hits into device memory against pinned host-to-device.
    let mut pinned = dev.alloc_pinned(64 << 20)?;
    pinned.as_mut_slice().fill(1);
    let h2d = best(|| {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(64 << 20);
            stream.copy_h2d(pinned.as_ref(), 0, &*dst, off, n)?;
            off += n;
        }
        stream.synchronize()?;
        Ok(())
    })?;
    let e = engine(local.clone(), &dev, len as u64 + (256 << 20), BLOCK as u64)?;
    let h = e.open(Path::new("big"))?;
    let mut off = 0;
    while off < len {
        off += e.read(&h, off as u64, 8 << 20)?.len();
    }
    let host = best(|| {
        let r = read_whole(&e, "big", &*dst, len)?;
        assert!(r.host_bytes >= len as u64 - BLOCK as u64, "{r:?}");
        Ok(())
    })?;
    println!(
        "| RAM-tier hits into device memory vs pinned h2d | {:.1} GB/s | {:.1} GB/s | {:.2} |",
        gbps(len, host),
        gbps(len, h2d),
        h2d / host
    );
    drop(e);

    // 3. Epochs over a slow origin: strata against read() + copy.
    let files = 64usize;
    let per = (len / files).max(1 << 20);
    for f in 0..files {
        std::fs::write(dir.join(format!("s{f:03}")), &data[..per])?;
    }
    let slow = || -> Result<Arc<dyn Origin>, Box<dyn std::error::Error>> {
        Ok(Arc::new(SlowOrigin::new(
            Arc::new(LocalOrigin::new(&dir)?),
            Duration::from_millis(2),
            200 << 20,
        )))
    };
    let e = engine(slow()?, &dev, 64 << 20, (files * per) as u64 + (64 << 20))?;
    let plain = slow()?;
    let mut stage = dev.alloc_pinned(per)?;
    for epoch in 1..=3 {
        let t0 = Instant::now();
        for f in 0..files {
            read_whole(&e, &format!("s{f:03}"), &*dst, per)?;
        }
        let ours = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for f in 0..files {
            let file = plain.open(Path::new(&format!("s{f:03}")))?;
            let mut got = 0;
            while got < per {
                let n = file.read_at(&mut stage.as_mut_slice()[got..per], got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            stream.copy_h2d(stage.as_ref(), 0, &*dst, 0, got)?;
            stream.synchronize()?;
        }
        let theirs = t0.elapsed().as_secs_f64();
        println!(
            "| epoch {epoch}: {files} files of {} MiB, 2 ms origin | {ours:.2} s | {theirs:.2} s (read + h2d) | {:.2} |",
            per >> 20,
            theirs / ours
        );
    }
    Ok(())
}
