//! The device-memory tier and reads into device memory, on the fake device (CI has
//! no GPU; with the `cuda` feature and STRATA_TEST_CUDA=1, on GPU 0, but for the
//! test that needs a device that fails on request): bytes equal the origin's, a second epoch comes from the device, an origin
//! change is never answered with an older version's device block (with invalidation
//! racing device reads too), loans keep their bytes, and a failing device only costs
//! speed.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use strata::device::fake::FakeDevice;
use strata::device::{Device, read_back};
use strata::{DeviceSetup, Engine};

const HOUR: Duration = Duration::from_secs(3600);

/// The device the tests read into, and the fake device behind it if it is one.
fn test_device() -> (Arc<dyn Device>, Option<FakeDevice>) {
    #[cfg(feature = "cuda")]
    if std::env::var_os("STRATA_TEST_CUDA").is_some() {
        let d = strata::device::cuda::CudaDevice::open(0).expect("STRATA_TEST_CUDA is set: GPU 0");
        return (Arc::new(d), None);
    }
    let f = FakeDevice::new(256 << 20);
    (Arc::new(f.clone()), Some(f))
}

fn device_engine(s: &Setup, ttl: Duration, dev: &Arc<dyn Device>, capacity: u64) -> Engine {
    let mut cfg = config(&s.cache, ttl);
    cfg.device = Some(DeviceSetup {
        device: dev.clone(),
        capacity,
    });
    let origin = Arc::new(strata::origin::LocalOrigin::new(&s.origin).unwrap());
    Engine::new(cfg, origin).unwrap()
}

fn read_file(
    e: &Engine,
    dev: &Arc<dyn Device>,
    name: &str,
    len: usize,
) -> (Vec<u8>, strata::DeviceRead) {
    let h = e.open(Path::new(name)).unwrap();
    let buf = dev.alloc(len).unwrap();
    let r = e.read_device(&h, 0, &*buf, 0, len).unwrap();
    (read_back(&**dev, &*buf, 0, r.bytes as usize).unwrap(), r)
}

#[test]
fn a_second_epoch_comes_from_device_memory_byte_for_byte() {
    let s = setup();
    let (dev, _) = test_device();
    let len = 40 * BS as usize + 1234;
    std::fs::write(s.origin.join("f"), pattern(1, len)).unwrap();
    let e = device_engine(&s, HOUR, &dev, 16 << 20);
    let (got, r) = read_file(&e, &dev, "f", len);
    assert_eq!(got, pattern(1, len));
    assert_eq!(
        (r.bytes, r.device_bytes, r.host_bytes),
        (len as u64, 0, len as u64)
    );
    let origin = e.stats().origin_bytes;
    let (got, r) = read_file(&e, &dev, "f", len);
    assert_eq!(got, pattern(1, len));
    assert_eq!(r.device_bytes, len as u64, "{r:?}");
    assert_eq!(e.stats().origin_bytes, origin);
    assert!(e.stats().device_hits >= 41);
    // A range inside, at an offset of the target.
    let h = e.open(Path::new("f")).unwrap();
    let buf = dev.alloc(BS as usize * 3).unwrap();
    let r = e
        .read_device(&h, 5 * BS as u64 + 7, &*buf, 100, 2 * BS as usize)
        .unwrap();
    assert_eq!(r.bytes, 2 * BS as u64);
    let want = &pattern(1, len)[5 * BS as usize + 7..7 * BS as usize + 7];
    assert_eq!(read_back(&*dev, &*buf, 100, 2 * BS as usize).unwrap(), want);
    // Host reads find the device tier too (below memory).
    assert_eq!(read_all(&e, "f"), pattern(1, len));
}

#[test]
fn an_origin_change_is_never_served_from_device_memory() {
    let s = setup();
    let (dev, _) = test_device();
    let len = 8 * BS as usize;
    std::fs::write(s.origin.join("f"), pattern(2, len)).unwrap();
    let e = device_engine(&s, Duration::ZERO, &dev, 16 << 20);
    assert_eq!(read_file(&e, &dev, "f", len).0, pattern(2, len));
    assert_eq!(read_file(&e, &dev, "f", len).1.device_bytes, len as u64);
    // Same size, new bytes: the old version's device blocks must not answer.
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(s.origin.join("f"), pattern(3, len)).unwrap();
    let (got, r) = read_file(&e, &dev, "f", len);
    assert_eq!(got, pattern(3, len));
    assert_eq!(r.device_bytes, 0);
    assert_eq!(
        e.stats().device_blocks,
        8,
        "the old version's blocks left the device"
    );
}

#[test]
fn a_write_through_the_cache_drops_the_device_copy_of_its_blocks() {
    let s = setup();
    let (dev, _) = test_device();
    let len = 4 * BS as usize;
    std::fs::write(s.origin.join("f"), pattern(4, len)).unwrap();
    let e = device_engine(&s, HOUR, &dev, 16 << 20);
    read_file(&e, &dev, "f", len);
    let h = e.open_write(Path::new("f"), false).unwrap();
    e.write(&h, BS as u64 + 5, b"new bytes").unwrap();
    e.close_check(&h).unwrap();
    let mut want = pattern(4, len);
    want[BS as usize + 5..BS as usize + 14].copy_from_slice(b"new bytes");
    assert_eq!(read_file(&e, &dev, "f", len).0, want);
}

