//! A failing or full cache device: reads keep working from the origin, fills stop,
//! the stats say why, and nothing in the cache is corrupted.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strata::origin::{LocalOrigin, Origin};
use strata::storage::{SimStorage, Storage};
use strata::tier::disk::Thresholds;
use strata::{Config, DiskSetup, Engine};

const BS: u32 = 16 * 1024;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize * 131 + i * 7 + i / 509) as u8)
        .collect()
}

fn engine(origin: &Path, st: &SimStorage, stop_pct: f64) -> Engine {
    let local: Arc<dyn Origin> = Arc::new(LocalOrigin::new(origin).unwrap());
    let cfg = Config {
        block_size: BS,
        ram_capacity: BS as u64 * 4, // tiny: reads go to the disk tier
        disk: Some(DiskSetup {
            storage: Arc::new(st.clone()) as Arc<dyn Storage>,
            capacity: 1 << 30,
            thresholds: Thresholds {
                brun: stop_pct + 10.0,
                bcull: stop_pct + 5.0,
                bstop: stop_pct,
                frun: 0.0,
                fcull: 0.0,
                fstop: 0.0,
            },
        }),
        attr_ttl: Duration::from_secs(60),
        ..Config::default()
    };
    Engine::new(cfg, local).unwrap()
}

fn read_all(e: &Engine, name: &str) -> Vec<u8> {
    let h = e.open(Path::new(name)).unwrap();
    let mut out = Vec::new();
    loop {
        let b = e.read(&h, out.len() as u64, 1 << 20).unwrap();
        if b.is_empty() {
            return out;
        }
        out.extend_from_slice(&b.to_vec());
    }
}

#[test]
fn a_cache_device_failing_writes_stops_fills_not_reads() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..6 {
        std::fs::write(tmp.path().join(format!("f{i}")), pattern(i, 300_000)).unwrap();
    }
    let st = SimStorage::new();
    let e = engine(tmp.path(), &st, 0.0);
    assert_eq!(read_all(&e, "f0"), pattern(0, 300_000));
    assert!(e.wait_fills(Duration::from_secs(5)));
    let cached = e.stats().disk_blocks;
    assert!(cached > 0);

    st.set_fail_writes(true);
    for i in 1..6 {
        assert_eq!(
            read_all(&e, &format!("f{i}")),
            pattern(i, 300_000),
            "reads go on"
        );
        e.wait_fills(Duration::from_secs(5));
    }
    let s = e.stats();
    assert!(s.disk_write_errors > 0, "{s:?}");
    assert_eq!(
        s.disk_state, 3,
        "filling paused after repeated failures: {s:?}"
    );
    assert_eq!(s.disk_blocks, cached, "nothing half-written was recorded");
    assert_eq!(
        read_all(&e, "f0"),
        pattern(0, 300_000),
        "cached data still served"
    );
    drop(e);

    // What was cached before the failures is intact.
    st.set_fail_writes(false);
    let e = engine(tmp.path(), &st, 0.0);
    assert_eq!(e.stats().disk_blocks, cached);
    assert_eq!(read_all(&e, "f0"), pattern(0, 300_000));
    assert_eq!(e.stats().checksum_failures, 0);
}

#[test]
fn a_full_cache_device_stops_fills_not_reads() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..8 {
        std::fs::write(tmp.path().join(format!("f{i}")), pattern(i, 400_000)).unwrap();
    }
    let st = SimStorage::new();
    // A 2 MiB device that also holds 1 MiB of someone else's data.
    st.set_capacity(Some(2 << 20));
    let hog = st.open(Path::new("hog"), true).unwrap();
    hog.write_all_at(&vec![0u8; 1 << 20], 0).unwrap();
    let e = engine(tmp.path(), &st, 10.0);
    for i in 0..8 {
        assert_eq!(read_all(&e, &format!("f{i}")), pattern(i, 400_000));
        e.wait_fills(Duration::from_secs(5));
    }
    let s = e.stats();
    assert!(
        s.disk_refused_space > 0 || s.disk_culled > 0,
        "the tier stopped or culled for space: {s:?}"
    );
    assert!(
        s.disk_bytes <= 1 << 20,
        "never more than the free space: {s:?}"
    );
    // Everything it kept is correct.
    for i in 0..8 {
        assert_eq!(read_all(&e, &format!("f{i}")), pattern(i, 400_000));
    }
    assert_eq!(e.stats().checksum_failures, 0);
}