#[test]
fn device_reads_racing_invalidation_see_one_version_each() {
    let s = setup();
    let (dev, _) = test_device();
    let len = 32 * BS as usize;
    let versions: Vec<Vec<u8>> = (0..6).map(|v| pattern(100 + v, len)).collect();
    std::fs::write(s.origin.join("f"), &versions[0]).unwrap();
    let e = Arc::new(device_engine(&s, Duration::ZERO, &dev, 8 << 20));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (e, dev, stop, versions) = (e.clone(), dev.clone(), stop.clone(), versions.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    let h = match e.open(Path::new("f")) {
                        Ok(h) => h,
                        Err(_) => continue,
                    };
                    let buf = dev.alloc(len).unwrap();
                    let r = match e.read_device(&h, 0, &*buf, 0, len) {
                        Ok(r) => r,
                        // A handle whose file was replaced under it: as on NFS.
                        Err(err) if err.raw_os_error() == Some(116) => continue,
                        Err(err) => panic!("{err}"),
                    };
                    let got = read_back(&*dev, &*buf, 0, r.bytes as usize).unwrap();
                    assert!(
                        versions.contains(&got),
                        "a device read mixed versions or served a stale block"
                    );
                    n += 1;
                }
                n
            })
        })
        .collect();
    for v in versions.iter().skip(1) {
        std::thread::sleep(Duration::from_millis(30));
        // Replaced whole (rename over it), as a dataset is updated: written in place,
        // a read at the origin could see the write half done under a token that does
        // not change after it (a stat token's limit, not the device tier's).
        let tmp = s.origin.join("f.new");
        std::fs::write(&tmp, v).unwrap();
        std::fs::rename(&tmp, s.origin.join("f")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(30));
    stop.store(true, Ordering::Release);
    let reads: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 5, "only {reads} reads");
    let (got, _) = read_file(&e, &dev, "f", len);
    assert_eq!(got, versions[5]);
}

#[test]
fn a_loan_keeps_its_bytes_through_invalidation_and_eviction() {
    let s = setup();
    let (dev, _) = test_device();
    let len = 4 * BS as usize;
    std::fs::write(s.origin.join("f"), pattern(5, len)).unwrap();
    std::fs::write(s.origin.join("g"), pattern(6, 8 * len)).unwrap();
    // Room for 4 blocks: the loaned ones and nothing else.
    let e = device_engine(&s, Duration::ZERO, &dev, 4 * BS as u64);
    let h = e.open(Path::new("f")).unwrap();
    let loans = e.lend_device(&h, 0, len).unwrap();
    assert_eq!(loans.blocks.len(), 4);
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(s.origin.join("f"), pattern(7, len)).unwrap();
    // Reads of another file and of the new version want the slots; they get none.
    assert_eq!(read_file(&e, &dev, "g", 8 * len).0, pattern(6, 8 * len));
    assert_eq!(read_file(&e, &dev, "f", len).0, pattern(7, len));
    let mut seen = Vec::new();
    for (l, r) in &loans.blocks {
        let b = read_back(&*dev, l.memory(), l.offset(), l.len()).unwrap();
        seen.extend_from_slice(&b[r.clone()]);
    }
    assert_eq!(seen, pattern(5, len), "a loaned slot was reused");
    drop(loans);
    // Free again: the next device read fills the tier.
    read_file(&e, &dev, "f", len);
    assert_eq!(read_file(&e, &dev, "f", len).1.device_bytes, len as u64);
}

#[test]
fn a_failing_or_missing_device_costs_speed_not_bytes() {
    let s = setup();
    // A device that fails on request: the fake one.
    let fake = FakeDevice::new(64 << 20);
    let dev: Arc<dyn Device> = Arc::new(fake.clone());
    let len = 8 * BS as usize;
    std::fs::write(s.origin.join("f"), pattern(8, len)).unwrap();
    let e = device_engine(&s, HOUR, &dev, 16 << 20);
    read_file(&e, &dev, "f", len);
    // The device fails: reads into it fail with the device's error, host reads
    // go on from the host tiers, and the tier turns itself off.
    let target = dev.alloc(len).unwrap();
    fake.set_failing(true);
    let h = e.open(Path::new("f")).unwrap();
    assert!(e.read_device(&h, 0, &*target, 0, len).is_err());
    assert_eq!(read_all(&e, "f"), pattern(8, len));
    fake.set_failing(false);
    let (got, r) = read_file(&e, &dev, "f", len);
    assert_eq!(got, pattern(8, len));
    assert_eq!(r.device_bytes, 0, "a tier that failed stays off");
    assert!(e.stats().device_errors > 0);
    // Without a device tier, a device read says so.
    let p = setup();
    std::fs::write(p.origin.join("x"), b"x").unwrap();
    let plain = engine(&p, HOUR);
    let h = plain.open(Path::new("x")).unwrap();
    let err = plain
        .read_device(&h, 0, &*dev.alloc(1).unwrap(), 0, 1)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    // A pool the device cannot give fails the engine's start with a clear error.
    let q = setup();
    std::fs::create_dir_all(&q.cache).unwrap();
    let mut cfg = config(&q.cache, HOUR);
    cfg.device = Some(DeviceSetup {
        device: Arc::new(FakeDevice::new(1 << 20)),
        capacity: 64 << 20,
    });
    let origin = Arc::new(strata::origin::LocalOrigin::new(&s.origin).unwrap());
    let err = Engine::new(cfg, origin).err().expect("refused");
    assert!(err.to_string().contains("device"), "{err}");
}
